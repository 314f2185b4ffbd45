//! GPT against the `tiny_gpt` fixture (logits, loss, every gradient), KV-cache equality,
//! sampling, and a short training run whose validation loss falls.

use std::path::PathBuf;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use selfsup::lm::generate::{generate, generate_ids, SamplingConfig, Stepper, StopReason};
use selfsup::lm::text_data::{Split, TextDataset, TextSource, TokenFile};
use selfsup::lm::tokenizer::{ByteTokenizer, CharTokenizer, Tokenizer};
use selfsup::lm::weights::Weights;
use selfsup::methods::clm::{int_tensor, Gpt, GptConfig};
use selfsup::nn::transformer::KvCache;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

struct Fixture {
    config: GptConfig,
    weights: Weights,
    io: Weights,
    json: Value,
}

fn fixture() -> Fixture {
    let dir = fixtures();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny_gpt.json")).unwrap()).unwrap();
    let a = &json["architecture"];
    let n = |k: &str| a[k].as_u64().unwrap() as usize;
    let config = GptConfig::new(n("vocab_size"))
        .with_context_length(n("context_length"))
        .with_d_model(n("d_model"))
        .with_n_layers(n("n_layers"))
        .with_n_heads(n("n_heads"))
        .with_d_ff(n("d_ff"))
        .with_dropout(a["dropout"].as_f64().unwrap())
        .with_layer_norm_eps(a["layer_norm_eps"].as_f64().unwrap());
    Fixture {
        config,
        weights: Weights::from_file(dir.join(json["files"]["weights"].as_str().unwrap())).unwrap(),
        io: Weights::from_file(dir.join(json["files"]["io"].as_str().unwrap())).unwrap(),
        json,
    }
}

