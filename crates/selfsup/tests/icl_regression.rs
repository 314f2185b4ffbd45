//! In-context linear regression: the task generator and curriculum, the least-squares, 3-NN and
//! averaging baselines on hand-computed cases, and the transformer (shapes, causality, training
//! lowers the loss, resume is exact, a finished run is reused).

use burn::prelude::*;
use selfsup::icl::regression::{
    least_squares, ridge, sample_batch, sample_noisy_batch, Baseline, Curriculum, ErrorCurve,
    RegressionBatch,
};
use selfsup::icl::regression_model::{RegressionGpt, RegressionGptConfig};
use selfsup::icl::regression_run::{icl_regression, load_model, IclRegressionConfig};
use selfsup::methods::Objective;
use selfsup::nn::init::seeded;
use selfsup::pipeline::RunOptions;
use selfsup::train::{self, FitSpec, RunDir, RunState, TrainConfig};

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn generator_shapes_and_targets() {
    let b = sample_batch(7, 3, 4, 6, 5, 5).unwrap();
    assert_eq!((b.batch, b.points, b.dim, b.active), (4, 6, 5, 5));
    assert_eq!(b.xs.len(), 4 * 6 * 5);
    assert_eq!(b.ys.len(), 4 * 6);
    assert_eq!(b.ws.len(), 4 * 5);
    for s in 0..4 {
        let w = &b.ws[s * 5..(s + 1) * 5];
        for i in 0..6 {
            let x = &b.xs[(s * 6 + i) * 5..(s * 6 + i + 1) * 5];
            let y: f32 = x.iter().zip(w).map(|(a, c)| a * c).sum();
            assert!((y - b.ys[s * 6 + i]).abs() < 1e-5, "y ≠ w·x");
        }
    }
    // A fresh w per sequence; standard normal entries.
    assert_ne!(b.ws[..5], b.ws[5..10]);
    let big = sample_batch(1, 0, 200, 10, 5, 5).unwrap();
    let n = big.xs.len() as f32;
    let mean = big.xs.iter().sum::<f32>() / n;
    let var = big.xs.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "x ~ N(0, 1): mean {mean}, var {var}"
    );
    // Bad sizes are errors, not panics.
    assert!(sample_batch(0, 0, 2, 3, 5, 0).is_err());
    assert!(sample_batch(0, 0, 2, 3, 5, 6).is_err());
    assert!(sample_batch(0, 0, 0, 3, 5, 5).is_err());
}

#[test]
fn generator_is_a_pure_function_of_seed_and_index() {
    let a = sample_batch(11, 5, 3, 4, 3, 3).unwrap();
    assert_eq!(a, sample_batch(11, 5, 3, 4, 3, 3).unwrap());
    assert_ne!(a.xs, sample_batch(11, 6, 3, 4, 3, 3).unwrap().xs);
    assert_ne!(a.xs, sample_batch(12, 5, 3, 4, 3, 3).unwrap().xs);
}

#[test]
fn curriculum_pads_with_zeros_and_grows() {
    let b = sample_batch(3, 0, 8, 7, 5, 2).unwrap();
    for s in 0..8 {
        assert!(b.ws[s * 5 + 2..(s + 1) * 5].iter().all(|&v| v == 0.0));
        assert!(b.ws[s * 5..s * 5 + 2].iter().all(|&v| v != 0.0));
        for i in 0..7 {
            let x = &b.xs[(s * 7 + i) * 5..(s * 7 + i + 1) * 5];
            assert!(
                x[2..].iter().all(|&v| v == 0.0),
                "inactive coordinates are 0"
            );
            assert!(x[..2].iter().all(|&v| v != 0.0));
        }
    }
    let c = Curriculum {
        dims_start: 2,
        dims_end: 5,
        dims_inc: 1,
        points_start: 5,
        points_end: 21,
        points_inc: 2,
        interval: 10,
    };
    c.validate().unwrap();
    assert_eq!(c.at(0), (2, 5));
    assert_eq!(c.at(9), (2, 5));
    assert_eq!(c.at(10), (3, 7));
    assert_eq!(c.at(30), (5, 11));
    assert_eq!(c.at(79), (5, 19));
    assert_eq!(c.at(80), (5, 21));
    assert_eq!(c.at(10_000), (5, 21));
    assert_eq!(c.stages(), 8);
    assert!(Curriculum {
        dims_start: 6,
        ..c.clone()
    }
    .validate()
    .is_err());
    assert!(Curriculum { interval: 0, ..c }.validate().is_err());
    assert_eq!(Curriculum::fixed(3, 4).at(1000), (3, 4));
}

