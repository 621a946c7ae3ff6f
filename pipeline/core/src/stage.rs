//! The traits a stage implements, and the handles the runtime gives it.
//!
//! A stage never sees a channel or a thread: it receives one [`Message`] at a time and pushes
//! what it produces to [`Outputs`]. The runtime owns the threads, the bounded edges, the
//! timing and the shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::StageError;
use crate::message::{Message, PortType};

/// One processing step. The runtime owns threads and channels; a stage only sees messages.
///
/// A stage with `workers: N` gets N instances, one per thread; each receives a share of the
/// input. Where its kind declares ordered output, the runtime hands messages out round-robin
/// and re-assembles the outputs in input order.
pub trait Stage: Send {
    /// Called once on the stage thread before the first message. Load weights, open files.
    ///
    /// # Errors
    /// Any error stops the pipeline before data flows.
    fn on_start(&mut self, _cx: &mut StageContext) -> Result<(), StageError> {
        Ok(())
    }

    /// Handle one message; push zero or more messages to `out`.
    ///
    /// # Errors
    /// An error stops the whole pipeline; the final report names this stage.
    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError>;

    /// Every input has ended (end of stream). Flush partial batches, write final state here.
    /// Not called when the pipeline is shutting down because of a failure.
    ///
    /// # Errors
    /// As for [`Stage::process`].
    fn on_finish(
        &mut self,
        _out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        Ok(())
    }
}

/// A stage with no input: it is pulled by the runtime until it returns `None`.
///
/// With `workers: N`, worker `w` of `N` (see [`StageContext::worker`]) produces its share of
/// the stream; for ordered kinds the runtime interleaves worker outputs round-robin, so worker
/// `w` should produce the items at positions `w, w + N, w + 2N, ...`.
pub trait Source: Send {
    /// Called once on the stage thread before the first `next`.
    ///
    /// # Errors
    /// Any error stops the pipeline before data flows.
    fn on_start(&mut self, _cx: &mut StageContext) -> Result<(), StageError> {
        Ok(())
    }

    /// The next item of this worker's share, or `None` at the end.
    ///
    /// # Errors
    /// An error stops the whole pipeline; the final report names this stage.
    fn next(&mut self, cx: &mut StageContext) -> Result<Option<Message>, StageError>;

    /// How many items this worker will produce, if known; drives the progress bar.
    fn len_hint(&self) -> Option<u64> {
        None
    }
}

/// Where a stage's output goes. Implemented by the runtime (bounded edges, fan-out, timing)
/// and by [`TestOutputs`] (a `Vec`).
pub trait Emitter {
    /// Deliver one message downstream, blocking while the edges are full.
    ///
    /// # Errors
    /// [`StageError::Cancelled`] when the pipeline is shutting down,
    /// [`StageError::DownstreamClosed`] when no consumer is left.
    fn emit(&mut self, msg: Message) -> Result<(), StageError>;
}

/// The handle a stage pushes its output to.
pub struct Outputs<'a> {
    emitter: &'a mut dyn Emitter,
    declared: Option<PortType>,
}

impl<'a> Outputs<'a> {
    /// Wrap an emitter. `declared` is the port type this stage's output edge carries; a stage
    /// that emits anything else gets [`StageError::WrongOutput`] (a bug, caught loudly).
    pub fn new(emitter: &'a mut dyn Emitter, declared: Option<PortType>) -> Self {
        Self { emitter, declared }
    }

    /// Send one message downstream.
    ///
    /// # Errors
    /// See [`Emitter::emit`]; also [`StageError::WrongOutput`].
    pub fn push(&mut self, msg: Message) -> Result<(), StageError> {
        let got = msg.port_type();
        match self.declared {
            Some(declared) if declared == got => self.emitter.emit(msg),
            Some(declared) => Err(StageError::WrongOutput {
                declared: declared.name(),
                got: got.name(),
            }),
            None => Err(StageError::WrongOutput {
                declared: "no",
                got: got.name(),
            }),
        }
    }
}

