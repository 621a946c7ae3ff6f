//! The runtime's guarantees, exercised through definitions: no loss, duplication or
//! reordering; bottleneck attribution; failures, panics and stuck stages end the run in
//! bounded time naming the stage; stop requests drain; credit edges pace the loop.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use simclr::config::graph::LoadOptions;
use simclr::config::{Graph, load_str};
use simclr::runtime::{self, RunError, RunOptions};
use simclr_stage_util::testing::collected;

fn graph(text: &str) -> Graph {
    let registry = simclr::registry::with_testing_kinds();
    load_str(
        Path::new("test.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{d}"))
}

fn quick() -> RunOptions {
    RunOptions {
        shutdown_grace: Duration::from_secs(2),
        ..RunOptions::default()
    }
}

/// Property (exhaustive over the grid): for every edge capacity 1-8 and worker count
/// 1-4, an ordered parallel stage delivers every record exactly once and in order, and an
/// unordered one delivers every record exactly once. Pseudo-random per-item delays make the
/// workers finish out of order, so a runtime that merely forwarded in completion order fails.
#[test]
fn no_message_lost_duplicated_or_reordered() {
    const N: u64 = 120;
    for capacity in 1..=8 {
        for workers in 1..=4 {
            let key = format!("grid-{capacity}-{workers}");
            let text = format!(
                "name: grid
edges: {{ capacity: {capacity} }}
stages:
  numbers: {{ kind: sequence, workers: {workers}, params: {{ count: {N} }} }}
  ordered: {{ kind: jitter, workers: {workers}, inputs: [numbers], params: {{ delay: 300 }} }}
  unordered: {{ kind: jitter_unordered, workers: {workers}, inputs: [numbers], params: {{ delay: 300 }} }}
  in_order: {{ kind: collect, inputs: [ordered], params: {{ key: {key}-o }} }}
  any_order: {{ kind: collect, inputs: [unordered], params: {{ key: {key}-u }} }}
"
            );
            let run = runtime::run(&graph(&text), &quick()).unwrap_or_else(|f| panic!("{f}"));
            let expected: Vec<u64> = (0..N).collect();
            assert_eq!(
                collected(&format!("{key}-o")),
                expected,
                "ordered, capacity {capacity}, workers {workers}"
            );
            let mut unordered = collected(&format!("{key}-u"));
            unordered.sort_unstable();
            assert_eq!(
                unordered, expected,
                "unordered, capacity {capacity}, workers {workers}"
            );
            let numbers = &run.report.stages[0];
            assert_eq!((numbers.id.as_str(), numbers.items_out), ("numbers", N));
            for edge in &run.report.edges {
                assert_eq!(edge.pushed, N, "edge {} -> {}", edge.from, edge.to);
            }
        }
    }
}

#[test]
fn fan_in_from_two_sources_delivers_both_streams() {
    let text = "
name: fan-in
stages:
  a: { kind: sequence, params: { count: 300 } }
  b: { kind: sequence, params: { count: 200 } }
  both: { kind: collect, inputs: [a, b], params: { key: fan-in } }
";
    runtime::run(&graph(text), &quick()).unwrap_or_else(|f| panic!("{f}"));
    let got = collected("fan-in");
    // Both sources number from 0: 0..200 arrive twice (once from each), 200..300 once.
    let mut counts = std::collections::BTreeMap::new();
    for &seq in &got {
        *counts.entry(seq).or_insert(0) += 1;
    }
    assert_eq!(got.len(), 500);
    assert!(
        (0..200).all(|s| counts[&s] == 2) && (200..300).all(|s| counts[&s] == 1),
        "{counts:?}"
    );
    // A merge keeps each source's own order: the records only `a` emits stay sorted.
    let only_a: Vec<u64> = got.iter().copied().filter(|&s| s >= 200).collect();
    assert_eq!(only_a, (200..300).collect::<Vec<_>>());
}

