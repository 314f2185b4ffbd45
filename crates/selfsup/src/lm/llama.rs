//! Llama: a pre-norm decoder with RMSNorm, rotary positions, grouped-query attention and a
//! SwiGLU MLP, loaded from a GGUF file (llama.cpp's format, e.g. SmolLM2).
//!
//! Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models", §2.2:
//! RMSNorm (Zhang & Sennrich 2019) `x / √(mean(x²) + ε) · w` before each sub-layer; SwiGLU
//! (Shazeer 2020) `down(silu(gate(h)) ⊙ up(h))`; rotary embeddings (Su et al. 2021, eq. 34):
//! each pair of features is rotated by `pos · θ_i`, `θ_i = base^(-2i/d_head)`.
//! Grouped-query attention (Ainslie et al. 2023): query head `j` reads key/value head
//! `j / (n_heads / n_kv_heads)`.
//!
//! Weights keep their GGUF names and layout (`blk.L.attn_q.weight` `[out, in]`, …). llama.cpp's
//! converter permutes the rows of `attn_q`/`attn_k` so that, used as stored, RoPE rotates
//! adjacent pairs `(x[2i], x[2i+1])` of each head (llama.cpp's "normal" mode); that is what
//! [`rope`] does. The LM head is `output.weight`, or the token embedding when it is absent.

use anyhow::{bail, ensure, Context, Result};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::bpe::GgufBpeTokenizer;
use super::gguf::GgufFile;
use crate::methods::clm::int_tensor;
use crate::nn::transformer::{attention, causal_mask, merge_heads, split_heads};

/// Hyperparameters, read from the GGUF `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    /// `llama.embedding_length`.
    pub d_model: usize,
    /// `llama.block_count`.
    pub n_layers: usize,
    /// `llama.attention.head_count`.
    pub n_heads: usize,
    /// `llama.attention.head_count_kv` (defaults to `n_heads`).
    pub n_kv_heads: usize,
    /// `llama.feed_forward_length`.
    pub d_ff: usize,
    /// `llama.rope.freq_base` (default 10000).
    pub rope_base: f64,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_eps: f64,
    /// `llama.context_length`.
    pub context_length: usize,
}

impl LlamaConfig {
    /// Reads `{arch}.*` keys (`general.architecture` must be `llama`); the vocabulary size
    /// is the token embedding's row count.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let src = gguf.source();
        let arch = gguf.get_str("general.architecture")?;
        ensure!(
            arch == "llama",
            "{src}: general.architecture is {arch:?}; only \"llama\" is supported"
        );
        let key = |k: &str| format!("{arch}.{k}");
        let n_heads = gguf.get_usize(&key("attention.head_count"))?;
        let n_kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(_) => gguf.get_usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        let rope_base = match gguf.get(&key("rope.freq_base")) {
            Some(_) => gguf.get_f64(&key("rope.freq_base"))?,
            None => 10000.0,
        };
        let embd = gguf
            .tensor_info("token_embd.weight")
            .with_context(|| format!("{src}: missing tensor token_embd.weight"))?;
        let shape = embd.shape();
        ensure!(
            shape.len() == 2,
            "{src}: tensor token_embd.weight has shape {shape:?}, expected [vocab, d_model]"
        );
        let cfg = Self {
            vocab_size: shape[0],
            d_model: gguf.get_usize(&key("embedding_length"))?,
            n_layers: gguf.get_usize(&key("block_count"))?,
            n_heads,
            n_kv_heads,
            d_ff: gguf.get_usize(&key("feed_forward_length"))?,
            rope_base,
            rms_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: gguf.get_usize(&key("context_length"))?,
        };
        cfg.validate().with_context(|| src.to_string())?;
        if let Some(v) = gguf.get(&key("rope.dimension_count")) {
            let dims = v.as_u64().unwrap_or(0) as usize;
            ensure!(
                dims == cfg.head_dim(),
                "{src}: {arch}.rope.dimension_count is {dims}; only RoPE over the whole head \
                 ({}) is supported",
                cfg.head_dim()
            );
        }
        if let Some(t) = gguf.get(&key("rope.scaling.type")) {
            ensure!(
                t.as_str() == Some("none"),
                "{src}: {arch}.rope.scaling.type {t:?} is not supported"
            );
        }
        if let Some(n) = gguf.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            ensure!(
                n as usize == cfg.vocab_size,
                "{src}: {arch}.vocab_size is {n} but token_embd.weight has {} rows",
                cfg.vocab_size
            );
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.n_heads > 0 && self.d_model.is_multiple_of(self.n_heads),
            "embedding_length {} is not a multiple of head_count {}",
            self.d_model,
            self.n_heads
        );
        ensure!(
            self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads),
            "head_count {} is not a multiple of head_count_kv {}",
            self.n_heads,
            self.n_kv_heads
        );
        ensure!(
            self.head_dim().is_multiple_of(2),
            "head dimension {} is odd; RoPE rotates pairs",
            self.head_dim()
        );
        ensure!(self.n_layers > 0, "block_count is 0");
        Ok(())
    }
}

