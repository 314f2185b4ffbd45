//! Seeded image augmentations, one [`AugmentConfig`] per view.
//!
//! The pipeline follows SimCLR (Chen et al. 2020, appendix A) and BYOL (Grill et al. 2020,
//! table 6), with torchvision's semantics for each op, applied in this order:
//!
//! 1. RandomResizedCrop: area fraction `crop_scale`, aspect ratio `crop_ratio` sampled
//!    log-uniformly, 10 tries then a center-crop fallback; resampled to the output size with
//!    antialiased bilinear filtering. A scale of `(1, 1)` keeps the whole image.
//! 2. Horizontal flip with probability `flip_p`.
//! 3. Colour jitter with probability `jitter_p`, strength `s`: brightness, contrast and saturation
//!    factors uniform in `[max(0, 1 − 0.8s), 1 + 0.8s]`, hue shift uniform in `[−0.2s, 0.2s]`,
//!    the four ops in a random order.
//! 4. Grayscale with probability `grayscale_p` (the grey value replicated to every channel).
//! 5. Gaussian blur with probability `blur_p`, σ uniform in `blur_sigma`, kernel side ≈ 10% of
//!    the output size (odd, at least 3), reflect padding.
//! 6. Solarize with probability `solarize_p`: values ≥ `solarize_threshold` become `1 − v`.
//!
//! Values are clamped to `[0, 1]`. On grey (1-channel) images the colour ops reduce to brightness
//! and contrast: saturation, hue and grayscale are no-ops.

use super::resample::Resampler;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Augmentation parameters for one view. Missing keys in a config file take the SimCLR values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// RandomResizedCrop area fraction, default (0.08, 1.0).
    pub crop_scale: (f32, f32),
    /// RandomResizedCrop aspect ratio, sampled log-uniformly, default (3/4, 4/3).
    pub crop_ratio: (f32, f32),
    /// Probability of a horizontal flip, default 0.5.
    pub flip_p: f32,
    /// Colour jitter strength s: brightness 0.8s, contrast 0.8s, saturation 0.8s, hue 0.2s.
    pub jitter_strength: f32,
    /// Probability of colour jitter, default 0.8.
    pub jitter_p: f32,
    /// Probability of converting to grey, default 0.2.
    pub grayscale_p: f32,
    /// Probability of Gaussian blur, default 0.0.
    pub blur_p: f32,
    /// Range of the blur's σ in pixels, default (0.1, 2.0).
    pub blur_sigma: (f32, f32),
    /// Probability of solarization, default 0.0.
    pub solarize_p: f32,
    /// Solarization threshold, default 0.5.
    pub solarize_threshold: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::simclr()
    }
}

impl AugmentConfig {
    /// SimCLR's recipe for CIFAR-sized images (no blur).
    pub fn simclr() -> Self {
        AugmentConfig {
            crop_scale: (0.08, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            jitter_strength: 1.0,
            jitter_p: 0.8,
            grayscale_p: 0.2,
            blur_p: 0.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            solarize_threshold: 0.5,
        }
    }

    /// BYOL's first view: blur always, no solarization. Jitter strength 0.5 gives BYOL's
    /// brightness 0.4, contrast 0.4 and hue 0.1; saturation is 0.4 where BYOL uses 0.2.
    pub fn byol_view1() -> Self {
        AugmentConfig {
            jitter_strength: 0.5,
            blur_p: 1.0,
            ..Self::simclr()
        }
    }

    /// BYOL's second view: blur with p = 0.1, solarization with p = 0.2.
    pub fn byol_view2() -> Self {
        AugmentConfig {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..Self::byol_view1()
        }
    }

    /// The identity at the output size: the whole image, resized, nothing else.
    pub fn none() -> Self {
        AugmentConfig {
            crop_scale: (1.0, 1.0),
            crop_ratio: (1.0, 1.0),
            flip_p: 0.0,
            jitter_strength: 0.0,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            solarize_threshold: 0.5,
        }
    }

    /// Checks every field's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let range = |name: &str, (a, b): (f32, f32), lo: f32, hi: f32| -> Result<()> {
            if !(a > lo && a <= b && b <= hi) {
                bail!("augmentation {name} = ({a}, {b}): need {lo} < min ≤ max ≤ {hi}");
            }
            Ok(())
        };
        range("crop_scale", self.crop_scale, 0.0, 1.0)?;
        range("crop_ratio", self.crop_ratio, 0.0, f32::MAX)?;
        range("blur_sigma", self.blur_sigma, 0.0, f32::MAX)?;
        for (name, p) in [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("augmentation {name} = {p}: a probability must be in [0, 1]");
            }
        }
        if !(self.jitter_strength >= 0.0 && self.jitter_strength.is_finite()) {
            bail!(
                "augmentation jitter_strength = {}: must be ≥ 0",
                self.jitter_strength
            );
        }
        if !self.solarize_threshold.is_finite() {
            bail!("augmentation solarize_threshold must be finite");
        }
        Ok(())
    }
}

