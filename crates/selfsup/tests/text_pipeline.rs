//! GPT and MLM pretraining through the shared trainer: validation loss falls, resume is exact,
//! sampling works from a saved run.

use selfsup::pipeline::RunOptions;
use selfsup::text_pipeline::{self, TextPretrainConfig};

fn corpus(dir: &std::path::Path) -> String {
    let text: String = (0..400)
        .map(|i| {
            format!(
                "the cat sat on the mat number {}. a dog ran to the log. ",
                i % 7
            )
        })
        .collect();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text).unwrap();
    format!("text:{}", p.display())
}

fn cfg(method: &str, data: &str) -> TextPretrainConfig {
    let mut c = TextPretrainConfig::new(method, data);
    c.tokenizer = "char".into();
    c.context = 32;
    c.model.d_model = 32;
    c.model.n_layers = 2;
    c.model.n_heads = 4;
    c.train.batch_size = 8;
    c.train.steps = Some(60);
    c.train.lr = 3e-3;
    c.train.eval_every = 30;
    c.val_batches = 4;
    c
}

fn val_losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("val_loss")?
                .as_f64()
        })
        .collect()
}

#[test]
fn gpt_validation_loss_falls_and_sampling_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let run = dir.path().join("gpt");
    let mut c = cfg("gpt", &data);
    c.train.eval_every = 20;
    let r = text_pipeline::pretrain_text(&c, &run, &RunOptions::default()).unwrap();
    assert_eq!(r.steps, 60);
    let v = val_losses(&run);
    assert!(v.len() >= 3, "{v:?}");
    // A char vocabulary of ~25 symbols starts near ln(25) ≈ 3.2; the repetitive corpus is learnable.
    assert!(
        v[v.len() - 1] < v[0] - 0.5,
        "validation loss should fall: {v:?}"
    );
    let (_, tok, model) = text_pipeline::load_gpt(&run, &burn::prelude::Device::flex()).unwrap();
    let g = selfsup::lm::generate::generate(
        &model,
        tok.as_ref(),
        "the cat",
        &selfsup::lm::generate::SamplingConfig::new()
            .with_max_new_tokens(20)
            .with_temperature(0.0),
    )
    .unwrap();
    assert!(!g.text.is_empty());
}

#[test]
fn text_resume_is_exact_and_mlm_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let c = cfg("gpt", &data);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    text_pipeline::pretrain_text(&c, &a, &RunOptions::default()).unwrap();
    let stop = RunOptions {
        stop_at_step: Some(25),
        ..RunOptions::default()
    };
    assert!(
        text_pipeline::pretrain_text(&c, &b, &stop)
            .unwrap()
            .interrupted
    );
    text_pipeline::resume_text(&b, &RunOptions::default()).unwrap();
    let w = |d: &std::path::Path| {
        let mut t: Vec<_> =
            selfsup::train::checkpoint::read_safetensors(&d.join("model.safetensors"))
                .unwrap()
                .tensors
                .into_iter()
                .map(|(k, (_, v, _))| (k, v))
                .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    assert_eq!(
        w(&a),
        w(&b),
        "resumed GPT run must equal the uninterrupted one"
    );

    let mut m = cfg("mlm", &data);
    m.train.steps = Some(40);
    m.train.eval_every = 20;
    let run = dir.path().join("mlm");
    text_pipeline::pretrain_text(&m, &run, &RunOptions::default()).unwrap();
    let v = val_losses(&run);
    assert!(
        v.len() == 2 && v[1] < v[0],
        "MLM validation loss should fall: {v:?}"
    );
}

#[test]
fn text_config_errors() {
    let err = TextPretrainConfig::new("gpt", "text:/x")
        .with_overrides(&[("model.n_heads".into(), "3".into())])
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("multiple of n_heads"),
        "{err:#}"
    );
    let err = TextPretrainConfig::new("gpt", "text:/x")
        .with_overrides(&[("model.width".into(), "3".into())])
        .unwrap_err();
    assert!(format!("{err:#}").contains("width"), "{err:#}");
    let dir = tempfile::tempdir().unwrap();
    let err = text_pipeline::pretrain_text(
        &cfg("gpt", "text:/no/such/file.txt"),
        &dir.path().join("r"),
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("/no/such/file.txt"), "{err:#}");
}