/// RMSNorm over the last dimension, `x / √(mean(x²) + ε) · w`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let mut wshape = [1usize; D];
        wshape[D - 1] = dims[D - 1];
        let w = self.weight.val().reshape(wshape).expand(dims);
        x * (ms + self.eps).sqrt().recip().expand(dims) * w
    }
}

/// Rotary position embedding of `x` `[B, H, T, Dh]` whose positions are `start..start+T`:
/// each adjacent pair `(x[2i], x[2i+1])` is rotated by the angle `pos · base^(-2i/Dh)`.
pub fn rope(x: Tensor<4>, start: usize, base: f64) -> Tensor<4> {
    let [_, _, t, dh] = x.dims();
    let device = x.device();
    RopeTables::new(start, t, dh, base, &device).apply(x)
}

/// `cos` and `sin` `[T, Dh/2]` of the RoPE angles of positions `start..start+T`, computed as
/// Hugging Face does: `θ_i = 1 / base^(2i/Dh)` and `pos · θ_i` in f32.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl RopeTables {
    pub fn new(start: usize, t: usize, dh: usize, base: f64, device: &Device) -> Self {
        let half = dh / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dh as f32))
            .collect();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in start..start + t {
            for &f in &inv {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [t, half]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Rotates the adjacent pairs of `x` `[B, H, T, Dh]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, t, dh] = x.dims();
        let half = dh / 2;
        let expand = |v: &Tensor<2>| v.clone().reshape([1, 1, t, half]).expand([b, h, t, half]);
        let (cos, sin) = (expand(&self.cos), expand(&self.sin));
        let pairs = x.reshape([b, h, t, half, 2]);
        let x0 = pairs.clone().narrow(4, 0, 1).reshape([b, h, t, half]);
        let x1 = pairs.narrow(4, 1, 1).reshape([b, h, t, half]);
        let y0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let y1 = x0 * sin + x1 * cos;
        Tensor::stack::<5>(vec![y0, y1], 4).reshape([b, h, t, dh])
    }
}

/// Key/value heads `[B, Hkv, T, Dh]` repeated for grouped-query attention: output head `j`
/// is input head `j / groups`.
pub fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, hkv, t, dh] = x.dims();
    x.reshape([b, hkv, 1, t, dh])
        .expand([b, hkv, groups, t, dh])
        .reshape([b, hkv * groups, t, dh])
}

/// Self-attention with RoPE and grouped key/value heads; projections stored `[out, in]`.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    pub wq: Param<Tensor<2>>,
    pub wk: Param<Tensor<2>>,
    pub wv: Param<Tensor<2>>,
    pub wo: Param<Tensor<2>>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub dropout: Dropout,
}

/// `x` `[B, T, in]` times a weight stored `[out, in]`.
fn project(x: Tensor<3>, w: &Param<Tensor<2>>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let w = w.val();
    let out = w.dims()[0];
    x.reshape([b * t, d])
        .matmul(w.transpose())
        .reshape([b, t, out])
}

impl LlamaAttention {
    /// `x` `[B, T, D]` at the positions of `rope`; with a cache, the keys/values of the
    /// earlier positions come from it and this step's are appended.
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<(&mut LlamaCache, usize)>,
    ) -> Tensor<3> {
        let t = x.dims()[1];
        let q = rope.apply(split_heads(project(x.clone(), &self.wq), self.n_heads));
        let k = rope.apply(split_heads(project(x.clone(), &self.wk), self.n_kv_heads));
        let v = split_heads(project(x, &self.wv), self.n_kv_heads);
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, k, v),
            None => (k, v),
        };
        let groups = self.n_heads / self.n_kv_heads;
        let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
        let t_k = k.dims()[2];
        let mask = (t > 1).then(|| causal_mask(t, t_k, &q.device()));
        let (context, _) = attention(q, k, v, mask, &self.dropout);
        project(merge_heads(context), &self.wo)
    }
}

/// SwiGLU feed-forward `down(silu(gate(h)) ⊙ up(h))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    pub gate: Param<Tensor<2>>,
    pub up: Param<Tensor<2>>,
    pub down: Param<Tensor<2>>,
}

impl LlamaMlp {
    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let g = silu(project(h.clone(), &self.gate));
        project(g * project(h, &self.up), &self.down)
    }
}

