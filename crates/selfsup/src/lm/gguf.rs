//! GGUF, the model file format of llama.cpp / ggml (version 3, also reads 2): a header, typed
//! metadata key/values, tensor infos, then the aligned tensor data, dequantized to f32 on
//! read.
//!
//! Layout (ggml `docs/gguf.md`), all little-endian:
//! `"GGUF"`, u32 version, u64 tensor_count, u64 kv_count; kv_count × (string key, u32 type,
//! value); tensor_count × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type, u64
//! offset); zero padding up to `general.alignment` (default 32); the data. `ne` lists the
//! dimensions innermost first, so `ne = [576, 1536]` is the row-major matrix `[1536, 576]`.
//! Strings are a u64 length and UTF-8 bytes.
//!
//! Block formats follow `ggml-quants.c` (`dequantize_row_*`) operation for operation, so the
//! f32 values are bit-identical to ggml's and gguf-py's.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

/// The magic bytes at offset 0.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Elements all of one type (possibly arrays themselves).
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF type id (`gguf_metadata_value_type`).
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::Str(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// Any non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number (f32 widened exactly).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::Str(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }
}

/// Tensor element types this reader dequantizes (ids of `enum ggml_type`; names as ggml's).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    /// 32 elements: f16 `d`, 16 bytes of nibbles; `y = d·(q - 8)`.
    Q4_0,
    /// 32 elements: f16 `d`, f16 `m`, 16 bytes of nibbles; `y = d·q + m`.
    Q4_1,
    /// 32 elements: f16 `d`, 32 × i8; `y = d·q`.
    Q8_0,
    /// 256 elements: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales/mins, 128 bytes of
    /// nibbles; `y = d·sc·q - dmin·m` per 32-element sub-block.
    Q4_K,
    /// 256 elements: 128 bytes low nibbles, 64 bytes high 2 bits, 16 × i8 scales, f16 `d`;
    /// `y = d·sc·(q - 32)` per 16-element sub-block.
    Q6_K,
    BF16,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q6_K => 210,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q6_K => "Q6_K",
            Self::BF16 => "BF16",
        }
    }
}

/// Name of a ggml type id this reader does not dequantize (for error messages).
fn unsupported_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        13 => "Q5_K",
        15 => "Q8_K",
        16..=23 => "an IQ quant",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => return None,
    })
}

