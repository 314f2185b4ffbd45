//! `experiment icl-regression`: train the in-context regression transformer with the shared
//! trainer (curriculum batches, run folder, checkpoints, exact resume), then measure its squared
//! error vs the number of in-context examples against least squares, 3-NN and averaging on fresh
//! seeded sequences; table, CSV, JSON and plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::regression::{
    sample_batch, sample_noisy_batch, Baseline, Curriculum, ErrorCurve, RegressionBatch,
};
use super::regression_model::{RegressionGpt, RegressionGptConfig};
use crate::methods::Objective;
use crate::nn::init::seeded;
use crate::pipeline::RunOptions;
use crate::report::plot::{line_plot, PlotSpec, Series};
use crate::train::{self, checkpoint, EvalOutput, FitSpec, RunDir, RunState, TrainConfig};

/// Task stream of the evaluation sequences (training uses the run's seed itself).
const EVAL_STREAM: u64 = 0x1c1_e7a1;
/// Sequences per evaluation forward pass.
const EVAL_CHUNK: usize = 256;
/// Sequences of the validation batch scored during training.
const VAL_SEQUENCES: usize = 256;

/// Everything that defines a run (RUN_DIR/config.toml).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IclRegressionConfig {
    pub seed: u64,
    /// Dimension d of x (where the curriculum ends).
    pub dim: usize,
    /// Largest number of in-context examples k; a sequence holds `points + 1` pairs.
    pub points: usize,
    /// Standard deviation σ of the noise on y (0: the noiseless task).
    #[serde(default)]
    pub noise: f64,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Curriculum start: active dimensions and pairs per sequence; they grow by 1 and 2.
    pub dims_start: usize,
    pub points_start: usize,
    /// Steps between curriculum increases; none = the curriculum ends halfway through training.
    pub curriculum_interval: Option<usize>,
    /// Fresh sequences for the final error-vs-k evaluation.
    pub eval_sequences: usize,
    pub train: TrainConfig,
}

impl IclRegressionConfig {
    /// Garg et al.'s recipe scaled down to a CPU: curriculum from min(d, 2) dimensions and
    /// 2·that+1 pairs (the paper starts at 5 of 20 dimensions with 11 points), Adam without
    /// weight decay, 2% warmup, cosine decay.
    pub fn new(dim: usize, points: usize) -> Self {
        let dims_start = dim.clamp(1, 2);
        Self {
            seed: 0,
            dim,
            points,
            noise: 0.0,
            d_model: 64,
            n_layers: 4,
            n_heads: 4,
            dims_start,
            points_start: (2 * dims_start + 1).min(points + 1),
            curriculum_interval: None,
            eval_sequences: 2560,
            train: TrainConfig {
                optimizer: "adamw".into(),
                lr: 5e-4,
                weight_decay: 0.0,
                warmup_epochs: 0.02,
                final_lr_frac: 0.1,
                batch_size: 64,
                epochs: 1,
                steps: Some(2000),
                grad_clip: Some(1.0),
                checkpoint_minutes: 2.0,
                log_every: 20,
                eval_every: 250,
                ..Default::default()
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.dim >= 1, "dim must be at least 1");
        ensure!(self.points >= 1, "points must be at least 1");
        ensure!(
            self.noise.is_finite() && self.noise >= 0.0,
            "noise must be a finite standard deviation ≥ 0, got {}",
            self.noise
        );
        ensure!(
            self.d_model > 0 && self.n_layers > 0 && self.n_heads > 0,
            "model sizes must be positive"
        );
        ensure!(
            self.d_model.is_multiple_of(self.n_heads),
            "d_model {} is not a multiple of n_heads {}",
            self.d_model,
            self.n_heads
        );
        ensure!(
            self.eval_sequences >= 2,
            "eval_sequences must be at least 2"
        );
        if let Some(s) = self.train.steps {
            ensure!(s > 0, "steps must be positive");
        }
        if let Some(i) = self.curriculum_interval {
            ensure!(i > 0, "curriculum_interval must be positive");
        }
        self.curriculum(1).validate()?;
        self.train.validate()
    }

    pub fn model_config(&self) -> RegressionGptConfig {
        RegressionGptConfig::new(self.dim, self.points + 1)
            .with_d_model(self.d_model)
            .with_n_layers(self.n_layers)
            .with_n_heads(self.n_heads)
    }

    /// The curriculum of a schedule of `total_steps` steps.
    pub fn curriculum(&self, total_steps: usize) -> Curriculum {
        let mut c = Curriculum {
            dims_start: self.dims_start,
            dims_end: self.dim,
            dims_inc: 1,
            points_start: self.points_start,
            points_end: self.points + 1,
            points_inc: 2,
            interval: 1,
        };
        c.interval = self
            .curriculum_interval
            .unwrap_or_else(|| (total_steps / 2 / c.stages().max(1)).max(1));
        c
    }

    fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{}: bad icl-regression config", path.display()))
    }
}

