//! Opt-in bf16 matrix products with fp32 accumulation, for the fused CPU kernels' GEMMs (linear
//! layers and convolutions; attention and everything element-wise stay fp32).
//!
//! This is PyTorch's `torch.backends.mkldnn.matmul.fp32_precision = "bf16"` (CUDA's
//! `set_float32_matmul_precision("medium")`): tensors, weights, optimizer state and gradients stay
//! fp32; only the two inputs of each large matrix product are rounded to bf16 (to nearest, ties
//! to even) while they are packed, and the products are summed in fp32 by AVX512_BF16's
//! `vdpbf16ps`, which does twice the multiply-adds per cycle of fp32 FMAs on Zen 4 and recent
//! Xeons. Each product then carries a relative error of about 2⁻⁸ per input (bf16 has 8 mantissa
//! bits) instead of fp32's 2⁻²⁴, so losses drift from the fp32 run by ~1e-3 relative over a few
//! hundred steps: fine for training, not for bit-for-bit parity, hence off by default.

use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

/// Precision of the fused kernels' matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// fp32 inputs, fp32 accumulation (default).
    #[default]
    Fp32,
    /// bf16 inputs, fp32 accumulation (needs AVX512_BF16).
    Bf16,
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatmulPrecision::Fp32 => "fp32",
            MatmulPrecision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" | "f32" | "highest" => Ok(MatmulPrecision::Fp32),
            "bf16" | "medium" => Ok(MatmulPrecision::Bf16),
            _ => Err(format!(
                "unknown matmul precision {s:?} (expected fp32 or bf16)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--matmul-precision bf16 needs a CPU with AVX512_BF16 (Zen 4 and later, Xeon Cooper Lake / Sapphire Rapids and later); this one has none")]
pub struct Bf16Unsupported;

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide precision of the fused kernels' matrix products (like PyTorch's global
/// switch). Fails, leaving it unchanged, when bf16 is asked for on a CPU without AVX512_BF16.
pub fn set_matmul_precision(p: MatmulPrecision) -> Result<(), Bf16Unsupported> {
    if p == MatmulPrecision::Bf16 && !bf16_supported() {
        return Err(Bf16Unsupported);
    }
    PRECISION.store(p as u8, Ordering::Relaxed);
    Ok(())
}

/// The current process-wide matmul precision.
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => MatmulPrecision::Fp32,
        _ => MatmulPrecision::Bf16,
    }
}

/// Whether this CPU runs the bf16 kernel.
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a product of these sizes goes to the bf16 kernel: bf16 is on and the product is large
/// enough for its packing (a bf16 copy of both inputs) to pay off.
pub(super) fn use_bf16((m, n, k): (usize, usize, usize)) -> bool {
    matmul_precision() == MatmulPrecision::Bf16 && m >= 16 && n >= 16 && k >= 16
}

/// Rows (broadcast operand) and columns (vector operand, two 16-lane registers) of the register
/// tile: 24 accumulators + 2 B registers + 1 broadcast of the 32 registers.
const MR: usize = 12;
const NR: usize = 32;
/// Row panels per parallel task: a task keeps its A block (`MC_PANELS·MR` rows × k) in L2 while it
/// streams every B panel once.
const MC_PANELS: usize = 4;

/// fp32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = (b + 0x7fff + ((b >> 16) & 1)) >> 16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// bf16 bits → the fp32 value they stand for.
#[inline(always)]
pub fn bf16_value(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

/// Two bf16 in one 32-bit lane, `lo` (the even k index) in the low half: `vdpbf16ps` multiplies
/// lane halves pairwise and adds both products into the fp32 accumulator of that lane.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// A matrix as (pointer, row stride, column stride) in elements.
type Mat = (*const f32, usize, usize);

/// Pointers that rayon tasks share; each task writes a disjoint part.
#[derive(Clone, Copy)]
struct Shared<T>(T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}
impl<T: Copy> Shared<T> {
    /// (A method, so that closures capture the wrapper, not its non-`Sync` field.)
    fn get(&self) -> T {
        self.0
    }
}

/// k-pairs per block of a packed A panel: each row's pairs of a block fill one 64-byte line.
const KB: usize = 16;

/// How a packed A panel orders its pairs: both in blocks of KB pairs, within a block
/// [`ALayout::Rows`] `[MR][KB]` (each row's pairs contiguous: from a row-major source, a
/// conversion without a transpose) or [`ALayout::Cols`] `[KB][MR]` (each pair's rows contiguous:
/// from a column-major source). The kernel reads either through its strides.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ALayout {
    Rows,
    Cols,
}

