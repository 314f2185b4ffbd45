//! 3×3 convolution with stride 1 and padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of
//! outputs comes from a 4×4 block of inputs with 16 multiplies per (input, output) channel pair
//! instead of 36, so the GEMM work of such a layer drops 2.25×.
//!
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` per tile; over channels the 16 element-wise products become
//! 16 GEMMs `M[ξ] = U[ξ] · V[ξ]` (`U[ξ]`: transformed filters, `C_out × C_in`; `V[ξ]`: transformed
//! input tiles, `C_in × tiles`, stored `[tile][channel]`). The transforms only add and halve, so the result differs
//! from the direct sum by rounding alone (≈ 1e-6 of the output's scale).
//!
//! Used by [`super::fused`] for the forward pass, for the input gradient (the same routine with
//! the filter flipped and its channels swapped: the transposed convolution of a 3×3, stride-1,
//! padding-1 layer is again one) and for the weight gradient (`dU[ξ] = Σ dM[ξ] V[ξ]ᵀ`, then
//! `Gᵀ dU G`). The transforms work channels-last, 16 channels per AVX-512 vector, so they cost the
//! same per tile whether a feature map is 28 or 4 pixels wide.

use gemm::Parallelism;
use rayon::prelude::*;

use super::fused::{assume_filled, gemm_fp32, simd, uninit_vec};

/// Transformed filters `U[ξ] = (G g Gᵀ)[ξ]` of `w` `[C_out, C_in, 3, 3]`, `ξ = 4·row + col`, each
/// `U[ξ]` a column-major `C_out × C_in` matrix (`[16][C_in][C_out]`), the layout the GEMM reads
/// without packing; with `for_input_grad`, of the filter of the input gradient instead,
/// `g'[i][o] = rot180(g[o][i])` (`C_in × C_out`, `[16][C_out][C_in]`).
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
                    u[((4 * a + b) * cols + c) * rows + r] = v;
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
/// Fashion-MNIST, first version: 32, 64, 128 and 256 columns all within the machine's noise).
fn group(n: usize, t: usize) -> usize {
    64usize.div_ceil(t).clamp(1, n.max(1))
}

/// Channels per vector: the transforms work on 16 channels of one pixel at a time, so every
/// buffer they touch is channels-last (`[pixel or tile][channel]`, channels padded to a multiple
/// of 16). The GEMMs read and write those layouts through strides.
const L: usize = 16;
type Lanes = [f32; L];

fn padded(c: usize) -> usize {
    c.next_multiple_of(L)
}

#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    let mut r = a;
    for k in 0..L {
        r[k] += b[k];
    }
    r
}

#[inline(always)]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    let mut r = a;
    for k in 0..L {
        r[k] -= b[k];
    }
    r
}

#[inline(always)]
fn neg(a: Lanes) -> Lanes {
    let mut r = a;
    for v in &mut r {
        *v = -*v;
    }
    r
}

#[inline(always)]
fn load(src: &[f32]) -> Lanes {
    let mut r = [0.0f32; L];
    r.copy_from_slice(&src[..L]);
    r
}

#[inline(always)]
fn store(dst: &mut [f32], v: Lanes) {
    dst[..L].copy_from_slice(&v);
}

/// Lanes `c0..c0 + 16` of pixel (y, x) of a channels-last image `[H·W][cp]`; 0 outside it.
#[inline(always)]
fn pixel(img: &[f32], (h, w, cp): (usize, usize, usize), y: usize, x: usize, c0: usize) -> Lanes {
    if y < h && x < w {
        load(&img[(y * w + x) * cp + c0..])
    } else {
        [0.0; L]
    }
}

/// Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]] along one axis.
#[inline(always)]
fn bt(d: [Lanes; 4]) -> [Lanes; 4] {
    [
        sub(d[0], d[2]),
        add(d[1], d[2]),
        sub(d[2], d[1]),
        sub(d[1], d[3]),
    ]
}

/// Aᵀ = [[1,1,1,0],[0,1,−1,−1]] along one axis.
#[inline(always)]
fn at(m: [Lanes; 4]) -> [Lanes; 2] {
    [add(add(m[0], m[1]), m[2]), sub(sub(m[1], m[2]), m[3])]
}

/// A along one axis (the adjoint of [`at`]): `(d₀, d₁) → (d₀, d₀ + d₁, d₀ − d₁, −d₁)`.
#[inline(always)]
fn a(d: [Lanes; 2]) -> [Lanes; 4] {
    [d[0], add(d[0], d[1]), sub(d[0], d[1]), neg(d[1])]
}

