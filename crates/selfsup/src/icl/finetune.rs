//! Fine-tuning a language model on the k solved examples of an ICL task with low-rank adapters
//! (LoRA, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").
//!
//! LoRA keeps every pretrained weight frozen and learns `ΔW = (α/r)·A·B` (rank r, `A` random,
//! `B` zero, so training starts at the pretrained model) for a few projections. burn 0.22
//! implements it as a parameter reparameterization ([`burn::module::Lora`]): the adapted
//! [`Param`]'s value becomes `W + ΔW`, so the GPT and Llama forward passes run unchanged. Adapted:
//! the attention query and value projections of every Llama block (`attn_q`, `attn_v`, the
//! choice of Hu et al. §7.1), and the fused q/k/v projection `c_attn` of every selfsup GPT block
//! (it cannot be split without changing the GPT's layout). Optimizer state exists only for
//! `A`, `B`, so one loaded base model serves every k.
//!
//! Each training sequence is one example laid out as its zero-shot prompt followed by its
//! answer, tokenized exactly as the harness scores it ([`target_sequence`]); the loss is the
//! cross-entropy of the answer tokens only. Evaluating the adapted model is then zero-shot
//! prompting with the harness's scoring.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::module::{Lora, Module, Param, ParamGroup, ParamId};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::llama_lm::LlamaLm;
use super::model::{GptLm, LanguageModel};
use super::task::{render, Scoring, Task};
use crate::lm::bpe::GgufBpeTokenizer;
use crate::lm::llama::{Llama, LlamaConfig};
use crate::lm::tokenizer::{SpecialTokens, Tokenizer};
use crate::methods::clm::{int_tensor, Gpt};
use crate::methods::Objective;
use crate::train::{self, EvalOutput, TrainConfig};

/// LoRA fine-tuning hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r of `ΔW = (α/r)·A·B`.
    pub rank: usize,
    /// α: the update is scaled by α/r.
    pub alpha: f64,
    /// Optimizer steps (AdamW, cosine decay to a tenth, no warmup).
    pub steps: usize,
    /// Sequences per step (at most k: small k repeat their examples across steps).
    pub batch_size: usize,
    pub lr: f64,
}

impl Default for LoraConfig {
    /// r = 8, α = 16, 30 steps of 8 sequences at lr 2e-3.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            steps: 30,
            batch_size: 8,
            lr: 2e-3,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.rank > 0, "LoRA rank must be at least 1");
        ensure!(
            self.alpha.is_finite() && self.alpha > 0.0,
            "LoRA alpha must be positive"
        );
        ensure!(self.steps > 0, "fine-tuning steps must be at least 1");
        ensure!(
            self.batch_size > 0,
            "fine-tuning batch size must be at least 1"
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "fine-tuning lr must be positive"
        );
        Ok(())
    }
}

/// One example as a training sequence: its zero-shot prompt then its answer; the last
/// `n_target` ids are the answer, the only tokens the loss scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSeq {
    pub ids: Vec<u32>,
    pub n_target: usize,
}

/// Example `i` of `task` as a [`TargetSeq`], split into prompt and answer as the harness splits
/// it: for log-likelihood scoring, trailing whitespace of the prompt moves into the answer
/// (see `score_query` in [`super::eval`]); for generation the answer ends with the first stop
/// string, so that the tuned model learns where to stop.
pub fn target_sequence(task: &Task, i: usize, tok: &dyn Tokenizer) -> Result<TargetSeq> {
    let prompt = render(task, &[], i);
    let ex = &task.examples[i];
    let (ctx, answer) = match &task.scoring {
        Scoring::Loglik => {
            let ctx = prompt.trim_end();
            let moved = &prompt[ctx.len()..];
            (
                ctx.to_string(),
                format!("{moved}{}", task.template.continuation(&ex.target)),
            )
        }
        Scoring::Generate { stop, .. } => {
            let stop = stop.iter().find(|s| !s.is_empty()).cloned();
            (
                prompt.clone(),
                format!(
                    "{}{}",
                    task.template.continuation(&ex.target),
                    stop.unwrap_or_default()
                ),
            )
        }
    };
    let mut ids = tok.encode(&ctx)?;
    ensure!(!ids.is_empty(), "example {i}: empty prompt");
    let target = tok.encode(&answer)?;
    ensure!(!target.is_empty(), "example {i}: empty answer");
    let n_target = target.len();
    ids.extend(target);
    Ok(TargetSeq { ids, n_target })
}

