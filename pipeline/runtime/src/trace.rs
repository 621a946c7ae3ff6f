//! Chrome trace-event JSON (opens in Perfetto and chrome://tracing): one track per stage
//! worker with `process` spans and the waits between them, plus an occupancy counter per edge.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Spans recorded beyond this per thread are counted, not kept.
const MAX_SPANS_PER_THREAD: usize = 250_000;

/// One span on a worker's track.
#[derive(Clone, Debug)]
pub struct Span {
    /// The stage id for `process` spans; `wait input` / `wait output` / `wait credit` for waits.
    pub name: String,
    /// `process`, `starved` or `blocked`.
    pub cat: &'static str,
    /// Start, in nanoseconds since the run began.
    pub ts_ns: u64,
    /// Duration in nanoseconds.
    pub dur_ns: u64,
}

/// One sample of an edge's occupancy.
#[derive(Clone, Debug)]
pub struct CounterEvent {
    /// `from -> to`.
    pub name: String,
    /// When, in nanoseconds since the run began.
    pub ts_ns: u64,
    /// Messages queued on the edge.
    pub value: u64,
}

/// What one thread recorded.
#[derive(Clone, Debug)]
pub struct ThreadTrace {
    /// Track name (`views#2`).
    pub name: String,
    /// Spans, in time order.
    pub spans: Vec<Span>,
    /// Counter samples (the sampler thread only).
    pub counters: Vec<CounterEvent>,
    /// Spans not kept because of the per-thread cap.
    pub dropped: u64,
}

impl ThreadTrace {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            spans: Vec::new(),
            counters: Vec::new(),
            dropped: 0,
        }
    }

    pub(crate) fn span(
        &mut self,
        name: &str,
        cat: &'static str,
        origin: Instant,
        start: Instant,
        dur: Duration,
    ) {
        if self.spans.len() >= MAX_SPANS_PER_THREAD {
            self.dropped += 1;
            return;
        }
        let ts_ns =
            u64::try_from(start.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX);
        let dur_ns = u64::try_from(dur.as_nanos()).unwrap_or(u64::MAX);
        self.spans.push(Span {
            name: name.to_owned(),
            cat,
            ts_ns,
            dur_ns,
        });
    }
}

/// Everything recorded during a run.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Pipeline name (the process name in the viewer).
    pub pipeline: String,
    /// One entry per thread, sorted by name.
    pub threads: Vec<ThreadTrace>,
    /// When the run began: the spans' time origin.
    pub started: Instant,
}

impl Trace {
    pub(crate) fn new(mut threads: Vec<ThreadTrace>, pipeline: &str, started: Instant) -> Self {
        threads.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            pipeline: pipeline.to_owned(),
            threads,
            started,
        }
    }

    /// Add a track `name` with one span per `(name, category, start, duration)`, e.g. what a
    /// stage measured itself (time in collectives between ranks).
    pub fn add_track(
        &mut self,
        name: &str,
        spans: impl IntoIterator<Item = (String, &'static str, Instant, Duration)>,
    ) {
        let mut track = ThreadTrace::new(name.to_owned());
        for (what, cat, start, dur) in spans {
            track.span(&what, cat, self.started, start, dur);
        }
        self.threads.push(track);
    }

    /// Spans dropped because of the per-thread cap.
    pub fn dropped(&self) -> u64 {
        self.threads.iter().map(|t| t.dropped).sum()
    }

    /// The trace as a Chrome trace-event JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let mut events = vec![
            json!({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": format!("simclr: {}", self.pipeline)}}),
        ];
        for (i, t) in self.threads.iter().enumerate() {
            let tid = i + 1;
            events.push(json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": t.name}}));
            events.push(json!({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}}));
            for s in &t.spans {
                events.push(json!({
                    "name": s.name, "cat": s.cat, "ph": "X", "pid": 1, "tid": tid,
                    "ts": s.ts_ns as f64 / 1e3, "dur": s.dur_ns as f64 / 1e3,
                }));
            }
            for c in &t.counters {
                events.push(json!({
                    "name": format!("queue {}", c.name), "ph": "C", "pid": 1, "tid": tid,
                    "ts": c.ts_ns as f64 / 1e3, "args": {"messages": c.value},
                }));
            }
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }

    /// Write [`Trace::to_json`] to `path`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(&mut file, &self.to_json())?;
        file.flush()
    }
}
