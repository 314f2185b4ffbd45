//! Sampling text from a [`Gpt`]: temperature, top-k (Fan et al. 2018), nucleus/top-p
//! (Holtzman et al. 2020), stop strings and a seed. With the KV cache the prompt is run once
//! and each new token costs one single-position forward step.

use anyhow::{ensure, Result};
use burn::config::Config;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tokenizer::Tokenizer;
use crate::methods::clm::{int_tensor, Gpt};
use crate::nn::transformer::KvCache;

/// How to pick each next token.
#[derive(Config, Debug)]
pub struct SamplingConfig {
    #[config(default = 200)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token (greedy).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 keeps all.
    #[config(default = 0)]
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.
    #[config(default = 1.0)]
    pub top_p: f64,
    /// Stop as soon as the generated text contains one of these (it is cut before it).
    #[config(default = "Vec::new()")]
    pub stop: Vec<String>,
    /// Stop at the tokenizer's end-of-text token.
    #[config(default = true)]
    pub stop_at_eos: bool,
    #[config(default = 0)]
    pub seed: u64,
    /// Reuse keys/values of earlier positions (off: recompute the whole window every step).
    #[config(default = true)]
    pub kv_cache: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopString(String),
}

/// The continuation of a prompt.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids (after the prompt; cut at a stop string's token, EOS excluded).
    pub ids: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    pub stop: StopReason,
}

/// Continues `prompt` with tokens sampled from `model`.
pub fn generate(
    model: &Gpt,
    tokenizer: &dyn Tokenizer,
    prompt: &str,
    cfg: &SamplingConfig,
) -> Result<Generation> {
    let mut prompt_ids = tokenizer.encode(prompt)?;
    let eos = tokenizer.special_tokens().eos;
    if prompt_ids.is_empty() {
        // An empty prompt starts from end-of-text, as GPT-2 does, where there is one.
        prompt_ids.extend(eos);
    }
    let eos_stop = if cfg.stop_at_eos { eos } else { None };
    let mut text = String::new();
    let mut stop_hit = None;
    let (ids, reason) = generate_ids(model, &prompt_ids, cfg, eos_stop, |new| {
        text = tokenizer.decode(new);
        stop_hit = cfg
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|i| (i, s.clone())))
            .min();
        stop_hit.is_none()
    })?;
    let stop = match stop_hit {
        Some((i, s)) => {
            text.truncate(i);
            StopReason::StopString(s)
        }
        None => {
            text = tokenizer.decode(&ids);
            reason
        }
    };
    Ok(Generation { ids, text, stop })
}

/// Token-level generation. `on_token` sees all new ids after each step and returns false to
/// stop. Returns the new ids (without a final EOS) and why it stopped.
pub fn generate_ids(
    model: &Gpt,
    prompt: &[u32],
    cfg: &SamplingConfig,
    eos: Option<u32>,
    mut on_token: impl FnMut(&[u32]) -> bool,
) -> Result<(Vec<u32>, StopReason)> {
    ensure!(!prompt.is_empty(), "cannot generate from an empty prompt");
    let vocab = model.vocab_size();
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        anyhow::bail!("prompt token {bad} is outside the model's vocabulary of {vocab}");
    }
    let mut stepper = Stepper::new(model, cfg.kv_cache);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut all = prompt.to_vec();
    let mut logits = stepper.prefill(&all);
    let mut new = Vec::new();
    for _ in 0..cfg.max_new_tokens {
        let next = sample_next(&logits, cfg, &mut rng);
        if Some(next) == eos {
            return Ok((new, StopReason::Eos));
        }
        new.push(next);
        all.push(next);
        if !on_token(&new) {
            return Ok((new, StopReason::MaxTokens));
        }
        if new.len() == cfg.max_new_tokens {
            break;
        }
        logits = stepper.step(&all);
    }
    Ok((new, StopReason::MaxTokens))
}

/// Next-token logits for a growing sequence, with or without the KV cache.
pub struct Stepper<'a> {
    model: &'a Gpt,
    cache: Option<KvCache>,
}

impl<'a> Stepper<'a> {
    pub fn new(model: &'a Gpt, kv_cache: bool) -> Self {
        Self {
            model,
            cache: kv_cache.then(|| KvCache::new(model.n_layers())),
        }
    }

    /// Logits after the last token of `ids`, which starts a new sequence.
    pub fn prefill(&mut self, ids: &[u32]) -> Vec<f32> {
        if let Some(c) = self.cache.as_mut() {
            c.clear();
        }
        self.run(ids)
    }

    /// Logits after the last token of `ids`, which extends the previous call's by one token.
    pub fn step(&mut self, ids: &[u32]) -> Vec<f32> {
        let ctx = self.model.context_length();
        match self.cache.as_mut() {
            // One new position: a single-token forward against the cached keys/values.
            Some(c) if c.len() + 1 == ids.len() && ids.len() <= ctx => {
                let last = &ids[ids.len() - 1..];
                self.forward_last(last, true)
            }
            // Past the context the window slides; learned absolute positions shift, so the
            // window is recomputed.
            _ => self.prefill(ids),
        }
    }

    fn run(&mut self, ids: &[u32]) -> Vec<f32> {
        let ctx = self.model.context_length();
        let window = &ids[ids.len().saturating_sub(ctx)..];
        self.forward_last(window, self.cache.is_some())
    }

    fn forward_last(&mut self, ids: &[u32], cached: bool) -> Vec<f32> {
        let device = self.model.device();
        let t = ids.len();
        let input = int_tensor(ids, [1, t], &device);
        let logits = match (cached, self.cache.as_mut()) {
            (true, Some(c)) => self.model.forward_cached(input, c),
            _ => self.model.forward(input),
        };
        let v = logits.dims()[2];
        logits
            .narrow(1, t - 1, 1)
            .reshape([v])
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap_or_default()
    }
}

/// Draws a token from `logits` under `cfg` (temperature, top-k, top-p).
pub fn sample_next(logits: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / cfg.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        if u < *p {
            return i as u32;
        }
        u -= p;
    }
    order[order.len() - 1] as u32
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = SamplingConfig::new().with_temperature(0.0);
        assert_eq!(sample_next(&logits, &greedy, &mut rng), 1);
        let top2 = SamplingConfig::new().with_top_k(2);
        for _ in 0..200 {
            let t = sample_next(&logits, &top2, &mut rng);
            assert!(t == 1 || t == 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ≈ [0.64, 0.24, 0.09, 0.03]: p = 0.7 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let cfg = SamplingConfig::new().with_top_p(0.7);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample_next(&logits, &cfg, &mut rng) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0);
        assert_eq!(seen[2] + seen[3], 0);
    }
}
