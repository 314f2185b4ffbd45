//! Scaling study: power-law fits on synthetic data with known exponents, the mapping from
//! `--params` to GPT shapes, and a tiny 2 × 2 grid end to end (rows, fits, plot, reuse).

use burn::module::Module;
use selfsup::methods::clm::GptConfig;
use selfsup::pipeline::RunOptions;
use selfsup::report::fit::{fit_power_law, fit_power_law_offset};
use selfsup::scaling::{self, ModelShape, ParamSpec, ScalingOptions};

fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[test]
fn power_law_fit_recovers_a_known_exponent() {
    let x = [1e3, 3e3, 1e4, 3e4, 1e5, 3e5];
    let y: Vec<f64> = x.iter().map(|v: &f64| 7.0 * v.powf(-0.2)).collect();
    let f = fit_power_law(&x, &y).unwrap();
    assert!((f.alpha - 0.2).abs() < 1e-9, "{f:?}");
    assert!((f.a - 7.0).abs() < 1e-7, "{f:?}");
    assert!((f.r2 - 1.0).abs() < 1e-12 && f.c == 0.0 && f.points == 6);
    assert!(f.residuals.iter().all(|r| r.abs() < 1e-12));
    assert!((f.predict(1e4) - y[2]).abs() < 1e-9);
    assert_eq!(f.formula("N"), "L = 7.0000·N^-0.2000");

    // ±2% multiplicative noise: the exponent stays close, the fit is good but not perfect.
    let noise = [1.02, 0.98, 1.01, 0.99, 1.02, 0.98];
    let yn: Vec<f64> = y.iter().zip(noise).map(|(v, n)| v * n).collect();
    let g = fit_power_law(&x, &yn).unwrap();
    assert!((g.alpha - 0.2).abs() < 0.01, "{g:?}");
    assert!(g.r2 > 0.95 && g.r2 < 1.0, "{g:?}");
    for ((xi, yi), r) in x.iter().zip(&yn).zip(&g.residuals) {
        assert!((r - (yi.ln() - g.predict(*xi).ln())).abs() < 1e-12);
    }
}

#[test]
fn offset_fit_recovers_the_irreducible_loss() {
    let x = [1e2, 1e3, 1e4, 1e5, 1e6, 1e7];
    let y: Vec<f64> = x.iter().map(|v: &f64| 1.2 + 5.0 * v.powf(-0.3)).collect();
    let f = fit_power_law_offset(&x, &y).unwrap();
    assert!((f.c - 1.2).abs() < 1e-3, "{f:?}");
    assert!((f.alpha - 0.3).abs() < 1e-3, "{f:?}");
    assert!((f.a - 5.0).abs() < 0.02, "{f:?}");
    assert!(f.formula("D").ends_with(" + 1.200"), "{}", f.formula("D"));
    assert!(f.r2 > 0.999_999, "{f:?}");
    // The pure law bends to the floor with a flatter exponent and a worse fit.
    let p = fit_power_law(&x, &y).unwrap();
    assert!(p.alpha < 0.2 && p.r2 < f.r2, "{p:?}");
    // Three parameters through three points would fit anything.
    let e = err(fit_power_law_offset(&x[..3], &y[..3]));
    assert!(e.contains("at least 4 points"), "{e}");
}

#[test]
fn power_law_fit_rejects_bad_input() {
    let e = err(fit_power_law(&[10.0], &[1.0]));
    assert!(e.contains("at least 2 points"), "{e}");
    let e = err(fit_power_law(&[], &[]));
    assert!(e.contains("at least 2 points"), "{e}");
    for (x, y) in [
        ([0.0, 10.0], [2.0, 1.0]),
        ([1.0, 10.0], [2.0, -1.0]),
        ([1.0, 10.0], [2.0, 0.0]),
        ([1.0, f64::NAN], [2.0, 1.0]),
        ([1.0, 10.0], [f64::INFINITY, 1.0]),
    ] {
        let e = err(fit_power_law(&x, &y));
        assert!(e.contains("finite and positive"), "{x:?} {y:?}: {e}");
    }
    let e = err(fit_power_law(&[1.0, 2.0], &[1.0]));
    assert!(e.contains("2 x values but 1 y values"), "{e}");
    let e = err(fit_power_law(&[5.0, 5.0, 5.0], &[1.0, 2.0, 3.0]));
    assert!(e.contains("all x values are equal"), "{e}");
}

