//! Image grids of a trained VAE (`selfsup vae sample|reconstruct|traverse`): samples from the
//! prior, originals above their reconstructions, and latent traversals. Decoded images are the
//! pixel means sigmoid(logits) of p(x|z); the model runs in inference mode.

use super::grid::save_grid;
use crate::methods::vae::Vae;
use anyhow::{bail, Result};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Channels, height and width of the images the VAE decodes.
pub fn image_shape(vae: &Vae) -> [usize; 3] {
    vae.decoder.image
}

fn device_of(vae: &Vae) -> Device {
    vae.devices()
        .into_iter()
        .next()
        .unwrap_or_else(Device::flex)
        .inner()
}

fn to_images(x: Tensor<4>) -> Vec<Vec<f32>> {
    let [n, c, h, w] = x.dims();
    let flat = x
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    flat.chunks(c * h * w)
        .take(n)
        .map(<[f32]>::to_vec)
        .collect()
}

/// `n` seeded standard-normal latent vectors (Box–Muller on a ChaCha8 stream), [n, latent].
fn prior_latents(n: usize, latent: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let z: Vec<f32> = (0..n * latent)
        .map(|_| {
            let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(z, [n, latent]), device)
}

/// Decodes `n` latents drawn from the prior N(0, I) with `seed`.
pub fn prior_samples(vae: &Vae, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let vae = vae.valid();
    let device = device_of(&vae);
    let z = prior_latents(n, vae.encoder.latent, seed, &device);
    to_images(vae.decode_mean(z))
}

fn batch(images: &[&[f32]], shape: [usize; 3], device: &Device) -> Result<Tensor<4>> {
    let [c, h, w] = shape;
    if let Some(i) = images.iter().position(|im| im.len() != c * h * w) {
        bail!(
            "image {i} has {} values, the VAE expects {c}×{h}×{w}",
            images[i].len()
        );
    }
    let data: Vec<f32> = images.iter().flat_map(|im| im.iter().copied()).collect();
    Ok(Tensor::from_data(
        TensorData::new(data, [images.len(), c, h, w]),
        device,
    ))
}

/// Reconstructions decode(μ(x)) of `images` (each C·H·W values at the VAE's size).
pub fn reconstructions(vae: &Vae, images: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
    let vae = vae.valid();
    let device = device_of(&vae);
    let x = batch(images, image_shape(&vae), &device)?;
    Ok(to_images(vae.decode_mean(vae.represent(x))))
}

/// Latent traversal of one image: row r varies latent dimension `dims[r]` of μ(x) over `steps`
/// values evenly spaced in [−span, span] (the other dimensions stay at μ); row-major images.
pub fn traversal(
    vae: &Vae,
    image: &[f32],
    dims: &[usize],
    steps: usize,
    span: f32,
) -> Result<Vec<Vec<f32>>> {
    let vae = vae.valid();
    let device = device_of(&vae);
    let latent = vae.encoder.latent;
    if let Some(&d) = dims.iter().find(|&&d| d >= latent) {
        bail!("latent dimension {d} does not exist: the VAE has {latent} (0..{latent})");
    }
    if steps < 2 {
        bail!("a traversal needs at least 2 steps, got {steps}");
    }
    let x = batch(&[image], image_shape(&vae), &device)?;
    let mu = vae
        .represent(x)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let mut z = Vec::with_capacity(dims.len() * steps * latent);
    for &d in dims {
        for s in 0..steps {
            let mut row = mu.clone();
            row[d] = -span + 2.0 * span * s as f32 / (steps - 1) as f32;
            z.extend(row);
        }
    }
    let z = Tensor::<2>::from_data(TensorData::new(z, [dims.len() * steps, latent]), &device);
    Ok(to_images(vae.decode_mean(z)))
}

fn save(path: &Path, vae: &Vae, images: &[Vec<f32>], cols: usize, scale: usize) -> Result<()> {
    let [c, h, w] = image_shape(vae);
    let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
    save_grid(path, &refs, c, h, w, cols, scale)
}

/// Writes `n` prior samples as a grid of `cols` columns.
pub fn save_samples(
    path: &Path,
    vae: &Vae,
    n: usize,
    cols: usize,
    seed: u64,
    scale: usize,
) -> Result<()> {
    save(path, vae, &prior_samples(vae, n, seed), cols, scale)
}

/// Writes originals above their reconstructions: blocks of two rows of `cols` images, the
/// originals on the first row and their reconstructions on the second.
pub fn save_reconstructions(
    path: &Path,
    vae: &Vae,
    images: &[&[f32]],
    cols: usize,
    scale: usize,
) -> Result<()> {
    if cols == 0 {
        bail!("a grid needs at least one column");
    }
    let recon = reconstructions(vae, images)?;
    let [c, h, w] = image_shape(vae);
    let blank = vec![0.0f32; c * h * w];
    let mut cells: Vec<Vec<f32>> = vec![];
    for (orig, rec) in images.chunks(cols).zip(recon.chunks(cols)) {
        let pad = cols - orig.len();
        cells.extend(orig.iter().map(|o| o.to_vec()));
        cells.extend(std::iter::repeat_n(blank.clone(), pad));
        cells.extend(rec.iter().cloned());
        cells.extend(std::iter::repeat_n(blank.clone(), pad));
    }
    save(path, vae, &cells, cols, scale)
}

/// Writes a traversal of `image`: one row per latent dimension in `dims`, `steps` columns.
pub fn save_traversal(
    path: &Path,
    vae: &Vae,
    image: &[f32],
    dims: &[usize],
    steps: usize,
    span: f32,
    scale: usize,
) -> Result<()> {
    let cells = traversal(vae, image, dims, steps, span)?;
    save(path, vae, &cells, steps, scale)
}