/// `dst[p][c] = src[c][p]` for `src` `[C, P]` into `dst` `[P, ld]` (`ld ≥ C`; lanes past C
/// untouched).
#[inline(always)]
fn to_channels_last(src: &[f32], c: usize, p: usize, dst: &mut [f32], ld: usize) {
    const B: usize = 16;
    for c0 in (0..c).step_by(B) {
        for p0 in (0..p).step_by(B) {
            for ci in c0..(c0 + B).min(c) {
                let row = &src[ci * p..][..p];
                for pi in p0..(p0 + B).min(p) {
                    dst[pi * ld + ci] = row[pi];
                }
            }
        }
    }
}

/// `dst[c][p] = src[p][c]` for `src` `[P, ld]` into `dst` `[C, P]` (the inverse of
/// [`to_channels_last`]), writing every element of `dst`.
#[inline(always)]
fn to_channels_first(
    src: &[f32],
    ld: usize,
    c: usize,
    p: usize,
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    const B: usize = 16;
    for c0 in (0..c).step_by(B) {
        for p0 in (0..p).step_by(B) {
            for ci in c0..(c0 + B).min(c) {
                let row = &mut dst[ci * p..][..p];
                for pi in p0..(p0 + B).min(p) {
                    row[pi].write(src[pi * ld + ci]);
                }
            }
        }
    }
}

