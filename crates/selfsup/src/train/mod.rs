//! ONE trainer for every method: optimizer + schedule, gradient clipping, a step or time budget,
//! progress bar, metrics.jsonl, atomic checkpoints, exact resume, NaN/Inf guard and Ctrl-C.
//!
//! Exact resume rests on two rules: every batch is a pure function of (seed, step) — the data
//! side guarantees it — and a checkpoint holds everything else that changes during training
//! (weights incl. BatchNorm statistics, optimizer state, step). So the final weights of a resumed
//! run equal those of an uninterrupted run with the same seed.

pub mod alloc;
pub mod checkpoint;
pub mod ema;
pub mod optim;

use crate::methods::Objective;
use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Optimization hyperparameters (the `[train]` table of a run's config.toml).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// adamw, sgd or lars.
    pub optimizer: String,
    /// Peak learning rate (after warmup).
    pub lr: f64,
    pub weight_decay: f64,
    /// Momentum for sgd and lars.
    pub momentum: f64,
    /// Warmup length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// The cosine schedule ends at lr·final_lr_frac.
    pub final_lr_frac: f64,
    /// Images (or sequences) per step.
    pub batch_size: usize,
    /// Budget in epochs…
    pub epochs: usize,
    /// …or in optimizer steps (overrides epochs)…
    pub steps: Option<usize>,
    /// …or in minutes of wall time (then the step count is fixed from the speed of the first steps).
    pub minutes: Option<f64>,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// Minutes between checkpoints (one is always written at the end).
    pub checkpoint_minutes: f64,
    /// Steps between metrics.jsonl lines.
    pub log_every: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    pub grad_accum: usize,
    /// Steps between evaluations (validation loss, collapse diagnostics); 0 = once per epoch.
    pub eval_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: "adamw".into(),
            lr: 1e-3,
            weight_decay: 1e-4,
            momentum: 0.9,
            warmup_epochs: 1.0,
            final_lr_frac: 0.0,
            batch_size: 256,
            epochs: 10,
            minutes: None,
            grad_clip: None,
            checkpoint_minutes: 5.0,
            log_every: 10,
            steps: None,
            grad_accum: 1,
            eval_every: 0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be positive, got {}",
            self.lr
        );
        anyhow::ensure!(self.weight_decay >= 0.0, "weight_decay must be ≥ 0");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.momentum),
            "momentum must be in [0, 1)"
        );
        anyhow::ensure!(self.batch_size > 0, "batch_size must be positive");
        anyhow::ensure!(
            self.epochs > 0 || self.minutes.is_some() || self.steps.is_some_and(|s| s > 0),
            "give epochs > 0, steps > 0 or minutes"
        );
        anyhow::ensure!(self.grad_accum >= 1, "grad_accum must be at least 1");
        if let Some(m) = self.minutes {
            anyhow::ensure!(m > 0.0, "minutes must be positive");
        }
        if let Some(c) = self.grad_clip {
            anyhow::ensure!(c > 0.0, "grad_clip must be positive");
        }
        optim::build_optimizer(&self.optimizer, self.weight_decay, self.momentum)?;
        Ok(())
    }
}

/// Progress of a run, saved with every checkpoint as state.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: usize,
    /// Total steps of the schedule (fixed at the start of the run).
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Wall-clock seconds spent training, summed over resumes.
    pub train_seconds: f64,
    pub finished: bool,
    /// Values of the last evaluation (validation loss, diagnostics).
    #[serde(default)]
    pub last_eval: std::collections::BTreeMap<String, f64>,
    /// Matmul precision of the process that wrote this state (`--matmul-precision`): a resume
    /// under another one warns that it will not continue the same numbers.
    #[serde(default)]
    pub matmul_precision: crate::nn::MatmulPrecision,
}

/// How a call to [`fit`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Ctrl-C: a checkpoint was saved; `--resume` continues.
    Interrupted,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs a Ctrl-C handler that asks the trainer to save and stop (once per process).
pub fn install_ctrlc_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: saving a checkpoint, then stopping (Ctrl-C again to quit now)");
        });
    });
}

