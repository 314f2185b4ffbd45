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

/// Encoder features h = f(x) on both splits; `grid > 1` pools the last feature map onto a
/// grid × grid layout instead of globally ([`Representation::forward_grid`]).
pub fn encoder_features(
    name: &str,
    encoder: &Representation,
    train: &ImageDataset,
    test: &ImageDataset,
    hw: (usize, usize),
    grid: usize,
    opts: &RunOptions,
) -> Result<FeatureSet> {
    let tr = pipeline::embed_grid(encoder, train, hw, &opts.device, 256, grid)?;
    let te = pipeline::embed_grid(encoder, test, hw, &opts.device, 256, grid)?;
    let dim = tr.len() / train.len().max(1);
    Ok(FeatureSet {
        name: name.into(),
        dim,
        train: tr,
        test: te,
    })
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
        encoder_features(
            "random-init encoder",
            &random,
            &train,
            &test,
            hw,
            1,
            &opts.run,
        )?,
        encoder_features(
            "SimCLR encoder",
            &trained.encoder,
            &train,
            &test,
            hw,
            1,
            &opts.run,
        )?,
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

/// One run of the collapse experiment.
#[derive(Clone, Debug, Serialize)]
pub struct CollapseRow {
    pub variant: String,
    pub final_loss: Option<f64>,
    /// Last evaluation: collapse_std, effective_rank, alignment, uniformity, knn_acc.
    pub diagnostics: std::collections::BTreeMap<String, f64>,
    pub collapsed: bool,
    /// Linear-probe test accuracy with all labels.
    pub linear_probe: f64,
    pub run_dir: PathBuf,
    /// (step, value) of each diagnostic over training, for plots.
    #[serde(skip)]
    pub history: Vec<(String, Vec<(f64, f64)>)>,
}

/// Settings of `experiment collapse`.
#[derive(Clone, Debug)]
pub struct CollapseOptions {
    pub data: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub encoder: crate::nn::EncoderConfig,
    pub seed: u64,
    pub out: PathBuf,
    pub run: RunOptions,
}

/// The five variants of the seed's Problem 1, same data and budget: SimCLR; SimCLR with positive
/// pairs only (no negatives); BYOL; BYOL without predictor; BYOL without EMA (target = online).
pub fn collapse_variants(o: &CollapseOptions) -> Vec<(String, PretrainConfig)> {
    let base = |method: &str| {
        let mut c = PretrainConfig::new(method, &o.data);
        c.seed = o.seed;
        c.encoder = o.encoder.clone();
        c.train.epochs = o.epochs;
        c.train.batch_size = o.batch_size;
        c
    };
    let mut v = vec![];
    v.push(("simclr".to_string(), base("simclr")));
    let mut p = base("simclr");
    p.simclr.positives_only = true;
    v.push(("simclr-positives-only".to_string(), p));
    v.push(("byol".to_string(), base("byol")));
    let mut np = base("byol");
    np.byol.predictor = false;
    v.push(("byol-no-predictor".to_string(), np));
    let mut ne = base("byol");
    ne.byol.ema = false;
    v.push(("byol-no-ema".to_string(), ne));
    v
}

/// Reads the evaluation lines of a run's metrics.jsonl as series per key.
pub fn eval_history(run: &std::path::Path) -> Result<Vec<(String, Vec<(f64, f64)>)>> {
    let p = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut out: Vec<(String, Vec<(f64, f64)>)> = vec![];
    for line in text.lines() {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        if m.contains_key("loss") {
            continue;
        }
        let Some(step) = m.get("step").and_then(|s| s.as_f64()) else {
            continue;
        };
        for (k, v) in &m {
            let Some(v) = v.as_f64() else { continue };
            if k == "step" {
                continue;
            }
            match out.iter_mut().find(|(name, _)| name == k) {
                Some((_, pts)) => pts.push((step, v)),
                None => out.push((k.clone(), vec![(step, v)])),
            }
        }
    }
    Ok(out)
}

/// Runs the five variants and reports their final diagnostics and linear-probe accuracy.
pub fn collapse_experiment(o: &CollapseOptions) -> Result<Vec<CollapseRow>> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut rows = vec![];
    for (name, cfg) in collapse_variants(o) {
        let dir = o.out.join(&name);
        if dir.join("state.json").exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        eprintln!("== {name}");
        let report = pipeline::pretrain(&cfg, &dir, &o.run)?;
        let state = crate::train::RunDir(dir.clone()).read_state()?;
        let collapsed = state
            .last_eval
            .get("collapse_std")
            .is_some_and(|&s| s < crate::eval::collapse::STD_COLLAPSED)
            || state
                .last_eval
                .get("effective_rank")
                .is_some_and(|&r| r < crate::eval::collapse::RANK_COLLAPSED);
        let splits = pipeline::load_data(&cfg.data, &cfg)?;
        let mut linear_probe = f64::NAN;
        if let Some(test) = &splits.test {
            if splits.train.labels.is_some() && test.labels.is_some() {
                let run = pipeline::load_run(&dir, &o.run.device)?;
                let set = encoder_features(
                    &name,
                    &run.encoder,
                    &splits.train,
                    test,
                    pipeline::input_hw(test),
                    1,
                    &o.run,
                )?;
                let ecfg = EvalConfig {
                    draws: 1,
                    seed: o.seed,
                    ..Default::default()
                };
                let r = label_efficiency(
                    &[set],
                    &splits.train,
                    test,
                    &[LabelBudget::Fraction(1.0)],
                    &ecfg,
                )?;
                linear_probe = r[0].linear_mean;
            }
        }
        rows.push(CollapseRow {
            variant: name,
            final_loss: report.final_loss,
            diagnostics: state.last_eval.clone(),
            collapsed,
            linear_probe,
            history: eval_history(&dir)?,
            run_dir: dir,
        });
    }
    Ok(rows)
}

