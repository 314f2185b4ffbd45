//! A folder of PNG/JPEG images of any size.
//!
//! - Class subfolders give labels, classes in sorted name order; images inside a class folder are
//!   found recursively. A folder with images and no subfolders is unlabeled. A folder with both
//!   images and subfolders at its top level is an error (it is ambiguous).
//! - If `DIR` holds `train/` and `test/` subfolders, those are the two splits (the test classes
//!   must be among the train classes); otherwise all of `DIR` is the training split.
//! - Each image is center-cropped to a square (the side of its shorter edge), then resized to
//!   `image_size` (default 32) with a triangle (antialiased bilinear) filter. Alpha is dropped.
//! - If every image is grey the dataset has 1 channel, otherwise every image is converted to RGB
//!   (3 channels); `grayscale` forces 1 channel.
//! - Files are taken by extension (`.png`, `.jpg`, `.jpeg`, any case); hidden files are ignored.
//!   Images are decoded in parallel.

use super::{ImageDataset, LoadOptions, Splits};
use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Default side of the square images a folder is resized to.
pub const DEFAULT_IMAGE_SIZE: usize = 32;

/// Loads `dir` (see the module docs).
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Splits> {
    if !dir.is_dir() {
        bail!("reading {}: no such directory", dir.display());
    }
    let size = opts.image_size.unwrap_or(DEFAULT_IMAGE_SIZE);
    let name = format!("folder:{}", dir.display());
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    let mut skipped = Vec::new();
    let splits = if train_dir.is_dir() && test_dir.is_dir() {
        let train_scan = scan(&train_dir)?;
        let test_scan = scan(&test_dir)?;
        let test_files = relabel(&test_scan, &train_scan, &test_dir)?;
        let grey_all = opts.grayscale;
        let mut train = decode_all(&train_scan.files, size, opts, &mut skipped)?;
        let mut test = decode_all(&test_files, size, opts, &mut skipped)?;
        let grey = grey_all
            || (train.iter().all(|d| d.channels == 1) && test.iter().all(|d| d.channels == 1));
        let classes = train_scan.classes.clone();
        Splits {
            train: assemble(&mut train, grey, size, &name, &classes, &train_dir)?,
            test: Some(assemble(&mut test, grey, size, &name, &classes, &test_dir)?),
        }
    } else {
        let s = scan(dir)?;
        let mut all = decode_all(&s.files, size, opts, &mut skipped)?;
        let grey = opts.grayscale || all.iter().all(|d| d.channels == 1);
        Splits {
            train: assemble(&mut all, grey, size, &name, &s.classes, dir)?,
            test: None,
        }
    };
    if let Some(first) = skipped.first() {
        eprintln!(
            "skipped {} undecodable image(s) (first: {first:#})",
            skipped.len()
        );
    }
    Ok(splits)
}

