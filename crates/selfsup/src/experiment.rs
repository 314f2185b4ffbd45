//! Experiments that tie pretraining and evaluation together. `demo` is the main job: SimCLR on the
//! embedded digits, then a label-efficiency table against raw pixels and a random encoder.

use crate::config::PretrainConfig;
use crate::data::ImageDataset;
use crate::eval::{self, EvalConfig, EvalResult, LabelBudget, LabeledFeatures};
use crate::nn::Representation;
use crate::pipeline::{self, RunOptions};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;

/// Frozen features of one encoder on the train and test splits.
pub struct FeatureSet {
    pub name: String,
    pub dim: usize,
    pub train: Vec<f32>,
    pub test: Vec<f32>,
}

/// Raw pixels as features (the no-learning baseline).
pub fn pixel_features(train: &ImageDataset, test: &ImageDataset) -> FeatureSet {
    FeatureSet {
        name: "raw pixels".into(),
        dim: train.image_len(),
        train: train.images.clone(),
        test: test.images.clone(),
    }
}

/// Encoder features h = f(x) on both splits.
pub fn encoder_features(
    name: &str,
    encoder: &Representation,
    train: &ImageDataset,
    test: &ImageDataset,
    hw: (usize, usize),
    opts: &RunOptions,
) -> FeatureSet {
    let tr = pipeline::embed(encoder, train, hw, &opts.device, 256);
    let te = pipeline::embed(encoder, test, hw, &opts.device, 256);
    let dim = tr.len() / train.len().max(1);
    FeatureSet {
        name: name.into(),
        dim,
        train: tr,
        test: te,
    }
}

/// One row of a label-efficiency table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub features: String,
    pub budget: String,
    pub linear_mean: f64,
    pub linear_std: f64,
    pub knn_mean: f64,
    pub knn_std: f64,
    pub linear_runs: Vec<f64>,
    pub knn_runs: Vec<f64>,
}

/// Linear probe and kNN of every feature set at every budget, over `cfg.draws` label draws.
pub fn label_efficiency(
    sets: &[FeatureSet],
    train: &ImageDataset,
    test: &ImageDataset,
    budgets: &[LabelBudget],
    cfg: &EvalConfig,
) -> Result<Vec<Row>> {
    let train_labels = train
        .labels
        .as_ref()
        .context("the training split has no labels")?;
    let test_labels = test
        .labels
        .as_ref()
        .context("the test split has no labels")?;
    let k = train.num_classes().max(test.num_classes());
    let mut rows = vec![];
    for set in sets {
        let tr = LabeledFeatures {
            features: &set.train,
            labels: train_labels,
            dim: set.dim,
        };
        let te = LabeledFeatures {
            features: &set.test,
            labels: test_labels,
            dim: set.dim,
        };
        for b in budgets {
            let r = eval::evaluate(&tr, &te, k, b, cfg)
                .with_context(|| format!("evaluating {}", set.name))?;
            rows.push(row(&set.name, b, &r.linear, &r.knn));
        }
    }
    Ok(rows)
}

fn row(name: &str, b: &LabelBudget, lin: &EvalResult, knn: &EvalResult) -> Row {
    Row {
        features: name.to_string(),
        budget: b.to_string(),
        linear_mean: lin.mean,
        linear_std: lin.std,
        knn_mean: knn.mean,
        knn_std: knn.std,
        linear_runs: lin.runs.clone(),
        knn_runs: knn.runs.clone(),
    }
}

