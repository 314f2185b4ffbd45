//! GGUF parsing on files the tests write (every metadata type, alignment, every bad case),
//! dequantization of each block type against hand-computed values, the fixture's raw block
//! excerpts, and the real SmolLM2 file: offsets, metadata, dequantized excerpts and the
//! byte-level BPE tokenizer.

use std::path::PathBuf;

use selfsup::lm::bpe::GgufBpeTokenizer;
use selfsup::lm::gguf::{dequantize, f16_to_f32, GgmlType, GgufFile, GgufWriter, MetaValue};
use selfsup::lm::tokenizer::Tokenizer;
use selfsup::lm::weights::Weights;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn smollm2_path() -> PathBuf {
    let data = match std::env::var_os("SELFSUP_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/selfsup-data"),
    };
    let dir = data.join("smollm2");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
    });
    found.unwrap_or_else(|| {
        panic!(
            "SmolLM2 GGUF not found in {}: run `../shared/data/get.sh smollm2 minilm` \
             (from the repository root) first",
            dir.display()
        )
    })
}

fn fixture_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2_logits.json")).unwrap())
        .unwrap()
}

fn err_of(r: anyhow::Result<GgufFile>) -> String {
    match r {
        Ok(_) => panic!("parsing should fail"),
        Err(e) => format!("{e:#}"),
    }
}

fn all_types() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.f32", MetaValue::F32(1e-5)),
        ("t.bool", MetaValue::Bool(true)),
        ("t.str", MetaValue::Str("héllo <|im_start|>".into())),
        (
            "t.arr_str",
            MetaValue::Array(vec![
                MetaValue::Str("a".into()),
                MetaValue::Str("Ġb".into()),
            ]),
        ),
        (
            "t.arr_i32",
            MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(-3)]),
        ),
        (
            "t.arr_nested",
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::U8(1)]),
                MetaValue::Array(vec![MetaValue::U8(2), MetaValue::U8(3)]),
            ]),
        ),
        ("t.arr_empty", MetaValue::Array(vec![])),
        ("t.u64", MetaValue::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(i64::MIN)),
        ("t.f64", MetaValue::F64(-1.5e300)),
    ]
}