#[test]
fn params_map_to_shapes_and_n_counts_the_real_model() {
    let t = |n: usize| ModelShape::for_target(n).unwrap().label();
    assert_eq!(t(12_000), "1x32x2");
    assert_eq!(t(50_000), "2x48x3");
    assert_eq!(t(100_000), "2x64x4");
    assert_eq!(t(200_000), "4x64x4");
    assert_eq!(t(1_000_000), "5x128x8");
    // N is what the GPT actually holds, minus the token and position tables.
    for (shape, vocab, ctx) in [("2x64x4", 84, 64), ("1x48x3", 30, 16), ("3x32x1", 256, 32)] {
        let s = match shape.parse::<ParamSpec>().unwrap() {
            ParamSpec::Shape(s) => s,
            other => panic!("{shape} parsed as {other:?}"),
        };
        let gpt = GptConfig::new(vocab)
            .with_context_length(ctx)
            .with_d_model(s.d_model)
            .with_n_layers(s.n_layers)
            .with_n_heads(s.n_heads)
            .with_d_ff(4 * s.d_model)
            .init(&burn::prelude::Device::flex());
        assert_eq!(
            s.non_embedding_params() + s.embedding_params(vocab, ctx),
            gpt.num_params(),
            "{shape}"
        );
    }
    assert_eq!(
        ModelShape::for_target(100_000)
            .unwrap()
            .non_embedding_params(),
        100_096
    );
    assert_eq!(
        "2x64".parse::<ParamSpec>().unwrap(),
        ParamSpec::Shape(ModelShape::new(2, 64, 4).unwrap())
    );
    assert_eq!(
        "1.5M".parse::<ParamSpec>().unwrap(),
        ParamSpec::Target(1_500_000)
    );
    for (bad, needle) in [
        ("", "empty count"),
        ("0", "at least 1"),
        ("2x50", "not a multiple of 16"),
        ("2x0", "not a multiple of 16"),
        ("0x64", "must be positive"),
        ("2x64x5", "not a multiple of n_heads"),
        ("ax2", "whole numbers"),
        ("1x2x3x4", "expected LxD or LxDxH"),
        ("big", "not a count"),
    ] {
        let e = err(bad.parse::<ParamSpec>());
        assert!(e.contains(needle), "{bad:?}: {e}");
    }
}

#[test]
fn token_counts_parse_with_suffixes() {
    let p = |s: &str| scaling::parse_count(s).unwrap();
    assert_eq!(p("300k"), 300_000);
    assert_eq!(p("2.7M"), 2_700_000);
    assert_eq!(p("1e6"), 1_000_000);
    assert_eq!(p("250_000"), 250_000);
    assert_eq!(p(" 7 "), 7);
    for bad in ["0", "-5", "k", "1.5", "", "1e400"] {
        assert!(scaling::parse_count(bad).is_err(), "{bad:?} should fail");
    }
    assert_eq!(scaling::short_count(2_700_000), "2.70M");
    assert_eq!(scaling::short_count(12_768), "12.8k");
    assert_eq!(scaling::short_count(512), "512");
}

fn corpus(dir: &std::path::Path) -> String {
    let text: String = (0..300)
        .map(|i| format!("the cat sat on mat {}; a dog ran to log {}. ", i % 7, i % 5))
        .collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    format!("text:{}", p.display())
}

fn options(data: &str, out: &std::path::Path) -> ScalingOptions {
    ScalingOptions {
        data: data.into(),
        tokenizer: "char".into(),
        params: vec!["1x16x2".parse().unwrap(), "1x32x2".parse().unwrap()],
        tokens: vec![2048, 4096],
        context: 16,
        batch_size: 4,
        lr: 3e-3,
        val_batches: 4,
        seed: 3,
        out: out.to_path_buf(),
        run: RunOptions::default(),
    }
}

