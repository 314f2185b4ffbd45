//! Optimizers for the shared trainer: AdamW (burn's, with a fused CPU step), SGD from burn, and LARS (You et al. 2017,
//! "Large Batch Training of Convolutional Networks") as used by SimCLR and BYOL.

use anyhow::{bail, Result};
use burn::optim::{
    decay::WeightDecayConfig, momentum::MomentumConfig, AdamW, AdamWConfig, AdamWState,
    AdaptiveMomentumState, ModuleOptimizer, Optimizer, RecordState, SgdConfig, StateSink,
    StateSource,
};
use burn::prelude::*;

/// LARS with momentum. Parameters of rank 1 — biases and BatchNorm weights — are excluded from
/// weight decay and from the trust-ratio adaptation, as in SimCLR's and BYOL's recipes.
///
/// For a weight w with gradient g: u = g + λw; r = η‖w‖ / ‖u‖ (1 if either norm is 0);
/// v ← m·v + r·u; w ← w − lr·v.
#[derive(Clone, Debug)]
pub struct Lars {
    pub momentum: f64,
    pub weight_decay: f64,
    pub eta: f64,
}

/// LARS per-parameter state: the momentum buffer.
#[derive(Clone)]
pub struct LarsState<const D: usize> {
    pub velocity: Tensor<D>,
}

impl<const D: usize> RecordState for LarsState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "velocity", self.velocity.clone().into_data());
    }
    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let data = src.take_tensor(prefix, "velocity")?;
        Some(Self {
            velocity: Tensor::from_data(data, device),
        })
    }
}

impl Optimizer for Lars {
    type State<const D: usize> = LarsState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let update = if D == 1 {
            g
        } else {
            let u = g + w.clone().mul_scalar(self.weight_decay);
            let w_norm = w.clone().square().sum().sqrt();
            let u_norm = u.clone().square().sum().sqrt();
            let ratio = w_norm.clone().mul_scalar(self.eta) / u_norm.clone().clamp_min(1e-30);
            // Trust ratio 1 where either norm is zero (fresh zero-init weights, zero gradients).
            let degenerate = w_norm.equal_elem(0.0).bool_or(u_norm.equal_elem(0.0));
            let ratio = ratio.mask_fill(degenerate, 1.0);
            u * ratio.unsqueeze()
        };
        let velocity = match state {
            Some(s) => s.velocity.mul_scalar(self.momentum) + update,
            None => update,
        };
        let w = w - velocity.clone().mul_scalar(lr);
        (w, Some(LarsState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        LarsState {
            velocity: state.velocity.to_device(device),
        }
    }
}

/// AdamW (PyTorch's defaults: β = (0.9, 0.999), decoupled weight decay) whose step is one fused
/// pass per parameter on the CPU backend (`nn::fused::adamw_step`) and burn's [`AdamW`] elsewhere.
/// Same state type as burn's, so checkpoints are interchangeable.
#[derive(Clone)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    fallback: AdamW,
}

impl FusedAdamW {
    pub fn new(weight_decay: f64, epsilon: f32) -> Self {
        // burn's AdamWConfig defaults (its fields are private): β₁ 0.9, β₂ 0.999.
        let (beta_1, beta_2) = (0.9, 0.999);
        let cfg = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_weight_decay(weight_decay as f32)
            .with_epsilon(epsilon);
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay: weight_decay as f32,
            fallback: cfg.build(),
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        // A fresh state is zero moments at time 0: the first update is then burn's first step.
        let (time, m, v) = match &state {
            Some(s) => (
                s.momentum.time,
                s.momentum.moment_1.clone(),
                s.momentum.moment_2.clone(),
            ),
            None => (0, w.zeros_like(), w.zeros_like()),
        };
        let amsgrad = state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some());
        if !amsgrad {
            if let Some((w2, m, v)) = crate::nn::fused::adamw_step(
                w.clone(),
                g.clone(),
                m,
                v,
                lr,
                (self.beta_1, self.beta_2),
                self.epsilon,
                self.weight_decay,
                time + 1,
            ) {
                let momentum = AdaptiveMomentumState::new(time + 1, m, v);
                return (w2, Some(AdamWState::new(momentum)));
            }
        }
        self.fallback.step(lr, w, g, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// Builds the named optimizer.
pub fn build_optimizer(name: &str, weight_decay: f64, momentum: f64) -> Result<ModuleOptimizer> {
    Ok(match name {
        "adamw" => ModuleOptimizer::from(FusedAdamW::new(weight_decay, 1e-8)),
        "sgd" => SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new().with_momentum(momentum)))
            .with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)))
            .init(),
        "lars" => ModuleOptimizer::from(Lars {
            momentum,
            weight_decay,
            eta: 0.001,
        }),
        other => bail!("unknown optimizer `{other}`: expected adamw, sgd or lars"),
    })
}

/// Linear warmup from 0 to `base` over `warmup` steps, then cosine decay to `base·final_frac`.
pub fn lr_at(step: usize, total: usize, warmup: usize, base: f64, final_frac: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let t = ((step - warmup) as f64 / span as f64).min(1.0);
    let end = base * final_frac;
    end + (base - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Wraps an optimizer so that its parameter group learns at `scale` × the scheduled rate (a lower
/// learning rate for a pretrained encoder during fine-tuning).
#[derive(Clone, Debug)]
pub struct ScaledLr<O> {
    pub inner: O,
    pub scale: f64,
}

impl<O: Optimizer> Optimizer for ScaledLr<O> {
    type State<const D: usize> = O::State<D>;
    fn step<const D: usize>(
        &self,
        lr: f64,
        w: Tensor<D>,
        g: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        self.inner.step(lr * self.scale, w, g, state)
    }
    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        O::to_device(state, device)
    }
}

/// AdamW for a whole module, with the parameters of `group` at `scale` × the learning rate.
pub fn adamw_with_scaled_group(
    weight_decay: f64,
    group: burn::module::ParamGroup,
    scale: f64,
) -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdamW::new(weight_decay, 1e-8)).with_group(
        group,
        ScaledLr {
            inner: FusedAdamW::new(weight_decay, 1e-8),
            scale,
        },
        None,
    )
}
