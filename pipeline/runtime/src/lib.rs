//! `simclr-runtime`: runs a validated [`Graph`] on threads joined by bounded channels.
//!
//! - Every stage runs on its own thread, or on `workers: N` threads. For kinds that declare
//!   ordered output, a dispatcher hands inputs out round-robin and a collector re-assembles
//!   the outputs in input order; otherwise workers share the input edges (work stealing).
//! - Every edge is a `crossbeam_channel::bounded(capacity)`; a full edge blocks its producer
//!   (backpressure), so memory use is set by the definition.
//! - End of stream is "every sender dropped": when a stage's inputs have all closed it runs
//!   `on_finish`, then drops its outputs, and so on down the graph.
//! - A stage error or panic cancels the pipeline: every blocking wait polls a shared flag, so
//!   all threads stop within a bounded time; [`run`] then returns the first error, naming the
//!   stage. A stage stuck inside its own code past the grace period is reported, not waited
//!   for. A stop request (Ctrl-C) makes sources end their streams, so the pipeline drains.
//! - A credit edge (`credit: { from: loss }` on the encoder) makes a stage take one credit
//!   before each message and the credit source return one after each message: synchronous
//!   SGD through a pipeline.
//! - Measurement is always on: per stage items in/out, busy, starved and blocked time; per edge
//!   sampled occupancy. [`report::RunReport`] names the bottleneck; [`trace::Trace`] writes
//!   Chrome trace-event JSON.

mod io;
mod launch;
pub mod report;
pub mod trace;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use simclr_config::Graph;
use simclr_core::StageError;
use simclr_core::stage::Signals;

pub use report::RunReport;
pub use trace::Trace;

use crate::worker::{Counters, EdgeCounters};

/// How often blocking waits wake to check for cancellation.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// How to run a graph.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop every source after this many items (shared across its workers); `None` runs the
    /// definition to its natural end.
    pub item_limit: Option<u64>,
    /// Record trace events (process/wait spans per worker, edge occupancy counters).
    pub trace: bool,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Set to ask for a clean stop: sources end their streams and the pipeline drains.
    pub stop: Arc<AtomicBool>,
    /// After a failure, how long to wait for stages to stop before reporting them as stuck.
    pub shutdown_grace: Duration,
    /// Edge occupancy sampling period.
    pub sample_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            item_limit: None,
            trace: false,
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
            shutdown_grace: Duration::from_secs(5),
            sample_interval: Duration::from_millis(5),
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A stage returned an error or panicked.
    #[error("stage `{stage}` (kind `{kind}`{}) failed: {source}", worker_suffix(*.worker, *.workers))]
    Stage {
        /// Its id.
        stage: String,
        /// Its kind.
        kind: &'static str,
        /// Which worker.
        worker: usize,
        /// Of how many.
        workers: usize,
        /// What it said.
        #[source]
        source: StageError,
    },
    /// The operating system refused a thread.
    #[error("cannot start a thread for stage `{stage}`: {source}")]
    Spawn {
        /// Its id.
        stage: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A kind's factory built a source for a kind with inputs, or the reverse (a bug in the
    /// kind, caught before any thread starts).
    #[error("stage `{stage}`: kind `{kind}` built a {built} but its ports make it a {expected}")]
    InstanceMismatch {
        /// Its id.
        stage: String,
        /// Its kind.
        kind: &'static str,
        /// What was built.
        built: &'static str,
        /// What the ports call for.
        expected: &'static str,
    },
}

fn worker_suffix(worker: usize, workers: usize) -> String {
    if workers > 1 {
        format!(", worker {worker} of {workers}")
    } else {
        String::new()
    }
}

/// A finished (or stopped) run.
#[derive(Debug)]
pub struct Run {
    /// What every stage and edge did.
    pub report: RunReport,
    /// Trace events, when [`RunOptions::trace`] was set.
    pub trace: Option<Trace>,
}

