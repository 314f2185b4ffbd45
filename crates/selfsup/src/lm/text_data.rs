//! Text corpora for language modelling: read once, tokenized into a binary token file that is
//! memory-mapped (so a corpus larger than RAM works), split into train/validation, and cut into
//! random contiguous windows that depend only on (seed, step, split), so a resumed run sees the
//! same batches.
//!
//! Token file layout (little-endian): a 64-byte header — magic `SSLMTOKS`, version u32, token
//! width u32 (2 or 4 bytes), token count u64, vocabulary size u64, tokenizer fingerprint u64,
//! source fingerprint u64, 16 reserved bytes — then the tokens.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tokenizer::{fnv1a, CharTokenizer, Tokenizer};
use crate::methods::clm::TokenBatch;

const MAGIC: &[u8; 8] = b"SSLMTOKS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// Text files are decoded and tokenized in blocks of about this many bytes, cut after a newline.
const BLOCK: usize = 8 << 20;

/// Where the text comes from: `text:PATH` (a file, or a folder searched recursively for
/// `.txt` files), `jsonl:PATH[:FIELD]` (one JSON object per line) or `json:PATH[:FIELD]` (an
/// array of objects); FIELD defaults to `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    Text(PathBuf),
    Jsonl { path: PathBuf, field: String },
    Json { path: PathBuf, field: String },
}

impl FromStr for TextSource {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, rest) = s.split_once(':').with_context(|| {
            format!(
                "text source {s:?}: expected text:PATH, jsonl:PATH[:FIELD] or json:PATH[:FIELD]"
            )
        })?;
        let path_field = |rest: &str| -> (PathBuf, String) {
            // A trailing `:name` is a field unless the whole string is an existing path.
            match rest.rsplit_once(':') {
                Some((p, f)) if !Path::new(rest).exists() && !f.is_empty() && !f.contains('/') => {
                    (p.into(), f.to_string())
                }
                _ => (rest.into(), "text".to_string()),
            }
        };
        Ok(match kind {
            "text" | "txt" => Self::Text(rest.into()),
            "jsonl" => {
                let (path, field) = path_field(rest);
                Self::Jsonl { path, field }
            }
            "json" => {
                let (path, field) = path_field(rest);
                Self::Json { path, field }
            }
            _ => bail!("text source {s:?}: unknown kind {kind:?} (expected text, jsonl or json)"),
        })
    }
}

impl std::fmt::Display for TextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(p) => write!(f, "text:{}", p.display()),
            Self::Jsonl { path, field } => write!(f, "jsonl:{}:{field}", path.display()),
            Self::Json { path, field } => write!(f, "json:{}:{field}", path.display()),
        }
    }
}

impl TextSource {
    /// The files read, in a fixed order.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        match self {
            Self::Text(p) if p.is_dir() => {
                let mut files = Vec::new();
                collect_txt(p, &mut files)?;
                files.sort();
                ensure!(
                    !files.is_empty(),
                    "{}: folder holds no .txt files",
                    p.display()
                );
                Ok(files)
            }
            Self::Text(p) | Self::Jsonl { path: p, .. } | Self::Json { path: p, .. } => {
                ensure!(p.exists(), "{}: no such file or folder", p.display());
                Ok(vec![p.clone()])
            }
        }
    }

    /// A character vocabulary holding every character of the source (streamed).
    pub fn char_tokenizer(&self, lossy: bool) -> Result<CharTokenizer> {
        let mut chars = std::collections::BTreeSet::new();
        self.for_each_text(lossy, |text, _| {
            chars.extend(text.chars());
            Ok(())
        })?;
        CharTokenizer::from_chars(chars).with_context(|| format!("{self}"))
    }

    /// Hash of the source description and each file's path, size and modification time: a
    /// changed corpus invalidates a cached token file.
    pub fn fingerprint(&self) -> Result<u64> {
        let mut desc = self.to_string();
        for f in self.files()? {
            let meta = std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            desc.push_str(&format!("\n{}\t{}\t{mtime}", f.display(), meta.len()));
        }
        Ok(fnv1a(desc.as_bytes()))
    }

    /// Calls `f` with consecutive pieces of text: each document (file, JSON record) in order,
    /// large text files in blocks cut after a newline; `new_document` is true on the first
    /// piece of a document. Invalid UTF-8 is an error naming the file and byte offset, or
    /// U+FFFD with `lossy`.
    pub fn for_each_text(
        &self,
        lossy: bool,
        mut f: impl FnMut(&str, bool) -> Result<()>,
    ) -> Result<()> {
        match self {
            Self::Text(_) => {
                for path in self.files()? {
                    read_text_blocks(&path, lossy, &mut f)?;
                }
                Ok(())
            }
            Self::Jsonl { path, field } => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let text = decode_utf8(&bytes, 0, path, lossy)?;
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let value: serde_json::Value = serde_json::from_str(line)
                        .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
                    let text = json_field(&value, field)
                        .with_context(|| format!("{}:{}", path.display(), i + 1))?;
                    f(text, true)?;
                }
                Ok(())
            }
            Self::Json { path, field } => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let text = decode_utf8(&bytes, 0, path, lossy)?;
                let value: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: invalid JSON", path.display()))?;
                let records = value
                    .as_array()
                    .with_context(|| format!("{}: expected an array of objects", path.display()))?;
                for (i, record) in records.iter().enumerate() {
                    let text = json_field(record, field)
                        .with_context(|| format!("{}: record {i}", path.display()))?;
                    f(text, true)?;
                }
                Ok(())
            }
        }
    }
}

