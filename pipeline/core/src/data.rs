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
    fn open(&self, split: Split, test_path: Option<&str>) -> Result<Arc<dyn Dataset>, String>;
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
