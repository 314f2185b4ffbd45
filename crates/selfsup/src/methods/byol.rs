//! BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
//! Learning"): an online network (encoder f_θ, projector g_θ, predictor q_θ) learns to predict
//! the projection that a target network (f_ξ, g_ξ) gives of another view of the same image. The
//! target's weights ξ are an exponential moving average of θ (`train::ema`), and no gradient flows
//! through it. Loss (eq. 2), symmetrized over the two views (eq. 4, `L_sym = L(p1, z′2) + L(p2,
//! z′1)`):
//!
//! ```text
//! L(p, z′) = (1/B) Σ_b ‖p̄_b − z̄′_b‖² = (1/B) Σ_b (2 − 2·cos(p_b, z′_b))
//! ```
//!
//! Ablations of the collapse experiment: `predictor = false` (q is the identity) and
//! `ema = false` (the target is the online network itself, detached: τ = 0 at every step).
//! The representation used downstream is h = f_θ(x).

use crate::nn::init::init_seeded;
use crate::nn::{Encoder, EncoderConfig, Mlp};
use crate::train::ema::{ema_update, target_copy, tau_at};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{ImageMethod, Objective};

/// L(p, z) = mean over the batch of 2 − 2·cos(p_b, z_b), with z detached (stop-gradient).
///
/// ```ignore
/// let loss = byol_loss(p, z); // p, z: [B, D]
/// ```
pub fn byol_loss(p: Tensor<2>, z: Tensor<2>) -> Tensor<1> {
    let [b, _] = p.dims();
    // Row normalization with F.normalize's eps.
    let pn = p.clone() / p.square().sum_dim(1).sqrt().clamp_min(1e-12);
    let z = z.detach();
    let zn = z.clone() / z.square().sum_dim(1).sqrt().clamp_min(1e-12);
    let cos = (pn * zn).sum_dim(1);
    cos.mul_scalar(-2.0)
        .add_scalar(2.0)
        .sum()
        .div_scalar(b as f64)
}

/// L_sym = L(p1, z2) + L(p2, z1): a plain sum of the two directions, as in the paper.
pub fn byol_loss_sym(p1: Tensor<2>, p2: Tensor<2>, z1: Tensor<2>, z2: Tensor<2>) -> Tensor<1> {
    byol_loss(p1, z2) + byol_loss(p2, z1)
}

/// BYOL hyperparameters (the `[byol]` table of a run's config.toml).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// τ_base of the cosine EMA schedule, in [0, 1].
    pub tau_base: f64,
    /// Hidden width of the projector g.
    pub proj_hidden: usize,
    /// Output dimension of g (and of the predictor q).
    pub proj_dim: usize,
    /// Hidden width of the predictor q.
    pub pred_hidden: usize,
    /// Use the predictor q (false: q is the identity; collapse ablation).
    pub predictor: bool,
    /// Keep an EMA target network (false: the target is the online network, detached).
    pub ema: bool,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            tau_base: 0.99,
            proj_hidden: 512,
            proj_dim: 128,
            pred_hidden: 512,
            predictor: true,
            ema: true,
        }
    }
}

impl ByolConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.tau_base),
            "byol tau_base must be in [0, 1], got {}",
            self.tau_base
        );
        anyhow::ensure!(
            self.proj_hidden > 0 && self.proj_dim > 0 && self.pred_hidden > 0,
            "byol projector and predictor sizes must be positive"
        );
        Ok(())
    }
}

/// The target network: encoder f_ξ and projector g_ξ, never trained by gradient.
#[derive(Module, Debug)]
pub struct ByolTarget {
    pub encoder: Encoder,
    pub projector: Mlp,
}

/// Online network (encoder, projector, predictor) and, with `ema`, its EMA target.
#[derive(Module, Debug)]
pub struct Byol {
    pub encoder: Encoder,
    pub projector: Mlp,
    pub predictor: Option<Mlp>,
    pub target: Option<ByolTarget>,
    pub tau_base: f64,
}

impl Byol {
    pub fn new(enc: &EncoderConfig, cfg: &ByolConfig, in_channels: usize, device: &Device) -> Self {
        let encoder = enc.init(in_channels, device);
        let projector = Mlp::new(enc.out_dim(), cfg.proj_hidden, cfg.proj_dim, true, device);
        let predictor = cfg
            .predictor
            .then(|| Mlp::new(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, true, device));
        // ξ starts equal to θ (the paper's initialization).
        let target = cfg.ema.then(|| ByolTarget {
            encoder: target_copy(&encoder),
            projector: target_copy(&projector),
        });
        Self {
            encoder,
            projector,
            predictor,
            target,
            tau_base: cfg.tau_base,
        }
    }

    /// [`Byol::new`] with every conv/linear weight drawn from `seed` ([`init_seeded`]), the
    /// target then copied from the seeded online network.
    pub fn new_seeded(
        enc: &EncoderConfig,
        cfg: &ByolConfig,
        in_channels: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        init_seeded(Self::new(enc, cfg, in_channels, device), seed).reset_target()
    }

    /// Sets the target to an exact copy of the online encoder and projector (keeping the
    /// target's own parameter ids). Call it after anything that re-draws or loads the online
    /// weights alone, such as [`init_seeded`] on the whole model.
    pub fn reset_target(self) -> Self {
        self.update_target(0.0)
    }

    /// Loss for two views of the same N images, each [N, C, H, W].
    pub fn loss_views(&self, view1: Tensor<4>, view2: Tensor<4>) -> Tensor<1> {
        let [n, ..] = view1.dims();
        // Both views in one forward pass, so that BatchNorm sees all 2N images (as in SimCLR).
        let x = Tensor::cat(vec![view1, view2], 0);
        let z = self.projector.forward(self.encoder.forward(x.clone()));
        let p = match &self.predictor {
            Some(q) => q.forward(z.clone()),
            None => z.clone(),
        };
        let z_target = match &self.target {
            Some(t) => t.projector.forward(t.encoder.forward(x)),
            None => z,
        }
        .detach();
        let p1 = p.clone().narrow(0, 0, n);
        let p2 = p.narrow(0, n, n);
        let z1 = z_target.clone().narrow(0, 0, n);
        let z2 = z_target.narrow(0, n, n);
        byol_loss_sym(p1, p2, z1, z2)
    }

    /// Moves the target towards the online network with decay τ.
    pub fn update_target(mut self, tau: f64) -> Self {
        if let Some(t) = self.target.take() {
            self.target = Some(ByolTarget {
                encoder: ema_update(t.encoder, &self.encoder, tau),
                projector: ema_update(t.projector, &self.projector, tau),
            });
        }
        self
    }
}

impl Objective for Byol {
    type Batch = Vec<Tensor<4>>;
    fn loss(&self, mut views: Vec<Tensor<4>>) -> Tensor<1> {
        assert_eq!(views.len(), 2, "BYOL takes two views");
        let v2 = views.pop().unwrap();
        let v1 = views.pop().unwrap();
        self.loss_views(v1, v2)
    }

    /// The EMA update after optimizer step `step` (1-based) of `total`: τ_k with k = step.
    fn after_step(self, step: usize, total: usize) -> Self {
        let tau = tau_at(step, total, self.tau_base);
        self.update_target(tau)
    }
}

impl ImageMethod for Byol {
    fn num_views(&self) -> usize {
        2
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}
