//! Scaling study: GPT models of several sizes N trained on several token budgets D, the final
//! validation loss of each, and power laws L(N), L(D) fitted to them (Kaplan et al. 2020,
//! "Scaling Laws for Neural Language Models", at CPU scale).
//!
//! N counts non-embedding parameters, as Kaplan et al. do (token and position tables are left
//! out; the LM head is tied to the token table). D counts training tokens seen,
//! steps × batch × context. Every run has its own cosine schedule ending at its last step, so a
//! small D is a complete short run, not a prefix of a longer one. Each run goes through
//! [`text_pipeline::pretrain_text`] (the shared trainer) into OUT/N<N>_D<D>; finished runs with
//! the same settings are reused, interrupted ones resumed.

use crate::lm::text_data::{Split, TextDataset, TextSource, TokenFile};
use crate::pipeline::RunOptions;
use crate::report::fit::{fit_power_law, fit_power_law_offset, PowerLaw};
use crate::text_pipeline::{self, TextModelConfig, TextPretrainConfig};
use crate::train::RunDir;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

/// Width of one attention head when a shape is derived from a parameter count.
pub const HEAD_DIM: usize = 16;
/// d_model / n_layers that [`ModelShape::for_target`] aims for: depth and width grow together
/// (Kaplan et al. find the loss nearly flat over a wide range of this ratio).
pub const ASPECT: f64 = 24.0;
/// Share of each run's steps spent in linear warmup.
pub const WARMUP_FRAC: f64 = 0.05;

/// Depth, width and heads of a GPT (the MLP is 4·d_model wide).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
}

impl ModelShape {
    pub fn new(n_layers: usize, d_model: usize, n_heads: usize) -> Result<Self> {
        ensure!(
            n_layers > 0 && d_model > 0 && n_heads > 0,
            "model shape {n_layers}x{d_model}x{n_heads}: every size must be positive"
        );
        ensure!(
            d_model.is_multiple_of(n_heads),
            "model shape {n_layers}x{d_model}x{n_heads}: d_model is not a multiple of n_heads"
        );
        Ok(Self {
            n_layers,
            d_model,
            n_heads,
        })
    }

    /// Non-embedding parameters of the GPT in `methods::clm`: per block the qkv and output
    /// projections (4d² + 4d), the MLP (8d² + 5d) and two LayerNorms (4d), plus the final
    /// LayerNorm (2d).
    pub fn non_embedding_params(&self) -> usize {
        let d = self.d_model;
        self.n_layers * (12 * d * d + 13 * d) + 2 * d
    }

    /// Token table (also the tied LM head) and position table.
    pub fn embedding_params(&self, vocab: usize, context: usize) -> usize {
        (vocab + context) * self.d_model
    }

    /// The shape with the best score `|ln(N / target)| + 0.25·|ln((d_model / n_layers) / ASPECT)|`
    /// among n_layers 1..=32 and d_model a multiple of [`HEAD_DIM`] up to 2048: close to the
    /// target, with depth and width grown together (12k → 1x32, 50k → 2x48, 200k → 4x64,
    /// 1M → 5x128). The printed N is the shape's actual count.
    pub fn for_target(target: usize) -> Result<Self> {
        ensure!(target > 0, "target parameter count must be positive");
        let mut best: Option<(f64, Self)> = None;
        for n_layers in 1..=32 {
            for heads in 1..=(2048 / HEAD_DIM) {
                let s = Self {
                    n_layers,
                    d_model: heads * HEAD_DIM,
                    n_heads: heads,
                };
                let size = (s.non_embedding_params() as f64 / target as f64).ln().abs();
                let aspect = (s.d_model as f64 / n_layers as f64 / ASPECT).ln().abs();
                let score = size + 0.25 * aspect;
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, s));
                }
            }
        }
        Ok(best.expect("the candidate grid is not empty").1)
    }

    /// `2x64x4` (layers x d_model x heads), the form `--params` accepts.
    pub fn label(&self) -> String {
        format!("{}x{}x{}", self.n_layers, self.d_model, self.n_heads)
    }
}

