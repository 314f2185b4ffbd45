//! Built-in tasks, by name ([`task_by_name`]):
//!
//! | name | scoring | what |
//! |---|---|---|
//! | `label-map` | loglik | short reviews labelled with arbitrary words `foo` (positive) / `bar` (negative): the mapping can only be learnt from the shots |
//! | `label-flip` | loglik | the same reviews with flipped labels (positive reviews → `negative`): shots contradict the model's prior (Wei et al. 2023, "Larger language models do in-context learning differently") |
//! | `reverse` | generate | three words in reverse order (`cat lamp river` → `river lamp cat`) |
//! | `add2` | generate | two-digit addition, `What is 48 plus 76?` → `124` (GPT-3's arithmetic) |
//! | `cldr-en-fr` | generate | English → French country and territory names from Unicode CLDR |
//! | `freedict-en-fr` | generate | English → French words from the FreeDict dictionary |
//! | `task:PATH` | file | a user task in JSONL ([`Task::from_jsonl`]) |
//!
//! The synthetic tasks are generated with a fixed seed, so a task name always means the same
//! examples; the evaluation seed varies only the shots and queries. The data-backed tasks
//! read the user's data cache `$SELFSUP_DATA` (default `~/.cache/selfsup-data`) at run time,
//! filled by `../shared/data/get.sh NAME`; nothing from them is embedded (FreeDict is GPL).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::task::{Example, Metric, Scoring, Task, Template};

/// Names [`task_by_name`] accepts (besides `task:PATH`).
pub const BUILTIN_TASKS: [&str; 6] = [
    "label-map",
    "label-flip",
    "reverse",
    "add2",
    "cldr-en-fr",
    "freedict-en-fr",
];

/// Seed of the synthetic tasks' examples.
const TASK_SEED: u64 = 2020;
/// Examples per synthetic task.
const SYNTHETIC_EXAMPLES: usize = 200;

/// A built-in task, or a JSONL task file given as `task:PATH`.
pub fn task_by_name(name: &str) -> Result<Task> {
    if let Some(path) = name.strip_prefix("task:") {
        return Task::from_jsonl(path);
    }
    let task = match name {
        "label-map" => label_map(TASK_SEED, SYNTHETIC_EXAMPLES),
        "label-flip" => label_flip(TASK_SEED, SYNTHETIC_EXAMPLES),
        "reverse" => reverse_words(TASK_SEED, SYNTHETIC_EXAMPLES),
        "add2" => add2(TASK_SEED, SYNTHETIC_EXAMPLES),
        "cldr-en-fr" => cldr_en_fr(&data_dir().join("cldr-en-fr"))?,
        "freedict-en-fr" => freedict_en_fr(&data_dir().join("freedict-en-fr"))?,
        _ => bail!(
            "unknown task {name:?}: expected one of {} or task:PATH.jsonl",
            BUILTIN_TASKS.join(", ")
        ),
    };
    task.validate()?;
    Ok(task)
}

/// The data cache: `$SELFSUP_DATA`, else `~/.cache/selfsup-data`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SELFSUP_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache/selfsup-data")
}

/// Fails with the `get.sh` command that fetches `item` when `path` is missing.
fn require(path: &Path, item: &str) -> Result<()> {
    ensure!(
        path.exists(),
        "{} not found: fetch it with `../shared/data/get.sh {item}` (data cache: $SELFSUP_DATA, default ~/.cache/selfsup-data)",
        path.display()
    );
    Ok(())
}

const POSITIVE: [&str; 20] = [
    "wonderful",
    "excellent",
    "delightful",
    "brilliant",
    "superb",
    "charming",
    "enjoyable",
    "fantastic",
    "lovely",
    "marvelous",
    "great",
    "beautiful",
    "pleasant",
    "outstanding",
    "terrific",
    "amazing",
    "splendid",
    "moving",
    "clever",
    "perfect",
];

const NEGATIVE: [&str; 20] = [
    "terrible",
    "awful",
    "boring",
    "dreadful",
    "dull",
    "horrible",
    "poor",
    "disappointing",
    "tedious",
    "bad",
    "clumsy",
    "painful",
    "weak",
    "messy",
    "bland",
    "annoying",
    "lousy",
    "mediocre",
    "pointless",
    "ugly",
];

const NOUNS: [&str; 40] = [
    "film", "movie", "book", "meal", "concert", "show", "album", "play", "hotel", "game", "story",
    "novel", "song", "dinner", "lamp", "river", "chair", "garden", "window", "bridge", "cat",
    "horse", "apple", "cloud", "table", "piano", "train", "forest", "letter", "mountain", "bottle",
    "candle", "island", "pencil", "rabbit", "castle", "mirror", "ocean", "violin", "tiger",
];

