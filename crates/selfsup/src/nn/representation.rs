//! The frozen representation an evaluation uses: h = f(x) of an encoder, or μ_z of a VAE.

use super::vae_nets::VaeEncoder;
use super::Encoder;
use burn::prelude::*;

#[derive(Module, Debug)]
pub enum Representation {
    /// h = f(x) (SimCLR, BYOL; never the projection g(f(x))).
    Encoder(Encoder),
    /// μ_z of the VAE's approximate posterior.
    Vae(VaeEncoder),
}

impl Representation {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Representation::Encoder(e) => e.forward(x),
            Representation::Vae(v) => v.forward(x).0,
        }
    }

    /// Like [`Self::forward`], but an encoder's last feature map is average-pooled onto a
    /// `grid × grid` layout (C·grid² features) instead of globally: the probe then also sees where
    /// a feature fired. `grid = 1` is `forward`. A VAE's μ_z has no spatial layout: `grid > 1` is
    /// an error there.
    pub fn forward_grid(&self, x: Tensor<4>, grid: usize) -> anyhow::Result<Tensor<2>> {
        match self {
            _ if grid <= 1 => Ok(self.forward(x)),
            Representation::Encoder(e) => Ok(super::encoder::grid_avg_pool(e.feature_map(x), grid)),
            Representation::Vae(_) => anyhow::bail!(
                "--pool-grid {grid}: a VAE's representation μ_z has no spatial layout (use 1)"
            ),
        }
    }
}
