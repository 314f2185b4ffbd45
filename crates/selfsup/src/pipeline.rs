//! Pretraining and feature extraction, end to end: data → augment → method → trainer.
//! The CLI and the experiments call these; they hold no math of their own.

use crate::config::PretrainConfig;
use crate::data::augment::{augment_image, AugmentConfig};
use crate::data::loader::ViewLoader;
use crate::data::{self, ImageDataset, LoadOptions, Splits};
use crate::eval::collapse::CollapseReport;
use crate::methods::byol::Byol;
use crate::methods::simclr::SimClr;
use crate::methods::vae::Vae;
use crate::methods::Objective;
use crate::nn::Representation;
use crate::train::{self, checkpoint, EvalOutput, FitSpec, Outcome, RunDir, RunState};
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
                check_cuda_device(idx)?;
                Ok(Device::cuda(idx))
            }
            #[cfg(not(feature = "cuda"))]
            bail!("--device {s}: this binary was built without CUDA; rebuild with `cargo build --release --features cuda`")
        }
        s => bail!("unknown device `{s}`: expected cpu, cuda or cuda:N"),
    }
}

/// Checks that the NVIDIA driver loads and has device `idx` before burn touches the GPU: there a
/// missing driver is a panic in another thread, not an error.
#[cfg(feature = "cuda")]
fn check_cuda_device(idx: usize) -> Result<()> {
    use anyhow::ensure;
    use std::ffi::CStr;
    // SAFETY: dlopen/dlsym get valid C strings; cuInit and cuDeviceGetCount have these C
    // signatures in every CUDA driver API version; the library stays loaded (no dlclose).
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if lib.is_null() {
            let why = CStr::from_ptr(libc::dlerror())
                .to_string_lossy()
                .into_owned();
            bail!("--device cuda: the NVIDIA driver library could not be loaded ({why}); this machine needs an NVIDIA GPU and its driver");
        }
        let (init, count) = (
            libc::dlsym(lib, c"cuInit".as_ptr()),
            libc::dlsym(lib, c"cuDeviceGetCount".as_ptr()),
        );
        ensure!(
            !init.is_null() && !count.is_null(),
            "--device cuda: libcuda.so.1 has no cuInit/cuDeviceGetCount"
        );
        let init: extern "C" fn(u32) -> i32 = std::mem::transmute(init);
        let count: extern "C" fn(*mut i32) -> i32 = std::mem::transmute(count);
        let rc = init(0);
        ensure!(
            rc == 0,
            "--device cuda: the CUDA driver did not initialize (cuInit error {rc}): no usable GPU?"
        );
        let mut n = 0i32;
        let rc = count(&mut n);
        ensure!(
            rc == 0,
            "--device cuda: cuDeviceGetCount failed (CUDA error {rc})"
        );
        ensure!(
            idx < n.max(0) as usize,
            "--device cuda:{idx}: this machine has {n} CUDA device(s)"
        );
    }
    Ok(())
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
    /// `--matmul-precision` of the run (fp32 unless asked otherwise).
    pub matmul_precision: crate::nn::MatmulPrecision,
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

/// What the pipeline needs from an image method besides its loss: the representation used
/// downstream and the embedding the collapse diagnostics look at.
pub trait ImageModel: Objective<Batch = Vec<Tensor<4>>> {
    /// h = f(x) (μ_z for the VAE).
    fn representation(&self) -> Representation;
    /// Where collapse shows first: the projection z = g(f(x)) (μ_z for the VAE).
    fn diagnostic_embedding(&self, x: Tensor<4>) -> Tensor<2>;
    /// Augmented views per image the loss takes.
    fn views(&self) -> usize;
    /// Position step-dependent state after loading a checkpoint (the VAE's noise stream).
    fn at_step(self, _step: usize) -> Self {
        self
    }
}

impl ImageModel for SimClr {
    fn representation(&self) -> Representation {
        Representation::Encoder(self.encoder.clone())
    }
    fn diagnostic_embedding(&self, x: Tensor<4>) -> Tensor<2> {
        self.projector.forward(self.encoder.forward(x))
    }
    fn views(&self) -> usize {
        2
    }
}

impl ImageModel for Byol {
    fn representation(&self) -> Representation {
        Representation::Encoder(self.encoder.clone())
    }
    fn diagnostic_embedding(&self, x: Tensor<4>) -> Tensor<2> {
        self.projector.forward(self.encoder.forward(x))
    }
    fn views(&self) -> usize {
        2
    }
}

impl ImageModel for Vae {
    fn representation(&self) -> Representation {
        Representation::Vae(self.encoder.clone())
    }
    fn diagnostic_embedding(&self, x: Tensor<4>) -> Tensor<2> {
        self.represent(x)
    }
    fn views(&self) -> usize {
        1
    }
    fn at_step(self, step: usize) -> Self {
        Vae::at_step(self, step)
    }
}

