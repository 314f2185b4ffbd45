//! The GPT step's linear-layer GEMMs (forward, input gradient, weight gradient of qkv, the
//! attention output, fc1 and fc2; M = 2048 tokens) on the gemm crate: its own threading against
//! splitting the output by rows or by columns into 2–16 single-threaded GEMMs. Best of 15 calls on
//! hot operands, or with `FLUSH=1` the median of 15 with a 64 MiB buffer written before each call
//! (operands cold, as in a training step). bench/README.md, twelfth session.
//!
//! ```text
//! RAYON_NUM_THREADS=2 [FLUSH=1] cargo run --release -p selfsup --example gemm_split
//! ```
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::time::Instant;

fn best_ms(mut f: impl FnMut()) -> f64 {
    let flush = std::env::var_os("FLUSH").is_some();
    let mut junk = vec![0u8; 64 << 20];
    let mut v: Vec<f64> = (0..15)
        .map(|i| {
            if flush {
                junk.par_iter_mut()
                    .for_each(|b| *b = b.wrapping_add(i as u8));
            }
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if flush {
        v[7]
    } else {
        v[0]
    }
}

/// (pointer as usize, row stride, column stride)
type Mat = (usize, usize, usize);

/// (name, dims (M, N, K) of dst = lhs · rhs, lhs, rhs)
type Case = (&'static str, (usize, usize, usize), Mat, Mat);

/// dst[m×n] = lhs[m×k] · rhs[k×n]
unsafe fn mm((m, n, k): (usize, usize, usize), d: Mat, l: Mat, r: Mat, par: Parallelism) {
    unsafe {
        gemm(
            m,
            n,
            k,
            d.0 as *mut f32,
            d.2 as isize,
            d.1 as isize,
            false,
            l.0 as *const f32,
            l.2 as isize,
            l.1 as isize,
            r.0 as *const f32,
            r.2 as isize,
            r.1 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `mm` as `parts` single-threaded GEMMs over the threads, each on a block of dst's rows (and
/// lhs's) or of its columns (and rhs's), 16-aligned.
fn split((m, n, k): (usize, usize, usize), d: Mat, l: Mat, r: Mat, parts: usize, by_rows: bool) {
    let len = if by_rows { m } else { n };
    let block = len.div_ceil(parts).next_multiple_of(16);
    (0..len)
        .step_by(block)
        .collect::<Vec<_>>()
        .into_par_iter()
        .for_each(|i0| {
            let w = block.min(len - i0);
            // SAFETY: the block lies inside the caller's matrices; blocks write disjoint parts
            // of dst (4 bytes per element).
            unsafe {
                if by_rows {
                    let (d, l) = (
                        (d.0 + 4 * i0 * d.1, d.1, d.2),
                        (l.0 + 4 * i0 * l.1, l.1, l.2),
                    );
                    mm((w, n, k), d, l, r, Parallelism::None)
                } else {
                    let (d, r) = (
                        (d.0 + 4 * i0 * d.2, d.1, d.2),
                        (r.0 + 4 * i0 * r.2, r.1, r.2),
                    );
                    mm((m, w, k), d, l, r, Parallelism::None)
                }
            }
        })
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("{threads} threads; GFLOP/s");
    for (m, k, n) in [
        (2048, 256, 768),
        (2048, 256, 256),
        (2048, 256, 1024),
        (2048, 1024, 256),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 3) as f32 - 1.0).collect();
        let dy: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let (px, pw, pdy) = (
            x.as_ptr() as usize,
            w.as_ptr() as usize,
            dy.as_ptr() as usize,
        );
        let cases: [Case; 3] = [
            ("fwd", (m, n, k), (px, k, 1), (pw, n, 1)),
            ("dx ", (m, k, n), (pdy, n, 1), (pw, 1, n)),
            ("dw ", (k, n, m), (px, 1, k), (pdy, n, 1)),
        ];
        for (name, (mm_, nn, kk), l, r) in cases {
            let mut out = vec![0.0f32; mm_ * nn];
            let d = (out.as_mut_ptr() as usize, nn, 1);
            let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e6;
            let crate_t = best_ms(|| unsafe { mm((mm_, nn, kk), d, l, r, Parallelism::Rayon(0)) });
            let reference = out.clone();
            let mut line = format!(
                "M{m} K{k:>4} N{n:>4} {name} [{mm_}x{nn}x{kk}]: crate {:4.0}",
                gf(crate_t)
            );
            for parts in [2, 4, 8, 16] {
                let t = best_ms(|| split((mm_, nn, kk), d, l, r, parts, true));
                assert_eq!(out, reference);
                let tc = best_ms(|| split((mm_, nn, kk), d, l, r, parts, false));
                assert_eq!(out, reference);
                line += &format!(" | {parts}: rows {:4.0} cols {:4.0}", gf(t), gf(tc));
            }
            println!("{line}");
        }
    }
}
