//! Charts: `selfsup::report::plot` writes PNG + SVG for line plots, panel plots and run metrics.

use std::fs;
use std::path::{Path, PathBuf};

use selfsup::report::plot::{
    line_plot, panel_plot, plot_run, PlotSpec, Series, LINE_PLOT_SIZE, PANEL_SIZE,
};

/// A temporary output folder; with `SELFSUP_KEEP_PLOTS` set it is kept for inspection.
struct Out {
    _tmp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Out {
    fn path(&self) -> &Path {
        &self.path
    }
}

fn out_dir() -> Out {
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("SELFSUP_KEEP_PLOTS").is_some() {
        let path = dir.keep();
        eprintln!("plots kept in {}", path.display());
        return Out { _tmp: None, path };
    }
    Out {
        path: dir.path().to_path_buf(),
        _tmp: Some(dir),
    }
}

fn spec(title: &str, log_x: bool, log_y: bool) -> PlotSpec {
    PlotSpec {
        title: title.into(),
        x_label: "labels".into(),
        y_label: "accuracy".into(),
        log_x,
        log_y,
    }
}

/// Decodes the PNG, checks its size, and returns the number of distinct-from-white pixels.
fn check_png(path: &Path, size: (u32, u32)) -> usize {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
}

/// Whether the PNG contains a pixel close to `rgb` (series colours are drawn opaque).
fn png_has_color(path: &Path, rgb: [u8; 3]) -> bool {
    let img = image::open(path).unwrap().to_rgb8();
    img.pixels()
        .any(|p| p.0.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 2))
}

fn svg_text(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap();
    assert!(
        s.starts_with("<svg") || s.starts_with("<?xml"),
        "{}",
        &s[..s.len().min(80)]
    );
    assert!(s.trim_end().ends_with("</svg>"));
    s
}

#[test]
fn line_plot_writes_png_and_svg_with_legend() {
    let dir = out_dir();
    let stem = dir.path().join("sub/acc_vs_labels");
    let a = Series::new(
        "simclr probe",
        vec![(10.0, 0.42), (100.0, 0.71), (1000.0, 0.85)],
    );
    let b = Series::with_band(
        "byol <kNN>",
        vec![(10.0, 0.40), (100.0, 0.69), (1000.0, 0.88)],
        vec![0.05, 0.02, 0.01],
    );
    let files = line_plot(&stem, &spec("Label efficiency", false, false), &[a, b]).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0], dir.path().join("sub/acc_vs_labels.png"));
    assert_eq!(files[1], dir.path().join("sub/acc_vs_labels.svg"));
    let ink = check_png(&files[0], LINE_PLOT_SIZE);
    assert!(ink > 5_000, "PNG looks empty ({ink} non-white pixels)");
    // Distinct colours for the two series.
    assert!(png_has_color(&files[0], [31, 119, 180]));
    assert!(png_has_color(&files[0], [255, 127, 14]));
    let svg = svg_text(&files[1]);
    assert!(svg.contains("simclr probe"));
    assert!(
        svg.contains("byol &lt;kNN&gt;"),
        "series name must be XML-escaped"
    );
    assert!(svg.contains("Label efficiency"));
    assert!(svg.contains("accuracy"));
    // A trailing .png on the stem is not doubled.
    let again = line_plot(&dir.path().join("x.png"), &spec("t", false, false), &[]).unwrap();
    assert_eq!(again[0], dir.path().join("x.png"));
    assert_eq!(again[1], dir.path().join("x.svg"));
}

#[test]
fn log_axes_skip_non_positive_and_non_finite_points() {
    let dir = out_dir();
    let s = Series::new(
        "loss",
        vec![
            (1e4, 3.2),
            (0.0, 2.0),      // x ≤ 0: skipped on log x
            (1e5, f64::NAN), // skipped
            (1e6, 2.1),
            (1e7, -1.0),          // y ≤ 0: skipped on log y
            (f64::INFINITY, 1.0), // skipped
            (1e8, 1.6),
        ],
    );
    let band = Series::with_band("fit", vec![(1e4, 3.0), (1e8, 1.5)], vec![5.0, 0.1]);
    let files = line_plot(
        &dir.path().join("scaling"),
        &spec("Scaling", true, true),
        &[s.clone(), band],
    )
    .unwrap();
    assert!(check_png(&files[0], LINE_PLOT_SIZE) > 5_000);
    let svg = svg_text(&files[1]);
    assert!(svg.contains("loss") && svg.contains("fit"));
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "non-finite coordinates leaked"
    );
    // Log x only, log y only, and a narrow log range (less than a decade).
    for (lx, ly) in [(true, false), (false, true)] {
        line_plot(
            &dir.path().join(format!("l{lx}{ly}")),
            &spec("t", lx, ly),
            std::slice::from_ref(&s),
        )
        .unwrap();
    }
    let narrow = Series::new("n", vec![(1.0, 0.31), (2.0, 0.35), (3.0, 0.4)]);
    let f = line_plot(
        &dir.path().join("narrow"),
        &spec("t", false, true),
        &[narrow],
    )
    .unwrap();
    let svg = svg_text(&f[1]);
    let ticks = ["0.32", "0.34", "0.36", "0.38"];
    assert!(
        ticks.iter().all(|t| svg.contains(t)),
        "narrow log axis needs tick labels"
    );
}

