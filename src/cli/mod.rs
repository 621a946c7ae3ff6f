//! The `simclr` command line: one module per command, each with its own `clap::Args` and
//! `run`. The work is done by the library crates; these modules parse, call and print.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod data;
mod embed;
mod eval;
mod export;
mod preview;
mod run;
mod stages;
mod sweep;
mod validate;

/// SimCLR contrastive learning as YAML-defined dataflow pipelines.
#[derive(Parser)]
#[command(name = "simclr", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check definitions without running them; every problem is reported with line:column.
    Validate(validate::ValidateArgs),
    /// List the stage kinds, or describe one (ports, parameters, example).
    Stages(stages::StagesArgs),
    /// Run a definition: writes a run folder (definition copy, metrics) and prints the table.
    Run(run::RunArgs),
    /// Run a definition (or its first N items) for its measurements only and print the table.
    Profile(run::ProfileArgs),
    /// Draw a PNG grid of the views a definition makes: one row per sample, original, t, t'.
    Preview(preview::PreviewArgs),
    /// Evaluate a trained encoder: linear probe or weighted kNN on the labelled train/test
    /// splits of the run's source (read from the checkpoint's definition copy).
    Eval {
        #[command(subcommand)]
        what: eval::EvalCommand,
    },
    /// Export a trained encoder (optionally with its projection head) to ONNX, verified in
    /// ONNX Runtime against candle. Input `images` [batch, C, H, W] float32 NCHW; outputs
    /// `features` (h) and, with --head, `projection` (z). Preprocessing in the metadata.
    Export(export::ExportArgs),
    /// Embed images with an exported encoder (ONNX Runtime) or a checkpoint (candle): writes a
    /// float32 .npy [n, d] in input order, plus <out>.ids.txt (file per row) for folders.
    Embed(embed::EmbedArgs),
    /// Train, score and compare a grid of variants of a definition (sweep file: docs/sweeps.md):
    /// one run folder per trial, results.md/.csv/.json and a heatmap or bar chart; re-running
    /// skips finished trials and resumes an interrupted one.
    Sweep(sweep::SweepArgs),
    /// Datasets: `data pack` writes one as WebDataset tar shards.
    Data {
        #[command(subcommand)]
        what: data::DataCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

/// A command that failed.
pub const EXIT_FAILED: u8 = 1;
/// A definition (or override) that does not validate.
pub const EXIT_INVALID: u8 = 2;
/// Stopped by Ctrl-C (after a clean drain).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Parse the command line, run the command, print its result; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = simclr::registry::user();
    let result = match cli.command {
        Command::Validate(args) => args.run(&registry),
        Command::Stages(args) => args.run(&registry),
        Command::Run(args) => args.run(&registry),
        Command::Profile(args) => args.run(&registry),
        Command::Preview(args) => args.run(&registry),
        Command::Eval { what } => what.run(&registry).map(printed),
        Command::Export(args) => args.run(&registry).map(printed),
        Command::Embed(args) => args.run(&registry).map(printed),
        Command::Sweep(args) => args.run(&registry),
        Command::Data { what } => what.run(&registry).map(printed),
        Command::Bench { what } => what.run().map(printed),
    };
    match result {
        Ok(code) => code,
        // `simclr stages | head`: the reader left; that is not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        // A malformed `--set` is an invalid definition, like one the file gives.
        Err(error) if error.is::<InvalidOverride>() => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Size the global rayon pool (`threads` 0: one thread per core, rayon's default).
fn use_threads(threads: usize) {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .ok();
    }
}

/// A progress bar of `total` `unit` on stderr (hidden with `quiet`).
fn progress_bar(quiet: bool, total: u64, unit: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}  {{per_sec}}  eta {{eta}}"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A command's report on stdout, and success.
fn printed(text: String) -> ExitCode {
    println!("{text}");
    ExitCode::SUCCESS
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `KEY.PATH=VALUE` pairs of `--set`.
fn parse_overrides(set: &[String]) -> Result<Vec<(String, String)>> {
    set.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(anyhow::Error::new(InvalidOverride(format!(
                "--set {s}: expected KEY.PATH=VALUE, e.g. --set stages.images.params.count=512"
            )))),
        })
        .collect()
}

/// A count of at least 1 (`--batch-size`).
fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number ≥ 0 (`--tolerance`): NaN would pass every comparison.
fn tolerance(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("{t} is not a finite number ≥ 0")),
        Err(e) => Err(e.to_string()),
    }
}

/// A `--set` that is not `KEY.PATH=VALUE` (exit 2, as an invalid definition).
#[derive(Debug)]
struct InvalidOverride(String);

impl std::fmt::Display for InvalidOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidOverride {}
