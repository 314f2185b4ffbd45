//! BERT: an encoder-only transformer trained by masked language modelling.
//!
//! Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
//! Understanding", §3.1: 15% of the tokens are selected; of those 80% become [MASK], 10% a
//! random token and 10% stay unchanged; the loss is the cross-entropy of the original token at
//! the selected positions only. Post-LayerNorm blocks, token-type embeddings and the MLM head
//! (dense + GELU + LayerNorm, decoder tied to the word embeddings plus a bias) follow the
//! paper and Hugging Face's `BertForMaskedLM`, whose tensor names the checkpoint table keeps,
//! so all-MiniLM-L6-v2's `model.safetensors` loads through the same code.

use crate::nn::fused_linear::{linear as fused_linear, linear_residual};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::{Bool, Device, Int, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::clm::int_tensor;
use crate::lm::tokenizer::Tokenizer;
use crate::lm::weights::{export_slots, layer_norm_slots, linear_slots, Slot, Weights};
use crate::nn::transformer::{
    attention, embedding_table, linear, merge_heads, padding_mask, split_heads, FeedForward,
    LayerNorm,
};

/// Hyperparameters, field for field as in a Hugging Face BERT `config.json` (extra fields
/// there are ignored).
#[derive(Config, Debug)]
pub struct BertConfig {
    pub vocab_size: usize,
    #[config(default = 256)]
    pub hidden_size: usize,
    #[config(default = 4)]
    pub num_hidden_layers: usize,
    #[config(default = 4)]
    pub num_attention_heads: usize,
    #[config(default = 1024)]
    pub intermediate_size: usize,
    /// Only the exact-erf `"gelu"` is implemented.
    #[config(default = "String::from(\"gelu\")")]
    pub hidden_act: String,
    #[config(default = 0.1)]
    pub hidden_dropout_prob: f64,
    #[config(default = 0.1)]
    pub attention_probs_dropout_prob: f64,
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    #[config(default = 2)]
    pub type_vocab_size: usize,
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    #[config(default = 0.02)]
    pub initializer_range: f64,
    #[config(default = 0)]
    pub pad_token_id: usize,
}

impl BertConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn load_hf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a BERT config.json", path.display()))?;
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    /// Checks what `init` relies on.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.hidden_act == "gelu",
            "hidden_act {:?} is not supported (only the exact-erf \"gelu\")",
            self.hidden_act
        );
        ensure!(
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        Ok(())
    }

    /// The encoder alone, with BERT's N(0, initializer_range²) init.
    pub fn init_encoder(&self, device: &Device) -> BertModel {
        let d = self.hidden_size;
        let std = self.initializer_range;
        let dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let layers = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertSelfAttention {
                    query: linear(d, d, std, device),
                    key: linear(d, d, std, device),
                    value: linear(d, d, std, device),
                    dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                    n_heads: self.num_attention_heads,
                },
                attention_output: linear(d, d, std, device),
                attention_dropout: dropout(),
                attention_norm: LayerNorm::new(d, self.layer_norm_eps, device),
                ffn: FeedForward {
                    fc: linear(d, self.intermediate_size, std, device),
                    proj: linear(self.intermediate_size, d, std, device),
                    dropout: dropout(),
                },
                output_norm: LayerNorm::new(d, self.layer_norm_eps, device),
            })
            .collect();
        BertModel {
            embeddings: BertEmbeddings {
                word_embeddings: embedding_table(self.vocab_size, d, std, device),
                position_embeddings: embedding_table(self.max_position_embeddings, d, std, device),
                token_type_embeddings: embedding_table(self.type_vocab_size, d, std, device),
                layer_norm: LayerNorm::new(d, self.layer_norm_eps, device),
                dropout: dropout(),
            },
            layers,
        }
    }

    /// Encoder plus MLM head.
    pub fn init(&self, device: &Device) -> BertForMaskedLm {
        let d = self.hidden_size;
        BertForMaskedLm {
            bert: self.init_encoder(device),
            transform: linear(d, d, self.initializer_range, device),
            transform_norm: LayerNorm::new(d, self.layer_norm_eps, device),
            decoder_bias: Param::from_tensor(Tensor::zeros([self.vocab_size], device)),
        }
    }

    /// Encoder and MLM head with every parameter read from `weights` by its Hugging Face name.
    pub fn init_from_weights(&self, weights: &Weights, device: &Device) -> Result<BertForMaskedLm> {
        self.validate()?;
        let mut model = self.init(device);
        let prefix = bert_prefix(weights);
        for (name, slot) in model.checkpoint_slots(prefix) {
            slot.load(&name, weights, device)?;
        }
        Ok(model)
    }

    /// The encoder alone (e.g. a sentence-embedding checkpoint without `cls.*`).
    pub fn init_encoder_from_weights(
        &self,
        weights: &Weights,
        device: &Device,
    ) -> Result<BertModel> {
        self.validate()?;
        let mut model = self.init_encoder(device);
        let prefix = bert_prefix(weights);
        for (name, slot) in model.checkpoint_slots(prefix) {
            slot.load(&name, weights, device)?;
        }
        Ok(model)
    }
}

