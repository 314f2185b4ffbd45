//! Linear probe: multinomial logistic regression on frozen features, optimised to
//! convergence (Kolesnikov, Zhai & Beyer, "Revisiting Self-Supervised Visual
//! Representation Learning", 2019: the probe should measure the representation,
//! not the optimiser).
//!
//! Objective, for W ∈ R^{C×d}, b ∈ R^C and features x_i with labels y_i:
//!
//!   f(W, b) = (1/n) Σ_i [ logsumexp_c(W_c·x_i + b_c) − (W_{y_i}·x_i + b_{y_i}) ] + (l2/2) ‖W‖²
//!
//! (bias not penalised), with gradient (1/n) Σ_i (softmax_i − onehot(y_i)) ⊗ [x_i, 1] + l2 [W, 0].
//! It is minimised by full-batch L-BFGS (Nocedal & Wright, "Numerical Optimization",
//! Alg. 7.4 two-loop recursion, memory 10) with a line search satisfying the strong
//! Wolfe conditions (Alg. 3.5/3.6, c1 = 1e-4, c2 = 0.9), until
//! max |∇f| ≤ tol · max(1, |f|). Everything is computed in f64.

use anyhow::{bail, ensure};
use rayon::prelude::*;

/// Hyperparameters of the linear probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeConfig {
    /// L2 penalty on the weights (not the bias), on the *mean* cross-entropy:
    /// the objective is mean CE + (l2/2)‖W‖². scikit-learn's `LogisticRegression(C)`
    /// on n examples is l2 = 1 / (C · n).
    pub l2: f64,
    /// Maximum number of L-BFGS iterations.
    pub max_iter: usize,
    /// Stop when max |∇f| ≤ tol · max(1, |f|).
    pub tol: f64,
}

impl Default for ProbeConfig {
    /// `l2 = 1e-2`, `max_iter = 500`, `tol = 1e-5`.
    ///
    /// On standardized features a fixed l2 = 1e-2 on the mean loss equals
    /// scikit-learn's C = 1 at n = 100 labelled examples (10 per class on 10 classes),
    /// regularises the few-label budgets enough to be meaningful (with 1 label per
    /// class the unregularised problem is separable and has no optimum), and costs
    /// little at 100% of labels while keeping the problem well conditioned.
    fn default() -> Self {
        Self {
            l2: 1e-2,
            max_iter: 500,
            tol: 1e-5,
        }
    }
}

/// A fitted linear classifier: logits = W x + b.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// Row-major `num_classes × dim` weight matrix W.
    pub weights: Vec<f64>,
    /// Bias b, one per class.
    pub bias: Vec<f64>,
    pub num_classes: usize,
    pub dim: usize,
    /// Objective value at the solution.
    pub loss: f64,
    /// max |∇f| at the solution.
    pub grad_max: f64,
    /// L-BFGS iterations used.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached (false: `max_iter` ran out or the
    /// line search could make no more progress).
    pub converged: bool,
}

impl LinearModel {
    /// Logits of a row-major `n × dim` matrix, row-major `n × num_classes`.
    pub fn logits(&self, x: &[f32], n: usize) -> anyhow::Result<Vec<f64>> {
        check_shape(x, n, self.dim)?;
        let c = self.num_classes;
        let mut out = vec![0f64; n * c];
        out.par_chunks_mut(c)
            .zip(x.par_chunks(self.dim))
            .for_each(|(z, row)| {
                for (k, z) in z.iter_mut().enumerate() {
                    *z = self.bias[k] + dot(row, &self.weights[k * self.dim..(k + 1) * self.dim]);
                }
            });
        Ok(out)
    }

    /// Predicted class of every row (the first class on ties).
    pub fn predict(&self, x: &[f32], n: usize) -> anyhow::Result<Vec<u32>> {
        let z = self.logits(x, n)?;
        Ok(z.chunks(self.num_classes).map(argmax).collect())
    }

    /// Fraction of rows whose prediction equals `y`.
    pub fn accuracy(&self, x: &[f32], y: &[u32], n: usize) -> anyhow::Result<f64> {
        ensure!(y.len() == n, "{} labels for {n} feature rows", y.len());
        let pred = self.predict(x, n)?;
        Ok(accuracy(&pred, y))
    }
}

/// Fraction of equal entries (0 for empty input).
pub(crate) fn accuracy(pred: &[u32], y: &[u32]) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    pred.iter().zip(y).filter(|(p, y)| p == y).count() as f64 / y.len() as f64
}

