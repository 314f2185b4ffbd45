//! LoRA fine-tuning on ICL examples and the ICL-vs-fine-tuning-vs-probe experiment, on tiny
//! random models (a selfsup GPT with a byte tokenizer, and a two-block Llama built in memory):
//! zero adapters change nothing, gradients reach only the adapters, a few steps lower the
//! loss on the k examples, and the experiment produces its table with finite numbers.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::DropoutConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use selfsup::icl::finetune::{
    apply_lora, gpt_lora_params, llama_lora_params, target_sequence, GptTarget, LlamaTarget,
    LoraConfig, TargetBatch, TargetSeq, TunableLm,
};
use selfsup::icl::tasks::{add2, label_map};
use selfsup::icl::versus::{icl_vs_finetune, VersusConfig};
use selfsup::lm::llama::{Llama, LlamaAttention, LlamaBlock, LlamaMlp, RmsNorm};
use selfsup::lm::tokenizer::{ByteTokenizer, Tokenizer};
use selfsup::methods::clm::{int_tensor, Gpt, GptConfig};
use selfsup::methods::Objective;

/// Linear layers at ±1/√fan_in and a token embedding (the tied LM head) at ±0.5 rather than
/// GPT-2's N(0, 0.02²): in an untrained model, attention (the part LoRA adapts) then carries
/// signal and the head can express confident predictions.
fn tiny_gpt(seed: u64) -> Gpt {
    let device = Device::flex();
    let gpt = selfsup::nn::init::seeded(&device, seed, || {
        GptConfig::new(256)
            .with_context_length(512)
            .with_d_model(32)
            .with_n_layers(2)
            .with_n_heads(2)
            .with_d_ff(64)
            .init(&device)
    });
    let mut gpt = selfsup::nn::init::init_seeded(gpt, seed);
    gpt.wte = random_param([256, 32], 0.5, &mut ChaCha8Rng::seed_from_u64(seed));
    gpt
}

fn random_param<const D: usize>(
    shape: [usize; D],
    std: f32,
    rng: &mut ChaCha8Rng,
) -> Param<Tensor<D>> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-std..std)).collect();
    Param::from_tensor(Tensor::from_data(
        TensorData::new(v, shape),
        &Device::flex(),
    ))
}

/// A two-block Llama (vocabulary 64, width 16, 4 query heads over 2 key/value heads).
fn tiny_llama(seed: u64) -> Llama {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (v, d, ff) = (64, 16, 32);
    let norm = |rng: &mut ChaCha8Rng| RmsNorm {
        weight: random_param([d], 1.0, rng),
        eps: 1e-5,
    };
    let blocks = (0..2)
        .map(|_| LlamaBlock {
            attn_norm: norm(&mut rng),
            attn: LlamaAttention {
                wq: random_param([d, d], 0.3, &mut rng),
                wk: random_param([d / 2, d], 0.3, &mut rng),
                wv: random_param([d / 2, d], 0.3, &mut rng),
                wo: random_param([d, d], 0.3, &mut rng),
                n_heads: 4,
                n_kv_heads: 2,
                dropout: DropoutConfig::new(0.0).init(),
            },
            ffn_norm: norm(&mut rng),
            mlp: LlamaMlp {
                gate: random_param([ff, d], 0.3, &mut rng),
                up: random_param([ff, d], 0.3, &mut rng),
                down: random_param([d, ff], 0.3, &mut rng),
            },
        })
        .collect();
    Llama {
        token_embd: random_param([v, d], 0.5, &mut rng),
        blocks,
        output_norm: norm(&mut rng),
        output: None,
        context_length: 64,
        rope_base: 10000.0,
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every float parameter as (path, values); adapter factors appear under their weight's path.
fn params<M: Module>(m: &M) -> Vec<(String, Vec<f32>, ParamId, bool)> {
    struct V {
        path: Vec<String>,
        out: Vec<(String, Vec<f32>, ParamId, bool)>,
    }
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.out.push((
                self.path.join("."),
                values(p.val()),
                p.id,
                p.is_require_grad(),
            ));
        }
    }
    let mut v = V {
        path: vec![],
        out: vec![],
    };
    m.visit(&mut v);
    v.out
}

fn seqs(n: usize) -> Vec<TargetSeq> {
    let task = label_map(2020, 40);
    (0..n)
        .map(|i| target_sequence(&task, i, &ByteTokenizer).unwrap())
        .collect()
}

