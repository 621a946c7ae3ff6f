//! Data-parallel training over MPI, end to end: `mpirun -n 2 simclr run …` against one-process
//! runs of the same definition (docs/distributed.md). Needs the `mpi` feature and Open MPI's
//! `mpirun` (scripts/setup.sh installs it): `cargo test --features mpi --test distributed`.
#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{ok, scratch, simclr};

/// A resnet-18 (BatchNorm throughout) on 16×16 synthetic images, global batch 16, 12 steps.
const DEFINITION: &str = "\
name: dist-test
seed: 7
distributed: { check_every: 1 }
stages:
  images: { kind: synthetic, params: { count: 96, size: 16, epochs: 2 } }
  views: { kind: views, inputs: [images], params: { size: 16 } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 16 } }
  encoder:
    kind: resnet
    inputs: [batches]
    credit: { from: train }
    params: { depth: 18, width: 4, in_channels: 3 }
  head: { kind: projector, inputs: [encoder], params: { head: mlp, hidden: 16, out: 8 } }
  train: { kind: nt_xent, inputs: [head], params: { temperature: 0.5, optimizer: lars, lr: 1.0 } }
  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 2, keep_last: 10 } }
";

/// `mpirun -n RANKS simclr ARGS` (as root too, in a container, one thread per rank).
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args(["-x", "RAYON_NUM_THREADS=1"])
    .arg(env!("CARGO_BIN_EXE_simclr"))
    .args(args)
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    cmd
}

fn write_definition(dir: &Path, text: &str) -> String {
    write_named(dir, "def.yaml", text)
}

fn write_named(dir: &Path, name: &str, text: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("definition");
    file.display().to_string()
}

/// Run the definition on `ranks` ranks (1: no launcher) into `run`, with extra arguments.
fn train(def: &str, ranks: usize, run: &Path, extra: &[&str]) -> String {
    let run = run.display().to_string();
    let mut args = vec!["run", def, "--run-dir", &run, "--quiet"];
    args.extend_from_slice(extra);
    if ranks == 1 {
        return ok(&simclr(&args));
    }
    ok(&mpirun(ranks, &args).output().expect("mpirun runs"))
}

fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("steps.jsonl")).expect("steps.jsonl");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["loss"].as_f64().expect("loss")
        })
        .collect()
}

fn checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("encoder.safetensors"), &Device::Cpu)
        .expect("encoder weights")
}

/// The largest |a − b| over the trainable weights (running statistics left out).
fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (name, ta) in &a {
        if name.contains("running_") || name.contains("num_batches") {
            continue;
        }
        let diff = (ta - &b[name])
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference");
        worst = worst.max(diff);
    }
    worst
}

fn assert_close(a: &[f64], b: &[f64], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: step counts");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rel * x.abs(),
            "{what}: step {i}: {x} vs {y} ({:.2e} relative)",
            (x - y).abs() / x.abs()
        );
    }
}

#[test]
fn two_ranks_train_as_one_process_with_global_batch_norm() {
    let dir = scratch("distributed", "equivalence");
    let def = write_definition(&dir, DEFINITION);
    let (one, two, again) = (dir.join("w1"), dir.join("w2"), dir.join("w2-again"));
    train(&def, 1, &one, &[]);
    let out = train(&def, 2, &two, &[]);
    // The repeat also writes a trace per rank, with the collectives on a track of their own.
    let trace = dir.join("trace.json");
    train(&def, 2, &again, &["--trace", &trace.display().to_string()]);
    for (file, rank) in [(trace.clone(), 0), (dir.join("trace.rank1.json"), 1)] {
        let text = std::fs::read_to_string(&file).expect("a trace per rank");
        assert!(
            text.contains(&format!("collectives (model), rank {rank}")),
            "{}",
            file.display()
        );
        for span in [
            "gradient all-reduce",
            "projection gather",
            "BatchNorm statistics (sums)",
        ] {
            assert!(
                text.contains(&format!("\"name\":\"{span}\"")),
                "{span} in {}",
                file.display()
            );
        }
    }
    // Rank 0 reports every rank's time in collectives.
    assert!(
        out.contains("rank 1: ") && out.contains("per step in collectives"),
        "{out}"
    );
    // Two world-2 runs: bitwise identical.
    let (l2, l2b) = (losses(&two), losses(&again));
    assert_eq!(l2.len(), 12);
    assert_eq!(
        l2.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        l2b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "two world-2 runs' losses"
    );
    let bytes = |run: &Path| std::fs::read(checkpoint(run, 12).join("encoder.safetensors"));
    assert!(bytes(&two).expect("weights") == bytes(&again).expect("weights"));
    // World 1 against world 2 at the same global batch.
    assert_close(&losses(&one), &l2, 1e-5, "world 1 vs world 2");
    let diff = max_weight_diff(&checkpoint(&one, 12), &checkpoint(&two, 12));
    assert!(diff <= 1e-4, "weights after 12 steps differ by {diff}");
    // Only rank 0 writes the run folder: one log line per step.
    assert_eq!(losses(&two).len(), 12);
}