#[test]
fn empty_and_single_point_series_are_drawn() {
    let dir = out_dir();
    let empty = Series::new("empty", vec![]);
    let nan_only = Series::new("nan only", vec![(f64::NAN, 1.0)]);
    let single = Series::with_band("single", vec![(5.0, 0.5)], vec![0.1]);
    let files = line_plot(
        &dir.path().join("mixed"),
        &spec("Mixed", false, false),
        &[empty, nan_only, single],
    )
    .unwrap();
    check_png(&files[0], LINE_PLOT_SIZE);
    let svg = svg_text(&files[1]);
    assert!(svg.contains("single"));
    assert!(
        !svg.contains("nan only"),
        "a series with nothing to draw gets no legend entry"
    );

    // No series at all, or nothing drawable: still both files, with a note.
    for (name, series) in [
        ("none", vec![]),
        ("allnan", vec![Series::new("x", vec![(1.0, f64::NAN)])]),
    ] {
        let files = line_plot(
            &dir.path().join(name),
            &spec("Nothing", true, true),
            &series,
        )
        .unwrap();
        check_png(&files[0], LINE_PLOT_SIZE);
        assert!(svg_text(&files[1]).contains("no data"));
    }
}

#[test]
fn panel_plot_grid_shares_x_axis() {
    let dir = out_dir();
    let steps: Vec<f64> = (0..200).map(f64::from).collect();
    let curve = |f: &dyn Fn(f64) -> f64| steps.iter().map(|&s| (s, f(s))).collect::<Vec<_>>();
    let panels = vec![
        (
            "loss".to_string(),
            vec![Series::new("train", curve(&|s| 3.0 / (1.0 + s / 20.0)))],
        ),
        (
            "lr".to_string(),
            vec![Series::new("lr", curve(&|s| 1e-3 * (1.0 - s / 200.0)))],
        ),
        (
            "collapse std".to_string(),
            vec![
                Series::new("simclr", curve(&|_| 1.0)),
                Series::new("positives only", curve(&|s| (-s / 50.0).exp())),
            ],
        ),
    ];
    let files = panel_plot(&dir.path().join("panels"), "Diagnostics", "step", &panels).unwrap();
    let size = (PANEL_SIZE.0 * 2, PANEL_SIZE.1 * 2 + 40);
    assert!(check_png(&files[0], size) > 10_000);
    let svg = svg_text(&files[1]);
    for s in [
        "Diagnostics",
        "loss",
        "lr",
        "collapse std",
        "positives only",
        "step",
    ] {
        assert!(svg.contains(s), "missing {s:?}");
    }
    // One panel: one column.
    let one = panel_plot(&dir.path().join("one"), "", "step", &panels[..1]).unwrap();
    check_png(&one[0], PANEL_SIZE);

    let err = panel_plot(&dir.path().join("zero"), "t", "step", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("no panels"), "{err:#}");
}

