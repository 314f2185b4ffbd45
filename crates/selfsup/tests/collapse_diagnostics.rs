//! Collapse diagnostics on constructed feature matrices whose answers are known.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup::eval::collapse::{
    alignment, effective_rank, normalized_std, singular_values, uniformity, CollapseReport,
};

fn gaussian(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d)
        .map(|_| {
            let (u1, u2): (f64, f64) = (1.0 - rng.gen::<f64>(), rng.gen());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

#[test]
fn identical_rows_are_a_full_collapse() {
    let (n, d) = (50, 16);
    let row: Vec<f32> = (0..d).map(|j| (j as f32 * 0.37).sin() + 0.2).collect();
    let h: Vec<f32> = (0..n).flat_map(|_| row.clone()).collect();
    let r = CollapseReport::compute(&h, d, Some((&h, &h)));
    assert!(r.std.abs() < 1e-6, "std {}", r.std);
    assert!(
        (r.effective_rank - 1.0).abs() < 1e-6,
        "erank {}",
        r.effective_rank
    );
    assert_eq!(r.alignment, Some(0.0));
    assert!(r.uniformity.abs() < 1e-12, "uniformity {}", r.uniformity);
    assert!(r.is_collapsed());
    assert_eq!(r.alarms().len(), 2);
}

#[test]
fn orthonormal_rows_have_full_rank() {
    // Rows of a rotated identity: orthonormal, so all singular values are 1.
    let d = 12;
    for n in [d, 5] {
        let (c, s) = (0.6f32, 0.8f32);
        let mut h = vec![0f32; n * d];
        for i in 0..n {
            // Rotate coordinates (2k, 2k+1) of e_i by the same angle: still orthonormal.
            h[i * d + i] = 1.0;
        }
        for i in 0..n {
            for k in (0..d).step_by(2) {
                let (a, b) = (h[i * d + k], h[i * d + k + 1]);
                h[i * d + k] = c * a - s * b;
                h[i * d + k + 1] = s * a + c * b;
            }
        }
        let sv = singular_values(&h, d);
        assert_eq!(sv.len(), n.min(d));
        assert!(sv.iter().all(|v| (v - 1.0).abs() < 1e-6), "{sv:?}");
        let er = effective_rank(&h, d);
        assert!((er - n as f64).abs() < 1e-6, "n = {n}: erank {er}");
        let r = CollapseReport::compute(&h, d, None);
        assert!(!r.is_collapsed());
        assert!(r.alarms().is_empty());
    }
}

#[test]
fn random_gaussian_embeddings_are_healthy() {
    let (n, d) = (2000, 64);
    let h = gaussian(n, d, 1);
    let std = normalized_std(&h, d);
    assert!((std - 1.0).abs() < 0.02, "std {std}");
    // Nearly isotropic: the effective rank is close to d.
    let er = effective_rank(&h, d);
    assert!(er > 0.95 * d as f64 && er <= d as f64 + 1e-9, "erank {er}");
    // Two independent draws are unaligned: E‖a − b‖² = 2 for independent unit vectors.
    let h2 = gaussian(n, d, 2);
    let al = alignment(&h, &h2, d);
    assert!((al - 2.0).abs() < 0.05, "alignment {al}");
    // Uniformity of points spread on S^63 is near the limit −4 (and below −3.5).
    let u = uniformity(&h[..500 * d], d);
    assert!(u < -3.5 && u > -4.0 - 1e-9, "uniformity {u}");
}

#[test]
fn dimensional_collapse_lowers_rank_not_std() {
    // Embeddings in a 2-d subspace of ℝ^32: spread (std well above the alarm), rank ≈ 2.
    let (n, d) = (400, 32);
    let coeffs = gaussian(n, 2, 3);
    let mut h = vec![0f32; n * d];
    for i in 0..n {
        h[i * d] = coeffs[2 * i];
        h[i * d + 1] = coeffs[2 * i + 1];
    }
    let r = CollapseReport::compute(&h, d, None);
    assert!(
        r.effective_rank > 1.5 && r.effective_rank < 2.0 + 1e-9,
        "{r:?}"
    );
    assert!(r.std > 0.1, "{r:?}");
    assert!(!r.is_collapsed());
    // A collapse to a small ball around one point trips the std alarm.
    let center: Vec<f32> = gaussian(1, d, 4);
    let noise = gaussian(n, d, 5);
    let ball: Vec<f32> = (0..n * d)
        .map(|k| center[k % d] + 0.01 * noise[k])
        .collect();
    let r = CollapseReport::compute(&ball, d, None);
    assert!(r.std < 0.1 && r.is_collapsed(), "{r:?}");
    // The report serializes for metrics.jsonl.
    let line = serde_json::to_string(&r).unwrap();
    assert!(line.contains("\"effective_rank\"") && line.contains("\"alignment\":null"));
}