/// SimCLR as a config describes it, seeded.
pub fn build_simclr(cfg: &PretrainConfig, channels: usize, device: &Device) -> SimClr {
    crate::nn::init::init_seeded(
        SimClr::new(&cfg.encoder, &cfg.simclr, channels, device),
        cfg.seed,
    )
}

/// BYOL as a config describes it, seeded (target = online at the start).
pub fn build_byol(cfg: &PretrainConfig, channels: usize, device: &Device) -> Byol {
    Byol::new_seeded(&cfg.encoder, &cfg.byol, channels, cfg.seed, device)
}

/// The VAE as a config describes it for images of `ds`'s shape, seeded.
pub fn build_vae(cfg: &PretrainConfig, ds: &ImageDataset, device: &Device) -> Vae {
    Vae::new_seeded(&cfg.vae, ds.channels, ds.height, ds.width, cfg.seed, device)
}

/// The representation of a config's method at its (seeded) random initialization.
pub fn random_representation(
    cfg: &PretrainConfig,
    ds: &ImageDataset,
    device: &Device,
) -> Representation {
    match cfg.method.as_str() {
        "byol" => build_byol(cfg, ds.channels, device).representation(),
        "vae" => build_vae(cfg, ds, device).representation(),
        _ => build_simclr(cfg, ds.channels, device).representation(),
    }
}

/// Pretrains a new run in `out`.
pub fn pretrain(cfg: &PretrainConfig, out: &Path, opts: &RunOptions) -> Result<PretrainReport> {
    cfg.validate()?;
    let splits = load_data(&cfg.data, cfg)?;
    let run = train::new_run_dir(out)?;
    checkpoint::write_atomic(&run.config(), cfg.to_toml()?.as_bytes())?;
    run_pretraining(cfg, &run, splits, opts, false)
}

/// Continues the run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<PretrainReport> {
    let run = RunDir(dir.to_path_buf());
    let cfg = PretrainConfig::load(&run.config(), &[])?;
    let splits = load_data(&cfg.data, &cfg)?;
    run_pretraining(&cfg, &run, splits, opts, true)
}

fn run_pretraining(
    cfg: &PretrainConfig,
    run: &RunDir,
    splits: Splits,
    opts: &RunOptions,
    resume: bool,
) -> Result<PretrainReport> {
    let device = opts.device.clone().autodiff();
    match cfg.method.as_str() {
        "simclr" => {
            let model = build_simclr(cfg, splits.train.channels, &device);
            run_views(cfg, run, splits, opts, resume, model)
        }
        "byol" => {
            let model = build_byol(cfg, splits.train.channels, &device);
            run_views(cfg, run, splits, opts, resume, model)
        }
        "vae" => {
            let model = build_vae(cfg, &splits.train, &device);
            run_views(cfg, run, splits, opts, resume, model)
        }
        m => bail!("unknown method `{m}`"),
    }
}

fn run_views<M: ImageModel>(
    cfg: &PretrainConfig,
    run: &RunDir,
    splits: Splits,
    opts: &RunOptions,
    resume: bool,
    model: M,
) -> Result<PretrainReport> {
    let device = opts.device.clone().autodiff();
    let train_set = &splits.train;
    let hw = input_hw(train_set);
    let n_images = train_set.len();
    let batch = cfg.train.batch_size;
    let views = model.views();
    if batch < 2 && cfg.method != "vae" {
        bail!("batch_size {batch}: contrastive and BYOL training need at least 2 images per batch (negatives, BatchNorm)");
    }
    if n_images < 2 {
        bail!(
            "dataset `{}` has {n_images} image(s): at least 2 are needed",
            cfg.data
        );
    }
    let batch = batch.min(n_images).max(1);
    let mut augs = vec![cfg.augment.clone()];
    if views > 1 {
        augs.push(cfg.augment2.clone().unwrap_or_else(|| cfg.augment.clone()));
    }
    let loader = ViewLoader::new(Arc::new(train_set.clone()), augs, batch, hw, cfg.seed, true)?;
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
        (m.at_step(s.step), o, s)
    } else {
        let total = match cfg.train.minutes {
            Some(minutes) => calibrate_steps(&model, &loader, &device, minutes)?,
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
    let hook = if cfg.diagnostics {
        let d = Diagnostics::new(cfg, &splits, &loader, &opts.device)?;
        let stop_on_collapse = cfg.stop_on_collapse;
        // Early on, BatchNorm running statistics are still near their initial values and every
        // embedding looks collapsed in inference mode: no alarm before warmup and 10% of training.
        let warmup = (cfg.train.warmup_epochs * spe as f64).ceil() as usize;
        let quiet_until = warmup.max(total / 10);
        let hook: train::EvalHook<'_, M> = Box::new(move |m: &M, step| {
            d.run(
                m,
                stop_on_collapse && step > quiet_until,
                step > quiet_until,
            )
        });
        Some(hook)
    } else {
        None
    };
    let (_model, state, outcome) = train::fit(model, opt, state, &spec, batches, hook)?;
    Ok(PretrainReport {
        run_dir: run.0.clone(),
        steps: state.step,
        total_steps: state.total_steps,
        final_loss: state.last_loss,
        train_seconds: state.train_seconds,
        interrupted: outcome == Outcome::Interrupted,
        matmul_precision: crate::nn::matmul_precision(),
    })
}