#[test]
fn lora_with_zero_b_gives_the_base_logits() {
    let device = Device::flex();
    let ids = int_tensor(&[1, 5, 9, 33, 2, 7], [1, 6], &device);
    let gpt = tiny_gpt(1);
    let base = values(gpt.forward(ids.clone()));
    let params = gpt_lora_params(&gpt);
    let adapted = apply_lora(gpt, params, 4, 8.0, 3, &device);
    assert!(adapted.h[0].attn.c_attn.weight.adapter().is_some());
    assert_eq!(max_diff(&base, &values(adapted.forward(ids.clone()))), 0.0);

    let llama = tiny_llama(2);
    let base = values(llama.forward(ids.clone()));
    let params = llama_lora_params(&llama);
    let adapted = apply_lora(llama, params, 4, 8.0, 3, &device);
    assert!(adapted.blocks[1].attn.wv.adapter().is_some());
    assert!(adapted.blocks[1].attn.wk.adapter().is_none());
    assert_eq!(max_diff(&base, &values(adapted.forward(ids))), 0.0);
}

/// One optimizer step on `model` (already adapted): gradients exist for exactly the adapter
/// factors, the frozen weights keep their values and B moves off zero.
fn one_step_trains_only_adapters<M: Objective<Batch = TargetBatch>>(model: M, vocab_ok: bool) {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let model = model.to_device(&ad.clone().inner()).train();
    let before = params(&model);
    let trainable: Vec<&(String, Vec<f32>, ParamId, bool)> =
        before.iter().filter(|p| p.3).collect();
    assert!(!trainable.is_empty());
    assert!(
        trainable
            .iter()
            .all(|p| p.0.ends_with(".a") || p.0.ends_with(".b")),
        "only adapter factors may train: {:?}",
        trainable.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let seq = if vocab_ok {
        seqs(2)
    } else {
        vec![TargetSeq {
            ids: vec![3, 17, 42, 8, 11, 60],
            n_target: 2,
        }]
    };
    let refs: Vec<&TargetSeq> = seq.iter().collect();
    let batch = TargetBatch::new(&refs, &ad).unwrap();
    let loss = model.loss(batch);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    for (path, _, id, trains) in &before {
        let has = grads.get::<2>(*id).is_some() || grads.get::<1>(*id).is_some();
        assert_eq!(has, *trains, "gradient presence of {path}");
    }
    let mut opt = selfsup::train::optim::build_optimizer("adamw", 0.0, 0.9).unwrap();
    let model = opt.step(1e-2, model, grads);
    let after = params(&model);
    assert_eq!(before.len(), after.len());
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.0, a.0);
        let d = max_diff(&b.1, &a.1);
        if b.3 {
            moved += usize::from(d > 0.0);
        } else {
            // Adapted weights are visited without their adapter: the frozen base itself.
            assert_eq!(d, 0.0, "frozen {} changed", b.0);
        }
    }
    assert!(moved > 0, "no adapter factor moved");
}

#[test]
fn lora_gradients_reach_only_the_adapters() {
    let device = Device::flex();
    let gpt = tiny_gpt(4);
    let p = gpt_lora_params(&gpt);
    one_step_trains_only_adapters(apply_lora(GptTarget { gpt }, p, 4, 8.0, 5, &device), true);
    let llama = tiny_llama(6);
    let p = llama_lora_params(&llama);
    one_step_trains_only_adapters(
        apply_lora(LlamaTarget { llama }, p, 4, 8.0, 5, &device),
        false,
    );
}

#[test]
fn finetuning_changes_only_the_adapted_weights_and_lowers_the_loss() {
    let lm = TunableLm::from_gpt("tiny", tiny_gpt(7), Box::new(ByteTokenizer));
    let train = seqs(4);
    let before = lm.target_loss(&train).unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        steps: 15,
        batch_size: 4,
        lr: 2e-2,
    };
    let mut ticks = 0;
    let (tuned, report) = lm
        .finetune_lora(&train, &cfg, 1, &mut || ticks += 1)
        .unwrap();
    assert_eq!(ticks, 15);
    assert_eq!(report.steps, 15);
    assert_eq!(report.examples_seen, 60);
    let after = tuned.target_loss(&train).unwrap();
    assert!(
        after < 0.5 * before,
        "loss on the k examples went from {before} to {after}"
    );
    assert!(report.last_loss < report.first_loss, "{report:?}");
    // Rank-4 factors for the 2 fused q/k/v projections [32 → 96]: 2 · 4 · (32 + 96).
    assert_eq!(report.trainable_params, 2 * 4 * (32 + 96));

    // Merged into the weights: only the adapted projections differ from the base model.
    let (TunableLm::Gpt { model: base, .. }, TunableLm::Gpt { model: new, .. }) = (&lm, &tuned)
    else {
        panic!("GPT in, GPT out")
    };
    let (pb, pn) = (params(base), params(new));
    assert_eq!(
        pb.len(),
        pn.len(),
        "merged model has no adapter parameters left"
    );
    let mut changed = 0;
    for (b, n) in pb.iter().zip(&pn) {
        let d = max_diff(&b.1, &n.1);
        if b.0.contains("c_attn") && b.1.len() == 32 * 96 {
            assert!(d > 0.0, "{} should have changed", b.0);
            changed += 1;
        } else {
            assert_eq!(d, 0.0, "{} changed", b.0);
        }
    }
    assert_eq!(changed, 2, "one fused q/k/v weight per block");

    // Same seed, same weights.
    let (again, _) = lm.finetune_lora(&train, &cfg, 1, &mut || ()).unwrap();
    assert_eq!(again.target_loss(&train).unwrap(), after);
}

