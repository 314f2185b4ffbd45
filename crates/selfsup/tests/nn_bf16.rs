//! `--matmul-precision bf16` end to end: the same tiny GPT trained from the same initialization
//! with fp32 and with bf16 matrix products, and a convolution's values and gradients both ways.
//! Results must differ (the bf16 kernel ran) and stay within bf16's rounding of fp32's. One test in
//! its own binary, because the precision is a process-wide switch that would leak into
//! concurrently running tests.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use selfsup::methods::clm::GptConfig;
use selfsup::nn::bf16_gemm::bf16_supported;
use selfsup::nn::{set_matmul_precision, MatmulPrecision};

fn train(precision: MatmulPrecision) -> Vec<f32> {
    set_matmul_precision(precision).unwrap();
    let device = Device::flex().autodiff();
    device.seed(0);
    let (batch, seq, vocab) = (4usize, 32usize, 64usize);
    let config = GptConfig::new(vocab)
        .with_context_length(seq)
        .with_d_model(64)
        .with_n_layers(2)
        .with_n_heads(2)
        .with_d_ff(128);
    let mut model = config.init(&device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // A learnable sequence: each token predicts the next of a repeating pattern.
    let tokens: Vec<i64> = (0..batch * (seq + 1))
        .map(|i| ((i * 7 + rng.gen_range(0..2)) % vocab) as i64)
        .collect();
    let cut = |off: usize| -> Vec<i64> {
        (0..batch)
            .flat_map(|b| tokens[b * (seq + 1) + off..][..seq].to_vec())
            .collect()
    };
    let ids = Tensor::<2, Int>::from_data(TensorData::new(cut(0), [batch, seq]), &device);
    let tgt = Tensor::<2, Int>::from_data(TensorData::new(cut(1), [batch, seq]), &device);
    let mut optim = AdamWConfig::new().init();
    let mut losses = vec![];
    for _ in 0..12 {
        let loss = model.loss(ids.clone(), tgt.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    set_matmul_precision(MatmulPrecision::Fp32).unwrap();
    losses
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// A 3×3 convolution (16 → 32 channels, 8×8 images, all three GEMMs ≥ 16 in every dimension):
/// output, d input, d weight.
fn conv(precision: MatmulPrecision) -> [Vec<f32>; 3] {
    set_matmul_precision(precision).unwrap();
    let device = Device::flex().autodiff();
    device.seed(7);
    let conv = burn::nn::conv::Conv2dConfig::new([16, 32], [3, 3])
        .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let x =
        Tensor::<4>::random([4, 16, 8, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let cot = Tensor::<4>::random([4, 32, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let y = selfsup::nn::fused::conv2d(&conv, x.clone());
    let grads = (y.clone() * cot).sum().backward();
    let out = [
        values(y),
        values(x.grad(&grads).unwrap()),
        values(conv.weight.val().grad(&grads).unwrap()),
    ];
    set_matmul_precision(MatmulPrecision::Fp32).unwrap();
    out
}

#[test]
fn bf16_matmuls_train_a_gpt_like_fp32_within_bf16_rounding() {
    if !bf16_supported() {
        eprintln!("skipped: this CPU has no AVX512_BF16");
        assert!(set_matmul_precision(MatmulPrecision::Bf16).is_err());
        return;
    }
    let fp32 = train(MatmulPrecision::Fp32);
    let bf16 = train(MatmulPrecision::Bf16);
    println!("fp32 {fp32:?}\nbf16 {bf16:?}");
    assert!(
        fp32.last().unwrap() < &(fp32[0] * 0.8),
        "the run learns: {fp32:?}"
    );
    assert_ne!(
        fp32, bf16,
        "bf16 precision changed nothing: its kernel did not run"
    );
    for (step, (a, b)) in fp32.iter().zip(&bf16).enumerate() {
        let rel = (a - b).abs() / a.abs();
        assert!(
            rel < 1e-2,
            "step {step}: fp32 loss {a}, bf16 {b} ({rel:.2e} relative)"
        );
    }
    // Switching back gives fp32's numbers exactly.
    assert_eq!(train(MatmulPrecision::Fp32), fp32);

    // Convolution: each result within a few bf16 roundings (2⁻⁸ relative per input) of fp32's.
    let (c32, c16) = (conv(MatmulPrecision::Fp32), conv(MatmulPrecision::Bf16));
    for (name, (a, b)) in ["output", "d input", "d weight"]
        .iter()
        .zip(c32.iter().zip(&c16))
    {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        println!("conv {name}: max |bf16 − fp32| {err:.2e} of max |fp32| {scale:.2e}");
        assert!(err > 0.0, "conv {name}: bf16 identical to fp32");
        assert!(
            err < 2e-2 * scale,
            "conv {name}: max error {err} for max |value| {scale}"
        );
    }
}
