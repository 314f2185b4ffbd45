//! Fused CPU kernels (issue 6): one backend-extension op replaces a chain of burn ops, with a
//! hand-written backward, on the Flex (CPU) backend — with and without autodiff. Elsewhere (CUDA)
//! and for f16/bf16 each public function here composes burn's generic ops instead (or returns
//! `None` so the caller does), so models call one function whatever the device.
//!
//! | kernel | replaces | how |
//! |---|---|---|
//! | [`causal_self_attention`] | split heads, `q kᵀ/√d`, causal mask, softmax, `· v`, merge | per (sequence, head) in parallel, heads read/written in place through strides; backward from the saved probabilities P: `dV = Pᵀ dO`, `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dQ = dS K/√d`, `dK = dSᵀ Q/√d` |
//! | [`conv2d`] | burn's conv2d (NCHW → NHWC copies, skinny GEMMs) and its backward | im2col of a group of images (≥ 64 output columns) + one GEMM, NCHW throughout; backward rebuilds the columns: `dW = Σ dY colsᵀ`, `dX = col2im(Wᵀ dY)`, only what is tracked. 3×3 stride-1 padding-1 layers with ≥ 16 channels each way: Winograd F(2×2, 3×3) for the output and both gradients ([`super::winograd`]) |
//! | [`batch_norm_train_nd`] | mean/var via swapped-dims copies, normalize, ReLU | per channel in parallel, two-pass statistics, ReLU fused; one-pass backward |
//! | [`layer_norm`] | burn's layer norm backward (composed ops) | per row; `dx = (g − mean(g) − x̂·mean(g x̂))/σ` |
//! | [`gelu`] | libm `erf` per element, single-threaded | rational erf + polynomial exp that vectorize, in parallel |
//! | [`adamw_step`] | ~15 tensor ops per parameter | one pass over (w, g, m, v) |
//! | [`super::fused_loss`] | log_softmax + gather + mean (~10 ops each way) | one pass per row, backward from the saved log-sum-exps |
//! | [`super::fused_linear`] | burn's `Linear` (a GEMM per batch entry, zeroed-then-copied outputs, separate bias pass) | one GEMM over all rows into the bias; transposed weights read through strides |
//!
//! Linear and convolution products run in fp32, or with bf16 inputs and fp32 sums when the
//! process-wide [`super::bf16_gemm::MatmulPrecision`] says so (`--matmul-precision bf16`).
//!
//! `SELFSUP_NO_FUSED=1` (or a comma-separated list of [`KERNELS`]) turns kernels off, for
//! before/after benchmarks; `tests/nn_fused.rs` checks each against the ops it replaces.

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, DispatchDevice, Flex};

use super::small_gemm::{small_gemm, transpose};
use burn::tensor::{DType, Tensor, TensorData};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::transformer::{attention, causal_mask, merge_heads, split_heads};

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// Causal multi-head self-attention: `qkv` `[B, T, 3D]` (q, k, v side by side, head `h` at
    /// features `h·D/H .. (h+1)·D/H` of each) → context `[B, T, D]` with the heads concatenated.
    fn causal_self_attention(qkv: FloatTensor<Self>, n_heads: usize) -> FloatTensor<Self>;

    /// 2-D convolution without bias, one group, no dilation: `x` `[N, C, H, W]`, `weight`
    /// `[C', C, kh, kw]`, symmetric zero padding `[ph, pw]` → `[N, C', H', W']`.
    fn conv2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;

    /// Training-mode batch normalization over every dimension but 1, optionally followed by
    /// ReLU: `x` `[N, C, …]`, `gamma`, `beta` `[C]` → (output, batch mean `[C]`, biased batch
    /// variance `[C]`); the statistics carry no gradient.
    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// LayerNorm over the last dimension (biased variance): `(x − μ)/√(σ² + ε) · weight + bias`.
    fn layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Exact (erf) GELU, `x Φ(x)`.
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// GELU of `z + bias`, `bias` `[N]` along the last dimension: a linear layer's bias and its
    /// activation in one pass (the layer's GEMM then writes `z` without a bias), and in the
    /// backward the bias gradient in the same pass as `dz`.
    fn bias_gelu(z: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Causal self-attention of `qkv` `[B, T, 3D]` with `n_heads` heads → `[B, T, D]`. The fused kernel
/// on the CPU backend (f32), the generic ops elsewhere; both compute the same function.
pub fn causal_self_attention(qkv: Tensor<3>, n_heads: usize) -> Tensor<3> {
    if fused_available("attention", &qkv) {
        Tensor::from_dispatch(
            <burn::backend::Dispatch as FusedOps>::causal_self_attention(
                qkv.into_dispatch(),
                n_heads,
            ),
        )
    } else {
        causal_self_attention_reference(qkv, n_heads)
    }
}

/// The same function from generic burn ops (the path on CUDA, and the tests' reference).
pub fn causal_self_attention_reference(qkv: Tensor<3>, n_heads: usize) -> Tensor<3> {
    let [_, t, d3] = qkv.dims();
    let d = d3 / 3;
    let q = split_heads(qkv.clone().narrow(2, 0, d), n_heads);
    let k = split_heads(qkv.clone().narrow(2, d, d), n_heads);
    let v = split_heads(qkv.narrow(2, 2 * d, d), n_heads);
    let mask = causal_mask(t, t, &q.device());
    let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
    merge_heads(attention(q, k, v, Some(mask), &no_dropout).0)
}

/// The kernels, by the names `SELFSUP_NO_FUSED` takes (`simd`: the AVX-512/AVX2 code paths of
/// the element-wise loops, see [`simd`]).
pub const KERNELS: [&str; 10] = [
    "attention",
    "linear",
    "crossentropy",
    "conv",
    "winograd",
    "batchnorm",
    "layernorm",
    "gelu",
    "adamw",
    "simd",
];

/// Whether `SELFSUP_NO_FUSED` (read once) turns `kernel` off: `1` or `all` turns every kernel off,
/// a comma-separated list of [`KERNELS`] those (for before/after benchmarks).
fn disabled(kernel: &str) -> bool {
    static OFF: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let off = OFF.get_or_init(|| match std::env::var("SELFSUP_NO_FUSED") {
        Ok(v) if v == "1" || v == "all" => KERNELS.iter().map(|k| k.to_string()).collect(),
        Ok(v) => v.split(',').map(|k| k.trim().to_string()).collect(),
        Err(_) => vec![],
    });
    off.iter().any(|k| k == kernel)
}

/// A fused kernel serves f32 tensors on the Flex device (plain or autodiff) unless
/// `SELFSUP_NO_FUSED` turns it off.
pub(super) fn fused_available<const D: usize>(kernel: &str, x: &Tensor<D>) -> bool {
    !disabled(kernel)
        && x.dtype() == DType::F32
        && matches!(
            x.device().as_dispatch().clone().inner(),
            DispatchDevice::Flex(_)
        )
}

impl FusedOps for Flex {
    fn causal_self_attention(qkv: FlexTensor, n_heads: usize) -> FlexTensor {
        attention_forward(&qkv, n_heads).0
    }

    fn conv2d_nobias(
        x: FlexTensor,
        weight: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        conv_forward(&x, &weight, ConvGeom::of(&x, &weight, stride, padding))
    }

    fn batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let bn = bn_forward(&x, &gamma, &beta, epsilon, relu);
        (bn.output, bn.mean, bn.var)
    }

    fn layer_norm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, epsilon: f64) -> FlexTensor {
        ln_forward(&x, &weight, &bias, epsilon).0
    }

    fn gelu(x: FlexTensor) -> FlexTensor {
        gelu_forward(&x)
    }

    fn bias_gelu(z: FlexTensor, bias: FlexTensor) -> FlexTensor {
        bias_gelu_forward(&z, &bias)
    }
}

/// The backward step of a fused op with `N` inputs on `Autodiff<Flex>`: the function gets the
/// saved state, the output's gradient and which inputs are tracked, and returns the gradients of
/// (at least) the tracked ones; taking the gradient and registering them is done here once.
pub(super) struct FusedBackward<S, const N: usize>(
    pub(super) fn(S, &FlexTensor, [bool; N]) -> [Option<FlexTensor>; N],
);

impl<S, const N: usize> std::fmt::Debug for FusedBackward<S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FusedBackward<{N}>")
    }
}