/// `BertForMaskedLM` checkpoints prefix the encoder with `bert.`; `BertModel` ones do not.
fn bert_prefix(weights: &Weights) -> &'static str {
    if !weights.contains("embeddings.word_embeddings.weight")
        && weights.contains("bert.embeddings.word_embeddings.weight")
    {
        "bert."
    } else {
        ""
    }
}

/// Word + position + token-type embeddings, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Param<Tensor<2>>,
    pub position_embeddings: Param<Tensor<2>>,
    pub token_type_embeddings: Param<Tensor<2>>,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertEmbeddings {
    fn forward(&self, ids: Tensor<2, Int>, token_types: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let d = self.word_embeddings.val().dims()[1];
        let words = burn::tensor::module::embedding(self.word_embeddings.val(), ids);
        let types = burn::tensor::module::embedding(self.token_type_embeddings.val(), token_types);
        let pos = self
            .position_embeddings
            .val()
            .narrow(0, 0, t)
            .reshape([1, t, d])
            .expand([b, t, d]);
        self.dropout
            .forward(self.layer_norm.forward(words + pos + types))
    }
}

/// Bidirectional multi-head self-attention with separate q/k/v projections.
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub dropout: Dropout,
    pub n_heads: usize,
}

/// Post-LN layer: `x = LN(x + attn(x)); x = LN(x + ffn(x))`.
#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertSelfAttention,
    pub attention_output: Linear,
    pub attention_dropout: Dropout,
    pub attention_norm: LayerNorm,
    pub ffn: FeedForward,
    pub output_norm: LayerNorm,
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4, Bool>>) -> (Tensor<3>, Tensor<4>) {
        let a = &self.attention;
        let q = split_heads(fused_linear(&a.query, x.clone()), a.n_heads);
        let k = split_heads(fused_linear(&a.key, x.clone()), a.n_heads);
        let v = split_heads(fused_linear(&a.value, x.clone()), a.n_heads);
        let (context, probs) = attention(q, k, v, mask, &a.dropout);
        let context = merge_heads(context);
        let x = self
            .attention_norm
            .forward(if self.attention_dropout.prob == 0.0 {
                // The residual added inside the output projection's GEMM.
                linear_residual(&self.attention_output, context, x)
            } else {
                x + self
                    .attention_dropout
                    .forward(fused_linear(&self.attention_output, context))
            });
        let x = self.output_norm.forward(self.ffn.forward_add(x.clone(), x));
        (x, probs)
    }
}

/// The BERT encoder (Hugging Face `BertModel` without the pooler).
#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
}

/// Encoder activations kept for inspection and parity tests.
pub struct BertTrace {
    /// After the embeddings, then after each layer.
    pub hidden: Vec<Tensor<3>>,
    pub attn_probs: Vec<Tensor<4>>,
}

