//! Training-step benchmark of selfsup on burn's flex CPU backend (issue 2 item 12, issue 6).
//!
//! Times one full training step — forward, backward, AdamW step, loss read back to the host —
//! of the models the performance issue names, on the library's own code:
//!
//! | case            | model                                                                    |
//! |-----------------|--------------------------------------------------------------------------|
//! | `simclr_a`      | ConvNet 3→32→64→128→256 (3×3, strides 1/2/2/2), no BN; MLP 256→256→128 Linear-ReLU-Linear; 2×128 views 3×32×32; NT-Xent τ 0.5 |
//! | `simclr_b`      | same with BatchNorm after each conv; projector Linear-BN-ReLU-Linear (the library's `SimClr`) |
//! | `gpt`           | byte GPT: d 256, 4 layers, 4 heads, MLP 1024, seq 128, batch 16, tied head |
//! | `matmul`        | 2048×2048 · 2048×2048 fp32 (no autodiff), for the FLOP-utilization figure |
//! | `fma`           | the cores' fp32 FMA peak: a register-only FMA loop on every thread (no memory traffic), the ceiling no GEMM can pass |
//! | `fmnist_tiny`   | `SimClr` with `EncoderConfig::tiny()`, batch 256 × 2 views 1×28×28 (step only, no data pipeline) |
//! | `fmnist_resnet18` | `SimClr` with `EncoderConfig::resnet18()`, same batch           |
//!
//! Run (see bench/README.md; 2 threads as in the PyTorch reference):
//!
//! ```text
//! RAYON_NUM_THREADS=2 CARGO_TARGET_DIR=/work/main/target \
//!     cargo bench -p selfsup --bench train_step -- [--case simclr_a,gpt] [--steps 10] [--warmup 3]
//! ```
//!
//! Output: a human line per case and a machine line `RESULT {json}` that bench/compare.py reads.
//! Each step's time is measured alone; the median over `--steps` steps after `--warmup` is
//! reported. Inputs are random (fixed seed) and stay the same each step: the compute does not
//! depend on the pixel values.

use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup::methods::clm::{Gpt, GptConfig};
use selfsup::methods::simclr::{SimClr, SimClrConfig};
use selfsup::nn::{EncoderConfig, Mlp};
use selfsup::train::optim::build_optimizer;
use std::time::Instant;

#[global_allocator]
static ALLOC: selfsup::train::alloc::HugePageAlloc = selfsup::train::alloc::HugePageAlloc;

const ALL: &[&str] = &["simclr_a", "simclr_b", "gpt", "matmul", "fma"];
const EXTRA: &[&str] = &["fmnist_tiny", "fmnist_resnet18"];
const LR: f64 = 1e-3;
const WEIGHT_DECAY: f64 = 1e-4;

struct Args {
    cases: Vec<String>,
    steps: usize,
    warmup: usize,
    precision: selfsup::nn::MatmulPrecision,
    /// `cpu` (burn's flex backend) or `cuda[:N]` (a binary built with `--features cuda`).
    device_name: String,
    device: Device,
}

use selfsup::nn::op_times::{self, OpTime};