/// The collapse experiment as a table.
pub fn format_collapse(rows: &[CollapseRow]) -> String {
    let mut out = format!(
        "{:<24} {:>9} {:>8} {:>9} {:>9} {:>10} {:>8} {:>8}  {}\n",
        "variant",
        "loss",
        "std×√d",
        "eff.rank",
        "align",
        "uniform",
        "kNN %",
        "probe %",
        "collapsed"
    );
    for r in rows {
        let g = |k: &str| r.diagnostics.get(k).copied().unwrap_or(f64::NAN);
        out += &format!(
            "{:<24} {:>9.4} {:>8.3} {:>9.2} {:>9.3} {:>10.3} {:>8.1} {:>8.1}  {}\n",
            r.variant,
            r.final_loss.unwrap_or(f64::NAN),
            g("collapse_std"),
            g("effective_rank"),
            g("alignment"),
            g("uniformity"),
            100.0 * g("knn_acc"),
            100.0 * r.linear_probe,
            if r.collapsed { "yes" } else { "no" }
        );
    }
    out
}

/// One cell of the label-efficiency comparison.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfficiencyRow {
    /// simclr, byol, vae, or "raw pixels" / "from scratch".
    pub method: String,
    /// linear probe, kNN, fine-tune, logistic regression, supervised.
    pub protocol: String,
    pub budget: String,
    /// Labelled training images.
    pub labels: usize,
    pub mean: f64,
    pub std: f64,
    pub runs: Vec<f64>,
    /// Seconds of training per draw (fine-tuning, from scratch), 0 for frozen protocols.
    pub seconds: f64,
}

impl EfficiencyRow {
    pub fn new(
        method: &str,
        protocol: &str,
        budget: &LabelBudget,
        labels: usize,
        r: &EvalResult,
        seconds: f64,
    ) -> Self {
        Self {
            method: method.into(),
            protocol: protocol.into(),
            budget: budget.to_string(),
            labels,
            mean: r.mean,
            std: r.std,
            runs: r.runs.clone(),
            seconds,
        }
    }
}

/// Settings of `experiment label-efficiency`.
#[derive(Clone, Debug)]
pub struct EfficiencyOptions {
    pub data: String,
    pub methods: Vec<String>,
    pub budgets: Vec<LabelBudget>,
    pub draws: usize,
    pub seed: u64,
    pub encoder: crate::nn::EncoderConfig,
    /// Pretraining budget per method.
    pub epochs: usize,
    pub minutes: Option<f64>,
    pub batch_size: usize,
    pub finetune: crate::eval::finetune::FinetuneConfig,
    /// Frozen protocols pool the encoder's last feature map onto a grid × grid layout (1 = the
    /// global average h); the VAE's μ_z is always used as is.
    pub pool_grid: usize,
    /// Run folders go to OUT/<method>; finished runs there are reused.
    pub out: PathBuf,
    pub run: RunOptions,
}

