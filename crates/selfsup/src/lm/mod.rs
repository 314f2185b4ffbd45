//! Language-model data and tooling: tokenizers, token files, text batches, generation, and
//! checkpoint weights.

pub mod generate;
pub mod text_data;
pub mod tokenizer;
pub mod weights;
