//! report

pub mod grid;
pub mod vae_grids;
