//! BERT masked LM against the `tiny_bert_mlm` fixture (logits, loss, every gradient), the
//! masking recipe's proportions, pooling, and a Hugging Face style config.json.

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use selfsup::lm::tokenizer::{ByteTokenizer, Gpt2Tokenizer};
use selfsup::lm::weights::Weights;
use selfsup::methods::mlm::{
    mask_tokens, pool, BertConfig, MaskingConfig, MlmBatch, MlmVocab, Pooling, IGNORE,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

struct Fixture {
    config: BertConfig,
    weights: Weights,
    io: Weights,
    json: Value,
}

fn fixture() -> Fixture {
    let dir = fixtures();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny_bert_mlm.json")).unwrap())
            .unwrap();
    let a = &json["architecture"];
    let n = |k: &str| a[k].as_u64().unwrap() as usize;
    let config = BertConfig::new(n("vocab_size"))
        .with_hidden_size(n("d_model"))
        .with_num_hidden_layers(n("n_layers"))
        .with_num_attention_heads(n("n_heads"))
        .with_intermediate_size(n("d_ff"))
        .with_max_position_embeddings(n("max_position_embeddings"))
        .with_type_vocab_size(n("type_vocab_size"))
        .with_layer_norm_eps(a["layer_norm_eps"].as_f64().unwrap())
        .with_hidden_dropout_prob(a["dropout"].as_f64().unwrap())
        .with_attention_probs_dropout_prob(a["dropout"].as_f64().unwrap());
    Fixture {
        config,
        weights: Weights::from_file(dir.join(json["files"]["weights"].as_str().unwrap())).unwrap(),
        io: Weights::from_file(dir.join(json["files"]["io"].as_str().unwrap())).unwrap(),
        json,
    }
}

fn matrix(v: &Value) -> (Vec<i64>, [usize; 2]) {
    let rows: Vec<Vec<i64>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect();
    let shape = [rows.len(), rows[0].len()];
    (rows.concat(), shape)
}

fn as_u32(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn check(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut max = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{name}[{i}]: got {g}, expected {w} (|diff| {err})"
        );
        max = max.max(err);
    }
    max
}

fn fixture_batch(f: &Fixture) -> MlmBatch {
    let (ids, [b, t]) = matrix(&f.json["input_ids"]);
    let (types, _) = matrix(&f.json["token_type_ids"]);
    let (mask, _) = matrix(&f.json["attention_mask"]);
    let (labels, _) = matrix(&f.json["labels"]);
    MlmBatch {
        input_ids: as_u32(&ids),
        token_type_ids: as_u32(&types),
        attention_mask: as_u32(&mask),
        labels,
        batch: b,
        seq_len: t,
    }
}

#[test]
fn tiny_bert_parity_logits_loss_and_every_gradient() {
    let f = fixture();
    let device = Device::flex().autodiff();
    let mut model = f.config.init_from_weights(&f.weights, &device).unwrap();
    let batch = fixture_batch(&f);
    let (b, t) = (batch.batch, batch.seq_len);
    let (d, v) = (f.config.hidden_size, f.config.vocab_size);
    let (ids, types, mask) = batch.input_tensors(&device).unwrap();

    let logits = model.forward(ids.clone(), types.clone(), mask.clone());
    let err = check(
        "logits",
        &values(logits),
        f.io.values("logits", &[b, t, v]).unwrap(),
        1e-4,
        1e-4,
    );
    println!("tiny_bert_mlm logits max abs err {err:.3e}");
    let trace = model.bert.forward_trace(ids, types, mask);
    let names: Vec<String> = std::iter::once("act.hidden.embeddings".to_string())
        .chain((0..f.config.num_hidden_layers).map(|l| format!("act.hidden.layer{l}")))
        .collect();
    for (name, h) in names.iter().zip(&trace.hidden) {
        check(
            name,
            &values(h.clone()),
            f.io.values(name, &[b, t, d]).unwrap(),
            1e-4,
            1e-4,
        );
    }
    let nh = f.config.num_attention_heads;
    for (l, p) in trace.attn_probs.iter().enumerate() {
        let name = format!("act.attn_probs.{l}");
        check(
            &name,
            &values(p.clone()),
            f.io.values(&name, &[b, nh, t, t]).unwrap(),
            1e-5,
            1e-4,
        );
    }

    let loss = model.loss(&batch).unwrap();
    let got = values(loss.clone())[0] as f64;
    let want = f.json["loss"].as_f64().unwrap();
    println!(
        "tiny_bert_mlm loss {got} (reference {want}, rel err {:.3e})",
        (got - want).abs() / want
    );
    assert!((got - want).abs() <= 1e-5 * want, "loss {got} vs {want}");

    let grads = loss.backward();
    let mut covered = Vec::new();
    let mut max_err = 0f32;
    for (name, slot) in model.checkpoint_slots("") {
        let key = format!("grad.{name}");
        let want = f.io.values(&key, &slot.checkpoint_shape()).unwrap();
        let got = slot
            .grad(&grads)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        max_err = max_err.max(check(&key, &got, want, 1e-5, 1e-4));
        covered.push(key);
    }
    println!(
        "tiny_bert_mlm gradients: {} tensors, max abs err {max_err:.3e}",
        covered.len()
    );
    for name in f.io.names().into_iter().filter(|n| n.starts_with("grad.")) {
        assert!(covered.iter().any(|c| c == name), "{name} not compared");
    }
    // Every weight of the checkpoint has a slot, and every slot a weight.
    assert_eq!(covered.len(), f.weights.names().len());
}