/// Row panel `ip` of `lhs` (m×k) as `[kpp/KB][layout]` bf16 pairs along k, zero-padded to `kpp`
/// pairs (a multiple of KB), every element of its `kpp·MR` written (compiled for AVX-512 so that
/// the intrinsics inline). The layout is [`ALayout::Rows`] when `cs == 1`, else `Cols`.
///
/// # Safety
/// `(p0, rs, cs)` addresses an m×k matrix; AVX512_BF16; `out` addresses `kpp·MR` writable
/// elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_a_panel(
    (p0, rs, cs): Mat,
    m: usize,
    k: usize,
    kpp: usize,
    ip: usize,
    out: *mut u32,
) {
    use std::arch::x86_64::*;
    unsafe {
        let rows = MR.min(m - ip * MR);
        let base = p0.add(ip * MR * rs);
        let kp = k.div_ceil(2);
        if cs == 1 {
            // Row-major: 32 consecutive values of a row are one block's 16 pairs.
            for pb in 0..kpp / KB {
                for r in 0..MR {
                    let v = if r < rows && pb * KB < kp {
                        convert_run(base.add(r * rs + pb * 2 * KB), k - pb * 2 * KB)
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_storeu_si512(out.add((pb * MR + r) * KB).cast(), v);
                }
            }
        } else if rs == 1 {
            // Column-major (a transposed operand): columns 2p and 2p+1 hold the rows' pairs p.
            let rows_mask = low_mask(rows);
            for p in 0..kpp {
                let lo = if p < kp {
                    _mm512_maskz_loadu_ps(rows_mask, base.add(2 * p * cs))
                } else {
                    _mm512_setzero_ps()
                };
                let hi = if 2 * p + 1 < k {
                    _mm512_maskz_loadu_ps(rows_mask, base.add((2 * p + 1) * cs))
                } else {
                    _mm512_setzero_ps()
                };
                _mm512_mask_storeu_epi32(out.add(p * MR).cast(), low_mask(MR), interleave(lo, hi));
            }
        } else {
            for p in 0..kpp {
                for r in 0..MR {
                    let at = |c: usize| {
                        if r < rows && c < k {
                            *base.add(r * rs + c * cs)
                        } else {
                            0.0
                        }
                    };
                    *out.add(p * MR + r) = pair(at(2 * p), at(2 * p + 1));
                }
            }
        }
    }
}

/// `rhs` (k×n) as column panels `[n/NR][kpp][NR]` of bf16 pairs along k, zero-padded.
///
/// # Safety
/// `b` must address a k×n matrix; AVX512_BF16.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_b(b: Mat, k: usize, n: usize, kpp: usize, parallel: bool) -> Vec<u32> {
    let b = Shared(b);
    // SAFETY: as this function's; each panel is written whole.
    filled(n.div_ceil(NR), kpp * NR, parallel, |jp, panel| unsafe {
        pack_b_panel(b.get(), k, n, kpp, jp, panel)
    })
}

