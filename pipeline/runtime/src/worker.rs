//! The loops that run on each thread: stage and source workers, the dispatcher and collector
//! of ordered parallel stages, and the sampler.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use simclr_core::stage::Signals;
use simclr_core::{
    Emitter, Instance, Message, Outputs, PortType, Source, Stage, StageContext, StageError,
};

use crate::io::{Envelope, FanOut, Inputs, Target, send_blocking};
use crate::trace::{CounterEvent, ThreadTrace};
use crate::{POLL, RunError, Shared, add};

/// Waits shorter than this are not recorded as trace spans (they would swamp the file).
const TRACE_MIN_WAIT: Duration = Duration::from_micros(50);

/// One worker's measurements, readable while it runs.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub items_in: AtomicU64,
    pub items_out: AtomicU64,
    pub busy_ns: AtomicU64,
    pub starved_ns: AtomicU64,
    pub credit_ns: AtomicU64,
    pub blocked_ns: AtomicU64,
    pub startup_ns: AtomicU64,
    /// Run-relative start of the worker's main loop (after `on_start`).
    pub started_ns: AtomicU64,
    /// Run-relative end; 0 while running.
    pub ended_ns: AtomicU64,
}

/// One edge's measurements.
#[derive(Default, Debug)]
pub(crate) struct EdgeCounters {
    pub pushed: AtomicU64,
    pub samples: AtomicU64,
    pub fill_sum: AtomicU64,
    pub full: AtomicU64,
}

/// Everything a worker thread needs.
pub(crate) struct WorkerSetup {
    pub shared: Arc<Shared>,
    pub stage_id: String,
    pub kind: &'static str,
    pub worker: usize,
    pub workers: usize,
    pub seed: u64,
    pub log: Arc<simclr_core::StageLog>,
    pub inputs: Arc<[String]>,
    pub output_type: Option<PortType>,
    pub counters: Arc<Counters>,
    pub credit_in: Option<Receiver<()>>,
    pub credit_out: Vec<Sender<()>>,
    pub item_limit: Option<u64>,
    pub traces: Arc<Mutex<Vec<ThreadTrace>>>,
    pub thread_name: String,
}

/// The runtime's [`Emitter`]: sends, counts, and times backpressure.
struct WorkerEmitter<'a> {
    target: &'a mut Target,
    signals: &'a Signals,
    counters: &'a Counters,
    trace: &'a mut Option<ThreadTrace>,
    shared: &'a Shared,
    blocked: Duration,
}

impl Emitter for WorkerEmitter<'_> {
    fn emit(&mut self, msg: Message) -> Result<(), StageError> {
        let t0 = Instant::now();
        let result = self.target.send(msg, self.signals);
        let waited = t0.elapsed();
        self.blocked += waited;
        add(&self.counters.blocked_ns, waited);
        if result.is_ok() {
            self.counters.items_out.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(trace) = self.trace.as_mut()
            && waited >= TRACE_MIN_WAIT
        {
            trace.span("wait output", "blocked", self.shared.start, t0, waited);
        }
        result
    }
}

/// Run a stage call, turning a panic into [`StageError::Panicked`].
fn guarded<T>(f: impl FnOnce() -> Result<T, StageError>) -> Result<T, StageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(StageError::Panicked(text))
        }
    }
}

/// The body of a stage or source worker thread.
pub(crate) fn run_worker(s: WorkerSetup, instance: Instance, mut input: Inputs, mut out: Target) {
    let signals = s.shared.signals.clone();
    let mut cx = StageContext::new(
        s.stage_id.as_str(),
        s.worker,
        s.workers,
        s.seed,
        s.inputs.clone(),
        signals.clone(),
    )
    .with_log(s.log.clone());
    let mut trace = s
        .shared
        .trace
        .then(|| ThreadTrace::new(s.thread_name.clone()));
    let result = match instance {
        Instance::Source(mut source) => {
            source_loop(&s, source.as_mut(), &mut cx, &mut out, &mut trace)
        }
        Instance::Stage(mut stage) => stage_loop(
            &s,
            stage.as_mut(),
            &mut cx,
            &mut input,
            &mut out,
            &mut trace,
        ),
    };
    s.counters
        .ended_ns
        .store(s.shared.now_ns().max(1), Ordering::Relaxed);
    if let Err(error) = result
        && !error.is_shutdown()
    {
        s.shared.fail(RunError::Stage {
            stage: s.stage_id.clone(),
            kind: s.kind,
            worker: s.worker,
            workers: s.workers,
            source: error,
        });
    }
    if let Some(trace) = trace
        && let Ok(mut all) = s.traces.lock()
    {
        all.push(trace);
    }
}

