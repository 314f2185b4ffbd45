//! Your own labelled text for `experiment text-classify`: the folder and JSONL layouts, their
//! errors, and an end-to-end bag-of-words run on them.

use selfsup::data::brown::{load_text_classification, BrownConfig};
use selfsup::data::labeled_text::words;
use std::fs;

fn write(path: &std::path::Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn words_split_letters_and_punctuation() {
    assert_eq!(
        words("Don't stop—é ça, 42!"),
        vec!["Don't", "stop", "—", "é", "ça", ",", "42", "!"]
    );
}

#[test]
fn folder_layout_reads_classes_and_splits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("train/pos/a.txt"), "good great\n");
    write(&d.join("train/pos/b.txt"), "great fun");
    write(&d.join("train/neg/c.txt"), "bad awful");
    write(&d.join("train/neg/notes.md"), "ignored");
    write(&d.join("test/neg/d.txt"), "awful");
    write(&d.join("test/pos/e.txt"), "fun");
    let data =
        load_text_classification(&format!("folder:{}", d.display()), &BrownConfig::default())
            .unwrap();
    assert_eq!(data.classes, vec!["neg", "pos"]);
    assert_eq!(data.train.len(), 3);
    assert_eq!(data.train_labels(), vec![0, 1, 1]);
    assert_eq!(data.test_labels(), vec![0, 1]);
    assert_eq!(data.train[1].text, "good great");
    // A test class without train examples, and invalid UTF-8, are named.
    write(&d.join("test/meh/f.txt"), "so so");
    let err = load_text_classification(&format!("folder:{}", d.display()), &Default::default())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("\"meh\" has no train/meh/"),
        "{err:#}"
    );
    fs::remove_dir_all(d.join("test/meh")).unwrap();
    fs::write(d.join("test/pos/g.txt"), [b'o', b'k', 0xff]).unwrap();
    let err = load_text_classification(&format!("folder:{}", d.display()), &Default::default())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("g.txt: invalid UTF-8 at byte 2"),
        "{err:#}"
    );
    let err = load_text_classification("folder:/nonexistent/x", &Default::default()).unwrap_err();
    assert!(format!("{err:#}").contains("no such folder"), "{err:#}");
}

#[test]
fn jsonl_layout_splits_every_fifth_or_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    let mut lines = vec![];
    for i in 0..10 {
        lines.push(format!(r#"{{"text": "w{i} ball", "label": "sports"}}"#));
        lines.push(format!(r#"{{"text": "w{i} vote", "label": 7}}"#));
    }
    lines.push(r#"{"text": "extra", "label": "sports", "split": "test"}"#.into());
    write(&p, &lines.join("\n"));
    let data =
        load_text_classification(&format!("jsonl:{}", p.display()), &Default::default()).unwrap();
    assert_eq!(data.classes, vec!["7", "sports"]);
    assert_eq!(data.train.len(), 16);
    assert_eq!(data.test.len(), 5);
    assert_eq!(data.test[0].text, "w4 ball");
    assert_eq!(data.test.last().unwrap().text, "extra");
    // Errors name the line.
    write(
        &p,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"}\n",
    );
    let err = load_text_classification(&format!("jsonl:{}", p.display()), &Default::default())
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("d.jsonl:2: missing field \"label\""),
        "{err:#}"
    );
    write(
        &p,
        "{\"text\": \"a\", \"label\": \"x\", \"split\": \"dev\"}\n",
    );
    let err = load_text_classification(&format!("jsonl:{}", p.display()), &Default::default())
        .unwrap_err();
    assert!(format!("{err:#}").contains("\"split\" must be"), "{err:#}");
    write(&p, "{\"text\": \"a\", \"label\": \"x\"}\n");
    let err = load_text_classification(&format!("jsonl:{}", p.display()), &Default::default())
        .unwrap_err();
    assert!(format!("{err:#}").contains("at least 2"), "{err:#}");
}
