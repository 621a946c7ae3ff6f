//! What a run measured, the bottleneck analysis, and the end-of-run table.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use simclr_config::Graph;
use simclr_core::Parallelism;

use crate::RunError;
use crate::worker::{Counters, EdgeCounters};

/// A stage busier than this fraction of its time is a bottleneck candidate.
const MIN_BUSY: f64 = 0.05;
/// A stage waiting more than this fraction of its time is listed as starved or blocked.
const WAIT_FLAG: f64 = 0.25;

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every stream reached its end.
    Completed,
    /// A stop was requested (Ctrl-C or an item limit) and the pipeline drained.
    Stopped,
    /// A stage failed.
    Failed,
}

/// One stage's totals over its workers.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    /// Stage id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Worker threads.
    pub workers: usize,
    /// Messages received.
    pub items_in: u64,
    /// Messages sent.
    pub items_out: u64,
    /// Seconds inside `process`/`next` (not counting time blocked on output).
    pub busy_seconds: f64,
    /// Seconds waiting for input or credit.
    pub starved_seconds: f64,
    /// Of which waiting for a step credit.
    pub credit_wait_seconds: f64,
    /// Seconds waiting for room on an output edge.
    pub blocked_seconds: f64,
    /// Seconds in `on_start`.
    pub startup_seconds: f64,
    /// Worker-seconds of the main loop (the denominator of the fractions).
    pub lifetime_seconds: f64,
    /// busy / lifetime.
    pub utilization: f64,
    /// starved / lifetime.
    pub starved_fraction: f64,
    /// blocked / lifetime.
    pub blocked_fraction: f64,
    /// Messages handled per second of wall time (received, or sent by sources).
    pub items_per_second: f64,
    /// Mean busy milliseconds per message, per worker.
    pub ms_per_item: f64,
    /// Items skipped under `on_error: skip`.
    pub skipped: u64,
    /// The first skipped items, described.
    pub skipped_examples: Vec<String>,
    /// Every distinct skipped item (up to [`simclr_core::MAX_SKIP_RECORDS`]); written to the
    /// run folder's `skipped.jsonl`, not to the metrics.
    #[serde(skip)]
    pub skipped_items: Vec<simclr_core::SkippedItem>,
    /// Skips of items beyond that cap: counted, not named.
    #[serde(skip)]
    pub skipped_unlisted: u64,
    /// Remarks the stage added (checksums, counts, warnings).
    pub notes: Vec<String>,
}

