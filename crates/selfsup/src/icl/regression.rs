//! In-context linear regression (Garg, Tsipras, Liang & Valiant 2022, "What Can Transformers
//! Learn In-Context? A Case Study of Simple Function Classes"): the task, its curriculum, the
//! classical baselines and the error-vs-k curves.
//!
//! A sequence holds n points (x₁, y₁), …, (x_n, y_n) with x ~ N(0, I_d) and y = w·x, where
//! w ~ N(0, I_d) is drawn afresh for every sequence. A predictor sees the first k pairs and x_{k+1}
//! and answers ŷ_{k+1}; its error at k is E[(ŷ - y)²] / d, so that predicting 0 scores 1.
//!
//! With `noise σ > 0` (the paper's noisy linear regression) y = w·x + ε, ε ~ N(0, σ²), and the
//! error is measured against the noisy y, so σ²/d is a floor no predictor beats.
//!
//! Baselines (f64, one sequence at a time): least squares (the minimum-norm solution, via the
//! SVD pseudo-inverse, as the paper's `lstsq`), k-nearest neighbours (mean y of the 3 nearest x),
//! averaging (ŵ = mean of yᵢxᵢ, an unbiased estimate of w), and, on noisy tasks, ridge regression
//! with λ = σ², the posterior mean of w under its N(0, I) prior: the Bayes-optimal predictor.

use anyhow::{ensure, Result};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A batch of sequences. `xs` is row-major `[batch, points, dim]`, `ys` `[batch, points]` and
/// `ws` `[batch, dim]`; only the first `active` of the `dim` coordinates are non-zero (the
/// curriculum's zero padding).
#[derive(Clone, Debug, PartialEq)]
pub struct RegressionBatch {
    pub xs: Vec<f32>,
    pub ys: Vec<f32>,
    pub ws: Vec<f32>,
    pub batch: usize,
    pub points: usize,
    pub dim: usize,
    pub active: usize,
}

impl RegressionBatch {
    /// Sequence `b` as f64: its inputs `[points, dim]` and outputs `[points]`.
    pub fn sequence(&self, b: usize) -> (Vec<f64>, Vec<f64>) {
        let (n, d) = (self.points, self.dim);
        let xs = self.xs[b * n * d..(b + 1) * n * d]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let ys = self.ys[b * n..(b + 1) * n]
            .iter()
            .map(|&v| v as f64)
            .collect();
        (xs, ys)
    }
}

/// One standard normal draw (Box–Muller; `rand_distr` is not a dependency).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Batch number `index` of the task stream `seed`: a pure function of both, so training resumes
/// exactly and evaluation sets are reproducible. `active ≤ dim` coordinates are drawn; the rest
/// of x and w stay zero.
pub fn sample_batch(
    seed: u64,
    index: u64,
    batch: usize,
    points: usize,
    dim: usize,
    active: usize,
) -> Result<RegressionBatch> {
    sample_noisy_batch(seed, index, batch, points, dim, active, 0.0)
}

/// [`sample_batch`] with y = w·x + ε, ε ~ N(0, `noise`²). `noise = 0` draws exactly the
/// sequences of [`sample_batch`] (no noise is drawn at all).
pub fn sample_noisy_batch(
    seed: u64,
    index: u64,
    batch: usize,
    points: usize,
    dim: usize,
    active: usize,
    noise: f32,
) -> Result<RegressionBatch> {
    ensure!(
        noise.is_finite() && noise >= 0.0,
        "the noise standard deviation must be finite and ≥ 0, got {noise}"
    );
    ensure!(batch > 0, "the batch must hold at least one sequence");
    ensure!(points > 0, "a sequence needs at least one point");
    ensure!(
        (1..=dim).contains(&active),
        "active dimensions must be in 1..={dim}, got {active}"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let mut xs = vec![0f32; batch * points * dim];
    let mut ys = vec![0f32; batch * points];
    let mut ws = vec![0f32; batch * dim];
    for b in 0..batch {
        let w = &mut ws[b * dim..(b + 1) * dim];
        w[..active].iter_mut().for_each(|v| *v = normal(&mut rng));
        for i in 0..points {
            let x = &mut xs[(b * points + i) * dim..(b * points + i + 1) * dim];
            x[..active].iter_mut().for_each(|v| *v = normal(&mut rng));
            let clean: f32 = x.iter().zip(w.iter()).map(|(a, c)| a * c).sum();
            ys[b * points + i] = if noise > 0.0 {
                clean + noise * normal(&mut rng)
            } else {
                clean
            };
        }
    }
    Ok(RegressionBatch {
        xs,
        ys,
        ws,
        batch,
        points,
        dim,
        active,
    })
}

/// Garg et al.'s curriculum: training starts with few active dimensions and short sequences, and
/// every `interval` steps adds `dims_inc` dimensions and `points_inc` points until the ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curriculum {
    pub dims_start: usize,
    pub dims_end: usize,
    pub dims_inc: usize,
    pub points_start: usize,
    pub points_end: usize,
    pub points_inc: usize,
    /// Steps between increases.
    pub interval: usize,
}