/// Files of a run folder.
#[derive(Clone, Debug)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn weights(&self) -> PathBuf {
        self.0.join("model.safetensors")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.0.join("optimizer.bpk")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn read_state(&self) -> Result<RunState> {
        let p = self.state();
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&s).with_context(|| format!("{}: bad run state", p.display()))
    }
    /// Writes weights, optimizer state and, last, state.json. Each file is atomic and state.json
    /// names the step the other two belong to.
    pub fn save_checkpoint<M: Module>(
        &self,
        model: &M,
        opt: &ModuleOptimizer,
        state: &RunState,
    ) -> Result<()> {
        checkpoint::save_weights(model, &self.weights())?;
        let bytes = opt
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("serializing optimizer state: {e:?}"))?;
        checkpoint::write_atomic(&self.optimizer(), &bytes)?;
        let mut s = state.clone();
        s.matmul_precision = crate::nn::matmul_precision();
        checkpoint::write_atomic(&self.state(), serde_json::to_string_pretty(&s)?.as_bytes())
    }
    /// Loads weights (keeping parameter ids) and optimizer state saved by [`save_checkpoint`].
    pub fn load_checkpoint<M: Module>(
        &self,
        model: M,
        opt: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer, RunState)> {
        let state = self.read_state()?;
        let now = crate::nn::matmul_precision();
        if state.matmul_precision != now {
            eprintln!(
                "warning: {} was trained with --matmul-precision {} and resumes with {now}: the \
                 numbers will not match an uninterrupted run",
                self.0.display(),
                state.matmul_precision
            );
        }
        let model = checkpoint::load_weights(model, &self.weights(), true)?;
        let p = self.optimizer();
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let opt = opt
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| anyhow::anyhow!("{}: bad optimizer state: {e:?}", p.display()))?;
        Ok((model, opt, state))
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (as `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(p.id) {
                self.sum += g.square().sum().into_scalar::<f32>() as f64;
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(p.id) {
                self.grads.register(p.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut n = Norm { grads, sum: 0.0 };
    model.visit(&mut n);
    let norm = n.sum.sqrt();
    if norm > max_norm {
        let mut s = Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        model.visit(&mut s);
    }
    norm
}

/// Everything [`fit`] needs besides the model and the batches.
pub struct FitSpec<'a> {
    pub cfg: &'a TrainConfig,
    /// Run folder for metrics.jsonl and checkpoints; None trains in memory only (fine-tuning
    /// inside an experiment).
    pub run: Option<&'a RunDir>,
    /// Samples per step, for the images/s figure.
    pub samples_per_step: usize,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Label for the bar, e.g. "simclr".
    pub label: &'a str,
    /// Return (with a checkpoint, as on Ctrl-C) once this many steps are done.
    pub stop_at: usize,
}

/// Evaluation run every `eval_every` steps on the current model (e.g. validation loss,
/// collapse diagnostics); its named values go to metrics.jsonl and the progress bar.
pub type EvalHook<'a, M> = Box<dyn FnMut(&M, usize) -> Result<EvalOutput> + 'a>;

/// What an evaluation reports: named values, and optionally a reason to stop training now (a
/// checkpoint is written first), such as a collapse under `--stop-on-collapse`.
#[derive(Debug, Default)]
pub struct EvalOutput {
    pub values: Vec<(String, f64)>,
    pub stop: Option<String>,
}

impl From<Vec<(String, f64)>> for EvalOutput {
    fn from(values: Vec<(String, f64)>) -> Self {
        Self { values, stop: None }
    }
}

/// The schedule length of a budget: explicit steps, else epochs × steps per epoch.
pub fn total_steps(cfg: &TrainConfig, steps_per_epoch: usize) -> usize {
    cfg.steps.unwrap_or(cfg.epochs * steps_per_epoch).max(1)
}

/// One batch and the seconds the trainer waited for it.
pub type Timed<B> = (B, f64);

/// [`fit`] in memory for exactly `cfg.steps` steps: no run folder, progress bar, periodic log or
/// checkpoint — fine-tuning inside an experiment.
pub fn fit_in_memory<M: Objective>(
    model: M,
    opt: ModuleOptimizer,
    cfg: &TrainConfig,
    steps_per_epoch: usize,
    label: &str,
    batches: impl Iterator<Item = M::Batch>,
    eval: Option<EvalHook<'_, M>>,
) -> Result<(M, RunState, Outcome)> {
    let steps = cfg
        .steps
        .ok_or_else(|| anyhow::anyhow!("{label}: in-memory training needs a step count"))?;
    let cfg = TrainConfig {
        log_every: usize::MAX,
        checkpoint_minutes: f64::INFINITY,
        ..cfg.clone()
    };
    let state = RunState {
        total_steps: steps,
        steps_per_epoch,
        ..Default::default()
    };
    let spec = FitSpec {
        cfg: &cfg,
        run: None,
        samples_per_step: cfg.batch_size,
        progress: false,
        label,
        stop_at: steps,
    };
    fit(model, opt, state, &spec, batches, eval)
}

/// Runs the optimization loop from `state.step` to `state.total_steps`.
///
/// `batches` yields the batches for steps `state.step..total_steps` in order. On a NaN/Inf loss
/// it stops with an error and does not overwrite the last good checkpoint.
pub fn fit<M: Objective>(
    mut model: M,
    mut opt: ModuleOptimizer,
    mut state: RunState,
    spec: &FitSpec,
    batches: impl Iterator<Item = M::Batch>,
    mut eval: Option<EvalHook<'_, M>>,
) -> Result<(M, RunState, Outcome)> {
    alloc::keep_freed_memory();
    let cfg = spec.cfg;
    let warmup = (cfg.warmup_epochs * state.steps_per_epoch as f64).round() as usize;
    let bar = if spec.progress {
        let b = indicatif::ProgressBar::new(state.total_steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(spec.label.to_string());
        b.set_position(state.step as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut metrics = match spec.run {
        Some(run) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(run.metrics())
                .with_context(|| format!("opening {}", run.metrics().display()))?,
        ),
        None => None,
    };
    let mut log = |line: serde_json::Value| -> Result<()> {
        if let (Some(f), Some(run)) = (metrics.as_mut(), spec.run) {
            writeln!(f, "{line}")
                .with_context(|| format!("writing {}", run.metrics().display()))?;
        }
        Ok(())
    };
    let started = Instant::now();
    let base_seconds = state.train_seconds;
    let mut last_ckpt = Instant::now();
    let (mut wait_acc, mut time_acc, mut loss_acc, mut n_acc) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let mut batches = batches;
    let mut outcome = Outcome::Finished;
    while state.step < state.total_steps {
        if INTERRUPTED.load(Ordering::SeqCst) || state.step >= spec.stop_at {
            outcome = Outcome::Interrupted;
            break;
        }
        let t0 = Instant::now();
        let lr = optim::lr_at(
            state.step,
            state.total_steps,
            warmup,
            cfg.lr,
            cfg.final_lr_frac,
        );
        let accum = cfg.grad_accum.max(1);
        let mut waited = 0.0;
        let mut loss_value = 0.0;
        let mut acc = burn::optim::GradientsAccumulator::<M>::new();
        for _ in 0..accum {
            let tw = Instant::now();
            let Some(batch) = batches.next() else {
                bail!("the data ran out at step {}", state.step)
            };
            waited += tw.elapsed().as_secs_f64();
            let mut loss = model.loss(batch);
            if accum > 1 {
                loss = loss.div_scalar(accum as f64);
            }
            let v = loss.clone().into_scalar::<f32>() as f64;
            if !v.is_finite() {
                bar.abandon();
                bail!(
                    "loss is {v} at step {}: training stopped; the last good checkpoint in {} is kept \
                     (try a lower lr or grad_clip)",
                    state.step,
                    spec.run.map(|r| r.0.display().to_string()).unwrap_or_else(|| "memory".into())
                );
            }
            loss_value += v;
            acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let mut grads = acc.grads();
        if let Some(max) = cfg.grad_clip {
            clip_global_norm(&model, &mut grads, max);
        }
        model = opt.step(lr, model, grads);
        state.step += 1;
        model = model.after_step(state.step, state.total_steps);
        state.last_loss = Some(loss_value);
        let dt = t0.elapsed().as_secs_f64();
        wait_acc += waited;
        time_acc += dt;
        loss_acc += loss_value;
        n_acc += 1;
        if n_acc >= cfg.log_every.max(1) || state.step == state.total_steps {
            let ips = spec.samples_per_step as f64 * n_acc as f64 / time_acc.max(1e-9);
            let wait = wait_acc / time_acc.max(1e-9);
            let line = serde_json::json!({
                "step": state.step,
                "epoch": state.step as f64 / state.steps_per_epoch.max(1) as f64,
                "loss": loss_acc / n_acc as f64,
                "lr": lr,
                "samples_per_s": ips,
                "data_wait_frac": wait,
            });
            log(line)?;
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} img/s  data wait {:.0}%",
                loss_acc / n_acc as f64,
                lr,
                ips,
                100.0 * wait
            ));
            (wait_acc, time_acc, loss_acc, n_acc) = (0.0, 0.0, 0.0, 0);
        }
        let eval_every = if cfg.eval_every > 0 {
            cfg.eval_every
        } else {
            state.steps_per_epoch.max(1)
        };
        if let Some(hook) = eval.as_mut() {
            if state.step % eval_every == 0 || state.step == state.total_steps {
                let EvalOutput { values, stop } = hook(&model, state.step)?;
                if !values.is_empty() {
                    let mut line = serde_json::Map::new();
                    line.insert("step".into(), state.step.into());
                    let mut shown = vec![];
                    for (k, v) in &values {
                        line.insert(k.clone(), serde_json::json!(v));
                        shown.push(format!("{k} {v:.4}"));
                    }
                    log(serde_json::Value::Object(line))?;
                    bar.println(format!("step {}: {}", state.step, shown.join("  ")));
                    state.last_eval = values.into_iter().collect();
                }
                if let Some(reason) = stop {
                    state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
                    if let Some(run) = spec.run {
                        run.save_checkpoint(&model, &opt, &state)?;
                    }
                    bar.abandon();
                    bail!("step {}: {reason}; checkpoint saved", state.step);
                }
            }
        }
        bar.set_position(state.step as u64);
        if last_ckpt.elapsed().as_secs_f64() > cfg.checkpoint_minutes * 60.0 {
            state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
            if let Some(run) = spec.run {
                run.save_checkpoint(&model, &opt, &state)?;
            }
            last_ckpt = Instant::now();
        }
    }
    state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
    state.finished = state.step >= state.total_steps;
    if let Some(run) = spec.run {
        run.save_checkpoint(&model, &opt, &state)?;
    }
    bar.finish_and_clear();
    Ok((model, state, outcome))
}

/// Resolves the run folder for a new run: it must not hold a run already (that is `--resume`).
pub fn new_run_dir(path: &Path) -> Result<RunDir> {
    let run = RunDir(path.to_path_buf());
    if run.state().exists() {
        bail!(
            "{} already holds a run: use --resume {} to continue it, or choose another --out",
            path.display(),
            path.display()
        );
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(run)
}
