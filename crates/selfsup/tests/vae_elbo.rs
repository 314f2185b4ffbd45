//! The VAE against the vae_elbo fixture (recon, KL, loss and the gradients wrt logits, μ and
//! log σ² for each β), the conv encoder/decoder shapes, a short training run, the image grids
//! and bad configurations.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use selfsup::methods::vae::{
    bernoulli_nll, gaussian_nll, kl_std_normal, neg_elbo, Likelihood, Vae, VaeConfig,
};
use selfsup::methods::Objective;
use selfsup::report::vae_grids;
mod common;
use common::{get, vec};

fn assert_scalar(name: &str, got: Tensor<1>, want: f64) {
    let v = got.into_scalar::<f32>() as f64;
    eprintln!(
        "{name}: {v} vs {want} (rel diff {:.3e})",
        (v - want).abs() / want.abs()
    );
    assert!(
        (v - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{name}: got {v}, want {want}"
    );
}

#[test]
fn negative_elbo_matches_pytorch_for_every_beta() {
    let meta = common::json("vae_elbo.json");
    let st = common::tensors("vae_elbo.safetensors");
    let device = Device::flex().autodiff();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let beta = case["beta"].as_f64().unwrap();
        let x: Tensor<2> = get(&st, "x", &device);
        let logits: Tensor<2> = get(&st, "logits", &device).require_grad();
        let mu: Tensor<2> = get(&st, "mu", &device).require_grad();
        let logvar: Tensor<2> = get(&st, "logvar", &device).require_grad();
        let terms = neg_elbo(
            bernoulli_nll(logits.clone(), x),
            kl_std_normal(mu.clone(), logvar.clone()),
            beta,
        );
        assert_scalar(
            &format!("{name} recon"),
            terms.recon,
            case["recon"].as_f64().unwrap(),
        );
        assert_scalar(
            &format!("{name} kl"),
            terms.kl,
            case["kl"].as_f64().unwrap(),
        );
        assert_scalar(
            &format!("{name} loss"),
            terms.loss.clone(),
            case["loss"].as_f64().unwrap(),
        );
        let grads = terms.loss.backward();
        for (t, key) in [(&logits, "logits"), (&mu, "mu"), (&logvar, "logvar")] {
            let want = &st.tensors[case["grads"][key].as_str().unwrap()].1;
            close4(
                &format!("{name} grad_{key}"),
                &vec(t.grad(&grads).unwrap()),
                want,
                1e-5,
            );
        }
    }
}

#[test]
fn gaussian_likelihood_is_the_gaussian_nll() {
    let device = Device::flex();
    let logits = [0.3f32, -1.2, 2.0, 0.0, 0.7, -0.4];
    let x = [0.5f32, 0.1, 0.9, 0.0, 1.0, 0.25];
    let sigma = 0.2f64;
    let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 3]), &device);
    let got = gaussian_nll(t(&logits), t(&x), sigma).into_scalar::<f32>() as f64;
    let mut want = 0.0;
    for (&l, &xv) in logits.iter().zip(&x) {
        let mean = 1.0 / (1.0 + (-(l as f64)).exp());
        want += 0.5 * ((xv as f64 - mean) / sigma).powi(2)
            + sigma.ln()
            + 0.5 * (2.0 * std::f64::consts::PI).ln();
    }
    want /= 2.0;
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
}

fn small_cfg() -> VaeConfig {
    VaeConfig {
        latent_dim: 4,
        widths: vec![8, 16],
        hidden: 32,
        ..Default::default()
    }
}

#[test]
fn encoder_and_decoder_shapes_fit_any_image_size() {
    let device = Device::flex().autodiff();
    device.seed(0);
    // Sizes that halve evenly (8, 32) and that do not (28 → 14 → 7 → 4, decoded to 32, cropped).
    for (c, h, w, widths) in [
        (1, 8, 8, vec![8, 16]),
        (1, 28, 28, vec![8, 16, 16]),
        (3, 32, 32, vec![8, 16]),
        (1, 7, 9, vec![4]),
    ] {
        let cfg = VaeConfig {
            widths,
            ..small_cfg()
        };
        let vae = Vae::new(&cfg, c, h, w, &device);
        let x = Tensor::<4>::random([3, c, h, w], burn::tensor::Distribution::Default, &device);
        assert_eq!(vae.represent(x.clone()).dims(), [3, 4]);
        let z = Tensor::<2>::zeros([3, 4], &device);
        assert_eq!(vae.decode(z).dims(), [3, c, h, w]);
        let loss = vae.loss(vec![x]);
        let v = loss.clone().into_scalar::<f32>();
        assert!(v.is_finite() && v > 0.0, "{c}×{h}×{w}: loss {v}");
        let _ = loss.backward();
    }
}

fn digits_batch(device: &Device, n: usize) -> (Tensor<4>, Vec<Vec<f32>>) {
    let splits = selfsup::data::load("digits", &Default::default()).unwrap();
    let ds = splits.train;
    let images: Vec<Vec<f32>> = (0..n).map(|i| ds.image(i).to_vec()).collect();
    let flat: Vec<f32> = images.concat();
    let x = Tensor::from_data(
        TensorData::new(flat, [n, ds.channels, ds.height, ds.width]),
        device,
    );
    (x, images)
}

