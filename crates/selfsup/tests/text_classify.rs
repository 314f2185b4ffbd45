//! Text downstream on a tiny Brown-format corpus written here: the reader (tag stripping, passage
//! cutting, split by file, errors), bag-of-words features, and the experiment end to end with tiny
//! GPT and MLM runs.

use selfsup::data::brown::{self, BrownConfig};
use selfsup::eval::text_finetune::TextFinetuneConfig;
use selfsup::eval::ProbeConfig;
use selfsup::pipeline::RunOptions;
use selfsup::text_classify::{self, TextClassifyOptions};
use selfsup::text_pipeline::{self, TextPretrainConfig};
use std::path::Path;

/// Two separable "genres": a = animals at home, b = markets. `files` files per genre, each of
/// `sentences` tagged sentences in the corpus' layout (tab-indented lines, blank lines between).
fn write_corpus(dir: &Path, files: usize, sentences: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("CONTENTS"), "A. PRESS: REPORTAGE\n").unwrap();
    std::fs::write(dir.join("README"), "not a corpus file\n").unwrap();
    let a = ["cat", "dog", "mat", "sofa", "kitten", "puppy"];
    let b = ["stocks", "bonds", "market", "shares", "prices", "banks"];
    for (genre, words) in [('a', a), ('b', b)] {
        for f in 1..=files {
            let mut text = String::new();
            for s in 0..sentences {
                let w1 = words[(f + s) % words.len()];
                let w2 = words[(f * 3 + s * 5) % words.len()];
                text += &format!(
                    "\n\n\tThe/at {w1}/nn and/cc the/at {w2}/nn ``/`` moved/vbd ''/'' ,/, 1-1/2/cd times/nns ./.\n"
                );
            }
            std::fs::write(dir.join(format!("c{genre}{f:02}")), text).unwrap();
        }
    }
}

fn cfg(sentences: usize) -> BrownConfig {
    BrownConfig {
        sentences,
        test_every: 5,
    }
}

#[test]
fn reader_strips_tags_cuts_passages_and_splits_by_file() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path(), 6, 7);
    let data = brown::load_brown(dir.path(), &cfg(3)).unwrap();
    assert_eq!(data.classes, vec!["press: reportage", "press: editorial"]);
    // 7 sentences → passages of 3 and 3; the remainder of 1 (under half of 3) is dropped.
    // Per genre files 01–04 and 06 train, 05 test.
    assert_eq!(data.train.len(), 2 * 5 * 2);
    assert_eq!(data.test.len(), 2 * 2);
    let p = &data.train[0];
    assert_eq!(p.file, "ca01");
    assert_eq!(p.label, 0);
    assert_eq!(p.words.len(), 3 * 12);
    assert_eq!(p.words[0], "The");
    assert_eq!(p.words[9], "1-1/2");
    // Tags gone (split at the last `/`, so 1-1/2 stays whole), quotes and punctuation attached.
    assert!(
        p.text
            .starts_with("The dog and the sofa \"moved\", 1-1/2 times. The "),
        "{}",
        p.text
    );
    assert!(!p.text.contains("/nn") && !p.text.contains("``"));
    // No file in both splits; the test files are exactly the 5th of each genre.
    let mut test_files: Vec<&str> = data.test.iter().map(|p| p.file.as_str()).collect();
    test_files.dedup();
    assert_eq!(test_files, vec!["ca05", "cb05"]);
    assert!(data
        .train
        .iter()
        .all(|p| !test_files.contains(&p.file.as_str())));
    assert!(data
        .test
        .iter()
        .all(|p| p.label == u32::from(p.file == "cb05")));

    // A file shorter than a passage still gives one; fewer than 5 files → the last one is test.
    let small = tempfile::tempdir().unwrap();
    write_corpus(small.path(), 3, 2);
    let d = brown::load_brown(small.path(), &cfg(4)).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (4, 2));
    assert!(d.test.iter().all(|p| p.file.ends_with("03")));

    // Exported train text never holds a test file.
    let out = dir.path().join("train-text");
    assert_eq!(brown::write_train_text(&data, &out).unwrap(), 10);
    assert!(out.join("ca01.txt").exists() && !out.join("ca05.txt").exists());
    let text = std::fs::read_to_string(out.join("ca01.txt")).unwrap();
    assert_eq!(text.lines().count(), 2);
}