/// An [`Emitter`] that collects into a `Vec`, for driving a stage in unit tests without
/// threads.
#[derive(Default, Debug)]
pub struct TestOutputs {
    /// Everything emitted so far.
    pub messages: Vec<Message>,
}

impl Emitter for TestOutputs {
    fn emit(&mut self, msg: Message) -> Result<(), StageError> {
        self.messages.push(msg);
        Ok(())
    }
}

/// Pipeline-wide flags a stage can poll during long work.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// Set on Ctrl-C or an item limit: sources stop producing and the pipeline drains.
    pub stop: Arc<AtomicBool>,
    /// Set when a stage failed: every stage stops as soon as it can, without flushing.
    pub cancel: Arc<AtomicBool>,
    /// Set when a source ended its stream early (stop request or item limit), so stages that
    /// check totals at the end know the stream was cut short.
    pub truncated: Arc<AtomicBool>,
    /// Set by a stage that has done what the run is for (a trainer that reached its last
    /// step): sources stop producing and the pipeline drains, as for a stop request.
    pub finished: Arc<AtomicBool>,
}

impl Signals {
    /// Whether a failure elsewhere is shutting the pipeline down.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Whether some source ended early (stop request or item limit).
    pub fn is_truncated(&self) -> bool {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Whether sources should stop producing (stop requested or cancelled).
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.finished.load(Ordering::Relaxed)
            || self.is_cancelled()
    }
}

/// Items a stage skipped and remarks it wants in the run report, shared by its workers.
#[derive(Debug, Default)]
pub struct StageLog {
    skipped: AtomicU64,
    skips: Mutex<Skips>,
    notes: Mutex<Vec<String>>,
    status: Mutex<String>,
}

/// One skipped item: what it is, why, and how often it was skipped (once per epoch that
/// reached it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedItem {
    /// What the item is (a path, `record 17 of data_batch_1.bin`).
    pub item: String,
    /// Why it was skipped (the first time).
    pub cause: String,
    /// How many times it was skipped.
    pub times: u64,
}

/// Every distinct skipped item, in the order first seen, up to [`MAX_SKIP_RECORDS`].
#[derive(Debug, Default)]
struct Skips {
    items: Vec<SkippedItem>,
    index: std::collections::HashMap<String, usize>,
    /// Skips of items beyond the cap: counted, not named.
    unlisted: u64,
}

/// Skipped items named in the report's summary line, at most.
const MAX_SKIP_EXAMPLES: usize = 5;

/// Distinct skipped items a stage remembers by name (about 200 bytes each); items beyond are
/// counted in [`StageLog::skipped_unlisted`].
pub const MAX_SKIP_RECORDS: usize = 100_000;