impl<S: Clone + Send + std::fmt::Debug + 'static, const N: usize> Backward<Flex, N>
    for FusedBackward<S, N>
{
    type State = S;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let tracked = ops.parents.each_ref().map(Option::is_some);
        let input_grads = (self.0)(ops.state, &grad, tracked);
        for (parent, g) in ops.parents.into_iter().zip(input_grads) {
            if let (Some(node), Some(g)) = (parent, g) {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn causal_self_attention(qkv: FloatTensor<Self>, n_heads: usize) -> FloatTensor<Self> {
        // State: the input `[B, T, 3D]`, the softmax statistics `[B, H, T, 2]` and H.
        let backward = FusedBackward::<(FlexTensor, FlexTensor, usize), 1>(|(qkv, st, h), g, _| {
            [Some(attention_backward(&qkv, &st, g, h))]
        });
        match backward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = qkv.primitive().clone();
                let (out, stats) = attention_forward(&input, n_heads);
                prep.finish((input, stats, n_heads), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(attention_forward(&qkv.into_primitive(), n_heads).0)
            }
        }
    }

    fn conv2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let backward =
            FusedBackward::<(FlexTensor, FlexTensor, ConvGeom), 2>(|(x, w, geom), g, t| {
                let (dx, dw) = conv_backward(&x, &w, g, geom, t[0], t[1]);
                [dx, dw]
            });
        match backward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let g = ConvGeom::of(&xp, &wp, stride, padding);
                let out = conv_forward(&xp, &wp, g);
                prep.finish((xp, wp, g), out)
            }
            OpsKind::UnTracked(prep) => {
                let (xp, wp) = (x.into_primitive(), weight.into_primitive());
                let g = ConvGeom::of(&xp, &wp, stride, padding);
                prep.finish(conv_forward(&xp, &wp, g))
            }
        }
    }

    fn batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        use burn::backend::AutodiffBackend;

        // State: x, gamma, the statistics and, with the ReLU only, the output (its mask). Without
        // the ReLU nothing needs the output: kept here it would outlive its consumer (a ResNet
        // block's residual add, which saves nothing) as one more activation per block.
        let backward =
            FusedBackward::<(FlexTensor, FlexTensor, BnSaved), 3>(|(x, gamma, saved), g, _| {
                let (dx, dgamma, dbeta) = bn_backward(&x, &gamma, &saved, g);
                [Some(dx), Some(dgamma), Some(dbeta)]
            });
        let prepared = backward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (xp, gp, bp) = (
            x.primitive().clone(),
            gamma.primitive().clone(),
            beta.primitive().clone(),
        );
        let fwd = bn_forward(&xp, &gp, &bp, epsilon, relu);
        let (mean, var) = (
            Self::from_inner(fwd.mean.clone()),
            Self::from_inner(fwd.var.clone()),
        );
        let output = match prepared {
            OpsKind::Tracked(prep) => {
                let saved = BnSaved {
                    output: relu.then(|| fwd.output.clone()),
                    mean: fwd.mean,
                    inv_std: fwd.inv_std,
                };
                prep.finish((xp, gp, saved), fwd.output)
            }
            OpsKind::UnTracked(prep) => prep.finish(fwd.output),
        };
        (output, mean, var)
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        // State: x, weight, per-row (mean, 1/σ).
        let backward = FusedBackward::<(FlexTensor, FlexTensor, Arc<Vec<(f32, f32)>>), 3>(
            |(x, w, stats), g, _| {
                let (dx, dw, db) = ln_backward(&x, &w, &stats, g);
                [Some(dx), Some(dw), Some(db)]
            },
        );
        match backward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
                let (out, stats) = ln_forward(&xp, &wp, bias.primitive(), epsilon);
                prep.finish((xp, wp, Arc::new(stats)), out)
            }
            OpsKind::UnTracked(prep) => prep
                .finish(ln_forward(x.primitive(), weight.primitive(), bias.primitive(), epsilon).0),
        }
    }

    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = FusedBackward::<FlexTensor, 1>(|x, g, _| [Some(gelu_backward(&x, g))]);
        match backward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().clone();
                let out = gelu_forward(&xp);
                prep.finish(xp, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(gelu_forward(x.primitive())),
        }
    }

    fn bias_gelu(z: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let backward = FusedBackward::<(FlexTensor, FlexTensor), 2>(|(z, b), g, _| {
            let (dz, db) = bias_gelu_backward(&z, &b, g);
            [Some(dz), Some(db)]
        });
        match backward
            .prepare::<C>([z.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (zp, bp) = (z.primitive().clone(), bias.primitive().clone());
                let out = bias_gelu_forward(&zp, &bp);
                prep.finish((zp, bp), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(bias_gelu_forward(z.primitive(), bias.primitive()))
            }
        }
    }
}

/// Runs `f` inside a function compiled for AVX-512 (x86-64-v4), or else AVX2 + FMA, when this
/// CPU has it, so the element-wise loops inlined into it use 16- (8-) wide vectors and
/// `floor`/`sqrt` become instructions, not libm calls; plainly otherwise. The crate itself is
/// built for baseline x86-64 (SSE2), so that one binary runs everywhere. Results are the same on
/// every path: vectorizing element-wise loops neither reassociates sums nor contracts `a·b + c`
/// into FMAs (sums go through [`lane_sum`]'s fixed lanes).
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has the features the functions are compiled for.
        match simd_level() {
            2 => return unsafe { with_avx512(f) },
            1 => return unsafe { with_avx2(f) },
            _ => {}
        }
    }
    f()
}

/// What [`simd`] runs: 2 = AVX-512 (F, VL, BW, DQ) + FMA, 1 = AVX2 + FMA, 0 = the baseline
/// (or `SELFSUP_NO_FUSED=simd`); detected once.
#[cfg(target_arch = "x86_64")]
pub(super) fn simd_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if disabled("simd") {
            0
        } else if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("fma")
        {
            2
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2,lzcnt")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Sizes of one call: batch, positions, heads, head width, model width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    dh: usize,
    d: usize,
}

impl Dims {
    fn of(qkv: &FlexTensor, n_heads: usize) -> Self {
        let shape = qkv.layout().shape();
        assert_eq!(shape.num_dims(), 3, "fused attention expects [B, T, 3D]");
        let (b, t, d3) = (shape[0], shape[1], shape[2]);
        assert!(
            d3 % 3 == 0 && n_heads > 0 && (d3 / 3) % n_heads == 0,
            "fused attention: width {d3} is not 3 × a multiple of {n_heads} heads"
        );
        let d = d3 / 3;
        Self {
            b,
            t,
            h: n_heads,
            dh: d / n_heads,
            d,
        }
    }
}

/// A pointer the parallel tasks share; each task writes only its own part (a head's columns…).
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

pub(super) fn f32_slice(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("fused attention needs f32 tensors")
                .to_vec(),
        ),
    }
}

