//! The shared trainer end to end on the embedded digits: checkpoint round-trip, exact resume,
//! the NaN guard, config errors, and a short SimCLR run that beats a random encoder.

use burn::prelude::*;
use selfsup::config::PretrainConfig;
use selfsup::pipeline::{self, RunOptions};
use selfsup::train::checkpoint::{collect_tensors, load_weights, save_weights};

fn tiny_cfg(seed: u64) -> PretrainConfig {
    let mut cfg = PretrainConfig::new("simclr", "digits");
    cfg.seed = seed;
    cfg.encoder = selfsup::nn::EncoderConfig {
        arch: "convnet".into(),
        widths: vec![8, 16],
        strides: vec![1, 2],
        depths: vec![],
        batchnorm: true,
    };
    cfg.simclr.proj_hidden = 16;
    cfg.simclr.proj_dim = 8;
    cfg.train.batch_size = 128;
    cfg.train.epochs = 1;
    cfg.train.warmup_epochs = 0.5;
    cfg
}

fn weights(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let w = selfsup::train::checkpoint::read_safetensors(&dir.join("model.safetensors")).unwrap();
    let mut v: Vec<_> = w.tensors.into_iter().map(|(k, (_, d, _))| (k, d)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn checkpoint_round_trip_restores_every_tensor() {
    let device = Device::flex();
    let cfg = tiny_cfg(3);
    let model = pipeline::build_simclr(&cfg, 1, &device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_weights(&model, &path).unwrap();
    let other = pipeline::build_simclr(&tiny_cfg(4), 1, &device);
    let before: Vec<_> = collect_tensors(&other)
        .into_iter()
        .map(|t| t.data)
        .collect();
    let loaded = load_weights(other, &path, false).unwrap();
    let want: Vec<_> = collect_tensors(&model)
        .into_iter()
        .map(|t| (t.name, t.data))
        .collect();
    let got: Vec<_> = collect_tensors(&loaded)
        .into_iter()
        .map(|t| (t.name, t.data))
        .collect();
    assert_eq!(want, got);
    assert_ne!(
        before,
        got.iter().map(|t| t.1.clone()).collect::<Vec<_>>(),
        "seeds 3 and 4 must differ"
    );
    // A model of another shape is refused with the tensor named.
    let mut big = tiny_cfg(3);
    big.encoder.widths = vec![8, 32];
    let err = load_weights(pipeline::build_simclr(&big, 1, &device), &path, false).unwrap_err();
    assert!(format!("{err:#}").contains("has shape"), "{err:#}");
}

#[test]
fn same_seed_same_weights_and_resume_is_exact() {
    let opts = RunOptions::default();
    let cfg = {
        let mut c = tiny_cfg(7);
        c.train.epochs = 2;
        c
    };
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    let b = root.path().join("b");
    let c = root.path().join("c");
    let ra = pipeline::pretrain(&cfg, &a, &opts).unwrap();
    pipeline::pretrain(&cfg, &b, &opts).unwrap();
    assert_eq!(
        ra.steps, 22,
        "2 epochs of 1442 images in batches of 128, drop_last"
    );
    assert_eq!(weights(&a), weights(&b), "same seed, same weights");

    // Interrupted after 9 steps, then resumed: identical to the uninterrupted run.
    let stop = RunOptions {
        stop_at_step: Some(9),
        ..RunOptions::default()
    };
    let rc = pipeline::pretrain(&cfg, &c, &stop).unwrap();
    assert!(rc.interrupted && rc.steps == 9);
    assert_ne!(weights(&a), weights(&c));
    let rc = pipeline::resume(&c, &opts).unwrap();
    assert_eq!(rc.steps, 22);
    assert_eq!(
        weights(&a),
        weights(&c),
        "resumed run must equal the uninterrupted one"
    );

    // A different seed gives different weights.
    let mut other = cfg.clone();
    other.seed = 8;
    pipeline::pretrain(&other, &root.path().join("d"), &opts).unwrap();
    assert_ne!(weights(&a), weights(&root.path().join("d")));
    // An existing run folder is not overwritten.
    let err = pipeline::pretrain(&cfg, &a, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let mut cfg = tiny_cfg(1);
    cfg.train.epochs = 3;
    cfg.train.lr = 1e38; // explodes within a few steps
    cfg.train.warmup_epochs = 0.0;
    cfg.train.optimizer = "sgd".into();
    cfg.train.checkpoint_minutes = 0.0; // a checkpoint after every good step
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let err = pipeline::pretrain(&cfg, &run, &RunOptions::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("loss is") && msg.contains("last good checkpoint"),
        "{msg}"
    );
    let state = selfsup::train::RunDir(run.clone()).read_state().unwrap();
    assert!(
        state.step >= 1 && state.last_loss.unwrap().is_finite(),
        "{state:?}"
    );
    for (name, data) in weights(&run) {
        assert!(
            data.iter().all(|v| v.is_finite()),
            "checkpointed {name} is not finite"
        );
    }
}

#[test]
fn config_errors_name_the_key() {
    let text = "method = \"simclr\"\ndata = \"digits\"\n[encoder]\narch = \"convnet\"\nwidths = [8]\nstrides = [1]\n[train]\nlearning_rate = 0.1\n";
    let err = PretrainConfig::from_toml(text, "x.toml", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("learning_rate"), "{err:#}");
    let err = PretrainConfig::new("simclr", "digits")
        .with_overrides(&[("simclr.temperature".into(), "-1".into())])
        .unwrap_err();
    assert!(format!("{err:#}").contains("temperature"), "{err:#}");
    let mut one = tiny_cfg(0);
    one.train.batch_size = 1;
    let dir = tempfile::tempdir().unwrap();
    let err = pipeline::pretrain(&one, &dir.path().join("r"), &RunOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("negatives"), "{err:#}");
}

#[test]
fn short_simclr_run_beats_the_random_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let opts = selfsup::experiment::DemoOptions {
        seed: 0,
        out: dir.path().join("demo"),
        draws: 2,
        epochs: Some(15),
        run: RunOptions::default(),
    };
    let report = selfsup::experiment::demo(&opts).unwrap();
    let acc = |f: &str, b: &str| {
        report
            .rows
            .iter()
            .find(|r| r.features == f && r.budget == b)
            .map(|r| r.linear_mean)
            .unwrap()
    };
    for b in ["10/class", "100%"] {
        let (s, r) = (acc("SimCLR encoder", b), acc("random-init encoder", b));
        assert!(
            s > r,
            "at {b}: SimCLR {s:.3} should beat random init {r:.3}"
        );
    }
}
