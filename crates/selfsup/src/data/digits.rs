//! The embedded UCI optical digits (see `assets/DIGITS-NOTICE.md`): 1,797 grey images of 8×8
//! pixels with levels 0–16, ten classes `0`–`9`.

use super::{ImageDataset, Splits};
use anyhow::{bail, Context, Result};
use std::io::Read;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../assets/digits.csv.gz");

/// Number of images in the embedded file.
pub const DIGITS_LEN: usize = 1797;

/// Loads the embedded digits, scaled to `[0, 1]` by dividing the levels 0–16 by 16.
///
/// The split is fixed and stratified: within each class, in file order, every 5th image
/// (positions 4, 9, 14, … counted from 0 within that class) goes to test and the rest to train,
/// which gives 1,442 train and 355 test images (⌊class size / 5⌋ test images per class),
/// every class in both.
pub fn load() -> Result<Splits> {
    let all = parse().context("reading the embedded digits.csv.gz")?;
    let labels = all.labels.as_ref().expect("digits are labeled");
    let mut seen = [0usize; 10];
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        let pos = seen[l as usize];
        seen[l as usize] += 1;
        if pos % 5 == 4 {
            test.push(i);
        } else {
            train.push(i);
        }
    }
    Ok(Splits {
        train: all.subset(&train),
        test: Some(all.subset(&test)),
    })
}

/// All 1,797 images, unsplit.
pub fn load_all() -> Result<ImageDataset> {
    parse().context("reading the embedded digits.csv.gz")
}

fn parse() -> Result<ImageDataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ).read_to_string(&mut text)?;
    let mut images = Vec::with_capacity(DIGITS_LEN * 64);
    let mut labels = Vec::with_capacity(DIGITS_LEN);
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            bail!(
                "line {}: expected 65 fields, found {}",
                line_no + 1,
                fields.len()
            );
        }
        for f in &fields[..64] {
            let v: u8 = f
                .trim()
                .parse()
                .with_context(|| format!("line {}: bad pixel `{f}`", line_no + 1))?;
            if v > 16 {
                bail!("line {}: pixel {v} outside 0..=16", line_no + 1);
            }
            images.push(f32::from(v) / 16.0);
        }
        let l: u32 = fields[64]
            .trim()
            .parse()
            .with_context(|| format!("line {}: bad label `{}`", line_no + 1, fields[64]))?;
        if l > 9 {
            bail!("line {}: label {l} outside 0..=9", line_no + 1);
        }
        labels.push(l);
    }
    Ok(ImageDataset {
        name: "digits".into(),
        n: labels.len(),
        images,
        labels: Some(labels),
        channels: 1,
        height: 8,
        width: 8,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    })
}