/// Column panel `jp` of [`pack_b`], every element of its `kpp·NR` written (compiled for AVX-512
/// so that the intrinsics inline).
///
/// # Safety
/// As [`pack_b`]'s; `out` addresses `kpp·NR` writable elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_b_panel(
    (p0, rs, cs): Mat,
    k: usize,
    n: usize,
    kpp: usize,
    jp: usize,
    out: *mut u32,
) {
    use std::arch::x86_64::*;
    unsafe {
        let cols = NR.min(n - jp * NR);
        let base = p0.add(jp * NR * cs);
        let kp = k.div_ceil(2);
        if cs == 1 {
            // Row-major: rows 2p and 2p+1, 16 columns at a time.
            for half in 0..NR / 16 {
                let mask = low_mask(cols.saturating_sub(half * 16));
                for p in 0..kpp {
                    let lo = if p < kp && mask != 0 {
                        _mm512_maskz_loadu_ps(mask, base.add(2 * p * rs + half * 16))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let hi = if 2 * p + 1 < k && mask != 0 {
                        _mm512_maskz_loadu_ps(mask, base.add((2 * p + 1) * rs + half * 16))
                    } else {
                        _mm512_setzero_ps()
                    };
                    _mm512_storeu_si512(out.add(p * NR + half * 16).cast(), interleave(lo, hi));
                }
            }
        } else if rs == 1 {
            // Column-major (a transposed operand: Wᵀ in dX, im2col's colsᵀ in a conv's dW): a
            // column's 32 consecutive values are its 16 pairs of one block; 16 columns' blocks,
            // transposed in registers, are the block's 16 rows of the panel half.
            for half in 0..NR / 16 {
                let c0 = half * 16;
                for pb in 0..kpp / KB {
                    let mut v = [_mm512_setzero_si512(); 16];
                    if pb * KB < kp {
                        for (c, v) in v.iter_mut().enumerate().take(cols.saturating_sub(c0)) {
                            *v =
                                convert_run(base.add((c0 + c) * cs + pb * 2 * KB), k - pb * 2 * KB);
                        }
                    }
                    for (q, row) in transpose16(v).iter().enumerate() {
                        _mm512_storeu_si512(out.add((pb * KB + q) * NR + c0).cast(), *row);
                    }
                }
            }
        } else {
            for p in 0..kpp {
                for c in 0..NR {
                    let at = |r: usize| {
                        if c < cols && r < k {
                            *base.add(r * rs + c * cs)
                        } else {
                            0.0
                        }
                    };
                    *out.add(p * NR + c) = pair(at(2 * p), at(2 * p + 1));
                }
            }
        }
    }
}

/// A `panels·size` buffer whose chunks `fill(index, pointer)` writes completely, in parallel or
/// not, inside the AVX-512 build of the loops; not zeroed first (the packers write the padding).
fn filled(
    panels: usize,
    size: usize,
    parallel: bool,
    fill: impl Fn(usize, *mut u32) + Sync + Send,
) -> Vec<u32> {
    let mut out = Vec::<std::mem::MaybeUninit<u32>>::with_capacity(panels * size);
    // SAFETY: MaybeUninit needs no initialization.
    unsafe { out.set_len(panels * size) };
    let run =
        |(i, chunk): (usize, &mut [std::mem::MaybeUninit<u32>])| fill(i, chunk.as_mut_ptr().cast());
    super::fused::simd(|| {
        if parallel {
            out.par_chunks_mut(size).enumerate().for_each(run);
        } else {
            out.chunks_mut(size).enumerate().for_each(run);
        }
    });
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: every chunk was written by `fill`; same layout as u32.
    unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast(), out.len(), out.capacity()) }
}

/// The transpose of a 16×16 matrix of 32-bit lanes given as its rows: 32-bit, then 64-bit
/// interleaves within each 128-bit lane leave 4×4 blocks transposed in place; two rounds of
/// 128-bit lane shuffles transpose the blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_si512(); 16];
    for a in 0..8 {
        t[2 * a] = _mm512_unpacklo_epi32(r[2 * a], r[2 * a + 1]);
        t[2 * a + 1] = _mm512_unpackhi_epi32(r[2 * a], r[2 * a + 1]);
    }
    // u[4g + e], 128-bit lane L: column 4L + e of rows 4g..4g+4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // Output row 4L + e, lane g = u[4g + e]'s lane L: a 4×4 transpose of 128-bit lanes.
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
        let x0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let x1 = _mm512_shuffle_i32x4::<0xEE>(a, b);
        let y0 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let y1 = _mm512_shuffle_i32x4::<0xEE>(c, d);
        out[e] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        out[4 + e] = _mm512_shuffle_i32x4::<0xDD>(x0, y0);
        out[8 + e] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        out[12 + e] = _mm512_shuffle_i32x4::<0xDD>(x1, y1);
    }
    out
}

