//! The run folder's layout: every file name a run writes, in one place.
//!
//! ```text
//! runs/<name>/                     the run folder (`run_dir`, or `--run-dir`)
//!   definition.yaml                the definition that ran
//!   metrics.json                   the measurements table (`simclr run`)
//!   skipped.jsonl                  every item skipped under `on_error: skip`, one per line
//!   steps.jsonl, loss.png          one line per step; the loss curve (trainer)
//!   knn.jsonl, knn.png             the kNN monitor's results and curve (`knn_monitor`)
//!   knn-checkpoints.jsonl          `simclr eval knn --every-checkpoint` (and knn.png)
//!   checkpoints/                   the checkpoint sink's folder (its `dir`)
//!     latest                       names the newest checkpoint
//!     step-00000320/               one checkpoint:
//!       state.json                 steps, data position, seed, groups (kind and spec)
//!       definition.yaml            the definition it was trained with
//!       <stage>.safetensors        one per model stage
//!       optimizer.safetensors      the optimizer's buffers
//! ```

use std::path::{Path, PathBuf};

/// `definition.yaml`, in a run folder and in every checkpoint.
pub const DEFINITION: &str = "definition.yaml";
/// `state.json` of a checkpoint.
pub const STATE: &str = "state.json";
/// `latest` of a checkpoints folder.
pub const LATEST: &str = "latest";
/// The checkpoint sink's default folder inside the run folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The optimizer's buffers in a checkpoint.
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// A run folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The definition that ran.
    pub fn definition(&self) -> PathBuf {
        self.root.join(DEFINITION)
    }

    /// The measurements of `simclr run`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.json")
    }

    /// Every item skipped under `on_error: skip`: one JSON object per distinct item.
    pub fn skipped(&self) -> PathBuf {
        self.root.join("skipped.jsonl")
    }

    /// One line per training step.
    pub fn steps(&self) -> PathBuf {
        self.root.join("steps.jsonl")
    }

    /// The loss curve.
    pub fn loss_plot(&self) -> PathBuf {
        self.root.join("loss.png")
    }

    /// The kNN monitor's results, one line per evaluation.
    pub fn knn(&self) -> PathBuf {
        self.root.join("knn.jsonl")
    }

    /// The kNN accuracy curve.
    pub fn knn_plot(&self) -> PathBuf {
        self.root.join("knn.png")
    }

    /// kNN results of every checkpoint (`simclr eval knn --every-checkpoint`).
    pub fn knn_checkpoints(&self) -> PathBuf {
        self.root.join("knn-checkpoints.jsonl")
    }

    /// The checkpoint sink's default folder.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// `checkpoints/latest`, when the run has written a checkpoint there.
    pub fn latest(&self) -> Option<PathBuf> {
        let pointer = self.checkpoints().join(LATEST);
        pointer.is_file().then_some(pointer)
    }
}

/// `step-00000042`, the folder of the checkpoint after 42 steps.
pub fn step_name(steps: u64) -> String {
    format!("step-{steps:08}")
}
