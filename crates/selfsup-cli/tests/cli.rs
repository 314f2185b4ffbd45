//! The `selfsup` binary as a user runs it: bad input gives one clear error and exit code 1, never
//! a panic; good input works end to end with --json.

use std::process::Command;

fn selfsup(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .args(args)
        .output()
        .expect("run selfsup");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn fails_with(args: &[&str], needle: &str) {
    let (code, _, err) = selfsup(args);
    assert_eq!(code, 1, "{args:?} should exit 1; stderr: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

#[test]
fn bad_input_gives_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("run");
    let out = out.to_str().unwrap();
    // Wrong magic number in an IDX file.
    let idx = d.join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    let mut bytes = vec![0u8, 0, 8, 3];
    bytes.extend([0u8; 12]);
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(idx.join(name), [0u8, 0, 9, 9, 0, 0, 0, 1]).unwrap();
    }
    let spec = format!("mnist:{}", idx.display());
    fails_with(&["pretrain", "--data", &spec, "--out", out], "magic");
    fails_with(
        &[
            "pretrain",
            "--data",
            "mnist:/definitely/not/here",
            "--out",
            out,
        ],
        "/definitely/not/here",
    );
    fails_with(
        &["pretrain", "--data", "nonsense", "--out", out],
        "unknown dataset",
    );
    fails_with(
        &[
            "pretrain",
            "--data",
            "digits",
            "--out",
            out,
            "--set",
            "train.lr_max=1",
        ],
        "lr_max",
    );
    fails_with(
        &[
            "pretrain",
            "--data",
            "digits",
            "--out",
            out,
            "--batch-size",
            "1",
        ],
        "negatives",
    );
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, "method = \"simclr\"\ndata = \"digits\"\ncolour = 1\n").unwrap();
    fails_with(
        &["pretrain", "--config", cfg.to_str().unwrap(), "--out", out],
        "colour",
    );
    fails_with(
        &["probe", "--run", d.to_str().unwrap()],
        "not a selfsup run folder",
    );
    fails_with(
        &[
            "knn",
            "--run",
            "pixels",
            "--data",
            "digits",
            "--labels",
            "3 per class",
        ],
        "3 per class",
    );
}

#[test]
fn icl_vs_finetune_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("none.gguf");
    let model = model.to_str().unwrap();
    let base = ["experiment", "icl-vs-finetune", "--model", model];
    fails_with(&[&base[..], &["--k", "0,4"]].concat(), "k = 0");
    fails_with(
        &[&base[..], &["--task", "nonsense"]].concat(),
        "unknown task",
    );
    fails_with(&base, "none.gguf");
}

