//! The `selfsup` command: clap commands that call the library, nothing more.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rand::SeedableRng;
use selfsup::config::{parse_set, PretrainConfig};
use selfsup::data::augment::{augment_image, AugmentConfig};
use selfsup::eval::{EvalConfig, LabelBudget};
use selfsup::experiment::{self, DemoOptions};
use selfsup::pipeline::{self, RunOptions};
use selfsup::text_pipeline::{self, TextPretrainConfig};

/// Large tensors on transparent huge pages once `keep_freed_memory` has run (see its docs).
#[global_allocator]
static ALLOC: selfsup::train::alloc::HugePageAlloc = selfsup::train::alloc::HugePageAlloc;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "selfsup",
    version,
    about = "Self-supervised learning: pretrain on unlabeled images, then evaluate with few labels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Precision of the CPU kernels' matrix products (linear layers, convolutions): fp32, or bf16
    /// inputs with fp32 accumulation (needs AVX512_BF16; ≈ 1.4× faster GPT training steps; losses
    /// drift ~1e-3 relative from fp32's). Like PyTorch's `mkldnn.matmul.fp32_precision = "bf16"`.
    #[arg(long, global = true, default_value = "fp32", value_name = "fp32|bf16")]
    matmul_precision: selfsup::nn::MatmulPrecision,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: SimCLR on the embedded digits, then a label-efficiency table (no setup, no network).
    Demo(DemoArgs),
    /// Pretrain an encoder on unlabeled images (or continue a run with --resume).
    Pretrain(PretrainArgs),
    /// Linear probe on frozen, standardized features of a run's encoder.
    Probe(EvalArgs),
    /// kNN classification (cosine, temperature-weighted votes) on frozen features of a run's encoder.
    Knn(EvalArgs),
    /// Write a run's representations and labels as .npy files.
    Embed(EmbedArgs),
    /// Write a PNG grid of images and their augmented views, to look before training.
    Augment(AugmentArgs),
    /// Sentence embeddings (mean-pooled, L2-normalized) from a BERT folder such as all-MiniLM-L6-v2.
    EmbedText(EmbedTextArgs),
    /// In-context learning: few-shot evaluation of a language model (no gradient update).
    #[command(subcommand)]
    Icl(IclCommand),
    /// Experiments: collapse (Problem 1), label efficiency, scaling, ICL vs fine-tuning, text
    /// classification, in-context regression.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// VAE grids: samples from the prior, reconstructions, latent traversals.
    #[command(subcommand)]
    Vae(VaeCommand),
    /// Plot a run's metrics.jsonl (loss, lr, diagnostics, validation loss) as PNG and SVG.
    Plot(PlotArgs),
    /// Language models: sample from a GPT run.
    #[command(subcommand)]
    Lm(LmCommand),
}