/// `n` distinct reviews "The {noun} was {adjective}." with sentiment 1 (positive) or 0, the
/// classes alternating so they are balanced.
fn reviews(seed: u64, n: usize) -> Vec<(String, bool)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let max = 2 * POSITIVE.len() * 14;
    while out.len() < n.min(max) {
        let positive = out.len() % 2 == 0;
        let adj = if positive {
            POSITIVE[rng.gen_range(0..POSITIVE.len())]
        } else {
            NEGATIVE[rng.gen_range(0..NEGATIVE.len())]
        };
        // Only the first 14 nouns are things one reviews.
        let noun = NOUNS[rng.gen_range(0..14)];
        let text = format!("The {noun} was {adj}.");
        if seen.insert(text.clone()) {
            out.push((text, positive));
        }
    }
    out.shuffle(&mut rng);
    out
}

fn review_task(name: &str, seed: u64, n: usize, labels: [&str; 2]) -> Task {
    let [pos, neg] = labels;
    let examples = reviews(seed, n)
        .into_iter()
        .map(|(text, positive)| Example::new(text, if positive { pos } else { neg }))
        .collect();
    let mut task = Task::new(name, examples, Scoring::Loglik);
    task.choices = Some(vec![pos.to_string(), neg.to_string()]);
    task.template = Template::with_prefixes("Review: ", "Label:");
    task
}

/// Reviews labelled `foo` (positive) and `bar` (negative).
pub fn label_map(seed: u64, n: usize) -> Task {
    review_task("label-map", seed, n, ["foo", "bar"])
}

/// Reviews labelled `negative` when positive and `positive` when negative.
pub fn label_flip(seed: u64, n: usize) -> Task {
    review_task("label-flip", seed, n, ["negative", "positive"])
}

/// Three distinct nouns, to be written in reverse order.
pub fn reverse_words(seed: u64, n: usize) -> Task {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut examples = Vec::with_capacity(n);
    while examples.len() < n.min(NOUNS.len() * (NOUNS.len() - 1) * (NOUNS.len() - 2)) {
        let words: Vec<&str> = NOUNS.choose_multiple(&mut rng, 3).copied().collect();
        let input = words.join(" ");
        if seen.insert(input.clone()) {
            let target = words.iter().rev().copied().collect::<Vec<_>>().join(" ");
            examples.push(Example::new(input, target));
        }
    }
    let mut task = Task::new("reverse", examples, Scoring::generate());
    task.description = Some("Write the words in reverse order.".into());
    task.template = Template::with_prefixes("Words: ", "Reversed:");
    task
}

/// `What is a plus b?` for distinct pairs of two-digit numbers.
pub fn add2(seed: u64, n: usize) -> Task {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut examples = Vec::with_capacity(n);
    while examples.len() < n.min(90 * 90) {
        let (a, b) = (rng.gen_range(10..100), rng.gen_range(10..100));
        if seen.insert((a, b)) {
            examples.push(Example::new(
                format!("What is {a} plus {b}?"),
                (a + b).to_string(),
            ));
        }
    }
    Task::new("add2", examples, Scoring::generate())
}

fn translation_task(name: &str, what: &str, pairs: Vec<(String, String)>) -> Task {
    let examples = pairs
        .into_iter()
        .map(|(en, fr)| Example::new(en, fr))
        .collect();
    let mut task = Task::new(name, examples, Scoring::generate());
    task.description = Some(format!("Translate English {what} into French."));
    task.template = Template::with_prefixes("English: ", "French:");
    task.metrics = vec![Metric::ExactMatch, Metric::Chrf];
    task
}

/// English → French names of countries and territories from `DIR/{en,fr}/territories.json`.
pub fn cldr_en_fr(dir: &Path) -> Result<Task> {
    let (en, fr) = (
        dir.join("en/territories.json"),
        dir.join("fr/territories.json"),
    );
    require(&en, "cldr-en-fr")?;
    require(&fr, "cldr-en-fr")?;
    let pairs = read_cldr_pairs(&en, &fr)?
        .into_iter()
        .map(|(_, e, f)| (e, f))
        .collect();
    Ok(translation_task(
        "cldr-en-fr",
        "names of countries and territories",
        pairs,
    ))
}

/// Two-letter codes that are not places (European Union, Eurozone, United Nations, Outlying
/// Oceania, the pseudo-locales, Unknown Region).
const CLDR_NOT_PLACES: [&str; 7] = ["EU", "EZ", "UN", "QO", "XA", "XB", "ZZ"];

/// `(code, English, French)` for each territory code in both files, sorted by code. Kept:
/// two-letter codes (numeric codes are regions such as "Western Europe", and `-alt-` keys are
/// alternative spellings), minus [`CLDR_NOT_PLACES`] and names spelt the same in both
/// languages (Afghanistan, Canada, …), which would measure copying rather than translation.
pub fn read_cldr_pairs(en: &Path, fr: &Path) -> Result<Vec<(String, String, String)>> {
    let e = read_cldr_territories(en, "en")?;
    let f = read_cldr_territories(fr, "fr")?;
    Ok(e.into_iter()
        .filter(|(code, _)| {
            code.len() == 2
                && code.chars().all(|c| c.is_ascii_uppercase())
                && !CLDR_NOT_PLACES.contains(&code.as_str())
        })
        .filter_map(|(code, en_name)| {
            let fr_name = f.get(&code)?.clone();
            (en_name != fr_name).then_some((code, en_name, fr_name))
        })
        .collect())
}

