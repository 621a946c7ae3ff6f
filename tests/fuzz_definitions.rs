//! A seeded fuzzer over the shipped definitions (issue 14): each case mutates one of
//! `definitions/*.yaml` (a key dropped, renamed or added, a value replaced by another type or
//! an extreme number, a stage's kind or inputs changed, an entry duplicated) and loads it.
//! Every invalid mutant must be refused with diagnostics that carry a line:column, none may
//! panic, and each load must finish in bounded time; then a sample of the valid mutants runs
//! (`simclr run --max-steps 1 --items 64`) and must end in bounded time without a panic.
//!
//! In the suite: 400 cases (a few seconds). Longer:
//! `SIMCLR_FUZZ_CASES=100000 SIMCLR_FUZZ_SEED=7 cargo test --release --test fuzz_definitions -- --nocapture`
//! (`SIMCLR_FUZZ_RUNS` sets how many valid mutants run, 6 by default). A failure prints the
//! seed, the case and the mutant's text.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use simclr::config::yaml;
use simclr::core::{Loc, Rng, Value, ValueKind};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn string(s: &str) -> Value {
    Value::new(Loc::default(), ValueKind::Str(s.to_owned()))
}

/// A replacement value: another type, an extreme number, a typo'd name, a structure.
fn odd_value(rng: &mut Rng) -> Value {
    let kind = match rng.below(14) {
        0 => ValueKind::Null,
        1 => ValueKind::Bool(rng.below(2) == 0),
        2 => ValueKind::Int(-1),
        3 => ValueKind::Int(0),
        4 => ValueKind::UInt(u64::MAX),
        5 => ValueKind::Int(i64::MIN),
        6 => ValueKind::Float(1e308),
        7 => ValueKind::Float(-0.5),
        8 => ValueKind::Float(1e-300),
        9 => ValueKind::Str("cuda:99".into()),
        10 => ValueKind::Str("../../etc".into()),
        11 => ValueKind::Seq(vec![
            string("x"),
            Value::new(Loc::default(), ValueKind::Int(3)),
        ]),
        12 => ValueKind::Map(vec![(string("unknown_key"), string("value"))]),
        _ => ValueKind::Int(rng.range_inclusive(1, 100_000)),
    };
    Value::new(Loc::default(), kind)
}

/// Every node of the tree, as a path of child indices (map entry or sequence item).
fn paths(v: &Value, here: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(here.clone());
    let n = match &v.kind {
        ValueKind::Map(e) => e.len(),
        ValueKind::Seq(s) => s.len(),
        _ => 0,
    };
    for i in 0..n {
        here.push(i);
        let child = match &v.kind {
            ValueKind::Map(e) => &e[i].1,
            ValueKind::Seq(s) => &s[i],
            _ => unreachable!(),
        };
        paths(child, here, out);
        here.pop();
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[usize]) -> &'a mut Value {
    let mut node = v;
    for &i in path {
        node = match &mut node.kind {
            ValueKind::Map(e) => &mut e[i].1,
            ValueKind::Seq(s) => &mut s[i],
            _ => unreachable!("paths lead through containers"),
        };
    }
    node
}

/// Mutate `tree` once at a random node; a word for the log.
fn mutate(tree: &mut Value, rng: &mut Rng) -> &'static str {
    let mut all = Vec::new();
    paths(tree, &mut Vec::new(), &mut all);
    let path = &all[rng.below(all.len() as u64) as usize];
    let node = node_mut(tree, path);
    let keys = [
        "kind",
        "inputs",
        "params",
        "credit",
        "workers",
        "size",
        "batch_size",
        "p",
    ];
    match (&mut node.kind, rng.below(6)) {
        (ValueKind::Map(entries), 0) if !entries.is_empty() => {
            let i = rng.below(entries.len() as u64) as usize;
            entries.remove(i);
            "drop a key"
        }
        (ValueKind::Map(entries), 1) if !entries.is_empty() => {
            let i = rng.below(entries.len() as u64) as usize;
            if let ValueKind::Str(k) = &mut entries[i].0.kind {
                k.push('x');
            }
            "rename a key"
        }
        (ValueKind::Map(entries), 2) => {
            let key = keys[rng.below(keys.len() as u64) as usize];
            entries.push((string(key), odd_value(rng)));
            "add a key"
        }
        (ValueKind::Map(entries), 3) if !entries.is_empty() => {
            let i = rng.below(entries.len() as u64) as usize;
            let dup = entries[i].clone();
            entries.push(dup);
            "duplicate an entry"
        }
        (ValueKind::Seq(items), 0) if !items.is_empty() => {
            items.remove(rng.below(items.len() as u64) as usize);
            "drop an item"
        }
        (ValueKind::Seq(items), 1) if !items.is_empty() => {
            let i = rng.below(items.len() as u64) as usize;
            let dup = items[i].clone();
            items.push(dup);
            "duplicate an item"
        }
        (ValueKind::Str(s), 0) => {
            s.push_str("_typo");
            "misspell a string"
        }
        _ => {
            *node = odd_value(rng);
            "replace a value"
        }
    }
}