impl BertModel {
    /// Checkpoint names (Hugging Face `BertModel`, after `prefix`) of every parameter.
    pub fn checkpoint_slots(&mut self, prefix: &str) -> Vec<(String, Slot<'_>)> {
        let e = &mut self.embeddings;
        let pe = format!("{prefix}embeddings.");
        let mut slots = vec![
            (
                format!("{pe}word_embeddings.weight"),
                Slot::Same2(&mut e.word_embeddings),
            ),
            (
                format!("{pe}position_embeddings.weight"),
                Slot::Same2(&mut e.position_embeddings),
            ),
            (
                format!("{pe}token_type_embeddings.weight"),
                Slot::Same2(&mut e.token_type_embeddings),
            ),
        ];
        slots.extend(layer_norm_slots(
            &format!("{pe}LayerNorm"),
            &mut e.layer_norm,
        ));
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("{prefix}encoder.layer.{l}.");
            let BertLayer {
                attention,
                attention_output,
                attention_norm,
                ffn,
                output_norm,
                ..
            } = layer;
            let s = format!("{p}attention.self.");
            slots.extend(linear_slots(&format!("{s}query"), &mut attention.query));
            slots.extend(linear_slots(&format!("{s}key"), &mut attention.key));
            slots.extend(linear_slots(&format!("{s}value"), &mut attention.value));
            slots.extend(linear_slots(
                &format!("{p}attention.output.dense"),
                attention_output,
            ));
            slots.extend(layer_norm_slots(
                &format!("{p}attention.output.LayerNorm"),
                attention_norm,
            ));
            slots.extend(linear_slots(&format!("{p}intermediate.dense"), &mut ffn.fc));
            slots.extend(linear_slots(&format!("{p}output.dense"), &mut ffn.proj));
            slots.extend(layer_norm_slots(
                &format!("{p}output.LayerNorm"),
                output_norm,
            ));
        }
        slots
    }

    pub fn device(&self) -> Device {
        self.embeddings.word_embeddings.val().device()
    }

    /// Last hidden states `[B, T, D]`. `attention_mask` is 1 for real tokens and 0 for padding
    /// (padding keys are ignored; padded query rows are computed but meaningless).
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        token_types: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        let mut x = self.embeddings.forward(ids, token_types);
        let mask = padding_mask(attention_mask);
        for layer in &self.layers {
            x = layer.forward(x, Some(mask.clone())).0;
        }
        x
    }

    pub fn forward_trace(
        &self,
        ids: Tensor<2, Int>,
        token_types: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> BertTrace {
        let mut x = self.embeddings.forward(ids, token_types);
        let mask = padding_mask(attention_mask);
        let mut hidden = vec![x.clone()];
        let mut attn_probs = Vec::new();
        for layer in &self.layers {
            let (y, probs) = layer.forward(x, Some(mask.clone()));
            x = y;
            hidden.push(x.clone());
            attn_probs.push(probs);
        }
        BertTrace { hidden, attn_probs }
    }

    /// One vector per sequence from the last hidden states (see [`pool`]).
    pub fn represent(&self, batch: &MlmBatch, pooling: Pooling) -> Result<Tensor<2>> {
        let device = self.device();
        let (ids, types, mask) = batch.input_tensors(&device)?;
        let hidden = self.forward(ids, types, mask.clone());
        Ok(pool(hidden, mask, pooling))
    }
}

/// How a sequence representation is read from the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Pooling {
    /// The hidden state of the first token ([CLS]).
    Cls,
    /// The mean of the hidden states of the real (attention mask 1) tokens.
    Mean,
}

/// `hidden` `[B, T, D]` → `[B, D]`.
pub fn pool(hidden: Tensor<3>, attention_mask: Tensor<2, Int>, pooling: Pooling) -> Tensor<2> {
    let [b, t, d] = hidden.dims();
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1).reshape([b, d]),
        Pooling::Mean => {
            let m = attention_mask.float().reshape([b, t, 1]);
            let sum = (hidden * m.clone().expand([b, t, d]))
                .sum_dim(1)
                .reshape([b, d]);
            let count = m.sum_dim(1).reshape([b, 1]).clamp_min(1.0);
            sum / count.expand([b, d])
        }
    }
}

/// BERT encoder with the masked-LM head; the decoder is the word embedding (tied) plus a bias.
#[derive(Module, Debug)]
pub struct BertForMaskedLm {
    pub bert: BertModel,
    /// `cls.predictions.transform.dense`.
    pub transform: Linear,
    /// `cls.predictions.transform.LayerNorm`.
    pub transform_norm: LayerNorm,
    /// `cls.predictions.bias`.
    pub decoder_bias: Param<Tensor<1>>,
}

impl BertForMaskedLm {
    /// The one mapping table between Hugging Face names and parameters.
    pub fn checkpoint_slots(&mut self, prefix: &str) -> Vec<(String, Slot<'_>)> {
        let mut slots = self.bert.checkpoint_slots(prefix);
        slots.extend(linear_slots(
            "cls.predictions.transform.dense",
            &mut self.transform,
        ));
        slots.extend(layer_norm_slots(
            "cls.predictions.transform.LayerNorm",
            &mut self.transform_norm,
        ));
        slots.push((
            "cls.predictions.bias".to_string(),
            Slot::Same1(&mut self.decoder_bias),
        ));
        slots
    }

    pub fn vocab_size(&self) -> usize {
        self.decoder_bias.val().dims()[0]
    }