/// One entry of `--params`: a target non-embedding parameter count (`100k`, `1.5M`) or an
/// explicit shape `LxD` / `LxDxH` (layers x d_model [x heads]; heads default to d_model / 16).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamSpec {
    Target(usize),
    Shape(ModelShape),
}

impl FromStr for ParamSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.contains('x') {
            let parts: Vec<&str> = t.split('x').collect();
            let nums: Vec<usize> = parts
                .iter()
                .map(|p| p.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    anyhow::anyhow!("model size {s:?}: expected LxD or LxDxH with whole numbers")
                })?;
            let shape = match nums[..] {
                [l, d] => {
                    ensure!(
                        d > 0 && d % HEAD_DIM == 0,
                        "model size {s:?}: d_model {d} is not a multiple of {HEAD_DIM}; give the heads as LxDxH"
                    );
                    ModelShape::new(l, d, d / HEAD_DIM)
                }
                [l, d, h] => ModelShape::new(l, d, h),
                _ => bail!("model size {s:?}: expected LxD or LxDxH"),
            }
            .with_context(|| format!("model size {s:?}"))?;
            return Ok(Self::Shape(shape));
        }
        let n = parse_count(t).with_context(|| {
            format!("model size {s:?}: expected a parameter count (100k, 1.5M) or a shape LxD[xH]")
        })?;
        Ok(Self::Target(n))
    }
}

impl ParamSpec {
    pub fn shape(&self) -> Result<ModelShape> {
        match self {
            Self::Target(n) => ModelShape::for_target(*n),
            Self::Shape(s) => Ok(*s),
        }
    }
}

/// A positive count with an optional k/M/G suffix or in exponent form: `300k`, `2.7M`, `1e6`,
/// `250_000`. Fractions must come out whole.
pub fn parse_count(s: &str) -> Result<usize> {
    let t = s.trim().replace('_', "");
    ensure!(!t.is_empty(), "empty count");
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        Some('g' | 'G' | 'b' | 'B') => (&t[..t.len() - 1], 1e9),
        _ => (t.as_str(), 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a count (examples: 300k, 2.7M, 1e6)"))?;
    let v = v * mult;
    ensure!(
        v.is_finite() && v >= 1.0,
        "{s:?}: a count must be at least 1"
    );
    ensure!(
        (v - v.round()).abs() < 1e-6 * v,
        "{s:?}: not a whole number"
    );
    ensure!(v < usize::MAX as f64, "{s:?} is too large");
    Ok(v.round() as usize)
}

/// `25.5k`, `2.70M`: a count in three significant digits.
pub fn short_count(v: usize) -> String {
    let f = v as f64;
    let (x, suffix) = if f >= 1e9 {
        (f / 1e9, "G")
    } else if f >= 1e6 {
        (f / 1e6, "M")
    } else if f >= 1e3 {
        (f / 1e3, "k")
    } else {
        return v.to_string();
    };
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$}{suffix}")
}

/// The Shakespeare corpus in the data cache (`../shared/data/get.sh shakespeare`).
pub fn default_data() -> String {
    format!(
        "text:{}",
        crate::icl::tasks::data_dir().join("shakespeare").display()
    )
}

/// Settings of `experiment scaling`.
#[derive(Clone, Debug)]
pub struct ScalingOptions {
    /// text:PATH, jsonl:PATH[:field], json:PATH[:field].
    pub data: String,
    pub tokenizer: String,
    pub params: Vec<ParamSpec>,
    /// Training-token budgets D (rounded to whole steps).
    pub tokens: Vec<usize>,
    pub context: usize,
    pub batch_size: usize,
    /// Peak learning rate (the same for every run).
    pub lr: f64,
    /// Validation batches of the fixed validation set (the first windows of the held-out split).
    pub val_batches: usize,
    pub seed: u64,
    /// Run folders OUT/N<N>_D<D>, the token cache OUT/tokens.
    pub out: PathBuf,
    pub run: RunOptions,
}

/// One run of the grid, before training.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub shape: ModelShape,
    /// Non-embedding parameters.
    pub n_params: usize,
    pub embedding_params: usize,
    /// Tokens actually trained on: steps × batch × context.
    pub tokens: usize,
    pub steps: usize,
    pub dir: PathBuf,
    pub cfg: TextPretrainConfig,
}

