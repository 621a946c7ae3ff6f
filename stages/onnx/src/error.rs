//! The ONNX crate's errors.

use std::path::PathBuf;

use crate::verify::Comparison;

/// Why an export, a verification or an embedding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] simclr_stage_model::ModelError),
    /// ONNX Runtime and candle disagree by more than the tolerance; nothing was written.
    #[error(
        "verification failed: ONNX Runtime differs from candle by {worst:.3e} (tolerance {tolerance:.0e}, --tolerance to change it); nothing written\n{}",
        table(.rows)
    )]
    Verification {
        /// The largest difference.
        worst: f64,
        /// The tolerance it exceeded.
        tolerance: f64,
        /// Every comparison made.
        rows: Vec<Comparison>,
    },
    /// A file (model, input, checkpoint) that cannot be used, and why.
    #[error("{}: {message}", path.display())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Any other failure, described in words (a graph the writer refuses, ONNX Runtime's
    /// own errors, inputs of the wrong shape).
    #[error("{0}")]
    Message(String),
}

impl From<String> for OnnxError {
    fn from(message: String) -> Self {
        Self::Message(message)
    }
}

impl OnnxError {
    /// An error about `path`.
    pub fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

fn table(rows: &[Comparison]) -> String {
    rows.iter()
        .map(|c| format!("  {c}"))
        .collect::<Vec<_>>()
        .join("\n")
}
