//! Language-model pretraining on text through the shared trainer: GPT (causal LM) and BERT-style
//! masked LM. Data → tokenizer → memory-mapped token file → random windows (a pure function of
//! seed and step, so resume is exact) → method → trainer.

use crate::lm::text_data::{Split, TextDataset, TextSource, TokenFile};
use crate::lm::tokenizer::{CharTokenizer, Tokenizer, TokenizerSpec};
use crate::methods::clm::{Gpt, GptConfig, TokenBatch};
use crate::methods::mlm::{BertConfig, BertForMaskedLm, MaskingConfig, MlmBatch, MlmVocab};
use crate::nn::init::seeded;
use crate::pipeline::{PretrainReport, RunOptions};
use crate::train::{
    self, checkpoint, EvalHook, EvalOutput, FitSpec, Outcome, RunDir, RunState, TrainConfig,
};
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Transformer size (the `[model]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextModelConfig {
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// MLP hidden width (default 4·d_model).
    pub d_ff: Option<usize>,
    pub dropout: f64,
}

impl Default for TextModelConfig {
    fn default() -> Self {
        Self {
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            d_ff: None,
            dropout: 0.0,
        }
    }
}

/// Everything that defines a text pretraining run (RUN_DIR/config.toml).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPretrainConfig {
    /// gpt (causal LM) or mlm (masked LM).
    pub method: String,
    /// text:PATH (file or folder of .txt), jsonl:PATH[:field], json:PATH[:field].
    pub data: String,
    /// byte, char (built from the corpus, saved in the run), gpt2, hf:tokenizer.json.
    #[serde(default = "byte")]
    pub tokenizer: String,
    #[serde(default)]
    pub seed: u64,
    /// Replace invalid UTF-8 instead of failing.
    #[serde(default)]
    pub lossy: bool,
    /// Fraction of the tokens (at the end) held out for validation.
    #[serde(default = "val_fraction")]
    pub val_fraction: f64,
    /// Tokens per sequence.
    #[serde(default = "context")]
    pub context: usize,
    /// Validation batches per evaluation.
    #[serde(default = "val_batches")]
    pub val_batches: usize,
    #[serde(default)]
    pub model: TextModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

fn byte() -> String {
    "byte".into()
}
fn val_fraction() -> f64 {
    0.1
}
fn context() -> usize {
    128
}
fn val_batches() -> usize {
    20
}

impl TextPretrainConfig {
    pub fn new(method: &str, data: &str) -> Self {
        let mut train = TrainConfig {
            batch_size: 16,
            epochs: 1,
            warmup_epochs: 0.0,
            ..Default::default()
        };
        train.lr = 1e-3;
        train.weight_decay = 0.1;
        train.grad_clip = Some(1.0);
        train.eval_every = 200;
        Self {
            method: method.into(),
            data: data.into(),
            tokenizer: byte(),
            seed: 0,
            lossy: false,
            val_fraction: 0.1,
            context: 128,
            val_batches: 20,
            model: TextModelConfig::default(),
            train,
        }
    }

    pub fn is_text_method(method: &str) -> bool {
        matches!(method, "gpt" | "mlm")
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            Self::is_text_method(&self.method),
            "unknown text method `{}`: expected gpt or mlm",
            self.method
        );
        let m = &self.model;
        anyhow::ensure!(
            m.d_model > 0 && m.n_layers > 0 && m.n_heads > 0,
            "model sizes must be positive"
        );
        anyhow::ensure!(
            m.d_model % m.n_heads == 0,
            "d_model {} is not a multiple of n_heads {}",
            m.d_model,
            m.n_heads
        );
        anyhow::ensure!((0.0..1.0).contains(&m.dropout), "dropout must be in [0, 1)");
        anyhow::ensure!(self.context >= 4, "context must be at least 4 tokens");
        self.data.parse::<TextSource>()?;
        self.tokenizer.parse::<TokenizerSpec>()?;
        self.train.validate()
    }

    pub fn from_toml(text: &str, origin: &str, overrides: &[(String, String)]) -> Result<Self> {
        let mut value: toml::Value =
            toml::from_str(text).with_context(|| format!("{origin}: invalid TOML"))?;
        for (k, v) in overrides {
            crate::config::set_key(&mut value, k, v)?;
        }
        let cfg: Self = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{origin}: {}", e.message()))?;
        cfg.validate().with_context(|| origin.to_string())?;
        Ok(cfg)
    }

    pub fn with_overrides(self, overrides: &[(String, String)]) -> Result<Self> {
        Self::from_toml(
            &toml::to_string_pretty(&self)?,
            "command-line flags",
            overrides,
        )
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string(), &[])
    }

    fn d_ff(&self) -> usize {
        self.model.d_ff.unwrap_or(4 * self.model.d_model)
    }

    pub fn gpt_config(&self, vocab: usize) -> GptConfig {
        GptConfig::new(vocab)
            .with_context_length(self.context)
            .with_d_model(self.model.d_model)
            .with_n_layers(self.model.n_layers)
            .with_n_heads(self.model.n_heads)
            .with_d_ff(self.d_ff())
            .with_dropout(self.model.dropout)
    }

    pub fn bert_config(&self, vocab: usize) -> BertConfig {
        BertConfig::new(vocab)
            .with_hidden_size(self.model.d_model)
            .with_num_hidden_layers(self.model.n_layers)
            .with_num_attention_heads(self.model.n_heads)
            .with_intermediate_size(self.d_ff())
            .with_hidden_dropout_prob(self.model.dropout)
            .with_attention_probs_dropout_prob(self.model.dropout)
            .with_max_position_embeddings(self.context)
            .with_layer_norm_eps(1e-12)
    }
}

/// Reads the `method` key of a run's config.toml (to tell image runs from text runs).
pub fn run_method(dir: &Path) -> Result<String> {
    let p = dir.join("config.toml");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "{}: not a selfsup run folder (no config.toml)",
            dir.display()
        )
    })?;
    let v: toml::Value =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", p.display()))?;
    v.get("method")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .with_context(|| format!("{}: no `method` key", p.display()))
}

/// The tokenizer of a run: char vocabularies live in the run folder.
pub fn run_tokenizer(
    cfg: &TextPretrainConfig,
    run: &Path,
    source: Option<&TextSource>,
) -> Result<Box<dyn Tokenizer>> {
    match cfg.tokenizer.parse::<TokenizerSpec>()? {
        TokenizerSpec::Char(None) => {
            let vocab = run.join("char_vocab.json");
            if vocab.exists() {
                return Ok(Box::new(CharTokenizer::load(&vocab)?));
            }
            let source = source
                .context("the character vocabulary of this run is missing (char_vocab.json)")?;
            let tok = source.char_tokenizer(cfg.lossy)?;
            tok.save(&vocab)?;
            Ok(Box::new(tok))
        }
        spec => spec.load(),
    }
}

/// Pretrains a new text run in `out`.
pub fn pretrain_text(
    cfg: &TextPretrainConfig,
    out: &Path,
    opts: &RunOptions,
) -> Result<PretrainReport> {
    cfg.validate()?;
    let run = train::new_run_dir(out)?;
    checkpoint::write_atomic(&run.config(), toml::to_string_pretty(cfg)?.as_bytes())?;
    run_text(cfg, &run, opts, false)
}

/// Continues a text run from its last checkpoint.
pub fn resume_text(dir: &Path, opts: &RunOptions) -> Result<PretrainReport> {
    let run = RunDir(dir.to_path_buf());
    let cfg = TextPretrainConfig::load(&run.config())?;
    run_text(&cfg, &run, opts, true)
}

fn dataset(cfg: &TextPretrainConfig, run: &RunDir) -> Result<(Box<dyn Tokenizer>, TextDataset)> {
    let source: TextSource = cfg.data.parse()?;
    let tok = run_tokenizer(cfg, &run.0, Some(&source))?;
    let tokens = TokenFile::open_or_build(
        &source,
        tok.as_ref(),
        TokenFile::cache_path(&run.0, tok.as_ref()),
        cfg.lossy,
    )?;
    let data = TextDataset::new(tokens, cfg.val_fraction)?;
    Ok((tok, data))
}

fn run_text(
    cfg: &TextPretrainConfig,
    run: &RunDir,
    opts: &RunOptions,
    resume: bool,
) -> Result<PretrainReport> {
    let (tok, data) = dataset(cfg, run)?;
    let device = opts.device.clone().autodiff();
    match cfg.method.as_str() {
        "gpt" => {
            data.check_context(cfg.context)?;
            let model = seeded(&device, cfg.seed, || {
                cfg.gpt_config(tok.vocab_size()).init(&device)
            });
            let batch = cfg.train.batch_size;
            let (seed, context) = (cfg.seed, cfg.context);
            let d = &data;
            let make = move |i: usize| {
                d.token_batch(Split::Train, i, seed, batch, context)
                    .expect("window fits (checked)")
            };
            let val = |m: &Gpt, _step: usize| -> Result<EvalOutput> {
                let m = m.valid();
                let mut total = 0.0;
                let mut n = 0;
                for i in 0..cfg.val_batches {
                    let Some(b) = d.sequential_batch(Split::Validation, i, batch, context) else {
                        break;
                    };
                    total += m.loss_batch(&b)?.into_scalar::<f32>() as f64;
                    n += 1;
                }
                if n == 0 {
                    return Ok(EvalOutput::default());
                }
                let loss = total / n as f64;
                Ok(vec![("val_loss".into(), loss), ("val_ppl".into(), loss.exp())].into())
            };
            fit_text(cfg, run, opts, resume, model, &data, make, Box::new(val))
        }
        "mlm" => {
            let vocab = MlmVocab::for_tokenizer(tok.as_ref());
            let len = cfg.context - 2; // [CLS] … [SEP]
            data.check_context(len)?;
            let model = seeded(&device, cfg.seed, || {
                cfg.bert_config(vocab.vocab_size).init(&device)
            });
            let masking = MaskingConfig::new();
            let batch = cfg.train.batch_size;
            let seed = cfg.seed;
            let d = &data;
            let (v2, m2) = (vocab.clone(), masking.clone());
            let make = move |i: usize| {
                let w = d
                    .windows(Split::Train, i, seed, batch, len)
                    .expect("window fits (checked)");
                MlmBatch::from_windows(&w, len, &v2, &m2, seed, i).expect("valid MLM batch")
            };
            let val = |m: &BertForMaskedLm, _step: usize| -> Result<EvalOutput> {
                if d.len(Split::Validation) <= len {
                    return Ok(EvalOutput::default());
                }
                let m = m.valid();
                let mut total = 0.0;
                for i in 0..cfg.val_batches {
                    // Fixed windows and masks: the same validation batches at every evaluation.
                    let w = d.windows(Split::Validation, i, seed ^ 0x5eed, batch, len)?;
                    let b = MlmBatch::from_windows(&w, len, &vocab, &masking, seed ^ 0x5eed, i)?;
                    total += m.loss(&b)?.into_scalar::<f32>() as f64;
                }
                let loss = total / cfg.val_batches.max(1) as f64;
                Ok(vec![("val_loss".into(), loss)].into())
            };
            fit_text(cfg, run, opts, resume, model, &data, make, Box::new(val))
        }
        m => bail!("unknown text method `{m}`"),
    }
}

#[allow(clippy::too_many_arguments)]
fn fit_text<M: crate::methods::Objective>(
    cfg: &TextPretrainConfig,
    run: &RunDir,
    opts: &RunOptions,
    resume: bool,
    model: M,
    data: &TextDataset,
    make: impl Fn(usize) -> M::Batch,
    eval: EvalHook<'_, M>,
) -> Result<PretrainReport> {
    let per_step = cfg.train.batch_size * cfg.context * cfg.train.grad_accum.max(1);
    let spe = (data.len(Split::Train) / per_step).max(1);
    let opt = train::optim::build_optimizer(
        &cfg.train.optimizer,
        cfg.train.weight_decay,
        cfg.train.momentum,
    )?;
    let (model, opt, state) = if resume {
        run.load_checkpoint(model, opt)?
    } else {
        let total = train::total_steps(&cfg.train, spe);
        (
            model,
            opt,
            RunState {
                total_steps: total,
                steps_per_epoch: spe,
                ..Default::default()
            },
        )
    };
    if opts.progress {
        train::install_ctrlc_handler();
    }
    let accum = cfg.train.grad_accum.max(1);
    let stop = opts
        .stop_at_step
        .map(|s| s.clamp(state.step, state.total_steps))
        .unwrap_or(state.total_steps);
    let batches = (state.step * accum..stop * accum).map(make);
    let spec = FitSpec {
        cfg: &cfg.train,
        run: Some(run),
        samples_per_step: cfg.train.batch_size * cfg.context * accum,
        progress: opts.progress,
        label: &cfg.method,
        stop_at: stop,
    };
    let (_m, state, outcome) = train::fit(model, opt, state, &spec, batches, Some(eval))?;
    Ok(PretrainReport {
        run_dir: run.0.clone(),
        steps: state.step,
        total_steps: state.total_steps,
        final_loss: state.last_loss,
        train_seconds: state.train_seconds,
        interrupted: outcome == Outcome::Interrupted,
        matmul_precision: crate::nn::matmul_precision(),
    })
}

/// A GPT run loaded for sampling.
pub fn load_gpt(
    dir: &Path,
    device: &Device,
) -> Result<(TextPretrainConfig, Box<dyn Tokenizer>, Gpt)> {
    let run = RunDir(dir.to_path_buf());
    let cfg = TextPretrainConfig::load(&run.config())?;
    if cfg.method != "gpt" {
        bail!("{}: a `{}` run, not a GPT run", dir.display(), cfg.method);
    }
    let tok = run_tokenizer(&cfg, dir, None)?;
    let model = cfg.gpt_config(tok.vocab_size()).init(device);
    let model = checkpoint::load_weights(model, &run.weights(), false)?;
    Ok((cfg, tok, model))
}

impl crate::methods::Objective for Gpt {
    type Batch = TokenBatch;
    fn loss(&self, batch: TokenBatch) -> Tensor<1> {
        self.loss_batch(&batch)
            .expect("token batch shapes are built consistent")
    }
}

impl crate::methods::Objective for BertForMaskedLm {
    type Batch = MlmBatch;
    fn loss(&self, batch: MlmBatch) -> Tensor<1> {
        BertForMaskedLm::loss(self, &batch).expect("MLM batches always hold a selected position")
    }
}