#[test]
fn metadata_of_every_type_round_trips() {
    let mut w = GgufWriter::new();
    for (k, v) in all_types() {
        w.metadata(k, v);
    }
    w.tensor_f32("a", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    w.tensor_f32("b", &[5], &[-1.0; 5]);
    let g = GgufFile::from_bytes(w.to_bytes(), "meta.gguf").unwrap();
    assert_eq!(g.version(), 3);
    for (k, v) in all_types() {
        assert_eq!(g.get(k), Some(&v), "{k}");
    }
    assert_eq!(g.metadata().len(), all_types().len());
    assert_eq!(g.get_usize("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_f64("t.f32").unwrap(), 1e-5f32 as f64);
    assert_eq!(g.get_str("t.str").unwrap(), "héllo <|im_start|>");
    assert_eq!(g.get_array("t.arr_i32").unwrap().len(), 2);
    let e = g.get_usize("t.i8").unwrap_err().to_string();
    assert!(e.contains("meta.gguf") && e.contains("t.i8"), "{e}");
    let e = g.get_str("nope").unwrap_err().to_string();
    assert!(e.contains("missing metadata key nope"), "{e}");

    // Default alignment 32: the data section and every tensor start on it.
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    let info = g.tensor_info("a").unwrap();
    assert_eq!(info.ne, vec![3, 2]);
    assert_eq!(info.shape(), vec![2, 3]);
    assert_eq!(info.ggml_type, GgmlType::F32);
    assert_eq!(
        g.tensor("a", &[2, 3]).unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    assert_eq!(g.tensor_file_offset("b").unwrap() % 32, 0);
    assert_eq!(g.dequantize("b").unwrap(), vec![-1.0; 5]);
    assert_eq!(
        g.tensor_infos()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn custom_alignment_and_version_2_are_read() {
    let mut w = GgufWriter::new().with_version(2);
    w.metadata("general.alignment", MetaValue::U32(64))
        .tensor_f32("x", &[3], &[1.0, 2.0, 3.0])
        .tensor_f32("y", &[1], &[7.0]);
    let bytes = w.to_bytes();
    let g = GgufFile::from_bytes(bytes.clone(), "aligned.gguf").unwrap();
    assert_eq!((g.version(), g.alignment()), (2, 64));
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor_file_offset("y").unwrap(), g.data_offset() + 64);
    assert_eq!(g.tensor_bytes("y").unwrap(), &7f32.to_le_bytes());
    assert_eq!(g.tensor("y", &[1]).unwrap(), vec![7.0]);

    // The same through a memory-mapped file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aligned.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensor("x", &[3]).unwrap(), vec![1.0, 2.0, 3.0]);
    assert!(g.source().ends_with("aligned.gguf"));
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

#[test]
fn half_and_bfloat_values() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24)); // smallest subnormal
    assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14)); // smallest normal
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    assert!(f16_to_f32(0xfc00).is_infinite() && f16_to_f32(0xfc00) < 0.0);
    assert!(f16_to_f32(0x7e00).is_nan());

    let f16: Vec<u8> = [0x3c00u16, 0xb800, 0x0001]
        .iter()
        .flat_map(|&h| le16(h))
        .collect();
    assert_eq!(
        dequantize(GgmlType::F16, &f16, 3).unwrap(),
        vec![1.0, -0.5, 2f32.powi(-24)]
    );
    let bf16: Vec<u8> = [0x3f80u16, 0xc0a0, 0x4049]
        .iter()
        .flat_map(|&h| le16(h))
        .collect();
    assert_eq!(
        dequantize(GgmlType::BF16, &bf16, 3).unwrap(),
        vec![1.0, -5.0, 3.140625]
    );
}

#[test]
fn q8_0_block_is_scale_times_signed_bytes() {
    // d = 0.5 (f16 0x3800); q_j = 8j - 128 covers -128..120.
    let mut b = le16(0x3800).to_vec();
    b.extend((0..32).map(|j| (8 * j - 128) as i8 as u8));
    let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    assert_eq!(y[0], -64.0);
    assert_eq!(y[16], 0.0);
    assert_eq!(y[31], 60.0);
    for (j, v) in y.iter().enumerate() {
        assert_eq!(*v, 0.5 * (8 * j as i32 - 128) as f32);
    }
}

#[test]
fn q4_0_block_is_scale_times_nibble_minus_8() {
    // d = 0.25 (0x3400); byte j holds q_j = j (low nibble) and q_{j+16} = 15 - j (high).
    let mut b = le16(0x3400).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    assert_eq!((y[0], y[8], y[15]), (-2.0, 0.0, 1.75));
    assert_eq!((y[16], y[31]), (1.75, -2.0));
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.25);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 0.25);
    }
}