#[test]
fn training_lowers_the_loss_and_grids_are_written() {
    let device = Device::flex().autodiff();
    device.seed(7);
    let mut vae = Vae::new(&small_cfg(), 1, 8, 8, &device);
    let (x, images) = digits_batch(&device, 128);
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = vec![];
    for _ in 0..40 {
        let loss = vae.loss(vec![x.clone()]);
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &vae);
        vae = opt.step(3e-3, vae, grads);
    }
    let first = losses[..5].iter().sum::<f32>() / 5.0;
    let last = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    eprintln!("VAE loss {first:.2} → {last:.2}");
    assert!(last < 0.8 * first, "loss {first} → {last}");

    let dir = tempfile::tempdir().unwrap();
    let png = |name: &str| dir.path().join(name);
    vae_grids::save_samples(&png("samples.png"), &vae, 12, 6, 1, 2).unwrap();
    let refs: Vec<&[f32]> = images[..10].iter().map(Vec::as_slice).collect();
    vae_grids::save_reconstructions(&png("recon.png"), &vae, &refs, 4, 2).unwrap();
    vae_grids::save_traversal(&png("traverse.png"), &vae, refs[0], &[0, 1, 3], 5, 3.0, 2).unwrap();
    // cells of 16 px and 1-px gaps: 6×2 samples; 10 images in 4 columns = 3 blocks of 2 rows;
    // 3 dimensions × 5 steps.
    for (name, cols, rows) in [
        ("samples.png", 6, 2),
        ("recon.png", 4, 6),
        ("traverse.png", 5, 3),
    ] {
        let img = image::open(png(name)).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (cols * 17 - 1, rows * 17 - 1),
            "{name}"
        );
    }
    // Samples are pixel means in [0, 1]; a seed fixes them.
    let a = vae_grids::prior_samples(&vae, 3, 42);
    assert_eq!(a, vae_grids::prior_samples(&vae, 3, 42));
    assert!(a.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
    // Bad requests are errors, not panics.
    let err = vae_grids::traversal(&vae, refs[0], &[4], 5, 3.0).unwrap_err();
    assert!(err.to_string().contains("latent dimension 4"), "{err}");
    let err = vae_grids::reconstructions(&vae, &[&[0.0; 10][..]]).unwrap_err();
    assert!(err.to_string().contains("1×8×8"), "{err}");
}

#[test]
fn config_rejects_bad_values() {
    let bad = |cfg: VaeConfig, word: &str| {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(word), "{err}");
    };
    bad(
        VaeConfig {
            beta: -1.0,
            ..Default::default()
        },
        "beta",
    );
    bad(
        VaeConfig {
            latent_dim: 0,
            ..Default::default()
        },
        "latent_dim",
    );
    bad(
        VaeConfig {
            widths: vec![],
            ..Default::default()
        },
        "widths",
    );
    VaeConfig {
        beta: 0.0,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let parsed: VaeConfig = toml::from_str("beta = 4.0\nlikelihood = \"gaussian\"\n").unwrap();
    assert_eq!(parsed.likelihood, Likelihood::Gaussian);
    assert_eq!(parsed.beta, 4.0);
    assert!(toml::from_str::<VaeConfig>("likelihood = \"poisson\"\n").is_err());
    assert!(toml::from_str::<VaeConfig>("latent = 3\n").is_err());
}

#[test]
fn noise_and_initialization_follow_the_seed() {
    let device = Device::flex().autodiff();
    let a = Vae::new_seeded(&small_cfg(), 1, 8, 8, 3, &device);
    let b = Vae::new_seeded(&small_cfg(), 1, 8, 8, 3, &device);
    let c = Vae::new_seeded(&small_cfg(), 1, 8, 8, 4, &device);
    let w = |v: &Vae| vec(v.encoder.head.weight.val());
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    // The noise is a function of (seed, step): a resumed run positioned with at_step draws what
    // an uninterrupted run drew.
    let n0 = vec(a.noise(5, &device));
    assert_eq!(n0, vec(b.noise(5, &device)));
    let a = a.after_step(7, 10);
    let n7 = vec(a.noise(5, &device));
    assert_ne!(n0, n7);
    assert_eq!(n7, vec(b.at_step(7).noise(5, &device)));
    let mean = n7.iter().sum::<f32>() / n7.len() as f32;
    assert!(mean.abs() < 1.0, "{mean}");
    // The same batch at the same step gives the same loss.
    let (x, _) = digits_batch(&device, 16);
    let l1 = a.loss(vec![x.clone()]).into_scalar::<f32>();
    let l2 = a.loss(vec![x]).into_scalar::<f32>();
    assert_eq!(l1, l2);
}

fn close4(name: &str, got: &[f32], want: &[f32], atol: f32) {
    common::assert_close(name, got, want, atol, 0.0);
}
