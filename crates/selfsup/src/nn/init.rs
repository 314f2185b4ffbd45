//! Seeded parameter initialization that does not depend on burn's global RNG, so the same seed
//! gives the same model even when other threads draw random numbers (parallel tests, loaders).
//!
//! The scheme is burn's and PyTorch's default for conv and linear layers: weights and biases
//! uniform in ±1/√fan_in. Norm-layer parameters (rank-1 `weight` with its `bias`) and running
//! statistics keep their constant initial values.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Reinit {
    rng: ChaCha8Rng,
    path: Vec<String>,
    /// fan-in of the last conv/linear weight visited, for the bias that follows it.
    last_fan_in: Option<usize>,
}

impl ModuleMapper for Reinit {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        let (id, old, mapper) = param.consume();
        let dims = old.dims();
        let fan_in = match (leaf, D) {
            // conv [out, in, kh, kw]
            ("weight", 4) => Some(dims[1] * dims[2] * dims[3]),
            // burn linear [in, out]
            ("weight", 2) => Some(dims[0]),
            ("bias", 1) => self.last_fan_in,
            _ => None,
        };
        self.last_fan_in = if D >= 2 { fan_in } else { None };
        let Some(fan_in) = fan_in else {
            return Param::from_mapped_value(id, old, mapper);
        };
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| self.rng.gen_range(-bound..bound)).collect();
        let mut t = Tensor::<D>::from_data(TensorData::new(values, dims.to_vec()), &old.device());
        if old.is_require_grad() {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Re-draws every conv/linear weight and bias of `module` from a ChaCha RNG seeded with `seed`.
pub fn init_seeded<M: Module>(module: M, seed: u64) -> M {
    let mut m = Reinit {
        rng: ChaCha8Rng::seed_from_u64(seed),
        path: vec![],
        last_fan_in: None,
    };
    module.map(&mut m)
}

/// Builds a module whose initializers draw from burn's device RNG, deterministically: the RNG is
/// seeded and every parameter materialized under a process-wide lock, so concurrent builds (tests,
/// experiments) cannot interleave their draws.
pub fn seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce() -> M) -> M {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let module = build();
    // Parameters may be initialized lazily; touching each one draws its values now.
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}
