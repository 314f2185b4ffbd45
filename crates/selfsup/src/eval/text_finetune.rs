//! Text encoders for downstream classification: frozen passage features (mean of the final hidden
//! states over the real tokens) and fine-tuning (encoder + a linear head, the encoder at a lower
//! learning rate, starting from the linear probe: LP-FT), the text counterpart of
//! [`super::finetune`].
//!
//! Mean pooling for both encoders: a GPT's last position has seen the whole passage but is trained
//! to predict the next token, so it mostly encodes the local context; the mean over positions
//! keeps every token's contribution and is the more robust read-out of small models. For the
//! masked LM, [CLS] is never trained by our MLM objective (no next-sentence task), so the mean is
//! the meaningful choice there too.

use crate::methods::clm::{int_tensor, Gpt};
use crate::methods::mlm::{pool, BertModel, Pooling};
use crate::methods::Objective;
use crate::train::{self, TrainConfig};
use anyhow::{ensure, Result};
use burn::module::{Module, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use super::finetune::{cross_entropy, probe_linear, FinetuneResult};

/// A pretrained (or randomly initialised) text encoder.
#[derive(Module, Debug)]
pub enum TextEncoder {
    /// Causal LM: right padding never reaches the real tokens, so no attention mask is needed.
    Gpt(Gpt),
    /// Bidirectional encoder of a masked LM; padding keys are masked.
    Bert(BertModel),
}

impl TextEncoder {
    /// `ids` `[B, T]` with `mask` 1 on real tokens → passage vectors `[B, D]`.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<2> {
        let hidden = match self {
            TextEncoder::Gpt(g) => g.hidden(ids),
            TextEncoder::Bert(b) => {
                let types = ids.zeros_like();
                b.forward(ids, types, mask.clone())
            }
        };
        pool(hidden, mask, Pooling::Mean)
    }
}

/// Token ids of passages as the encoder takes them (special tokens added, truncated to the
/// model's context), with the id used for padding.
#[derive(Debug, Clone)]
pub struct TokenizedTexts {
    pub ids: Vec<Vec<u32>>,
    pub pad: u32,
}

impl TokenizedTexts {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn subset(&self, idx: &[usize]) -> Self {
        Self {
            ids: idx.iter().map(|&i| self.ids[i].clone()).collect(),
            pad: self.pad,
        }
    }

    /// Rows `idx`, right-padded to the longest: ids and attention mask `[B, T]`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let t = idx
            .iter()
            .map(|&i| self.ids[i].len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = Vec::with_capacity(idx.len() * t);
        let mut mask = Vec::with_capacity(idx.len() * t);
        for &i in idx {
            let row = &self.ids[i];
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad, t - row.len()));
            mask.extend((0..t).map(|j| u32::from(j < row.len())));
        }
        (
            int_tensor(&ids, [idx.len(), t], device),
            int_tensor(&mask, [idx.len(), t], device),
        )
    }
}

/// Passages per forward pass when extracting features.
const BATCH: usize = 64;