fn read_cldr_territories(path: &Path, lang: &str) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let table = json
        .pointer(&format!("/main/{lang}/localeDisplayNames/territories"))
        .and_then(|t| t.as_object())
        .with_context(|| {
            format!(
                "{}: no object at main.{lang}.localeDisplayNames.territories (not a CLDR territories.json for {lang:?})",
                path.display()
            )
        })?;
    table
        .iter()
        .map(|(code, name)| match name.as_str() {
            Some(s) => Ok((code.clone(), s.to_string())),
            None => bail!("{}: territory {code} is not a string", path.display()),
        })
        .collect()
}

/// English → French words from the FreeDict dictionary in `DIR`
/// (`freedict-eng-fra.index` and `freedict-eng-fra.dict.dz`), see [`read_freedict_pairs`].
pub fn freedict_en_fr(dir: &Path) -> Result<Task> {
    let index = dir.join("freedict-eng-fra.index");
    let dict = dir.join("freedict-eng-fra.dict.dz");
    require(&index, "freedict-en-fr")?;
    require(&dict, "freedict-en-fr")?;
    Ok(translation_task(
        "freedict-en-fr",
        "words",
        read_freedict_pairs(&index, &dict)?,
    ))
}

/// `(headword, translation)` from a dictd dictionary: `index` lines are
/// `headword<TAB>offset<TAB>length` (base64 numbers into the uncompressed `dict`, which is
/// dictzip = gzip). Each entry is a line `Headword /pronunciation/` followed by senses, one
/// per line, numbered `1. …` when there are several; a sense lists translations separated by
/// commas. Kept: single-word headwords (letters only) whose first sense is a single word,
/// spelt differently from the headword (ignoring case); the first entry of a headword wins.
pub fn read_freedict_pairs(index: &Path, dict: &Path) -> Result<Vec<(String, String)>> {
    let idx =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(
        std::fs::File::open(dict).with_context(|| format!("opening {}", dict.display()))?,
    )
    .read_to_end(&mut raw)
    .with_context(|| format!("{}: not gzip (dictzip) data", dict.display()))?;
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    for (n, line) in idx.lines().enumerate() {
        let at = || format!("{}:{}", index.display(), n + 1);
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [head, off, len] = fields[..] else {
            bail!(
                "{}: expected headword, offset and length separated by tabs",
                at()
            );
        };
        if head.starts_with("00database") || head.starts_with("00-database") {
            continue;
        }
        let (off, len) = (
            dictd_number(off).with_context(at)?,
            dictd_number(len).with_context(at)?,
        );
        let entry = raw.get(off..off.saturating_add(len)).with_context(|| {
            format!(
                "{}: entry {off}+{len} is past the end of {} ({} bytes)",
                at(),
                dict.display(),
                raw.len()
            )
        })?;
        let entry = String::from_utf8_lossy(entry);
        if let Some((en, fr)) = parse_freedict_entry(&entry) {
            if seen.insert(en.clone()) {
                pairs.push((en, fr));
            }
        }
    }
    Ok(pairs)
}

/// The pair of one dictd entry, if it is a single word with a single-word first sense.
fn parse_freedict_entry(entry: &str) -> Option<(String, String)> {
    let mut lines = entry.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next()?.trim();
    let head = match first.find(" /") {
        Some(i) if first.ends_with('/') => &first[..i],
        _ => first,
    };
    let sense = lines.next()?.trim();
    let sense = match sense.split_once(". ") {
        Some((num, rest)) if !num.is_empty() && num.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => sense,
    };
    let word = |s: &str| !s.is_empty() && s.chars().all(char::is_alphabetic);
    (word(head) && word(sense) && head.to_lowercase() != sense.to_lowercase())
        .then(|| (head.to_string(), sense.to_string()))
}

/// A dictd index number: base64 digits (`A`–`Z`, `a`–`z`, `0`–`9`, `+`, `/`), most
/// significant first.
pub fn dictd_number(s: &str) -> Result<usize> {
    ensure!(!s.is_empty(), "empty dictd number");
    let mut n: usize = 0;
    for c in s.chars() {
        let d = match c {
            'A'..='Z' => c as usize - 'A' as usize,
            'a'..='z' => c as usize - 'a' as usize + 26,
            '0'..='9' => c as usize - '0' as usize + 52,
            '+' => 62,
            '/' => 63,
            _ => bail!("{s:?} is not a dictd base64 number (bad digit {c:?})"),
        };
        n = n
            .checked_mul(64)
            .and_then(|n| n.checked_add(d))
            .with_context(|| format!("dictd number {s:?} overflows"))?;
    }
    Ok(n)
}
