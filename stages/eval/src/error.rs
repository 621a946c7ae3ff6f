//! The evaluation crate's errors.

/// Why an evaluation could not read its data or score a model. The text is the error's own;
/// the cause is its [`std::error::Error::source`], printed after it by the command line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The source's data cannot be read.
    #[error(transparent)]
    Data(#[from] simclr_core::DataError),
    /// A definition (a checkpoint's copy) that does not validate here.
    #[error(transparent)]
    Definition(#[from] simclr_config::Diagnostics),
    /// The model cannot be loaded or used.
    #[error(transparent)]
    Model(#[from] simclr_stage_model::ModelError),
    /// A file that cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A candle operation failed while doing `what`.
    #[error("{what}")]
    Candle {
        /// What was being done (`encoder forward`).
        what: &'static str,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// Inputs evaluation cannot use (mismatched sizes, unlabelled items, bad settings).
    #[error("{0}")]
    Invalid(String),
    /// `what` failed because of `source` (`cannot open the test split`, a file's name).
    #[error("{what}")]
    Context {
        /// What was being done, or the file involved.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<EvalError>,
    },
}

impl EvalError {
    /// A candle failure while doing `what`.
    pub fn candle(what: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |source| Self::Candle { what, source }
    }

    /// This error as the cause of `what` failing.
    #[must_use]
    pub fn context(self, what: impl Into<String>) -> Self {
        Self::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }
}

impl From<EvalError> for simclr_core::StageError {
    fn from(error: EvalError) -> Self {
        Self::other(error)
    }
}
