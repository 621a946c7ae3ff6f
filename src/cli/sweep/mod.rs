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
    /// Trials at once, the cores divided between them (default: 2 on two cores or more:
    /// measured 1.11x the throughput of one trial at a time on 2 cores, docs/sweeps.md).
    #[arg(long, value_name = "K", value_parser = super::at_least_one)]
    parallel: Option<usize>,
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
        let parallel = self.parallel.unwrap_or(if cores >= 2 { 2 } else { 1 });
        let threads = self.threads.unwrap_or((cores / parallel).max(1));
        let runner = Runner {
            exe: std::env::current_exe().context("cannot find the simclr executable")?,
            threads,
            sweep: sweep.name.clone(),
            evaluate: sweep.evaluate.clone(),
            seconds: match sweep.budget {
                Some(spec::Budget::Seconds(s)) => Some(s),
                _ => None,
            },
        };
        if self.dry_run {
            return dry_run(&sweep, &trials, &runner, parallel);
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
        // The trials' processes see Ctrl-C too: they drain and checkpoint.
        super::run::install_interrupt(
            stop.clone(),
            "the running trials checkpoint and stop; no new trial starts",
        );
        if let Some(i) = self.trial {
            let Some(trial) = plan::pick(&trials, i) else {
                eprintln!(
                    "error: --trial {i}: {} has trials 1 to {}",
                    self.file.display(),
                    trials.len()
                );
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let code = run_all(&runner, &sweep, &[trial], trials.len(), 1, &stop);
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let all: Vec<&Trial> = trials.iter().collect();
        let code = run_all(&runner, &sweep, &all, trials.len(), parallel, &stop);
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
fn describe(record: &exec::Record) -> String {
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
    format!(
        "{} (trained {}, {} steps, scored {})",
        scores.join(", "),
        clock(record.train_seconds),
        record.steps,
        clock(record.eval_seconds)
    )
}

/// The progress of the trials running now: the sweep's bar (trials done/total, ETA) and one
/// bar per running trial (its step, loss), read from the trial's `steps.jsonl` as it grows.
/// Off a terminal (a job log) the bars are hidden and each trial says one line when it starts
/// and one when it ends.
struct Progress {
    multi: indicatif::MultiProgress,
    sweep: indicatif::ProgressBar,
    running: Mutex<Vec<Follow>>,
}

/// A running trial's bar and how far its `steps.jsonl` has been read.
struct Follow {
    index: usize,
    steps: PathBuf,
    offset: u64,
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(total: usize) -> Self {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        let sweep = multi.add(indicatif::ProgressBar::new(total as u64));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "sweep {bar:30} {pos}/{len} trials  {elapsed_precise}  {msg}",
        ) {
            sweep.set_style(style);
        }
        Progress {
            multi,
            sweep,
            running: Mutex::new(Vec::new()),
        }
    }

    fn say(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    fn start(&self, trial: &Trial, total: usize) {
        let bar = self
            .multi
            .add(indicatif::ProgressBar::new(trial.steps.unwrap_or(0)));
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "  trial {}/{total} {{bar:24}} {{pos}}/{{len}} steps  {{msg}}  {}",
            trial.index, trial.name
        )) {
            bar.set_style(style);
        }
        if let Ok(mut r) = self.running.lock() {
            r.push(Follow {
                index: trial.index,
                steps: simclr::model::RunDir::new(&trial.dir).steps(),
                offset: 0,
                bar,
            });
        }
    }

    fn end(&self, trial: &Trial) {
        if let Ok(mut r) = self.running.lock() {
            if let Some(i) = r.iter().position(|f| f.index == trial.index) {
                let f = r.remove(i);
                f.bar.finish_and_clear();
                self.multi.remove(&f.bar);
            }
        }
    }

    /// Read what the running trials' `steps.jsonl` gained since the last look.
    fn poll(&self) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        for f in running.iter_mut() {
            let Ok(mut file) = std::fs::File::open(&f.steps) else {
                continue;
            };
            use std::io::{Read, Seek, SeekFrom};
            let len = file.metadata().map_or(0, |m| m.len());
            if len < f.offset {
                f.offset = 0;
            }
            if file.seek(SeekFrom::Start(f.offset)).is_err() {
                continue;
            }
            let mut text = String::new();
            if file.read_to_string(&mut text).is_err() {
                continue;
            }
            // Only whole lines: the last may still be being written.
            let Some(end) = text.rfind('\n') else {
                continue;
            };
            f.offset += end as u64 + 1;
            if let Some(v) = text[..end]
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .last()
            {
                if let Some(step) = v.get("step").and_then(serde_json::Value::as_u64) {
                    f.bar.set_position(step + 1);
                }
                if let Some(loss) = v.get("loss").and_then(serde_json::Value::as_f64) {
                    f.bar.set_message(format!("loss {loss:.4}"));
                }
            }
        }
    }
}