impl StageLog {
    /// Count one skipped item: the first few are named in the report's summary, every one
    /// (up to [`MAX_SKIP_RECORDS`] distinct items) in [`StageLog::skipped_items`].
    pub fn skip(&self, item: String, cause: String) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let Ok(mut skips) = self.skips.lock() else {
            return;
        };
        if let Some(&i) = skips.index.get(&item) {
            skips.items[i].times += 1;
        } else if skips.items.len() < MAX_SKIP_RECORDS {
            let i = skips.items.len();
            skips.index.insert(item.clone(), i);
            skips.items.push(SkippedItem {
                item,
                cause,
                times: 1,
            });
        } else {
            skips.unlisted += 1;
        }
    }

    /// Add a line to the stage's entry in the run report (a checksum, a count, a warning).
    pub fn note(&self, text: String) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.push(text);
        }
    }

    /// Replace the stage's one-line live status (shown next to the progress bar).
    pub fn set_status(&self, text: String) {
        if let Ok(mut status) = self.status.lock() {
            *status = text;
        }
    }

    /// The live status line (empty when the stage sets none).
    pub fn status(&self) -> String {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// How many items were skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The first skipped items, described (`item: cause`).
    pub fn skip_examples(&self) -> Vec<String> {
        self.skips
            .lock()
            .map(|s| {
                s.items
                    .iter()
                    .take(MAX_SKIP_EXAMPLES)
                    .map(|r| format!("{}: {}", r.item, r.cause))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every distinct skipped item, in the order first seen (at most [`MAX_SKIP_RECORDS`]).
    pub fn skipped_items(&self) -> Vec<SkippedItem> {
        self.skips
            .lock()
            .map(|s| s.items.clone())
            .unwrap_or_default()
    }

    /// Skips of items beyond the first [`MAX_SKIP_RECORDS`]: counted, not named.
    pub fn skipped_unlisted(&self) -> u64 {
        self.skips.lock().map(|s| s.unlisted).unwrap_or_default()
    }

    /// The notes, in order.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// What a stage knows about where it runs.
#[derive(Clone, Debug)]
pub struct StageContext {
    stage_id: Arc<str>,
    worker: usize,
    workers: usize,
    seed: u64,
    inputs: Arc<[String]>,
    current_input: usize,
    signals: Signals,
    log: Arc<StageLog>,
}

impl StageContext {
    /// A context for worker `worker` of `workers` of stage `stage_id`; `inputs` are the ids of
    /// the stages feeding it, in definition order.
    pub fn new(
        stage_id: impl Into<Arc<str>>,
        worker: usize,
        workers: usize,
        seed: u64,
        inputs: Arc<[String]>,
        signals: Signals,
    ) -> Self {
        Self {
            stage_id: stage_id.into(),
            worker,
            workers,
            seed,
            inputs,
            current_input: 0,
            signals,
            log: Arc::new(StageLog::default()),
        }
    }

    /// Use `log` (shared by the stage's workers) for skips and notes.
    #[must_use]
    pub fn with_log(mut self, log: Arc<StageLog>) -> Self {
        self.log = log;
        self
    }

    /// Count an item skipped under `on_error: skip` (it is named in the run report and in the
    /// run folder's `skipped.jsonl`).
    pub fn skip(&self, item: impl std::fmt::Display, cause: impl std::fmt::Display) {
        self.log.skip(item.to_string(), cause.to_string());
    }

    /// Add a line to this stage's entry in the run report.
    pub fn note(&self, text: impl std::fmt::Display) {
        self.log.note(text.to_string());
    }

    /// Show `text` as this stage's live status next to the progress bar (e.g. a trainer's
    /// step, loss and learning rate).
    pub fn set_status(&self, text: impl std::fmt::Display) {
        self.log.set_status(text.to_string());
    }

    /// The stage's log.
    pub fn log(&self) -> &StageLog {
        &self.log
    }

    /// A context for unit tests: worker 0 of 1, seed 0, no inputs.
    pub fn for_test(stage_id: &str) -> Self {
        Self::new(stage_id, 0, 1, 0, Arc::from(Vec::new()), Signals::default())
    }

    /// The stage's id in the definition.
    pub fn stage_id(&self) -> &str {
        &self.stage_id
    }

    /// This worker's index, `0..workers()`.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// How many workers this stage runs.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The definition's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Index into [`StageContext::inputs`] of the input the current message came from.
    pub fn current_input(&self) -> usize {
        self.current_input
    }

    /// Set by the runtime before each `process` call.
    pub fn set_current_input(&mut self, index: usize) {
        self.current_input = index;
    }

    /// Ids of the stages feeding this one, in definition order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Whether a failure elsewhere is shutting the pipeline down; long computations should
    /// poll it and return [`StageError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.signals.is_cancelled()
    }

    /// Whether a source should stop producing.
    pub fn should_stop(&self) -> bool {
        self.signals.should_stop()
    }

    /// Declare the run's work done (e.g. the last training step was taken): sources stop
    /// and the pipeline drains. Not an interruption: the run still ends successfully.
    pub fn finish_run(&self) {
        self.signals.finished.store(true, Ordering::SeqCst);
    }

    /// Whether some source ended its stream early (a stop request or `--items`): totals
    /// checked at end of stream do not apply.
    pub fn stream_truncated(&self) -> bool {
        self.signals.is_truncated()
    }
}
