//! Running one trial: train it (or resume it, or skip it when its folder already holds it),
//! then score it. Each trial is a `simclr run` and `simclr eval` child process with its share of
//! the cores (`RAYON_NUM_THREADS`), so trials running side by side never share a thread pool
//! and a trial that fails cannot take the sweep down with it.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use simclr::model::RunDir;

use super::plan::{Trial, superseded};
use super::spec::Evaluate;

/// The trial's record in its folder.
pub const RECORD: &str = "trial.json";
/// The trial's definition, as resolved.
pub const DEFINITION: &str = "trial.yaml";
/// What the trial's child processes printed.
pub const LOG: &str = "trial.log";

/// Where a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Training started (and may have been cut short: the next run resumes it).
    Training,
    /// Trained, not (yet) scored with the sweep's current evaluation.
    Trained,
    /// Trained and scored.
    Done,
    /// Training or evaluation failed (`error` says why).
    Failed,
}

/// One score of a trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// `knn` or `linear`.
    pub protocol: String,
    /// `trained` (h) or `projection` (z).
    pub features: String,
    /// Top-1 accuracy on the test split.
    pub top1: f64,
    /// Top-5 accuracy.
    pub top5: f64,
    /// Seconds the evaluation took (embedding included).
    pub seconds: f64,
}

/// `trial.json`: what a trial is and what it gave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The sweep's name.
    pub sweep: String,
    /// 1-based position in the sweep.
    pub index: usize,
    /// Folder name.
    pub name: String,
    /// (axis, value).
    pub values: Vec<(String, String)>,
    /// Hash of the resolved definition.
    pub identity: String,
    /// Where it stands.
    pub status: Status,
    /// Wall seconds of training, over every attempt (a resumed trial adds its part).
    pub train_seconds: f64,
    /// Training steps done.
    pub steps: u64,
    /// Samples per second of training-step time (data waits included), from `steps.jsonl`.
    pub images_per_s: Option<f64>,
    /// Loss of the last step.
    pub final_loss: Option<f64>,
    /// The evaluation the scores come from.
    pub evaluation: Option<String>,
    /// The scores.
    pub scores: Vec<Score>,
    /// Wall seconds of evaluation.
    pub eval_seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// Threads the trial trained with (low-order bits of the results depend on it).
    #[serde(default)]
    pub threads: usize,
}

impl Record {
    fn fresh(sweep: &str, trial: &Trial) -> Self {
        Record {
            sweep: sweep.to_owned(),
            index: trial.index,
            name: trial.name.clone(),
            values: trial.values.clone(),
            identity: trial.identity.clone(),
            status: Status::Training,
            train_seconds: 0.0,
            steps: 0,
            images_per_s: None,
            final_loss: None,
            evaluation: None,
            scores: Vec::new(),
            eval_seconds: 0.0,
            error: None,
            threads: 0,
        }
    }

    /// The top-1 of (protocol, features), if scored.
    pub fn top1(&self, protocol: &str, features: &str) -> Option<f64> {
        self.scores
            .iter()
            .find(|s| s.protocol == protocol && s.features == features)
            .map(|s| s.top1)
    }
}

/// Read a trial folder's record (`None`: absent or unreadable).
pub fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join(RECORD);
    let tmp = dir.join(format!(".{RECORD}.tmp"));
    let text = serde_json::to_string_pretty(record).context("cannot serialise the trial record")?;
    std::fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `trial`'s folder already holds it, trained and scored with `evaluate`.
pub fn is_done(trial: &Trial, evaluate: &Evaluate) -> bool {
    read_record(&trial.dir).is_some_and(|r| {
        r.identity == trial.identity
            && r.status == Status::Done
            && r.evaluation.as_deref() == Some(&evaluate.identity())
    })
}

/// How the sweep runs its trials.
#[derive(Clone, Debug)]
pub struct Runner {
    /// The `simclr` executable.
    pub exe: PathBuf,
    /// Threads of each child (`RAYON_NUM_THREADS`).
    pub threads: usize,
    /// The sweep's name.
    pub sweep: String,
    /// Its evaluation.
    pub evaluate: Evaluate,
    /// `budget: { seconds }`: each trial's training time.
    pub seconds: Option<f64>,
}

