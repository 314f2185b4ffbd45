//! Tokenizer round trips and the token file / memory map / batching of text corpora,
//! including the bad inputs users will hit.

use std::path::{Path, PathBuf};

use anyhow::Result;
use selfsup::lm::text_data::{Split, TextDataset, TextSource, TokenFile, TokenWidth};
use selfsup::lm::tokenizer::{
    ByteTokenizer, CharTokenizer, Gpt2Tokenizer, HfTokenizer, SpecialTokens, Tokenizer,
    TokenizerSpec,
};

const NON_ASCII: &str = "Zürich café — naïve 日本語のテキスト, emoji 🙂👍🏽, tab\tand newline\n";

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfsup-lm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn err_text<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn byte_and_char_round_trips() {
    let b = ByteTokenizer;
    assert_eq!(b.decode(&b.encode(NON_ASCII).unwrap()), NON_ASCII);
    assert_eq!(b.vocab_size(), 256);

    let c = CharTokenizer::from_texts([NON_ASCII, "more text"]).unwrap();
    let dir = tempdir("char_source");
    std::fs::write(dir.join("a.txt"), NON_ASCII).unwrap();
    std::fs::write(dir.join("b.txt"), "more text").unwrap();
    let from_source = TextSource::Text(dir.clone()).char_tokenizer(false).unwrap();
    assert_eq!(from_source, c);
    let ids = c.encode(NON_ASCII).unwrap();
    assert_eq!(ids.len(), NON_ASCII.chars().count());
    assert_eq!(c.decode(&ids), NON_ASCII);
    let err = err_text(c.encode("Ω"));
    assert!(err.contains("'Ω'") && err.contains("not in the"), "{err}");

    // Saved with the run and loaded back identically.
    let dir = tempdir("char");
    let path = dir.join("vocab.json");
    c.save(&path).unwrap();
    let back = CharTokenizer::load(&path).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.fingerprint(), c.fingerprint());
    let spec: TokenizerSpec = format!("char:{}", path.display()).parse().unwrap();
    assert_eq!(spec.load().unwrap().encode(NON_ASCII).unwrap(), ids);
    std::fs::write(&path, r#"{"kind": "char", "chars": ["ab"]}"#).unwrap();
    let err = err_text(CharTokenizer::load(&path));
    assert!(
        err.contains("vocab.json") && err.contains("single character"),
        "{err}"
    );
    assert!(CharTokenizer::from_texts([""]).is_err());
}

#[test]
fn gpt2_bpe_round_trip_and_known_ids() {
    let t = Gpt2Tokenizer::new();
    assert_eq!(t.vocab_size(), 50257);
    assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(t.special_tokens().eos, Some(50256));
    let ids = t.encode(NON_ASCII).unwrap();
    assert_eq!(t.decode(&ids), NON_ASCII);
    // A lone byte of a multi-byte character decodes to U+FFFD, not an error.
    let one = t.encode("é").unwrap();
    assert!(t.decode(&one[..one.len() - 1]).contains('\u{FFFD}') || one.len() == 1);
}

/// GPT-2's byte → printable character table, as byte-level BPE vocabularies spell bytes.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