/// Error vs k of the model and the baselines, with how the model was trained.
#[derive(Clone, Debug, Serialize)]
pub struct IclRegressionReport {
    pub run_dir: PathBuf,
    pub dim: usize,
    pub points: usize,
    /// σ of the noise on y.
    pub noise: f64,
    pub steps: usize,
    pub total_steps: usize,
    pub train_seconds: f64,
    pub final_loss: Option<f64>,
    /// The run was finished already and only evaluated.
    pub reused: bool,
    pub eval_sequences: usize,
    /// model, least squares, 3-NN, averaging (and ridge with λ = σ² on a noisy task); entry k
    /// of each is the error with k examples.
    pub curves: Vec<ErrorCurve>,
    /// The headline numbers at k = d, 2d, 4d (those ≤ points).
    pub summary: Vec<SummaryRow>,
}

/// Errors at one k.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    pub k: usize,
    pub model: f64,
    pub least_squares: f64,
    pub nearest_neighbours: f64,
    pub averaging: f64,
    /// Ridge with λ = σ² (the Bayes-optimal predictor), on a noisy task.
    pub ridge: Option<f64>,
    /// model / least squares; none where least squares is exact (k ≥ d, noiseless).
    pub ratio: Option<f64>,
}

/// Trains (or resumes, or reuses the finished run in `out`), then evaluates.
pub fn icl_regression(
    cfg: &IclRegressionConfig,
    out: &Path,
    opts: &RunOptions,
) -> Result<IclRegressionReport> {
    cfg.validate()?;
    let run = RunDir(out.to_path_buf());
    let (reused, state) = if run.state().exists() {
        let saved = IclRegressionConfig::load(&run.config())?;
        let differ = differing_keys(&saved, cfg)?;
        if !differ.is_empty() {
            bail!(
                "{} holds an icl-regression run with other settings ({}); choose another --out",
                out.display(),
                differ.join(", ")
            );
        }
        let state = run.read_state()?;
        if state.finished {
            eprintln!("reusing the finished run in {}", out.display());
            (true, state)
        } else {
            eprintln!("resuming {} at step {}", out.display(), state.step);
            (false, train_run(cfg, &run, opts, true)?)
        }
    } else {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // Metrics of an attempt that never reached its first checkpoint belong to no run.
        if run.config().exists() && run.metrics().exists() {
            std::fs::remove_file(run.metrics())
                .with_context(|| format!("removing {}", run.metrics().display()))?;
        }
        checkpoint::write_atomic(&run.config(), toml::to_string_pretty(cfg)?.as_bytes())?;
        (false, train_run(cfg, &run, opts, false)?)
    };
    let model = load_model(cfg, &run, &opts.device)?;
    let curves = evaluate(&model, cfg)?;
    Ok(IclRegressionReport {
        run_dir: out.to_path_buf(),
        dim: cfg.dim,
        points: cfg.points,
        noise: cfg.noise,
        steps: state.step,
        total_steps: state.total_steps,
        train_seconds: state.train_seconds,
        final_loss: state.last_loss,
        reused,
        eval_sequences: cfg.eval_sequences,
        summary: summary(cfg.dim, cfg.points, &curves),
        curves,
    })
}