/// What happened to a trial in this invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its folder already held it, trained and scored.
    Skipped,
    /// Trained from the start.
    Trained,
    /// Resumed from its last checkpoint.
    Resumed,
    /// Only scored (trained earlier; the evaluation changed or had not run).
    Scored,
}

/// A trial stopped by Ctrl-C (its child drained and checkpointed).
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

impl Runner {
    /// Bring `trial` to done: skip, resume or train it, then score it. A failure is recorded
    /// in the trial's folder and returned.
    ///
    /// # Errors
    /// Training or evaluation failed ([`Interrupted`] for Ctrl-C), or the folder cannot be
    /// written.
    pub fn run(&self, trial: &Trial, out: &Path) -> Result<(Record, Outcome)> {
        let dir = &trial.dir;
        let mut record = match read_record(dir) {
            Some(r) if r.identity == trial.identity => r,
            found => {
                if dir.exists() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                    // Another definition trained here (the sweep file changed): kept aside.
                    let old = found.map_or_else(|| "unrecorded".to_owned(), |r| r.identity);
                    let to = superseded(out, &trial.name, &old);
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    // Never over an earlier one: a value changed, reverted and changed again.
                    let mut to = to;
                    let mut n = 2;
                    while to.exists() {
                        to = superseded(out, &trial.name, &format!("{old}-{n}"));
                        n += 1;
                    }
                    std::fs::rename(dir, &to).with_context(|| {
                        format!("cannot move {} aside to {}", dir.display(), to.display())
                    })?;
                    eprintln!(
                        "trial {} ({}): its definition changed; the earlier trial is kept in {}",
                        trial.index,
                        trial.name,
                        to.display()
                    );
                }
                Record::fresh(&self.sweep, trial)
            }
        };
        let evaluation = self.evaluate.identity();
        if record.status == Status::Done && record.evaluation.as_deref() == Some(&evaluation) {
            return Ok((record, Outcome::Skipped));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Record the trial's position and values as they are now (an earlier sweep file may
        // have numbered it differently).
        record.index = trial.index;
        record.values.clone_from(&trial.values);
        let mut outcome = Outcome::Scored;
        if !matches!(record.status, Status::Trained | Status::Done) {
            let resume = RunDir::new(dir).latest().is_some();
            outcome = if resume {
                Outcome::Resumed
            } else {
                Outcome::Trained
            };
            record.status = Status::Training;
            record.threads = self.threads;
            record.error = None;
            record.scores.clear();
            record.evaluation = None;
            write_record(dir, &record)?;
            if let Err(e) = self.train(trial, resume, &mut record) {
                if !e.is::<Interrupted>() {
                    record.status = Status::Failed;
                    record.error = Some(format!("{e:#}"));
                }
                write_record(dir, &record)?;
                return Err(e);
            }
            record.status = Status::Trained;
            write_record(dir, &record)?;
        }
        if let Err(e) = self.score(trial, &mut record) {
            if !e.is::<Interrupted>() {
                record.error = Some(format!("{e:#}"));
            }
            write_record(dir, &record)?;
            return Err(e);
        }
        record.status = Status::Done;
        record.evaluation = Some(evaluation);
        record.error = None;
        write_record(dir, &record)?;
        Ok((record, outcome))
    }

    fn command(&self, trial: &Trial) -> Result<(Command, PathBuf)> {
        let log = trial.dir.join(LOG);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.env("RAYON_NUM_THREADS", self.threads.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("cannot share the log")?)
            .stderr(file);
        die_with_parent(&mut cmd);
        Ok((cmd, log))
    }

    fn train(&self, trial: &Trial, resume: bool, record: &mut Record) -> Result<()> {
        let dir = &trial.dir;
        let definition = dir.join(DEFINITION);
        std::fs::write(&definition, &trial.text)
            .with_context(|| format!("cannot write {}", definition.display()))?;
        let (mut cmd, log) = self.command(trial)?;
        cmd.arg("run").arg(&definition).arg("--run-dir").arg(dir);
        if resume {
            cmd.arg("--resume").arg(dir);
        }
        if let Some(budget) = self.seconds {
            // What the earlier attempts spent up to the checkpoint this one resumes from.
            let from = if resume {
                simclr::model::stage::checkpoint::find_checkpoint(dir).map_or(0, |c| c.info.steps)
            } else {
                0
            };
            let spent = seconds_before(&RunDir::new(dir).steps(), from);
            cmd.arg("--max-seconds")
                .arg(format!("{:.3}", (budget - spent).max(0.001)));
        }
        // The sweep draws the trial's progress from its steps.jsonl.
        cmd.arg("--quiet");
        let start = log_len(&log);
        let t0 = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        record.train_seconds += t0.elapsed().as_secs_f64();
        let (steps, images_per_s, loss) = step_stats(&RunDir::new(dir).steps());
        record.steps = steps;
        record.images_per_s = images_per_s;
        record.final_loss = loss;
        match status.code() {
            Some(0) => Ok(()),
            Some(130) => Err(Interrupted.into()),
            code => bail!(
                "training failed ({}); {}:\n{}",
                code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
                log.display(),
                log_tail(&log, start)
            ),
        }
    }

