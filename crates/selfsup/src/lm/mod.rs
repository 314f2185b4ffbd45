//! Language-model data and tooling: tokenizers, token files, text batches, generation, and
//! checkpoint weights.

pub mod bpe;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod sentence;
pub mod text_data;
pub mod tokenizer;
pub mod weights;