fn ids(v: &Value) -> (Vec<u32>, [usize; 2]) {
    let rows: Vec<Vec<u32>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let shape = [rows.len(), rows[0].len()];
    (rows.concat(), shape)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// Checks `|got - want| <= atol + rtol·|want|` elementwise; returns the largest `|got - want|`.
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

#[test]
fn tiny_gpt_parity_logits_loss_and_every_gradient() {
    let f = fixture();
    let device = Device::flex().autodiff();
    let mut model = f.config.init_from_weights(&f.weights, &device).unwrap();
    let (input, shape) = ids(&f.json["input_ids"]);
    let (target, _) = ids(&f.json["targets"]);
    let [b, t] = shape;
    let v = f.config.vocab_size;
    let d = f.config.d_model;

    let trace = model.forward_trace(int_tensor(&input, shape, &device));
    let err = check(
        "logits",
        &values(trace.logits.clone()),
        f.io.values("logits", &[b, t, v]).unwrap(),
        1e-4,
        1e-4,
    );
    println!("tiny_gpt logits max abs err {err:.3e}");
    let hidden_names: Vec<String> = std::iter::once("act.hidden.embed".to_string())
        .chain((0..f.config.n_layers).map(|l| format!("act.hidden.block{l}")))
        .chain(std::iter::once("act.hidden.ln_f".to_string()))
        .collect();
    for (name, h) in hidden_names.iter().zip(&trace.hidden) {
        check(
            name,
            &values(h.clone()),
            f.io.values(name, &[b, t, d]).unwrap(),
            1e-4,
            1e-4,
        );
    }
    let nh = f.config.n_heads;
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

    let loss = model.loss(
        int_tensor(&input, shape, &device),
        int_tensor(&target, shape, &device),
    );
    let got = values(loss.clone())[0] as f64;
    let want = f.json["loss"].as_f64().unwrap();
    println!(
        "tiny_gpt loss {got} (reference {want}, rel err {:.3e})",
        (got - want).abs() / want
    );
    assert!((got - want).abs() <= 1e-5 * want, "loss {got} vs {want}");

    let grads = loss.backward();
    let mut covered = Vec::new();
    let mut max_grad_err = 0f32;
    for (name, slot) in model.checkpoint_slots() {
        let key = format!("grad.{name}");
        let want = f.io.values(&key, &slot.checkpoint_shape()).unwrap();
        let got = slot
            .grad(&grads)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        max_grad_err = max_grad_err.max(check(&key, &got, want, 1e-5, 1e-4));
        covered.push(key);
    }
    println!(
        "tiny_gpt gradients: {} tensors, max abs err {max_grad_err:.3e}",
        covered.len()
    );
    // Every gradient in the fixture is checked, the tied wte (embedding + head) included.
    for name in f.io.names().into_iter().filter(|n| n.starts_with("grad.")) {
        assert!(covered.iter().any(|c| c == name), "{name} not compared");
    }
}

#[test]
fn loader_errors_name_the_tensor() {
    let f = fixture();
    let device = Device::flex();
    let wrong = f.config.clone().with_d_model(f.config.d_model + 4);
    let err = wrong
        .init_from_weights(&f.weights, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiny_gpt.weights.safetensors"), "{err}");
    assert!(
        err.contains("wte.weight") && err.contains("has shape"),
        "{err}"
    );
    let deeper = f.config.clone().with_n_layers(f.config.n_layers + 1);
    let err = deeper
        .init_from_weights(&f.weights, &device)
        .unwrap_err()
        .to_string();
    let missing = format!("missing tensor h.{}.", f.config.n_layers);
    assert!(err.contains(&missing), "{err}");
}

#[test]
fn export_and_save_round_trip_through_the_same_names() {
    let f = fixture();
    let device = Device::flex();
    let model = f.config.init_from_weights(&f.weights, &device).unwrap();
    let exported = model.export();
    assert_eq!(exported.names(), f.weights.names());
    for name in f.weights.names() {
        let shape = f.weights.shape(name).unwrap().to_vec();
        assert_eq!(
            exported.values(name, &shape).unwrap(),
            f.weights.values(name, &shape).unwrap(),
            "{name}"
        );
    }
    let path = tempdir("lm_gpt_export").join("gpt.safetensors");
    exported.save(&path).unwrap();
    let back = f
        .config
        .init_from_weights(&Weights::from_file(&path).unwrap(), &device)
        .unwrap();
    let (input, shape) = ids(&f.json["input_ids"]);
    let a = values(model.forward(int_tensor(&input, shape, &device)));
    let b = values(back.forward(int_tensor(&input, shape, &device)));
    assert_eq!(a, b);
    // Bad batches are errors, not panics.
    let batch = selfsup::methods::clm::TokenBatch {
        inputs: vec![0; 2 * (f.config.context_length + 1)],
        targets: vec![0; 2 * (f.config.context_length + 1)],
        batch: 2,
        context: f.config.context_length + 1,
    };
    assert!(model.loss_batch(&batch).is_err());
}

#[test]
fn kv_cache_logits_equal_full_recompute() {
    let f = fixture();
    let device = Device::flex();
    let model = f.config.init_from_weights(&f.weights, &device).unwrap();
    let (input, _) = ids(&f.json["input_ids"]);
    let ctx = f.config.context_length;
    let v = f.config.vocab_size;
    let prompt = &input[..4];

    // Greedy continuation to the full context with the cache, one token per step.
    let cfg = SamplingConfig::new()
        .with_temperature(0.0)
        .with_max_new_tokens(ctx - prompt.len());
    let (new, stop) = generate_ids(&model, prompt, &cfg, None, |_| true).unwrap();
    assert_eq!(stop, StopReason::MaxTokens);
    assert_eq!(new.len(), ctx - prompt.len());
    let seq: Vec<u32> = prompt.iter().chain(&new).copied().collect();

    // Reference: one uncached forward over the whole sequence.
    let full = values(model.forward(int_tensor(&seq, [1, seq.len()], &device)));

    let mut cache = KvCache::new(model.n_layers());
    let first = model.forward_cached(int_tensor(prompt, [1, prompt.len()], &device), &mut cache);
    let mut cached = values(first);
    for (i, &tok) in new.iter().enumerate() {
        assert_eq!(cache.len(), prompt.len() + i);
        let step = model.forward_cached(int_tensor(&[tok], [1, 1], &device), &mut cache);
        assert_eq!(step.dims(), [1, 1, v]);
        cached.extend(values(step));
    }
    let err = check("cached logits", &cached, &full, 1e-4, 0.0);
    println!(
        "kv cache vs full recompute over {} steps: max abs err {err:.3e}",
        new.len()
    );

    // The stepper with and without the cache agrees as well, past the context (sliding).
    let mut with = Stepper::new(&model, true);
    let mut without = Stepper::new(&model, false);
    let mut seq = prompt.to_vec();
    let mut a = with.prefill(&seq);
    let mut b = without.prefill(&seq);
    for i in 0..ctx + 4 {
        check("stepper", &a, &b, 1e-4, 0.0);
        seq.push((i * 7 % v) as u32);
        a = with.step(&seq);
        b = without.step(&seq);
    }
}

#[test]
fn sampling_is_seeded_and_honours_stop_strings() {
    let f = fixture();
    let device = Device::flex();
    let model = f.config.init_from_weights(&f.weights, &device).unwrap();
    // 64 characters for the 64 ids of the fixture model.
    let chars: String = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain([' ', '.'])
        .collect();
    let tok = CharTokenizer::from_texts([chars.as_str()]).unwrap();
    assert_eq!(tok.vocab_size(), f.config.vocab_size);

    let cfg = SamplingConfig::new()
        .with_max_new_tokens(40)
        .with_temperature(0.9)
        .with_top_k(20)
        .with_top_p(0.95)
        .with_seed(7);
    let a = generate(&model, &tok, "abc", &cfg).unwrap();
    let b = generate(&model, &tok, "abc", &cfg).unwrap();
    assert_eq!(a.ids, b.ids, "same seed, same tokens");
    assert_eq!(a.ids.len(), 40, "runs past the 16-token context");
    assert_eq!(a.stop, StopReason::MaxTokens);
    let c = generate(&model, &tok, "abc", &cfg.clone().with_seed(8)).unwrap();
    assert_ne!(a.ids, c.ids, "another seed, other tokens");

    // Stop at a string that occurs in the unconstrained sample.
    let stop: String = a.text.chars().skip(5).take(2).collect();
    let s = generate(
        &model,
        &tok,
        "abc",
        &cfg.clone().with_stop(vec![stop.clone()]),
    )
    .unwrap();
    assert_eq!(s.stop, StopReason::StopString(stop.clone()));
    assert!(!s.text.contains(&stop));
    assert!(a.text.starts_with(&s.text));
}

#[test]
fn short_training_run_lowers_validation_loss() {
    // A small repetitive byte corpus: a tiny GPT learns it in a few dozen AdamW steps.
    let dir = tempdir("lm_gpt_train");
    let corpus = dir.join("corpus.txt");
    let text: String = (0..400)
        .map(|i| format!("the cat sat on mat {}. ", i % 7))
        .collect();
    std::fs::write(&corpus, &text).unwrap();
    let tok = ByteTokenizer;
    let source = TextSource::Text(corpus);
    let tokens = TokenFile::build(&source, &tok, dir.join("tokens.bin"), false).unwrap();
    let data = TextDataset::new(tokens, 0.1).unwrap();
    let context = 32;
    data.check_context(context).unwrap();

    let device = Device::flex().autodiff();
    device.seed(0);
    let config = GptConfig::new(tok.vocab_size())
        .with_context_length(context)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4)
        .with_d_ff(64);
    let mut model = config.init(&device);
    let val_loss = |m: &Gpt| {
        let valid = m.valid();
        let mut total = 0.0;
        let mut n = 0;
        while let Some(batch) = data.sequential_batch(Split::Validation, n, 8, context) {
            total += values(valid.loss_batch(&batch).unwrap())[0] as f64;
            n += 1;
        }
        total / n as f64
    };
    let before = val_loss(&model);
    let mut optim = AdamWConfig::new().init();
    for step in 0..60 {
        let batch = data.token_batch(Split::Train, step, 1, 8, context).unwrap();
        let loss = model.loss_batch(&batch).unwrap();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let after = val_loss(&model);
    println!("validation loss {before:.3} -> {after:.3}");
    assert!(after < before * 0.6, "validation loss {before} -> {after}");
}

#[test]
fn int_tensor_shapes() {
    let device = Device::flex();
    let t: Tensor<2, Int> = int_tensor(&[1, 2, 3, 4, 5, 6], [2, 3], &device);
    assert_eq!(t.dims(), [2, 3]);
    let back = t.into_data().try_into_vec_as::<i64>().unwrap();
    assert_eq!(back, vec![1, 2, 3, 4, 5, 6]);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfsup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