fn flex(values: Vec<f32>, shape: [usize; 3]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `dst[m×n] = beta · lhs[m×k] · rhs[k×n]`, every matrix given by (pointer, row stride, column
/// stride) in elements; single-threaded (the parallelism is over images).
///
/// # Safety
/// As [`gemm_strided`]'s.
unsafe fn matmul(
    dims: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    unsafe { gemm_strided(dims, dst, lhs, rhs, beta, false, Parallelism::None) }
}

/// A convolution's weight operand (W, or Wᵀ for dX) for its per-group products: packed once
/// when they run in bf16 (`None` in fp32, where each product reads it in place).
fn conv_lhs(
    lhs: (*const f32, usize, usize),
    (m, k): (usize, usize),
    cols: usize,
) -> Option<super::bf16_gemm::PackedLhs> {
    // SAFETY: use_bf16 is only true once set_matmul_precision checked the CPU; the caller's lhs
    // addresses an m×k matrix.
    super::bf16_gemm::use_bf16((m, cols, k))
        .then(|| unsafe { super::bf16_gemm::pack_lhs(lhs, m, k) })
}

/// [`matmul`] with the left operand prepacked by [`conv_lhs`] where it was.
///
/// # Safety
/// As [`gemm_strided`]'s; `packed` packs `lhs`.
unsafe fn conv_matmul(
    packed: Option<&super::bf16_gemm::PackedLhs>,
    dims: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
) {
    unsafe {
        match packed {
            Some(a) => super::bf16_gemm::gemm_bf16_packed(dims.1, dst, a, rhs, 1.0, false, false),
            None => matmul(dims, dst, lhs, rhs, 1.0),
        }
    }
}

/// `dst[m×n] (+)= beta · lhs[m×k] · rhs[k×n]` (accumulating into dst when `accumulate`), every
/// matrix given by (pointer, row stride, column stride) in elements: the `gemm` crate's call in
/// row-major terms.
///
/// # Safety
/// The pointers with their strides must address valid memory, `dst` not overlapping the others;
/// with `accumulate` false `dst` may be uninitialized (the GEMM only writes it).
///
/// With the bf16 matmul precision on, large products go to [`super::bf16_gemm`] instead.
pub(super) unsafe fn gemm_strided(
    dims: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    if super::bf16_gemm::use_bf16(dims) {
        let parallel = matches!(parallelism, Parallelism::Rayon(_));
        // SAFETY: use_bf16 is only true once set_matmul_precision checked the CPU.
        return unsafe {
            super::bf16_gemm::gemm_bf16(dims, dst, lhs, rhs, beta, accumulate, parallel)
        };
    }
    unsafe { gemm_fp32(dims, dst, lhs, rhs, beta, accumulate, parallelism) }
}

/// [`gemm_strided`] in fp32 always (the `gemm` crate).
///
/// # Safety
/// As [`gemm_strided`]'s.
pub(super) unsafe fn gemm_fp32(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            accumulate,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Query rows per block of the attention kernels: block `[r0, r1)` needs keys `0..r1` only, so
/// the masked upper triangle beyond each diagonal block is never computed. With the
/// register-tiled [`small_gemm`] (AVX-512) blocks are 8 rows (≈ 10% over the triangle at
/// T = 128); the `gemm` crate's per-call setup wants 32 (≈ 25% over).
fn attn_block() -> usize {
    if super::small_gemm::fast() {
        8
    } else {
        32
    }
}

/// The query blocks `(r0, r1)` of `t` positions.
fn attn_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    let blk = attn_block();
    (0..t).step_by(blk).map(move |r0| (r0, (r0 + blk).min(t)))
}

/// `S[r0..r1, ..r1] = scale · Q[r0..r1] K[..r1]ᵀ` into `p` (row `i` at `p[(i − r0) · t..]`), `kt`
/// being Kᵀ `[Dh, T]`, `q` the head's first query (rows `3D` apart).
///
/// # Safety
/// `p` must hold `(r1 − r0) · t` values; `q` rows `r0..r1` of `dh` values must exist.
#[allow(clippy::too_many_arguments)]
unsafe fn attention_scores(
    p: &mut [f32],
    q: &[f32],
    kt: &[f32],
    (r0, r1): (usize, usize),
    (t, dh, d3): (usize, usize, usize),
    scale: f32,
) {
    debug_assert!(p.len() >= (r1 - r0) * t && kt.len() >= dh * t);
    unsafe {
        small_gemm(
            (r1 - r0, r1, dh),
            (p.as_mut_ptr(), t),
            (q.as_ptr().add(r0 * d3), d3, 1),
            (kt.as_ptr(), t),
            scale,
        )
    }
}

/// Forward: (context `[B, T, D]`, softmax statistics `[B, H, T, 2]`: each query row's max score
/// and 1 / Σ exp(score − max)). The probabilities are not kept: the backward recomputes them
/// from the scores and these two numbers, bit for bit as here (flash-attention style), so the
/// saved state is O(T) per head instead of O(T²).
fn attention_forward(qkv: &FlexTensor, n_heads: usize) -> (FlexTensor, FlexTensor) {
    let _time = super::op_times::span("attention forward");
    let Dims { b, t, h, dh, d } = Dims::of(qkv, n_heads);
    let x = f32_slice(qkv);
    let scale = 1.0 / (dh as f32).sqrt();
    let blk = attn_block();
    // Written only through the GEMMs' pointers, every element: no zeroing pass.
    let mut out = uninit_vec(b * t * d);
    let mut stats = vec![0.0f32; b * h * t * 2];
    let out_ptr = SharedMut(out.as_mut_ptr().cast::<f32>());
    let x = &x[..];
    stats.par_chunks_mut(2 * t).enumerate().for_each_init(
        || (vec![0.0f32; dh * t], vec![0.0f32; blk * t]),
        |(kt, p), (bh, st)| {
            let (bi, hi) = (bh / h, bh % h);
            let base = bi * t * 3 * d + hi * dh;
            let (q, k, v) = (&x[base..], &x[base + d..], &x[base + 2 * d..]);
            transpose(k, 3 * d, t, dh, kt);
            let out_ptr = out_ptr;
            for (r0, r1) in attn_blocks(t) {
                // SAFETY: p holds blk ≥ r1 − r0 rows of t.
                unsafe { attention_scores(p, q, kt, (r0, r1), (t, dh, 3 * d), scale) };
                // causal mask + softmax, one row at a time; masked entries (up to the block's
                // last key, all that the product below reads) are exactly 0
                simd(
                    #[inline(always)]
                    || {
                        for i in r0..r1 {
                            let row = &mut p[(i - r0) * t..(i - r0 + 1) * t];
                            let max = lane_max(&row[..=i]);
                            for s in &mut row[..=i] {
                                *s = fast_exp(*s - max);
                            }
                            let inv = 1.0 / lane_sum([&row[..=i]], |[x]| x);
                            row[..=i].iter_mut().for_each(|s| *s *= inv);
                            row[i + 1..r1].iter_mut().for_each(|s| *s = 0.0);
                            (st[2 * i], st[2 * i + 1]) = (max, inv);
                        }
                    },
                );
                unsafe {
                    // O[r0..r1] = P[r0..r1, ..r1] V[..r1], into this head's output columns
                    small_gemm(
                        (r1 - r0, dh, r1),
                        (out_ptr.0.add(bi * t * d + r0 * d + hi * dh), d),
                        (p.as_ptr(), t, 1),
                        (v.as_ptr(), 3 * d),
                        1.0,
                    );
                }
            }
        },
    );
    // SAFETY: the blocks of every (sequence, head) wrote all rows of that head's columns.
    let out = unsafe { assume_filled(out) };
    (
        flex(out, [b, t, d]),
        FlexTensor::from_data(TensorData::new(stats, [b, h, t, 2])),
    )
}

/// The largest attention backward work area (floats) kept per thread between calls: 64 MiB.
const ATTN_SCRATCH_MAX: usize = 16 << 20;

thread_local! {
    /// The attention backward's per-thread work matrices.
    static ATTN_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Backward: the gradient `[B, T, 3D]` of the input from that of the output `[B, T, D]`, with the
/// forward's softmax statistics.
fn attention_backward(
    qkv: &FlexTensor,
    stats: &FlexTensor,
    grad: &FlexTensor,
    n_heads: usize,
) -> FlexTensor {
    let _time = super::op_times::span("attention backward");
    let Dims { b, t, h, dh, d } = Dims::of(qkv, n_heads);
    let x = f32_slice(qkv);
    let st_all = f32_slice(stats);
    let g = f32_slice(grad);
    let scale = 1.0 / (dh as f32).sqrt();
    // Written only through the GEMMs' pointers, every element: no zeroing pass.
    let mut dx = uninit_vec(b * t * 3 * d);
    let dx_ptr = SharedMut(dx.as_mut_ptr().cast::<f32>());
    let (x, st_all, g) = (&x[..], &st_all[..], &g[..]);
    // Work matrices per (sequence, head): two T × T and two Dh × T.
    let need = 2 * t * t + 2 * dh * t;
    let head = |bh: usize, scratch: &mut [f32]| {
        let (p, rest) = scratch.split_at_mut(t * t);
        let (ds, rest) = rest.split_at_mut(t * t);
        let (kt, rest) = rest.split_at_mut(dh * t);
        let vt = &mut rest[..dh * t];
        let (bi, hi) = (bh / h, bh % h);
        let base = bi * t * 3 * d + hi * dh;
        let (q, k, v) = (&x[base..], &x[base + d..], &x[base + 2 * d..]);
        let st = &st_all[bh * 2 * t..(bh + 1) * 2 * t];
        let go = &g[bi * t * d + hi * dh..];
        let dx_ptr = dx_ptr;
        let dbase = unsafe { dx_ptr.0.add(base) };
        transpose(k, 3 * d, t, dh, kt);
        transpose(v, 3 * d, t, dh, vt);
        // Pass 1, per query block: P again from the scores and the forward's statistics
        // (the same products and the same arithmetic, so the same bits), zero where masked;
        // dP = dO Vᵀ (keys ..r1), then dS = P ∘ (dP − Σⱼ P dP) row by row. Entries of `p` and
        // `ds` past each block's last key keep stale values that the products never read.
        for (r0, r1) in attn_blocks(t) {
            unsafe {
                attention_scores(&mut p[r0 * t..], q, kt, (r0, r1), (t, dh, 3 * d), scale);
                small_gemm(
                    (r1 - r0, r1, dh),
                    (ds.as_mut_ptr().add(r0 * t), t),
                    (go.as_ptr().add(r0 * d), d, 1),
                    (vt.as_ptr(), t),
                    1.0,
                );
            }
            simd(
                #[inline(always)]
                || {
                    for i in r0..r1 {
                        let (pr, dr) = (&mut p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
                        let (max, inv) = (st[2 * i], st[2 * i + 1]);
                        for s in &mut pr[..=i] {
                            *s = fast_exp(*s - max);
                        }
                        pr[..=i].iter_mut().for_each(|s| *s *= inv);
                        pr[i + 1..r1].iter_mut().for_each(|s| *s = 0.0);
                        let dot = lane_sum([&pr[..=i], &dr[..=i]], |[p, d]| p * d);
                        for (dsv, pv) in dr[..=i].iter_mut().zip(&pr[..=i]) {
                            *dsv = pv * (*dsv - dot);
                        }
                        dr[i + 1..r1].iter_mut().for_each(|s| *s = 0.0);
                    }
                },
            );
            unsafe {
                // dQ[r0..r1] = scale · dS[r0..r1, ..r1] K[..r1]
                small_gemm(
                    (r1 - r0, dh, r1),
                    (dbase.add(r0 * 3 * d), 3 * d),
                    (ds.as_ptr().add(r0 * t), t, 1),
                    (k.as_ptr(), 3 * d),
                    scale,
                );
            }
        }
        // Pass 2, per key block [c0, c1): only queries i ≥ c0 attend to it.
        for (c0, c1) in attn_blocks(t) {
            unsafe {
                // dV[c0..c1] = P[c0.., c0..c1]ᵀ dO[c0..]
                small_gemm(
                    (c1 - c0, dh, t - c0),
                    (dbase.add(2 * d + c0 * 3 * d), 3 * d),
                    (p.as_ptr().add(c0 * t + c0), 1, t),
                    (go.as_ptr().add(c0 * d), d),
                    1.0,
                );
                // dK[c0..c1] = scale · dS[c0.., c0..c1]ᵀ Q[c0..]
                small_gemm(
                    (c1 - c0, dh, t - c0),
                    (dbase.add(d + c0 * 3 * d), 3 * d),
                    (ds.as_ptr().add(c0 * t + c0), 1, t),
                    (q.as_ptr().add(c0 * 3 * d), 3 * d),
                    scale,
                );
            }
        }
    };
    (0..b * h).into_par_iter().for_each(|bh| {
        if need <= ATTN_SCRATCH_MAX {
            // Kept per thread between calls: at T = 1024 (8 MiB) rayon's per-split
            // initialisation would allocate and fault them in again several times per call.
            ATTN_SCRATCH.with_borrow_mut(|scratch| {
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                head(bh, &mut scratch[..need]);
            });
        } else {
            // Past T ≈ 2900 the matrices are not worth keeping for the rest of the process.
            head(bh, &mut vec![0.0; need]);
        }
    });
    // SAFETY: dQ, dK and dV of every (sequence, head) cover all rows of its columns.
    let dx = unsafe { assume_filled(dx) };
    flex(dx, [b, t, 3 * d])
}

/// 2-D convolution with `conv`'s weights and bias: the fused kernel on the CPU backend when the
/// layer is an ordinary one (one group, no dilation, symmetric padding), `conv.forward` otherwise.
pub fn conv2d(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    use burn::nn::PaddingConfig2d;
    let [kh, kw] = conv.kernel_size;
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => Some([t, l]),
        // `Same` with an odd kernel and stride 1 is symmetric.
        PaddingConfig2d::Same if kh % 2 == 1 && kw % 2 == 1 && conv.stride == [1, 1] => {
            Some([kh / 2, kw / 2])
        }
        _ => None,
    };
    let plain = conv.groups == 1 && conv.dilation == [1, 1];
    match padding {
        Some(padding) if plain && fused_available("conv", &x) => {
            let weight = conv.weight.val();
            let y =
                Tensor::<4>::from_dispatch(<burn::backend::Dispatch as FusedOps>::conv2d_nobias(
                    x.into_dispatch(),
                    weight.into_dispatch(),
                    conv.stride,
                    padding,
                ));
            match &conv.bias {
                Some(bias) => {
                    let c = bias.val().dims()[0];
                    y + bias.val().reshape([1, c, 1, 1])
                }
                None => y,
            }
        }
        _ => conv.forward(x),
    }
}

/// Shapes of one convolution.
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    fn of(x: &FlexTensor, weight: &FlexTensor, stride: [usize; 2], padding: [usize; 2]) -> Self {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        assert!(
            xs.num_dims() == 4 && ws.num_dims() == 4 && xs[1] == ws[1],
            "fused conv2d: input {xs:?} and weight {ws:?} disagree"
        );
        let (kh, kw) = (ws[2], ws[3]);
        let (h, w) = (xs[2], xs[3]);
        assert!(
            h + 2 * padding[0] >= kh && w + 2 * padding[1] >= kw && stride[0] > 0 && stride[1] > 0,
            "fused conv2d: kernel larger than the padded input"
        );
        Self {
            n: xs[0],
            cin: xs[1],
            h,
            w,
            cout: ws[0],
            kh,
            kw,
            sh: stride[0],
            sw: stride[1],
            ph: padding[0],
            pw: padding[1],
            ho: (h + 2 * padding[0] - kh) / stride[0] + 1,
            wo: (w + 2 * padding[1] - kw) / stride[1] + 1,
        }
    }

    /// Whether [`super::winograd`] computes this layer (forward and input gradient): 3×3, stride
    /// 1, padding 1, fp32 products, and enough channels both ways for its 16 GEMMs (`C_in` and
    /// `C_out` are their depths, forward and backward) to beat im2col's one.
    fn winograd(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (3, 3, 1, 1, 1, 1)
            && self.cin >= WINOGRAD_MIN_CHANNELS
            && self.cout >= WINOGRAD_MIN_CHANNELS
            && super::bf16_gemm::matmul_precision() == super::bf16_gemm::MatmulPrecision::Fp32
            && !disabled("winograd")
    }

    /// Rows of the column matrix: C·kh·kw.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Images per GEMM: enough that the GEMM has ≥ 64 columns (small late feature maps). Fewer
    /// columns keep the group's im2col buffer in cache: SimCLR B 420 → 400 CPU-ms per step with
    /// 64 instead of 256 (1024: 500; 16: 410).
    fn group(&self) -> usize {
        64usize.div_ceil(self.p()).clamp(1, self.n.max(1))
    }

    /// For kernel offset `ki` (`kj`), the output rows (columns) whose input row (column) lies
    /// inside the image: `lo..hi`.
    fn valid(
        &self,
        k: usize,
        stride: usize,
        pad: usize,
        size: usize,
        out: usize,
    ) -> (usize, usize) {
        // input index = o·stride + k − pad must be in 0..size
        let lo = pad.saturating_sub(k).div_ceil(stride);
        let hi = if size + pad > k {
            (size + pad - k - 1) / stride + 1
        } else {
            0
        };
        (lo.min(out), hi.min(out).max(lo.min(out)))
    }
}

/// im2col of one image `x` `[C, H, W]` into `cols` rows `(c, ki, kj)` × columns `[col0, col0+P)`
/// of a matrix with `ld` columns.
fn im2col(x: &[f32], g: &ConvGeom, cols: &mut [f32], ld: usize, col0: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == 2 {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { im2col_avx512(x, g, cols, ld, col0) };
    }
    im2col_rows::<false>(x, g, cols, ld, col0)
}

/// [`im2col`] with the row copies in AVX-512 (compiled for it so that the intrinsics inline):
/// they were scalar loads and stores, ≈ 20% of the bf16 SimCLR step's CPU time.
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn im2col_avx512(x: &[f32], g: &ConvGeom, cols: &mut [f32], ld: usize, col0: usize) {
    im2col_rows::<true>(x, g, cols, ld, col0)
}

#[inline(always)]
fn im2col_rows<const AVX512: bool>(
    x: &[f32],
    g: &ConvGeom,
    cols: &mut [f32],
    ld: usize,
    col0: usize,
) {
    let (p, wo) = (g.p(), g.wo);
    for c in 0..g.cin {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(ki, g.sh, g.ph, g.h, g.ho);
            for kj in 0..g.kw {
                let (ow_lo, ow_hi) = g.valid(kj, g.sw, g.pw, g.w, g.wo);
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut cols[row * ld + col0..row * ld + col0 + p];
                dst[..oh_lo * wo].fill(0.0);
                dst[oh_hi * wo..].fill(0.0);
                // The rows inside the image; the few border entries of each are zeroed by hand
                // (a `fill` per 4-wide row costs a memset call).
                let (sw, base) = (g.sw, kj as isize - g.pw as isize);
                for oh in oh_lo..oh_hi {
                    let src = &plane[(oh * g.sh + ki - g.ph) * g.w..][..g.w];
                    let d = &mut dst[oh * wo..(oh + 1) * wo];
                    for v in &mut d[..ow_lo] {
                        *v = 0.0;
                    }
                    for v in &mut d[ow_hi..] {
                        *v = 0.0;
                    }
                    // ow in ow_lo..ow_hi reads src[ow·sw + kj − pw], inside the row by `valid`.
                    let first = (ow_lo as isize * sw as isize + base) as usize;
                    let cnt = ow_hi.saturating_sub(ow_lo);
                    if cnt > 0 {
                        let last = first + (cnt - 1) * sw;
                        assert!(last < src.len());
                        let (sp, dp) = (src.as_ptr(), d[ow_lo..ow_hi].as_mut_ptr());
                        #[cfg(target_arch = "x86_64")]
                        if AVX512 && sw <= 2 {
                            // SAFETY: reads src[first..=last], writes d[ow_lo..ow_hi]; AVX-512F
                            // (the only caller with AVX512 = true is compiled for it).
                            unsafe { gather_row(sp.add(first), sw, dp, cnt) };
                            continue;
                        }
                        for j in 0..cnt {
                            // SAFETY: first + j·sw ≤ last < src.len() (asserted), j < cnt.
                            unsafe { *dp.add(j) = *sp.add(first + j * sw) };
                        }
                    }
                }
            }
        }
    }
}

/// `dst[j] = src[j·sw]` for `j < cnt`, `sw` 1 or 2, 16 outputs per step (stride 2: two loads and
/// an even-lane permute); masked loads read nothing past `src[(cnt − 1)·sw]`.
///
/// # Safety
/// AVX-512F; `src[..=(cnt − 1)·sw]` readable, `dst[..cnt]` writable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gather_row(src: *const f32, sw: usize, dst: *mut f32, cnt: usize) {
    use super::bf16_gemm::low_mask as mask;
    use std::arch::x86_64::*;
    unsafe {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for j0 in (0..cnt).step_by(16) {
            let n = (cnt - j0).min(16);
            let v = if sw == 1 {
                _mm512_maskz_loadu_ps(mask(n), src.add(j0))
            } else {
                // inputs 2·j0 … 2·(j0 + n − 1): a span of 2n − 1 values
                let span = 2 * n - 1;
                let lo = _mm512_maskz_loadu_ps(mask(span), src.add(2 * j0));
                let hi = _mm512_maskz_loadu_ps(mask(span.saturating_sub(16)), src.add(2 * j0 + 16));
                _mm512_permutex2var_ps(lo, even, hi)
            };
            _mm512_mask_storeu_ps(dst.add(j0), mask(n), v);
        }
    }
}

