//! The `checkpoint` sink and the checkpoint format.
//!
//! A checkpoint is a folder `<run>/checkpoints/step-NNNNNNNN/` holding
//!
//! - `<stage>.safetensors` for every model stage (the encoder's tensors under torchvision's
//!   state-dict names, BatchNorm running statistics included);
//! - `optimizer.safetensors`: the optimizer's buffers, named `<stage>.<param>.<buffer>`;
//! - `state.json`: steps done, the data position (epoch and samples of it consumed), seed,
//!   schedule length, loss and learning rate of the last step, and each model stage's kind
//!   and architecture;
//! - `definition.yaml`: the definition the run was started from.
//!
//! There is no random-generator state to save: every random draw derives from the seed and
//! the sample's (epoch, index), so the data position determines the rest of the stream.
//!
//! Writes are atomic: the folder is written as `.step-NNNNNNNN.tmp`, every file is fsynced,
//! the folder is renamed into place and its parent fsynced; then `latest` (a one-line file
//! naming the newest checkpoint) is replaced the same way. A crash at any point leaves the
//! previous checkpoint and `latest` intact; leftover temporary folders are ignored and
//! removed by the next write.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError, PortType,
    Preprocess, ResumePoint, Stage, StageContext, StageError, StageFactory, StageKind,
};

use super::{Role, TrainState};
use crate::ModelError;
use crate::run_dir::{CHECKPOINTS, DEFINITION, LATEST, OPTIMIZER, STATE};

/// Parameters of `checkpoint`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointParams {
    /// Write a checkpoint every this many steps (and always after the last step); 0: only at
    /// the end.
    #[serde(default = "default_every")]
    pub every: u64,
    /// Keep the newest K checkpoints and delete older ones; 0 keeps all. With K >= 2 the oldest
    /// goes before the next is written, so the folder needs room for K checkpoints; K = 1
    /// keeps the previous one until the new one is complete (room for 2).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Folder, relative to the run folder.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
}

fn default_every() -> u64 {
    100
}
fn default_keep() -> usize {
    3
}
fn default_dir() -> PathBuf {
    PathBuf::from(CHECKPOINTS)
}

/// `checkpoint`.
pub static CHECKPOINT: StageKind = StageKind {
    name: "checkpoint",
    summary: "writes weights (safetensors, torchvision names), optimizer state and data position every N steps and at the end, atomically; keeps the last K",
    input: InputPorts::Accepts(&[PortType::TrainStates]),
    output: OutputPort::None,
    parallelism: Parallelism::Single,
    example: crate::encoder_example!("small_cnn", "{ width: 4 }"),
    params: || schemars::schema_for!(CheckpointParams),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let params: CheckpointParams = cx.parse()?;
    if params.dir.is_absolute() || params.dir.components().any(|c| c.as_os_str() == "..") {
        return Err(cx.invalid(
            "dir",
            format!(
                "`dir` must be a folder inside the run folder, found {}",
                params.dir.display()
            ),
            "e.g. `dir: checkpoints`; `simclr run --run-dir` moves the whole run",
        ));
    }
    if let Some(follower) = super::follower(cx) {
        // Rank 0 writes the checkpoints.
        return Ok(follower);
    }
    let root = cx.run_dir.join(&params.dir);
    let definition: Arc<str> = Arc::from(cx.definition);
    let preprocessing = cx.upstream.preprocessing.clone();
    Ok(StageFactory::stage(move |_| CheckpointSink {
        root: root.clone(),
        preprocessing: preprocessing.clone(),
        every: params.every,
        keep_last: params.keep_last,
        definition: definition.clone(),
        last: None,
        written: None,
    }))
}

struct CheckpointSink {
    root: PathBuf,
    preprocessing: Option<Preprocess>,
    every: u64,
    keep_last: usize,
    definition: Arc<str>,
    last: Option<Arc<TrainState>>,
    written: Option<u64>,
}