/// Where a tensor lies and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions innermost first, as GGUF stores them.
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (`ne` reversed): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&n| n as usize).collect()
    }

    pub fn n_elements(&self) -> usize {
        self.ne.iter().map(|&n| n as usize).product()
    }

    pub fn n_bytes(&self) -> usize {
        self.n_elements() / self.ggml_type.block_size() * self.ggml_type.block_bytes()
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file; tensor data stays in the (memory-mapped) file until read.
pub struct GgufFile {
    source: String,
    bytes: Bytes,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    alignment: usize,
    data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("source", &self.source)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path` (the header, metadata and tensor infos; the data is
    /// only checked to be present).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped
        // would fault, as with any mmap-based model loader (llama.cpp does the same).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("memory-mapping {}", path.display()))?;
        Self::parse(Bytes::Mapped(map), path.display().to_string())
    }

    /// Parses an in-memory file; `source` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, source: &str) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes), source.to_string())
    }

    fn parse(bytes: Bytes, source: String) -> Result<Self> {
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        let header = (|| -> Result<_> {
            let magic = r.take(4, "the magic")?;
            if magic != GGUF_MAGIC {
                bail!(
                    "not a GGUF file: expected magic \"GGUF\", found {:?}",
                    String::from_utf8_lossy(magic)
                );
            }
            let version = r.u32("the version")?;
            ensure!(
                version == 2 || version == 3,
                "unsupported GGUF version {version} (this reader handles versions 2 and 3)"
            );
            Ok((
                version,
                r.u64("the tensor count")?,
                r.u64("the metadata count")?,
            ))
        })();
        let (version, n_tensors, n_kv) = header.map_err(|e| anyhow::anyhow!("{source}: {e}"))?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r
                .string()
                .with_context(|| format!("{source}: metadata entry {i} of {n_kv}: key"))?;
            let value = r
                .value_with_type(0)
                .with_context(|| format!("{source}: metadata {key}"))?;
            if metadata.insert(key.clone(), value).is_some() {
                bail!("{source}: metadata key {key} appears twice");
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if *a > 0 => *a as usize,
            Some(v) => bail!("{source}: general.alignment must be a positive u32, found {v:?}"),
        };

        let mut tensors: Vec<TensorInfo> = Vec::new();
        for i in 0..n_tensors {
            let info = r
                .tensor_info()
                .with_context(|| format!("{source}: tensor info {i} of {n_tensors}"))?;
            if tensors.iter().any(|t| t.name == info.name) {
                bail!("{source}: tensor {} appears twice", info.name);
            }
            tensors.push(info);
        }
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let file_len = bytes.len();
        for t in &tensors {
            let ty = t.ggml_type;
            ensure!(
                (t.ne[0] as usize).is_multiple_of(ty.block_size()),
                "{source}: tensor {}: row length {} is not a multiple of the {} block size {}",
                t.name,
                t.ne[0],
                ty.name(),
                ty.block_size()
            );
            ensure!(
                (t.offset as usize).is_multiple_of(alignment),
                "{source}: tensor {}: data offset {} is not a multiple of the alignment {alignment}",
                t.name,
                t.offset
            );
            let start = (data_offset as u64).saturating_add(t.offset);
            let end = start.saturating_add(t.n_bytes() as u64);
            if end > file_len as u64 {
                bail!(
                    "{source}: truncated file: tensor {} ({}, {:?}) needs bytes {start}..{end}, \
                     but the file has {file_len}",
                    t.name,
                    ty.name(),
                    t.shape()
                );
            }
        }
        Ok(Self {
            source,
            bytes,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The file name (or the name given to [`GgufFile::from_bytes`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute file offset where tensor data begins.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The value of `key`, or an error naming the file and the key.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.metadata
            .get(key)
            .with_context(|| format!("{}: missing metadata key {key}", self.source))
    }

    /// `key` as a non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_u64().map(|v| v as usize).with_context(|| {
            format!(
                "{}: metadata {key} is a {}, expected a non-negative integer",
                self.source,
                v.type_name()
            )
        })
    }

    /// `key` as a number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().with_context(|| {
            format!(
                "{}: metadata {key} is a {}, expected a number",
                self.source,
                v.type_name()
            )
        })
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().with_context(|| {
            format!(
                "{}: metadata {key} is a {}, expected a string",
                self.source,
                v.type_name()
            )
        })
    }

    /// `key` as an array (of any element type).
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        let v = self.require(key)?;
        v.as_array().with_context(|| {
            format!(
                "{}: metadata {key} is a {}, expected an array",
                self.source,
                v.type_name()
            )
        })
    }

    /// Tensor infos in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .with_context(|| format!("{}: missing tensor {name}", self.source))
    }

    /// The stored (possibly quantized) bytes of `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.info(name)?;
        let start = self.data_offset + t.offset as usize;
        Ok(&self.bytes[start..start + t.n_bytes()])
    }

    /// Absolute file offset of the data of `name`.
    pub fn tensor_file_offset(&self, name: &str) -> Result<usize> {
        Ok(self.data_offset + self.info(name)?.offset as usize)
    }

    /// All elements of `name` as f32, in storage (row-major) order, whatever its shape.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        dequantize(t.ggml_type, self.tensor_bytes(name)?, t.n_elements())
            .with_context(|| format!("{}: tensor {name}", self.source))
    }

    /// `name` as f32 after checking its row-major shape against `expected`.
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        let shape = t.shape();
        if shape != expected {
            bail!(
                "{}: tensor {name} has shape {shape:?} (GGUF ne {:?}), expected {expected:?}",
                self.source,
                t.ne
            );
        }
        self.dequantize(name)
    }
}

