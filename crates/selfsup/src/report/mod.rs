//! report

pub mod fit;
pub mod grid;
pub mod plot;
pub mod vae_grids;
