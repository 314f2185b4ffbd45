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

use crate::nn::vae_nets::{VaeDecoder, VaeEncoder, VaeNetSizes};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use super::Objective;

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
        }
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
    /// (ε from the device's seeded RNG).
    pub fn elbo_terms(&self, x: Tensor<4>) -> VaeLoss {
        let (mu, logvar) = self.encoder.forward(x.clone());
        let eps = Tensor::<2>::random(mu.dims(), Distribution::Normal(0.0, 1.0), &mu.device());
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
}
