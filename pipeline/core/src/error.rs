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
    /// `what` failed because of `cause` (`cannot draw loss.png`, the file's name); the text is
    /// `what: ` and the cause's whole chain.
    #[error("{what}: {}", chain(&**.cause))]
    Caused {
        /// What was being done.
        what: String,
        /// Why it failed.
        cause: crate::BoxError,
    },
    /// Any other error. Its text is the error's whole cause chain (`a: b: c`), so the
    /// runtime's one-line report keeps every cause; [`StageError::cause`] gives the error
    /// itself (to downcast).
    #[error("{}", chain(&**.0))]
    Other(crate::BoxError),
}

impl From<crate::DataError> for StageError {
    fn from(error: crate::DataError) -> Self {
        Self::Other(Box::new(error))
    }
}

impl StageError {
    /// A failure described in words.
    pub fn msg(text: impl Into<String>) -> Self {
        Self::Message(text.into())
    }

    /// Any error, kept with its cause chain.
    pub fn other(error: impl Into<crate::BoxError>) -> Self {
        Self::Other(error.into())
    }

    /// `what` failed because of `cause`.
    pub fn caused(what: impl Into<String>, cause: impl Into<crate::BoxError>) -> Self {
        Self::Caused {
            what: what.into(),
            cause: cause.into(),
        }
    }

    /// The error a [`StageError::Other`] or [`StageError::Caused`] holds.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Self::Other(e) | Self::Caused { cause: e, .. } => Some(&**e),
            _ => None,
        }
    }

    /// Whether this error is a consequence of shutdown rather than a failure of its own.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Self::Cancelled | Self::DownstreamClosed)
    }
}

/// `error: cause: cause…`, the whole chain of `error` on one line (for callers that keep a
/// text), without the backtrace candle appends to some of its errors.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text.split("\n   0: ")
        .next()
        .unwrap_or(&text)
        .trim_end()
        .to_owned()
}
