//! The model crate's errors.

use std::path::PathBuf;

/// Why a model could not be described, built or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A candle operation failed while doing `what`.
    #[error("{what}")]
    Candle {
        /// What was being done (`cannot build the encoder`).
        what: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// A checkpoint names an encoder kind that is not in the list.
    #[error("`{kind}` is not an encoder kind (the encoders are: {known})")]
    UnknownEncoder {
        /// The kind found.
        kind: String,
        /// The kinds in the list.
        known: String,
    },
    /// An encoder's recorded parameters do not parse.
    #[error("{kind}")]
    Spec {
        /// The encoder kind.
        kind: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// An encoder's recorded parameters are out of range.
    #[error("{kind}: {message}")]
    Invalid {
        /// The encoder kind.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint (or one of its files) that cannot be used.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file that cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents cannot be used: `path: what`, then the cause (`state.json: not a
    /// checkpoint state: expected value at line 1 column 1`).
    #[error("{}{}", path.display(), if what.is_empty() { String::new() } else { format!(": {what}") })]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What was being done or found (may be empty: the cause says it).
        what: String,
        /// Why.
        #[source]
        source: simclr_core::BoxError,
    },
    /// A device that cannot be used (`device `cuda`: this build has no CUDA support…`).
    #[error("device `{spec}`: {message}")]
    Device {
        /// The device as the definition or the command line names it.
        spec: simclr_core::DeviceSpec,
        /// What is wrong, with the fix.
        message: String,
    },
    /// A failure inside the checkpoint (or run folder) `path`: its text is the folder's name,
    /// the cause follows.
    #[error("{}", path.display())]
    In {
        /// The checkpoint folder.
        path: PathBuf,
        /// What failed there.
        #[source]
        source: Box<ModelError>,
    },
    /// A variable map whose lock a panicking thread left poisoned.
    #[error("variable map poisoned")]
    Poisoned,
}

impl ModelError {
    /// `path: what: cause` for a file whose contents cannot be used.
    pub fn unreadable<E: Into<simclr_core::BoxError>>(
        path: &std::path::Path,
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let (path, what) = (path.to_owned(), what.into());
        move |e| Self::Unreadable {
            path,
            what,
            source: e.into(),
        }
    }

    /// This error, as one inside the checkpoint folder `path`.
    #[must_use]
    pub fn inside(self, path: &std::path::Path) -> Self {
        Self::In {
            path: path.to_owned(),
            source: Box::new(self),
        }
    }

    /// `cannot read path: cause`.
    pub fn read(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Read { path, source }
    }

    /// A candle failure while doing `what`.
    pub fn candle(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let what = what.into();
        move |source| Self::Candle { what, source }
    }
}

pub use simclr_core::error::chain;

impl From<ModelError> for simclr_core::StageError {
    fn from(error: ModelError) -> Self {
        Self::other(error)
    }
}
