//! Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"; β weight
//! on the KL term from Higgins et al. 2017, "β-VAE"). The negative ELBO (eq. 10 with the
//! closed-form Gaussian KL of appendix B), averaged over the batch:
//!
//! ```text
//! loss  = recon + β·kl
//! recon = (1/B) Σ_b −log p(x_b | z_b),     z_b = μ_b + σ_b·ε,  ε ~ N(0, I)
//! kl    = (1/B) Σ_b −½ Σ_j (1 + log σ²_bj − μ²_bj − σ²_bj)
//! ```
//!
//! Bernoulli likelihood: −log p(x|z) = Σ_pixels softplus(l) − x·l on the decoder logits l
//! (binary cross-entropy with logits, summed over pixels). Gaussian: a fixed σ_x, mean sigmoid(l),
//! −log p = Σ_pixels ½((x − mean)/σ_x)² + log σ_x + ½ log 2π.
//! The representation used downstream is μ = E[z|x] ([`Vae::represent`]).

use crate::nn::init::init_seeded;
use crate::nn::vae_nets::{VaeDecoder, VaeEncoder, VaeNetSizes};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softplus};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Objective;

/// A constant word of the noise key: the data loader keys its ChaCha streams by image index in
/// that position, so the two never share a stream.
const NOISE_STREAM: u64 = 0x7661_6521;

/// Bernoulli reconstruction term: (1/B) Σ_b Σ_p BCE(logits, x), in the logits form
/// softplus(l) − x·l (exact for large |l|, unlike BCE on probabilities).
///
/// ```ignore
/// let recon = bernoulli_nll(logits, x); // both [B, P], x in [0, 1]
/// ```
pub fn bernoulli_nll(logits: Tensor<2>, x: Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    (softplus(logits.clone(), 1.0) - x * logits)
        .sum()
        .div_scalar(b as f64)
}

/// Gaussian reconstruction term with fixed standard deviation `sigma` and mean sigmoid(logits):
/// (1/B) Σ_b Σ_p [½((x − mean)/σ)² + log σ + ½ log 2π].
pub fn gaussian_nll(logits: Tensor<2>, x: Tensor<2>, sigma: f64) -> Tensor<1> {
    let [b, p] = logits.dims();
    let per_pixel_const = sigma.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln();
    (sigmoid(logits) - x)
        .div_scalar(sigma)
        .square()
        .sum()
        .mul_scalar(0.5)
        .div_scalar(b as f64)
        .add_scalar(per_pixel_const * p as f64)
}

/// KL(N(μ, σ²) ‖ N(0, I)) summed over latent dimensions, mean over the batch.
pub fn kl_std_normal(mu: Tensor<2>, logvar: Tensor<2>) -> Tensor<1> {
    let [b, _] = mu.dims();
    (logvar.clone().add_scalar(1.0) - mu.square() - logvar.exp())
        .sum()
        .mul_scalar(-0.5)
        .div_scalar(b as f64)
}

/// The three terms of the negative ELBO.
#[derive(Clone, Debug)]
pub struct VaeLoss {
    pub loss: Tensor<1>,
    pub recon: Tensor<1>,
    pub kl: Tensor<1>,
}

/// loss = recon + β·kl.
pub fn neg_elbo(recon: Tensor<1>, kl: Tensor<1>, beta: f64) -> VaeLoss {
    VaeLoss {
        loss: recon.clone() + kl.clone().mul_scalar(beta),
        recon,
        kl,
    }
}

/// p(x|z).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Likelihood {
    /// Binary cross-entropy on the logits; pixels in [0, 1] act as soft labels.
    Bernoulli,
    /// Fixed-variance Gaussian around sigmoid(logits).
    Gaussian,
}

/// VAE hyperparameters (the `[vae]` table of a run's config.toml).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// Dimension of z (and of the representation μ).
    pub latent_dim: usize,
    /// Weight of the KL term (β-VAE); 1 is the ELBO.
    pub beta: f64,
    pub likelihood: Likelihood,
    /// σ_x of the Gaussian likelihood.
    pub gaussian_sigma: f64,
    /// Channels of the encoder's stride-2 conv stages (reversed in the decoder).
    pub widths: Vec<usize>,
    /// Width of the hidden Linear layer on each side.
    pub hidden: usize,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            latent_dim: 16,
            beta: 1.0,
            likelihood: Likelihood::Bernoulli,
            gaussian_sigma: 0.1,
            widths: vec![32, 64],
            hidden: 256,
        }
    }
}

impl VaeConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.latent_dim > 0,
            "vae latent_dim must be at least 1, got 0"
        );
        anyhow::ensure!(
            self.beta.is_finite() && self.beta >= 0.0,
            "vae beta must be ≥ 0, got {}",
            self.beta
        );
        anyhow::ensure!(
            self.gaussian_sigma.is_finite() && self.gaussian_sigma > 0.0,
            "vae gaussian_sigma must be positive, got {}",
            self.gaussian_sigma
        );
        anyhow::ensure!(
            !self.widths.is_empty() && self.widths.iter().all(|&w| w > 0),
            "vae widths must list at least one positive channel count"
        );
        anyhow::ensure!(self.hidden > 0, "vae hidden must be positive");
        Ok(())
    }
}

