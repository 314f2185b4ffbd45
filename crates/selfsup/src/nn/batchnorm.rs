//! Batch normalization with PyTorch's running-statistics convention.
//!
//! burn's own `BatchNorm` updates `running_var` with the biased batch variance; PyTorch (and so
//! every reference checkpoint) uses the unbiased one, `var · n/(n−1)`. We keep burn's fused
//! `batch_norm_train` kernel for the forward/backward and only change the running update, so the
//! fixture `conv_encoder` (BatchNorm in training mode) matches to float precision.

use burn::module::{Param, RunningState};
use burn::prelude::*;

/// BatchNorm over the channel axis (dim 1) of `[N, C, ...]` inputs; 1-d or 2-d alike.
#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNorm {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    /// Training statistics on an autodiff device (a training step), running statistics otherwise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_act(x, false)
    }

    /// `relu(self.forward(x))`, in one pass on the CPU backend.
    pub fn forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_act(x, true)
    }

    fn forward_act<const D: usize>(&self, x: Tensor<D>, relu: bool) -> Tensor<D> {
        let act = |y: Tensor<D>| {
            if relu {
                burn::tensor::activation::relu(y)
            } else {
                y
            }
        };
        let device = x.device();
        if !device.is_autodiff() {
            return act(burn::tensor::module::batch_norm(
                x,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.eps,
            ));
        }
        let dims = x.dims();
        let count: usize = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| *d)
            .product();
        // The fused kernel (normalization + ReLU, hand-written backward) on the CPU backend.
        let (output, batch_mean, batch_var) = match super::fused::batch_norm_train_nd(
            x.clone(),
            self.weight.val(),
            self.bias.val(),
            self.eps,
            relu,
        ) {
            Some(fused) => fused,
            None => {
                let out = burn::tensor::module::batch_norm_train(
                    x,
                    self.weight.val(),
                    self.bias.val(),
                    self.eps,
                );
                (act(out.output), out.mean, out.variance)
            }
        };
        let m = self.momentum;
        let unbias = if count > 1 {
            count as f64 / (count as f64 - 1.0)
        } else {
            1.0
        };
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let mean = mean
            .mul_scalar(1.0 - m)
            .add(batch_mean.detach().mul_scalar(m));
        let var = var
            .mul_scalar(1.0 - m)
            .add(batch_var.detach().mul_scalar(m * unbias));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        // RunningState defers updates per thread; flush now so that `value()`, checkpoints and
        // module visitors see this step's statistics.
        self.running_mean.value_sync();
        self.running_var.value_sync();
        output
    }
}
