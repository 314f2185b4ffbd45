//! Writing NumPy `.npy` files (format version 1.0) so Python users can `np.load`
//! embeddings and labels. Layout (numpy/lib/format.py): the magic `\x93NUMPY`, version
//! bytes 1, 0, a little-endian u16 header length, then an ASCII Python dict literal
//! padded with spaces and a final newline so the data starts at a multiple of 64 bytes,
//! then the array in C order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context};

/// Writes `data` as a C-order `float32` array (`'<f4'`) of the given shape.
pub fn write_npy_f32(path: impl AsRef<Path>, data: &[f32], shape: &[usize]) -> anyhow::Result<()> {
    write_npy(path.as_ref(), "<f4", shape, data.len(), |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Writes `data` as a C-order `int64` array (`'<i8'`) of the given shape.
pub fn write_npy_i64(path: impl AsRef<Path>, data: &[i64], shape: &[usize]) -> anyhow::Result<()> {
    write_npy(path.as_ref(), "<i8", shape, data.len(), |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// The header (magic through padding newline) of a version 1.0 `.npy` file.
fn header(descr: &str, shape: &[usize]) -> anyhow::Result<Vec<u8>> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    const PREFIX: usize = 10; // magic (6) + version (2) + header length (2)
    let total = (PREFIX + dict.len() + 1).div_ceil(64) * 64;
    dict.push_str(&" ".repeat(total - PREFIX - dict.len() - 1));
    dict.push('\n');
    let len = u16::try_from(dict.len())
        .ok()
        .with_context(|| format!("npy header too long for format 1.0 (shape {shape:?})"))?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    Ok(out)
}

fn write_npy(
    path: &Path,
    descr: &str,
    shape: &[usize],
    len: usize,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let elems = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
    ensure!(
        elems == Some(len),
        "writing {}: shape {shape:?} does not hold {len} values",
        path.display()
    );
    let header = header(descr, shape)?;
    let Some(name) = path.file_name() else {
        bail!("writing {}: not a file path", path.display());
    };
    // Write next to the target and rename, so a reader never sees a partial file.
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        w.write_all(&header)?;
        body(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })()
    .with_context(|| format!("writing {}", tmp.display()));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_formats_shapes() {
        for (shape, dims) in [
            (&[3usize, 4][..], "(3, 4)"),
            (&[7][..], "(7,)"),
            (&[][..], "()"),
            (&[2, 0, 5][..], "(2, 0, 5)"),
        ] {
            let h = header("<f4", shape).unwrap();
            assert_eq!(h.len() % 64, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
            let text = std::str::from_utf8(&h[10..]).unwrap();
            assert!(text.starts_with(&format!(
                "{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}"
            )));
            assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        }
    }
}