impl CheckpointSink {
    fn write(&mut self, state: &TrainState, cx: &StageContext) -> Result<(), StageError> {
        let written = CheckpointText {
            definition: &self.definition,
            preprocessing: self.preprocessing.as_ref(),
        };
        let dir = write_checkpoint(&self.root, state, &written, self.keep_last).map_err(|e| {
            StageError::caused(
                format!(
                    "cannot write the checkpoint of step {} under {}",
                    state.steps,
                    self.root.display()
                ),
                e,
            )
        })?;
        self.written = Some(state.steps);
        cx.set_status(format!(
            "saved {}",
            dir.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        Ok(())
    }
}

impl Stage for CheckpointSink {
    fn process(
        &mut self,
        msg: Message,
        _out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let state = super::receive_state(msg)?;
        if self.every > 0 && state.steps % self.every == 0 {
            self.write(&state, cx)?;
        }
        self.last = Some(state);
        Ok(())
    }

    fn on_finish(
        &mut self,
        _out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        if let Some(state) = &self.last {
            super::bind_state(state)?;
        }
        if let Some(state) = self.last.take()
            && self.written != Some(state.steps)
        {
            self.write(&state, cx)?;
        }
        if let Some(steps) = self.written {
            cx.note(format!(
                "latest checkpoint: {}",
                self.root.join(step_name(steps)).display()
            ));
        }
        Ok(())
    }
}

pub use crate::run_dir::step_name;

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointInfo {
    /// Format version (1).
    pub format: u32,
    /// Training steps completed.
    pub steps: u64,
    /// Epoch of the next sample.
    pub epoch: u32,
    /// Samples of `epoch` consumed.
    pub position: u64,
    /// The definition's seed.
    pub seed: u64,
    /// Steps of the schedule.
    pub total_steps: u64,
    /// Loss of the last step.
    pub loss: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Optimizer name.
    pub optimizer: String,
    /// FNV-1a hash of the definition text.
    pub definition_hash: String,
    /// The model stages.
    pub groups: Vec<GroupInfo>,
    /// The deterministic counterpart of the training policy (crop size, normalisation), as
    /// the built `views` stage gave it: what evaluation and exports prepare images with.
    /// Absent in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<Preprocess>,
}

/// What a checkpoint records besides the training state.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointText<'a> {
    /// The definition's text (kept as `definition.yaml`, hashed into `state.json`).
    pub definition: &'a str,
    /// The policy's deterministic counterpart.
    pub preprocessing: Option<&'a Preprocess>,
}

/// One model stage in `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupInfo {
    /// Stage id.
    pub stage: String,
    /// `encoder` or `projector`.
    pub role: Role,
    /// Stage kind.
    pub kind: String,
    /// Architecture (the stage's resolved parameters).
    pub spec: serde_json::Value,
    /// File name inside the checkpoint.
    pub file: String,
}

/// FNV-1a of a text, as 16 hex digits.
pub fn text_hash(text: &str) -> String {
    format!("{:016x}", crate::init::name_key(text))
}

fn io_err(e: candle_core::Error) -> std::io::Error {
    std::io::Error::other(e)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Save tensors as safetensors at `path` and fsync it.
fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> std::io::Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, path).map_err(io_err)?;
    failpoint(path)?;
    File::open(path)?.sync_all()
}

/// Test hook for crash-consistency tests: with `SIMCLR_FAILPOINT=checkpoint-write:N` the
/// process aborts while writing the N-th weights file it saves (after truncating it to half
/// its size), as a power cut or `kill -9` would leave it.
fn failpoint(path: &Path) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FILES: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("SIMCLR_FAILPOINT") else {
        return Ok(());
    };
    let Some(n) = spec
        .strip_prefix("checkpoint-write:")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return Ok(());
    };
    if FILES.fetch_add(1, Ordering::SeqCst) + 1 == n {
        let len = fs::metadata(path)?.len();
        fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(len / 2)?;
        eprintln!(
            "SIMCLR_FAILPOINT: aborting while writing {}",
            path.display()
        );
        std::process::abort();
    }
    Ok(())
}

/// Write `state` as a checkpoint under `root` atomically, point `latest` at it and delete
/// checkpoints beyond the newest `keep_last` (0 keeps all). Returns the checkpoint folder.
///
/// # Errors
/// Any file-system failure; the previous checkpoint stays intact.
pub fn write_checkpoint(
    root: &Path,
    state: &TrainState,
    text: &CheckpointText<'_>,
    keep_last: usize,
) -> std::io::Result<PathBuf> {
    let definition = text.definition;
    fs::create_dir_all(root)?;
    let name = step_name(state.steps);
    // Leftovers of interrupted writes.
    for entry in fs::read_dir(root)?.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with(".step-") && file_name.ends_with(".tmp") {
            fs::remove_dir_all(entry.path()).ok();
        }
    }
    // Make room first where that is safe: with K >= 2 the oldest checkpoints beyond the newest
    // K - 1 go before the new one is written, so the folder never holds more than K (counting
    // the one being written); a failed write leaves K - 1, the newest intact. K = 1 keeps its
    // only checkpoint until the new one is complete: room for two.
    if keep_last >= 2 {
        prune(root, keep_last - 1, &name)?;
    }
    let tmp = root.join(format!(".{name}.tmp"));
    fs::create_dir_all(&tmp)?;
    let mut groups = Vec::new();
    for g in &state.groups {
        let file = format!("{}.safetensors", g.stage);
        save_tensors(&g.tensors, &tmp.join(&file))?;
        groups.push(GroupInfo {
            stage: g.stage.clone(),
            role: g.role,
            kind: g.kind.clone(),
            spec: g.spec.clone(),
            file,
        });
    }
    save_tensors(&state.optimizer_state, &tmp.join(OPTIMIZER))?;
    let info = CheckpointInfo {
        format: 1,
        steps: state.steps,
        epoch: state.epoch,
        position: state.position,
        seed: state.seed,
        total_steps: state.total_steps,
        loss: state.loss,
        lr: state.lr,
        optimizer: state.optimizer.clone(),
        definition_hash: text_hash(definition),
        groups,
        preprocessing: text.preprocessing.cloned(),
    };
    write_synced(
        &tmp.join(STATE),
        serde_json::to_string_pretty(&info)
            .map_err(std::io::Error::other)?
            .as_bytes(),
    )?;
    write_synced(&tmp.join(DEFINITION), definition.as_bytes())?;
    sync_dir(&tmp)?;
    let dest = root.join(&name);
    if dest.exists() {
        fs::remove_dir_all(&dest)?;
    }
    fs::rename(&tmp, &dest)?;
    sync_dir(root)?;
    let pointer = root.join(".latest.tmp");
    write_synced(&pointer, format!("{name}\n").as_bytes())?;
    fs::rename(&pointer, root.join(LATEST))?;
    sync_dir(root)?;
    if keep_last > 0 {
        prune(root, keep_last, &name)?;
    }
    Ok(dest)
}