/// col2im: adds the columns `[col0, col0+P)` of `cols` back onto the image gradient `dx` `[C, H, W]`.
fn col2im(cols: &[f32], g: &ConvGeom, dx: &mut [f32], ld: usize, col0: usize) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == 2 {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { col2im_avx512(cols, g, dx, ld, col0) };
    }
    col2im_rows::<false>(cols, g, dx, ld, col0)
}

/// [`col2im`] with the row additions in AVX-512 (same additions in the same order: the same sums).
///
/// # Safety
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn col2im_avx512(cols: &[f32], g: &ConvGeom, dx: &mut [f32], ld: usize, col0: usize) {
    col2im_rows::<true>(cols, g, dx, ld, col0)
}

#[inline(always)]
fn col2im_rows<const AVX512: bool>(
    cols: &[f32],
    g: &ConvGeom,
    dx: &mut [f32],
    ld: usize,
    col0: usize,
) {
    let wo = g.wo;
    for c in 0..g.cin {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (oh_lo, oh_hi) = g.valid(ki, g.sh, g.ph, g.h, g.ho);
            for kj in 0..g.kw {
                let (ow_lo, ow_hi) = g.valid(kj, g.sw, g.pw, g.w, g.wo);
                if ow_hi <= ow_lo {
                    // No output column reads the image here (and `start` below would fall
                    // outside the row: a 5-wide kernel with padding 2 on a 1-wide image).
                    continue;
                }
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &cols[row * ld + col0..];
                for oh in oh_lo..oh_hi {
                    let d = &mut plane[(oh * g.sh + ki - g.ph) * g.w..][..g.w];
                    let s = &src[oh * wo..(oh + 1) * wo];
                    let start = ow_lo * g.sw + kj - g.pw;
                    let cnt = ow_hi - ow_lo;
                    #[cfg(target_arch = "x86_64")]
                    if AVX512 && g.sw <= 2 {
                        assert!(start + (cnt - 1) * g.sw < d.len());
                        // SAFETY: as asserted, the row holds every index written; AVX-512F (the
                        // only caller with AVX512 = true is compiled for it).
                        unsafe {
                            scatter_add_row(
                                s[ow_lo..ow_hi].as_ptr(),
                                g.sw,
                                d[start..].as_mut_ptr(),
                                cnt,
                            )
                        };
                        continue;
                    }
                    let dst = d[start..].iter_mut().step_by(g.sw);
                    for (dv, &sv) in dst.zip(&s[ow_lo..ow_hi]) {
                        *dv += sv;
                    }
                }
            }
        }
    }
}

