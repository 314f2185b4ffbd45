//! 3×3 convolution with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of
//! outputs comes from a 4×4 block of inputs with 16 multiplies per (input, output) channel pair
//! instead of 36, so the GEMM work of such a layer drops 2.25×.
//!
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ)] A` per tile; over channels the 16 element-wise products become
//! 16 GEMMs `M[ξ] = U[ξ] · V[ξ]` (`U`: transformed filters `[16][C_out][C_in]`, `V`: transformed
//! input tiles `[16][C_in][tiles]`). The transforms only add and halve, so the result differs
//! from the direct sum by rounding alone (≈ 1e-6 of the output's scale).
//!
//! Used by [`super::fused`] for the forward pass and, with the filter flipped and its channels
//! swapped, for the input gradient of such layers (the transposed convolution of a 3×3, stride-1,
//! padding-1 layer is again one). The weight gradient keeps im2col.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::fused::{assume_filled, simd, uninit_vec};

/// Transformed filters `U[ξ][o][i] = (G g Gᵀ)[ξ]` of `w` `[C_out, C_in, 3, 3]`, `ξ = 4·row + col`;
/// with `for_input_grad`, of the filter of the input gradient instead, `g'[i][o] = rot180(g[o][i])`
/// (`[16][C_in][C_out]`).
pub(super) fn transform_filters(
    w: &[f32],
    c_out: usize,
    c_in: usize,
    for_input_grad: bool,
) -> Vec<f32> {
    assert_eq!(
        w.len(),
        c_out * c_in * 9,
        "winograd: filter is not [C_out, C_in, 3, 3]"
    );
    let (rows, cols) = if for_input_grad {
        (c_in, c_out)
    } else {
        (c_out, c_in)
    };
    let mut u = vec![0.0f32; 16 * rows * cols];
    for o in 0..c_out {
        for i in 0..c_in {
            let g = &w[(o * c_in + i) * 9..][..9];
            let g: [f32; 9] = std::array::from_fn(|k| if for_input_grad { g[8 - k] } else { g[k] });
            // G g: 4×3, then (G g) Gᵀ: 4×4. G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]].
            let mut t = [[0.0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                t[0][c] = g0;
                t[1][c] = 0.5 * (g0 + g1 + g2);
                t[2][c] = 0.5 * (g0 - g1 + g2);
                t[3][c] = g2;
            }
            let (r, c) = if for_input_grad { (i, o) } else { (o, i) };
            for (a, t) in t.iter().enumerate() {
                let row = [
                    t[0],
                    0.5 * (t[0] + t[1] + t[2]),
                    0.5 * (t[0] - t[1] + t[2]),
                    t[2],
                ];
                for (b, v) in row.into_iter().enumerate() {
                    u[((4 * a + b) * rows + r) * cols + c] = v;
                }
            }
        }
    }
    u
}

/// Tiles along one side of an output of `size`: 2 outputs each.
fn tiles(size: usize) -> usize {
    size.div_ceil(2)
}

/// Images per group: one group's 16 GEMMs get ≥ 64 columns (tiles), so that small late feature
/// maps still make GEMMs worth their packing while V and M stay small (ResNet-18 step on
/// Fashion-MNIST: 32, 64, 128 and 256 columns within the machine's noise, 7.5–8.8 s).
fn group(n: usize, t: usize) -> usize {
    64usize.div_ceil(t).clamp(1, n.max(1))
}

/// `y[n][o] = Σ_i x[n][i] ⋆ g[o][i]` for `x` `[N, C_in, H, W]`, 3×3 filters transformed by
/// [`transform_filters`] into `u` `[16][C_out][C_in]`, stride 1, padding 1: `[N, C_out, H, W]`.
pub(super) fn conv3x3(
    x: &[f32],
    u: &[f32],
    (n, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
) -> Vec<f32> {
    assert_eq!(
        x.len(),
        n * c_in * h * w,
        "winograd: input is not [N, C_in, H, W]"
    );
    assert_eq!(
        u.len(),
        16 * c_out * c_in,
        "winograd: filters are not [16, C_out, C_in]"
    );
    let (th, tw) = (tiles(h), tiles(w));
    let t = th * tw;
    let grp = group(n, t);
    let (img_in, img_out) = (c_in * h * w, c_out * h * w);
    let mut out = uninit_vec(n * img_out);
    if out.is_empty() {
        return vec![];
    }
    // A few chunks of consecutive groups per thread, each allocating its buffers once.
    let groups = n.div_ceil(grp);
    let per_chunk = groups.div_ceil(4 * rayon::current_num_threads()).max(1);
    out.par_chunks_mut(per_chunk * grp * img_out)
        .enumerate()
        .for_each(|(chunk, out)| {
            let mut v = vec![0.0f32; 16 * c_in * grp * t];
            let mut m = vec![0.0f32; 16 * c_out * grp * t];
            let mut scratch = vec![0.0f32; 4 * (2 * th + 2) * tw + 2 * tw + 2];
            for (gi, out) in out.chunks_mut(grp * img_out).enumerate() {
                let imgs = out.len() / img_out;
                let ld = imgs * t;
                let first = (chunk * per_chunk + gi) * grp;
                for i in 0..imgs {
                    let xn = &x[(first + i) * img_in..][..img_in];
                    for c in 0..c_in {
                        simd(
                            #[inline(always)]
                            || {
                                input_tiles(
                                    &xn[c * h * w..][..h * w],
                                    (h, w),
                                    &mut scratch,
                                    &mut v,
                                    c * ld + i * t,
                                    c_in * ld,
                                )
                            },
                        );
                    }
                }
                for xi in 0..16 {
                    // M[ξ] (C_out × tiles) = U[ξ] (C_out × C_in) · V[ξ] (C_in × tiles)
                    unsafe {
                        gemm(
                            c_out,
                            ld,
                            c_in,
                            m.as_mut_ptr().add(xi * c_out * ld),
                            1,
                            ld as isize,
                            false,
                            u.as_ptr().add(xi * c_out * c_in),
                            1,
                            c_in as isize,
                            v.as_ptr().add(xi * c_in * ld),
                            1,
                            ld as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
                for i in 0..imgs {
                    for o in 0..c_out {
                        let dst = &mut out[(i * c_out + o) * h * w..][..h * w];
                        simd(
                            #[inline(always)]
                            || {
                                output_tiles(
                                    &m,
                                    o * ld + i * t,
                                    c_out * ld,
                                    (h, w),
                                    &mut scratch,
                                    dst,
                                )
                            },
                        );
                    }
                }
            }
        });
    // SAFETY: output_tiles writes every pixel of every (image, channel) plane of every group.
    unsafe { assume_filled(out) }
}

/// Most chunks of image groups in [`weight_grad3x3`]. The count depends on the shapes only, not on
/// the thread count, so the dW sum is the same on every run (same seed, same numbers).
const DW_CHUNKS: usize = 16;

/// Bytes all chunks' partial `dU` may take together: a 512×512 layer's `dU` is 16 MiB, and 16 of
/// them raised the ResNet-18 step's peak memory by ≈ 130 MiB.
const DW_PARTIALS_BYTES: usize = 32 << 20;

/// The weight gradient `[C_out, C_in, 3, 3]` of [`conv3x3`] for input `x` `[N, C_in, H, W]` and
/// output gradient `dy` `[N, C_out, H, W]`, in the Winograd domain: `dU[ξ] = Σ dM[ξ] · V[ξ]ᵀ`
/// over all tiles (`dM = A dY Aᵀ`, the adjoint of the output transform; `V` the input tiles),
/// then `dg = Gᵀ dU G` (the adjoint of the filter transform).
pub(super) fn weight_grad3x3(
    x: &[f32],
    dy: &[f32],
    (n, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
) -> Vec<f32> {
    assert_eq!(
        x.len(),
        n * c_in * h * w,
        "winograd: input is not [N, C_in, H, W]"
    );
    assert_eq!(
        dy.len(),
        n * c_out * h * w,
        "winograd: gradient is not [N, C_out, H, W]"
    );
    let (th, tw) = (tiles(h), tiles(w));
    let t = th * tw;
    let grp = group(n, t);
    let (img_in, img_out) = (c_in * h * w, c_out * h * w);
    let groups = n.div_ceil(grp);
    let du_bytes = 16 * c_out * c_in * std::mem::size_of::<f32>();
    let chunks = (DW_PARTIALS_BYTES / du_bytes.max(1))
        .clamp(2, DW_CHUNKS)
        .min(groups);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let mut du = vec![0.0f32; 16 * c_out * c_in];
            let mut v = vec![0.0f32; 16 * c_in * grp * t];
            let mut dm = vec![0.0f32; 16 * c_out * grp * t];
            let mut scratch = vec![0.0f32; 4 * (2 * th + 2) * tw + 2 * tw + 2];
            for gi in chunk * groups / chunks..(chunk + 1) * groups / chunks {
                let first = gi * grp;
                let imgs = grp.min(n - first);
                let ld = imgs * t;
                for i in 0..imgs {
                    let xn = &x[(first + i) * img_in..][..img_in];
                    for c in 0..c_in {
                        simd(
                            #[inline(always)]
                            || {
                                input_tiles(
                                    &xn[c * h * w..][..h * w],
                                    (h, w),
                                    &mut scratch,
                                    &mut v,
                                    c * ld + i * t,
                                    c_in * ld,
                                )
                            },
                        );
                    }
                    let dyn_ = &dy[(first + i) * img_out..][..img_out];
                    for o in 0..c_out {
                        simd(
                            #[inline(always)]
                            || {
                                gradient_tiles(
                                    &dyn_[o * h * w..][..h * w],
                                    (h, w),
                                    &mut scratch,
                                    &mut dm,
                                    o * ld + i * t,
                                    c_out * ld,
                                )
                            },
                        );
                    }
                }
                for xi in 0..16 {
                    // dU[ξ] (C_out × C_in) += dM[ξ] (C_out × tiles) · V[ξ]ᵀ (tiles × C_in)
                    unsafe {
                        gemm(
                            c_out,
                            c_in,
                            ld,
                            du.as_mut_ptr().add(xi * c_out * c_in),
                            1,
                            c_in as isize,
                            true,
                            dm.as_ptr().add(xi * c_out * ld),
                            1,
                            ld as isize,
                            v.as_ptr().add(xi * c_in * ld),
                            ld as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
            }
            du
        })
        .collect();
    let mut du = vec![0.0f32; 16 * c_out * c_in];
    for part in &partials {
        du.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    // dg = Gᵀ dU G, G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]]: per (output, input) channel pair.
    let gt = |d: [f32; 4]| {
        [
            d[0] + 0.5 * (d[1] + d[2]),
            0.5 * (d[1] - d[2]),
            0.5 * (d[1] + d[2]) + d[3],
        ]
    };
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    for o in 0..c_out {
        for i in 0..c_in {
            let d = |xi: usize| du[(xi * c_out + o) * c_in + i];
            // columns first: for each row a of dU, 4 → 3; then rows: 4 → 3
            let rows: [[f32; 3]; 4] =
                std::array::from_fn(|a| gt([d(4 * a), d(4 * a + 1), d(4 * a + 2), d(4 * a + 3)]));
            let g = &mut dw[(o * c_in + i) * 9..][..9];
            for c in 0..3 {
                let col = gt([rows[0][c], rows[1][c], rows[2][c], rows[3][c]]);
                for (r, v) in col.into_iter().enumerate() {
                    g[r * 3 + c] = v;
                }
            }
        }
    }
    dw
}

/// `V[ξ][col0 + tile] = (Bᵀ d B)[ξ]` for every 4×4 input block `d` of one channel plane `x`
/// `[H, W]` (rows and columns −1 and past the end read as 0); `V[ξ]` starts at `ξ · stride`.
/// Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]], applied to rows, then to columns.
#[inline(always)]
fn input_tiles(
    x: &[f32],
    (h, w): (usize, usize),
    scratch: &mut [f32],
    v: &mut [f32],
    col0: usize,
    stride: usize,
) {
    let (th, tw) = (tiles(h), tiles(w));
    let rows = 2 * th + 2;
    let (hbuf, prow) = scratch.split_at_mut(4 * rows * tw);
    let prow = &mut prow[..2 * tw + 2];
    // Row transform of every padded row r (input row r − 1): H[j][r][tx] from the 4 padded
    // columns 2tx..2tx+3 (input columns 2tx−1..2tx+2).
    for r in 0..rows {
        prow.fill(0.0);
        if (1..=h).contains(&r) {
            prow[1..=w].copy_from_slice(&x[(r - 1) * w..][..w]);
        }
        let (h01, h23) = hbuf.split_at_mut(2 * rows * tw);
        let (h0, h1) = h01.split_at_mut(rows * tw);
        let (h2, h3) = h23.split_at_mut(rows * tw);
        let (h0, h1, h2, h3) = (
            &mut h0[r * tw..][..tw],
            &mut h1[r * tw..][..tw],
            &mut h2[r * tw..][..tw],
            &mut h3[r * tw..][..tw],
        );
        for tx in 0..tw {
            let (a, b, c, d) = (
                prow[2 * tx],
                prow[2 * tx + 1],
                prow[2 * tx + 2],
                prow[2 * tx + 3],
            );
            h0[tx] = a - c;
            h1[tx] = b + c;
            h2[tx] = c - b;
            h3[tx] = b - d;
        }
    }
    // Column transform over the 4 padded rows 2ty..2ty+3 of each tile row.
    for j in 0..4 {
        let hj = &hbuf[j * rows * tw..][..rows * tw];
        for ty in 0..th {
            let r = |k: usize| &hj[(2 * ty + k) * tw..][..tw];
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            let at = |a: usize| (4 * a + j) * stride + col0 + ty * tw;
            let (v0, rest) = v[at(0)..].split_at_mut(4 * stride);
            let v1 = &mut rest[..tw];
            for tx in 0..tw {
                v0[tx] = r0[tx] - r2[tx];
                v1[tx] = r1[tx] + r2[tx];
            }
            let (v2, rest) = v[at(2)..].split_at_mut(4 * stride);
            let v3 = &mut rest[..tw];
            for tx in 0..tw {
                v2[tx] = r2[tx] - r1[tx];
                v3[tx] = r1[tx] - r3[tx];
            }
        }
    }
}

/// `dM[ξ][col0 + tile] = (A dy Aᵀ)[ξ]` for every 2×2 block `dy` of one output-gradient plane
/// `[H, W]` (past the end: 0), the adjoint of [`output_tiles`]: per axis
/// `(d₀, d₁) → (d₀, d₀ + d₁, d₀ − d₁, −d₁)`.
#[inline(always)]
fn gradient_tiles(
    dy: &[f32],
    (h, w): (usize, usize),
    scratch: &mut [f32],
    dm: &mut [f32],
    col0: usize,
    stride: usize,
) {
    let (th, tw) = (tiles(h), tiles(w));
    let (s, _) = scratch.split_at_mut(4 * tw);
    let (e, o) = s.split_at_mut(2 * tw);
    for ty in 0..th {
        // even (e) and odd (o) columns of the tile row's two gradient rows, 0 past the edges
        for p in 0..2 {
            let (ep, op) = (&mut e[p * tw..][..tw], &mut o[p * tw..][..tw]);
            let y = 2 * ty + p;
            if y >= h {
                ep.fill(0.0);
                op.fill(0.0);
                continue;
            }
            let row = &dy[y * w..][..w];
            let full = w / 2;
            for tx in 0..full {
                ep[tx] = row[2 * tx];
                op[tx] = row[2 * tx + 1];
            }
            if w % 2 == 1 {
                ep[full] = row[w - 1];
                op[full] = 0.0;
            }
        }
        let (e0, e1) = e.split_at(tw);
        let (o0, o1) = o.split_at(tw);
        for b in 0..4 {
            let at = |a: usize| (4 * a + b) * stride + col0 + ty * tw;
            let comb = |ev: f32, od: f32| match b {
                0 => ev,
                1 => ev + od,
                2 => ev - od,
                _ => -od,
            };
            for a in 0..4 {
                let d = &mut dm[at(a)..][..tw];
                for tx in 0..tw {
                    let (r0, r1) = (comb(e0[tx], o0[tx]), comb(e1[tx], o1[tx]));
                    d[tx] = match a {
                        0 => r0,
                        1 => r0 + r1,
                        2 => r0 - r1,
                        _ => -r1,
                    };
                }
            }
        }
    }
}

/// One output channel plane `dst` `[H, W]` from `M[ξ][col0 + tile]` (`M[ξ]` at `ξ · stride`):
/// `Aᵀ m A` per tile, Aᵀ = [[1,1,1,0],[0,1,−1,−1]]; the last row/column is dropped where H/W
/// is odd.
#[inline(always)]
fn output_tiles(
    m: &[f32],
    col0: usize,
    stride: usize,
    (h, w): (usize, usize),
    scratch: &mut [f32],
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    let (th, tw) = (tiles(h), tiles(w));
    let (s, _) = scratch.split_at_mut(8 * tw);
    let (s0, s1) = s.split_at_mut(4 * tw);
    for ty in 0..th {
        let mm = |xi: usize| &m[xi * stride + col0 + ty * tw..][..tw];
        // Rows of Aᵀ m: s0[j] = m0j + m1j + m2j, s1[j] = m1j − m2j − m3j.
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mm(j), mm(4 + j), mm(8 + j), mm(12 + j));
            let (a, b) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
            for tx in 0..tw {
                a[tx] = m0[tx] + m1[tx] + m2[tx];
                b[tx] = m1[tx] - m2[tx] - m3[tx];
            }
        }
        for (dy, s) in [&*s0, &*s1].into_iter().enumerate() {
            let y = 2 * ty + dy;
            if y >= h {
                break;
            }
            let row = &mut dst[y * w..][..w];
            let (c0, c1, c2, c3) = (&s[..tw], &s[tw..2 * tw], &s[2 * tw..3 * tw], &s[3 * tw..]);
            let full = w / 2;
            for tx in 0..full {
                row[2 * tx].write(c0[tx] + c1[tx] + c2[tx]);
                row[2 * tx + 1].write(c1[tx] - c2[tx] - c3[tx]);
            }
            if w % 2 == 1 {
                row[w - 1].write(c0[full] + c1[full] + c2[full]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 3×3, stride-1, padding-1 correlation in f64.
    fn direct(
        x: &[f32],
        w: &[f32],
        (n, ci, h, wd): (usize, usize, usize, usize),
        co: usize,
    ) -> Vec<f64> {
        let mut y = vec![0.0f64; n * co * h * wd];
        for b in 0..n {
            for o in 0..co {
                for r in 0..h {
                    for c in 0..wd {
                        let mut s = 0.0f64;
                        for i in 0..ci {
                            for ki in 0..3 {
                                for kj in 0..3 {
                                    let (yy, xx) = (r + ki, c + kj);
                                    if yy >= 1 && yy <= h && xx >= 1 && xx <= wd {
                                        s += x[((b * ci + i) * h + yy - 1) * wd + xx - 1] as f64
                                            * w[((o * ci + i) * 3 + ki) * 3 + kj] as f64;
                                    }
                                }
                            }
                        }
                        y[((b * co + o) * h + r) * wd + c] = s;
                    }
                }
            }
        }
        y
    }

    fn pseudo(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn winograd_matches_the_direct_sums_output_input_and_weight_gradients() {
        // (N, C_in, H, W, C_out): odd and even sides, 1×1 and 1×n planes, several groups.
        for (k, &(n, ci, h, w, co)) in [
            (2, 3, 7, 6, 5),
            (1, 1, 1, 1, 1),
            (3, 2, 1, 9, 4),
            (2, 4, 8, 8, 3),
            (70, 3, 4, 4, 6),
            (1, 17, 33, 35, 2),
        ]
        .iter()
        .enumerate()
        {
            let x = pseudo(n * ci * h * w, 1 + k as u32);
            let wt = pseudo(co * ci * 9, 100 + k as u32);
            let want = direct(&x, &wt, (n, ci, h, w), co);
            let got = conv3x3(
                &x,
                &transform_filters(&wt, co, ci, false),
                (n, ci, h, w),
                co,
            );
            let scale = want.iter().fold(1e-6f64, |a, v| a.max(v.abs()));
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    ((*g as f64) - e).abs() <= 2e-6 * scale,
                    "case {k} [{i}]: {g} vs {e}"
                );
            }
            // Weight gradient: dW[o][i][ki][kj] = Σ dy[o][r][c] · x_pad[i][r + ki][c + kj].
            let dy0 = pseudo(n * co * h * w, 300 + k as u32);
            let got = weight_grad3x3(&x, &dy0, (n, ci, h, w), co);
            let mut want = vec![0.0f64; co * ci * 9];
            for b in 0..n {
                for o in 0..co {
                    for i in 0..ci {
                        for q in 0..9 {
                            let (ki, kj) = (q / 3, q % 3);
                            let mut s = 0.0f64;
                            for r in 0..h {
                                for c in 0..w {
                                    let (yy, xx) = (r + ki, c + kj);
                                    if yy >= 1 && yy <= h && xx >= 1 && xx <= w {
                                        s += dy0[((b * co + o) * h + r) * w + c] as f64
                                            * x[((b * ci + i) * h + yy - 1) * w + xx - 1] as f64;
                                    }
                                }
                            }
                            want[(o * ci + i) * 9 + q] += s;
                        }
                    }
                }
            }
            let scale = want.iter().fold(1e-6f64, |a, v| a.max(v.abs()));
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    ((*g as f64) - e).abs() <= 4e-6 * scale,
                    "case {k} dW [{i}]: {g} vs {e}"
                );
            }
            // Input gradient: dX = conv(dY, rot180(Wᵀ)); check against the adjoint of `direct`
            // through <conv(x), dy> = <x, dX>, element by element via the direct transposed sum.
            let dy = pseudo(n * co * h * w, 200 + k as u32);
            let dx = conv3x3(
                &dy,
                &transform_filters(&wt, co, ci, true),
                (n, co, h, w),
                ci,
            );
            let mut flipped = vec![0.0f32; ci * co * 9];
            for o in 0..co {
                for i in 0..ci {
                    for q in 0..9 {
                        flipped[(i * co + o) * 9 + q] = wt[(o * ci + i) * 9 + 8 - q];
                    }
                }
            }
            let want = direct(&dy, &flipped, (n, co, h, w), ci);
            let scale = want.iter().fold(1e-6f64, |a, v| a.max(v.abs()));
            for (i, (g, e)) in dx.iter().zip(&want).enumerate() {
                assert!(
                    ((*g as f64) - e).abs() <= 2e-6 * scale,
                    "case {k} dX [{i}]: {g} vs {e}"
                );
            }
        }
    }
}
