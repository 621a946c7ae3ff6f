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
pub mod report;
pub mod trace;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use simclr_config::Graph;
use simclr_core::stage::Signals;
use simclr_core::{Instance, Message, StageError};

pub use report::RunReport;
pub use trace::Trace;

use crate::io::{Envelope, FanOut, Inputs};
use crate::worker::{Counters, EdgeCounters, WorkerSetup};

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

    // Channels: one bounded channel per edge, one per credit edge.
    let mut edge_tx: Vec<Option<Sender<Message>>> = Vec::new();
    let mut edge_rx: Vec<Option<Receiver<Message>>> = Vec::new();
    // The sampler reads queue lengths through receiver clones: holding a sender would keep an
    // edge open after its producer ended, and end-of-stream would never arrive.
    let mut edge_probe: Vec<Receiver<Message>> = Vec::new();
    let edge_counters: Vec<Arc<EdgeCounters>> = graph
        .edges
        .iter()
        .map(|_| Arc::new(EdgeCounters::default()))
        .collect();
    for edge in &graph.edges {
        let (tx, rx) = bounded(edge.capacity);
        edge_probe.push(rx.clone());
        edge_tx.push(Some(tx));
        edge_rx.push(Some(rx));
    }
    let mut credit_tx: Vec<Vec<Sender<()>>> = vec![Vec::new(); graph.nodes.len()];
    let mut credit_rx: Vec<Option<Receiver<()>>> = vec![None; graph.nodes.len()];
    for credit in &graph.credits {
        let (tx, rx) = bounded(credit.window);
        for _ in 0..credit.window {
            tx.try_send(()).ok();
        }
        credit_tx[credit.from].push(tx);
        credit_rx[credit.to] = Some(rx);
    }

    // Instances first, on this thread: a kind that builds the wrong sort of instance is caught
    // before any thread starts, and sources report their lengths for the progress bar.
    let mut instances: Vec<Vec<Instance>> = Vec::new();
    let mut total_hint: Option<u64> = Some(0);
    for node in &graph.nodes {
        let is_source = node.inputs.is_empty();
        let mut list = Vec::new();
        for w in 0..node.threads {
            let instance = node.factory.instance(w);
            let built = match &instance {
                Instance::Source(s) => {
                    total_hint = match (total_hint, s.len_hint()) {
                        (Some(t), Some(n)) => Some(t + n),
                        _ => None,
                    };
                    "source"
                }
                Instance::Stage(_) => "stage",
            };
            if (built == "source") != is_source {
                let expected = if is_source { "source" } else { "stage" };
                let run = empty_run(graph, &shared);
                let error = RunError::InstanceMismatch {
                    stage: node.id.clone(),
                    kind: node.kind.name,
                    built,
                    expected,
                };
                return Err(Box::new(Failure {
                    error,
                    stuck: Vec::new(),
                    run,
                }));
            }
            list.push(instance);
        }
        instances.push(list);
    }
    if let Some(limit) = options.item_limit {
        let sources = graph.nodes.iter().filter(|n| n.inputs.is_empty()).count() as u64;
        total_hint = Some(total_hint.map_or(limit * sources, |t| t.min(limit * sources)));
    }

    // Threads.
    let logs: Vec<Arc<simclr_core::StageLog>> = graph
        .nodes
        .iter()
        .map(|_| Arc::new(simclr_core::StageLog::default()))
        .collect();
    let (done_tx, done_rx) = unbounded::<usize>();
    let mut handles: Vec<(String, Option<thread::JoinHandle<()>>)> = Vec::new();
    let mut counters: Vec<Vec<Arc<Counters>>> = Vec::new();
    let traces: Arc<Mutex<Vec<trace::ThreadTrace>>> = Arc::new(Mutex::new(Vec::new()));
    let mut spawn_error: Option<RunError> = None;

    for (n, node) in graph.nodes.iter().enumerate() {
        let inputs: Arc<[String]> = node
            .inputs
            .iter()
            .map(|&e| graph.nodes[graph.edges[e].from].id.clone())
            .collect();
        let out_edges: Vec<(Sender<Message>, Arc<EdgeCounters>)> = node
            .outputs
            .iter()
            .filter_map(|&e| edge_tx[e].take().map(|tx| (tx, edge_counters[e].clone())))
            .collect();
        let in_edges: Vec<(usize, Receiver<Message>)> = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, &e)| edge_rx[e].take().map(|rx| (i, rx)))
            .collect();
        let node_counters: Vec<Arc<Counters>> = (0..node.threads)
            .map(|_| Arc::new(Counters::default()))
            .collect();
        counters.push(node_counters.clone());
        let limit_share = |w: usize| {
            options.item_limit.map(|l| {
                let k = node.threads as u64;
                l / k + u64::from((w as u64) < l % k)
            })
        };
        let setup = |w: usize, thread_name: String| WorkerSetup {
            shared: shared.clone(),
            stage_id: node.id.clone(),
            kind: node.kind.name,
            worker: w,
            workers: node.threads,
            seed: graph.seed,
            log: logs[n].clone(),
            inputs: inputs.clone(),
            output_type: node.output_type,
            counters: node_counters[w].clone(),
            credit_in: credit_rx[n].clone(),
            credit_out: credit_tx[n].clone(),
            item_limit: limit_share(w),
            traces: traces.clone(),
            thread_name,
        };
        let mut spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
            let done = done_tx.clone();
            let index = handles.len();
            let result = thread::Builder::new().name(name.clone()).spawn(move || {
                let _guard = DoneGuard { tx: done, index };
                body();
            });
            match result {
                Ok(h) => handles.push((name, Some(h))),
                Err(source) => {
                    spawn_error.get_or_insert(RunError::Spawn {
                        stage: name.clone(),
                        source,
                    });
                    shared.signals.cancel.store(true, Ordering::SeqCst);
                }
            }
        };
        let worker_name = |w: usize| {
            if node.threads > 1 {
                format!("{}#{w}", node.id)
            } else {
                node.id.clone()
            }
        };

        if node.ordered && node.threads > 1 {
            // Dispatcher -> private worker inputs; worker outputs -> collector -> edges.
            let mut worker_in: Vec<Receiver<(usize, Message)>> = Vec::new();
            let mut worker_in_tx: Vec<Sender<(usize, Message)>> = Vec::new();
            let mut worker_out_rx: Vec<Receiver<Envelope>> = Vec::new();
            let mut worker_out_tx: Vec<Sender<Envelope>> = Vec::new();
            for _ in 0..node.threads {
                let (tx, rx) = bounded(1);
                worker_in_tx.push(tx);
                worker_in.push(rx);
                let (tx, rx) = bounded(out_capacity(graph, node));
                worker_out_tx.push(tx);
                worker_out_rx.push(rx);
            }
            if !in_edges.is_empty() {
                let signals = shared.signals.clone();
                let inputs_side = Inputs::Edges(in_edges);
                spawn(
                    format!("{}:dispatch", node.id),
                    Box::new(move || worker::dispatch(inputs_side, worker_in_tx, &signals)),
                );
            }
            let fan = FanOut::new(out_edges, shared.signals.clone());
            let collector_shared = shared.clone();
            spawn(
                format!("{}:collect", node.id),
                Box::new(move || worker::collect(worker_out_rx, fan, &collector_shared)),
            );
            for (w, instance) in std::mem::take(&mut instances[n]).into_iter().enumerate() {
                let s = setup(w, worker_name(w));
                let input = if node.inputs.is_empty() {
                    Inputs::None
                } else {
                    Inputs::Private(worker_in.remove(0))
                };
                let out = io::Target::Collector(worker_out_tx.remove(0));
                spawn(
                    worker_name(w),
                    Box::new(move || worker::run_worker(s, instance, input, out)),
                );
            }
        } else {
            for (w, instance) in std::mem::take(&mut instances[n]).into_iter().enumerate() {
                let s = setup(w, worker_name(w));
                let input = if in_edges.is_empty() {
                    Inputs::None
                } else {
                    Inputs::Edges(in_edges.clone())
                };
                let out = io::Target::Edges(FanOut::new(out_edges.clone(), shared.signals.clone()));
                spawn(
                    worker_name(w),
                    Box::new(move || worker::run_worker(s, instance, input, out)),
                );
            }
        }
    }
    drop(edge_tx);
    drop(edge_rx);
    drop(credit_tx);
    drop(credit_rx);
    drop(done_tx);

    // Sampler: edge occupancy, progress bar, trace counters.
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = sampler_stop.clone();
        let probes: Vec<(Receiver<Message>, usize, Arc<EdgeCounters>)> = edge_probe
            .into_iter()
            .zip(&graph.edges)
            .zip(&edge_counters)
            .map(|((tx, e), c)| (tx, e.capacity, c.clone()))
            .collect();
        let edge_names: Vec<String> = graph
            .edges
            .iter()
            .map(|e| format!("{} -> {}", graph.nodes[e.from].id, graph.nodes[e.to].id))
            .collect();
        let source_counters: Vec<Arc<Counters>> = graph
            .nodes
            .iter()
            .zip(&counters)
            .filter(|(n, _)| n.inputs.is_empty())
            .flat_map(|(_, c)| c.iter().cloned())
            .collect();
        let shared = shared.clone();
        let interval = options.sample_interval;
        let progress = options.progress;
        let logs = logs.clone();
        thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                worker::sample(
                    &shared,
                    &stop,
                    probes,
                    edge_names,
                    source_counters,
                    total_hint,
                    interval,
                    progress,
                    &logs,
                )
            })
            .ok()
    };

    // Wait for every thread; after a cancellation, for at most the grace period.
    let mut remaining = handles.len();
    let mut deadline: Option<Instant> = None;
    let mut finished = vec![false; handles.len()];
    while remaining > 0 {
        if deadline.is_none() && shared.signals.is_cancelled() {
            deadline = Some(Instant::now() + options.shutdown_grace);
        }
        let wait = deadline.map_or(Duration::from_millis(100), |d| {
            d.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100))
        });
        match done_rx.recv_timeout(wait) {
            Ok(i) => {
                finished[i] = true;
                remaining -= 1;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
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
        Some(Trace::new(threads, &graph.name))
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
