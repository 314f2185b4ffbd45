//! Sentence embeddings: mean pooling + L2 normalization against a direct formula, model
//! folder errors, and parity with the `minilm_embeddings` fixture on the real
//! all-MiniLM-L6-v2 (tokenization, intermediate activations, embeddings).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::config::Config;
use burn::tensor::{Device, Int, Tensor, TensorData};
use selfsup::lm::sentence::{mean_pool_l2, SentenceEncoder};
use selfsup::lm::weights::Weights;
use selfsup::methods::clm::int_tensor;
use selfsup::methods::mlm::BertConfig;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

/// `$SELFSUP_DATA/minilm` (default `~/.cache/selfsup-data`); panics with the command that
/// fetches it when it is missing.
fn minilm_dir() -> PathBuf {
    let data = match std::env::var_os("SELFSUP_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/selfsup-data"),
    };
    let dir = data.join("minilm");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            dir.join(f).is_file(),
            "all-MiniLM-L6-v2 not found ({} is missing): run `../shared/data/get.sh smollm2 \
             minilm` (from the repository root) first",
            dir.join(f).display()
        );
    }
    dir
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn fixture() -> (Value, Weights) {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("minilm_embeddings.json")).unwrap(),
    )
    .unwrap();
    let tensors =
        Weights::from_file(fixtures().join(json["tensors_file"].as_str().unwrap())).unwrap();
    (json, tensors)
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn sentences(json: &Value) -> Vec<String> {
    json["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn mean_pooling_skips_padding_and_normalizes() {
    let device = Device::flex();
    // Two sequences of 3 positions, 2 features; the second has one padded position whose
    // (large) state must not count.
    let h = [
        1.0f32, 2.0, 3.0, 4.0, 5.0, 0.0, 3.0, 4.0, 0.0, 0.0, 100.0, 100.0,
    ];
    let hidden = Tensor::<3>::from_data(TensorData::new(h.to_vec(), [2, 3, 2]), &device);
    let mask: Tensor<2, Int> = int_tensor(&[1, 1, 1, 1, 1, 0], [2, 3], &device);
    let got = to_vec(mean_pool_l2(hidden, mask));
    // Means (3, 2) and (1.5, 2); norms √13 and 2.5.
    let want = [3.0 / 13f32.sqrt(), 2.0 / 13f32.sqrt(), 1.5 / 2.5, 2.0 / 2.5];
    assert!(max_abs_diff(&got, &want) < 1e-6, "{got:?}");
}

#[test]
fn a_model_folder_without_its_files_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = |d: &Path| match SentenceEncoder::load(d, &Device::flex()) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => format!("{e:#}"),
    };
    let e = err(dir.path());
    assert!(
        e.contains("missing config.json") && e.contains("model.safetensors"),
        "{e}"
    );
    let config = BertConfig::new(10)
        .with_hidden_size(8)
        .with_num_attention_heads(2)
        .with_num_hidden_layers(1)
        .with_intermediate_size(16)
        .with_max_position_embeddings(8);
    config.save(dir.path().join("config.json")).unwrap();
    let e = err(dir.path());
    assert!(e.contains("missing model.safetensors"), "{e}");
    // Checkpoints written from a model of this config, with one tensor dropped or reshaped.
    let full = config.init(&Device::flex()).export();
    let write = |skip: &str, reshape: &str| {
        let tensors = full
            .names()
            .into_iter()
            .filter(|&n| n != skip)
            .map(|n| {
                let shape = full.shape(n).unwrap().to_vec();
                let v = full.values(n, &shape).unwrap().to_vec();
                let shape = if n == reshape {
                    vec![shape.iter().product()]
                } else {
                    shape
                };
                (n.to_string(), (shape, v))
            })
            .collect();
        let path = dir.path().join("model.safetensors");
        Weights::from_tensors("partial", tensors)
            .save(&path)
            .unwrap();
        path
    };
    let dropped = "encoder.layer.0.output.dense.weight";
    write(dropped, "");
    let e = err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("missing tensor") && e.contains(dropped),
        "{e}"
    );
    let reshaped = "encoder.layer.0.attention.self.key.weight";
    write("", reshaped);
    let e = err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains(reshaped) && e.contains("[64]"),
        "{e}"
    );
    // Truncated, and not safetensors at all.
    let path = write("", "");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // With valid weights, a missing tokenizer.json is named.
    write("", "");
    let e = err(dir.path());
    assert!(e.contains("missing tokenizer.json"), "{e}");
}

