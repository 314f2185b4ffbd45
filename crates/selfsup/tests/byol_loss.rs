//! BYOL against the byol_loss fixture (loss and gradient of L and L_sym, the cosine τ schedule,
//! the EMA update), and the BYOL model's target network: no gradient, own parameter ids, the
//! EMA after each step and the ablations.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use selfsup::methods::byol::{byol_loss, byol_loss_sym, Byol, ByolConfig};
use selfsup::methods::Objective;
use selfsup::nn::EncoderConfig;
use selfsup::train::checkpoint::collect_tensors;
use selfsup::train::ema::{ema_update, target_copy, tau_at};
mod common;
use common::{get, vec};

fn assert_loss(name: &str, got: Tensor<1>, want: f64) {
    let v = got.into_scalar::<f32>() as f64;
    eprintln!("{name}: {v} vs {want} (diff {:.3e})", (v - want).abs());
    assert!(
        (v - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{name}: got {v}, want {want}"
    );
}

#[test]
fn loss_and_gradient_match_pytorch() {
    let meta = common::json("byol_loss.json");
    let st = common::tensors("byol_loss.safetensors");
    let device = Device::flex().autodiff();
    let p: Tensor<2> = get(&st, "p", &device).require_grad();
    // z requires grad too, to check that the loss stops its gradient.
    let z: Tensor<2> = get(&st, "z", &device).require_grad();
    let loss = byol_loss(p.clone(), z.clone());
    assert_loss("L", loss.clone(), meta["loss"].as_f64().unwrap());
    let grads = loss.backward();
    close4(
        "grad_p",
        &vec(p.grad(&grads).unwrap()),
        &st.tensors["grad_p"].1,
        1e-5,
    );
    assert!(
        z.grad(&grads).is_none(),
        "the target projection must get no gradient"
    );
}

#[test]
fn symmetric_loss_is_the_sum_of_both_directions() {
    let meta = common::json("byol_loss.json");
    let st = common::tensors("byol_loss.safetensors");
    let device = Device::flex().autodiff();
    let [p1, p2]: [Tensor<2>; 2] = ["p1", "p2"].map(|n| get(&st, n, &device).require_grad());
    let [z1, z2]: [Tensor<2>; 2] = ["z1", "z2"].map(|n| get(&st, n, &device));
    let parts = &meta["loss_sym_parts"];
    assert_loss(
        "L(p1,z2)",
        byol_loss(p1.clone(), z2.clone()),
        parts["L(p1,z2)"].as_f64().unwrap(),
    );
    assert_loss(
        "L(p2,z1)",
        byol_loss(p2.clone(), z1.clone()),
        parts["L(p2,z1)"].as_f64().unwrap(),
    );
    let loss = byol_loss_sym(p1.clone(), p2.clone(), z1, z2);
    assert_loss("L_sym", loss.clone(), meta["loss_sym"].as_f64().unwrap());
    let grads = loss.backward();
    close4(
        "grad_p1_sym",
        &vec(p1.grad(&grads).unwrap()),
        &st.tensors["grad_p1_sym"].1,
        1e-5,
    );
    close4(
        "grad_p2_sym",
        &vec(p2.grad(&grads).unwrap()),
        &st.tensors["grad_p2_sym"].1,
        1e-5,
    );
}

#[test]
fn tau_schedule_matches_the_fixture() {
    let meta = common::json("byol_loss.json");
    let base = meta["tau_base"].as_f64().unwrap();
    let total = meta["K"].as_u64().unwrap() as usize;
    let want = meta["tau_schedule"].as_array().unwrap();
    assert_eq!(want.len(), total + 1);
    for (k, w) in want.iter().enumerate() {
        let w = w.as_f64().unwrap();
        let got = tau_at(k, total, base);
        assert!((got - w).abs() < 1e-12, "tau_{k}: got {got}, want {w}");
    }
    // The f32 copy in the safetensors file agrees too.
    let st = common::tensors("byol_loss.safetensors");
    let f32s: Vec<f32> = (0..=total).map(|k| tau_at(k, total, base) as f32).collect();
    close4(
        "tau_schedule (f32)",
        &f32s,
        &st.tensors["tau_schedule"].1,
        1e-7,
    );
    assert_eq!(tau_at(0, total, base), base);
    assert_eq!(tau_at(total, total, base), 1.0);
}

/// A module holding one [4, 5] tensor, for the EMA example.
#[derive(Module, Debug)]
struct Holder {
    w: Param<Tensor<2>>,
}

fn holder(rows: &serde_json::Value, device: &Device) -> Holder {
    let rows = rows.as_array().unwrap();
    let cols = rows[0].as_array().unwrap().len();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let t = Tensor::<2>::from_data(TensorData::new(data, [rows.len(), cols]), device);
    Holder {
        w: Param::from_tensor(t.require_grad()),
    }
}

#[test]
fn ema_update_matches_the_fixture_example() {
    let meta = common::json("byol_loss.json");
    let ex = &meta["ema_example"];
    let device = Device::flex().autodiff();
    let online = holder(&ex["online"], &device);
    let target = target_copy(&holder(&ex["target"], &device));
    let tau = ex["tau"].as_f64().unwrap();
    let k = ex["k"].as_u64().unwrap() as usize;
    let total = meta["K"].as_u64().unwrap() as usize;
    assert!((tau_at(k, total, meta["tau_base"].as_f64().unwrap()) - tau).abs() < 1e-12);
    let new = ema_update(target, &online, tau);
    assert!(
        !new.w.val().is_require_grad(),
        "the target must not require grad"
    );
    let st = common::tensors("byol_loss.safetensors");
    close4(
        "ema_target_new",
        &vec(new.w.val()),
        &st.tensors["ema_target_new"].1,
        1e-6,
    );
    // The safetensors inputs are the JSON values.
    close4(
        "ema_online",
        &vec(online.w.val()),
        &st.tensors["ema_online"].1,
        0.0,
    );
}

/// Ids of a module's trainable parameters (BatchNorm running statistics keep an id of their
/// own that no optimizer or gradient uses).
fn ids<M: Module>(m: &M) -> Vec<u64> {
    struct Ids(Vec<u64>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if p.val().is_require_grad() {
                self.0.push(p.id.val());
            }
        }
    }
    let mut v = Ids(vec![]);
    m.visit(&mut v);
    v.0
}

