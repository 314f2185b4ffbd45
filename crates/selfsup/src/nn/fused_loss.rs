//! Fused softmax cross-entropy (issue 6): the mean next-token loss of a language model in one pass
//! per row, on the Flex (CPU) backend with a hand-written backward.
//!
//! `log_softmax(logits).gather(targets).mean().neg()` is about ten burn ops forward and as many
//! back (max, subtract, exp, sum, log, gather, mean, each allocating a `[N, V]` tensor). Here each
//! row gives its log-sum-exp and loss in one pass, and the backward writes
//! `(softmax − onehot) · g / N` in one pass from the saved log-sum-exps.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, Flex};
use burn::tensor::{DType, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::fused::{
    assume_filled, f32_slice, fast_exp, fused_available, lane_max, lane_sum, simd, uninit_vec,
    FusedBackward,
};

#[backend_extension(Flex, Autodiff)]
pub trait FusedLossOps: Backend {
    /// Mean over the N rows of `−log softmax(logits[i])[targets[i]]`: `logits` `[N, V]`,
    /// `targets` `[N]` class indices → `[1]`.
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;
}

/// Mean cross-entropy of `logits` `[N, V]` against `targets` `[N]`: the fused kernel on the CPU
/// backend (f32), burn's `log_softmax` + `gather` elsewhere.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    if !fused_available("crossentropy", &logits) {
        let n = targets.dims()[0];
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        return logp.gather(1, targets.reshape([n, 1])).mean().neg();
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedLossOps>::cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
    ))
}

impl FusedLossOps for Flex {
    fn cross_entropy(logits: FlexTensor, targets: FlexTensor) -> FlexTensor {
        forward(&logits, &targets).0
    }
}

impl<C: CheckpointStrategy> FusedLossOps for Autodiff<Flex, C> {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        // State: logits, targets, per-row log-sum-exp.
        let backward = FusedBackward::<(FlexTensor, Vec<usize>, Vec<f32>), 1>(
            |(logits, targets, lse), g, _| {
                [Some(backward(&logits, &targets, &lse, f32_slice(g)[0]))]
            },
        );
        match backward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let lp = logits.primitive().clone();
                let (loss, lse, t) = forward(&lp, &targets);
                prep.finish((lp, t, lse), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(logits.primitive(), &targets).0),
        }
    }
}

/// Rows per parallel task.
const CE_ROWS: usize = 64;

/// The class indices, checked against the number of classes `v`.
fn class_indices(targets: &FlexTensor, n: usize, v: usize) -> Vec<usize> {
    let t = targets.to_contiguous();
    let idx: Vec<i64> = match t.dtype() {
        DType::I64 => t.as_slice::<i64>().expect("contiguous").to_vec(),
        DType::I32 => t
            .as_slice::<i32>()
            .expect("contiguous")
            .iter()
            .map(|&x| x as i64)
            .collect(),
        other => panic!("cross_entropy: targets must be i64 or i32 class indices, got {other:?}"),
    };
    assert_eq!(
        idx.len(),
        n,
        "cross_entropy: {n} rows of logits but {} targets",
        idx.len()
    );
    idx.iter()
        .map(|&c| {
            assert!(
                c >= 0 && (c as usize) < v,
                "cross_entropy: target {c} outside 0..{v}"
            );
            c as usize
        })
        .collect()
}

/// Forward: (mean loss `[1]`, per-row log-sum-exp, class indices).
fn forward(logits: &FlexTensor, targets: &FlexTensor) -> (FlexTensor, Vec<f32>, Vec<usize>) {
    let _time = super::op_times::span("cross-entropy forward");
    let shape = logits.layout().shape();
    assert_eq!(shape.num_dims(), 2, "cross_entropy: logits must be [N, V]");
    let (n, v) = (shape[0], shape[1]);
    let t = class_indices(targets, n, v);
    let xs = f32_slice(logits);
    let mut lse = vec![0.0f32; n];
    // Per block of rows the sum of its losses (f64), added in block order: the mean does not
    // depend on the thread schedule.
    let partial: Vec<f64> = lse
        .par_chunks_mut(CE_ROWS)
        .enumerate()
        .map(|(blk, l)| {
            simd(
                #[inline(always)]
                || {
                    let mut sum = 0.0f64;
                    for (r, out) in l.iter_mut().enumerate() {
                        let row = blk * CE_ROWS + r;
                        let x = &xs[row * v..(row + 1) * v];
                        let max = lane_max(x);
                        let s = lane_sum([x], |[x]| fast_exp(x - max));
                        *out = max + s.ln();
                        sum += (*out - x[t[row]]) as f64;
                    }
                    sum
                },
            )
        })
        .collect();
    let loss = (partial.iter().sum::<f64>() / n as f64) as f32;
    let loss = FlexTensor::from_data(TensorData::new(vec![loss], [1]));
    (loss, lse, t)
}

/// d loss / d logits = `g / N · (softmax − onehot(target))`.
fn backward(logits: &FlexTensor, t: &[usize], lse: &[f32], g: f32) -> FlexTensor {
    let _time = super::op_times::span("cross-entropy backward");
    let shape = logits.layout().shape().clone();
    let (n, v) = (shape[0], shape[1]);
    let xs = f32_slice(logits);
    let scale = g / n as f32;
    let mut dx = uninit_vec(n * v);
    dx.par_chunks_mut(CE_ROWS * v.max(1))
        .enumerate()
        .for_each(|(blk, d)| {
            simd(
                #[inline(always)]
                || {
                    for (r, drow) in d.chunks_mut(v.max(1)).enumerate() {
                        let row = blk * CE_ROWS + r;
                        let x = &xs[row * v..(row + 1) * v];
                        let l = lse[row];
                        for (o, &xv) in drow.iter_mut().zip(x) {
                            o.write(fast_exp(xv - l) * scale);
                        }
                        // SAFETY: just written above.
                        unsafe { *drow[t[row]].assume_init_mut() -= scale };
                    }
                },
            )
        });
    // SAFETY: every row of every block was written.
    let dx = unsafe { assume_filled(dx) };
    FlexTensor::from_data(TensorData::new(dx, shape))
}
