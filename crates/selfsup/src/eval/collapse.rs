//! Collapse diagnostics of a feature matrix H ∈ ℝ^{n×d} (rows are embeddings, row-major `f32`).
//!
//! * **std** (SimSiam, Chen & He 2021, §4.1): the standard deviation over the n rows of each
//!   dimension of the L2-normalized embeddings, averaged over dimensions and multiplied by √d.
//!   Embeddings spread over the sphere give ≈ 1; a collapse to one point gives 0.
//! * **effective rank** (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): with σ_i the singular
//!   values of H (uncentered, as given) and p_i = σ_i / Σ_j σ_j, erank = exp(−Σ p_i log p_i), in
//!   [1, min(n, d)]. It counts the directions the embeddings use (dimensional collapse lowers it
//!   even when std does not). σ_i² are the eigenvalues of the min(n, d)-sided Gram matrix, found
//!   in f64 by cyclic Jacobi rotations.
//! * **alignment** and **uniformity** (Wang & Isola 2020, eqs. 4 and 5, α = 2, t = 2) on the
//!   L2-normalized embeddings: alignment = mean over positive pairs of ‖h1 − h2‖² (0 is
//!   perfect), uniformity = log mean_{i<j} exp(−2‖h_i − h_j‖²) (−4 is the limit of a uniform
//!   distribution on a high-dimensional sphere; 0 is a collapse to one point).
//!
//! Collapse rule ([`CollapseReport::is_collapsed`]): std < [`STD_COLLAPSED`] (embeddings within
//! a tenth of the healthy spread) or effective rank < [`RANK_COLLAPSED`] (essentially one
//! direction).

use serde::{Deserialize, Serialize};

/// std below this is a collapse (healthy ≈ 1).
pub const STD_COLLAPSED: f64 = 0.1;
/// Effective rank below this is a collapse (one direction gives 1).
pub const RANK_COLLAPSED: f64 = 1.5;

/// The diagnostics of one feature matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollapseReport {
    /// Rows and dimensions of the feature matrix.
    pub n: usize,
    pub d: usize,
    /// Mean per-dimension std of the L2-normalized embeddings × √d.
    pub std: f64,
    /// exp(entropy of the normalized singular values).
    pub effective_rank: f64,
    /// Mean ‖h1 − h2‖² over positive pairs (normalized), when pairs are given.
    pub alignment: Option<f64>,
    /// log mean exp(−2‖h_i − h_j‖²) over distinct pairs (normalized).
    pub uniformity: f64,
}

impl CollapseReport {
    /// Diagnostics of `h` ([n, d] row-major); `positives` are two [m, d] matrices whose rows i
    /// are embeddings of two views of one image (for alignment).
    pub fn compute(h: &[f32], d: usize, positives: Option<(&[f32], &[f32])>) -> Self {
        Self {
            n: rows(h, d),
            d,
            std: normalized_std(h, d),
            effective_rank: effective_rank(h, d),
            alignment: positives.map(|(a, b)| alignment(a, b, d)),
            uniformity: uniformity(h, d),
        }
    }

    /// The documented rule: std < 0.1 or effective rank < 1.5.
    pub fn is_collapsed(&self) -> bool {
        self.std < STD_COLLAPSED || self.effective_rank < RANK_COLLAPSED
    }

    /// One line per threshold crossed, for a warning; empty when healthy.
    pub fn alarms(&self) -> Vec<String> {
        let mut out = vec![];
        if self.std < STD_COLLAPSED {
            out.push(format!(
                "embedding std {:.3} < {STD_COLLAPSED} (healthy ≈ 1): the embeddings collapse to a point",
                self.std
            ));
        }
        if self.effective_rank < RANK_COLLAPSED {
            out.push(format!(
                "effective rank {:.2} < {RANK_COLLAPSED} (of at most {}): the embeddings span one direction",
                self.effective_rank,
                self.n.min(self.d)
            ));
        }
        out
    }
}

fn rows(h: &[f32], d: usize) -> usize {
    assert!(d > 0, "feature dimension must be positive");
    assert_eq!(
        h.len() % d,
        0,
        "{} values are not whole rows of {d}",
        h.len()
    );
    h.len() / d
}

/// Rows scaled to unit L2 norm, in f64 (eps 1e-12 as torch's F.normalize).
pub fn l2_normalize(h: &[f32], d: usize) -> Vec<f64> {
    rows(h, d);
    let mut out = Vec::with_capacity(h.len());
    for row in h.chunks(d) {
        let norm = row
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        out.extend(row.iter().map(|&v| v as f64 / norm));
    }
    out
}