#[test]
fn q4_1_block_is_scale_times_nibble_plus_min() {
    // Two blocks: d = 0.5, m = -1 (0xbc00); then d = 2, m = 0.25 (0x3400).
    let mut b = Vec::new();
    b.extend(le16(0x3800));
    b.extend(le16(0xbc00));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b.extend(le16(0x4000));
    b.extend(le16(0x3400));
    b.extend([0xf0u8; 16]);
    let y = dequantize(GgmlType::Q4_1, &b, 64).unwrap();
    assert_eq!((y[0], y[15], y[16], y[31]), (-1.0, 6.5, 6.5, -1.0));
    for j in 0..16 {
        assert_eq!(y[j], 0.5 * j as f32 - 1.0);
        assert_eq!(y[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        assert_eq!(y[32 + j], 0.25);
        assert_eq!(y[48 + j], 30.25);
    }
}

/// Packs 8 six-bit scales and mins the way `get_scale_min_k4` unpacks them.
fn pack_k4_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    q
}

#[test]
fn q4_k_super_block_uses_six_bit_scales_and_mins() {
    // d = 1, dmin = 0.5; scales/mins above 15 exercise the high bits of sub-blocks 4..8.
    let sc = [1u8, 2, 3, 63, 17, 40, 5, 33];
    let m = [0u8, 1, 7, 2, 63, 18, 0, 47];
    let q: Vec<u8> = (0..256).map(|e| ((e * 7 + 3) % 16) as u8).collect();
    let mut b = Vec::new();
    b.extend(le16(0x3c00));
    b.extend(le16(0x3800));
    b.extend(pack_k4_scales(sc, m));
    // 64-element group g: bytes 32g..32g+32 hold elements 64g..64g+32 in the low nibbles
    // and 64g+32..64g+64 in the high nibbles.
    for g in 0..4 {
        for l in 0..32 {
            b.push(q[64 * g + l] | (q[64 * g + 32 + l] << 4));
        }
    }
    assert_eq!(b.len(), 144);
    let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
    for (e, &v) in y.iter().enumerate() {
        let sub = e / 32;
        assert_eq!(
            v,
            sc[sub] as f32 * q[e] as f32 - 0.5 * m[sub] as f32,
            "element {e}"
        );
    }
    // A literal: element 130 is in sub-block 4 (scale 17, min 63), q = (130·7+3) % 16 = 1.
    assert_eq!(y[130], 17.0 - 31.5);
}

#[test]
fn q6_k_super_block_uses_signed_scales_and_six_bit_values() {
    // d = 0.5; 16 signed scales; q in 0..64 (stored), value q - 32.
    let d = 0.5f32;
    let sc: [i8; 16] = [1, -2, 3, 4, -5, 6, 7, 8, 9, 10, -11, 12, 13, 14, 15, -128];
    let q: Vec<u8> = (0..256).map(|e| ((e * 37 + 11) % 64) as u8).collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    // Half n (128 elements), quarter k (32 elements), index l: low 4 bits go to
    // ql[64n + 32(k&1) + l] (low nibble for k < 2, high for k >= 2), the top 2 bits to
    // qh[32n + l] at bit 2k; the scale of the element is sc[8n + 2k + l/16].
    for n in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let v = q[128 * n + 32 * k + l];
                let lo = &mut ql[64 * n + 32 * (k & 1) + l];
                *lo |= if k < 2 { v & 0x0f } else { (v & 0x0f) << 4 };
                qh[32 * n + l] |= (v >> 4) << (2 * k);
            }
        }
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(le16(0x3800));
    assert_eq!(b.len(), 210);
    let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
    for (e, &v) in y.iter().enumerate() {
        let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let s = sc[8 * n + 2 * k + l / 16] as f32;
        assert_eq!(v, d * s * (q[e] as f32 - 32.0), "element {e}");
    }
    // A literal: element 255 has scale -128 and q = (255·37+11) % 64 = 38 → 0.5·-128·6.
    assert_eq!(y[255], -384.0);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ggml_type(name: &str) -> GgmlType {
    [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ]
    .into_iter()
    .find(|t| t.name() == name)
    .unwrap_or_else(|| panic!("fixture type {name}"))
}

