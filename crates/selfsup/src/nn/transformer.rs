//! Transformer building blocks shared by the GPT decoder (`methods::clm`) and the BERT encoder
//! (`methods::mlm`).
//!
//! Scaled dot-product attention, `softmax(q kᵀ / √d_head) v`, is eq. 1 of Vaswani et al. 2017,
//! "Attention Is All You Need"; LayerNorm is Ba et al. 2016; GELU (exact erf form) is Hendrycks &
//! Gimpel 2016.

use crate::nn::fused_linear::linear as fused_linear;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// LayerNorm over the last dimension with the biased variance, `(x-μ)/√(σ²+ε)·w + b`.
/// Parameter names are the checkpoints' (`weight`, `bias`) rather than burn's (`gamma`, `beta`).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    /// Weight 1, bias 0.
    pub fn new(d_model: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d_model], device)),
            bias: Param::from_tensor(Tensor::zeros([d_model], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // One pass forward and backward on the CPU backend (`nn::fused`).
        match super::fused::layer_norm(x.clone(), self.weight.val(), self.bias.val(), self.eps) {
            Some(y) => y,
            None => burn::tensor::module::layer_norm(
                x,
                self.weight.val(),
                Some(self.bias.val()),
                self.eps,
            ),
        }
    }
}

/// A `Linear` with weights drawn from N(0, std²) and a zero bias (the GPT-2 / BERT init).
pub fn linear(d_input: usize, d_output: usize, std: f64, device: &Device) -> Linear {
    let mut lin = LinearConfig::new(d_input, d_output)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    lin.bias = Some(Param::from_tensor(Tensor::zeros([d_output], device)));
    lin
}

/// An embedding table `[n, d]` drawn from N(0, std²).
pub fn embedding_table(n: usize, d: usize, std: f64, device: &Device) -> Param<Tensor<2>> {
    Initializer::Normal { mean: 0.0, std }.init([n, d], device)
}

/// Position-wise feed-forward network `fc → GELU → proj → dropout`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub fc: Linear,
    pub proj: Linear,
    pub dropout: Dropout,
}

impl FeedForward {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // The bias and GELU in one vectorized pass forward and backward on the CPU backend.
        let h = super::fused_linear::linear_gelu(&self.fc, x);
        self.dropout.forward(fused_linear(&self.proj, h))
    }

    /// `residual + self.forward(x)`. Without dropout the output projection adds the residual
    /// itself ([`super::fused_linear::linear_residual`]).
    pub fn forward_add<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        if self.dropout.prob != 0.0 {
            return residual + self.forward(x);
        }
        let h = super::fused_linear::linear_gelu(&self.fc, x);
        super::fused_linear::linear_residual(&self.proj, h, residual)
    }
}

/// `[B, T, H·Dh]` → `[B, H, T, Dh]`; head `h` takes features `h·Dh .. (h+1)·Dh`.
pub fn split_heads(x: Tensor<3>, n_heads: usize) -> Tensor<4> {
    let [b, t, d] = x.dims();
    x.reshape([b, t, n_heads, d / n_heads]).swap_dims(1, 2)
}

/// `[B, H, T, Dh]` → `[B, T, H·Dh]` (concatenated heads).
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, t, dh] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * dh])
}

/// Scaled dot-product attention. `mask` is true where a key must be ignored and broadcasts
/// to `[B, H, Tq, Tk]`. Masked scores get `f32::MIN` (as Hugging Face does) rather than -inf,
/// so a row with every key masked stays finite. Returns the context `[B, H, Tq, Dh]` and the
/// attention probabilities `[B, H, Tq, Tk]`.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    dropout: &Dropout,
) -> (Tensor<4>, Tensor<4>) {
    let [_, _, _, dh] = q.dims();
    let mut scores = q.matmul(k.transpose()).div_scalar((dh as f64).sqrt());
    if let Some(mask) = mask {
        let dims = scores.dims();
        scores = scores.mask_fill(mask.expand(dims), f32::MIN);
    }
    let probs = softmax(scores, 3);
    let context = dropout.forward(probs.clone()).matmul(v);
    (context, probs)
}

/// Causal mask `[1, 1, Tq, Tk]` for queries that are the last `Tq` of `Tk` positions:
/// query `i` (absolute position `Tk-Tq+i`) may not see key `j > Tk-Tq+i`.
pub fn causal_mask(t_q: usize, t_k: usize, device: &Device) -> Tensor<4, Bool> {
    let offset = t_k - t_q;
    let values: Vec<bool> = (0..t_q)
        .flat_map(|i| (0..t_k).map(move |j| j > offset + i))
        .collect();
    Tensor::from_data(TensorData::new(values, [1, 1, t_q, t_k]), device)
}

/// Key-padding mask `[B, 1, 1, T]` from a 0/1 attention mask `[B, T]` (true = padding key).
pub fn padding_mask(attention_mask: Tensor<2, Int>) -> Tensor<4, Bool> {
    let [b, t] = attention_mask.dims();
    attention_mask.equal_elem(0).reshape([b, 1, 1, t])
}