fn start(
    s: &WorkerSetup,
    on_start: impl FnOnce() -> Result<(), StageError>,
) -> Result<(), StageError> {
    let t = Instant::now();
    let result = guarded(on_start);
    add(&s.counters.startup_ns, t.elapsed());
    s.counters
        .started_ns
        .store(s.shared.now_ns(), Ordering::Relaxed);
    result
}

/// Take one credit if this stage is paced by a credit edge.
fn acquire_credit(s: &WorkerSetup, trace: &mut Option<ThreadTrace>) -> Result<(), StageError> {
    acquire_credit_or_stop(s, trace, false)
}

/// As [`acquire_credit`]; with `stoppable` (a source), a stop request (Ctrl-C, an item limit)
/// also ends the wait: the source then stops producing instead of waiting for a credit that
/// may never come.
fn acquire_credit_or_stop(
    s: &WorkerSetup,
    trace: &mut Option<ThreadTrace>,
    stoppable: bool,
) -> Result<(), StageError> {
    let Some(rx) = &s.credit_in else {
        return Ok(());
    };
    let t0 = Instant::now();
    let result = loop {
        match rx.recv_timeout(POLL) {
            Ok(()) => break Ok(()),
            // The credit source has ended: nothing left to pace.
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                if s.shared.signals.is_cancelled() {
                    break Err(StageError::Cancelled);
                }
                if stoppable && s.shared.signals.should_stop() {
                    break Ok(());
                }
            }
        }
    };
    let waited = t0.elapsed();
    add(&s.counters.starved_ns, waited);
    add(&s.counters.credit_ns, waited);
    if let Some(trace) = trace.as_mut()
        && waited >= TRACE_MIN_WAIT
    {
        trace.span("wait credit", "starved", s.shared.start, t0, waited);
    }
    result
}

fn return_credits(s: &WorkerSetup) {
    for tx in &s.credit_out {
        // A full credit channel means the window is already open; extra credits are dropped.
        tx.try_send(()).ok();
    }
}

