//! Fused linear layer (issue 6): `x · W + b` as ONE row-major GEMM over all leading dimensions,
//! on the Flex (CPU) backend with a hand-written backward.
//!
//! burn's `Linear` on a `[B, T, K]` input runs B separate `[T, K] · [K, N]` GEMMs (each packing W
//! again), allocates every output as zeroed bytes that are then copied into an aligned buffer, and
//! adds the bias in another pass; its backward does the same for `dY · Wᵀ`. Here the leading
//! dimensions fold into the rows, the output starts as the bias rows (or uninitialized) and the
//! GEMM accumulates into it, and the weight's transpose is read through strides, never copied.
//! The tied LM head (`x · Eᵀ` with the embedding `E` `[N, K]`) is the same op with `transposed`.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Flex};
use burn::nn::Linear;
use burn::tensor::{Shape, Tensor, TensorData};
use gemm::Parallelism;
use rayon::prelude::*;

use super::fused::{
    assume_filled, f32_slice, fused_available, gemm_strided, simd, uninit_vec, FusedBackward,
    SharedMut,
};

#[backend_extension(Flex, Autodiff)]
pub trait FusedLinearOps: Backend {
    /// `x` `[…, K]` · `weight` `[K, N]` `+ bias` `[N]` → `[…, N]`.
    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x` `[…, K]` · `weight` (`[K, N]`, or `[N, K]` read as its transpose when `transposed`)
    /// → `[…, N]`, without bias.
    fn linear_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self>;

    /// `residual` `[…, N]` `+ x · weight + bias`: a layer whose output joins the residual stream.
    fn linear_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `layer.forward(x)`: the fused kernel on the CPU backend (f32), burn's `Linear` elsewhere.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if !fused_available("linear", &x) {
        return layer.forward(x);
    }
    let (x, w) = (x.into_dispatch(), layer.weight.val().into_dispatch());
    Tensor::from_dispatch(match &layer.bias {
        Some(b) => {
            <burn::backend::Dispatch as FusedLinearOps>::linear(x, w, b.val().into_dispatch())
        }
        None => <burn::backend::Dispatch as FusedLinearOps>::linear_nobias(x, w, false),
    })
}

/// `residual + layer.forward(x)`. On the CPU backend the GEMM accumulates into `residual + b`,
/// so the residual stream needs no separate addition (which burn does on one thread), and the
/// residual's gradient is `dY` itself. Sums round as `(residual + b) + x·W` instead of
/// `residual + (b + x·W)`.
pub fn linear_residual<const D: usize>(
    layer: &Linear,
    x: Tensor<D>,
    residual: Tensor<D>,
) -> Tensor<D> {
    match &layer.bias {
        Some(b) if fused_available("linear", &x) => Tensor::from_dispatch(
            <burn::backend::Dispatch as FusedLinearOps>::linear_residual(
                x.into_dispatch(),
                layer.weight.val().into_dispatch(),
                b.val().into_dispatch(),
                residual.into_dispatch(),
            ),
        ),
        _ => residual + linear(layer, x),
    }
}

/// `gelu(layer.forward(x))`. On the CPU backend the GEMM writes `x · W` without the bias and
/// [`super::fused::bias_gelu`] adds it inside the GELU pass (and sums its gradient inside the
/// GELU's backward pass): two passes over the output fewer each way, the same numbers.
pub fn linear_gelu<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    match &layer.bias {
        Some(bias) if fused_available("linear", &x) && fused_available("gelu", &x) => {
            let z = Tensor::<D>::from_dispatch(
                <burn::backend::Dispatch as FusedLinearOps>::linear_nobias(
                    x.into_dispatch(),
                    layer.weight.val().into_dispatch(),
                    false,
                ),
            );
            super::fused::bias_gelu(z, bias.val()).expect("the fused GELU is available")
        }
        _ => {
            let h = linear(layer, x);
            super::fused::gelu(h.clone()).unwrap_or_else(|| burn::tensor::activation::gelu(h))
        }
    }
}

/// `x` `[…, K]` · `weightᵀ` for a `weight` `[N, K]` (a tied output head) → `[…, N]`.
pub fn linear_transposed<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    if !fused_available("linear", &x) {
        return x.matmul(weight.transpose().unsqueeze());
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedLinearOps>::linear_nobias(
        x.into_dispatch(),
        weight.into_dispatch(),
        true,
    ))
}

impl FusedLinearOps for Flex {
    fn linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        forward(&x, &weight, Some(&bias), None, false)
    }

    fn linear_nobias(x: FlexTensor, weight: FlexTensor, transposed: bool) -> FlexTensor {
        forward(&x, &weight, None, None, transposed)
    }

    fn linear_residual(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
    ) -> FlexTensor {
        forward(&x, &weight, Some(&bias), Some(&residual), false)
    }
}

impl<C: CheckpointStrategy> FusedLinearOps for Autodiff<Flex, C> {
    fn linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let b = bias.primitive().clone();
        match FusedBackward::<LinearState, 3>(linear_grads)
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let y = forward(&xp, &wp, Some(&b), None, false);
                prep.finish((xp, wp, false), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.primitive(),
                weight.primitive(),
                Some(&b),
                None,
                false,
            )),
        }
    }

    fn linear_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self> {
        match FusedBackward::<LinearState, 2>(linear_grads)
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let y = forward(&xp, &wp, None, None, transposed);
                prep.finish((xp, wp, transposed), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.primitive(),
                weight.primitive(),
                None,
                None,
                transposed,
            )),
        }
    }

    fn linear_residual(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (b, r) = (bias.primitive().clone(), residual.primitive().clone());
        match FusedBackward::<LinearState, 4>(linear_grads)
            .prepare::<C>([x.node(), weight.node(), bias.node(), residual.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let y = forward(&xp, &wp, Some(&b), Some(&r), false);
                prep.finish((xp, wp, false), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.primitive(),
                weight.primitive(),
                Some(&b),
                Some(&r),
                false,
            )),
        }
    }
}

/// x, weight, transposed.
type LinearState = (FlexTensor, FlexTensor, bool);

/// Gradients of (x, weight[, bias[, residual]]) — only the tracked ones are computed.
fn linear_grads<const N: usize>(
    (x, w, transposed): LinearState,
    grad: &FlexTensor,
    tracked: [bool; N],
) -> [Option<FlexTensor>; N] {
    let g = Geom::of(&x, &w, transposed);
    let dy = f32_slice(grad);
    std::array::from_fn(|i| {
        tracked[i].then(|| match i {
            0 => backward_x(&dy, &w, g, &x),
            1 => backward_w(&dy, &x, g, &w),
            2 => backward_b(&dy, g),
            // The residual passes straight through.
            _ => grad.clone(),
        })
    })
}

/// Sizes: `m` rows (all leading dimensions), `k` input and `n` output features.
#[derive(Clone, Copy, Debug)]
struct Geom {
    m: usize,
    k: usize,
    n: usize,
    transposed: bool,
}

impl Geom {
    fn of(x: &FlexTensor, w: &FlexTensor, transposed: bool) -> Self {
        let (xs, ws) = (x.layout().shape(), w.layout().shape());
        let k = xs[xs.num_dims() - 1];
        assert_eq!(ws.num_dims(), 2, "fused linear: the weight must be 2-D");
        let (wk, n) = if transposed {
            (ws[1], ws[0])
        } else {
            (ws[0], ws[1])
        };
        assert_eq!(
            k, wk,
            "fused linear: input width {k} does not match the weight {ws:?}"
        );
        Self {
            m: xs.num_elements() / k.max(1),
            k,
            n,
            transposed,
        }
    }

    /// The weight as a `k × n` matrix: (row stride, column stride).
    fn w_kn(&self) -> (usize, usize) {
        if self.transposed {
            (1, self.k)
        } else {
            (self.n, 1)
        }
    }
}

/// Below this many multiply-adds one thread does the GEMM (burn's threshold, 192³).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` (accumulating when `accumulate`), matrices given by
/// (pointer, row stride, column stride); parallel over the cores when large.
///
/// # Safety
/// The pointers with their strides must address valid memory, `dst` not overlapping the others;
/// with `accumulate` false `dst` may be uninitialized (the GEMM only writes it).
unsafe fn gemm_rm(
    dims: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    accumulate: bool,
) {
    let par = if dims.0 * dims.1 * dims.2 >= PARALLEL_MACS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    unsafe { gemm_strided(dims, dst, lhs, rhs, 1.0, accumulate, par) }
}

/// A `len`-element buffer the caller's GEMM fills completely (without reading it) before use.
fn gemm_output(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    fill(out.as_mut_ptr());
    // SAFETY: `fill` ran a non-accumulating GEMM that wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

fn to_flex(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
    transposed: bool,
) -> FlexTensor {
    let g = Geom::of(x, w, transposed);
    let _time = super::op_times::span_sized("linear forward", &[g.m, g.k, g.n]);
    let (xs, ws) = (f32_slice(x), f32_slice(w));
    let mut shape = x.layout().shape().clone();
    let last = shape.num_dims() - 1;
    shape[last] = g.n;
    let lhs = (xs.as_ptr(), g.k, 1);
    let (rs, cs) = g.w_kn();
    let rhs = (ws.as_ptr(), rs, cs);
    let out = match bias {
        Some(bias) => {
            let b = f32_slice(bias);
            assert_eq!(b.len(), g.n, "fused linear: bias length");
            // The bias rows (plus the residual's), filled in parallel: on one thread this pass
            // left the other core idle.
            let mut out = uninit_vec(g.m * g.n);
            let block = g.n.max(1) * BIAS_ROWS;
            match residual {
                None => out.par_chunks_mut(block).for_each(|rows| {
                    for row in rows.chunks_mut(g.n.max(1)) {
                        for (o, &v) in row.iter_mut().zip(b.iter()) {
                            o.write(v);
                        }
                    }
                }),
                Some(r) => {
                    assert_eq!(
                        r.layout().shape(),
                        &shape,
                        "fused linear: the residual's shape must be the output's"
                    );
                    let r = f32_slice(r);
                    out.par_chunks_mut(block)
                        .zip(r.par_chunks(block))
                        .for_each(|(rows, res)| {
                            simd(
                                #[inline(always)]
                                || {
                                    for (row, res) in
                                        rows.chunks_mut(g.n.max(1)).zip(res.chunks(g.n.max(1)))
                                    {
                                        for ((o, &v), &r) in row.iter_mut().zip(b.iter()).zip(res) {
                                            o.write(r + v);
                                        }
                                    }
                                },
                            )
                        })
                }
            }
            // SAFETY: every row of every block was written with the n bias values.
            let mut out = unsafe { assume_filled(out) };
            // SAFETY: shapes checked above; out is m×n, row-major.
            unsafe { gemm_rm((g.m, g.n, g.k), (out.as_mut_ptr(), g.n, 1), lhs, rhs, true) };
            out
        }
        // SAFETY: as above; the GEMM writes every element of the fresh buffer.
        None => gemm_output(g.m * g.n, |p| unsafe {
            gemm_rm((g.m, g.n, g.k), (p, g.n, 1), lhs, rhs, false)
        }),
    };
    to_flex(out, shape)
}

/// The largest weight (values) [`backward_x`] copies transposed: 16 MiB, a GPT-2-small MLP
/// weight is 9; a 50k-token output head (150 MiB) is read through strides instead.
const WT_COPY_MAX: usize = 4 << 20;

/// `dX = dY · Wᵀ` in x's shape.
///
/// A `[K, N]` weight is first transposed into a row-major `[N, K]` copy (K·N values, a few
/// hundred KiB): read through swapped strides, Wᵀ is an operand the gemm crate packs again in
/// every call's blocks, and fc1's dX of the GPT step ran at 182 GFLOP/s against 207 for fc2's
/// forward of the same sizes with a row-major weight; with the copy 21.0–22.0 ms instead of
/// 23.4–23.7 per step (`train_step --op-times`, thirteenth session). Not in bf16, whose packing
/// converts either layout in one pass.
fn backward_x(dy: &[f32], w: &FlexTensor, g: Geom, x: &FlexTensor) -> FlexTensor {
    let _time = super::op_times::span_sized("linear dx", &[g.m, g.k, g.n]);
    let ws = f32_slice(w);
    let (rs, cs) = g.w_kn();
    let mut wt: Vec<f32>;
    let copy = cs == 1 && g.n > 1 && g.n * g.k <= WT_COPY_MAX;
    let rhs = if copy && !super::bf16_gemm::use_bf16((g.m, g.k, g.n)) {
        wt = vec![0.0f32; g.n * g.k];
        super::small_gemm::transpose(&ws, g.n, g.k, g.n, &mut wt);
        (wt.as_ptr(), g.k, 1)
    } else {
        // Wᵀ as an n × k matrix swaps the strides.
        (ws.as_ptr(), cs, rs)
    };
    // SAFETY: dY is m×n row-major, W holds k·n values, dX is m×k.
    let dx = gemm_output(g.m * g.k, |p| unsafe {
        gemm_rm(
            (g.m, g.k, g.n),
            (p, g.k, 1),
            (dy.as_ptr(), g.n, 1),
            rhs,
            false,
        )
    });
    to_flex(dx, x.layout().shape().clone())
}

/// `dW = xᵀ · dY` (`[K, N]`), or `dYᵀ · x` (`[N, K]`) for a transposed weight.
fn backward_w(dy: &[f32], x: &FlexTensor, g: Geom, w: &FlexTensor) -> FlexTensor {
    let _time = super::op_times::span_sized("linear dW", &[g.m, g.k, g.n]);
    let xs = f32_slice(x);
    let dw = if g.transposed {
        // SAFETY: dYᵀ is n×m (strides 1, n), x is m×k row-major, dW is n×k.
        gemm_output(g.n * g.k, |p| unsafe {
            gemm_rm(
                (g.n, g.k, g.m),
                (p, g.k, 1),
                (dy.as_ptr(), 1, g.n),
                (xs.as_ptr(), g.k, 1),
                false,
            )
        })
    } else if let Some(block) = dw_column_block(g) {
        let (x, d) = (xs.as_ptr() as usize, dy.as_ptr() as usize);
        gemm_output(g.k * g.n, |p| {
            let p = SharedMut(p);
            let starts: Vec<usize> = (0..g.n).step_by(block).collect();
            starts.into_par_iter().for_each(|c0| {
                let p = p;
                let width = block.min(g.n - c0);
                // SAFETY: as below, on columns c0..c0+width of dY and dW; the tasks write
                // disjoint columns of dW.
                unsafe {
                    gemm_strided(
                        (g.k, width, g.m),
                        (p.0.add(c0), g.n, 1),
                        (x as *const f32, 1, g.k),
                        ((d as *const f32).add(c0), g.n, 1),
                        1.0,
                        false,
                        Parallelism::None,
                    )
                }
            })
        })
    } else {
        // SAFETY: xᵀ is k×m (strides 1, k), dY is m×n row-major, dW is k×n.
        gemm_output(g.k * g.n, |p| unsafe {
            gemm_rm(
                (g.k, g.n, g.m),
                (p, g.n, 1),
                (xs.as_ptr(), 1, g.k),
                (dy.as_ptr(), g.n, 1),
                false,
            )
        })
    };
    to_flex(dw, w.layout().shape().clone())
}

/// Weight gradients at most this wide (output features) are split by columns over the threads,
/// one single-threaded GEMM each, instead of the gemm crate's own threading: for the GPT step's
/// narrow ones (N = d_model = 256: attention and MLP output projections, inner dimension 2048–1024)
/// that ran 189–194 GFLOP/s on two threads, the split 207–225; wider ones were as fast or slower.
const DW_SPLIT_MAX_N: usize = 256;

/// Columns per task when `dW = xᵀ·dY` is split by columns (a multiple of 16, one per thread), or
/// `None` to leave the threading to the gemm crate.
fn dw_column_block(g: Geom) -> Option<usize> {
    let threads = rayon::current_num_threads();
    let dims = (g.k, g.n, g.m);
    (threads > 1
        && g.n <= DW_SPLIT_MAX_N
        && g.n >= 32
        && g.k * g.n * g.m >= PARALLEL_MACS
        && !super::bf16_gemm::use_bf16(dims))
    .then(|| g.n.div_ceil(threads).next_multiple_of(16))
}

/// Rows per parallel task of the bias fill.
const BIAS_ROWS: usize = 64;

/// Values per block of rows whose column sums the bias gradient adds up first (whole rows, at
/// least one): the blocks' partial sums are then added in block order, so the result does not
/// depend on the thread schedule, and the fused bias + GELU backward
/// ([`super::fused::bias_gelu`]) sums the same blocks in the same order inside its own pass.
const BIAS_BLOCK_VALUES: usize = 1 << 14;

/// `db = Σ_rows dY` ([`bias_gradient`]: the same numbers whatever the thread schedule).
fn backward_b(dy: &[f32], g: Geom) -> FlexTensor {
    let _time = super::op_times::span_sized("linear db", &[g.m, g.n]);
    to_flex(bias_gradient(dy, g.n), Shape::new([g.n]))
}

/// Rows per block of [`bias_gradient`] for rows of `n` values.
pub(super) fn bias_block_rows(n: usize) -> usize {
    (BIAS_BLOCK_VALUES / n.max(1)).max(1)
}

/// `Σ_rows dy` of a row-major `dy` `[…, n]`: per block of [`bias_block_rows`] rows the column
/// sums in row order, in parallel, then [`sum_partials`].
pub(super) fn bias_gradient(dy: &[f32], n: usize) -> Vec<f32> {
    if n == 0 {
        return Vec::new();
    }
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(bias_block_rows(n) * n)
        .map(|block| {
            simd(
                #[inline(always)]
                || {
                    let mut acc = vec![0.0f32; n];
                    for row in block.chunks_exact(n) {
                        for (a, v) in acc.iter_mut().zip(row) {
                            *a += v;
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    sum_partials(&partials, n)
}

/// The element-wise sum of `partials` (each `n` long), added in order.
pub(super) fn sum_partials(partials: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut db = vec![0.0f32; n];
    for p in partials {
        db.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    db
}
