//! Fine-tuning end to end (encoder + a new linear head, the encoder at a lower learning rate) and
//! supervised training from scratch with the same architecture, augmentation and labels — the
//! baselines that self-supervised pretraining must beat when labels are scarce.

use crate::data::augment::AugmentConfig;
use crate::data::loader::ViewLoader;
use crate::data::ImageDataset;
use crate::methods::Objective;
use crate::nn::Representation;
use crate::train::{self, TrainConfig};
use anyhow::{ensure, Result};
use burn::module::{Module, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Encoder f followed by a linear classifier on h.
#[derive(Module, Debug)]
pub struct Classifier {
    pub encoder: Representation,
    pub head: Linear,
}

impl Classifier {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.encoder.forward(x))
    }
}

/// Mean cross-entropy of logits [N, C] against class ids.
pub fn cross_entropy(logits: Tensor<2>, labels: &[u32]) -> Tensor<1> {
    let [n, c] = logits.dims();
    let mut onehot = vec![0f32; n * c];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * c + l as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, c]), &logits.device());
    (log_softmax(logits, 1) * onehot)
        .sum()
        .div_scalar(-(n as f64))
}

impl Objective for Classifier {
    type Batch = (Tensor<4>, Vec<u32>);
    fn loss(&self, (x, y): (Tensor<4>, Vec<u32>)) -> Tensor<1> {
        cross_entropy(self.forward(x), &y)
    }
}

/// Fine-tuning / from-scratch hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Optimizer steps (at least; small label sets repeat their images).
    pub steps: usize,
    pub batch_size: usize,
    /// Learning rate of the head (and of everything when training from scratch).
    pub lr: f64,
    /// The pretrained encoder learns at lr × this.
    pub encoder_lr_scale: f64,
    pub weight_decay: f64,
    /// Augmentation of the labelled images (light: crops that keep most of the object).
    pub augment: AugmentConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        let mut augment = AugmentConfig::none();
        augment.crop_scale = (0.8, 1.0);
        Self {
            steps: 500,
            batch_size: 64,
            lr: 3e-3,
            encoder_lr_scale: 0.1,
            weight_decay: 1e-4,
            augment,
        }
    }
}

/// What one fine-tuning run reports.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneResult {
    pub accuracy: f64,
    pub seconds: f64,
    pub steps: usize,
    /// Labelled images seen during training (steps × batch).
    pub examples_seen: usize,
}

/// Trains `encoder` + a new head on the labelled `train` images and reports test accuracy.
/// `pretrained` selects the lower encoder learning rate; from scratch everything learns at `lr`.
pub fn finetune(
    encoder: Representation,
    pretrained: bool,
    train_set: &ImageDataset,
    test: &ImageDataset,
    cfg: &FinetuneConfig,
    seed: u64,
    device: &Device,
) -> Result<FinetuneResult> {
    ensure!(
        train_set.labels.is_some() && test.labels.is_some(),
        "fine-tuning needs labels"
    );
    ensure!(
        !train_set.is_empty(),
        "fine-tuning needs at least one labelled image"
    );
    let classes = train_set.num_classes().max(test.num_classes());
    let device = device.clone().autodiff();
    // `train()` lifts a module built on the inference device onto the autodiff device with its
    // parameters tracked again (`fork` alone leaves them constant: the encoder would not learn).
    let encoder = encoder.to_device(&device.clone().inner()).train();
    let d = probe_dim(&encoder, train_set, &device);
    let mut head =
        crate::nn::init::init_seeded(LinearConfig::new(d, classes).init(&device), seed ^ 0x4ead);
    if pretrained {
        // BatchNorm statistics of pretraining describe augmented views; training mode would move
        // them to the labelled images within the first steps and leave the head behind. Re-estimate
        // them on the labelled images first (forward passes only), then fit the head on them.
        recalibrate_batchnorm(&encoder, train_set, &cfg.augment, seed, &device)?;
        // LP-FT (Kumar et al. 2022): start the head at the converged linear probe, so that the
        // first gradient steps refine the encoder instead of distorting it to fit a random head.
        head = probe_head(&encoder, train_set, classes, &device)?;
    }
    let model = Classifier { encoder, head };
    let opt = if pretrained {
        let group = ParamGroup::ids_from_module(model.encoder.clone());
        train::optim::adamw_with_scaled_group(cfg.weight_decay, group, cfg.encoder_lr_scale)
    } else {
        train::optim::build_optimizer("adamw", cfg.weight_decay, 0.9)?
    };
    let batch = cfg.batch_size.min(train_set.len()).max(1);
    let loader = ViewLoader::new(
        Arc::new(train_set.clone()),
        vec![cfg.augment.clone()],
        batch,
        (train_set.height, train_set.width),
        seed,
        false,
    )?;
    let tcfg = TrainConfig {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        warmup_epochs: 0.0,
        batch_size: batch,
        steps: Some(cfg.steps.max(1)),
        ..Default::default()
    };
    let steps_per_epoch = loader.batches_per_epoch();
    let dev = device.clone();
    let batches = (0..cfg.steps.max(1)).map(move |step| {
        let vb = loader.batch(step);
        let labels = vb.labels.clone().unwrap_or_default();
        let x = Tensor::<4>::from_data(
            TensorData::new(vb.views[0].clone(), [vb.n, vb.c, vb.h, vb.w]),
            &dev,
        );
        (x, labels)
    });
    let t0 = Instant::now();
    let (model, state, _) = train::fit_in_memory(
        model,
        opt,
        &tcfg,
        steps_per_epoch,
        "finetune",
        batches,
        None,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let accuracy = accuracy(&model.valid(), test, &device.inner())?;
    Ok(FinetuneResult {
        accuracy,
        seconds,
        steps: state.step,
        examples_seen: state.step * batch,
    })
}

fn probe_dim(encoder: &Representation, ds: &ImageDataset, device: &Device) -> usize {
    let x = Tensor::<4>::from_data(
        TensorData::new(ds.image(0).to_vec(), [1, ds.channels, ds.height, ds.width]),
        &device.clone().inner(),
    );
    encoder.valid().forward(x).dims()[1]
}

/// Test accuracy of a classifier in inference mode.
pub fn accuracy(model: &Classifier, test: &ImageDataset, device: &Device) -> Result<f64> {
    let labels = test
        .labels
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("test split has no labels"))?;
    let mut correct = 0usize;
    for start in (0..test.len()).step_by(256) {
        let end = (start + 256).min(test.len());
        let pixels = test.images[start * test.image_len()..end * test.image_len()].to_vec();
        let x = Tensor::<4>::from_data(
            TensorData::new(
                pixels,
                [end - start, test.channels, test.height, test.width],
            ),
            device,
        );
        let pred = model
            .forward(x)
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap_or_default();
        correct += pred
            .iter()
            .zip(&labels[start..end])
            .filter(|(p, l)| **p == **l as i64)
            .count();
    }
    Ok(correct as f64 / test.len().max(1) as f64)
}

