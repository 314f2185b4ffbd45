//! ICL scoring and the harness: chrF and answer normalization on hand-computed cases, both
//! scoring modes on a scripted model with known log-probabilities, the cache of model calls,
//! sample logs, the table and CSV, and the same plumbing on a tiny random GPT.

use std::cell::Cell;
use std::path::PathBuf;

use burn::tensor::activation::log_softmax;
use burn::tensor::Device;
use selfsup::icl::eval::{evaluate, mean_stderr, IclConfig};
use selfsup::icl::model::{first_stop, GptLm, LanguageModel};
use selfsup::icl::score::{chrf, chrf_with, exact_match, normalize_answer, score_choices};
use selfsup::icl::task::{Example, Metric, Scoring, Task, Template};
use selfsup::icl::tasks::{add2, label_map};
use selfsup::lm::generate::{generate, SamplingConfig};
use selfsup::lm::tokenizer::{ByteTokenizer, Tokenizer};
use selfsup::methods::clm::{int_tensor, GptConfig};
use serde_json::Value;

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfsup-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn chrf_hand_computed() {
    assert!(close(chrf("abc", "abc"), 1.0));
    // Whitespace is not part of the n-grams.
    assert!(close(chrf("a b c", "abc"), 1.0));
    assert!(close(chrf("xyz", "abc"), 0.0));
    assert!(close(chrf("", "abc"), 0.0));
    // "ab" vs "abc": P1 = 2/2, R1 = 2/3; P2 = 1/1, R2 = 1/2; no 3-grams in "ab".
    // P = 1, R = 7/12, chrF = 5·P·R / (4P + R) = (35/12) / (55/12) = 7/11.
    assert!(
        close(chrf("ab", "abc"), 7.0 / 11.0),
        "{}",
        chrf("ab", "abc")
    );
    // Swapped, recall and precision trade places: P = 7/12, R = 1 → 5·7/12 / (4·7/12 + 1) = 35/40.
    assert!(
        close(chrf("abc", "ab"), 35.0 / 40.0),
        "{}",
        chrf("abc", "ab")
    );
    // Counts are clipped: "aaa" vs "a": P1 = 1/3, R1 = 1 → 5/3 / (4/3 + 1) = 5/7.
    assert!(close(chrf("aaa", "a"), 5.0 / 7.0));
    // β = 1 is the harmonic mean: "ab" vs "abc" → 2·(7/12) / (1 + 7/12) = 14/19.
    assert!(close(chrf_with("ab", "abc", 6, 1.0), 14.0 / 19.0));
    // Characters, not bytes: "é" is one unigram.
    assert!(close(chrf("é", "é"), 1.0));
    assert!(chrf("Allemagne", "Allemagne") > chrf("Alemania", "Allemagne"));
}

#[test]
fn normalization_and_exact_match() {
    assert_eq!(normalize_answer("  The  Cat!\n"), "cat");
    assert_eq!(normalize_answer("An apple, a pear."), "apple pear");
    assert_eq!(normalize_answer("Côte d’Ivoire"), "côte d ivoire");
    assert_eq!(normalize_answer("Guinée-Bissau"), "guinée bissau");
    assert_eq!(normalize_answer("124"), "124");
    assert_eq!(normalize_answer("theatre"), "theatre");
    assert_eq!(exact_match("The answer.", "answer"), 1.0);
    assert_eq!(exact_match(" allemagne", "Allemagne"), 1.0);
    assert_eq!(exact_match("Allemand", "Allemagne"), 0.0);
}

#[test]
fn choice_scoring_and_length_normalization() {
    let choices = vec!["foo".to_string(), "barbaz".to_string()];
    // Summed: foo wins (-3 > -4.5); per character barbaz wins (-0.75 > -1).
    let out = score_choices(&[-3.0, -4.5], &choices, 1);
    assert_eq!((out.pred, out.pred_norm), (0, 1));
    assert_eq!((out.acc, out.acc_norm), (0.0, 1.0));
    // Ties go to the first choice.
    assert_eq!(score_choices(&[-1.0, -1.0], &choices, 0).pred, 0);
    let (m, se) = mean_stderr(&[1.0, 1.0, 1.0, 0.0]);
    assert!(close(m, 0.75) && close(se, 0.25), "{m} {se}");
    assert_eq!(mean_stderr(&[1.0]), (1.0, 0.0));
}

