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
    /// Images that cannot be read.
    #[error(transparent)]
    Data(#[from] simclr_core::DataError),
    /// Preprocessing the model's metadata or the run describes that cannot be built.
    #[error(transparent)]
    Preprocessing(#[from] simclr_stage_eval::EvalError),
    /// The run's data cannot be read here (shared: the same failure may be reported more
    /// than once).
    #[error(transparent)]
    Eval(std::sync::Arc<simclr_stage_eval::EvalError>),
    /// No usable ONNX Runtime library: where it was looked for and what to install.
    #[error("{0}")]
    NoRuntime(String),
    /// ONNX Runtime refused: `what` (`ONNX Runtime`, `model.onnx: ONNX Runtime cannot load
    /// it`), then its error.
    #[error("{what}")]
    Runtime {
        /// What was being done.
        what: String,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
    /// A candle operation failed while doing `what`.
    #[error("{what}")]
    Candle {
        /// What was being done.
        what: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// A file that cannot be read, written or created: `what` (`cannot write out.npy`), then
    /// the operating system's error.
    #[error("{what}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A failure concerning `path` (the checkpoint exported): its text is the path's, the
    /// cause follows.
    #[error("{}", path.display())]
    In {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<OnnxError>,
    },
    /// Any other failure, described in words (a graph the writer refuses, ONNX Runtime's
    /// own errors, inputs of the wrong shape).
    #[error("{0}")]
    Message(String),
}

impl OnnxError {
    /// An ONNX Runtime failure while doing `what`.
    pub fn runtime<R>(what: impl Into<String>) -> impl FnOnce(ort::Error<R>) -> Self
    where
        ort::Error: From<ort::Error<R>>,
    {
        let what = what.into();
        move |source| Self::Runtime {
            what,
            source: source.into(),
        }
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

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
