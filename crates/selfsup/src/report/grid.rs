//! Image grids as PNG, e.g. originals and their augmented views (`selfsup augment --out`).

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Grey level of the 1-px gaps between cells.
const GAP_LEVEL: u8 = 128;

/// Writes `images` (each CHW, `c * h * w` values in `[0, 1]`, `c` = 1 or 3) as a PNG grid of
/// `cols` columns, row by row, each image upscaled by nearest neighbour `scale`, with 1-px grey
/// gaps between cells.
pub fn save_grid(
    path: &Path,
    images: &[&[f32]],
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: usize,
) -> Result<()> {
    let ctx = || format!("writing {}", path.display());
    if c != 1 && c != 3 {
        return Err(anyhow::anyhow!(
            "{c} channels: a grid needs 1 (grey) or 3 (RGB)"
        ))
        .with_context(ctx);
    }
    if images.is_empty() || cols == 0 || scale == 0 || h == 0 || w == 0 {
        return Err(anyhow::anyhow!(
            "nothing to draw ({} images, {cols} columns, scale {scale}, {h}×{w})",
            images.len()
        ))
        .with_context(ctx);
    }
    if let Some(i) = images.iter().position(|im| im.len() != c * h * w) {
        bail!(
            "writing {}: image {i} has {} values, expected {c}×{h}×{w}",
            path.display(),
            images[i].len()
        );
    }
    let cols = cols.min(images.len());
    let rows = images.len().div_ceil(cols);
    let (cell_h, cell_w) = (h * scale, w * scale);
    let gw = cols * cell_w + (cols - 1);
    let gh = rows * cell_h + (rows - 1);
    let mut buf = vec![GAP_LEVEL; gw * gh * c];
    let plane = h * w;
    for (k, img) in images.iter().enumerate() {
        let (y0, x0) = ((k / cols) * (cell_h + 1), (k % cols) * (cell_w + 1));
        for y in 0..cell_h {
            for x in 0..cell_w {
                let src = (y / scale) * w + x / scale;
                let dst = ((y0 + y) * gw + x0 + x) * c;
                for ch in 0..c {
                    buf[dst + ch] = (img[ch * plane + src].clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
    let color = if c == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    let (gw, gh) = (
        u32::try_from(gw).context("grid too wide")?,
        u32::try_from(gh).context("grid too tall")?,
    );
    image::save_buffer_with_format(path, &buf, gw, gh, color, image::ImageFormat::Png)
        .with_context(ctx)
}
