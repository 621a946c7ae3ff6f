//! The phases of [`crate::run`]: make the channels, build every instance, spawn the threads,
//! start the sampler, and wait for the threads with a grace period after a cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use simclr_config::{Graph, Node};
use simclr_core::{Instance, Message, StageLog};

use crate::io::{self, Envelope, FanOut, Inputs};
use crate::worker::{self, Counters, EdgeCounters, WorkerSetup};
use crate::{DoneGuard, Failure, RunError, RunOptions, Shared, empty_run, out_capacity, trace};

/// One bounded channel per edge and per credit edge, taken by the threads as they spawn.
pub(crate) struct Channels {
    edge_tx: Vec<Option<Sender<Message>>>,
    edge_rx: Vec<Option<Receiver<Message>>>,
    /// Receiver clones for the sampler to read queue lengths: holding a sender would keep an
    /// edge open after its producer ended, and end-of-stream would never arrive.
    edge_probe: Vec<Receiver<Message>>,
    edge_counters: Vec<Arc<EdgeCounters>>,
    credit_tx: Vec<Vec<Sender<()>>>,
    credit_rx: Vec<Option<Receiver<()>>>,
}

impl Channels {
    pub fn new(graph: &Graph) -> Self {
        let mut channels = Self {
            edge_tx: Vec::new(),
            edge_rx: Vec::new(),
            edge_probe: Vec::new(),
            edge_counters: graph
                .edges
                .iter()
                .map(|_| Arc::new(EdgeCounters::default()))
                .collect(),
            credit_tx: vec![Vec::new(); graph.nodes.len()],
            credit_rx: vec![None; graph.nodes.len()],
        };
        for edge in &graph.edges {
            let (tx, rx) = bounded(edge.capacity);
            channels.edge_probe.push(rx.clone());
            channels.edge_tx.push(Some(tx));
            channels.edge_rx.push(Some(rx));
        }
        for credit in &graph.credits {
            let (tx, rx) = bounded(credit.window);
            for _ in 0..credit.window {
                tx.try_send(()).ok();
            }
            channels.credit_tx[credit.from].push(tx);
            channels.credit_rx[credit.to] = Some(rx);
        }
        channels
    }

    /// What the sampler and the report keep; every sender and receiver no thread took is
    /// dropped here, before the run is waited for (end of stream is "every sender dropped").
    pub fn into_probes(self) -> (Vec<Receiver<Message>>, Vec<Arc<EdgeCounters>>) {
        let Self {
            edge_tx,
            edge_rx,
            edge_probe,
            edge_counters,
            credit_tx,
            credit_rx,
        } = self;
        drop((edge_tx, edge_rx, credit_tx, credit_rx));
        (edge_probe, edge_counters)
    }
}

/// Every node's worker instances, and the sources' total length when every source knows its own.
pub(crate) type Instances = (Vec<Vec<Instance>>, Option<u64>);

/// Every node's instances, built on this thread before any thread starts (a kind that builds
/// the wrong sort of instance is caught here), and the sources' total length for the
/// progress bar.
pub(crate) fn instantiate(
    graph: &Graph,
    options: &RunOptions,
    shared: &Shared,
) -> Result<Instances, Box<Failure>> {
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
                let run = empty_run(graph, shared);
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
    Ok((instances, total_hint))
}

/// The threads of a run as they are spawned: each tells `done` its index when it ends.
pub(crate) struct Threads {
    pub handles: Vec<(String, Option<thread::JoinHandle<()>>)>,
    pub counters: Vec<Vec<Arc<Counters>>>,
    pub spawn_error: Option<RunError>,
    done_tx: Sender<usize>,
    pub done_rx: Receiver<usize>,
}

impl Threads {
    pub fn new() -> Self {
        let (done_tx, done_rx) = unbounded::<usize>();
        Self {
            handles: Vec::new(),
            counters: Vec::new(),
            spawn_error: None,
            done_tx,
            done_rx,
        }
    }

    /// Spawn `body` as thread `name`; a thread that cannot be spawned cancels the run.
    fn spawn(&mut self, shared: &Shared, name: String, body: Box<dyn FnOnce() + Send>) {
        let done = self.done_tx.clone();
        let index = self.handles.len();
        let result = thread::Builder::new().name(name.clone()).spawn(move || {
            let _guard = DoneGuard { tx: done, index };
            body();
        });
        match result {
            Ok(h) => self.handles.push((name, Some(h))),
            Err(source) => {
                self.spawn_error.get_or_insert(RunError::Spawn {
                    stage: name.clone(),
                    source,
                });
                shared.signals.cancel.store(true, Ordering::SeqCst);
            }
        }
    }

    /// No more threads: only theirs keep the done channel open.
    pub fn sealed(mut self) -> Self {
        let (closed, _) = unbounded();
        drop(std::mem::replace(&mut self.done_tx, closed));
        self
    }
}

