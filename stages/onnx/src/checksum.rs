//! The weights' checksum an export records in the model's metadata (`weights_sha256`) and every
//! load verifies: a file whose weight bytes were damaged (a bad copy, a flipped bit on disk, an
//! edit) is refused instead of embedding wrong features without a word.
//!
//! The digest is SHA-256 over each initializer of the graph, in order: its name as UTF-8, a
//! zero byte, each dimension as a little-endian 64-bit integer, then its raw data. With the
//! `onnx` Python package:
//!
//! ```python
//! import hashlib, onnx, struct
//! m = onnx.load("encoder.onnx")
//! h = hashlib.sha256()
//! for t in m.graph.initializer:
//!     h.update(t.name.encode() + b"\0" + struct.pack(f"<{len(t.dims)}q", *t.dims) + t.raw_data)
//! assert h.hexdigest() == {p.key: p.value for p in m.metadata_props}["weights_sha256"]
//! ```

use prost::Message;
use sha2::{Digest, Sha256};

use crate::proto::{GraphProto, ModelProto};

/// The metadata key of the checksum.
pub const KEY: &str = "weights_sha256";

/// The hex SHA-256 of a graph's initializers (see the module docs).
pub fn weights_sha256(graph: &GraphProto) -> String {
    let mut h = Sha256::new();
    for t in &graph.initializer {
        h.update(t.name.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        for d in &t.dims {
            h.update(d.to_le_bytes());
        }
        h.update(t.raw_data.as_deref().unwrap_or(&[]));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A model whose weights no longer hash to the checksum recorded at export.
#[derive(Debug, thiserror::Error)]
#[error(
    "its weights do not match the checksum recorded when it was exported (`{KEY}` {recorded}, the weights hash to {actual}): the file was damaged or modified after export; export it again"
)]
pub struct ChecksumMismatch {
    /// The metadata's digest.
    pub recorded: String,
    /// The weights' digest.
    pub actual: String,
}

/// Check a serialised model's weights against the checksum in its metadata. A model without
/// one (exported elsewhere, or by an older version) passes: ONNX Runtime judges it alone.
///
/// # Errors
/// The recorded and computed digests, when they differ.
pub fn verify(bytes: &[u8]) -> Result<(), ChecksumMismatch> {
    let Ok(model) = ModelProto::decode(bytes) else {
        return Ok(());
    };
    let Some(recorded) = model
        .metadata_props
        .iter()
        .find(|p| p.key.as_deref() == Some(KEY))
        .and_then(|p| p.value.clone())
    else {
        return Ok(());
    };
    let actual = model.graph.as_ref().map(weights_sha256).unwrap_or_default();
    if actual == recorded {
        Ok(())
    } else {
        Err(ChecksumMismatch { recorded, actual })
    }
}