fn parse_args() -> Args {
    let mut args = Args {
        cases: ALL.iter().map(|s| s.to_string()).collect(),
        steps: 10,
        warmup: 3,
        precision: Default::default(),
        device_name: "cpu".into(),
        device: Device::flex(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            // Wall time per fused kernel and per phase of the step, printed after each case.
            "--op-times" => op_times::enable(),
            "--case" | "--cases" => {
                let v = it.next().expect("--case needs a value");
                args.cases = if v == "all" {
                    ALL.iter().chain(EXTRA).map(|s| s.to_string()).collect()
                } else {
                    v.split(',').map(|s| s.trim().to_string()).collect()
                };
            }
            "--steps" => args.steps = it.next().and_then(|v| v.parse().ok()).expect("--steps N"),
            "--warmup" => args.warmup = it.next().and_then(|v| v.parse().ok()).expect("--warmup N"),
            "--matmul-precision" => {
                let v = it.next().expect("--matmul-precision fp32|bf16");
                args.precision = v.parse().unwrap_or_else(|e| {
                    eprintln!("train_step: {e}");
                    std::process::exit(2)
                });
            }
            "--device" => {
                let v = it.next().expect("--device cpu|cuda|cuda:N");
                args.device = selfsup::pipeline::parse_device(&v).unwrap_or_else(|e| {
                    eprintln!("train_step: {e:#}");
                    std::process::exit(2)
                });
                args.device_name = v;
            }
            "-h" | "--help" => {
                println!(
                    "train_step [--case {}|all] [--steps N] [--warmup N] [--matmul-precision fp32|bf16] [--device cpu|cuda|cuda:N] [--op-times]",
                    ALL.iter()
                        .chain(EXTRA)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("train_step: unknown argument `{other}`");
                std::process::exit(2);
            }
        }
    }
    for c in &args.cases {
        if !ALL.contains(&c.as_str()) && !EXTRA.contains(&c.as_str()) {
            eprintln!("train_step: unknown case `{c}`");
            std::process::exit(2);
        }
    }
    args
}

/// Peak resident set size of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn normal(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    // Box–Muller; the values only need to look like normalized pixels.
    (0..n)
        .map(|_| {
            let u1: f32 = rng.gen::<f32>().max(1e-7);
            let u2: f32 = rng.gen();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn image_batch(rng: &mut ChaCha8Rng, shape: [usize; 4], device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(normal(rng, n), shape), device)
}

/// CPU time (user + system, all threads) this process has used, in ms, from /proc/self/stat
/// (clock ticks of 10 ms: USER_HZ is 100 on Linux). Under contention from other processes, wall
/// time per step grows while CPU time per step stays roughly put.
fn process_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the `(comm)`: state is field 3; utime, stime are fields 14, 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) * 10.0)
        })
        .unwrap_or(f64::NAN)
}

