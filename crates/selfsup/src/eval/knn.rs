//! Weighted k-nearest-neighbour classifier on frozen features (Wu et al., "Unsupervised
//! Feature Learning via Non-Parametric Instance Discrimination", 2018, §3.4; the
//! protocol of solo-learn's `WeightedKNNClassifier`).
//!
//! Similarity is cosine: s_ij = x̂_i · x̂_j with x̂ = x / ‖x‖. Each test image takes its k
//! most similar labelled images, and class c gets the vote Σ_{j ∈ top-k, y_j = c} exp(s_ij / T).
//! The predicted class is the one with the largest vote.

use anyhow::{bail, ensure};
use rayon::prelude::*;

/// Number of neighbours used by default (solo-learn, DINO use 20).
pub const DEFAULT_K: usize = 20;
/// Vote temperature used by default (InstDisc, solo-learn).
pub const DEFAULT_TEMPERATURE: f64 = 0.07;

/// Test rows handled together: one parallel task, and the rows a train block is reused for.
const TEST_BLOCK: usize = 32;
/// Train rows per block: 120 rows × 512 features × 4 bytes stay in L2.
const TRAIN_BLOCK: usize = 120;
/// Register tile of the similarity kernel: TI test rows × TJ train rows (12 AVX2
/// accumulators + 4 loaded rows fill the 16 vector registers).
const TI: usize = 4;
const TJ: usize = 3;
/// Features are zero-padded to a multiple of the kernel's lane count.
const LANES: usize = 8;

/// Predicted class of each of the `n_test` rows of `test_x` (row-major, `d` features),
/// from `n_train` labelled rows `train_x`/`train_y`.
///
/// `k` is clipped to `n_train`. Ties in similarity keep the lower train index; ties in
/// the vote go to the lower class. Rows of zeros have similarity 0 to everything.
#[allow(clippy::too_many_arguments)]
pub fn knn_predict(
    train_x: &[f32],
    train_y: &[u32],
    n_train: usize,
    test_x: &[f32],
    n_test: usize,
    d: usize,
    num_classes: usize,
    k: usize,
    temperature: f64,
) -> anyhow::Result<Vec<u32>> {
    if n_train == 0 || d == 0 {
        bail!("kNN: no labelled data ({n_train} examples × {d} features)");
    }
    ensure!(
        train_x.len() == n_train * d,
        "kNN: train feature matrix has {} values, expected {n_train} × {d}",
        train_x.len()
    );
    ensure!(
        test_x.len() == n_test * d,
        "kNN: test feature matrix has {} values, expected {n_test} × {d}",
        test_x.len()
    );
    ensure!(
        train_y.len() == n_train,
        "kNN: {} labels for {n_train} examples",
        train_y.len()
    );
    if let Some((i, &l)) = train_y
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!("kNN: label {l} of example {i} is out of range for {num_classes} classes");
    }
    ensure!(k >= 1, "kNN: k must be at least 1");
    ensure!(
        temperature.is_finite() && temperature > 0.0,
        "kNN: temperature must be > 0, got {temperature}"
    );
    if n_test == 0 {
        return Ok(Vec::new());
    }
    let k = k.min(n_train);

    // Unit rows, zero-padded to whole tiles in both directions.
    let dp = d.div_ceil(LANES) * LANES;
    let train = unit_rows(train_x, d, dp, n_train.div_ceil(TJ) * TJ);
    let test = unit_rows(test_x, d, dp, n_test.div_ceil(TEST_BLOCK) * TEST_BLOCK);

    let mut pred = vec![0u32; n_test.div_ceil(TEST_BLOCK) * TEST_BLOCK];
    pred.par_chunks_mut(TEST_BLOCK)
        .zip(test.par_chunks(TEST_BLOCK * dp))
        .for_each(|(pred, test)| {
            let mut top: Vec<Vec<(f32, u32)>> =
                (0..TEST_BLOCK).map(|_| Vec::with_capacity(k + 1)).collect();
            let mut sims = vec![0f32; TEST_BLOCK * TRAIN_BLOCK];
            for (jb, train) in train.chunks(TRAIN_BLOCK * dp).enumerate() {
                let rows = train.len() / dp;
                similarities(test, train, dp, rows, &mut sims);
                for (list, s) in top.iter_mut().zip(sims.chunks(TRAIN_BLOCK)) {
                    for (j, &s) in s[..rows].iter().enumerate() {
                        let idx = jb * TRAIN_BLOCK + j;
                        if idx < n_train {
                            push_top_k(list, k, s, idx as u32);
                        }
                    }
                }
            }
            let mut votes = vec![0f64; num_classes];
            for (p, list) in pred.iter_mut().zip(&top) {
                votes.iter_mut().for_each(|v| *v = 0.0);
                // exp((s − s_max)/T): the same argmax as exp(s/T), without overflow.
                let s_max = list[0].0 as f64;
                for &(s, j) in list {
                    votes[train_y[j as usize] as usize] += ((s as f64 - s_max) / temperature).exp();
                }
                let mut best = 0;
                for (c, &v) in votes.iter().enumerate() {
                    if v > votes[best] {
                        best = c;
                    }
                }
                *p = best as u32;
            }
        });
    pred.truncate(n_test);
    Ok(pred)
}

