//! Tokenizers behind one trait, so models and data do not care which one a run uses:
//! bytes (256 ids), characters of a corpus (saved with the run), GPT-2 BPE (`r50k_base`,
//! embedded by tiktoken-rs) and any Hugging Face `tokenizer.json` (read offline).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Ids of the special tokens a tokenizer defines (None where it has no such token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub cls: Option<u32>,
    pub sep: Option<u32>,
    pub unk: Option<u32>,
}

impl SpecialTokens {
    /// The ids that are set.
    pub fn ids(&self) -> Vec<u32> {
        [self.eos, self.pad, self.mask, self.cls, self.sep, self.unk]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Text ↔ token ids.
pub trait Tokenizer: Send + Sync {
    /// Token ids of `text` (no special tokens added). Fails on text the vocabulary cannot
    /// represent (a character-level vocabulary meeting an unseen character).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids`; invalid UTF-8 (a partial multi-byte character) becomes U+FFFD.
    fn decode(&self, ids: &[u32]) -> String;
    /// Number of ids; every id is below it.
    fn vocab_size(&self) -> usize;
    fn special_tokens(&self) -> SpecialTokens;
    /// Short description, e.g. `byte`, `gpt2`, `char(65)`, `hf:tokenizer.json`.
    fn name(&self) -> String;
    /// Stable hash of the vocabulary and its rules; token files record it, so a cache built
    /// with another tokenizer is never reused.
    fn fingerprint(&self) -> u64;
}

/// FNV-1a, 64 bit: stable across platforms and Rust versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One id per byte of the UTF-8 encoding.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn vocab_size(&self) -> usize {
        256
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens::default()
    }

    fn name(&self) -> String {
        "byte".into()
    }

    fn fingerprint(&self) -> u64 {
        fnv1a(b"byte")
    }
}

/// One id per distinct character of a corpus, in code-point order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

#[derive(Serialize, Deserialize)]
struct CharVocabFile {
    kind: String,
    chars: Vec<String>,
}

impl CharTokenizer {
    /// The characters of `texts` (which may be streamed one document at a time).
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut set = BTreeSet::new();
        for t in texts {
            set.extend(t.chars());
        }
        Self::from_chars(set)
    }

    pub fn from_chars(chars: BTreeSet<char>) -> Result<Self> {
        if chars.is_empty() {
            bail!("cannot build a character vocabulary from an empty corpus");
        }
        Ok(Self {
            chars: chars.into_iter().collect(),
        })
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Writes the vocabulary as JSON (`{"kind": "char", "chars": [...]}`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = CharVocabFile {
            kind: "char".into(),
            chars: self.chars.iter().map(|c| c.to_string()).collect(),
        };
        let json = serde_json::to_string_pretty(&file)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: CharVocabFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a character vocabulary file", path.display()))?;
        if file.kind != "char" {
            bail!(
                "{}: kind is {:?}, expected \"char\"",
                path.display(),
                file.kind
            );
        }
        let mut chars = Vec::with_capacity(file.chars.len());
        for (i, s) in file.chars.iter().enumerate() {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => bail!(
                    "{}: entry {i} ({s:?}) is not a single character",
                    path.display()
                ),
            }
        }
        if chars.windows(2).any(|w| w[0] >= w[1]) {
            bail!("{}: characters are not sorted and distinct", path.display());
        }
        if chars.is_empty() {
            bail!("{}: empty character vocabulary", path.display());
        }
        Ok(Self { chars })
    }
}

impl Tokenizer for CharTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| match self.chars.binary_search(&c) {
                Ok(i) => Ok(i as u32),
                Err(_) => bail!(
                    "character {c:?} (U+{:04X}) is not in the {}-character vocabulary",
                    c as u32,
                    self.chars.len()
                ),
            })
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.chars.get(i as usize).copied().unwrap_or('\u{FFFD}'))
            .collect()
    }

    fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens::default()
    }

    fn name(&self) -> String {
        format!("char({})", self.chars.len())
    }

    fn fingerprint(&self) -> u64 {
        let s: String = self.chars.iter().collect();
        fnv1a(format!("char:{s}").as_bytes())
    }
}

/// GPT-2's byte-level BPE (`r50k_base`, 50257 ids, `<|endoftext|>` = 50256).
pub struct Gpt2Tokenizer {
    bpe: &'static tiktoken_rs::CoreBPE,
}