impl Curriculum {
    /// No curriculum: the full task from the first step.
    pub fn fixed(dims: usize, points: usize) -> Self {
        Self {
            dims_start: dims,
            dims_end: dims,
            dims_inc: 1,
            points_start: points,
            points_end: points,
            points_inc: 1,
            interval: 1,
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=self.dims_end).contains(&self.dims_start),
            "curriculum: dims_start must be in 1..=dims_end ({}), got {}",
            self.dims_end,
            self.dims_start
        );
        ensure!(
            (1..=self.points_end).contains(&self.points_start),
            "curriculum: points_start must be in 1..=points_end ({}), got {}",
            self.points_end,
            self.points_start
        );
        ensure!(
            self.dims_inc > 0 && self.points_inc > 0 && self.interval > 0,
            "curriculum: increments and interval must be positive"
        );
        Ok(())
    }

    /// (active dimensions, points per sequence) at `step`.
    pub fn at(&self, step: usize) -> (usize, usize) {
        let stage = step / self.interval.max(1);
        let grow = |start: usize, inc: usize, end: usize| {
            start.saturating_add(stage.saturating_mul(inc)).min(end)
        };
        (
            grow(self.dims_start, self.dims_inc, self.dims_end),
            grow(self.points_start, self.points_inc, self.points_end),
        )
    }

    /// Increases until both ends are reached.
    pub fn stages(&self) -> usize {
        let n = |start: usize, inc: usize, end: usize| (end - start).div_ceil(inc.max(1));
        n(self.dims_start, self.dims_inc, self.dims_end).max(n(
            self.points_start,
            self.points_inc,
            self.points_end,
        ))
    }
}

/// Singular value decomposition by one-sided Jacobi rotations (Hestenes 1958) of the row-major
/// `rows × cols` matrix `a`: returns (`U·Σ` as columns `[cols][rows]`, `V` as columns
/// `[cols][cols]`), so that `a = Σ_j (UΣ)_j V_jᵀ` and the columns of `UΣ` are orthogonal.
/// Accurate for the small, possibly rank-deficient matrices of the baselines.
fn jacobi_svd(a: &[f64], rows: usize, cols: usize) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut u: Vec<Vec<f64>> = (0..cols)
        .map(|j| (0..rows).map(|i| a[i * cols + j]).collect())
        .collect();
    let mut v: Vec<Vec<f64>> = (0..cols)
        .map(|j| (0..cols).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    let dot = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * y).sum::<f64>();
    let rotate = |m: &mut Vec<Vec<f64>>, p: usize, q: usize, c: f64, s: f64| {
        for i in 0..m[p].len() {
            let (mp, mq) = (m[p][i], m[q][i]);
            m[p][i] = c * mp - s * mq;
            m[q][i] = s * mp + c * mq;
        }
    };
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..cols {
            for q in p + 1..cols {
                let alpha = dot(&u[p], &u[p]);
                let beta = dot(&u[q], &u[q]);
                let gamma = dot(&u[p], &u[q]);
                if gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut u, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    (u, v)
}

/// The minimum-norm least-squares solution `ŵ = X⁺y` of the row-major `rows × cols` system
/// `X ŵ ≈ y` (numpy's `lstsq`: singular values below `σ_max · max(rows, cols) · ε` count as 0).
/// With fewer rows than columns it is the interpolating `ŵ` of smallest norm.
pub fn least_squares(x: &[f64], rows: usize, cols: usize, y: &[f64]) -> Vec<f64> {
    spectral_solve(x, rows, cols, y, 0.0)
}

/// Ridge regression `ŵ = (XᵀX + λI)⁻¹Xᵀy` of the row-major `rows × cols` system, through the same
/// SVD: `ŵ = Σ_j σ_j/(σ_j² + λ) (u_jᵀy) v_j`. `λ = 0` is [`least_squares`].
pub fn ridge(x: &[f64], rows: usize, cols: usize, y: &[f64], lambda: f64) -> Vec<f64> {
    spectral_solve(x, rows, cols, y, lambda.max(0.0))
}

/// `ŵ = Σ_j σ_j/(σ_j² + λ) (u_jᵀy) v_j`; with λ = 0, singular values below the `lstsq` tolerance
/// are dropped (the pseudo-inverse).
fn spectral_solve(x: &[f64], rows: usize, cols: usize, y: &[f64], lambda: f64) -> Vec<f64> {
    assert_eq!(x.len(), rows * cols, "X must be rows × cols");
    assert_eq!(y.len(), rows, "y must have one entry per row of X");
    let mut w = vec![0.0; cols];
    if rows == 0 {
        return w;
    }
    let (us, v) = jacobi_svd(x, rows, cols);
    let sq: Vec<f64> = us.iter().map(|c| c.iter().map(|x| x * x).sum()).collect();
    let s_max = sq.iter().cloned().fold(0.0, f64::max).sqrt();
    let tol = s_max * rows.max(cols) as f64 * f64::EPSILON;
    for j in 0..cols {
        if lambda == 0.0 && sq[j].sqrt() <= tol {
            continue;
        }
        // (UΣ)_j = σ_j u_j, so σ_j (u_jᵀy) / (σ_j² + λ) = (UΣ)_jᵀy / (σ_j² + λ).
        let coef = us[j].iter().zip(y).map(|(a, b)| a * b).sum::<f64>() / (sq[j] + lambda);
        for (wi, vi) in w.iter_mut().zip(&v[j]) {
            *wi += coef * vi;
        }
    }
    w
}

/// A classical in-context predictor: reads the first k pairs of a sequence, predicts y_{k+1}.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Baseline {
    /// Minimum-norm least squares on the k examples.
    LeastSquares,
    /// Mean y of the (up to) `n` nearest examples in Euclidean distance.
    NearestNeighbours(usize),
    /// ŵ = (1/k) Σ yᵢxᵢ.
    Averaging,
    /// Ridge regression with this λ (λ = σ² is Bayes-optimal on a task with noise σ).
    Ridge(f64),
}

