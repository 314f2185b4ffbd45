//! CIFAR-10 binary batches.
//!
//! `DIR` (or `DIR/cifar-10-batches-bin`, as the archive unpacks) holds `data_batch_1.bin` …
//! `data_batch_5.bin` (train) and `test_batch.bin` (test). Each record is one label byte (0–9)
//! then 3,072 bytes: the R, G and B planes of a 32×32 image, row-major. Class names come from
//! `batches.meta.txt` (one per line) if present, else the standard ten.

use super::{ImageDataset, Splits};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const CIFAR10_CLASSES: &[&str] = &[
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const SIDE: usize = 32;
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
const RECORD: usize = 1 + IMAGE_BYTES;

/// Loads the five training batches and the test batch.
pub fn load_dir(dir: &Path) -> Result<Splits> {
    let dir = resolve(dir)?;
    let class_names = class_names(&dir)?;
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    Ok(Splits {
        train: load_files(&train_files, "cifar10", &class_names)?,
        test: Some(load_files(
            &[dir.join("test_batch.bin")],
            "cifar10",
            &class_names,
        )?),
    })
}

fn resolve(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("reading {}: no such directory", dir.display());
    }
    let nested = dir.join("cifar-10-batches-bin");
    if !dir.join("data_batch_1.bin").exists() && nested.is_dir() {
        Ok(nested)
    } else {
        Ok(dir.to_path_buf())
    }
}

fn class_names(dir: &Path) -> Result<Vec<String>> {
    let meta = dir.join("batches.meta.txt");
    if !meta.exists() {
        return Ok(CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect());
    }
    let text =
        std::fs::read_to_string(&meta).with_context(|| format!("reading {}", meta.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != 10 {
        bail!(
            "reading {}: expected 10 class names, found {}",
            meta.display(),
            names.len()
        );
    }
    Ok(names)
}

/// Reads the records of `files`, in order, into one dataset.
pub fn load_files(files: &[PathBuf], name: &str, class_names: &[String]) -> Result<ImageDataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let ctx = || format!("reading {}", path.display());
        if bytes.is_empty() {
            return Err(anyhow::anyhow!("empty file")).with_context(ctx);
        }
        if bytes.len() % RECORD != 0 {
            return Err(anyhow::anyhow!(
                "truncated: {} bytes is not a multiple of the {RECORD}-byte record",
                bytes.len()
            ))
            .with_context(ctx);
        }
        for (r, rec) in bytes.chunks_exact(RECORD).enumerate() {
            let l = rec[0];
            if usize::from(l) >= class_names.len() {
                return Err(anyhow::anyhow!("label {l} of record {r} is outside 0..=9"))
                    .with_context(ctx);
            }
            labels.push(u32::from(l));
            images.extend(rec[1..].iter().map(|&p| f32::from(p) / 255.0));
        }
    }
    Ok(ImageDataset {
        name: name.to_string(),
        n: labels.len(),
        images,
        labels: Some(labels),
        channels: 3,
        height: SIDE,
        width: SIDE,
        class_names: class_names.to_vec(),
    })
}
