//! `simclr sweep`: a two-by-two sweep on synthetic data trains four trials and writes its
//! tables and heatmap; killed in its third trial and re-run, it keeps the first two untouched
//! and resumes the third to the same result as an uninterrupted sweep; editing one axis value
//! retrains only the trials it changes; `--trial I` then `--collect` gives the sweep's table;
//! a malformed sweep file lists every error with line:column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{ok, simclr};

/// The base definition: 512 synthetic images, a small CNN, a checkpoint every 2 steps.
const BASE: &str = "\
name: sweep-base
seed: 3
stages:
  images: { kind: synthetic, params: { count: 512, size: 16, epochs: 1 } }
  views: { kind: views, inputs: [images], params: { size: 16 } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 8 } }
  encoder: { kind: small_cnn, inputs: [batches], credit: { from: train }, params: { width: 4 } }
  head: { kind: projector, inputs: [encoder], params: { hidden: 16, out: 8 } }
  train: { kind: nt_xent, inputs: [head], params: { optimizer: sgd, lr: 0.5 } }
  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 2, keep_last: 2 } }
";

/// Temperature × head, two epochs per trial, kNN on h and z.
fn sweep_text(temperatures: &str) -> String {
    format!(
        "\
name: two-by-two
base: base.yaml
axes:
  - {{ name: temperature, path: stages.train.params.temperature, values: [{temperatures}] }}
  - name: head
    variants:
      linear: {{ stages.head.params.head: linear }}
      mlp: {{ stages.head.params.head: mlp }}
budget: {{ epochs: 2 }}
evaluate: {{ knn: {{ k: 20 }}, features: [trained, projection] }}
"
    )
}

/// A folder holding base.yaml and sweep.yaml; the sweep's path.
fn setup(name: &str, temperatures: &str) -> PathBuf {
    let dir = common::scratch("sweep", name);
    std::fs::write(dir.join("base.yaml"), BASE).expect("base written");
    let file = dir.join("sweep.yaml");
    std::fs::write(&file, sweep_text(temperatures)).expect("sweep written");
    file
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `simclr sweep FILE --out OUT ARGS`: its stdout and stderr (it must succeed).
fn sweep(file: &Path, out: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["sweep", s(file), "--out", s(out)];
    all.extend_from_slice(args);
    let output = simclr(&all);
    let stdout = ok(&output);
    (stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Trial name → (status, scores, final loss) from results.json.
fn results(out: &Path) -> BTreeMap<String, (String, Vec<f64>, f64)> {
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    v["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| {
            let scores = t["scores"]
                .as_array()
                .expect("scores")
                .iter()
                .map(|s| s["top1"].as_f64().expect("top1"))
                .collect();
            (
                t["trial"].as_str().expect("name").to_owned(),
                (
                    t["status"].as_str().expect("status").to_owned(),
                    scores,
                    t["final_loss"].as_f64().unwrap_or(f64::NAN),
                ),
            )
        })
        .collect()
}

/// Every file under `dir` with its modification time and bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("listable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .expect("mtime");
                out.insert(
                    path.clone(),
                    (modified, std::fs::read(&path).expect("readable")),
                );
            }
        }
    }
    out
}

const NAMES: [&str; 4] = [
    "temperature=0.2,head=linear",
    "temperature=0.2,head=mlp",
    "temperature=0.5,head=linear",
    "temperature=0.5,head=mlp",
];

