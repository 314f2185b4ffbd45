//! `selfsup experiment text-classify` as a user runs it: bad input gives one clear error (exit 1,
//! no panic); a bag-of-words run on a tiny Brown-format corpus writes the table, CSV and JSON.

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
        err.contains("error: ") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

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
