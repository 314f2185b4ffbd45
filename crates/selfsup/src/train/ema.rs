//! Exponential moving average of a module's weights, the target network of BYOL (Grill et al.
//! 2020, §3.1, eq. 1 and the schedule of §3.2 / appendix J):
//!
//! ```text
//! ξ ← τ·ξ + (1 − τ)·θ,        τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2
//! ```
//!
//! ξ are the target's weights, θ the online ones. The update covers every float tensor the module
//! visits: the trainable parameters **and** the BatchNorm running statistics (these are averaged
//! the same way, so the target's inference-mode statistics are as smooth as its weights; a
//! training-mode forward of the target uses batch statistics and does not depend on them).
//! Tensors are matched by their path in the module tree (`projector.fc1.weight`), never by
//! [`ParamId`], because the target carries ids of its own (sharing the online ids would make the
//! optimizer treat both as one parameter).
//!
//! The target never requires a gradient: its tensors are detached leaves (the stop-gradient of
//! BYOL's loss), which also keeps it out of the optimizer.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use std::collections::HashMap;

/// The EMA decay at step `k` of `total` (BYOL's cosine schedule): τ_0 = τ_base, rising to
/// τ_K = 1. `total = 0` is treated as a single step (τ = τ_base at k = 0).
pub fn tau_at(k: usize, total: usize, base: f64) -> f64 {
    let total = total.max(1) as f64;
    let k = (k as f64).min(total);
    1.0 - (1.0 - base) * ((std::f64::consts::PI * k / total).cos() + 1.0) / 2.0
}

/// A copy of `online` to start a target network from: the same values, fresh parameter ids and
/// no gradient.
pub fn target_copy<M: Module>(online: &M) -> M {
    struct Fresh;
    impl ModuleMapper for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (_, t, mapper) = param.consume();
            let t = t.detach().set_require_grad(false);
            Param::from_mapped_value(ParamId::new(), t, mapper).set_require_grad(false)
        }
    }
    online.clone().map(&mut Fresh)
}

/// Returns `target` with every float tensor replaced by τ·target + (1 − τ)·online, as a detached
/// tensor that requires no gradient. τ = 0 copies the online values; τ = 1 leaves the target
/// unchanged.
///
/// Panics if the two modules do not have the same tensor paths and shapes (they must be two
/// instances of one architecture).
pub fn ema_update<M: Module>(target: M, online: &M, tau: f64) -> M {
    assert!(
        (0.0..=1.0).contains(&tau),
        "EMA decay τ must be in [0, 1], got {tau}"
    );
    let mut collect = Collect::default();
    online.visit(&mut collect);
    let mut mix = Mix {
        path: vec![],
        online: collect.tensors,
        tau,
        used: 0,
    };
    let expected = mix.online.len();
    let out = target.map(&mut mix);
    assert_eq!(
        mix.used, expected,
        "EMA: the target has {} of the online network's {expected} tensors",
        mix.used
    );
    out
}

/// Online tensors by path, flattened and detached.
#[derive(Default)]
struct Collect {
    path: Vec<String>,
    tensors: HashMap<String, (Vec<usize>, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().detach();
        let shape = t.dims().to_vec();
        let n = shape.iter().product::<usize>();
        self.tensors
            .insert(self.path.join("."), (shape, t.reshape([n])));
    }
}

struct Mix {
    path: Vec<String>,
    online: HashMap<String, (Vec<usize>, Tensor<1>)>,
    tau: f64,
    used: usize,
}

impl ModuleMapper for Mix {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let (id, target, mapper) = param.consume();
        let shape = target.dims();
        let Some((online_shape, online)) = self.online.get(&name) else {
            panic!("EMA: the online network has no tensor {name}");
        };
        assert_eq!(
            online_shape.as_slice(),
            shape.as_slice(),
            "EMA: tensor {name} differs in shape between target and online"
        );
        self.used += 1;
        let online = online.clone().to_device(&target.device()).reshape(shape);
        let mixed = target
            .detach()
            .mul_scalar(self.tau)
            .add(online.mul_scalar(1.0 - self.tau))
            .set_require_grad(false);
        Param::from_mapped_value(id, mixed, mapper).set_require_grad(false)
    }
}