/// Formats rows as a table: one line per feature set, a linear and a kNN column per budget.
pub fn format_table(rows: &[Row]) -> String {
    let mut budgets: Vec<&str> = vec![];
    let mut names: Vec<&str> = vec![];
    for r in rows {
        if !budgets.contains(&r.budget.as_str()) {
            budgets.push(&r.budget);
        }
        if !names.contains(&r.features.as_str()) {
            names.push(&r.features);
        }
    }
    let cell = |m: f64, s: f64| format!("{:5.1} ± {:4.1}", 100.0 * m, 100.0 * s);
    let width = names.iter().map(|n| n.len()).max().unwrap_or(8).max(8);
    let mut out = String::new();
    for (title, pick) in [("linear probe", 0), ("kNN", 1)] {
        out += &format!("{:width$}", format!("{title} (test acc %)"));
        for b in &budgets {
            out += &format!("  {:>12}", b);
        }
        out += "\n";
        for n in &names {
            out += &format!("{:width$}", n);
            for b in &budgets {
                let r = rows.iter().find(|r| r.features == *n && r.budget == *b);
                let c = match (r, pick) {
                    (Some(r), 0) => cell(r.linear_mean, r.linear_std),
                    (Some(r), _) => cell(r.knn_mean, r.knn_std),
                    _ => String::new(),
                };
                out += &format!("  {:>12}", c);
            }
            out += "\n";
        }
        out += "\n";
    }
    out
}

/// Settings of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub seed: u64,
    pub out: PathBuf,
    pub draws: usize,
    /// Override the tuned epoch count (tests use a short run).
    pub epochs: Option<usize>,
    pub run: RunOptions,
}

/// The demo's results.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    pub dataset: String,
    pub train_images: usize,
    pub test_images: usize,
    pub pretrain: pipeline::PretrainReport,
    pub draws: usize,
    pub rows: Vec<Row>,
}

/// The SimCLR configuration the demo uses on 8×8 digits.
pub fn demo_config(seed: u64) -> PretrainConfig {
    let mut cfg = PretrainConfig::new("simclr", "digits");
    cfg.seed = seed;
    cfg.train.epochs = 100;
    cfg.train.batch_size = 256;
    cfg.train.lr = 2e-3;
    cfg.train.warmup_epochs = 2.0;
    cfg.simclr.temperature = 0.2;
    cfg.simclr.proj_hidden = 128;
    cfg.simclr.proj_dim = 64;
    // Strong crops destroy 8×8 digits (a 0.08 crop is 2×2 pixels); keep most of the digit and
    // rely on jitter of intensity and contrast, as colour ops reduce to those on grey images.
    cfg.augment.crop_scale = (0.5, 1.0);
    cfg.augment.flip_p = 0.0;
    cfg
}

/// Pretrains SimCLR on the embedded digits and evaluates it against raw pixels and the same
/// encoder at random initialisation, at 1, 5, 10 labels per class and 100% of labels.
pub fn demo(opts: &DemoOptions) -> Result<DemoReport> {
    let mut cfg = demo_config(opts.seed);
    if let Some(e) = opts.epochs {
        cfg.train.epochs = e;
    }
    let splits = pipeline::load_data(&cfg.data, &cfg)?;
    let train = splits.train;
    let test = splits.test.context("digits has a test split")?;
    if opts.out.join("state.json").exists() {
        std::fs::remove_dir_all(&opts.out)
            .with_context(|| format!("clearing {}", opts.out.display()))?;
    }
    let report = pipeline::pretrain(&cfg, &opts.out, &opts.run)?;
    let hw = pipeline::input_hw(&train);
    let device = opts.run.device.clone();
    let trained = pipeline::load_run(&opts.out, &device)?;
    let random = pipeline::random_representation(&cfg, &train, &device);
    let sets = vec![
        pixel_features(&train, &test),
        encoder_features("random-init encoder", &random, &train, &test, hw, &opts.run),
        encoder_features(
            "SimCLR encoder",
            &trained.encoder,
            &train,
            &test,
            hw,
            &opts.run,
        ),
    ];
    let budgets: Vec<LabelBudget> = ["1/class", "5/class", "10/class", "100%"]
        .iter()
        .map(|b| b.parse())
        .collect::<Result<_>>()?;
    let ecfg = EvalConfig {
        draws: opts.draws,
        seed: opts.seed,
        ..Default::default()
    };
    let rows = label_efficiency(&sets, &train, &test, &budgets, &ecfg)?;
    Ok(DemoReport {
        dataset: "digits (UCI optical digits, embedded)".into(),
        train_images: train.len(),
        test_images: test.len(),
        pretrain: report,
        draws: opts.draws,
        rows,
    })
}
