//! Pretraining and feature extraction, end to end: data → augment → method → trainer.
//! The CLI and the experiments call these; they hold no math of their own.

use crate::config::PretrainConfig;
use crate::data::augment::{augment_image, AugmentConfig};
use crate::data::loader::ViewLoader;
use crate::data::{self, ImageDataset, LoadOptions, Splits};
use crate::methods::simclr::SimClr;
use crate::methods::{ImageMethod, Objective};
use crate::nn::Encoder;
use crate::train::{self, checkpoint, FitSpec, Outcome, RunDir, RunState};
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Selects the compute device from `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::flex()),
        s if s == "cuda" || s.starts_with("cuda:") => {
            #[cfg(feature = "cuda")]
            {
                let idx: usize = match s.strip_prefix("cuda:") {
                    Some(i) => i
                        .parse()
                        .with_context(|| format!("bad device index in `{s}`"))?,
                    None => 0,
                };
                Ok(Device::cuda(idx))
            }
            #[cfg(not(feature = "cuda"))]
            bail!("--device {s}: this binary was built without CUDA; rebuild with `cargo build --release --features cuda`")
        }
        s => bail!("unknown device `{s}`: expected cpu, cuda or cuda:N"),
    }
}

/// How a pretraining call is run (not part of the run's identity).
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub device: Device,
    pub progress: bool,
    /// Stop (with a checkpoint) once this many steps are done, as if interrupted; `--resume`
    /// continues. Lets a long schedule be trained in pieces.
    pub stop_at_step: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            device: Device::flex(),
            progress: false,
            stop_at_step: None,
        }
    }
}

/// What a finished (or interrupted) pretraining call reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PretrainReport {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub total_steps: usize,
    pub final_loss: Option<f64>,
    pub train_seconds: f64,
    pub interrupted: bool,
}

/// The image side the encoder sees: the dataset's, after any resize at load time.
pub fn input_hw(ds: &ImageDataset) -> (usize, usize) {
    (ds.height, ds.width)
}

/// Loads a dataset spec with a run's loading options (image size, skipping bad images).
pub fn load_data(spec: &str, cfg: &PretrainConfig) -> Result<Splits> {
    let opts = LoadOptions {
        image_size: cfg.image_size,
        skip_bad_images: cfg.skip_bad_images,
        grayscale: false,
    };
    data::load(spec, &opts)
}

/// Builds the method a config names, seeded.
pub fn build_simclr(cfg: &PretrainConfig, channels: usize, device: &Device) -> SimClr {
    device.seed(cfg.seed);
    crate::nn::init::init_seeded(
        SimClr::new(&cfg.encoder, &cfg.simclr, channels, device),
        cfg.seed,
    )
}

/// Pretrains a new run in `out`.
pub fn pretrain(cfg: &PretrainConfig, out: &Path, opts: &RunOptions) -> Result<PretrainReport> {
    cfg.validate()?;
    let run = train::new_run_dir(out)?;
    checkpoint::write_atomic(&run.config(), cfg.to_toml()?.as_bytes())?;
    let splits = load_data(&cfg.data, cfg)?;
    run_pretraining(cfg, &run, splits.train, opts, false)
}

/// Continues the run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<PretrainReport> {
    let run = RunDir(dir.to_path_buf());
    let cfg = PretrainConfig::load(&run.config(), &[])?;
    let splits = load_data(&cfg.data, &cfg)?;
    run_pretraining(&cfg, &run, splits.train, opts, true)
}

fn run_pretraining(
    cfg: &PretrainConfig,
    run: &RunDir,
    train_set: ImageDataset,
    opts: &RunOptions,
    resume: bool,
) -> Result<PretrainReport> {
    match cfg.method.as_str() {
        "simclr" => {
            let device = opts.device.clone().autodiff();
            let model = build_simclr(cfg, train_set.channels, &device);
            run_views(cfg, run, train_set, opts, resume, model, 2)
        }
        m => bail!("unknown method `{m}`"),
    }
}

fn run_views<M: ImageMethod>(
    cfg: &PretrainConfig,
    run: &RunDir,
    train_set: ImageDataset,
    opts: &RunOptions,
    resume: bool,
    model: M,
    views: usize,
) -> Result<PretrainReport> {
    let device = opts.device.clone().autodiff();
    let hw = input_hw(&train_set);
    let channels = train_set.channels;
    let n_images = train_set.len();
    let batch = cfg.train.batch_size;
    if batch < 2 {
        bail!(
            "batch_size {batch}: contrastive methods need at least 2 images per batch (negatives)"
        );
    }
    if n_images < 2 {
        bail!(
            "dataset `{}` has {n_images} image(s): at least 2 are needed",
            cfg.data
        );
    }
    let batch = batch.min(n_images);
    let loader = ViewLoader::new(
        Arc::new(train_set),
        vec![cfg.augment.clone(); views],
        batch,
        hw,
        cfg.seed,
        true,
    )?;
    let spe = loader.batches_per_epoch();
    let opt = train::optim::build_optimizer(
        &cfg.train.optimizer,
        cfg.train.weight_decay,
        cfg.train.momentum,
    )?;
    let (model, opt, state) = if resume {
        let (m, o, s) = run.load_checkpoint(model, opt)?;
        if s.finished {
            eprintln!(
                "{}: the run is already finished ({} steps)",
                run.0.display(),
                s.step
            );
        }
        (m, o, s)
    } else {
        let total = match cfg.train.minutes {
            Some(minutes) => calibrate_steps(cfg, &loader, channels, &device, minutes)?,
            None => train::total_steps(&cfg.train, spe),
        };
        let state = RunState {
            step: 0,
            total_steps: total.max(1),
            steps_per_epoch: spe,
            ..Default::default()
        };
        (model, opt, state)
    };
    if opts.progress {
        train::install_ctrlc_handler();
    }
    let start = state.step;
    let total = state.total_steps;
    let accum = cfg.train.grad_accum.max(1);
    let stop = opts
        .stop_at_step
        .map(|s| s.clamp(start, total))
        .unwrap_or(total);
    let dev = device.clone();
    let batches = loader
        .prefetch(start * accum, stop * accum, 3)
        .map(move |vb| {
            vb.views
                .into_iter()
                .map(|v| Tensor::<4>::from_data(TensorData::new(v, [vb.n, vb.c, vb.h, vb.w]), &dev))
                .collect::<Vec<_>>()
        });
    let spec = FitSpec {
        cfg: &cfg.train,
        run: Some(run),
        samples_per_step: batch,
        progress: opts.progress,
        label: &cfg.method,
        stop_at: stop,
    };
    let (_model, state, outcome) = train::fit(model, opt, state, &spec, batches, None)?;
    Ok(PretrainReport {
        run_dir: run.0.clone(),
        steps: state.step,
        total_steps: state.total_steps,
        final_loss: state.last_loss,
        train_seconds: state.train_seconds,
        interrupted: outcome == Outcome::Interrupted,
    })
}

/// Times a few forward/backward passes of a throw-away model to turn a minutes budget into steps.
fn calibrate_steps(
    cfg: &PretrainConfig,
    loader: &ViewLoader,
    channels: usize,
    device: &Device,
    minutes: f64,
) -> Result<usize> {
    let probe = build_simclr(cfg, channels, device);
    let mut times = vec![];
    for step in 0..4 {
        let vb = loader.batch(step);
        let t0 = Instant::now();
        let views = vb
            .views
            .into_iter()
            .map(|v| Tensor::<4>::from_data(TensorData::new(v, [vb.n, vb.c, vb.h, vb.w]), device))
            .collect::<Vec<_>>();
        let loss = Objective::loss(&probe, views);
        let _ = loss.backward();
        times.push(t0.elapsed().as_secs_f64());
    }
    // The first pass includes one-time setup; the optimizer step adds roughly 10%.
    let per_step = times[1..].iter().sum::<f64>() / 3.0 * 1.1;
    Ok(((minutes * 60.0) / per_step).floor().max(1.0) as usize)
}

/// A pretrained run loaded for evaluation.
pub struct LoadedRun {
    pub cfg: PretrainConfig,
    pub encoder: Encoder,
}

/// Loads the encoder of a run folder (weights from model.safetensors, config from config.toml).
pub fn load_run(dir: &Path, device: &Device) -> Result<LoadedRun> {
    let run = RunDir(dir.to_path_buf());
    if !run.config().exists() {
        bail!(
            "{}: not a selfsup run folder (no config.toml)",
            dir.display()
        );
    }
    let cfg = PretrainConfig::load(&run.config(), &[])?;
    let channels = channels_of(&cfg)?;
    let encoder = match cfg.method.as_str() {
        "simclr" => {
            let m = SimClr::new(&cfg.encoder, &cfg.simclr, channels, device);
            checkpoint::load_weights(m, &run.weights(), false)?.encoder
        }
        m => bail!("{}: unknown method `{m}`", run.config().display()),
    };
    Ok(LoadedRun { cfg, encoder })
}

fn channels_of(cfg: &PretrainConfig) -> Result<usize> {
    // The channel count is fixed by the data; record-free: read it from the dataset header.
    Ok(load_data(&cfg.data, cfg)
        .context("loading the run's dataset to know its channels")?
        .train
        .channels)
}

/// Representations h = f(x) of every image, [n, d] row-major, computed without augmentation at
/// the encoder's input size, in inference mode (BatchNorm running statistics).
pub fn embed(
    encoder: &Encoder,
    ds: &ImageDataset,
    hw: (usize, usize),
    device: &Device,
    batch: usize,
) -> Vec<f32> {
    let encoder = encoder.valid();
    let device = device.clone().inner();
    let identity = AugmentConfig::none();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut out = Vec::new();
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    for start in (0..ds.len()).step_by(batch.max(1)) {
        let end = (start + batch).min(ds.len());
        let mut pixels = Vec::with_capacity((end - start) * c * hw.0 * hw.1);
        for i in start..end {
            if (h, w) == hw {
                pixels.extend_from_slice(ds.image(i));
            } else {
                pixels.extend(augment_image(
                    ds.image(i),
                    c,
                    h,
                    w,
                    hw.0,
                    hw.1,
                    &identity,
                    &mut rng,
                ));
            }
        }
        let x = Tensor::<4>::from_data(
            TensorData::new(pixels, [end - start, c, hw.0, hw.1]),
            &device,
        );
        let hfeat = encoder.forward(x.to_device(&device));
        out.extend(
            hfeat
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default(),
        );
    }
    out
}
