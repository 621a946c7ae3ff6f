//! `simclr run FILE` (train, writing a run folder) and `simclr profile FILE` (measure only).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use simclr::config::graph::LoadOptions;
use simclr::config::{Graph, Registry};
use simclr::model::RunDir;
use simclr::model::stage::checkpoint::resume_from;
use simclr::runtime::{self, RunOptions};

use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, parse_overrides};

/// Arguments of `simclr run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Definition file.
    file: PathBuf,
    /// Run folder, overriding the definition's `run_dir` (and, with --resume, the resumed
    /// run's folder).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Stop training after this many steps in all (the schedule keeps its full length,
    /// so --resume continues it).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Continue from a checkpoint: a run folder (its latest checkpoint), a checkpoints
    /// folder, or one checkpoint folder.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Override a value of the definition: `--set stages.images.params.path=/data/x`
    /// (the value is YAML; repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    measure: MeasureArgs,
}

/// Arguments of `simclr profile`.
#[derive(clap::Args)]
pub struct ProfileArgs {
    /// Definition file.
    file: PathBuf,
    /// Override a value of the definition, as `simclr run --set` (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    measure: MeasureArgs,
}

/// What both commands measure and where they write it.
#[derive(clap::Args)]
struct MeasureArgs {
    /// Stop each source after N items.
    #[arg(long, value_name = "N")]
    items: Option<u64>,
    /// Write the metrics (the table's numbers) as JSON.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Write a Chrome trace-event JSON file (open it in https://ui.perfetto.dev).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl RunArgs {
    /// Resolve the checkpoint to resume from, then run.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let mut options = LoadOptions {
            run_dir: self.run_dir.clone(),
            max_steps: self.max_steps,
            overrides: parse_overrides(&self.set)?,
            ..LoadOptions::default()
        };
        if let Some(from) = &self.resume {
            // Compared with the checkpoint's definition as it ran: overrides included.
            let text = std::fs::read_to_string(&self.file)
                .ok()
                .and_then(|t| simclr::config::resolved_text(&self.file, &t, &options.overrides));
            let resume = match resume_from(from, text.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot resume: {}", simclr::model::error::chain(&e));
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
            };
            let checkpoint = &resume.checkpoint;
            if options.run_dir.is_none() {
                options.run_dir = resume.run_dir.clone();
            }
            if resume.definition_changed {
                eprintln!(
                    "warning: {} differs from the definition the checkpoint was trained with ({}); the run continues with the new one",
                    self.file.display(),
                    checkpoint.definition().display()
                );
            }
            eprintln!(
                "resuming from {} (step {}, epoch {}, loss {:.4})",
                checkpoint.dir.display(),
                checkpoint.info.steps,
                checkpoint.info.epoch,
                checkpoint.info.loss
            );
            options.resume = Some(checkpoint.resume_point());
        }
        execute(&self.file, registry, options, &self.measure, true)
    }
}

impl ProfileArgs {
    /// Run for the measurements only.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let options = LoadOptions {
            overrides: parse_overrides(&self.set)?,
            ..LoadOptions::default()
        };
        execute(&self.file, registry, options, &self.measure, false)
    }
}