#[derive(Args)]
struct EmbedTextArgs {
    #[command(flatten)]
    common: Common,
    /// Folder with model.safetensors, config.json and tokenizer.json (Hugging Face BERT layout).
    #[arg(long)]
    model: PathBuf,
    /// Text file, one sentence per line (empty lines are skipped).
    #[arg(long)]
    input: PathBuf,
    /// Output .npy of shape [sentences, dim].
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct PlotArgs {
    /// Run folder (writes RUN_DIR/plots/training.{png,svg}), or the `--json` file of
    /// `experiment label-efficiency` (re-draws label_efficiency.{png,svg} next to it).
    run: PathBuf,
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// SimCLR, SimCLR positives-only, BYOL, BYOL without predictor, BYOL without EMA: same data and
    /// budget; prints and plots the collapse diagnostics of each.
    Collapse(CollapseArgs),
    /// Pretrain each method (or reuse OUT/<method>), then linear probe, kNN and fine-tuning vs
    /// supervised from scratch and raw-pixel logistic regression at each label budget.
    LabelEfficiency(EfficiencyArgs),
    /// GPT runs over a grid of model sizes × token budgets; final validation loss of each, power
    /// laws L(N) and L(D), a log–log plot, scaling.csv.
    Scaling(ScalingArgs),
    /// For each k: k-shot prompting vs LoRA fine-tuning on the same k examples vs a linear probe
    /// on frozen features; accuracy and compute cost in one table, CSV and plot.
    IclVsFinetune(IclVsFinetuneArgs),
    /// Genre classification of Brown corpus passages with GPT/MLM run representations: linear
    /// probe and fine-tuning vs bag-of-words logistic regression and random init, per label budget.
    TextClassify(TextClassifyArgs),
    /// In-context linear regression (Garg et al. 2022): train a small transformer on fresh
    /// y = w·x tasks with a curriculum, then error vs k against least squares, 3-NN, averaging.
    IclRegression(IclRegressionArgs),
}

#[derive(Args)]
struct ScalingArgs {
    #[command(flatten)]
    common: Common,
    /// Text corpus: text:PATH, jsonl:PATH[:field], json:PATH[:field] (default: the Shakespeare
    /// corpus in the data cache, fetched with ../shared/data/get.sh shakespeare).
    #[arg(long)]
    data: Option<String>,
    /// byte, char, gpt2 or hf:tokenizer.json.
    #[arg(long, default_value = "char")]
    tokenizer: String,
    /// Model sizes: target non-embedding parameter counts (100k, 1.5M) or shapes LxD[xH].
    #[arg(long, default_value = "12k,50k,200k", value_delimiter = ',')]
    params: Vec<String>,
    /// Training-token budgets D = steps × batch × context (300k, 2.7M, 1e6).
    #[arg(long, default_value = "300k,900k,2.7M", value_delimiter = ',')]
    tokens: Vec<String>,
    #[arg(long, default_value_t = 64)]
    context: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate of every run (linear warmup over 5% of the steps, cosine to 0).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Batches of the fixed validation set (the first windows of the held-out split).
    #[arg(long, default_value_t = 64)]
    val_batches: usize,
    /// Run folders OUT/N<N>_D<D> (reused when finished), scaling.csv, scaling.{png,svg}.
    #[arg(long, default_value = "runs/scaling")]
    out: PathBuf,
}

#[derive(Args)]
struct IclVsFinetuneArgs {
    #[command(flatten)]
    common: Common,
    /// A Llama-architecture .gguf file (e.g. SmolLM2) or a selfsup GPT run folder.
    #[arg(long)]
    model: PathBuf,
    /// label-map, label-flip, reverse, add2, cldr-en-fr, freedict-en-fr, or task:PATH.jsonl
    #[arg(long, default_value = "label-map")]
    task: String,
    /// Numbers of labelled examples (each ≥ 1).
    #[arg(long, default_value = "1,2,4,8,16,32", value_delimiter = ',')]
    k: Vec<usize>,
    /// Held-out queries, drawn once with the seed (the same for every k, method and draw).
    #[arg(long, default_value_t = 100)]
    eval_size: usize,
    /// Seeded draws of the k examples (mean ± std over draws).
    #[arg(long, default_value_t = 1)]
    draws: usize,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA α (the update is scaled by α/r).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Fine-tuning optimizer steps per k.
    #[arg(long, default_value_t = 30)]
    ft_steps: usize,
    /// Fine-tuning sequences per step (at most k).
    #[arg(long, default_value_t = 8)]
    ft_batch: usize,
    /// Fine-tuning learning rate (AdamW, cosine decay to a tenth).
    #[arg(long, default_value_t = 2e-3)]
    ft_lr: f64,
    /// Folder for icl_vs_finetune.csv and the plot (.png, .svg).
    #[arg(long, default_value = "runs/icl-vs-finetune")]
    out: PathBuf,
}

#[derive(Args)]
struct TextClassifyArgs {
    #[command(flatten)]
    common: Common,
    /// GPT/MLM run folders (comma-separated); `minilm[:DIR]` adds the pretrained MiniLM sentence
    /// encoder as a frozen reference. None: bag of words only.
    #[arg(long, value_delimiter = ',')]
    model: Vec<String>,
    /// brown (the data cache, $SELFSUP_DATA/brown) or brown:DIR; your own labelled text:
    /// folder:DIR (DIR/{train,test}/<class>/*.txt) or jsonl:PATH ({"text","label","split"?}).
    #[arg(long, default_value = "brown")]
    data: String,
    /// Sentences per passage.
    #[arg(long, default_value_t = 3)]
    sentences: usize,
    /// Label budgets: N/class or P% (comma-separated).
    #[arg(
        long,
        default_value = "1/class,10/class,10%,100%",
        value_delimiter = ','
    )]
    labels: Vec<String>,
    #[arg(long, default_value_t = 3)]
    draws: usize,
    /// Bag-of-words vocabulary: the words in most train passages.
    #[arg(long, default_value_t = 2000)]
    bow_vocab: usize,
    /// L2 penalty of the linear probe (on the mean cross-entropy, standardized features).
    #[arg(long, default_value_t = 1e-2)]
    probe_l2: f64,
    /// Fine-tuning optimizer steps per label draw (0: linear probe only).
    #[arg(long, default_value_t = 200)]
    finetune_steps: usize,
    /// Fine-tuning batch size.
    #[arg(long, default_value_t = 32)]
    finetune_batch: usize,
    /// Skip training each architecture from random initialisation with the same labels.
    #[arg(long)]
    no_scratch: bool,
    /// Write the train split's passages as DIR/<file>.txt (for `pretrain --data text:DIR`) and stop.
    #[arg(long)]
    export_train_text: Option<PathBuf>,
    /// table.csv (text_classify.csv) and plots (label_efficiency.{png,svg}).
    #[arg(long, default_value = "runs/text-classify")]
    out: PathBuf,
}

#[derive(Args)]
struct IclRegressionArgs {
    #[command(flatten)]
    common: Common,
    /// Dimension d of x.
    #[arg(long, default_value_t = 5)]
    dim: usize,
    /// Largest number of in-context examples k (sequences hold k + 1 pairs).
    #[arg(long, default_value_t = 20)]
    points: usize,
    /// Standard deviation σ of Gaussian noise on y (noisy linear regression; 0 = noiseless).
    /// Errors are then measured against the noisy y and ridge (λ = σ²) joins the baselines.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Optimizer steps (default 2000)…
    #[arg(long, conflicts_with = "minutes")]
    steps: Option<usize>,
    /// …or minutes of training (the step count is fixed from the speed of the first steps).
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Steps between curriculum increases (default: the curriculum ends halfway through training).
    #[arg(long)]
    curriculum_interval: Option<usize>,
    /// Fresh sequences for the final evaluation.
    #[arg(long, default_value_t = 2560)]
    eval_sequences: usize,
    /// Run folder (resumed if unfinished, reused if finished), table CSV and plots.
    #[arg(long, default_value = "runs/icl-regression")]
    out: PathBuf,
}

#[derive(Args)]
struct CollapseArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "digits")]
    data: String,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Encoder preset (tiny, convnet, resnet18, resnet10, resnet6[-wN]).
    #[arg(long, default_value = "tiny")]
    encoder: String,
    /// Folder for the five runs and the plots.
    #[arg(long, default_value = "runs/collapse")]
    out: PathBuf,
}

