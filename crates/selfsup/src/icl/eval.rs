//! The ICL harness: for each number of shots k, every query of a task is prompted with k
//! examples and scored; the report holds each metric's mean over queries with its standard
//! error — the accuracy-vs-k view of GPT-3's zero-, one- and few-shot results.
//!
//! The same queries (all examples, or `limit` of them drawn with the seed) are used at every
//! k. Model calls go through a [`CallCache`] keyed by (model name, prompt ids, continuation
//! ids or generation settings), optionally persisted as JSONL so that a rerun — with more k,
//! or after an interruption — only pays for what is new.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::model::LanguageModel;
use super::score::{chrf, exact_match, score_choices};
use super::task::{build_prompt, Metric, Prompt, Scoring, Task};
use crate::lm::tokenizer::fnv1a;

/// Settings of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct IclConfig {
    /// Seeds the shot sampling and the choice of queries.
    pub seed: u64,
    /// At most this many queries (drawn with the seed); `None` queries every example.
    pub limit: Option<usize>,
    /// Draw shots evenly across classes (targets).
    pub balanced: bool,
    /// Write every prompt, output and score here as JSONL.
    pub log_samples: Option<PathBuf>,
    /// Persist model calls here as JSONL (read first if it exists, then appended to).
    pub cache: Option<PathBuf>,
}

/// A metric's mean over queries and its standard error `s / √n` (sample standard deviation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub metric: Metric,
    pub mean: f64,
    pub stderr: f64,
}

/// The metrics at one number of shots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotResult {
    pub k: usize,
    /// Queries scored.
    pub n: usize,
    pub metrics: Vec<MetricSummary>,
}

/// Accuracy vs k for one model on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IclReport {
    pub model: String,
    pub task: String,
    /// `loglik` or `generate`.
    pub scoring: String,
    pub seed: u64,
    pub balanced: bool,
    /// Examples in the task.
    pub n_examples: usize,
    /// Queries scored at each k.
    pub n_queries: usize,
    pub results: Vec<ShotResult>,
    /// Model calls made (cache misses) and answered from the cache.
    pub model_calls: usize,
    pub cache_hits: usize,
    pub seconds: f64,
}

/// Evaluates `model` on `task` with each number of shots in `shots`.
pub fn evaluate(
    model: &dyn LanguageModel,
    task: &Task,
    shots: &[usize],
    cfg: &IclConfig,
) -> Result<IclReport> {
    let mut cache = match &cfg.cache {
        Some(p) => CallCache::open(p)?,
        None => CallCache::in_memory(),
    };
    evaluate_with_cache(model, task, shots, cfg, &mut cache)
}

