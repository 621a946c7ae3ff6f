//! Data as the stages see it at build time and evaluation sees it afterwards: random-access
//! datasets of images, the labelled splits a source offers, and the deterministic
//! preprocessing an augmentation policy stands for.
//!
//! A source publishes its [`LabelledData`] and the `views` stage the [`Preprocess`] of its
//! policy in the [`crate::StreamFacts`] that flow down the graph at build time, so a stage
//! downstream (the kNN monitor, the checkpoint sink) and any tool that builds the graph (`simclr
//! eval`, `export`, `embed`) learn both from the built stages — custom sources and transforms
//! included — instead of reading the definition's text.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A random-access dataset of images.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> u64;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `index`: `(height, width, channels, HWC pixels, label)`.
    ///
    /// # Errors
    /// An item that cannot be read or decoded.
    fn get(&self, index: u64) -> Result<Sample, ItemError>;

    /// What item `index` is, for a person (a file's path); `None` when items have no names.
    fn name(&self, _index: u64) -> Option<String> {
        None
    }

    /// Lines for the run report about how the data was opened (how a folder was listed, say).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One decoded item.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 or 3.
    pub channels: u8,
    /// HWC bytes.
    pub pixels: Arc<[u8]>,
    /// Class label, if known.
    pub label: Option<u32>,
}

/// Why one item could not be produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemError {
    /// What the item is (a path, `record 17 of data_batch_1.bin`).
    pub item: String,
    /// What went wrong.
    pub cause: String,
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.item, self.cause)
    }
}

/// Which part of a dataset with a fixed split to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The training part.
    #[default]
    Train,
    /// The test part.
    Test,
}

/// The labelled train and test splits of a source, as its stage was configured: what
/// evaluation reads. The stage's `limit`, `epochs` and shuffling do not apply: evaluation
/// reads items in order.
pub trait LabelledData: Send + Sync + fmt::Debug {
    /// The source for reports: its kind and, when it reads files, their path (`idx
    /// (/data/fashion-mnist)`).
    fn describe(&self) -> String;

    /// Whether the source has a test split of its own (else [`LabelledData::open`] needs a
    /// `test_path` for it).
    fn has_test_split(&self) -> bool {
        true
    }

    /// Open one split; `test_path` names a folder of held-out images for sources that have
    /// no test split of their own (an image folder).
    ///
    /// # Errors
    /// Data that cannot be read, or a split the source cannot offer (named, with a fix).
    fn open(&self, split: Split, test_path: Option<&str>) -> Result<Arc<dyn Dataset>, DataError>;
}

/// Any error, boxed, as a cause in a chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a dataset, or one of its splits, could not be opened. Its text is the error's own; the
/// cause (the operating system's or a decoder's error) is its [`std::error::Error::source`],
/// which the command line prints after it (`path: cannot read the IDX header: failed to fill
/// whole buffer`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder that cannot be read, opened or decoded.
    #[error("{}{}", path.display(), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What was being done or what is wrong (`cannot read the IDX header`); `None`
        /// when the cause says it all.
        message: Option<String>,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Data the configuration asks for that is not there or cannot be offered (a missing
    /// folder, a test split of a source without one), with the fix where there is one.
    #[error("{0}")]
    Unavailable(String),
    /// A failure already reported once: the stage's workers share one load.
    #[error(transparent)]
    Shared(Arc<DataError>),
}

impl DataError {
    /// `path: message`, with no further cause.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_owned(),
            message: Some(message.into()),
            source: None,
        }
    }

    /// `path: message: cause` (`message` may be empty: `path: cause`).
    pub fn caused(path: &Path, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let message: String = message.into();
        Self::File {
            path: path.to_owned(),
            message: (!message.is_empty()).then_some(message),
            source: Some(source.into()),
        }
    }

    /// `path: cause`, for an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |e| Self::caused(path, "", e)
    }
}

/// The deterministic counterpart of an augmentation policy, as evaluation and exports apply
/// it (torchvision's evaluation transforms): images of another size than `size` are resized
/// (shorter side) and centre-cropped to it; then pixel/255 and, with `normalize`, per-channel
/// `(x − mean) / std`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Height and width the training views had, when the policy fixes them.
    pub size: Option<(usize, usize)>,
    /// Per-channel mean and std (one value: every channel).
    pub normalize: Option<(Vec<f64>, Vec<f64>)>,
}