#[derive(Args)]
struct EfficiencyArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value = "digits")]
    data: String,
    /// Methods to pretrain (comma-separated): simclr, byol, vae.
    #[arg(long, default_value = "simclr,byol,vae", value_delimiter = ',')]
    methods: Vec<String>,
    /// Label budgets: N/class or P% (comma-separated).
    #[arg(
        long,
        default_value = "1/class,10/class,10%,100%",
        value_delimiter = ','
    )]
    labels: Vec<String>,
    #[arg(long, default_value_t = 3)]
    draws: usize,
    #[arg(long, default_value = "tiny")]
    encoder: String,
    /// Pretraining epochs per method…
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// …or minutes per method.
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Fine-tuning / from-scratch optimizer steps per label draw.
    #[arg(long, default_value_t = 500)]
    finetune_steps: usize,
    /// Frozen protocols: average-pool the encoder's last feature map onto an N×N grid (C·N²
    /// features; 1 = global average pooling, the representation h). VAE runs keep μ_z.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    pool_grid: u64,
    /// Run folders (OUT/<method>, reused when finished), table.csv, plots.
    #[arg(long, default_value = "runs/label-efficiency")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum VaeCommand {
    /// Decode samples z ~ N(0, I) into a grid.
    Sample(VaeArgs),
    /// Test images (top row of each pair) above their reconstructions.
    Reconstruct(VaeArgs),
    /// Vary one latent dimension at a time (rows) from -span to +span (columns) around a test image's μ.
    Traverse(VaeArgs),
}

#[derive(Args)]
struct VaeArgs {
    #[command(flatten)]
    common: Common,
    /// A VAE run folder.
    #[arg(long)]
    run: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Images (sample/reconstruct) or latent dimensions (traverse).
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// Traverse: steps per dimension and the span in standard deviations.
    #[arg(long, default_value_t = 9)]
    steps: usize,
    #[arg(long, default_value_t = 3.0)]
    span: f32,
    /// Pixel upscaling.
    #[arg(long, default_value_t = 4)]
    scale: usize,
}

#[derive(Subcommand)]
enum IclCommand {
    /// Accuracy vs number of in-context examples (k-shot), as in the GPT-3 paper's zero/one/few-shot view.
    Eval(IclEvalArgs),
}

#[derive(Args)]
struct IclEvalArgs {
    #[command(flatten)]
    common: Common,
    /// A Llama-architecture .gguf file (e.g. SmolLM2) or a selfsup GPT run folder.
    #[arg(long)]
    model: PathBuf,
    /// label-map, label-flip, reverse, add2, cldr-en-fr, freedict-en-fr, or task:PATH.jsonl
    #[arg(long)]
    task: String,
    /// Numbers of in-context examples.
    #[arg(long, default_value = "0,1,2,4,8", value_delimiter = ',')]
    shots: Vec<usize>,
    /// Evaluate at most this many queries (chosen with the seed; the same at every k).
    #[arg(long)]
    limit: Option<usize>,
    /// Draw the in-context examples balanced over classes.
    #[arg(long)]
    balanced: bool,
    /// Write every prompt, output and score as JSONL next to --json (or to samples.jsonl).
    #[arg(long)]
    log_samples: bool,
}

#[derive(Subcommand)]
enum LmCommand {
    /// Continue a prompt with a trained GPT (KV cache, temperature, top-k, top-p, stop strings).
    Sample(SampleArgs),
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    common: Common,
    /// A GPT run folder.
    #[arg(long)]
    run: PathBuf,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Recompute every position at each step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Args)]
struct Common {
    /// Seed for every random choice; the same seed gives the same numbers on the same machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute device: cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// Run folder for the demo's SimCLR pretraining (replaced if it exists).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Label draws per budget (mean ± std over draws).
    #[arg(long, default_value_t = 5)]
    draws: usize,
    /// Pretraining epochs (default: the tuned value).
    #[arg(long)]
    epochs: Option<usize>,
}

#[derive(Args)]
struct PretrainArgs {
    #[command(flatten)]
    common: Common,
    /// simclr (images), gpt or mlm (text)
    #[arg(long)]
    method: Option<String>,
    /// Images: digits, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, folder:DIR.
    /// Text: text:PATH (file or folder of .txt), jsonl:PATH[:field], json:PATH[:field]
    #[arg(long)]
    data: Option<String>,
    /// Text: key tokenizer: byte, char, gpt2 or hf:tokenizer.json.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Text: key context (tokens per sequence).
    #[arg(long)]
    context: Option<usize>,
    /// Text: key model.d_model.
    #[arg(long)]
    d_model: Option<usize>,
    /// Text: key model.n_layers.
    #[arg(long)]
    n_layers: Option<usize>,
    /// Text: key model.n_heads.
    #[arg(long)]
    n_heads: Option<usize>,
    /// Text: key model.dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Key train.steps: a budget in optimizer steps (overrides epochs).
    #[arg(long)]
    steps: Option<usize>,
    /// Key train.grad_accum: micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Key train.eval_every: steps between evaluations (validation loss).
    #[arg(long)]
    eval_every: Option<usize>,
    /// New run folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long, conflicts_with_all = ["out", "config", "method", "data"])]
    resume: Option<PathBuf>,
    /// A config.toml (same keys as a run's config.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Encoder preset: tiny, convnet, resnet18, resnet10, resnet6 (add -wN for base width N). Key: encoder.
    #[arg(long)]
    encoder: Option<String>,
    /// Key train.epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Key train.minutes: a wall-time budget instead of epochs.
    #[arg(long)]
    minutes: Option<f64>,
    /// Key train.batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Key train.lr.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Key train.optimizer: adamw, sgd or lars.
    #[arg(long)]
    optimizer: Option<String>,
    /// Key train.weight_decay.
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Key train.warmup_epochs.
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Key train.grad_clip (global norm).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Key simclr.temperature.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// Key image_size: resize images to this square side when loading (folders default to 32).
    #[arg(long)]
    image_size: Option<usize>,
    /// Key skip_bad_images: skip undecodable images (with a printed count) instead of failing.
    #[arg(long)]
    skip_bad_images: bool,
    /// BYOL ablation: no predictor (key byol.predictor = false).
    #[arg(long)]
    no_predictor: bool,
    /// BYOL: base EMA decay τ (key byol.tau_base); 0 = no EMA, the target is the online network.
    #[arg(long, allow_negative_numbers = true)]
    ema_tau: Option<f64>,
    /// VAE: weight of the KL term (key vae.beta).
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// VAE: latent size (key vae.latent_dim).
    #[arg(long)]
    latent_dim: Option<usize>,
    /// End the run with a checkpoint when the collapse diagnostics fire (key stop_on_collapse).
    #[arg(long)]
    stop_on_collapse: bool,
    /// Set any config key: --set augment.crop_scale=[0.5,1.0] (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    common: Common,
    /// Run folder of a pretrained encoder; or `pixels` for raw pixels, `random` for a random encoder
    /// (needs --data).
    #[arg(long)]
    run: String,
    /// Dataset with labels and a test split (default: the run's dataset).
    #[arg(long)]
    data: Option<String>,
    /// Label budgets: N/class or P% (comma-separated).
    #[arg(long, default_value = "1/class,10/class,100%", value_delimiter = ',')]
    labels: Vec<String>,
    /// Label draws per budget.
    #[arg(long, default_value_t = 5)]
    draws: usize,
    /// kNN: neighbours.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// kNN: vote temperature.
    #[arg(long, default_value_t = 0.07)]
    knn_temperature: f64,
    /// Linear probe: L2 penalty on the mean cross-entropy.
    #[arg(long)]
    l2: Option<f64>,
    /// With --run pixels/random: resize images to this square side when loading.
    #[arg(long)]
    image_size: Option<usize>,
    /// Frozen protocols: average-pool the encoder's last feature map onto an N×N grid (C·N²
    /// features; 1 = global average pooling, the representation h). Not for VAE runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    pool_grid: u64,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    common: Common,
    /// Run folder.
    #[arg(long)]
    run: PathBuf,
    /// Dataset (default: the run's).
    #[arg(long)]
    data: Option<String>,
    /// Output folder: writes {train,test}_embeddings.npy and {train,test}_labels.npy.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct AugmentArgs {
    #[command(flatten)]
    common: Common,
    /// Dataset spec.
    #[arg(long, default_value = "digits")]
    data: String,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Number of images (rows).
    #[arg(long, default_value_t = 8)]
    images: usize,
    /// Augmented views per image (columns after the original).
    #[arg(long, default_value_t = 6)]
    views: usize,
    /// Resize images to this square side when loading (default: the dataset's; folders 32).
    #[arg(long)]
    image_size: Option<usize>,
    /// A run's config.toml whose [augment] table to use (default: the SimCLR recipe).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set an augmentation key: --set crop_scale=[0.5,1.0] (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Pixel upscaling of the grid.
    #[arg(long, default_value_t = 8)]
    scale: usize,
}