#[test]
fn slow_middle_stage_is_the_bottleneck_upstream_blocks_downstream_starves() {
    let text = "
name: bottleneck
edges: { capacity: 2 }
stages:
  numbers: { kind: sequence, params: { count: 60 } }
  slow: { kind: slow, inputs: [numbers], params: { delay: 5 } }
  drain: { kind: sink, inputs: [slow] }
";
    let run = runtime::run(&graph(text), &quick()).unwrap_or_else(|f| panic!("{f}"));
    let r = &run.report;
    assert_eq!(r.bottleneck.as_deref(), Some("slow"), "{r}");
    assert_eq!(r.blocked, vec!["numbers".to_owned()], "{r}");
    assert_eq!(r.starved, vec!["drain".to_owned()], "{r}");
    let slow = &r.stages[1];
    assert!(slow.utilization > 0.8, "{r}");
    assert!(slow.ms_per_item >= 5.0, "{r}");
    let edge_in = &r.edges[0];
    assert!(
        edge_in.full_fraction > 0.5,
        "the edge into the slow stage is mostly full: {r}"
    );
    assert!(
        r.edges[1].mean_fill < 0.5,
        "the edge out of it is mostly empty: {r}"
    );
    let text = r.to_string();
    assert!(text.contains("bottleneck: `slow`"), "{text}");
    assert!(
        text.contains("blocked (waiting to send, downstream too slow): `numbers`"),
        "{text}"
    );
    assert!(
        text.contains("starved (waiting for input, upstream too slow): `drain`"),
        "{text}"
    );
}

fn assert_stage_failure(text: &str, stage: &str, expected: &str) {
    let start = Instant::now();
    let failure = runtime::run(&graph(text), &quick()).expect_err("the run must fail");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    match &failure.error {
        RunError::Stage {
            stage: s, source, ..
        } => {
            assert_eq!(s, stage);
            assert!(source.to_string().contains(expected), "{source}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        failure.to_string().starts_with(&format!("stage `{stage}`")),
        "{failure}"
    );
    assert_eq!(
        failure.run.report.outcome,
        simclr::runtime::report::Outcome::Failed
    );
    assert!(failure.stuck.is_empty(), "{:?}", failure.stuck);
}

#[test]
fn a_failing_stage_stops_the_pipeline_and_is_named() {
    // An endless source and a blocked upstream: only cancellation can end this run.
    let text = "
name: failing
edges: { capacity: 1 }
stages:
  numbers: { kind: sequence, params: { count: 100000000 } }
  busy: { kind: jitter, workers: 3, inputs: [numbers], params: { delay: 100 } }
  broken: { kind: fail, inputs: [busy], params: { after: 50 } }
  drain: { kind: sink, inputs: [broken] }
";
    assert_stage_failure(text, "broken", "injected failure after 50 messages");
}

#[test]
fn a_panicking_stage_stops_the_pipeline_and_is_named() {
    let text = "
name: panicking
stages:
  numbers: { kind: sequence, params: { count: 100000000 } }
  boom: { kind: panic, inputs: [numbers], params: { after: 10 } }
  drain: { kind: sink, inputs: [boom] }
";
    assert_stage_failure(text, "boom", "panicked: injected panic after 10 messages");
}

#[test]
fn a_stage_that_ignores_cancellation_is_abandoned_after_the_grace_period() {
    let text = "
name: stuck
stages:
  numbers: { kind: sequence, params: { count: 1000 } }
  stuck: { kind: stuck, inputs: [numbers], params: { delay: 30 } }
  broken: { kind: fail, inputs: [numbers], params: { after: 3 } }
  drain: { kind: sink, inputs: [stuck] }
  drain2: { kind: sink, inputs: [broken] }
";
    let start = Instant::now();
    let options = RunOptions {
        shutdown_grace: Duration::from_millis(500),
        ..RunOptions::default()
    };
    let failure = runtime::run(&graph(text), &options).expect_err("must fail");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "returned in {:?}",
        start.elapsed()
    );
    assert!(
        matches!(&failure.error, RunError::Stage { stage, .. } if stage == "broken"),
        "{failure}"
    );
    assert_eq!(failure.stuck, vec!["stuck".to_owned()]);
}

#[test]
fn a_stop_request_ends_sources_and_drains_cleanly() {
    let text = "
name: stop
stages:
  numbers: { kind: sequence, params: { count: 100000000 } }
  slow: { kind: slow, inputs: [numbers], params: { delay: 1 } }
  keep: { kind: collect, inputs: [slow], params: { key: stop } }
";
    let options = quick();
    let stop = options.stop.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
    });
    let run = runtime::run(&graph(text), &options).unwrap_or_else(|f| panic!("{f}"));
    stopper.join().expect("stopper thread");
    assert_eq!(
        run.report.outcome,
        simclr::runtime::report::Outcome::Stopped
    );
    let got = collected("stop");
    let produced = run.report.stages[0].items_out;
    assert!(produced > 0 && produced < 100_000_000);
    assert_eq!(
        got,
        (0..produced).collect::<Vec<_>>(),
        "everything produced was delivered, in order"
    );
}

