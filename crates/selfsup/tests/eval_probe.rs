//! Linear probe: reaches the optimum of its objective, matches an independent
//! reference solution, and classifies easy data correctly.

use selfsup::eval::{evaluate, fit_probe, EvalConfig, LabelBudget, LabeledFeatures, ProbeConfig};

/// A small deterministic generator (xorshift) for test data.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `n` points from `c` Gaussian blobs in `d` dimensions (class i % c), centres at
/// distance `sep` along random directions.
fn blobs(n: usize, d: usize, c: usize, sep: f64, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut centres = Rng(0x9e3779b97f4a7c15);
    let centres: Vec<f64> = (0..c * d).map(|_| centres.normal() * sep).collect();
    let mut rng = Rng(seed);
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % c;
        y.push(k as u32);
        x.extend((0..d).map(|j| (centres[k * d + j] + rng.normal()) as f32));
    }
    (x, y)
}

/// The probe objective and gradient, written independently of the library:
/// mean cross-entropy + (l2/2)‖W‖², returns (f, ∇W, ∇b).
fn objective(
    x: &[f32],
    y: &[u32],
    d: usize,
    c: usize,
    l2: f64,
    w: &[f64],
    b: &[f64],
) -> (f64, Vec<f64>, Vec<f64>) {
    let n = y.len();
    let (mut f, mut gw, mut gb) = (0.0, vec![0.0; c * d], vec![0.0; c]);
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        let z: Vec<f64> = (0..c)
            .map(|k| b[k] + (0..d).map(|j| w[k * d + j] * row[j] as f64).sum::<f64>())
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        f += lse - z[y[i] as usize];
        for k in 0..c {
            let r = (z[k] - lse).exp() - if k == y[i] as usize { 1.0 } else { 0.0 };
            gb[k] += r / n as f64;
            for j in 0..d {
                gw[k * d + j] += r * row[j] as f64 / n as f64;
            }
        }
    }
    f /= n as f64;
    f += 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>();
    for (g, v) in gw.iter_mut().zip(w) {
        *g += l2 * v;
    }
    (f, gw, gb)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn independent_objective_passes_finite_differences() {
    // Guards the reference used by the tests below.
    let (x, y) = blobs(9, 3, 3, 1.0, 1);
    let w: Vec<f64> = (0..9).map(|i| (i as f64 - 4.0) * 0.1).collect();
    let b = vec![0.2, -0.1, 0.05];
    let (_, gw, gb) = objective(&x, &y, 3, 3, 0.5, &w, &b);
    let h = 1e-6;
    for i in 0..9 {
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[i] += h;
        wm[i] -= h;
        let fd = (objective(&x, &y, 3, 3, 0.5, &wp, &b).0
            - objective(&x, &y, 3, 3, 0.5, &wm, &b).0)
            / (2.0 * h);
        assert!((fd - gw[i]).abs() < 1e-7);
    }
    for k in 0..3 {
        let (mut bp, mut bm) = (b.clone(), b.clone());
        bp[k] += h;
        bm[k] -= h;
        let fd = (objective(&x, &y, 3, 3, 0.5, &w, &bp).0
            - objective(&x, &y, 3, 3, 0.5, &w, &bm).0)
            / (2.0 * h);
        assert!((fd - gb[k]).abs() < 1e-7);
    }
}

#[test]
fn solution_is_a_stationary_point_of_the_objective() {
    let (d, c) = (6, 4);
    let (x, y) = blobs(80, d, c, 0.7, 2);
    let cfg = ProbeConfig::default();
    let m = fit_probe(&x, &y, 80, d, c, &cfg).unwrap();
    assert!(
        m.converged,
        "{} iterations, max |g| {}",
        m.iterations, m.grad_max
    );
    let (f, gw, gb) = objective(&x, &y, d, c, cfg.l2, &m.weights, &m.bias);
    assert!(
        (f - m.loss).abs() < 1e-10,
        "reported loss {} vs {f}",
        m.loss
    );
    let g = max_abs(&gw).max(max_abs(&gb));
    assert!(g <= cfg.tol * f.max(1.0), "max |g| = {g}");
    assert!((g - m.grad_max).abs() < 1e-10);
}

#[test]
fn matches_a_gradient_descent_reference() {
    // Strongly convex (l2 = 0.1), so plain gradient descent with step 1/L converges
    // linearly to the unique optimum; run it long enough to be exact to ~1e-12.
    let (d, c, n, l2) = (3, 3, 15, 0.1);
    let (x, y) = blobs(n, d, c, 1.0, 3);
    let (mut w, mut b) = (vec![0.0; c * d], vec![0.0; c]);
    // L ≤ ½ max‖[x,1]‖² + l2 for the softmax cross-entropy.
    let max_sq = (0..n)
        .map(|i| {
            1.0 + x[i * d..(i + 1) * d]
                .iter()
                .map(|&v| (v * v) as f64)
                .sum::<f64>()
        })
        .fold(0.0, f64::max);
    let step = 1.0 / (0.5 * max_sq + l2);
    for _ in 0..50_000 {
        let (_, gw, gb) = objective(&x, &y, d, c, l2, &w, &b);
        w.iter_mut().zip(&gw).for_each(|(w, g)| *w -= step * g);
        b.iter_mut().zip(&gb).for_each(|(b, g)| *b -= step * g);
    }
    let (_, gw, gb) = objective(&x, &y, d, c, l2, &w, &b);
    assert!(
        max_abs(&gw).max(max_abs(&gb)) < 1e-10,
        "reference not converged"
    );

    let cfg = ProbeConfig {
        l2,
        max_iter: 500,
        tol: 1e-9,
    };
    let m = fit_probe(&x, &y, n, d, c, &cfg).unwrap();
    assert!(m.converged);
    for (got, want) in m.weights.iter().zip(&w).chain(m.bias.iter().zip(&b)) {
        assert!((got - want).abs() < 1e-4, "{got} vs reference {want}");
    }
}

