//! Checkpoints: weights as safetensors (loadable with `safetensors.torch.load_file`), the
//! optimizer state as burnpack bytes, the run state as JSON — all written atomically.
//!
//! Tensor names are the module paths (`encoder.Conv.convs.0.weight`); burn's `ParamId`s go into
//! the safetensors metadata so that a resumed run maps the optimizer's per-parameter state back
//! to the same parameters.

use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename, so a crash
/// leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// One float tensor of a module, with its path name and parameter id.
pub struct NamedTensor {
    pub name: String,
    pub id: u64,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Default)]
struct Collector {
    path: Vec<String>,
    out: Vec<NamedTensor>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        self.out.push(NamedTensor {
            name: self.path.join("."),
            id: param.id.val(),
            shape,
            data,
        });
    }
}

/// All float tensors (parameters and BatchNorm running statistics) of a module, in visit order.
pub fn collect_tensors<M: Module>(module: &M) -> Vec<NamedTensor> {
    let mut c = Collector::default();
    module.visit(&mut c);
    c.out
}

/// Serializes a module's tensors to safetensors bytes (F32, row-major).
pub fn weights_to_bytes<M: Module>(module: &M) -> Result<Vec<u8>> {
    let tensors = collect_tensors(module);
    let mut ids = BTreeMap::new();
    let mut views = vec![];
    for t in &tensors {
        ids.insert(t.name.clone(), t.id);
        let bytes: &[u8] = bytemuck_cast(&t.data);
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), bytes)
                .with_context(|| format!("tensor {}", t.name))?;
        views.push((t.name.clone(), view));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "selfsup.param_ids".to_string(),
        serde_json::to_string(&ids)?,
    );
    Ok(safetensors::serialize(views, &Some(meta))?)
}

fn bytemuck_cast(data: &[f32]) -> &[u8] {
    // f32 has no padding and any byte pattern is a valid u8; safetensors is little-endian like x86/ARM.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}

/// Saves a module's weights atomically.
pub fn save_weights<M: Module>(module: &M, path: &Path) -> Result<()> {
    write_atomic(path, &weights_to_bytes(module)?)
}

/// Tensors read from a safetensors file: name → (shape, data, param id if recorded).
pub struct LoadedWeights {
    pub file: String,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>, Option<u64>)>,
}

/// Reads a safetensors file of F32 tensors; any other dtype, a truncated file or a bad header is an
/// error naming the file.
pub fn read_safetensors(path: &Path) -> Result<LoadedWeights> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = path.display().to_string();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors file: {e}"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors file: {e}"))?;
    let ids: BTreeMap<String, u64> = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("selfsup.param_ids"))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .with_context(|| format!("{file}: bad selfsup.param_ids metadata"))?
        .unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{file}: tensor {name} has dtype {:?}, expected F32",
                view.dtype()
            );
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(
            name.clone(),
            (view.shape().to_vec(), data, ids.get(&name).copied()),
        );
    }
    Ok(LoadedWeights { file, tensors })
}

struct Loader<'a> {
    path: Vec<String>,
    weights: &'a LoadedWeights,
    keep_ids: bool,
    used: usize,
    error: Option<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let Some((shape, data, id)) = self.weights.tensors.get(&name) else {
            self.error
                .get_or_insert(format!("{}: missing tensor {name}", self.weights.file));
            return param;
        };
        let (old_id, old, mapper) = param.consume();
        let expected = old.dims().to_vec();
        if *shape != expected {
            self.error.get_or_insert(format!(
                "{}: tensor {name} has shape {shape:?}, expected {expected:?}",
                self.weights.file
            ));
            return Param::from_mapped_value(old_id, old, mapper);
        }
        self.used += 1;
        let device = old.device();
        let mut t = Tensor::<D>::from_data(TensorData::new(data.clone(), expected), &device);
        if old.is_require_grad() {
            t = t.require_grad();
        }
        let new_id = match (self.keep_ids, id) {
            (true, Some(id)) => ParamId::from(*id),
            _ => old_id,
        };
        Param::from_mapped_value(new_id, t, mapper)
    }
}

/// Loads weights into `module` by path name. Missing tensors, shape mismatches and unused tensors
/// in the file are errors naming the file and the tensor. With `keep_ids`, parameters take the
/// ids recorded in the file (so a saved optimizer state applies to them again).
pub fn apply_weights<M: Module>(module: M, weights: &LoadedWeights, keep_ids: bool) -> Result<M> {
    let mut loader = Loader {
        path: vec![],
        weights,
        keep_ids,
        used: 0,
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        bail!(e);
    }
    if loader.used != weights.tensors.len() {
        let expected: std::collections::HashSet<String> = collect_tensors(&module)
            .into_iter()
            .map(|t| t.name)
            .collect();
        let extra: Vec<_> = weights
            .tensors
            .keys()
            .filter(|k| !expected.contains(*k))
            .cloned()
            .collect();
        bail!(
            "{}: tensors not in the model: {}",
            weights.file,
            extra.join(", ")
        );
    }
    Ok(module)
}

/// Reads a safetensors file and loads it into `module`.
pub fn load_weights<M: Module>(module: M, path: &Path, keep_ids: bool) -> Result<M> {
    let w = read_safetensors(path)?;
    apply_weights(module, &w, keep_ids)
}
