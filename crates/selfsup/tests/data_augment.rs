//! Augmentations, the view loader and image grids.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use selfsup::data::{augment_image, load, AugmentConfig, ImageDataset, LoadOptions, ViewLoader};
use selfsup::report::grid::save_grid;
use std::sync::Arc;

/// A 3×12×10 RGB test image with varied colours.
fn rgb_image() -> Vec<f32> {
    (0..3 * 12 * 10)
        .map(|i| ((i * 37 + i / 120 * 11) % 101) as f32 / 100.0)
        .collect()
}

fn view(img: &[f32], c: usize, cfg: &AugmentConfig, seed: u64) -> Vec<f32> {
    augment_image(
        img,
        c,
        12,
        10,
        8,
        9,
        cfg,
        &mut ChaCha8Rng::seed_from_u64(seed),
    )
}

fn presets() -> Vec<AugmentConfig> {
    let strong = AugmentConfig {
        blur_p: 1.0,
        solarize_p: 0.5,
        jitter_p: 1.0,
        grayscale_p: 0.5,
        ..AugmentConfig::simclr()
    };
    vec![
        AugmentConfig::simclr(),
        AugmentConfig::byol_view1(),
        AugmentConfig::byol_view2(),
        strong,
    ]
}

#[test]
fn augment_is_deterministic_under_a_seed() {
    let rgb = rgb_image();
    let grey = rgb[..120].to_vec();
    for cfg in presets() {
        for (img, c) in [(&rgb, 3), (&grey, 1)] {
            let a = view(img, c, &cfg, 7);
            assert_eq!(a.len(), c * 8 * 9);
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "{cfg:?}");
            assert_eq!(
                a,
                view(img, c, &cfg, 7),
                "same seed must give the same view"
            );
            assert_ne!(a, view(img, c, &cfg, 8), "different seeds should differ");
        }
    }
}

#[test]
fn none_resizes_only() {
    let img = vec![0.3f32; 3 * 12 * 10];
    let a = view(&img, 3, &AugmentConfig::none(), 1);
    assert_eq!(a.len(), 3 * 8 * 9);
    assert!(a.iter().all(|v| (v - 0.3).abs() < 1e-6));
}

