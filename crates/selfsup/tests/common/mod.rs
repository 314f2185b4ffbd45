//! Helpers shared by the fixture-parity tests: where `../shared/fixtures` is, reading its JSON and
//! safetensors files, and comparing values. A missing fixture fails the test (never a skip).
#![allow(dead_code)]

use burn::prelude::*;
use selfsup::train::checkpoint::{read_safetensors, LoadedWeights};
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

pub fn json(name: &str) -> serde_json::Value {
    let p = fixtures().join(name);
    let s = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("fixture {} missing: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

pub fn tensors(name: &str) -> LoadedWeights {
    read_safetensors(&fixtures().join(name)).unwrap()
}

pub fn get<const D: usize>(w: &LoadedWeights, name: &str, device: &Device) -> Tensor<D> {
    let (shape, data, _) = w
        .tensors
        .get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"));
    Tensor::from_data(TensorData::new(data.clone(), shape.clone()), device)
}

pub fn vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// |got − want| ≤ atol + rtol·|want| elementwise; prints the worst error.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{name}[{i}]: got {g}, want {w}"
        );
        worst = worst.max(err);
    }
    eprintln!("{name}: max abs err {worst:.3e}");
}