#[test]
fn pretrain_probe_knn_embed_augment_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let run_s = run.to_str().unwrap();
    let j = d.join("p.json");
    let (code, _, err) = selfsup(&[
        "pretrain",
        "--data",
        "digits",
        "--out",
        run_s,
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--set",
        "encoder.widths=[8,16]",
        "--set",
        "encoder.strides=[1,2]",
        "--json",
        j.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(report["steps"], 11);
    let j = d.join("probe.json");
    let (code, out, err) = selfsup(&[
        "probe",
        "--run",
        run_s,
        "--labels",
        "2/class,100%",
        "--draws",
        "2",
        "--json",
        j.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2/class") && out.contains("100%"), "{out}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    let acc = rows[1]["mean"].as_f64().unwrap();
    assert!(acc > 0.5 && acc <= 1.0, "probe accuracy {acc}");
    let (code, _, err) = selfsup(&["knn", "--run", run_s, "--labels", "10%"]);
    assert_eq!(code, 0, "{err}");
    // A grid-pooled probe reads C·4 features and still learns the digits.
    let (code, out, err) = selfsup(&[
        "probe",
        "--run",
        run_s,
        "--labels",
        "100%",
        "--draws",
        "1",
        "--pool-grid",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("100%"), "{out}");
    let (code, _, err) = selfsup(&["probe", "--run", run_s, "--pool-grid", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("pool-grid"), "{err}");
    let emb = d.join("emb");
    let (code, _, err) = selfsup(&["embed", "--run", run_s, "--out", emb.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let npy = std::fs::read(emb.join("test_embeddings.npy")).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let png = d.join("grid.png");
    let (code, _, err) = selfsup(&[
        "augment",
        "--data",
        "digits",
        "--out",
        png.to_str().unwrap(),
        "--images",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::metadata(&png).unwrap().len() > 100);
}

#[test]
fn experiment_scaling_rejects_bad_grids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scaling");
    let out = out.to_str().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "to be or not to be, that is the question. ".repeat(50),
    )
    .unwrap();
    let data = format!("text:{}", text.display());
    let base = ["experiment", "scaling", "--data", &data, "--out", out];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    for (extra, needle) in [
        (&["--params", ""][..], "empty count"),
        (&["--params", "2x50"], "not a multiple of 16"),
        (&["--tokens", "0"], "at least 1"),
        (&["--tokens", "10"], "less than one step"),
        (&["--lr", "0"], "--lr must be positive"),
    ] {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        fails_with(&args, needle);
    }
    // The default corpus, missing from an empty data cache, names the fetch command.
    let r = Command::new(env!("CARGO_BIN_EXE_selfsup"))
        .args(["experiment", "scaling", "--out", out])
        .env("SELFSUP_DATA", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("get.sh shakespeare"), "{err}");
}

#[test]
fn icl_regression_runs_and_rejects_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reg");
    let out = out.to_str().unwrap();
    let base = ["experiment", "icl-regression", "--out", out];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { base.iter().chain(extra).copied().collect() };
    fails_with(&with(&["--heads", "3"]), "not a multiple of n_heads 3");
    fails_with(&with(&["--dim", "0"]), "dim must be at least 1");
    fails_with(&with(&["--lr", "0"]), "lr must be positive");
    fails_with(
        &with(&["--noise=-1"]),
        "noise must be a finite standard deviation",
    );
    let j = dir.path().join("r.json");
    let args = with(&[
        "--dim",
        "2",
        "--points",
        "4",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--eval-sequences",
        "32",
        "--seed",
        "3",
        "--json",
    ]);
    let mut args = args;
    args.push(j.to_str().unwrap());
    let (code, table, err) = selfsup(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("least squares") && table.contains("3-NN"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(report["steps"], 6);
    assert_eq!(report["curves"].as_array().unwrap().len(), 4);
    for f in [
        "icl_regression.csv",
        "icl_regression.png",
        "icl_regression.svg",
    ] {
        assert!(dir.path().join("reg").join(f).exists(), "{f} missing");
    }
}

// experiment text-classify (Brown-format corpus written by the test).

fn corpus(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (g, w) in [('a', "cat"), ('b', "stocks")] {
        for f in 1..=5 {
            let s = format!("\tThe/at {w}/nn moved/vbd ./.\n\n");
            std::fs::write(dir.join(format!("c{g}{f:02}")), s.repeat(6)).unwrap();
        }
    }
}

#[test]
fn text_classify_errors_and_bag_of_words_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("brown");
    corpus(&data);
    let spec = format!("brown:{}", data.display());
    let out = d.join("out");
    let out = out.to_str().unwrap();
    let base = ["experiment", "text-classify", "--out", out];

    let missing = format!("brown:{}", d.join("absent").display());
    fails_with(&[&base[..], &["--data", &missing]].concat(), "absent");
    fails_with(
        &[&base[..], &["--data", "imdb"]].concat(),
        "unknown text classification data",
    );
    fails_with(
        &[&base[..], &["--data", &spec, "--labels", "5"]].concat(),
        "ambiguous",
    );
    let norun = d.join("norun");
    let norun = norun.to_str().unwrap();
    fails_with(
        &[&base[..], &["--data", &spec, "--model", norun]].concat(),
        "config.toml",
    );
    std::fs::write(data.join("cb03"), "\tThe/at cat\n").unwrap();
    fails_with(&[&base[..], &["--data", &spec]].concat(), "cb03:1");
    corpus(&data);

    let json = d.join("r.json");
    let (code, stdout, err) = selfsup(
        &[
            &base[..],
            &[
                "--data",
                &spec,
                "--labels",
                "1/class,100%",
                "--draws",
                "2",
                "--seed",
                "1",
                "--json",
                json.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("bag of words · logistic regression"),
        "{stdout}"
    );
    assert!(stdout.contains("100% (16)"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["rows"][1]["mean"].as_f64().unwrap(), 1.0);
    assert!(std::path::Path::new(out).join("text_classify.csv").exists());
}

#[test]
fn matmul_precision_is_checked_recorded_and_warned_about_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("x.png");
    let png = png.to_str().unwrap();
    let (code, _, err) = selfsup(&["--matmul-precision", "fp16", "augment", "--out", png]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown matmul precision \"fp16\""), "{err}");
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let j = dir.path().join("p.json");
    let args = [
        "--matmul-precision",
        "bf16",
        "pretrain",
        "--data",
        "digits",
        "--out",
        run_s,
        "--steps",
        "3",
        "--batch-size",
        "64",
        "--set",
        "encoder.widths=[16,32]",
        "--set",
        "encoder.strides=[1,2]",
        "--json",
        j.to_str().unwrap(),
    ];
    if !selfsup::nn::bf16_gemm::bf16_supported() {
        fails_with(&args, "AVX512_BF16");
        return;
    }
    let (code, _, err) = selfsup(&args);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    assert_eq!(report["matmul_precision"], "bf16");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["matmul_precision"], "bf16");
    // Resuming in fp32 works but says that the numbers will not continue the bf16 run's.
    let (code, _, err) = selfsup(&["pretrain", "--resume", run_s, "--steps", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("trained with --matmul-precision bf16 and resumes with fp32"),
        "{err}"
    );
}