/// Token ids of the zero-shot prompt of example `i` as the harness reads it before the answer
/// (log-likelihood scoring trims trailing whitespace): the probe's input.
pub fn prompt_ids(task: &Task, i: usize, tok: &dyn Tokenizer) -> Result<Vec<u32>> {
    let prompt = render(task, &[], i);
    let ctx = match task.scoring {
        Scoring::Loglik => prompt.trim_end(),
        Scoring::Generate { .. } => prompt.as_str(),
    };
    tok.encode(ctx)
}

/// A batch of right-padded sequences: `rows` are the flat positions `b·T + t` whose next token
/// is an answer token, `targets` those tokens `[N, 1]`. Padding comes after every real token,
/// so under the causal mask it changes no scored position.
#[derive(Debug, Clone)]
pub struct TargetBatch {
    pub ids: Tensor<2, Int>,
    pub rows: Tensor<1, Int>,
    pub targets: Tensor<2, Int>,
}

impl TargetBatch {
    pub fn new(seqs: &[&TargetSeq], device: &Device) -> Result<Self> {
        ensure!(!seqs.is_empty(), "empty batch");
        let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; seqs.len() * t];
        let (mut rows, mut targets) = (vec![], vec![]);
        for (b, s) in seqs.iter().enumerate() {
            ensure!(
                s.n_target >= 1 && s.n_target < s.ids.len(),
                "sequence of {} tokens with {} answer tokens",
                s.ids.len(),
                s.n_target
            );
            ids[b * t..b * t + s.ids.len()].copy_from_slice(&s.ids);
            let first = s.ids.len() - s.n_target;
            for p in first..s.ids.len() {
                rows.push((b * t + p - 1) as u32);
                targets.push(s.ids[p]);
            }
        }
        let n = rows.len();
        Ok(Self {
            ids: int_tensor(&ids, [seqs.len(), t], device),
            rows: int_tensor(&rows, [n], device),
            targets: int_tensor(&targets, [n, 1], device),
        })
    }
}

/// Mean cross-entropy of the answer tokens: the LM head `[V, D]` runs on the scored rows only.
fn target_loss(hidden: Tensor<3>, head: Tensor<2>, batch: TargetBatch) -> Tensor<1> {
    let [b, t, d] = hidden.dims();
    let h = hidden.reshape([b * t, d]).select(0, batch.rows);
    let logp = log_softmax(h.matmul(head.transpose()), 1);
    logp.gather(1, batch.targets).mean().neg()
}

/// A GPT trained on [`TargetBatch`]es.
#[derive(Module, Debug)]
pub struct GptTarget {
    pub gpt: Gpt,
}

impl Objective for GptTarget {
    type Batch = TargetBatch;
    fn loss(&self, batch: TargetBatch) -> Tensor<1> {
        let mut trace = self.gpt.forward_trace(batch.ids.clone());
        let h = trace
            .hidden
            .pop()
            .expect("the trace ends with ln_f's output");
        target_loss(h, self.gpt.wte.val(), batch)
    }
}

/// A Llama trained on [`TargetBatch`]es.
#[derive(Module, Debug)]
pub struct LlamaTarget {
    pub llama: Llama,
}

impl Objective for LlamaTarget {
    type Batch = TargetBatch;
    fn loss(&self, batch: TargetBatch) -> Tensor<1> {
        let h = self.llama.hidden(batch.ids.clone());
        let head = self
            .llama
            .output
            .as_ref()
            .unwrap_or(&self.llama.token_embd)
            .val();
        target_loss(h, head, batch)
    }
}