/// The image files of one split, with their labels (`None` = unlabeled).
struct Scan {
    files: Vec<(PathBuf, Option<u32>)>,
    classes: Vec<String>,
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

/// Sorted, non-hidden entries of `dir`: (subfolders, image files).
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let ctx = || format!("reading {}", dir.display());
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(ctx)? {
        let p = e.with_context(ctx)?.path();
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            dirs.push(p);
        } else if is_image(&p) {
            files.push(p);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let (dirs, files) = entries(dir)?;
    out.extend(files);
    for d in dirs {
        images_under(&d, out)?;
    }
    Ok(())
}

fn scan(dir: &Path) -> Result<Scan> {
    let (dirs, files) = entries(dir)?;
    if dirs.is_empty() {
        if files.is_empty() {
            bail!(
                "reading {}: empty folder (no .png/.jpg/.jpeg images)",
                dir.display()
            );
        }
        return Ok(Scan {
            files: files.into_iter().map(|f| (f, None)).collect(),
            classes: Vec::new(),
        });
    }
    if let Some(f) = files.first() {
        bail!(
            "reading {}: images ({}) next to class folders; put every image in a class folder, \
             or use a flat folder without subfolders",
            dir.display(),
            f.display()
        );
    }
    let mut scan = Scan {
        files: Vec::new(),
        classes: Vec::new(),
    };
    for (label, d) in dirs.iter().enumerate() {
        let mut imgs = Vec::new();
        images_under(d, &mut imgs)?;
        if imgs.is_empty() {
            bail!(
                "reading {}: empty class folder (no .png/.jpg/.jpeg images)",
                d.display()
            );
        }
        scan.files
            .extend(imgs.into_iter().map(|f| (f, Some(label as u32))));
        scan.classes.push(
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    Ok(scan)
}

/// The test files labeled with the train split's class indices.
fn relabel(test: &Scan, train: &Scan, test_dir: &Path) -> Result<Vec<(PathBuf, Option<u32>)>> {
    if test.classes.is_empty() != train.classes.is_empty() {
        bail!(
            "reading {}: train/ and test/ must both have class folders or both be flat",
            test_dir.display()
        );
    }
    test.files
        .iter()
        .map(|(p, l)| {
            let l = match l {
                None => None,
                Some(l) => {
                    let name = &test.classes[*l as usize];
                    let idx = train
                        .classes
                        .iter()
                        .position(|c| c == name)
                        .with_context(|| {
                            format!(
                                "reading {}: class folder `{name}` has no counterpart in train/",
                                test_dir.display()
                            )
                        })?;
                    Some(idx as u32)
                }
            };
            Ok((p.clone(), l))
        })
        .collect()
}

/// One decoded, resized image: `channels` is 1 for grey (or forced grey) images, else 3.
struct Decoded {
    pixels: Vec<f32>,
    channels: usize,
    label: Option<u32>,
}

fn decode(path: &Path, size: usize, force_grey: bool) -> Result<(Vec<f32>, usize)> {
    let img = image::ImageReader::open(path)?
        .with_guessed_format()?
        .decode()?;
    let grey = force_grey || !img.color().has_color();
    let side = img.width().min(img.height());
    let square = img.crop_imm(
        (img.width() - side) / 2,
        (img.height() - side) / 2,
        side,
        side,
    );
    let s = size as u32;
    Ok(if grey {
        let r = image::imageops::resize(&square.to_luma8(), s, s, FilterType::Triangle);
        (
            r.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect(),
            1,
        )
    } else {
        let r = image::imageops::resize(&square.to_rgb8(), s, s, FilterType::Triangle);
        // HWC interleaved -> CHW planes.
        let plane = size * size;
        let mut chw = vec![0.0f32; 3 * plane];
        for (i, px) in r.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = f32::from(px[c]) / 255.0;
            }
        }
        (chw, 3)
    })
}

fn decode_all(
    files: &[(PathBuf, Option<u32>)],
    size: usize,
    opts: &LoadOptions,
    skipped: &mut Vec<anyhow::Error>,
) -> Result<Vec<Decoded>> {
    let results: Vec<Result<Decoded>> = files
        .par_iter()
        .map(|(p, label)| {
            let (pixels, channels) = decode(p, size, opts.grayscale)
                .with_context(|| format!("reading {}", p.display()))?;
            Ok(Decoded {
                pixels,
                channels,
                label: *label,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(d) => out.push(d),
            Err(e) if opts.skip_bad_images => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn assemble(
    decoded: &mut [Decoded],
    grey: bool,
    size: usize,
    name: &str,
    classes: &[String],
    dir: &Path,
) -> Result<ImageDataset> {
    if decoded.is_empty() {
        bail!(
            "reading {}: no decodable images left after skipping bad ones",
            dir.display()
        );
    }
    let channels = if grey { 1 } else { 3 };
    let mut images = Vec::with_capacity(decoded.len() * channels * size * size);
    for d in decoded.iter_mut() {
        let px = std::mem::take(&mut d.pixels);
        if d.channels == channels {
            images.extend(px);
        } else {
            // A grey image in an RGB dataset: replicate its plane.
            for _ in 0..channels {
                images.extend_from_slice(&px);
            }
        }
    }
    let labels: Option<Vec<u32>> = decoded.iter().map(|d| d.label).collect();
    Ok(ImageDataset {
        name: name.to_string(),
        n: decoded.len(),
        images,
        labels,
        channels,
        height: size,
        width: size,
        class_names: classes.to_vec(),
    })
}