/// Keys and values of the positions seen so far, per layer, so that decoding one more token
/// costs one single-position forward step (no recomputation of the prefix).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Appends this step's keys/values `[B, H, T, Dh]` for `layer`; returns all of them.
    pub fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Records that `n` more positions were appended to every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// Configuration of [`CausalSelfAttention`].
#[derive(Config, Debug)]
pub struct CausalSelfAttentionConfig {
    pub d_model: usize,
    pub n_heads: usize,
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Standard deviation of the weight init.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation of the output projection init (GPT-2 scales it by 1/√(2·layers)).
    #[config(default = 0.02)]
    pub proj_init_std: f64,
}

impl CausalSelfAttentionConfig {
    pub fn init(&self, device: &Device) -> CausalSelfAttention {
        assert!(
            self.d_model.is_multiple_of(self.n_heads),
            "d_model {} is not a multiple of n_heads {}",
            self.d_model,
            self.n_heads
        );
        CausalSelfAttention {
            c_attn: linear(self.d_model, 3 * self.d_model, self.init_std, device),
            c_proj: linear(self.d_model, self.d_model, self.proj_init_std, device),
            attn_dropout: DropoutConfig::new(self.dropout).init(),
            resid_dropout: DropoutConfig::new(self.dropout).init(),
            n_heads: self.n_heads,
        }
    }
}

/// Multi-head self-attention with a fused q/k/v projection and a causal mask (GPT-2 layout).
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// `[D → 3D]`: features `0..D` are q, `D..2D` k, `2D..3D` v.
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub attn_dropout: Dropout,
    pub resid_dropout: Dropout,
    pub n_heads: usize,
}

impl CausalSelfAttention {
    /// `x`: `[B, T, D]`. With a cache, `x` holds the positions after the cached ones and the
    /// keys/values of `layer` are appended to it. Returns the output and, when `want_probs`, the
    /// attention probabilities. Without a cache, probabilities or attention dropout, the fused
    /// kernel of [`super::fused`] computes the attention.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cache: Option<(&mut KvCache, usize)>,
        want_probs: bool,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        self.run(x, None, cache, want_probs)
    }

    /// [`Self::forward`] with its output added to `residual` (`[B, T, D]`, the block's input in a
    /// pre-norm transformer); without dropout the output projection does the addition.
    pub fn forward_add(
        &self,
        x: Tensor<3>,
        residual: Tensor<3>,
        cache: Option<(&mut KvCache, usize)>,
        want_probs: bool,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        self.run(x, Some(residual), cache, want_probs)
    }

    fn run(
        &self,
        x: Tensor<3>,
        residual: Option<Tensor<3>>,
        cache: Option<(&mut KvCache, usize)>,
        want_probs: bool,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        let [_, t, d] = x.dims();
        let qkv = fused_linear(&self.c_attn, x);
        if cache.is_none() && !want_probs && self.attn_dropout.prob == 0.0 {
            let context = super::fused::causal_self_attention(qkv, self.n_heads);
            return (self.project(context, residual), None);
        }
        let q = split_heads(qkv.clone().narrow(2, 0, d), self.n_heads);
        let k = split_heads(qkv.clone().narrow(2, d, d), self.n_heads);
        let v = split_heads(qkv.narrow(2, 2 * d, d), self.n_heads);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let t_k = k.dims()[2];
        // A single new query sees every cached key: no mask needed.
        let mask = (t > 1).then(|| causal_mask(t, t_k, &q.device()));
        let (context, probs) = attention(q, k, v, mask, &self.attn_dropout);
        let y = self.project(merge_heads(context), residual);
        (y, want_probs.then_some(probs))
    }

    /// The output projection (and dropout) of the concatenated heads, plus `residual`.
    fn project(&self, context: Tensor<3>, residual: Option<Tensor<3>>) -> Tensor<3> {
        match residual {
            Some(r) if self.resid_dropout.prob == 0.0 => {
                super::fused_linear::linear_residual(&self.c_proj, context, r)
            }
            Some(r) => {
                r + self
                    .resid_dropout
                    .forward(fused_linear(&self.c_proj, context))
            }
            None => self
                .resid_dropout
                .forward(fused_linear(&self.c_proj, context)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_with_offset() {
        let device = Device::flex();
        let m = causal_mask(2, 4, &device)
            .into_data()
            .try_into_vec_as::<bool>()
            .unwrap();
        // Queries at absolute positions 2 and 3.
        assert_eq!(
            m,
            vec![false, false, false, true, false, false, false, false]
        );
    }

    #[test]
    fn heads_round_trip() {
        let device = Device::flex();
        let x = Tensor::<3>::from_data(
            TensorData::new((0..24).map(|i| i as f32).collect::<Vec<_>>(), [1, 3, 8]),
            &device,
        );
        let h = split_heads(x.clone(), 2);
        assert_eq!(h.dims(), [1, 2, 3, 4]);
        // Head 1, position 0 holds features 4..8 of position 0.
        let v = h.clone().narrow(1, 1, 1).narrow(2, 0, 1).into_data();
        assert_eq!(
            v.try_into_vec_as::<f32>().unwrap(),
            vec![4.0, 5.0, 6.0, 7.0]
        );
        let back = merge_heads(h).into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(back, x.into_data().try_into_vec_as::<f32>().unwrap());
    }
}
