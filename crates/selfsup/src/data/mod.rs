//! Datasets, augmentations and the view loader.
//!
//! Every dataset is loaded into one [`ImageDataset`]: images as `f32` in `[0, 1]`, CHW per image,
//! stored contiguously. A dataset is named by a spec string (see [`load`]):
//!
//! | spec | what |
//! |---|---|
//! | `digits` | the embedded UCI optical digits, 8×8 grey, fixed stratified split ([`digits`]) |
//! | `fashion-mnist[:DIR]` | Fashion-MNIST IDX files, gzipped or raw ([`idx`]) |
//! | `mnist:DIR` | MNIST IDX files ([`idx`]) |
//! | `cifar10:DIR` | CIFAR-10 binary batches ([`cifar`]) |
//! | `folder:DIR` | PNG/JPEG files, class subfolders or flat ([`folder`]) |
//!
//! Bad input gives one error naming the file and the cause; nothing panics, nothing is skipped
//! silently.

pub mod augment;
pub mod brown;
pub mod cifar;
pub mod digits;
pub mod folder;
pub mod idx;
pub mod labeled_text;
pub mod loader;
pub(crate) mod resample;

pub use augment::{augment_image, AugmentConfig};
pub use loader::{Prefetcher, ViewBatch, ViewLoader};

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Images as f32 in [0,1], CHW per image, images stored contiguously.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    pub name: String,
    /// `n * channels * height * width` values.
    pub images: Vec<f32>,
    /// One label per image; `None` = unlabeled.
    pub labels: Option<Vec<u32>>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Names of the classes, indexed by label; empty when unlabeled.
    pub class_names: Vec<String>,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Values per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i`, CHW.
    pub fn image(&self, i: usize) -> &[f32] {
        let l = self.image_len();
        &self.images[i * l..(i + 1) * l]
    }

    /// Number of classes (0 when unlabeled).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The images at `idx` (in that order, repeats allowed), with their labels.
    pub fn subset(&self, idx: &[usize]) -> ImageDataset {
        let mut images = Vec::with_capacity(idx.len() * self.image_len());
        for &i in idx {
            images.extend_from_slice(self.image(i));
        }
        ImageDataset {
            name: self.name.clone(),
            images,
            labels: self
                .labels
                .as_ref()
                .map(|l| idx.iter().map(|&i| l[i]).collect()),
            n: idx.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            class_names: self.class_names.clone(),
        }
    }

    /// The same images resampled to `height × width` (antialiased bilinear, aspect ratio not kept).
    pub fn resized(&self, height: usize, width: usize) -> ImageDataset {
        if height == self.height && width == self.width {
            return self.clone();
        }
        let rs = resample::Resampler::new(
            (0, self.height),
            (0, self.width),
            self.height,
            self.width,
            height,
            width,
        );
        let mut images = Vec::with_capacity(self.n * self.channels * height * width);
        for i in 0..self.n {
            images.extend(rs.apply(self.image(i), self.channels));
        }
        ImageDataset {
            name: self.name.clone(),
            images,
            labels: self.labels.clone(),
            n: self.n,
            channels: self.channels,
            height,
            width,
            class_names: self.class_names.clone(),
        }
    }
}

/// A training split and, where the dataset has one, a test split.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: ImageDataset,
    pub test: Option<ImageDataset>,
}

/// Options that apply when loading a dataset.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Side of the square images to produce. `folder:` images are always resized (default 32);
    /// the other datasets keep their native size unless this is set.
    pub image_size: Option<usize>,
    /// `folder:` only: skip undecodable images (their count is printed to stderr) instead of failing.
    pub skip_bad_images: bool,
    /// `folder:` only: force one (grey) channel.
    pub grayscale: bool,
}

/// The spec names [`load`] understands, for help texts and errors.
pub const SPEC_HELP: &str = "digits, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, folder:DIR";

/// Parses a dataset spec string (`digits`, `fashion-mnist[:DIR]`, `mnist:DIR`, `cifar10:DIR`,
/// `folder:DIR`) and loads it.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Splits> {
    let (kind, dir) = match spec.split_once(':') {
        Some((k, d)) => (k, Some(PathBuf::from(d))),
        None => (spec, None),
    };
    let need_dir = |dir: Option<PathBuf>| -> Result<PathBuf> {
        match dir {
            Some(d) if !d.as_os_str().is_empty() => Ok(d),
            _ => bail!("dataset spec `{spec}` needs a directory: `{kind}:DIR`"),
        }
    };
    if let Some(0) = opts.image_size {
        bail!("image size must be at least 1");
    }
    let splits = match kind {
        "digits" => {
            if dir.is_some() {
                bail!("dataset spec `{spec}`: `digits` is embedded and takes no directory");
            }
            digits::load()?
        }
        "fashion-mnist" => {
            let dir = match dir {
                Some(d) => d,
                None => idx::default_fashion_mnist_dir()?,
            };
            idx::load_dir(&dir, "fashion-mnist", idx::FASHION_MNIST_CLASSES)?
        }
        "mnist" => idx::load_dir(&need_dir(dir)?, "mnist", idx::MNIST_CLASSES)?,
        "cifar10" => cifar::load_dir(&need_dir(dir)?)?,
        "folder" => folder::load_dir(&need_dir(dir)?, opts)?,
        _ => bail!("unknown dataset spec `{spec}`; expected one of: {SPEC_HELP}"),
    };
    Ok(match (kind, opts.image_size) {
        ("folder", _) | (_, None) => splits,
        (_, Some(s)) => Splits {
            train: splits.train.resized(s, s),
            test: splits.test.map(|t| t.resized(s, s)),
        },
    })
}

/// Reads a whole file, decompressing it if it starts with the gzip magic bytes `1f 8b`.
/// Errors name the file.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    use anyhow::Context;
    use std::io::Read;
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("reading {}: decompressing gzip", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