fn err(r: anyhow::Result<brown::TextClassData>) -> String {
    format!("{:#}", r.expect_err("should fail"))
}

#[test]
fn reader_errors_name_the_file_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("nope");
    let e = err(brown::load_brown(&missing, &cfg(3)));
    assert!(e.contains("nope") && e.contains("no such folder"), "{e}");
    let e = err(brown::load_text_classification(
        &format!("brown:{}", missing.display()),
        &cfg(3),
    ));
    assert!(e.contains("nope"), "{e}");
    assert!(err(brown::load_text_classification("imdb", &cfg(3))).contains("unknown"));

    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("README"), "x").unwrap();
    assert!(err(brown::load_brown(&empty, &cfg(3))).contains("no Brown corpus files"));

    let bad = d.join("bad");
    write_corpus(&bad, 2, 3);
    std::fs::write(bad.join("cb02"), "\tThe/at cat/nn\n\tsat on/in\n").unwrap();
    let e = err(brown::load_brown(&bad, &cfg(3)));
    assert!(e.contains("cb02:2") && e.contains("\"sat\""), "{e}");
    std::fs::write(bad.join("cb02"), [0xffu8, 0xfe, b'/', b'x']).unwrap();
    assert!(err(brown::load_brown(&bad, &cfg(3))).contains("invalid UTF-8"));

    let one = d.join("one");
    write_corpus(&one, 2, 3);
    std::fs::remove_file(one.join("cb01")).unwrap();
    let e = err(brown::load_brown(&one, &cfg(3)));
    assert!(e.contains("only the file") && e.contains("cb02"), "{e}");
    std::fs::remove_file(one.join("cb02")).unwrap();
    assert!(err(brown::load_brown(&one, &cfg(3))).contains("only one genre"));
    write_corpus(&one, 2, 3);
    std::fs::write(one.join("cz01"), "\tThe/at\n").unwrap();
    assert!(err(brown::load_brown(&one, &cfg(3))).contains("unknown Brown genre"));
}

#[test]
fn bag_of_words_vocabulary_comes_from_train_only() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path(), 5, 6);
    let mut data = brown::load_brown(dir.path(), &cfg(3)).unwrap();
    // A test passage of words never seen in training has all-zero features.
    data.test[0].words = vec!["zebra".into(), "quokka".into()];
    let set = text_classify::bow_features(&data.train, &data.test, 1000).unwrap();
    assert_eq!(set.train.len(), data.train.len() * set.dim);
    assert_eq!(set.test.len(), data.test.len() * set.dim);
    // 12 content words + the/and/moved/times/1-1/2 and the punctuation `` '' , .
    assert_eq!(set.dim, 12 + 5 + 4);
    assert!(set.test[..set.dim].iter().all(|&v| v == 0.0));
    // log(1 + count): "the" occurs twice per sentence, 6 times in a passage of 3.
    assert!(set.train.iter().any(|&v| (v - 7f32.ln()).abs() < 1e-6));
    let capped = text_classify::bow_features(&data.train, &data.test, 5).unwrap();
    assert_eq!(capped.dim, 5);
}

fn tiny_run(method: &str, data: &Path, out: &Path) {
    let mut c = TextPretrainConfig::new(method, &format!("text:{}", data.display()));
    c.tokenizer = "char".into();
    c.context = 32;
    c.model.d_model = 16;
    c.model.n_layers = 1;
    c.model.n_heads = 2;
    c.train.batch_size = 4;
    c.train.steps = Some(3);
    c.train.eval_every = 1000;
    c.val_batches = 1;
    text_pipeline::pretrain_text(&c, out, &RunOptions::default()).unwrap();
}