/// A little-endian cursor whose errors say what was being read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        if n > left {
            bail!(
                "truncated file: {what} needs {n} bytes at offset {}, but the file has {}",
                self.pos,
                self.buf.len()
            );
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64("a string length")?;
        let bytes = self.take(usize::try_from(len).unwrap_or(usize::MAX), "a string")?;
        String::from_utf8(bytes.to_vec()).context("string is not valid UTF-8")
    }

    fn value_with_type(&mut self, depth: usize) -> Result<MetaValue> {
        let ty = self.u32("a value type")?;
        self.value(ty, depth)
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>("a u8")?[0]),
            1 => MetaValue::I8(self.array::<1>("an i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array("a u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array("an i16")?)),
            4 => MetaValue::U32(self.u32("a u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array("an i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array("an f32")?)),
            7 => match self.array::<1>("a bool")?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => bail!("bool value {b} is neither 0 nor 1"),
            },
            8 => MetaValue::Str(self.string()?),
            9 => {
                ensure!(depth < 8, "arrays nested more than 8 deep");
                let elem = self.u32("an array element type")?;
                let len = self.u64("an array length")?;
                // Every element takes at least one byte: a bound before allocating.
                ensure!(
                    len <= (self.buf.len() - self.pos) as u64,
                    "truncated file: array of {len} elements at offset {} exceeds the file ({} bytes)",
                    self.pos,
                    self.buf.len()
                );
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64("a u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array("an i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array("an f64")?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string().context("name")?;
        let ctx = |e: anyhow::Error| e.context(format!("tensor {name}"));
        let n_dims = self.u32("the number of dimensions").map_err(ctx)?;
        if !(1..=4).contains(&n_dims) {
            bail!("tensor {name}: {n_dims} dimensions (ggml allows 1 to 4)");
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64("a dimension").map_err(ctx)?);
        }
        let n: u128 = ne.iter().map(|&d| d as u128).product();
        ensure!(
            n <= (1u128 << 48) && ne.iter().all(|&d| d > 0),
            "tensor {name}: implausible dimensions {ne:?}"
        );
        let type_id = self.u32("the tensor type").map_err(ctx)?;
        let ggml_type = match GgmlType::from_id(type_id) {
            Some(t) => t,
            None => match unsupported_type_name(type_id) {
                Some(known) => bail!(
                    "tensor {name}: type {known} (ggml type {type_id}) is not supported \
                     (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)"
                ),
                None => bail!("tensor {name}: unknown ggml tensor type {type_id}"),
            },
        };
        let offset = self.u64("the data offset").map_err(ctx)?;
        Ok(TensorInfo {
            name,
            ne,
            ggml_type,
            offset,
        })
    }
}

/// IEEE half → single, exact (subnormals included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            let v = m as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | (((e - 15 + 127) as u32) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Dequantizes `n` elements of type `ty` stored in `bytes` (whole blocks, storage order).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    ensure!(
        n.is_multiple_of(bs),
        "{n} elements are not whole {} blocks of {bs}",
        ty.name()
    );
    let need = n / bs * bb;
    ensure!(
        bytes.len() >= need,
        "truncated data: {n} {} elements need {need} bytes, found {}",
        ty.name(),
        bytes.len()
    );
    let bytes = &bytes[..need];
    let mut out = vec![0f32; n];
    // Chunks of many blocks, dequantized in parallel.
    let blocks_per_chunk = (16384 / bs).max(1);
    out.par_chunks_mut(bs * blocks_per_chunk)
        .zip(bytes.par_chunks(bb * blocks_per_chunk))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(bs).zip(x.chunks_exact(bb)) {
                dequantize_block(ty, x, y);
            }
        });
    Ok(out)
}

