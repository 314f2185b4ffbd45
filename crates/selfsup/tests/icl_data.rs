//! The data-backed ICL tasks: CLDR territory names and FreeDict dictd readers on tiny files
//! written here (including bad files), then the real files from the data cache — that test
//! fails, with the `get.sh` command to run, when they are missing.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use selfsup::icl::task::{Metric, Scoring};
use selfsup::icl::tasks::{
    cldr_en_fr, data_dir, dictd_number, freedict_en_fr, read_cldr_pairs, read_freedict_pairs,
};

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfsup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cldr_file(lang: &str, names: &[(&str, &str)]) -> String {
    let table: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|(c, n)| (c.to_string(), serde_json::Value::from(*n)))
        .collect();
    serde_json::json!({"main": {lang: {"identity": {"language": lang}, "localeDisplayNames": {"territories": table}}}})
        .to_string()
}

fn write_cldr(dir: &Path) {
    for (lang, names) in [
        (
            "en",
            vec![
                ("001", "World"),
                ("DE", "Germany"),
                ("FR", "France"),
                ("EU", "European Union"),
                ("GB", "United Kingdom"),
                ("GB-alt-short", "UK"),
                ("CI", "Côte d’Ivoire"),
                ("JP", "Japan"),
            ],
        ),
        (
            "fr",
            vec![
                ("001", "Monde"),
                ("DE", "Allemagne"),
                ("FR", "France"),
                ("EU", "Union européenne"),
                ("GB", "Royaume-Uni"),
                ("GB-alt-short", "R.-U."),
                ("CI", "Côte d’Ivoire"),
            ],
        ),
    ] {
        std::fs::create_dir_all(dir.join(lang)).unwrap();
        std::fs::write(
            dir.join(lang).join("territories.json"),
            cldr_file(lang, &names),
        )
        .unwrap();
    }
}

#[test]
fn cldr_pairs_by_territory_code() {
    let dir = tempdir("icl_cldr");
    write_cldr(&dir);
    let pairs = read_cldr_pairs(
        &dir.join("en/territories.json"),
        &dir.join("fr/territories.json"),
    )
    .unwrap();
    // Numeric regions, -alt- variants, EU, names equal in both (France, Côte d’Ivoire) and
    // codes missing in French (JP) are left out.
    assert_eq!(
        pairs,
        vec![
            ("DE".into(), "Germany".into(), "Allemagne".into()),
            ("GB".into(), "United Kingdom".into(), "Royaume-Uni".into()),
        ]
    );
    let task = cldr_en_fr(&dir).unwrap();
    task.validate().unwrap();
    assert_eq!(task.examples[0].input, "Germany");
    assert_eq!(task.examples[0].target, "Allemagne");
    assert!(matches!(task.scoring, Scoring::Generate { .. }));
    assert_eq!(task.metrics, vec![Metric::ExactMatch, Metric::Chrf]);
}

#[test]
fn cldr_errors_name_the_file_and_the_fix() {
    let dir = tempdir("icl_cldr_bad");
    let err = cldr_en_fr(&dir).unwrap_err().to_string();
    assert!(
        err.contains("get.sh cldr-en-fr") && err.contains("territories.json"),
        "{err}"
    );
    write_cldr(&dir);
    std::fs::write(
        dir.join("fr/territories.json"),
        cldr_file("de", &[("DE", "Deutschland")]),
    )
    .unwrap();
    let err = cldr_en_fr(&dir).unwrap_err().to_string();
    assert!(
        err.contains("fr/territories.json") && err.contains("main.fr.localeDisplayNames"),
        "{err}"
    );
    std::fs::write(dir.join("fr/territories.json"), "{\"main\": ").unwrap();
    let err = cldr_en_fr(&dir).unwrap_err().to_string();
    assert!(
        err.contains("fr/territories.json") && err.contains("not JSON"),
        "{err}"
    );
}

#[test]
fn dictd_base64_numbers() {
    assert_eq!(dictd_number("A").unwrap(), 0);
    assert_eq!(dictd_number("B").unwrap(), 1);
    assert_eq!(dictd_number("/").unwrap(), 63);
    assert_eq!(dictd_number("BA").unwrap(), 64);
    // L = 11, O = 14, B = 1: 11·4096 + 14·64 + 1.
    assert_eq!(dictd_number("LOB").unwrap(), 45953);
    assert!(dictd_number("").is_err());
    assert!(dictd_number("A=").is_err());
}

fn b64(mut n: usize) -> String {
    const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[n % 64]);
        n /= 64;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