/// The grid with the corpus facts it was planned from.
#[derive(Clone, Debug)]
pub struct Plan {
    pub runs: Vec<PlannedRun>,
    pub vocab_size: usize,
    pub train_tokens: usize,
    /// Tokens in the fixed validation set.
    pub val_tokens: usize,
}

/// Checks the options, tokenizes the corpus once (OUT/tokens) and lays out the grid, smallest
/// model first and within a model the smallest budget first.
pub fn plan(o: &ScalingOptions) -> Result<Plan> {
    ensure!(
        !o.params.is_empty(),
        "--params is empty: give at least one model size"
    );
    ensure!(
        !o.tokens.is_empty(),
        "--tokens is empty: give at least one token budget"
    );
    ensure!(o.batch_size > 0, "--batch-size must be positive");
    ensure!(o.val_batches > 0, "--val-batches must be positive");
    ensure!(
        o.lr.is_finite() && o.lr > 0.0,
        "--lr must be positive, got {}",
        o.lr
    );
    let per_step = o.batch_size * o.context;
    let mut shapes: Vec<ModelShape> = vec![];
    for p in &o.params {
        let s = p.shape()?;
        ensure!(
            !shapes.contains(&s),
            "--params: two entries map to the same model {} ({} non-embedding parameters)",
            s.label(),
            s.non_embedding_params()
        );
        shapes.push(s);
    }
    shapes.sort_by_key(|s| s.non_embedding_params());
    let mut steps: Vec<usize> = vec![];
    for &d in &o.tokens {
        ensure!(d > 0, "--tokens: a token budget must be positive");
        let s = (d as f64 / per_step as f64).round() as usize;
        ensure!(
            s >= 1,
            "--tokens {d}: less than one step of {per_step} tokens (batch {} × context {})",
            o.batch_size,
            o.context
        );
        ensure!(
            !steps.contains(&s),
            "--tokens: two budgets round to the same {s} steps of {per_step} tokens"
        );
        steps.push(s);
    }
    steps.sort_unstable();

    // One config checks data, tokenizer and context before any tokenization.
    let mut base = TextPretrainConfig::new("gpt", &o.data);
    base.tokenizer = o.tokenizer.clone();
    base.seed = o.seed;
    base.context = o.context;
    base.val_batches = o.val_batches;
    base.model.dropout = 0.0;
    base.train.batch_size = o.batch_size;
    base.train.lr = o.lr;
    base.train.final_lr_frac = 0.0;
    base.validate()?;

    let source: TextSource = o.data.parse()?;
    if let TextSource::Text(path) = &source {
        if !path.exists() && o.data == default_data() {
            bail!(
                "{} not found: fetch the Shakespeare corpus with `../shared/data/get.sh shakespeare` or give --data",
                path.display()
            );
        }
    }
    let cache = o.out.join("tokens");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let tok = text_pipeline::run_tokenizer(&base, &cache, Some(&source))?;
    let tokens = TokenFile::open_or_build(
        &source,
        tok.as_ref(),
        TokenFile::cache_path(&cache, tok.as_ref()),
        base.lossy,
    )?;
    let data = TextDataset::new(tokens, base.val_fraction)?;
    data.check_context(o.context)?;
    let val_len = data.len(Split::Validation);
    let val_windows = val_len.saturating_sub(1) / o.context;
    ensure!(
        val_windows >= 1,
        "{}: the validation split ({val_len} tokens, the last {:.0}%) holds no window of {} tokens; use more text or a shorter --context",
        o.data,
        100.0 * base.val_fraction,
        o.context + 1
    );
    let val_tokens = val_windows.min(o.val_batches * o.batch_size) * o.context;
    // Warmup is given to the trainer in epochs of this many steps (its own formula).
    let steps_per_epoch = (data.len(Split::Train) / per_step).max(1);

    let mut runs = vec![];
    for shape in &shapes {
        for &s in &steps {
            let mut cfg = base.clone();
            cfg.model = TextModelConfig {
                d_model: shape.d_model,
                n_layers: shape.n_layers,
                n_heads: shape.n_heads,
                d_ff: None,
                dropout: 0.0,
            };
            cfg.train.steps = Some(s);
            let warmup = ((s as f64 * WARMUP_FRAC).round() as usize).max(1);
            cfg.train.warmup_epochs = warmup as f64 / steps_per_epoch as f64;
            // One evaluation, at the end: the number the study is about.
            cfg.train.eval_every = s;
            cfg.train.log_every = (s / 100).max(1);
            cfg.validate()?;
            let n = shape.non_embedding_params();
            let d = s * per_step;
            runs.push(PlannedRun {
                shape: *shape,
                n_params: n,
                embedding_params: shape.embedding_params(tok.vocab_size(), o.context),
                tokens: d,
                steps: s,
                dir: o.out.join(format!("N{n}_D{d}")),
                cfg,
            });
        }
    }
    Ok(Plan {
        runs,
        vocab_size: tok.vocab_size(),
        train_tokens: data.len(Split::Train),
        val_tokens,
    })
}

