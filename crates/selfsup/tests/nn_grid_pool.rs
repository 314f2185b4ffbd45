//! Grid pooling of the encoder's last feature map (`--pool-grid`): cell means against a direct
//! computation, grid 1 is the representation h, a VAE refuses a grid.

use burn::prelude::*;
use selfsup::config::PretrainConfig;
use selfsup::data::ImageDataset;
use selfsup::nn::encoder::{global_avg_pool, grid_avg_pool};
use selfsup::nn::EncoderConfig;
use selfsup::pipeline::random_representation;

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Adaptive-pooling cell means of one [h, w] map, computed directly: cell i spans
/// ⌊i·h/g⌋ .. ⌈(i+1)·h/g⌉.
fn direct(map: &[f32], h: usize, w: usize, g: usize) -> Vec<f32> {
    let span = |i: usize, n: usize| (i * n / g, ((i + 1) * n).div_ceil(g));
    let mut out = vec![];
    for i in 0..g {
        for j in 0..g {
            let ((r0, r1), (c0, c1)) = (span(i, h), span(j, w));
            let mut s = 0.0;
            for r in r0..r1 {
                for c in c0..c1 {
                    s += map[r * w + c];
                }
            }
            out.push(s / ((r1 - r0) * (c1 - c0)) as f32);
        }
    }
    out
}

#[test]
fn grid_cells_are_adaptive_average_pools() {
    let device = Device::flex();
    for (h, w, g) in [(4, 4, 2), (7, 7, 3), (7, 7, 2), (5, 6, 2)] {
        let (n, c) = (2, 3);
        let data: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37) % 11) as f32).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [n, c, h, w]), &device);
        let got = values(grid_avg_pool(x.clone(), g));
        assert_eq!(got.len(), n * c * g * g);
        // Channel-major: sample, channel, then the cells row by row.
        let want: Vec<f32> = data
            .chunks(h * w)
            .flat_map(|map| direct(map, h, w, g))
            .collect();
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-5,
                "{h}×{w} grid {g}: {got:?} vs {want:?}"
            );
        }
        // Grid 1 is the global average.
        assert_eq!(
            values(grid_avg_pool(x.clone(), 1)),
            values(global_avg_pool(x))
        );
    }
}

#[test]
fn grid_one_is_the_representation_and_a_vae_refuses_a_grid() {
    let device = Device::flex();
    let ds = ImageDataset {
        name: "test".into(),
        images: vec![0.5; 2 * 64],
        labels: Some(vec![0, 1]),
        n: 2,
        channels: 1,
        height: 8,
        width: 8,
        class_names: vec!["a".into(), "b".into()],
    };
    let mut cfg = PretrainConfig::new("simclr", "digits");
    cfg.encoder = EncoderConfig::tiny();
    let rep = random_representation(&cfg, &ds, &device);
    let x = Tensor::<4>::from_data(
        TensorData::new((0..128).map(|i| i as f32 / 128.0).collect(), [2, 1, 8, 8]),
        &device,
    );
    let h = values(rep.forward(x.clone()));
    assert_eq!(values(rep.forward_grid(x.clone(), 1).unwrap()), h);
    let g2 = rep.forward_grid(x.clone(), 2).unwrap();
    assert_eq!(g2.dims(), [2, 128 * 4]);
    // The cells of a 2×2 grid on the 2×2 final map (8 → 8 → 4 → 2) are its pixels, and their
    // mean is h.
    let g2 = values(g2);
    for (i, hv) in h.iter().enumerate() {
        let mean = g2[i * 4..i * 4 + 4].iter().sum::<f32>() / 4.0;
        assert!((mean - hv).abs() < 1e-5, "channel {i}: {mean} vs {hv}");
    }
    let mut vae = PretrainConfig::new("vae", "digits");
    vae.encoder = EncoderConfig::tiny();
    let rep = random_representation(&vae, &ds, &device);
    let err = rep.forward_grid(x, 2).unwrap_err().to_string();
    assert!(err.contains("VAE") && err.contains("--pool-grid"), "{err}");
}