/// Validate and run `file`; a run (`is_run`) also writes its run folder's definition copy and
/// `metrics.json`.
fn execute(
    file: &std::path::Path,
    registry: &Registry,
    options: LoadOptions,
    measure: &MeasureArgs,
    is_run: bool,
) -> Result<ExitCode> {
    let resuming = options.resume.is_some();
    let graph: Graph = match simclr::config::load_file(file, registry, &options) {
        Ok(graph) => graph,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let run_dir = RunDir::new(&graph.run_dir);
    if is_run && !resuming && run_dir.latest().is_some() {
        eprintln!(
            "warning: {} holds checkpoints of an earlier run; this run replaces them as it writes its own (--run-dir picks another folder, --resume continues that run)",
            graph.run_dir.display()
        );
    }
    if is_run {
        std::fs::create_dir_all(&graph.run_dir)
            .with_context(|| format!("cannot create the run folder {}", graph.run_dir.display()))?;
        let copy = run_dir.definition();
        std::fs::write(&copy, &graph.resolved)
            .with_context(|| format!("cannot write {}", copy.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    install_interrupt(stop.clone());
    let options = RunOptions {
        item_limit: measure.items,
        trace: measure.trace.is_some(),
        progress: !measure.quiet,
        stop: stop.clone(),
        ..RunOptions::default()
    };
    let (run, failure) = match runtime::run(&graph, &options) {
        Ok(run) => (run, None),
        Err(failure) => {
            let failure = *failure;
            let message = failure.to_string();
            (failure.run, Some(message))
        }
    };
    writeln!(std::io::stdout().lock(), "{}", run.report)?;
    // Every output is attempted even when one cannot be written (a full disk fails them all):
    // their errors come first and the run's own error last, where it is seen.
    let mut problems = Vec::new();
    if is_run && let Err(e) = write_skipped(&run_dir, &run.report, resuming) {
        problems.push(format!("{e:#}"));
    }
    let mut metrics_paths: Vec<PathBuf> = measure.metrics.iter().cloned().collect();
    if is_run {
        metrics_paths.push(run_dir.metrics());
    }
    for path in &metrics_paths {
        let written = serde_json::to_string_pretty(&run.report)
            .context("cannot serialise the metrics")
            .and_then(|json| {
                std::fs::write(path, json)
                    .with_context(|| format!("cannot write the metrics to {}", path.display()))
            });
        match written {
            Ok(()) => eprintln!("metrics written to {}", path.display()),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if let (Some(path), Some(trace)) = (&measure.trace, &run.trace) {
        match trace.write(path) {
            Ok(()) => {
                let dropped = trace.dropped();
                let note = if dropped > 0 {
                    format!(" ({dropped} spans over the per-thread cap were dropped)")
                } else {
                    String::new()
                };
                eprintln!(
                    "trace written to {}{note}; open it in https://ui.perfetto.dev",
                    path.display()
                );
            }
            Err(e) => problems.push(format!("cannot write the trace to {}: {e}", path.display())),
        }
    }
    for problem in &problems {
        eprintln!("error: {problem}");
    }
    if let Some(message) = failure {
        let first = if problems.is_empty() {
            ""
        } else {
            " (the first error)"
        };
        eprintln!("error{first}: {message}");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if !problems.is_empty() {
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `skipped.jsonl`: the stage and the item it skipped.
#[derive(serde::Serialize, serde::Deserialize)]
struct SkippedLine {
    stage: String,
    #[serde(flatten)]
    skipped: simclr::core::SkippedItem,
}

/// Name every item the run skipped in the run folder's `skipped.jsonl`, one JSON object per
/// distinct item (`stage`, `item`, `cause`, `times`); a resumed run adds its skips to the
/// file's. A fresh run that skipped nothing removes an earlier run's file.
fn write_skipped(run_dir: &RunDir, report: &runtime::RunReport, resuming: bool) -> Result<()> {
    let path = run_dir.skipped();
    let mut lines: Vec<SkippedLine> = Vec::new();
    if resuming && let Ok(text) = std::fs::read_to_string(&path) {
        lines.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    let mut index: std::collections::HashMap<(String, String), usize> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| ((l.stage.clone(), l.skipped.item.clone()), i))
        .collect();
    let mut unlisted = 0;
    for stage in &report.stages {
        unlisted += stage.skipped_unlisted;
        for skip in &stage.skipped_items {
            let key = (stage.id.clone(), skip.item.clone());
            if let Some(&i) = index.get(&key) {
                lines[i].skipped.times += skip.times;
            } else {
                index.insert(key, lines.len());
                lines.push(SkippedLine {
                    stage: stage.id.clone(),
                    skipped: skip.clone(),
                });
            }
        }
    }
    if lines.is_empty() && unlisted == 0 {
        if !resuming {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
            }
        }
        return Ok(());
    }
    let mut text = String::new();
    for line in &lines {
        text.push_str(&serde_json::to_string(line).context("cannot serialise a skipped item")?);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let more = if unlisted > 0 {
        format!(
            "; {unlisted} more skips, of items past the first {} a stage names, are counted only",
            simclr::core::MAX_SKIP_RECORDS
        )
    } else {
        String::new()
    };
    eprintln!(
        "skipped items ({}) named in {}{more}",
        lines.len(),
        path.display()
    );
    Ok(())
}

/// A Ctrl-C handler: the first press asks for a clean stop, the second aborts.
fn install_interrupt(stop: Arc<AtomicBool>) {
    let presses = AtomicUsize::new(0);
    let installed = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: sources stop and the pipeline drains; press Ctrl-C again to abort"
            );
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
