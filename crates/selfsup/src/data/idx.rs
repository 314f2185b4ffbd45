//! The IDX format of MNIST and Fashion-MNIST, gzipped or raw.
//!
//! A directory holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each either with a `.gz` suffix or
//! without; gzip is detected by its magic bytes, not by the name. An image file starts with the
//! big-endian magic number 2051 and three dimensions (count, rows, columns); a label file with
//! 2049 and one dimension (count); then one unsigned byte per pixel or label.

use super::{read_maybe_gz, ImageDataset, Splits};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const IMAGES_MAGIC: u32 = 2051;
pub const LABELS_MAGIC: u32 = 2049;

pub const FASHION_MNIST_CLASSES: &[&str] = &[
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
pub const MNIST_CLASSES: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

const HOW_TO_GET: &str = "run ../shared/data/get.sh fashion-mnist, or `apt install \
                          dataset-fashion-mnist`, or pass fashion-mnist:DIR";

/// Where `fashion-mnist` without a directory looks, in order: `$SELFSUP_DATA/fashion-mnist`
/// (`SELFSUP_DATA` defaults to `~/.cache/selfsup-data`), then `/usr/share/datasets/fashion-mnist`.
pub fn fashion_mnist_candidates() -> Vec<PathBuf> {
    let data = match std::env::var_os("SELFSUP_DATA") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/selfsup-data")),
    };
    data.into_iter()
        .map(|d| d.join("fashion-mnist"))
        .chain([PathBuf::from("/usr/share/datasets/fashion-mnist")])
        .collect()
}

/// The first of [`fashion_mnist_candidates`] that holds the training images, or an error that
/// says how to get the dataset.
pub fn default_fashion_mnist_dir() -> Result<PathBuf> {
    let candidates = fashion_mnist_candidates();
    for dir in &candidates {
        if find(dir, "train-images-idx3-ubyte").is_ok() {
            return Ok(dir.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "Fashion-MNIST not found (looked in {}); to get it, {HOW_TO_GET}",
        tried.join(", ")
    )
}

/// Finds `DIR/NAME.gz` or `DIR/NAME`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let raw = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if raw.is_file() {
        Ok(raw)
    } else if !dir.is_dir() {
        bail!("reading {}: no such directory", dir.display())
    } else {
        bail!(
            "reading {}: no such file (nor {})",
            gz.display(),
            raw.display()
        )
    }
}

/// Loads the train (`train-*`) and test (`t10k-*`) splits from `dir`.
pub fn load_dir(dir: &Path, name: &str, class_names: &[&str]) -> Result<Splits> {
    let split = |prefix: &str| -> Result<ImageDataset> {
        let images = find(dir, &format!("{prefix}-images-idx3-ubyte"));
        let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
        let (images, labels) = match (images, labels) {
            (Ok(i), Ok(l)) => (i, l),
            (Err(e), _) | (_, Err(e)) if name == "fashion-mnist" => {
                bail!("{e:#}; to get Fashion-MNIST, {HOW_TO_GET}")
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        load_pair(&images, &labels, name, class_names)
    };
    Ok(Splits {
        train: split("train")?,
        test: Some(split("t10k")?),
    })
}

/// Loads one images file and its labels file.
pub fn load_pair(
    images_path: &Path,
    labels_path: &Path,
    name: &str,
    class_names: &[&str],
) -> Result<ImageDataset> {
    let (dims, pixels) = read_idx(images_path, IMAGES_MAGIC, 3)?;
    let (ldims, labels) = read_idx(labels_path, LABELS_MAGIC, 1)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if ldims[0] != n {
        bail!(
            "{} has {n} images but {} has {} labels",
            images_path.display(),
            labels_path.display(),
            ldims[0]
        );
    }
    if n == 0 || h == 0 || w == 0 {
        bail!(
            "reading {}: no images (dimensions {n}×{h}×{w})",
            images_path.display()
        );
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= class_names.len())
    {
        bail!(
            "reading {}: label {l} of item {i} is outside 0..={}",
            labels_path.display(),
            class_names.len() - 1
        );
    }
    Ok(ImageDataset {
        name: name.to_string(),
        images: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: Some(labels.iter().map(|&l| u32::from(l)).collect()),
        n,
        channels: 1,
        height: h,
        width: w,
        class_names: class_names.iter().map(|s| s.to_string()).collect(),
    })
}

/// Reads an IDX file of unsigned bytes with the given magic number and number of dimensions;
/// returns the dimensions and the data (exactly their product in bytes).
pub fn read_idx(path: &Path, magic: u32, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, magic, ndims).with_context(|| format!("reading {}", path.display()))
}

fn parse_idx(bytes: &[u8], magic: u32, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let header = 4 * (1 + ndims);
    if bytes.len() < 4 {
        bail!(
            "truncated: {} bytes, too short for an IDX header",
            bytes.len()
        );
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = be(0);
    if found != magic {
        bail!("expected magic number {magic}, found {found}");
    }
    if bytes.len() < header {
        bail!(
            "truncated: {} bytes, too short for the {header}-byte header",
            bytes.len()
        );
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be(4 + 4 * d) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("dimensions overflow")?;
    let data = &bytes[header..];
    let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    if data.len() < expected {
        bail!(
            "truncated: dimensions {} need {expected} bytes of data, found {}",
            shape.join("×"),
            data.len()
        );
    }
    if data.len() > expected {
        bail!(
            "dimensions {} need {expected} bytes of data, found {} ({} extra)",
            shape.join("×"),
            data.len(),
            data.len() - expected
        );
    }
    Ok((dims, data.to_vec()))
}