#[test]
fn encoder_alone_loads_and_pools() {
    let f = fixture();
    let device = Device::flex();
    let encoder = f
        .config
        .init_encoder_from_weights(&f.weights, &device)
        .unwrap();
    let batch = fixture_batch(&f);
    let (ids, types, mask) = batch.input_tensors(&device).unwrap();
    let hidden = encoder.forward(ids, types, mask.clone());
    let (b, t, d) = (batch.batch, batch.seq_len, f.config.hidden_size);
    let h = values(hidden.clone());
    let cls = values(pool(hidden.clone(), mask.clone(), Pooling::Cls));
    let mean = values(pool(hidden, mask, Pooling::Mean));
    for r in 0..b {
        assert_eq!(&cls[r * d..(r + 1) * d], &h[r * t * d..r * t * d + d]);
        let len = batch.attention_mask[r * t..(r + 1) * t].iter().sum::<u32>() as usize;
        for k in 0..d {
            let m: f32 = (0..len).map(|i| h[(r * t + i) * d + k]).sum::<f32>() / len as f32;
            assert!((mean[r * d + k] - m).abs() < 1e-5);
        }
    }
}

#[test]
fn hf_config_json_loads() {
    let dir = std::env::temp_dir().join(format!("selfsup-lm-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // all-MiniLM-L6-v2's config.json.
    let json = r#"{
      "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
      "architectures": ["BertModel"],
      "attention_probs_dropout_prob": 0.1,
      "gradient_checkpointing": false,
      "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1,
      "hidden_size": 384,
      "initializer_range": 0.02,
      "intermediate_size": 1536,
      "layer_norm_eps": 1e-12,
      "max_position_embeddings": 512,
      "model_type": "bert",
      "num_attention_heads": 12,
      "num_hidden_layers": 6,
      "pad_token_id": 0,
      "position_embedding_type": "absolute",
      "transformers_version": "4.8.2",
      "type_vocab_size": 2,
      "use_cache": true,
      "vocab_size": 30522
    }"#;
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    let cfg = BertConfig::load_hf(&path).unwrap();
    assert_eq!(cfg.hidden_size, 384);
    assert_eq!(cfg.num_hidden_layers, 6);
    assert_eq!(cfg.layer_norm_eps, 1e-12);
    std::fs::write(&path, json.replace("\"gelu\"", "\"relu\"")).unwrap();
    let err = format!("{:#}", BertConfig::load_hf(&path).unwrap_err());
    assert!(err.contains("config.json") && err.contains("relu"), "{err}");
}

#[test]
fn masking_proportions_on_a_large_sample() {
    let vocab = MlmVocab::for_tokenizer(&ByteTokenizer);
    // Bytes have no special tokens: four are appended after the 256 byte ids.
    assert_eq!(vocab.vocab_size, 260);
    assert_eq!(
        (vocab.pad, vocab.cls, vocab.sep, vocab.mask),
        (256, 257, 258, 259)
    );
    let cfg = MaskingConfig::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n_rows = 2000;
    let len = 100;
    let (mut candidates, mut selected, mut masked, mut random, mut kept) = (0, 0, 0, 0, 0);
    for r in 0..n_rows {
        // [CLS] tokens [SEP] then some padding; tokens avoid id 259-ish collisions by design.
        let mut row = vec![vocab.cls];
        row.extend((0..len).map(|i| ((r * 31 + i * 7) % 256) as u32));
        row.push(vocab.sep);
        row.extend([vocab.pad; 10]);
        let (inputs, labels) = mask_tokens(&row, &vocab, &cfg, &mut rng);
        for i in 0..row.len() {
            if vocab.is_special(row[i]) {
                assert_eq!(labels[i], IGNORE, "special tokens are never selected");
                assert_eq!(inputs[i], row[i]);
                continue;
            }
            candidates += 1;
            if labels[i] == IGNORE {
                assert_eq!(inputs[i], row[i]);
                continue;
            }
            selected += 1;
            assert_eq!(labels[i], row[i] as i64);
            if inputs[i] == vocab.mask {
                masked += 1;
            } else if inputs[i] == row[i] {
                kept += 1;
            } else {
                assert!(
                    !vocab.is_special(inputs[i]),
                    "random token is never special"
                );
                random += 1;
            }
        }
    }
    let sel = selected as f64 / candidates as f64;
    let m = masked as f64 / selected as f64;
    // A random draw equal to the original counts as kept: 1/256 of the random 10%.
    let rnd = random as f64 / selected as f64;
    let keep = kept as f64 / selected as f64;
    println!("selected {sel:.4}, of which mask {m:.4}, random {rnd:.4}, kept {keep:.4}");
    // 200k candidates: the standard error of the selection rate is ~8e-4.
    assert!((sel - 0.15).abs() < 0.005, "selection rate {sel}");
    assert!((m - 0.8).abs() < 0.01, "mask share {m}");
    assert!((rnd - 0.1).abs() < 0.01, "random share {rnd}");
    assert!((keep - 0.1).abs() < 0.01, "kept share {keep}");
}

#[test]
fn batches_are_seeded_and_wrapped() {
    let vocab = MlmVocab::for_tokenizer(&Gpt2Tokenizer::new());
    assert_eq!(vocab.pad, 50257);
    assert!(
        vocab.is_special(50256),
        "GPT-2's end-of-text is never masked"
    );
    let cfg = MaskingConfig::new();
    let a: Vec<u32> = (0..30).collect();
    let b: Vec<u32> = (100..110).collect();
    let seqs = [a.as_slice(), b.as_slice()];
    let x = MlmBatch::from_sequences(&seqs, &vocab, &cfg, 5, 9).unwrap();
    let y = MlmBatch::from_sequences(&seqs, &vocab, &cfg, 5, 9).unwrap();
    let z = MlmBatch::from_sequences(&seqs, &vocab, &cfg, 5, 10).unwrap();
    assert_eq!(x, y);
    assert_ne!(x.labels, z.labels);
    assert_eq!(x.seq_len, 32);
    assert_eq!(x.input_ids[0], vocab.cls);
    assert_eq!(x.input_ids[31], vocab.sep);
    assert_eq!(x.input_ids[32 + 11], vocab.sep);
    assert_eq!(x.input_ids[32 + 12], vocab.pad);
    assert_eq!(x.attention_mask[32 + 11], 1);
    assert_eq!(x.attention_mask[32 + 12], 0);
    // A single short sequence still gets one labelled position.
    let tiny = [&[7u32][..]];
    let t = MlmBatch::from_sequences(&tiny, &vocab, &cfg, 0, 0).unwrap();
    assert_eq!(t.labels.iter().filter(|&&l| l != IGNORE).count(), 1);
}

#[test]
fn mlm_loss_falls_with_a_few_adamw_steps() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let vocab = MlmVocab::for_tokenizer(&ByteTokenizer);
    let config = BertConfig::new(vocab.vocab_size)
        .with_hidden_size(32)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(4)
        .with_intermediate_size(64)
        .with_max_position_embeddings(34)
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0);
    let mut model = config.init(&device);
    let text = b"abcdefgh".repeat(64);
    let windows: Vec<u32> = text[..32 * 8].iter().map(|&c| c as u32).collect();
    let masking = MaskingConfig::new();
    let eval = MlmBatch::from_windows(&windows, 32, &vocab, &masking, 99, 0).unwrap();
    let eval_loss =
        |m: &selfsup::methods::mlm::BertForMaskedLm| values(m.valid().loss(&eval).unwrap())[0];
    let before = eval_loss(&model);
    let mut optim = AdamWConfig::new().init();
    for step in 0..40 {
        let batch = MlmBatch::from_windows(&windows, 32, &vocab, &masking, 1, step).unwrap();
        let loss = model.loss(&batch).unwrap();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let after = eval_loss(&model);
    println!("MLM loss {before:.3} -> {after:.3}");
    assert!(after < before * 0.5, "MLM loss {before} -> {after}");
}