/// Fits the linear probe on a row-major `n × d` feature matrix (standardize it first,
/// see [`super::Standardizer`]) with labels in `0..num_classes`.
pub fn fit_probe(
    x: &[f32],
    y: &[u32],
    n: usize,
    d: usize,
    num_classes: usize,
    cfg: &ProbeConfig,
) -> anyhow::Result<LinearModel> {
    if n == 0 || d == 0 {
        bail!("linear probe: no training data ({n} examples × {d} features)");
    }
    check_shape(x, n, d)?;
    ensure!(
        y.len() == n,
        "linear probe: {} labels for {n} examples",
        y.len()
    );
    ensure!(
        num_classes >= 2,
        "linear probe: needs at least 2 classes, got {num_classes}"
    );
    if let Some((i, &l)) = y
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!("linear probe: label {l} of example {i} is out of range for {num_classes} classes");
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!(
            "linear probe: feature {} of example {} is {}",
            i % d,
            i / d,
            x[i]
        );
    }
    ensure!(
        cfg.l2.is_finite() && cfg.l2 >= 0.0,
        "linear probe: l2 must be a finite number ≥ 0, got {}",
        cfg.l2
    );
    ensure!(
        cfg.tol > 0.0,
        "linear probe: tol must be > 0, got {}",
        cfg.tol
    );

    let problem = Problem {
        x,
        y,
        d,
        c: num_classes,
        l2: cfg.l2,
    };
    let sol = lbfgs(&problem, cfg.max_iter, cfg.tol);
    let wlen = num_classes * d;
    Ok(LinearModel {
        weights: sol.theta[..wlen].to_vec(),
        bias: sol.theta[wlen..].to_vec(),
        num_classes,
        dim: d,
        loss: sol.f,
        grad_max: max_abs(&sol.g),
        iterations: sol.iterations,
        converged: sol.converged,
    })
}

fn check_shape(x: &[f32], n: usize, d: usize) -> anyhow::Result<()> {
    ensure!(
        x.len() == n * d,
        "feature matrix has {} values, expected {n} × {d} = {}",
        x.len(),
        n * d
    );
    Ok(())
}

fn argmax(z: &[f64]) -> u32 {
    let mut best = 0;
    for (k, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = k;
        }
    }
    best as u32
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// f32 features · f64 weights, accumulated in f64 in four independent lanes.
fn dot(x: &[f32], w: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (xc, xr) = x.split_at(x.len() - x.len() % 4);
    let (wc, wr) = w.split_at(xc.len());
    for (a, b) in xc.chunks_exact(4).zip(wc.chunks_exact(4)) {
        for l in 0..4 {
            acc[l] += a[l] as f64 * b[l];
        }
    }
    let tail: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The probe objective over parameters θ = [W (row-major C × d), b (C)].
pub(crate) struct Problem<'a> {
    pub x: &'a [f32],
    pub y: &'a [u32],
    pub d: usize,
    pub c: usize,
    pub l2: f64,
}

impl Problem<'_> {
    fn num_params(&self) -> usize {
        self.c * (self.d + 1)
    }

    /// f(θ), writing ∇f(θ) into `grad`. Rows are processed in parallel in fixed
    /// blocks whose partial sums are added in order, so results are reproducible.
    pub(crate) fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        const ROWS_PER_BLOCK: usize = 256;
        let (d, c) = (self.d, self.c);
        let n = self.y.len();
        let (w, b) = theta.split_at(c * d);
        let partial: Vec<(f64, Vec<f64>)> = self
            .x
            .par_chunks(d * ROWS_PER_BLOCK)
            .zip(self.y.par_chunks(ROWS_PER_BLOCK))
            .map(|(xb, yb)| {
                let mut g = vec![0f64; c * (d + 1)];
                let mut loss = 0f64;
                let mut z = vec![0f64; c];
                for (row, &yi) in xb.chunks_exact(d).zip(yb) {
                    for (k, zk) in z.iter_mut().enumerate() {
                        *zk = b[k] + dot(row, &w[k * d..(k + 1) * d]);
                    }
                    let zmax = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                    let mut sum = 0f64;
                    for zk in z.iter_mut() {
                        *zk = (*zk - zmax).exp();
                        sum += *zk;
                    }
                    // z now holds exp(z − zmax); loss_i = log Σ exp(z) − z_y.
                    loss += sum.ln() - z[yi as usize].ln();
                    for (k, &e) in z.iter().enumerate() {
                        let r = e / sum - if k == yi as usize { 1.0 } else { 0.0 };
                        if r != 0.0 {
                            let gk = &mut g[k * d..(k + 1) * d];
                            gk.iter_mut()
                                .zip(row)
                                .for_each(|(g, &v)| *g += r * v as f64);
                            g[c * d + k] += r;
                        }
                    }
                }
                (loss, g)
            })
            .collect();
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0f64;
        for (l, g) in &partial {
            loss += l;
            grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        let inv_n = 1.0 / n as f64;
        loss *= inv_n;
        grad.iter_mut().for_each(|g| *g *= inv_n);
        let mut wsq = 0f64;
        for (g, &wv) in grad[..c * d].iter_mut().zip(w) {
            *g += self.l2 * wv;
            wsq += wv * wv;
        }
        loss + 0.5 * self.l2 * wsq
    }
}

