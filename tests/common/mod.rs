//! Helpers the end-to-end test files share: run the `simclr` binary, require success, make a
//! scratch folder. (Each test file compiles this module; not every file uses every helper.)
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `simclr ARGS` in the project root.
pub fn simclr(args: &[&str]) -> Output {
    simclr_env(args, &[])
}

/// Run `simclr ARGS` in the project root with extra environment variables.
pub fn simclr_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simclr"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// The standard output of a run that must have succeeded (else both outputs in the panic).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An empty folder `<target tmp>/<group>/<name>`.
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Run `simclr ARGS`, killed after `limit`: `None` when it was still running (a hang is a
/// failure, not a stuck suite). Both outputs are drained while it runs, so a chatty process is
/// not mistaken for a stuck one.
pub fn simclr_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).ok();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr"),
    );
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// A tiny training run (synthetic data, a small CNN, 6 steps) that writes a checkpoint every 2
/// steps and keeps the last 2: what the crash-consistency tests kill mid-write.
pub const TRAINING: &str = "\
name: crash-test
seed: 3
stages:
  images: { kind: synthetic, params: { count: 48, size: 16 } }
  views: { kind: views, inputs: [images], params: { size: 16 } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 8 } }
  encoder: { kind: small_cnn, inputs: [batches], credit: { from: train }, params: { width: 4 } }
  head: { kind: projector, inputs: [encoder], params: { hidden: 16, out: 8 } }
  train: { kind: nt_xent, inputs: [head], params: { optimizer: sgd, lr: 0.5 } }
  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 2, keep_last: 2 } }
";