/// The fixture's raw block bytes dequantize bit-exactly to its values (no model file needed).
#[test]
fn fixture_block_excerpts_dequantize_exactly() {
    let fx = fixture_json();
    let tensors =
        Weights::from_file(fixtures().join(fx["tensors_file"].as_str().unwrap())).unwrap();
    for c in fx["dequant_checks"].as_array().unwrap() {
        let name = c["tensor"].as_str().unwrap();
        let ty = ggml_type(c["type"].as_str().unwrap());
        let bytes = hex(c["first_bytes_hex"].as_str().unwrap());
        let n = bytes.len() / ty.block_bytes() * ty.block_size();
        let got = dequantize(ty, &bytes, n).unwrap();
        let want: Vec<f32> = c["first64_values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let key = c["safetensors_key"].as_str().unwrap();
        let stored = tensors.values(key, &[want.len()]).unwrap();
        assert_eq!(stored, want.as_slice(), "{key} vs JSON");
        let m = n.min(want.len());
        assert!(m >= 32, "{name}: excerpt too short");
        for i in 0..m {
            assert_eq!(got[i].to_bits(), want[i].to_bits(), "{name}[{i}]");
        }
    }
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.metadata("general.name", MetaValue::Str("tiny".into()))
        .metadata(
            "tokens",
            MetaValue::Array(vec![MetaValue::Str("ab".into()); 3]),
        );
    let mut q8 = le16(0x3c00).to_vec();
    q8.extend([1u8; 32]);
    w.tensor_f32("small", &[2, 2], &[1.0, 2.0, 3.0, 4.0])
        .tensor_raw("weights.q8", &[32, 1], GgmlType::Q8_0.id(), q8);
    w.to_bytes()
}

#[test]
fn bad_files_give_errors_naming_the_file_and_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_file();
    let g = GgufFile::open(write_tmp(&dir, "good.gguf", &good)).unwrap();
    assert_eq!(g.dequantize("weights.q8").unwrap(), vec![1.0; 32]);

    // Truncated anywhere: in the header, the metadata, the tensor infos, the data.
    let data_start = g.data_offset();
    for cut in [0, 3, 10, 30, 60, data_start - 10, good.len() - 1] {
        let p = write_tmp(&dir, "cut.gguf", &good[..cut]);
        let e = err_of(GgufFile::open(&p));
        assert!(e.contains("cut.gguf"), "cut {cut}: {e}");
        assert!(e.contains("truncated"), "cut {cut}: {e}");
    }
    let p = write_tmp(&dir, "cut.gguf", &good[..good.len() - 1]);
    let e = err_of(GgufFile::open(&p));
    assert!(e.contains("tensor weights.q8"), "{e}");

    // Wrong magic.
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    let e = err_of(GgufFile::open(write_tmp(&dir, "magic.gguf", &bad)));
    assert!(
        e.contains("magic.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );

    // Unsupported versions.
    for v in [1u32, 4] {
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&v.to_le_bytes());
        let e = err_of(GgufFile::open(write_tmp(&dir, "version.gguf", &bad)));
        assert!(
            e.contains("version.gguf") && e.contains(&format!("unsupported GGUF version {v}")),
            "{e}"
        );
    }

    // Unknown and unsupported tensor types.
    for (id, says) in [(99u32, "unknown ggml tensor type 99"), (13, "Q5_K")] {
        let mut w = GgufWriter::new();
        w.tensor_f32("fine", &[1], &[0.0])
            .tensor_raw("odd.weight", &[256], id, vec![0; 256]);
        let e = err_of(GgufFile::open(write_tmp(&dir, "type.gguf", &w.to_bytes())));
        assert!(
            e.contains("type.gguf") && e.contains("odd.weight") && e.contains(says),
            "{e}"
        );
    }

    // An unknown metadata value type.
    let mut w = GgufWriter::new();
    w.metadata("k", MetaValue::U8(1));
    let mut bad = w.to_bytes();
    let at = 24 + 8 + 1; // header, key length, key
    bad[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    let e = err_of(GgufFile::open(write_tmp(&dir, "value.gguf", &bad)));
    assert!(
        e.contains("value.gguf") && e.contains("metadata k") && e.contains("77"),
        "{e}"
    );

    // A missing tensor, and a shape that disagrees with what the caller expects.
    let e = g.dequantize("nope").unwrap_err().to_string();
    assert!(
        e.contains("good.gguf") && e.contains("missing tensor nope"),
        "{e}"
    );
    let e = g.tensor("small", &[4]).unwrap_err().to_string();
    assert!(
        e.contains("good.gguf") && e.contains("tensor small has shape [2, 2]") && e.contains("[4]"),
        "{e}"
    );

    // A row that is not whole blocks.
    let mut w = GgufWriter::new();
    w.tensor_raw("rows.weight", &[16, 2], GgmlType::Q4_0.id(), vec![0; 36]);
    let e = err_of(GgufFile::from_bytes(w.to_bytes(), "rows.gguf"));
    assert!(e.contains("rows.gguf") && e.contains("rows.weight"), "{e}");

    // A file that does not exist.
    let e = err_of(GgufFile::open(dir.path().join("absent.gguf")));
    assert!(e.contains("absent.gguf"), "{e}");
}

/// GPT-2's byte↔unicode table: printable Latin-1 bytes stand for themselves, the others
/// are moved to U+0100 and up in byte order.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable(b) {
        b as char
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }
}