/// Copies `x` (row-major, `d` columns) into an `n_pad × dp` matrix of unit-norm rows.
fn unit_rows(x: &[f32], d: usize, dp: usize, n_pad: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_pad * dp];
    out.par_chunks_mut(dp)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| {
            let norm = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
            if norm > 0.0 {
                let inv = 1.0 / norm;
                o.iter_mut()
                    .zip(r)
                    .for_each(|(o, &v)| *o = (v as f64 * inv) as f32);
            }
        });
    out
}

/// sims[i · TRAIN_BLOCK + j] = test_i · train_j for the TEST_BLOCK rows of `test` and the
/// `rows` (a multiple of TJ) rows of `train`, both with row stride `dp` (a multiple of
/// LANES). Uses AVX2 + FMA where the CPU has them.
fn similarities(test: &[f32], train: &[f32], dp: usize, rows: usize, sims: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { similarities_avx2(test, train, dp, rows, sims) };
        return;
    }
    for_each_tile(test, train, dp, rows, sims, tile_dot);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn similarities_avx2(test: &[f32], train: &[f32], dp: usize, rows: usize, sims: &mut [f32]) {
    for_each_tile(test, train, dp, rows, sims, |a, b, dp| {
        tile_dot_avx2(a, b, dp)
    });
}

/// Runs `kernel` over the TI × TJ tiles of the similarity block.
#[inline(always)]
fn for_each_tile(
    test: &[f32],
    train: &[f32],
    dp: usize,
    rows: usize,
    sims: &mut [f32],
    kernel: impl Fn(&[f32], &[f32], usize) -> [[f32; TJ]; TI],
) {
    for i0 in (0..TEST_BLOCK).step_by(TI) {
        let a = &test[i0 * dp..(i0 + TI) * dp];
        for j0 in (0..rows).step_by(TJ) {
            let b = &train[j0 * dp..(j0 + TJ) * dp];
            for (di, row) in kernel(a, b, dp).iter().enumerate() {
                let o = (i0 + di) * TRAIN_BLOCK + j0;
                sims[o..o + TJ].copy_from_slice(row);
            }
        }
    }
}

/// The TI × TJ dot products of TI consecutive rows of `a` with TJ consecutive rows of
/// `b` (row stride `dp`, a multiple of 4), one 4-lane accumulator per pair.
#[inline(always)]
fn tile_dot(a: &[f32], b: &[f32], dp: usize) -> [[f32; TJ]; TI] {
    let ar: [&[f32]; TI] = std::array::from_fn(|i| &a[i * dp..(i + 1) * dp]);
    let br: [&[f32]; TJ] = std::array::from_fn(|j| &b[j * dp..(j + 1) * dp]);
    let mut acc = [[[0f32; 4]; TJ]; TI];
    for t in (0..dp).step_by(4) {
        for i in 0..TI {
            for j in 0..TJ {
                for l in 0..4 {
                    acc[i][j][l] += ar[i][t + l] * br[j][t + l];
                }
            }
        }
    }
    acc.map(|row| row.map(|v| (v[0] + v[1]) + (v[2] + v[3])))
}

