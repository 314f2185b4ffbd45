//! Llama from GGUF: RoPE and grouped-query attention against direct formulas, a tiny model
//! written to a GGUF file against a scalar reference forward, bad model files, and parity
//! with the `smollm2_logits` fixture on the real SmolLM2-135M-Instruct (Q4_1) file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup::lm::gguf::{GgufFile, GgufWriter, MetaValue};
use selfsup::lm::llama::{load_gguf, log_softmax_f64, repeat_kv, rope, Llama};
use selfsup::lm::tokenizer::Tokenizer;
use selfsup::lm::weights::Weights;
use selfsup::methods::clm::int_tensor;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

/// The SmolLM2 GGUF under `$SELFSUP_DATA/smollm2` (default `~/.cache/selfsup-data`); panics
/// with the command that fetches it when it is missing.
fn smollm2_path() -> PathBuf {
    let data = match std::env::var_os("SELFSUP_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/selfsup-data"),
    };
    let dir = data.join("smollm2");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
    });
    found.unwrap_or_else(|| {
        panic!(
            "SmolLM2 GGUF not found in {}: run `../shared/data/get.sh smollm2 minilm` \
             (from the repository root) first",
            dir.display()
        )
    })
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box-Muller.
            let u1: f32 = rng.gen_range(1e-7..1.0);
            let u2: f32 = rng.gen();
            scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn rope_rotates_adjacent_pairs_by_position_times_frequency() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (b, h, t, dh) = (1, 2, 5, 8);
    let (start, base) = (3usize, 100.0f64);
    let x = randn(&mut rng, b * h * t * dh, 1.0);
    let y = to_vec(rope(
        Tensor::from_data(TensorData::new(x.clone(), [b, h, t, dh]), &device),
        start,
        base,
    ));
    for hi in 0..h {
        for ti in 0..t {
            let pos = (start + ti) as f64;
            for i in 0..dh / 2 {
                let theta = pos * base.powf(-2.0 * i as f64 / dh as f64);
                let at = |k: usize| ((hi * t + ti) * dh) + k;
                let (x0, x1) = (x[at(2 * i)] as f64, x[at(2 * i + 1)] as f64);
                let e0 = x0 * theta.cos() - x1 * theta.sin();
                let e1 = x0 * theta.sin() + x1 * theta.cos();
                assert!((y[at(2 * i)] as f64 - e0).abs() < 1e-5, "h{hi} t{ti} i{i}");
                assert!(
                    (y[at(2 * i + 1)] as f64 - e1).abs() < 1e-5,
                    "h{hi} t{ti} i{i}"
                );
            }
        }
    }
    // Position 0 is the identity; the norm of every pair is kept.
    let y0 = to_vec(rope(
        Tensor::from_data(TensorData::new(x.clone(), [b, h, t, dh]), &device),
        0,
        base,
    ));
    assert_eq!(&y0[..dh], &x[..dh]);
}

#[test]
fn grouped_query_heads_share_key_value_heads() {
    let device = Device::flex();
    let (hkv, groups, t, dh) = (2, 3, 4, 2);
    let x: Vec<f32> = (0..hkv * t * dh).map(|i| i as f32).collect();
    let r = to_vec(repeat_kv(
        Tensor::from_data(TensorData::new(x.clone(), [1, hkv, t, dh]), &device),
        groups,
    ));
    for j in 0..hkv * groups {
        let kv = j / groups;
        assert_eq!(
            &r[j * t * dh..(j + 1) * t * dh],
            &x[kv * t * dh..(kv + 1) * t * dh],
            "query head {j} must read kv head {kv}"
        );
    }
}