fn tiny_tokenizer(pre: &str, model: &str) -> anyhow::Result<GgufBpeTokenizer> {
    let mut tokens: Vec<String> = vec!["<|end|>".into()];
    tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    let merges = ["Ġ t", "Ġt h", "Ġth e", "1 2", "Ġ Ġ"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    let mut types = vec![MetaValue::I32(3)];
    types.extend((1..tokens.len()).map(|_| MetaValue::I32(1)));
    let mut w = GgufWriter::new();
    w.metadata("tokenizer.ggml.model", MetaValue::Str(model.into()))
        .metadata("tokenizer.ggml.pre", MetaValue::Str(pre.into()))
        .metadata(
            "tokenizer.ggml.tokens",
            MetaValue::Array(tokens.into_iter().map(MetaValue::Str).collect()),
        )
        .metadata("tokenizer.ggml.token_type", MetaValue::Array(types))
        .metadata(
            "tokenizer.ggml.merges",
            MetaValue::Array(
                merges
                    .iter()
                    .map(|m| MetaValue::Str(m.to_string()))
                    .collect(),
            ),
        )
        .metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(0));
    let g = GgufFile::from_bytes(w.to_bytes(), "tok.gguf")?;
    GgufBpeTokenizer::from_gguf(&g)
}

#[test]
fn bpe_from_metadata_merges_bytes_splits_digits_and_keeps_special_tokens() {
    let smol = tiny_tokenizer("smollm", "gpt2").unwrap();
    let gpt2 = tiny_tokenizer("gpt2", "gpt2").unwrap();
    let id = |t: &GgufBpeTokenizer, s: &str| t.token_id(s).unwrap();
    // Merges apply within a pre-token: " the" is one token.
    assert_eq!(smol.encode(" the").unwrap(), vec![id(&smol, "Ġthe")]);
    // smollm isolates digits, so the merge "1 2" never applies; GPT-2's regex keeps "12".
    assert_eq!(
        smol.encode("12").unwrap(),
        vec![id(&smol, "1"), id(&smol, "2")]
    );
    assert_eq!(gpt2.encode("12").unwrap(), vec![id(&gpt2, "12")]);
    // A special token written in the text is one id; bytes map through the table.
    let ids = smol.encode("é<|end|> the").unwrap();
    assert_eq!(
        ids,
        vec![id(&smol, "Ã"), id(&smol, "©"), 0, id(&smol, "Ġthe")]
    );
    assert_eq!(smol.decode(&ids), "é<|end|> the");
    assert_eq!(smol.special_tokens().eos, Some(0));
    // Round trips, including bytes outside any merge and whitespace runs.
    for s in ["naïve 日本語 🙂\n\t  x", "   12  3", ""] {
        assert_eq!(smol.decode(&smol.encode(s).unwrap()), s);
        assert_eq!(gpt2.decode(&gpt2.encode(s).unwrap()), s);
    }
    // Half a UTF-8 character and an unknown id decode to U+FFFD.
    let e = smol.encode("é").unwrap();
    assert_eq!(smol.decode(&e[..1]), "\u{FFFD}");
    assert_eq!(smol.decode(&[id(&smol, "a"), 9999]), "a\u{FFFD}");

    let e = tiny_tokenizer("qwen2", "gpt2").unwrap_err().to_string();
    assert!(e.contains("tok.gguf") && e.contains("qwen2"), "{e}");
    let e = tiny_tokenizer("smollm", "llama").unwrap_err().to_string();
    assert!(e.contains("tok.gguf") && e.contains("llama"), "{e}");
}

