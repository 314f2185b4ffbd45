//! SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
//! Representations"): two augmented views of each image, encoder f, projection head g, and the
//! NT-Xent loss (eq. 1) on z = g(f(x)). The representation used downstream is h = f(x).

use crate::nn::{Encoder, EncoderConfig, Mlp};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// NT-Xent over the 2N rows of `z`, where rows i and i+N are positive pairs.
///
/// l(i) = −log( exp(sim(z_i, z_pos(i))/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ) ), sim = cosine,
/// loss = mean over all 2N anchors. The denominator holds the positive and the 2N−2 negatives; only
/// the self-similarity is masked out.
///
/// ```ignore
/// let loss = nt_xent(torch_like_z, 0.5); // z: [2N, D]
/// ```
pub fn nt_xent(z: Tensor<2>, temperature: f64) -> Tensor<1> {
    contrastive(z, temperature, true)
}

/// The ablation of the collapse experiment: no negatives at all. With only the positive left in
/// the denominator the softmax is identically 1, so the loss reduces to pure alignment,
/// l(i) = −sim(z_i, z_pos(i))/τ, which a constant embedding minimizes.
pub fn positives_only(z: Tensor<2>, temperature: f64) -> Tensor<1> {
    contrastive(z, temperature, false)
}

fn contrastive(z: Tensor<2>, temperature: f64, negatives: bool) -> Tensor<1> {
    let [two_n, _] = z.dims();
    assert!(two_n >= 2 && two_n % 2 == 0, "nt_xent needs 2N rows, N ≥ 1");
    let device = z.device();
    let n = two_n / 2;
    // Cosine similarity: normalize rows (eps as in torch.nn.functional.normalize).
    let norm = z.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    let zn = z / norm;
    let sim = zn.clone().matmul(zn.transpose()).div_scalar(temperature);
    // Masked entries get a large negative logit: exp() underflows to exactly 0 and, unlike −inf,
    // 0·mask stays finite in the positive-selection product below.
    let mut mask = vec![0f32; two_n * two_n];
    let mut pos = vec![0f32; two_n * two_n];
    for i in 0..two_n {
        let p = (i + n) % two_n;
        pos[i * two_n + p] = 1.0;
        for k in 0..two_n {
            if k == i || (!negatives && k != p) {
                mask[i * two_n + k] = -1e9;
            }
        }
    }
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [two_n, two_n]), &device);
    let pos = Tensor::<2>::from_data(TensorData::new(pos, [two_n, two_n]), &device);
    if !negatives {
        return (sim * pos).sum().div_scalar(-(two_n as f64));
    }
    let logp = log_softmax(sim + mask, 1);
    (logp * pos).sum().div_scalar(-(two_n as f64))
}

/// SimCLR hyperparameters (the `[simclr]` table of a run's config.toml).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimClrConfig {
    /// τ of NT-Xent.
    pub temperature: f64,
    /// Hidden width of the projection head g.
    pub proj_hidden: usize,
    /// Output dimension of g (where the loss is computed).
    pub proj_dim: usize,
    /// Drop the negatives from the denominator (collapse ablation).
    pub positives_only: bool,
}

impl Default for SimClrConfig {
    fn default() -> Self {
        Self {
            temperature: 0.5,
            proj_hidden: 256,
            proj_dim: 128,
            positives_only: false,
        }
    }
}

impl SimClrConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "simclr temperature must be positive, got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.proj_hidden > 0 && self.proj_dim > 0,
            "simclr projection sizes must be positive"
        );
        Ok(())
    }
}

/// Encoder f + projection head g.
#[derive(Module, Debug)]
pub struct SimClr {
    pub encoder: Encoder,
    pub projector: Mlp,
    pub temperature: f64,
    pub positives_only: bool,
}

impl SimClr {
    pub fn new(
        enc: &EncoderConfig,
        cfg: &SimClrConfig,
        in_channels: usize,
        device: &Device,
    ) -> Self {
        let encoder = enc.init(in_channels, device);
        let projector = Mlp::new(enc.out_dim(), cfg.proj_hidden, cfg.proj_dim, true, device);
        Self {
            encoder,
            projector,
            temperature: cfg.temperature,
            positives_only: cfg.positives_only,
        }
    }

    /// Loss for two views of the same N images, each [N, C, H, W].
    pub fn loss_views(&self, view1: Tensor<4>, view2: Tensor<4>) -> Tensor<1> {
        // Both views go through one forward pass, so BatchNorm sees all 2N images.
        let x = Tensor::cat(vec![view1, view2], 0);
        let z = self.projector.forward(self.encoder.forward(x));
        if self.positives_only {
            positives_only(z, self.temperature)
        } else {
            nt_xent(z, self.temperature)
        }
    }
}
