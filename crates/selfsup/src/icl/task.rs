//! Tasks as data, after lm-evaluation-harness's task files: an optional description, examples
//! (input, target, optional choices), one template, and how answers are scored.
//!
//! A prompt with k shots is
//!
//! ```text
//! {description}{description_separator}
//! {input_prefix}{x_1}{input_suffix}{output_prefix}{target_delimiter}{y_1}{example_separator}
//! …
//! {input_prefix}{x_k}{input_suffix}{output_prefix}{target_delimiter}{y_k}{example_separator}
//! {input_prefix}{x_q}{input_suffix}{output_prefix}
//! ```
//!
//! and the answer is scored as the continuation `{target_delimiter}{answer}`. The shots are
//! drawn with a seed from the task's examples other than the query.
//!
//! # JSONL task files (`task:PATH`)
//!
//! One JSON object per line. Every line is an example `{"input": …, "target": …, "choices":
//! [...]}` (`choices` optional), except that the FIRST line may be a header — an object with
//! no `input` field — holding any of `name`, `description`, `choices` (shared by examples that
//! have none), `template` (any subset of [`Template`]'s fields), `scoring` (`"loglik"` or
//! `{"generate": {"stop": ["\n"], "max_new_tokens": 32}}`) and `metrics` (`acc`, `acc_norm`,
//! `exact_match`, `chrf`). Without a `scoring`, a task whose examples all have choices is
//! scored by log-likelihood, otherwise by generation. Blank lines are skipped; unknown fields
//! are errors (a misspelt field is not silently ignored). One file keeps a task in one place,
//! so it can be copied, diffed and shared on its own. Examples: `assets/icl/antonyms.jsonl`
//! (generation), `assets/icl/sentiment.jsonl` (choices).
//!
//! ```text
//! {"description": "Is the review positive or negative?", "choices": ["foo", "bar"], "template": {"input_prefix": "Review: ", "output_prefix": "Label:"}}
//! {"input": "A delightful film.", "target": "foo"}
//! {"input": "A tedious mess.", "target": "bar"}
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One solved instance of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub input: String,
    pub target: String,
    /// Candidate answers for log-likelihood scoring (the target among them); `None` uses the
    /// task's choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
}

impl Example {
    pub fn new(input: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            target: target.into(),
            choices: None,
        }
    }
}

/// How an example is laid out in the prompt (see the module docs for the full layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Template {
    pub input_prefix: String,
    /// Between the input and `output_prefix`.
    pub input_suffix: String,
    pub output_prefix: String,
    /// Between `output_prefix` and the answer; belongs to the scored continuation.
    pub target_delimiter: String,
    pub example_separator: String,
    /// After the description, when there is one.
    pub description_separator: String,
}

impl Default for Template {
    /// `Q: {input}\nA: {target}`, examples separated by a blank line.
    fn default() -> Self {
        Self {
            input_prefix: "Q: ".into(),
            input_suffix: "\n".into(),
            output_prefix: "A:".into(),
            target_delimiter: " ".into(),
            example_separator: "\n\n".into(),
            description_separator: "\n\n".into(),
        }
    }
}

impl Template {
    /// `input_prefix`, `output_prefix`, the defaults elsewhere.
    pub fn with_prefixes(input_prefix: &str, output_prefix: &str) -> Self {
        Self {
            input_prefix: input_prefix.into(),
            output_prefix: output_prefix.into(),
            ..Self::default()
        }
    }

    /// The example up to (not including) its answer.
    pub fn format_input(&self, input: &str) -> String {
        format!(
            "{}{input}{}{}",
            self.input_prefix, self.input_suffix, self.output_prefix
        )
    }

    /// What the model is scored on after [`Template::format_input`].
    pub fn continuation(&self, answer: &str) -> String {
        format!("{}{answer}", self.target_delimiter)
    }
}

/// How an answer is obtained from the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scoring {
    /// The log-likelihood of each choice; the most likely one is the answer.
    Loglik,
    /// Greedy generation, cut at the first stop string.
    Generate {
        #[serde(default = "default_stop")]
        stop: Vec<String>,
        #[serde(default = "default_max_new_tokens")]
        max_new_tokens: usize,
    },
}

fn default_stop() -> Vec<String> {
    vec!["\n".into()]
}

fn default_max_new_tokens() -> usize {
    32
}

impl Scoring {
    /// Generation until a newline, at most 32 tokens.
    pub fn generate() -> Self {
        Self::Generate {
            stop: default_stop(),
            max_new_tokens: default_max_new_tokens(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Loglik => "loglik",
            Self::Generate { .. } => "generate",
        }
    }

    /// acc and acc_norm for log-likelihood, exact match for generation.
    pub fn default_metrics(&self) -> Vec<Metric> {
        match self {
            Self::Loglik => vec![Metric::Acc, Metric::AccNorm],
            Self::Generate { .. } => vec![Metric::ExactMatch],
        }
    }
}

/// A per-query score in [0, 1], averaged over queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The most likely choice is the target.
    Acc,
    /// The choice with the highest log-likelihood per character is the target.
    AccNorm,
    /// The normalized generation equals the normalized target ([`super::score::normalize_answer`]).
    ExactMatch,
    /// Character 6-gram F-score with β = 2 ([`super::score::chrf`]), in [0, 1].
    Chrf,
}

