//! The `knn_monitor` stage: every N epochs, the encoder's weighted-kNN accuracy on the
//! labelled test split, with the training split as the bank — how good the representation is
//! while it trains, without waiting for a linear probe.
//!
//! It reads the trainer's states (the same stream the checkpoint sink reads), rebuilds the
//! encoder from the state's copy of the weights and embeds un-augmented images in evaluation
//! mode: no BatchNorm statistic is updated and no random number is drawn, so training runs
//! exactly as without it (the losses are identical; a test checks). While it evaluates, the
//! trainer waits for the monitor's queue to drain, so the run takes longer by the evaluation
//! time. Results go to `<run>/knn.jsonl` (one line per evaluation), `<run>/knn.png` and the
//! progress line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError, PortType,
    Stage, StageContext, StageError, StageFactory, StageKind,
};
use simclr_stage_model::error::chain;
use simclr_stage_model::stage::{Role, TrainState};
use simclr_stage_model::{RunDir, TrainedModel};
use simclr_stage_source::common::Split;

use crate::data::{LabelledSet, RunData, load};
use crate::features::embed;
use crate::knn::{KnnScore, KnnSettings, evaluate};

/// Parameters of `knn_monitor`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KnnMonitorParams {
    /// Evaluate after every this many epochs (and after the last step).
    #[serde(default = "one")]
    pub every_epochs: u32,
    /// Neighbours that vote.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Temperature of the vote weights `exp(cos / temperature)`.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Bank: the first N images of the source's training split (default: all).
    #[serde(default)]
    pub bank_limit: Option<usize>,
    /// Queries: the first N images of its test split (default: all).
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// Images per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// For `image_folder` sources: a folder of held-out images (one sub-folder per class).
    #[serde(default)]
    pub test_path: Option<String>,
}

fn one() -> u32 {
    1
}
fn default_k() -> usize {
    200
}
fn default_temperature() -> f64 {
    0.1
}
fn default_batch() -> usize {
    256
}

/// `knn_monitor`.
pub static KNN_MONITOR: StageKind = StageKind {
    name: "knn_monitor",
    summary: "every N epochs: weighted kNN top-1/top-5 of the encoder (cosine, k 200, T 0.1) on the source's test split, bank = its training split; knn.jsonl, knn.png, progress line; does not change training",
    input: InputPorts::Accepts(&[PortType::TrainStates]),
    output: OutputPort::None,
    parallelism: Parallelism::Single,
    example: "\
name: knn_monitor-example
stages:
  images: { kind: synthetic, params: { count: 256, size: 16, epochs: 2 } }
  views: { kind: views, inputs: [images], params: { size: 16 } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 32 } }
  encoder: { kind: small_cnn, inputs: [batches], credit: { from: train }, params: { width: 4 } }
  head: { kind: projector, inputs: [encoder], params: { head: mlp, hidden: 32, out: 16 } }
  train: { kind: nt_xent, inputs: [head], params: { optimizer: lars, lr: 0.3 } }
  knn: { kind: knn_monitor, inputs: [train], params: { every_epochs: 1, k: 20, test_limit: 128 } }
",
    params: || schemars::schema_for!(KnnMonitorParams),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let params: KnnMonitorParams = cx.parse()?;
    if params.every_epochs == 0 {
        return Err(cx.invalid(
            "every_epochs",
            "`every_epochs` must be at least 1",
            "e.g. `every_epochs: 5`",
        ));
    }
    if params.k == 0 {
        return Err(cx.invalid("k", "`k` must be at least 1", "200 is the usual choice"));
    }
    if !(params.temperature > 0.0 && params.temperature.is_finite()) {
        return Err(cx.invalid(
            "temperature",
            "`temperature` must be positive",
            "0.1 is the usual choice",
        ));
    }
    if params.batch_size == 0 {
        return Err(cx.invalid("batch_size", "`batch_size` must be at least 1", "e.g. 256"));
    }
    let mut run = match RunData::from_facts(&cx.upstream) {
        Ok(run) => run,
        // A stage upstream failed to configure and says so; don't pile on (validation fails,
        // so this stage never runs).
        Err(_) if cx.upstream.incomplete => return Ok(StageFactory::stage(|_| Unconfigured)),
        Err(e) => {
            return Err(cx.invalid(
                "",
                chain(&e),
                "the monitor evaluates on the labelled dataset of the definition's source stage",
            ));
        }
    };
    run.test_path.clone_from(&params.test_path);
    if !run.labelled.has_test_split() && run.test_path.is_none() {
        return Err(cx.invalid(
            "test_path",
            "an `image_folder` source has no test split",
            "set `test_path` to a folder of held-out images, one sub-folder per class",
        ));
    }
    if let Some(follower) = simclr_stage_model::stage::follower(cx) {
        // Rank 0 runs the monitor.
        return Ok(follower);
    }
    let run_dir = cx.run_dir.to_owned();
    let resuming = cx.resume.is_some();
    Ok(StageFactory::stage(move |_| KnnMonitor {
        params: params.clone(),
        run: run.clone(),
        file: RunDir::new(&run_dir).knn(),
        plot: RunDir::new(&run_dir).knn_plot(),
        resuming,
        data: None,
        points: Vec::new(),
        epoch: None,
        evaluated: None,
        last: None,
    }))
}

