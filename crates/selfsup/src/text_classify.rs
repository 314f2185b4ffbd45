//! Text downstream: genre classification of Brown corpus passages with the representations of
//! selfsup GPT and MLM runs, at the label budgets of the image experiments.
//!
//! Baselines: bag-of-words logistic regression (vocabulary from the train split only) and the
//! same architecture at random initialisation; optionally the pretrained MiniLM sentence encoder
//! as a strong reference. Protocols: the linear probe of [`crate::eval::evaluate`] on frozen
//! features and fine-tuning ([`crate::eval::text_finetune`]), on the same seeded label draws.

use crate::data::brown::{self, BrownConfig, Passage, TextClassData};
use crate::eval::text_finetune::{
    encode_texts, finetune_text, TextEncoder, TextFinetuneConfig, TokenizedTexts,
};
use crate::eval::{self, EvalConfig, EvalResult, LabelBudget, LabeledFeatures};
use crate::experiment::{EfficiencyRow, FeatureSet};
use crate::lm::sentence::SentenceEncoder;
use crate::lm::tokenizer::Tokenizer;
use crate::methods::mlm::MlmVocab;
use crate::nn::init::seeded;
use crate::pipeline::RunOptions;
use crate::text_pipeline::{run_tokenizer, TextPretrainConfig};
use crate::train::{checkpoint, RunDir};
use anyhow::{bail, ensure, Context, Result};
use burn::prelude::Device;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bag-of-words features log(1 + count) over the `max_vocab` words (lowercased corpus tokens,
/// punctuation included: quotes and dashes mark dialogue and genre) found in most train
/// passages, at least 2. The vocabulary never looks at the test split.
pub fn bow_features(train: &[Passage], test: &[Passage], max_vocab: usize) -> Result<FeatureSet> {
    ensure!(
        max_vocab >= 1,
        "the bag-of-words vocabulary needs at least 1 word"
    );
    let mut df: HashMap<String, usize> = HashMap::new();
    for p in train {
        let mut seen: Vec<String> = p.words.iter().map(|w| w.to_lowercase()).collect();
        seen.sort_unstable();
        seen.dedup();
        for w in seen {
            *df.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(String, usize)> = df.into_iter().filter(|(_, c)| *c >= 2).collect();
    // Ties broken by the word itself, so the vocabulary does not depend on hash order.
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    words.truncate(max_vocab);
    ensure!(
        !words.is_empty(),
        "bag of words: no word occurs in 2 or more train passages"
    );
    let index: HashMap<&str, usize> = words
        .iter()
        .enumerate()
        .map(|(i, (w, _))| (w.as_str(), i))
        .collect();
    let dim = words.len();
    let featurize = |ps: &[Passage]| -> Vec<f32> {
        let mut x = vec![0f32; ps.len() * dim];
        for (r, p) in ps.iter().enumerate() {
            for w in &p.words {
                if let Some(&j) = index.get(w.to_lowercase().as_str()) {
                    x[r * dim + j] += 1.0;
                }
            }
        }
        x.iter_mut().for_each(|v| *v = v.ln_1p());
        x
    };
    Ok(FeatureSet {
        name: "bag of words".into(),
        dim,
        train: featurize(train),
        test: featurize(test),
    })
}

/// A text model loaded for the experiment: the encoder and how passages become its input.
pub struct TextModel {
    /// Row label, e.g. `gpt (brown-gpt)`.
    pub name: String,
    /// gpt or mlm.
    pub method: String,
    pub encoder: TextEncoder,
    /// The same architecture at random initialisation (the baseline).
    pub random: TextEncoder,
    tokenizer: Box<dyn Tokenizer>,
    context: usize,
    mlm: Option<MlmVocab>,
}

impl TextModel {
    /// Loads a GPT or MLM run folder, and builds the random-init twin with `seed`.
    pub fn load(dir: &Path, seed: u64, device: &Device) -> Result<Self> {
        let run = RunDir(dir.to_path_buf());
        let cfg = TextPretrainConfig::load(&run.config()).with_context(|| {
            format!(
                "{}: not a selfsup text run (no readable config.toml)",
                dir.display()
            )
        })?;
        let tokenizer = run_tokenizer(&cfg, dir, None)
            .with_context(|| format!("{}: loading the run's tokenizer", dir.display()))?;
        let weights = run.weights();
        ensure!(
            weights.exists(),
            "{}: no model.safetensors (has the run saved a checkpoint?)",
            dir.display()
        );
        let short = dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let (encoder, random, mlm) = match cfg.method.as_str() {
            "gpt" => {
                let gc = cfg.gpt_config(tokenizer.vocab_size());
                let trained = checkpoint::load_weights(gc.init(device), &weights, false)
                    .with_context(|| format!("loading {}", weights.display()))?;
                let random = seeded(device, seed, || gc.init(device));
                (TextEncoder::Gpt(trained), TextEncoder::Gpt(random), None)
            }
            "mlm" => {
                let vocab = MlmVocab::for_tokenizer(tokenizer.as_ref());
                let bc = cfg.bert_config(vocab.vocab_size);
                let trained = checkpoint::load_weights(bc.init(device), &weights, false)
                    .with_context(|| format!("loading {}", weights.display()))?;
                let random = seeded(device, seed, || bc.init_encoder(device));
                (
                    TextEncoder::Bert(trained.bert),
                    TextEncoder::Bert(random),
                    Some(vocab),
                )
            }
            m => bail!("{}: a `{m}` run, not a gpt or mlm text run", dir.display()),
        };
        Ok(Self {
            name: format!("{} ({short})", cfg.method),
            method: cfg.method.clone(),
            encoder,
            random,
            tokenizer,
            context: cfg.context,
            mlm,
        })
    }

    /// Token ids of each passage, truncated to the model's context (`[CLS] … [SEP]` for MLM).
    pub fn tokenize(&self, passages: &[Passage]) -> Result<TokenizedTexts> {
        let mut ids = Vec::with_capacity(passages.len());
        for p in passages {
            let mut t = match self.tokenizer.encode(&p.text) {
                Ok(t) => t,
                // A character vocabulary built from the pretraining text lacks characters that
                // occur only in test files (`{` in cj20): drop those characters, as unseen ones
                // carry no learned meaning anyway.
                Err(_) => {
                    let known: String = p
                        .text
                        .chars()
                        .filter(|c| self.tokenizer.encode(&c.to_string()).is_ok())
                        .collect();
                    self.tokenizer
                        .encode(&known)
                        .with_context(|| format!("tokenizing a passage of {}", p.file))?
                }
            };
            match &self.mlm {
                None => t.truncate(self.context),
                Some(v) => {
                    t.truncate(self.context - 2);
                    t.insert(0, v.cls);
                    t.push(v.sep);
                }
            }
            ensure!(
                !t.is_empty(),
                "a passage of {} has no tokens for this tokenizer",
                p.file
            );
            ids.push(t);
        }
        let pad = self.mlm.as_ref().map_or(0, |v| v.pad);
        Ok(TokenizedTexts { ids, pad })
    }
}

/// Settings of `experiment text-classify`.
#[derive(Clone, Debug)]
pub struct TextClassifyOptions {
    /// `brown`, `brown:DIR`, `folder:DIR` or `jsonl:PATH` (see `data::labeled_text`).
    pub data: String,
    pub brown: BrownConfig,
    /// GPT/MLM run folders, or `minilm[:DIR]` (frozen reference, probe only).
    pub models: Vec<String>,
    pub budgets: Vec<LabelBudget>,
    pub draws: usize,
    pub seed: u64,
    /// Bag-of-words vocabulary size.
    pub bow_vocab: usize,
    /// The linear probe (the same for every feature set).
    pub probe: eval::ProbeConfig,
    /// Fine-tuning of each run (steps 0: no fine-tuning).
    pub finetune: TextFinetuneConfig,
    /// Also train each architecture from random initialisation with the same labels.
    pub scratch: bool,
    pub run: RunOptions,
}

/// What `experiment text-classify` reports.
#[derive(Clone, Debug, Serialize)]
pub struct TextClassifyReport {
    pub data: String,
    pub classes: Vec<String>,
    pub train_passages: usize,
    pub test_passages: usize,
    pub train_files: usize,
    pub test_files: usize,
    pub sentences_per_passage: usize,
    pub draws: usize,
    pub seed: u64,
    pub rows: Vec<EfficiencyRow>,
}

/// Reads the data, then evaluates bag of words and every model at every budget.
pub fn text_classify_experiment(o: &TextClassifyOptions) -> Result<TextClassifyReport> {
    let data = brown::load_text_classification(&o.data, &o.brown)?;
    text_classify_on(&data, o)
}

fn count_files(ps: &[Passage]) -> usize {
    let mut f: Vec<&str> = ps.iter().map(|p| p.file.as_str()).collect();
    f.sort_unstable();
    f.dedup();
    f.len()
}

/// [`text_classify_experiment`] on already loaded data.
pub fn text_classify_on(
    data: &TextClassData,
    o: &TextClassifyOptions,
) -> Result<TextClassifyReport> {
    ensure!(o.draws >= 1, "needs at least 1 label draw");
    ensure!(!o.budgets.is_empty(), "needs at least 1 label budget");
    ensure!(
        !data.train.is_empty() && !data.test.is_empty(),
        "{}: the split has {} train and {} test passages; both must be non-empty",
        data.source.display(),
        data.train.len(),
        data.test.len()
    );
    let classes = data.num_classes();
    let train_labels = data.train_labels();
    let test_labels = data.test_labels();
    let ecfg = EvalConfig {
        probe: o.probe,
        draws: o.draws,
        seed: o.seed,
        ..Default::default()
    };
    let device = o.run.device.clone();
    let draw = |b: &LabelBudget, d: usize| -> Result<Vec<usize>> {
        eval::draw_labeled(&train_labels, classes, b, o.seed.wrapping_add(d as u64))
    };
    let mut rows: Vec<EfficiencyRow> = vec![];
    let push = |rows: &mut Vec<EfficiencyRow>,
                method: &str,
                protocol: &str,
                b: &LabelBudget,
                r: &EvalResult,
                secs: f64|
     -> Result<()> {
        rows.push(EfficiencyRow::new(
            method,
            protocol,
            b,
            draw(b, 0)?.len(),
            r,
            secs,
        ));
        Ok(())
    };
    let probe = |rows: &mut Vec<EfficiencyRow>, set: &FeatureSet, protocol: &str| -> Result<()> {
        let tr = LabeledFeatures {
            features: &set.train,
            labels: &train_labels,
            dim: set.dim,
        };
        let te = LabeledFeatures {
            features: &set.test,
            labels: &test_labels,
            dim: set.dim,
        };
        for b in &o.budgets {
            let r = eval::evaluate(&tr, &te, classes, b, &ecfg)
                .with_context(|| format!("evaluating {}", set.name))?;
            push(rows, &set.name, protocol, b, &r.linear, 0.0)?;
        }
        Ok(())
    };

    // Fail before minutes of evaluation, not after: every model must be readable.
    for spec in &o.models {
        match minilm_spec(spec) {
            Some(dir) => ensure!(
                dir.join("config.json").is_file(),
                "{}: no MiniLM model folder (fetch it with `../shared/data/get.sh minilm`)",
                dir.display()
            ),
            None => {
                let dir = Path::new(spec);
                TextPretrainConfig::load(&RunDir(dir.to_path_buf()).config()).with_context(
                    || {
                        format!(
                            "{}: not a selfsup text run (no readable config.toml)",
                            dir.display()
                        )
                    },
                )?;
            }
        }
    }
    eprintln!("== bag of words");
    let bow = bow_features(&data.train, &data.test, o.bow_vocab)?;
    probe(&mut rows, &bow, "logistic regression")?;

    for spec in &o.models {
        if let Some(dir) = minilm_spec(spec) {
            eprintln!("== MiniLM sentence encoder ({})", dir.display());
            let enc = SentenceEncoder::load(&dir, &device.clone().inner())?;
            let set = FeatureSet {
                name: "MiniLM-L6 (pretrained)".into(),
                dim: enc.dim(),
                train: embed_minilm(&enc, &data.train, o.run.progress)?,
                test: embed_minilm(&enc, &data.test, o.run.progress)?,
            };
            probe(&mut rows, &set, "linear probe")?;
            continue;
        }
        let model = TextModel::load(Path::new(spec), o.seed, &device.clone().inner())?;
        eprintln!("== {}: features", model.name);
        let train_ids = model.tokenize(&data.train)?;
        let test_ids = model.tokenize(&data.test)?;
        let random_name = format!("{} random-init", model.method);
        for (name, enc) in [
            (model.name.clone(), &model.encoder),
            (random_name.clone(), &model.random),
        ] {
            let set = FeatureSet {
                name,
                dim: 0,
                train: encode_texts(enc, &train_ids, &device, o.run.progress),
                test: encode_texts(enc, &test_ids, &device, o.run.progress),
            };
            let set = FeatureSet {
                dim: set.train.len() / train_ids.len(),
                ..set
            };
            probe(&mut rows, &set, "linear probe")?;
        }
        if o.finetune.steps == 0 {
            continue;
        }
        let mut runs = vec![(model.name.clone(), &model.encoder, true, "fine-tune")];
        if o.scratch {
            runs.push((random_name, &model.random, false, "from scratch"));
        }
        for (name, enc, pretrained, protocol) in runs {
            let bar = progress_bar(
                o.run.progress,
                (o.budgets.len() * o.draws) as u64,
                &format!("{name} {protocol}"),
            );
            for b in &o.budgets {
                let (mut accs, mut secs) = (vec![], 0.0);
                let mut previous: Option<Vec<usize>> = None;
                for d in 0..o.draws {
                    let idx = draw(b, d)?;
                    // `100%` draws the same subset every time: reuse, as the probe does.
                    if previous.as_ref() == Some(&idx) {
                        accs.push(accs[d - 1]);
                        bar.inc(1);
                        continue;
                    }
                    let y: Vec<u32> = idx.iter().map(|&i| train_labels[i]).collect();
                    let mut fcfg = o.finetune.clone();
                    if !pretrained {
                        fcfg.encoder_lr_scale = 1.0;
                    }
                    let r = finetune_text(
                        enc.clone(),
                        pretrained,
                        &train_ids.subset(&idx),
                        &y,
                        &test_ids,
                        &test_labels,
                        classes,
                        &fcfg,
                        o.seed.wrapping_add(d as u64),
                        &device,
                    )
                    .with_context(|| format!("fine-tuning {name} at {b}, draw {d}"))?;
                    accs.push(r.accuracy);
                    secs += r.seconds;
                    previous = Some(idx);
                    bar.inc(1);
                }
                let ran = accs.len().max(1) as f64;
                push(
                    &mut rows,
                    &name,
                    protocol,
                    b,
                    &EvalResult::from_runs(accs),
                    secs / ran,
                )?;
            }
            bar.finish_and_clear();
        }
    }
    Ok(TextClassifyReport {
        data: format!("{} ({})", o.data, data.source.display()),
        classes: data.classes.clone(),
        train_passages: data.train.len(),
        test_passages: data.test.len(),
        train_files: count_files(&data.train),
        test_files: count_files(&data.test),
        sentences_per_passage: o.brown.sentences,
        draws: o.draws,
        seed: o.seed,
        rows,
    })
}

/// `minilm` (the data cache) or `minilm:DIR`.
fn minilm_spec(spec: &str) -> Option<PathBuf> {
    if spec == "minilm" {
        return Some(crate::icl::tasks::data_dir().join("minilm"));
    }
    spec.strip_prefix("minilm:").map(PathBuf::from)
}

fn embed_minilm(enc: &SentenceEncoder, ps: &[Passage], progress: bool) -> Result<Vec<f32>> {
    let bar = progress_bar(progress, ps.len() as u64, "MiniLM features");
    let mut out = Vec::with_capacity(ps.len() * enc.dim());
    for chunk in ps.chunks(128) {
        let texts: Vec<&str> = chunk.iter().map(|p| p.text.as_str()).collect();
        out.extend(enc.embed(&texts)?.concat());
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn progress_bar(show: bool, len: u64, label: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(label.to_string());
    b
}

/// The report's header line for the table.
pub fn format_header(r: &TextClassifyReport) -> String {
    if !r.data.starts_with("brown") {
        // Your own data (folder:/jsonl:): one example per file or line.
        return format!(
            "{}: {} classes, {} train / {} test examples; mean ± std over {} label draws",
            r.data,
            r.classes.len(),
            r.train_passages,
            r.test_passages,
            r.draws
        );
    }
    format!(
        "{}: {} genres, {} train passages ({} files) / {} test passages ({} files), {} sentences each; mean ± std over {} label draws",
        r.data,
        r.classes.len(),
        r.train_passages,
        r.train_files,
        r.test_passages,
        r.test_files,
        r.sentences_per_passage,
        r.draws
    )
}
