//! GPT: a decoder-only transformer trained on causal language modelling (next-token
//! prediction), `L = -(1/BT) Σ_{b,t} log p(x_{b,t+1} | x_{b,≤t})`.
//!
//! Radford et al. 2018/2019, "Improving Language Understanding by Generative Pre-Training" and
//! "Language Models are Unsupervised Multitask Learners" (GPT-2: pre-LayerNorm blocks, a final
//! LayerNorm, learned absolute positions, LM head tied to the token embedding). Layout follows
//! nanoGPT's `model.py`.

use anyhow::{bail, ensure, Result};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::lm::weights::{export_slots, layer_norm_slots, linear_slots, Slot, Weights};
use crate::nn::transformer::{
    embedding_table, linear, CausalSelfAttention, CausalSelfAttentionConfig, FeedForward, KvCache,
    LayerNorm,
};

/// Hyperparameters of a GPT; serialized with the run.
#[derive(Config, Debug)]
pub struct GptConfig {
    pub vocab_size: usize,
    #[config(default = 256)]
    pub context_length: usize,
    #[config(default = 128)]
    pub d_model: usize,
    #[config(default = 4)]
    pub n_layers: usize,
    #[config(default = 4)]
    pub n_heads: usize,
    /// Hidden width of the MLP.
    #[config(default = 512)]
    pub d_ff: usize,
    #[config(default = 0.0)]
    pub dropout: f64,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
}

impl GptConfig {
    /// GPT-2 init: N(0, 0.02²) everywhere, residual projections scaled by 1/√(2·layers).
    pub fn init(&self, device: &Device) -> Gpt {
        assert!(
            self.d_model.is_multiple_of(self.n_heads),
            "d_model {} is not a multiple of n_heads {}",
            self.d_model,
            self.n_heads
        );
        let std = 0.02;
        let proj_std = std / (2.0 * self.n_layers as f64).sqrt();
        let h = (0..self.n_layers)
            .map(|_| Block {
                ln_1: LayerNorm::new(self.d_model, self.layer_norm_eps, device),
                attn: CausalSelfAttentionConfig::new(self.d_model, self.n_heads)
                    .with_dropout(self.dropout)
                    .with_init_std(std)
                    .with_proj_init_std(proj_std)
                    .init(device),
                ln_2: LayerNorm::new(self.d_model, self.layer_norm_eps, device),
                mlp: FeedForward {
                    fc: linear(self.d_model, self.d_ff, std, device),
                    proj: linear(self.d_ff, self.d_model, proj_std, device),
                    dropout: DropoutConfig::new(self.dropout).init(),
                },
            })
            .collect();
        Gpt {
            wte: embedding_table(self.vocab_size, self.d_model, std, device),
            wpe: embedding_table(self.context_length, self.d_model, std, device),
            drop: DropoutConfig::new(self.dropout).init(),
            h,
            ln_f: LayerNorm::new(self.d_model, self.layer_norm_eps, device),
        }
    }

    /// Builds the model and replaces every parameter by the checkpoint tensor of the same
    /// name (see [`Gpt::checkpoint_slots`]); extra tensors in `weights` are ignored.
    pub fn init_from_weights(&self, weights: &Weights, device: &Device) -> Result<Gpt> {
        let mut model = self.init(device);
        for (name, slot) in model.checkpoint_slots() {
            slot.load(&name, weights, device)?;
        }
        Ok(model)
    }
}

/// Pre-LayerNorm transformer block: `x += attn(ln_1(x)); x += mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: FeedForward,
}

impl Block {
    pub fn forward(
        &self,
        x: Tensor<3>,
        cache: Option<(&mut KvCache, usize)>,
        want_probs: bool,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        // The residual additions happen inside the output projections (`forward_add`).
        let (x, probs) = self
            .attn
            .forward_add(self.ln_1.forward(x.clone()), x, cache, want_probs);
        let x = self.mlp.forward_add(self.ln_2.forward(x.clone()), x);
        (x, probs)
    }
}