impl Metric {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Acc => "acc",
            Self::AccNorm => "acc_norm",
            Self::ExactMatch => "exact_match",
            Self::Chrf => "chrf",
        }
    }

    fn fits(&self, scoring: &Scoring) -> bool {
        matches!(
            (self, scoring),
            (Self::Acc | Self::AccNorm, Scoring::Loglik)
                | (Self::ExactMatch | Self::Chrf, Scoring::Generate { .. })
        )
    }
}

/// A task: what the model is asked, with which examples, and how answers are scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub description: Option<String>,
    pub examples: Vec<Example>,
    /// Choices for examples that carry none.
    pub choices: Option<Vec<String>>,
    pub template: Template,
    pub scoring: Scoring,
    /// Reported per k; the first is the headline.
    pub metrics: Vec<Metric>,
}

/// The header line of a JSONL task file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: Option<String>,
    description: Option<String>,
    choices: Option<Vec<String>>,
    template: Option<Template>,
    scoring: Option<Scoring>,
    metrics: Option<Vec<Metric>>,
}

impl Task {
    /// A task with the default template and metrics of `scoring`.
    pub fn new(name: impl Into<String>, examples: Vec<Example>, scoring: Scoring) -> Self {
        let metrics = scoring.default_metrics();
        Self {
            name: name.into(),
            description: None,
            examples,
            choices: None,
            template: Template::default(),
            scoring,
            metrics,
        }
    }

    /// The choices of example `i` (its own, else the task's).
    pub fn choices_of(&self, i: usize) -> Option<&[String]> {
        self.examples[i]
            .choices
            .as_deref()
            .or(self.choices.as_deref())
    }

    /// Checks the task as a whole and every example; errors name the example by index.
    pub fn validate(&self) -> Result<()> {
        self.check_header()?;
        for i in 0..self.examples.len() {
            self.check_example(i)
                .with_context(|| format!("task {}: example {i}", self.name))?;
        }
        Ok(())
    }

    fn check_header(&self) -> Result<()> {
        ensure!(
            self.examples.len() >= 2,
            "task {}: {} example(s); a task needs a query and at least one other example",
            self.name,
            self.examples.len()
        );
        ensure!(!self.metrics.is_empty(), "task {}: no metrics", self.name);
        for m in &self.metrics {
            ensure!(
                m.fits(&self.scoring),
                "task {}: metric {} does not apply to {} scoring (loglik: acc, acc_norm; generate: exact_match, chrf)",
                self.name,
                m.name(),
                self.scoring.name()
            );
        }
        if let Scoring::Generate { max_new_tokens, .. } = &self.scoring {
            ensure!(
                *max_new_tokens > 0,
                "task {}: max_new_tokens is 0",
                self.name
            );
        }
        if let Some(c) = &self.choices {
            check_choices(c).with_context(|| format!("task {}: choices", self.name))?;
        }
        Ok(())
    }

    fn check_example(&self, i: usize) -> Result<()> {
        let ex = &self.examples[i];
        ensure!(!ex.target.is_empty(), "empty target");
        if let Some(c) = &ex.choices {
            check_choices(c)?;
        }
        if self.scoring == Scoring::Loglik {
            let Some(choices) = self.choices_of(i) else {
                bail!("no choices (log-likelihood scoring needs them on the example or the task)");
            };
            ensure!(
                choices.contains(&ex.target),
                "target {:?} is not one of the choices {choices:?}",
                ex.target
            );
        }
        Ok(())
    }

    /// Reads a JSONL task file (format in the module docs); the task is named after the file
    /// unless the header names it. Errors name the file and line.
    pub fn from_jsonl(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading task file {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into());
        Self::parse_jsonl(&text, &stem, &path.display().to_string())
    }

