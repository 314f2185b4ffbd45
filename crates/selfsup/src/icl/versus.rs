//! In-context learning vs fine-tuning vs a linear probe at equal labels: for each k, the same
//! k solved examples are (a) put into the prompt of every query, (b) used to fine-tune the
//! model with LoRA ([`super::finetune`]), then prompted zero-shot, (c) used to fit a
//! logistic-regression probe on the frozen model's final hidden state at the last prompt
//! token. All three answer the same held-out queries; accuracy and compute cost per method.
//!
//! Mosbach et al. 2023 ("Few-shot Fine-tuning vs. In-context Learning: A Fair Comparison and
//! Evaluation") find fine-tuning on par with or better than ICL at equal examples; this
//! experiment measures it for the model and task at hand.
//!
//! The held-out queries are drawn once from the task with the seed and never serve as
//! training examples; the k examples of draw d are the first k of a seeded order of the
//! remaining pool (classes taken in turn when the task has classes), so the examples at k
//! are among those at 2k.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::eval::{mean_stderr, score_prompt, CallCache};
use super::finetune::{prompt_ids, target_sequence, FinetuneReport, LoraConfig, TunableLm};
use super::task::{render, Metric, Prompt, Scoring, Task};
use crate::eval::{fit_probe, EvalResult, ProbeConfig, Standardizer};

/// Settings of [`icl_vs_finetune`].
#[derive(Debug, Clone)]
pub struct VersusConfig {
    /// Numbers of labelled examples, each ≥ 1.
    pub ks: Vec<usize>,
    /// Seeded draws of the k examples (mean ± std over draws).
    pub draws: usize,
    /// Held-out queries (fixed across k and draws).
    pub eval_size: usize,
    pub seed: u64,
    pub lora: LoraConfig,
    pub probe: ProbeConfig,
    /// Show a progress bar with ETA.
    pub progress: bool,
}

impl Default for VersusConfig {
    fn default() -> Self {
        Self {
            ks: vec![1, 2, 4, 8, 16, 32],
            draws: 1,
            eval_size: 100,
            seed: 0,
            lora: LoraConfig::default(),
            probe: ProbeConfig::default(),
            progress: false,
        }
    }
}

/// The three ways of using k labelled examples.
pub const METHODS: [&str; 3] = ["icl", "finetune", "probe"];

/// One method at one k in one draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub method: String,
    pub k: usize,
    pub draw: usize,
    /// Mean of the headline metric over the held-out queries; None when the method does not
    /// apply (see `note`).
    pub score: Option<f64>,
    /// Standard error of `score` over the held-out queries.
    pub stderr: Option<f64>,
    /// Every metric of the task (the probe has accuracy only).
    pub metrics: HashMap<String, f64>,
    /// Seconds spent adapting to the k examples: 0 for ICL, training for fine-tuning, feature
    /// extraction of the k examples plus the fit for the probe.
    pub train_seconds: f64,
    /// Seconds to answer all held-out queries.
    pub eval_seconds: f64,
    /// Labelled examples processed: k per query for ICL (read in the prompt), steps × batch
    /// for fine-tuning, k for the probe.
    pub examples_seen: usize,
    /// Mean prompt tokens processed per held-out query.
    pub tokens_per_query: f64,
    pub finetune: Option<FinetuneReport>,
    pub note: Option<String>,
}

/// Mean ± std over draws of one method at one k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub method: String,
    pub k: usize,
    pub mean: Option<f64>,
    /// Standard deviation over draws (0 for one draw).
    pub std: Option<f64>,
    /// Mean over draws of the standard error over queries.
    pub stderr: Option<f64>,
    pub draws: usize,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub examples_seen: f64,
    pub tokens_per_query: f64,
    pub note: Option<String>,
}

/// The experiment's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersusReport {
    pub model: String,
    pub task: String,
    /// The headline metric (the task's first).
    pub metric: String,
    pub seed: u64,
    pub draws: usize,
    pub eval_size: usize,
    pub pool_size: usize,
    pub lora: LoraConfig,
    /// One row per (k, method), k ascending, methods in [`METHODS`] order.
    pub rows: Vec<Row>,
    pub runs: Vec<Run>,
    /// Whether fine-tuning beats ICL, in one sentence.
    pub verdict: String,
    pub seconds: f64,
}