/// One finished run of the grid.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingRow {
    /// Non-embedding parameters N.
    pub n_params: usize,
    pub embedding_params: usize,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    /// Training tokens D.
    pub tokens: usize,
    pub steps: usize,
    /// Mean loss on the fixed validation set after the last step (nats per token).
    pub val_loss: f64,
    /// Loss of the last training step.
    pub train_loss: f64,
    pub seconds: f64,
    /// Taken from an earlier invocation rather than trained now.
    pub reused: bool,
    pub run_dir: PathBuf,
}

/// A power law along one axis with the other held fixed.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingFit {
    /// "N" (loss vs parameters at fixed tokens) or "D" (loss vs tokens at fixed parameters).
    pub over: String,
    /// The fixed value of the other axis.
    pub at: usize,
    pub law: PowerLaw,
    /// With an irreducible loss c, when there are at least 4 points.
    pub with_offset: Option<PowerLaw>,
}

/// Everything `experiment scaling` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingReport {
    pub data: String,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub context: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub rows: Vec<ScalingRow>,
    /// L(N) at the largest D (Kaplan's α_N), if there are at least 2 model sizes.
    pub fit_n: Option<ScalingFit>,
    /// L(D) at the largest N (α_D), if there are at least 2 budgets.
    pub fit_d: Option<ScalingFit>,
    /// L(N) at every D, smallest D first.
    pub fits_n: Vec<ScalingFit>,
    /// L(D) at every N, smallest N first.
    pub fits_d: Vec<ScalingFit>,
}

enum Status {
    Finished,
    Partial,
    New,
}