/// Lanes `0..len` (at most 16) set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn low_mask(len: usize) -> u16 {
    if len >= 16 {
        u16::MAX
    } else {
        (1u16 << len) - 1
    }
}

/// Up to 32 consecutive fp32 values (`len` of them, more ignored) as 16 bf16 pairs, zero-padded.
///
/// # Safety
/// `src..src + min(len, 32)` readable; AVX512_BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn convert_run(src: *const f32, len: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    unsafe {
        let lo = _mm512_maskz_loadu_ps(low_mask(len), src);
        let hi = _mm512_maskz_loadu_ps(low_mask(len.saturating_sub(16)), src.add(16));
        // Low half of the result from `lo`, high half from `hi`: the values in order.
        std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
    }
}

/// Lane i = the pair (`lo[i]`, `hi[i]`) in bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn interleave(
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    unsafe {
        let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(lo),
        ));
        let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
            _mm512_cvtneps_pbh(hi),
        ));
        _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi))
    }
}

/// A left operand packed once for several products with the same left side (a convolution's
/// weights, W in the forward and Wᵀ in dX, across its groups of images): packing it per group
/// re-converted the whole weight matrix for every 64 output columns.
pub(super) struct PackedLhs {
    data: Vec<u32>,
    m: usize,
    k: usize,
    layout: ALayout,
}

