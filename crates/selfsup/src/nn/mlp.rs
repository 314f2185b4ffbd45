//! MLP heads: SimCLR's projection head g (Chen et al. 2020, §2.1) and, later, BYOL's predictor.

use super::batchnorm::BatchNorm;
use crate::nn::fused_linear::linear as fused_linear;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Linear → BatchNorm → ReLU → Linear (SimCLR v2 / BYOL style).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub bn: Option<BatchNorm>,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(
        d_in: usize,
        d_hidden: usize,
        d_out: usize,
        batchnorm: bool,
        device: &Device,
    ) -> Self {
        Self {
            fc1: LinearConfig::new(d_in, d_hidden)
                .with_bias(!batchnorm)
                .init(device),
            bn: batchnorm.then(|| BatchNorm::new(d_hidden, device)),
            fc2: LinearConfig::new(d_hidden, d_out).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = fused_linear(&self.fc1, x);
        let h = match &self.bn {
            Some(bn) => bn.forward_relu(h),
            None => relu(h),
        };
        fused_linear(&self.fc2, h)
    }
}