/// Times `steps` calls of `step` after `warmup` untimed ones; returns (times in ms, losses).
/// Each step ends with a `device.sync()`: on a GPU the backward pass and the optimizer step are
/// queued, not finished, when `step` returns (on the CPU backend the sync does nothing).
fn time_steps(
    device: &Device,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> f32,
) -> Timing {
    let mut t = Timing::default();
    for i in 0..warmup + steps {
        if i == warmup {
            // The op times cover the timed steps only.
            op_times::take();
        }
        let (c0, t0) = (process_cpu_ms(), Instant::now());
        let loss = step();
        if let Err(e) = device.sync() {
            eprintln!("train_step: the device failed: {e:?}");
            std::process::exit(1);
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let cpu = process_cpu_ms() - c0;
        t.losses.push(loss);
        if i >= warmup {
            t.times.push(ms);
            t.cpu.push(cpu);
        }
    }
    if op_times::enabled() {
        print_op_times(&op_times::take(), steps);
    }
    t
}

/// One training step of the model in `model` (forward with `loss`, loss read back, backward,
/// AdamW), each phase timed under `--op-times`; returns the loss.
fn train_step<M: burn::module::Module>(
    model: &mut Option<M>,
    opt: &mut burn::optim::ModuleOptimizer,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> f32 {
    let m = model
        .take()
        .expect("the model is put back after every step");
    let (loss, value) = phase("step: forward", || {
        let loss = loss(&m);
        let value = loss.clone().into_scalar::<f32>();
        (loss, value)
    });
    let grads = phase("step: backward", || {
        GradientsParams::from_grads(loss.backward(), &m)
    });
    *model = Some(phase("step: optimizer", || opt.step(LR, m, grads)));
    value
}

/// Times `f` as the step's phase `name` under `--op-times`.
fn phase<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    let _span = op_times::span(name);
    f()
}

/// The `--op-times` table: per step, the phases, then each kernel (with its sizes) by time.
fn print_op_times(ops: &[OpTime], steps: usize) {
    let per_step = |t: &OpTime| t.total.as_secs_f64() * 1e3 / steps.max(1) as f64;
    let (phases, kernels): (Vec<&OpTime>, Vec<&OpTime>) =
        ops.iter().partition(|t| t.name.starts_with("step:"));
    let step_ms: f64 = phases.iter().map(|t| per_step(t)).sum();
    let kernel_ms: f64 = kernels.iter().map(|t| per_step(t)).sum();
    println!("op times, ms per step over {steps} timed steps (wall time of each call; parallel kernels count once):");
    for t in &phases {
        println!("  {:>8.2} ms  {}", per_step(t), t.name);
    }
    let mut kernels = kernels;
    kernels.sort_by_key(|t| std::cmp::Reverse(t.total));
    for t in &kernels {
        // A linear layer's sizes are (rows, inputs, outputs): 2·m·k·n FLOPs per call.
        let rate = match (
            t.name.starts_with("linear d") || t.name == "linear forward",
            &t.sizes[..],
        ) {
            (true, &[m, k, n]) => format!(
                "  {:>5.0} GFLOP/s",
                2.0 * (m * k * n * t.calls) as f64 / t.total.as_secs_f64() / 1e9
            ),
            _ => String::new(),
        };
        println!(
            "  {:>8.2} ms  {:>5.1}%  {:>3} calls  {} {:?}{rate}",
            per_step(t),
            100.0 * per_step(t) / step_ms.max(1e-9),
            t.calls / steps.max(1),
            t.name,
            t.sizes,
        );
    }
    println!(
        "  {:>8.2} ms  {:>5.1}%  outside the fused kernels (burn ops, autodiff, allocation)",
        step_ms - kernel_ms,
        100.0 * (step_ms - kernel_ms) / step_ms.max(1e-9)
    );
}

#[derive(Default)]
struct Timing {
    /// Wall ms per timed step.
    times: Vec<f64>,
    /// Process CPU ms per timed step.
    cpu: Vec<f64>,
    /// Loss of every step, warm-up included.
    losses: Vec<f32>,
}

fn simclr_bench(
    args: &Args,
    case: &str,
    enc: EncoderConfig,
    bn_projector: bool,
    views: [usize; 4],
) -> Report {
    let device = args.device.clone().autodiff();
    device.seed(0);
    let in_channels = views[1];
    let model = if case == "simclr_a" {
        // Variant A: no BatchNorm anywhere, so the projector is Linear-ReLU-Linear (with biases).
        SimClr {
            encoder: enc.init(in_channels, &device),
            projector: Mlp::new(enc.out_dim(), 256, 128, bn_projector, &device),
            temperature: 0.5,
            positives_only: false,
        }
    } else {
        SimClr::new(&enc, &SimClrConfig::default(), in_channels, &device)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let v1 = image_batch(&mut rng, views, &device);
    let v2 = image_batch(&mut rng, views, &device);
    let mut opt = build_optimizer("adamw", WEIGHT_DECAY, 0.9).unwrap();
    let mut model = Some(model);
    let (warmup, steps) = if case == "fmnist_resnet18" {
        // ~10 s per step on 2 cores: fewer steps keep the run short.
        (args.warmup.min(1), args.steps.min(5))
    } else {
        (args.warmup, args.steps)
    };
    let timing = time_steps(&device, warmup, steps, || {
        train_step(&mut model, &mut opt, |m| {
            m.loss_views(v1.clone(), v2.clone())
        })
    });
    Report::new(case, timing, Some(views[0] as f64))
}

fn gpt_bench(args: &Args) -> Report {
    let device = args.device.clone().autodiff();
    device.seed(0);
    let (batch, seq, vocab) = (16usize, 128usize, 256usize);
    let cfg = GptConfig::new(vocab)
        .with_context_length(seq)
        .with_d_model(256)
        .with_n_layers(4)
        .with_n_heads(4)
        .with_d_ff(1024);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let tokens: Vec<i64> = (0..batch * (seq + 1))
        .map(|_| rng.gen_range(0..vocab as i64))
        .collect();
    let ids: Vec<i64> = (0..batch)
        .flat_map(|b| tokens[b * (seq + 1)..b * (seq + 1) + seq].to_vec())
        .collect();
    let tgt: Vec<i64> = (0..batch)
        .flat_map(|b| tokens[b * (seq + 1) + 1..(b + 1) * (seq + 1)].to_vec())
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let tgt = Tensor::<2, Int>::from_data(TensorData::new(tgt, [batch, seq]), &device);
    let mut model: Option<Gpt> = Some(cfg.init(&device));
    let mut opt = build_optimizer("adamw", WEIGHT_DECAY, 0.9).unwrap();
    let timing = time_steps(&device, args.warmup, args.steps, || {
        train_step(&mut model, &mut opt, |m| m.loss(ids.clone(), tgt.clone()))
    });
    let mut r = Report::new("gpt", timing, None);
    // Model FLOPs per training step (forward + backward ≈ 3× forward), counting matmuls only:
    // per token and layer 2·(4d² + 2·d·dff) for the projections and 2·2·T·d for q·kᵀ and p·v
    // (full T×T, as computed here); plus 2·d·V for the tied head.
    let (d, l, dff, t) = (256.0, 4.0, 1024.0, seq as f64);
    let per_token =
        l * (2.0 * (4.0 * d * d + 2.0 * d * dff) + 4.0 * t * d) + 2.0 * d * vocab as f64;
    r.flops = Some(3.0 * per_token * (batch * seq) as f64);
    r
}

fn matmul_bench(args: &Args) -> Report {
    let device = args.device.clone();
    let n = 2048;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = Tensor::<2>::from_data(TensorData::new(normal(&mut rng, n * n), [n, n]), &device);
    let b = Tensor::<2>::from_data(TensorData::new(normal(&mut rng, n * n), [n, n]), &device);
    let timing = time_steps(&device, args.warmup, args.steps, || {
        let c = a.clone().matmul(b.clone());
        // Read one element back so that the product is finished.
        c.slice([0..1, 0..1]).into_scalar::<f32>()
    });
    let mut r = Report::new(
        "matmul",
        Timing {
            losses: vec![],
            ..timing
        },
        None,
    );
    r.flops = Some(2.0 * (n as f64).powi(3));
    r
}

/// Threads the benchmarks use: RAYON_NUM_THREADS as burn's pool does, else all cores.
fn bench_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Twelve independent FMA chains per iteration (more than the FMA latency × ports, so the loop is
/// throughput-bound), all in registers. Returns a sum so that the work cannot be optimized away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 12];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm512_set1_ps(i as f32);
    }
    let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 12];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm256_set1_ps(i as f32);
    }
    let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut out = [0f32; 8];
    acc.iter()
        .map(|&a| {
            // SAFETY: `out` holds 8 f32.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) };
            out.iter().sum::<f32>()
        })
        .sum()
}

