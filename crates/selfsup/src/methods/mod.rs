//! One file per self-supervised objective: the loss and its heads, nothing else.

pub mod byol;
pub mod clm;
pub mod mlm;
pub mod simclr;
pub mod vae;

use crate::nn::Encoder;
use burn::prelude::*;

/// What the shared trainer optimizes: a scalar loss on a batch, and a hook after each optimizer
/// step (BYOL's EMA target update lives there).
pub trait Objective: Module + Sized {
    type Batch;
    fn loss(&self, batch: Self::Batch) -> Tensor<1>;
    /// Called after each optimizer step with (steps done, total steps).
    fn after_step(self, _step: usize, _total: usize) -> Self {
        self
    }
}

/// An image method: its batch is one tensor [N, C, H, W] per augmented view, and its encoder f
/// gives the representation h used by every evaluation.
pub trait ImageMethod: Objective<Batch = Vec<Tensor<4>>> {
    /// Number of augmented views per image the loss needs.
    fn num_views(&self) -> usize;
    fn encoder(&self) -> &Encoder;
}

impl Objective for simclr::SimClr {
    type Batch = Vec<Tensor<4>>;
    fn loss(&self, mut views: Vec<Tensor<4>>) -> Tensor<1> {
        assert_eq!(views.len(), 2, "SimCLR takes two views");
        let v2 = views.pop().unwrap();
        let v1 = views.pop().unwrap();
        self.loss_views(v1, v2)
    }
}

impl ImageMethod for simclr::SimClr {
    fn num_views(&self) -> usize {
        2
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}