/// The stage of a definition whose source could not be configured (never run: the definition
/// does not validate).
struct Unconfigured;

impl Stage for Unconfigured {
    fn process(
        &mut self,
        _msg: Message,
        _out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        Err(StageError::msg(
            "knn_monitor: its source was not configured",
        ))
    }
}

/// One evaluation, as a line of `knn.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnnRecord {
    /// Training steps done.
    pub step: u64,
    /// Epoch of the next sample (epochs done, at an epoch boundary).
    pub epoch: u32,
    /// The score.
    #[serde(flatten)]
    pub score: KnnScore,
    /// The settings.
    #[serde(flatten)]
    pub settings: KnnSettings,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

struct KnnMonitor {
    params: KnnMonitorParams,
    run: RunData,
    file: PathBuf,
    plot: PathBuf,
    resuming: bool,
    data: Option<(LabelledSet, LabelledSet)>,
    points: Vec<(u64, f64)>,
    epoch: Option<u32>,
    evaluated: Option<u64>,
    last: Option<Arc<TrainState>>,
}

impl KnnMonitor {
    fn evaluate(&mut self, state: &TrainState, cx: &StageContext) -> Result<(), StageError> {
        let t0 = Instant::now();
        let (bank, test) = self
            .data
            .as_ref()
            .ok_or_else(|| StageError::msg("knn_monitor: data not loaded"))?;
        let group = state
            .groups
            .iter()
            .find(|g| g.role == Role::Encoder)
            .ok_or_else(|| StageError::msg("the training state holds no encoder"))?;
        let Some((_, first)) = group.tensors.first() else {
            return Err(StageError::msg("the encoder has no tensors"));
        };
        let device = first.device().clone();
        simclr_stage_model::stage::bind(&device)?;
        let model = TrainedModel::from_snapshot(&state.groups, &device)?;
        let arch = &model.arch;
        let b = self.params.batch_size;
        let fb = embed(&model, bank, b)?;
        let ft = embed(&model, test, b)?;
        let settings = KnnSettings {
            k: self.params.k,
            temperature: self.params.temperature,
        };
        let score = evaluate(
            &fb,
            &bank.labels,
            &ft,
            &test.labels,
            arch.feature_dim(),
            settings,
        )?;
        let record = KnnRecord {
            step: state.steps,
            epoch: state.epoch,
            score,
            settings,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let line = serde_json::to_string(&record).map_err(StageError::other)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|source| io_error(&self.file, source))?;
        writeln!(f, "{line}").map_err(|source| io_error(&self.file, source))?;
        self.points.push((state.steps, score.top1));
        simclr_stage_model::plot::curve(&self.points, &self.plot, "knn top-1", false)
            .map_err(|e| StageError::caused(self.plot.display().to_string(), e))?;
        cx.set_status(format!(
            "kNN top-1 {:.4} at step {}",
            score.top1, state.steps
        ));
        self.evaluated = Some(state.steps);
        Ok(())
    }
}

impl Stage for KnnMonitor {
    fn on_start(&mut self, _cx: &mut StageContext) -> Result<(), StageError> {
        let open = |split: Split, limit: Option<usize>| -> Result<LabelledSet, StageError> {
            let what = match split {
                Split::Train => "bank (training split)",
                Split::Test => "test split",
            };
            let data = self
                .run
                .open(split)
                .map_err(|e| e.context(format!("cannot open the {what}")))?;
            Ok(load(&self.run, data.as_ref(), limit)
                .map_err(|e| e.context(format!("cannot read the {what}")))?)
        };
        let bank = open(Split::Train, self.params.bank_limit)?;
        let test = open(Split::Test, self.params.test_limit)?;
        if let Some(parent) = self.file.parent() {
            std::fs::create_dir_all(parent).map_err(|source| io_error(parent, source))?;
        }
        if self.resuming {
            // Keep the earlier evaluations of a resumed run.
            if let Ok(text) = std::fs::read_to_string(&self.file) {
                self.points = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<KnnRecord>(l).ok())
                    .map(|r| (r.step, r.score.top1))
                    .collect();
            }
        } else if self.file.exists() {
            std::fs::remove_file(&self.file).map_err(|source| io_error(&self.file, source))?;
        }
        self.data = Some((bank, test));
        Ok(())
    }

    fn process(
        &mut self,
        msg: Message,
        _out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let state = simclr_stage_model::stage::receive_state(msg)?;
        // The first state of a new epoch: the previous epochs are done.
        let crossed = self.epoch.is_some_and(|e| state.epoch > e);
        self.epoch = Some(state.epoch);
        if crossed && state.epoch % self.params.every_epochs == 0 {
            self.evaluate(&state, cx)?;
        }
        self.last = Some(state);
        Ok(())
    }

    fn on_finish(
        &mut self,
        _out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        if let Some(state) = self.last.take() {
            if self.evaluated != Some(state.steps) {
                self.evaluate(&state, cx)?;
            }
            if let Some(&(step, top1)) = self.points.last() {
                cx.note(format!(
                    "kNN top-1 {top1:.4} after step {step} ({})",
                    self.file.display()
                ));
            }
        }
        Ok(())
    }
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> StageError {
    StageError::Io {
        path: path.to_owned(),
        source,
    }
}