/// Frozen features (row-major `[n, D]`) of every passage, in inference mode.
pub fn encode_texts(
    encoder: &TextEncoder,
    texts: &TokenizedTexts,
    device: &Device,
    progress: bool,
) -> Vec<f32> {
    let encoder = encoder.valid();
    let device = device.clone().inner();
    let bar = if progress {
        let b = indicatif::ProgressBar::new(texts.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("features [{bar:30}] {pos}/{len}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Similar lengths together waste less on padding; results go back to the original order.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts.ids[i].len());
    let mut rows: Vec<Vec<f32>> = vec![vec![]; texts.len()];
    for chunk in order.chunks(BATCH) {
        let (ids, mask) = texts.batch(chunk, &device);
        let h = encoder
            .forward(ids, mask)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let d = h.len() / chunk.len();
        for (k, &i) in chunk.iter().enumerate() {
            rows[i] = h[k * d..(k + 1) * d].to_vec();
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    rows.concat()
}

/// Encoder followed by a linear classifier on the pooled passage vector.
#[derive(Module, Debug)]
pub struct TextClassifier {
    pub encoder: TextEncoder,
    pub head: Linear,
}

impl TextClassifier {
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<2> {
        self.head.forward(self.encoder.forward(ids, mask))
    }
}

/// One labelled batch: ids, attention mask, labels.
pub type TextBatch = (Tensor<2, Int>, Tensor<2, Int>, Vec<u32>);

impl Objective for TextClassifier {
    type Batch = TextBatch;
    fn loss(&self, (ids, mask, y): TextBatch) -> Tensor<1> {
        cross_entropy(self.forward(ids, mask), &y)
    }
}

/// Fine-tuning hyperparameters for text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextFinetuneConfig {
    /// Optimizer steps (small label sets repeat their passages).
    pub steps: usize,
    pub batch_size: usize,
    /// Learning rate of the head (and of everything from scratch).
    pub lr: f64,
    /// The pretrained encoder learns at lr × this.
    pub encoder_lr_scale: f64,
    pub weight_decay: f64,
}

impl Default for TextFinetuneConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 32,
            lr: 1e-3,
            encoder_lr_scale: 0.1,
            weight_decay: 1e-2,
        }
    }
}

/// Trains `encoder` + a new head on the labelled passages and reports test accuracy.
/// `pretrained`: LP-FT with the encoder at the lower learning rate; otherwise (from scratch) a
/// random head and every parameter at `lr`.
#[allow(clippy::too_many_arguments)]
pub fn finetune_text(
    encoder: TextEncoder,
    pretrained: bool,
    train_set: &TokenizedTexts,
    train_labels: &[u32],
    test: &TokenizedTexts,
    test_labels: &[u32],
    classes: usize,
    cfg: &TextFinetuneConfig,
    seed: u64,
    device: &Device,
) -> Result<FinetuneResult> {
    ensure!(
        !train_set.is_empty() && train_set.len() == train_labels.len(),
        "fine-tuning needs labelled passages ({} passages, {} labels)",
        train_set.len(),
        train_labels.len()
    );
    ensure!(
        test.len() == test_labels.len(),
        "{} test passages but {} labels",
        test.len(),
        test_labels.len()
    );
    let ad = device.clone().autodiff();
    let head = if pretrained {
        // LP-FT (Kumar et al. 2022): the head starts at the converged probe on frozen features.
        let h = encode_texts(&encoder, train_set, device, false);
        probe_linear(&h, train_labels, classes, &ad)?
    } else {
        let d = encode_texts(&encoder, &train_set.subset(&[0]), device, false).len();
        crate::nn::init::init_seeded(LinearConfig::new(d, classes).init(&ad), seed ^ 0x4ead)
    };
    // `train()` lifts the encoder onto the autodiff device with tracked parameters (see
    // finetune.rs: `fork` alone would leave them constant).
    let encoder = encoder.to_device(&ad.clone().inner()).train();
    let model = TextClassifier { encoder, head };
    let opt = if pretrained {
        let group = ParamGroup::ids_from_module(model.encoder.clone());
        train::optim::adamw_with_scaled_group(cfg.weight_decay, group, cfg.encoder_lr_scale)
    } else {
        train::optim::build_optimizer("adamw", cfg.weight_decay, 0.9)?
    };
    let n = train_set.len();
    let batch = cfg.batch_size.clamp(1, n);
    let steps = cfg.steps.max(1);
    let tcfg = TrainConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        warmup_epochs: 0.0,
        batch_size: batch,
        steps: Some(steps),
        grad_clip: Some(1.0),
        ..Default::default()
    };
    let dev = ad.clone();
    // Each batch is a pure function of (seed, step): a random subset of the labelled passages.
    let batches = (0..steps).map(move |step| {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut idx = rand::seq::index::sample(&mut rng, n, batch).into_vec();
        idx.sort_unstable();
        let (ids, mask) = train_set.batch(&idx, &dev);
        let y = idx.iter().map(|&i| train_labels[i]).collect();
        (ids, mask, y)
    });
    let t0 = Instant::now();
    let (model, state, _) = train::fit_in_memory(
        model,
        opt,
        &tcfg,
        n.div_ceil(batch),
        "finetune",
        batches,
        None,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let accuracy = text_accuracy(&model.valid(), test, test_labels, &ad.inner());
    Ok(FinetuneResult {
        accuracy,
        seconds,
        steps: state.step,
        examples_seen: state.step * batch,
    })
}

/// Test accuracy of a text classifier in inference mode.
pub fn text_accuracy(
    model: &TextClassifier,
    test: &TokenizedTexts,
    labels: &[u32],
    device: &Device,
) -> f64 {
    let mut correct = 0usize;
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(BATCH) {
        let (ids, mask) = test.batch(chunk, device);
        let pred = model
            .forward(ids, mask)
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap_or_default();
        correct += pred
            .iter()
            .zip(chunk)
            .filter(|(p, &i)| **p == labels[i] as i64)
            .count();
    }
    correct as f64 / test.len().max(1) as f64
}