#[test]
fn plot_run_draws_one_panel_per_numeric_metric() {
    let dir = out_dir();
    let run = dir.path().join("run-simclr");
    fs::create_dir_all(&run).unwrap();
    let mut lines = Vec::new();
    for step in 1..=60 {
        lines.push(format!(
            r#"{{"step":{step},"epoch":{},"loss":{},"lr":{},"samples_per_s":{},"data_wait_frac":0.1,"method":"simclr"}}"#,
            step / 20,
            4.0 / (step as f64).sqrt(),
            1e-3 * step as f64 / 60.0,
            500 + step
        ));
        if step % 20 == 0 {
            lines.push(format!(
                r#"{{"step":{step},"epoch":{},"val_loss":{},"collapse_std":0.9,"effective_rank":{},"alignment":0.5,"uniformity":-2.1,"knn_acc":null}}"#,
                step / 20,
                3.0 / (step as f64).sqrt(),
                10 + step / 10
            ));
        }
    }
    lines.push(String::new()); // trailing blank line is fine
    fs::write(run.join("metrics.jsonl"), lines.join("\n")).unwrap();

    let files = plot_run(&run).unwrap();
    assert_eq!(files[0], run.join("plots/training.png"));
    assert_eq!(files[1], run.join("plots/training.svg"));
    // 10 numeric keys (epoch, step skipped; "method" string and null knn_acc ignored) → 5 rows.
    check_png(&files[0], (PANEL_SIZE.0 * 2, PANEL_SIZE.1 * 5 + 40));
    let svg = svg_text(&files[1]);
    for key in [
        "loss",
        "lr",
        "samples_per_s",
        "data_wait_frac",
        "val_loss",
        "collapse_std",
        "effective_rank",
        "alignment",
        "uniformity",
        "run-simclr",
    ] {
        assert!(svg.contains(key), "missing panel {key}");
    }
    // Known metrics in reading order: loss, val_loss, lr, diagnostics, throughput last.
    let at = |k: &str| {
        svg.find(&format!("\n{k}\n"))
            .unwrap_or_else(|| panic!("{k}"))
    };
    let order = [
        "loss",
        "val_loss",
        "lr",
        "collapse_std",
        "uniformity",
        "samples_per_s",
    ];
    assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "panel order");
    assert!(!svg.contains("knn_acc") && !svg.contains(">epoch<") && !svg.contains("method"));
}

#[test]
fn plot_run_long_series_is_reduced() {
    let dir = out_dir();
    let text: String = (0..20_000)
        .map(|s| {
            format!(
                "{{\"step\":{s},\"loss\":{}}}\n",
                1.0 + (s as f64 * 0.1).sin()
            )
        })
        .collect();
    fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
    let files = plot_run(dir.path()).unwrap();
    check_png(&files[0], (PANEL_SIZE.0, PANEL_SIZE.1 + 40));
    let svg_len = fs::metadata(&files[1]).unwrap().len();
    assert!(
        svg_len < 200_000,
        "SVG of a 20k-step run is {svg_len} bytes"
    );
}

#[test]
fn bad_inputs_give_errors_naming_the_problem() {
    let dir = out_dir();
    let msg = |e: anyhow::Error| format!("{e:#}");

    // Missing metrics file.
    let e = msg(plot_run(&dir.path().join("nope")).unwrap_err());
    assert!(e.contains("metrics.jsonl"), "{e}");

    // Malformed lines: error names file and line number.
    let cases = [
        (
            "{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\":\n",
            "line 2",
            "invalid JSON",
        ),
        ("{\"step\":1,\"loss\":2}\n\n[1,2]\n", "line 3", "object"),
        ("{\"loss\":2}\n", "line 1", "missing \"step\""),
        ("{\"step\":\"one\",\"loss\":2}\n", "line 1", "not a number"),
        (
            "{\"step\":1}\n{\"step\":2,\"note\":\"x\"}\n",
            "metrics.jsonl",
            "no numeric metrics",
        ),
        ("", "metrics.jsonl", "no numeric metrics"),
    ];
    for (i, (text, where_, what)) in cases.iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join("metrics.jsonl"), text).unwrap();
        let e = msg(plot_run(&run).unwrap_err());
        assert!(e.contains(where_) && e.contains(what), "case {i}: {e}");
        assert!(
            e.contains(&run.join("metrics.jsonl").display().to_string()),
            "case {i}: {e}"
        );
    }

    // Band of the wrong length, negative band.
    let s = Series::with_band("acc", vec![(1.0, 0.5), (2.0, 0.6)], vec![0.1]);
    let e = msg(line_plot(&dir.path().join("b1"), &spec("t", false, false), &[s]).unwrap_err());
    assert!(e.contains("acc") && e.contains("band"), "{e}");
    let s = Series::with_band("acc", vec![(1.0, 0.5)], vec![-0.1]);
    let e = msg(line_plot(&dir.path().join("b2"), &spec("t", false, false), &[s]).unwrap_err());
    assert!(e.contains("negative"), "{e}");

    // Unwritable output: the error names the file.
    let blocker = dir.path().join("file");
    fs::write(&blocker, "not a folder").unwrap();
    let e = msg(line_plot(&blocker.join("plot"), &spec("t", false, false), &[]).unwrap_err());
    assert!(e.contains(&blocker.display().to_string()), "{e}");
}
