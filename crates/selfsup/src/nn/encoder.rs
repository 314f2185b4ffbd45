//! Image encoders f(x) → h: a small-image ResNet family (He et al. 2016, CIFAR-style stem: one 3×3
//! convolution, no max-pool) and a plain ConvNet for fast CPU runs. Evaluation always uses h.

use super::batchnorm::BatchNorm;
use burn::nn::conv::{Conv2d, Conv2dConfig};

use super::fused::conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

/// Which encoder to build. Serialized in the run's config.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// `convnet` (plain conv stack) or `resnet` (BasicBlock stages).
    pub arch: String,
    /// Output channels per stage.
    pub widths: Vec<usize>,
    /// convnet: stride of each conv; resnet: stride of the first block of each stage.
    pub strides: Vec<usize>,
    /// resnet only: BasicBlocks per stage.
    #[serde(default)]
    pub depths: Vec<usize>,
    /// BatchNorm after each convolution (convnet; always on for resnet).
    #[serde(default = "yes")]
    pub batchnorm: bool,
}

fn yes() -> bool {
    true
}

impl EncoderConfig {
    /// Tiny ConvNet: 3 convolutions, for 8×8 to 32×32 images on a laptop CPU.
    pub fn tiny() -> Self {
        Self {
            arch: "convnet".into(),
            widths: vec![32, 64, 128],
            strides: vec![1, 2, 2],
            depths: vec![],
            batchnorm: true,
        }
    }
    /// The benchmark ConvNet of the performance issue: 3→32→64→128→256, strides 1/2/2/2.
    pub fn bench_convnet(batchnorm: bool) -> Self {
        Self {
            arch: "convnet".into(),
            widths: vec![32, 64, 128, 256],
            strides: vec![1, 2, 2, 2],
            depths: vec![],
            batchnorm,
        }
    }
    /// ResNet-18 for small images: stages of 2 BasicBlocks, widths 64·k … 512·k.
    pub fn resnet18() -> Self {
        Self::resnet(vec![2, 2, 2, 2], 64)
    }
    /// A ResNet with the given blocks per stage and base width (doubling per stage).
    pub fn resnet(depths: Vec<usize>, base: usize) -> Self {
        let widths = (0..depths.len()).map(|i| base << i).collect();
        let strides = (0..depths.len())
            .map(|i| if i == 0 { 1 } else { 2 })
            .collect();
        Self {
            arch: "resnet".into(),
            widths,
            strides,
            depths,
            batchnorm: true,
        }
    }
    /// Parses a preset name: `tiny`, `convnet`, `resnet18`, `resnet10`, `resnet10-w16` (width 16).
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let (base_name, width) = match name.split_once("-w") {
            Some((b, w)) => (
                b,
                w.parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("bad width in encoder `{name}`"))?,
            ),
            None => (name, 64),
        };
        Ok(match base_name {
            "tiny" => Self::tiny(),
            "convnet" => Self::bench_convnet(true),
            "resnet18" => Self::resnet(vec![2, 2, 2, 2], width),
            "resnet10" => Self::resnet(vec![1, 1, 1, 1], width),
            "resnet6" => Self::resnet(vec![1, 1], width),
            _ => anyhow::bail!(
                "unknown encoder `{name}`: expected tiny, convnet, resnet18, resnet10 or resnet6 (optionally -wN for base width N)"
            ),
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.widths.is_empty(), "encoder needs at least one stage");
        anyhow::ensure!(
            self.widths.len() == self.strides.len(),
            "encoder: widths and strides differ in length"
        );
        anyhow::ensure!(
            self.widths.iter().all(|&w| w > 0),
            "encoder widths must be positive"
        );
        anyhow::ensure!(
            self.strides.iter().all(|&s| s > 0),
            "encoder strides must be positive"
        );
        match self.arch.as_str() {
            "convnet" => {}
            "resnet" => anyhow::ensure!(
                self.depths.len() == self.widths.len() && self.depths.iter().all(|&d| d > 0),
                "resnet: depths must give a positive block count per stage"
            ),
            a => anyhow::bail!("unknown encoder arch `{a}` (convnet or resnet)"),
        }
        Ok(())
    }

    /// Dimension of the representation h.
    pub fn out_dim(&self) -> usize {
        *self.widths.last().unwrap_or(&0)
    }

    pub fn init(&self, in_channels: usize, device: &Device) -> Encoder {
        match self.arch.as_str() {
            "resnet" => Encoder::ResNet(ResNet::new(self, in_channels, device)),
            _ => Encoder::Conv(ConvNet::new(self, in_channels, device)),
        }
    }
}