/// Delete the checkpoints under `root` beyond the newest `keep` (by step), never `name`.
fn prune(root: &Path, keep: usize, name: &str) -> std::io::Result<()> {
    let mut all: Vec<String> = fs::read_dir(root)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    all.sort();
    let excess = all.len().saturating_sub(keep);
    for old in all.iter().take(excess).filter(|n| *n != name) {
        fs::remove_dir_all(root.join(old))?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A checkpoint found on disk.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Its folder.
    pub dir: PathBuf,
    /// Its `state.json`.
    pub info: CheckpointInfo,
}

impl Checkpoint {
    /// The encoder's group.
    ///
    /// # Errors
    /// The checkpoint holds no encoder (the message names its folder).
    pub fn encoder(&self) -> Result<&GroupInfo, ModelError> {
        self.group(Role::Encoder)
            .ok_or_else(|| ModelError::Checkpoint {
                path: self.dir.clone(),
                message: "the checkpoint holds no encoder".into(),
            })
    }

    /// The first group of `role`.
    pub fn group(&self, role: Role) -> Option<&GroupInfo> {
        self.info.groups.iter().find(|g| g.role == role)
    }

    /// The copy of the definition it was trained with.
    pub fn definition(&self) -> PathBuf {
        self.dir.join(DEFINITION)
    }

    /// The file of a group's tensors.
    pub fn group_file(&self, group: &GroupInfo) -> PathBuf {
        self.dir.join(&group.file)
    }

    /// Where a run resumed from this checkpoint starts.
    pub fn resume_point(&self) -> ResumePoint {
        ResumePoint {
            checkpoint: self.dir.clone(),
            step: self.info.steps,
            epoch: self.info.epoch,
            position: self.info.position,
        }
    }
}

/// Where `simclr run --resume FROM` continues.
#[derive(Clone, Debug)]
pub struct Resume {
    /// The checkpoint found from `FROM`.
    pub checkpoint: Checkpoint,
    /// `FROM` itself when it is a run folder (the resumed run keeps writing there).
    pub run_dir: Option<PathBuf>,
    /// Whether the definition given differs from the one the checkpoint was trained with
    /// (compared by [`text_hash`]; `false` when there is no text to compare).
    pub definition_changed: bool,
}

/// Resolve `simclr run --resume FROM` for a run of the definition `definition` (its text).
///
/// # Errors
/// As [`find_checkpoint`].
pub fn resume_from(from: &Path, definition: Option<&str>) -> Result<Resume, ModelError> {
    let checkpoint = find_checkpoint(from)?;
    let run_dir = crate::run_dir::RunDir::new(from)
        .latest()
        .map(|_| from.to_owned());
    let definition_changed =
        definition.is_some_and(|text| text_hash(text) != checkpoint.info.definition_hash);
    Ok(Resume {
        checkpoint,
        run_dir,
        definition_changed,
    })
}

/// Find a checkpoint from a run folder (its `checkpoints/latest`), a checkpoints folder (its
/// `latest`) or a checkpoint folder itself.
///
/// # Errors
/// No checkpoint there, or one that cannot be read; the message says what was looked for.
pub fn find_checkpoint(path: &Path) -> Result<Checkpoint, ModelError> {
    let dir = if path.join(STATE).is_file() {
        path.to_owned()
    } else {
        let pointer = [path.join(CHECKPOINTS).join(LATEST), path.join(LATEST)]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| ModelError::Checkpoint {
                path: path.to_owned(),
                message:
                    "no checkpoint found (looked for checkpoints/latest, latest and state.json)"
                        .into(),
            })?;
        let name = fs::read_to_string(&pointer).map_err(ModelError::read(&pointer))?;
        let parent = pointer.parent().unwrap_or(Path::new("."));
        parent.join(name.trim())
    };
    let state = dir.join(STATE);
    let text = fs::read_to_string(&state).map_err(ModelError::read(&state))?;
    let info: CheckpointInfo = serde_json::from_str(&text)
        .map_err(ModelError::unreadable(&state, "not a checkpoint state"))?;
    for file in info
        .groups
        .iter()
        .map(|g| g.file.as_str())
        .chain([OPTIMIZER])
    {
        let path = dir.join(file);
        candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .map_err(ModelError::unreadable(&path, "unreadable"))?;
    }
    Ok(Checkpoint { dir, info })
}