/// Token ids, masks and WordPiece strings of every fixture sentence.
#[test]
fn minilm_tokenization_matches_fixture() {
    let enc = SentenceEncoder::load(minilm_dir(), &Device::flex()).unwrap();
    let (json, _) = fixture();
    let sents = sentences(&json);
    let refs: Vec<&str> = sents.iter().map(String::as_str).collect();
    let got = enc.tokenize(&refs).unwrap();
    let ids = rows(&json["input_ids"]);
    let mask = rows(&json["attention_mask"]);
    let lengths: Vec<usize> = json["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.input_ids, ids[i], "sentence {i}: {:?}", sents[i]);
        assert_eq!(e.attention_mask, mask[i], "sentence {i}");
        assert!(e.token_type_ids.iter().all(|&t| t == 0));
        let tokens: Vec<&str> = json["tokens"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(&e.tokens[..lengths[i]], tokens.as_slice(), "sentence {i}");
    }
}

/// Embeddings of every fixture sentence (cosine ≥ 0.9999, in fact ~1e-6 abs), plus the
/// activations of sentences 0 and 1 and the norms before normalization.
#[test]
fn minilm_embeddings_match_fixture() {
    let device = Device::flex();
    let t0 = Instant::now();
    let enc = SentenceEncoder::load(minilm_dir(), &device).unwrap();
    eprintln!("load: {:.2}s", t0.elapsed().as_secs_f64());
    let (json, tensors) = fixture();
    let sents = sentences(&json);
    let refs: Vec<&str> = sents.iter().map(String::as_str).collect();
    let n = sents.len();
    let d = enc.dim();

    let t1 = Instant::now();
    let got = enc.embed(&refs).unwrap();
    eprintln!("embed {n} sentences: {:.2}s", t1.elapsed().as_secs_f64());
    let want = tensors.values("embeddings", &[n, d]).unwrap();
    let mut worst_cos = 1f64;
    let mut worst_abs = 0f32;
    for i in 0..n {
        let w = &want[i * d..(i + 1) * d];
        let c = cosine(&got[i], w);
        worst_cos = worst_cos.min(c);
        worst_abs = worst_abs.max(max_abs_diff(&got[i], w));
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
    }
    eprintln!("embeddings: min cosine {worst_cos:.9}, max abs diff {worst_abs:.2e}");
    assert!(worst_abs < 1e-5, "max abs diff {worst_abs}");

    // Activations of sentence 0 (real tokens) and the last hidden states of sentences 0, 1.
    let toks = enc.tokenize(&refs[..2]).unwrap();
    let lengths: Vec<usize> = toks
        .iter()
        .map(|e| e.attention_mask.iter().filter(|&&m| m == 1).count())
        .collect();
    let t = toks[0].input_ids.len();
    let flat = |f: fn(&selfsup::lm::sentence::EncodedSentence) -> &Vec<u32>| -> Vec<u32> {
        toks.iter().flat_map(|e| f(e).clone()).collect()
    };
    let trace = enc.bert.forward_trace(
        int_tensor(&flat(|e| &e.input_ids), [2, t], &device),
        int_tensor(&flat(|e| &e.token_type_ids), [2, t], &device),
        int_tensor(&flat(|e| &e.attention_mask), [2, t], &device),
    );
    let n0 = lengths[0];
    let real0 = |h: &Tensor<3>| to_vec(h.clone().narrow(0, 0, 1).narrow(1, 0, n0));
    let emb0 = tensors.values("embedding_output_0", &[n0, d]).unwrap();
    let l0 = tensors.values("layer0_output_0", &[n0, d]).unwrap();
    let de = max_abs_diff(&real0(&trace.hidden[0]), emb0);
    let dl = max_abs_diff(&real0(&trace.hidden[1]), l0);
    let last = to_vec(trace.hidden.last().unwrap().clone());
    let want_last = tensors.values("last_hidden_state_0_1", &[2, t, d]).unwrap();
    let mut dh = 0f32;
    for (s, &len) in lengths.iter().enumerate() {
        let r = s * t * d..(s * t + len) * d;
        dh = dh.max(max_abs_diff(&last[r.clone()], &want_last[r]));
    }
    eprintln!("embedding output {de:.2e}, layer 0 {dl:.2e}, last hidden (real tokens) {dh:.2e}");
    assert!(de < 1e-5 && dl < 1e-4 && dh < 1e-4);

    // The norm of the mean-pooled vector before normalization.
    let norms = json["mean_pooled_norm_before_l2"].as_array().unwrap();
    for (s, &len) in lengths.iter().enumerate() {
        let mut mean = vec![0f64; d];
        for p in 0..len {
            for (k, m) in mean.iter_mut().enumerate() {
                *m += last[(s * t + p) * d + k] as f64 / len as f64;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let want = norms[s].as_f64().unwrap();
        assert!(
            (norm - want).abs() < 1e-4 * want,
            "sentence {s}: {norm} vs {want}"
        );
    }
}