/// The linear probe on the encoder's (standardized) features of the labelled images, folded into
/// a Linear layer on the raw features: W' = W/σ, b' = b − W'·μ.
fn probe_head(
    encoder: &Representation,
    ds: &ImageDataset,
    classes: usize,
    device: &Device,
) -> Result<Linear> {
    let labels = ds
        .labels
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("fine-tuning needs labels"))?;
    let h = crate::pipeline::embed(encoder, ds, (ds.height, ds.width), device, 256);
    probe_linear(&h, labels, classes, device)
}

/// Fits the linear probe on features `h` (row-major, one row per label) and folds the
/// standardization into a Linear layer on the raw features (the LP-FT starting head).
pub fn probe_linear(h: &[f32], labels: &[u32], classes: usize, device: &Device) -> Result<Linear> {
    ensure!(!labels.is_empty(), "fine-tuning needs at least one label");
    let n = labels.len();
    let d = h.len() / n;
    let st = crate::eval::Standardizer::fit(h, n, d)?;
    let z = st.transform(h)?;
    let probe = crate::eval::fit_probe(
        &z,
        labels,
        n,
        d,
        classes,
        &crate::eval::ProbeConfig::default(),
    )?;
    let (mean, std) = (st.mean(), st.std());
    // Near-constant features (dead ReLU channels of a weak encoder) would give W/σ huge weights
    // whose gradients wreck the encoder: floor σ at a tenth of the median σ.
    let mut sorted: Vec<f32> = std.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let floor = 0.1 * sorted[sorted.len() / 2];
    let std: Vec<f32> = std.iter().map(|&s| s.max(floor)).collect();
    // burn stores Linear weights [in, out].
    let mut w = vec![0f32; d * classes];
    let mut b = vec![0f32; classes];
    for c in 0..classes {
        let mut shift = 0.0f64;
        for j in 0..d {
            let wj = probe.weights[c * d + j] / std[j] as f64;
            w[j * classes + c] = wj as f32;
            shift += wj * mean[j] as f64;
        }
        b[c] = (probe.bias[c] - shift) as f32;
    }
    let mut head = LinearConfig::new(d, classes).init(device);
    head.weight = burn::module::Param::from_tensor(
        Tensor::from_data(TensorData::new(w, [d, classes]), device).require_grad(),
    );
    head.bias = Some(burn::module::Param::from_tensor(
        Tensor::from_data(TensorData::new(b, [classes]), device).require_grad(),
    ));
    Ok(head)
}

/// Runs the encoder in training mode over augmented batches of `ds` (no optimizer step), so that
/// every BatchNorm's running statistics (momentum 0.1) settle on this data: 30 passes leave under
/// 5% of the old statistics.
fn recalibrate_batchnorm(
    encoder: &Representation,
    ds: &ImageDataset,
    augment: &AugmentConfig,
    seed: u64,
    device: &Device,
) -> Result<()> {
    let batch = ds.len().clamp(1, 256);
    let loader = ViewLoader::new(
        Arc::new(ds.clone()),
        vec![augment.clone()],
        batch,
        (ds.height, ds.width),
        seed ^ 0xb7,
        false,
    )?;
    for step in 0..30 {
        let vb = loader.batch(step);
        let x = Tensor::<4>::from_data(
            TensorData::new(vb.views[0].clone(), [vb.n, vb.c, vb.h, vb.w]),
            device,
        );
        let _ = encoder.forward(x);
    }
    Ok(())
}