/// A fixed held-out batch (images and two views of each) and, when labels exist, small
/// train/test subsets for online kNN accuracy.
struct Diagnostics {
    device: Device,
    images: Tensor<4>,
    view1: Tensor<4>,
    view2: Tensor<4>,
    knn: Option<(Tensor<4>, Vec<u32>, Tensor<4>, Vec<u32>, usize)>,
}

impl Diagnostics {
    fn new(
        cfg: &PretrainConfig,
        splits: &Splits,
        loader: &ViewLoader,
        device: &Device,
    ) -> Result<Self> {
        let device = device.clone().inner();
        let ds = &splits.train;
        let n = ds.len().min(256);
        // Every (len/n)-th image: fixed, spread over the dataset, independent of training order.
        let idx: Vec<usize> = (0..n).map(|i| i * ds.len() / n).collect();
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let to_tensor = |pix: Vec<f32>, rows: usize| {
            Tensor::<4>::from_data(TensorData::new(pix, [rows, c, h, w]), &device)
        };
        let images = to_tensor(idx.iter().flat_map(|&i| ds.image(i).to_vec()).collect(), n);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xd1a6);
        let aug2 = cfg.augment2.clone().unwrap_or_else(|| cfg.augment.clone());
        let (mut v1, mut v2) = (vec![], vec![]);
        for &i in &idx {
            v1.extend(augment_image(
                ds.image(i),
                c,
                h,
                w,
                h,
                w,
                &cfg.augment,
                &mut rng,
            ));
            v2.extend(augment_image(ds.image(i), c, h, w, h, w, &aug2, &mut rng));
        }
        let _ = loader;
        let knn = match (&ds.labels, &splits.test) {
            (Some(train_labels), Some(test)) if test.labels.is_some() => {
                let ntr = ds.len().min(2000);
                let tr_idx: Vec<usize> = (0..ntr).map(|i| i * ds.len() / ntr).collect();
                let nte = test.len().min(1000);
                let te_idx: Vec<usize> = (0..nte).map(|i| i * test.len() / nte).collect();
                let test_labels = test
                    .labels
                    .as_ref()
                    .map(|l| te_idx.iter().map(|&i| l[i]).collect())
                    .unwrap_or_default();
                Some((
                    to_tensor(
                        tr_idx.iter().flat_map(|&i| ds.image(i).to_vec()).collect(),
                        ntr,
                    ),
                    tr_idx.iter().map(|&i| train_labels[i]).collect(),
                    to_tensor(
                        te_idx
                            .iter()
                            .flat_map(|&i| test.image(i).to_vec())
                            .collect(),
                        nte,
                    ),
                    test_labels,
                    ds.num_classes().max(test.num_classes()),
                ))
            }
            _ => None,
        };
        Ok(Self {
            images,
            view1: to_tensor(v1, n),
            view2: to_tensor(v2, n),
            knn,
            device,
        })
    }

    fn run<M: ImageModel>(
        &self,
        model: &M,
        stop_on_collapse: bool,
        alarm: bool,
    ) -> Result<EvalOutput> {
        let m = model.valid();
        let rows = |t: Tensor<2>| -> (Vec<f32>, usize) {
            let d = t.dims()[1];
            (
                t.into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap_or_default(),
                d,
            )
        };
        let (z, d) = rows(m.diagnostic_embedding(self.images.clone()));
        let (z1, _) = rows(m.diagnostic_embedding(self.view1.clone()));
        let (z2, _) = rows(m.diagnostic_embedding(self.view2.clone()));
        let r = CollapseReport::compute(&z, d, Some((&z1, &z2)));
        let mut values = vec![
            ("collapse_std".to_string(), r.std),
            ("effective_rank".to_string(), r.effective_rank),
            ("uniformity".to_string(), r.uniformity),
        ];
        if let Some(a) = r.alignment {
            values.push(("alignment".to_string(), a));
        }
        if let Some((xtr, ytr, xte, yte, classes)) = &self.knn {
            let rep = m.representation();
            let (htr, dh) = rows(rep.forward(xtr.clone()));
            let (hte, _) = rows(rep.forward(xte.clone()));
            let pred = crate::eval::knn_predict(
                &htr,
                ytr,
                ytr.len(),
                &hte,
                yte.len(),
                dh,
                *classes,
                20,
                0.07,
            )?;
            let acc = pred.iter().zip(yte).filter(|(p, y)| p == y).count() as f64
                / yte.len().max(1) as f64;
            values.push(("knn_acc".to_string(), acc));
        }
        let _ = &self.device;
        let mut stop = None;
        if alarm && r.is_collapsed() {
            let alarms = r.alarms().join("; ");
            if stop_on_collapse {
                stop = Some(format!(
                    "representation collapsed ({alarms}); stopped by --stop-on-collapse"
                ));
            } else {
                eprintln!("warning: collapse alarm: {alarms}");
            }
        }
        Ok(EvalOutput { values, stop })
    }
}

