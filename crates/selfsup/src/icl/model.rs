//! The interface between the ICL harness and a language model: token log-probabilities of a
//! continuation, and greedy generation. Any causal LM (selfsup's GPT here, pretrained
//! checkpoints elsewhere) plugs in by implementing [`LanguageModel`].

use anyhow::{bail, ensure, Result};
use burn::tensor::activation::log_softmax;

use crate::lm::generate::{generate_ids, SamplingConfig};
use crate::lm::tokenizer::Tokenizer;
use crate::methods::clm::{int_tensor, Gpt};
use crate::nn::transformer::KvCache;

/// A causal language model with its tokenizer, as the ICL harness sees it.
pub trait LanguageModel {
    /// Identifies the weights (not just the architecture): the harness keys its cache of
    /// model calls on it, so two different checkpoints must never share a name.
    fn name(&self) -> String;
    fn tokenizer(&self) -> &dyn Tokenizer;
    /// `log p(cont_j | context + cont_<j)` for each continuation token `j`; their sum is the
    /// continuation's log-likelihood.
    fn continuation_logprobs(&self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>>;
    /// [`LanguageModel::continuation_logprobs`] for several continuations of one context.
    /// Models that can reuse the context's keys/values override it.
    fn choice_logprobs(
        &self,
        context: &[u32],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>> {
        continuations
            .iter()
            .map(|c| self.continuation_logprobs(context, c))
            .collect()
    }
    /// Greedy continuation of up to `max_new` tokens, stopping at end-of-text or at the first
    /// stop string (the text is cut before it).
    fn generate_greedy(&self, context: &[u32], max_new: usize, stop: &[String]) -> Result<String>;
    /// Longest token sequence the model reads at once.
    fn max_context(&self) -> usize;
}

/// selfsup's [`Gpt`] with its tokenizer.
pub struct GptLm {
    name: String,
    model: Gpt,
    tokenizer: Box<dyn Tokenizer>,
}

impl GptLm {
    /// `name` must identify the weights (e.g. the checkpoint path), see [`LanguageModel::name`].
    pub fn new(name: impl Into<String>, model: Gpt, tokenizer: Box<dyn Tokenizer>) -> Result<Self> {
        let (m, t) = (model.vocab_size(), tokenizer.vocab_size());
        ensure!(
            t <= m,
            "tokenizer {} has {t} ids but the model's vocabulary has {m}",
            tokenizer.name()
        );
        Ok(Self {
            name: name.into(),
            model,
            tokenizer,
        })
    }

    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// The context, or end-of-text when it is empty (a GPT needs one token to predict from).
    fn start(&self, context: &[u32]) -> Result<Vec<u32>> {
        if !context.is_empty() {
            return Ok(context.to_vec());
        }
        match self.tokenizer.special_tokens().eos {
            Some(eos) => Ok(vec![eos]),
            None => bail!(
                "empty prompt and tokenizer {} has no end-of-text token to start from",
                self.tokenizer.name()
            ),
        }
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token {bad} is outside the model's vocabulary of {vocab}");
        }
        Ok(())
    }

    /// Log-softmax rows `[n, V]` (row-major) of `logits` `[1, T, V]` at positions `from..from+n`.
    fn log_probs_rows(logits: burn::tensor::Tensor<3>, from: usize, n: usize) -> Result<Vec<f32>> {
        let v = logits.dims()[2];
        let rows = log_softmax(logits.narrow(1, from, n).reshape([n, v]), 1);
        rows.into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading log-probabilities: {e:?}"))
    }
}

/// `rows[j, ids[j]]` for row-major `rows` of width `v`.
fn pick(rows: &[f32], v: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .enumerate()
        .map(|(j, &id)| rows[j * v + id as usize])
        .collect()
}

impl LanguageModel for GptLm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        self.tokenizer.as_ref()
    }

    fn continuation_logprobs(&self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .choice_logprobs(context, &[continuation.to_vec()])?
            .remove(0))
    }

    /// Runs the context once into a KV cache, then each continuation against a copy of it.
    fn choice_logprobs(
        &self,
        context: &[u32],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>> {
        let ctx = self.start(context)?;
        self.check_ids(&ctx)?;
        let max = self.max_context();
        for c in continuations {
            ensure!(!c.is_empty(), "empty continuation");
            self.check_ids(c)?;
            // The last continuation token is predicted, never read.
            ensure!(
                ctx.len() + c.len() - 1 <= max,
                "prompt of {} tokens + continuation of {} exceeds the context of {max}",
                ctx.len(),
                c.len()
            );
        }
        let device = self.model.device();
        let v = self.model.vocab_size();
        let mut cache = KvCache::new(self.model.n_layers());
        let logits = self
            .model
            .forward_cached(int_tensor(&ctx, [1, ctx.len()], &device), &mut cache);
        let first = Self::log_probs_rows(logits, ctx.len() - 1, 1)?;
        continuations
            .iter()
            .map(|c| {
                let mut out = vec![first[c[0] as usize]];
                if c.len() > 1 {
                    let rest = &c[..c.len() - 1];
                    let mut cache = cache.clone();
                    let logits = self
                        .model
                        .forward_cached(int_tensor(rest, [1, rest.len()], &device), &mut cache);
                    let rows = Self::log_probs_rows(logits, 0, rest.len())?;
                    out.extend(pick(&rows, v, &c[1..]));
                }
                Ok(out)
            })
            .collect()
    }

    fn generate_greedy(&self, context: &[u32], max_new: usize, stop: &[String]) -> Result<String> {
        let ctx = self.start(context)?;
        if max_new == 0 {
            return Ok(String::new());
        }
        let cfg = SamplingConfig::new()
            .with_temperature(0.0)
            .with_max_new_tokens(max_new);
        let eos = self.tokenizer.special_tokens().eos;
        let mut cut = None;
        let (ids, _) = generate_ids(&self.model, &ctx, &cfg, eos, |new| {
            cut = first_stop(&self.tokenizer.decode(new), stop);
            cut.is_none()
        })?;
        let mut text = self.tokenizer.decode(&ids);
        if let Some(i) = cut {
            text.truncate(i);
        }
        Ok(text)
    }

    fn max_context(&self) -> usize {
        self.model.context_length()
    }
}

/// Byte offset of the earliest stop string in `text` (empty stop strings are ignored).
pub fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_picks_the_earliest() {
        let stop = vec!["\n".to_string(), ".".to_string(), String::new()];
        assert_eq!(first_stop("ab.c\nd", &stop), Some(2));
        assert_eq!(first_stop("abc", &stop), None);
    }
}