#[test]
fn tiny_grid_trains_fits_plots_and_reuses_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("grid");
    let o = options(&data, &out);
    let r = scaling::scaling_experiment(&o).unwrap();
    assert_eq!(r.rows.len(), 4);
    let mut cells: Vec<(usize, usize, usize)> = r
        .rows
        .iter()
        .map(|x| (x.n_params, x.tokens, x.steps))
        .collect();
    cells.sort();
    let (n1, n2) = (
        ModelShape::new(1, 16, 2).unwrap().non_embedding_params(),
        ModelShape::new(1, 32, 2).unwrap().non_embedding_params(),
    );
    assert_eq!(
        cells,
        vec![
            (n1, 2048, 32),
            (n1, 4096, 64),
            (n2, 2048, 32),
            (n2, 4096, 64)
        ]
    );
    for row in &r.rows {
        assert!(row.val_loss.is_finite() && row.val_loss > 0.0, "{row:?}");
        assert!(row.train_loss.is_finite() && !row.reused, "{row:?}");
        // Below the uniform guess ln(vocab): every run learned something.
        assert!(row.val_loss < (r.vocab_size as f64).ln(), "{row:?}");
    }
    assert_eq!(r.val_tokens, 4 * 4 * 16);
    let fit_n = r.fit_n.as_ref().unwrap();
    let fit_d = r.fit_d.as_ref().unwrap();
    assert_eq!((fit_n.over.as_str(), fit_n.at), ("N", 4096));
    assert_eq!((fit_d.over.as_str(), fit_d.at), ("D", n2));
    assert_eq!((r.fits_n.len(), r.fits_d.len()), (2, 2));
    assert!(fit_n.law.alpha.is_finite() && fit_d.law.alpha.is_finite());
    assert!(
        fit_n.with_offset.is_none(),
        "2 points cannot carry an offset"
    );
    // Warmup is 5% of the steps (2 of 32): the first step runs at half the peak rate.
    let first = std::fs::read_to_string(r.rows[0].run_dir.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let lr = line["lr"].as_f64().unwrap();
    assert!((lr - 1.5e-3).abs() < 1e-9, "{line}");

    let table = scaling::format_scaling(&r);
    assert!(
        table.contains("L(N) at D =") && table.contains("L(D) at N ="),
        "{table}"
    );
    assert_eq!(scaling::scaling_csv(&r.rows).lines().count(), 5);
    let files = scaling::plot_scaling(&r, &out).unwrap();
    assert_eq!(files.len(), 2);
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() > 1000,
            "{}",
            f.display()
        );
    }

    // Same command again: every run is reused, same numbers.
    let again = scaling::scaling_experiment(&o).unwrap();
    for (a, b) in r.rows.iter().zip(&again.rows) {
        assert!(b.reused);
        assert_eq!(a.val_loss, b.val_loss);
    }
    // Same seed in a fresh folder: the same numbers (one cell is enough).
    let mut one = options(&data, &dir.path().join("one"));
    one.params.truncate(1);
    one.tokens.truncate(1);
    let fresh = scaling::scaling_experiment(&one).unwrap();
    assert_eq!(fresh.rows[0].val_loss, r.rows[0].val_loss);
    assert!(fresh.fit_n.is_none() && fresh.fit_d.is_none());
    // Other settings in the same folder are refused, naming the key.
    let mut other = options(&data, &out);
    other.lr = 1e-3;
    let e = err(scaling::scaling_experiment(&other));
    assert!(e.contains("train.lr") && e.contains("another --out"), "{e}");
}

#[test]
fn bad_grids_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("grid");
    let run = |f: &dyn Fn(&mut ScalingOptions)| {
        let mut o = options(&data, &out);
        f(&mut o);
        err(scaling::scaling_experiment(&o))
    };
    let e = run(&|o| o.params.clear());
    assert!(e.contains("--params is empty"), "{e}");
    let e = run(&|o| o.tokens.clear());
    assert!(e.contains("--tokens is empty"), "{e}");
    let e = run(&|o| o.tokens = vec![0]);
    assert!(e.contains("must be positive"), "{e}");
    let e = run(&|o| o.tokens = vec![10]);
    assert!(e.contains("less than one step of 64 tokens"), "{e}");
    let e = run(&|o| o.tokens = vec![2048, 2050]);
    assert!(e.contains("round to the same 32 steps"), "{e}");
    let e = run(&|o| o.params.push("1x32".parse().unwrap()));
    assert!(e.contains("same model 1x32x2"), "{e}");
    let e = run(&|o| o.lr = 0.0);
    assert!(e.contains("--lr must be positive"), "{e}");
    let e = run(&|o| {
        o.context = 50_000;
        o.tokens = vec![200_000];
    });
    assert!(e.contains("context of 50000 tokens"), "{e}");
    let e = run(&|o| o.data = format!("text:{}", dir.path().join("missing.txt").display()));
    assert!(e.contains("missing.txt"), "{e}");
    assert!(!out.join("N1056_D2048").exists(), "nothing was trained");
}