/// Produces one augmented view (CHW, out_h*out_w per channel) from one image.
///
/// `img` is CHW with `c * h * w` values in `[0, 1]`; the view has the same `c`. The result
/// depends only on the inputs and the state of `rng`.
///
/// # Panics
/// If `img.len() != c * h * w` or a size is 0 (a caller's bug, not bad data).
#[allow(clippy::too_many_arguments)]
pub fn augment_image(
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
) -> Vec<f32> {
    assert_eq!(img.len(), c * h * w, "image length must be c*h*w");
    assert!(
        h > 0 && w > 0 && out_h > 0 && out_w > 0,
        "sizes must be positive"
    );
    let (top, left, ch, cw) = random_resized_crop(h, w, cfg, rng);
    let mut v = Resampler::new((top, ch), (left, cw), h, w, out_h, out_w).apply(img, c);
    let plane = out_h * out_w;
    if coin(rng, cfg.flip_p) {
        for row in v.chunks_exact_mut(out_w) {
            row.reverse();
        }
    }
    if coin(rng, cfg.jitter_p) {
        color_jitter(&mut v, c, plane, cfg.jitter_strength, rng);
    }
    if coin(rng, cfg.grayscale_p) && c == 3 {
        let g = grey(&v, plane);
        for ch in v.chunks_exact_mut(plane) {
            ch.copy_from_slice(&g);
        }
    }
    if coin(rng, cfg.blur_p) {
        let sigma = uniform(rng, cfg.blur_sigma.0, cfg.blur_sigma.1);
        let k = ((out_h.min(out_w) / 10) | 1).max(3);
        gaussian_blur(&mut v, out_h, out_w, k, sigma);
    }
    if coin(rng, cfg.solarize_p) {
        let t = cfg.solarize_threshold;
        v.iter_mut()
            .filter(|x| **x >= t)
            .for_each(|x| *x = 1.0 - *x);
    }
    v.iter_mut().for_each(|x| *x = x.clamp(0.0, 1.0));
    v
}

fn coin(rng: &mut impl Rng, p: f32) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.gen::<f32>() < p
    }
}

fn uniform(rng: &mut impl Rng, a: f32, b: f32) -> f32 {
    if b > a {
        a + (b - a) * rng.gen::<f32>()
    } else {
        a
    }
}

