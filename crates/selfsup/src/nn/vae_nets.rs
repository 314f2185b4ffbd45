//! The VAE's convolutional encoder q(z|x) → (μ, log σ²) and decoder p(x|z) → logits
//! (Kingma & Welling 2014, appendix C, with convolutions in place of the MLPs).
//!
//! Encoder: a 3×3 convolution of stride 2 and a ReLU per stage (each halves H and W, rounding
//! up), flatten, a hidden Linear + ReLU, then one Linear to 2·latent values split into μ and
//! log σ². Decoder: the mirror image, with 4×4 transposed convolutions of stride 2 (each doubles
//! H and W), a final 3×3 convolution to the image channels, and a crop to the input size when
//! the halvings rounded up (28 → 14 → 7 → 4 decodes to 32 and is cropped back to 28).

use crate::nn::fused_linear::linear as fused_linear;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Sizes of the two networks; `widths` are the channels of the encoder's stages (the decoder
/// uses them in reverse).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeNetSizes {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub widths: Vec<usize>,
    pub hidden: usize,
    pub latent: usize,
}

impl VaeNetSizes {
    /// Spatial size after the encoder's stride-2 stages.
    pub fn bottleneck_hw(&self) -> (usize, usize) {
        let mut hw = (self.height, self.width);
        for _ in &self.widths {
            hw = (hw.0.div_ceil(2), hw.1.div_ceil(2));
        }
        hw
    }

    fn flat(&self) -> usize {
        let (h, w) = self.bottleneck_hw();
        self.widths.last().copied().unwrap_or(self.channels) * h * w
    }
}

/// q(z|x): images [N, C, H, W] → (μ, log σ²), each [N, latent].
#[derive(Module, Debug)]
pub struct VaeEncoder {
    pub convs: Vec<Conv2d>,
    pub fc: Linear,
    pub head: Linear,
    pub latent: usize,
}

impl VaeEncoder {
    pub fn new(s: &VaeNetSizes, device: &Device) -> Self {
        let mut cin = s.channels;
        let mut convs = vec![];
        for &w in &s.widths {
            convs.push(
                Conv2dConfig::new([cin, w], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            cin = w;
        }
        Self {
            convs,
            fc: LinearConfig::new(s.flat(), s.hidden).init(device),
            head: LinearConfig::new(s.hidden, 2 * s.latent).init(device),
            latent: s.latent,
        }
    }

    /// (μ, log σ²) of q(z|x).
    pub fn forward(&self, mut x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        for conv in &self.convs {
            x = relu(super::fused::conv2d(conv, x));
        }
        let [n, c, h, w] = x.dims();
        let hidden = relu(fused_linear(&self.fc, x.reshape([n, c * h * w])));
        let out = fused_linear(&self.head, hidden);
        let mu = out.clone().narrow(1, 0, self.latent);
        let logvar = out.narrow(1, self.latent, self.latent);
        (mu, logvar)
    }
}

/// p(x|z): latents [N, latent] → logits [N, C, H, W].
#[derive(Module, Debug)]
pub struct VaeDecoder {
    pub fc: Linear,
    pub fc_up: Linear,
    pub deconvs: Vec<ConvTranspose2d>,
    pub out: Conv2d,
    pub start: [usize; 3],
    pub image: [usize; 3],
}

impl VaeDecoder {
    pub fn new(s: &VaeNetSizes, device: &Device) -> Self {
        let (h0, w0) = s.bottleneck_hw();
        let top = s.widths.last().copied().unwrap_or(s.channels);
        let mut deconvs = vec![];
        let mut cin = top;
        for &w in s.widths.iter().rev() {
            deconvs.push(
                ConvTranspose2dConfig::new([cin, w], [4, 4])
                    .with_stride([2, 2])
                    .with_padding([1, 1])
                    .init(device),
            );
            cin = w;
        }
        Self {
            fc: LinearConfig::new(s.latent, s.hidden).init(device),
            fc_up: LinearConfig::new(s.hidden, s.flat()).init(device),
            deconvs,
            out: Conv2dConfig::new([cin, s.channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            start: [top, h0, w0],
            image: [s.channels, s.height, s.width],
        }
    }

    /// Bernoulli logits (or, through a sigmoid, the Gaussian mean) of every pixel.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<4> {
        let [n, _] = z.dims();
        let h = relu(fused_linear(&self.fc, z));
        let h = relu(fused_linear(&self.fc_up, h));
        let [c0, h0, w0] = self.start;
        let mut x = h.reshape([n, c0, h0, w0]);
        for deconv in &self.deconvs {
            x = relu(deconv.forward(x));
        }
        let x = super::fused::conv2d(&self.out, x);
        let [_, _, hh, ww] = x.dims();
        let [_, h, w] = self.image;
        if (hh, ww) == (h, w) {
            x
        } else {
            x.narrow(2, 0, h).narrow(3, 0, w)
        }
    }
}