/// Times a few forward/backward passes of the model (its clone shares parameters but the
/// optimizer never sees these gradients) to turn a minutes budget into a step count.
fn calibrate_steps<M: ImageModel>(
    model: &M,
    loader: &ViewLoader,
    device: &Device,
    minutes: f64,
) -> Result<usize> {
    let mut times = vec![];
    for step in 0..4 {
        let vb = loader.batch(step);
        let t0 = Instant::now();
        let views = vb
            .views
            .into_iter()
            .map(|v| Tensor::<4>::from_data(TensorData::new(v, [vb.n, vb.c, vb.h, vb.w]), device))
            .collect::<Vec<_>>();
        let loss = Objective::loss(model, views);
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
    pub encoder: Representation,
}

/// Loads the representation of a run folder (weights from model.safetensors, config from config.toml).
pub fn load_run(dir: &Path, device: &Device) -> Result<LoadedRun> {
    let run = RunDir(dir.to_path_buf());
    if !run.config().exists() {
        bail!(
            "{}: not a selfsup run folder (no config.toml)",
            dir.display()
        );
    }
    let method = crate::text_pipeline::run_method(dir)?;
    if crate::text_pipeline::TextPretrainConfig::is_text_method(&method) {
        bail!(
            "{}: a `{method}` (text) run; image evaluation needs an image run (simclr, byol, vae)",
            dir.display()
        );
    }
    let cfg = PretrainConfig::load(&run.config(), &[])?;
    let splits =
        load_data(&cfg.data, &cfg).context("loading the run's dataset (for its image shape)")?;
    let ds = &splits.train;
    let encoder = match cfg.method.as_str() {
        "simclr" => checkpoint::load_weights(
            build_simclr(&cfg, ds.channels, device),
            &run.weights(),
            false,
        )?
        .representation(),
        "byol" => checkpoint::load_weights(
            Byol::new(&cfg.encoder, &cfg.byol, ds.channels, device),
            &run.weights(),
            false,
        )?
        .representation(),
        "vae" => checkpoint::load_weights(build_vae(&cfg, ds, device), &run.weights(), false)?
            .representation(),
        m => bail!("{}: unknown method `{m}`", run.config().display()),
    };
    Ok(LoadedRun { cfg, encoder })
}

/// Loads a VAE run (for sampling, reconstructions and traversals).
pub fn load_vae(dir: &Path, device: &Device) -> Result<(PretrainConfig, Vae, ImageDataset)> {
    let run = RunDir(dir.to_path_buf());
    let method = crate::text_pipeline::run_method(dir)?;
    if method != "vae" {
        bail!(
            "{}: a `{method}` run, not a VAE run (pretrain one with --method vae)",
            dir.display()
        );
    }
    let cfg = PretrainConfig::load(&run.config(), &[])?;
    let splits = load_data(&cfg.data, &cfg)?;
    let vae = checkpoint::load_weights(
        build_vae(&cfg, &splits.train, device),
        &run.weights(),
        false,
    )?;
    Ok((cfg, vae, splits.test.unwrap_or(splits.train)))
}

/// Representations of every image, [n, d] row-major, in inference mode (BatchNorm running
/// statistics), without augmentation, at the size the images were loaded.
pub fn embed(
    rep: &Representation,
    ds: &ImageDataset,
    hw: (usize, usize),
    device: &Device,
    batch: usize,
) -> Vec<f32> {
    // Grid 1 (global pooling) cannot fail.
    embed_grid(rep, ds, hw, device, batch, 1).unwrap_or_default()
}

/// [`embed`] with the last feature map pooled onto a `grid × grid` layout
/// ([`Representation::forward_grid`]).
pub fn embed_grid(
    rep: &Representation,
    ds: &ImageDataset,
    hw: (usize, usize),
    device: &Device,
    batch: usize,
    grid: usize,
) -> Result<Vec<f32>> {
    let rep = rep.valid();
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
        out.extend(
            rep.forward_grid(x, grid)?
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default(),
        );
    }
    Ok(out)
}