fn main() {
    selfsup::train::alloc::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    selfsup::nn::set_matmul_precision(cli.matmul_precision)?;
    if cli.matmul_precision != selfsup::nn::MatmulPrecision::Fp32 {
        eprintln!(
            "matmul precision: {} (inputs rounded to bf16, fp32 accumulation)",
            cli.matmul_precision
        );
    }
    match cli.command {
        Command::Demo(a) => demo(a),
        Command::Pretrain(a) => pretrain(a),
        Command::Probe(a) => evaluate(a, true),
        Command::Knn(a) => evaluate(a, false),
        Command::Embed(a) => embed(a),
        Command::Augment(a) => augment(a),
        Command::Lm(LmCommand::Sample(a)) => sample(a),
        Command::EmbedText(a) => embed_text(a),
        Command::Vae(c) => vae(c),
        Command::Plot(a) => {
            let plots = if a.run.is_file() && a.run.extension().is_some_and(|e| e == "json") {
                experiment::replot_efficiency(&a.run)?
            } else {
                selfsup::report::plot::plot_run(&a.run)?
            };
            for p in plots {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Command::Experiment(ExperimentCommand::Collapse(a)) => experiment_collapse(a),
        Command::Experiment(ExperimentCommand::LabelEfficiency(a)) => experiment_efficiency(a),
        Command::Experiment(ExperimentCommand::Scaling(a)) => experiment_scaling(a),
        Command::Experiment(ExperimentCommand::IclVsFinetune(a)) => experiment_icl_vs_finetune(a),
        Command::Experiment(ExperimentCommand::TextClassify(a)) => experiment_text_classify(a),
        Command::Experiment(ExperimentCommand::IclRegression(a)) => experiment_icl_regression(a),
        Command::Icl(IclCommand::Eval(a)) => icl_eval(a),
    }
}

fn options(c: &Common) -> Result<RunOptions> {
    Ok(RunOptions {
        device: pipeline::parse_device(&c.device)?,
        progress: true,
        stop_at_step: None,
    })
}

fn write_json<T: serde::Serialize>(path: &Option<PathBuf>, value: &T) -> Result<()> {
    if let Some(p) = path {
        let text = serde_json::to_string_pretty(value)?;
        selfsup::train::checkpoint::write_atomic(p, text.as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn demo(a: DemoArgs) -> Result<()> {
    let opts = DemoOptions {
        seed: a.common.seed,
        out: a.out,
        draws: a.draws,
        epochs: a.epochs,
        run: options(&a.common)?,
    };
    eprintln!("selfsup demo: SimCLR on the embedded UCI digits (8×8), then linear probe and kNN with few labels");
    let report = experiment::demo(&opts)?;
    println!(
        "SimCLR pretraining: {} steps in {:.0} s, final loss {:.3}; {} train / {} test images; mean ± std over {} label draws\n",
        report.pretrain.steps,
        report.pretrain.train_seconds,
        report.pretrain.final_loss.unwrap_or(f64::NAN),
        report.train_images,
        report.test_images,
        report.draws
    );
    print!("{}", experiment::format_table(&report.rows));
    write_json(&a.common.json, &report)
}

fn pretrain(a: PretrainArgs) -> Result<()> {
    let opts = options(&a.common)?;
    if let Some(dir) = &a.resume {
        let report = if TextPretrainConfig::is_text_method(&text_pipeline::run_method(dir)?) {
            text_pipeline::resume_text(dir, &opts)?
        } else {
            pipeline::resume(dir, &opts)?
        };
        print_pretrain(&report);
        return write_json(&a.common.json, &report);
    }
    let out = a
        .out
        .clone()
        .context("--out RUN_DIR is required for a new run (or --resume RUN_DIR)")?;
    let mut sets: Vec<(String, String)> = vec![];
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            sets.push((k.to_string(), v));
        }
    };
    put("method", a.method.as_ref().map(|m| format!("\"{m}\"")));
    put("data", a.data.as_ref().map(|d| format!("\"{d}\"")));
    put("seed", Some(a.common.seed.to_string()));
    put("train.epochs", a.epochs.map(|v| v.to_string()));
    put("train.minutes", a.minutes.map(|v| v.to_string()));
    put("train.batch_size", a.batch_size.map(|v| v.to_string()));
    put("train.lr", a.lr.map(|v| format!("{v:?}")));
    put(
        "train.optimizer",
        a.optimizer.as_ref().map(|v| format!("\"{v}\"")),
    );
    put(
        "train.weight_decay",
        a.weight_decay.map(|v| format!("{v:?}")),
    );
    put(
        "train.warmup_epochs",
        a.warmup_epochs.map(|v| format!("{v:?}")),
    );
    put("train.grad_clip", a.grad_clip.map(|v| format!("{v:?}")));
    put(
        "simclr.temperature",
        a.temperature.map(|v| format!("{v:?}")),
    );
    put("image_size", a.image_size.map(|v| v.to_string()));
    put(
        "skip_bad_images",
        a.skip_bad_images.then(|| "true".to_string()),
    );
    put(
        "tokenizer",
        a.tokenizer.as_ref().map(|v| format!("\"{v}\"")),
    );
    put("context", a.context.map(|v| v.to_string()));
    put("model.d_model", a.d_model.map(|v| v.to_string()));
    put("model.n_layers", a.n_layers.map(|v| v.to_string()));
    put("model.n_heads", a.n_heads.map(|v| v.to_string()));
    put("model.dropout", a.dropout.map(|v| format!("{v:?}")));
    put("train.steps", a.steps.map(|v| v.to_string()));
    put("train.grad_accum", a.grad_accum.map(|v| v.to_string()));
    put("train.eval_every", a.eval_every.map(|v| v.to_string()));
    put(
        "byol.predictor",
        a.no_predictor.then(|| "false".to_string()),
    );
    match a.ema_tau {
        Some(t) if t == 0.0 => put("byol.ema", Some("false".into())),
        Some(t) => put("byol.tau_base", Some(format!("{t:?}"))),
        None => {}
    }
    put("vae.beta", a.beta.map(|v| format!("{v:?}")));
    put("vae.latent_dim", a.latent_dim.map(|v| v.to_string()));
    put(
        "stop_on_collapse",
        a.stop_on_collapse.then(|| "true".to_string()),
    );
    for s in &a.set {
        sets.push(parse_set(s)?);
    }
    let method = match (&a.method, &a.config) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let v: toml::Value =
                toml::from_str(&text).with_context(|| format!("{}: invalid TOML", p.display()))?;
            v.get("method")
                .and_then(|m| m.as_str())
                .unwrap_or("simclr")
                .to_string()
        }
        (None, None) => "simclr".into(),
    };
    if TextPretrainConfig::is_text_method(&method) {
        let cfg = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                TextPretrainConfig::from_toml(&text, &p.display().to_string(), &sets)?
            }
            None => {
                let data = a
                    .data
                    .clone()
                    .context("--data SPEC is required (or --config FILE)")?;
                TextPretrainConfig::new(&method, &data).with_overrides(&sets)?
            }
        };
        let report = text_pipeline::pretrain_text(&cfg, &out, &opts)?;
        print_pretrain(&report);
        return write_json(&a.common.json, &report);
    }
    let mut cfg = match &a.config {
        Some(p) => PretrainConfig::load(p, &sets)?,
        None => {
            let method = a.method.clone().unwrap_or_else(|| "simclr".into());
            let data = a
                .data
                .clone()
                .context("--data SPEC is required (or --config FILE)")?;
            PretrainConfig::new(&method, &data).with_overrides(&sets)?
        }
    };
    if let Some(e) = &a.encoder {
        cfg.encoder = selfsup::nn::EncoderConfig::preset(e)?;
    }
    cfg.validate()?;
    let report = pipeline::pretrain(&cfg, &out, &opts)?;
    print_pretrain(&report);
    write_json(&a.common.json, &report)
}

