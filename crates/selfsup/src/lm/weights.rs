//! Named tensors read from a `.safetensors` file, with errors that name the file and the tensor.
//!
//! Models keep their checkpoint names in one mapping table and ask this store for each entry
//! with the shape they expect; they never see the file itself.

use std::collections::HashMap;
use std::path::Path;

use crate::lm::gguf::f16_to_f32;
use anyhow::{bail, Context, Result};
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::nn::transformer::LayerNorm;

/// All tensors of one safetensors file, converted to f32 on read.
pub struct Weights {
    source: String,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// Reads every tensor of `path` (F32, F64, F16 or BF16) into memory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self::from_bytes(&bytes, &name)
    }

    /// Parses a safetensors buffer; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("{source}: not a valid safetensors file: {e:?}"))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let values = to_f32(view.dtype(), view.data())
                .with_context(|| format!("{source}: tensor {name}"))?;
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(Self {
            source: source.to_string(),
            tensors,
        })
    }

    /// Builds a store from in-memory tensors (used to export a model and in tests).
    pub fn from_tensors(source: &str, tensors: HashMap<String, (Vec<usize>, Vec<f32>)>) -> Self {
        Self {
            source: source.to_string(),
            tensors,
        }
    }

    /// Writes every tensor as F32 to a safetensors file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = names
            .into_iter()
            .map(|n| {
                let (shape, values) = &self.tensors[n];
                let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), shape.clone(), data)
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, shape, data) in &bytes {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e:?}", path.display()))?;
            views.push((name.as_str(), view));
        }
        safetensors::serialize_to_file(views, &None, path)
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))
    }

    /// The file name used in error messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The values of `name` (row-major) after checking its shape.
    pub fn values(&self, name: &str, expected: &[usize]) -> Result<&[f32]> {
        let (shape, values) = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: missing tensor {name}", self.source))?;
        if shape != expected {
            bail!(
                "{}: tensor {name} has shape {shape:?}, expected {expected:?}",
                self.source
            );
        }
        Ok(values)
    }

    /// The shape of `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        self.tensors
            .get(name)
            .map(|(s, _)| s.as_slice())
            .with_context(|| format!("{}: missing tensor {name}", self.source))
    }

    /// `name` as a tensor on `device`, after checking its shape.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        let values = self.values(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(values.to_vec(), expected),
            device,
        ))
    }
}

/// One parameter of a model as its checkpoint stores it. `Linear` weights are stored
/// `[out, in]` (PyTorch) while burn's `Linear` holds `[in, out]`, so they are transposed on
/// load and export.
pub enum Slot<'a> {
    /// Stored as is: biases, LayerNorm parameters, embedding tables.
    Same1(&'a mut Param<Tensor<1>>),
    /// Stored as is, rank 2 (embedding tables `[n, d]`).
    Same2(&'a mut Param<Tensor<2>>),
    /// A `burn::nn::Linear` weight, stored transposed.
    Linear(&'a mut Param<Tensor<2>>),
}

impl Slot<'_> {
    /// Shape of this parameter in the checkpoint's layout.
    pub fn checkpoint_shape(&self) -> Vec<usize> {
        match self {
            Slot::Same1(p) => p.val().dims().to_vec(),
            Slot::Same2(p) => p.val().dims().to_vec(),
            Slot::Linear(p) => {
                let [i, o] = p.val().dims();
                vec![o, i]
            }
        }
    }

    /// Replaces the parameter with the checkpoint tensor `name` from `weights`.
    pub fn load(self, name: &str, weights: &Weights, device: &Device) -> Result<()> {
        match self {
            Slot::Same1(p) => {
                let dims = p.val().dims();
                *p = Param::from_tensor(weights.tensor(name, dims, device)?);
            }
            Slot::Same2(p) => {
                let dims = p.val().dims();
                *p = Param::from_tensor(weights.tensor(name, dims, device)?);
            }
            Slot::Linear(p) => {
                let [i, o] = p.val().dims();
                let t: Tensor<2> = weights.tensor(name, [o, i], device)?;
                *p = Param::from_tensor(t.transpose());
            }
        }
        Ok(())
    }

    /// The current value in the checkpoint's layout.
    pub fn export(&self) -> (Vec<usize>, Vec<f32>) {
        let shape = self.checkpoint_shape();
        let data = match self {
            Slot::Same1(p) => p.val().into_data(),
            Slot::Same2(p) => p.val().into_data(),
            Slot::Linear(p) => p.val().transpose().into_data(),
        };
        (shape, data.try_into_vec_as::<f32>().unwrap_or_default())
    }

    /// The gradient of this parameter in `grads`, in the checkpoint's layout (None when the
    /// parameter took no part in the loss).
    pub fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Vec<f32>> {
        let data = match self {
            Slot::Same1(p) => p.val().grad(grads)?.into_data(),
            Slot::Same2(p) => p.val().grad(grads)?.into_data(),
            Slot::Linear(p) => p.val().grad(grads)?.transpose().into_data(),
        };
        data.try_into_vec_as::<f32>().ok()
    }
}

/// The current values of `slots` as a tensor store named `source`.
pub fn export_slots(source: &str, slots: Vec<(String, Slot<'_>)>) -> Weights {
    let tensors = slots
        .into_iter()
        .map(|(name, slot)| (name, slot.export()))
        .collect();
    Weights::from_tensors(source, tensors)
}

/// Checkpoint entries `PREFIX.weight` (transposed) and `PREFIX.bias` of a linear layer.
pub fn linear_slots<'a>(prefix: &str, lin: &'a mut burn::nn::Linear) -> Vec<(String, Slot<'a>)> {
    let mut slots = vec![(format!("{prefix}.weight"), Slot::Linear(&mut lin.weight))];
    if let Some(bias) = lin.bias.as_mut() {
        slots.push((format!("{prefix}.bias"), Slot::Same1(bias)));
    }
    slots
}

/// Checkpoint entries `PREFIX.weight` and `PREFIX.bias` of a LayerNorm.
pub fn layer_norm_slots<'a>(prefix: &str, ln: &'a mut LayerNorm) -> Vec<(String, Slot<'a>)> {
    vec![
        (format!("{prefix}.weight"), Slot::Same1(&mut ln.weight)),
        (format!("{prefix}.bias"), Slot::Same1(&mut ln.bias)),
    ]
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        other => bail!("dtype {other:?} is not a float type (expected F32, F64, F16 or BF16)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