/// A tiny Llama: its config, its tensors by GGUF name (row-major `[out, in]`).
struct Tiny {
    vocab: usize,
    d: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ff: usize,
    base: f32,
    eps: f32,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

fn tiny(tied: bool, seed: u64) -> Tiny {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (vocab, d, layers, heads, kv_heads, ff) = (23, 16, 2, 4, 2, 24);
    let dh = d / heads;
    let mut tensors = HashMap::new();
    let mut add = |name: &str, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let v = randn(&mut rng, n, scale)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        tensors.insert(name.to_string(), (shape, v));
    };
    add("token_embd.weight", vec![vocab, d], 1.0, 0.0);
    for l in 0..layers {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        add(&p("attn_norm"), vec![d], 0.2, 1.0);
        add(&p("attn_q"), vec![heads * dh, d], 0.4, 0.0);
        add(&p("attn_k"), vec![kv_heads * dh, d], 0.4, 0.0);
        add(&p("attn_v"), vec![kv_heads * dh, d], 0.4, 0.0);
        add(&p("attn_output"), vec![d, heads * dh], 0.3, 0.0);
        add(&p("ffn_norm"), vec![d], 0.2, 1.0);
        add(&p("ffn_gate"), vec![ff, d], 0.3, 0.0);
        add(&p("ffn_up"), vec![ff, d], 0.3, 0.0);
        add(&p("ffn_down"), vec![d, ff], 0.3, 0.0);
    }
    add("output_norm.weight", vec![d], 0.2, 1.0);
    if !tied {
        add("output.weight", vec![vocab, d], 0.5, 0.0);
    }
    Tiny {
        vocab,
        d,
        layers,
        heads,
        kv_heads,
        ff,
        base: 500.0,
        eps: 1e-5,
        tensors,
    }
}

impl Tiny {
    fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new();
        w.metadata("general.architecture", MetaValue::Str("llama".into()))
            .metadata("llama.block_count", MetaValue::U32(self.layers as u32))
            .metadata("llama.context_length", MetaValue::U32(64))
            .metadata("llama.embedding_length", MetaValue::U32(self.d as u32))
            .metadata("llama.feed_forward_length", MetaValue::U32(self.ff as u32))
            .metadata(
                "llama.attention.head_count",
                MetaValue::U32(self.heads as u32),
            )
            .metadata(
                "llama.attention.head_count_kv",
                MetaValue::U32(self.kv_heads as u32),
            )
            .metadata("llama.rope.freq_base", MetaValue::F32(self.base))
            .metadata(
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::F32(self.eps),
            );
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let (shape, v) = &self.tensors[name];
            w.tensor_f32(name, shape, v);
        }
        w
    }

    fn model(&self) -> Llama {
        let g = GgufFile::from_bytes(self.writer().to_bytes(), "tiny.gguf").unwrap();
        Llama::from_gguf(&g, &Device::flex()).unwrap().0
    }

    fn w(&self, name: &str) -> &[f32] {
        &self.tensors[name].1
    }

    /// Direct scalar forward in f64: logits `[T][V]`.
    fn reference(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let (d, dh) = (self.d, self.d / self.heads);
        let t = ids.len();
        let matvec = |w: &[f32], x: &[f64], out: usize| -> Vec<f64> {
            let inn = x.len();
            (0..out)
                .map(|o| (0..inn).map(|i| w[o * inn + i] as f64 * x[i]).sum())
                .collect()
        };
        let rms = |x: &[f64], w: &[f32]| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            let r = 1.0 / (ms + self.eps as f64).sqrt();
            x.iter().zip(w).map(|(v, &w)| v * r * w as f64).collect()
        };
        let rot = |v: &mut [f64], pos: usize| {
            for head in v.chunks_mut(dh) {
                for i in 0..dh / 2 {
                    let th = pos as f64 * (self.base as f64).powf(-2.0 * i as f64 / dh as f64);
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * th.cos() - b * th.sin();
                    head[2 * i + 1] = a * th.sin() + b * th.cos();
                }
            }
        };
        let emb = self.w("token_embd.weight");
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .map(|&id| {
                emb[id as usize * d..(id as usize + 1) * d]
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            })
            .collect();
        let groups = self.heads / self.kv_heads;
        for l in 0..self.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            let h: Vec<Vec<f64>> = x.iter().map(|r| rms(r, self.w(&p("attn_norm")))).collect();
            let mut q: Vec<Vec<f64>> = h
                .iter()
                .map(|r| matvec(self.w(&p("attn_q")), r, self.heads * dh))
                .collect();
            let mut k: Vec<Vec<f64>> = h
                .iter()
                .map(|r| matvec(self.w(&p("attn_k")), r, self.kv_heads * dh))
                .collect();
            let v: Vec<Vec<f64>> = h
                .iter()
                .map(|r| matvec(self.w(&p("attn_v")), r, self.kv_heads * dh))
                .collect();
            for pos in 0..t {
                rot(&mut q[pos], pos);
                rot(&mut k[pos], pos);
            }
            for i in 0..t {
                let mut ctx = vec![0.0; self.heads * dh];
                for hq in 0..self.heads {
                    let hk = hq / groups;
                    let qi = &q[i][hq * dh..(hq + 1) * dh];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k[j][hk * dh..(hk + 1) * dh];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (dh as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for c in 0..dh {
                            ctx[hq * dh + c] += ej / z * v[j][hk * dh + c];
                        }
                    }
                }
                let o = matvec(self.w(&p("attn_output")), &ctx, d);
                x[i].iter_mut().zip(o).for_each(|(a, b)| *a += b);
            }
            for row in x.iter_mut() {
                let h = rms(row, self.w(&p("ffn_norm")));
                let g = matvec(self.w(&p("ffn_gate")), &h, self.ff);
                let u = matvec(self.w(&p("ffn_up")), &h, self.ff);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let o = matvec(self.w(&p("ffn_down")), &a, d);
                row.iter_mut().zip(o).for_each(|(a, b)| *a += b);
            }
        }
        let head = self
            .tensors
            .get("output.weight")
            .map_or(emb, |(_, v)| v.as_slice());
        x.iter()
            .map(|r| matvec(head, &rms(r, self.w("output_norm.weight")), self.vocab))
            .collect()
    }
}