#[test]
fn experiment_end_to_end_with_tiny_gpt_and_mlm() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("brown");
    write_corpus(&corpus, 5, 6);
    // A character only a test file holds: the runs' char vocabularies (from the train text) lack
    // it, and tokenizing must drop it instead of failing.
    let test_file = corpus.join("ca05");
    let t = std::fs::read_to_string(&test_file).unwrap();
    std::fs::write(&test_file, t.replacen("The/at", "{The/at", 1)).unwrap();
    let data = brown::load_brown(&corpus, &cfg(3)).unwrap();
    assert!(data.test[0].text.starts_with("{The"));
    let text = dir.path().join("text");
    brown::write_train_text(&data, &text).unwrap();
    let (gpt, mlm) = (dir.path().join("gpt"), dir.path().join("mlm"));
    tiny_run("gpt", &text, &gpt);
    tiny_run("mlm", &text, &mlm);
    let o = TextClassifyOptions {
        data: format!("brown:{}", corpus.display()),
        brown: cfg(3),
        models: vec![gpt.display().to_string(), mlm.display().to_string()],
        budgets: vec!["2/class".parse().unwrap(), "100%".parse().unwrap()],
        draws: 2,
        seed: 3,
        bow_vocab: 1000,
        probe: ProbeConfig::default(),
        finetune: TextFinetuneConfig {
            steps: 4,
            batch_size: 8,
            ..Default::default()
        },
        scratch: true,
        run: RunOptions::default(),
    };
    let report = text_classify::text_classify_experiment(&o).unwrap();
    assert_eq!((report.train_passages, report.test_passages), (16, 4));
    assert_eq!((report.train_files, report.test_files), (8, 2));
    let rows = &report.rows;
    let gpt_name = "gpt (gpt)";
    let mlm_name = "mlm (mlm)";
    for (m, p) in [
        ("bag of words", "logistic regression"),
        (gpt_name, "linear probe"),
        ("gpt random-init", "linear probe"),
        (gpt_name, "fine-tune"),
        ("gpt random-init", "from scratch"),
        (mlm_name, "linear probe"),
        ("mlm random-init", "linear probe"),
        (mlm_name, "fine-tune"),
        ("mlm random-init", "from scratch"),
    ] {
        for (b, labels) in [("2/class", 4), ("100%", 16)] {
            let r = rows
                .iter()
                .find(|r| r.method == m && r.protocol == p && r.budget == b)
                .unwrap_or_else(|| panic!("missing {m} · {p} at {b}"));
            assert_eq!(r.labels, labels);
            assert_eq!(r.runs.len(), 2);
            assert!(
                r.runs.iter().all(|a| (0.0..=1.0).contains(a)),
                "{m} {p} {b}: {:?}",
                r.runs
            );
        }
    }
    assert_eq!(rows.len(), 9 * 2);
    // The genres share no content word: bag of words separates them with all labels, and even
    // with 2 per class beats chance (0.5).
    let bow = |b: &str| {
        rows.iter()
            .find(|r| r.method == "bag of words" && r.budget == b)
            .unwrap()
            .mean
    };
    assert_eq!(bow("100%"), 1.0);
    assert!(bow("2/class") > 0.5, "{}", bow("2/class"));
    // The table names every row; the same seed gives the same numbers.
    let table = selfsup::experiment::format_efficiency(rows);
    assert!(table.contains("gpt random-init · from scratch") && table.contains("2/class (4)"));
    let probe_only = TextClassifyOptions {
        models: vec![gpt.display().to_string()],
        finetune: TextFinetuneConfig {
            steps: 0,
            ..Default::default()
        },
        ..o.clone()
    };
    let again = text_classify::text_classify_experiment(&probe_only).unwrap();
    for r in &again.rows {
        let first = rows
            .iter()
            .find(|x| x.method == r.method && x.protocol == r.protocol && x.budget == r.budget)
            .unwrap();
        assert_eq!(first.runs, r.runs, "{} {}", r.method, r.protocol);
    }
    assert_eq!(again.rows.len(), 3 * 2);
}

#[test]
fn experiment_rejects_a_folder_that_is_not_a_text_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("brown");
    write_corpus(&corpus, 5, 6);
    let o = TextClassifyOptions {
        data: format!("brown:{}", corpus.display()),
        brown: cfg(3),
        models: vec![dir.path().join("norun").display().to_string()],
        budgets: vec!["100%".parse().unwrap()],
        draws: 1,
        seed: 0,
        bow_vocab: 100,
        probe: ProbeConfig::default(),
        finetune: TextFinetuneConfig::default(),
        scratch: false,
        run: RunOptions::default(),
    };
    let e = format!(
        "{:#}",
        text_classify::text_classify_experiment(&o).expect_err("no run there")
    );
    assert!(e.contains("norun") && e.contains("config.toml"), "{e}");
}
