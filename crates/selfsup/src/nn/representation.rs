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
}