/// Pretrains (or reuses) each method, then compares linear probe, kNN and fine-tuning with
/// supervised training from scratch and raw-pixel logistic regression at every label budget,
/// over `draws` seeded label draws (the same draws for every method).
pub fn label_efficiency_experiment(o: &EfficiencyOptions) -> Result<Vec<EfficiencyRow>> {
    use crate::eval::finetune::finetune;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut base = PretrainConfig::new("simclr", &o.data);
    base.encoder = o.encoder.clone();
    base.seed = o.seed;
    let splits = pipeline::load_data(&o.data, &base)?;
    let train = splits.train;
    let test = splits
        .test
        .with_context(|| format!("dataset `{}` has no test split", o.data))?;
    let train_labels = train
        .labels
        .clone()
        .context("the training split has no labels")?;
    let classes = train.num_classes().max(test.num_classes());
    let hw = pipeline::input_hw(&train);
    let ecfg = EvalConfig {
        draws: o.draws,
        seed: o.seed,
        ..Default::default()
    };
    let mut rows = vec![];
    let count = |b: &LabelBudget| -> Result<usize> {
        Ok(crate::eval::draw_labeled(&train_labels, classes, b, o.seed)?.len())
    };
    let push = |rows: &mut Vec<EfficiencyRow>,
                method: &str,
                protocol: &str,
                b: &LabelBudget,
                r: &EvalResult,
                secs: f64|
     -> Result<()> {
        rows.push(EfficiencyRow::new(method, protocol, b, count(b)?, r, secs));
        Ok(())
    };
    // The frozen protocols of one feature set: a linear classifier under `linear` and, when
    // `knn`, the kNN rows.
    let frozen =
        |rows: &mut Vec<EfficiencyRow>, set: &FeatureSet, linear: &str, knn: bool| -> Result<()> {
            for r in label_efficiency(std::slice::from_ref(set), &train, &test, &o.budgets, &ecfg)?
            {
                let b: LabelBudget = r.budget.parse()?;
                let lin = EvalResult::from_runs(r.linear_runs.clone());
                push(rows, &set.name, linear, &b, &lin, 0.0)?;
                if knn {
                    let nn = EvalResult::from_runs(r.knn_runs.clone());
                    push(rows, &set.name, "kNN", &b, &nn, 0.0)?;
                }
            }
            Ok(())
        };
    // Raw pixels: logistic regression on standardized pixels.
    frozen(
        &mut rows,
        &pixel_features(&train, &test),
        "logistic regression",
        false,
    )?;
    // A random-init encoder of the same architecture, pooled the same way: what the
    // architecture gives without any training.
    let random = pipeline::random_representation(&base, &train, &o.run.device);
    let set = encoder_features(
        "random-init",
        &random,
        &train,
        &test,
        hw,
        o.pool_grid,
        &o.run,
    )?;
    frozen(&mut rows, &set, "linear probe", true)?;
    // Fine-tuning on a labelled subset: the same draws as the frozen protocols.
    let subset = |b: &LabelBudget, draw: usize| -> Result<ImageDataset> {
        Ok(train.subset(&crate::eval::draw_labeled(
            &train_labels,
            classes,
            b,
            o.seed.wrapping_add(draw as u64),
        )?))
    };
    for method in &o.methods {
        let dir = o.out.join(method);
        let finished = crate::train::RunDir(dir.clone())
            .read_state()
            .map(|s| s.finished)
            .unwrap_or(false);
        if finished {
            eprintln!("== {method}: reusing the finished run in {}", dir.display());
        } else {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing {}", dir.display()))?;
            }
            let mut cfg = PretrainConfig::new(method, &o.data);
            cfg.seed = o.seed;
            cfg.encoder = o.encoder.clone();
            cfg.train.epochs = o.epochs;
            cfg.train.minutes = o.minutes;
            cfg.train.batch_size = o.batch_size;
            eprintln!("== pretraining {method}");
            pipeline::pretrain(&cfg, &dir, &o.run)?;
        }
        let run = pipeline::load_run(&dir, &o.run.device)?;
        let grid = match run.encoder {
            crate::nn::Representation::Vae(_) => 1,
            _ => o.pool_grid,
        };
        let set = encoder_features(method, &run.encoder, &train, &test, hw, grid, &o.run)?;
        frozen(&mut rows, &set, "linear probe", true)?;
        for b in &o.budgets {
            let (mut accs, mut secs) = (vec![], 0.0);
            for draw in 0..o.draws {
                let labelled = subset(b, draw)?;
                let enc = pipeline::load_run(&dir, &o.run.device)?.encoder;
                let r = finetune(
                    enc,
                    true,
                    &labelled,
                    &test,
                    &o.finetune,
                    o.seed + draw as u64,
                    &o.run.device,
                )?;
                accs.push(r.accuracy);
                secs += r.seconds;
            }
            push(
                &mut rows,
                method,
                "fine-tune",
                b,
                &EvalResult::from_runs(accs),
                secs / o.draws.max(1) as f64,
            )?;
        }
    }
    // Supervised from scratch: the same encoder architecture, augmentation and labels.
    let mut scratch_cfg = base.clone();
    scratch_cfg.seed = o.seed;
    for b in &o.budgets {
        let (mut accs, mut secs) = (vec![], 0.0);
        for draw in 0..o.draws {
            let labelled = subset(b, draw)?;
            scratch_cfg.seed = o.seed + draw as u64;
            let enc = pipeline::random_representation(&scratch_cfg, &train, &o.run.device);
            let mut fcfg = o.finetune.clone();
            fcfg.encoder_lr_scale = 1.0;
            let r = finetune(
                enc,
                false,
                &labelled,
                &test,
                &fcfg,
                o.seed + draw as u64,
                &o.run.device,
            )?;
            accs.push(r.accuracy);
            secs += r.seconds;
        }
        push(
            &mut rows,
            "from scratch",
            "supervised",
            b,
            &EvalResult::from_runs(accs),
            secs / o.draws.max(1) as f64,
        )?;
    }
    Ok(rows)
}