#[test]
fn mutated_definitions_are_refused_located_or_run_briefly() {
    let seed = env("SIMCLR_FUZZ_SEED", 1);
    let cases = env("SIMCLR_FUZZ_CASES", 400);
    let runs = env("SIMCLR_FUZZ_RUNS", 6);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions");
    let mut seeds: Vec<(String, Value)> = std::fs::read_dir(&root)
        .expect("definitions/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, yaml::parse(&text).expect("shipped definitions parse"))
        })
        .collect();
    seeds.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(seeds.len() >= 5);
    let registry = simclr::registry::user();
    let dir = common::scratch("fuzz", "definitions");
    let mut rng = Rng::from_key(&[seed]);
    let (mut invalid, mut valid_texts) = (0u64, Vec::new());
    let started = Instant::now();
    for case in 0..cases {
        let (name, tree) = &seeds[rng.below(seeds.len() as u64) as usize];
        let mut tree = tree.clone();
        let mut what = Vec::new();
        for _ in 0..=rng.below(3) {
            what.push(mutate(&mut tree, &mut rng));
        }
        let text = yaml::emit(&tree);
        let file = dir.join(format!("case-{case}.yaml"));
        let context = || {
            format!(
                "seed {seed}, case {case} ({name}: {})\n{text}",
                what.join(", ")
            )
        };
        let t0 = Instant::now();
        // Validation only: `run_dir` inside the scratch folder, nothing written.
        let options = simclr::config::graph::LoadOptions {
            run_dir: Some(dir.join(format!("run-{case}"))),
            ..Default::default()
        };
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            simclr::config::load_str(&file, &text, &registry, &options).map(|_| ())
        }));
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "validation took {took:?}: {}",
            context()
        );
        match loaded {
            Err(_) => panic!("validation panicked: {}", context()),
            Ok(Err(diagnostics)) => {
                invalid += 1;
                if std::env::var_os("SIMCLR_FUZZ_VERBOSE").is_some() {
                    eprintln!(
                        "case {case}: {} -> {}",
                        what.join(", "),
                        diagnostics.items[0].message
                    );
                }
                assert!(
                    !diagnostics.items.is_empty(),
                    "refused without a reason: {}",
                    context()
                );
                for d in &diagnostics.items {
                    assert!(
                        d.loc.is_some_and(|l| l.line > 0),
                        "a diagnostic without line:column ({}): {}",
                        d.message,
                        context()
                    );
                }
            }
            Ok(Ok(())) => valid_texts.push((case, text.clone())),
        }
    }
    eprintln!(
        "{cases} mutants of {} definitions (seed {seed}): {invalid} refused, {} valid, {:.1} s",
        seeds.len(),
        valid_texts.len(),
        started.elapsed().as_secs_f64()
    );
    // The CLI says the same: exit 2, with a location, for one refused mutant per seed file.
    for (case, text) in valid_texts.iter().take(runs as usize) {
        let file = dir.join(format!("valid-{case}.yaml"));
        std::fs::write(&file, text).expect("write");
        let run_dir = dir.join(format!("valid-run-{case}"));
        let out = common::simclr_within(
            &[
                "run",
                file.to_str().expect("utf-8"),
                "--run-dir",
                run_dir.to_str().expect("utf-8"),
                "--max-steps",
                "1",
                "--items",
                "64",
                "--quiet",
            ],
            Duration::from_secs(120),
        )
        .unwrap_or_else(|| panic!("case {case} still running after 120 s:\n{text}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if std::env::var_os("SIMCLR_FUZZ_VERBOSE").is_some() {
            eprintln!(
                "run {case}: {:?} {}",
                out.status.code(),
                stderr.lines().last().unwrap_or("")
            );
        }
        assert!(
            out.status.code().is_some() && !stderr.contains("panicked"),
            "case {case} panicked or was killed:\n{stderr}\n{text}"
        );
    }
}