/// Top-level keys (and `train.*` keys) whose values differ; `eval_sequences` only sets the
/// evaluation, so it may change between calls.
fn differing_keys(a: &IclRegressionConfig, b: &IclRegressionConfig) -> Result<Vec<String>> {
    let b = IclRegressionConfig {
        eval_sequences: a.eval_sequences,
        ..b.clone()
    };
    let (a, b) = (toml::Value::try_from(a)?, toml::Value::try_from(&b)?);
    let mut keys = vec![];
    let (Some(a), Some(b)) = (a.as_table(), b.as_table()) else {
        return Ok(keys);
    };
    for (k, va) in a {
        let vb = b.get(k);
        match (va.as_table(), vb.and_then(|v| v.as_table())) {
            (Some(ta), Some(tb)) => {
                for (k2, v2) in ta {
                    if tb.get(k2) != Some(v2) {
                        keys.push(format!("{k}.{k2}"));
                    }
                }
            }
            _ if vb != Some(va) => keys.push(k.clone()),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        keys.push(k.clone());
    }
    Ok(keys)
}

/// Loads the run's weights into an inference model.
pub fn load_model(
    cfg: &IclRegressionConfig,
    run: &RunDir,
    device: &Device,
) -> Result<RegressionGpt> {
    let model = cfg.model_config().init(device);
    checkpoint::load_weights(model, &run.weights(), false)
}

/// Training batch `index` (micro-batch units) of the run's stream, at its curriculum stage.
fn training_batch(
    cfg: &IclRegressionConfig,
    cur: &Curriculum,
    step: usize,
    index: usize,
) -> Result<RegressionBatch> {
    let (dims, points) = cur.at(step);
    sample_noisy_batch(
        cfg.seed,
        index as u64,
        cfg.train.batch_size,
        points,
        cfg.dim,
        dims,
        cfg.noise as f32,
    )
}

fn train_run(
    cfg: &IclRegressionConfig,
    run: &RunDir,
    opts: &RunOptions,
    resume: bool,
) -> Result<RunState> {
    let device = opts.device.clone().autodiff();
    let model = seeded(&device, cfg.seed, || cfg.model_config().init(&device));
    let opt = train::optim::build_optimizer(
        &cfg.train.optimizer,
        cfg.train.weight_decay,
        cfg.train.momentum,
    )?;
    let (model, opt, state) = if resume {
        run.load_checkpoint(model, opt)?
    } else {
        let total = match cfg.train.minutes {
            Some(minutes) => calibrate_steps(&model, cfg, minutes)?,
            None => train::total_steps(&cfg.train, 1),
        };
        // The task is an endless stream: one "epoch" is the whole schedule.
        let state = RunState {
            total_steps: total,
            steps_per_epoch: total,
            ..Default::default()
        };
        (model, opt, state)
    };
    if opts.progress {
        train::install_ctrlc_handler();
    }
    let cur = cfg.curriculum(state.total_steps);
    let accum = cfg.train.grad_accum.max(1);
    let stop = opts
        .stop_at_step
        .map(|s| s.clamp(state.step, state.total_steps))
        .unwrap_or(state.total_steps);
    let cur2 = cur.clone();
    let batches = (state.step * accum..stop * accum)
        .map(move |i| training_batch(cfg, &cur2, i / accum, i).expect("sizes validated"));
    eprintln!(
        "icl-regression: d = {}, up to {} examples, {} steps of {} sequences; curriculum {}→{} dims, {}→{} pairs, every {} steps",
        cfg.dim,
        cfg.points,
        state.total_steps,
        cfg.train.batch_size,
        cur.dims_start,
        cur.dims_end,
        cur.points_start,
        cur.points_end,
        cur.interval
    );
    let val = sample_noisy_batch(
        cfg.seed ^ EVAL_STREAM,
        u64::MAX,
        VAL_SEQUENCES,
        cfg.points + 1,
        cfg.dim,
        cfg.dim,
        cfg.noise as f32,
    )?;
    let eval = move |m: &RegressionGpt, step: usize| -> Result<EvalOutput> {
        let curve = ErrorCurve::from_predictions("model", &m.valid().predict(&val)?, &val)?;
        let (dims, points) = cur.at(step.saturating_sub(1));
        Ok(vec![
            (
                "val_loss".into(),
                curve.mean.iter().sum::<f64>() / curve.mean.len() as f64,
            ),
            (
                format!("val_err_k{}", cfg.dim),
                curve.mean[cfg.dim.min(cfg.points)],
            ),
            ("curriculum_dims".into(), dims as f64),
            ("curriculum_points".into(), points as f64),
        ]
        .into())
    };
    let spec = FitSpec {
        cfg: &cfg.train,
        run: Some(run),
        samples_per_step: cfg.train.batch_size * accum,
        progress: opts.progress,
        label: "icl-regression",
        stop_at: stop,
    };
    let (_m, state, _outcome) =
        train::fit(model, opt, state, &spec, batches, Some(Box::new(eval)))?;
    Ok(state)
}

/// Turns a minutes budget into a step count: times forward + backward at the shortest and the
/// longest curriculum sequences (the cost is close to linear in length at these sizes) and
/// averages over the schedule's stages. The optimizer step adds roughly 10%.
fn calibrate_steps(
    model: &RegressionGpt,
    cfg: &IclRegressionConfig,
    minutes: f64,
) -> Result<usize> {
    let c = cfg.curriculum(1);
    let time = |points: usize| -> Result<f64> {
        let mut t = vec![];
        for i in 0..7 {
            let b = sample_batch(cfg.seed, i, cfg.train.batch_size, points, cfg.dim, cfg.dim)?;
            let t0 = Instant::now();
            let _ = Objective::loss(model, b).backward();
            t.push(t0.elapsed().as_secs_f64());
        }
        // The first two passes include one-time setup; the median of the other five (a step
        // takes tens of ms, so one slow step would otherwise move the whole schedule).
        let mut t = t.split_off(2);
        t.sort_by(f64::total_cmp);
        Ok(t[2] * 1.1 * cfg.train.grad_accum.max(1) as f64)
    };
    let (p0, p1) = (c.points_start, c.points_end);
    let (t0, t1) = (time(p0)?, time(p1)?);
    let cost = |p: usize| {
        if p1 == p0 {
            t1
        } else {
            t0 + (t1 - t0) * (p - p0) as f64 / (p1 - p0) as f64
        }
    };
    let budget = minutes * 60.0;
    let mut total = (budget / t1).max(1.0) as usize;
    // The curriculum (hence the mean cost) depends on the schedule length: iterate to a fixed point.
    for _ in 0..10 {
        let cur = cfg.curriculum(total);
        let mean = (0..total).map(|s| cost(cur.at(s).1)).sum::<f64>() / total as f64;
        total = (budget / mean).max(1.0) as usize;
    }
    Ok(total)
}

/// Error vs k on `cfg.eval_sequences` fresh sequences of the full task (d = `cfg.dim`,
/// `cfg.points + 1` pairs): the model, then least squares, 3-NN and averaging, and ridge
/// (λ = σ²) on a noisy task.
pub fn evaluate(model: &RegressionGpt, cfg: &IclRegressionConfig) -> Result<Vec<ErrorCurve>> {
    let n = cfg.points + 1;
    let mut xs = vec![];
    let mut ys = vec![];
    let mut ws = vec![];
    let mut preds = vec![];
    let mut left = cfg.eval_sequences;
    let mut chunk = 0u64;
    while left > 0 {
        let b = left.min(EVAL_CHUNK);
        let batch = sample_noisy_batch(
            cfg.seed ^ EVAL_STREAM,
            chunk,
            b,
            n,
            cfg.dim,
            cfg.dim,
            cfg.noise as f32,
        )?;
        preds.extend(model.predict(&batch)?);
        xs.extend(batch.xs);
        ys.extend(batch.ys);
        ws.extend(batch.ws);
        left -= b;
        chunk += 1;
    }
    let all = RegressionBatch {
        xs,
        ys,
        ws,
        batch: cfg.eval_sequences,
        points: n,
        dim: cfg.dim,
        active: cfg.dim,
    };
    let mut curves = vec![ErrorCurve::from_predictions("model", &preds, &all)?];
    for b in Baseline::ALL {
        curves.push(ErrorCurve::baseline(b, &all)?);
    }
    if cfg.noise > 0.0 {
        curves.push(ErrorCurve::baseline(
            Baseline::Ridge(cfg.noise * cfg.noise),
            &all,
        )?);
    }
    Ok(curves)
}

/// Rows at k = d, 2d, 4d (those ≤ points; k = points when none is).
pub fn summary(dim: usize, points: usize, curves: &[ErrorCurve]) -> Vec<SummaryRow> {
    let mut ks: Vec<usize> = [dim, 2 * dim, 4 * dim]
        .into_iter()
        .filter(|&k| k <= points)
        .collect();
    if ks.is_empty() {
        ks.push(points);
    }
    ks.into_iter()
        .map(|k| {
            let at = |i: usize| curves.get(i).map_or(f64::NAN, |c| c.mean[k]);
            SummaryRow {
                k,
                model: at(0),
                least_squares: at(1),
                nearest_neighbours: at(2),
                averaging: at(3),
                ridge: curves.get(4).map(|c| c.mean[k]),
                ratio: (at(1) > EXACT).then(|| at(0) / at(1)),
            }
        })
        .collect()
}

/// Least squares counts as exact (interpolating a noiseless task) below this error.
const EXACT: f64 = 1e-9;

/// The error-vs-k table, one line per k.
pub fn format_table(r: &IclRegressionReport) -> String {
    let mut s = format!(
        "in-context linear regression, d = {}{}: squared error / d vs number of in-context examples k \
         ({} fresh sequences; {} training steps in {:.0} s{})\n",
        r.dim,
        if r.noise > 0.0 {
            format!(", noise σ = {}", r.noise)
        } else {
            String::new()
        },
        r.eval_sequences,
        r.steps,
        r.train_seconds,
        if r.reused { ", reused run" } else { "" }
    );
    if r.steps < r.total_steps {
        s.push_str(&format!(
            "interrupted after {} of {} steps: the same command resumes the run\n",
            r.steps, r.total_steps
        ));
    }
    s.push('\n');
    s.push_str(&format!("{:>4}", "k"));
    for c in &r.curves {
        s.push_str(&format!("{:>15}", c.name));
    }
    s.push_str(&format!("{:>11}\n", "model/LS"));
    let n = r.curves.first().map_or(0, |c| c.mean.len());
    for k in 0..n {
        s.push_str(&format!("{k:>4}"));
        for c in &r.curves {
            s.push_str(&format!("{:>15.4}", c.mean[k]));
        }
        let (m, ls) = (
            r.curves[0].mean[k],
            r.curves.get(1).map_or(f64::NAN, |c| c.mean[k]),
        );
        if ls > EXACT {
            s.push_str(&format!("{:>11.3}\n", m / ls));
        } else {
            s.push_str(&format!("{:>11}\n", "LS exact"));
        }
    }
    if r.noise > 0.0 {
        s.push_str(&format!(
            "\nerrors are against the noisy y: σ²/d = {:.4} is the floor; ridge (λ = σ²) is the \
             Bayes-optimal predictor, least squares is far from it at k ≈ d.\n",
            r.noise * r.noise / r.dim as f64
        ));
    } else {
        s.push_str(
            "\nleast squares recovers w exactly from k ≥ d noiseless examples (error 0 up to rounding), \
             so model/LS is shown only where it is finite.\n",
        );
    }
    s
}

/// The curves as CSV: k, then mean and standard error of each curve.
pub fn csv(r: &IclRegressionReport) -> String {
    let mut s = "k".to_string();
    for c in &r.curves {
        let name = c.name.replace(' ', "_");
        s.push_str(&format!(",{name},{name}_sem"));
    }
    s.push('\n');
    let n = r.curves.first().map_or(0, |c| c.mean.len());
    for k in 0..n {
        s.push_str(&k.to_string());
        for c in &r.curves {
            s.push_str(&format!(",{},{}", c.mean[k], c.sem[k]));
        }
        s.push('\n');
    }
    s
}

/// Error vs k on a log scale, one line per curve with a ± standard-error band:
/// OUT/icl_regression.{png,svg}. Least squares stops where it becomes exact (error 0 up to
/// rounding, which a log axis cannot show).
pub fn plot(r: &IclRegressionReport, out: &Path) -> Result<Vec<PathBuf>> {
    let series: Vec<Series> = r
        .curves
        .iter()
        .map(|c| {
            let (pts, band) = c
                .mean
                .iter()
                .zip(&c.sem)
                .enumerate()
                .filter(|&(_, (&m, _))| m > EXACT)
                .map(|(k, (&m, &s))| ((k as f64, m), s))
                .unzip();
            Series::with_band(c.name.clone(), pts, band)
        })
        .collect();
    let spec = PlotSpec {
        title: if r.noise > 0.0 {
            format!(
                "In-context linear regression, d = {}, noise σ = {}",
                r.dim, r.noise
            )
        } else {
            format!("In-context linear regression, d = {}", r.dim)
        },
        x_label: "in-context examples k".into(),
        y_label: "squared error / d".into(),
        log_y: true,
        ..Default::default()
    };
    line_plot(&out.join("icl_regression"), &spec, &series)
}