fn json_field<'a>(value: &'a serde_json::Value, field: &str) -> Result<&'a str> {
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => bail!("field {field:?} is not a string but {other}"),
        None => bail!("no field {field:?}"),
    }
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            collect_txt(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

fn decode_utf8<'a>(
    bytes: &'a [u8],
    file_offset: usize,
    path: &Path,
    lossy: bool,
) -> Result<std::borrow::Cow<'a, str>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.into()),
        Err(_) if lossy => Ok(String::from_utf8_lossy(bytes)),
        Err(e) => bail!(
            "{}: invalid UTF-8 at byte offset {} (pass --lossy to replace invalid bytes with U+FFFD)",
            path.display(),
            file_offset + e.valid_up_to()
        ),
    }
}

fn read_text_blocks(
    path: &Path,
    lossy: bool,
    f: &mut impl FnMut(&str, bool) -> Result<()>,
) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut offset = 0usize;
    let mut first = true;
    let mut eof = false;
    while !eof || !buf.is_empty() {
        if !eof {
            let start = buf.len();
            buf.resize(start + BLOCK, 0);
            let n = read_full(&mut file, &mut buf[start..])
                .with_context(|| format!("reading {}", path.display()))?;
            buf.truncate(start + n);
            eof = n < BLOCK;
        }
        // Cut after the last newline, which never falls inside a multi-byte character.
        let cut = if eof {
            buf.len()
        } else {
            match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => continue,
            }
        };
        let text = decode_utf8(&buf[..cut], offset, path, lossy)?;
        f(&text, first)?;
        first = false;
        buf.drain(..cut);
        offset += cut;
    }
    Ok(())
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Bytes per stored token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    /// The narrowest width that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Result<Self> {
        if vocab_size <= 1 << 16 {
            Ok(Self::U16)
        } else if (vocab_size as u64) <= 1 << 32 {
            Ok(Self::U32)
        } else {
            bail!("vocabulary of {vocab_size} ids does not fit in 32-bit tokens")
        }
    }

    /// Fails when ids below `vocab_size` do not fit this width.
    pub fn check(self, vocab_size: usize) -> Result<()> {
        let max = match self {
            Self::U16 => 1u64 << 16,
            Self::U32 => 1u64 << 32,
        };
        ensure!(
            vocab_size as u64 <= max,
            "vocabulary of {vocab_size} ids does not fit in {}-bit tokens (at most {max} ids)",
            self.bytes() * 8
        );
        Ok(())
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    fn from_bytes(n: u32) -> Option<Self> {
        match n {
            2 => Some(Self::U16),
            4 => Some(Self::U32),
            _ => None,
        }
    }
}

/// Header fields of a token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFileHeader {
    pub width: TokenWidth,
    pub count: u64,
    pub vocab_size: u64,
    pub tokenizer_fingerprint: u64,
    pub source_fingerprint: u64,
}

