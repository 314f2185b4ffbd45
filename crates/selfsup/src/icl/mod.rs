//! In-context learning: a model reads a task description and k solved examples ("shots") in
//! its prompt and answers a new query with no gradient update (Brown et al. 2020, "Language
//! Models are Few-Shot Learners", zero-, one- and few-shot).
//!
//! A task is data ([`task::Task`]: description, examples, one template, a scoring mode),
//! after lm-evaluation-harness's task files; users add tasks as JSONL files (`task:PATH`, see
//! [`task::Task::from_jsonl`]) without recompiling. [`eval::evaluate`] scores a
//! [`model::LanguageModel`] on a task at several k and reports accuracy vs k.
//!
//! - [`model`]: the interface the harness talks to, and [`model::GptLm`] for selfsup's GPT.
//! - [`task`]: tasks, templates, JSONL task files, prompt construction and shot sampling.
//! - [`score`]: log-likelihood choice scoring (acc, acc_norm), normalized exact match, chrF.
//! - [`eval`]: the harness: per-k metrics with standard errors, sample logs, a cache of model
//!   calls, the accuracy-vs-k table and CSV.
//! - [`tasks`]: built-in tasks (synthetic, CLDR and FreeDict English→French) by name.
//! - [`finetune`], [`versus`]: LoRA fine-tuning on the k examples, and ICL vs fine-tuning vs a
//!   linear probe at equal labels.
//! - [`regression`], [`regression_model`], [`regression_run`]: in-context linear regression
//!   learned by a small transformer trained here (Garg et al. 2022), against classical baselines.

pub mod eval;
pub mod finetune;
pub mod llama_lm;
pub mod model;
pub mod regression;
pub mod regression_model;
pub mod regression_run;
pub mod score;
pub mod task;
pub mod tasks;
pub mod versus;