/// The real file: data offsets, metadata and dequantized excerpts as in the fixture.
#[test]
fn smollm2_file_matches_fixture_offsets_metadata_and_excerpts() {
    let g = GgufFile::open(smollm2_path()).unwrap();
    let fx = fixture_json();
    let meta = fx["model"]["gguf_metadata"].as_object().unwrap();
    assert_eq!(g.version() as u64, meta["GGUF.version"].as_u64().unwrap());
    assert_eq!(
        g.tensor_infos().len() as u64,
        meta["GGUF.tensor_count"].as_u64().unwrap()
    );
    assert_eq!(
        g.metadata().len() as u64,
        meta["GGUF.kv_count"].as_u64().unwrap()
    );
    for (k, want) in meta.iter().filter(|(k, _)| !k.starts_with("GGUF.")) {
        let got = g.get(k).unwrap_or_else(|| panic!("missing {k}"));
        let ok = match want {
            Value::String(s) => got.as_str() == Some(s.as_str()),
            Value::Bool(b) => got.as_bool() == Some(*b),
            Value::Number(n) => got.as_f64() == n.as_f64(),
            Value::Array(a) => got.as_array().is_some_and(|g| {
                g.len() == a.len() && g.iter().zip(a).all(|(x, y)| x.as_str() == y.as_str())
            }),
            _ => false,
        };
        assert!(ok, "{k}: {got:?} vs {want}");
    }
    let tensors =
        Weights::from_file(fixtures().join(fx["tensors_file"].as_str().unwrap())).unwrap();
    for c in fx["dequant_checks"].as_array().unwrap() {
        let name = c["tensor"].as_str().unwrap();
        let info = g.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type.name(), c["type"].as_str().unwrap(), "{name}");
        let ne: Vec<u64> = c["gguf_shape_ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(info.ne, ne, "{name}");
        assert_eq!(
            g.tensor_file_offset(name).unwrap() as u64,
            c["file_offset_of_data"].as_u64().unwrap(),
            "{name}"
        );
        let raw = hex(c["first_bytes_hex"].as_str().unwrap());
        assert_eq!(
            &g.tensor_bytes(name).unwrap()[..raw.len()],
            raw.as_slice(),
            "{name}"
        );
        let want = tensors
            .values(c["safetensors_key"].as_str().unwrap(), &[64])
            .unwrap();
        let got = g.dequantize(name).unwrap();
        assert_eq!(got.len(), info.n_elements());
        for i in 0..64 {
            assert_eq!(got[i].to_bits(), want[i].to_bits(), "{name}[{i}]");
        }
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tokenizer from the real file: every prompt's and continuation's ids and token
/// strings, round trips, and the quirks listed in the fixture.
#[test]
fn smollm2_tokenizer_reproduces_fixture_ids() {
    let g = GgufFile::open(smollm2_path()).unwrap();
    let tok = GgufBpeTokenizer::from_gguf(&g).unwrap();
    let fx = fixture_json();
    assert_eq!(
        tok.vocab_size(),
        g.get_array("tokenizer.ggml.tokens").unwrap().len()
    );
    assert_eq!(
        tok.special_tokens().eos.map(u64::from),
        g.get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64())
    );
    for p in fx["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = p["prompt"].as_str().unwrap();
        let ids = tok.encode(prompt).unwrap();
        assert_eq!(ids, ids_of(&p["prompt_ids"]), "{name}");
        let strings: Vec<&str> = ids.iter().map(|&i| tok.token(i).unwrap()).collect();
        let want: Vec<&str> = p["prompt_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(strings, want, "{name}");
        assert_eq!(tok.decode(&ids), prompt, "{name}");
        let cont = p["continuation"].as_str().unwrap();
        assert_eq!(
            tok.encode(cont).unwrap(),
            ids_of(&p["continuation_ids"]),
            "{name}"
        );
        let joint = tok.encode(&format!("{prompt}{cont}")).unwrap();
        let same = joint == [ids.clone(), ids_of(&p["continuation_ids"])].concat();
        assert_eq!(
            same,
            p["tokenize_prompt_plus_continuation_jointly_gives_same_ids"]
                .as_bool()
                .unwrap(),
            "{name}"
        );
        // Greedy ids decode to the fixture's text, special tokens kept.
        assert_eq!(
            tok.decode(&ids_of(&p["greedy_ids"])),
            p["greedy_text"].as_str().unwrap(),
            "{name}"
        );
    }
    // Quirks: a space before a digit is its own token, digits are single tokens, a newline
    // with indentation is one token and the last space goes with the word, chat markers are
    // single tokens, no BOS is added.
    let pieces = |s: &str| -> Vec<String> {
        tok.encode(s)
            .unwrap()
            .iter()
            .map(|&i| tok.decode(&[i]))
            .collect()
    };
    assert_eq!(pieces(" 42"), [" ", "4", "2"]);
    assert_eq!(pieces("2024"), ["2", "0", "2", "4"]);
    assert_eq!(pieces("\n    if"), ["\n   ", " if"]);
    assert_eq!(pieces("<|im_start|>user"), ["<|im_start|>", "user"]);
    let (bos, add_bos) = tok.bos();
    assert!(!add_bos);
    assert_ne!(tok.encode("Hello").unwrap().first().copied(), bos);
    for s in [
        "Grüße aus Zürich — 日本語 🙂",
        "tabs\tand\r\nnewlines  ",
        "<|im_end|>\n",
    ] {
        assert_eq!(tok.decode(&tok.encode(s).unwrap()), s);
    }
}
