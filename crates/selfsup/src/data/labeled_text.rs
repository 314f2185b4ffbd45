//! Your own labelled text for `experiment text-classify`, in one of two layouts:
//!
//! - `folder:DIR` — `DIR/train/<class>/*.txt` and `DIR/test/<class>/*.txt`, one example per file
//!   (the layout of IMDb's aclImdb and of the image folders). Classes are the train subfolders.
//! - `jsonl:PATH` — one object per line: `{"text": "...", "label": "sports", "split": "test"}`;
//!   `label` is a string or an integer, `split` (`train`/`test`) is optional: without it every
//!   5th example of each class (in file order) is test.
//!
//! Bag-of-words features read [`words`]: runs of letters/digits and single punctuation marks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::brown::{Passage, TextClassData};

/// Letter/digit runs (apostrophes inside words kept) and single punctuation marks.
pub fn words(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || (c == '\'' && !cur.is_empty()) {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn passage(text: String, label: u32, file: String) -> Passage {
    Passage {
        words: words(&text),
        text,
        label,
        file,
    }
}

fn check(data: &TextClassData) -> Result<()> {
    let src = data.source.display();
    ensure!(
        data.classes.len() >= 2,
        "{src}: found {} class(es); classification needs at least 2",
        data.classes.len()
    );
    ensure!(!data.train.is_empty(), "{src}: no train examples");
    ensure!(!data.test.is_empty(), "{src}: no test examples");
    Ok(())
}

/// `folder:DIR`: `DIR/{train,test}/<class>/*.txt`.
pub fn load_folder(dir: &Path) -> Result<TextClassData> {
    ensure!(dir.is_dir(), "{}: no such folder", dir.display());
    let split_dir = |split: &str| -> Result<PathBuf> {
        let d = dir.join(split);
        ensure!(
            d.is_dir(),
            "{}: missing {split}/ (expected {split}/<class>/*.txt)",
            dir.display()
        );
        Ok(d)
    };
    let subdirs = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v = vec![];
        for e in std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))? {
            let p = e
                .with_context(|| format!("reading {}", d.display()))?
                .path();
            if p.is_dir() {
                v.push(p);
            }
        }
        v.sort();
        Ok(v)
    };
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    let classes: Vec<String> = subdirs(&split_dir("train")?)?
        .iter()
        .map(|p| name(p))
        .collect();
    let read_split = |split: &str| -> Result<Vec<Passage>> {
        let mut out = vec![];
        for class_dir in subdirs(&split_dir(split)?)? {
            let class = name(&class_dir);
            let Some(label) = classes.iter().position(|c| *c == class) else {
                bail!(
                    "{}: class {class:?} has no train/{class}/ folder",
                    class_dir.display()
                );
            };
            let mut files = vec![];
            for e in std::fs::read_dir(&class_dir)
                .with_context(|| format!("reading {}", class_dir.display()))?
            {
                let p = e
                    .with_context(|| format!("reading {}", class_dir.display()))?
                    .path();
                if p.extension().is_some_and(|x| x == "txt") {
                    files.push(p);
                }
            }
            files.sort();
            for f in files {
                let bytes =
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: invalid UTF-8 at byte {}",
                        f.display(),
                        e.utf8_error().valid_up_to()
                    )
                })?;
                out.push(passage(
                    text.trim().to_string(),
                    label as u32,
                    format!("{split}/{class}/{}", name(&f)),
                ));
            }
        }
        Ok(out)
    };
    let data = TextClassData {
        train: read_split("train")?,
        test: read_split("test")?,
        classes,
        source: dir.to_path_buf(),
    };
    check(&data)?;
    Ok(data)
}

/// `jsonl:PATH`: `{"text", "label", "split"?}` per line.
pub fn load_jsonl(path: &Path) -> Result<TextClassData> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let src = path.display();
    // Class ids follow the sorted label names: reordering the file does not renumber classes.
    let mut rows: Vec<(String, String, Option<bool>, usize)> = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{src}:{}", i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .with_context(|| format!("{}: missing string field \"text\"", at()))?;
        let label = match v.get("label") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            _ => bail!("{}: missing field \"label\" (a string or an integer)", at()),
        };
        let test = match v.get("split").map(|s| s.as_str()) {
            None => None,
            Some(Some("train")) => Some(false),
            Some(Some("test")) => Some(true),
            Some(_) => bail!("{}: \"split\" must be \"train\" or \"test\"", at()),
        };
        rows.push((t.to_string(), label, test, i + 1));
    }
    let names: BTreeMap<String, u32> = rows
        .iter()
        .map(|r| r.1.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i as u32))
        .collect();
    let mut seen = vec![0usize; names.len()];
    let (mut train, mut test) = (vec![], vec![]);
    for (t, label, split, line) in rows {
        let id = names[&label];
        let is_test = split.unwrap_or_else(|| {
            seen[id as usize] += 1;
            seen[id as usize] % 5 == 0
        });
        let p = passage(t, id, format!("line {line}"));
        if is_test {
            test.push(p)
        } else {
            train.push(p)
        }
    }
    let data = TextClassData {
        classes: names.into_keys().collect(),
        train,
        test,
        source: path.to_path_buf(),
    };
    check(&data)?;
    Ok(data)
}