fn tiny_encoder() -> EncoderConfig {
    EncoderConfig {
        arch: "convnet".into(),
        widths: vec![4, 8],
        strides: vec![1, 2],
        depths: vec![],
        batchnorm: true,
    }
}

fn small_cfg() -> ByolConfig {
    ByolConfig {
        proj_hidden: 16,
        proj_dim: 8,
        pred_hidden: 16,
        ..Default::default()
    }
}

fn views(device: &Device, seed: u64) -> Vec<Tensor<4>> {
    device.seed(seed);
    (0..2)
        .map(|_| {
            Tensor::<4>::random(
                [6, 1, 8, 8],
                burn::tensor::Distribution::Uniform(0.0, 1.0),
                device,
            )
        })
        .collect()
}

#[test]
fn target_network_is_a_detached_copy_with_its_own_ids() {
    let device = Device::flex().autodiff();
    device.seed(1);
    let model = Byol::new(&tiny_encoder(), &small_cfg(), 1, &device);
    let target = model.target.as_ref().expect("ema on by default");
    // Same values as the online network at the start, different parameter ids.
    let online_t = collect_tensors(&model.encoder);
    let target_t = collect_tensors(&target.encoder);
    assert_eq!(online_t.len(), target_t.len());
    for (a, b) in online_t.iter().zip(&target_t) {
        assert_eq!((a.name.as_str(), &a.data), (b.name.as_str(), &b.data));
    }
    let online_ids = ids(&model.encoder);
    assert!(!online_ids.is_empty());
    assert!(
        ids(&target.encoder).is_empty(),
        "no target tensor may require grad"
    );
    struct AllIds(Vec<u64>);
    impl ModuleVisitor for AllIds {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.id.val());
        }
    }
    let mut all = AllIds(vec![]);
    target.visit(&mut all);
    assert!(
        all.0.iter().all(|i| !online_ids.contains(i)),
        "the target shares a parameter id with the online network"
    );

    // A backward pass reaches the online parameters and none of the target's.
    let loss = model.loss(views(&device, 2));
    let gp = GradientsParams::from_grads(loss.backward(), &model);
    assert!(with_grad(&model.encoder, &gp) > 0);
    assert!(with_grad(&model.projector, &gp) > 0);
    assert!(with_grad(model.predictor.as_ref().unwrap(), &gp) > 0);
    assert_eq!(with_grad(model.target.as_ref().unwrap(), &gp), 0);
}

/// How many of a module's tensors have a gradient in `gp`.
fn with_grad<M: Module>(m: &M, gp: &GradientsParams) -> usize {
    struct Count<'a>(&'a GradientsParams, usize);
    impl ModuleVisitor for Count<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.1 += self.0.get::<D>(p.id).is_some() as usize;
        }
    }
    let mut c = Count(gp, 0);
    m.visit(&mut c);
    c.1
}