/// A failed run: the error, and what was measured up to it.
#[derive(Debug)]
pub struct Failure {
    /// The first error (the root cause; later `cancelled` errors are not reported).
    pub error: RunError,
    /// Stages still inside their own code when the grace period ended.
    pub stuck: Vec<String>,
    /// Measurements up to the failure.
    pub run: Run,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.stuck.is_empty() {
            write!(
                f,
                " (still running after the grace period, abandoned: {})",
                self.stuck.join(", ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// State shared by every thread of a run.
pub(crate) struct Shared {
    pub signals: Signals,
    pub first_error: Mutex<Option<RunError>>,
    pub start: Instant,
    pub trace: bool,
}

impl Shared {
    /// Record `error` if it is the first, and cancel the pipeline.
    pub fn fail(&self, error: RunError) {
        if let Ok(mut slot) = self.first_error.lock()
            && slot.is_none()
        {
            *slot = Some(error);
        }
        self.signals.cancel.store(true, Ordering::SeqCst);
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Run `graph` to the end of its streams (or until stopped or failed).
///
/// # Errors
/// The first stage failure, with the measurements up to it.
pub fn run(graph: &Graph, options: &RunOptions) -> Result<Run, Box<Failure>> {
    let cpu_at_start = report::process_cpu_seconds();
    let shared = Arc::new(Shared {
        signals: Signals {
            stop: options.stop.clone(),
            ..Signals::default()
        },
        first_error: Mutex::new(None),
        start: Instant::now(),
        trace: options.trace,
    });
    let mut channels = launch::Channels::new(graph);
    let (instances, total_hint) = launch::instantiate(graph, options, &shared)?;
    let logs: Vec<Arc<simclr_core::StageLog>> = graph
        .nodes
        .iter()
        .map(|_| Arc::new(simclr_core::StageLog::default()))
        .collect();
    let traces: Arc<Mutex<Vec<trace::ThreadTrace>>> = Arc::new(Mutex::new(Vec::new()));
    let cx = launch::RunContext {
        graph,
        options,
        shared: &shared,
        logs: &logs,
        traces: &traces,
    };
    let mut threads = launch::Threads::new();
    for (n, node_instances) in instances.into_iter().enumerate() {
        launch::spawn_node(&cx, n, node_instances, &mut channels, &mut threads);
    }
    // Every sender and receiver not taken by a thread goes now: end of stream is "every
    // sender dropped", and the done channel closes when the last thread ends.
    let (edge_probe, edge_counters) = channels.into_probes();
    let threads = threads.sealed();

    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = launch::start_sampler(
        &cx,
        edge_probe,
        &edge_counters,
        &threads.counters,
        total_hint,
        sampler_stop.clone(),
    );
    let finished = launch::join_with_grace(&threads, &shared, options.shutdown_grace);
    let wall_ns = shared.now_ns();
    let cpu_seconds = report::process_cpu_seconds()
        .zip(cpu_at_start)
        .map(|(end, start)| end - start);
    sampler_stop.store(true, Ordering::SeqCst);
    if let Some(Ok(Some(edges))) = sampler.map(thread::JoinHandle::join)
        && let Ok(mut all) = traces.lock()
    {
        all.push(edges);
    }
    let launch::Threads {
        mut handles,
        counters,
        spawn_error,
        ..
    } = threads;
    let mut stuck = Vec::new();
    for (i, (name, handle)) in handles.iter_mut().enumerate() {
        if finished[i] {
            if let Some(h) = handle.take() {
                h.join().ok();
            }
        } else {
            stuck.push(name.clone());
        }
    }

    let trace = if options.trace {
        let threads = std::mem::take(&mut *traces.lock().unwrap_or_else(|p| p.into_inner()));
        Some(Trace::new(threads, &graph.name, shared.start))
    } else {
        None
    };
    let error = spawn_error.or_else(|| shared.first_error.lock().ok().and_then(|mut e| e.take()));
    let stopped = options.stop.load(Ordering::SeqCst);
    let report = report::build(
        graph,
        &counters,
        &logs,
        &edge_counters,
        wall_ns,
        cpu_seconds,
        error.as_ref(),
        stopped,
    );
    let run = Run { report, trace };
    match error {
        Some(error) => Err(Box::new(Failure { error, stuck, run })),
        None => Ok(run),
    }
}

fn out_capacity(graph: &Graph, node: &simclr_config::Node) -> usize {
    node.outputs
        .iter()
        .map(|&e| graph.edges[e].capacity)
        .max()
        .unwrap_or(1)
}

fn empty_run(graph: &Graph, shared: &Shared) -> Run {
    let counters: Vec<Vec<Arc<Counters>>> = graph
        .nodes
        .iter()
        .map(|n| {
            (0..n.threads)
                .map(|_| Arc::new(Counters::default()))
                .collect()
        })
        .collect();
    let edges: Vec<Arc<EdgeCounters>> = graph
        .edges
        .iter()
        .map(|_| Arc::new(EdgeCounters::default()))
        .collect();
    let logs: Vec<Arc<simclr_core::StageLog>> = graph
        .nodes
        .iter()
        .map(|_| Arc::new(simclr_core::StageLog::default()))
        .collect();
    Run {
        report: report::build(
            graph,
            &counters,
            &logs,
            &edges,
            shared.now_ns(),
            None,
            None,
            false,
        ),
        trace: None,
    }
}

/// Tells the main thread a thread has ended, however it ended.
struct DoneGuard {
    tx: Sender<usize>,
    index: usize,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.tx.send(self.index).ok();
    }
}

/// Nanoseconds as an `AtomicU64` add.
pub(crate) fn add(counter: &AtomicU64, d: Duration) {
    counter.fetch_add(
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}