/// The task's classes for the probe: its shared choices, when every example uses them.
fn classes(task: &Task) -> Option<&[String]> {
    if task.scoring != Scoring::Loglik {
        return None;
    }
    let c = task.choices.as_deref()?;
    task.examples
        .iter()
        .all(|e| e.choices.as_deref().is_none_or(|ec| ec == c))
        .then_some(c)
}

/// Why the probe does not apply to `task`, if it does not.
pub fn probe_unavailable(task: &Task) -> Option<String> {
    match (&task.scoring, classes(task)) {
        (Scoring::Generate { .. }, _) => {
            Some("n/a: generation task (the probe needs a fixed set of classes)".into())
        }
        (_, None) => Some("n/a: examples do not share one set of choices".into()),
        _ => None,
    }
}

/// The fixed held-out queries and the training pool.
fn split(task: &Task, eval_size: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..task.examples.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xe7a1));
    let pool = idx.split_off(eval_size);
    idx.sort_unstable();
    (idx, pool)
}

/// A seeded order of the pool whose prefixes are the k examples of `draw`: classes in turn
/// (each class's examples in seeded order) when the task has classes.
fn draw_order(task: &Task, pool: &[usize], seed: u64, draw: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000 * (draw as u64 + 1)));
    let mut order = pool.to_vec();
    order.shuffle(&mut rng);
    let Some(classes) = classes(task) else {
        return order;
    };
    let mut by_class: Vec<Vec<usize>> = vec![vec![]; classes.len()];
    for &i in &order {
        let c = classes
            .iter()
            .position(|c| *c == task.examples[i].target)
            .unwrap_or(0);
        by_class[c].push(i);
    }
    let mut out = Vec::with_capacity(order.len());
    for round in 0.. {
        let before = out.len();
        out.extend(by_class.iter().filter_map(|m| m.get(round).copied()));
        if out.len() == before {
            break;
        }
    }
    out
}

impl VersusConfig {
    /// Checks the settings on their own; errors say what to change.
    pub fn validate(&self) -> Result<()> {
        self.lora.validate()?;
        ensure!(!self.ks.is_empty(), "no values of k given");
        ensure!(
            self.ks.iter().all(|&k| k >= 1),
            "k = 0 is not allowed: fine-tuning and the probe need at least one labelled example \
             (zero-shot prompting is `selfsup icl eval --shots 0`)"
        );
        ensure!(self.draws >= 1, "draws must be at least 1");
        ensure!(
            self.eval_size >= 1,
            "the held-out set needs at least 1 query"
        );
        Ok(())
    }
}

/// Checks the settings against the task.
fn validate(task: &Task, cfg: &VersusConfig) -> Result<()> {
    cfg.validate()?;
    task.validate()?;
    let n = task.examples.len();
    let max_k = cfg.ks.iter().copied().max().unwrap_or(0);
    ensure!(
        cfg.eval_size + max_k <= n,
        "task {} has {n} examples: {} held-out queries + k = {max_k} training examples do not fit \
         (lower --eval-size or the largest k)",
        task.name,
        cfg.eval_size
    );
    Ok(())
}