/// Dotted keys whose values differ between two TOML documents.
fn differing_keys(a: &toml::Value, b: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => differing_keys(u, v, &p, out),
                    _ => out.push(p),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Whether `p.dir` holds this exact run finished, partly done, or nothing usable yet.
fn status(p: &PlannedRun) -> Result<Status> {
    let run = RunDir(p.dir.clone());
    if !run.state().exists() {
        if p.dir.exists() {
            // Died before its first checkpoint: nothing to keep (and stale metrics to drop).
            std::fs::remove_dir_all(&p.dir)
                .with_context(|| format!("clearing {}", p.dir.display()))?;
        }
        return Ok(Status::New);
    }
    let old = TextPretrainConfig::load(&run.config())?;
    if old != p.cfg {
        let mut keys = vec![];
        differing_keys(
            &toml::Value::try_from(&old)?,
            &toml::Value::try_from(&p.cfg)?,
            "",
            &mut keys,
        );
        bail!(
            "{} holds a run with other settings ({}) than this grid: use another --out or remove that folder",
            p.dir.display(),
            keys.join(", ")
        );
    }
    Ok(if run.read_state()?.finished {
        Status::Finished
    } else {
        Status::Partial
    })
}

fn fmt_secs(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// Trains (or reuses) every run of the grid, then fits the power laws.
pub fn scaling_experiment(o: &ScalingOptions) -> Result<ScalingReport> {
    let plan = plan(o)?;
    let total = plan.runs.len();
    eprintln!(
        "scaling grid: {} model sizes × {} token budgets on {} ({} tokenizer, vocab {}, {} training tokens); validation on {} fixed tokens",
        total / o.tokens.len(),
        o.tokens.len(),
        o.data,
        o.tokenizer,
        plan.vocab_size,
        short_count(plan.train_tokens),
        short_count(plan.val_tokens)
    );
    // Cost of a run ∝ tokens × (N + the LM head), measured on the runs trained so far.
    let cost =
        |p: &PlannedRun| p.tokens as f64 * (p.n_params + plan.vocab_size * p.shape.d_model) as f64;
    let (mut spent, mut done_cost) = (0.0f64, 0.0f64);
    let mut rows = vec![];
    for (i, p) in plan.runs.iter().enumerate() {
        let st = status(p)?;
        let remaining: f64 = plan.runs[i..]
            .iter()
            .filter(|q| !RunDir(q.dir.clone()).state().exists() || q.dir == p.dir)
            .map(cost)
            .sum();
        let eta = if done_cost > 0.0 {
            format!("  (grid ETA ~{})", fmt_secs(spent / done_cost * remaining))
        } else {
            String::new()
        };
        let what = format!(
            "[{}/{total}] N {} (layers x d_model x heads {}) × D {} tokens ({} steps)",
            i + 1,
            short_count(p.n_params),
            p.shape.label(),
            short_count(p.tokens),
            p.steps
        );
        let started = Instant::now();
        let reused = matches!(st, Status::Finished);
        match st {
            Status::Finished => eprintln!("{what}: reusing {}", p.dir.display()),
            Status::Partial | Status::New => {
                eprintln!("{what} → {}{eta}", p.dir.display());
                let r = if matches!(st, Status::Partial) {
                    text_pipeline::resume_text(&p.dir, &o.run)?
                } else {
                    text_pipeline::pretrain_text(&p.cfg, &p.dir, &o.run)?
                };
                if r.interrupted {
                    bail!(
                        "interrupted in {}: run the same command again to continue (finished runs are reused, this one resumes)",
                        p.dir.display()
                    );
                }
                spent += started.elapsed().as_secs_f64();
                done_cost += cost(p);
            }
        }
        let state = RunDir(p.dir.clone()).read_state()?;
        let val_loss = *state.last_eval.get("val_loss").with_context(|| {
            format!(
                "{}: the run has no validation loss (state.json)",
                p.dir.display()
            )
        })?;
        eprintln!(
            "    val loss {val_loss:.4}  ({} of training)",
            fmt_secs(state.train_seconds)
        );
        rows.push(ScalingRow {
            n_params: p.n_params,
            embedding_params: p.embedding_params,
            n_layers: p.shape.n_layers,
            d_model: p.shape.d_model,
            n_heads: p.shape.n_heads,
            tokens: p.tokens,
            steps: p.steps,
            val_loss,
            train_loss: state.last_loss.unwrap_or(f64::NAN),
            seconds: state.train_seconds,
            reused,
            run_dir: p.dir.clone(),
        });
    }
    let (fits_n, fits_d) = fit_grid(&rows)?;
    Ok(ScalingReport {
        data: o.data.clone(),
        tokenizer: o.tokenizer.clone(),
        vocab_size: plan.vocab_size,
        context: o.context,
        batch_size: o.batch_size,
        lr: o.lr,
        seed: o.seed,
        train_tokens: plan.train_tokens,
        val_tokens: plan.val_tokens,
        fit_n: fits_n.last().cloned(),
        fit_d: fits_d.last().cloned(),
        fits_n,
        fits_d,
        rows,
    })
}

fn sorted_unique(v: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = v.collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn fit_axis(
    rows: &[&ScalingRow],
    over: &str,
    at: usize,
    x: impl Fn(&ScalingRow) -> usize,
) -> Result<ScalingFit> {
    let xs: Vec<f64> = rows.iter().map(|r| x(r) as f64).collect();
    let ys: Vec<f64> = rows.iter().map(|r| r.val_loss).collect();
    let law = fit_power_law(&xs, &ys).with_context(|| format!("fitting L({over})"))?;
    let with_offset = if xs.len() >= 4 {
        Some(fit_power_law_offset(&xs, &ys)?)
    } else {
        None
    };
    Ok(ScalingFit {
        over: over.into(),
        at,
        law,
        with_offset,
    })
}

/// L(N) at every D and L(D) at every N (each needs at least 2 distinct values on its axis).
pub fn fit_grid(rows: &[ScalingRow]) -> Result<(Vec<ScalingFit>, Vec<ScalingFit>)> {
    let ns = sorted_unique(rows.iter().map(|r| r.n_params));
    let ds = sorted_unique(rows.iter().map(|r| r.tokens));
    let mut fits_n = vec![];
    if ns.len() >= 2 {
        for &d in &ds {
            let sel: Vec<&ScalingRow> = rows.iter().filter(|r| r.tokens == d).collect();
            if sel.len() >= 2 {
                fits_n.push(fit_axis(&sel, "N", d, |r| r.n_params)?);
            }
        }
    }
    let mut fits_d = vec![];
    if ds.len() >= 2 {
        for &n in &ns {
            let sel: Vec<&ScalingRow> = rows.iter().filter(|r| r.n_params == n).collect();
            if sel.len() >= 2 {
                fits_d.push(fit_axis(&sel, "D", n, |r| r.tokens)?);
            }
        }
    }
    Ok((fits_n, fits_d))
}

fn describe_fit(f: &ScalingFit) -> String {
    let other = if f.over == "N" { "D" } else { "N" };
    let res: Vec<String> = f.law.residuals.iter().map(|r| format!("{r:+.3}")).collect();
    let mut s = format!(
        "L({}) at {other} = {:>6}:  {}   α_{} = {:.4}   R² {:.4}   ln-residuals {}\n",
        f.over,
        short_count(f.at),
        f.law.formula(&f.over),
        f.over,
        f.law.alpha,
        f.law.r2,
        res.join(" ")
    );
    if let Some(c) = &f.with_offset {
        s += &format!(
            "    with irreducible loss:  {}   α_{} = {:.4}   R² {:.4}\n",
            c.formula(&f.over),
            f.over,
            c.alpha,
            c.r2
        );
    }
    s
}

/// The grid as a table (rows N, columns D), then the fits.
pub fn format_scaling(r: &ScalingReport) -> String {
    let ns = sorted_unique(r.rows.iter().map(|x| x.n_params));
    let ds = sorted_unique(r.rows.iter().map(|x| x.tokens));
    let mut out = format!(
        "final validation loss (nats/token on {} fixed tokens; {} tokenizer, vocab {}, context {}, batch {}, lr {})\n",
        short_count(r.val_tokens),
        r.tokenizer,
        r.vocab_size,
        r.context,
        r.batch_size,
        r.lr
    );
    out += &format!("{:<22}", "N (non-emb.)  shape");
    for d in &ds {
        out += &format!("{:>10}", format!("D={}", short_count(*d)));
    }
    out += "\n";
    for n in &ns {
        let shape = r
            .rows
            .iter()
            .find(|x| x.n_params == *n)
            .map(|x| format!("{}x{}x{}", x.n_layers, x.d_model, x.n_heads))
            .unwrap_or_default();
        out += &format!("{:<22}", format!("{:>8}  {shape}", short_count(*n)));
        for d in &ds {
            let c = r
                .rows
                .iter()
                .find(|x| x.n_params == *n && x.tokens == *d)
                .map(|x| format!("{:.4}", x.val_loss))
                .unwrap_or_default();
            out += &format!("{c:>10}");
        }
        out += "\n";
    }
    out += "\n";
    match &r.fit_n {
        Some(f) => out += &describe_fit(f),
        None => out += "L(N): needs at least 2 model sizes\n",
    }
    match &r.fit_d {
        Some(f) => out += &describe_fit(f),
        None => out += "L(D): needs at least 2 token budgets\n",
    }
    let line = |fits: &[ScalingFit], name: &str| -> String {
        let cells: Vec<String> = fits
            .iter()
            .map(|f| {
                format!(
                    "{} {:.3} (R² {:.2})",
                    short_count(f.at),
                    f.law.alpha,
                    f.law.r2
                )
            })
            .collect();
        format!("{name} {}\n", cells.join(" | "))
    };
    if r.fits_n.len() > 1 || r.fits_d.len() > 1 {
        out += "\nexponents along each row and column:\n";
        if r.fits_n.len() > 1 {
            out += &line(&r.fits_n, "  α_N at D =");
        }
        if r.fits_d.len() > 1 {
            out += &line(&r.fits_d, "  α_D at N =");
        }
    }
    out
}

/// The rows as CSV.
pub fn scaling_csv(rows: &[ScalingRow]) -> String {
    let mut s = String::from(
        "n_params,embedding_params,n_layers,d_model,n_heads,tokens,steps,val_loss,train_loss,seconds\n",
    );
    for r in rows {
        s += &format!(
            "{},{},{},{},{},{},{},{:.6},{:.6},{:.3}\n",
            r.n_params,
            r.embedding_params,
            r.n_layers,
            r.d_model,
            r.n_heads,
            r.tokens,
            r.steps,
            r.val_loss,
            r.train_loss,
            r.seconds
        );
    }
    s
}

/// Points along a fitted law from `lo` to `hi`, evenly spaced in log x; more than the plot's
/// marker limit so the fit draws as a plain line, unlike the measured series.
fn fit_curve(law: &PowerLaw, lo: f64, hi: f64) -> Vec<(f64, f64)> {
    let k = crate::report::plot::MARKER_LIMIT + 24;
    (0..k)
        .map(|i| {
            let x = lo * (hi / lo).powf(i as f64 / (k - 1) as f64);
            (x, law.predict(x))
        })
        .collect()
}

/// Loss vs N (one line per D) and loss vs D (one line per N), log–log, with the headline fits:
/// OUT/scaling.{png,svg}.
pub fn plot_scaling(r: &ScalingReport, out: &Path) -> Result<Vec<PathBuf>> {
    use crate::report::plot::{spec_panels, PlotSpec, Series};
    let ns = sorted_unique(r.rows.iter().map(|x| x.n_params));
    let ds = sorted_unique(r.rows.iter().map(|x| x.tokens));
    let line = |pick: &dyn Fn(&ScalingRow) -> bool, x: &dyn Fn(&ScalingRow) -> usize| {
        let mut pts: Vec<(f64, f64)> = r
            .rows
            .iter()
            .filter(|row| pick(row))
            .map(|row| (x(row) as f64, row.val_loss))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let mut by_n: Vec<Series> = ds
        .iter()
        .map(|&d| {
            Series::new(
                format!("D = {}", short_count(d)),
                line(&|row| row.tokens == d, &|row| row.n_params),
            )
        })
        .collect();
    if let (Some(f), Some(&lo), Some(&hi)) = (&r.fit_n, ns.first(), ns.last()) {
        by_n.push(Series::new(
            format!(
                "fit at D {}: α_N {:.3}, R² {:.3}",
                short_count(f.at),
                f.law.alpha,
                f.law.r2
            ),
            fit_curve(&f.law, lo as f64, hi as f64),
        ));
    }
    let mut by_d: Vec<Series> = ns
        .iter()
        .map(|&n| {
            Series::new(
                format!("N = {}", short_count(n)),
                line(&|row| row.n_params == n, &|row| row.tokens),
            )
        })
        .collect();
    if let (Some(f), Some(&lo), Some(&hi)) = (&r.fit_d, ds.first(), ds.last()) {
        by_d.push(Series::new(
            format!(
                "fit at N {}: α_D {:.3}, R² {:.3}",
                short_count(f.at),
                f.law.alpha,
                f.law.r2
            ),
            fit_curve(&f.law, lo as f64, hi as f64),
        ));
    }
    let spec = |title: &str, x: &str| PlotSpec {
        title: title.into(),
        x_label: x.into(),
        y_label: "validation loss (nats/token)".into(),
        log_x: true,
        log_y: true,
    };
    spec_panels(
        &out.join("scaling"),
        "scaling: final validation loss",
        &[
            (
                spec("loss vs parameters", "non-embedding parameters N"),
                by_n,
            ),
            (spec("loss vs training tokens", "training tokens D"), by_d),
        ],
    )
}