pub(crate) struct Solution {
    pub theta: Vec<f64>,
    pub f: f64,
    pub g: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
}

const MEMORY: usize = 10;

fn dotf(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// L-BFGS from θ = 0 until max |∇f| ≤ tol · max(1, |f|) or `max_iter` iterations.
pub(crate) fn lbfgs(p: &Problem, max_iter: usize, tol: f64) -> Solution {
    let m = p.num_params();
    let mut theta = vec![0f64; m];
    let mut g = vec![0f64; m];
    let mut f = p.eval(&theta, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::with_capacity(MEMORY);
    let mut y_hist: Vec<Vec<f64>> = Vec::with_capacity(MEMORY);
    let mut rho_hist: Vec<f64> = Vec::with_capacity(MEMORY);
    let mut iterations = 0;
    let converged = |f: f64, g: &[f64]| max_abs(g) <= tol * f.abs().max(1.0);

    while !converged(f, &g) && iterations < max_iter {
        // Two-loop recursion: direction = −H g.
        let mut q = g.clone();
        let k = s_hist.len();
        let mut alpha = vec![0f64; k];
        for i in (0..k).rev() {
            alpha[i] = rho_hist[i] * dotf(&s_hist[i], &q);
            q.iter_mut()
                .zip(&y_hist[i])
                .for_each(|(q, y)| *q -= alpha[i] * y);
        }
        let gamma = if k > 0 {
            dotf(&s_hist[k - 1], &y_hist[k - 1]) / dotf(&y_hist[k - 1], &y_hist[k - 1])
        } else {
            // First step: a unit-length move along −g.
            1.0 / dotf(&g, &g).sqrt()
        };
        q.iter_mut().for_each(|q| *q *= gamma);
        for i in 0..k {
            let beta = rho_hist[i] * dotf(&y_hist[i], &q);
            q.iter_mut()
                .zip(&s_hist[i])
                .for_each(|(q, s)| *q += (alpha[i] - beta) * s);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dotf(&g, &dir);
        if slope >= 0.0 || !slope.is_finite() {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho_hist.clear();
            let scale = 1.0 / dotf(&g, &g).sqrt();
            dir = g.iter().map(|v| -v * scale).collect();
            slope = dotf(&g, &dir);
        }

        let Some(step) = wolfe_line_search(p, &theta, f, &dir, slope) else {
            break; // No decrease possible along this direction: we are at float precision.
        };
        iterations += 1;
        let s: Vec<f64> = step.theta.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = step.g.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dotf(&s, &y);
        let rel_decrease = (f - step.f) / f.abs().max(1.0);
        theta = step.theta;
        f = step.f;
        g = step.g;
        if sy > 1e-12 * dotf(&y, &y).sqrt() * dotf(&s, &s).sqrt() {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
                rho_hist.remove(0);
            }
            rho_hist.push(1.0 / sy);
            s_hist.push(s);
            y_hist.push(y);
        }
        if rel_decrease <= f64::EPSILON && !converged(f, &g) {
            break; // Stalled at float precision.
        }
    }
    Solution {
        converged: converged(f, &g),
        theta,
        f,
        g,
        iterations,
    }
}

struct Point {
    alpha: f64,
    theta: Vec<f64>,
    f: f64,
    g: Vec<f64>,
    slope: f64,
}

/// Line search for a step α along `dir` satisfying the strong Wolfe conditions
/// (Nocedal & Wright Alg. 3.5 with zoom, Alg. 3.6). Falls back to the best point
/// satisfying sufficient decrease; `None` if no evaluated point decreased f.
fn wolfe_line_search(
    p: &Problem,
    theta: &[f64],
    f0: f64,
    dir: &[f64],
    slope0: f64,
) -> Option<Point> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    const MAX_EVALS: usize = 40;
    let eval = |alpha: f64| {
        let th: Vec<f64> = theta.iter().zip(dir).map(|(t, d)| t + alpha * d).collect();
        let mut g = vec![0f64; th.len()];
        let f = p.eval(&th, &mut g);
        let slope = dotf(&g, dir);
        Point {
            alpha,
            theta: th,
            f,
            g,
            slope,
        }
    };
    let armijo = |pt: &Point| pt.f.is_finite() && pt.f <= f0 + C1 * pt.alpha * slope0;
    let curvature = |pt: &Point| pt.slope.abs() <= -C2 * slope0;
    let mut best: Option<Point> = None;
    let keep_best = |best: &mut Option<Point>, pt: &Point| {
        if armijo(pt) && pt.f < f0 && best.as_ref().is_none_or(|b| pt.f < b.f) {
            *best = Some(Point {
                alpha: pt.alpha,
                theta: pt.theta.clone(),
                f: pt.f,
                g: pt.g.clone(),
                slope: pt.slope,
            });
        }
    };

    // Bracketing phase.
    let mut lo = Point {
        alpha: 0.0,
        theta: theta.to_vec(),
        f: f0,
        g: Vec::new(),
        slope: slope0,
    };
    let mut alpha = 1.0;
    let mut evals = 0;
    let mut hi;
    loop {
        let pt = eval(alpha);
        evals += 1;
        if !armijo(&pt) || (evals > 1 && pt.f >= lo.f) {
            hi = pt;
            break;
        }
        if curvature(&pt) {
            return Some(pt);
        }
        keep_best(&mut best, &pt);
        if pt.slope >= 0.0 {
            hi = lo;
            lo = pt;
            break;
        }
        if evals >= MAX_EVALS {
            return best;
        }
        lo = pt;
        alpha *= 2.0;
    }

    // Zoom phase: lo satisfies sufficient decrease and has the lowest f so far;
    // the minimiser lies between lo and hi.
    while evals < MAX_EVALS {
        let (a_lo, a_hi) = (lo.alpha, hi.alpha);
        let width = a_hi - a_lo;
        // Quadratic through f(lo), f'(lo), f(hi), safeguarded to the middle 80%.
        let denom = 2.0 * (hi.f - lo.f - lo.slope * width);
        let mut a = if denom.is_finite() && denom > 0.0 {
            a_lo - lo.slope * width * width / denom
        } else {
            a_lo + 0.5 * width
        };
        let (min, max) = (a_lo.min(a_hi), a_lo.max(a_hi));
        let margin = 0.1 * (max - min);
        if !(a > min + margin && a < max - margin) {
            a = a_lo + 0.5 * width;
        }
        if (max - min) <= f64::EPSILON * max.abs().max(1.0) {
            break;
        }
        let pt = eval(a);
        evals += 1;
        if !armijo(&pt) || pt.f >= lo.f {
            hi = pt;
        } else {
            if curvature(&pt) {
                return Some(pt);
            }
            keep_best(&mut best, &pt);
            if pt.slope * (hi.alpha - lo.alpha) >= 0.0 {
                hi = lo;
            }
            lo = pt;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes in 4 dimensions, not separable.
    fn small_problem() -> (Vec<f32>, Vec<u32>) {
        let x = vec![
            0.5, -1.0, 0.3, 2.0, //
            -0.2, 0.4, 1.5, -0.7, //
            1.1, 0.9, -0.8, 0.1, //
            -1.3, 0.2, 0.6, 0.9, //
            0.7, -0.5, -1.2, -0.4, //
            0.0, 1.8, 0.2, -1.1,
        ];
        let y = vec![0, 1, 2, 0, 1, 2];
        (x, y)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = small_problem();
        let p = Problem {
            x: &x,
            y: &y,
            d: 4,
            c: 3,
            l2: 0.3,
        };
        let theta: Vec<f64> = (0..p.num_params())
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.1)
            .collect();
        let mut g = vec![0f64; theta.len()];
        p.eval(&theta, &mut g);
        let h = 1e-6;
        for i in 0..theta.len() {
            let mut tp = theta.clone();
            let mut tm = theta.clone();
            tp[i] += h;
            tm[i] -= h;
            let mut scratch = vec![0f64; theta.len()];
            let fd = (p.eval(&tp, &mut scratch) - p.eval(&tm, &mut scratch)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-7,
                "param {i}: fd {fd} vs grad {}",
                g[i]
            );
        }
    }

    #[test]
    fn loss_at_zero_is_log_num_classes() {
        let (x, y) = small_problem();
        let p = Problem {
            x: &x,
            y: &y,
            d: 4,
            c: 3,
            l2: 1.0,
        };
        let mut g = vec![0f64; p.num_params()];
        let f = p.eval(&vec![0.0; p.num_params()], &mut g);
        assert!((f - 3f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn lbfgs_converges_tightly() {
        let (x, y) = small_problem();
        let p = Problem {
            x: &x,
            y: &y,
            d: 4,
            c: 3,
            l2: 1e-3,
        };
        let sol = lbfgs(&p, 1000, 1e-8);
        assert!(
            sol.converged,
            "{} iterations, f {}, g {}",
            sol.iterations,
            sol.f,
            max_abs(&sol.g)
        );
        assert!(max_abs(&sol.g) < 1e-8);
    }
}