fn print_pretrain(r: &pipeline::PretrainReport) {
    let status = if r.interrupted {
        "interrupted (resume with --resume)"
    } else {
        "done"
    };
    println!(
        "{}: {status}: {}/{} steps, final loss {:.4}, {:.0} s of training",
        r.run_dir.display(),
        r.steps,
        r.total_steps,
        r.final_loss.unwrap_or(f64::NAN),
        r.train_seconds
    );
}

fn evaluate(a: EvalArgs, linear: bool) -> Result<()> {
    let opts = options(&a.common)?;
    let budgets: Vec<LabelBudget> = a.labels.iter().map(|b| b.parse()).collect::<Result<_>>()?;
    // The encoder (None for raw pixels) and the config whose loading options the data uses.
    let (name, encoder, cfg) = match a.run.as_str() {
        "pixels" | "random" => {
            let data = a
                .data
                .clone()
                .context("--run pixels/random needs --data SPEC")?;
            let mut cfg = PretrainConfig::new("simclr", &data);
            cfg.seed = a.common.seed;
            cfg.image_size = a.image_size;
            (a.run.clone(), None, cfg)
        }
        dir => {
            let run = pipeline::load_run(Path::new(dir), &opts.device)?;
            (dir.to_string(), Some(run.encoder), run.cfg)
        }
    };
    let data = a.data.clone().unwrap_or(cfg.data.clone());
    let splits = pipeline::load_data(&data, &cfg)?;
    let test = splits
        .test
        .with_context(|| format!("dataset `{data}` has no test split to evaluate on"))?;
    let train = splits.train;
    let hw = pipeline::input_hw(&train);
    let grid = a.pool_grid as usize;
    let features = match (name.as_str(), encoder) {
        ("pixels", _) => experiment::pixel_features(&train, &test),
        (_, Some(enc)) => {
            experiment::encoder_features(&name, &enc, &train, &test, hw, grid, &opts)?
        }
        (_, None) => {
            let enc = pipeline::random_representation(&cfg, &train, &opts.device);
            experiment::encoder_features("random", &enc, &train, &test, hw, grid, &opts)?
        }
    };
    let mut ecfg = EvalConfig {
        draws: a.draws,
        seed: a.common.seed,
        k: a.k,
        temperature: a.knn_temperature,
        ..Default::default()
    };
    if let Some(l2) = a.l2 {
        ecfg.probe.l2 = l2;
    }
    let rows = experiment::label_efficiency(&[features], &train, &test, &budgets, &ecfg)?;
    let title = if linear { "linear probe" } else { "kNN" };
    println!(
        "{title} test accuracy (%), mean ± std over {} label draws, {} test images",
        a.draws,
        test.len()
    );
    for r in &rows {
        let (m, s) = if linear {
            (r.linear_mean, r.linear_std)
        } else {
            (r.knn_mean, r.knn_std)
        };
        println!("  {:>10}  {:5.1} ± {:4.1}", r.budget, 100.0 * m, 100.0 * s);
    }
    let out: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (m, s, runs) =
                if linear { (r.linear_mean, r.linear_std, &r.linear_runs) } else { (r.knn_mean, r.knn_std, &r.knn_runs) };
            serde_json::json!({"features": r.features, "budget": r.budget, "method": title, "mean": m, "std": s, "runs": runs})
        })
        .collect();
    write_json(&a.common.json, &out)
}