/// The fp32 FMA peak of `bench_threads()` threads: the widest FMA this CPU has, 12 chains per
/// thread. FLOP utilization against it is the share of the machine a step uses; against the
/// matmul rate it is the share of what a GEMM reaches.
fn fma_bench(args: &Args) -> Report {
    const ITERS: u64 = 20_000_000;
    #[cfg(target_arch = "x86_64")]
    let (lanes, run): (f64, fn(u64) -> f32) = if is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected at run time.
        (16.0, |n| unsafe { fma_loop_avx512(n) })
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: as above.
        (8.0, |n| unsafe { fma_loop_avx2(n) })
    } else {
        eprintln!("train_step: fma needs AVX2+FMA or AVX-512");
        std::process::exit(2);
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (lanes, run): (f64, fn(u64) -> f32) = {
        eprintln!("train_step: fma is measured on x86-64 only");
        std::process::exit(2);
    };
    let threads = bench_threads();
    let timing = time_steps(&Device::flex(), args.warmup, args.steps, || {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| run(ITERS))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<f32>()
        })
    });
    let mut r = Report::new(
        "fma",
        Timing {
            losses: vec![],
            ..timing
        },
        None,
    );
    r.flops = Some(threads as f64 * ITERS as f64 * 12.0 * lanes * 2.0);
    r
}

struct Report {
    case: String,
    times: Vec<f64>,
    cpu: Vec<f64>,
    losses: Vec<f32>,
    images_per_step: Option<f64>,
    flops: Option<f64>,
}

