//! Separable antialiased bilinear resampling (a triangle filter whose support widens when
//! downscaling, as PIL's `BILINEAR`); when upscaling it is plain bilinear interpolation with
//! half-pixel centres and edge clamping (`align_corners=False`).

/// Filter taps for one output coordinate: weights for input pixels `start..start + weights.len()`
/// (relative to the crop).
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn taps(len: usize, out: usize) -> Vec<Taps> {
    let scale = len as f32 / out as f32;
    let support = scale.max(1.0);
    (0..out)
        .map(|o| {
            let center = (o as f32 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0) as usize).min(len - 1);
            let hi = ((center + support).ceil() as usize).clamp(lo + 1, len);
            let mut weights: Vec<f32> = (lo..hi)
                .map(|k| (1.0 - ((k as f32 + 0.5 - center).abs() / support)).max(0.0))
                .collect();
            let sum: f32 = weights.iter().sum();
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            } else {
                weights.iter_mut().for_each(|w| *w = 1.0 / (hi - lo) as f32);
            }
            Taps { start: lo, weights }
        })
        .collect()
}

/// Resamples a rectangle of a CHW image to `out_h × out_w`.
pub(crate) struct Resampler {
    top: usize,
    left: usize,
    crop_h: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    rows: Vec<Taps>,
    cols: Vec<Taps>,
}

impl Resampler {
    /// `rows = (top, crop_h)` and `cols = (left, crop_w)` select the rectangle of an
    /// `in_h × in_w` image; all sizes must be at least 1 and the rectangle inside the image.
    pub(crate) fn new(
        rows: (usize, usize),
        cols: (usize, usize),
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Self {
        debug_assert!(rows.1 >= 1 && cols.1 >= 1 && out_h >= 1 && out_w >= 1);
        debug_assert!(rows.0 + rows.1 <= in_h && cols.0 + cols.1 <= in_w);
        Resampler {
            top: rows.0,
            left: cols.0,
            crop_h: rows.1,
            in_h,
            in_w,
            out_h,
            out_w,
            rows: taps(rows.1, out_h),
            cols: taps(cols.1, out_w),
        }
    }

    /// Applies the resampling to each of the `c` channels of `img` (CHW, `c * in_h * in_w`).
    pub(crate) fn apply(&self, img: &[f32], c: usize) -> Vec<f32> {
        let (in_plane, out_plane) = (self.in_h * self.in_w, self.out_h * self.out_w);
        let mut tmp = vec![0.0f32; self.crop_h * self.out_w];
        let mut out = vec![0.0f32; c * out_plane];
        for ch in 0..c {
            let plane = &img[ch * in_plane..(ch + 1) * in_plane];
            for r in 0..self.crop_h {
                let row = &plane[(self.top + r) * self.in_w + self.left..];
                for (ox, t) in self.cols.iter().enumerate() {
                    tmp[r * self.out_w + ox] = t
                        .weights
                        .iter()
                        .zip(&row[t.start..])
                        .map(|(w, v)| w * v)
                        .sum();
                }
            }
            let dst = &mut out[ch * out_plane..(ch + 1) * out_plane];
            for (oy, t) in self.rows.iter().enumerate() {
                let drow = &mut dst[oy * self.out_w..(oy + 1) * self.out_w];
                for (k, w) in t.weights.iter().enumerate() {
                    let srow = &tmp[(t.start + k) * self.out_w..(t.start + k + 1) * self.out_w];
                    for (d, s) in drow.iter_mut().zip(srow) {
                        *d += w * s;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let img: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32 / 24.0).collect();
        let out = Resampler::new((0, 3), (0, 4), 3, 4, 3, 4).apply(&img, 2);
        for (a, b) in img.iter().zip(&out) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn downscale_averages_and_crop_selects() {
        // 4x4 image, left half 0, right half 1; downscale to 1x2 averages each half.
        let img: Vec<f32> = (0..16)
            .map(|i| if i % 4 >= 2 { 1.0 } else { 0.0 })
            .collect();
        let out = Resampler::new((0, 4), (0, 4), 4, 4, 1, 2).apply(&img, 1);
        assert!(out[0] < 0.2 && out[1] > 0.8, "{out:?}");
        // Crop of the right half only is all ones.
        let out = Resampler::new((1, 2), (2, 2), 4, 4, 3, 3).apply(&img, 1);
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn upscale_keeps_constant_and_range() {
        let img = vec![0.25f32; 4];
        let out = Resampler::new((0, 2), (0, 2), 2, 2, 5, 7).apply(&img, 1);
        assert_eq!(out.len(), 35);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}