/// Mean over dimensions of the (n−1)-normalized std of the L2-normalized rows, × √d.
/// 0 for fewer than 2 rows.
pub fn normalized_std(h: &[f32], d: usize) -> f64 {
    let n = rows(h, d);
    if n < 2 {
        return 0.0;
    }
    let x = l2_normalize(h, d);
    let mut total = 0.0;
    for j in 0..d {
        let mean = (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64;
        let var = (0..n).map(|i| (x[i * d + j] - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        total += var.sqrt();
    }
    total / d as f64 * (d as f64).sqrt()
}

/// Singular values of H, largest first (min(n, d) of them).
pub fn singular_values(h: &[f32], d: usize) -> Vec<f64> {
    let n = rows(h, d);
    let x: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    // The smaller Gram matrix has the same non-zero eigenvalues σ².
    let gram = if n <= d {
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for k in i..n {
                let s = (0..d).map(|j| x[i * d + j] * x[k * d + j]).sum::<f64>();
                g[i * n + k] = s;
                g[k * n + i] = s;
            }
        }
        g
    } else {
        let mut g = vec![0.0; d * d];
        for row in x.chunks(d) {
            for a in 0..d {
                let ra = row[a];
                if ra == 0.0 {
                    continue;
                }
                for b in a..d {
                    g[a * d + b] += ra * row[b];
                }
            }
        }
        for a in 0..d {
            for b in 0..a {
                g[a * d + b] = g[b * d + a];
            }
        }
        g
    };
    let m = n.min(d);
    let mut s: Vec<f64> = symmetric_eigenvalues(gram, m)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// exp(−Σ p log p) with p the singular values normalized to sum 1; 0 for an all-zero matrix.
pub fn effective_rank(h: &[f32], d: usize) -> f64 {
    let s = singular_values(h, d);
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = s
        .iter()
        .map(|&v| v / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    entropy.exp()
}

/// Mean ‖ĥ1_i − ĥ2_i‖² over the rows of two [m, d] matrices (normalized rows; α = 2).
pub fn alignment(h1: &[f32], h2: &[f32], d: usize) -> f64 {
    assert_eq!(
        h1.len(),
        h2.len(),
        "alignment needs the same number of rows"
    );
    let m = rows(h1, d);
    if m == 0 {
        return 0.0;
    }
    let (a, b) = (l2_normalize(h1, d), l2_normalize(h2, d));
    a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / m as f64
}

/// log of the mean over pairs i < j of exp(−2‖ĥ_i − ĥ_j‖²) (t = 2); 0 for fewer than 2 rows.
pub fn uniformity(h: &[f32], d: usize) -> f64 {
    let n = rows(h, d);
    if n < 2 {
        return 0.0;
    }
    let x = l2_normalize(h, d);
    // log-mean-exp with the maximum factored out: exp(−2·4) is the smallest term, no underflow,
    // but summing in this form stays exact for any t.
    let mut terms = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let sq: f64 = (0..d).map(|k| (x[i * d + k] - x[j * d + k]).powi(2)).sum();
            terms.push(-2.0 * sq);
        }
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = terms.iter().map(|t| (t - max).exp()).sum::<f64>() / terms.len() as f64;
    max + mean.ln()
}

/// Eigenvalues of the symmetric `m × m` matrix `a` (row-major), by cyclic Jacobi rotations
/// (Golub & Van Loan, §8.5), in no particular order.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, m: usize) -> Vec<f64> {
    assert_eq!(a.len(), m * m, "matrix is not {m}×{m}");
    let off = |a: &[f64]| -> f64 {
        let mut s = 0.0;
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    s += a[i * m + j] * a[i * m + j];
                }
            }
        }
        s
    };
    let scale: f64 = a.iter().map(|v| v * v).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        if off(&a) <= 1e-24 * scale {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * m + p], a[q * m + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J on rows/columns p and q.
                for k in 0..m {
                    let (akp, akq) = (a[k * m + p], a[k * m + q]);
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let (apk, aqk) = (a[p * m + k], a[q * m + k]);
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..m).map(|i| a[i * m + i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_known_eigenvalues() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
        let mut e = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
        e.sort_by(f64::total_cmp);
        assert!((e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12);
        // A diagonal matrix is its own answer.
        let e = symmetric_eigenvalues(vec![5.0, 0.0, 0.0, -2.0], 2);
        assert_eq!(e, vec![5.0, -2.0]);
    }
}