impl Report {
    fn new(case: &str, timing: Timing, images_per_step: Option<f64>) -> Self {
        Self {
            case: case.into(),
            times: timing.times,
            cpu: timing.cpu,
            losses: timing.losses,
            images_per_step,
            flops: None,
        }
    }

    fn print(&self, peak: f64, device: &Device) {
        let med = median(&self.times);
        let min = self.times.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut line = format!(
            "{:<16} median {:>9.2} ms/step  min {:>9.2}  cpu {:>9.0} ms/step  ({} steps)  peak RSS {:.0} MiB",
            self.case,
            med,
            min,
            median(&self.cpu),
            self.times.len(),
            peak
        );
        let mut json = serde_json::json!({
            "framework": "selfsup",
            "case": self.case,
            "median_ms": med,
            "min_ms": min,
            "times_ms": self.times,
            "cpu_ms": self.cpu,
            "median_cpu_ms": median(&self.cpu),
            "peak_rss_mib": peak,
            "matmul_precision": selfsup::nn::matmul_precision().to_string(),
            "device": format!("{device:?}"),
        });
        // A GPU's memory pool keeps its pages, so what it reserves after the steps is its peak.
        if let Some(usage) = device.memory_pool_usage() {
            let mib = usage.bytes_reserved as f64 / (1u64 << 20) as f64;
            line += &format!("  device memory {mib:.0} MiB");
            json["device_mem_mib"] = mib.into();
        }
        if let Some(n) = self.images_per_step {
            let ips = n / (med / 1e3);
            line += &format!("  {ips:.0} img/s");
            json["images_per_s"] = ips.into();
        }
        if let Some(f) = self.flops {
            let gf = f / (med / 1e3) / 1e9;
            line += &format!("  {gf:.1} GFLOP/s");
            json["gflops"] = gf.into();
        }
        if let (Some(first), Some(last)) = (self.losses.first(), self.losses.last()) {
            line += &format!("  loss {first:.4} → {last:.4}");
            json["losses"] = self.losses.clone().into();
        }
        println!("{line}");
        println!("RESULT {json}");
    }
}

fn main() {
    let args = parse_args();
    // As the trainer does (train/alloc.rs); SELFSUP_GLIBC_DEFAULTS=1 measures without it.
    if std::env::var_os("SELFSUP_GLIBC_DEFAULTS").is_none() {
        selfsup::train::alloc::keep_freed_memory();
    }
    if args.device_name != "cpu" && args.precision != Default::default() {
        eprintln!("train_step: --matmul-precision bf16 selects the CPU kernels' GEMM; on a GPU burn's own matmul runs");
        std::process::exit(2);
    }
    if let Err(e) = selfsup::nn::set_matmul_precision(args.precision) {
        eprintln!("train_step: {e}");
        std::process::exit(2);
    }
    let threads =
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "(unset: all cores)".into());
    println!(
        "selfsup train_step bench: burn 0.22.1, device {}, RAYON_NUM_THREADS={threads}, {} steps after {} warm-up, matmul precision {}",
        args.device_name, args.steps, args.warmup, args.precision
    );
    for case in &args.cases {
        let r = match case.as_str() {
            "simclr_a" => simclr_bench(
                &args,
                case,
                EncoderConfig::bench_convnet(false),
                false,
                [128, 3, 32, 32],
            ),
            "simclr_b" => simclr_bench(
                &args,
                case,
                EncoderConfig::bench_convnet(true),
                true,
                [128, 3, 32, 32],
            ),
            "gpt" => gpt_bench(&args),
            "matmul" => matmul_bench(&args),
            "fma" => fma_bench(&args),
            "fmnist_tiny" => {
                simclr_bench(&args, case, EncoderConfig::tiny(), true, [256, 1, 28, 28])
            }
            "fmnist_resnet18" => simclr_bench(
                &args,
                case,
                EncoderConfig::resnet18(),
                true,
                [256, 1, 28, 28],
            ),
            _ => unreachable!(),
        };
        // Peak RSS is per process: compare.py runs one case per process for that column.
        let device = if case == "fma" {
            Device::flex()
        } else {
            args.device.clone()
        };
        r.print(peak_rss_mib(), &device);
    }
}