/// [`evaluate`] with a cache the caller owns (shared across tasks, say); `cfg.cache` is ignored.
pub fn evaluate_with_cache(
    model: &dyn LanguageModel,
    task: &Task,
    shots: &[usize],
    cfg: &IclConfig,
    cache: &mut CallCache,
) -> Result<IclReport> {
    task.validate()?;
    ensure!(!shots.is_empty(), "no numbers of shots to evaluate");
    let n = task.examples.len();
    let too_many: Vec<usize> = shots.iter().copied().filter(|&k| k >= n).collect();
    ensure!(
        too_many.is_empty(),
        "task {}: {too_many:?} shots asked, but only {} examples besides each query",
        task.name,
        n - 1
    );
    let queries = select_queries(n, cfg.limit, cfg.seed);
    let mut log = match &cfg.log_samples {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let start = Instant::now();
    let (calls0, hits0) = (cache.calls, cache.hits);
    let mut results = Vec::with_capacity(shots.len());
    for &k in shots {
        let mut scores: Vec<Vec<f64>> = vec![Vec::with_capacity(queries.len()); task.metrics.len()];
        for &q in &queries {
            let sample = score_query(model, task, q, k, cfg, cache)
                .with_context(|| format!("task {}, k = {k}, query {q}", task.name))?;
            for (m, s) in task.metrics.iter().zip(scores.iter_mut()) {
                s.push(sample.scores[m]);
            }
            if let Some(w) = log.as_mut() {
                let mut line = sample.log;
                line["scores"] = json!(sample
                    .scores
                    .iter()
                    .map(|(m, v)| (m.name(), v))
                    .collect::<HashMap<_, _>>());
                writeln!(w, "{line}")?;
            }
        }
        let metrics = task
            .metrics
            .iter()
            .zip(&scores)
            .map(|(&metric, s)| {
                let (mean, stderr) = mean_stderr(s);
                MetricSummary {
                    metric,
                    mean,
                    stderr,
                }
            })
            .collect();
        results.push(ShotResult {
            k,
            n: queries.len(),
            metrics,
        });
    }
    if let (Some(w), Some(p)) = (log.as_mut(), &cfg.log_samples) {
        w.flush()
            .with_context(|| format!("writing {}", p.display()))?;
    }
    cache.flush()?;
    Ok(IclReport {
        model: model.name(),
        task: task.name.clone(),
        scoring: task.scoring.name().into(),
        seed: cfg.seed,
        balanced: cfg.balanced,
        n_examples: n,
        n_queries: queries.len(),
        results,
        model_calls: cache.calls - calls0,
        cache_hits: cache.hits - hits0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// All example indices in order, or `limit` of them in a seeded order.
fn select_queries(n: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(l) = limit.filter(|&l| l < n) {
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(l);
    }
    idx
}

/// Mean and standard error of the mean (0 for fewer than two values).
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

struct Sample {
    scores: HashMap<Metric, f64>,
    log: serde_json::Value,
}

fn score_query(
    model: &dyn LanguageModel,
    task: &Task,
    q: usize,
    k: usize,
    cfg: &IclConfig,
    cache: &mut CallCache,
) -> Result<Sample> {
    let prompt = build_prompt(task, q, k, cfg.seed, cfg.balanced)?;
    score_rendered(model, task, &prompt, cache)
}

/// Scores one prompt exactly as [`evaluate`] does, for callers that choose the shots
/// themselves (the same k examples for every query): each metric's score for this query.
pub fn score_prompt(
    model: &dyn LanguageModel,
    task: &Task,
    prompt: &Prompt,
    cache: &mut CallCache,
) -> Result<HashMap<Metric, f64>> {
    Ok(score_rendered(model, task, prompt, cache)?.scores)
}

fn score_rendered(
    model: &dyn LanguageModel,
    task: &Task,
    prompt: &Prompt,
    cache: &mut CallCache,
) -> Result<Sample> {
    let q = prompt.query;
    let k = prompt.shots.len();
    let ex = &task.examples[q];
    let tok = model.tokenizer();
    let max = model.max_context();
    let mut scores = HashMap::new();
    let mut log = json!({
        "task": task.name,
        "k": k,
        "query": q,
        "shots": prompt.shots,
        "prompt": prompt.context,
        "target": ex.target,
    });
    match &task.scoring {
        Scoring::Loglik => {
            let choices = task.choices_of(q).context("no choices")?;
            let target = choices
                .iter()
                .position(|c| *c == ex.target)
                .context("target is not among the choices")?;
            // Trailing whitespace of the context moves into the continuations, so BPE
            // tokenizers see " word" as they did in training (lm-evaluation-harness does the same).
            let ctx = prompt.context.trim_end();
            let moved = &prompt.context[ctx.len()..];
            let ctx_ids = tok.encode(ctx)?;
            let conts = choices
                .iter()
                .map(|c| tok.encode(&format!("{moved}{}", task.template.continuation(c))))
                .collect::<Result<Vec<_>>>()?;
            let longest = conts.iter().map(Vec::len).max().unwrap_or(0);
            ensure!(
                ctx_ids.len() + longest <= max + 1,
                "prompt of {} tokens + answer of {longest} exceeds the model's context of {max}; use fewer shots",
                ctx_ids.len()
            );
            let logprobs = cache.choice_logprobs(model, &ctx_ids, &conts)?;
            let loglik: Vec<f64> = logprobs
                .iter()
                .map(|l| l.iter().map(|&x| x as f64).sum())
                .collect();
            let out = score_choices(&loglik, choices, target);
            scores.insert(Metric::Acc, out.acc);
            scores.insert(Metric::AccNorm, out.acc_norm);
            log["choices"] = json!(choices);
            log["loglik"] = json!(loglik);
            log["output"] = json!(choices[out.pred]);
            log["output_norm"] = json!(choices[out.pred_norm]);
        }
        Scoring::Generate {
            stop,
            max_new_tokens,
        } => {
            let ctx_ids = tok.encode(&prompt.context)?;
            ensure!(
                ctx_ids.len() < max,
                "prompt of {} tokens leaves no room to generate in the model's context of {max}; use fewer shots",
                ctx_ids.len()
            );
            let raw = cache.generate(model, &ctx_ids, *max_new_tokens, stop)?;
            let output = raw.trim();
            scores.insert(Metric::ExactMatch, exact_match(output, &ex.target));
            scores.insert(Metric::Chrf, chrf(output, &ex.target));
            log["raw_output"] = json!(raw);
            log["output"] = json!(output);
        }
    }
    Ok(Sample { scores, log })
}

/// Results of model calls, keyed by (model name, prompt ids, continuation ids) for
/// log-probabilities and (model name, prompt ids, max_new, stop strings) for generation.
/// Keys are 64-bit FNV-1a hashes plus the lengths of the id sequences.
pub struct CallCache {
    entries: HashMap<String, Cached>,
    file: Option<(PathBuf, BufWriter<File>)>,
    /// Model calls made through the cache, and answers it returned without a call.
    pub calls: usize,
    pub hits: usize,
    /// Lines of the cache file that could not be read (ignored; recomputed when needed).
    pub unreadable_lines: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Cached {
    Logprobs(Vec<f32>),
    Text(String),
}

#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    model: String,
    value: Cached,
}

impl CallCache {
    pub fn in_memory() -> Self {
        Self {
            entries: HashMap::new(),
            file: None,
            calls: 0,
            hits: 0,
            unreadable_lines: 0,
        }
    }

    /// Reads `path` if it exists and appends new entries to it. A line that cannot be read
    /// (an interrupted write) is skipped and counted in `unreadable_lines`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut cache = Self::in_memory();
        let mut needs_newline = false;
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading model-call cache {}", path.display()))?;
            needs_newline = !text.is_empty() && !text.ends_with('\n');
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<CacheLine>(line) {
                    Ok(l) => {
                        cache.entries.insert(l.key, l.value);
                    }
                    Err(_) => cache.unreadable_lines += 1,
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening model-call cache {}", path.display()))?;
        let mut w = BufWriter::new(file);
        if needs_newline {
            writeln!(w)?;
        }
        cache.file = Some((path.to_path_buf(), w));
        Ok(cache)
    }

    /// Number of cached results.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Per-token log-probabilities of each continuation; one model call for all the misses.
    pub fn choice_logprobs(
        &mut self,
        model: &dyn LanguageModel,
        context: &[u32],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>> {
        let name = model.name();
        let keys: Vec<String> = continuations
            .iter()
            .map(|c| key(&name, "logprobs", context, c, &[]))
            .collect();
        let missing: Vec<usize> = (0..keys.len())
            .filter(|&i| !self.entries.contains_key(&keys[i]))
            .collect();
        self.hits += keys.len() - missing.len();
        if !missing.is_empty() {
            let asked: Vec<Vec<u32>> = missing.iter().map(|&i| continuations[i].clone()).collect();
            let got = model.choice_logprobs(context, &asked)?;
            ensure!(
                got.len() == asked.len(),
                "model {name} returned {} results for {} continuations",
                got.len(),
                asked.len()
            );
            self.calls += 1;
            for (&i, lp) in missing.iter().zip(got) {
                ensure!(
                    lp.len() == continuations[i].len(),
                    "model {name} returned {} log-probabilities for {} tokens",
                    lp.len(),
                    continuations[i].len()
                );
                self.insert(&name, keys[i].clone(), Cached::Logprobs(lp))?;
            }
        }
        keys.iter()
            .map(|k| match &self.entries[k] {
                Cached::Logprobs(v) => Ok(v.clone()),
                Cached::Text(_) => {
                    anyhow::bail!("cache entry {k} holds text, not log-probabilities")
                }
            })
            .collect()
    }

    /// Greedy generation from `context`.
    pub fn generate(
        &mut self,
        model: &dyn LanguageModel,
        context: &[u32],
        max_new: usize,
        stop: &[String],
    ) -> Result<String> {
        let name = model.name();
        let extra = format!("{max_new}\u{0}{}", stop.join("\u{0}"));
        let k = key(&name, "generate", context, &[], extra.as_bytes());
        if let Some(Cached::Text(t)) = self.entries.get(&k) {
            self.hits += 1;
            return Ok(t.clone());
        }
        let text = model.generate_greedy(context, max_new, stop)?;
        self.calls += 1;
        self.insert(&name, k, Cached::Text(text.clone()))?;
        Ok(text)
    }

    fn insert(&mut self, model: &str, key: String, value: Cached) -> Result<()> {
        if let Some((path, w)) = self.file.as_mut() {
            let line = CacheLine {
                key: key.clone(),
                model: model.to_string(),
                value: value.clone(),
            };
            writeln!(w, "{}", serde_json::to_string(&line)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        self.entries.insert(key, value);
        Ok(())
    }

    /// Writes buffered entries to the cache file.
    pub fn flush(&mut self) -> Result<()> {
        if let Some((path, w)) = self.file.as_mut() {
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn key(model: &str, kind: &str, context: &[u32], cont: &[u32], extra: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(model.len() + 4 * (context.len() + cont.len()) + 64);
    for part in [model.as_bytes(), kind.as_bytes(), extra] {
        bytes.extend((part.len() as u64).to_le_bytes());
        bytes.extend(part);
    }
    for ids in [context, cont] {
        bytes.extend((ids.len() as u64).to_le_bytes());
        ids.iter().for_each(|id| bytes.extend(id.to_le_bytes()));
    }
    format!(
        "{kind}-{:016x}-{}-{}",
        fnv1a(&bytes),
        context.len(),
        cont.len()
    )
}

impl IclReport {
    /// The accuracy-vs-k table: one row per k, `mean ± stderr` per metric.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} on {} ({} scoring, {} of {} examples as queries, seed {}{})\n",
            self.model,
            self.task,
            self.scoring,
            self.n_queries,
            self.n_examples,
            self.seed,
            if self.balanced {
                ", balanced shots"
            } else {
                ""
            }
        );
        let names: Vec<&str> = self
            .results
            .first()
            .map(|r| r.metrics.iter().map(|m| m.metric.name()).collect())
            .unwrap_or_default();
        s.push_str(&format!("{:>4}  {:<9}", "k", "setting"));
        for n in &names {
            s.push_str(&format!("  {n:>15}"));
        }
        s.push('\n');
        for r in &self.results {
            let setting = match r.k {
                0 => "zero-shot",
                1 => "one-shot",
                _ => "few-shot",
            };
            s.push_str(&format!("{:>4}  {setting:<9}", r.k));
            for m in &r.metrics {
                s.push_str(&format!(
                    "  {:>15}",
                    format!("{:.3} ± {:.3}", m.mean, m.stderr)
                ));
            }
            s.push('\n');
        }
        s
    }

    /// One row per (k, metric): `model,task,k,n,metric,mean,stderr`, with a header line.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("model,task,k,n,metric,mean,stderr\n");
        for r in &self.results {
            for m in &r.metrics {
                s.push_str(&format!(
                    "{},{},{},{},{},{},{}\n",
                    csv_field(&self.model),
                    csv_field(&self.task),
                    r.k,
                    r.n,
                    m.metric.name(),
                    m.mean,
                    m.stderr
                ));
            }
        }
        s
    }

    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_csv()).with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// Quotes a CSV field holding a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl IclReport {
    /// Accuracy vs number of in-context examples, one line per metric with ± standard error:
    /// `<stem>.png` and `<stem>.svg` (the GPT-3 paper's zero/one/few-shot view).
    pub fn plot(&self, stem: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
        use crate::report::plot::{line_plot, PlotSpec, Series};
        let mut names: Vec<&'static str> = vec![];
        for r in &self.results {
            for m in &r.metrics {
                if !names.contains(&m.metric.name()) {
                    names.push(m.metric.name());
                }
            }
        }
        let series: Vec<Series> = names
            .iter()
            .map(|&name| {
                let (pts, band): (Vec<(f64, f64)>, Vec<f64>) = self
                    .results
                    .iter()
                    .filter_map(|r| {
                        r.metrics
                            .iter()
                            .find(|m| m.metric.name() == name)
                            .map(|m| ((r.k as f64, m.mean), m.stderr))
                    })
                    .unzip();
                Series::with_band(name, pts, band)
            })
            .collect();
        let spec = PlotSpec {
            title: format!("{} on {} (n = {})", self.model, self.task, self.n_queries),
            x_label: "in-context examples k".into(),
            y_label: "score".into(),
            log_x: false,
            log_y: false,
        };
        line_plot(stem, &spec, &series)
    }
}