/// `dst[j·sw] += src[j]` for `j < cnt`, `sw` 1 or 2, 16 inputs per step (stride 2: the values
/// spread to even lanes of two registers, odd lanes adding 0); masked accesses touch nothing past
/// `dst[(cnt − 1)·sw]`.
///
/// # Safety
/// AVX-512F; `src[..cnt]` readable, `dst[..=(cnt − 1)·sw]` writable, not overlapping.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scatter_add_row(src: *const f32, sw: usize, dst: *mut f32, cnt: usize) {
    use super::bf16_gemm::low_mask as mask;
    use std::arch::x86_64::*;
    unsafe {
        let lo_idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let hi_idx = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        for j0 in (0..cnt).step_by(16) {
            let n = (cnt - j0).min(16);
            let v = _mm512_maskz_loadu_ps(mask(n), src.add(j0));
            if sw == 1 {
                let d = dst.add(j0);
                let sum = _mm512_add_ps(_mm512_maskz_loadu_ps(mask(n), d), v);
                _mm512_mask_storeu_ps(d, mask(n), sum);
            } else {
                let span = 2 * n - 1;
                let (mlo, mhi) = (mask(span), mask(span.saturating_sub(16)));
                let d = dst.add(2 * j0);
                let lo = _mm512_maskz_permutexvar_ps(0x5555, lo_idx, v);
                let hi = _mm512_maskz_permutexvar_ps(0x5555, hi_idx, v);
                let slo = _mm512_add_ps(_mm512_maskz_loadu_ps(mlo, d), lo);
                let shi = _mm512_add_ps(_mm512_maskz_loadu_ps(mhi, d.add(16)), hi);
                _mm512_mask_storeu_ps(d, mlo, slo);
                _mm512_mask_storeu_ps(d.add(16), mhi, shi);
            }
        }
    }
}

/// Forward: for each group of images, cols `[K, G·P]`, `Y = W · cols` `[C', G·P]`, scattered
/// into NCHW.
fn conv_forward(x: &FlexTensor, weight: &FlexTensor, g: ConvGeom) -> FlexTensor {
    let _time = super::op_times::span("conv forward");
    let xs = f32_slice(x);
    let ws = f32_slice(weight);
    if g.winograd() {
        let u = super::winograd::transform_filters(&ws, g.cout, g.cin, false);
        let y = super::winograd::conv3x3(&xs, &u, (g.n, g.cin, g.h, g.w), g.cout);
        return FlexTensor::from_data(TensorData::new(y, [g.n, g.cout, g.ho, g.wo]));
    }
    let (k, p, grp) = (g.k(), g.p(), g.group());
    // Every element is written below (by the GEMM or by the copies out of `y`): not zeroed first
    // (63 MB of memset per SimCLR step otherwise).
    let mut out = uninit_vec(g.n * g.cout * p);
    let (xs, ws) = (&xs[..], &ws[..]);
    let img_in = g.cin * g.h * g.w;
    let packed_w = conv_lhs((ws.as_ptr(), k, 1), (g.cout, k), grp * p);
    let packed_w = packed_w.as_ref();
    out.par_chunks_mut(grp * g.cout * p)
        .enumerate()
        .for_each_init(
            || (vec![0.0f32; k * grp * p], vec![0.0f32; g.cout * grp * p]),
            |(cols, y), (gi, out)| {
                let imgs = out.len() / (g.cout * p);
                let ld = imgs * p;
                for i in 0..imgs {
                    let n = gi * grp + i;
                    im2col(&xs[n * img_in..(n + 1) * img_in], &g, cols, ld, i * p);
                }
                if imgs == 1 {
                    // One image: write straight into the output.
                    unsafe {
                        conv_matmul(
                            packed_w,
                            (g.cout, p, k),
                            (out.as_mut_ptr().cast(), p, 1),
                            (ws.as_ptr(), k, 1),
                            (cols.as_ptr(), ld, 1),
                        );
                    }
                    return;
                }
                unsafe {
                    conv_matmul(
                        packed_w,
                        (g.cout, ld, k),
                        (y.as_mut_ptr(), ld, 1),
                        (ws.as_ptr(), k, 1),
                        (cols.as_ptr(), ld, 1),
                    );
                }
                for i in 0..imgs {
                    for co in 0..g.cout {
                        let (o, y) = (
                            &mut out[(i * g.cout + co) * p..][..p],
                            &y[co * ld + i * p..][..p],
                        );
                        for (o, y) in o.iter_mut().zip(y) {
                            o.write(*y);
                        }
                    }
                }
            },
        );
    // SAFETY: each chunk is written whole, by the one-image GEMM or by the copies (imgs·cout
    // rows of p).
    let out = unsafe { assume_filled(out) };
    FlexTensor::from_data(TensorData::new(out, [g.n, g.cout, g.ho, g.wo]))
}

/// Backward: `dW = Σ dY · colsᵀ`, `dX = col2im(Wᵀ · dY)`, per group of images in parallel (the
/// columns are rebuilt rather than kept from the forward).
fn conv_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    g: ConvGeom,
    want_dx: bool,
    want_dw: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let _time = super::op_times::span("conv backward");
    if g.winograd() {
        // dX is the convolution of dY with the flipped, channel-swapped filter (again 3×3,
        // stride 1, padding 1); dW comes from the same tiles (`winograd::weight_grad3x3`).
        let gs = f32_slice(grad);
        let dims = (g.n, g.cout, g.h, g.w);
        let dx = want_dx.then(|| {
            let u = super::winograd::transform_filters(&f32_slice(weight), g.cout, g.cin, true);
            let dx = super::winograd::conv3x3(&gs, &u, dims, g.cin);
            FlexTensor::from_data(TensorData::new(dx, [g.n, g.cin, g.h, g.w]))
        });
        let dw = want_dw.then(|| {
            let dw =
                super::winograd::weight_grad3x3(&f32_slice(x), &gs, (g.n, g.cin, g.h, g.w), g.cout);
            FlexTensor::from_data(TensorData::new(dw, [g.cout, g.cin, 3, 3]))
        });
        return (dx, dw);
    }
    let xs = f32_slice(x);
    let ws = f32_slice(weight);
    let gs = f32_slice(grad);
    let (k, p, grp) = (g.k(), g.p(), g.group());
    let img_in = g.cin * g.h * g.w;
    let img_out = g.cout * p;
    let mut dx = if want_dx {
        vec![0.0f32; g.n * img_in]
    } else {
        vec![]
    };
    let dx_ptr = SharedMut(dx.as_mut_ptr());
    let (xs, ws, gs) = (&xs[..], &ws[..], &gs[..]);
    let groups = g.n.div_ceil(grp);
    // A fixed number of chunks of consecutive groups (independent of the thread count), each with
    // its own column buffer and partial dW; the partials are summed in chunk order, so the result
    // does not depend on how rayon schedules the work (same seed, same numbers).
    let chunks = groups.min(CONV_CHUNKS);
    let packed_wt = match want_dx {
        true => conv_lhs((ws.as_ptr(), 1, k), (k, g.cout), grp * p),
        false => None,
    };
    let packed_wt = packed_wt.as_ref();
    let partials: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|chunk| {
            let dx_ptr = dx_ptr;
            let mut dw = if want_dw {
                vec![0.0f32; g.cout * k]
            } else {
                vec![]
            };
            let mut cols = vec![0.0f32; k * grp * p];
            let mut dy = vec![0.0f32; g.cout * grp * p];
            for gi in chunk * groups / chunks..(chunk + 1) * groups / chunks {
                let first = gi * grp;
                let imgs = grp.min(g.n - first);
                let ld = imgs * p;
                // dY of the group as [C', G·P]
                for i in 0..imgs {
                    let src = &gs[(first + i) * img_out..][..img_out];
                    for co in 0..g.cout {
                        dy[co * ld + i * p..][..p].copy_from_slice(&src[co * p..][..p]);
                    }
                }
                if want_dw {
                    for i in 0..imgs {
                        let n = first + i;
                        im2col(&xs[n * img_in..(n + 1) * img_in], &g, &mut cols, ld, i * p);
                    }
                    // dW += dY · colsᵀ
                    unsafe {
                        gemm_strided(
                            (g.cout, k, ld),
                            (dw.as_mut_ptr(), k, 1),
                            (dy.as_ptr(), ld, 1),
                            (cols.as_ptr(), 1, ld),
                            1.0,
                            true,
                            Parallelism::None,
                        );
                    }
                }
                if want_dx {
                    // dcols = Wᵀ · dY, then col2im per image (each group owns its images)
                    unsafe {
                        conv_matmul(
                            packed_wt,
                            (k, ld, g.cout),
                            (cols.as_mut_ptr(), ld, 1),
                            (ws.as_ptr(), 1, k),
                            (dy.as_ptr(), ld, 1),
                        );
                    }
                    for i in 0..imgs {
                        let n = first + i;
                        let dxn = unsafe {
                            std::slice::from_raw_parts_mut(dx_ptr.0.add(n * img_in), img_in)
                        };
                        col2im(&cols, &g, dxn, ld, i * p);
                    }
                }
            }
            dw
        })
        .collect();
    let mut dw = if want_dw {
        vec![0.0f32; g.cout * k]
    } else {
        vec![]
    };
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    let dx = want_dx.then(|| FlexTensor::from_data(TensorData::new(dx, [g.n, g.cin, g.h, g.w])));
    let dw =
        want_dw.then(|| FlexTensor::from_data(TensorData::new(dw, [g.cout, g.cin, g.kh, g.kw])));
    (dx, dw)
}

/// Training-mode batch normalization of `x` (any rank ≥ 2: `[N, C]` after a linear layer,
/// `[N, C, H, W]` after a convolution), optionally followed by ReLU, through the fused kernel:
/// (output, batch mean, biased batch variance). `None` where the kernel does not apply (not the
/// CPU backend); the caller then composes burn's ops.
pub fn batch_norm_train_nd<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> Option<(Tensor<D>, Tensor<1>, Tensor<1>)> {
    if D < 2 || !fused_available("batchnorm", &x) {
        return None;
    }
    let (out, mean, var) = <burn::backend::Dispatch as FusedOps>::batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    Some((
        Tensor::from_dispatch(out),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    ))
}

/// What the batch-norm backward needs besides x and gamma.
#[derive(Clone, Debug)]
struct BnSaved {
    /// The output, for the ReLU's mask; `None` without the ReLU.
    output: Option<FlexTensor>,
    mean: FlexTensor,
    inv_std: Vec<f32>,
}

/// What the batch-norm forward computes.
#[derive(Clone, Debug)]
struct BnForward {
    output: FlexTensor,
    mean: FlexTensor,
    /// Biased variance (divided by the count).
    var: FlexTensor,
    inv_std: Vec<f32>,
}

