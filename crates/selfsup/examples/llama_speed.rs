//! Prompt and generation throughput of a Llama GGUF on this machine:
//! `cargo run --release --example llama_speed -- PATH.gguf [prompt_tokens] [new_tokens]`.

use selfsup::lm::llama::{argmax, load_gguf};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| {
        anyhow::anyhow!("usage: llama_speed PATH.gguf [prompt_tokens] [new_tokens]")
    })?;
    let n_prompt: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let n_new: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let device = selfsup::Device::flex();
    let t0 = Instant::now();
    let (model, _cfg, _tok) = load_gguf(path, &device)?;
    println!("load: {:.2} s", t0.elapsed().as_secs_f64());
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| 100 + (i * 37) % 4000)
        .collect();
    // Warm-up, then timed runs.
    let mut cache = model.new_cache();
    model.next_logits(&prompt[..8], &mut cache)?;
    let mut cache = model.new_cache();
    let t = Instant::now();
    let mut logits = model.next_logits(&prompt, &mut cache)?;
    let prompt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n_new {
        let next = argmax(&logits);
        logits = model.next_logits(&[next], &mut cache)?;
    }
    let gen_s = t.elapsed().as_secs_f64();
    println!(
        "prompt: {n_prompt} tokens in {prompt_s:.2} s = {:.1} tokens/s",
        n_prompt as f64 / prompt_s
    );
    println!(
        "generation: {n_new} tokens in {gen_s:.2} s = {:.1} tokens/s (KV cache)",
        n_new as f64 / gen_s
    );
    Ok(())
}
