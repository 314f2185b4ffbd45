//! Peak memory and backward time of four stacked fused causal self-attention layers at a long
//! context (B 4, T 1024, 4 heads of 64), the regime where keeping the B·H·T² attention
//! probabilities for the backward would dominate memory. The fused kernel keeps two numbers per
//! query row instead and recomputes the probabilities (bench/README.md, "Attention without the
//! T × T probabilities").
//!
//!     cargo build --release -p selfsup --example attention_memory
//!     /usr/bin/time -f "peak RSS %M KiB" target/release/examples/attention_memory
use burn::prelude::*;

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let (b, t, d, heads, layers) = (4, 1024, 256, 4, 4);
    let x = Tensor::<3>::random(
        [b, t, 3 * d],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    )
    .require_grad();
    let mut y = selfsup::nn::fused::causal_self_attention(x.clone(), heads);
    for _ in 1..layers {
        y = selfsup::nn::fused::causal_self_attention(
            Tensor::cat(vec![y.clone(), y.clone(), y], 2),
            heads,
        );
    }
    let start = std::time::Instant::now();
    let grads = y.sum().backward();
    let dx = x.grad(&grads).expect("x is tracked");
    let norm = dx.powf_scalar(2.0).sum().into_scalar::<f32>().sqrt();
    println!(
        "backward of {layers} layers (B {b}, T {t}, D {d}, {heads} heads): {:.1} ms, |dx| = {norm:.4}",
        start.elapsed().as_secs_f64() * 1e3
    );
}