/// [`tile_dot`] with 8-lane AVX2 fused multiply-adds (`dp` a multiple of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_dot_avx2(a: &[f32], b: &[f32], dp: usize) -> [[f32; TJ]; TI] {
    use std::arch::x86_64::*;
    assert!(dp.is_multiple_of(8) && a.len() >= TI * dp && b.len() >= TJ * dp);
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); TJ]; TI];
    let mut av = [_mm256_setzero_ps(); TI];
    let mut bv = [_mm256_setzero_ps(); TJ];
    for t in (0..dp).step_by(8) {
        // SAFETY: t + 8 <= dp, so row i < TI of `a` and row j < TJ of `b` are read
        // within the bounds asserted above.
        unsafe {
            for (i, v) in av.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(pa.add(i * dp + t));
            }
            for (j, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(pb.add(j * dp + t));
            }
        }
        for i in 0..TI {
            for j in 0..TJ {
                acc[i][j] = _mm256_fmadd_ps(av[i], bv[j], acc[i][j]);
            }
        }
    }
    let mut out = [[0f32; TJ]; TI];
    let mut lanes = [0f32; 8];
    for i in 0..TI {
        for j in 0..TJ {
            // SAFETY: `lanes` has room for the 8 floats stored.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
            out[i][j] = lanes.iter().sum();
        }
    }
    out
}

/// Keeps `list` the `k` largest (similarity, index) pairs, sorted by decreasing
/// similarity; an equal similarity does not displace an earlier (lower) index.
fn push_top_k(list: &mut Vec<(f32, u32)>, k: usize, s: f32, idx: u32) {
    if list.len() == k && s <= list[k - 1].0 {
        return;
    }
    let pos = list.partition_point(|e| e.0 >= s);
    list.insert(pos, (s, idx));
    list.truncate(k);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_similarities_match_plain_dots() {
        let (n_train, n_test, d) = (37, 45, 13);
        let f = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        let train_x: Vec<f32> = (0..n_train * d).map(f).collect();
        let test_x: Vec<f32> = (0..n_test * d).map(|i| f(i + 99_991)).collect();
        let dp = d.div_ceil(LANES) * LANES;
        let train = unit_rows(&train_x, d, dp, n_train.div_ceil(TJ) * TJ);
        let test = unit_rows(&test_x, d, dp, TEST_BLOCK);
        let rows = train.len() / dp;
        // The dispatched kernel (AVX2 here if the CPU has it) and the portable one.
        let mut dispatched = vec![0f32; TEST_BLOCK * TRAIN_BLOCK];
        similarities(&test, &train, dp, rows, &mut dispatched);
        let mut portable = vec![0f32; TEST_BLOCK * TRAIN_BLOCK];
        for_each_tile(&test, &train, dp, rows, &mut portable, tile_dot);
        for sims in [dispatched, portable] {
            for i in 0..TEST_BLOCK.min(n_test) {
                for j in 0..n_train {
                    let (a, b) = (&test_x[i * d..(i + 1) * d], &train_x[j * d..(j + 1) * d]);
                    let dot: f64 = a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let na: f64 = a.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                    let nb: f64 = b.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                    let want = dot / (na * nb);
                    let got = sims[i * TRAIN_BLOCK + j] as f64;
                    assert!((want - got).abs() < 1e-5, "({i}, {j}): {want} vs {got}");
                }
            }
        }
    }

    #[test]
    fn top_k_keeps_largest_and_earliest() {
        let mut list = Vec::new();
        for (i, s) in [0.5, 0.9, 0.5, 0.1, 0.9, 0.7].into_iter().enumerate() {
            push_top_k(&mut list, 3, s, i as u32);
        }
        assert_eq!(list, vec![(0.9, 1), (0.9, 4), (0.7, 5)]);
    }
}