/// The label-efficiency comparison as a table: one line per (method, protocol), one column per budget.
pub fn format_efficiency(rows: &[EfficiencyRow]) -> String {
    let mut budgets: Vec<(&str, usize)> = vec![];
    let mut keys: Vec<(&str, &str)> = vec![];
    for r in rows {
        if !budgets.iter().any(|(b, _)| *b == r.budget) {
            budgets.push((&r.budget, r.labels));
        }
        if !keys.contains(&(r.method.as_str(), r.protocol.as_str())) {
            keys.push((&r.method, &r.protocol));
        }
    }
    let mut out = format!("{:<34}", "test accuracy %  (labels →)");
    for (b, n) in &budgets {
        out += &format!("  {:>14}", format!("{b} ({n})"));
    }
    out += "\n";
    for (m, p) in keys {
        out += &format!("{:<34}", format!("{m} · {p}"));
        for (b, _) in &budgets {
            let c = rows
                .iter()
                .find(|r| r.method == m && r.protocol == p && r.budget == *b)
                .map(|r| format!("{:5.1} ± {:4.1}", 100.0 * r.mean, 100.0 * r.std))
                .unwrap_or_default();
            out += &format!("  {c:>14}");
        }
        out += "\n";
    }
    out
}

/// The rows as CSV.
pub fn efficiency_csv(rows: &[EfficiencyRow]) -> String {
    let mut s = String::from("method,protocol,budget,labels,mean,std,seconds\n");
    for r in rows {
        s += &format!(
            "{},{},{},{},{:.6},{:.6},{:.3}\n",
            r.method, r.protocol, r.budget, r.labels, r.mean, r.std, r.seconds
        );
    }
    s
}

/// Plots the diagnostics of every variant over training: OUT/collapse.{png,svg}.
pub fn plot_collapse(rows: &[CollapseRow], out: &std::path::Path) -> Result<Vec<PathBuf>> {
    use crate::report::plot::{panel_plot, Series};
    let keys = [
        "collapse_std",
        "effective_rank",
        "alignment",
        "uniformity",
        "knn_acc",
    ];
    let mut panels = vec![];
    for k in keys {
        let series: Vec<Series> = rows
            .iter()
            .filter_map(|r| {
                let pts = r.history.iter().find(|(name, _)| name == k)?.1.clone();
                Some(Series::new(r.variant.clone(), pts))
            })
            .collect();
        if !series.is_empty() {
            panels.push((k.to_string(), series));
        }
    }
    if panels.is_empty() {
        return Ok(vec![]);
    }
    panel_plot(
        &out.join("collapse"),
        "collapse diagnostics",
        "step",
        &panels,
    )
}

/// Accuracy vs number of labelled images (log x), one line per (method, protocol):
/// OUT/label_efficiency.{png,svg}.
/// Re-draws the plot of a finished comparison from its `--json` output, next to the file.
pub fn replot_efficiency(json: &std::path::Path) -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let rows: Vec<EfficiencyRow> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not the --json output of `experiment label-efficiency`",
            json.display()
        )
    })?;
    anyhow::ensure!(!rows.is_empty(), "{}: no rows to plot", json.display());
    let dir = json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    plot_efficiency(&rows, dir)
}

pub fn plot_efficiency(rows: &[EfficiencyRow], out: &std::path::Path) -> Result<Vec<PathBuf>> {
    use crate::report::plot::{line_plot, PlotSpec, Series};
    let mut keys: Vec<(String, String)> = vec![];
    for r in rows {
        let k = (r.method.clone(), r.protocol.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let series: Vec<Series> = keys
        .iter()
        .map(|(m, p)| {
            let mut rs: Vec<&EfficiencyRow> = rows
                .iter()
                .filter(|r| &r.method == m && &r.protocol == p)
                .collect();
            rs.sort_by_key(|r| r.labels);
            Series::with_band(
                format!("{m} · {p}"),
                rs.iter()
                    .map(|r| (r.labels as f64, 100.0 * r.mean))
                    .collect(),
                rs.iter().map(|r| 100.0 * r.std).collect(),
            )
        })
        .collect();
    let spec = PlotSpec {
        title: "label efficiency".into(),
        x_label: "labelled training images".into(),
        y_label: "test accuracy (%)".into(),
        log_x: true,
        log_y: false,
    };
    line_plot(&out.join("label_efficiency"), &spec, &series)
}