#[test]
fn local_batch_norm_on_two_ranks_is_ghost_batch_norm_on_one() {
    let dir = scratch("distributed", "local-bn");
    let local = |groups: usize| {
        DEFINITION.replace(
            "distributed: { check_every: 1 }",
            &format!(
                "distributed: {{ check_every: 1, batch_norm: local, local_groups: {groups} }}"
            ),
        )
    };
    let two = write_named(&dir, "local.yaml", &local(1));
    let ghost = write_named(&dir, "ghost.yaml", &local(2));
    let global = write_named(&dir, "global.yaml", DEFINITION);
    let (two_run, ghost_run, global_run) =
        (dir.join("local"), dir.join("ghost"), dir.join("global"));
    // check_every: 1 compares the ranks' weights after every step: a rank-local statistic
    // leaking into the weights would stop the run.
    train(&two, 2, &two_run, &["--max-steps", "6"]);
    train(&ghost, 1, &ghost_run, &["--max-steps", "6"]);
    train(&global, 2, &global_run, &["--max-steps", "6"]);
    let (l, g) = (losses(&two_run), losses(&global_run));
    assert_eq!((l.len(), g.len()), (6, 6));
    // Per-rank statistics normalise differently from the first forward pass on...
    assert!(
        l.iter().zip(&g).all(|(a, b)| (a - b).abs() > 1e-6),
        "local {l:?} vs global {g:?}"
    );
    // ...exactly as one process with BatchNorm over the same two halves of each batch.
    assert_close(
        &losses(&ghost_run),
        &l,
        1e-5,
        "ghost BN on 1 rank vs local BN on 2",
    );
    let diff = max_weight_diff(&checkpoint(&ghost_run, 6), &checkpoint(&two_run, 6));
    assert!(diff <= 1e-4, "weights after 6 steps differ by {diff}");
}

#[test]
fn a_run_resumes_at_another_number_of_ranks() {
    let dir = scratch("distributed", "resume");
    let def = write_definition(&dir, DEFINITION);
    let whole = dir.join("whole");
    train(&def, 1, &whole, &[]);
    let expect = losses(&whole);
    // World 1 for 4 steps, then world 2 to the end; and the reverse.
    for (first, then, name) in [(1, 2, "1-then-2"), (2, 1, "2-then-1")] {
        let run = dir.join(name);
        train(&def, first, &run, &["--max-steps", "4"]);
        let resume = run.display().to_string();
        train(&def, then, &run, &["--resume", &resume]);
        assert_close(&expect, &losses(&run), 1e-5, name);
    }
}

/// The pid of rank `rank` of the job whose command line mentions `marker`.
fn rank_pid(rank: usize, marker: &str) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |bytes: &[u8], s: &str| {
            bytes
                .split(|&b| b == 0)
                .any(|part| String::from_utf8_lossy(part).contains(s))
        };
        if has(&cmdline, marker) && has(&environ, &want) && !has(&cmdline, "mpirun") {
            return Some(pid);
        }
    }
    None
}

