//! Sentence embeddings from a pretrained BERT encoder, the recipe of sentence-transformers'
//! all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT", §3: mean pooling): the mean of
//! the last hidden states over the real tokens (attention mask 1), then L2 normalization.
//!
//! A model folder holds `config.json` (Hugging Face BERT), `model.safetensors` (`BertModel`
//! tensor names) and `tokenizer.json` (WordPiece with its `[CLS] … [SEP]` template, truncation
//! and padding settings), as sentence-transformers saves it.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use burn::tensor::{Device, Int, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::tokenizer::HfTokenizer;
use super::weights::Weights;
use crate::methods::clm::int_tensor;
use crate::methods::mlm::{pool, BertConfig, BertModel, Pooling};

/// Sentences per forward pass in [`SentenceEncoder::embed`].
const BATCH: usize = 32;

/// Token ids of one sentence as the model folder's `tokenizer.json` produces them
/// (special tokens, truncation and padding included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSentence {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// The token strings, padding included.
    pub tokens: Vec<String>,
}

/// A BERT encoder with its tokenizer, producing L2-normalized mean-pooled embeddings.
pub struct SentenceEncoder {
    pub bert: BertModel,
    pub config: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    dir: PathBuf,
}

impl SentenceEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let file = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            ensure!(
                p.is_file(),
                "{}: missing {name} (a sentence-embedding model folder holds config.json, \
                 model.safetensors and tokenizer.json)",
                dir.display()
            );
            Ok(p)
        };
        let config = BertConfig::load_hf(file("config.json")?)?;
        let weights = float_tensors(&file("model.safetensors")?)?;
        let bert = config
            .init_encoder_from_weights(&weights, device)
            .with_context(|| format!("loading {}", dir.join("model.safetensors").display()))?;
        let mut tokenizer = HfTokenizer::from_file(file("tokenizer.json")?)?
            .inner()
            .clone();
        // Never feed more positions than the model has.
        let max_len = config.max_position_embeddings;
        let trunc = match tokenizer.get_truncation() {
            Some(t) if t.max_length <= max_len => None,
            Some(t) => Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..t.clone()
            }),
            None => Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }),
        };
        if let Some(t) = trunc {
            tokenizer.with_truncation(Some(t)).map_err(|e| {
                anyhow::anyhow!(
                    "{}: setting truncation: {e}",
                    dir.join("tokenizer.json").display()
                )
            })?;
        }
        Ok(Self {
            bert,
            config,
            tokenizer,
            dir: dir.to_path_buf(),
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The folder the model was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tokenizes as `tokenizer.json` is configured (with its padding, if any).
    pub fn tokenize(&self, sentences: &[&str]) -> Result<Vec<EncodedSentence>> {
        let encodings = self
            .tokenizer
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: tokenizing: {e}",
                    self.dir.join("tokenizer.json").display()
                )
            })?;
        Ok(encodings
            .into_iter()
            .map(|e| EncodedSentence {
                input_ids: e.get_ids().to_vec(),
                token_type_ids: e.get_type_ids().to_vec(),
                attention_mask: e.get_attention_mask().to_vec(),
                tokens: e.get_tokens().to_vec(),
            })
            .collect())
    }

    /// One L2-normalized embedding per sentence (`dim()` values each). Sentences run in
    /// batches padded only to their longest member (padding keys are masked, so this equals
    /// running them at any padded length).
    pub fn embed(&self, sentences: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(sentences.len());
        for chunk in sentences.chunks(BATCH) {
            let emb = self.embed_batch(&self.tokenize(chunk)?)?;
            let values = emb
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading embeddings: {e:?}"))?;
            out.extend(values.chunks_exact(self.dim()).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Embeddings `[N, dim]` of tokenized sentences.
    pub fn embed_batch(&self, batch: &[EncodedSentence]) -> Result<Tensor<2>> {
        ensure!(!batch.is_empty(), "no sentences to embed");
        let len = batch
            .iter()
            .map(|e| e.attention_mask.iter().filter(|&&m| m == 1).count())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = batch.len();
        let mut ids = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in batch {
            ensure!(
                e.attention_mask
                    .iter()
                    .skip_while(|&&m| m == 1)
                    .all(|&m| m == 0),
                "padding is expected after the tokens (right padding)"
            );
            let take = |v: &[u32], pad: u32| {
                let mut row: Vec<u32> = v.iter().take(len).copied().collect();
                row.resize(len, pad);
                row
            };
            ids.extend(take(&e.input_ids, 0));
            types.extend(take(&e.token_type_ids, 0));
            mask.extend(take(&e.attention_mask, 0));
        }
        let device = self.bert.device();
        let mask = int_tensor(&mask, [n, len], &device);
        let hidden = self.bert.forward(
            int_tensor(&ids, [n, len], &device),
            int_tensor(&types, [n, len], &device),
            mask.clone(),
        );
        Ok(mean_pool_l2(hidden, mask))
    }
}

/// The floating-point tensors of a safetensors file. Hugging Face BERT checkpoints may also
/// hold integer buffers (`embeddings.position_ids`, I64), which the model does not use.
fn float_tensors(path: &Path) -> Result<Weights> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{name}: not a valid safetensors file: {e:?}"))?;
    let all = st.tensors();
    let n = all.len();
    let floats: Vec<_> = all
        .into_iter()
        .filter(|(_, v)| {
            matches!(
                v.dtype(),
                Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16
            )
        })
        .collect();
    if floats.len() == n {
        return Weights::from_bytes(&bytes, &name);
    }
    let kept =
        safetensors::serialize(floats, &None).map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
    Weights::from_bytes(&kept, &name)
}

/// Mean of `hidden` `[B, T, D]` over positions with `attention_mask` 1, divided by its L2
/// norm (at least 1e-12, as `torch.nn.functional.normalize`).
pub fn mean_pool_l2(hidden: Tensor<3>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
    let pooled = pool(hidden, attention_mask, Pooling::Mean);
    let [b, d] = pooled.dims();
    let norm = pooled
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    pooled / norm.expand([b, d])
}
