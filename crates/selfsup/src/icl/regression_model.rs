//! The in-context regression transformer of Garg et al. 2022: GPT-2 blocks that read real vectors.
//!
//! A sequence of n pairs becomes 2n tokens `x₁, (y₁,0,…,0), x₂, (y₂,0,…,0), …` of width `dim`; a
//! linear read-in maps them to `d_model`, learned absolute positions are added, the causal GPT
//! blocks of [`crate::methods::clm`] run, and a linear read-out gives one scalar per token. The
//! scalar at token x_{k+1} is the prediction of y_{k+1} from the k pairs before it (the causal
//! mask hides y_{k+1} itself). Loss: squared error at every x token, divided by the number of
//! active dimensions (y has variance d, so every curriculum stage starts at loss ≈ 1).

use crate::nn::fused_linear::linear as fused_linear;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use super::regression::RegressionBatch;
use crate::methods::clm::Block;
use crate::nn::transformer::{
    embedding_table, linear, CausalSelfAttentionConfig, FeedForward, LayerNorm,
};

/// Sizes of a [`RegressionGpt`].
#[derive(Config, Debug)]
pub struct RegressionGptConfig {
    /// Width of x (the curriculum's largest dimension).
    pub dim: usize,
    /// Largest number of (x, y) pairs per sequence; the context is twice this.
    pub max_points: usize,
    #[config(default = 64)]
    pub d_model: usize,
    #[config(default = 4)]
    pub n_layers: usize,
    #[config(default = 4)]
    pub n_heads: usize,
}

impl RegressionGptConfig {
    /// GPT-2 init (N(0, 0.02²), residual projections scaled by 1/√(2·layers)); no dropout, as in
    /// the paper.
    pub fn init(&self, device: &Device) -> RegressionGpt {
        assert!(
            self.n_heads > 0 && self.d_model.is_multiple_of(self.n_heads),
            "d_model {} is not a multiple of n_heads {}",
            self.d_model,
            self.n_heads
        );
        let std = 0.02;
        let proj_std = std / (2.0 * self.n_layers as f64).sqrt();
        let eps = 1e-5;
        let d = self.d_model;
        let h = (0..self.n_layers)
            .map(|_| Block {
                ln_1: LayerNorm::new(d, eps, device),
                attn: CausalSelfAttentionConfig::new(d, self.n_heads)
                    .with_init_std(std)
                    .with_proj_init_std(proj_std)
                    .init(device),
                ln_2: LayerNorm::new(d, eps, device),
                mlp: FeedForward {
                    fc: linear(d, 4 * d, std, device),
                    proj: linear(4 * d, d, proj_std, device),
                    dropout: DropoutConfig::new(0.0).init(),
                },
            })
            .collect();
        RegressionGpt {
            read_in: linear(self.dim, d, std, device),
            wpe: embedding_table(2 * self.max_points, d, std, device),
            h,
            ln_f: LayerNorm::new(d, eps, device),
            read_out: linear(d, 1, std, device),
        }
    }
}

/// Read-in, GPT-2 blocks, read-out.
#[derive(Module, Debug)]
pub struct RegressionGpt {
    /// `[dim → d_model]`, shared by x and y tokens.
    pub read_in: Linear,
    /// Learned absolute positions `[2·max_points, d_model]`.
    pub wpe: Param<Tensor<2>>,
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
    /// `[d_model → 1]`.
    pub read_out: Linear,
}

impl RegressionGpt {
    pub fn dim(&self) -> usize {
        self.read_in.weight.val().dims()[0]
    }

    pub fn max_points(&self) -> usize {
        self.wpe.val().dims()[0] / 2
    }

    pub fn device(&self) -> Device {
        self.wpe.val().device()
    }

    /// `xs` `[B, n, dim]`, `ys` `[B, n]` → predictions `[B, n]`: entry k reads pairs 0..k and x_k.
    pub fn forward(&self, xs: Tensor<3>, ys: Tensor<2>) -> Tensor<2> {
        let [b, n, dim] = xs.dims();
        assert!(
            n <= self.max_points(),
            "{n} points exceed the model's {}",
            self.max_points()
        );
        // y tokens: the value in the first coordinate, zeros elsewhere.
        let y_tok = Tensor::cat(
            vec![
                ys.clone().reshape([b, n, 1]),
                Tensor::zeros([b, n, dim - 1], &xs.device()),
            ],
            2,
        );
        // [B, n, 2, dim] → [B, 2n, dim] interleaves x₁, y₁, x₂, y₂, …
        let tokens: Tensor<3> = Tensor::stack::<4>(vec![xs, y_tok], 2).reshape([b, 2 * n, dim]);
        let d = self.wpe.val().dims()[1];
        let pos = self.wpe.val().narrow(0, 0, 2 * n).reshape([1, 2 * n, d]);
        let mut x = fused_linear(&self.read_in, tokens) + pos.expand([b, 2 * n, d]);
        for block in &self.h {
            x = block.forward(x, None, false).0;
        }
        let out = fused_linear(&self.read_out, self.ln_f.forward(x)); // [B, 2n, 1]
        out.reshape([b, n, 2]).narrow(2, 0, 1).reshape([b, n])
    }

    /// The batch as tensors on the model's device: (xs `[B, n, dim]`, ys `[B, n]`).
    pub fn tensors(&self, batch: &RegressionBatch) -> (Tensor<3>, Tensor<2>) {
        assert_eq!(
            batch.dim,
            self.dim(),
            "batch width {} differs from the model's {}",
            batch.dim,
            self.dim()
        );
        let device = self.device();
        let (b, n, d) = (batch.batch, batch.points, batch.dim);
        let xs = Tensor::from_data(TensorData::new(batch.xs.clone(), [b, n, d]), &device);
        let ys = Tensor::from_data(TensorData::new(batch.ys.clone(), [b, n]), &device);
        (xs, ys)
    }

    /// Mean squared error over every x position, divided by the batch's active dimensions.
    pub fn loss_batch(&self, batch: &RegressionBatch) -> Tensor<1> {
        let (xs, ys) = self.tensors(batch);
        let pred = self.forward(xs, ys.clone());
        (pred - ys)
            .square()
            .mean()
            .div_scalar(batch.active as f64)
            .reshape([1])
    }

    /// Predictions `[batch, points]` (row-major, f64) for a batch.
    pub fn predict(&self, batch: &RegressionBatch) -> anyhow::Result<Vec<f64>> {
        let (xs, ys) = self.tensors(batch);
        let out = self.forward(xs, ys).into_data().try_into_vec_as::<f32>();
        let out = out.map_err(|e| anyhow::anyhow!("reading predictions: {e:?}"))?;
        Ok(out.into_iter().map(f64::from).collect())
    }
}

impl crate::methods::Objective for RegressionGpt {
    type Batch = RegressionBatch;
    fn loss(&self, batch: RegressionBatch) -> Tensor<1> {
        self.loss_batch(&batch)
    }
}