/// A byte-level model with scripted answers. Log-likelihood: the whole log-probability of a
/// continuation sits on its first token, `-3` for " foo" and `-4.5` for " barbaz". Generation:
/// the right answer to the query once the prompt holds a shot, "banana" without; both padded
/// with a leading space and followed by a newline and junk that the stop string must cut.
struct Scripted {
    task: Task,
    calls: Cell<usize>,
}

impl Scripted {
    fn query_of(&self, context: &[u32]) -> (String, bool) {
        let text = ByteTokenizer.decode(context);
        let t = &self.task.template;
        let last = text.rfind(&t.input_prefix).expect("no query in the prompt");
        let query = text[last + t.input_prefix.len()..]
            .trim_end_matches(&t.output_prefix)
            .trim_end_matches(&t.input_suffix)
            .to_string();
        (query, last > 0)
    }
}

impl LanguageModel for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        &ByteTokenizer
    }

    fn continuation_logprobs(
        &self,
        context: &[u32],
        continuation: &[u32],
    ) -> anyhow::Result<Vec<f32>> {
        self.calls.set(self.calls.get() + 1);
        assert!(ByteTokenizer.decode(context).ends_with("Label:"));
        let total = match ByteTokenizer.decode(continuation).as_str() {
            " foo" => -3.0,
            " barbaz" => -4.5,
            other => panic!("unexpected continuation {other:?}"),
        };
        let mut lp = vec![0.0; continuation.len()];
        lp[0] = total;
        Ok(lp)
    }

    fn generate_greedy(
        &self,
        context: &[u32],
        max_new: usize,
        stop: &[String],
    ) -> anyhow::Result<String> {
        self.calls.set(self.calls.get() + 1);
        assert_eq!(max_new, 8);
        let (query, has_shots) = self.query_of(context);
        let answer = match self.task.examples.iter().find(|e| e.input == query) {
            Some(e) if has_shots => e.target.clone(),
            _ => "banana".into(),
        };
        let text = format!(" {answer}\nQ: junk");
        let cut = first_stop(&text, stop).unwrap_or(text.len());
        Ok(text[..cut].to_string())
    }

    fn max_context(&self) -> usize {
        10_000
    }
}

fn choice_task() -> Task {
    let ex = |i: &str, t: &str| Example::new(i, t);
    let mut task = Task::new(
        "choices",
        vec![
            ex("a", "foo"),
            ex("b", "foo"),
            ex("c", "foo"),
            ex("d", "barbaz"),
        ],
        Scoring::Loglik,
    );
    task.choices = Some(vec!["foo".into(), "barbaz".into()]);
    task.template = Template::with_prefixes("Review: ", "Label:");
    task
}

fn metric(report: &selfsup::icl::eval::IclReport, k: usize, m: Metric) -> (f64, f64) {
    let r = report.results.iter().find(|r| r.k == k).unwrap();
    let s = r.metrics.iter().find(|s| s.metric == m).unwrap();
    (s.mean, s.stderr)
}

#[test]
fn loglik_scoring_on_a_scripted_model() {
    let task = choice_task();
    let model = Scripted {
        task: task.clone(),
        calls: Cell::new(0),
    };
    let report = evaluate(&model, &task, &[0, 2], &IclConfig::default()).unwrap();
    assert_eq!(report.n_queries, 4);
    // Always " foo" by sum: 3 of 4 targets; always " barbaz" per character: 1 of 4.
    for k in [0, 2] {
        let (acc, se) = metric(&report, k, Metric::Acc);
        assert!(close(acc, 0.75) && close(se, 0.25), "{acc} {se}");
        let (acc_norm, _) = metric(&report, k, Metric::AccNorm);
        assert!(close(acc_norm, 0.25), "{acc_norm}");
    }
    // One model call per query per k (both choices together); nothing repeats.
    assert_eq!(report.model_calls, 8);
    assert_eq!(report.cache_hits, 0);
    assert_eq!(model.calls.get(), 16);
}