#[test]
fn experiment_end_to_end_on_a_tiny_gpt() {
    let lm = TunableLm::from_gpt("tiny", tiny_gpt(8), Box::new(ByteTokenizer));
    let task = label_map(2020, 60);
    let cfg = VersusConfig {
        ks: vec![4, 1, 2],
        draws: 2,
        eval_size: 12,
        seed: 3,
        lora: LoraConfig {
            steps: 3,
            batch_size: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = icl_vs_finetune(&lm, &task, &cfg).unwrap();
    assert_eq!(r.rows.len(), 9);
    assert_eq!(r.runs.len(), 18);
    let ks: Vec<usize> = r.rows.iter().map(|r| r.k).collect();
    assert_eq!(ks, vec![1, 1, 1, 2, 2, 2, 4, 4, 4]);
    for row in &r.rows {
        let m = row.mean.unwrap_or_else(|| panic!("no score: {row:?}"));
        assert!(
            (0.0..=1.0).contains(&m) && row.std.unwrap().is_finite(),
            "{row:?}"
        );
        assert!(
            row.train_seconds.is_finite() && row.eval_seconds > 0.0,
            "{row:?}"
        );
        match row.method.as_str() {
            "icl" => {
                assert_eq!(row.examples_seen, row.k as f64);
                assert!(row.tokens_per_query > 30.0 * row.k as f64, "{row:?}");
                assert_eq!(row.train_seconds, 0.0);
            }
            "finetune" => {
                assert_eq!(row.examples_seen, (3 * row.k.min(2)) as f64);
                assert!(row.train_seconds > 0.0);
            }
            "probe" => assert_eq!(row.examples_seen, row.k as f64),
            m => panic!("unexpected method {m}"),
        }
    }
    let table = r.table();
    for needle in ["icl", "finetune", "probe", "acc", "tok/query"] {
        assert!(table.contains(needle), "{table}");
    }
    assert!(!r.verdict.is_empty());
    assert_eq!(r.to_csv().lines().count(), 10);
    // The same seed gives the same scores.
    let again = icl_vs_finetune(&lm, &task, &cfg).unwrap();
    let scores = |r: &selfsup::icl::versus::VersusReport| -> Vec<Option<f64>> {
        r.runs.iter().map(|x| x.score).collect()
    };
    assert_eq!(scores(&r), scores(&again));
    let dir = tempfile::tempdir().unwrap();
    let files = r.write_outputs(dir.path()).unwrap();
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f.exists()));
}

#[test]
fn bad_input_gives_clear_errors_and_na_probe_on_generation() {
    let lm = TunableLm::from_gpt("tiny", tiny_gpt(9), Box::new(ByteTokenizer));
    let task = label_map(2020, 30);
    let mut cfg = VersusConfig {
        ks: vec![0, 2],
        eval_size: 5,
        lora: LoraConfig {
            steps: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = icl_vs_finetune(&lm, &task, &cfg).unwrap_err().to_string();
    assert!(err.contains("k = 0"), "{err}");
    cfg.ks = vec![2];
    cfg.eval_size = 29;
    let err = format!("{:#}", icl_vs_finetune(&lm, &task, &cfg).unwrap_err());
    assert!(err.contains("eval-size"), "{err}");

    // A generation task: ICL and fine-tuning are scored by exact match, the probe is n/a.
    let task = add2(2020, 20);
    cfg.eval_size = 3;
    cfg.ks = vec![1];
    let r = icl_vs_finetune(&lm, &task, &cfg).unwrap();
    let by: HashMap<&str, &selfsup::icl::versus::Row> =
        r.rows.iter().map(|r| (r.method.as_str(), r)).collect();
    assert_eq!(r.metric, "exact_match");
    assert!(by["icl"].mean.is_some() && by["finetune"].mean.is_some());
    assert!(by["probe"].mean.is_none());
    assert!(by["probe"].note.as_deref().unwrap().starts_with("n/a"));
    assert!(r.table().contains("n/a"));
}

#[test]
fn tokenizer_split_matches_the_harness() {
    // The answer of a log-likelihood task is " foo"/" bar" after "…Label:".
    let task = label_map(2020, 10);
    let s = target_sequence(&task, 0, &ByteTokenizer).unwrap();
    let text = ByteTokenizer.decode(&s.ids);
    let answer = ByteTokenizer.decode(&s.ids[s.ids.len() - s.n_target..]);
    assert!(
        text.starts_with("Review: ") && text.contains("\nLabel:"),
        "{text}"
    );
    assert_eq!(answer, format!(" {}", task.examples[0].target));
}
