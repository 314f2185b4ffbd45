//! The Brown corpus (Francis & Kučera 1964/1979, form C: part-of-speech tagged) as a labelled text
//! task: genre classification of passages of a few sentences.
//!
//! A corpus folder holds files `c<genre><number>` (`ca01` … `cr09`; 15 genres, letters a–h, j–n,
//! p, r) plus CONTENTS and README, which are ignored. Each non-blank line is one sentence of
//! `word/tag` tokens. Tags are stripped (at the last `/`, since words such as `1-1/2` hold one),
//! sentences are cut into consecutive passages of N sentences, and a passage's label is its
//! file's genre. The split is by file — every `test_every`-th file of a genre (in file order) is
//! test — so no passage of a test file, nor its neighbours, is seen in training.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// The 15 genres as listed in the corpus' CONTENTS file.
pub const GENRES: [(char, &str); 15] = [
    ('a', "press: reportage"),
    ('b', "press: editorial"),
    ('c', "press: reviews"),
    ('d', "religion"),
    ('e', "skill and hobbies"),
    ('f', "popular lore"),
    ('g', "belles-lettres"),
    ('h', "miscellaneous: government & house organs"),
    ('j', "learned"),
    ('k', "fiction: general"),
    ('l', "fiction: mystery"),
    ('m', "fiction: science"),
    ('n', "fiction: adventure"),
    ('p', "fiction: romance"),
    ('r', "humor"),
];

/// How passages are cut and split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrownConfig {
    /// Sentences per passage.
    pub sentences: usize,
    /// Every `test_every`-th file of each genre (the 5th, 10th, …) is test.
    pub test_every: usize,
}

impl Default for BrownConfig {
    /// 3 sentences (about 60 words, which fits a 128-token context) and every 5th file (20%).
    fn default() -> Self {
        Self {
            sentences: 3,
            test_every: 5,
        }
    }
}

/// A labelled passage.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// Detokenized text, as a language model should see it.
    pub text: String,
    /// The corpus tokens without tags (for bag-of-words features).
    pub words: Vec<String>,
    pub label: u32,
    /// Source file name (`ca01`).
    pub file: String,
}

/// A text classification task with a train/test split.
#[derive(Debug, Clone)]
pub struct TextClassData {
    /// Readable class names, indexed by label.
    pub classes: Vec<String>,
    pub train: Vec<Passage>,
    pub test: Vec<Passage>,
    /// Where it was read from.
    pub source: PathBuf,
}

impl TextClassData {
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
    pub fn train_labels(&self) -> Vec<u32> {
        self.train.iter().map(|p| p.label).collect()
    }
    pub fn test_labels(&self) -> Vec<u32> {
        self.test.iter().map(|p| p.label).collect()
    }
}

/// `brown` (the data cache: `$SELFSUP_DATA/brown`, default `~/.cache/selfsup-data/brown`),
/// `brown:DIR`, or your own labelled text: `folder:DIR` / `jsonl:PATH` (see
/// [`super::labeled_text`]).
pub fn load_text_classification(spec: &str, cfg: &BrownConfig) -> Result<TextClassData> {
    let (kind, dir) = match spec.split_once(':') {
        Some((k, d)) => (k, Some(PathBuf::from(d))),
        None => (spec, None),
    };
    match kind {
        "brown" => {
            let dir = match dir {
                Some(d) => d,
                None => {
                    let d = crate::icl::tasks::data_dir().join("brown");
                    ensure!(
                        d.exists(),
                        "{} not found: fetch it with `../shared/data/get.sh brown` (data cache: \
                         $SELFSUP_DATA, default ~/.cache/selfsup-data) or pass brown:DIR",
                        d.display()
                    );
                    d
                }
            };
            load_brown(&dir, cfg)
        }
        "folder" | "jsonl" => {
            let path = dir.with_context(|| format!("{kind}: needs a path ({kind}:PATH)"))?;
            if kind == "folder" {
                super::labeled_text::load_folder(&path)
            } else {
                super::labeled_text::load_jsonl(&path)
            }
        }
        _ => bail!(
            "unknown text classification data {spec:?}: expected brown[:DIR], folder:DIR or jsonl:PATH"
        ),
    }
}