impl Gpt2Tokenizer {
    pub fn new() -> Self {
        Self {
            bpe: tiktoken_rs::r50k_base_singleton(),
        }
    }
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

const GPT2_EOT: u32 = 50256;

impl Tokenizer for Gpt2Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `<|endoftext|>` written in the text is ordinary text here, as in GPT-2 training data.
        Ok(self.bpe.encode_ordinary(text))
    }

    fn decode(&self, ids: &[u32]) -> String {
        // Decode token by token so an out-of-range id becomes U+FFFD instead of an error.
        let mut bytes = Vec::new();
        for &id in ids {
            match self.bpe.decode_bytes(&[id]) {
                Ok(b) => bytes.extend_from_slice(&b),
                Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn vocab_size(&self) -> usize {
        GPT2_EOT as usize + 1
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            eos: Some(GPT2_EOT),
            ..Default::default()
        }
    }

    fn name(&self) -> String {
        "gpt2".into()
    }

    fn fingerprint(&self) -> u64 {
        fnv1a(b"tiktoken:r50k_base")
    }
}

/// Any Hugging Face `tokenizer.json`, read from a local file.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    fingerprint: u64,
    special: SpecialTokens,
}

impl HfTokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            anyhow::anyhow!("{}: not a Hugging Face tokenizer.json: {e}", path.display())
        })?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let special = SpecialTokens {
            eos: find(&[
                "</s>",
                "<|endoftext|>",
                "<|end_of_text|>",
                "<eos>",
                "<|im_end|>",
            ]),
            pad: find(&["[PAD]", "<pad>", "<|pad|>"]),
            mask: find(&["[MASK]", "<mask>"]),
            cls: find(&["[CLS]", "<s>", "<cls>"]),
            sep: find(&["[SEP]", "</s>", "<sep>"]),
            unk: find(&["[UNK]", "<unk>"]),
        };
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            fingerprint: fnv1a(&bytes),
            special,
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("{}: encoding failed: {e}", self.path.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.inner
            .decode(ids, false)
            .unwrap_or_else(|_| "\u{FFFD}".repeat(ids.len()))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    fn name(&self) -> String {
        format!("hf:{}", self.path.display())
    }

    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// Which tokenizer a run uses, as written on the command line and in the run's config:
/// `byte`, `char` (built from the corpus), `char:VOCAB.json`, `gpt2`, `hf:tokenizer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenizerSpec {
    Byte,
    /// Characters of the corpus; the path is the saved vocabulary once built.
    Char(Option<PathBuf>),
    Gpt2,
    HuggingFace(PathBuf),
}

impl FromStr for TokenizerSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "byte" | "bytes" => Self::Byte,
            "char" | "chars" => Self::Char(None),
            "gpt2" | "r50k_base" => Self::Gpt2,
            _ => match s.split_once(':') {
                Some(("char", p)) => Self::Char(Some(p.into())),
                Some(("hf", p)) => Self::HuggingFace(p.into()),
                _ if s.ends_with(".json") => Self::HuggingFace(s.into()),
                _ => bail!(
                    "unknown tokenizer {s:?}: expected byte, char, char:VOCAB.json, gpt2 or hf:tokenizer.json"
                ),
            },
        })
    }
}

impl std::fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Byte => write!(f, "byte"),
            Self::Char(None) => write!(f, "char"),
            Self::Char(Some(p)) => write!(f, "char:{}", p.display()),
            Self::Gpt2 => write!(f, "gpt2"),
            Self::HuggingFace(p) => write!(f, "hf:{}", p.display()),
        }
    }
}

impl TokenizerSpec {
    /// Builds the tokenizer. `Char(None)` needs the corpus characters, so it fails here: build
    /// it with [`CharTokenizer::from_texts`] and save it with the run.
    pub fn load(&self) -> Result<Box<dyn Tokenizer>> {
        Ok(match self {
            Self::Byte => Box::new(ByteTokenizer),
            Self::Gpt2 => Box::new(Gpt2Tokenizer::new()),
            Self::Char(Some(p)) => Box::new(CharTokenizer::load(p)?),
            Self::Char(None) => {
                bail!("a character tokenizer is built from the corpus; none has been saved yet")
            }
            Self::HuggingFace(p) => Box::new(HfTokenizer::from_file(p)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip_non_ascii() {
        let t = ByteTokenizer;
        let s = "héllo, wörld — 日本語 🙂";
        let ids = t.encode(s).unwrap();
        assert_eq!(ids.len(), s.len());
        assert_eq!(t.decode(&ids), s);
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            "byte".parse::<TokenizerSpec>().unwrap(),
            TokenizerSpec::Byte
        );
        assert_eq!(
            "hf:a/tokenizer.json".parse::<TokenizerSpec>().unwrap(),
            TokenizerSpec::HuggingFace("a/tokenizer.json".into())
        );
        assert!("nope".parse::<TokenizerSpec>().is_err());
    }
}