#[test]
fn solarize_and_grayscale_do_what_they_say() {
    let img = rgb_image();
    let only = |f: fn(&mut AugmentConfig)| {
        let mut c = AugmentConfig::none();
        f(&mut c);
        c
    };
    let sol = only(|c| c.solarize_p = 1.0);
    let plain = augment_image(
        &img,
        3,
        12,
        10,
        12,
        10,
        &AugmentConfig::none(),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let s = augment_image(
        &img,
        3,
        12,
        10,
        12,
        10,
        &sol,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    for (p, q) in plain.iter().zip(&s) {
        let want = if *p >= 0.5 { 1.0 - p } else { *p };
        assert!((q - want).abs() < 1e-6);
    }
    let g = augment_image(
        &img,
        3,
        12,
        10,
        12,
        10,
        &only(|c| c.grayscale_p = 1.0),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    assert_eq!(g[..120], g[120..240]);
    assert_eq!(g[..120], g[240..]);
}

#[test]
fn config_round_trips_through_toml_and_rejects_unknown_keys() {
    let c = AugmentConfig::byol_view2();
    let text = toml::to_string(&c).unwrap();
    assert_eq!(toml::from_str::<AugmentConfig>(&text).unwrap(), c);
    let partial: AugmentConfig = toml::from_str("blur_p = 0.5").unwrap();
    assert_eq!(partial.blur_p, 0.5);
    assert_eq!(partial.crop_scale, AugmentConfig::simclr().crop_scale);
    let e = toml::from_str::<AugmentConfig>("blurr_p = 0.5").unwrap_err();
    assert!(e.to_string().contains("blurr_p"), "{e}");
}

fn digits_loader(seed: u64, drop_last: bool) -> ViewLoader {
    let train = load("digits", &LoadOptions::default()).unwrap().train;
    ViewLoader::new(
        Arc::new(train),
        vec![AugmentConfig::simclr(), AugmentConfig::byol_view2()],
        100,
        (8, 8),
        seed,
        drop_last,
    )
    .unwrap()
}

#[test]
fn loader_batch_equals_prefetch_and_is_pure() {
    let l = digits_loader(3, false);
    assert_eq!(l.batches_per_epoch(), 15); // 1442 images, last batch 42
    let fetched: Vec<_> = l.prefetch(13, 18, 2).collect();
    assert_eq!(fetched.len(), 5);
    for (k, b) in fetched.iter().enumerate() {
        assert_eq!(*b, l.batch(13 + k), "step {}", 13 + k);
    }
    assert_eq!(fetched[1].n, 42); // the partial last batch of epoch 0
                                  // A fresh loader (as after resume) gives bit-identical batches.
    assert_eq!(digits_loader(3, false).batch(16), fetched[3]);
    assert_ne!(digits_loader(4, false).batch(16), fetched[3]);
    let b = &fetched[0];
    assert_eq!((b.c, b.h, b.w, b.views.len()), (1, 8, 8, 2));
    assert_eq!(b.views[0].len(), 100 * 64);
    assert_ne!(b.views[0], b.views[1]);
}

#[test]
fn loader_epochs_cover_every_image_and_labels_follow_indices() {
    let l = digits_loader(5, false);
    let ds = l.dataset().clone();
    let labels = ds.labels.as_ref().unwrap();
    let mut seen = vec![0; ds.len()];
    let mut first_epoch = Vec::new();
    for step in 0..l.batches_per_epoch() {
        let b = l.batch(step);
        for (&i, &y) in b.indices.iter().zip(b.labels.as_ref().unwrap()) {
            seen[i] += 1;
            assert_eq!(labels[i], y);
        }
        first_epoch.extend(b.indices);
    }
    assert!(seen.iter().all(|&s| s == 1));
    let second: Vec<usize> = l.batch(l.batches_per_epoch()).indices;
    assert_ne!(second, first_epoch[..100]);

    let d = digits_loader(5, true);
    assert_eq!(d.batches_per_epoch(), 14);
    assert!((0..30).all(|s| d.batch(s).n == 100));
}

#[test]
fn loader_rejects_bad_settings_and_stops_when_dropped() {
    let ds = Arc::new(load("digits", &LoadOptions::default()).unwrap().train);
    let new = |views: Vec<AugmentConfig>, bs, hw, drop_last| {
        ViewLoader::new(ds.clone(), views, bs, hw, 0, drop_last)
            .err()
            .map(|e| format!("{e:#}"))
    };
    assert!(new(vec![], 10, (8, 8), false).unwrap().contains("view"));
    assert!(new(vec![AugmentConfig::simclr()], 0, (8, 8), false)
        .unwrap()
        .contains("batch size"));
    assert!(new(vec![AugmentConfig::simclr()], 5000, (8, 8), true)
        .unwrap()
        .contains("batch size 5000"));
    assert!(new(vec![AugmentConfig::simclr()], 10, (0, 8), false)
        .unwrap()
        .contains("output size"));
    let bad = AugmentConfig {
        crop_scale: (0.5, 0.2),
        ..AugmentConfig::simclr()
    };
    assert!(new(vec![bad], 10, (8, 8), false)
        .unwrap()
        .contains("crop_scale"));

    let l = ViewLoader::new(
        ds.clone(),
        vec![AugmentConfig::simclr()],
        10,
        (8, 8),
        0,
        false,
    )
    .unwrap();
    let mut p = l.prefetch(0, 1_000_000, 4);
    assert!(p.next().is_some());
    drop(p); // must return promptly, joining the producer
}

#[test]
fn loader_on_unlabeled_rgb_data() {
    let n = 7;
    let ds = ImageDataset {
        name: "toy".into(),
        images: (0..n * 3 * 16).map(|i| (i % 13) as f32 / 13.0).collect(),
        labels: None,
        n,
        channels: 3,
        height: 4,
        width: 4,
        class_names: vec![],
    };
    let l = ViewLoader::new(
        Arc::new(ds),
        vec![AugmentConfig::none()],
        3,
        (6, 5),
        1,
        false,
    )
    .unwrap();
    let b = l.batch(2);
    assert_eq!((b.n, b.c, b.h, b.w), (1, 3, 6, 5));
    assert!(b.labels.is_none());
    assert_eq!(b.views[0].len(), 3 * 30);
}

#[test]
fn grid_png_has_cells_gaps_and_pixels() {
    let t = tempfile::tempdir().unwrap();
    let a = vec![1.0f32; 2 * 3];
    let b = vec![0.0f32; 2 * 3];
    let imgs: Vec<&[f32]> = vec![&a, &b, &a];
    let p = t.path().join("g.png");
    save_grid(&p, &imgs, 1, 2, 3, 2, 2).unwrap();
    let g = image::open(&p).unwrap().to_luma8();
    // 2 columns of 3*2 px + 1 gap; 2 rows of 2*2 px + 1 gap.
    assert_eq!(g.dimensions(), (13, 9));
    assert_eq!(g.get_pixel(0, 0)[0], 255);
    assert_eq!(g.get_pixel(6, 0)[0], 128);
    assert_eq!(g.get_pixel(7, 3)[0], 0);
    assert_eq!(g.get_pixel(5, 8)[0], 255);

    let rgb = rgb_image();
    save_grid(&p, &[&rgb, &rgb], 3, 12, 10, 1, 1).unwrap();
    let g = image::open(&p).unwrap().to_rgb8();
    assert_eq!(g.dimensions(), (10, 25));
    assert_eq!(g.get_pixel(1, 0)[1], (rgb[120 + 1] * 255.0).round() as u8);

    let e = save_grid(&p, &[&a[..5]], 1, 2, 3, 1, 1).unwrap_err();
    assert!(format!("{e:#}").contains("g.png"));
    assert!(save_grid(&p, &[&a], 2, 1, 3, 1, 1).is_err());
}
