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
    /// Stop training once this run's steps have taken this many seconds (start-up not
    /// counted; the schedule keeps its full length, so --resume continues it).
    #[arg(long, value_name = "SECONDS")]
    max_seconds: Option<f64>,
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

/// The ranks this process runs among, from the launcher's environment (`mpirun`, `srun`):
/// MPI initialised when a launcher started several ranks; one process otherwise.
struct Ranks {
    world: simclr_dist::World,
    /// MPI stays initialised while this lives.
    #[cfg(feature = "mpi")]
    _session: Option<simclr_dist::mpi_backend::Session>,
}

impl Ranks {
    fn from_launcher() -> std::result::Result<Self, String> {
        let Some(launch) = simclr_dist::launch::detect().filter(|l| l.size > 1) else {
            return Ok(Self {
                world: simclr_dist::World::solo(),
                #[cfg(feature = "mpi")]
                _session: None,
            });
        };
        #[cfg(feature = "mpi")]
        {
            let (session, comm) = simclr_dist::mpi_backend::init().map_err(|e| e.to_string())?;
            if comm.size() != launch.size {
                return Err(format!(
                    "{} started {} ranks but MPI sees {}: this simclr's MPI library is not the launcher's",
                    launch.launcher,
                    launch.size,
                    comm.size()
                ));
            }
            let world = simclr_dist::World::new(comm, launch.local_rank, launch.launcher)
                .map_err(|e| e.to_string())?;
            Ok(Self {
                world,
                _session: Some(session),
            })
        }
        #[cfg(not(feature = "mpi"))]
        Err(format!(
            "{} started this process as rank {} of {}, but this simclr was built without MPI: build it with `cargo build --release --features mpi` (docs/distributed.md)",
            launch.launcher, launch.rank, launch.size
        ))
    }

    /// After a failure on this rank: stop every rank (the others would wait for this one in
    /// their next collective until the timeout).
    fn stop_all(&self, code: u8) {
        if self.world.size() > 1 {
            #[cfg(feature = "mpi")]
            simclr_dist::mpi_backend::abort_all(i32::from(code));
        }
        let _ = code;
    }
}

impl RunArgs {
    /// Join the launcher's ranks, if any, then run.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let ranks = match Ranks::from_launcher() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        };
        let mut registry = registry.clone();
        registry.extensions_mut().insert(ranks.world.clone());
        let code = match self.run_on(&registry, &ranks.world) {
            Ok(code) => code,
            Err(e) => {
                if ranks.world.size() > 1 {
                    // Said here: stopping the other ranks ends this process too.
                    eprintln!("error on rank {}: {e:#}", ranks.world.rank());
                    ranks.stop_all(EXIT_FAILED);
                }
                return Err(e);
            }
        };
        if code != ExitCode::SUCCESS && code != ExitCode::from(EXIT_INTERRUPTED) {
            ranks.stop_all(EXIT_FAILED);
        }
        Ok(code)
    }

    /// Resolve the checkpoint to resume from, then run.
    fn run_on(&self, registry: &Registry, world: &simclr_dist::World) -> Result<ExitCode> {
        let mut options = LoadOptions {
            run_dir: self.run_dir.clone(),
            max_steps: self.max_steps,
            max_seconds: self.max_seconds,
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
            if resume.definition_changed && world.is_leader() {
                eprintln!(
                    "warning: {} differs from the definition the checkpoint was trained with ({}); the run continues with the new one",
                    self.file.display(),
                    checkpoint.definition().display()
                );
            }
            if world.is_leader() {
                eprintln!(
                    "resuming from {} (step {}, epoch {}, loss {:.4})",
                    checkpoint.dir.display(),
                    checkpoint.info.steps,
                    checkpoint.info.epoch,
                    checkpoint.info.loss
                );
            }
            options.resume = Some(checkpoint.resume_point());
        }
        execute(&self.file, registry, options, &self.measure, true, world)
    }
}

