//! .npy export: the bytes follow NumPy's format 1.0 exactly (checked by hand, no Python).

use std::path::PathBuf;

use selfsup::eval::{write_npy_f32, write_npy_i64};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("selfsup-eval-npy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Splits a .npy file into (header dict text, data bytes), checking the preamble.
fn parse(bytes: &[u8]) -> (String, &[u8]) {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(&bytes[6..8], &[1, 0], "format version 1.0");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "data aligned to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.ends_with('\n'));
    (header.trim_end().to_string(), &bytes[10 + len..])
}

#[test]
fn writes_float32_matrices() {
    let dir = scratch_dir("f32");
    let path = dir.join("embeddings.npy");
    let data = [1.0f32, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 1e30];
    write_npy_f32(&path, &data, &[2, 3]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (header, body) = parse(&bytes);
    assert_eq!(
        header,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    );
    let back: Vec<f32> = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(back, data);
    // Only the file itself: the temporary file was renamed away.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["embeddings.npy"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn writes_int64_vectors_and_overwrites() {
    let dir = scratch_dir("i64");
    let path = dir.join("labels.npy");
    write_npy_i64(&path, &[9, 9], &[2]).unwrap();
    let data = [0i64, 7, -1, i64::MAX];
    write_npy_i64(&path, &data, &[4]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (header, body) = parse(&bytes);
    assert_eq!(
        header,
        "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }"
    );
    let back: Vec<i64> = body
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(back, data);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_name_the_file() {
    let dir = scratch_dir("err");
    let path = dir.join("x.npy");
    let e = write_npy_f32(&path, &[1.0; 5], &[2, 3]).unwrap_err();
    assert!(format!("{e:#}").contains("shape [2, 3] does not hold 5 values"));
    assert!(!path.exists());
    let missing = dir.join("no-such-dir").join("x.npy");
    let e = write_npy_f32(&missing, &[1.0], &[1]).unwrap_err();
    assert!(format!("{e:#}").contains("no-such-dir"), "{e:#}");
    std::fs::remove_dir_all(dir).unwrap();
}
