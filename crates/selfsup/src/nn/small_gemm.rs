//! Register-tiled fp32 products for the attention kernels' per-head matrices (a few rows × ≤ T
//! columns × head width). The `gemm` crate packs its operands and sets up per call, which costs
//! more than the arithmetic at these sizes and forces the causal blocks to be large (32 rows);
//! this kernel reads its operands in place, so the blocks can be small and the masked triangle
//! is almost entirely skipped.
//!
//! Each output element is `alpha · Σₚ lhs[i, p] · rhs[p, j]`, accumulated over `p` in order with
//! one FMA per term, as the `gemm` crate's microkernel does. These products stay fp32 whatever
//! [`super::bf16_gemm::matmul_precision`] says (in bf16 the GPT step was no faster with the
//! `gemm`-crate path: 160–169 vs 165–167 ms).

use gemm::Parallelism;

/// Rows per register tile.
const MR: usize = 4;
/// 16-lane vectors per register tile (64 columns): 4 × 4 accumulators + 4 operand vectors.
const NV: usize = 4;

/// Whether [`small_gemm`] runs the AVX-512 kernel (else the `gemm` crate); callers size their
/// blocks by it.
pub(super) fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::fused::simd_level() == 2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[m×n] = alpha · lhs[m×k] · rhs[k×n]`, overwriting `dst` (which may be uninitialized).
/// `dst` is (pointer, row stride) with contiguous rows, `lhs` (pointer, row stride, column
/// stride), `rhs` (pointer, row stride) with contiguous rows.
///
/// # Safety
/// The pointers with their strides must address valid memory for the given sizes, `dst` not
/// overlapping the others.
pub(super) unsafe fn small_gemm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize),
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: fast() checked AVX-512F; the caller vouches for the memory.
        return unsafe { avx512::gemm(m, n, k, dst, lhs, rhs, alpha) };
    }
    unsafe {
        super::fused::gemm_fp32(
            (m, n, k),
            (dst.0, dst.1, 1),
            lhs,
            (rhs.0, rhs.1, 1),
            alpha,
            false,
            Parallelism::None,
        )
    }
}

/// `dst[c × t] = src[t × c]ᵀ`, `src` rows `stride` apart: one head's keys (or values) turned so
/// that the products with them read contiguous rows.
pub(super) fn transpose(src: &[f32], stride: usize, t: usize, c: usize, dst: &mut [f32]) {
    assert!(dst.len() >= c * t && (t == 0 || src.len() >= (t - 1) * stride + c));
    let (mut j0, mut p0) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: fast() checked AVX-512F; the blocks lie inside the slices checked above.
        unsafe { avx512::transpose_blocks(src, stride, t, c, dst) };
        (j0, p0) = (t / 16 * 16, c / 16 * 16);
    }
    // What the 16 × 16 blocks left: the last rows (j ≥ j0), then the last columns (p ≥ p0).
    for j in 0..t {
        let from = if j >= j0 { 0 } else { p0 };
        for p in from..c {
            dst[p * t + j] = src[j * stride + p];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NV};
    use std::arch::x86_64::*;

    /// Lanes `0..len` (at most 16) set.
    #[inline(always)]
    fn low_mask(len: usize) -> u16 {
        if len >= 16 {
            u16::MAX
        } else {
            (1u16 << len) - 1
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        (dst, ldd): (*mut f32, usize),
        (lhs, lrs, lcs): (*const f32, usize, usize),
        (rhs, ldr): (*const f32, usize),
        alpha: f32,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(16 * NV);
            let nv = cols.div_ceil(16);
            let mask = low_mask(cols - 16 * (nv - 1));
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(MR);
                // SAFETY: tile (i0.., j0..) lies inside the caller's matrices.
                unsafe {
                    let d = dst.add(i0 * ldd + j0);
                    let l = lhs.add(i0 * lrs);
                    let r = rhs.add(j0);
                    let args = (k, d, ldd, l, lrs, lcs, r, ldr, mask, alpha);
                    match (rows, nv) {
                        (4, 4) => tile::<4, 4>(args),
                        (4, 3) => tile::<4, 3>(args),
                        (4, 2) => tile::<4, 2>(args),
                        (4, 1) => tile::<4, 1>(args),
                        (3, 4) => tile::<3, 4>(args),
                        (3, 3) => tile::<3, 3>(args),
                        (3, 2) => tile::<3, 2>(args),
                        (3, 1) => tile::<3, 1>(args),
                        (2, 4) => tile::<2, 4>(args),
                        (2, 3) => tile::<2, 3>(args),
                        (2, 2) => tile::<2, 2>(args),
                        (2, 1) => tile::<2, 1>(args),
                        (1, 4) => tile::<1, 4>(args),
                        (1, 3) => tile::<1, 3>(args),
                        (1, 2) => tile::<1, 2>(args),
                        _ => tile::<1, 1>(args),
                    }
                }
                i0 += rows;
            }
            j0 += cols;
        }
    }

    /// The full 16 × 16 blocks of [`super::transpose`], in registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_blocks(
        src: &[f32],
        stride: usize,
        t: usize,
        c: usize,
        dst: &mut [f32],
    ) {
        for j0 in (0..t / 16 * 16).step_by(16) {
            for p0 in (0..c / 16 * 16).step_by(16) {
                // SAFETY: rows j0..j0+16, columns p0..p0+16 of src and the transposed block of
                // dst are inside the slices (the caller checked their lengths).
                unsafe {
                    let mut rows = [_mm512_setzero_si512(); 16];
                    for (r, row) in rows.iter_mut().enumerate() {
                        *row = _mm512_loadu_si512(src.as_ptr().add((j0 + r) * stride + p0).cast());
                    }
                    let cols = crate::nn::bf16_gemm::transpose16(rows);
                    for (q, col) in cols.iter().enumerate() {
                        _mm512_storeu_si512(dst.as_mut_ptr().add((p0 + q) * t + j0).cast(), *col);
                    }
                }
            }
        }
    }

    type TileArgs = (
        usize,
        *mut f32,
        usize,
        *const f32,
        usize,
        usize,
        *const f32,
        usize,
        u16,
        f32,
    );

    /// One `R × 16·V` tile of the output, the last vector of each row masked by `mask`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const V: usize>(
        (k, dst, ldd, lhs, lrs, lcs, rhs, ldr, mask, alpha): TileArgs,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for p in 0..k {
            // SAFETY: row p of rhs has the tile's columns (masked past n); lhs (i, p) exists.
            unsafe {
                let row = rhs.add(p * ldr);
                let mut b = [_mm512_setzero_ps(); V];
                for (v, bv) in b.iter_mut().enumerate() {
                    *bv = if v + 1 == V {
                        _mm512_maskz_loadu_ps(mask, row.add(16 * v))
                    } else {
                        _mm512_loadu_ps(row.add(16 * v))
                    };
                }
                let a = lhs.add(p * lcs);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let ar = _mm512_set1_ps(*a.add(r * lrs));
                    for (accv, bv) in acc_r.iter_mut().zip(&b) {
                        *accv = _mm512_fmadd_ps(ar, *bv, *accv);
                    }
                }
            }
        }
        let scale = _mm512_set1_ps(alpha);
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, accv) in acc_r.iter().enumerate() {
                // alpha = 1 multiplies exactly, as the gemm crate's `beta` would.
                let x = _mm512_mul_ps(*accv, scale);
                // SAFETY: inside the tile; the last vector is masked past n.
                unsafe {
                    let out = dst.add(r * ldd + 16 * v);
                    if v + 1 == V {
                        _mm512_mask_storeu_ps(out, mask, x);
                    } else {
                        _mm512_storeu_ps(out, x);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::small_gemm;

    /// Every element lands in place, for sizes with and without partial 16 × 16 blocks.
    #[test]
    fn transpose_moves_every_element() {
        for &(t, c, stride) in &[
            (1, 1, 1),
            (16, 16, 16),
            (128, 64, 768),
            (37, 20, 45),
            (5, 33, 40),
        ] {
            let src: Vec<f32> = (0..(t - 1) * stride + c).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; c * t];
            super::transpose(&src, stride, t, c, &mut dst);
            for j in 0..t {
                for p in 0..c {
                    assert_eq!(
                        dst[p * t + j],
                        src[j * stride + p],
                        "({t},{c},{stride}) [{j},{p}]"
                    );
                }
            }
        }
    }

    /// Against f64 sums, over shapes with partial tiles in both directions and a strided
    /// (transposed) left operand.
    #[test]
    fn small_gemm_matches_f64_sums() {
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, k, transposed) in &[
            (1, 1, 1, false),
            (4, 64, 64, false),
            (8, 128, 64, true),
            (7, 70, 13, false),
            (5, 17, 100, true),
            (3, 143, 9, false),
        ] {
            let lhs: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let ldr = n + 3;
            let rhs: Vec<f32> = (0..k * ldr).map(|_| rnd()).collect();
            let ldd = n + 5;
            let mut dst = vec![f32::NAN; m * ldd];
            // lhs[i, p] at i*k + p, or, transposed, at p*m + i.
            let (lrs, lcs) = if transposed { (1, m) } else { (k, 1) };
            unsafe {
                small_gemm(
                    (m, n, k),
                    (dst.as_mut_ptr(), ldd),
                    (lhs.as_ptr(), lrs, lcs),
                    (rhs.as_ptr(), ldr),
                    0.75,
                )
            };
            for i in 0..m {
                for j in 0..ldd {
                    let got = dst[i * ldd + j];
                    if j >= n {
                        assert!(got.is_nan(), "({m},{n},{k}) wrote past column {n}");
                        continue;
                    }
                    let want: f64 = (0..k)
                        .map(|p| lhs[i * lrs + p * lcs] as f64 * rhs[p * ldr + j] as f64)
                        .sum::<f64>()
                        * 0.75;
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "({m},{n},{k},{transposed}) [{i},{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
