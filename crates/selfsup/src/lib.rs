//! selfsup: self-supervised representation learning and in-context learning on burn.
//!
//! Data flows one way: `data` → `methods` (+ `nn`) → `train` → `eval` / `report`.

pub mod config;
pub mod data;
pub mod eval;
pub mod experiment;
pub mod icl;
pub mod lm;
pub mod methods;
pub mod nn;
pub mod pipeline;
pub mod report;
pub mod scaling;
pub mod text_classify;
pub mod text_pipeline;
pub mod train;

/// The compute device (CPU `flex` or CUDA), re-exported for the CLI.
pub use burn::prelude::Device;
