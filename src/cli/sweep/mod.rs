//! `simclr sweep FILE`: a grid (or zip) of variants of one definition, each trained, scored
//! and compared in one command; resumable, idempotent, and splittable into one task per
//! trial for a scheduler's job array (`--trial I`, then `--collect`). docs/sweeps.md.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use simclr::config::Registry;

use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID};

mod exec;
mod plan;
mod results;
mod spec;

use exec::{Interrupted, Outcome, Runner};
use plan::Trial;

/// Arguments of `simclr sweep`.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// Sweep file (definitions/sweeps/ holds the shipped ones).
    file: PathBuf,
    /// List the trials, what each changes and the estimated time (timed on a few steps of
    /// trial 1 unless trials have finished); train nothing.
    #[arg(long, conflicts_with_all = ["trial", "collect"])]
    dry_run: bool,
    /// Run trial I only (1-based, as --dry-run numbers them): one task of a job array
    /// (`--trial $SLURM_ARRAY_TASK_ID`). The tables are left to --collect.
    #[arg(long, value_name = "I", conflicts_with = "collect")]
    trial: Option<usize>,
    /// Build results.json, .csv, .md and .png from the trial folders; train nothing.
    #[arg(long)]
    collect: bool,
    /// Trials at once, the cores divided between them.
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = super::at_least_one)]
    parallel: usize,
    /// Threads of each trial (default: the cores divided by --parallel).
    #[arg(long, value_name = "N", value_parser = super::at_least_one)]
    threads: Option<usize>,
    /// Sweep folder, replacing the file's `out`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl SweepArgs {
    /// Read, plan and run (or list, or collect) the sweep.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let mut sweep = match spec::read(&self.file) {
            Ok(s) => s,
            Err(d) => {
                eprintln!("{d}");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        };
        if let Some(out) = &self.out {
            sweep.out.clone_from(out);
        }
        let trials = match plan::plan(&sweep, registry) {
            Ok(t) => t,
            Err(all) => {
                let n: usize = all.iter().map(|d| d.items.len()).sum();
                for d in &all {
                    eprintln!("{d}\n");
                }
                eprintln!(
                    "{}: {n} problem{} in the sweep; nothing was trained",
                    self.file.display(),
                    if n == 1 { "" } else { "s" }
                );
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = self.threads.unwrap_or((cores / self.parallel).max(1));
        let runner = Runner {
            exe: std::env::current_exe().context("cannot find the simclr executable")?,
            threads,
            quiet: self.parallel > 1,
            sweep: sweep.name.clone(),
            evaluate: sweep.evaluate.clone(),
        };
        if self.dry_run {
            return dry_run(&sweep, &trials, &runner, self.parallel);
        }
        if self.collect {
            let (rows, written) = results::write(&sweep, &trials)?;
            let done = rows.iter().filter(|r| r.status == "done").count();
            print_table(&sweep)?;
            eprintln!(
                "{done} of {} trials done; written: {}",
                rows.len(),
                names(&written)
            );
            return Ok(ExitCode::SUCCESS);
        }
        let stop = Arc::new(AtomicBool::new(false));
        install_interrupt(stop.clone());
        if let Some(i) = self.trial {
            let Some(trial) = plan::pick(&trials, i) else {
                eprintln!(
                    "error: --trial {i}: {} has trials 1 to {}",
                    self.file.display(),
                    trials.len()
                );
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            return Ok(match run_one(&runner, trial, &sweep, trials.len()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is::<Interrupted>() => ExitCode::from(EXIT_INTERRUPTED),
                Err(e) => {
                    eprintln!("error: trial {i} ({}): {e:#}", trial.name);
                    ExitCode::from(EXIT_FAILED)
                }
            });
        }
        let code = run_all(&runner, &sweep, &trials, self.parallel, &stop);
        let (rows, written) = results::write(&sweep, &trials)?;
        print_table(&sweep)?;
        let done = rows.iter().filter(|r| r.status == "done").count();
        eprintln!(
            "{done} of {} trials done; written: {}",
            rows.len(),
            names(&written)
        );
        Ok(code)
    }
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(sweep: &spec::Sweep) -> Result<()> {
    let md = std::fs::read_to_string(sweep.out.join("results.md")).unwrap_or_default();
    writeln!(std::io::stdout().lock(), "{md}")?;
    Ok(())
}

/// What a finished trial says on the terminal.
fn describe(record: &exec::Record, sweep: &spec::Sweep) -> String {
    let scores: Vec<String> = record
        .scores
        .iter()
        .map(|s| {
            let what = if s.features == "trained" {
                s.protocol.clone()
            } else {
                format!("{}/{}", s.protocol, s.features)
            };
            format!("{what} top-1 {:.4}", s.top1)
        })
        .collect();
    let _ = sweep;
    format!(
        "{} (trained {}, {} steps, scored {})",
        scores.join(", "),
        clock(record.train_seconds),
        record.steps,
        clock(record.eval_seconds)
    )
}

fn run_one(runner: &Runner, trial: &Trial, sweep: &spec::Sweep, total: usize) -> Result<()> {
    eprintln!("trial {}/{total} {}: starting", trial.index, trial.name);
    let (record, outcome) = runner.run(trial, &sweep.out)?;
    eprintln!(
        "trial {}/{total} {}: {}{}",
        trial.index,
        trial.name,
        match outcome {
            Outcome::Skipped => "already done: ",
            Outcome::Resumed => "resumed and finished: ",
            Outcome::Scored => "scored: ",
            Outcome::Trained => "",
        },
        describe(&record, sweep)
    );
    Ok(())
}

/// Every trial, `parallel` at a time; the exit code.
fn run_all(
    runner: &Runner,
    sweep: &spec::Sweep,
    trials: &[Trial],
    parallel: usize,
    stop: &Arc<AtomicBool>,
) -> ExitCode {
    let total = trials.len();
    let queue: Mutex<VecDeque<&Trial>> = Mutex::new(trials.iter().collect());
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let interrupted = AtomicBool::new(false);
    // Wall seconds of the trials that ran in this invocation, for the ETA.
    let spent: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let eta = |remaining: usize| -> String {
        let spent = spent.lock().map(|s| s.clone()).unwrap_or_default();
        if spent.is_empty() {
            return "ETA after the first trial".into();
        }
        let mean = spent.iter().sum::<f64>() / spent.len() as f64;
        let secs = mean * remaining as f64 / parallel as f64;
        format!("sweep ETA {}", clock(secs))
    };
    std::thread::scope(|scope| {
        for _ in 0..parallel.min(total.max(1)) {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) || interrupted.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(trial) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        break;
                    };
                    let remaining = total - done.load(Ordering::SeqCst);
                    if !exec::is_done(trial, &runner.evaluate) {
                        eprintln!(
                            "trial {}/{total} {}: starting ({} done; {})",
                            trial.index,
                            trial.name,
                            done.load(Ordering::SeqCst),
                            eta(remaining)
                        );
                    }
                    let t0 = Instant::now();
                    match runner.run(trial, &sweep.out) {
                        Ok((record, outcome)) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            if outcome != Outcome::Skipped
                                && let Ok(mut s) = spent.lock()
                            {
                                s.push(t0.elapsed().as_secs_f64());
                            }
                            eprintln!(
                                "trial {}/{total} {}: {}{}",
                                trial.index,
                                trial.name,
                                match outcome {
                                    Outcome::Skipped => "already done: ",
                                    Outcome::Resumed => "resumed and finished: ",
                                    Outcome::Scored => "scored: ",
                                    Outcome::Trained => "",
                                },
                                describe(&record, sweep)
                            );
                        }
                        Err(e) if e.is::<Interrupted>() => {
                            interrupted.store(true, Ordering::SeqCst);
                            eprintln!(
                                "trial {}/{total} {}: interrupted; `simclr sweep {}` again resumes it",
                                trial.index,
                                trial.name,
                                sweep.file.display()
                            );
                        }
                        Err(e) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            failed.fetch_add(1, Ordering::SeqCst);
                            eprintln!("trial {}/{total} {}: failed: {e:#}", trial.index, trial.name);
                        }
                    }
                }
            });
        }
    });
    eprintln!(
        "sweep {}: {} of {total} trials finished in {}{}",
        sweep.name,
        done.load(Ordering::SeqCst) - failed.load(Ordering::SeqCst),
        clock(started.elapsed().as_secs_f64()),
        match failed.load(Ordering::SeqCst) {
            0 => String::new(),
            n => format!(", {n} failed (their errors are above and in results.md)"),
        }
    );
    if interrupted.load(Ordering::SeqCst) || stop.load(Ordering::SeqCst) {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if failed.load(Ordering::SeqCst) > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `1h 05m`, `3m 20s`, `42s`, `0.3s`.
fn clock(secs: f64) -> String {
    if secs < 9.95 {
        return format!("{:.1}s", secs.max(0.0));
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `--dry-run`: the trials and the estimated time.
fn dry_run(
    sweep: &spec::Sweep,
    trials: &[Trial],
    runner: &Runner,
    parallel: usize,
) -> Result<ExitCode> {
    let shape: Vec<String> = sweep
        .axes
        .iter()
        .map(|a| format!("{} ({})", a.name, a.values.len()))
        .collect();
    let mut out = format!(
        "sweep {}: {} trials, {} of {}; base {}; folder {}\n",
        sweep.name,
        trials.len(),
        match sweep.combine {
            spec::Combine::Grid => "grid",
            spec::Combine::Zip => "zip",
        },
        shape.join(" × "),
        sweep.base.display(),
        sweep.out.display()
    );
    let rows = results::rows(sweep, trials);
    // Seconds per sample-step of training, and seconds of evaluation, from finished trials
    // of this sweep; otherwise timed on a few steps of trial 1.
    let finished: Vec<(&results::Row, &Trial)> = rows
        .iter()
        .zip(trials)
        .filter(|(r, t)| r.status == "done" && r.steps > 0 && t.batch.is_some())
        .collect();
    // `overhead`: seconds a trial takes besides its steps (start-up, or evaluation).
    let (per_sample, overhead, source) = if finished.is_empty() {
        match calibrate(sweep, trials, runner) {
            Ok((per_step, batch, startup)) => (
                Some(per_step / batch as f64),
                Some(startup),
                format!(
                    "timed on 6 steps of trial 1: {:.0} ms per step and {:.1} s to start, {} threads per trial; evaluation not included",
                    per_step * 1e3,
                    startup,
                    runner.threads
                ),
            ),
            Err(e) => (None, None, format!("no estimate: {e:#}")),
        }
    } else {
        let rate: f64 = finished
            .iter()
            .map(|(r, t)| r.train_seconds / (r.steps as f64 * t.batch.unwrap_or(1) as f64))
            .sum::<f64>()
            / finished.len() as f64;
        let eval = finished.iter().map(|(r, _)| r.eval_seconds).sum::<f64>() / finished.len() as f64;
        (
            Some(rate),
            Some(eval),
            format!("from the {} finished trials (startup and evaluation included)", finished.len()),
        )
    };
    let mut total = 0.0;
    for (t, r) in trials.iter().zip(&rows) {
        let estimate = match (per_sample, t.steps, t.batch) {
            (Some(rate), Some(steps), Some(batch)) => {
                let secs = rate * steps as f64 * batch as f64 + overhead.unwrap_or(0.0);
                if r.status != "done" {
                    total += secs;
                }
                clock(secs)
            }
            _ => "?".into(),
        };
        let state = match (r.status.as_str(), r.metric) {
            ("done", Some(m)) => format!("done, {} {m:.4}", sweep.metric.label()),
            ("missing", _) => "to run".into(),
            (s, _) => s.to_owned(),
        };
        out.push_str(&format!(
            "{:>3}  {}  [{} steps × {}, ≈ {estimate}, {state}]\n",
            t.index,
            t.name,
            t.steps.map_or_else(|| "?".into(), |s| s.to_string()),
            t.batch.map_or_else(|| "?".into(), |b| b.to_string()),
        ));
        for (path, value) in &t.overrides {
            out.push_str(&format!("       {path} = {value}\n"));
        }
    }
    out.push_str(&format!(
        "estimated time to finish: {} with --parallel {parallel} ({source})\n",
        if per_sample.is_some() {
            clock(total / parallel as f64)
        } else {
            "unknown".into()
        }
    ));
    write!(std::io::stdout().lock(), "{out}")?;
    Ok(ExitCode::SUCCESS)
}

/// Median seconds per step of trial 1 over steps 2-6 (the first is warm-up), its batch, and
/// the seconds of the run that were not steps (start-up: reading data, building the model).
fn calibrate(sweep: &spec::Sweep, trials: &[Trial], runner: &Runner) -> Result<(f64, usize, f64)> {
    let first = trials.first().context("the sweep has no trials")?;
    let batch = first.batch.context("trial 1's batch size is not known before it runs")?;
    let dir = sweep.out.join(".calibration");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let definition = dir.join(exec::DEFINITION);
    std::fs::write(&definition, &first.text)
        .with_context(|| format!("cannot write {}", definition.display()))?;
    let t0 = Instant::now();
    let output = std::process::Command::new(&runner.exe)
        .env("RAYON_NUM_THREADS", runner.threads.to_string())
        .arg("run")
        .arg(&definition)
        .arg("--run-dir")
        .arg(&dir)
        .args(["--max-steps", "6", "--quiet"])
        .output()
        .context("cannot start the timing run")?;
    let wall = t0.elapsed().as_secs_f64();
    let steps = std::fs::read_to_string(dir.join("steps.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let all: Vec<f64> = steps
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("step_seconds").and_then(serde_json::Value::as_f64))
        .collect();
    let startup = (wall - all.iter().sum::<f64>()).max(0.0);
    let mut secs: Vec<f64> = steps
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("step_seconds").and_then(serde_json::Value::as_f64))
        .collect();
    if secs.is_empty() {
        anyhow::bail!(
            "the timing run of trial 1 gave no steps: {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        );
    }
    secs.sort_by(f64::total_cmp);
    Ok((secs[secs.len() / 2], batch, startup))
}

/// Ctrl-C: the trials' children drain and checkpoint (they see it too); no new trial starts.
fn install_interrupt(stop: Arc<AtomicBool>) {
    let presses = AtomicUsize::new(0);
    let installed = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupted: the running trials checkpoint and stop; no new trial starts");
            stop.store(true, Ordering::SeqCst);
        } else {
            eprintln!("\naborted");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    if let Err(e) = installed {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
}