/// The parameters LoRA adapts in a GPT: every block's fused q/k/v projection.
pub fn gpt_lora_params(gpt: &Gpt) -> Vec<ParamId> {
    gpt.h.iter().map(|b| b.attn.c_attn.weight.id).collect()
}

/// The parameters LoRA adapts in a Llama: every block's query and value projections.
pub fn llama_lora_params(llama: &Llama) -> Vec<ParamId> {
    llama
        .blocks
        .iter()
        .flat_map(|b| [b.attn.wq.id, b.attn.wv.id])
        .collect()
}

/// `module` with every parameter frozen and LoRA adapters on `params`; `A` is drawn from
/// N(0, 1/r²) (burn's default) with the device RNG seeded by `seed`, `B` is zero.
pub fn apply_lora<M: Module>(
    module: M,
    params: Vec<ParamId>,
    rank: usize,
    alpha: f64,
    seed: u64,
    device: &Device,
) -> M {
    let lora = Lora::new(rank, alpha).set_param_group(ParamGroup::from_ids(params));
    crate::nn::init::seeded(device, seed, || module.apply_lora(lora))
}

/// What one fine-tuning run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    pub steps: usize,
    pub batch_size: usize,
    /// Sequences seen, steps × batch.
    pub examples_seen: usize,
    pub seconds: f64,
    /// Answer-token loss before training (the base model's) and at the last step.
    pub first_loss: f64,
    pub last_loss: f64,
    pub trainable_params: usize,
}

/// A language model that can be prompted, fine-tuned with LoRA and read as features: a selfsup
/// GPT run or a Llama GGUF checkpoint, behind one interface.
// A handful exist at a time (the base and one tuned copy): the size gap costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum TunableLm {
    Gpt {
        name: String,
        model: Gpt,
        tokenizer: Arc<dyn Tokenizer>,
    },
    Llama {
        name: String,
        model: Llama,
        cfg: LlamaConfig,
        tokenizer: GgufBpeTokenizer,
    },
}

/// Shares one tokenizer between the base model and its fine-tuned copies.
struct SharedTokenizer(Arc<dyn Tokenizer>);

impl Tokenizer for SharedTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.0.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids)
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn special_tokens(&self) -> SpecialTokens {
        self.0.special_tokens()
    }
    fn name(&self) -> String {
        self.0.name()
    }
    fn fingerprint(&self) -> u64 {
        self.0.fingerprint()
    }
}

impl TunableLm {
    /// A selfsup GPT run folder, or a Llama-architecture `.gguf` file (as `icl eval --model`).
    pub fn load(path: &std::path::Path, device: &Device) -> Result<Self> {
        if path.is_dir() {
            let (_cfg, tok, model) = crate::text_pipeline::load_gpt(path, device)?;
            let stamp = std::fs::metadata(path.join("model.safetensors"))
                .and_then(|m| m.modified())
                .ok();
            Ok(Self::from_gpt(
                format!("{}@{stamp:?}", path.display()),
                model,
                tok,
            ))
        } else {
            ensure!(
                path.exists(),
                "model {} not found: give a .gguf file or a GPT run folder",
                path.display()
            );
            let lm = LlamaLm::load(path, device)?;
            Ok(Self::Llama {
                name: lm.name(),
                model: lm.model().clone(),
                cfg: lm.config().clone(),
                tokenizer: lm.gguf_tokenizer().clone(),
            })
        }
    }

    /// `name` must identify the weights (see [`LanguageModel::name`]).
    pub fn from_gpt(name: impl Into<String>, model: Gpt, tokenizer: Box<dyn Tokenizer>) -> Self {
        Self::Gpt {
            name: name.into(),
            model,
            tokenizer: Arc::from(tokenizer),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Gpt { name, .. } | Self::Llama { name, .. } => name,
        }
    }

    pub fn tokenizer(&self) -> &dyn Tokenizer {
        match self {
            Self::Gpt { tokenizer, .. } => tokenizer.as_ref(),
            Self::Llama { tokenizer, .. } => tokenizer,
        }
    }