/// Reads a Brown corpus folder (see the module documentation).
pub fn load_brown(dir: &Path, cfg: &BrownConfig) -> Result<TextClassData> {
    ensure!(cfg.sentences >= 1, "passages need at least 1 sentence");
    ensure!(cfg.test_every >= 2, "test_every must be at least 2");
    ensure!(
        dir.is_dir(),
        "{}: no such folder (the Brown corpus: `../shared/data/get.sh brown`)",
        dir.display()
    );
    let mut files: Vec<(char, u32, PathBuf)> = vec![];
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some((genre, number)) = brown_file_name(&name) else {
            continue; // CONTENTS, README, cats.txt, …
        };
        ensure!(
            GENRES.iter().any(|(g, _)| *g == genre),
            "{}: unknown Brown genre letter {genre:?} (expected one of a–h, j–n, p, r)",
            path.display()
        );
        files.push((genre, number, path));
    }
    ensure!(
        !files.is_empty(),
        "{}: no Brown corpus files (named like ca01 … cr09)",
        dir.display()
    );
    files.sort();
    let present: Vec<char> = GENRES
        .iter()
        .map(|(g, _)| *g)
        .filter(|g| files.iter().any(|f| f.0 == *g))
        .collect();
    ensure!(
        present.len() >= 2,
        "{}: files of only one genre ({}); classification needs at least 2",
        dir.display(),
        present[0]
    );
    let classes = present
        .iter()
        .map(|g| {
            GENRES
                .iter()
                .find(|(l, _)| l == g)
                .expect("known")
                .1
                .to_string()
        })
        .collect();
    let (mut train, mut test) = (vec![], vec![]);
    for (label, &genre) in present.iter().enumerate() {
        let of_genre: Vec<&PathBuf> = files
            .iter()
            .filter(|f| f.0 == genre)
            .map(|f| &f.2)
            .collect();
        ensure!(
            of_genre.len() >= 2,
            "{}: genre {genre:?} has only the file {}; a split by file needs at least 2 per genre",
            dir.display(),
            of_genre[0].display()
        );
        for (i, path) in of_genre.iter().enumerate() {
            let is_test = if of_genre.len() >= cfg.test_every {
                (i + 1) % cfg.test_every == 0
            } else {
                // Too few files for the regular pattern: the last one is test.
                i + 1 == of_genre.len()
            };
            let passages = read_passages(path, label as u32, cfg.sentences)?;
            if is_test {
                test.extend(passages);
            } else {
                train.extend(passages);
            }
        }
    }
    Ok(TextClassData {
        classes,
        train,
        test,
        source: dir.to_path_buf(),
    })
}

/// `ca01` → ('a', 1); anything else → None.
fn brown_file_name(name: &str) -> Option<(char, u32)> {
    let mut chars = name.chars();
    if chars.next()? != 'c' {
        return None;
    }
    let genre = chars.next()?;
    let digits = chars.as_str();
    if !genre.is_ascii_lowercase()
        || digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((genre, digits.parse().ok()?))
}

/// The sentences of one file as tag-free tokens. A token without a `/tag` or a file that is not
/// UTF-8 is an error naming the file and line.
pub fn read_brown_file(path: &Path) -> Result<Vec<Vec<String>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a Brown corpus file (invalid UTF-8 at byte {})",
            path.display(),
            e.valid_up_to()
        )
    })?;
    let mut sentences = vec![];
    for (i, line) in text.lines().enumerate() {
        let mut words = vec![];
        for token in line.split_whitespace() {
            match token.rsplit_once('/') {
                Some((w, tag)) if !w.is_empty() && !tag.is_empty() => words.push(w.to_string()),
                _ => bail!(
                    "{}:{}: token {token:?} is not word/tag (not a tagged Brown corpus file)",
                    path.display(),
                    i + 1
                ),
            }
        }
        if !words.is_empty() {
            sentences.push(words);
        }
    }
    ensure!(!sentences.is_empty(), "{}: no sentences", path.display());
    Ok(sentences)
}

/// Consecutive groups of `n` sentences; a shorter remainder is kept if it holds at least half of
/// `n` (or is the file's only passage), so every file contributes.
fn read_passages(path: &Path, label: u32, n: usize) -> Result<Vec<Passage>> {
    let sentences = read_brown_file(path)?;
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let groups: Vec<&[Vec<String>]> = sentences.chunks(n).collect();
    let count = groups.len();
    Ok(groups
        .into_iter()
        .enumerate()
        .filter(|(i, g)| g.len() == n || 2 * g.len() >= n || (*i == 0 && count == 1))
        .map(|(_, g)| {
            let words: Vec<String> = g.iter().flatten().cloned().collect();
            Passage {
                text: detokenize(&words),
                words,
                label,
                file: file.clone(),
            }
        })
        .collect())
}

/// Joins corpus tokens into ordinary text: no space before closing punctuation, none after an
/// opening one, and the corpus' `` `` ``/`''` quote pairs as `"`.
pub fn detokenize(words: &[String]) -> String {
    let mut out = String::new();
    let mut glue_next = false;
    for w in words {
        let (piece, attach_left, attach_right) = match w.as_str() {
            "``" => ("\"", false, true),
            "''" => ("\"", true, false),
            "(" | "[" => (w.as_str(), false, true),
            "." | "," | ";" | ":" | "?" | "!" | ")" | "]" | "'" => (w.as_str(), true, false),
            _ => (w.as_str(), false, false),
        };
        if !out.is_empty() && !attach_left && !glue_next {
            out.push(' ');
        }
        out.push_str(piece);
        glue_next = attach_right;
    }
    out
}

/// Writes the train passages, one file per source file (`ca01.txt`), one passage per line, for
/// `selfsup pretrain --data text:DIR`. Test files are never written, so pretraining cannot see
/// the test text. Returns the number of files written.
pub fn write_train_text(data: &TextClassData, out: &Path) -> Result<usize> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files: Vec<(&str, String)> = vec![];
    for p in &data.train {
        match files.last_mut() {
            Some((f, text)) if *f == p.file => {
                text.push_str(&p.text);
                text.push('\n');
            }
            _ => files.push((&p.file, format!("{}\n", p.text))),
        }
    }
    for (f, text) in &files {
        let path = out.join(format!("{f}.txt"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.len())
}
