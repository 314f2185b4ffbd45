//! Evaluation of a frozen representation h = f(x) with few labels: a linear probe
//! (multinomial logistic regression on standardized features) and a weighted kNN
//! classifier (cosine, temperature-weighted votes), each at a label budget such as
//! `5/class` or `10%`, as mean ± std over several seeded label draws.
//!
//! Everything works on row-major `f32` feature matrices; nothing here knows about
//! models, files of images or the CLI. [`write_npy_f32`] / [`write_npy_i64`] export
//! embeddings for Python.

mod budget;
pub mod collapse;
mod features;
pub mod finetune;
mod knn;
mod npy;
mod probe;
pub mod text_finetune;

pub use budget::{draw_labeled, LabelBudget};
pub use features::Standardizer;
pub use knn::{knn_predict, DEFAULT_K, DEFAULT_TEMPERATURE};
pub use npy::{write_npy_f32, write_npy_i64};
pub use probe::{fit_probe, LinearModel, ProbeConfig};

use anyhow::{bail, ensure, Context};

/// Accuracies of one evaluation over several label draws.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Mean accuracy, in [0, 1].
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator; 0 for a single run).
    pub std: f64,
    /// Accuracy of each draw, in draw order.
    pub runs: Vec<f64>,
}

impl EvalResult {
    pub fn from_runs(runs: Vec<f64>) -> Self {
        let n = runs.len() as f64;
        let mean = if runs.is_empty() {
            f64::NAN
        } else {
            runs.iter().sum::<f64>() / n
        };
        let std = if runs.len() < 2 {
            0.0
        } else {
            (runs.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Self { mean, std, runs }
    }
}

/// A borrowed feature matrix with its labels: `labels.len()` rows of `dim` features.
#[derive(Debug, Clone, Copy)]
pub struct LabeledFeatures<'a> {
    pub features: &'a [f32],
    pub labels: &'a [u32],
    pub dim: usize,
}

impl LabeledFeatures<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Settings of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalConfig {
    pub probe: ProbeConfig,
    /// kNN neighbours (clipped to the number of labelled images).
    pub k: usize,
    /// kNN vote temperature.
    pub temperature: f64,
    /// Number of label draws; draw i uses seed `seed + i`.
    pub draws: usize,
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            probe: ProbeConfig::default(),
            k: DEFAULT_K,
            temperature: DEFAULT_TEMPERATURE,
            draws: 5,
            seed: 0,
        }
    }
}

/// Linear-probe and kNN test accuracy at one label budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetEval {
    pub budget: LabelBudget,
    pub linear: EvalResult,
    pub knn: EvalResult,
    /// Whether every probe fit reached its gradient tolerance.
    pub probe_converged: bool,
    /// The most L-BFGS iterations any draw needed.
    pub probe_iterations: usize,
}

/// Evaluates features at one label budget over `cfg.draws` seeded label draws.
///
/// The standardizer is fit on all training features (available without labels in
/// self-supervised learning); each draw then fits the probe on the labelled subset only
/// and runs kNN with the labelled subset as the memory bank (on the unstandardized,
/// L2-normalized features, as in InstDisc/solo-learn). The same seed gives the same
/// subsets for any features, so rows of a table are paired. A draw whose subset equals
/// the previous one (`100%`) reuses its accuracies.
pub fn evaluate(
    train: &LabeledFeatures,
    test: &LabeledFeatures,
    num_classes: usize,
    budget: &LabelBudget,
    cfg: &EvalConfig,
) -> anyhow::Result<BudgetEval> {
    let d = train.dim;
    ensure!(
        test.dim == d,
        "train features have {d} dimensions but test features have {}",
        test.dim
    );
    ensure!(cfg.draws >= 1, "evaluation needs at least 1 label draw");
    ensure!(!test.is_empty(), "evaluation needs at least 1 test image");
    if let Some((i, &l)) = test
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!("test label {l} at index {i} is out of range for {num_classes} classes");
    }
    let standardizer = Standardizer::fit(train.features, train.len(), d)
        .context("standardizing train features")?;
    let train_z = standardizer.transform(train.features)?;
    let test_z = standardizer.transform(test.features)?;

    let mut linear = Vec::with_capacity(cfg.draws);
    let mut knn = Vec::with_capacity(cfg.draws);
    let mut probe_converged = true;
    let mut probe_iterations = 0;
    let mut previous: Option<Vec<usize>> = None;
    for draw in 0..cfg.draws {
        let idx = draw_labeled(
            train.labels,
            num_classes,
            budget,
            cfg.seed.wrapping_add(draw as u64),
        )?;
        if previous.as_ref() == Some(&idx) {
            linear.push(linear[draw - 1]);
            knn.push(knn[draw - 1]);
            continue;
        }
        let y: Vec<u32> = idx.iter().map(|&i| train.labels[i]).collect();
        let x_z = gather_rows(&train_z, d, &idx);
        let model = fit_probe(&x_z, &y, idx.len(), d, num_classes, &cfg.probe)
            .with_context(|| format!("linear probe at {budget}, draw {draw}"))?;
        probe_converged &= model.converged;
        probe_iterations = probe_iterations.max(model.iterations);
        linear.push(model.accuracy(&test_z, test.labels, test.len())?);

        let x_raw = gather_rows(train.features, d, &idx);
        let pred = knn_predict(
            &x_raw,
            &y,
            idx.len(),
            test.features,
            test.len(),
            d,
            num_classes,
            cfg.k,
            cfg.temperature,
        )
        .with_context(|| format!("kNN at {budget}, draw {draw}"))?;
        knn.push(probe::accuracy(&pred, test.labels));
        previous = Some(idx);
    }
    Ok(BudgetEval {
        budget: *budget,
        linear: EvalResult::from_runs(linear),
        knn: EvalResult::from_runs(knn),
        probe_converged,
        probe_iterations,
    })
}

fn gather_rows(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&i| &x[i * d..(i + 1) * d])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_result_statistics() {
        let r = EvalResult::from_runs(vec![0.5, 0.7, 0.6]);
        assert!((r.mean - 0.6).abs() < 1e-12);
        assert!((r.std - 0.1).abs() < 1e-12);
        assert_eq!(EvalResult::from_runs(vec![0.8]).std, 0.0);
    }
}
