//! Every dataset reader on files written here, including every bad-input case.

use selfsup::data::{load, LoadOptions, Splits};
use std::io::Write;
use std::path::Path;

fn opts() -> LoadOptions {
    LoadOptions::default()
}

/// The full error chain, as the CLI prints it.
fn err(spec: &str, o: &LoadOptions) -> String {
    match load(spec, o) {
        Ok(_) => panic!("`{spec}` loaded but should have failed"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should contain `{p}`");
    }
}

// ---------------------------------------------------------------- digits

#[test]
fn digits_split_is_stratified_and_scaled() {
    let Splits { train, test } = load("digits", &opts()).unwrap();
    let test = test.unwrap();
    assert_eq!(train.len() + test.len(), 1797);
    assert_eq!((train.len(), test.len()), (1442, 355));
    for ds in [&train, &test] {
        assert_eq!((ds.channels, ds.height, ds.width), (1, 8, 8));
        assert_eq!(ds.images.len(), ds.len() * 64);
        assert!(ds.images.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(ds.num_classes(), 10);
        let labels = ds.labels.as_ref().unwrap();
        for c in 0..10 {
            assert!(labels.contains(&c), "class {c} missing in a split");
        }
    }
    assert!(train.images.contains(&1.0) && train.images.contains(&0.0));
    // Every 5th image of a class goes to test: per class, test ≈ total / 5.
    let count = |ds: &selfsup::data::ImageDataset, c| {
        ds.labels
            .as_ref()
            .unwrap()
            .iter()
            .filter(|&&l| l == c)
            .count()
    };
    for c in 0..10 {
        assert_eq!(count(&test, c), (count(&train, c) + count(&test, c)) / 5);
    }
}

#[test]
fn digits_resized_on_request_and_takes_no_dir() {
    let o = LoadOptions {
        image_size: Some(16),
        ..opts()
    };
    let s = load("digits", &o).unwrap();
    assert_eq!((s.train.height, s.train.width), (16, 16));
    assert_eq!(s.train.images.len(), 1442 * 256);
    assert_has(&err("digits:/tmp", &opts()), &["digits", "no directory"]);
}

#[test]
fn unknown_spec_and_missing_dir() {
    assert_has(
        &err("imagenet:/x", &opts()),
        &[
            "unknown dataset spec `imagenet:/x`",
            "fashion-mnist",
            "folder:DIR",
        ],
    );
    assert_has(&err("mnist", &opts()), &["mnist:DIR"]);
    assert_has(&err("cifar10:", &opts()), &["cifar10:DIR"]);
}

// ---------------------------------------------------------------- IDX

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

fn write(path: &Path, bytes: &[u8], gz: bool) {
    let mut f = std::fs::File::create(path).unwrap();
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
}

/// Writes an MNIST-style directory: `n_train` / `n_test` images of 3×4, pixel = image index,
/// labels = index % 10; train gzipped, test raw.
fn write_idx_dir(dir: &Path, n_train: u32, n_test: u32) {
    for (prefix, n, gz) in [("train", n_train, true), ("t10k", n_test, false)] {
        let pixels: Vec<u8> = (0..n).flat_map(|i| [i as u8; 12]).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let sfx = if gz { ".gz" } else { "" };
        write(
            &dir.join(format!("{prefix}-images-idx3-ubyte{sfx}")),
            &idx_bytes(2051, &[n, 3, 4], &pixels),
            gz,
        );
        write(
            &dir.join(format!("{prefix}-labels-idx1-ubyte{sfx}")),
            &idx_bytes(2049, &[n], &labels),
            gz,
        );
    }
}

#[test]
fn idx_reads_gzipped_and_raw() {
    let t = tempfile::tempdir().unwrap();
    write_idx_dir(t.path(), 12, 5);
    let s = load(&format!("mnist:{}", t.path().display()), &opts()).unwrap();
    let test = s.test.unwrap();
    assert_eq!((s.train.len(), test.len()), (12, 5));
    assert_eq!((s.train.channels, s.train.height, s.train.width), (1, 3, 4));
    assert_eq!(s.train.image(11), &[11.0 / 255.0; 12][..]);
    assert_eq!(s.train.labels.as_ref().unwrap()[11], 1);
    assert_eq!(test.labels.as_ref().unwrap(), &[0, 1, 2, 3, 4]);
    assert_eq!(s.train.class_names[3], "3");
}

#[test]
fn fashion_mnist_default_dir_and_how_to_get_it() {
    // The only test that touches SELFSUP_DATA.
    let t = tempfile::tempdir().unwrap();
    let fm = t.path().join("fashion-mnist");
    std::fs::create_dir(&fm).unwrap();
    write_idx_dir(&fm, 10, 10);
    std::env::set_var("SELFSUP_DATA", t.path());
    let s = load("fashion-mnist", &opts()).unwrap();
    assert_eq!(s.train.class_names[0], "T-shirt/top");
    assert_eq!(s.train.class_names[9], "Ankle boot");
    assert_eq!(s.train.len(), 10);
    let s = load(&format!("fashion-mnist:{}", fm.display()), &opts()).unwrap();
    assert_eq!(s.test.unwrap().len(), 10);

    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("SELFSUP_DATA", empty.path());
    if !Path::new("/usr/share/datasets/fashion-mnist").exists() {
        assert_has(
            &err("fashion-mnist", &opts()),
            &[
                "Fashion-MNIST not found",
                "get.sh fashion-mnist",
                "apt install dataset-fashion-mnist",
                "fashion-mnist:DIR",
            ],
        );
    }
    std::env::remove_var("SELFSUP_DATA");
    // An explicit directory without the files also says how to get them.
    assert_has(
        &err(
            &format!("fashion-mnist:{}", empty.path().display()),
            &opts(),
        ),
        &["train-images-idx3-ubyte", "get.sh fashion-mnist"],
    );
}

#[test]
fn idx_missing_path_and_missing_file() {
    assert_has(
        &err("mnist:/no/such/dir", &opts()),
        &["/no/such/dir", "no such directory"],
    );
    let t = tempfile::tempdir().unwrap();
    write_idx_dir(t.path(), 3, 3);
    std::fs::remove_file(t.path().join("t10k-labels-idx1-ubyte")).unwrap();
    assert_has(
        &err(&format!("mnist:{}", t.path().display()), &opts()),
        &["t10k-labels-idx1-ubyte", "no such file"],
    );
}

#[test]
fn idx_wrong_magic() {
    let t = tempfile::tempdir().unwrap();
    write_idx_dir(t.path(), 3, 3);
    let p = t.path().join("train-images-idx3-ubyte.gz");
    write(&p, &idx_bytes(2049, &[3, 3, 4], &[0; 36]), true);
    assert_has(
        &err(&format!("mnist:{}", t.path().display()), &opts()),
        &[
            &format!("reading {}", p.display()),
            "expected magic number 2051, found 2049",
        ],
    );
}

#[test]
fn idx_truncated_data_and_truncated_gzip() {
    let t = tempfile::tempdir().unwrap();
    write_idx_dir(t.path(), 3, 3);
    let p = t.path().join("t10k-images-idx3-ubyte");
    write(&p, &idx_bytes(2051, &[3, 3, 4], &[0; 30]), false);
    let spec = format!("mnist:{}", t.path().display());
    assert_has(
        &err(&spec, &opts()),
        &[&p.display().to_string(), "truncated"],
    );

    write_idx_dir(t.path(), 3, 3);
    let p = t.path().join("train-labels-idx1-ubyte.gz");
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    assert_has(&err(&spec, &opts()), &[&p.display().to_string(), "gzip"]);

    // A header cut short.
    write_idx_dir(t.path(), 3, 3);
    let p = t.path().join("t10k-labels-idx1-ubyte");
    std::fs::write(&p, [0, 0, 8]).unwrap();
    assert_has(
        &err(&spec, &opts()),
        &[&p.display().to_string(), "truncated"],
    );
}

#[test]
fn idx_count_mismatch_and_bad_label() {
    let t = tempfile::tempdir().unwrap();
    write_idx_dir(t.path(), 4, 3);
    write(
        &t.path().join("train-labels-idx1-ubyte.gz"),
        &idx_bytes(2049, &[3], &[0, 1, 2]),
        true,
    );
    let spec = format!("mnist:{}", t.path().display());
    assert_has(
        &err(&spec, &opts()),
        &[
            "train-images-idx3-ubyte.gz has 4 images",
            "train-labels-idx1-ubyte.gz has 3 labels",
        ],
    );
    write(
        &t.path().join("train-labels-idx1-ubyte.gz"),
        &idx_bytes(2049, &[4], &[0, 1, 12, 2]),
        true,
    );
    assert_has(&err(&spec, &opts()), &["train-labels", "label 12"]);
}

// ---------------------------------------------------------------- CIFAR-10

/// A record whose R plane is `r`, G plane `g`, B plane `b`.
fn cifar_record(label: u8, r: u8, g: u8, b: u8) -> Vec<u8> {
    let mut v = vec![label];
    for x in [r, g, b] {
        v.extend([x; 1024]);
    }
    v
}

fn write_cifar(dir: &Path) {
    for i in 1..=5u8 {
        let mut bytes = cifar_record(i, i, 0, 255);
        bytes.extend(cifar_record(0, 0, 51, 0));
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_record(9, 255, 255, 255)).unwrap();
}

#[test]
fn cifar10_reads_batches_and_meta() {
    let t = tempfile::tempdir().unwrap();
    write_cifar(t.path());
    let spec = format!("cifar10:{}", t.path().display());
    let s = load(&spec, &opts()).unwrap();
    assert_eq!(
        (s.train.len(), s.train.channels, s.train.height),
        (10, 3, 32)
    );
    assert_eq!(
        s.train.labels.as_ref().unwrap(),
        &[1, 0, 2, 0, 3, 0, 4, 0, 5, 0]
    );
    let img = s.train.image(2); // batch 2, record 0: R = 2, G = 0, B = 255
    assert_eq!(img[0], 2.0 / 255.0);
    assert_eq!(img[1024], 0.0);
    assert_eq!(img[3071], 1.0);
    assert_eq!(s.train.image(1)[1024], 0.2);
    assert_eq!(s.train.class_names[0], "airplane");
    let test = s.test.unwrap();
    assert_eq!(test.labels.unwrap(), vec![9]);

    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    std::fs::write(t.path().join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    assert_eq!(load(&spec, &opts()).unwrap().train.class_names, names);
    std::fs::write(t.path().join("batches.meta.txt"), "a\nb\n").unwrap();
    assert_has(
        &err(&spec, &opts()),
        &["batches.meta.txt", "expected 10 class names, found 2"],
    );
}

#[test]
fn cifar10_bad_inputs() {
    assert_has(
        &err("cifar10:/no/such/cifar", &opts()),
        &["/no/such/cifar", "no such directory"],
    );
    let t = tempfile::tempdir().unwrap();
    let spec = format!("cifar10:{}", t.path().display());
    write_cifar(t.path());
    std::fs::remove_file(t.path().join("test_batch.bin")).unwrap();
    assert_has(&err(&spec, &opts()), &["test_batch.bin"]);

    write_cifar(t.path());
    let p = t.path().join("data_batch_3.bin");
    let mut bytes = cifar_record(1, 0, 0, 0);
    bytes.extend(&cifar_record(1, 0, 0, 0)[..100]);
    std::fs::write(&p, bytes).unwrap();
    assert_has(
        &err(&spec, &opts()),
        &[&p.display().to_string(), "truncated", "3073"],
    );

    write_cifar(t.path());
    std::fs::write(&p, cifar_record(10, 0, 0, 0)).unwrap();
    assert_has(
        &err(&spec, &opts()),
        &[&p.display().to_string(), "label 10"],
    );
}

// ---------------------------------------------------------------- folder

fn save_rgb(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

fn save_grey(path: &Path, w: u32, h: u32, v: u8) {
    image::GrayImage::from_pixel(w, h, image::Luma([v]))
        .save(path)
        .unwrap();
}

#[test]
fn folder_class_subfolders_give_sorted_labels() {
    let t = tempfile::tempdir().unwrap();
    let (cat, dog) = (t.path().join("cat"), t.path().join("dog"));
    std::fs::create_dir(&cat).unwrap();
    std::fs::create_dir_all(dog.join("nested")).unwrap();
    save_rgb(&dog.join("a.png"), 40, 20, [255, 0, 0]);
    save_rgb(&dog.join("nested/b.JPG"), 17, 33, [0, 0, 255]);
    save_rgb(&cat.join("c.jpeg"), 64, 64, [0, 255, 0]);
    std::fs::write(cat.join("notes.txt"), "not an image").unwrap();
    std::fs::write(cat.join(".hidden.png"), "ignored").unwrap();
    let s = load(&format!("folder:{}", t.path().display()), &opts()).unwrap();
    assert!(s.test.is_none());
    let ds = s.train;
    assert_eq!(ds.class_names, vec!["cat", "dog"]);
    assert_eq!(ds.labels.as_ref().unwrap(), &[0, 1, 1]);
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (3, 3, 32, 32));
    let plane = 32 * 32;
    let mean = |i: usize, c: usize| {
        ds.image(i)[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32
    };
    assert!(mean(0, 1) > 0.9 && mean(0, 0) < 0.1); // green cat (JPEG: approximately)
    assert!((mean(1, 0) - 1.0).abs() < 1e-6 && mean(1, 2) == 0.0); // red dog
    assert!(mean(2, 2) > 0.9); // blue dog
}

#[test]
fn folder_flat_grey_is_unlabeled_one_channel_and_resized() {
    let t = tempfile::tempdir().unwrap();
    save_grey(&t.path().join("x.png"), 10, 30, 255);
    save_grey(&t.path().join("y.png"), 8, 8, 0);
    let o = LoadOptions {
        image_size: Some(12),
        ..opts()
    };
    let ds = load(&format!("folder:{}", t.path().display()), &o)
        .unwrap()
        .train;
    assert!(ds.labels.is_none() && ds.class_names.is_empty());
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (2, 1, 12, 12));
    assert!(ds.image(0).iter().all(|&v| v == 1.0));
    assert!(ds.image(1).iter().all(|&v| v == 0.0));
}

#[test]
fn folder_mixed_grey_and_rgb_becomes_rgb_unless_forced_grey() {
    let t = tempfile::tempdir().unwrap();
    save_grey(&t.path().join("g.png"), 8, 8, 51);
    save_rgb(&t.path().join("r.png"), 8, 8, [255, 0, 0]);
    let spec = format!("folder:{}", t.path().display());
    let ds = load(&spec, &opts()).unwrap().train;
    assert_eq!(ds.channels, 3);
    assert!(ds.image(0).iter().all(|&v| v == 0.2)); // grey replicated to R, G, B
    let o = LoadOptions {
        grayscale: true,
        ..opts()
    };
    let ds = load(&spec, &o).unwrap().train;
    assert_eq!(ds.channels, 1);
    assert!(ds.image(1).iter().all(|&v| v > 0.1 && v < 0.4)); // red's luma
}

#[test]
fn folder_train_test_subfolders_are_the_splits() {
    let t = tempfile::tempdir().unwrap();
    for (split, classes) in [("train", &["a", "b"][..]), ("test", &["b"][..])] {
        for c in classes {
            let d = t.path().join(split).join(c);
            std::fs::create_dir_all(&d).unwrap();
            save_grey(&d.join("1.png"), 5, 5, 10);
            save_grey(&d.join("2.png"), 5, 5, 20);
        }
    }
    let spec = format!("folder:{}", t.path().display());
    let s = load(&spec, &opts()).unwrap();
    let test = s.test.unwrap();
    assert_eq!(s.train.labels.unwrap(), vec![0, 0, 1, 1]);
    assert_eq!(test.labels.unwrap(), vec![1, 1]);
    assert_eq!(test.class_names, vec!["a", "b"]);

    let d = t.path().join("test/zebra");
    std::fs::create_dir_all(&d).unwrap();
    save_grey(&d.join("1.png"), 5, 5, 10);
    assert_has(&err(&spec, &opts()), &["zebra", "no counterpart in train/"]);
}

#[test]
fn folder_undecodable_image_fails_or_is_skipped() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("only");
    std::fs::create_dir(&d).unwrap();
    save_rgb(&d.join("good.png"), 8, 8, [1, 2, 3]);
    save_rgb(&d.join("good2.jpg"), 8, 8, [1, 2, 3]);
    let bad = d.join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n this is not really a png").unwrap();
    let spec = format!("folder:{}", t.path().display());
    assert_has(
        &err(&spec, &opts()),
        &[&format!("reading {}", bad.display())],
    );
    let o = LoadOptions {
        skip_bad_images: true,
        ..opts()
    };
    let ds = load(&spec, &o).unwrap().train;
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.labels.unwrap(), vec![0, 0]);

    // Nothing left after skipping is still an error.
    std::fs::remove_file(d.join("good.png")).unwrap();
    std::fs::remove_file(d.join("good2.jpg")).unwrap();
    assert_has(&err(&spec, &o), &["no decodable images"]);
}

#[test]
fn folder_empty_missing_and_ambiguous() {
    let t = tempfile::tempdir().unwrap();
    let spec = format!("folder:{}", t.path().display());
    assert_has(
        &err(&spec, &opts()),
        &[&t.path().display().to_string(), "empty folder"],
    );
    std::fs::write(t.path().join("readme.txt"), "x").unwrap();
    assert_has(&err(&spec, &opts()), &["empty folder"]);
    std::fs::create_dir(t.path().join("empty_class")).unwrap();
    assert_has(&err(&spec, &opts()), &["empty_class", "empty class folder"]);
    save_grey(&t.path().join("loose.png"), 4, 4, 0);
    assert_has(&err(&spec, &opts()), &["loose.png", "class folder"]);
    assert_has(
        &err("folder:/no/such/folder", &opts()),
        &["/no/such/folder", "no such directory"],
    );
}