/// Writes a dictd dictionary of `entries` (index headword, entry text).
fn write_dict(dir: &Path, entries: &[(&str, &str)]) {
    let mut body = String::new();
    let mut index = String::new();
    for (head, text) in entries {
        index.push_str(&format!(
            "{head}\t{}\t{}\n",
            b64(body.len()),
            b64(text.len())
        ));
        body.push_str(text);
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    std::fs::write(dir.join("freedict-eng-fra.dict.dz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.join("freedict-eng-fra.index"), index).unwrap();
}

const ENTRIES: [(&str, &str); 9] = [
    ("00databaseinfo", "This is the header of the dictionary.\n"),
    ("cat", "cat /kæt/\n1. mégère, peau de vache\n2. chat\n"),
    ("dog", "dog /dɔg/\nchien\n"),
    ("run", "run /rʌn/\n1. courir\n2. fuite\n"),
    ("abattoir", "abattoir /æbətwɑːr/\nabattoir\n"),
    ("a lot", "a lot /əlɔt/\nbeaucoup\n"),
    ("december", "December /disembər/\ndécembre\n"),
    (
        "abase oneself",
        "abase oneself /əbeiswʌnself/\n1. s'humilier\n",
    ),
    ("dog", "dog /dɔg/\ntoutou\n"),
];

#[test]
fn freedict_single_word_pairs() {
    let dir = tempdir("icl_freedict");
    write_dict(&dir, &ENTRIES);
    let pairs = read_freedict_pairs(
        &dir.join("freedict-eng-fra.index"),
        &dir.join("freedict-eng-fra.dict.dz"),
    )
    .unwrap();
    let want: Vec<(String, String)> = [
        ("dog", "chien"),
        ("run", "courir"),
        ("December", "décembre"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(pairs, want);
    let task = freedict_en_fr(&dir).unwrap();
    task.validate().unwrap();
    assert_eq!(task.examples.len(), 3);
}

#[test]
fn freedict_errors_name_the_file_and_line() {
    let dir = tempdir("icl_freedict_bad");
    let err = freedict_en_fr(&dir).unwrap_err().to_string();
    assert!(err.contains("get.sh freedict-en-fr"), "{err}");
    write_dict(&dir, &ENTRIES[..3]);
    let index = dir.join("freedict-eng-fra.index");
    let dict = dir.join("freedict-eng-fra.dict.dz");
    let good = std::fs::read_to_string(&index).unwrap();
    for (bad_line, want) in [
        ("dog\tB", "expected headword, offset and length"),
        ("dog\tB\t!", "bad digit"),
        ("dog\tBAAA\tB", "past the end"),
    ] {
        std::fs::write(&index, format!("{good}{bad_line}\n")).unwrap();
        let err = format!("{:#}", read_freedict_pairs(&index, &dict).unwrap_err());
        assert!(
            err.contains("freedict-eng-fra.index:4") && err.contains(want),
            "{err}"
        );
    }
    std::fs::write(&index, good).unwrap();
    std::fs::write(&dict, b"plain text, not gzip").unwrap();
    let err = format!("{:#}", read_freedict_pairs(&index, &dict).unwrap_err());
    assert!(
        err.contains("freedict-eng-fra.dict.dz") && err.contains("gzip"),
        "{err}"
    );
}

/// The real CLDR and FreeDict files from the data cache. Fails (never skips) when they are
/// missing, saying which `get.sh` command fetches them.
#[test]
fn real_data_tasks() {
    let data = data_dir();
    let cldr = cldr_en_fr(&data.join("cldr-en-fr")).unwrap_or_else(|e| panic!("{e:#}"));
    cldr.validate().unwrap();
    assert!(
        cldr.examples.len() > 150,
        "{} CLDR pairs",
        cldr.examples.len()
    );
    let has = |t: &selfsup::icl::task::Task, i: &str, o: &str| {
        t.examples.iter().any(|e| e.input == i && e.target == o)
    };
    assert!(has(&cldr, "Germany", "Allemagne"));
    assert!(has(&cldr, "United States", "États-Unis"));
    assert!(!cldr
        .examples
        .iter()
        .any(|e| e.input == "World" || e.input == "Afghanistan"));

    let dict = freedict_en_fr(&data.join("freedict-en-fr")).unwrap_or_else(|e| panic!("{e:#}"));
    dict.validate().unwrap();
    assert!(
        dict.examples.len() > 1000,
        "{} FreeDict pairs",
        dict.examples.len()
    );
    assert!(has(&dict, "house", "maison"));
    assert!(has(&dict, "cheese", "fromage"));
    // "dog" is "chien, clébard": a first sense of two words is left out.
    assert!(!dict.examples.iter().any(|e| e.input == "dog"));
}