/// `trials` (all of the sweep's, or the one `--trial` names), `parallel` at a time; the exit
/// code. `total`: the sweep's number of trials.
fn run_all(
    runner: &Runner,
    sweep: &spec::Sweep,
    trials: &[&Trial],
    total: usize,
    parallel: usize,
    stop: &Arc<AtomicBool>,
) -> ExitCode {
    let progress = Progress::new(trials.len());
    let queue: Mutex<VecDeque<&Trial>> = Mutex::new(trials.iter().copied().collect());
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let interrupted = AtomicBool::new(false);
    let workers_left = AtomicUsize::new(parallel.min(trials.len().max(1)));
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
        scope.spawn(|| {
            while workers_left.load(Ordering::SeqCst) > 0 {
                progress.poll();
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        });
        for _ in 0..parallel.min(trials.len().max(1)) {
            scope.spawn(|| {
                // Counted down however the worker ends (a panic too), so the progress thread
                // stops and the scope returns.
                let _left = CountDown(&workers_left);
                loop {
                    if stop.load(Ordering::SeqCst) || interrupted.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some(trial) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        break;
                    };
                    let remaining = trials.len() - done.load(Ordering::SeqCst);
                    let fresh = !exec::is_done(trial, &runner.evaluate);
                    if fresh {
                        progress.say(&format!(
                            "trial {}/{total} {}: starting ({} of {} done; {})",
                            trial.index,
                            trial.name,
                            done.load(Ordering::SeqCst),
                            trials.len(),
                            eta(remaining)
                        ));
                        progress.start(trial, total);
                    }
                    let t0 = Instant::now();
                    let result = runner.run(trial, &sweep.out);
                    progress.end(trial);
                    match result {
                        Ok((record, outcome)) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            if outcome != Outcome::Skipped
                                && let Ok(mut s) = spent.lock()
                            {
                                s.push(t0.elapsed().as_secs_f64());
                            }
                            progress.say(&format!(
                                "trial {}/{total} {}: {}{}",
                                trial.index,
                                trial.name,
                                match outcome {
                                    Outcome::Skipped => "already done: ",
                                    Outcome::Resumed => "resumed and finished: ",
                                    Outcome::Scored => "scored: ",
                                    Outcome::Trained => "",
                                },
                                describe(&record)
                            ));
                        }
                        Err(e) if e.is::<Interrupted>() => {
                            interrupted.store(true, Ordering::SeqCst);
                            progress.say(&format!(
                                "trial {}/{total} {}: interrupted; `simclr sweep {}` again resumes it",
                                trial.index,
                                trial.name,
                                sweep.file.display()
                            ));
                        }
                        Err(e) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            failed.fetch_add(1, Ordering::SeqCst);
                            progress.say(&format!(
                                "trial {}/{total} {}: failed: {e:#}",
                                trial.index, trial.name
                            ));
                        }
                    }
                    let finished = done.load(Ordering::SeqCst);
                    progress.sweep.set_position(finished as u64);
                    progress.sweep.set_message(eta(trials.len() - finished));
                }
            });
        }
    });
    progress.sweep.finish_and_clear();
    eprintln!(
        "sweep {}: {} of {} trials finished in {}{}",
        sweep.name,
        done.load(Ordering::SeqCst) - failed.load(Ordering::SeqCst),
        trials.len(),
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

/// Decrements its counter when dropped.
struct CountDown<'a>(&'a AtomicUsize);

impl Drop for CountDown<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
        let eval =
            finished.iter().map(|(r, _)| r.eval_seconds).sum::<f64>() / finished.len() as f64;
        (
            Some(rate),
            Some(eval),
            format!(
                "from the {} finished trials (startup and evaluation included)",
                finished.len()
            ),
        )
    };
    let mut total = 0.0;
    for (t, r) in trials.iter().zip(&rows) {
        let estimate = match (per_sample, t.steps, t.batch) {
            // A time budget: the budget itself (at most), plus what is not steps.
            (Some(_), _, _) if runner.seconds.is_some() => {
                let secs = runner.seconds.unwrap_or(0.0) + overhead.unwrap_or(0.0);
                if r.status != "done" {
                    total += secs;
                }
                clock(secs)
            }
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
    let batch = first
        .batch
        .context("trial 1's batch size is not known before it runs")?;
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
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    secs.sort_by(f64::total_cmp);
    Ok((secs[secs.len() / 2], batch, startup))
}