    /// [`Task::from_jsonl`] on text; `source` names it in errors.
    pub fn parse_jsonl(text: &str, default_name: &str, source: &str) -> Result<Self> {
        let mut header = None;
        let mut examples = Vec::new();
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{source}:{n}: not a JSON object"))?;
            let Some(obj) = value.as_object() else {
                bail!("{source}:{n}: expected a JSON object, found {value}");
            };
            if !obj.contains_key("input") {
                if header.is_some() || !examples.is_empty() {
                    bail!("{source}:{n}: no \"input\" field (only the first line may be a header)");
                }
                header = Some(
                    serde_json::from_value::<Header>(value)
                        .with_context(|| format!("{source}:{n}: bad header"))?,
                );
                continue;
            }
            let ex: Example = serde_json::from_value(value)
                .with_context(|| format!("{source}:{n}: bad example"))?;
            examples.push(ex);
            lines.push(n);
        }
        let h = header.unwrap_or_default();
        let choices = h.choices;
        let scoring = h.scoring.unwrap_or_else(|| {
            let all_have = examples
                .iter()
                .all(|e| e.choices.is_some() || choices.is_some());
            if all_have && !examples.is_empty() {
                Scoring::Loglik
            } else {
                Scoring::generate()
            }
        });
        let task = Self {
            name: h.name.unwrap_or_else(|| default_name.to_string()),
            description: h.description,
            metrics: h.metrics.unwrap_or_else(|| scoring.default_metrics()),
            examples,
            choices,
            template: h.template.unwrap_or_default(),
            scoring,
        };
        task.check_header().with_context(|| source.to_string())?;
        for (i, n) in lines.iter().enumerate() {
            task.check_example(i)
                .with_context(|| format!("{source}:{n}"))?;
        }
        Ok(task)
    }

    /// Writes the task as a JSONL file that [`Task::from_jsonl`] reads back.
    pub fn to_jsonl(&self) -> Result<String> {
        let header = serde_json::json!({
            "name": self.name,
            "description": self.description,
            "choices": self.choices,
            "template": self.template,
            "scoring": self.scoring,
            "metrics": self.metrics,
        });
        let mut out = serde_json::to_string(&header)?;
        out.push('\n');
        for ex in &self.examples {
            out.push_str(&serde_json::to_string(ex)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// Class of example `i` for balanced sampling: its target.
    fn class_of(&self, i: usize) -> &str {
        &self.examples[i].target
    }
}

fn check_choices(choices: &[String]) -> Result<()> {
    ensure!(
        choices.len() >= 2,
        "{} choice(s); need at least 2",
        choices.len()
    );
    let mut seen = HashSet::new();
    for c in choices {
        ensure!(!c.is_empty(), "an empty choice");
        ensure!(seen.insert(c), "choice {c:?} appears twice");
    }
    Ok(())
}

/// A query with its shots, rendered as the text the model continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prompt {
    /// Index of the query example.
    pub query: usize,
    /// Indices of the shots, in prompt order.
    pub shots: Vec<usize>,
    /// Description, shots and query, ending with the template's `output_prefix`.
    pub context: String,
}

/// The prompt for example `query` with `k` shots drawn by [`sample_shots`].
pub fn build_prompt(
    task: &Task,
    query: usize,
    k: usize,
    seed: u64,
    balanced: bool,
) -> Result<Prompt> {
    let shots = sample_shots(task, query, k, seed, balanced)?;
    let context = render(task, &shots, query);
    Ok(Prompt {
        query,
        shots,
        context,
    })
}

/// Description, the `shots` with their answers, then the query without its answer.
pub fn render(task: &Task, shots: &[usize], query: usize) -> String {
    let t = &task.template;
    let mut s = String::new();
    if let Some(d) = &task.description {
        s.push_str(d);
        s.push_str(&t.description_separator);
    }
    for &i in shots {
        let ex = &task.examples[i];
        s.push_str(&t.format_input(&ex.input));
        s.push_str(&t.continuation(&ex.target));
        s.push_str(&t.example_separator);
    }
    s.push_str(&t.format_input(&task.examples[query].input));
    s
}

/// `k` example indices other than `query`, drawn with a generator seeded by (`seed`,
/// `query`): the same arguments always give the same shots, and the shots at k are the
/// first k of one seeded order, so a larger k adds examples to a smaller k's.
///
/// `balanced` draws the classes (targets) in turn — each class's examples in the seeded
/// order, classes ordered by their first appearance — so class counts differ by at most one
/// until a class runs out; the chosen shots are then shuffled (seed, query, k), so the class
/// order in the prompt does not hint at the query's class.
pub fn sample_shots(
    task: &Task,
    query: usize,
    k: usize,
    seed: u64,
    balanced: bool,
) -> Result<Vec<usize>> {
    let n = task.examples.len();
    ensure!(
        query < n,
        "query {query} is outside task {} of {n} examples",
        task.name
    );
    ensure!(
        k < n,
        "task {}: {k} shots asked, but only {} examples besides the query",
        task.name,
        n - 1
    );
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, query as u64));
    let mut pool: Vec<usize> = (0..n).filter(|&i| i != query).collect();
    pool.shuffle(&mut rng);
    if !balanced {
        pool.truncate(k);
        return Ok(pool);
    }
    let mut order: Vec<&str> = Vec::new();
    let mut by_class: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in &pool {
        let c = task.class_of(i);
        let members = by_class.entry(c).or_default();
        if members.is_empty() {
            order.push(c);
        }
        members.push(i);
    }
    let mut shots = Vec::with_capacity(k);
    let mut round = 0;
    while shots.len() < k {
        for c in &order {
            if let Some(&i) = by_class[c].get(round) {
                if shots.len() < k {
                    shots.push(i);
                }
            }
        }
        round += 1;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(seed, query as u64), k as u64));
    shots.shuffle(&mut rng);
    Ok(shots)
}

/// SplitMix64 of `a` combined with `b`: independent streams per (seed, query, k).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