#[test]
fn least_squares_is_exact_for_k_at_least_d_and_min_norm_below() {
    // Hand cases: under-determined systems give the interpolant of smallest norm.
    assert!(close(
        &least_squares(&[1.0, 1.0], 1, 2, &[2.0]),
        &[1.0, 1.0],
        1e-12
    ));
    let x = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    assert!(close(
        &least_squares(&x, 2, 3, &[3.0, 4.0]),
        &[3.0, 4.0, 0.0],
        1e-12
    ));
    // Rank-deficient square system: [1 2]·w = 1 twice → w = (1, 2)/5.
    let w = least_squares(&[1.0, 2.0, 2.0, 4.0], 2, 2, &[1.0, 2.0]);
    assert!(close(&w, &[0.2, 0.4], 1e-12), "{w:?}");
    // Over-determined inconsistent: the mean of the observations.
    let w = least_squares(&[1.0, 1.0, 1.0], 3, 1, &[1.0, 2.0, 6.0]);
    assert!(close(&w, &[3.0], 1e-12), "{w:?}");
    assert!(close(&least_squares(&[], 0, 3, &[]), &[0.0; 3], 0.0));

    // Generated sequences: w is recovered exactly once k ≥ d.
    let b = sample_batch(5, 0, 20, 12, 5, 5).unwrap();
    for s in 0..b.batch {
        let (xs, ys) = b.sequence(s);
        let w: Vec<f64> = b.ws[s * 5..(s + 1) * 5].iter().map(|&v| v as f64).collect();
        for k in 5..=12 {
            let wh = least_squares(&xs[..k * 5], k, 5, &ys[..k]);
            // The data are f32, so w·x holds to f32 rounding.
            assert!(close(&wh, &w, 1e-3), "k = {k}: {wh:?} vs {w:?}");
        }
        let wh = least_squares(&xs[..3 * 5], 3, 5, &ys[..3]);
        assert!(!close(&wh, &w, 1e-2), "3 < d examples cannot determine w");
    }
    let ls = ErrorCurve::baseline(Baseline::LeastSquares, &b).unwrap();
    assert!(ls.mean[5..].iter().all(|&e| e < 1e-9), "{:?}", ls.mean);
    // Below d the minimum-norm error for w ~ N(0, I) is (d − k)/d in expectation.
    let big = sample_batch(9, 0, 3000, 5, 5, 5).unwrap();
    let ls = ErrorCurve::baseline(Baseline::LeastSquares, &big).unwrap();
    for k in 0..5 {
        let expect = (5 - k) as f64 / 5.0;
        assert!(
            (ls.mean[k] - expect).abs() < 0.1,
            "k = {k}: {} vs {expect}",
            ls.mean[k]
        );
    }
}

#[test]
fn nearest_neighbours_and_averaging_by_hand() {
    // One dimension: xs 0, 1, 2, 10 with ys 0, 10, 20, 100, then queries.
    let xs = [0.0, 1.0, 2.0, 10.0, 1.2];
    let ys = [0.0, 10.0, 20.0, 100.0, 0.0];
    let p = Baseline::NearestNeighbours(3).predict(&xs, &ys, 1);
    // k=0: 0; k=1: only x₀; k=2 at x=2: x₁ (d 1) and x₀ (d 2); k=3 at 10: x₂, x₁, x₀;
    // k=4 at 1.2: x₁ (0.2), x₂ (0.8), x₀ (1.2).
    assert!(close(&p, &[0.0, 0.0, 5.0, 10.0, 10.0], 1e-12), "{p:?}");

    // Two dimensions: ŵ = mean of yᵢxᵢ.
    let xs = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    let ys = [2.0, 4.0, 0.0];
    let p = Baseline::Averaging.predict(&xs, &ys, 2);
    // k=1: ŵ = (2, 0), x = (0, 1) → 0; k=2: ŵ = (1, 2), x = (1, 1) → 3.
    assert!(close(&p, &[0.0, 0.0, 3.0], 1e-12), "{p:?}");
    let p = Baseline::LeastSquares.predict(&xs, &ys, 2);
    // k=1: ŵ = (2, 0) → 0 at (0, 1); k=2: ŵ = (2, 4) → 6.
    assert!(close(&p, &[0.0, 0.0, 6.0], 1e-12), "{p:?}");

    let batch = RegressionBatch {
        xs: vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        ys: vec![2.0, 4.0, 1.0],
        ws: vec![0.0; 2],
        batch: 1,
        points: 3,
        dim: 2,
        active: 2,
    };
    let c = ErrorCurve::baseline(Baseline::Averaging, &batch).unwrap();
    // Squared errors 4, 16, 4, divided by 2 active dimensions.
    assert!(close(&c.mean, &[2.0, 8.0, 2.0], 1e-12), "{:?}", c.mean);
    assert!(ErrorCurve::from_predictions("x", &[0.0], &batch).is_err());
}