/// Start a long world-2 run, wait for its first checkpoint, do `what` to rank 1 (a signal),
/// and return mpirun's output and how long the job took to end after the signal.
fn disturb_rank_1(name: &str, signal: &str, extra: &str) -> (Output, Duration, PathBuf) {
    let dir = scratch("distributed", name);
    let def = write_definition(
        &dir,
        &DEFINITION
            .replace("epochs: 2", "epochs: 100000")
            .replace("check_every: 1", &format!("check_every: 1{extra}")),
    );
    let run = dir.join("run");
    let run_arg = run.display().to_string();
    let child = mpirun(2, &["run", &def, "--run-dir", &run_arg, "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoint(&run, 8).exists() {
        assert!(Instant::now() < deadline, "the run wrote no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rank_pid(1, &run_arg).expect("rank 1's process");
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let t0 = Instant::now();
    let out = child.wait_with_output().expect("mpirun ends");
    (out, t0.elapsed(), run)
}

fn latest_checkpoint_loads(run: &Path) {
    let dirs: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    let last = dirs.iter().max().expect("a checkpoint");
    let state = std::fs::read_to_string(last.join("state.json")).expect("state.json");
    assert!(
        serde_json::from_str::<serde_json::Value>(&state).is_ok(),
        "{state}"
    );
    assert!(!weights(last).is_empty());
}

/// `disturb_rank_1`, then: the job failed within 60 s saying `says`, and the last checkpoint
/// is whole.
fn assert_job_stops(name: &str, signal: &str, extra: &str, says: &str) {
    let (out, took, run) = disturb_rank_1(name, signal, extra);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(says), "{text}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    latest_checkpoint_loads(&run);
}

#[test]
fn a_hung_rank_is_named_and_the_others_stop() {
    assert_job_stops(
        "hung",
        "-STOP",
        ", timeout_s: 5",
        "nothing from rank 1 within 5 s",
    );
}

#[test]
fn a_killed_rank_stops_the_job_naming_it() {
    // Open MPI's launcher: "mpirun noticed that process rank 1 with PID … exited on signal 9".
    assert_job_stops("killed", "-KILL", "", "process rank 1");
}

#[test]
fn bad_distributed_settings_are_refused_before_training() {
    let dir = scratch("distributed", "refused");
    let odd = write_definition(
        &dir,
        &DEFINITION.replace("batch_size: 16", "batch_size: 15"),
    );
    let out = mpirun(
        2,
        &["run", &odd, "--run-dir", "/nonexistent/never", "--quiet"],
    )
    .output()
    .expect("mpirun runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("does not split evenly over the 2 ranks"),
        "{text}"
    );
    let none = write_definition(
        &dir,
        &DEFINITION.replace("{ check_every: 1 }", "{ backend: none }"),
    );
    let out = mpirun(2, &["run", &none, "--quiet"])
        .output()
        .expect("mpirun runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("backend: none"), "{text}");
}

#[test]
fn every_ranks_skipped_items_are_named_by_rank_0() {
    let dir = scratch("distributed", "skips");
    let root = dir.join("images");
    std::fs::create_dir_all(&root).expect("folder");
    let picture = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 13) as u8, (y * 11) as u8, ((x * y) % 251) as u8])
    });
    for i in 0..40 {
        picture
            .save(root.join(format!("good-{i:02}.png")))
            .expect("png");
    }
    let bad: Vec<String> = (0..6).map(|i| format!("bad-{i}.png")).collect();
    for name in &bad {
        std::fs::write(root.join(name), b"not an image").expect("bad file");
    }
    let def = write_definition(
        &dir,
        &DEFINITION.replace(
            "images: { kind: synthetic, params: { count: 96, size: 16, epochs: 2 } }",
            &format!(
                "images: {{ kind: image_folder, params: {{ path: {}, labels: false, on_error: skip }} }}",
                root.display()
            ),
        ),
    );
    let run = dir.join("run");
    let out = train(&def, 2, &run, &[]);
    let text = std::fs::read_to_string(run.join("skipped.jsonl")).expect("skipped.jsonl");
    for name in &bad {
        assert!(
            text.contains(name.as_str()),
            "{name} not named:\n{text}\n{out}"
        );
    }
    assert_eq!(text.lines().count(), bad.len(), "{text}");
}