#[test]
fn after_step_moves_the_target_by_the_scheduled_tau() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut model = Byol::new(&tiny_encoder(), &small_cfg(), 1, &device);
    // Make online and target differ: one AdamW step on the online network.
    let loss = model.loss(views(&device, 4));
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut opt = AdamWConfig::new().init();
    model = opt.step(0.1, model, grads);
    let before = collect_tensors(&model.target.as_ref().unwrap().projector);
    let online = collect_tensors(&model.projector);
    let (step, total) = (3, 10);
    let tau = tau_at(step, total, 0.99);
    let model = model.after_step(step, total);
    let after = collect_tensors(&model.target.as_ref().unwrap().projector);
    let mut moved = 0;
    for ((b, o), a) in before.iter().zip(&online).zip(&after) {
        assert_eq!(b.name, a.name);
        for ((&bv, &ov), &av) in b.data.iter().zip(&o.data).zip(&a.data) {
            let want = tau * bv as f64 + (1.0 - tau) * ov as f64;
            assert!(
                (av as f64 - want).abs() < 1e-6,
                "{}: {av} vs {want}",
                a.name
            );
            moved += (bv != ov) as usize;
        }
    }
    assert!(
        moved > 0,
        "the optimizer step should have changed the online network"
    );
    // The target still takes no gradient after the update.
    let t = model.target.as_ref().unwrap();
    assert!(!collect_tensors(t).is_empty());
    assert!(!t.projector.fc2.weight.val().is_require_grad());
}

#[test]
fn ablations_build_and_train() {
    let device = Device::flex().autodiff();
    let enc = tiny_encoder();
    // No predictor: q is the identity; no EMA: the target is the online network, detached.
    for (predictor, ema) in [(false, true), (true, false), (false, false)] {
        let cfg = ByolConfig {
            predictor,
            ema,
            ..small_cfg()
        };
        cfg.validate().unwrap();
        device.seed(5);
        let model = Byol::new(&enc, &cfg, 1, &device);
        assert_eq!(model.predictor.is_some(), predictor);
        assert_eq!(model.target.is_some(), ema);
        let loss = model.loss(views(&device, 6));
        let v = loss.clone().into_scalar::<f32>();
        assert!(v.is_finite() && (0.0..=8.0).contains(&v), "loss {v}");
        let _ = loss.backward();
        let _ = model.after_step(1, 10);
    }
}

#[test]
fn config_rejects_bad_values() {
    for tau in [-0.1, 1.5, f64::NAN] {
        let cfg = ByolConfig {
            tau_base: tau,
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("tau_base"), "{err}");
    }
    assert!(ByolConfig {
        proj_dim: 0,
        ..Default::default()
    }
    .validate()
    .is_err());
    let parsed: Result<ByolConfig, _> = toml::from_str("tau_base = 0.9\nbogus = 1\n");
    assert!(parsed.is_err(), "unknown keys are rejected");
    let parsed: ByolConfig = toml::from_str("tau_base = 0.996\npredictor = false\n").unwrap();
    assert_eq!(parsed.tau_base, 0.996);
    assert!(!parsed.predictor && parsed.ema);
}

#[test]
fn target_survives_a_checkpoint_round_trip() {
    use selfsup::train::checkpoint::{load_weights, save_weights};
    let device = Device::flex().autodiff();
    device.seed(8);
    let model = Byol::new(&tiny_encoder(), &small_cfg(), 1, &device).after_step(1, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_weights(&model, &path).unwrap();
    device.seed(9);
    let fresh = Byol::new(&tiny_encoder(), &small_cfg(), 1, &device);
    let loaded = load_weights(fresh, &path, true).unwrap();
    let (a, b) = (collect_tensors(&model), collect_tensors(&loaded));
    assert!(a.iter().any(|t| t.name.starts_with("target.encoder.")));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.name, &x.data), (&y.name, &y.data));
        // Parameters keep their ids (the optimizer state refers to them); running statistics
        // are buffers whose ids nothing uses.
        if !x.name.contains(".running_") {
            assert_eq!(x.id, y.id, "{}", x.name);
        }
    }
    let t = loaded.target.as_ref().unwrap();
    assert!(
        ids(t).is_empty(),
        "a loaded target must still take no gradient"
    );
    assert!(!ids(&loaded.encoder).is_empty());
}

#[test]
fn seeded_construction_is_reproducible_and_starts_target_equal_to_online() {
    let device = Device::flex().autodiff();
    let a = Byol::new_seeded(&tiny_encoder(), &small_cfg(), 1, 21, &device);
    let b = Byol::new_seeded(&tiny_encoder(), &small_cfg(), 1, 21, &device);
    let (ta, tb) = (collect_tensors(&a), collect_tensors(&b));
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!((&x.name, &x.data), (&y.name, &y.data));
    }
    let target = a.target.as_ref().unwrap();
    for (o, t) in collect_tensors(&a.projector)
        .iter()
        .zip(&collect_tensors(&target.projector))
    {
        assert_eq!((&o.name, &o.data), (&t.name, &t.data));
    }
    assert!(ids(target).is_empty());
}

fn close4(name: &str, got: &[f32], want: &[f32], atol: f32) {
    common::assert_close(name, got, want, atol, 0.0);
}