fn conv3x3(cin: usize, cout: usize, stride: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(bias)
        .init(device)
}

/// conv → (BN) → ReLU, repeated; then global average pooling.
#[derive(Module, Debug)]
pub struct ConvNet {
    pub convs: Vec<Conv2d>,
    pub bns: Vec<BatchNorm>,
}

impl ConvNet {
    fn new(cfg: &EncoderConfig, in_channels: usize, device: &Device) -> Self {
        let mut cin = in_channels;
        let mut convs = vec![];
        let mut bns = vec![];
        for (&w, &s) in cfg.widths.iter().zip(&cfg.strides) {
            // A conv followed by BN needs no bias: BN's shift replaces it.
            convs.push(conv3x3(cin, w, s, !cfg.batchnorm, device));
            if cfg.batchnorm {
                bns.push(BatchNorm::new(w, device));
            }
            cin = w;
        }
        Self { convs, bns }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.feature_map(x))
    }

    /// The last stage's activations [N, C, H', W'] before pooling.
    pub fn feature_map(&self, mut x: Tensor<4>) -> Tensor<4> {
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv2d(conv, x);
            x = match self.bns.get(i) {
                Some(bn) => bn.forward_relu(x),
                None => relu(x),
            };
        }
        x
    }
}

/// Average pooling onto a `grid × grid` layout of cells, flattened channel-major: [N, C, H, W] →
/// [N, C·grid²]. `grid = 1` is global average pooling. Cells follow adaptive pooling (cell i
/// spans ⌊iH/g⌋..⌈(i+1)H/g⌉), so 7×7 maps split 2×2 into overlapping 4×4 windows.
pub fn grid_avg_pool(x: Tensor<4>, grid: usize) -> Tensor<2> {
    if grid <= 1 {
        return global_avg_pool(x);
    }
    let [n, c, _, _] = x.dims();
    burn::tensor::module::adaptive_avg_pool2d(x, [grid, grid]).reshape([n, c * grid * grid])
}

/// Mean over H and W: [N, C, H, W] → [N, C].
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// ResNet BasicBlock: two 3×3 convolutions with a residual connection.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub shortcut: Option<Conv2d>,
    pub shortcut_bn: Option<BatchNorm>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let (shortcut, shortcut_bn) = if stride != 1 || cin != cout {
            let conv = Conv2dConfig::new([cin, cout], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device);
            (Some(conv), Some(BatchNorm::new(cout, device)))
        } else {
            (None, None)
        };
        Self {
            conv1: conv3x3(cin, cout, stride, false, device),
            bn1: BatchNorm::new(cout, device),
            conv2: conv3x3(cout, cout, 1, false, device),
            bn2: BatchNorm::new(cout, device),
            shortcut,
            shortcut_bn,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.bn1.forward_relu(conv2d(&self.conv1, x.clone()));
        let out = self.bn2.forward(conv2d(&self.conv2, out));
        let skip = match (&self.shortcut, &self.shortcut_bn) {
            (Some(conv), Some(bn)) => bn.forward(conv2d(conv, x)),
            _ => x,
        };
        relu(out + skip)
    }
}

/// Small-image ResNet: 3×3 stem (stride 1, no max-pool), stages of BasicBlocks, global pool.
#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: Conv2d,
    pub stem_bn: BatchNorm,
    pub blocks: Vec<BasicBlock>,
}

impl ResNet {
    fn new(cfg: &EncoderConfig, in_channels: usize, device: &Device) -> Self {
        let base = cfg.widths[0];
        let mut blocks = vec![];
        let mut cin = base;
        for ((&w, &s), &d) in cfg.widths.iter().zip(&cfg.strides).zip(&cfg.depths) {
            for b in 0..d {
                blocks.push(BasicBlock::new(cin, w, if b == 0 { s } else { 1 }, device));
                cin = w;
            }
        }
        Self {
            stem: conv3x3(in_channels, base, 1, false, device),
            stem_bn: BatchNorm::new(base, device),
            blocks,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.feature_map(x))
    }

    /// The last stage's activations [N, C, H', W'] before pooling.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.stem_bn.forward_relu(conv2d(&self.stem, x));
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}

/// The encoder f: images [N, C, H, W] → representations h [N, D].
#[derive(Module, Debug)]
pub enum Encoder {
    Conv(ConvNet),
    ResNet(ResNet),
}

impl Encoder {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Encoder::Conv(m) => m.forward(x),
            Encoder::ResNet(m) => m.forward(x),
        }
    }

    /// The last stage's activations [N, C, H', W'] before pooling.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Encoder::Conv(m) => m.feature_map(x),
            Encoder::ResNet(m) => m.feature_map(x),
        }
    }
}