#[test]
fn generation_scoring_cache_and_logs() {
    let mut task = add2(0, 30);
    task.scoring = Scoring::Generate {
        stop: vec!["\n".into()],
        max_new_tokens: 8,
    };
    task.metrics = vec![Metric::ExactMatch, Metric::Chrf];
    let model = Scripted {
        task: task.clone(),
        calls: Cell::new(0),
    };
    let dir = tempdir("icl_score_gen");
    let cache = dir.join("calls.jsonl");
    let _ = std::fs::remove_file(&cache);
    let cfg = IclConfig {
        seed: 3,
        limit: Some(10),
        balanced: false,
        log_samples: Some(dir.join("samples.jsonl")),
        cache: Some(cache.clone()),
    };
    let report = evaluate(&model, &task, &[0, 1, 4], &cfg).unwrap();
    assert_eq!(report.n_queries, 10);
    assert_eq!(metric(&report, 0, Metric::ExactMatch), (0.0, 0.0));
    assert_eq!(metric(&report, 0, Metric::Chrf), (0.0, 0.0));
    assert_eq!(metric(&report, 1, Metric::ExactMatch), (1.0, 0.0));
    assert_eq!(metric(&report, 4, Metric::Chrf), (1.0, 0.0));
    assert_eq!((report.model_calls, report.cache_hits), (30, 0));

    // Every prompt, output and score is logged; shots never include the query.
    let log = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    let mut queries: Vec<u64> = Vec::new();
    for l in &lines {
        let q = l["query"].as_u64().unwrap();
        let shots: Vec<u64> = l["shots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        assert_eq!(shots.len() as u64, l["k"].as_u64().unwrap());
        assert!(!shots.contains(&q));
        assert!(l["prompt"].as_str().unwrap().ends_with("A:"));
        let target = l["target"].as_str().unwrap();
        let k = l["k"].as_u64().unwrap();
        assert_eq!(
            l["output"].as_str().unwrap(),
            if k == 0 { "banana" } else { target }
        );
        assert_eq!(
            l["scores"]["exact_match"].as_f64().unwrap(),
            if k == 0 { 0.0 } else { 1.0 }
        );
        if k == 0 {
            queries.push(q);
        }
    }
    // The same queries at every k.
    for l in &lines {
        assert!(queries.contains(&l["query"].as_u64().unwrap()));
    }

    // A rerun is answered from the persisted cache.
    let calls = model.calls.get();
    let again = evaluate(&model, &task, &[0, 1, 4], &cfg).unwrap();
    assert_eq!(model.calls.get(), calls);
    assert_eq!((again.model_calls, again.cache_hits), (0, 30));
    assert_eq!(again.results, report.results);
    // A partly written last line (an interrupted run) is skipped, not fatal.
    let mut text = std::fs::read_to_string(&cache).unwrap();
    text.push_str("{\"key\": \"gener");
    std::fs::write(&cache, text).unwrap();
    let third = evaluate(&model, &task, &[0, 1, 4, 8], &cfg).unwrap();
    assert_eq!((third.model_calls, third.cache_hits), (10, 30));

    // The table and CSV.
    let table = report.table();
    assert!(
        table.contains("zero-shot") && table.contains("one-shot") && table.contains("few-shot"),
        "{table}"
    );
    assert!(
        table.contains("exact_match") && table.contains("1.000 ± 0.000"),
        "{table}"
    );
    let csv = report.to_csv();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "model,task,k,n,metric,mean,stderr");
    assert_eq!(rows.len(), 1 + 3 * 2);
    assert_eq!(rows[1], "scripted,add2,0,10,exact_match,0,0");
    report.write_csv(dir.join("acc.csv")).unwrap();
    report.write_json(dir.join("acc.json")).unwrap();
    let back: selfsup::icl::eval::IclReport =
        serde_json::from_str(&std::fs::read_to_string(dir.join("acc.json")).unwrap()).unwrap();
    assert_eq!(back.results, report.results);
}