#[test]
fn an_item_limit_is_split_across_source_workers() {
    let text = "
name: limit
stages:
  numbers: { kind: sequence, workers: 3, params: { count: 1000000 } }
  keep: { kind: collect, inputs: [numbers], params: { key: limit } }
";
    let options = RunOptions {
        item_limit: Some(10),
        ..quick()
    };
    runtime::run(&graph(text), &options).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(collected("limit"), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_credit_edge_keeps_one_message_in_the_loop() {
    let pipeline = |credit: &str, key: &str| {
        format!(
            "
name: credit
stages:
  numbers: {{ kind: sequence, params: {{ count: 40 }} }}
  start: {{ kind: inflight_start, inputs: [numbers], {credit} params: {{ key: {key}, max_in_flight: 1 }} }}
  step: {{ kind: slow, inputs: [start], params: {{ delay: 2 }} }}
  finish: {{ kind: inflight_end, inputs: [step], params: {{ key: {key} }} }}
  keep: {{ kind: collect, inputs: [finish], params: {{ key: {key} }} }}
"
        )
    };
    let run = runtime::run(
        &graph(&pipeline("credit: { from: finish },", "paced")),
        &quick(),
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(collected("paced"), (0..40).collect::<Vec<_>>());
    let start = &run.report.stages[1];
    assert!(
        start.credit_wait_seconds > 0.04,
        "start waited for credits: {}",
        run.report
    );
    // Without the credit edge the same pipeline lets `start` run ahead, which the probe
    // reports as a failure: the check above is not vacuous.
    let failure = runtime::run(&graph(&pipeline("", "unpaced")), &quick()).expect_err("runs ahead");
    assert!(
        failure
            .to_string()
            .contains("messages in flight, more than 1"),
        "{failure}"
    );
}

#[test]
fn trace_has_a_track_per_worker_and_edge_counters() {
    let text = "
name: traced
stages:
  numbers: { kind: sequence, params: { count: 50 } }
  work: { kind: jitter, workers: 2, inputs: [numbers], params: { delay: 200 } }
  drain: { kind: sink, inputs: [work] }
";
    let options = RunOptions {
        trace: true,
        ..quick()
    };
    let run = runtime::run(&graph(text), &options).unwrap_or_else(|f| panic!("{f}"));
    let json = run.trace.expect("trace recorded").to_json();
    let events = json["traceEvents"].as_array().expect("events");
    let tracks: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    for track in ["numbers", "work#0", "work#1", "drain", "edges"] {
        assert!(tracks.contains(&track), "track {track} in {tracks:?}");
    }
    let spans = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == "work")
        .count();
    assert_eq!(spans, 50, "one process span per message of `work`");
    assert!(
        events.iter().any(|e| e["ph"] == "C"),
        "edge occupancy counters"
    );
}