/// (images N, channels C, values per channel per image S) of `[N, C, …]`.
fn bn_dims(x: &FlexTensor) -> (usize, usize, usize) {
    let shape = x.layout().shape();
    assert!(
        shape.num_dims() >= 2,
        "batch norm needs [N, C, …], got {shape:?}"
    );
    let (n, c) = (shape[0], shape[1]);
    let s = (2..shape.num_dims()).map(|i| shape[i]).product();
    (n, c, s)
}

/// Σ f(a[j], b[j], …) over equal-length slices, with 16 independent accumulators so that the
/// sum vectorizes (a single running f32 sum is one long dependency chain): lane l sums the j ≡ l
/// (mod 16) of the full blocks, then the lanes are added in order, then the tail. The slices are
/// cut per block of 16, so no bounds check sits in the element loop (with an index closure, the
/// per-element checks kept LLVM from vectorizing some of these sums: scalar `vmulss`/`vaddss`).
#[inline(always)]
pub(super) fn lane_sum<const K: usize>(xs: [&[f32]; K], f: impl Fn([f32; K]) -> f32) -> f32 {
    const L: usize = 16;
    let len = xs.first().map_or(0, |x| x.len());
    assert!(
        xs.iter().all(|x| x.len() == len),
        "lane_sum: slices of different lengths"
    );
    let mut acc = [0.0f32; L];
    let full = len / L * L;
    let mut i = 0;
    while i < full {
        let blk: [&[f32; L]; K] = xs.map(|x| x[i..i + L].try_into().unwrap());
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(std::array::from_fn(|k| blk[k][l]));
        }
        i += L;
    }
    let mut tail = 0.0f32;
    for j in full..len {
        tail += f(std::array::from_fn(|k| xs[k][j]));
    }
    acc.iter().sum::<f32>() + tail
}

/// max over `x` (−∞ when empty; NaNs are skipped, as `f32::max` does), with 16 lanes so that it
/// vectorizes: `fold(f32::NEG_INFINITY, f32::max)` is a serial chain of NaN-checking maxes.
#[inline(always)]
pub(super) fn lane_max(x: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [f32::NEG_INFINITY; L];
    let mut blocks = x.chunks_exact(L);
    for blk in &mut blocks {
        for (a, &v) in acc.iter_mut().zip(blk) {
            *a = if v > *a { v } else { *a };
        }
    }
    let tail = blocks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

fn bn_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
    relu: bool,
) -> BnForward {
    let _time = super::op_times::span("batch norm forward");
    let (n, c, s) = bn_dims(x);
    let xs = f32_slice(x);
    let (gs, bs) = (f32_slice(gamma), f32_slice(beta));
    let (xs, gs, bs) = (&xs[..], &gs[..], &bs[..]);
    let count = (n * s) as f64;
    let mut out = vec![0.0f32; n * c * s];
    let out_ptr = SharedMut(out.as_mut_ptr());
    // Per channel, in parallel: mean, then the variance around it (two passes, per-image partial
    // sums added in f64), then the affine output (+ ReLU).
    let stats: Vec<(f32, f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            simd(
                #[inline(always)]
                || {
                    let out_ptr = out_ptr;
                    let plane = |i: usize| &xs[(i * c + ch) * s..][..s];
                    // Plain loops, not iterator sums: `Map::fold` was not inlined into the AVX-512
                    // function and ran scalar.
                    let mut sum = 0.0f64;
                    for i in 0..n {
                        let p = plane(i);
                        sum += lane_sum([p], |[x]| x) as f64;
                    }
                    let mean = sum / count;
                    let m32 = mean as f32;
                    let mut sq = 0.0f64;
                    for i in 0..n {
                        let p = plane(i);
                        sq += lane_sum([p], |[x]| (x - m32) * (x - m32)) as f64;
                    }
                    let var = sq / count;
                    let inv_std = (1.0 / (var + eps).sqrt()) as f32;
                    let (scale, shift) = (gs[ch] * inv_std, bs[ch]);
                    for i in 0..n {
                        let p = plane(i);
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(out_ptr.0.add((i * c + ch) * s), s)
                        };
                        if relu {
                            for (y, &v) in o.iter_mut().zip(p) {
                                *y = ((v - m32) * scale + shift).max(0.0);
                            }
                        } else {
                            for (y, &v) in o.iter_mut().zip(p) {
                                *y = (v - m32) * scale + shift;
                            }
                        }
                    }
                    (m32, var as f32, inv_std)
                },
            )
        })
        .collect();
    let shape = x.layout().shape().clone();
    let vec1 = |f: fn(&(f32, f32, f32)) -> f32| {
        FlexTensor::from_data(TensorData::new(
            stats.iter().map(f).collect::<Vec<f32>>(),
            [c],
        ))
    };
    BnForward {
        output: FlexTensor::from_data(TensorData::new(out, shape)),
        mean: vec1(|t| t.0),
        var: vec1(|t| t.1),
        inv_std: stats.iter().map(|t| t.2).collect(),
    }
}

/// `dβ = Σ g`, `dγ = Σ g·x̂`, `dx = γ/σ · (g − dβ/m − x̂·dγ/m)` with `g` the output gradient
/// (zeroed where the ReLU was off) and `m` the count per channel.
fn bn_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    fwd: &BnSaved,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let _time = super::op_times::span("batch norm backward");
    let (n, c, s) = bn_dims(x);
    let relu = fwd.output.is_some();
    // Without the ReLU `g` ignores y: dy stands in for it, so the loops stay the same.
    let (xs, gs, ys, dys) = (
        f32_slice(x),
        f32_slice(gamma),
        f32_slice(fwd.output.as_ref().unwrap_or(grad)),
        f32_slice(grad),
    );
    let ms = f32_slice(&fwd.mean);
    let (xs, gs, ys, dys, ms) = (&xs[..], &gs[..], &ys[..], &dys[..], &ms[..]);
    let count = (n * s) as f32;
    let mut dx = vec![0.0f32; n * c * s];
    let dx_ptr = SharedMut(dx.as_mut_ptr());
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            simd(
                #[inline(always)]
                || {
                    let dx_ptr = dx_ptr;
                    let (mean, inv_std) = (ms[ch], fwd.inv_std[ch]);
                    let range = |i: usize| (i * c + ch) * s..(i * c + ch + 1) * s;
                    // g = dy, masked by the ReLU (a select, so the loops stay vectorizable)
                    let planes = |i: usize| {
                        let r = range(i);
                        (&xs[r.clone()], &ys[r.clone()], &dys[r])
                    };
                    let g = |y: f32, dy: f32| if relu && y <= 0.0 { 0.0 } else { dy };
                    let (mut dbeta, mut dxm) = (0.0f64, 0.0f64);
                    for i in 0..n {
                        let (xp, yp, dyp) = planes(i);
                        dbeta += lane_sum([yp, dyp], |[y, dy]| g(y, dy)) as f64;
                        dxm += lane_sum([xp, yp, dyp], |[x, y, dy]| g(y, dy) * (x - mean)) as f64;
                    }
                    let dgamma = (dxm as f32) * inv_std;
                    let dbeta = dbeta as f32;
                    let k = gs[ch] * inv_std;
                    let (mb, mg) = (dbeta / count, dgamma / count * inv_std);
                    for i in 0..n {
                        let (xp, yp, dyp) = planes(i);
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(dx_ptr.0.add(range(i).start), s)
                        };
                        for j in 0..s {
                            o[j] = k * (g(yp[j], dyp[j]) - mb - (xp[j] - mean) * mg);
                        }
                    }
                    (dgamma, dbeta)
                },
            )
        })
        .collect();
    let shape = x.layout().shape().clone();
    (
        FlexTensor::from_data(TensorData::new(dx, shape)),
        FlexTensor::from_data(TensorData::new(
            sums.iter().map(|t| t.0).collect::<Vec<f32>>(),
            [c],
        )),
        FlexTensor::from_data(TensorData::new(
            sums.iter().map(|t| t.1).collect::<Vec<f32>>(),
            [c],
        )),
    )
}

/// LayerNorm through the fused kernel; `None` where it does not apply (not the CPU backend).
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<1>,
    bias: Tensor<1>,
    epsilon: f64,
) -> Option<Tensor<D>> {
    if !fused_available("layernorm", &x) {
        return None;
    }
    Some(Tensor::from_dispatch(
        <burn::backend::Dispatch as FusedOps>::layer_norm(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            epsilon,
        ),
    ))
}

/// Chunks of image groups in the conv backward (fixed, for a deterministic dW sum).
const CONV_CHUNKS: usize = 16;

/// Fewest input and output channels for which a 3×3 stride-1 layer goes to Winograd.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Rows per parallel task of the LayerNorm kernels.
const LN_ROWS: usize = 64;

/// Forward: the output and each row's (mean, 1/σ).
fn ln_forward(
    x: &FlexTensor,
    w: &FlexTensor,
    b: &FlexTensor,
    eps: f64,
) -> (FlexTensor, Vec<(f32, f32)>) {
    let _time = super::op_times::span("layer norm forward");
    let shape = x.layout().shape().clone();
    let d = shape[shape.num_dims() - 1];
    let (xs, ws, bs) = (f32_slice(x), f32_slice(w), f32_slice(b));
    let (xs, ws, bs) = (&xs[..], &ws[..], &bs[..]);
    let rows = if d == 0 { 0 } else { xs.len() / d };
    let mut out = uninit_vec(rows * d);
    let mut stats = vec![(0.0f32, 0.0f32); rows];
    out.par_chunks_mut(LN_ROWS * d.max(1))
        .zip(stats.par_chunks_mut(LN_ROWS))
        .enumerate()
        .for_each(|(blk, (o, st))| {
            simd(
                #[inline(always)]
                || {
                    for (r, (orow, stat)) in o.chunks_mut(d).zip(st.iter_mut()).enumerate() {
                        let xr = &xs[(blk * LN_ROWS + r) * d..][..d];
                        let mean = lane_sum([xr], |[x]| x) / d as f32;
                        let var = lane_sum([xr], |[x]| (x - mean) * (x - mean)) / d as f32;
                        let rstd = 1.0 / (var + eps as f32).sqrt();
                        for j in 0..d {
                            orow[j].write((xr[j] - mean) * rstd * ws[j] + bs[j]);
                        }
                        *stat = (mean, rstd);
                    }
                },
            )
        });
    // SAFETY: the row blocks cover `out` and every row writes all d entries.
    let out = unsafe { assume_filled(out) };
    (FlexTensor::from_data(TensorData::new(out, shape)), stats)
}