/// Runs the comparison of ICL, LoRA fine-tuning and a linear probe on `task` for every k.
pub fn icl_vs_finetune(model: &TunableLm, task: &Task, cfg: &VersusConfig) -> Result<VersusReport> {
    validate(task, cfg)?;
    let start = Instant::now();
    let mut ks = cfg.ks.clone();
    ks.sort_unstable();
    ks.dedup();
    let (queries, pool) = split(task, cfg.eval_size, cfg.seed);
    let metric = task.metrics[0];
    let tok = model.tokenizer();
    let probe_na = probe_unavailable(task);

    let per_k_work = |k: usize| 2 * cfg.eval_size + cfg.lora.steps + k;
    let total: usize = cfg.draws * ks.iter().map(|&k| per_k_work(k)).sum::<usize>();
    let bar = progress_bar(cfg.progress, total as u64);

    // Frozen features of the held-out queries, shared by every probe (the base model is fixed).
    let mut feature_cache: HashMap<usize, (Vec<f32>, f64, usize)> = HashMap::new();
    let mut features = |i: usize| -> Result<(Vec<f32>, f64, usize)> {
        if let Some(f) = feature_cache.get(&i) {
            return Ok(f.clone());
        }
        let t0 = Instant::now();
        let ids = prompt_ids(task, i, tok)?;
        let f = model
            .last_hidden(&ids)
            .with_context(|| format!("features of example {i}"))?;
        let out = (f, t0.elapsed().as_secs_f64(), ids.len());
        feature_cache.insert(i, out.clone());
        Ok(out)
    };

    let base_lm = model.language_model()?;
    let mut runs = vec![];
    for draw in 0..cfg.draws {
        let order = draw_order(task, &pool, cfg.seed, draw);
        for &k in &ks {
            let shots = {
                let mut s = order[..k].to_vec();
                // Prompt order must not reveal the classes' turn-taking.
                s.shuffle(&mut ChaCha8Rng::seed_from_u64(
                    cfg.seed ^ ((draw as u64) << 32) ^ k as u64,
                ));
                s
            };
            bar.set_message(format!("draw {draw}, k = {k}: ICL"));
            runs.push(
                prompt_eval(base_lm.as_ref(), task, &queries, &shots, metric, &bar)
                    .map(|p| Run {
                        method: "icl".into(),
                        k,
                        draw,
                        score: p.score,
                        stderr: p.stderr,
                        metrics: p.metrics,
                        train_seconds: 0.0,
                        eval_seconds: p.seconds,
                        examples_seen: k,
                        tokens_per_query: p.tokens_per_query,
                        finetune: None,
                        note: p.note,
                    })
                    .with_context(|| format!("ICL at k = {k}"))?,
            );

            bar.set_message(format!("draw {draw}, k = {k}: fine-tuning"));
            let seqs = shots
                .iter()
                .map(|&i| target_sequence(task, i, tok))
                .collect::<Result<Vec<_>>>()?;
            let ft_seed = cfg.seed ^ (draw as u64 * 7919 + k as u64).wrapping_mul(0x9e37_79b9);
            let (tuned, report) = model
                .finetune_lora(&seqs, &cfg.lora, ft_seed, &mut || bar.inc(1))
                .with_context(|| format!("fine-tuning at k = {k}"))?;
            let tuned_lm = tuned.language_model()?;
            let p = prompt_eval(tuned_lm.as_ref(), task, &queries, &[], metric, &bar)
                .with_context(|| format!("prompting the fine-tuned model at k = {k}"))?;
            runs.push(Run {
                method: "finetune".into(),
                k,
                draw,
                score: p.score,
                stderr: p.stderr,
                metrics: p.metrics,
                train_seconds: report.seconds,
                eval_seconds: p.seconds,
                examples_seen: report.examples_seen,
                tokens_per_query: p.tokens_per_query,
                finetune: Some(report),
                note: p.note,
            });

            bar.set_message(format!("draw {draw}, k = {k}: probe"));
            let run = match (&probe_na, classes(task)) {
                (None, Some(classes)) => {
                    probe_run(task, classes, &queries, &shots, &mut features, &cfg.probe)
                        .with_context(|| format!("probe at k = {k}"))?
                }
                _ => ProbeOut::na(probe_na.clone().unwrap_or_default()),
            };
            bar.inc(k as u64);
            runs.push(Run {
                method: "probe".into(),
                k,
                draw,
                score: run.acc,
                stderr: run.stderr,
                metrics: run
                    .acc
                    .map(|a| HashMap::from([(Metric::Acc.name().to_string(), a)]))
                    .unwrap_or_default(),
                train_seconds: run.train_seconds,
                eval_seconds: run.eval_seconds,
                examples_seen: k,
                tokens_per_query: run.tokens_per_query,
                finetune: None,
                note: run.note,
            });
        }
    }
    bar.finish_and_clear();
    let rows = summarize(&runs, &ks);
    let verdict = verdict(&rows, metric.name());
    Ok(VersusReport {
        model: model.name().to_string(),
        task: task.name.clone(),
        metric: metric.name().into(),
        seed: cfg.seed,
        draws: cfg.draws,
        eval_size: queries.len(),
        pool_size: pool.len(),
        lora: cfg.lora.clone(),
        rows,
        runs,
        verdict,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "icl-vs-finetune [{bar:30}] {percent:>3}%  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b
}

/// The held-out queries answered by prompting.
struct PromptOut {
    /// Mean of the headline metric; None with a note when the prompts do not fit.
    score: Option<f64>,
    stderr: Option<f64>,
    metrics: HashMap<String, f64>,
    seconds: f64,
    tokens_per_query: f64,
    note: Option<String>,
}

/// Every held-out query prompted with `shots` and scored by the harness: the mean of each
/// metric, the seconds taken and the mean prompt length in tokens; a note instead of scores
/// when the prompts do not fit the model's context.
fn prompt_eval(
    lm: &dyn super::model::LanguageModel,
    task: &Task,
    queries: &[usize],
    shots: &[usize],
    metric: Metric,
    bar: &indicatif::ProgressBar,
) -> Result<PromptOut> {
    let t0 = Instant::now();
    let max = lm.max_context();
    let mut prompts = Vec::with_capacity(queries.len());
    let mut tokens = 0usize;
    for &q in queries {
        let context = render(task, shots, q);
        let n = lm.tokenizer().encode(context.trim_end())?.len();
        if n >= max {
            bar.inc(queries.len() as u64);
            return Ok(PromptOut {
                score: None,
                stderr: None,
                metrics: HashMap::new(),
                seconds: 0.0,
                tokens_per_query: n as f64,
                note: Some(format!(
                    "n/a: a prompt of {n} tokens does not fit the model's context of {max}"
                )),
            });
        }
        tokens += n;
        prompts.push(Prompt {
            query: q,
            shots: shots.to_vec(),
            context,
        });
    }
    let mut cache = CallCache::in_memory();
    let mut per_metric: HashMap<Metric, Vec<f64>> = HashMap::new();
    for p in &prompts {
        let scores =
            score_prompt(lm, task, p, &mut cache).with_context(|| format!("query {}", p.query))?;
        for (m, v) in scores {
            per_metric.entry(m).or_default().push(v);
        }
        bar.inc(1);
    }
    let headline = per_metric
        .get(&metric)
        .with_context(|| format!("the harness returned no {} score", metric.name()))?;
    let (score, stderr) = mean_stderr(headline);
    Ok(PromptOut {
        score: Some(score),
        stderr: Some(stderr),
        metrics: per_metric
            .iter()
            .map(|(m, v)| (m.name().to_string(), mean_stderr(v).0))
            .collect(),
        seconds: t0.elapsed().as_secs_f64(),
        tokens_per_query: tokens as f64 / queries.len() as f64,
        note: None,
    })
}

struct ProbeOut {
    acc: Option<f64>,
    stderr: Option<f64>,
    train_seconds: f64,
    eval_seconds: f64,
    tokens_per_query: f64,
    note: Option<String>,
}

impl ProbeOut {
    fn na(note: String) -> Self {
        Self {
            acc: None,
            stderr: None,
            train_seconds: 0.0,
            eval_seconds: 0.0,
            tokens_per_query: 0.0,
            note: Some(note),
        }
    }
}

/// Logistic regression on the k examples' standardized features (the standardizer is fitted on
/// those k only: no method sees unlabelled data), accuracy on the held-out queries.
fn probe_run(
    task: &Task,
    classes: &[String],
    queries: &[usize],
    shots: &[usize],
    features: &mut dyn FnMut(usize) -> Result<(Vec<f32>, f64, usize)>,
    probe: &ProbeConfig,
) -> Result<ProbeOut> {
    let label = |i: usize| -> Result<u32> {
        classes
            .iter()
            .position(|c| *c == task.examples[i].target)
            .map(|p| p as u32)
            .with_context(|| format!("example {i}: target is not a class"))
    };
    let (mut x, mut y, mut train_seconds) = (vec![], vec![], 0.0);
    for &i in shots {
        let (f, s, _) = features(i)?;
        x.extend(f);
        y.push(label(i)?);
        train_seconds += s;
    }
    let d = x.len() / shots.len();
    let (mut xq, mut yq, mut eval_seconds, mut tokens) = (vec![], vec![], 0.0, 0);
    for &q in queries {
        let (f, s, n) = features(q)?;
        xq.extend(f);
        yq.push(label(q)?);
        eval_seconds += s;
        tokens += n;
    }
    let t0 = Instant::now();
    let st = Standardizer::fit(&x, shots.len(), d)?;
    let model = fit_probe(&st.transform(&x)?, &y, shots.len(), d, classes.len(), probe)?;
    train_seconds += t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let pred = model.predict(&st.transform(&xq)?, queries.len())?;
    eval_seconds += t1.elapsed().as_secs_f64();
    let correct: Vec<f64> = pred
        .iter()
        .zip(&yq)
        .map(|(p, y)| f64::from(u8::from(p == y)))
        .collect();
    let (acc, stderr) = mean_stderr(&correct);
    Ok(ProbeOut {
        acc: Some(acc),
        stderr: Some(stderr),
        train_seconds,
        eval_seconds,
        tokens_per_query: tokens as f64 / queries.len() as f64,
        note: None,
    })
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean ± std over draws per (k, method).
fn summarize(runs: &[Run], ks: &[usize]) -> Vec<Row> {
    let mut rows = vec![];
    for &k in ks {
        for m in METHODS {
            let rs: Vec<&Run> = runs.iter().filter(|r| r.k == k && r.method == m).collect();
            if rs.is_empty() {
                continue;
            }
            let scores: Vec<f64> = rs.iter().filter_map(|r| r.score).collect();
            let (mean_s, std_s, se) = if scores.len() == rs.len() {
                let e = EvalResult::from_runs(scores);
                let se = mean(rs.iter().filter_map(|r| r.stderr));
                (Some(e.mean), Some(e.std), Some(se))
            } else {
                (None, None, None)
            };
            rows.push(Row {
                method: m.into(),
                k,
                mean: mean_s,
                std: std_s,
                stderr: se,
                draws: rs.len(),
                train_seconds: mean(rs.iter().map(|r| r.train_seconds)),
                eval_seconds: mean(rs.iter().map(|r| r.eval_seconds)),
                examples_seen: mean(rs.iter().map(|r| r.examples_seen as f64)),
                tokens_per_query: mean(rs.iter().map(|r| r.tokens_per_query)),
                note: rs.iter().find_map(|r| r.note.clone()),
            });
        }
    }
    rows
}

/// Where fine-tuning beats ICL by more than the larger [`Row::spread`] of the two, where ICL
/// wins by that much, and where they are within it.
pub fn verdict(rows: &[Row], metric: &str) -> String {
    let (mut ft, mut icl, mut tie) = (vec![], vec![], vec![]);
    let ks: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().map(|r| r.k).collect();
        v.dedup();
        v
    };
    for k in ks {
        let get = |m: &str| rows.iter().find(|r| r.k == k && r.method == m);
        let (Some(a), Some(b)) = (get("finetune"), get("icl")) else {
            continue;
        };
        let (Some(fa), Some(ia)) = (a.mean, b.mean) else {
            continue;
        };
        let margin = a.spread().max(b.spread());
        if fa > ia + margin {
            ft.push(k);
        } else if ia > fa + margin {
            icl.push(k);
        } else {
            tie.push(k);
        }
    }
    let list = |v: &[usize]| {
        v.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = ft.len() + icl.len() + tie.len();
    if n == 0 {
        return "no k where both ICL and fine-tuning have a score".into();
    }
    let head = if ft.len() == n {
        "fine-tuning beats ICL at every k".to_string()
    } else if icl.len() == n {
        "ICL beats fine-tuning at every k".to_string()
    } else if ft.len() > icl.len() {
        "fine-tuning beats ICL at most k".to_string()
    } else if icl.len() > ft.len() {
        "ICL beats fine-tuning at most k".to_string()
    } else {
        "neither method wins overall".to_string()
    };
    let mut parts = vec![];
    if !ft.is_empty() {
        parts.push(format!("fine-tuning ahead at k = {}", list(&ft)));
    }
    if !icl.is_empty() {
        parts.push(format!("ICL ahead at k = {}", list(&icl)));
    }
    if !tie.is_empty() {
        parts.push(format!("within the noise at k = {}", list(&tie)));
    }
    format!("{head} on {metric} ({})", parts.join("; "))
}

impl Row {
    /// The uncertainty shown with the mean: the larger of the std over draws and the standard
    /// error over queries (with one draw, the latter is the only one there is).
    pub fn spread(&self) -> f64 {
        self.std.unwrap_or(0.0).max(self.stderr.unwrap_or(0.0))
    }
}

fn cell(r: &Row) -> String {
    match r.mean {
        Some(m) => format!("{:.3} ± {:.3}", m, r.spread()),
        None => "n/a".into(),
    }
}

impl VersusReport {
    /// One line per k: each method's score ± std over draws, its adaptation and answering
    /// seconds, examples seen and prompt tokens per query; then the verdict.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} on {}: {} of {} held-out queries, k examples from the other {}, {} draw(s), seed {}\n\
             LoRA r {} α {}, {} steps × batch ≤ {}, lr {}; probe: logistic regression on the last-token hidden state\n\
             ± is the larger of the std over draws and the standard error over queries\n",
            self.model,
            self.task,
            self.metric,
            self.eval_size,
            self.pool_size,
            self.draws,
            self.seed,
            self.lora.rank,
            self.lora.alpha,
            self.lora.steps,
            self.lora.batch_size,
            self.lora.lr
        );
        s.push_str(&format!(
            "{:>4}  {:<9}  {:>15}  {:>8}  {:>8}  {:>9}  {:>10}\n",
            "k", "method", self.metric, "train s", "eval s", "examples", "tok/query"
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "{:>4}  {:<9}  {:>15}  {:>8.1}  {:>8.1}  {:>9.0}  {:>10.1}{}\n",
                r.k,
                r.method,
                cell(r),
                r.train_seconds,
                r.eval_seconds,
                r.examples_seen,
                r.tokens_per_query,
                r.note
                    .as_ref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!("{}\n", self.verdict));
        s
    }

    /// `k,method,metric,mean,std,stderr,train_seconds,eval_seconds,examples_seen,tokens_per_query,note`.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "k,method,metric,mean,std,stderr,train_seconds,eval_seconds,examples_seen,tokens_per_query,note\n",
        );
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for r in &self.rows {
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                r.k,
                r.method,
                self.metric,
                opt(r.mean),
                opt(r.std),
                opt(r.stderr),
                r.train_seconds,
                r.eval_seconds,
                r.examples_seen,
                r.tokens_per_query,
                r.note
                    .as_ref()
                    .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
                    .unwrap_or_default()
            ));
        }
        s
    }

    /// Score vs k (log₂ axis), one line per method with ± std: `<stem>.png`, `<stem>.svg`.
    pub fn plot(&self, stem: &Path) -> Result<Vec<PathBuf>> {
        use crate::report::plot::{line_plot, PlotSpec, Series};
        let series: Vec<Series> = METHODS
            .iter()
            .map(|&m| {
                let (pts, band): (Vec<(f64, f64)>, Vec<f64>) = self
                    .rows
                    .iter()
                    .filter(|r| r.method == m)
                    .filter_map(|r| Some(((r.k as f64, r.mean?), r.spread())))
                    .unzip();
                let name = match m {
                    "icl" => "in-context (k shots)",
                    "finetune" => "LoRA fine-tuning",
                    _ => "linear probe",
                };
                Series::with_band(name, pts, band)
            })
            .collect();
        let spec = PlotSpec {
            title: format!(
                "{} on {} (n = {})",
                short_model_name(&self.model),
                self.task,
                self.eval_size
            ),
            x_label: "labelled examples k (log scale)".into(),
            y_label: self.metric.clone(),
            log_x: true,
            log_y: false,
        };
        line_plot(stem, &spec, &series)
    }

    /// Writes `<dir>/icl_vs_finetune.csv` and the plot; returns the paths.
    pub fn write_outputs(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let csv = dir.join("icl_vs_finetune.csv");
        crate::train::checkpoint::write_atomic(&csv, self.to_csv().as_bytes())?;
        let mut out = vec![csv];
        out.extend(self.plot(&dir.join("icl_vs_finetune"))?);
        Ok(out)
    }
}

/// The file or folder name of a model name, without the size or time stamp that keeps cache
/// keys unique: titles must fit the chart.
fn short_model_name(name: &str) -> &str {
    let base = name.split(['#', '@']).next().unwrap_or(name);
    base.rsplit('/').next().unwrap_or(base)
}