/// One edge's sampled occupancy.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeReport {
    /// Producer id.
    pub from: String,
    /// Consumer id.
    pub to: String,
    /// Capacity in messages.
    pub capacity: usize,
    /// Messages pushed.
    pub pushed: u64,
    /// Mean queued messages over the samples.
    pub mean_occupancy: f64,
    /// mean_occupancy / capacity.
    pub mean_fill: f64,
    /// Fraction of samples in which the edge was full.
    pub full_fraction: f64,
    /// Number of samples.
    pub samples: u64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Pipeline name.
    pub pipeline: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, for failed runs.
    pub error: Option<String>,
    /// Wall-clock seconds from start to the last thread's end.
    pub wall_seconds: f64,
    /// Stages, sources first.
    pub stages: Vec<StageReport>,
    /// Edges.
    pub edges: Vec<EdgeReport>,
    /// The stage with the highest utilization, if any stage was busy.
    pub bottleneck: Option<String>,
    /// Stages that spent a large share of their time blocked on full outputs.
    pub blocked: Vec<String>,
    /// Stages (other than the bottleneck) that spent a large share of their time starved.
    pub starved: Vec<String>,
    /// A suggestion for the bottleneck, if there is an obvious one.
    pub hint: Option<String>,
    /// Cores the process kept busy on average (user + system CPU time / wall time), where
    /// the platform reports it.
    pub cpu_cores_used: Option<f64>,
    /// Cores available to the process.
    pub cpu_cores: usize,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    graph: &Graph,
    counters: &[Vec<Arc<Counters>>],
    logs: &[Arc<simclr_core::StageLog>],
    edges: &[Arc<EdgeCounters>],
    wall_ns: u64,
    cpu_seconds: Option<f64>,
    error: Option<&RunError>,
    stopped: bool,
) -> RunReport {
    let wall = secs(wall_ns);
    let mut stages = Vec::new();
    for ((node, workers), log) in graph.nodes.iter().zip(counters).zip(logs) {
        let load = |f: fn(&Counters) -> u64| workers.iter().map(|c| f(c)).sum::<u64>();
        let lifetime_ns: u64 = workers
            .iter()
            .map(|c| {
                let start = c.started_ns.load(Ordering::Relaxed);
                let end = c.ended_ns.load(Ordering::Relaxed);
                let end = if end == 0 { wall_ns } else { end };
                end.saturating_sub(start)
            })
            .sum();
        let items_in = load(|c| c.items_in.load(Ordering::Relaxed));
        let items_out = load(|c| c.items_out.load(Ordering::Relaxed));
        let busy = secs(load(|c| c.busy_ns.load(Ordering::Relaxed)));
        let starved = secs(load(|c| c.starved_ns.load(Ordering::Relaxed)));
        let blocked = secs(load(|c| c.blocked_ns.load(Ordering::Relaxed)));
        let lifetime = secs(lifetime_ns);
        let handled = if node.inputs.is_empty() {
            items_out
        } else {
            items_in
        };
        stages.push(StageReport {
            id: node.id.clone(),
            kind: node.kind.name.to_owned(),
            workers: node.workers,
            items_in,
            items_out,
            busy_seconds: busy,
            starved_seconds: starved,
            credit_wait_seconds: secs(load(|c| c.credit_ns.load(Ordering::Relaxed))),
            blocked_seconds: blocked,
            startup_seconds: secs(load(|c| c.startup_ns.load(Ordering::Relaxed))),
            lifetime_seconds: lifetime,
            utilization: ratio(busy, lifetime),
            starved_fraction: ratio(starved, lifetime),
            blocked_fraction: ratio(blocked, lifetime),
            items_per_second: if wall > 0.0 {
                handled as f64 / wall
            } else {
                0.0
            },
            ms_per_item: if handled > 0 {
                1e3 * busy / handled as f64
            } else {
                0.0
            },
            skipped: log.skipped(),
            skipped_examples: log.skip_examples(),
            skipped_items: log.skipped_items(),
            skipped_unlisted: log.skipped_unlisted(),
            notes: log.notes(),
        });
    }
    let edges: Vec<EdgeReport> = graph
        .edges
        .iter()
        .zip(edges)
        .map(|(e, c)| {
            let samples = c.samples.load(Ordering::Relaxed);
            let mean = if samples > 0 {
                c.fill_sum.load(Ordering::Relaxed) as f64 / samples as f64
            } else {
                0.0
            };
            EdgeReport {
                from: graph.nodes[e.from].id.clone(),
                to: graph.nodes[e.to].id.clone(),
                capacity: e.capacity,
                pushed: c.pushed.load(Ordering::Relaxed),
                mean_occupancy: mean,
                mean_fill: ratio(mean, e.capacity as f64),
                full_fraction: ratio(c.full.load(Ordering::Relaxed) as f64, samples as f64),
                samples,
            }
        })
        .collect();

    // The bottleneck is the busiest stage that is not itself held back by a full output:
    // a stage blocked on its consumer is limited by that consumer, however busy it looks.
    let busiest = |free_only: bool| {
        stages
            .iter()
            .filter(|s| s.utilization >= MIN_BUSY && (!free_only || s.blocked_fraction < WAIT_FLAG))
            .max_by(|a, b| a.utilization.total_cmp(&b.utilization))
            .map(|s| s.id.clone())
    };
    let bottleneck = busiest(true).or_else(|| busiest(false));
    let mut blocked: Vec<&StageReport> = stages
        .iter()
        .filter(|s| s.blocked_fraction >= WAIT_FLAG)
        .collect();
    blocked.sort_by(|a, b| b.blocked_fraction.total_cmp(&a.blocked_fraction));
    let mut starved: Vec<&StageReport> = stages
        .iter()
        .zip(&graph.nodes)
        .filter(|(s, n)| {
            !n.inputs.is_empty()
                && s.starved_fraction >= WAIT_FLAG
                && Some(&s.id) != bottleneck.as_ref()
        })
        .map(|(s, _)| s)
        .collect();
    starved.sort_by(|a, b| b.starved_fraction.total_cmp(&a.starved_fraction));
    let hint = bottleneck.as_ref().and_then(|id| {
        let node = graph.nodes.iter().find(|n| &n.id == id)?;
        match node.kind.parallelism {
            Parallelism::Parallel { .. } => Some(format!(
                "`{id}` runs {} worker(s) and allows more: raise `workers:` on it",
                node.workers
            )),
            Parallelism::Internal => Some(format!(
                "`{id}` runs a pool of {} thread(s): raise `workers:` on it if cores are idle",
                node.workers
            )),
            Parallelism::Single => Some(format!(
                "`{id}` runs on one thread; make it cheaper, or split its work upstream"
            )),
        }
    });
    let outcome = if error.is_some() {
        Outcome::Failed
    } else if stopped {
        Outcome::Stopped
    } else {
        Outcome::Completed
    };
    RunReport {
        pipeline: graph.name.clone(),
        outcome,
        error: error.map(ToString::to_string),
        wall_seconds: wall,
        blocked: blocked.iter().map(|s| s.id.clone()).collect(),
        starved: starved.iter().map(|s| s.id.clone()).collect(),
        stages,
        edges,
        bottleneck,
        hint,
        cpu_cores_used: cpu_seconds.filter(|_| wall > 0.0).map(|c| c / wall),
        cpu_cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

fn count(x: u64) -> String {
    x.to_string()
}

fn table(
    f: &mut fmt::Formatter<'_>,
    header: &[&str],
    rows: &[Vec<String>],
    left: usize,
) -> fmt::Result {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, cells: Vec<&str>| -> fmt::Result {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i < left {
                text.push_str(&format!("{cell:<w$}", w = width[i]));
            } else {
                text.push_str(&format!("{cell:>w$}", w = width[i]));
            }
        }
        writeln!(f, "{}", text.trim_end())
    };
    line(f, header.to_vec())?;
    for row in rows {
        line(f, row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Completed => "completed",
            Outcome::Stopped => "stopped",
            Outcome::Failed => "failed",
        };
        writeln!(
            f,
            "pipeline `{}` {outcome} in {:.2} s",
            self.pipeline, self.wall_seconds
        )?;
        writeln!(f)?;
        let rows: Vec<Vec<String>> = self
            .stages
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.kind.clone(),
                    s.workers.to_string(),
                    count(s.items_in),
                    count(s.items_out),
                    format!("{:.1}", s.items_per_second),
                    format!("{:.3}", s.ms_per_item),
                    pct(s.utilization),
                    pct(s.starved_fraction),
                    pct(s.blocked_fraction),
                ]
            })
            .collect();
        table(
            f,
            &[
                "stage", "kind", "workers", "in", "out", "items/s", "ms/item", "busy", "starved",
                "blocked",
            ],
            &rows,
            2,
        )?;
        if !self.edges.is_empty() {
            writeln!(f)?;
            let rows: Vec<Vec<String>> = self
                .edges
                .iter()
                .map(|e| {
                    vec![
                        format!("{} -> {}", e.from, e.to),
                        e.capacity.to_string(),
                        count(e.pushed),
                        format!("{:.1}/{}", e.mean_occupancy, e.capacity),
                        pct(e.full_fraction),
                    ]
                })
                .collect();
            table(
                f,
                &["edge", "capacity", "pushed", "mean queue", "full"],
                &rows,
                1,
            )?;
        }
        writeln!(f)?;
        let by_id = |id: &String| self.stages.iter().find(|s| &s.id == id);
        match &self.bottleneck {
            Some(id) => {
                let busy = by_id(id).map_or(0.0, |s| s.utilization);
                writeln!(f, "bottleneck: `{id}` (busy {})", pct(busy))?;
            }
            None => writeln!(
                f,
                "bottleneck: none (no stage was busy more than {} of its time: the runtime's per-message cost dominates, so batch such cheap messages)",
                pct(MIN_BUSY)
            )?,
        }
        if !self.blocked.is_empty() {
            let list: Vec<String> = self
                .blocked
                .iter()
                .filter_map(by_id)
                .map(|s| format!("`{}` {}", s.id, pct(s.blocked_fraction)))
                .collect();
            writeln!(
                f,
                "blocked (waiting to send, downstream too slow): {}",
                list.join(", ")
            )?;
        }
        if !self.starved.is_empty() {
            let list: Vec<String> = self
                .starved
                .iter()
                .filter_map(by_id)
                .map(|s| format!("`{}` {}", s.id, pct(s.starved_fraction)))
                .collect();
            writeln!(
                f,
                "starved (waiting for input, upstream too slow): {}",
                list.join(", ")
            )?;
        }
        for s in self.stages.iter().filter(|s| s.skipped > 0) {
            writeln!(
                f,
                "skipped: `{}` skipped {} item(s){}, e.g. {}",
                s.id,
                s.skipped,
                match (s.skipped_items.len() as u64, s.skipped_unlisted) {
                    (distinct, 0) if distinct != s.skipped => format!(" ({distinct} distinct)"),
                    (_, 0) => String::new(),
                    (listed, _) => format!(" (over {listed} distinct)"),
                },
                s.skipped_examples.join("; ")
            )?;
        }
        for s in &self.stages {
            for note in &s.notes {
                writeln!(f, "{}: {note}", s.id)?;
            }
        }
        if let Some(used) = self.cpu_cores_used {
            let cores = self.cpu_cores;
            if used >= 0.9 * cores as f64 {
                writeln!(
                    f,
                    "cpu: {used:.1} of {cores} cores busy on average: the machine is saturated, so stages also wait for a core and busy shares overstate their own cost"
                )?;
            } else {
                writeln!(f, "cpu: {used:.1} of {cores} cores busy on average")?;
            }
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "hint: {hint}")?;
        }
        Ok(())
    }
}

/// The progress bar shown during long runs (stderr; hidden when stderr is not a terminal).
pub(crate) fn progress_bar(total: Option<u64>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match total {
        Some(n) if n > 0 => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        _ => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some_and(|n| n > 0) {
        "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} items  {per_sec}  eta {eta}  {msg}"
    } else {
        "{spinner} {elapsed_precise} {human_pos} items  {per_sec}  {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, in clock ticks
/// of 1/100 s, the fixed USER_HZ of Linux's user interface); `None` elsewhere.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