/// Decoder-only transformer with a tied LM head (the head's weight is `wte`).
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[V, D]`, also the LM head.
    pub wte: Param<Tensor<2>>,
    /// Learned absolute position embedding `[context, D]`.
    pub wpe: Param<Tensor<2>>,
    pub drop: Dropout,
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
}

/// Activations kept for inspection and parity tests.
pub struct GptTrace {
    pub logits: Tensor<3>,
    /// Residual stream after the embeddings, after each block, and after `ln_f`.
    pub hidden: Vec<Tensor<3>>,
    /// Attention probabilities `[B, H, T, T]` per layer.
    pub attn_probs: Vec<Tensor<4>>,
}

impl Gpt {
    /// The one mapping table between checkpoint names and parameters (GPT-2 names, linear
    /// weights stored `[out, in]`).
    pub fn checkpoint_slots(&mut self) -> Vec<(String, Slot<'_>)> {
        let mut slots = vec![
            ("wte.weight".to_string(), Slot::Same2(&mut self.wte)),
            ("wpe.weight".to_string(), Slot::Same2(&mut self.wpe)),
        ];
        for (l, block) in self.h.iter_mut().enumerate() {
            let p = format!("h.{l}.");
            let Block {
                ln_1,
                attn,
                ln_2,
                mlp,
            } = block;
            slots.extend(layer_norm_slots(&format!("{p}ln_1"), ln_1));
            slots.extend(linear_slots(&format!("{p}attn.c_attn"), &mut attn.c_attn));
            slots.extend(linear_slots(&format!("{p}attn.c_proj"), &mut attn.c_proj));
            slots.extend(layer_norm_slots(&format!("{p}ln_2"), ln_2));
            slots.extend(linear_slots(&format!("{p}mlp.c_fc"), &mut mlp.fc));
            slots.extend(linear_slots(&format!("{p}mlp.c_proj"), &mut mlp.proj));
        }
        slots.extend(layer_norm_slots("ln_f", &mut self.ln_f));
        slots
    }

    pub fn vocab_size(&self) -> usize {
        self.wte.val().dims()[0]
    }

    pub fn context_length(&self) -> usize {
        self.wpe.val().dims()[0]
    }

    pub fn n_layers(&self) -> usize {
        self.h.len()
    }

    /// Device holding the parameters.
    pub fn device(&self) -> Device {
        self.wte.val().device()
    }

    /// `ids` `[B, T]` (T ≤ context) → logits `[B, T, V]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.run(ids, None, false).logits
    }

    /// Final hidden states `[B, T, D]` (after `ln_f`), the representation for downstream tasks.
    /// Skips the LM head, the costliest matmul with a large vocabulary.
    pub fn hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        assert!(
            t <= self.context_length(),
            "sequence of {t} positions exceeds the context length {}",
            self.context_length()
        );
        let d = self.wte.val().dims()[1];
        let tok = burn::tensor::module::embedding(self.wte.val(), ids);
        let pos = self.wpe.val().narrow(0, 0, t).reshape([1, t, d]);
        let mut x = self.drop.forward(tok + pos.expand([b, t, d]));
        for block in &self.h {
            x = block.forward(x, None, false).0;
        }
        self.ln_f.forward(x)
    }

    /// Forward pass that also returns the hidden states and attention probabilities.
    pub fn forward_trace(&self, ids: Tensor<2, Int>) -> GptTrace {
        self.run(ids, None, true)
    }

    /// Forward for the positions after those in `cache` (appending to it): a prompt, then one
    /// token at a time. Positions must stay below the context length.
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.run(ids, Some(cache), false).logits
    }

    fn run(&self, ids: Tensor<2, Int>, mut cache: Option<&mut KvCache>, trace: bool) -> GptTrace {
        let [b, t] = ids.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        assert!(
            start + t <= self.context_length(),
            "sequence of {} positions exceeds the context length {}",
            start + t,
            self.context_length()
        );
        let d = self.wte.val().dims()[1];
        let tok = burn::tensor::module::embedding(self.wte.val(), ids);
        let pos = self.wpe.val().narrow(0, start, t).reshape([1, t, d]);
        let mut x = self.drop.forward(tok + pos.expand([b, t, d]));
        let mut hidden = Vec::new();
        let mut attn_probs = Vec::new();
        if trace {
            hidden.push(x.clone());
        }
        for (l, block) in self.h.iter().enumerate() {
            let (y, probs) = block.forward(x, cache.as_deref_mut().map(|c| (c, l)), trace);
            x = y;
            if trace {
                hidden.push(x.clone());
                attn_probs.extend(probs);
            }
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = self.ln_f.forward(x);
        if trace {
            hidden.push(x.clone());
        }
        // Tied head: x · wteᵀ, one GEMM over all positions on the CPU backend.
        let logits = crate::nn::fused_linear::linear_transposed(x, self.wte.val());
        GptTrace {
            logits,
            hidden,
            attn_probs,
        }
    }

    /// Mean next-token cross-entropy over all `B·T` positions; `targets[b, t]` is the token
    /// after `ids[b, t]`.
    pub fn loss(&self, ids: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<1> {
        cross_entropy(self.forward(ids), targets)
    }

    /// [`Gpt::loss`] on a host batch, as [`crate::lm::text_data::TextDataset::batch`] returns it.
    pub fn loss_batch(&self, batch: &TokenBatch) -> Result<Tensor<1>> {
        ensure!(
            batch.context <= self.context_length(),
            "batch context {} exceeds the model's context length {}",
            batch.context,
            self.context_length()
        );
        let vocab = self.vocab_size();
        if let Some(&bad) = batch
            .inputs
            .iter()
            .chain(&batch.targets)
            .find(|&&id| id as usize >= vocab)
        {
            bail!("token {bad} is outside the model's vocabulary of {vocab}");
        }
        let device = self.device();
        let (ids, targets) = batch.to_tensors(&device)?;
        Ok(self.loss(ids, targets))
    }

    /// Every parameter under its checkpoint name, in the checkpoint's layout.
    pub fn export(&self) -> Weights {
        export_slots("gpt", self.clone().checkpoint_slots())
    }
}

/// A batch of token windows: `inputs` and `targets` are row-major `[batch, context]`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub context: usize,
}

impl TokenBatch {
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor<2, Int>, Tensor<2, Int>)> {
        let n = self.batch * self.context;
        ensure!(
            self.inputs.len() == n && self.targets.len() == n,
            "token batch holds {} inputs and {} targets, expected {n} ({}×{})",
            self.inputs.len(),
            self.targets.len(),
            self.batch,
            self.context
        );
        Ok((
            int_tensor(&self.inputs, [self.batch, self.context], device),
            int_tensor(&self.targets, [self.batch, self.context], device),
        ))
    }
}

/// Token ids as an `Int` tensor.
pub fn int_tensor<const D: usize>(
    ids: &[u32],
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Int> {
    let values: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    // One pass per row on the CPU backend (`nn::fused_loss`), log_softmax + gather elsewhere.
    crate::nn::fused_loss::cross_entropy(logits.reshape([b * t, v]), targets.reshape([b * t]))
}