fn tiny(dim: usize, points: usize, seed: u64, device: &Device) -> RegressionGpt {
    seeded(device, seed, || {
        RegressionGptConfig::new(dim, points)
            .with_d_model(16)
            .with_n_layers(2)
            .with_n_heads(2)
            .init(device)
    })
}

#[test]
fn model_shapes_and_causality() {
    let device = Device::flex();
    let model = tiny(3, 6, 0, &device);
    assert_eq!((model.dim(), model.max_points()), (3, 6));
    let b = sample_batch(1, 0, 2, 6, 3, 3).unwrap();
    let (xs, ys) = model.tensors(&b);
    assert_eq!(model.forward(xs, ys).dims(), [2, 6]);
    let p = model.predict(&b).unwrap();
    // Fewer points than the context allows.
    let short = sample_batch(1, 0, 2, 4, 3, 3).unwrap();
    assert_eq!(model.predict(&short).unwrap().len(), 8);

    // Changing y₃ and everything after it leaves predictions 0..=3 unchanged (y₃ is the target
    // of position 3) and changes position 4, which reads y₃.
    let mut c = b.clone();
    for s in 0..2 {
        c.ys[s * 6 + 3] += 5.0;
        for v in &mut c.xs[(s * 6 + 4) * 3..(s + 1) * 6 * 3] {
            *v = -*v + 1.0;
        }
    }
    let q = model.predict(&c).unwrap();
    for s in 0..2 {
        let (ps, qs) = (&p[s * 6..s * 6 + 4], &q[s * 6..s * 6 + 4]);
        assert!(
            close(ps, qs, 1e-5),
            "prefix predictions changed: {ps:?} vs {qs:?}"
        );
        assert!(
            (p[s * 6 + 4] - q[s * 6 + 4]).abs() > 1e-6,
            "position 4 ignores its prefix"
        );
    }
}

#[test]
fn training_steps_lower_the_loss() {
    // In-context learning takes thousands of steps; fitting one fixed batch shows in a few that
    // the loss, its gradients and the shared trainer are wired together.
    let device = Device::flex().autodiff();
    let model = tiny(2, 5, 3, &device);
    let batch = sample_batch(99, 0, 4, 5, 2, 2).unwrap();
    let before = model.loss(batch.clone()).into_scalar::<f32>();
    let steps = 60;
    let cfg = TrainConfig {
        lr: 1e-2,
        weight_decay: 0.0,
        warmup_epochs: 0.0,
        batch_size: 4,
        steps: Some(steps),
        ..Default::default()
    };
    let spec = FitSpec {
        cfg: &cfg,
        run: None,
        samples_per_step: 4,
        progress: false,
        label: "test",
        stop_at: steps,
    };
    let state = RunState {
        total_steps: steps,
        steps_per_epoch: steps,
        ..Default::default()
    };
    let opt = train::optim::build_optimizer("adamw", 0.0, 0.9).unwrap();
    let batches = std::iter::repeat_n(batch.clone(), steps);
    let (model, _, _) = train::fit(model, opt, state, &spec, batches, None).unwrap();
    let after = model.loss(batch).into_scalar::<f32>();
    assert!(after < 0.5 * before, "loss {before} → {after}");
}

fn small_config(steps: usize) -> IclRegressionConfig {
    let mut cfg = IclRegressionConfig::new(2, 4);
    cfg.d_model = 16;
    cfg.n_layers = 1;
    cfg.n_heads = 2;
    cfg.eval_sequences = 64;
    cfg.train.batch_size = 16;
    cfg.train.steps = Some(steps);
    cfg.train.eval_every = 5;
    cfg
}

#[test]
fn resume_is_exact_and_a_finished_run_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(12);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let opts = RunOptions::default();
    let full = icl_regression(&cfg, &a, &opts).unwrap();
    assert_eq!(full.steps, 12);
    assert_eq!(full.curves.len(), 4);
    assert_eq!(full.curves[0].mean.len(), 5);
    let part = RunOptions {
        stop_at_step: Some(5),
        ..RunOptions::default()
    };
    assert_eq!(icl_regression(&cfg, &b, &part).unwrap().steps, 5);
    let resumed = icl_regression(&cfg, &b, &opts).unwrap();
    assert_eq!(resumed.steps, 12);
    assert!(!resumed.reused);
    let device = Device::flex();
    let wa = load_model(&cfg, &RunDir(a.clone()), &device).unwrap();
    let wb = load_model(&cfg, &RunDir(b.clone()), &device).unwrap();
    let probe = sample_batch(4, 0, 8, 5, 2, 2).unwrap();
    assert_eq!(wa.predict(&probe).unwrap(), wb.predict(&probe).unwrap());
    // Same seed, same numbers.
    assert_eq!(full.curves, resumed.curves);

    let again = icl_regression(&cfg, &a, &opts).unwrap();
    assert!(again.reused);
    assert_eq!(again.curves, full.curves);
    // The evaluation size may change; the task and the model may not.
    let mut fewer = cfg.clone();
    fewer.eval_sequences = 32;
    assert!(icl_regression(&fewer, &a, &opts).unwrap().reused);
    let mut other = cfg.clone();
    other.dim = 3;
    let err = icl_regression(&other, &a, &opts).unwrap_err().to_string();
    assert!(
        err.contains("dim") && err.contains("another --out"),
        "{err}"
    );
}