#[test]
fn tiny_llama_matches_direct_formula_tied_and_untied() {
    let ids = [3u32, 17, 0, 22, 5, 5, 9];
    for tied in [true, false] {
        let tiny = tiny(tied, if tied { 7 } else { 8 });
        let model = tiny.model();
        assert_eq!(model.output.is_none(), tied);
        let device = model.device();
        let got = to_vec(model.forward(int_tensor(&ids, [1, ids.len()], &device)));
        let want: Vec<f32> = tiny
            .reference(&ids)
            .into_iter()
            .flatten()
            .map(|v| v as f32)
            .collect();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "tied={tied}: max |logit diff| {diff}");
    }
}

#[test]
fn tiny_llama_cache_gives_the_same_logits_as_a_full_forward() {
    let tiny = tiny(true, 11);
    let model = tiny.model();
    let device = model.device();
    let ids = [1u32, 4, 9, 16, 2, 11];
    let full = to_vec(model.forward(int_tensor(&ids, [1, 6], &device)));
    let v = tiny.vocab;
    // A 4-token prompt, then one token at a time.
    let mut cache = model.new_cache();
    let mut got = to_vec(model.forward_cached(int_tensor(&ids[..4], [1, 4], &device), &mut cache));
    for i in 4..6 {
        got.extend(to_vec(model.forward_cached(
            int_tensor(&ids[i..i + 1], [1, 1], &device),
            &mut cache,
        )));
    }
    assert_eq!(cache.len(), 6);
    assert!(max_abs_diff(&got, &full) < 1e-5);
    // next_logits: the head on the last position only.
    let mut cache = model.new_cache();
    let last = model.next_logits(&ids, &mut cache).unwrap();
    assert!(max_abs_diff(&last, &full[5 * v..]) < 1e-5);

    // Greedy with the cache equals argmax of full recomputation.
    let greedy = model.greedy(&ids[..3], 4).unwrap();
    let mut seq = ids[..3].to_vec();
    for &g in &greedy {
        let logits = to_vec(model.forward(int_tensor(&seq, [1, seq.len()], &device)));
        let row = &logits[(seq.len() - 1) * v..];
        let best = (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(g as usize, best);
        seq.push(g);
    }

    // Continuation log-probs equal log_softmax of the full forward.
    let lp = model.continuation_logprobs(&ids[..4], &ids[4..]).unwrap();
    for (j, &c) in ids[4..].iter().enumerate() {
        let row = &full[(3 + j) * v..(4 + j) * v];
        assert!((lp[j] - log_softmax_f64(row)[c as usize]).abs() < 1e-9);
    }
    // Out-of-vocabulary ids and empty inputs are errors, not panics.
    let mut cache = model.new_cache();
    let e = model
        .next_logits(&[99], &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token 99") && e.contains("vocabulary"), "{e}");
    assert!(model.continuation_logprobs(&[], &[1]).is_err());
}

fn load_err(w: &GgufWriter) -> String {
    let g = match GgufFile::from_bytes(w.to_bytes(), "bad.gguf") {
        Ok(g) => g,
        Err(e) => return format!("{e:#}"),
    };
    match Llama::from_gguf(&g, &Device::flex()) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_llama_files_name_the_file_and_the_tensor() {
    let t = tiny(true, 3);
    // A missing tensor.
    let mut broken = tiny(true, 3);
    broken.tensors.remove("blk.1.ffn_up.weight");
    let e = load_err(&broken.writer());
    assert!(
        e.contains("bad.gguf") && e.contains("missing tensor blk.1.ffn_up.weight"),
        "{e}"
    );
    // A shape that disagrees with the metadata (feed_forward_length 24).
    let mut broken = tiny(true, 3);
    broken.tensors.insert(
        "blk.0.ffn_gate.weight".into(),
        (vec![20, 16], vec![0.0; 320]),
    );
    let e = load_err(&broken.writer());
    assert!(
        e.contains("bad.gguf")
            && e.contains("blk.0.ffn_gate.weight")
            && e.contains("[20, 16]")
            && e.contains("expected [24, 16]"),
        "{e}"
    );
    // Metadata that cannot describe a model.
    let mut w = t.writer();
    w.metadata("llama.attention.head_count_kv", MetaValue::U32(3));
    let e = load_err(&w);
    assert!(e.contains("bad.gguf") && e.contains("head_count_kv"), "{e}");
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", MetaValue::Str("mamba".into()));
    let e = load_err(&w);
    assert!(e.contains("bad.gguf") && e.contains("mamba"), "{e}");
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", MetaValue::Str("llama".into()));
    let e = load_err(&w);
    assert!(e.contains("missing"), "{e}");
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Last-position logits, greedy continuations and continuation log-probs of every prompt of
/// the fixture, on the real model.
#[test]
fn smollm2_matches_fixture_logits_greedy_and_logprobs() {
    let path = smollm2_path();
    let fx = json("smollm2_logits.json");
    let tensors =
        Weights::from_file(fixtures().join(fx["tensors_file"].as_str().unwrap())).unwrap();
    let device = Device::flex();
    let t0 = Instant::now();
    let (model, cfg, tok) = load_gguf(&path, &device).unwrap();
    eprintln!("load: {:.2}s", t0.elapsed().as_secs_f64());
    let arch = &fx["architecture"];
    assert_eq!(cfg.n_layers as u64, arch["n_layers"].as_u64().unwrap());
    assert_eq!(cfg.n_kv_heads as u64, arch["n_kv_heads"].as_u64().unwrap());
    assert_eq!(cfg.vocab_size as u64, arch["vocab_size"].as_u64().unwrap());
    assert!(model.output.is_none(), "SmolLM2's head is tied");

    let prompts = fx["prompts"].as_array().unwrap();
    let v = cfg.vocab_size;
    let last = tensors.values("last_logits", &[prompts.len(), v]).unwrap();

    // Layer-0 residual stream and final norm output of prompt 0.
    let ids0 = ids_of(&prompts[0]["prompt_ids"]);
    let t = ids0.len();
    let trace = model.forward_trace(int_tensor(&ids0, [1, t], &device));
    let layer0 = tensors
        .values("prompt0.layer0_output", &[t, cfg.d_model])
        .unwrap();
    let d0 = max_abs_diff(&to_vec(trace.hidden[1].clone()), layer0);
    let fin = tensors
        .values("prompt0.final_norm_output", &[t, cfg.d_model])
        .unwrap();
    let dfin = max_abs_diff(&to_vec(trace.hidden.last().unwrap().clone()), fin);
    eprintln!("prompt0 layer0 max diff {d0:.3e}, final norm max diff {dfin:.3e}");
    assert!(d0 < 1e-4, "layer 0 output differs by {d0}");
    assert!(dfin < 1e-3, "final norm output differs by {dfin}");

    let t1 = Instant::now();
    let mut worst_logit = 0f32;
    for p in prompts {
        let name = p["name"].as_str().unwrap();
        let prompt_ids = ids_of(&p["prompt_ids"]);
        let row = p["last_logits_row"].as_u64().unwrap() as usize;
        let want = &last[row * v..(row + 1) * v];

        let mut cache = model.new_cache();
        let got = model.next_logits(&prompt_ids, &mut cache).unwrap();
        let diff = max_abs_diff(&got, want);
        let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
        worst_logit = worst_logit.max(diff);
        // Top-10 ids of the fixture are the top 10 here.
        let top10 = ids_of(&Value::Array(
            p["top10"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone())
                .collect(),
        ));
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| got[b].total_cmp(&got[a]));
        let ours: Vec<u32> = order[..10].iter().map(|&i| i as u32).collect();

        let greedy_want = ids_of(&p["greedy_ids"]);
        let margins: Vec<f64> = p["greedy_top1_minus_top2_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let greedy = model.greedy(&prompt_ids, greedy_want.len()).unwrap();
        let first_diff = greedy.iter().zip(&greedy_want).position(|(a, b)| a != b);

        let cont = ids_of(&p["continuation_ids"]);
        let lp: f64 = model
            .continuation_logprobs(&prompt_ids, &cont)
            .unwrap()
            .iter()
            .sum();
        let lp_want = p["continuation_logprob_sum"].as_f64().unwrap();
        eprintln!(
            "{name}: max |logit diff| {diff:.3e} (max |logit| {scale:.1}), greedy {}, \
             logprob sum {lp:.6} vs {lp_want:.6} (diff {:.2e})",
            match first_diff {
                None => "identical".to_string(),
                Some(j) => format!("flips at step {j} (margin {:.2e})", margins[j]),
            },
            (lp - lp_want).abs()
        );
        assert!(
            diff <= 1e-3,
            "{name}: last-position logits differ by {diff}"
        );
        assert_eq!(ours, top10, "{name}: top-10 ids");
        if let Some(j) = first_diff {
            assert!(
                margins[j] < 1e-3,
                "{name}: greedy token {j} is {} instead of {} although the reference's \
                 top-1/top-2 margin is {}",
                greedy[j],
                greedy_want[j],
                margins[j]
            );
        }
        assert!(
            (lp - lp_want).abs() < 1e-3,
            "{name}: continuation log-prob sum {lp} vs {lp_want}"
        );
        // The greedy text decodes as the fixture's (special tokens kept).
        if first_diff.is_none() {
            assert_eq!(
                tok.decode(&greedy),
                p["greedy_text"].as_str().unwrap(),
                "{name}"
            );
        }
    }
    eprintln!(
        "{} prompts (logits, 16 greedy tokens, continuation): {:.2}s; worst logit diff {worst_logit:.3e}",
        prompts.len(),
        t1.elapsed().as_secs_f64()
    );
}
