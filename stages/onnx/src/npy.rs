//! NumPy `.npy` files (format 1.0) of float32: what `embed` writes and reads.

use std::path::Path;

use crate::error::OnnxError;

/// Write `data` (row-major, shape `dims`) as a little-endian float32 `.npy`, atomically
/// (a temporary file renamed into place).
///
/// # Errors
/// A size that does not match `dims`, or a write failure (with the path).
pub fn write_f32(path: &Path, dims: &[usize], data: &[f32]) -> Result<(), OnnxError> {
    if dims.iter().product::<usize>() != data.len() {
        return Err(OnnxError::file(
            path,
            format!("{} values do not make shape {dims:?}", data.len()),
        ));
    }
    let shape = match dims {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.div_ceil(64) * 64 - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::files::write_atomic(path, &bytes)
}

/// Read a float32 `.npy` (little-endian, C order): shape and values.
///
/// # Errors
/// Not an `.npy`, another dtype, Fortran order, or a truncated file; the message names the file.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), OnnxError> {
    let fail = |m: String| OnnxError::file(path, m);
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(fail("not a .npy file".into()));
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 | 3 => return Err(fail("truncated header".into())),
        v => return Err(fail(format!(".npy format version {v} is not supported"))),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| fail("truncated header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| fail("no 'descr' in the header".into()))?;
    if !(descr.starts_with("'<f4'") || descr.starts_with("'=f4'")) {
        let found = descr.split(',').next().unwrap_or(descr);
        return Err(fail(format!(
            "dtype {found} is not float32 ('<f4'); convert with `a.astype(np.float32)`"
        )));
    }
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(fail(
            "Fortran order is not supported; save np.ascontiguousarray(a)".into(),
        ));
    }
    let shape = field("shape").ok_or_else(|| fail("no 'shape' in the header".into()))?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| fail("malformed shape".into()))?;
    let dims = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| fail(format!("malformed shape ({inner})")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body = &bytes[start + len..];
    let needed = dims
        .iter()
        .try_fold(4usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fail(format!("shape {dims:?} is too large")))?;
    if body.len() != needed {
        return Err(fail(format!(
            "shape {dims:?} needs {needed} bytes of data, the file has {}",
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("simclr-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join(name)
    }

    #[test]
    fn round_trips_with_an_aligned_header() {
        for dims in [vec![5], vec![2, 3], vec![2, 1, 3, 4], vec![0, 7]] {
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let path = scratch(&format!("rt-{}.npy", dims.len()));
            write_f32(&path, &dims, &data).expect("write");
            let bytes = std::fs::read(&path).expect("read");
            let header = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
            assert_eq!((10 + header) % 64, 0, "data starts 64-byte aligned");
            assert_eq!(read_f32(&path).expect("read"), (dims, data));
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_naming_the_cause() {
        let path = scratch("bad.npy");
        let cases: [(&str, &str); 3] = [
            (
                "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
                "Fortran",
            ),
            (
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                "not float32",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
                "too large",
            ),
        ];
        for (header, expect) in cases {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend((header.len() as u16).to_le_bytes());
            bytes.extend(header.as_bytes());
            bytes.extend([0u8; 8]);
            std::fs::write(&path, &bytes).expect("write");
            let err = read_f32(&path).expect_err(expect);
            let err = err.to_string();
            assert!(err.contains(expect) && err.contains("bad.npy"), "{err}");
        }
        std::fs::write(&path, b"\x93NUMPY\x02\x00\x10\x00\x00").expect("write");
        assert!(
            read_f32(&path)
                .expect_err("short")
                .to_string()
                .contains("truncated")
        );
        let err = write_f32(&path, &[2, 2], &[1.0])
            .expect_err("size")
            .to_string();
        assert!(err.contains("do not make shape"), "{err}");
    }
}