impl TokenFileHeader {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.width.bytes() as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.count.to_le_bytes());
        h[24..32].copy_from_slice(&self.vocab_size.to_le_bytes());
        h[32..40].copy_from_slice(&self.tokenizer_fingerprint.to_le_bytes());
        h[40..48].copy_from_slice(&self.source_fingerprint.to_le_bytes());
        h
    }

    fn parse(h: &[u8], path: &Path) -> Result<Self> {
        let p = path.display();
        ensure!(
            h.len() >= HEADER_LEN,
            "{p}: truncated token file ({} bytes, the header alone is {HEADER_LEN})",
            h.len()
        );
        ensure!(
            &h[0..8] == MAGIC,
            "{p}: not a selfsup token file (bad magic {:?})",
            String::from_utf8_lossy(&h[0..8])
        );
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32_at(8);
        ensure!(
            version == VERSION,
            "{p}: token file version {version}, expected {VERSION}"
        );
        let width = TokenWidth::from_bytes(u32_at(12))
            .with_context(|| format!("{p}: token width {} bytes, expected 2 or 4", u32_at(12)))?;
        Ok(Self {
            width,
            count: u64_at(16),
            vocab_size: u64_at(24),
            tokenizer_fingerprint: u64_at(32),
            source_fingerprint: u64_at(40),
        })
    }
}

/// A memory-mapped token file.
pub struct TokenFile {
    path: PathBuf,
    header: TokenFileHeader,
    map: Mmap,
}

impl TokenFile {
    /// Tokenizes `source` into `path` (through a temporary file, renamed at the end).
    pub fn build(
        source: &TextSource,
        tokenizer: &dyn Tokenizer,
        path: impl AsRef<Path>,
        lossy: bool,
    ) -> Result<Self> {
        let path = path.as_ref();
        let vocab = tokenizer.vocab_size();
        let width = TokenWidth::for_vocab(vocab)?;
        Self::build_with_width(source, tokenizer, path, lossy, width)
    }