impl Baseline {
    /// The three baselines of the paper's linear-regression figure.
    pub const ALL: [Baseline; 3] = [
        Baseline::LeastSquares,
        Baseline::NearestNeighbours(3),
        Baseline::Averaging,
    ];

    pub fn name(&self) -> String {
        match self {
            Baseline::LeastSquares => "least squares".into(),
            Baseline::NearestNeighbours(n) => format!("{n}-NN"),
            Baseline::Averaging => "averaging".into(),
            Baseline::Ridge(_) => "ridge".into(),
        }
    }

    /// Predictions at every position of one sequence (`xs` `[n, dim]`, `ys` `[n]`): entry k uses
    /// pairs 0..k and `xs[k]`. With no example (k = 0) every baseline predicts 0.
    pub fn predict(&self, xs: &[f64], ys: &[f64], dim: usize) -> Vec<f64> {
        let n = ys.len();
        assert_eq!(xs.len(), n * dim, "xs must be [points, dim]");
        let x = |i: usize| &xs[i * dim..(i + 1) * dim];
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        (0..n)
            .map(|k| {
                if k == 0 {
                    return 0.0;
                }
                match *self {
                    Baseline::LeastSquares => {
                        dot(&least_squares(&xs[..k * dim], k, dim, &ys[..k]), x(k))
                    }
                    Baseline::Ridge(lambda) => {
                        dot(&ridge(&xs[..k * dim], k, dim, &ys[..k], lambda), x(k))
                    }
                    Baseline::NearestNeighbours(m) => {
                        let mut dist: Vec<(f64, usize)> = (0..k)
                            .map(|i| {
                                let d2 = x(i).iter().zip(x(k)).map(|(a, b)| (a - b).powi(2));
                                (d2.sum::<f64>(), i)
                            })
                            .collect();
                        // Ties go to the earlier example, so the result is deterministic.
                        dist.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                        let m = m.min(k).max(1);
                        dist[..m].iter().map(|&(_, i)| ys[i]).sum::<f64>() / m as f64
                    }
                    Baseline::Averaging => {
                        let mut w = vec![0.0; dim];
                        for i in 0..k {
                            for (wj, xj) in w.iter_mut().zip(x(i)) {
                                *wj += ys[i] * xj / k as f64;
                            }
                        }
                        dot(&w, x(k))
                    }
                }
            })
            .collect()
    }
}

/// Squared error vs number of in-context examples k: `mean[k]` = mean over sequences of
/// (ŷ_k − y_k)² / active dimensions, `sem[k]` its standard error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorCurve {
    pub name: String,
    pub mean: Vec<f64>,
    pub sem: Vec<f64>,
}

impl ErrorCurve {
    /// The curve of predictions `[batch, points]` (row-major) on `batch`.
    pub fn from_predictions(name: &str, preds: &[f64], batch: &RegressionBatch) -> Result<Self> {
        let (b, n) = (batch.batch, batch.points);
        ensure!(
            preds.len() == b * n,
            "{name}: {} predictions for {b} sequences of {n} points",
            preds.len()
        );
        let scale = batch.active as f64;
        let mut mean = vec![0.0; n];
        let mut sem = vec![0.0; n];
        for k in 0..n {
            let e: Vec<f64> = (0..b)
                .map(|s| (preds[s * n + k] - batch.ys[s * n + k] as f64).powi(2) / scale)
                .collect();
            let m = e.iter().sum::<f64>() / b as f64;
            let var = e.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (b.max(2) - 1) as f64;
            mean[k] = m;
            sem[k] = (var / b as f64).sqrt();
        }
        Ok(Self {
            name: name.into(),
            mean,
            sem,
        })
    }

    /// The curve of a baseline on every sequence of `batch`.
    pub fn baseline(baseline: Baseline, batch: &RegressionBatch) -> Result<Self> {
        let preds: Vec<f64> = (0..batch.batch)
            .flat_map(|s| {
                let (xs, ys) = batch.sequence(s);
                baseline.predict(&xs, &ys, batch.dim)
            })
            .collect();
        Self::from_predictions(&baseline.name(), &preds, batch)
    }
}