/// Run one stage call with outputs wired to `out`: adds its busy time (the call's wall time
/// less the time it spent blocked on full outputs) and returns its result, start and length.
fn timed_call<T>(
    s: &WorkerSetup,
    out: &mut Target,
    trace: &mut Option<ThreadTrace>,
    call: impl FnOnce(&mut Outputs<'_>) -> Result<T, StageError>,
) -> (Result<T, StageError>, Instant, Duration) {
    let start = Instant::now();
    let mut emitter = WorkerEmitter {
        target: out,
        signals: &s.shared.signals,
        counters: &s.counters,
        trace,
        shared: &s.shared,
        blocked: Duration::ZERO,
    };
    let result = {
        let mut outputs = Outputs::new(&mut emitter, s.output_type);
        guarded(|| call(&mut outputs))
    };
    let blocked = emitter.blocked;
    let total = start.elapsed();
    add(&s.counters.busy_ns, total.saturating_sub(blocked));
    (result, start, total)
}

fn stage_loop(
    s: &WorkerSetup,
    stage: &mut dyn Stage,
    cx: &mut StageContext,
    input: &mut Inputs,
    out: &mut Target,
    trace: &mut Option<ThreadTrace>,
) -> Result<(), StageError> {
    let signals = s.shared.signals.clone();
    start(s, || stage.on_start(cx))?;
    let mut holding_credit = false;
    loop {
        let t0 = Instant::now();
        let next = input.recv(&signals);
        let waited = t0.elapsed();
        add(&s.counters.starved_ns, waited);
        if let Some(trace) = trace.as_mut()
            && waited >= TRACE_MIN_WAIT
        {
            trace.span("wait input", "starved", s.shared.start, t0, waited);
        }
        let Some((index, msg)) = next? else { break };
        s.counters.items_in.fetch_add(1, Ordering::Relaxed);
        // A paced stage that emitted nothing for its last message put nothing into the loop,
        // so it keeps the credit it took for it instead of waiting for one to come back.
        if !holding_credit {
            acquire_credit(s, trace)?;
        }
        cx.set_current_input(index);
        let emitted_before = s.counters.items_out.load(Ordering::Relaxed);
        let (result, t1, total) =
            timed_call(s, out, trace, |outputs| stage.process(msg, outputs, cx));
        if let Some(trace) = trace.as_mut() {
            trace.span(&s.stage_id, "process", s.shared.start, t1, total);
        }
        result?;
        holding_credit =
            s.credit_in.is_some() && s.counters.items_out.load(Ordering::Relaxed) == emitted_before;
        return_credits(s);
        out.done(&signals)?;
    }
    if signals.is_cancelled() {
        return Err(StageError::Cancelled);
    }
    timed_call(s, out, trace, |outputs| stage.on_finish(outputs, cx)).0
}

fn source_loop(
    s: &WorkerSetup,
    source: &mut dyn Source,
    cx: &mut StageContext,
    out: &mut Target,
    trace: &mut Option<ThreadTrace>,
) -> Result<(), StageError> {
    let signals = s.shared.signals.clone();
    start(s, || source.on_start(cx))?;
    let mut produced = 0u64;
    loop {
        if signals.should_stop() || s.item_limit.is_some_and(|limit| produced >= limit) {
            signals.truncated.store(true, Ordering::SeqCst);
            break;
        }
        acquire_credit_or_stop(s, trace, true)?;
        if signals.should_stop() {
            signals.truncated.store(true, Ordering::SeqCst);
            break;
        }
        let t1 = Instant::now();
        let next = guarded(|| source.next(cx));
        let took = t1.elapsed();
        add(&s.counters.busy_ns, took);
        if let Some(trace) = trace.as_mut() {
            trace.span(&s.stage_id, "process", s.shared.start, t1, took);
        }
        let Some(msg) = next? else { break };
        produced += 1;
        timed_call(s, out, trace, |outputs| outputs.push(msg)).0?;
        return_credits(s);
        out.done(&signals)?;
    }
    if signals.is_cancelled() {
        return Err(StageError::Cancelled);
    }
    Ok(())
}

/// Ordered parallel stages: hand inputs to workers round-robin.
pub(crate) fn dispatch(
    mut inputs: Inputs,
    workers: Vec<Sender<(usize, Message)>>,
    signals: &Signals,
) {
    let mut next = 0;
    while let Ok(Some(item)) = inputs.recv(signals) {
        if send_blocking(&workers[next], item, signals).is_err() {
            return;
        }
        next = (next + 1) % workers.len();
    }
}

/// Ordered parallel stages: forward worker outputs in round-robin order, which is input order.
pub(crate) fn collect(outputs: Vec<Receiver<Envelope>>, mut fan: FanOut, shared: &Shared) {
    let n = outputs.len();
    let mut finished = vec![false; n];
    let mut left = n;
    let mut w = 0;
    while left > 0 {
        if finished[w] {
            w = (w + 1) % n;
            continue;
        }
        match outputs[w].recv_timeout(POLL) {
            Ok(Envelope::Msg(msg)) => {
                if fan.send(msg).is_err() {
                    return;
                }
            }
            Ok(Envelope::Done) => w = (w + 1) % n,
            Err(RecvTimeoutError::Timeout) => {
                if shared.signals.is_cancelled() {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                finished[w] = true;
                left -= 1;
                w = (w + 1) % n;
            }
        }
    }
}

/// Edge occupancy sampling, trace counters and the progress bar.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample(
    shared: &Shared,
    stop: &AtomicBool,
    probes: Vec<(Receiver<Message>, usize, Arc<EdgeCounters>)>,
    edge_names: Vec<String>,
    source_counters: Vec<Arc<Counters>>,
    total: Option<u64>,
    interval: Duration,
    progress: bool,
    logs: &[Arc<simclr_core::StageLog>],
) -> Option<ThreadTrace> {
    const MAX_COUNTER_EVENTS: usize = 200_000;
    let bar = progress.then(|| crate::report::progress_bar(total));
    let mut trace = shared.trace.then(|| ThreadTrace::new("edges".into()));
    let mut last_len: Vec<usize> = vec![usize::MAX; probes.len()];
    let mut last_draw = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now_ns = shared.now_ns();
        for (i, (tx, capacity, counters)) in probes.iter().enumerate() {
            let len = tx.len();
            counters.samples.fetch_add(1, Ordering::Relaxed);
            counters.fill_sum.fetch_add(len as u64, Ordering::Relaxed);
            if len >= *capacity {
                counters.full.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(trace) = trace.as_mut()
                && len != last_len[i]
                && trace.counters.len() < MAX_COUNTER_EVENTS
            {
                trace.counters.push(CounterEvent {
                    name: edge_names[i].clone(),
                    ts_ns: now_ns,
                    value: len as u64,
                });
                last_len[i] = len;
            }
        }
        if let Some(bar) = &bar
            && last_draw.elapsed() >= Duration::from_millis(100)
        {
            let produced: u64 = source_counters
                .iter()
                .map(|c| c.items_out.load(Ordering::Relaxed))
                .sum();
            bar.set_position(produced);
            let status: Vec<String> = logs
                .iter()
                .map(|l| l.status())
                .filter(|s| !s.is_empty())
                .collect();
            if !status.is_empty() {
                bar.set_message(status.join("  "));
            }
            last_draw = Instant::now();
        }
        std::thread::sleep(interval);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    trace
}