fn embed(a: EmbedArgs) -> Result<()> {
    let opts = options(&a.common)?;
    let run = pipeline::load_run(&a.run, &opts.device)?;
    let data = a.data.clone().unwrap_or(run.cfg.data.clone());
    let splits = pipeline::load_data(&data, &run.cfg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let hw = pipeline::input_hw(&splits.train);
    let mut written = vec![];
    for (name, ds) in [
        ("train", Some(&splits.train)),
        ("test", splits.test.as_ref()),
    ] {
        let Some(ds) = ds else { continue };
        let h = pipeline::embed(&run.encoder, ds, hw, &opts.device, 256);
        let d = h.len() / ds.len().max(1);
        let p = a.out.join(format!("{name}_embeddings.npy"));
        selfsup::eval::write_npy_f32(&p, &h, &[ds.len(), d])?;
        written.push(p.display().to_string());
        if let Some(labels) = &ds.labels {
            let l: Vec<i64> = labels.iter().map(|&v| v as i64).collect();
            let p = a.out.join(format!("{name}_labels.npy"));
            selfsup::eval::write_npy_i64(&p, &l, &[l.len()])?;
            written.push(p.display().to_string());
        }
        println!("{name}: {} × {d} representations", ds.len());
    }
    for w in &written {
        println!("wrote {w}");
    }
    write_json(&a.common.json, &serde_json::json!({ "files": written }))
}

fn augment(a: AugmentArgs) -> Result<()> {
    let mut load_cfg = PretrainConfig::new("simclr", &a.data);
    load_cfg.image_size = a.image_size;
    let splits = pipeline::load_data(&a.data, &load_cfg)?;
    let ds = splits.train;
    if ds.is_empty() {
        bail!("dataset `{}` is empty", a.data);
    }
    let mut cfg = match &a.config {
        Some(p) => PretrainConfig::load(p, &[])?.augment,
        None => AugmentConfig::simclr(),
    };
    if !a.set.is_empty() {
        let mut value = toml::Value::try_from(&cfg)?;
        for s in &a.set {
            let (k, v) = parse_set(s)?;
            selfsup::config::set_key(&mut value, &k, &v)?;
        }
        cfg = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("--set: {}", e.message()))?;
    }
    let (oh, ow) = (ds.height, ds.width);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.common.seed);
    let mut cells: Vec<Vec<f32>> = vec![];
    let identity = AugmentConfig::none();
    for i in 0..a.images.min(ds.len()) {
        let idx = i * ds.len() / a.images.min(ds.len());
        let img = ds.image(idx);
        cells.push(augment_image(
            img,
            ds.channels,
            ds.height,
            ds.width,
            oh,
            ow,
            &identity,
            &mut rng,
        ));
        for _ in 0..a.views {
            cells.push(augment_image(
                img,
                ds.channels,
                ds.height,
                ds.width,
                oh,
                ow,
                &cfg,
                &mut rng,
            ));
        }
    }
    let refs: Vec<&[f32]> = cells.iter().map(|c| c.as_slice()).collect();
    selfsup::report::grid::save_grid(&a.out, &refs, ds.channels, oh, ow, a.views + 1, a.scale)?;
    println!(
        "wrote {} ({} images × (original + {} views))",
        a.out.display(),
        a.images.min(ds.len()),
        a.views
    );
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    let opts = options(&a.common)?;
    let (_cfg, tok, model) = text_pipeline::load_gpt(&a.run, &opts.device)?;
    let cfg = selfsup::lm::generate::SamplingConfig::new()
        .with_max_new_tokens(a.max_tokens)
        .with_temperature(a.temperature)
        .with_top_k(a.top_k)
        .with_top_p(a.top_p)
        .with_stop(a.stop.clone())
        .with_seed(a.common.seed)
        .with_kv_cache(!a.no_cache);
    let g = selfsup::lm::generate::generate(&model, tok.as_ref(), &a.prompt, &cfg)?;
    println!("{}{}", a.prompt, g.text);
    write_json(
        &a.common.json,
        &serde_json::json!({"prompt": a.prompt, "text": g.text, "ids": g.ids, "stop": format!("{:?}", g.stop)}),
    )
}