/// torchvision's `RandomResizedCrop.get_params`: (top, left, height, width).
fn random_resized_crop(
    h: usize,
    w: usize,
    cfg: &AugmentConfig,
    rng: &mut impl Rng,
) -> (usize, usize, usize, usize) {
    if cfg.crop_scale.0 >= 1.0 {
        return (0, 0, h, w);
    }
    let area = (h * w) as f32;
    let (lr0, lr1) = (cfg.crop_ratio.0.ln(), cfg.crop_ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, cfg.crop_scale.0, cfg.crop_scale.1);
        let ar = uniform(rng, lr0, lr1).exp();
        let cw = (target * ar).sqrt().round() as usize;
        let ch = (target / ar).sqrt().round() as usize;
        if cw > 0 && cw <= w && ch > 0 && ch <= h {
            let top = rng.gen_range(0..=h - ch);
            let left = rng.gen_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    // Fallback: the largest center crop with an aspect ratio in range.
    let in_ratio = w as f32 / h as f32;
    let (ch, cw) = if in_ratio < cfg.crop_ratio.0 {
        ((w as f32 / cfg.crop_ratio.0).round() as usize, w)
    } else if in_ratio > cfg.crop_ratio.1 {
        (h, (h as f32 * cfg.crop_ratio.1).round() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Luma (ITU-R 601, as torchvision) of a 3-channel CHW image.
fn grey(v: &[f32], plane: usize) -> Vec<f32> {
    (0..plane)
        .map(|i| 0.299 * v[i] + 0.587 * v[plane + i] + 0.114 * v[2 * plane + i])
        .collect()
}

fn blend_towards(v: &mut [f32], factor: f32, target: impl Fn(usize) -> f32) {
    for (i, x) in v.iter_mut().enumerate() {
        *x = (factor * *x + (1.0 - factor) * target(i)).clamp(0.0, 1.0);
    }
}

fn color_jitter(v: &mut [f32], c: usize, plane: usize, s: f32, rng: &mut impl Rng) {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let (lo, hi) = ((1.0 - 0.8 * s).max(0.0), 1.0 + 0.8 * s);
    let b = uniform(rng, lo, hi);
    let ct = uniform(rng, lo, hi);
    let sat = uniform(rng, lo, hi);
    let hmax = (0.2 * s).min(0.5);
    let hue = uniform(rng, -hmax, hmax);
    for op in order {
        match op {
            0 => v.iter_mut().for_each(|x| *x = (*x * b).clamp(0.0, 1.0)),
            1 => {
                let mean = if c == 3 {
                    grey(v, plane).iter().sum::<f32>() / plane as f32
                } else {
                    v.iter().sum::<f32>() / v.len() as f32
                };
                blend_towards(v, ct, |_| mean);
            }
            2 if c == 3 => {
                let g = grey(v, plane);
                blend_towards(v, sat, |i| g[i % plane]);
            }
            3 if c == 3 && hue != 0.0 => shift_hue(v, plane, hue),
            _ => {}
        }
    }
}

fn shift_hue(v: &mut [f32], plane: usize, shift: f32) {
    for i in 0..plane {
        let (r, g, b) = (v[i], v[plane + i], v[2 * plane + i]);
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let cr = maxc - minc;
        if cr <= 0.0 {
            continue; // grey pixel: hue is undefined and the shift changes nothing
        }
        let sat = cr / maxc;
        let h6 = if maxc == r {
            (g - b) / cr
        } else if maxc == g {
            (b - r) / cr + 2.0
        } else {
            (r - g) / cr + 4.0
        };
        let h = (h6 / 6.0 + shift).rem_euclid(1.0);
        let (r, g, b) = hsv_to_rgb(h, sat, maxc);
        v[i] = r;
        v[plane + i] = g;
        v[2 * plane + i] = b;
    }
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

/// Separable Gaussian blur of every plane, kernel side `k` (odd), reflect padding.
fn gaussian_blur(v: &mut [f32], h: usize, w: usize, k: usize, sigma: f32) {
    let r = (k / 2) as isize;
    let mut kernel: Vec<f32> = (-r..=r)
        .map(|x| (-0.5 * (x as f32 / sigma).powi(2)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|x| *x /= sum);
    let mut tmp = vec![0.0f32; h * w];
    for p in v.chunks_exact_mut(h * w) {
        for y in 0..h {
            for x in 0..w {
                tmp[y * w + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(j, kv)| kv * p[y * w + reflect(x as isize + j as isize - r, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for x in 0..w {
                p[y * w + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(j, kv)| kv * tmp[reflect(y as isize + j as isize - r, h) * w + x])
                    .sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn none_is_identity_at_same_size() {
        let img: Vec<f32> = (0..3 * 5 * 6).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let out = augment_image(&img, 3, 5, 6, 5, 6, &AugmentConfig::none(), &mut rng);
        for (a, b) in img.iter().zip(&out) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn hue_round_trip_and_full_turn() {
        let mut v = vec![0.9, 0.2, 0.4, 0.1, 0.7, 0.3];
        let orig = v.clone();
        shift_hue(&mut v, 2, 1.0);
        for (a, b) in orig.iter().zip(&v) {
            assert!((a - b).abs() < 1e-5, "{orig:?} {v:?}");
        }
        shift_hue(&mut v, 2, 1.0 / 3.0); // red -> green
        assert!(v[2] > v[0] && v[2] > v[4]);
    }

    #[test]
    fn crop_fallback_and_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cfg = AugmentConfig::simclr();
        for _ in 0..500 {
            let (t, l, ch, cw) = random_resized_crop(8, 13, &cfg, &mut rng);
            assert!(ch >= 1 && cw >= 1 && t + ch <= 8 && l + cw <= 13);
        }
        // A very wide image with a square-only ratio falls back to a center square.
        let cfg = AugmentConfig {
            crop_scale: (0.99, 1.0),
            crop_ratio: (1.0, 1.0),
            ..cfg
        };
        assert_eq!(random_resized_crop(4, 40, &cfg, &mut rng), (0, 18, 4, 4));
    }

    #[test]
    fn blur_keeps_constant_and_reflect_in_range() {
        let mut v = vec![0.5f32; 2 * 4 * 3];
        gaussian_blur(&mut v, 4, 3, 7, 1.5);
        assert!(v.iter().all(|x| (x - 0.5).abs() < 1e-6));
        for i in -20..20 {
            assert!(reflect(i, 3) < 3);
        }
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(5, 5), 3);
    }

    #[test]
    fn presets_validate() {
        for c in [
            AugmentConfig::simclr(),
            AugmentConfig::byol_view1(),
            AugmentConfig::byol_view2(),
            AugmentConfig::none(),
        ] {
            c.validate().unwrap();
        }
        let bad = AugmentConfig {
            flip_p: 1.5,
            ..AugmentConfig::simclr()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("flip_p"));
    }
}
