//! The GPT step's weight-gradient GEMMs `dW[K×N] = xᵀ[K×M] · dY[M×N]` (M = 2048 tokens) on the
//! gemm crate: its own threading against a split by columns, one single-threaded GEMM per thread
//! (what `fused_linear` does for N ≤ 256), best of 15 each (bench/README.md, eleventh session).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p selfsup --example dw_gemm
//! ```
use gemm::{gemm, Parallelism};
use std::time::Instant;

fn best_ms(mut f: impl FnMut()) -> f64 {
    (0..15)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// `dst[k×n] = xᵀ·dy` for columns `c0..c0 + w` of dy and dst (row strides n), on one thread or all.
///
/// # Safety
/// `x` holds m·k values, `dy` m·n, `dst` k·n; columns c0..c0+w lie inside n.
unsafe fn dw(
    (m, k, n): (usize, usize, usize),
    (c0, w): (usize, usize),
    dst: *mut f32,
    x: *const f32,
    dy: *const f32,
    par: Parallelism,
) {
    unsafe {
        gemm(
            k,
            w,
            m,
            dst.add(c0),
            1,
            n as isize,
            false,
            x,
            k as isize,
            1,
            dy.add(c0),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("{threads} threads; GFLOP/s in parentheses");
    // (M, K, N): qkv, attention output, fc1, fc2 of the bench's GPT (d 256, MLP 1024).
    for (m, k, n) in [
        (2048, 256, 768),
        (2048, 256, 256),
        (2048, 256, 1024),
        (2048, 1024, 256),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let dy: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let (mut a, mut b) = (vec![0.0f32; k * n], vec![0.0f32; k * n]);
        // SAFETY: the buffers have the sizes `dw` asks for; the split writes disjoint columns.
        let t_crate = best_ms(|| unsafe {
            dw(
                (m, k, n),
                (0, n),
                a.as_mut_ptr(),
                x.as_ptr(),
                dy.as_ptr(),
                Parallelism::Rayon(0),
            )
        });
        let block = n.div_ceil(threads).next_multiple_of(16);
        let (pb, px, pd) = (
            b.as_mut_ptr() as usize,
            x.as_ptr() as usize,
            dy.as_ptr() as usize,
        );
        let t_split = best_ms(|| {
            use rayon::prelude::*;
            (0..n)
                .step_by(block)
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(|c0| unsafe {
                    let w = block.min(n - c0);
                    dw(
                        (m, k, n),
                        (c0, w),
                        pb as *mut f32,
                        px as *const f32,
                        pd as *const f32,
                        Parallelism::None,
                    )
                })
        });
        assert_eq!(a, b, "the split must give the same sums");
        let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e6;
        println!(
            "M {m} K {k:>4} N {n:>4}: gemm crate threads {t_crate:6.3} ms ({:.0}), split by columns {t_split:6.3} ms ({:.0})",
            gf(t_crate),
            gf(t_split)
        );
    }
}
