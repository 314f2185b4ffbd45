//! Power-law fits for scaling curves, `L(X) = c + a·X^(−α)` (Kaplan et al. 2020, "Scaling Laws
//! for Neural Language Models", eqs. 1.1–1.2 use the pure form c = 0).
//!
//! The pure law is ordinary least squares on `ln L = ln a − α·ln X`. With an irreducible term c
//! the problem is no longer linear; we profile it instead of running a nonlinear optimizer:
//! for each c on a grid in [0, min L) the rest is again a log–log line through `L − c`, and the
//! c whose curve best matches `ln L` wins (then a finer grid around it). That cannot diverge,
//! and on noiseless data it finds the true c exactly.
//!
//! R² is always measured on `ln L` (the space both fits are judged in), so the two are
//! comparable; residuals are `ln L − ln L̂`.

use anyhow::{bail, ensure, Result};
use serde::Serialize;

/// A fitted `L = c + a·X^(−α)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PowerLaw {
    pub a: f64,
    pub alpha: f64,
    /// Irreducible loss; 0 for the pure power law.
    pub c: f64,
    /// Coefficient of determination on ln L (1 = perfect; NaN when every L is equal).
    pub r2: f64,
    /// ln L − ln L̂ at each point, in input order.
    pub residuals: Vec<f64>,
    /// Number of points fitted.
    pub points: usize,
}

impl PowerLaw {
    pub fn predict(&self, x: f64) -> f64 {
        self.c + self.a * x.powf(-self.alpha)
    }

    /// `L = 3.2100·X^-0.1230`, with ` + 1.500` when there is an offset.
    pub fn formula(&self, var: &str) -> String {
        let c = if self.c > 0.0 {
            format!(" + {:.3}", self.c)
        } else {
            String::new()
        };
        format!("L = {:.4}·{var}^{:+.4}{c}", self.a, -self.alpha)
    }
}

fn check(x: &[f64], y: &[f64], min_points: usize) -> Result<()> {
    ensure!(
        x.len() == y.len(),
        "power-law fit: {} x values but {} y values",
        x.len(),
        y.len()
    );
    ensure!(
        x.len() >= min_points,
        "power-law fit: needs at least {min_points} points, got {}",
        x.len()
    );
    for (&xi, &yi) in x.iter().zip(y) {
        if !(xi.is_finite() && xi > 0.0 && yi.is_finite() && yi > 0.0) {
            bail!("power-law fit: every value must be finite and positive, got ({xi}, {yi})");
        }
    }
    let first = x[0];
    ensure!(
        x.iter().any(|&v| v != first),
        "power-law fit: all x values are equal ({first}); the exponent is undefined"
    );
    Ok(())
}

/// Least-squares line `v = b0 + b1·u`.
fn line(u: &[f64], v: &[f64]) -> (f64, f64) {
    let n = u.len() as f64;
    let mu = u.iter().sum::<f64>() / n;
    let mv = v.iter().sum::<f64>() / n;
    let suu: f64 = u.iter().map(|a| (a - mu) * (a - mu)).sum();
    let suv: f64 = u.iter().zip(v).map(|(a, b)| (a - mu) * (b - mv)).sum();
    let b1 = suv / suu;
    (mv - b1 * mu, b1)
}

/// Fits (a, α) to `L − c` in log–log space and scores the curve on ln L.
fn fit_with_offset(x: &[f64], y: &[f64], c: f64) -> PowerLaw {
    let lx: Vec<f64> = x.iter().map(|v| v.ln()).collect();
    let ly: Vec<f64> = y.iter().map(|v| (v - c).ln()).collect();
    let (b0, b1) = line(&lx, &ly);
    let mut law = PowerLaw {
        a: b0.exp(),
        alpha: -b1,
        c,
        r2: f64::NAN,
        residuals: vec![],
        points: x.len(),
    };
    let ln_y: Vec<f64> = y.iter().map(|v| v.ln()).collect();
    law.residuals = x
        .iter()
        .zip(&ln_y)
        .map(|(&xi, &li)| li - law.predict(xi).ln())
        .collect();
    let mean = ln_y.iter().sum::<f64>() / ln_y.len() as f64;
    let ss_tot: f64 = ln_y.iter().map(|v| (v - mean) * (v - mean)).sum();
    let ss_res: f64 = law.residuals.iter().map(|r| r * r).sum();
    law.r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    };
    law
}

fn sse(law: &PowerLaw) -> f64 {
    let s: f64 = law.residuals.iter().map(|r| r * r).sum();
    if s.is_finite() {
        s
    } else {
        f64::INFINITY
    }
}

/// Pure power law `L = a·X^(−α)` by least squares on ln L vs ln X (at least 2 points, all
/// positive, not all X equal).
pub fn fit_power_law(x: &[f64], y: &[f64]) -> Result<PowerLaw> {
    check(x, y, 2)?;
    Ok(fit_with_offset(x, y, 0.0))
}

/// `L = c + a·X^(−α)` with 0 ≤ c < min L, c profiled on a grid (see the module comment). Needs
/// at least 4 points: with 3 the three parameters would pass through any data exactly.
pub fn fit_power_law_offset(x: &[f64], y: &[f64]) -> Result<PowerLaw> {
    check(x, y, 4)?;
    let min_y = y.iter().copied().fold(f64::INFINITY, f64::min);
    // Coarse grid on c/min L in [0, 1), then two finer passes around the best cell; the top
    // stays below 1 so that L − c > 0 at every point.
    let (mut lo, mut hi) = (0.0f64, 0.999f64);
    let mut best = fit_with_offset(x, y, 0.0);
    for _ in 0..3 {
        let k = 200;
        let step = (hi - lo) / k as f64;
        let mut best_u = best.c / min_y;
        for i in 0..=k {
            let u = lo + step * i as f64;
            let law = fit_with_offset(x, y, u * min_y);
            if sse(&law) < sse(&best) {
                best = law;
                best_u = u;
            }
        }
        (lo, hi) = ((best_u - step).max(0.0), (best_u + step).min(0.999));
    }
    Ok(best)
}