    /// Every parameter under its Hugging Face name (no `bert.` prefix).
    pub fn export(&self) -> Weights {
        export_slots("bert", self.clone().checkpoint_slots(""))
    }

    /// MLM head on hidden states `[N, D]` → logits `[N, V]`.
    pub fn head(&self, hidden: Tensor<2>) -> Tensor<2> {
        let h = self
            .transform_norm
            .forward(gelu(fused_linear(&self.transform, hidden)));
        let [n, _] = h.dims();
        let v = self.vocab_size();
        h.matmul(self.bert.embeddings.word_embeddings.val().transpose())
            + self.decoder_bias.val().reshape([1, v]).expand([n, v])
    }

    /// Logits `[B, T, V]` at every position.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        token_types: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        let hidden = self.bert.forward(ids, token_types, attention_mask);
        let [b, t, d] = hidden.dims();
        self.head(hidden.reshape([b * t, d]))
            .reshape([b, t, self.vocab_size()])
    }

    /// Mean cross-entropy over the labelled positions (label ≠ -100); the head runs on those
    /// positions only.
    pub fn loss(&self, batch: &MlmBatch) -> Result<Tensor<1>> {
        let device = self.bert.device();
        let (ids, types, mask) = batch.input_tensors(&device)?;
        let positions: Vec<u32> = (0..batch.labels.len())
            .filter(|&i| batch.labels[i] != IGNORE)
            .map(|i| i as u32)
            .collect();
        ensure!(!positions.is_empty(), "MLM batch has no labelled position");
        let targets: Vec<u32> = positions
            .iter()
            .map(|&i| batch.labels[i as usize] as u32)
            .collect();
        let hidden = self.bert.forward(ids, types, mask);
        let [b, t, d] = hidden.dims();
        let n = positions.len();
        let selected = hidden
            .reshape([b * t, d])
            .select(0, int_tensor(&positions, [n], &device));
        let logp = log_softmax(self.head(selected), 1);
        Ok(logp
            .gather(1, int_tensor(&targets, [n, 1], &device))
            .mean()
            .neg())
    }
}

/// Label of a position that carries no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// A padded batch for the encoder, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlmBatch {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// The original token at selected positions, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
    pub batch: usize,
    pub seq_len: usize,
}

impl MlmBatch {
    pub fn input_tensors(
        &self,
        device: &Device,
    ) -> Result<(Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>)> {
        let shape = [self.batch, self.seq_len];
        let n = self.batch * self.seq_len;
        ensure!(
            self.input_ids.len() == n
                && self.token_type_ids.len() == n
                && self.attention_mask.len() == n
                && self.labels.len() == n,
            "MLM batch fields do not all hold {n} = {}×{} entries",
            self.batch,
            self.seq_len
        );
        Ok((
            int_tensor(&self.input_ids, shape, device),
            int_tensor(&self.token_type_ids, shape, device),
            int_tensor(&self.attention_mask, shape, device),
        ))
    }

    /// `[CLS] seq [SEP]` per sequence, padded to the longest, then masked (see
    /// [`mask_tokens`]) with an RNG seeded by (seed, step). At least one position of the
    /// batch is selected, so the loss is always defined.
    pub fn from_sequences(
        seqs: &[&[u32]],
        vocab: &MlmVocab,
        masking: &MaskingConfig,
        seed: u64,
        step: usize,
    ) -> Result<Self> {
        ensure!(!seqs.is_empty(), "MLM batch of no sequences");
        let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0) + 2;
        let mut batch = Self {
            input_ids: Vec::with_capacity(seqs.len() * seq_len),
            token_type_ids: vec![0; seqs.len() * seq_len],
            attention_mask: Vec::with_capacity(seqs.len() * seq_len),
            labels: Vec::with_capacity(seqs.len() * seq_len),
            batch: seqs.len(),
            seq_len,
        };
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for s in seqs {
            if let Some(&bad) = s.iter().find(|&&id| id as usize >= vocab.vocab_size) {
                bail!(
                    "token {bad} is outside the MLM vocabulary of {}",
                    vocab.vocab_size
                );
            }
            let mut row = Vec::with_capacity(seq_len);
            row.push(vocab.cls);
            row.extend_from_slice(s);
            row.push(vocab.sep);
            let real = row.len();
            row.resize(seq_len, vocab.pad);
            let (inputs, labels) = mask_tokens(&row, vocab, masking, &mut rng);
            batch.input_ids.extend(inputs);
            batch.labels.extend(labels);
            batch
                .attention_mask
                .extend((0..seq_len).map(|i| u32::from(i < real)));
        }
        if batch.labels.iter().all(|&l| l == IGNORE) {
            // Too few candidates to be sure of a selection: mask one at random.
            let candidates: Vec<usize> = (0..batch.input_ids.len())
                .filter(|&i| !vocab.is_special(batch.input_ids[i]))
                .collect();
            ensure!(!candidates.is_empty(), "MLM batch holds no maskable token");
            let i = candidates[rng.gen_range(0..candidates.len())];
            batch.labels[i] = batch.input_ids[i] as i64;
            batch.input_ids[i] = vocab.mask;
        }
        Ok(batch)
    }

    /// Random contiguous windows (e.g. from `TextDataset::windows`, `[batch, len]` row-major)
    /// turned into an MLM batch.
    pub fn from_windows(
        windows: &[u32],
        len: usize,
        vocab: &MlmVocab,
        masking: &MaskingConfig,
        seed: u64,
        step: usize,
    ) -> Result<Self> {
        ensure!(
            len > 0 && windows.len().is_multiple_of(len),
            "windows are not rows of {len} tokens"
        );
        let seqs: Vec<&[u32]> = windows.chunks_exact(len).collect();
        Self::from_sequences(&seqs, vocab, masking, seed, step)
    }
}