fn write_tiny_hf_tokenizer(path: &Path) {
    let table = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (b, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), b.into());
    }
    vocab.insert("he".into(), 256.into());
    vocab.insert("ll".into(), 257.into());
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 258, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": ["h e", "l l"]}
    });
    std::fs::write(path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn hugging_face_tokenizer_json_offline() {
    let dir = tempdir("hf");
    let path = dir.join("tokenizer.json");
    write_tiny_hf_tokenizer(&path);
    let t = HfTokenizer::from_file(&path).unwrap();
    assert_eq!(t.vocab_size(), 259);
    assert_eq!(t.encode("hello").unwrap(), vec![256, 257, b'o' as u32]);
    assert_eq!(
        t.special_tokens(),
        SpecialTokens {
            eos: Some(258),
            ..Default::default()
        }
    );
    assert_eq!(t.decode(&t.encode(NON_ASCII).unwrap()), NON_ASCII);
    let spec: TokenizerSpec = format!("hf:{}", path.display()).parse().unwrap();
    assert_eq!(spec.load().unwrap().fingerprint(), t.fingerprint());

    std::fs::write(&path, "{not json").unwrap();
    let err = err_text(HfTokenizer::from_file(&path));
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn folder_corpus_token_file_and_memory_map() {
    let dir = tempdir("folder");
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(corpus.join("nested")).unwrap();
    std::fs::write(corpus.join("a.txt"), "first file\n").unwrap();
    std::fs::write(corpus.join("nested/b.txt"), NON_ASCII).unwrap();
    std::fs::write(corpus.join("ignored.md"), "not text").unwrap();
    let source: TextSource = format!("text:{}", corpus.display()).parse().unwrap();
    assert_eq!(source.files().unwrap().len(), 2);

    let tok = ByteTokenizer;
    let path = TokenFile::cache_path(&dir.join("run"), &tok);
    let file = TokenFile::open_or_build(&source, &tok, &path, false).unwrap();
    let expected: Vec<u32> = format!("first file\n{NON_ASCII}")
        .bytes()
        .map(u32::from)
        .collect();
    let h = file.header();
    assert_eq!(h.width, TokenWidth::U16);
    assert_eq!(h.count as usize, expected.len());
    assert_eq!(h.vocab_size, 256);
    assert_eq!(h.tokenizer_fingerprint, tok.fingerprint());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        64 + 2 * expected.len()
    );
    let mut got = Vec::new();
    file.extend_range(0, file.len(), &mut got);
    assert_eq!(got, expected);
    assert_eq!(file.get(3), expected[3]);

    // Cached: a second open reuses the file; another tokenizer rebuilds it.
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let again = TokenFile::open_or_build(&source, &tok, &path, false).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(again.len(), file.len());
    let gpt2 = Gpt2Tokenizer::new();
    let rebuilt = TokenFile::open_or_build(&source, &gpt2, &path, false).unwrap();
    assert_eq!(rebuilt.header().tokenizer_fingerprint, gpt2.fingerprint());
    // Two documents: GPT-2's end-of-text token separates them.
    let mut ids = Vec::new();
    rebuilt.extend_range(0, rebuilt.len(), &mut ids);
    assert_eq!(ids.iter().filter(|&&i| i == 50256).count(), 1);
    assert_eq!(
        gpt2.decode(&ids),
        format!("first file\n<|endoftext|>{NON_ASCII}")
    );
}

#[test]
fn jsonl_and_json_sources() {
    let dir = tempdir("jsonl");
    let jsonl = dir.join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"body\": \"héllo\", \"id\": 1}\n\n{\"body\": \"wörld\"}\n",
    )
    .unwrap();
    let source: TextSource = format!("jsonl:{}:body", jsonl.display()).parse().unwrap();
    let file = TokenFile::build(&source, &ByteTokenizer, dir.join("t.bin"), false).unwrap();
    let mut ids = Vec::new();
    file.extend_range(0, file.len(), &mut ids);
    assert_eq!(ByteTokenizer.decode(&ids), "héllowörld");

    let missing: TextSource = format!("jsonl:{}", jsonl.display()).parse().unwrap();
    let err = err_text(TokenFile::build(
        &missing,
        &ByteTokenizer,
        dir.join("u.bin"),
        false,
    ));
    assert!(
        err.contains("docs.jsonl:1") && err.contains("\"text\""),
        "{err}"
    );

    let json = dir.join("docs.json");
    std::fs::write(&json, r#"[{"text": "a"}, {"text": "b"}]"#).unwrap();
    let source: TextSource = format!("json:{}", json.display()).parse().unwrap();
    let file = TokenFile::build(&source, &ByteTokenizer, dir.join("v.bin"), false).unwrap();
    assert_eq!(file.len(), 2);
}

#[test]
fn invalid_utf8_is_located_or_replaced() {
    let dir = tempdir("utf8");
    // Past the first 8 MiB read block, so the offset must carry across blocks.
    let mut bytes = "line of text\n".repeat(700_000).into_bytes();
    let offset = bytes.len() + 5;
    bytes.extend_from_slice(b"abcde\xFFxyz\n");
    let path = dir.join("bad.txt");
    std::fs::write(&path, &bytes).unwrap();
    let source = TextSource::Text(path);
    let err = err_text(TokenFile::build(
        &source,
        &ByteTokenizer,
        dir.join("t.bin"),
        false,
    ));
    assert!(
        err.contains("bad.txt") && err.contains(&format!("byte offset {offset}")),
        "{err}"
    );
    assert!(err.contains("--lossy"), "{err}");
    assert!(!dir.join("t.bin").exists());

    let file = TokenFile::build(&source, &ByteTokenizer, dir.join("t.bin"), true).unwrap();
    // The bad byte became U+FFFD (3 bytes).
    assert_eq!(file.len(), bytes.len() + 2);
}

#[test]
fn empty_corpus_and_width_errors() {
    let dir = tempdir("empty");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = err_text(TokenFile::build(
        &TextSource::Text(empty),
        &ByteTokenizer,
        dir.join("t.bin"),
        false,
    ));
    assert!(err.contains("empty"), "{err}");
    let err = err_text(TextSource::Text(dir.join("nope")).files());
    assert!(err.contains("nope"), "{err}");
    std::fs::create_dir_all(dir.join("no_txt")).unwrap();
    let err = err_text(TextSource::Text(dir.join("no_txt")).files());
    assert!(err.contains("no .txt files"), "{err}");

    assert_eq!(TokenWidth::for_vocab(65536).unwrap(), TokenWidth::U16);
    assert_eq!(TokenWidth::for_vocab(65537).unwrap(), TokenWidth::U32);
    let err = err_text(TokenWidth::U16.check(100_000));
    assert!(err.contains("100000") && err.contains("16-bit"), "{err}");
}

/// Maps each byte to a large id, to exercise 32-bit token files.
struct WideTokenizer;

impl Tokenizer for WideTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(|b| 70_000 + b as u32).collect())
    }
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| (i - 70_000) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn vocab_size(&self) -> usize {
        70_256
    }
    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens::default()
    }
    fn name(&self) -> String {
        "wide".into()
    }
    fn fingerprint(&self) -> u64 {
        7
    }
}

