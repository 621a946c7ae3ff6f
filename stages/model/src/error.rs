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
}

impl ModelError {
    /// A candle failure while doing `what`.
    pub fn candle(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let what = what.into();
        move |source| Self::Candle { what, source }
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
