//! The error a stage returns to the runtime.

use std::path::PathBuf;

/// Why a stage stopped. The runtime adds the stage id and kind when it reports one, so the
/// text here names the values involved, not the stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// A failure described in words (a bad shape, an impossible parameter combination).
    #[error("{0}")]
    Message(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stage received a message kind it does not handle. The graph is type-checked before
    /// it runs, so this is a bug in a stage, not a user error.
    #[error("expected a {expected} message, got {got}")]
    UnexpectedMessage {
        /// What the stage handles.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The stage emitted a message of a kind other than the one its kind declares.
    #[error("emitted a {got} message but the kind declares {declared} output")]
    WrongOutput {
        /// The declared output kind.
        declared: &'static str,
        /// What was emitted.
        got: &'static str,
    },
    /// The stage panicked; the runtime caught it. The text is the panic payload.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The pipeline is shutting down because another stage failed; not a failure of this one.
    #[error("cancelled")]
    Cancelled,
    /// Every consumer of this stage's output has gone away.
    #[error("all downstream stages have stopped")]
    DownstreamClosed,
    /// Any other error, with its cause chain.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl StageError {
    /// A failure described in words.
    pub fn msg(text: impl Into<String>) -> Self {
        Self::Message(text.into())
    }

    /// Whether this error is a consequence of shutdown rather than a failure of its own.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Self::Cancelled | Self::DownstreamClosed)
    }
}
