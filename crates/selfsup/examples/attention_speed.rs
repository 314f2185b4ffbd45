//! Time of the fused causal self-attention at the GPT bench's shape (B 16, T 128, 4 heads of 64),
//! forward and backward, per call (`nn::op_times`), median of 40 calls each. The rate counts the
//! products the kernel does (causal triangle in 8-row blocks): Q·Kᵀ and P·V forward; the
//! recomputed Q·Kᵀ, dO·Vᵀ, dS·K, Pᵀ·dO and dSᵀ·Q backward.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p selfsup --example attention_speed
use burn::prelude::*;
use selfsup::nn::op_times;

fn main() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let (b, t, d, heads) = (16, 128, 256, 4);
    let dh = d / heads;
    let x = Tensor::<3>::random(
        [b, t, 3 * d],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    )
    .require_grad();
    let w = Tensor::<3>::random(
        [b, t, d],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    op_times::enable();
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for i in 0..45 {
        op_times::take();
        let y = selfsup::nn::fused::causal_self_attention(x.clone(), heads);
        let grads = (y * w.clone()).sum().backward();
        let _ = x.grad(&grads).expect("x is tracked");
        for op in op_times::take() {
            let ms = op.total.as_secs_f64() * 1e3;
            match (i >= 5, op.name) {
                (true, "attention forward") => fwd.push(ms),
                (true, "attention backward") => bwd.push(ms),
                _ => {}
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    // Keys per query block of 8 rows: up to the block's end.
    let keys: usize = (0..t)
        .step_by(8)
        .map(|r0| 8.min(t - r0) * (r0 + 8).min(t))
        .sum();
    let per_product = 2.0 * (b * heads * keys * dh) as f64;
    let (f, bw) = (median(&mut fwd), median(&mut bwd));
    println!(
        "attention B {b} T {t} H {heads} Dh {dh}: forward {f:.3} ms ({:.0} GFLOP/s), backward {bw:.3} ms ({:.0} GFLOP/s)",
        2.0 * per_product / f / 1e6,
        5.0 * per_product / bw / 1e6
    );
}
