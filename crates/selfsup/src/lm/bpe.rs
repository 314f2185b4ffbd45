//! The byte-level BPE tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.model =
//! gpt2`), as llama.cpp runs it.
//!
//! Sennrich et al. 2016 (BPE) with GPT-2's byte level (Radford et al. 2019, §2.2): text is
//! split by a pre-tokenizer regex, each piece's UTF-8 bytes are mapped to printable
//! characters through GPT-2's byte↔unicode table (space → `Ġ`, newline → `Ċ`, `é` → `Ã©`),
//! and the ranked merges (`tokenizer.ggml.merges`, rank = position) are applied. Control and
//! user-defined tokens (`tokenizer.ggml.token_type` 3 and 4, e.g. `<|im_start|>`) written in
//! the text are matched first and become single ids. No BOS is added unless
//! `tokenizer.ggml.add_bos_token` says so.
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre`: `default`/`gpt2` use GPT-2's regex; the
//! `smollm` family (also `starcoder`, `refact`, `codeshell`, `command-r`, `exaone`, `minerva`)
//! first isolates every digit (`\p{N}`), then applies GPT-2's regex, so digits are always
//! single tokens. The Hugging Face `tokenizers` crate runs the BPE, the regex and the byte
//! table.

use anyhow::{bail, ensure, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::gguf::GgufFile;
use super::tokenizer::{fnv1a, SpecialTokens, Tokenizer};

/// `tokenizer.ggml.token_type` values.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Pre-tokenizer families (`tokenizer.ggml.pre`) that isolate digits before GPT-2's regex.
const DIGIT_SPLIT_PRE: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "command-r",
    "exaone",
    "minerva",
];

/// A GGUF file's byte-level BPE tokenizer.
#[derive(Clone)]
pub struct GgufBpeTokenizer {
    inner: tokenizers::Tokenizer,
    tokens: Vec<String>,
    pre: String,
    special: SpecialTokens,
    bos: Option<u32>,
    add_bos: bool,
    fingerprint: u64,
}

impl std::fmt::Debug for GgufBpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufBpeTokenizer")
            .field("vocab", &self.tokens.len())
            .field("pre", &self.pre)
            .field("special", &self.special)
            .finish()
    }
}

impl GgufBpeTokenizer {
    /// Reads `tokenizer.ggml.{model, pre, tokens, merges, token_type}` and the special ids.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let src = gguf.source();
        let model = gguf.get_str("tokenizer.ggml.model")?;
        ensure!(
            model == "gpt2",
            "{src}: tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
        );
        let pre = match gguf.get("tokenizer.ggml.pre") {
            Some(v) => v
                .as_str()
                .with_context(|| format!("{src}: tokenizer.ggml.pre is not a string"))?
                .to_string(),
            None => "default".to_string(),
        };
        let digits_first = if DIGIT_SPLIT_PRE.contains(&pre.as_str()) {
            true
        } else if pre == "default" || pre == "gpt2" || pre == "gpt-2" {
            false
        } else {
            bail!(
                "{src}: pre-tokenizer tokenizer.ggml.pre = {pre:?} is not supported \
                 (supported: default, gpt2, {})",
                DIGIT_SPLIT_PRE.join(", ")
            );
        };

        let tokens: Vec<String> = gguf
            .get_array("tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{src}: tokenizer.ggml.tokens[{i}] is not a string"))
            })
            .collect::<Result<_>>()?;
        ensure!(!tokens.is_empty(), "{src}: tokenizer.ggml.tokens is empty");
        let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type") {
            Some(v) => {
                let a = v
                    .as_array()
                    .with_context(|| format!("{src}: tokenizer.ggml.token_type is not an array"))?;
                ensure!(
                    a.len() == tokens.len(),
                    "{src}: tokenizer.ggml.token_type has {} entries for {} tokens",
                    a.len(),
                    tokens.len()
                );
                a.iter()
                    .map(|t| {
                        t.as_i64().with_context(|| {
                            format!("{src}: tokenizer.ggml.token_type holds a non-integer")
                        })
                    })
                    .collect::<Result<_>>()?
            }
            None => vec![1; tokens.len()],
        };
        let merges: Vec<(String, String)> = gguf
            .get_array("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .and_then(|m| m.split_once(' '))
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| {
                        format!("{src}: tokenizer.ggml.merges[{i}] is not a string \"A B\"")
                    })
            })
            .collect::<Result<_>>()?;

        // The first id wins where a token string repeats.
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate().rev() {
            vocab.insert(t.clone(), i as u32);
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow::anyhow!("{src}: invalid BPE vocabulary or merges: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, false, true);
        let pre_tokenizer: PreTokenizerWrapper = if digits_first {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED)
            .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| anyhow::anyhow!("{src}: adding special tokens: {e}"))?;

        let id = |key: &str| -> Result<Option<u32>> {
            match gguf.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = v
                        .as_u64()
                        .with_context(|| format!("{src}: {key} is not an integer"))?;
                    ensure!(
                        (id as usize) < tokens.len(),
                        "{src}: {key} = {id} is outside the vocabulary of {}",
                        tokens.len()
                    );
                    Ok(Some(id as u32))
                }
            }
        };
        let special = SpecialTokens {
            eos: id("tokenizer.ggml.eos_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            ..Default::default()
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let add_bos = gguf
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut h = format!("gguf-bpe:{pre}:").into_bytes();
        for t in &tokens {
            h.extend_from_slice(t.as_bytes());
            h.push(0);
        }
        for m in gguf.get_array("tokenizer.ggml.merges")? {
            h.extend_from_slice(m.as_str().unwrap_or("").as_bytes());
            h.push(0);
        }
        Ok(Self {
            inner,
            tokens,
            pre,
            special,
            bos,
            add_bos,
            fingerprint: fnv1a(&h),
        })
    }

    /// The token string of `id` in GPT-2's byte↔unicode spelling (`Ġthe`).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a token string (byte↔unicode spelling or a special token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// `tokenizer.ggml.bos_token_id`, and whether the model expects it prepended
    /// (`tokenizer.ggml.add_bos_token`); [`Tokenizer::encode`] never adds it.
    pub fn bos(&self) -> (Option<u32>, bool) {
        (self.bos, self.add_bos)
    }

    /// `tokenizer.ggml.pre`.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }
}

impl Tokenizer for GgufBpeTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("BPE encoding failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Special tokens are kept as written (`<|im_end|>`); an id outside the vocabulary
    /// becomes U+FFFD.
    fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        for run in ids.split_inclusive(|&id| id as usize >= self.tokens.len()) {
            let (valid, bad) = match run.split_last() {
                Some((&last, head)) if last as usize >= self.tokens.len() => (head, true),
                _ => (run, false),
            };
            if !valid.is_empty() {
                out.push_str(
                    &self
                        .inner
                        .decode(valid, false)
                        .unwrap_or_else(|_| "\u{FFFD}".repeat(valid.len())),
                );
            }
            if bad {
                out.push('\u{FFFD}');
            }
        }
        out
    }

    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    fn name(&self) -> String {
        format!("gguf-bpe({}, {})", self.pre, self.tokens.len())
    }

    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}