/// Encoder q(z|x), decoder p(x|z) and the loss settings.
#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: VaeEncoder,
    pub decoder: VaeDecoder,
    pub beta: f64,
    #[module(skip)]
    pub likelihood: Likelihood,
    pub gaussian_sigma: f64,
    /// Seed of the reparameterization noise.
    pub noise_seed: u64,
    /// Optimizer steps done; with `noise_seed` it keys the noise of the next batch.
    pub step: usize,
}

impl Vae {
    /// A VAE for images of `channels × height × width`.
    pub fn new(
        cfg: &VaeConfig,
        channels: usize,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Self {
        let sizes = VaeNetSizes {
            channels,
            height,
            width,
            widths: cfg.widths.clone(),
            hidden: cfg.hidden,
            latent: cfg.latent_dim,
        };
        Self {
            encoder: VaeEncoder::new(&sizes, device),
            decoder: VaeDecoder::new(&sizes, device),
            beta: cfg.beta,
            likelihood: cfg.likelihood,
            gaussian_sigma: cfg.gaussian_sigma,
            noise_seed: 0,
            step: 0,
        }
    }

    /// [`Vae::new`] with every conv/linear weight drawn from `seed` ([`init_seeded`]) and the
    /// reparameterization noise keyed by the same seed.
    pub fn new_seeded(
        cfg: &VaeConfig,
        channels: usize,
        height: usize,
        width: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut vae = init_seeded(Self::new(cfg, channels, height, width, device), seed);
        vae.noise_seed = seed;
        vae
    }

    /// Positions the noise stream at `step` (for a resumed run; [`Objective::after_step`] keeps
    /// it current during training).
    pub fn at_step(mut self, step: usize) -> Self {
        self.step = step;
        self
    }

    /// ε ~ N(0, I) of shape [n, latent] for the current step: a pure function of
    /// (noise_seed, step), so that a resumed run draws the same noise as an uninterrupted one.
    pub fn noise(&self, n: usize, device: &Device) -> Tensor<2> {
        let latent = self.encoder.latent;
        let mut key = [0u8; 32];
        for (i, v) in [self.noise_seed, self.step as u64, NOISE_STREAM]
            .into_iter()
            .enumerate()
        {
            key[8 * i..8 * (i + 1)].copy_from_slice(&v.to_le_bytes());
        }
        let mut rng = ChaCha8Rng::from_seed(key);
        let eps: Vec<f32> = (0..n * latent)
            .map(|_| {
                // Box–Muller; 1 − u keeps the logarithm's argument in (0, 1].
                let u1: f64 = 1.0 - rng.gen::<f64>();
                let u2: f64 = rng.gen();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(eps, [n, latent]), device)
    }

    /// The representation: μ = E[z|x], [N, latent].
    pub fn represent(&self, x: Tensor<4>) -> Tensor<2> {
        self.encoder.forward(x).0
    }

    /// Decoder logits for latents z.
    pub fn decode(&self, z: Tensor<2>) -> Tensor<4> {
        self.decoder.forward(z)
    }

    /// Pixel means of p(x|z), in [0, 1] (sigmoid of the logits for both likelihoods).
    pub fn decode_mean(&self, z: Tensor<2>) -> Tensor<4> {
        sigmoid(self.decoder.forward(z))
    }

    /// Reconstruction term for logits and targets of shape [N, C, H, W].
    pub fn recon(&self, logits: Tensor<4>, x: Tensor<4>) -> Tensor<1> {
        let [n, c, h, w] = x.dims();
        let (logits, x) = (logits.reshape([n, c * h * w]), x.reshape([n, c * h * w]));
        match self.likelihood {
            Likelihood::Bernoulli => bernoulli_nll(logits, x),
            Likelihood::Gaussian => gaussian_nll(logits, x, self.gaussian_sigma),
        }
    }

    /// The negative ELBO of a batch [N, C, H, W] with one reparameterized sample per image
    /// (ε from [`Vae::noise`]).
    pub fn elbo_terms(&self, x: Tensor<4>) -> VaeLoss {
        let (mu, logvar) = self.encoder.forward(x.clone());
        let eps = self.noise(mu.dims()[0], &mu.device());
        let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        let recon = self.recon(self.decoder.forward(z), x);
        neg_elbo(recon, kl_std_normal(mu, logvar), self.beta)
    }
}

impl Objective for Vae {
    /// One view per image: `[x]`.
    type Batch = Vec<Tensor<4>>;
    fn loss(&self, mut views: Vec<Tensor<4>>) -> Tensor<1> {
        assert_eq!(views.len(), 1, "the VAE takes one view");
        self.elbo_terms(views.pop().unwrap()).loss
    }

    fn after_step(self, step: usize, _total: usize) -> Self {
        self.at_step(step)
    }
}