fn embed_text(a: EmbedTextArgs) -> Result<()> {
    let opts = options(&a.common)?;
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        bail!(
            "{}: no sentences (one per line expected)",
            a.input.display()
        );
    }
    let enc = selfsup::lm::sentence::SentenceEncoder::load(&a.model, &opts.device)?;
    let mut flat = Vec::new();
    let mut dim = 0;
    for chunk in lines.chunks(64) {
        for v in enc.embed(chunk)? {
            dim = v.len();
            flat.extend(v);
        }
    }
    selfsup::eval::write_npy_f32(&a.out, &flat, &[lines.len(), dim])?;
    println!(
        "wrote {} ({} sentences × {dim})",
        a.out.display(),
        lines.len()
    );
    write_json(
        &a.common.json,
        &serde_json::json!({"out": a.out, "sentences": lines.len(), "dim": dim}),
    )
}

/// A GGUF file or a GPT run folder as a language model.
fn load_language_model(
    path: &Path,
    device: &selfsup::Device,
) -> Result<Box<dyn selfsup::icl::model::LanguageModel>> {
    if path.is_dir() {
        let (_cfg, tok, gpt) = text_pipeline::load_gpt(path, device)?;
        let stamp = std::fs::metadata(path.join("model.safetensors"))
            .and_then(|m| m.modified())
            .ok();
        let name = format!("{}@{stamp:?}", path.display());
        Ok(Box::new(selfsup::icl::model::GptLm::new(name, gpt, tok)?))
    } else {
        Ok(Box::new(selfsup::icl::llama_lm::LlamaLm::load(
            path, device,
        )?))
    }
}

fn icl_eval(a: IclEvalArgs) -> Result<()> {
    let opts = options(&a.common)?;
    let task = selfsup::icl::tasks::task_by_name(&a.task)?;
    let model = load_language_model(&a.model, &opts.device)?;
    let base = a
        .common
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from("icl.json"));
    let cfg = selfsup::icl::eval::IclConfig {
        seed: a.common.seed,
        limit: a.limit,
        balanced: a.balanced,
        log_samples: a.log_samples.then(|| base.with_extension("samples.jsonl")),
        cache: Some(base.with_extension("calls.jsonl")),
    };
    let report = selfsup::icl::eval::evaluate(model.as_ref(), &task, &a.shots, &cfg)?;
    print!("{}", report.table());
    if let Some(p) = &a.common.json {
        report.write_json(p)?;
        report.write_csv(p.with_extension("csv"))?;
        for f in report.plot(&p.with_extension(""))? {
            eprintln!("wrote {}", f.display());
        }
        eprintln!(
            "wrote {} and {}",
            p.display(),
            p.with_extension("csv").display()
        );
    }
    Ok(())
}