/// `V[ξ][col0 + tile][c] = (Bᵀ d B)[ξ]` for every 4×4 input block `d` of one channels-last image
/// `xt` `[H·W][cp]` (rows and columns −1 and past the end read as 0); `V[ξ]` starts at `ξ ·
/// stride`, one row of `cp` channels per tile.
#[inline(always)]
fn input_tiles(
    xt: &[f32],
    (h, w, cp): (usize, usize, usize),
    v: &mut [f32],
    col0: usize,
    stride: usize,
) {
    let (th, tw) = (tiles(h), tiles(w));
    for ty in 0..th {
        for tx in 0..tw {
            let col = col0 + ty * tw + tx;
            for c0 in (0..cp).step_by(L) {
                let (y0, x0) = ((2 * ty).wrapping_sub(1), (2 * tx).wrapping_sub(1));
                let px = |r: usize, q: usize| {
                    pixel(xt, (h, w, cp), y0.wrapping_add(r), x0.wrapping_add(q), c0)
                };
                let rows: [[Lanes; 4]; 4] = [0, 1, 2, 3].map(
                    #[inline(always)]
                    |r| bt([px(r, 0), px(r, 1), px(r, 2), px(r, 3)]),
                );
                for j in 0..4 {
                    let vj = bt([rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
                    for (i, val) in vj.into_iter().enumerate() {
                        store(&mut v[(4 * i + j) * stride + col * cp + c0..], val);
                    }
                }
            }
        }
    }
}

/// One channels-last output image `yt` `[H·W][cp]` from `M[ξ][col0 + tile][c]` (`M[ξ]` at
/// `ξ · stride`): `Aᵀ m A` per tile; the last row/column is dropped where H/W is odd.
#[inline(always)]
fn output_tiles(
    m: &[f32],
    col0: usize,
    stride: usize,
    (h, w, cp): (usize, usize, usize),
    yt: &mut [f32],
) {
    let (th, tw) = (tiles(h), tiles(w));
    for ty in 0..th {
        for tx in 0..tw {
            let col = col0 + ty * tw + tx;
            for c0 in (0..cp).step_by(L) {
                let mm = |xi: usize| load(&m[xi * stride + col * cp + c0..]);
                // Aᵀ over rows, for each of the 4 columns, then over columns
                let s: [[Lanes; 2]; 4] = [0, 1, 2, 3].map(
                    #[inline(always)]
                    |j| at([mm(j), mm(4 + j), mm(8 + j), mm(12 + j)]),
                );
                for dy in 0..2 {
                    let y = 2 * ty + dy;
                    if y >= h {
                        break;
                    }
                    let out = at([s[0][dy], s[1][dy], s[2][dy], s[3][dy]]);
                    for (dx, val) in out.into_iter().enumerate() {
                        let x = 2 * tx + dx;
                        if x < w {
                            store(&mut yt[(y * w + x) * cp + c0..], val);
                        }
                    }
                }
            }
        }
    }
}

/// `dM[ξ][col0 + tile][c] = (A dy Aᵀ)[ξ]` for every 2×2 block `dy` of one channels-last gradient
/// image `dyt` `[H·W][cp]` (past the end: 0), the adjoint of [`output_tiles`].
#[inline(always)]
fn gradient_tiles(
    dyt: &[f32],
    (h, w, cp): (usize, usize, usize),
    dm: &mut [f32],
    col0: usize,
    stride: usize,
) {
    let (th, tw) = (tiles(h), tiles(w));
    for ty in 0..th {
        for tx in 0..tw {
            let col = col0 + ty * tw + tx;
            for c0 in (0..cp).step_by(L) {
                let px = |p: usize, q: usize| pixel(dyt, (h, w, cp), 2 * ty + p, 2 * tx + q, c0);
                let rows = [a([px(0, 0), px(0, 1)]), a([px(1, 0), px(1, 1)])];
                for j in 0..4 {
                    for (i, val) in a([rows[0][j], rows[1][j]]).into_iter().enumerate() {
                        store(&mut dm[(4 * i + j) * stride + col * cp + c0..], val);
                    }
                }
            }
        }
    }
}

/// `y[n][o] = Σ_i x[n][i] ⋆ g[o][i]` for `x` `[N, C_in, H, W]`, 3×3 filters transformed by
/// [`transform_filters`] into `u`, stride 1, padding 1: `[N, C_out, H, W]`.
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
    let (img_in, img_out, p) = (c_in * h * w, c_out * h * w, h * w);
    let (cpi, cpo) = (padded(c_in), padded(c_out));
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
            let cols = grp * t;
            let mut v = vec![0.0f32; 16 * cols * cpi];
            let mut m = vec![0.0f32; 16 * cols * cpo];
            // one channels-last image: input (cpi lanes) or output (cpo lanes)
            let mut img = vec![0.0f32; p * cpi.max(cpo)];
            for (gi, out) in out.chunks_mut(grp * img_out).enumerate() {
                let imgs = out.len() / img_out;
                let first = (chunk * per_chunk + gi) * grp;
                for i in 0..imgs {
                    let xn = &x[(first + i) * img_in..][..img_in];
                    simd(
                        #[inline(always)]
                        || {
                            to_channels_last(xn, c_in, p, &mut img, cpi);
                            input_tiles(&img, (h, w, cpi), &mut v, i * t, cols * cpi);
                        },
                    );
                }
                let ld = imgs * t;
                for xi in 0..16 {
                    // M[ξ] (C_out × tiles, channels-last) = U[ξ] (C_out × C_in) · V[ξ] (C_in × tiles)
                    // SAFETY: the three matrices lie inside m, u and v (strides as allocated).
                    unsafe {
                        gemm_fp32(
                            (c_out, ld, c_in),
                            (m.as_mut_ptr().add(xi * cols * cpo), 1, cpo),
                            (u.as_ptr().add(xi * c_out * c_in), 1, c_out),
                            (v.as_ptr().add(xi * cols * cpi), 1, cpi),
                            1.0,
                            false,
                            Parallelism::None,
                        );
                    }
                }
                for i in 0..imgs {
                    let dst = &mut out[i * img_out..][..img_out];
                    simd(
                        #[inline(always)]
                        || {
                            output_tiles(&m, i * t, cols * cpo, (h, w, cpo), &mut img);
                            to_channels_first(&img, cpo, c_out, p, dst);
                        },
                    );
                }
            }
        });
    // SAFETY: to_channels_first writes every (channel, pixel) of every image.
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
    let (img_in, img_out, p) = (c_in * h * w, c_out * h * w, h * w);
    let (cpi, cpo) = (padded(c_in), padded(c_out));
    let groups = n.div_ceil(grp);
    let du_bytes = 16 * c_out * c_in * std::mem::size_of::<f32>();
    let chunks = (DW_PARTIALS_BYTES / du_bytes.max(1))
        .clamp(2, DW_CHUNKS)
        .min(groups);
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let cols = grp * t;
            let mut du = vec![0.0f32; 16 * c_out * c_in];
            let mut v = vec![0.0f32; 16 * cols * cpi];
            let mut dm = vec![0.0f32; 16 * cols * cpo];
            let mut img = vec![0.0f32; p * cpi.max(cpo)];
            for gi in chunk * groups / chunks..(chunk + 1) * groups / chunks {
                let first = gi * grp;
                let imgs = grp.min(n - first);
                let ld = imgs * t;
                for i in 0..imgs {
                    let xn = &x[(first + i) * img_in..][..img_in];
                    let dyn_ = &dy[(first + i) * img_out..][..img_out];
                    simd(
                        #[inline(always)]
                        || {
                            to_channels_last(xn, c_in, p, &mut img, cpi);
                            input_tiles(&img, (h, w, cpi), &mut v, i * t, cols * cpi);
                            to_channels_last(dyn_, c_out, p, &mut img, cpo);
                            gradient_tiles(&img, (h, w, cpo), &mut dm, i * t, cols * cpo);
                        },
                    );
                }
                for xi in 0..16 {
                    // dU[ξ] (C_out × C_in) += dM[ξ] (C_out × tiles) · V[ξ]ᵀ (tiles × C_in)
                    // SAFETY: the three matrices lie inside du, dm and v (strides as allocated).
                    unsafe {
                        gemm_fp32(
                            (c_out, c_in, ld),
                            (du.as_mut_ptr().add(xi * c_out * c_in), 1, c_out),
                            (dm.as_ptr().add(xi * cols * cpo), 1, cpo),
                            (v.as_ptr().add(xi * cols * cpi), cpi, 1),
                            1.0,
                            true,
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
            let d = |xi: usize| du[(xi * c_in + i) * c_out + o];
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