/// One block `x` of `ty` into `y` (`ty.block_size()` values).
fn dequantize_block(ty: GgmlType, x: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]),
        GgmlType::F16 => y[0] = half(x, 0),
        GgmlType::BF16 => y[0] = f32::from_bits((u16::from_le_bytes([x[0], x[1]]) as u32) << 16),
        GgmlType::Q4_0 => {
            let d = half(x, 0);
            let qs = &x[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half(x, 0), half(x, 2));
            let qs = &x[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0x0f) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = half(x, 0);
            for j in 0..32 {
                y[j] = (x[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::Q4_K => {
            let (d, dmin) = (half(x, 0), half(x, 2));
            let scales = &x[4..16];
            let qs = &x[16..144];
            for (i, chunk) in y.chunks_exact_mut(64).enumerate() {
                let q = &qs[32 * i..32 * i + 32];
                let (sc1, m1) = scale_min_k4(2 * i, scales);
                let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                for l in 0..32 {
                    chunk[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                    chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        GgmlType::Q6_K => {
            let d = half(x, 208);
            for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
                let ql = &x[64 * n..64 * n + 64];
                let qh = &x[128 + 32 * n..128 + 32 * n + 32];
                let sc = &x[192 + 8 * n..192 + 8 * n + 8];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| d * (sc[k] as i8) as f32;
                    chunk[l] = s(is) * q1 as f32;
                    chunk[l + 32] = s(is + 2) * q2 as f32;
                    chunk[l + 64] = s(is + 4) * q3 as f32;
                    chunk[l + 96] = s(is + 6) * q4 as f32;
                }
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K block
/// (`get_scale_min_k4` in ggml): 6 bits each.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Builds GGUF files (tests, and exporting models to llama.cpp).
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Writes another version number in the header (to test readers).
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Adds a metadata entry (`general.alignment` as a `U32` sets the data alignment).
    pub fn metadata(&mut self, key: &str, value: MetaValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds an F32 tensor of row-major `shape`.
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> &mut Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        let ne = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .push((name.to_string(), ne, GgmlType::F32.id(), bytes));
        self
    }

    /// Adds a tensor from its stored bytes; `ne` innermost first, `type_id` any ggml type id.
    pub fn tensor_raw(
        &mut self,
        name: &str,
        ne: &[u64],
        type_id: u32,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), ne.to_vec(), type_id, bytes));
        self
    }

    fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find_map(|(k, v)| match (k.as_str(), v) {
                ("general.alignment", MetaValue::U32(a)) if *a > 0 => Some(*a as usize),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&GGUF_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut b, k);
            b.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut b, v);
        }
        let align = self.alignment();
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, ne, ty, bytes) in &self.tensors {
            put_string(&mut b, name);
            b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + bytes.len()).div_ceil(align) * align;
        }
        let data_start = b.len().div_ceil(align) * align;
        b.resize(data_start, 0);
        for ((_, _, _, bytes), off) in self.tensors.iter().zip(offsets) {
            b.resize(data_start + off, 0);
            b.extend_from_slice(bytes);
        }
        b
    }

    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).with_context(|| format!("writing {}", path.display()))
    }
}

fn put_string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.push(*x as u8),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(u8::from(*x)),
        MetaValue::Str(s) => put_string(b, s),
        MetaValue::Array(items) => {
            // An empty array is written as an array of u8.
            let elem = items.first().map_or(0, MetaValue::type_id);
            b.extend_from_slice(&elem.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(b, item);
            }
        }
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_unpacking() {
        // Sub-blocks 0..4 take the low 6 bits of bytes 0..4 (scale) and 4..8 (min); 4..8
        // combine a nibble of bytes 8..12 with the top 2 bits of bytes 0..8.
        let mut q = [0u8; 12];
        q[1] = 0b11_000101; // scale 1 = 5, top bits 3 → scale 5's high bits
        q[5] = 0b10_000111; // min 1 = 7, top bits 2 → min 5's high bits
        q[9] = 0x9a; // scale 5 low = 0xa, min 5 low = 0x9
        assert_eq!(scale_min_k4(1, &q), (5, 7));
        assert_eq!(scale_min_k4(5, &q), (0xa | (3 << 4), 0x9 | (2 << 4)));
    }
}