fn vae(c: VaeCommand) -> Result<()> {
    let (kind, a) = match c {
        VaeCommand::Sample(a) => ("sample", a),
        VaeCommand::Reconstruct(a) => ("reconstruct", a),
        VaeCommand::Traverse(a) => ("traverse", a),
    };
    let opts = options(&a.common)?;
    let (_cfg, vae, test) = pipeline::load_vae(&a.run, &opts.device)?;
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    use selfsup::report::vae_grids;
    match kind {
        "sample" => vae_grids::save_samples(&a.out, &vae, a.n, a.n.min(8), a.common.seed, a.scale)?,
        "reconstruct" => {
            let k = a.n.min(test.len());
            let imgs: Vec<&[f32]> = (0..k).map(|i| test.image(i * test.len() / k)).collect();
            vae_grids::save_reconstructions(&a.out, &vae, &imgs, k.min(8), a.scale)?
        }
        _ => {
            let dims: Vec<usize> = (0..a.n.min(vae.encoder.latent)).collect();
            vae_grids::save_traversal(
                &a.out,
                &vae,
                test.image(0),
                &dims,
                a.steps.max(2),
                a.span,
                a.scale,
            )?
        }
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

fn experiment_collapse(a: CollapseArgs) -> Result<()> {
    let o = experiment::CollapseOptions {
        data: a.data,
        epochs: a.epochs,
        batch_size: a.batch_size,
        encoder: selfsup::nn::EncoderConfig::preset(&a.encoder)?,
        seed: a.common.seed,
        out: a.out.clone(),
        run: options(&a.common)?,
    };
    let rows = experiment::collapse_experiment(&o)?;
    println!("{}", experiment::format_collapse(&rows));
    for p in experiment::plot_collapse(&rows, &a.out)? {
        eprintln!("wrote {}", p.display());
    }
    write_json(&a.common.json, &rows)
}

fn experiment_efficiency(a: EfficiencyArgs) -> Result<()> {
    let budgets: Vec<LabelBudget> = a.labels.iter().map(|b| b.parse()).collect::<Result<_>>()?;
    let finetune = selfsup::eval::finetune::FinetuneConfig {
        steps: a.finetune_steps,
        ..Default::default()
    };
    let o = experiment::EfficiencyOptions {
        data: a.data,
        methods: a.methods,
        budgets,
        draws: a.draws,
        seed: a.common.seed,
        encoder: selfsup::nn::EncoderConfig::preset(&a.encoder)?,
        epochs: a.epochs,
        minutes: a.minutes,
        batch_size: a.batch_size,
        finetune,
        pool_grid: a.pool_grid as usize,
        out: a.out.clone(),
        run: options(&a.common)?,
    };
    let rows = experiment::label_efficiency_experiment(&o)?;
    println!("{}", experiment::format_efficiency(&rows));
    let csv = a.out.join("label_efficiency.csv");
    selfsup::train::checkpoint::write_atomic(&csv, experiment::efficiency_csv(&rows).as_bytes())?;
    eprintln!("wrote {}", csv.display());
    for p in experiment::plot_efficiency(&rows, &a.out)? {
        eprintln!("wrote {}", p.display());
    }
    write_json(&a.common.json, &rows)
}

fn experiment_scaling(a: ScalingArgs) -> Result<()> {
    use selfsup::scaling;
    let o = scaling::ScalingOptions {
        data: a.data.unwrap_or_else(scaling::default_data),
        tokenizer: a.tokenizer,
        params: a
            .params
            .iter()
            .map(|s| s.parse::<scaling::ParamSpec>().context("--params"))
            .collect::<Result<_>>()?,
        tokens: a
            .tokens
            .iter()
            .map(|s| scaling::parse_count(s).context("--tokens"))
            .collect::<Result<_>>()?,
        context: a.context,
        batch_size: a.batch_size,
        lr: a.lr,
        val_batches: a.val_batches,
        seed: a.common.seed,
        out: a.out.clone(),
        run: options(&a.common)?,
    };
    let report = scaling::scaling_experiment(&o)?;
    println!("{}", scaling::format_scaling(&report));
    let csv = a.out.join("scaling.csv");
    selfsup::train::checkpoint::write_atomic(&csv, scaling::scaling_csv(&report.rows).as_bytes())?;
    eprintln!("wrote {}", csv.display());
    for p in scaling::plot_scaling(&report, &a.out)? {
        eprintln!("wrote {}", p.display());
    }
    write_json(&a.common.json, &report)
}

fn experiment_icl_vs_finetune(a: IclVsFinetuneArgs) -> Result<()> {
    use selfsup::icl::finetune::{LoraConfig, TunableLm};
    use selfsup::icl::versus::{icl_vs_finetune, VersusConfig};
    let opts = options(&a.common)?;
    let cfg = VersusConfig {
        ks: a.k,
        draws: a.draws,
        eval_size: a.eval_size,
        seed: a.common.seed,
        lora: LoraConfig {
            rank: a.lora_rank,
            alpha: a.lora_alpha,
            steps: a.ft_steps,
            batch_size: a.ft_batch,
            lr: a.ft_lr,
        },
        progress: opts.progress,
        ..Default::default()
    };
    cfg.validate()?;
    let task = selfsup::icl::tasks::task_by_name(&a.task)?;
    let model = TunableLm::load(&a.model, &opts.device)?;
    let report = icl_vs_finetune(&model, &task, &cfg)?;
    print!("{}", report.table());
    for p in report.write_outputs(&a.out)? {
        eprintln!("wrote {}", p.display());
    }
    write_json(&a.common.json, &report)
}

fn experiment_text_classify(a: TextClassifyArgs) -> Result<()> {
    use selfsup::data::brown;
    use selfsup::text_classify as tc;
    let cfg = brown::BrownConfig {
        sentences: a.sentences,
        ..Default::default()
    };
    if let Some(dir) = &a.export_train_text {
        let data = brown::load_text_classification(&a.data, &cfg)?;
        let n = brown::write_train_text(&data, dir)?;
        eprintln!(
            "wrote {} train passages from {n} files to {} (test files left out)",
            data.train.len(),
            dir.display()
        );
        return write_json(
            &a.common.json,
            &serde_json::json!({"dir": dir, "files": n, "passages": data.train.len()}),
        );
    }
    let budgets: Vec<LabelBudget> = a.labels.iter().map(|b| b.parse()).collect::<Result<_>>()?;
    let o = tc::TextClassifyOptions {
        data: a.data,
        brown: cfg,
        models: a.model,
        budgets,
        draws: a.draws,
        seed: a.common.seed,
        bow_vocab: a.bow_vocab,
        probe: selfsup::eval::ProbeConfig {
            l2: a.probe_l2,
            ..Default::default()
        },
        finetune: selfsup::eval::text_finetune::TextFinetuneConfig {
            steps: a.finetune_steps,
            batch_size: a.finetune_batch,
            ..Default::default()
        },
        scratch: !a.no_scratch,
        run: options(&a.common)?,
    };
    let report = tc::text_classify_experiment(&o)?;
    println!("{}\n", tc::format_header(&report));
    println!("{}", experiment::format_efficiency(&report.rows));
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let csv = a.out.join("text_classify.csv");
    selfsup::train::checkpoint::write_atomic(
        &csv,
        experiment::efficiency_csv(&report.rows).as_bytes(),
    )?;
    eprintln!("wrote {}", csv.display());
    for p in experiment::plot_efficiency(&report.rows, &a.out)? {
        eprintln!("wrote {}", p.display());
    }
    write_json(&a.common.json, &report)
}

fn experiment_icl_regression(a: IclRegressionArgs) -> Result<()> {
    use selfsup::icl::regression_run as rr;
    let mut cfg = rr::IclRegressionConfig::new(a.dim, a.points);
    cfg.seed = a.common.seed;
    cfg.noise = a.noise;
    cfg.n_layers = a.layers;
    cfg.d_model = a.d_model;
    cfg.n_heads = a.heads;
    cfg.curriculum_interval = a.curriculum_interval;
    cfg.eval_sequences = a.eval_sequences;
    cfg.train.batch_size = a.batch_size;
    cfg.train.lr = a.lr;
    if a.minutes.is_some() {
        cfg.train.steps = None;
        cfg.train.minutes = a.minutes;
    } else if a.steps.is_some() {
        cfg.train.steps = a.steps;
    }
    let report = rr::icl_regression(&cfg, &a.out, &options(&a.common)?)?;
    print!("{}", rr::format_table(&report));
    let csv = a.out.join("icl_regression.csv");
    selfsup::train::checkpoint::write_atomic(&csv, rr::csv(&report).as_bytes())?;
    eprintln!("wrote {}", csv.display());
    for p in rr::plot(&report, &a.out)? {
        eprintln!("wrote {}", p.display());
    }
    write_json(&a.common.json, &report)
}