impl ProfileArgs {
    /// Run for the measurements only.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let options = LoadOptions {
            overrides: parse_overrides(&self.set)?,
            ..LoadOptions::default()
        };
        execute(
            &self.file,
            registry,
            options,
            &self.measure,
            false,
            &simclr_dist::World::solo(),
        )
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
    world: &simclr_dist::World,
) -> Result<ExitCode> {
    let resuming = options.resume.is_some();
    let leader = world.is_leader();
    let graph: Graph = match simclr::config::load_file(file, registry, &options) {
        Ok(graph) => graph,
        Err(diagnostics) => {
            // Every rank says so: a rank that sees other files than rank 0 (another node's
            // disk) is the one to read.
            if world.size() > 1 {
                eprintln!("rank {}:", world.rank());
            }
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    if let Err(e) = check_backend(&graph, world) {
        if leader {
            eprintln!("error: {}: {e}", file.display());
        }
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    world.set_timeout(std::time::Duration::from_secs_f64(
        graph.distributed.timeout_s,
    ));
    // Rank 0 writes the run folder and prints; the other ranks print only their errors.
    let is_run = is_run && leader;
    let measure = &MeasureArgs {
        items: measure.items,
        metrics: measure.metrics.clone().filter(|_| leader),
        trace: measure.trace.clone(),
        quiet: measure.quiet || !leader,
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
    install_interrupt(stop.clone(), "sources stop and the pipeline drains");
    let options = RunOptions {
        item_limit: measure.items,
        trace: measure.trace.is_some(),
        progress: !measure.quiet,
        stop: stop.clone(),
        ..RunOptions::default()
    };
    if options.trace {
        world.comm.stats().record(true);
        world.control.stats().record(true);
    }
    let (run, failure) = match runtime::run(&graph, &options) {
        Ok(run) => (run, None),
        Err(failure) => {
            let failure = *failure;
            let message = failure.to_string();
            (failure.run, Some(message))
        }
    };
    let mut run = run;
    // Every rank's skipped items, counted and named by rank 0 (a rank that failed stops the
    // job instead: the others would wait for it here).
    if world.size() > 1 && failure.is_none() {
        gather_skips(world, &mut run.report)?;
    }
    if leader {
        writeln!(std::io::stdout().lock(), "{}", run.report)?;
    }
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
    // Every rank writes its own trace: `--trace t.json` is `t.rank1.json` on rank 1.
    let trace_path = measure.trace.as_ref().map(|p| {
        if world.size() > 1 && !leader {
            p.with_extension(format!("rank{}.json", world.rank()))
        } else {
            p.clone()
        }
    });
    // Time in collectives, one track per communicator (several ranks only).
    let mut trace = run.trace.clone();
    if let Some(trace) = trace.as_mut()
        && world.size() > 1
    {
        for (comm, track) in [
            (&world.comm, "collectives (model)"),
            (&world.control, "collectives (batch agreement)"),
        ] {
            let (spans, _) = comm.stats().take_recorded();
            trace.add_track(
                &format!("{track}, rank {}", world.rank()),
                spans
                    .into_iter()
                    .map(|e| (e.what, e.purpose.name(), e.start, e.took)),
            );
        }
    }
    if let (Some(path), Some(trace)) = (&trace_path, &trace) {
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
        let rank = if world.size() > 1 {
            format!(" on rank {}", world.rank())
        } else {
            String::new()
        };
        eprintln!("error{first}{rank}: {message}");
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

/// One stage's skips on one rank, as the ranks exchange them.
#[derive(serde::Serialize, serde::Deserialize)]
struct RankSkips {
    stage: String,
    skipped: u64,
    examples: Vec<String>,
    items: Vec<simclr::core::SkippedItem>,
    unlisted: u64,
}

/// Add the other ranks' skipped items to rank 0's report (every rank calls it, after its run).
fn gather_skips(world: &simclr_dist::World, report: &mut runtime::RunReport) -> Result<()> {
    let mine: Vec<RankSkips> = report
        .stages
        .iter()
        .filter(|s| s.skipped > 0)
        .map(|s| RankSkips {
            stage: s.id.clone(),
            skipped: s.skipped,
            examples: s.skipped_examples.clone(),
            items: s.skipped_items.clone(),
            unlisted: s.skipped_unlisted,
        })
        .collect();
    let bytes = serde_json::to_vec(&mine).context("cannot serialise the skipped items")?;
    let all = world
        .control
        .all_gather(simclr_dist::Purpose::Control, "skipped items", &bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !world.is_leader() {
        return Ok(());
    }
    for (rank, part) in all.iter().enumerate().skip(1) {
        let skips: Vec<RankSkips> = serde_json::from_slice(part)
            .with_context(|| format!("rank {rank} sent unreadable skipped items"))?;
        for skip in skips {
            let Some(stage) = report.stages.iter_mut().find(|s| s.id == skip.stage) else {
                continue;
            };
            stage.skipped += skip.skipped;
            stage.skipped_unlisted += skip.unlisted;
            stage.skipped_examples.extend(
                skip.examples
                    .into_iter()
                    .map(|e| format!("{e} (rank {rank})")),
            );
            stage.skipped_items.extend(skip.items);
        }
    }
    Ok(())
}

/// The definition's `distributed.backend` against the ranks the launcher started.
fn check_backend(graph: &Graph, world: &simclr_dist::World) -> std::result::Result<(), String> {
    use simclr::core::distributed::Backend;
    match graph.distributed.backend {
        Backend::None if world.size() > 1 => Err(format!(
            "`distributed: {{ backend: none }}`, but {} started {} ranks: run it without the launcher, or set `backend: auto`",
            world.launcher,
            world.size()
        )),
        Backend::Nccl => Err(
            "`distributed: { backend: nccl }` is not available in this build (NCCL needs a GPU build; use `backend: mpi`)"
                .into(),
        ),
        _ => Ok(()),
    }
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

/// A Ctrl-C handler: the first press asks for a clean stop (and says `what` happens), the
/// second aborts.
pub(super) fn install_interrupt(stop: Arc<AtomicBool>, what: &'static str) {
    let presses = AtomicUsize::new(0);
    let installed = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\ninterrupted: {what}; press Ctrl-C again to abort");
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