/// Backward: `dx = (1/σ)(g − mean(g) − x̂ · mean(g x̂))` with `g = dy · weight`,
/// `dweight = Σ_rows dy x̂`, `dbias = Σ_rows dy`.
fn ln_backward(
    x: &FlexTensor,
    w: &FlexTensor,
    stats: &[(f32, f32)],
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let _time = super::op_times::span("layer norm backward");
    let shape = x.layout().shape().clone();
    let d = shape[shape.num_dims() - 1];
    let (xs, ws, gs) = (f32_slice(x), f32_slice(w), f32_slice(grad));
    let (xs, ws, gs) = (&xs[..], &ws[..], &gs[..]);
    let rows = stats.len();
    let mut dx = uninit_vec(rows * d);
    // Per block of rows a partial (dweight, dbias), summed in block order afterwards, so the
    // result does not depend on how rayon splits the work (same seed, same numbers).
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(LN_ROWS * d.max(1))
        .enumerate()
        .map(|(blk, o)| {
            simd(
                #[inline(always)]
                || {
                    let (mut dw, mut db, mut xhat) =
                        (vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; d]);
                    for (r, orow) in o.chunks_mut(d).enumerate() {
                        let row = blk * LN_ROWS + r;
                        let (mean, rstd) = stats[row];
                        let (xr, gr) = (&xs[row * d..][..d], &gs[row * d..][..d]);
                        for j in 0..d {
                            xhat[j] = (xr[j] - mean) * rstd;
                            dw[j] += gr[j] * xhat[j];
                            db[j] += gr[j];
                        }
                        let mg = lane_sum([gr, &ws[..d]], |[g, w]| g * w) / d as f32;
                        let mgx =
                            lane_sum([gr, &ws[..d], &xhat], |[g, w, xh]| g * w * xh) / d as f32;
                        for j in 0..d {
                            orow[j].write(rstd * (gr[j] * ws[j] - mg - xhat[j] * mgx));
                        }
                    }
                    (dw, db)
                },
            )
        })
        .collect();
    // SAFETY: the row blocks cover `dx` and every row writes all d entries.
    let dx = unsafe { assume_filled(dx) };
    let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (pw, pb) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (
        FlexTensor::from_data(TensorData::new(dx, shape)),
        FlexTensor::from_data(TensorData::new(dw, [d])),
        FlexTensor::from_data(TensorData::new(db, [d])),
    )
}

/// GELU `x Φ(x)` of one value: the formula every GELU kernel here uses, so that the fused bias +
/// GELU gives the same bits as the linear layer followed by the GELU.
#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    0.5 * x * (1.0 + fast_erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d/dx GELU = Φ(x) + x φ(x) of one value, as `0.5 + x·P(x²)/Q(x²)` (degrees 5 and 5), exactly
/// 1 past x = 5.65 and 0 below −5.65: within 3.3e-7 of the exact slope everywhere, evaluated in
/// f32 (the erf + exp it replaces was within 4e-7), in about half the operations, which made
/// GELU's backward the dearest element-wise pass of the GPT step. The coefficients are a
/// weighted least-squares fit of (slope − 0.5)/x on 44 000 points of [0, 5.65], refined toward
/// equal ripple (bench/README.md, thirteenth session).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    const T: f32 = 5.65;
    let xc = x.clamp(-T, T);
    let s = xc * xc;
    let p = ((((1.925_471e-7 * s + 3.592_751_5e-5) * s + 1.948_965_1e-5) * s + 0.014_228_173) * s
        - 0.030_985_411)
        * s
        + 0.797_885_36;
    let q = ((((8.940_249e-6 * s + 1.920_449_6e-4) * s + 3.522_842_4e-3) * s + 0.040_982_04) * s
        + 0.294_507_06)
        * s
        + 1.0;
    if x > T {
        1.0
    } else if x < -T {
        0.0
    } else {
        0.5 + xc * p / q
    }
}

/// GELU of `z + bias` (`bias` along the last dimension) through the fused kernel; `None` where
/// it does not apply (not the CPU backend).
pub fn bias_gelu<const D: usize>(z: Tensor<D>, bias: Tensor<1>) -> Option<Tensor<D>> {
    if !fused_available("gelu", &z) {
        return None;
    }
    Some(Tensor::from_dispatch(
        <burn::backend::Dispatch as FusedOps>::bias_gelu(z.into_dispatch(), bias.into_dispatch()),
    ))
}

/// GELU through the fused kernel; `None` where it does not apply (not the CPU backend).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Option<Tensor<D>> {
    if !fused_available("gelu", &x) {
        return None;
    }
    Some(Tensor::from_dispatch(
        <burn::backend::Dispatch as FusedOps>::gelu(x.into_dispatch()),
    ))
}

/// eˣ for f32 without a libm call, so loops over it vectorize: 2ⁿ · e^r with n = round(x / ln 2),
/// r = x − n ln 2 (|r| ≤ ln 2 / 2, two-part ln 2), e^r by its degree-6 Taylor polynomial
/// (relative error ≈ 1e-7).
#[inline(always)]
pub(super) fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is an integer in [-126, 127] (or NaN, whose p is NaN too). Its bits come from the float
    // itself: n + 1.5·2²³ is exact and holds n in its low mantissa bits. `n as i32` would be the
    // same number, but its saturating semantics keep LLVM from vectorizing it (16 scalar
    // conversions per vector made GELU's backward 3× slower).
    let n_bits = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// erf for f32 as a rational function of x (Eigen's `generic_fast_erf_float`; |error| < 4e-7),
/// exactly ±1 past |x| = 3.9,
/// branch-free so loops over it vectorize.
#[inline(always)]
fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_473_9e-2;
    // Beyond 3.9, erf rounds to ±1 in f32; return that exactly (GELU's tail is then exactly 0).
    if x.abs() > 3.9 {
        x.signum()
    } else {
        x * p / q
    }
}

/// Elements per parallel task of the element-wise kernels.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// `len` uninitialized slots for a kernel that writes every one of them; then [`assume_filled`].
/// Saves the zeroing pass of `vec![0.0; len]`, which ran on the calling thread while the other
/// cores waited (≈ 200 MB per GPT step, ≈ 1.6% of its CPU time, all of it serial).
pub(super) fn uninit_vec(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialization.
    unsafe { v.set_len(len) };
    v
}