#[test]
fn separates_linearly_separable_classes() {
    // Two classes on either side of the hyperplane x0 + x1 = 0, with a margin.
    let mut rng = Rng(4);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    while y.len() < 200 {
        let (a, b, c) = (rng.normal(), rng.normal(), rng.normal());
        if (a + b).abs() < 0.3 {
            continue;
        }
        x.extend([a as f32, b as f32, c as f32]);
        y.push(u32::from(a + b > 0.0));
    }
    let m = fit_probe(&x, &y, 200, 3, 2, &ProbeConfig::default()).unwrap();
    assert!(m.converged);
    assert_eq!(m.accuracy(&x, &y, 200).unwrap(), 1.0);
    let pred = m.predict(&[3.0, 1.0, 0.0, -1.0, -2.0, 5.0], 2).unwrap();
    assert_eq!(pred, vec![1, 0]);
}

#[test]
fn classifies_gaussian_blobs() {
    let (d, c) = (20, 5);
    let (x, y) = blobs(500, d, c, 1.0, 5);
    let (tx, ty) = blobs(500, d, c, 1.0, 6);
    let m = fit_probe(&x, &y, 500, d, c, &ProbeConfig::default()).unwrap();
    assert!(m.converged, "{} iterations", m.iterations);
    let acc = m.accuracy(&tx, &ty, 500).unwrap();
    assert!(acc > 0.95, "test accuracy {acc}");
}

#[test]
fn rejects_bad_input() {
    let cfg = ProbeConfig::default();
    let err = |r: anyhow::Result<_>| format!("{:#}", r.unwrap_err());
    assert!(err(fit_probe(&[], &[], 0, 3, 2, &cfg)).contains("no training data"));
    assert!(err(fit_probe(&[1.0; 5], &[0, 1], 2, 3, 2, &cfg)).contains("expected 2 × 3"));
    assert!(err(fit_probe(&[1.0; 6], &[0], 2, 3, 2, &cfg)).contains("1 labels for 2"));
    assert!(err(fit_probe(&[1.0; 6], &[0, 2], 2, 3, 2, &cfg)).contains("label 2 of example 1"));
    let mut x = [1.0f32; 6];
    x[4] = f32::NAN;
    assert!(err(fit_probe(&x, &[0, 1], 2, 3, 2, &cfg)).contains("feature 1 of example 1 is NaN"));
    let bad = ProbeConfig { l2: -1.0, ..cfg };
    assert!(err(fit_probe(&[1.0; 6], &[0, 1], 2, 3, 2, &bad)).contains("l2"));
    let m = fit_probe(&[1.0, 0.0, 0.0, 1.0], &[0, 1], 2, 2, 2, &cfg).unwrap();
    assert!(m.predict(&[1.0; 3], 2).is_err());
}

#[test]
fn evaluate_reports_probe_and_knn_over_draws() {
    let (d, c) = (8, 4);
    let (x, y) = blobs(400, d, c, 1.2, 7);
    let (tx, ty) = blobs(200, d, c, 1.2, 8);
    let train = LabeledFeatures {
        features: &x,
        labels: &y,
        dim: d,
    };
    let test = LabeledFeatures {
        features: &tx,
        labels: &ty,
        dim: d,
    };
    let cfg = EvalConfig::default();
    let five = evaluate(&train, &test, c, &LabelBudget::PerClass(5), &cfg).unwrap();
    assert_eq!(five.linear.runs.len(), 5);
    assert_eq!(five.knn.runs.len(), 5);
    assert!(five.probe_converged);
    assert!(five.linear.std > 0.0, "different draws should differ");
    let all = evaluate(&train, &test, c, &LabelBudget::Fraction(1.0), &cfg).unwrap();
    assert_eq!(all.linear.std, 0.0);
    assert!(all.linear.mean > 0.9 && all.knn.mean > 0.9, "{all:?}");
    assert!(all.linear.mean >= five.linear.mean - 0.02);
    // Same seed, same numbers.
    let again = evaluate(&train, &test, c, &LabelBudget::PerClass(5), &cfg).unwrap();
    assert_eq!(again, five);
    // The budget error surfaces from evaluate.
    let too_many = evaluate(&train, &test, c, &LabelBudget::PerClass(101), &cfg).unwrap_err();
    assert!(format!("{too_many:#}").contains("larger than the data"));
}