#[test]
fn wide_vocabularies_use_u32_and_forced_u16_fails() {
    let dir = tempdir("wide");
    let path = dir.join("c.txt");
    std::fs::write(&path, "wide ids").unwrap();
    let source = TextSource::Text(path);
    let file = TokenFile::build(&source, &WideTokenizer, dir.join("t.bin"), false).unwrap();
    assert_eq!(file.header().width, TokenWidth::U32);
    let mut ids = Vec::new();
    file.extend_range(0, file.len(), &mut ids);
    assert_eq!(WideTokenizer.decode(&ids), "wide ids");
    let err = err_text(TokenFile::build_with_width(
        &source,
        &WideTokenizer,
        &dir.join("u.bin"),
        false,
        TokenWidth::U16,
    ));
    assert!(err.contains("70256") && err.contains("16-bit"), "{err}");
}

#[test]
fn truncated_or_foreign_token_files_are_rejected() {
    let dir = tempdir("corrupt");
    let text = dir.join("c.txt");
    std::fs::write(&text, "some text for the token file").unwrap();
    let path = dir.join("t.bin");
    TokenFile::build(
        &TextSource::Text(text.clone()),
        &ByteTokenizer,
        &path,
        false,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();

    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let err = err_text(TokenFile::open(&path));
    assert!(err.contains("t.bin") && err.contains("truncated"), "{err}");
    // The cache does not silently paper over corruption either.
    let err = err_text(TokenFile::open_or_build(
        &TextSource::Text(text),
        &ByteTokenizer,
        &path,
        false,
    ));
    assert!(err.contains("truncated"), "{err}");

    let mut foreign = bytes.clone();
    foreign[..8].copy_from_slice(b"GGUF\0\0\0\0");
    std::fs::write(&path, &foreign).unwrap();
    let err = err_text(TokenFile::open(&path));
    assert!(err.contains("bad magic"), "{err}");

    std::fs::write(&path, &bytes[..10]).unwrap();
    let err = err_text(TokenFile::open(&path));
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn batches_are_pure_functions_of_seed_step_and_split() {
    let dir = tempdir("batch");
    let path = dir.join("c.txt");
    // Distinct 3-digit numbers, so every window can be located in the corpus.
    let text: String = (0..2000).map(|i| format!("{:03} ", i % 1000)).collect();
    std::fs::write(&path, &text).unwrap();
    let tokens = TokenFile::build(
        &TextSource::Text(path),
        &ByteTokenizer,
        dir.join("t.bin"),
        false,
    )
    .unwrap();
    let n = tokens.len();
    let data = TextDataset::new(tokens, TextDataset::VAL_FRACTION).unwrap();
    assert_eq!(data.len(Split::Validation), n / 10);
    assert_eq!(
        data.range(Split::Train).end,
        data.range(Split::Validation).start
    );

    let (ctx, b) = (16, 4);
    let (x, y) = data.batch(Split::Train, 3, 42, b, ctx).unwrap();
    assert_eq!((x.len(), y.len()), (b * ctx, b * ctx));
    assert_eq!(
        data.batch(Split::Train, 3, 42, b, ctx).unwrap(),
        (x.clone(), y.clone())
    );
    assert_ne!(data.batch(Split::Train, 4, 42, b, ctx).unwrap().0, x);
    assert_ne!(data.batch(Split::Train, 3, 43, b, ctx).unwrap().0, x);
    let all: Vec<u32> = text.bytes().map(u32::from).collect();
    for r in 0..b {
        let row = &x[r * ctx..(r + 1) * ctx];
        assert_eq!(
            &y[r * ctx..(r + 1) * ctx - 1],
            &row[1..],
            "targets are shifted inputs"
        );
        let pos = all
            .windows(ctx + 1)
            .position(|w| w[..ctx] == *row && w[ctx] == y[(r + 1) * ctx - 1])
            .expect("a contiguous window of the corpus");
        assert!(pos + ctx < data.range(Split::Train).end + 1);
    }
    let (v, _) = data.batch(Split::Validation, 3, 42, b, ctx).unwrap();
    let val_text = &all[data.range(Split::Validation)];
    for r in 0..b {
        let row = &v[r * ctx..(r + 1) * ctx];
        assert!(
            val_text.windows(ctx).any(|w| w == row),
            "validation windows stay in the split"
        );
    }

    // Sequential validation batches cover the split without overlap.
    let mut covered = 0;
    let mut i = 0;
    while let Some(batch) = data.sequential_batch(Split::Validation, i, 3, ctx) {
        covered += batch.batch * ctx;
        i += 1;
    }
    assert_eq!(covered, (data.len(Split::Validation) - 1) / ctx * ctx);

    // A context longer than a split is a clear error.
    let err = err_text(data.check_context(data.len(Split::Validation)));
    assert!(err.contains("longer than the Validation split"), "{err}");
    let err = err_text(data.batch(Split::Train, 0, 0, 1, n));
    assert!(err.contains("does not fit"), "{err}");
    data.check_context(ctx).unwrap();
}