#[test]
fn noisy_batches_add_gaussian_noise_to_y_only() {
    // σ = 0 is exactly the noiseless stream.
    assert_eq!(
        sample_noisy_batch(5, 2, 4, 6, 3, 3, 0.0).unwrap(),
        sample_batch(5, 2, 4, 6, 3, 3).unwrap()
    );
    let b = sample_noisy_batch(5, 2, 400, 10, 3, 3, 0.5).unwrap();
    let mut resid = vec![];
    for s in 0..b.batch {
        let w = &b.ws[s * 3..s * 3 + 3];
        for i in 0..b.points {
            let x = &b.xs[(s * b.points + i) * 3..(s * b.points + i + 1) * 3];
            let clean: f32 = x.iter().zip(w).map(|(a, c)| a * c).sum();
            resid.push((b.ys[s * b.points + i] - clean) as f64);
        }
    }
    let n = resid.len() as f64;
    let mean = resid.iter().sum::<f64>() / n;
    let std = (resid.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(mean.abs() < 0.03, "noise mean {mean}");
    assert!((std - 0.5).abs() < 0.02, "noise std {std}");
    assert!(sample_noisy_batch(5, 2, 4, 6, 3, 3, -1.0).is_err());
    assert!(sample_noisy_batch(5, 2, 4, 6, 3, 3, f32::NAN).is_err());
}

#[test]
fn ridge_solves_the_regularized_normal_equations() {
    // X = [[1, 0], [1, 1], [0, 2]], y = [1, 2, 2], λ = 0.5:
    // XᵀX + λI = [[2.5, 1], [1, 5.5]], Xᵀy = [3, 6] → ŵ = [10.5, 12] / 12.75.
    let x = [1.0, 0.0, 1.0, 1.0, 0.0, 2.0];
    let y = [1.0, 2.0, 2.0];
    let w = ridge(&x, 3, 2, &y, 0.5);
    assert!(close(&w, &[10.5 / 12.75, 12.0 / 12.75], 1e-12), "{w:?}");
    // λ = 0 is least squares; a huge λ shrinks ŵ to 0.
    assert!(close(
        &ridge(&x, 3, 2, &y, 0.0),
        &least_squares(&x, 3, 2, &y),
        1e-12
    ));
    assert!(ridge(&x, 3, 2, &y, 1e9).iter().all(|v| v.abs() < 1e-8));
    // Fewer rows than columns: still finite and shrunk below the min-norm interpolant.
    let w1 = ridge(&[1.0, 1.0], 1, 2, &[2.0], 1.0);
    assert!(close(&w1, &[2.0 / 3.0, 2.0 / 3.0], 1e-12), "{w1:?}");
}

#[test]
fn on_a_noisy_task_ridge_beats_least_squares_near_k_equal_d() {
    let b = sample_noisy_batch(9, 0, 400, 12, 4, 4, 1.0).unwrap();
    let ls = ErrorCurve::baseline(Baseline::LeastSquares, &b).unwrap();
    let rg = ErrorCurve::baseline(Baseline::Ridge(1.0), &b).unwrap();
    assert_eq!(rg.name, "ridge");
    // At k = d least squares interpolates the noise; the Bayes-optimal ridge does not.
    assert!(
        rg.mean[4] < 0.5 * ls.mean[4],
        "{} vs {}",
        rg.mean[4],
        ls.mean[4]
    );
    // Neither beats the noise floor σ²/d = 0.25 by much at k = 11.
    assert!(rg.mean[11] > 0.2 && rg.mean[11] <= ls.mean[11] * 1.05);
}

#[test]
fn a_noisy_run_reports_ridge_and_finite_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(4);
    cfg.noise = 0.5;
    let r = icl_regression(&cfg, dir.path(), &RunOptions::default()).unwrap();
    assert_eq!(r.curves.len(), 5);
    assert_eq!(r.curves[4].name, "ridge");
    let row = &r.summary[0];
    assert!(row.ridge.is_some() && row.ratio.is_some(), "{row:?}");
    let table = selfsup::icl::regression_run::format_table(&r);
    assert!(
        table.contains("noise σ = 0.5") && table.contains("ridge"),
        "{table}"
    );
    let mut bad = small_config(4);
    bad.noise = -0.1;
    let err = icl_regression(&bad, &dir.path().join("x"), &RunOptions::default()).unwrap_err();
    assert!(err.to_string().contains("noise"), "{err}");
}
