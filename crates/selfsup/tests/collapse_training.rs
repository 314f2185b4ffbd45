//! A short run on the embedded digits: SimCLR with positive pairs only (no negatives) collapses,
//! so its diagnostics fall, while SimCLR proper keeps its embeddings spread. The diagnostics are
//! computed on a fixed held-out batch, as the trainer does every epoch. BYOL, with its predictor
//! and EMA target, stays clear of the alarm too.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use selfsup::data::augment::AugmentConfig;
use selfsup::data::loader::ViewLoader;
use selfsup::eval::collapse::CollapseReport;
use selfsup::methods::byol::{Byol, ByolConfig};
use selfsup::methods::simclr::{SimClr, SimClrConfig};
use selfsup::methods::ImageMethod;
use selfsup::nn::init::init_seeded;
use selfsup::nn::EncoderConfig;
use std::sync::Arc;

const STEPS: usize = 40;
const EVERY: usize = 10;
/// BatchNorm's running statistics move 10% per pass: 60 passes leave 0.9⁶⁰ ≈ 0.2% of their
/// initial values.
const WARMUP_PASSES: usize = 60;

/// Diagnostics of the projections g(f(x)) of the held-out images, in inference mode (BatchNorm
/// running statistics; the images live on the plain device, not the autodiff one).
fn diagnostics<M: Module>(
    model: &M,
    project: &impl Fn(&M, Tensor<4>) -> Tensor<2>,
    held_out: &Tensor<4>,
    other_view: &Tensor<4>,
) -> CollapseReport {
    let m = model.valid();
    let embed = |x: &Tensor<4>| {
        let z = project(&m, x.clone());
        let [_, d] = z.dims();
        (
            z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
            d,
        )
    };
    let (h, d) = embed(held_out);
    let (h2, _) = embed(other_view);
    CollapseReport::compute(&h, d, Some((&h, &h2)))
}

fn tiny_encoder() -> EncoderConfig {
    EncoderConfig {
        arch: "convnet".into(),
        widths: vec![16, 32],
        strides: vec![1, 2],
        depths: vec![],
        batchnorm: true,
    }
}

/// Trains `model` for [`STEPS`] steps and returns the diagnostics before training and every
/// [`EVERY`] steps. Before training, forward passes without optimizer steps first estimate
/// BatchNorm's running statistics (inference mode uses them; their initial 0/1 would make any
/// untrained network look collapsed).
fn run<M: ImageMethod>(
    label: &str,
    mut model: M,
    project: impl Fn(&M, Tensor<4>) -> Tensor<2>,
    device: &Device,
) -> Vec<CollapseReport> {
    let splits = selfsup::data::load("digits", &Default::default()).unwrap();
    let aug = AugmentConfig {
        crop_scale: (0.5, 1.0),
        ..AugmentConfig::simclr()
    };
    let loader = ViewLoader::new(
        Arc::new(splits.train),
        vec![aug.clone(), aug],
        128,
        (8, 8),
        3,
        true,
    )
    .unwrap();
    // The held-out batch: 256 test images, and an augmented view of each (for alignment).
    let test = splits.test.unwrap();
    let held = ViewLoader::new(
        Arc::new(test.subset(&(0..256).collect::<Vec<_>>())),
        vec![AugmentConfig::none(), AugmentConfig::simclr()],
        256,
        (8, 8),
        5,
        false,
    )
    .unwrap()
    .batch(0);
    let plain = device.clone().inner();
    let held_tensor =
        |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [held.n, 1, 8, 8]), &plain);
    let held_x = held_tensor(held.views[0].clone());
    let held_y = held_tensor(held.views[1].clone());
    let batch = |step: usize| {
        let vb = loader.batch(step);
        let n = vb.n;
        vb.views
            .into_iter()
            .map(|v| Tensor::<4>::from_data(TensorData::new(v, [n, 1, 8, 8]), device))
            .collect::<Vec<_>>()
    };
    for step in 0..WARMUP_PASSES {
        let _ = model.loss(batch(step));
    }
    let mut reports = vec![diagnostics(&model, &project, &held_x, &held_y)];
    eprintln!("{label}, before: {:?}", reports[0]);
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
    for step in 0..STEPS {
        let loss = model.loss(batch(step));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(3e-3, model, grads);
        model = model.after_step(step + 1, STEPS);
        if (step + 1) % EVERY == 0 {
            let r = diagnostics(&model, &project, &held_x, &held_y);
            eprintln!("{label}, step {}: {r:?}", step + 1);
            reports.push(r);
        }
    }
    reports
}

fn simclr(positives_only: bool) -> Vec<CollapseReport> {
    let device = Device::flex().autodiff();
    let cfg = SimClrConfig {
        temperature: 0.5,
        proj_hidden: 64,
        proj_dim: 32,
        positives_only,
    };
    let model = init_seeded(SimClr::new(&tiny_encoder(), &cfg, 1, &device), 11);
    let label = if positives_only {
        "positives-only"
    } else {
        "SimCLR"
    };
    run(
        label,
        model,
        |m: &SimClr, x| m.projector.forward(m.encoder.forward(x)),
        &device,
    )
}

// Needs the positives-only fix in `methods/simclr.rs`: as written there, only the positive is
// left in the softmax, so log_softmax ≡ 0 and the loss has no gradient. With the numerator
// alone, l(i) = −sim(z_i, z_pos(i))/τ, this run collapses (std ≈ 0.05 after 40 steps).
#[test]
fn positives_only_collapses() {
    let r = simclr(true);
    let (first, last) = (&r[0], &r[r.len() - 1]);
    assert!(
        last.std < 0.5 * first.std,
        "positives-only: std {} → {} should fall",
        first.std,
        last.std
    );
    assert!(
        last.is_collapsed(),
        "positives-only should trip the alarm: {last:?}"
    );
    assert!(last.effective_rank < first.effective_rank);
    assert!(last.alignment < first.alignment);
}

#[test]
fn simclr_does_not_collapse() {
    let r = simclr(false);
    let (first, last) = (&r[0], &r[r.len() - 1]);
    assert!(
        last.std > 0.8 * first.std && r.iter().all(|d| !d.is_collapsed()),
        "SimCLR: std {} → {} should hold",
        first.std,
        last.std
    );
}

#[test]
fn byol_does_not_collapse() {
    let device = Device::flex().autodiff();
    let cfg = ByolConfig {
        proj_hidden: 64,
        proj_dim: 32,
        pred_hidden: 64,
        ..Default::default()
    };
    let model = Byol::new_seeded(&tiny_encoder(), &cfg, 1, 11, &device);
    let r = run(
        "BYOL",
        model,
        |m: &Byol, x| m.projector.forward(m.encoder.forward(x)),
        &device,
    );
    assert!(r.iter().all(|d| !d.is_collapsed()), "BYOL collapsed: {r:?}");
}
