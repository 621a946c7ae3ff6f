//! The `simclr` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{TRAINING, simclr};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn validate_accepts_the_shipped_definitions() {
    let out = simclr(&[
        "validate",
        "definitions/runtime-smoke.yaml",
        "definitions/fan-out.yaml",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "ok: definitions/runtime-smoke.yaml (pipeline `runtime-smoke`: 2 stages, 1 edges)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("ok: definitions/fan-out.yaml"), "{stdout}");
}

#[test]
fn validate_reports_every_error_with_location_and_exits_2() {
    let dir = scratch("cli-validate");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: bad\nstages:\n  numbers: { kind: sequence, workers: 0 }\n  drain: { kind: sikn, inputs: [numbers] }\n").expect("write");
    let bad = bad.to_string_lossy().into_owned();
    let out = simclr(&[
        "validate",
        &bad,
        "definitions/runtime-smoke.yaml",
        "/no/such/file.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{bad}:3:39")), "{stderr}");
    assert!(stderr.contains(&format!("{bad}:4:18")), "{stderr}");
    assert!(stderr.contains("did you mean `sink`?"), "{stderr}");
    assert!(stderr.contains(&format!("{bad}: 2 errors")), "{stderr}");
    assert!(
        stderr.contains("/no/such/file.yaml") && stderr.contains("cannot read the definition"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("ok: definitions/runtime-smoke.yaml"),
        "valid files are still checked"
    );
}

#[test]
fn stages_lists_user_kinds_with_parameters_and_describes_one() {
    let out = simclr(&["stages"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("sequence") && stdout.contains("sink"),
        "{stdout}"
    );
    assert!(
        stdout.contains("count: integer ≥ 0 (default 1000)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("How many records to emit in all"),
        "doc comments shown: {stdout}"
    );
    for test_kind in ["slow", "fail", "panic", "collect"] {
        assert!(
            !stdout
                .lines()
                .any(|l| l.starts_with(&format!("{test_kind} "))),
            "test kind {test_kind} listed"
        );
    }
    let out = simclr(&["stages", "sink"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("takes:   any") && stdout.contains("expect:"),
        "{stdout}"
    );
    let out = simclr(&["stages", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown stage kind `nope`"));
}

#[test]
fn the_printed_example_runs() {
    let dir = scratch("cli-example");
    let out = simclr(&["stages", "sequence", "--example"]);
    let file = dir.join("example.yaml");
    std::fs::write(&file, &out.stdout).expect("write");
    let out = simclr(&["profile", &file.to_string_lossy(), "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("pipeline `sequence-example` completed"));
}

#[test]
fn profile_prints_the_table_and_writes_metrics_and_trace() {
    let dir = scratch("cli-profile");
    let metrics = dir.join("m.json");
    let trace = dir.join("t.json");
    let out = simclr(&[
        "profile",
        "definitions/fan-out.yaml",
        "--items",
        "200",
        "--quiet",
        "--metrics",
        &metrics.to_string_lossy(),
        "--trace",
        &trace.to_string_lossy(),
    ]);
    // The sinks expect 2000 records, but `--items` cuts the stream short: not a failure.
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("stage") && stdout.contains("busy") && stdout.contains("starved"),
        "{stdout}"
    );
    assert!(stdout.contains("numbers -> second"), "{stdout}");
    assert!(
        stdout.contains("bottleneck: `numbers`"),
        "the paced source limits this pipeline: {stdout}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics")).expect("json");
    assert_eq!(m["outcome"], "completed");
    assert_eq!(m["stages"][0]["items_out"], 200);
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace")).expect("json");
    assert!(t["traceEvents"].as_array().is_some_and(|e| e.len() > 200));
}

#[test]
fn run_writes_the_run_folder() {
    let dir = scratch("cli-run");
    let run_dir = dir.join("run");
    let out = simclr(&[
        "run",
        "definitions/runtime-smoke.yaml",
        "--run-dir",
        &run_dir.to_string_lossy(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copy = std::fs::read_to_string(run_dir.join("definition.yaml")).expect("definition copy");
    assert_eq!(
        copy,
        std::fs::read_to_string("definitions/runtime-smoke.yaml").expect("original")
    );
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("metrics.json")).expect("metrics"),
    )
    .expect("json");
    assert_eq!(m["outcome"], "completed");
    assert_eq!(m["stages"][1]["items_in"], 200000);
}

#[test]
fn an_invalid_definition_starts_nothing_and_exits_2() {
    let dir = scratch("cli-invalid");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: x\nstages: {}\n").expect("write");
    let out = simclr(&[
        "run",
        &bad.to_string_lossy(),
        "--run-dir",
        &dir.join("run").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`stages` is empty"));
    assert!(
        !dir.join("run").exists(),
        "no run folder for an invalid definition"
    );
}

#[test]
fn a_failing_run_names_the_stage_and_exits_1() {
    let dir = scratch("cli-fail");
    let def = dir.join("short.yaml");
    std::fs::write(&def, "name: short\nstages:\n  numbers: { kind: sequence, params: { count: 10 } }\n  drain: { kind: sink, inputs: [numbers], params: { expect: 11 } }\n").expect("write");
    let out = simclr(&["profile", &def.to_string_lossy(), "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "error: stage `drain` (kind `sink`) failed: expected 11 messages, received 10"
        ),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("pipeline `short` failed"),
        "the table is still printed"
    );
}

#[test]
fn ctrl_c_stops_the_sources_drains_and_exits_130() {
    let dir = scratch("cli-interrupt");
    let def = dir.join("endless.yaml");
    std::fs::write(&def, "name: endless\nstages:\n  numbers: { kind: sequence, params: { count: 1000000000, rate: 2000 } }\n  drain: { kind: sink, inputs: [numbers], params: { expect: 1000000000 } }\n").expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(["profile", &def.to_string_lossy(), "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = std::time::Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "stopped promptly"
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("pipeline `endless` stopped"), "{stdout}");
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn preview_writes_a_png_grid_of_the_expected_size() {
    let dir = scratch("cli-preview");
    let out = dir.join("grid.png");
    let result = simclr(&[
        "preview",
        "definitions/augment-synthetic.yaml",
        "--out",
        &out.to_string_lossy(),
        "--n",
        "5",
    ]);
    assert!(result.status.success(), "{}", text(&result.stderr));
    let png = image::open(&out).expect("a valid PNG");
    // 32-pixel views upscaled x3 to 96-pixel cells, 3 columns and 5 rows with 4-pixel gaps.
    assert_eq!(
        (png.width(), png.height()),
        (3 * 96 + 4 * 4, 5 * (96 + 4) + 4)
    );
    let rgb = png.to_rgb8();
    let cell = |col: u32, row: u32| -> Vec<u8> {
        let (x0, y0) = (4 + col * 100, 4 + row * 100);
        (0..96)
            .flat_map(|y| (0..96).flat_map(move |x| [x0 + x, y0 + y]))
            .collect::<Vec<_>>()
            .chunks(2)
            .flat_map(|p| rgb.get_pixel(p[0], p[1]).0)
            .collect()
    };
    assert_ne!(cell(1, 0), cell(2, 0), "t and t' differ");
    assert_ne!(cell(0, 0), cell(1, 0), "the view differs from the original");
    let bad = simclr(&[
        "preview",
        "definitions/runtime-smoke.yaml",
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("has no `views` stage"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn bench_augment_prints_json_per_suite() {
    let out = simclr(&[
        "bench",
        "augment",
        "--json",
        "--seconds",
        "0.2",
        "--repeats",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("json");
    for suite in ["a", "b", "c"] {
        assert!(
            json[suite]["pairs_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{json}"
        );
        // Two repeats: the figure is their median, the mean of the two.
        let each: Vec<f64> = json[suite]["pairs_per_s_each"]
            .as_array()
            .expect("each repeat's rate")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        assert_eq!(each.len(), 2, "{json}");
        let mean = f64::midpoint(each[0], each[1]);
        assert!(
            (json[suite]["pairs_per_s"].as_f64().expect("rate") - mean).abs() <= 1e-9 * mean,
            "{json}"
        );
        assert!(
            json[suite]["us_per_view"]["random_resized_crop"]
                .as_f64()
                .is_some(),
            "{json}"
        );
    }
    // Suite (d): the same photos packed into a shard and read back.
    assert!(
        json["d"]["us_per_view"]["shard read + jpeg decode"]
            .as_f64()
            .is_some_and(|t| t > 0.0),
        "{json}"
    );
    assert!(json["d_over_c"].as_f64().is_some_and(|r| r > 0.0), "{json}");
    assert_eq!(
        json["d_over_c_each"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );
    let none = simclr(&["bench", "augment", "--repeats", "0"]);
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("--repeats must be at least 1"),
        "{}",
        text(&none.stderr)
    );
}

#[test]
fn bench_train_prints_json_per_configuration() {
    let out = simclr(&[
        "bench", "train", "--json", "--widths", "2", "--pairs", "4", "--steps", "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("json");
    let rows = json.as_array().expect("one object per configuration");
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0]["width"].as_u64(),
            rows[0]["channels"].as_u64(),
            rows[0]["size"].as_u64()
        ),
        (Some(2), Some(3), Some(32))
    );
    assert_eq!(
        (rows[1]["channels"].as_u64(), rows[1]["size"].as_u64()),
        (Some(1), Some(28))
    );
    for row in rows {
        assert!(
            row["ms_per_step"].as_f64().is_some_and(|ms| ms > 0.0),
            "{row}"
        );
        let split = row["forward_ms"].as_f64().unwrap_or(0.0)
            + row["backward_ms"].as_f64().unwrap_or(0.0)
            + row["optimizer_ms"].as_f64().unwrap_or(0.0);
        assert!(
            (split - row["ms_per_step"].as_f64().unwrap_or(0.0)).abs() < 1e-6,
            "{row}"
        );
    }
}

fn encoder_bytes(run: &Path) -> Vec<u8> {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).expect("latest");
    std::fs::read(
        run.join("checkpoints")
            .join(latest.trim())
            .join("encoder.safetensors"),
    )
    .expect("weights")
}

/// The process dies (abort, as `kill -9` or a power cut would) in the middle of writing the
/// second checkpoint's weights. The first checkpoint stays the latest and loadable, the
/// half-written one is ignored, and `--resume` finishes the run with weights bit-identical to
/// a run that never crashed.
#[test]
fn a_crash_while_writing_a_checkpoint_leaves_the_previous_one_and_resume_works() {
    let dir = scratch("crash-checkpoint");
    let def = dir.join("train.yaml");
    std::fs::write(&def, TRAINING).expect("definition");
    let def = def.to_str().expect("utf-8 path");
    let (clean, crashed) = (dir.join("clean"), dir.join("crashed"));

    let out = simclr(&[
        "run",
        def,
        "--quiet",
        "--run-dir",
        clean.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Files written per checkpoint: encoder, head, optimizer; the 4th is the second
    // checkpoint's encoder weights.
    let out = Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args([
            "run",
            def,
            "--quiet",
            "--run-dir",
            crashed.to_str().expect("path"),
        ])
        .env("SIMCLR_FAILPOINT", "checkpoint-write:4")
        .output()
        .expect("runs");
    assert!(!out.status.success(), "the failpoint aborts the process");
    assert!(
        text(&out.stderr).contains("SIMCLR_FAILPOINT"),
        "{}",
        text(&out.stderr)
    );
    let ckpts = crashed.join("checkpoints");
    assert_eq!(
        std::fs::read_to_string(ckpts.join("latest"))
            .expect("latest")
            .trim(),
        "step-00000002"
    );
    assert!(
        ckpts.join(".step-00000004.tmp").is_dir(),
        "the interrupted write is left as a temp folder"
    );
    assert!(!ckpts.join("step-00000004").exists());

    let out = simclr(&[
        "run",
        def,
        "--quiet",
        "--resume",
        crashed.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("resuming from") && stderr.contains("step 2"),
        "{stderr}"
    );
    assert!(
        !ckpts.join(".step-00000004.tmp").exists(),
        "the next write cleans up"
    );
    assert_eq!(
        std::fs::read_to_string(ckpts.join("latest"))
            .expect("latest")
            .trim(),
        "step-00000006"
    );
    assert_eq!(
        encoder_bytes(&clean),
        encoder_bytes(&crashed),
        "bit-identical weights"
    );
    // keep_last: 2.
    let mut kept: Vec<String> = std::fs::read_dir(&ckpts)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000004", "step-00000006"]);
}

#[test]
fn run_max_steps_stops_training_and_resume_of_nothing_is_a_clear_error() {
    let dir = scratch("max-steps");
    let def = dir.join("train.yaml");
    std::fs::write(&def, TRAINING).expect("definition");
    let run = dir.join("run");
    let out = simclr(&[
        "run",
        def.to_str().expect("path"),
        "--quiet",
        "--max-steps",
        "3",
        "--run-dir",
        run.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let steps = std::fs::read_to_string(run.join("steps.jsonl")).expect("steps");
    assert_eq!(steps.lines().count(), 3);
    for key in [
        "\"loss\"",
        "\"lr\"",
        "\"images_per_s\"",
        "\"epoch\"",
        "\"stage_seconds\"",
    ] {
        assert!(steps.contains(key), "{key} in {steps}");
    }
    assert!(run.join("loss.png").is_file() && run.join("definition.yaml").is_file());
    assert!(
        text(&out.stdout).contains("steps 0..3"),
        "{}",
        text(&out.stdout)
    );

    let out = simclr(&[
        "run",
        def.to_str().expect("path"),
        "--resume",
        dir.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no checkpoint found"),
        "{}",
        text(&out.stderr)
    );
}

/// Ctrl-C in the middle of training: the step in progress finishes, queued batches are
/// dropped, a checkpoint of the last completed step is written, exit 130; `--resume` then
/// continues from exactly that step.
#[test]
fn ctrl_c_during_training_saves_a_checkpoint_of_the_last_step_and_resume_continues() {
    let dir = scratch("cli-interrupt-training");
    let def = dir.join("train.yaml");
    // Many steps, no periodic checkpoints: only the interruption writes one.
    std::fs::write(
        &def,
        TRAINING
            .replace("count: 48", "count: 4096")
            .replace("every: 2, keep_last: 2", "every: 0"),
    )
    .expect("definition");
    let run = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args([
            "run",
            def.to_str().expect("path"),
            "--quiet",
            "--run-dir",
            run.to_str().expect("path"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait for a few steps.
    let steps_file = run.join("steps.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&steps_file).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "training started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let done = std::fs::read_to_string(&steps_file)
        .expect("steps")
        .lines()
        .count();
    assert!(done < 4096 / 8, "stopped early: {done} steps");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).expect("a checkpoint");
    assert_eq!(
        latest.trim(),
        format!("step-{done:08}"),
        "checkpoint of the last step taken"
    );

    let out = simclr(&[
        "run",
        def.to_str().expect("path"),
        "--quiet",
        "--max-steps",
        &(done + 2).to_string(),
        "--resume",
        run.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let steps: Vec<u64> = std::fs::read_to_string(&steps_file)
        .expect("steps")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["step"]
                .as_u64()
                .expect("step")
        })
        .collect();
    assert_eq!(
        steps,
        (0..done as u64 + 2).collect::<Vec<_>>(),
        "no step lost or repeated"
    );
}

#[test]
fn set_overrides_values_and_reports_bad_paths() {
    // A value the definition lacks is added; the override is checked like the file's own.
    let out = simclr(&[
        "validate",
        "definitions/quickstart.yaml",
        "--set",
        "stages.batches.params.batch_size=4096",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("`batch_size: 4096` is larger than the 2048 samples of an epoch"),
        "{}",
        text(&out.stderr)
    );
    let out = simclr(&[
        "validate",
        "definitions/quickstart.yaml",
        "--set",
        "stages.images.params.count=8192",
        "--set",
        "device=cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Through a scalar: refused, naming the path.
    let out = simclr(&[
        "validate",
        "definitions/quickstart.yaml",
        "--set",
        "seed.x=1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`seed` is not a mapping"),
        "{}",
        text(&out.stderr)
    );
    // Not KEY=VALUE: an invalid definition too, exit 2 like the others (it was 1, issue 14).
    let out = simclr(&["validate", "definitions/quickstart.yaml", "--set", "seed"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("expected KEY.PATH=VALUE"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn precision_is_checked_against_the_device() {
    let out = simclr(&[
        "validate",
        "definitions/quickstart.yaml",
        "--set",
        "precision=tf32",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("precision `tf32` applies to CUDA devices"),
        "{err}"
    );
    let out = simclr(&[
        "validate",
        "definitions/quickstart.yaml",
        "--set",
        "precision=bf16",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown precision `bf16`"));
    let out = simclr(&[
        "validate",
        "definitions/quickstart.yaml",
        "--set",
        "precision=fp32",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bench_parity_compares_our_kernels_with_candles_step_by_step() {
    let out = simclr(&[
        "bench",
        "parity",
        "--device",
        "cpu",
        "--candle-ops",
        "--width",
        "4",
        "--pairs",
        "8",
        "--steps",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    // Seeded weights and inputs: the table is the same every run (measured: gradients agree to
    // 3e-6, weights after each update to 3e-8, losses to 3e-7).
    for row in &rows {
        // step, loss cpu, loss device, loss rel diff, grads, weights, ...
        let value = |i: usize| row[i].parse::<f64>().expect("a number");
        assert!(
            value(1) > 1.0 && (value(1) - value(2)).abs() < 1e-5,
            "{table}"
        );
        assert!(value(4) < 1e-4, "gradients parted: {table}");
        assert!(value(5) < 1e-6, "weights parted: {table}");
    }
    // Against float64: a whole ResNet step with our kernels is as exact as float32 allows. A
    // ReLU input within rounding of zero takes the other side in float64 and moves that
    // gradient path wholesale: how often depends on the batch and on the CPU (the matrix
    // products' summation order follows its vector width: on an AVX-512 machine 64 pairs gave
    // 3.8e-3 with our kernels and 5.8e-4 with candle's, where 8 and 16 pairs give ~3e-6). So
    // two small batches, and the better of the two: one flip passes, a systematic error does
    // not. (A BatchNorm forward computing a·x + (β − a·μ) instead of a·(x − μ) + β gives
    // 9.7e-4 and 2.8e-3 here.)
    let mut best = f64::INFINITY;
    let mut tables = String::new();
    for pairs in ["8", "16"] {
        let out = simclr(&[
            "bench",
            "parity",
            "--device",
            "cpu",
            "--f64-reference",
            "--width",
            "16",
            "--pairs",
            pairs,
            "--steps",
            "1",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let table = text(&out.stdout);
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with('0'))
            .expect("step 0")
            .split_whitespace()
            .collect();
        let grads: f64 = row[4].parse().expect("a number");
        best = best.min(grads);
        tables.push_str(&table);
    }
    assert!(best < 1e-4, "gradients vs float64: {tables}");
    // TF32 is for CUDA.
    let out = simclr(&["bench", "parity", "--device", "cpu", "--precision", "tf32"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("tf32 applies to CUDA devices"));
}

/// A launcher that started several ranks, and a binary without MPI: refused, naming the build
/// flag, instead of each rank training the whole model into the same run folder.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_ranks_without_mpi_are_refused() {
    let dir = common::scratch("cli", "ranks-without-mpi");
    let out = common::simclr_env(
        &[
            "run",
            "definitions/quickstart.yaml",
            "--run-dir",
            &dir.join("run").display().to_string(),
        ],
        &[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("mpirun started this process as rank 1 of 2")
            && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!dir.join("run").exists(), "nothing was written");
}