    fn score(&self, trial: &Trial, record: &mut Record) -> Result<()> {
        let e = &self.evaluate;
        record.scores.clear();
        let t0 = Instant::now();
        for (protocol, features) in e.columns() {
            let out = trial.dir.join(format!("eval-{protocol}-{features}.json"));
            let (mut cmd, log) = self.command(trial)?;
            cmd.args(["eval", protocol])
                .arg(&trial.dir)
                .args(["--features", &features])
                .arg("--out")
                .arg(&out);
            if let Some(n) = e.train_limit {
                cmd.args(["--train-limit", &n.to_string()]);
            }
            if let Some(n) = e.test_limit {
                cmd.args(["--test-limit", &n.to_string()]);
            }
            match protocol {
                "knn" => {
                    let (k, t) = e.knn.unwrap_or((200, 0.1));
                    cmd.args(["--k", &k.to_string(), "--temperature", &t.to_string()]);
                }
                _ => {
                    let (iterations, l2) = e.linear.unwrap_or((500, None));
                    cmd.args(["--iterations", &iterations.to_string()]);
                    if let Some(l2) = l2 {
                        cmd.args(["--l2", &l2.to_string()]);
                    }
                }
            }
            let start = log_len(&log);
            let status = cmd
                .status()
                .with_context(|| format!("cannot start {}", self.exe.display()))?;
            match status.code() {
                Some(0) => {}
                Some(130) => return Err(Interrupted.into()),
                _ => bail!(
                    "`simclr eval {protocol} --features {features}` failed; {}:\n{}",
                    log.display(),
                    log_tail(&log, start)
                ),
            }
            let text = std::fs::read_to_string(&out)
                .with_context(|| format!("cannot read {}", out.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", out.display()))?;
            let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
            let (Some(top1), Some(top5)) = (num("top1"), num("top5")) else {
                bail!("{} has no top1/top5", out.display());
            };
            record.scores.push(Score {
                protocol: protocol.to_owned(),
                features,
                top1,
                top5,
                seconds: num("seconds").unwrap_or(0.0),
            });
        }
        record.eval_seconds = t0.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Steps, samples per second of step time, and the last loss, from a run's `steps.jsonl`.
pub fn step_stats(path: &Path) -> (u64, Option<f64>, Option<f64>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (0, None, None);
    };
    let (mut steps, mut samples, mut seconds, mut loss) = (0u64, 0.0, 0.0, None);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let get = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        if let (Some(rate), Some(secs)) = (get("images_per_s"), get("step_seconds")) {
            samples += rate * secs;
            seconds += secs;
        }
        if let Some(step) = v.get("step").and_then(serde_json::Value::as_u64) {
            steps = steps.max(step + 1);
        }
        loss = get("loss").or(loss);
    }
    (steps, (seconds > 0.0).then(|| samples / seconds), loss)
}

/// Seconds of the steps before `step` in a run's `steps.jsonl`.
fn seconds_before(path: &Path, step: u64) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v.get("step")
                .and_then(serde_json::Value::as_u64)
                .is_some_and(|s| s < step)
        })
        .filter_map(|v| v.get("step_seconds").and_then(serde_json::Value::as_f64))
        .sum()
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last lines the children wrote to the log since `start`.
fn log_tail(path: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(start));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(12);
    let tail = lines[from..].join("\n");
    if tail.is_empty() {
        "(nothing written; see the messages above)".into()
    } else {
        tail
    }
}

/// A child that ends when the sweep does: killing the sweep (a scheduler's time limit, a
/// `kill -9`) must not leave trials training on.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