/// Special ids of the masked-LM vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MlmVocab {
    /// Model vocabulary (the tokenizer's, plus appended special tokens where it lacks them).
    pub vocab_size: usize,
    pub pad: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
    /// Every id never selected for masking nor drawn as a random replacement.
    pub special: Vec<u32>,
}

impl MlmVocab {
    /// Uses the tokenizer's [PAD]/[CLS]/[SEP]/[MASK] where it has them; the missing ones
    /// (all of them for bytes, characters and GPT-2 BPE) get new ids after its vocabulary.
    pub fn for_tokenizer(tokenizer: &dyn Tokenizer) -> Self {
        let st = tokenizer.special_tokens();
        let mut next = tokenizer.vocab_size() as u32;
        let mut take = |id: Option<u32>| {
            id.unwrap_or_else(|| {
                next += 1;
                next - 1
            })
        };
        let pad = take(st.pad);
        let cls = take(st.cls);
        let sep = take(st.sep);
        let mask = take(st.mask);
        let mut special = st.ids();
        special.extend([pad, cls, sep, mask]);
        special.sort_unstable();
        special.dedup();
        Self {
            vocab_size: next as usize,
            pad,
            cls,
            sep,
            mask,
            special,
        }
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }
}

/// The masking recipe of BERT §3.1.
#[derive(Config, Debug)]
pub struct MaskingConfig {
    /// Probability that a (non-special, non-padding) token is selected.
    #[config(default = 0.15)]
    pub select_prob: f64,
    /// Of the selected: fraction replaced by [MASK].
    #[config(default = 0.8)]
    pub mask_frac: f64,
    /// Of the selected: fraction replaced by a random non-special token (the rest is kept).
    #[config(default = 0.1)]
    pub random_frac: f64,
}

/// Selects each non-special token with probability `select_prob`; a selected token becomes
/// [MASK] (80%), a random non-special token (10%) or stays (10%). Returns the inputs and the
/// labels (the original token where selected, [`IGNORE`] elsewhere).
pub fn mask_tokens(
    ids: &[u32],
    vocab: &MlmVocab,
    cfg: &MaskingConfig,
    rng: &mut impl Rng,
) -> (Vec<u32>, Vec<i64>) {
    let mut inputs = ids.to_vec();
    let mut labels = vec![IGNORE; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        if vocab.is_special(id) || !rng.gen_bool(cfg.select_prob) {
            continue;
        }
        labels[i] = id as i64;
        let u: f64 = rng.gen();
        if u < cfg.mask_frac {
            inputs[i] = vocab.mask;
        } else if u < cfg.mask_frac + cfg.random_frac {
            inputs[i] = random_token(vocab, rng).unwrap_or(id);
        }
    }
    (inputs, labels)
}

fn random_token(vocab: &MlmVocab, rng: &mut impl Rng) -> Option<u32> {
    if vocab.special.len() >= vocab.vocab_size {
        return None;
    }
    loop {
        let t = rng.gen_range(0..vocab.vocab_size as u32);
        if !vocab.is_special(t) {
            return Some(t);
        }
    }
}