/// `x = x + attn(norm(x)); x = x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct LlamaBlock {
    pub attn_norm: RmsNorm,
    pub attn: LlamaAttention,
    pub ffn_norm: RmsNorm,
    pub mlp: LlamaMlp,
}

/// Keys and values (before the grouped-query repeat) of every position seen so far: the same
/// cache as selfsup's GPT uses.
pub type LlamaCache = crate::nn::transformer::KvCache;

/// The decoder and its LM head.
#[derive(Module, Debug)]
pub struct Llama {
    /// `token_embd.weight` `[vocab, d_model]`.
    pub token_embd: Param<Tensor<2>>,
    pub blocks: Vec<LlamaBlock>,
    pub output_norm: RmsNorm,
    /// `output.weight` `[vocab, d_model]`; None when tied to `token_embd`.
    pub output: Option<Param<Tensor<2>>>,
    pub context_length: usize,
    /// RoPE base frequency.
    pub rope_base: f64,
}

/// Activations kept for inspection and parity tests.
pub struct LlamaTrace {
    /// `[B, T, V]`.
    pub logits: Tensor<3>,
    /// The embeddings, the residual stream after each block, then the final RMSNorm output.
    pub hidden: Vec<Tensor<3>>,
}

impl Llama {
    /// Builds the model from the tensors of `gguf` (dequantized to f32), checking each
    /// tensor's shape against the metadata.
    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<(Self, LlamaConfig)> {
        let cfg = LlamaConfig::from_gguf(gguf)?;
        let (d, dh) = (cfg.d_model, cfg.head_dim());
        let load2 = |name: &str, shape: [usize; 2]| -> Result<Param<Tensor<2>>> {
            let v = gguf.tensor(name, &shape)?;
            Ok(Param::from_tensor(Tensor::from_data(
                TensorData::new(v, shape),
                device,
            )))
        };
        let norm = |name: &str| -> Result<RmsNorm> {
            let v = gguf.tensor(name, &[d])?;
            Ok(RmsNorm {
                weight: Param::from_tensor(Tensor::from_data(TensorData::new(v, [d]), device)),
                eps: cfg.rms_eps,
            })
        };
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            blocks.push(LlamaBlock {
                attn_norm: norm(&p("attn_norm"))?,
                attn: LlamaAttention {
                    wq: load2(&p("attn_q"), [cfg.n_heads * dh, d])?,
                    wk: load2(&p("attn_k"), [cfg.n_kv_heads * dh, d])?,
                    wv: load2(&p("attn_v"), [cfg.n_kv_heads * dh, d])?,
                    wo: load2(&p("attn_output"), [d, cfg.n_heads * dh])?,
                    n_heads: cfg.n_heads,
                    n_kv_heads: cfg.n_kv_heads,
                    dropout: DropoutConfig::new(0.0).init(),
                },
                ffn_norm: norm(&p("ffn_norm"))?,
                mlp: LlamaMlp {
                    gate: load2(&p("ffn_gate"), [cfg.d_ff, d])?,
                    up: load2(&p("ffn_up"), [cfg.d_ff, d])?,
                    down: load2(&p("ffn_down"), [d, cfg.d_ff])?,
                },
            });
        }
        let output = if gguf.contains("output.weight") {
            Some(load2("output.weight", [cfg.vocab_size, d])?)
        } else {
            None
        };
        let model = Self {
            token_embd: load2("token_embd.weight", [cfg.vocab_size, d])?,
            blocks,
            output_norm: norm("output_norm.weight")?,
            output,
            context_length: cfg.context_length,
            rope_base: cfg.rope_base,
        };
        Ok((model, cfg))
    }

    pub fn vocab_size(&self) -> usize {
        self.token_embd.val().dims()[0]
    }

    pub fn d_model(&self) -> usize {
        self.token_embd.val().dims()[1]
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn device(&self) -> Device {
        self.token_embd.val().device()
    }

    /// A cache for [`Llama::forward_cached`].
    pub fn new_cache(&self) -> LlamaCache {
        LlamaCache::new(self.n_layers())
    }

    /// `ids` `[B, T]` → logits `[B, T, V]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let h = self.run(ids, None, None);
        self.head(h)
    }

    /// Logits and hidden states (see [`LlamaTrace`]).
    pub fn forward_trace(&self, ids: Tensor<2, Int>) -> LlamaTrace {
        let mut hidden = Vec::new();
        let h = self.run(ids, None, Some(&mut hidden));
        hidden.push(h.clone());
        LlamaTrace {
            logits: self.head(h),
            hidden,
        }
    }

    /// Final-norm hidden states `[B, T, D]`, without the LM head: features, and losses that
    /// need logits at a few positions only.
    pub fn hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.run(ids, None, None)
    }

    /// Forward for the positions after those in `cache` (appending to it).
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut LlamaCache) -> Tensor<3> {
        let h = self.run(ids, Some(cache), None);
        self.head(h)
    }

    /// Appends `ids` (one sequence) to `cache` and returns the logits after its last token;
    /// the LM head runs on that position only.
    pub fn next_logits(&self, ids: &[u32], cache: &mut LlamaCache) -> Result<Vec<f32>> {
        self.check_ids(ids, cache.len())?;
        let t = ids.len();
        let h = self.run(int_tensor(ids, [1, t], &self.device()), Some(cache), None);
        let d = self.d_model();
        let logits = self.head(h.narrow(1, t - 1, 1).reshape([1, 1, d]));
        logits
            .reshape([self.vocab_size()])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))
    }

    /// Log-probabilities (f64) of each token of `continuation` after `prompt`:
    /// `log p(c_j | prompt, c_<j)`.
    pub fn continuation_logprobs(&self, prompt: &[u32], continuation: &[u32]) -> Result<Vec<f64>> {
        ensure!(!prompt.is_empty(), "the prompt is empty");
        ensure!(!continuation.is_empty(), "the continuation is empty");
        let all: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
        self.check_ids(&all, 0)?;
        let t = all.len();
        let n = continuation.len();
        let h = self.run(int_tensor(&all, [1, t], &self.device()), None, None);
        let d = self.d_model();
        let rows = h.narrow(1, prompt.len() - 1, n).reshape([1, n, d]);
        let logits = self.head(rows).reshape([n, self.vocab_size()]);
        let values = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
        let v = self.vocab_size();
        Ok(values
            .chunks_exact(v)
            .zip(continuation)
            .map(|(row, &c)| log_softmax_f64(row)[c as usize])
            .collect())
    }

    /// `n` tokens chosen by argmax after `prompt` (no stop at end-of-text), using the cache.
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        ensure!(!prompt.is_empty(), "the prompt is empty");
        let mut cache = self.new_cache();
        let mut logits = self.next_logits(prompt, &mut cache)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let next = argmax(&logits);
            out.push(next);
            if i + 1 < n {
                logits = self.next_logits(&[next], &mut cache)?;
            }
        }
        Ok(out)
    }

    fn check_ids(&self, ids: &[u32], start: usize) -> Result<()> {
        ensure!(!ids.is_empty(), "no tokens to run");
        let v = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= v) {
            bail!("token {bad} is outside the model's vocabulary of {v}");
        }
        ensure!(
            start + ids.len() <= self.context_length,
            "sequence of {} positions exceeds the context length {}",
            start + ids.len(),
            self.context_length
        );
        Ok(())
    }

    /// Final-norm hidden states `[B, T, D]`.
    fn run(
        &self,
        ids: Tensor<2, Int>,
        mut cache: Option<&mut LlamaCache>,
        mut trace: Option<&mut Vec<Tensor<3>>>,
    ) -> Tensor<3> {
        let t = ids.dims()[1];
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = burn::tensor::module::embedding(self.token_embd.val(), ids);
        let dh = self.d_model() / self.blocks[0].attn.n_heads;
        let rope = RopeTables::new(start, t, dh, self.rope_base, &x.device());
        if let Some(tr) = trace.as_deref_mut() {
            tr.push(x.clone());
        }
        for (l, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| (c, l));
            let a = block
                .attn
                .forward(block.attn_norm.forward(x.clone()), &rope, slot);
            x = x + a;
            x = x.clone() + block.mlp.forward(block.ffn_norm.forward(x));
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(x.clone());
            }
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.output_norm.forward(x)
    }

    /// Hidden states `[B, T, D]` → logits `[B, T, V]`.
    fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = h.dims();
        let w = self.output.as_ref().unwrap_or(&self.token_embd).val();
        h.reshape([b * t, d])
            .matmul(w.transpose())
            .reshape([b, t, self.vocab_size()])
    }
}

/// Reads a Llama GGUF file: the model and its tokenizer.
pub fn load_gguf(
    path: impl AsRef<std::path::Path>,
    device: &Device,
) -> Result<(Llama, LlamaConfig, GgufBpeTokenizer)> {
    let gguf = GgufFile::open(path)?;
    let (model, cfg) = Llama::from_gguf(&gguf, device)?;
    let tokenizer = GgufBpeTokenizer::from_gguf(&gguf)?;
    Ok((model, cfg, tokenizer))
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax` in f64 of f32 logits.
pub fn log_softmax_f64(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&v| v as f64 - lse).collect()
}