    pub fn max_context(&self) -> usize {
        match self {
            Self::Gpt { model, .. } => model.context_length(),
            Self::Llama { cfg, .. } => cfg.context_length,
        }
    }

    fn device(&self) -> Device {
        match self {
            Self::Gpt { model, .. } => model.device(),
            Self::Llama { model, .. } => model.device(),
        }
    }

    /// The model as the ICL harness sees it (weights shared, not copied).
    pub fn language_model(&self) -> Result<Box<dyn LanguageModel>> {
        Ok(match self {
            Self::Gpt {
                name,
                model,
                tokenizer,
            } => Box::new(GptLm::new(
                name.clone(),
                model.clone(),
                Box::new(SharedTokenizer(tokenizer.clone())),
            )?),
            Self::Llama {
                name,
                model,
                cfg,
                tokenizer,
            } => Box::new(LlamaLm::from_parts(
                name.clone(),
                model.clone(),
                cfg.clone(),
                tokenizer.clone(),
            )),
        })
    }

    /// Final-norm hidden state `[D]` at the last token of `ids`: what the model answers from.
    pub fn last_hidden(&self, ids: &[u32]) -> Result<Vec<f32>> {
        ensure!(!ids.is_empty(), "no tokens to read");
        let max = self.max_context();
        ensure!(
            ids.len() <= max,
            "{} tokens exceed the model's context of {max}",
            ids.len()
        );
        let vocab = self.tokenizer().vocab_size();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token {bad} is outside the vocabulary of {vocab}");
        }
        let t = ids.len();
        let x = int_tensor(ids, [1, t], &self.device());
        let h = match self {
            Self::Gpt { model, .. } => model
                .forward_trace(x)
                .hidden
                .pop()
                .context("empty GPT trace")?,
            Self::Llama { model, .. } => model.hidden(x),
        };
        let d = h.dims()[2];
        h.narrow(1, t - 1, 1)
            .reshape([d])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading hidden states: {e:?}"))
    }

    /// Mean answer-token cross-entropy of `seqs` (one batch, no gradient).
    pub fn target_loss(&self, seqs: &[TargetSeq]) -> Result<f64> {
        let refs: Vec<&TargetSeq> = seqs.iter().collect();
        let batch = TargetBatch::new(&refs, &self.device())?;
        let loss = match self {
            Self::Gpt { model, .. } => GptTarget { gpt: model.clone() }.loss(batch),
            Self::Llama { model, .. } => LlamaTarget {
                llama: model.clone(),
            }
            .loss(batch),
        };
        Ok(loss.into_scalar::<f32>() as f64)
    }

    /// A copy fine-tuned on `seqs` with LoRA through the shared trainer, the adapters then
    /// merged into the weights (so prompting it costs what prompting the base model costs).
    /// `tick` is called after every optimizer step (progress).
    pub fn finetune_lora(
        &self,
        seqs: &[TargetSeq],
        cfg: &LoraConfig,
        seed: u64,
        tick: &mut dyn FnMut(),
    ) -> Result<(TunableLm, FinetuneReport)> {
        cfg.validate()?;
        ensure!(!seqs.is_empty(), "fine-tuning needs at least one example");
        let max = self.max_context();
        if let Some(s) = seqs.iter().find(|s| s.ids.len() > max) {
            bail!(
                "a training sequence of {} tokens exceeds the model's context of {max}",
                s.ids.len()
            );
        }
        let device = self.device();
        let tag = format!(
            "{}+lora(r{},a{},{} steps,lr {},seed {seed},{} ex)",
            self.name(),
            cfg.rank,
            cfg.alpha,
            cfg.steps,
            cfg.lr,
            seqs.len()
        );
        Ok(match self {
            Self::Gpt {
                model, tokenizer, ..
            } => {
                let params = gpt_lora_params(model);
                let m = GptTarget { gpt: model.clone() };
                let m = apply_lora(m, params, cfg.rank, cfg.alpha, seed, &device);
                let (m, report) = train_target(m, seqs, cfg, seed, &device, tick)?;
                let gpt = m.gpt.valid().materialize();
                let tuned = Self::Gpt {
                    name: tag,
                    model: gpt,
                    tokenizer: tokenizer.clone(),
                };
                (tuned, report)
            }
            Self::Llama {
                model,
                cfg: lcfg,
                tokenizer,
                ..
            } => {
                let params = llama_lora_params(model);
                let m = LlamaTarget {
                    llama: model.clone(),
                };
                let m = apply_lora(m, params, cfg.rank, cfg.alpha, seed, &device);
                let (m, report) = train_target(m, seqs, cfg, seed, &device, tick)?;
                let llama = m.llama.valid().materialize();
                let tuned = Self::Llama {
                    name: tag,
                    model: llama,
                    cfg: lcfg.clone(),
                    tokenizer: tokenizer.clone(),
                };
                (tuned, report)
            }
        })
    }
}

