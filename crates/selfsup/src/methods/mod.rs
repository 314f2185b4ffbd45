//! One file per self-supervised objective: the loss and its heads, nothing else.

pub mod simclr;

use crate::nn::Encoder;
use burn::prelude::*;

/// What the shared trainer needs from an image method: a loss on a batch of augmented views,
/// a hook after each optimizer step (BYOL's EMA target update), and the encoder for evaluation.
pub trait ImageMethod: Module + Sized {
    /// Number of augmented views per image the loss needs.
    fn num_views(&self) -> usize;
    /// Loss on a batch: one tensor [N, C, H, W] per view.
    fn loss(&self, views: Vec<Tensor<4>>) -> Tensor<1>;
    /// Called after every optimizer step with (step just done, total steps).
    fn after_step(self, _step: usize, _total: usize) -> Self {
        self
    }
    /// The encoder f whose output h is the representation.
    fn encoder(&self) -> &Encoder;
}

impl ImageMethod for simclr::SimClr {
    fn num_views(&self) -> usize {
        2
    }
    fn loss(&self, mut views: Vec<Tensor<4>>) -> Tensor<1> {
        assert_eq!(views.len(), 2, "SimCLR takes two views");
        let v2 = views.pop().unwrap();
        let v1 = views.pop().unwrap();
        simclr::SimClr::loss(self, v1, v2)
    }
    fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}
