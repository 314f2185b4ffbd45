//! Feature standardisation for the linear probe: z = (x − mean) / std per feature.
//!
//! Fit on all training features (in self-supervised learning they are available
//! without labels), then applied to the labelled subset and to the test set.

use anyhow::{bail, ensure};
use rayon::prelude::*;

/// A feature whose standard deviation is below this is only centred (scale 1),
/// like scikit-learn's `StandardScaler`: a constant training feature then maps to 0
/// and cannot blow up on a test image where it differs.
pub const MIN_STD: f32 = 1e-6;

/// Per-feature mean and standard deviation (population, ddof = 0) of a feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Standardizer {
    /// Fits on `x`, a row-major `n × d` matrix. Sums are taken in f64.
    pub fn fit(x: &[f32], n: usize, d: usize) -> anyhow::Result<Self> {
        if n == 0 || d == 0 {
            bail!("cannot standardize an empty feature matrix ({n} × {d})");
        }
        ensure!(
            x.len() == n * d,
            "feature matrix has {} values, expected {n} × {d} = {}",
            x.len(),
            n * d
        );
        let sum = column_sums(x, d, |acc, row| {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64)
        });
        let nf = n as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
        // Second pass for the variance: E[x²] − E[x]² cancels badly for large means.
        let var = column_sums(x, d, |acc, row| {
            for ((a, &v), m) in acc.iter_mut().zip(row).zip(&mean) {
                let c = v as f64 - m;
                *a += c * c;
            }
        });
        let std = var
            .iter()
            .map(|v| {
                let s = (v / nf).sqrt() as f32;
                if s < MIN_STD {
                    1.0
                } else {
                    s
                }
            })
            .collect();
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Per-feature means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Per-feature scales (standard deviations, 1 for constant features).
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Standardizes a row-major `n × d` matrix (`n = x.len() / d`).
    pub fn transform(&self, x: &[f32]) -> anyhow::Result<Vec<f32>> {
        let d = self.dim();
        ensure!(
            x.len().is_multiple_of(d),
            "feature matrix has {} values, not a multiple of the {d} features the standardizer was fit on",
            x.len()
        );
        let mut out = x.to_vec();
        out.par_chunks_mut(d).for_each(|row| {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        });
        Ok(out)
    }
}

/// Per-column sums of `f(row)` over a row-major matrix with `d` columns, in parallel
/// over fixed blocks of rows and added up in block order, so the result does not
/// depend on the number of threads.
fn column_sums(x: &[f32], d: usize, f: impl Fn(&mut [f64], &[f32]) + Sync) -> Vec<f64> {
    const ROWS_PER_BLOCK: usize = 512;
    let partial: Vec<Vec<f64>> = x
        .par_chunks(d * ROWS_PER_BLOCK)
        .map(|block| {
            let mut acc = vec![0f64; d];
            block.chunks_exact(d).for_each(|row| f(&mut acc, row));
            acc
        })
        .collect();
    let mut total = vec![0f64; d];
    for p in &partial {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardizes_to_zero_mean_unit_std() {
        // 4 × 3: a normal column, a constant column, a large-offset column.
        let x = [
            1.0,
            5.0,
            1e4, //
            2.0,
            5.0,
            1e4 + 1.0, //
            3.0,
            5.0,
            1e4 + 2.0, //
            4.0,
            5.0,
            1e4 + 3.0,
        ];
        let s = Standardizer::fit(&x, 4, 3).unwrap();
        assert_eq!(s.mean()[1], 5.0);
        assert_eq!(s.std()[1], 1.0);
        let z = s.transform(&x).unwrap();
        for j in [0, 2] {
            let col: Vec<f32> = (0..4).map(|i| z[i * 3 + j]).collect();
            let mean: f32 = col.iter().sum::<f32>() / 4.0;
            let var: f32 = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-5, "{col:?}");
            assert!((var - 1.0).abs() < 1e-4, "{col:?}");
        }
        // A constant training feature stays bounded on a differing test value.
        let t = s.transform(&[0.0, 6.0, 0.0]).unwrap();
        assert_eq!(t[1], 1.0);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Standardizer::fit(&[], 0, 3).is_err());
        assert!(Standardizer::fit(&[1.0; 5], 2, 3).is_err());
        let s = Standardizer::fit(&[1.0; 6], 2, 3).unwrap();
        assert!(s.transform(&[1.0; 4]).is_err());
    }
}
