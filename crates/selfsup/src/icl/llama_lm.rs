//! [`LanguageModel`] for a Llama-architecture GGUF checkpoint (e.g. SmolLM2): the prompt runs
//! once through the KV cache and each choice continues from a copy of it.

use super::model::{first_stop, LanguageModel};
use crate::lm::bpe::GgufBpeTokenizer;
use crate::lm::llama::{argmax, load_gguf, log_softmax_f64, Llama, LlamaConfig};
use crate::lm::tokenizer::Tokenizer;
use anyhow::{ensure, Result};
use burn::prelude::*;
use std::path::Path;

pub struct LlamaLm {
    name: String,
    model: Llama,
    cfg: LlamaConfig,
    tokenizer: GgufBpeTokenizer,
}

impl LlamaLm {
    /// Loads a GGUF file; the model name (the call-cache key) is the file name and size.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (model, cfg, tokenizer) = load_gguf(path, device)?;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let name = format!(
            "{}#{size}",
            path.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        );
        Ok(Self {
            name,
            model,
            cfg,
            tokenizer,
        })
    }

    /// A model built elsewhere (e.g. fine-tuned); `name` must identify its weights.
    pub fn from_parts(
        name: impl Into<String>,
        model: Llama,
        cfg: LlamaConfig,
        tokenizer: GgufBpeTokenizer,
    ) -> Self {
        Self {
            name: name.into(),
            model,
            cfg,
            tokenizer,
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn gguf_tokenizer(&self) -> &GgufBpeTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }
}

impl LanguageModel for LlamaLm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        &self.tokenizer
    }

    fn continuation_logprobs(&self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .choice_logprobs(context, &[continuation.to_vec()])?
            .remove(0))
    }

    fn choice_logprobs(
        &self,
        context: &[u32],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>> {
        ensure!(
            !context.is_empty(),
            "empty prompt: Llama scoring needs at least one context token"
        );
        let mut cache = self.model.new_cache();
        let first = log_softmax_f64(&self.model.next_logits(context, &mut cache)?);
        continuations
            .iter()
            .map(|c| {
                ensure!(!c.is_empty(), "empty continuation");
                let mut out = vec![first[c[0] as usize] as f32];
                let mut cache = cache.clone();
                for j in 1..c.len() {
                    let lp = log_softmax_f64(&self.model.next_logits(&c[j - 1..j], &mut cache)?);
                    out.push(lp[c[j] as usize] as f32);
                }
                Ok(out)
            })
            .collect()
    }

    fn generate_greedy(&self, context: &[u32], max_new: usize, stop: &[String]) -> Result<String> {
        ensure!(!context.is_empty(), "empty prompt");
        let eos = self.tokenizer.special_tokens().eos;
        let mut cache = self.model.new_cache();
        let mut logits = self.model.next_logits(context, &mut cache)?;
        let mut ids = vec![];
        for _ in 0..max_new {
            let next = argmax(&logits);
            if Some(next) == eos {
                break;
            }
            ids.push(next);
            let text = self.tokenizer.decode(&ids);
            if let Some(cut) = first_stop(&text, stop) {
                return Ok(text[..cut].to_string());
            }
            if context.len() + ids.len() >= self.cfg.context_length {
                break;
            }
            logits = self.model.next_logits(&[next], &mut cache)?;
        }
        Ok(self.tokenizer.decode(&ids))
    }

    fn max_context(&self) -> usize {
        self.cfg.context_length
    }
}