/// The vector of [`uninit_vec`] as values.
///
/// # Safety
/// Every element must have been written.
pub(super) unsafe fn assume_filled(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout and length; MaybeUninit<f32> has f32's layout and every
    // element is initialized (the caller's contract).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

fn gelu_forward(x: &FlexTensor) -> FlexTensor {
    gelu_forward_with(x, None)
}

/// d/dx GELU = Φ(x) + x φ(x).
fn gelu_backward(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let shape = x.layout().shape().clone();
    FlexTensor::from_data(TensorData::new(gelu_backward_with(x, None, grad).0, shape))
}

/// The GELU of `z + b`, `b` along the last dimension, in the same arithmetic as
/// [`gelu_forward`] of the sum.
fn bias_gelu_forward(z: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    gelu_forward_with(z, Some(&f32_slice(b)))
}

/// Backward of [`bias_gelu_forward`]: (`dz`, `db`). `dz` as [`gelu_backward`] of the sum, `db`
/// from the pass's per-block column sums, added in block order as the linear layer's own bias
/// gradient does, so the numbers equal the unfused linear → GELU's.
fn bias_gelu_backward(
    z: &FlexTensor,
    b: &FlexTensor,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let shape = z.layout().shape().clone();
    let bs = f32_slice(b);
    let n = bs.len();
    let (dz, partials) = gelu_backward_with(z, Some(&bs), grad);
    let db = super::fused_linear::sum_partials(&partials, n);
    (
        FlexTensor::from_data(TensorData::new(dz, shape)),
        FlexTensor::from_data(TensorData::new(db, [n])),
    )
}

/// Chunks of `z` for the GELU passes: with a bias, the blocks of rows of the linear layer's bias
/// gradient ([`super::fused_linear::bias_block_rows`]); without, plain chunks.
fn gelu_chunks(z: &FlexTensor, bias: Option<&[f32]>) -> (usize, usize) {
    let len = f32_slice(z).len();
    let n = bias.map_or(ELEMENTWISE_CHUNK, <[f32]>::len);
    assert!(
        n > 0 && (bias.is_none() || len.is_multiple_of(n)),
        "fused bias GELU: a bias of {n} for a last dimension of {:?}",
        z.layout().shape()
    );
    let rows = match bias {
        Some(_) => super::fused_linear::bias_block_rows(n),
        None => 1,
    };
    (n, rows * n)
}

/// GELU of `z` (+ `bias` along the last dimension) in parallel chunks. No bias: no addition at
/// all, so that −0 stays −0 as in the plain GELU.
fn gelu_forward_with(z: &FlexTensor, bias: Option<&[f32]>) -> FlexTensor {
    let _time = super::op_times::span("gelu forward");
    let shape = z.layout().shape().clone();
    let zs = f32_slice(z);
    let (n, chunk) = gelu_chunks(z, bias);
    let mut out = uninit_vec(zs.len());
    out.par_chunks_mut(chunk)
        .zip(zs.par_chunks(chunk))
        .for_each(|(o, z)| {
            simd(
                #[inline(always)]
                || match bias {
                    Some(bs) => {
                        for (orow, zrow) in o.chunks_mut(n).zip(z.chunks(n)) {
                            for ((y, &v), &bv) in orow.iter_mut().zip(zrow).zip(bs) {
                                y.write(gelu_value(v + bv));
                            }
                        }
                    }
                    None => {
                        for (y, &v) in o.iter_mut().zip(z) {
                            y.write(gelu_value(v));
                        }
                    }
                },
            )
        });
    // SAFETY: the chunks cover `out` and the zip with equally long chunks of zs writes each slot.
    let out = unsafe { assume_filled(out) };
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// `grad · GELU′(z (+ bias))` in parallel chunks (contiguous streams); with a bias also each
/// chunk's column sums of the result (chunks of [`super::fused_linear::bias_block_rows`] rows,
/// each summed in row order: the blocks of the linear layer's own bias gradient), so that `db`
/// needs no second pass over the result.
fn gelu_backward_with(
    z: &FlexTensor,
    bias: Option<&[f32]>,
    grad: &FlexTensor,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let _time = super::op_times::span("gelu backward");
    let (zs, gs) = (f32_slice(z), f32_slice(grad));
    let (n, chunk) = gelu_chunks(z, bias);
    let mut dz = uninit_vec(zs.len());
    let partials: Vec<Vec<f32>> = dz
        .par_chunks_mut(chunk)
        .zip(zs.par_chunks(chunk))
        .zip(gs.par_chunks(chunk))
        .map(|((d, z), g)| {
            simd(
                #[inline(always)]
                || match bias {
                    Some(bs) => {
                        let mut sums = vec![0.0f32; n];
                        for ((drow, zrow), grow) in
                            d.chunks_mut(n).zip(z.chunks(n)).zip(g.chunks(n))
                        {
                            for (((dv, &v), &gv), &bv) in
                                drow.iter_mut().zip(zrow).zip(grow).zip(bs)
                            {
                                dv.write(gv * gelu_slope(v + bv));
                            }
                            // SAFETY: the loop above wrote the whole row.
                            let drow: &[f32] = unsafe { &*(drow as *const _ as *const [f32]) };
                            for (sum, &x) in sums.iter_mut().zip(drow) {
                                *sum += x;
                            }
                        }
                        sums
                    }
                    None => {
                        for ((dv, &v), &gv) in d.iter_mut().zip(z).zip(g) {
                            dv.write(gv * gelu_slope(v));
                        }
                        Vec::new()
                    }
                },
            )
        })
        .collect();
    // SAFETY: the chunks cover dz, every slot written.
    (unsafe { assume_filled(dz) }, partials)
}

#[backend_extension(Flex)]
pub trait FusedOptimOps: Backend {
    /// One AdamW step (decoupled weight decay, bias-corrected moments) over a parameter, in one
    /// pass: returns (parameter, first moment, second moment). `time` counts this step (1 first).
    #[allow(clippy::too_many_arguments)]
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl FusedOptimOps for Flex {
    fn adamw_step(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let _time = super::op_times::span("adamw");
        let shape = param.layout().shape().clone();
        let (p, g, m, v) = (
            f32_slice(&param),
            f32_slice(&grad),
            f32_slice(&moment_1),
            f32_slice(&moment_2),
        );
        // The scalars exactly as burn's AdamW forms them (f32 bias corrections, f64 decay rate).
        let t = time as i32;
        let (c1, c2) = (1f32 - beta_1.powi(t), 1f32 - beta_2.powi(t));
        let decay = (1.0 - lr * weight_decay as f64) as f32;
        let lr = lr as f32;
        let (f1, f2) = (1.0 - beta_1, 1.0 - beta_2);
        let n = p.len();
        let (mut po, mut mo, mut vo) = (uninit_vec(n), uninit_vec(n), uninit_vec(n));
        po.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(mo.par_chunks_mut(ELEMENTWISE_CHUNK))
            .zip(vo.par_chunks_mut(ELEMENTWISE_CHUNK))
            .enumerate()
            .for_each(|(c, ((po, mo), vo))| {
                simd(
                    #[inline(always)]
                    || {
                        let r = c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + po.len();
                        let (p, g, m, v) = (&p[r.clone()], &g[r.clone()], &m[r.clone()], &v[r]);
                        for i in 0..po.len() {
                            let m1 = m[i] * beta_1 + g[i] * f1;
                            let m2 = v[i] * beta_2 + g[i] * g[i] * f2;
                            let update = (m1 / c1) / ((m2 / c2).sqrt() + epsilon);
                            po[i].write(p[i] * decay - update * lr);
                            mo[i].write(m1);
                            vo[i].write(m2);
                        }
                    },
                )
            });
        // SAFETY: the chunks cover the three vectors and the loop writes each slot of each.
        let (po, mo, vo) = unsafe { (assume_filled(po), assume_filled(mo), assume_filled(vo)) };
        let t = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, shape.clone()));
        (t(po), t(mo), t(vo))
    }
}

/// One fused AdamW step (see [`FusedOptimOps::adamw_step`]) on a plain (non-autodiff) CPU tensor;
/// `None` elsewhere.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    lr: f64,
    betas: (f32, f32),
    epsilon: f32,
    weight_decay: f32,
    time: usize,
) -> Option<(Tensor<D>, Tensor<D>, Tensor<D>)> {
    if !fused_available("adamw", &param) || param.device().is_autodiff() {
        return None;
    }
    let (p, m, v) = <burn::backend::Dispatch as FusedOptimOps>::adamw_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        lr,
        betas.0,
        betas.1,
        epsilon,
        weight_decay,
        time,
    );
    Some((
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    ))
}

#[cfg(test)]
mod tests {
    use super::{lane_max, lane_sum};

    /// fast_exp: relative error ≤ 3e-7 against f64 over its range, exactly the value of the
    /// plain `n as i32` formula (the bit trick changes speed, not results), saturation at the
    /// clamps, NaN through.
    #[test]
    fn fast_exp_is_accurate_and_equals_the_integer_conversion_formula() {
        let plain = |x: f32| {
            let x = x.clamp(-87.0, 88.0);
            let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
            let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
            let p = 1.0
                + r * (1.0
                    + r * (0.5
                        + r * (1.0 / 6.0
                            + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let mut x = -100.0f32;
        while x < 100.0 {
            let got = super::fast_exp(x);
            assert_eq!(got.to_bits(), plain(x).to_bits(), "x = {x}");
            let want = (x.clamp(-87.0, 88.0) as f64).exp();
            assert!(
                ((got as f64 - want) / want).abs() < 3e-7,
                "x = {x}: {got} vs {want}"
            );
            x += 0.000_37;
        }
        assert!(super::fast_exp(f32::NAN).is_nan());
        assert_eq!(super::fast_exp(f32::NEG_INFINITY), plain(-87.0));
        assert_eq!(super::fast_exp(f32::INFINITY), plain(88.0));
    }

    /// The AVX-512 row copies/additions of im2col and col2im against the scalar loops, bit for
    /// bit: strides 1–3 (3 stays scalar), paddings 0–2, kernels 1–5, widths around the 16-lane
    /// chunks (stride-2 rows of 1…21 outputs), several images in one column matrix.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vectorized_im2col_and_col2im_equal_the_scalar_loops() {
        use super::{col2im_avx512, col2im_rows, im2col_avx512, im2col_rows, simd_level, ConvGeom};
        if simd_level() != 2 {
            return;
        }
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let mut cases = 0;
        for (h, w) in [(1, 1), (5, 7), (9, 16), (6, 33), (4, 42)] {
            for (kh, kw) in [(1, 1), (3, 3), (5, 2)] {
                for s in 1..=3 {
                    for p in 0..=2 {
                        if h + 2 * p < kh || w + 2 * p < kw {
                            continue;
                        }
                        let g = ConvGeom {
                            n: 2,
                            cin: 2,
                            h,
                            w,
                            cout: 1,
                            kh,
                            kw,
                            sh: s,
                            sw: s,
                            ph: p,
                            pw: p,
                            ho: (h + 2 * p - kh) / s + 1,
                            wo: (w + 2 * p - kw) / s + 1,
                        };
                        let (k, pp, img) = (g.k(), g.p(), g.cin * h * w);
                        let x: Vec<f32> = (0..g.n * img).map(|_| next()).collect();
                        let ld = g.n * pp + 3;
                        let mut want = vec![f32::NAN; k * ld];
                        let mut got = want.clone();
                        for i in 0..g.n {
                            let xi = &x[i * img..(i + 1) * img];
                            im2col_rows::<false>(xi, &g, &mut want, ld, i * pp);
                            unsafe { im2col_avx512(xi, &g, &mut got, ld, i * pp) };
                        }
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "im2col {g:?}");
                        let cols: Vec<f32> = (0..k * ld).map(|_| next()).collect();
                        let mut dwant: Vec<f32> = (0..g.n * img).map(|_| next()).collect();
                        let mut dgot = dwant.clone();
                        for i in 0..g.n {
                            let r = i * img..(i + 1) * img;
                            col2im_rows::<false>(&cols, &g, &mut dwant[r.clone()], ld, i * pp);
                            unsafe { col2im_avx512(&cols, &g, &mut dgot[r], ld, i * pp) };
                        }
                        assert_eq!(bits(&dgot), bits(&dwant), "col2im {g:?}");
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100, "{cases} geometries");
    }

    #[test]
    fn lane_sum_and_lane_max_match_plain_loops() {
        for len in [0usize, 1, 7, 15, 16, 17, 31, 32, 33, 100] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 13 % 7) as f32 + 1.0) * 0.5)
                .collect();
            // Small integers times powers of two: every partial sum is exact, in any order.
            let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(lane_sum([&a[..], &b[..]], |[x, y]| x * y), dot, "len {len}");
            assert_eq!(
                lane_sum([&a[..]], |[x]| x),
                a.iter().sum::<f32>(),
                "len {len}"
            );
            let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&a), max, "len {len}");
            // A NaN is skipped, as f32::max does.
            let mut with_nan = a.clone();
            with_nan.push(f32::NAN);
            with_nan.rotate_right(len / 2 + 1);
            assert_eq!(lane_max(&with_nan), max, "len {len} with NaN");
        }
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn lane_sum_rejects_slices_of_different_lengths() {
        lane_sum([&[1.0f32, 2.0][..], &[1.0][..]], |[x, y]| x * y);
    }
}