/// What every worker of a run shares, for [`spawn_node`].
pub(crate) struct RunContext<'a> {
    pub graph: &'a Graph,
    pub options: &'a RunOptions,
    pub shared: &'a Arc<Shared>,
    pub logs: &'a [Arc<StageLog>],
    pub traces: &'a Arc<Mutex<Vec<trace::ThreadTrace>>>,
}

/// Spawn node `n`'s threads: its workers, and for ordered parallel kinds a dispatcher (inputs
/// round-robin to private worker queues) and a collector (outputs back in input order).
pub(crate) fn spawn_node(
    cx: &RunContext<'_>,
    n: usize,
    instances: Vec<Instance>,
    channels: &mut Channels,
    threads: &mut Threads,
) {
    let RunContext {
        graph,
        options,
        shared,
        logs,
        traces,
    } = *cx;
    let node: &Node = &graph.nodes[n];
    let inputs: Arc<[String]> = node
        .inputs
        .iter()
        .map(|&e| graph.nodes[graph.edges[e].from].id.clone())
        .collect();
    let out_edges: Vec<(Sender<Message>, Arc<EdgeCounters>)> = node
        .outputs
        .iter()
        .filter_map(|&e| {
            channels.edge_tx[e]
                .take()
                .map(|tx| (tx, channels.edge_counters[e].clone()))
        })
        .collect();
    let in_edges: Vec<(usize, Receiver<Message>)> = node
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, &e)| channels.edge_rx[e].take().map(|rx| (i, rx)))
        .collect();
    let node_counters: Vec<Arc<Counters>> = (0..node.threads)
        .map(|_| Arc::new(Counters::default()))
        .collect();
    threads.counters.push(node_counters.clone());
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
        credit_in: channels.credit_rx[n].clone(),
        credit_out: channels.credit_tx[n].clone(),
        item_limit: limit_share(w),
        traces: traces.clone(),
        thread_name,
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
            threads.spawn(
                shared,
                format!("{}:dispatch", node.id),
                Box::new(move || worker::dispatch(inputs_side, worker_in_tx, &signals)),
            );
        }
        let fan = FanOut::new(out_edges, shared.signals.clone());
        let collector_shared = shared.clone();
        threads.spawn(
            shared,
            format!("{}:collect", node.id),
            Box::new(move || worker::collect(worker_out_rx, fan, &collector_shared)),
        );
        for (w, instance) in instances.into_iter().enumerate() {
            let s = setup(w, worker_name(w));
            let input = if node.inputs.is_empty() {
                Inputs::None
            } else {
                Inputs::Private(worker_in.remove(0))
            };
            let out = io::Target::Collector(worker_out_tx.remove(0));
            threads.spawn(
                shared,
                worker_name(w),
                Box::new(move || worker::run_worker(s, instance, input, out)),
            );
        }
    } else {
        for (w, instance) in instances.into_iter().enumerate() {
            let s = setup(w, worker_name(w));
            let input = if in_edges.is_empty() {
                Inputs::None
            } else {
                Inputs::Edges(in_edges.clone())
            };
            let out = io::Target::Edges(FanOut::new(out_edges.clone(), shared.signals.clone()));
            threads.spawn(
                shared,
                worker_name(w),
                Box::new(move || worker::run_worker(s, instance, input, out)),
            );
        }
    }
}

/// The sampler thread: edge occupancy, progress bar, trace counters; its trace of the edges
/// when it stops.
pub(crate) fn start_sampler(
    cx: &RunContext<'_>,
    edge_probe: Vec<Receiver<Message>>,
    edge_counters: &[Arc<EdgeCounters>],
    counters: &[Vec<Arc<Counters>>],
    total_hint: Option<u64>,
    stop: Arc<AtomicBool>,
) -> Option<thread::JoinHandle<Option<trace::ThreadTrace>>> {
    let graph = cx.graph;
    let probes: Vec<(Receiver<Message>, usize, Arc<EdgeCounters>)> = edge_probe
        .into_iter()
        .zip(&graph.edges)
        .zip(edge_counters)
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
        .zip(counters)
        .filter(|(n, _)| n.inputs.is_empty())
        .flat_map(|(_, c)| c.iter().cloned())
        .collect();
    let shared = cx.shared.clone();
    let interval = cx.options.sample_interval;
    let progress = cx.options.progress;
    let logs = cx.logs.to_vec();
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
}

/// Wait for every thread; after a cancellation, for at most `grace`. Which ones ended.
pub(crate) fn join_with_grace(threads: &Threads, shared: &Shared, grace: Duration) -> Vec<bool> {
    let mut remaining = threads.handles.len();
    let mut deadline: Option<Instant> = None;
    let mut finished = vec![false; threads.handles.len()];
    while remaining > 0 {
        if deadline.is_none() && shared.signals.is_cancelled() {
            deadline = Some(Instant::now() + grace);
        }
        let wait = deadline.map_or(Duration::from_millis(100), |d| {
            d.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100))
        });
        match threads.done_rx.recv_timeout(wait) {
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
    finished
}