#[test]
fn a_killed_sweep_resumes_its_third_trial_and_leaves_the_first_two_untouched() {
    let file = setup("killed", "0.2, 0.5");
    let dir = file.parent().expect("folder").to_path_buf();
    // The reference: the same sweep, uninterrupted; one trial at a time, so the kill below lands
    // in trial 3 with trial 4 not started (and the threads, hence the rounding, match).
    let whole = dir.join("whole");
    let (table, _) = sweep(&file, &whole, &["--parallel", "1"]);
    for name in NAMES {
        for f in [
            "trial.json",
            "trial.yaml",
            "definition.yaml",
            "steps.jsonl",
            "eval-knn-trained.json",
            "eval-knn-projection.json",
        ] {
            assert!(whole.join(name).join(f).is_file(), "{name}/{f}");
        }
        assert!(table.contains(name), "the table lists {name}:\n{table}");
    }
    for f in ["results.json", "results.csv", "results.md", "results.png"] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    let reference = results(&whole);
    assert_eq!(reference.len(), 4);
    assert!(
        reference
            .values()
            .all(|(status, scores, _)| status == "done" && scores.len() == 2)
    );
    // The heatmap: 2 rows × 2 columns of 90-pixel cells (plot::heatmap's layout).
    let png = image::open(whole.join("results.png"))
        .expect("png")
        .to_rgb8();
    assert_eq!(
        (png.width(), png.height()),
        (190 + 2 * 90 + 150, 110 + 2 * 90 + 30)
    );
    // results.md is sorted by the metric, best first; the CSV has a row per trial.
    let md = std::fs::read_to_string(whole.join("results.md")).expect("md");
    let metric: Vec<f64> = md
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("temperature="))
        .map(|l| {
            l.split('|')
                .nth(5)
                .expect("knn column")
                .trim()
                .parse()
                .expect("a number")
        })
        .collect();
    assert_eq!(metric.len(), 4, "{md}");
    assert!(
        metric.windows(2).all(|w| w[0] >= w[1]),
        "sorted: {metric:?}"
    );
    let csv = std::fs::read_to_string(whole.join("results.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("index,trial,temperature,head,knn top-1,knn/projection top-1,steps,"));

    // Kill the sweep once its third trial has committed a checkpoint: `checkpoints/latest` is
    // the commit (a `step-*` folder can exist a moment before it does; a kill in between leaves
    // the previous checkpoint, here none, so the trial would restart rather than resume).
    let out = dir.join("killed");
    let third = out.join(NAMES[2]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(["sweep", s(&file), "--out", s(&out), "--parallel", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sweep starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let has_checkpoint = |d: &Path| d.join("checkpoints").join("latest").is_file();
    while !has_checkpoint(&third) {
        assert!(
            Instant::now() < deadline,
            "the third trial never checkpointed"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the sweep ended before its third trial checkpointed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("killed");
    child.wait().expect("reaped");
    let record =
        std::fs::read_to_string(third.join("trial.json")).expect("the third trial's record");
    assert!(
        record.contains("\"status\": \"training\""),
        "killed while training: {record}"
    );
    assert!(
        !out.join(NAMES[3]).exists(),
        "the fourth trial had not started"
    );
    // Its training process died with the sweep: the checkpoints stop changing.
    std::thread::sleep(Duration::from_millis(300));
    let frozen = snapshot(&third);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        snapshot(&third).keys().collect::<Vec<_>>(),
        frozen.keys().collect::<Vec<_>>(),
        "nothing trains on"
    );
    let before: Vec<_> = NAMES[..2].iter().map(|n| snapshot(&out.join(n))).collect();

    let (_, log) = sweep(&file, &out, &["--parallel", "1"]);
    for (name, snap) in NAMES[..2].iter().zip(&before) {
        assert!(
            log.contains(&format!("{name}: already done")),
            "{name} skipped:\n{log}"
        );
        assert_eq!(&snapshot(&out.join(name)), snap, "{name}'s files untouched");
    }
    assert!(
        log.contains(&format!("trial 3/4 {}: resumed and finished", NAMES[2])),
        "{log}"
    );
    assert!(
        !log.contains(&format!("{}: already done", NAMES[3])),
        "{log}"
    );
    // Resumed from its checkpoint, to the uninterrupted sweep's result.
    assert_eq!(results(&out), reference);
}

#[test]
fn editing_one_axis_value_retrains_only_the_trials_it_changes() {
    let file = setup("edited", "0.2, 0.5");
    let out = file.parent().expect("folder").join("out");
    sweep(&file, &out, &[]);
    let first = results(&out);
    let kept: Vec<_> = NAMES[..2].iter().map(|n| snapshot(&out.join(n))).collect();
    std::fs::write(&file, sweep_text("0.2, 0.3")).expect("edited");
    let (table, log) = sweep(&file, &out, &[]);
    for (name, snap) in NAMES[..2].iter().zip(&kept) {
        assert!(log.contains(&format!("{name}: already done")), "{log}");
        assert_eq!(&snapshot(&out.join(name)), snap, "{name} untouched");
    }
    for name in ["temperature=0.3,head=linear", "temperature=0.3,head=mlp"] {
        assert!(
            log.contains(&format!("{name}: knn top-1")),
            "{name} trained:\n{log}"
        );
        assert!(table.contains(name));
    }
    let second = results(&out);
    assert_eq!(second.len(), 4, "the table holds the sweep's trials only");
    assert!(!second.contains_key(NAMES[2]));
    for name in &NAMES[..2] {
        assert_eq!(second[*name], first[*name]);
    }
    // A change to every trial's definition (here: the learning rate) trains them all again,
    // and the earlier trials are kept aside, not deleted.
    let text =
        sweep_text("0.2, 0.3").replace("budget:", "set: { stages.train.params.lr: 0.25 }\nbudget:");
    std::fs::write(&file, text).expect("edited");
    let (_, log) = sweep(&file, &out, &[]);
    assert!(!log.contains("already done"), "{log}");
    assert!(
        log.contains("its definition changed; the earlier trial is kept in"),
        "{log}"
    );
    let aside = out.join(".superseded");
    assert_eq!(std::fs::read_dir(&aside).expect("kept aside").count(), 4);
}

#[test]
fn one_trial_at_a_time_then_collect_gives_the_sweep_s_table() {
    let file = setup("array", "0.2, 0.5");
    let dir = file.parent().expect("folder").to_path_buf();
    let whole = dir.join("whole");
    sweep(&file, &whole, &[]);
    let split = dir.join("split");
    for i in ["2", "4", "1", "3"] {
        sweep(&file, &split, &["--trial", i]);
        assert!(
            !split.join("results.json").exists(),
            "--trial leaves the tables to --collect"
        );
    }
    let (table, _) = sweep(&file, &split, &["--collect"]);
    assert!(table.contains("4 done"), "{table}");
    assert_eq!(results(&split), results(&whole));
    assert!(split.join("results.png").is_file());
    // A trial that does not exist.
    let out = simclr(&["sweep", s(&file), "--out", s(&split), "--trial", "5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has trials 1 to 4"));
}

#[test]
fn collect_before_anything_ran_marks_every_trial_missing() {
    let file = setup("nothing", "0.2, 0.5");
    let out = file.parent().expect("folder").join("out");
    sweep(&file, &out, &["--collect"]);
    let r = results(&out);
    assert!(
        r.values()
            .all(|(status, scores, _)| status == "missing" && scores.is_empty()),
        "{r:?}"
    );
    assert!(!out.join("results.png").exists(), "no picture of nothing");
    // --dry-run lists every trial with its overrides and trains nothing.
    let (list, _) = sweep(&file, &out, &["--dry-run"]);
    for name in NAMES {
        assert!(list.contains(name), "{list}");
    }
    assert!(list.contains("stages.head.params.head = mlp"), "{list}");
    assert!(list.contains("stages.images.params.epochs = 2"), "{list}");
    assert!(list.contains("128 steps × 8"), "{list}");
    assert!(list.contains("estimated time to finish:"), "{list}");
    assert!(!out.join(NAMES[0]).exists());
}

/// `(line, column, message)` of every error `simclr sweep FILE --dry-run` reports (exit 2).
fn errors(dir: &Path, text: &str) -> Vec<(u32, u32, String)> {
    let file = dir.join("bad.yaml");
    std::fs::write(&file, text).expect("written");
    let out = simclr(&["sweep", s(&file), "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut found = Vec::new();
    let mut message = String::new();
    for line in stderr.lines() {
        if let Some(m) = line.strip_prefix("error: ") {
            message = m.to_owned();
        } else if let Some(at) = line.trim().strip_prefix("--> ") {
            let mut parts = at.rsplitn(3, ':');
            let column = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            let line = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            found.push((line, column, message.clone()));
        }
    }
    found
}

#[test]
fn a_malformed_sweep_file_lists_every_error_with_line_and_column() {
    let dir = common::scratch("sweep", "malformed");
    std::fs::write(dir.join("base.yaml"), BASE).expect("base");
    let text = "\
name: broken
base: base.yaml
combin: grid
set: { stages.views.params.size: $sizes }
axes:
  - { name: temperature, path: stages.train.params.temperature, valuse: [0.2] }
  - { name: head, variants: { linear: { stages.head.params.head: linear } } }
  - { name: head, values: [1, 2], path: stages.head.params.out }
budget: { epochs: 0 }
evaluate: { knn: { k: 0 } }
metric: linear
";
    let got = errors(&dir, text);
    let want = [
        (3, 1, "unknown key `combin` in a sweep file"),
        (4, 34, "`$sizes` names no axis"),
        (6, 65, "unknown key `valuse` in an axis"),
        (6, 5, "axis `temperature` has no `values` or `variants`"),
        (8, 5, "two axes are named `head`"),
        (9, 19, "the budget is a whole number above 0"),
        (10, 23, "`k` must be a number above 0"),
        (
            11,
            9,
            "`metric: linear` is not one of the scores `evaluate` gives",
        ),
    ];
    for (line, column, message) in want {
        assert!(
            got.iter()
                .any(|(l, c, m)| (*l, *c) == (line, column) && m == message),
            "missing {line}:{column} {message}\ngot: {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");

    // A well-formed sweep whose trial makes an invalid definition: named by trial and key
    // path, before anything trains.
    let bad_value = sweep_text("0.2, -1").replace("base: base.yaml", "base: base.yaml\nout: never");
    std::fs::write(dir.join("value.yaml"), bad_value).expect("written");
    let out = simclr(&[
        "sweep",
        s(&dir.join("value.yaml")),
        "--out",
        s(&dir.join("never")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("trial 3 (temperature=-1,head=linear)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("trial 4 (temperature=-1,head=mlp)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stages.train.params.temperature"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was trained"), "{stderr}");
    assert!(!dir.join("never").exists(), "no folder was made");
}

#[test]
fn the_shipped_sweeps_plan_every_trial() {
    let out = common::scratch("sweep", "shipped");
    for (file, trials) in [
        ("augment-pairs", 64),
        ("heads", 9),
        ("batch-epochs", 16),
        ("temperature", 6),
        ("seeds", 4),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("definitions/sweeps")
            .join(format!("{file}.yaml"));
        let (list, _) = sweep(&path, &out.join(file), &["--dry-run"]);
        assert!(
            list.contains(&format!("sweep {file}: {trials} trials")),
            "{list}"
        );
        assert!(
            list.contains(&format!("{trials:>3}  ")),
            "trial {trials} listed:\n{list}"
        );
        assert!(list.contains("estimated time to finish: "), "{list}");
        assert!(!list.contains("no estimate"), "{list}");
    }
    // Figure 5's diagonal applies its transformation once: t is the crop, then blur alone.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/sweeps/augment-pairs.yaml");
    let (list, _) = sweep(&path, &out.join("augment-pairs"), &["--dry-run"]);
    let blur = list
        .lines()
        .skip_while(|l| !l.contains("first=blur,second=blur"))
        .find(|l| l.trim().starts_with("stages.views.params.t ="))
        .expect("the diagonal's overrides");
    assert_eq!(
        blur.trim(),
        "stages.views.params.t = [{ random_resized_crop: { size: 28, scale: [0.2, 1.0] } }, { gaussian_blur: { kernel_size: 3, sigma: [0.1, 2.0] } }]",
    );
}

#[test]
fn a_time_budget_stops_each_trial_after_its_seconds() {
    let dir = common::scratch("sweep", "seconds");
    // 4 096 images × 8 epochs: 4 096 steps of 8, far more than half a second of training.
    std::fs::write(
        dir.join("base.yaml"),
        BASE.replace(
            "count: 512, size: 16, epochs: 1",
            "count: 4096, size: 16, epochs: 8",
        ),
    )
    .expect("base");
    let file = dir.join("sweep.yaml");
    let text = sweep_text("0.2, 0.5")
        .replace("budget: {{ epochs: 2 }}", "")
        .replace("budget: { epochs: 2 }", "budget: { seconds: 0.5 }");
    std::fs::write(&file, text).expect("sweep");
    let out = dir.join("out");
    sweep(&file, &out, &[]);
    for name in NAMES {
        let steps = std::fs::read_to_string(out.join(name).join("steps.jsonl")).expect("steps");
        let seconds: Vec<f64> = steps
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("JSON")["step_seconds"]
                    .as_f64()
                    .expect("seconds")
            })
            .collect();
        let spent: f64 = seconds.iter().sum();
        let longest = seconds.iter().copied().fold(0.0, f64::max);
        assert!(
            seconds.len() > 1 && seconds.len() < 4096,
            "{name}: stopped early, {} steps",
            seconds.len()
        );
        assert!(
            spent >= 0.5 && spent < 0.5 + longest + 1e-9,
            "{name}: {spent} s of steps"
        );
    }
    let r = results(&out);
    assert!(r.values().all(|(status, _, _)| status == "done"), "{r:?}");
}