    /// [`TokenFile::build`] with an explicit token width.
    pub fn build_with_width(
        source: &TextSource,
        tokenizer: &dyn Tokenizer,
        path: &Path,
        lossy: bool,
        width: TokenWidth,
    ) -> Result<Self> {
        let vocab = tokenizer.vocab_size();
        width
            .check(vocab)
            .with_context(|| format!("tokenizer {} for {}", tokenizer.name(), path.display()))?;
        let header = TokenFileHeader {
            width,
            count: 0,
            vocab_size: vocab as u64,
            tokenizer_fingerprint: tokenizer.fingerprint(),
            source_fingerprint: source.fingerprint()?,
        };
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let written = write_tokens(source, tokenizer, &tmp, lossy, header);
        if written.is_err() {
            // Leave no half-written file behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Self::open(path)
    }

    /// Maps an existing token file, checking its header against its length.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        // SAFETY: the file is only read; a concurrent writer would be a misuse of the cache.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("memory-mapping {}", path.display()))?;
        let header = TokenFileHeader::parse(&map, path)?;
        let expected = header
            .count
            .checked_mul(header.width.bytes() as u64)
            .and_then(|n| n.checked_add(HEADER_LEN as u64))
            .with_context(|| format!("{}: corrupt token count", path.display()))?;
        ensure!(
            map.len() as u64 == expected,
            "{}: truncated or corrupt token file: header says {} tokens ({expected} bytes) but the file has {} bytes",
            path.display(),
            header.count,
            map.len()
        );
        Ok(Self {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    /// Opens `path` if it was built from this source with this tokenizer, else (re)builds it.
    /// A corrupt file is an error rather than silently replaced.
    pub fn open_or_build(
        source: &TextSource,
        tokenizer: &dyn Tokenizer,
        path: impl AsRef<Path>,
        lossy: bool,
    ) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            let file = Self::open(path)?;
            if file.header.tokenizer_fingerprint == tokenizer.fingerprint()
                && file.header.source_fingerprint == source.fingerprint()?
            {
                return Ok(file);
            }
        }
        Self::build(source, tokenizer, path, lossy)
    }

    /// Conventional cache file name inside a run folder.
    pub fn cache_path(run_dir: &Path, tokenizer: &dyn Tokenizer) -> PathBuf {
        run_dir.join(format!("tokens-{:016x}.bin", tokenizer.fingerprint()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> TokenFileHeader {
        self.header
    }

    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Token `i` (panics past the end, like slice indexing).
    pub fn get(&self, i: usize) -> u32 {
        let w = self.header.width.bytes();
        let b = &self.map[HEADER_LEN + i * w..HEADER_LEN + (i + 1) * w];
        match self.header.width {
            TokenWidth::U16 => u16::from_le_bytes([b[0], b[1]]) as u32,
            TokenWidth::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// Tokens `start..end` appended to `out`.
    pub fn extend_range(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        let w = self.header.width.bytes();
        let bytes = &self.map[HEADER_LEN + start * w..HEADER_LEN + end * w];
        match self.header.width {
            TokenWidth::U16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
            ),
            TokenWidth::U32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
    }
}

/// Streams the tokens of `source` into `tmp` after `header`, then writes the final count.
fn write_tokens(
    source: &TextSource,
    tokenizer: &dyn Tokenizer,
    tmp: &Path,
    lossy: bool,
    mut header: TokenFileHeader,
) -> Result<()> {
    let vocab = tokenizer.vocab_size();
    let width = header.width;
    let eos = tokenizer.special_tokens().eos;
    let file = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = BufWriter::new(file);
    out.write_all(&header.to_bytes())?;
    let mut count = 0u64;
    let mut first_doc = true;
    source
        .for_each_text(lossy, |text, new_doc| {
            let mut ids = tokenizer.encode(text)?;
            // Documents are separated by the end-of-text token where the tokenizer has one.
            if let (true, false, Some(eos)) = (new_doc, first_doc, eos) {
                ids.insert(0, eos);
            }
            first_doc = false;
            for id in ids {
                ensure!(
                    (id as usize) < vocab,
                    "tokenizer {} produced id {id}, outside its vocabulary of {vocab}",
                    tokenizer.name()
                );
                match width {
                    TokenWidth::U16 => out.write_all(&(id as u16).to_le_bytes())?,
                    TokenWidth::U32 => out.write_all(&id.to_le_bytes())?,
                }
            }
            count += 1;
            Ok(())
        })
        .with_context(|| format!("tokenizing {source}"))?;
    let mut file = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    let bytes = file.stream_position()? - HEADER_LEN as u64;
    header.count = bytes / width.bytes() as u64;
    ensure!(
        header.count > 0,
        "{source}: the corpus is empty (no tokens after reading {count} text pieces)"
    );
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header.to_bytes())?;
    file.sync_all()?;
    drop(file);
    Ok(())
}

/// The training and held-out parts of a corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
}

/// A tokenized corpus split at a fixed token: the last `val_fraction` is validation.
pub struct TextDataset {
    tokens: TokenFile,
    train_len: usize,
}

impl TextDataset {
    /// Default held-out fraction.
    pub const VAL_FRACTION: f64 = 0.1;

    pub fn new(tokens: TokenFile, val_fraction: f64) -> Result<Self> {
        ensure!(
            (0.0..1.0).contains(&val_fraction),
            "validation fraction {val_fraction} is not in [0, 1)"
        );
        let n = tokens.len();
        let val = (n as f64 * val_fraction).ceil() as usize;
        Ok(Self {
            train_len: n - val.min(n),
            tokens,
        })
    }

    pub fn tokens(&self) -> &TokenFile {
        &self.tokens
    }

    /// Token range of a split.
    pub fn range(&self, split: Split) -> std::ops::Range<usize> {
        match split {
            Split::Train => 0..self.train_len,
            Split::Validation => self.train_len..self.tokens.len(),
        }
    }

    pub fn len(&self, split: Split) -> usize {
        self.range(split).len()
    }

    /// Fails unless every non-empty split holds a window of `context + 1` tokens.
    pub fn check_context(&self, context: usize) -> Result<()> {
        ensure!(context > 0, "context length must be at least 1");
        for split in [Split::Train, Split::Validation] {
            let n = self.len(split);
            ensure!(
                (split == Split::Validation && n == 0) || n > context,
                "context of {context} tokens is longer than the {split:?} split of {} ({n} tokens; a window needs {})",
                self.tokens.path().display(),
                context + 1
            );
        }
        Ok(())
    }

    /// `batch` random windows of `len` tokens from `split`, row-major; a pure function of
    /// (seed, step, split).
    pub fn windows(
        &self,
        split: Split,
        step: usize,
        seed: u64,
        batch: usize,
        len: usize,
    ) -> Result<Vec<u32>> {
        let range = self.range(split);
        ensure!(
            range.len() >= len && len > 0,
            "window of {len} tokens does not fit the {split:?} split of {} ({} tokens)",
            self.tokens.path().display(),
            range.len()
        );
        let mut rng = ChaCha8Rng::seed_from_u64(batch_seed(seed, step, split));
        let mut out = Vec::with_capacity(batch * len);
        for _ in 0..batch {
            let start = range.start + rng.gen_range(0..=range.len() - len);
            self.tokens.extend_range(start, start + len, &mut out);
        }
        Ok(out)
    }

    /// Inputs and next-token targets, each `[batch, context]` row-major: random contiguous
    /// windows of `context + 1` tokens, a pure function of (seed, step, split).
    pub fn batch(
        &self,
        split: Split,
        step: usize,
        seed: u64,
        batch: usize,
        context: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let w = self.windows(split, step, seed, batch, context + 1)?;
        Ok(shift(&w, batch, context))
    }

    /// [`TextDataset::batch`] as a [`TokenBatch`].
    pub fn token_batch(
        &self,
        split: Split,
        step: usize,
        seed: u64,
        batch: usize,
        context: usize,
    ) -> Result<TokenBatch> {
        let (inputs, targets) = self.batch(split, step, seed, batch, context)?;
        Ok(TokenBatch {
            inputs,
            targets,
            batch,
            context,
        })
    }

    /// The `index`-th batch of consecutive, non-overlapping windows covering `split` in order
    /// (for a validation loss that does not depend on a seed); None past the end. The last
    /// batch may hold fewer rows.
    pub fn sequential_batch(
        &self,
        split: Split,
        index: usize,
        batch: usize,
        context: usize,
    ) -> Option<TokenBatch> {
        let range = self.range(split);
        let n_windows = range.len().checked_sub(1)? / context;
        let first = index * batch;
        if first >= n_windows {
            return None;
        }
        let rows = batch.min(n_windows - first);
        let mut inputs = Vec::with_capacity(rows * context);
        let mut targets = Vec::with_capacity(rows * context);
        for r in 0..rows {
            let start = range.start + (first + r) * context;
            self.tokens
                .extend_range(start, start + context, &mut inputs);
            self.tokens
                .extend_range(start + 1, start + context + 1, &mut targets);
        }
        Some(TokenBatch {
            inputs,
            targets,
            batch: rows,
            context,
        })
    }
}

/// Splits windows of `context + 1` tokens into inputs `[.., 0..context]` and targets
/// `[.., 1..context+1]`.
fn shift(windows: &[u32], batch: usize, context: usize) -> (Vec<u32>, Vec<u32>) {
    let mut inputs = Vec::with_capacity(batch * context);
    let mut targets = Vec::with_capacity(batch * context);
    for w in windows.chunks_exact(context + 1) {
        inputs.extend_from_slice(&w[..context]);
        targets.extend_from_slice(&w[1..]);
    }
    (inputs, targets)
}

/// SplitMix64 of (seed, step, split): independent streams per step and split.
fn batch_seed(seed: u64, step: usize, split: Split) -> u64 {
    let tag = match split {
        Split::Train => 0x7472_6169_6e00_0000u64,
        Split::Validation => 0x7661_6c00_0000_0000u64,
    };
    splitmix64(splitmix64(seed ^ tag) ^ step as u64)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_parsing() {
        assert_eq!(
            "text:corpus.txt".parse::<TextSource>().unwrap(),
            TextSource::Text("corpus.txt".into())
        );
        assert_eq!(
            "jsonl:data/x.jsonl:body".parse::<TextSource>().unwrap(),
            TextSource::Jsonl {
                path: "data/x.jsonl".into(),
                field: "body".into()
            }
        );
        assert_eq!(
            "jsonl:data/x.jsonl".parse::<TextSource>().unwrap(),
            TextSource::Jsonl {
                path: "data/x.jsonl".into(),
                field: "text".into()
            }
        );
        assert!("corpus.txt".parse::<TextSource>().is_err());
    }

    #[test]
    fn shift_makes_targets() {
        let (i, t) = shift(&[1, 2, 3, 4, 5, 6], 2, 2);
        assert_eq!(i, vec![1, 2, 4, 5]);
        assert_eq!(t, vec![2, 3, 5, 6]);
    }
}