#[test]
fn harness_rejects_impossible_settings() {
    let task = choice_task();
    let model = Scripted {
        task: task.clone(),
        calls: Cell::new(0),
    };
    let err = evaluate(&model, &task, &[0, 4], &IclConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[4] shots") && err.contains("only 3"), "{err}");
    assert!(evaluate(&model, &task, &[], &IclConfig::default()).is_err());
}

fn tiny_gpt(context: usize) -> GptLm {
    let device = Device::flex();
    let model = GptConfig::new(256)
        .with_context_length(context)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(2)
        .with_d_ff(64)
        .init(&device);
    GptLm::new("tiny-random", model, Box::new(ByteTokenizer)).unwrap()
}

#[test]
fn gpt_continuation_logprobs_match_a_full_forward() {
    let lm = tiny_gpt(64);
    let tok = ByteTokenizer;
    let ctx = tok.encode("Review: fine\nLabel:").unwrap();
    let conts = [tok.encode(" foo").unwrap(), tok.encode(" b").unwrap()];
    let got = lm.choice_logprobs(&ctx, &conts).unwrap();
    for (c, lp) in conts.iter().zip(&got) {
        let all: Vec<u32> = ctx.iter().chain(c).copied().collect();
        let t = all.len();
        let device = lm.model().device();
        let logits = lm.model().forward(int_tensor(&all, [1, t], &device));
        let rows: Vec<f32> = log_softmax(logits.reshape([t, 256]), 1)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(lp.len(), c.len());
        for (j, &id) in c.iter().enumerate() {
            let want = rows[(ctx.len() - 1 + j) * 256 + id as usize];
            assert!(
                (lp[j] - want).abs() < 1e-4,
                "token {j}: {} vs {want}",
                lp[j]
            );
        }
        assert_eq!(&lm.continuation_logprobs(&ctx, c).unwrap(), lp);
    }
    // Log-probabilities, so negative; the context limit is enforced.
    assert!(got.iter().flatten().all(|&x| x < 0.0));
    let long = vec![65u32; 64];
    assert!(lm.continuation_logprobs(&long, &[66]).is_ok());
    let err = lm
        .continuation_logprobs(&long, &[66, 67])
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceeds the context of 64"), "{err}");
    assert!(lm.continuation_logprobs(&ctx, &[]).is_err());
    // A byte tokenizer has no end-of-text token to start an empty prompt from.
    assert!(lm.continuation_logprobs(&[], &[66]).is_err());
}

#[test]
fn gpt_greedy_generation_matches_the_sampler() {
    let lm = tiny_gpt(64);
    let prompt = "Q: 12 plus 30?\nA:";
    let ids = ByteTokenizer.encode(prompt).unwrap();
    let want = generate(
        lm.model(),
        &ByteTokenizer,
        prompt,
        &SamplingConfig::new()
            .with_temperature(0.0)
            .with_max_new_tokens(12),
    )
    .unwrap();
    let got = lm.generate_greedy(&ids, 12, &[]).unwrap();
    assert_eq!(got, want.text);
    // A stop string cuts the text before it.
    if let Some(c) = want.text.chars().nth(3) {
        let stop = vec![c.to_string()];
        let cut = lm.generate_greedy(&ids, 12, &stop).unwrap();
        assert_eq!(cut, &want.text[..want.text.find(c).unwrap()]);
    }
    assert_eq!(lm.generate_greedy(&ids, 0, &[]).unwrap(), "");
}

#[test]
fn harness_runs_on_a_tiny_gpt() {
    let lm = tiny_gpt(160);
    let task = label_map(0, 20);
    let cfg = IclConfig {
        limit: Some(4),
        balanced: true,
        ..IclConfig::default()
    };
    let report = evaluate(&lm, &task, &[0, 1, 2], &cfg).unwrap();
    assert_eq!(report.model, "tiny-random");
    assert_eq!(report.results.len(), 3);
    for r in &report.results {
        assert_eq!(r.n, 4);
        for m in &r.metrics {
            assert!((0.0..=1.0).contains(&m.mean), "{m:?}");
        }
    }
    // A prompt longer than the model's context is an error that says what to do.
    let err = format!("{:#}", evaluate(&lm, &task, &[8], &cfg).unwrap_err());
    assert!(
        err.contains("use fewer shots") && err.contains("k = 8"),
        "{err}"
    );

    let mut gen = add2(0, 20);
    gen.scoring = Scoring::Generate {
        stop: vec!["\n".into()],
        max_new_tokens: 4,
    };
    let report = evaluate(&lm, &gen, &[0, 2], &cfg).unwrap();
    assert_eq!(report.scoring, "generate");
    assert_eq!(report.results[1].n, 4);
}