/// `lhs` (m×k) packed for [`gemm_bf16_packed`], all row panels, in parallel.
///
/// # Safety
/// `lhs` addresses an m×k matrix; the CPU has AVX512_BF16 ([`bf16_supported`]).
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn pack_lhs(lhs: Mat, m: usize, k: usize) -> PackedLhs {
    let kpp = k.div_ceil(2).div_ceil(KB) * KB;
    let src = Shared(lhs);
    // SAFETY: each panel writes its kpp·MR elements (the caller checked the CPU and lhs).
    let data = filled(m.div_ceil(MR), kpp * MR, true, |ip, panel| unsafe {
        pack_a_panel(src.get(), m, k, kpp, ip, panel)
    });
    let layout = if lhs.2 == 1 {
        ALayout::Rows
    } else {
        ALayout::Cols
    };
    PackedLhs { data, m, k, layout }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn pack_lhs(_: Mat, _: usize, _: usize) -> PackedLhs {
    unreachable!("bf16 matmuls are only enabled on x86-64 with AVX512_BF16")
}

/// The left operand of a product: in place (each task packs its rows) or packed beforehand.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    Strided(Mat),
    Packed(&'a PackedLhs),
}

/// `dst[m×n] = (dst if accumulate) + beta · lhs[m×k] · rhs[k×n]`, the inputs rounded to bf16 and
/// the products summed in fp32; matrices as (pointer, row stride, column stride) in elements.
///
/// # Safety
/// As `fused::gemm_strided`'s, and the CPU must have AVX512_BF16 ([`bf16_supported`]).
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn gemm_bf16(
    dims: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    parallel: bool,
) {
    unsafe {
        gemm_lhs(
            dims,
            dst,
            Lhs::Strided(lhs),
            rhs,
            beta,
            accumulate,
            parallel,
        )
    }
}

/// [`gemm_bf16`] with a left operand from [`pack_lhs`] (its m×k are the product's).
///
/// # Safety
/// As [`gemm_bf16`]'s.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn gemm_bf16_packed(
    n: usize,
    dst: (*mut f32, usize, usize),
    lhs: &PackedLhs,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    parallel: bool,
) {
    let dims = (lhs.m, n, lhs.k);
    unsafe { gemm_lhs(dims, dst, Lhs::Packed(lhs), rhs, beta, accumulate, parallel) }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn gemm_bf16_packed(
    _: usize,
    _: (*mut f32, usize, usize),
    _: &PackedLhs,
    _: Mat,
    _: f32,
    _: bool,
    _: bool,
) {
    unreachable!("bf16 matmuls are only enabled on x86-64 with AVX512_BF16")
}

#[cfg(target_arch = "x86_64")]
unsafe fn gemm_lhs(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: Lhs<'_>,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let kpp = k.div_ceil(2).div_ceil(KB) * KB;
    let pb = unsafe { pack_b(rhs, k, n, kpp, parallel) };
    let pb = &pb[..];
    let layout = match lhs {
        Lhs::Packed(p) => p.layout,
        Lhs::Strided(a) if a.2 == 1 => ALayout::Rows,
        Lhs::Strided(_) => ALayout::Cols,
    };
    let dst = Shared(dst);
    let lhs = Shared(lhs);
    let m_panels = m.div_ceil(MR);
    let task = |block: usize| {
        let (d, rs, cs) = dst.get();
        let mut tile = [0.0f32; MR * NR];
        let ips = block * MC_PANELS..((block + 1) * MC_PANELS).min(m_panels);
        // The task packs its own block of A, which stays in L2 for all the B panels (packing all
        // of A first sent it through L3/DRAM and back), unless it came packed.
        let mut own = Vec::<u32>::new();
        let pa: &[u32] = match lhs.get() {
            Lhs::Packed(p) => &p.data[ips.start * kpp * MR..ips.end * kpp * MR],
            Lhs::Strided(a) => {
                own.reserve_exact(ips.len() * kpp * MR);
                // SAFETY: each panel writes its kpp·MR elements (the caller checked the CPU
                // and lhs).
                unsafe {
                    for (i, ip) in ips.clone().enumerate() {
                        pack_a_panel(a, m, k, kpp, ip, own.as_mut_ptr().add(i * kpp * MR));
                    }
                    own.set_len(ips.len() * kpp * MR);
                }
                &own
            }
        };
        for jp in 0..n.div_ceil(NR) {
            let b = &pb[jp * kpp * NR..][..kpp * NR];
            let cols = NR.min(n - jp * NR);
            for (i, ip) in ips.clone().enumerate() {
                let a = &pa[i * kpp * MR..][..kpp * MR];
                let rows = MR.min(m - ip * MR);
                let out = Out {
                    // SAFETY: row ip·MR, column jp·NR are inside dst.
                    ptr: unsafe { d.add(ip * MR * rs + jp * NR * cs) },
                    rs,
                    cs,
                    rows,
                    cols,
                    beta,
                    accumulate,
                };
                // SAFETY: the caller checked the CPU; the panels hold kpp pairs each; the tile's
                // part of dst belongs to this task.
                unsafe {
                    match layout {
                        ALayout::Rows => {
                            kernel::<KB, 1>(kpp, a.as_ptr(), b.as_ptr(), out, &mut tile)
                        }
                        ALayout::Cols => {
                            kernel::<1, MR>(kpp, a.as_ptr(), b.as_ptr(), out, &mut tile)
                        }
                    }
                }
            }
        }
    };
    let blocks = m_panels.div_ceil(MC_PANELS);
    super::fused::simd(|| {
        if parallel {
            (0..blocks).into_par_iter().for_each(task);
        } else {
            (0..blocks).for_each(task);
        }
    })
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn gemm_bf16(
    _: (usize, usize, usize),
    _: (*mut f32, usize, usize),
    _: Mat,
    _: Mat,
    _: f32,
    _: bool,
    _: bool,
) {
    unreachable!("bf16 matmuls are only enabled on x86-64 with AVX512_BF16")
}

/// Where a tile goes: its top-left element of dst, strides, the valid rows × columns, and
/// `dst = (dst if accumulate) + beta · tile`.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
    rows: usize,
    cols: usize,
    beta: f32,
    accumulate: bool,
}

/// One MR×NR tile over `kpp` k-pairs with `vdpbf16ps`, written to `out` (through `tile` when dst's
/// columns are not contiguous); row r's pair q of a block of A at `r·RS + q·QS`.
///
/// # Safety
/// AVX512_BF16; `a` holds `kpp·MR` pairs, `b` `kpp·NR`; `out` addresses valid, unshared memory.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const RS: usize, const QS: usize>(
    kpp: usize,
    a: *const u32,
    b: *const u32,
    out: Out,
    tile: &mut [f32; MR * NR],
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut c = [[_mm512_setzero_ps(); 2]; MR];
        for pb in 0..kpp / KB {
            let (ab, bb) = (a.add(pb * MR * KB), b.add(pb * KB * NR));
            for q in 0..KB {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bb.add(q * NR).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(bb.add(q * NR + 16).cast()));
                for (r, c) in c.iter_mut().enumerate() {
                    let av: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*ab.add(r * RS + q * QS) as i32));
                    c[0] = _mm512_dpbf16_ps(c[0], av, b0);
                    c[1] = _mm512_dpbf16_ps(c[1], av, b1);
                }
            }
        }
        let beta = _mm512_set1_ps(out.beta);
        if out.cs == 1 {
            let masks = [low_mask(out.cols), low_mask(out.cols.saturating_sub(16))];
            for (r, c) in c.iter().enumerate().take(out.rows) {
                let row = out.ptr.add(r * out.rs);
                for h in 0..2 {
                    let mut v = _mm512_mul_ps(beta, c[h]);
                    if out.accumulate {
                        v = _mm512_add_ps(_mm512_maskz_loadu_ps(masks[h], row.add(16 * h)), v);
                    }
                    _mm512_mask_storeu_ps(row.add(16 * h), masks[h], v);
                }
            }
        } else {
            for (r, c) in c.iter().enumerate() {
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), c[0]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), c[1]);
            }
            for r in 0..out.rows {
                for (j, t) in tile[r * NR..][..out.cols].iter().enumerate() {
                    let o = out.ptr.add(r * out.rs + j * out.cs);
                    *o = if out.accumulate {
                        *o + out.beta * t
                    } else {
                        out.beta * t
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values of mixed magnitude and sign.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(bf16_value(bf16_bits(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(
            bf16_value(bf16_bits(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert_eq!(
            bf16_value(bf16_bits(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        // A NaN whose payload is only in the low 16 bits must not become infinity.
        assert!(bf16_value(bf16_bits(f32::from_bits(0x7f80_0001))).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::MAX)), f32::INFINITY);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rounding_matches_the_hardware_conversion() {
        if !bf16_supported() {
            return;
        }
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn hw(x: &[f32; 16]) -> [u16; 16] {
            use std::arch::x86_64::*;
            unsafe { std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr()))) }
        }
        let mut xs = values(4096, 7);
        xs.extend([
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            3.0e38,
            -3.4e38,
            1.0 + 2f32.powi(-8),
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(0.1);
        }
        for x in xs.chunks(16) {
            let h = unsafe { hw(x.try_into().unwrap()) };
            for (x, h) in x.iter().zip(h) {
                // Hardware flushes bf16 denormal results? Compare values, denormals as zero.
                let ours = bf16_value(bf16_bits(*x));
                let theirs = bf16_value(h as u32);
                let same = ours == theirs
                    || (ours.abs() < f32::MIN_POSITIVE && theirs.abs() < f32::MIN_POSITIVE);
                assert!(same, "{x:e}: ours {ours:e}, hardware {theirs:e}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose16_transposes() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<i32> = (0..256).collect();
        let got: [[i32; 16]; 16] = unsafe {
            let rows: [__m512i; 16] =
                std::array::from_fn(|i| _mm512_loadu_si512(m[i * 16..].as_ptr().cast()));
            std::mem::transmute(transpose16(rows))
        };
        for (j, row) in got.iter().enumerate() {
            for (i, v) in row.iter().enumerate() {
                assert_eq!(*v, m[i * 16 + j], "out[{j}][{i}]");
            }
        }
    }

    /// Reference: f64 sums of the bf16-rounded inputs.
    fn reference(a: Mat, b: Mat, (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let r = |x: f32| bf16_value(bf16_bits(x)) as f64;
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|l| unsafe {
                        r(*a.0.add(i * a.1 + l * a.2)) * r(*b.0.add(l * b.1 + j * b.2))
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matches_f64_products_of_rounded_inputs_for_all_layouts_and_edges() {
        if !bf16_supported() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (12, 32, 2),
            (13, 33, 3),
            (25, 70, 17),
            (50, 31, 64),
            (7, 100, 129),
            // around the tile (12 × 32), task (48 rows) and k-block (32 values) boundaries
            (48, 16, 31),
            (49, 17, 33),
            (11, 15, 65),
            (36, 64, 32),
            (97, 48, 95),
        ] {
            for (ta, tb, tc) in [
                (false, false, false),
                (true, false, false),
                (false, true, true),
                (true, true, false),
            ] {
                for (parallel, accumulate) in [(false, false), (true, true)] {
                    let av = values(m * k, (m * 31 + k) as u32);
                    let bv = values(k * n, (n * 17 + k) as u32);
                    // Row-major or transposed storage of the same logical matrices.
                    let a: Mat = if ta {
                        (av.as_ptr(), 1, m)
                    } else {
                        (av.as_ptr(), k, 1)
                    };
                    let b: Mat = if tb {
                        (bv.as_ptr(), 1, k)
                    } else {
                        (bv.as_ptr(), n, 1)
                    };
                    let init = values(m * n, 99);
                    let mut c = init.clone();
                    let d = if tc {
                        (c.as_mut_ptr(), 1, m)
                    } else {
                        (c.as_mut_ptr(), n, 1)
                    };
                    unsafe { gemm_bf16((m, n, k), d, a, b, 0.5, accumulate, parallel) };
                    // The same product from a prepacked left operand: the same bits.
                    let mut c2 = init.clone();
                    let d2 = (c2.as_mut_ptr(), d.1, d.2);
                    unsafe {
                        let pa = pack_lhs(a, m, k);
                        gemm_bf16_packed(n, d2, &pa, b, 0.5, accumulate, parallel)
                    };
                    assert!(
                        c.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{m}×{n}×{k} ta {ta}: prepacked lhs differs"
                    );
                    let want = reference(a, b, (m, n, k));
                    for i in 0..m {
                        for j in 0..n {
                            let at = if tc { j * m + i } else { i * n + j };
                            let base = if accumulate { init[at] as f64 } else { 0.0 };
                            let w = base + 0.5 * want[i * n + j];
                            let got = c[at] as f64;
                            // fp32 accumulation of k products of magnitude ≤ 4.
                            let tol = 1e-5 * (k as f64 * 4.0 + 1.0);
                            assert!(
                                (got - w).abs() <= tol,
                                "{m}×{n}×{k} ta {ta} tb {tb} tc {tc} acc {accumulate}: [{i},{j}] {got} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn differs_from_fp32_products_by_the_bf16_rounding_only() {
        // Guards against a kernel that ignores the rounding (e.g. an fp32 fallback): the bf16
        // result must differ from the exact fp32-input product, by about 2^-8 relative.
        if !bf16_supported() {
            return;
        }
        let (m, n, k) = (24, 64, 96);
        let (av, bv) = (values(m * k, 1), values(k * n, 2));
        let mut c = vec![0.0f32; m * n];
        unsafe {
            gemm_bf16(
                (m, n, k),
                (c.as_mut_ptr(), n, 1),
                (av.as_ptr(), k, 1),
                (bv.as_ptr(), n, 1),
                1.0,
                false,
                false,
            )
        };
        let exact: Vec<f64> = (0..m * n)
            .map(|ij| {
                (0..k)
                    .map(|l| av[ij / n * k + l] as f64 * bv[l * n + ij % n] as f64)
                    .sum()
            })
            .collect();
        let err = c
            .iter()
            .zip(&exact)
            .map(|(c, e)| (*c as f64 - e).abs())
            .fold(0.0, f64::max);
        let scale = exact.iter().map(|e| e.abs()).fold(0.0, f64::max);
        assert!(
            err > 1e-4 * scale && err < 2e-2 * scale,
            "max error {err} for max |c| {scale}"
        );
    }
}