/// Counts the parameters that receive gradients.
fn trainable_params<M: Module>(m: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if p.is_require_grad() {
                self.0 += p.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0
}

/// Runs [`train::fit`] on a LoRA-adapted model: AdamW without weight decay, cosine decay to a
/// tenth of `lr`, batches drawn from seeded shuffles of `seqs` (every example once per epoch).
fn train_target<M: Objective<Batch = TargetBatch>>(
    model: M,
    seqs: &[TargetSeq],
    cfg: &LoraConfig,
    seed: u64,
    device: &Device,
    tick: &mut dyn FnMut(),
) -> Result<(M, FinetuneReport)> {
    let ad = device.clone().autodiff();
    // `train()` lifts the module onto the autodiff device with the adapters tracked (see
    // eval/finetune.rs); the frozen base weights stay untracked.
    let model = model.to_device(&ad.clone().inner()).train();
    let trainable = trainable_params(&model);
    let batch = cfg.batch_size.min(seqs.len());
    let per_epoch = seqs.len().div_ceil(batch);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10a4);
    let mut order: Vec<usize> = vec![];
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(cfg.steps);
    while batches.len() < cfg.steps {
        if order.len() < batch {
            let mut epoch: Vec<usize> = (0..seqs.len()).collect();
            epoch.shuffle(&mut rng);
            order.extend(epoch);
        }
        batches.push(order.drain(..batch).collect());
    }
    let tcfg = TrainConfig {
        lr: cfg.lr,
        weight_decay: 0.0,
        warmup_epochs: 0.0,
        final_lr_frac: 0.1,
        batch_size: batch,
        steps: Some(cfg.steps),
        eval_every: 1,
        ..Default::default()
    };
    let opt = train::optim::build_optimizer("adamw", 0.0, 0.9)?;
    let dev = ad.clone();
    let items = batches
        .into_iter()
        .map(move |idx| {
            let refs: Vec<&TargetSeq> = idx.iter().map(|&i| &seqs[i]).collect();
            TargetBatch::new(&refs, &dev)
        })
        .collect::<Result<Vec<_>>>()?;
    // The loss before the first step (the base model's, since B = 0), for the report.
    let first_loss = match items.first() {
        Some(b) => model
            .valid()
            .loss(to_device_batch(b.clone(), device))
            .into_scalar::<f32>() as f64,
        None => f64::NAN,
    };
    // Called after every step: progress only.
    let hook: train::EvalHook<'_, M> = Box::new(|_m: &M, _step: usize| {
        tick();
        Ok(EvalOutput::default())
    });
    let t0 = Instant::now();
    let (model, state, _) = train::fit_in_memory(
        model,
        opt,
        &tcfg,
        per_epoch,
        "lora",
        items.into_iter(),
        Some(hook),
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok((
        model,
        FinetuneReport {
            steps: state.step,
            batch_size: batch,
            examples_seen: state.step * batch,
            seconds,
            first_loss,
            last_loss: state.last_loss.unwrap_or(f64::NAN),
            trainable_params: trainable,
        },
    ))
}

fn to_device_batch(b: TargetBatch, device: &Device) -> TargetBatch {
    TargetBatch {
        ids: b.ids.to_device(device),
        rows: b.rows.to_device(device),
        targets: b.targets.to_device(device),
    }
}
