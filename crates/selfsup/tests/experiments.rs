//! Experiments end to end on the embedded digits (tiny budgets): label efficiency with every
//! protocol, stop-on-collapse, and method mismatches.

use selfsup::config::PretrainConfig;
use selfsup::eval::finetune::FinetuneConfig;
use selfsup::experiment::{self, EfficiencyOptions};
use selfsup::nn::EncoderConfig;
use selfsup::pipeline::{self, RunOptions};

fn tiny() -> EncoderConfig {
    EncoderConfig {
        arch: "convnet".into(),
        widths: vec![8, 16],
        strides: vec![1, 2],
        depths: vec![],
        batchnorm: true,
    }
}

#[test]
fn label_efficiency_compares_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let o = EfficiencyOptions {
        data: "digits".into(),
        methods: vec!["simclr".into()],
        budgets: vec!["2/class".parse().unwrap(), "100%".parse().unwrap()],
        draws: 1,
        seed: 0,
        encoder: tiny(),
        epochs: 2,
        minutes: None,
        batch_size: 128,
        finetune: FinetuneConfig {
            // 100 steps: enough for the 100% from-scratch run to learn (30 steps reach 24.5%,
            // 100 reach 70%, 300 reach 85% on digits: it is a budget, not a bug).
            steps: 100,
            ..Default::default()
        },
        // The frozen protocols read the 2×2-pooled 4×4 map of the 16-channel encoder.
        pool_grid: 2,
        out: dir.path().to_path_buf(),
        run: RunOptions::default(),
    };
    let rows = experiment::label_efficiency_experiment(&o).unwrap();
    for (m, p) in [
        ("raw pixels", "logistic regression"),
        ("random-init", "linear probe"),
        ("random-init", "kNN"),
        ("simclr", "linear probe"),
        ("simclr", "kNN"),
        ("simclr", "fine-tune"),
        ("from scratch", "supervised"),
    ] {
        for b in ["2/class", "100%"] {
            let r = rows
                .iter()
                .find(|r| r.method == m && r.protocol == p && r.budget == b);
            let r = r.unwrap_or_else(|| panic!("missing {m} {p} {b}"));
            // With all labels every protocol learns; with 2 per class, the frozen SSL features
            // are well above chance (10 classes) while 100 steps from scratch or of fine-tuning
            // need not be.
            let floor = match (b, p) {
                ("100%", _) => 0.5,
                (_, "supervised" | "fine-tune") => 0.0,
                _ => 0.2,
            };
            assert!(r.mean >= floor && r.mean <= 1.0, "{m} {p} {b}: {}", r.mean);
        }
    }
    let n = rows.iter().find(|r| r.budget == "2/class").unwrap().labels;
    assert_eq!(n, 20);
    // Reuses the finished run the second time.
    let again = experiment::label_efficiency_experiment(&o).unwrap();
    assert_eq!(again.len(), rows.len());
    // `selfsup plot results.json` re-draws the plot from the JSON rows.
    let json = dir.path().join("results.json");
    std::fs::write(&json, serde_json::to_string(&rows).unwrap()).unwrap();
    std::fs::remove_file(dir.path().join("label_efficiency.png")).ok();
    let plots = experiment::replot_efficiency(&json).unwrap();
    assert!(plots.iter().all(|p| p.exists()) && dir.path().join("label_efficiency.png").exists());
    std::fs::write(&json, "[{\"method\": 1}]").unwrap();
    let err = format!("{:#}", experiment::replot_efficiency(&json).unwrap_err());
    assert!(
        err.contains("results.json") && err.contains("label-efficiency"),
        "{err}"
    );
    let table = experiment::format_efficiency(&rows);
    assert!(
        table.contains("fine-tune") && table.contains("2/class (20)"),
        "{table}"
    );
}

#[test]
fn stop_on_collapse_ends_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PretrainConfig::new("simclr", "digits");
    cfg.encoder = tiny();
    cfg.simclr.positives_only = true;
    cfg.stop_on_collapse = true;
    cfg.train.batch_size = 128;
    cfg.train.epochs = 30;
    cfg.train.lr = 3e-3;
    let run = dir.path().join("pos");
    let err = pipeline::pretrain(&cfg, &run, &RunOptions::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("collapsed") && msg.contains("checkpoint saved"),
        "{msg}"
    );
    let state = selfsup::train::RunDir(run.clone()).read_state().unwrap();
    assert!(!state.finished && state.step < 30 * 11, "{state:?}");
    assert!(state.last_eval["collapse_std"] < 0.1 || state.last_eval["effective_rank"] < 1.5);
}

#[test]
fn vae_tools_refuse_other_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PretrainConfig::new("byol", "digits");
    cfg.encoder = tiny();
    cfg.train.batch_size = 128;
    cfg.train.epochs = 1;
    let run = dir.path().join("byol");
    pipeline::pretrain(&cfg, &run, &RunOptions::default()).unwrap();
    let err = pipeline::load_vae(&run, &selfsup::Device::flex())
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("not a VAE run"), "{err:#}");
    // The BYOL encoder still evaluates like any other.
    let loaded = pipeline::load_run(&run, &selfsup::Device::flex()).unwrap();
    assert_eq!(loaded.cfg.method, "byol");
}
