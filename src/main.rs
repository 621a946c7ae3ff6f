//! The `simclr` command line: `validate`, `stages`, `run`, `profile`, `preview`, `eval`,
//! `export`, `embed`, `bench`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use simclr::config::graph::LoadOptions;
use simclr::config::{Graph, Registry};
use simclr::core::StageKind;
use simclr::runtime::{self, RunOptions};

mod bench;
mod bench_train;
mod eval_cmd;
mod malloc;
mod onnx_cmd;
mod preview;

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
    Validate {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a value of the definitions, as `simclr run --set` (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
    },
    /// List the stage kinds, or describe one (ports, parameters, example).
    Stages {
        /// A kind to describe in full.
        kind: Option<String>,
        /// Print only the kind's example definition (pipe it to a file and run it).
        #[arg(long, requires = "kind")]
        example: bool,
    },
    /// Run a definition: writes a run folder (definition copy, metrics) and prints the table.
    Run {
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
    },
    /// Run a definition (or its first N items) for its measurements only and print the table.
    Profile {
        /// Definition file.
        file: PathBuf,
        /// Override a value of the definition, as `simclr run --set` (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        measure: MeasureArgs,
    },
    /// Draw a PNG grid of the views a definition makes: one row per sample, original, t, t'.
    Preview {
        /// Definition file (with a `views` stage fed by a source).
        file: PathBuf,
        /// Output PNG.
        #[arg(long, default_value = "grid.png")]
        out: PathBuf,
        /// Samples (rows).
        #[arg(long, default_value_t = 16)]
        n: usize,
    },
    /// Evaluate a trained encoder: linear probe or weighted kNN on the labelled train/test
    /// splits of the run's source (read from the checkpoint's definition copy).
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Export a trained encoder (optionally with its projection head) to ONNX, verified in
    /// ONNX Runtime against candle. Input `images` [batch, C, H, W] float32 NCHW; outputs
    /// `features` (h) and, with --head, `projection` (z). Preprocessing in the metadata.
    Export {
        /// A run folder (its latest checkpoint), a checkpoints folder or one checkpoint folder.
        path: PathBuf,
        /// Output file.
        #[arg(long, default_value = "encoder.onnx")]
        out: PathBuf,
        /// Include the projection head g (output `projection`).
        #[arg(long)]
        head: bool,
        /// ONNX opset (13 to 23).
        #[arg(long, default_value_t = simclr::onnx::export::DEFAULT_OPSET)]
        opset: i64,
        /// Keep BatchNorm as BatchNormalization nodes (inference mode) instead of folding it
        /// into the convolutions.
        #[arg(long)]
        no_fold_bn: bool,
        /// Skip the check in ONNX Runtime (no ONNX Runtime needed).
        #[arg(long)]
        no_verify: bool,
        /// Largest |ONNX Runtime - candle| the check accepts.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Images of the run's own data the check also runs (when readable here).
        #[arg(long, default_value_t = 16)]
        verify_images: usize,
    },
    /// Embed images with an exported encoder (ONNX Runtime) or a checkpoint (candle): writes a
    /// float32 .npy [n, d] in input order, plus <out>.ids.txt (file per row) for folders.
    Embed {
        /// An .onnx file from `simclr export`, or a run/checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// An image folder (searched recursively, sorted by path), an IDX image file (.gz or
        /// not), or a float32 .npy of preprocessed images [n, C, H, W].
        #[arg(long)]
        input: PathBuf,
        /// Output .npy.
        #[arg(long, default_value = "embeddings.npy")]
        out: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Threads for decoding and inference (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Which output: features (h) or projection (z; needs the head); for an ONNX model
        /// from elsewhere any output name (its only output by default).
        #[arg(long, default_value = "features")]
        output: String,
        /// Only the first N inputs.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Embedding throughput: ONNX Runtime on the exported encoder vs candle's forward pass.
    Embed {
        /// ResNet depth (18, 34, 50).
        #[arg(long, default_value_t = 18)]
        depth: usize,
        /// ResNet width.
        #[arg(long, default_value_t = 64)]
        width: usize,
        /// Input side.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Input channels.
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// Images per batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Timed batches per backend (after one warm-up).
        #[arg(long, default_value_t = 3)]
        batches: usize,
        /// ONNX Runtime threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Augmentation throughput (pairs/s) on three suites, with a per-transform breakdown.
    Augment {
        /// Print one JSON object keyed by suite.
        #[arg(long)]
        json: bool,
        /// A folder of JPEGs for suite (c) (default: generated photo-sized JPEGs).
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Seconds of measurement per suite.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Measure torchvision in the same run with this Python (needs torch and torchvision).
        #[arg(long, value_name = "PYTHON")]
        reference: Option<String>,
    },
    /// One training step (ResNet-18 CIFAR stem + MLP head + NT-Xent + LARS): forward,
    /// backward and optimizer time for widths x {32x32x3, 28x28x1}.
    Train {
        /// Print JSON (one object per configuration).
        #[arg(long)]
        json: bool,
        /// Encoder widths.
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        widths: Vec<usize>,
        /// Samples per batch (the batch holds twice as many views).
        #[arg(long, default_value_t = 128)]
        pairs: usize,
        /// Measured steps per configuration (after one warm-up step).
        #[arg(long, default_value_t = 2)]
        steps: usize,
        /// Also run the PyTorch reference (benches/reference/train_step_torch.py) with this
        /// Python interpreter and print the ratios.
        #[arg(long, value_name = "PYTHON")]
        reference: Option<String>,
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// fp32 (strict) or tf32 (TensorFloat-32 on CUDA tensor cores, for both sides).
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Also print each of our CPU kernels' time per step by pass and layer shape:
        /// convolutions (forward, input and weight gradients, with GFLOP/s), BatchNorm and
        /// the residual sum; and what is left in candle's operations.
        #[arg(long)]
        layers: bool,
    },
    /// Train the same model from the same weights on the same batches on the CPU and on
    /// --device, and print how far the device's loss, gradients and weights drift.
    Parity {
        /// Device to check against the CPU: cuda, cuda:N (or cpu, with --candle-ops, to
        /// compare our CPU kernels with candle's).
        #[arg(long, default_value = "cuda")]
        device: String,
        /// fp32 (strict) or tf32.
        #[arg(long, default_value = "fp32")]
        precision: String,
        /// Encoder width.
        #[arg(long, default_value_t = 16)]
        width: usize,
        /// Input channels: 3 (32x32 images) or 1 (28x28).
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// Samples per batch (twice as many views).
        #[arg(long, default_value_t = 64)]
        pairs: usize,
        /// Steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// LARS learning rate.
        #[arg(long, default_value_t = 0.3)]
        lr: f64,
        /// Use candle's operations on the device instead of ours.
        #[arg(long)]
        candle_ops: bool,
        /// Compare against candle's float64 CPU operations instead of a device (--device cpu):
        /// how far float32 is from exact. With --candle-ops, the float32 side is candle's too.
        #[arg(long)]
        f64_reference: bool,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Frozen encoder, standardised features of un-augmented images, multinomial logistic
    /// regression trained on the train split, top-1/top-5 on the test split.
    Linear {
        #[command(flatten)]
        common: EvalArgs,
        /// L2 strength (default: chosen on a held-out tenth of the train split).
        #[arg(long)]
        l2: Option<f64>,
        /// Full-batch optimisation steps of the probe.
        #[arg(long, default_value_t = 500)]
        iterations: usize,
    },
    /// Weighted k-nearest neighbours on cosine similarity, bank = train split.
    Knn {
        #[command(flatten)]
        common: EvalArgs,
        /// Neighbours that vote.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// Temperature of the vote weights.
        #[arg(long, default_value_t = 0.1)]
        temperature: f64,
        /// Evaluate every checkpoint of the run (PATH: a run or checkpoints folder) and draw
        /// the curve: knn-checkpoints.jsonl and knn.png in the run folder.
        #[arg(long)]
        every_checkpoint: bool,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A run folder (its latest checkpoint), a checkpoints folder or one checkpoint folder.
    path: PathBuf,
    /// Features: the trained encoder, the same encoder at its initialisation (baseline), or
    /// the preprocessed pixels (baseline).
    #[arg(long, value_enum, default_value = "trained")]
    features: eval_cmd::Features,
    /// `--init random` is `--features random` (`--init trained`: the default).
    #[arg(long, value_name = "trained|random", conflicts_with_all = ["features", "raw_pixels"])]
    init: Option<InitArg>,
    /// Same as `--features raw-pixels`.
    #[arg(long, conflicts_with = "features")]
    raw_pixels: bool,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Device for the encoder: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// For `image_folder` sources: a folder of held-out images, one sub-folder per class.
    #[arg(long, value_name = "DIR")]
    test_path: Option<String>,
    /// Result file (default: eval-<protocol>-<features>.json in the checkpoint folder).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InitArg {
    Trained,
    Random,
}

impl EvalArgs {
    fn common(&self) -> eval_cmd::Common<'_> {
        let features = match (self.init, self.raw_pixels) {
            (_, true) => eval_cmd::Features::RawPixels,
            (Some(InitArg::Random), _) => eval_cmd::Features::Random,
            (Some(InitArg::Trained), _) => eval_cmd::Features::Trained,
            (None, false) => self.features,
        };
        eval_cmd::Common {
            path: &self.path,
            features,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            device: &self.device,
            batch_size: self.batch_size,
            test_path: self.test_path.clone(),
            out: self.out.clone(),
        }
    }
}

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

/// Exit codes.
const EXIT_FAILED: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    let registry = simclr::registry::user();
    let result = match cli.command {
        Command::Validate { files, set } => {
            parse_overrides(&set).and_then(|overrides| validate(&files, &registry, &overrides))
        }
        Command::Stages { kind, example } => stages(&registry, kind.as_deref(), example),
        Command::Run {
            file,
            run_dir,
            max_steps,
            resume,
            set,
            measure,
        } => match parse_overrides(&set) {
            Ok(overrides) => run_command(
                &file, &registry, run_dir, max_steps, resume, overrides, &measure,
            ),
            Err(e) => Err(e),
        },
        Command::Profile { file, set, measure } => parse_overrides(&set).and_then(|overrides| {
            let options = LoadOptions {
                overrides,
                ..LoadOptions::default()
            };
            execute(&file, &registry, options, &measure, false)
        }),
        Command::Preview { file, out, n } => preview_command(&file, &registry, &out, n),
        Command::Eval { what } => match what {
            EvalCommand::Linear {
                common,
                l2,
                iterations,
            } => eval_cmd::linear(
                &common.common(),
                &simclr::eval::linear::ProbeSettings {
                    l2,
                    iterations: iterations.max(1),
                    ..Default::default()
                },
            ),
            EvalCommand::Knn {
                common,
                k,
                temperature,
                every_checkpoint,
            } => {
                let settings = simclr::eval::knn::KnnSettings { k, temperature };
                if every_checkpoint {
                    eval_cmd::knn_curve(&common.common(), settings)
                } else {
                    eval_cmd::knn(&common.common(), settings)
                }
            }
        }
        .map(printed),
        Command::Export {
            path,
            out,
            head,
            opset,
            no_fold_bn,
            no_verify,
            tolerance,
            verify_images,
        } => onnx_cmd::export_command(&onnx_cmd::ExportArgs {
            path: &path,
            out: &out,
            head,
            opset,
            fold: !no_fold_bn,
            verify: !no_verify,
            tolerance,
            verify_images,
        })
        .map(printed),
        Command::Embed {
            model,
            input,
            out,
            batch_size,
            threads,
            output,
            limit,
            quiet,
        } => {
            if threads > 0 {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build_global()
                    .ok();
            }
            onnx_cmd::embed_command(&onnx_cmd::EmbedArgs {
                model: &model,
                input: &input,
                out: &out,
                batch_size,
                threads,
                output: &output,
                limit,
                quiet,
            })
            .map(printed)
        }
        Command::Bench {
            what:
                BenchCommand::Embed {
                    depth,
                    width,
                    size,
                    channels,
                    batch,
                    batches,
                    threads,
                    json,
                },
        } => onnx_cmd::bench_embed(&onnx_cmd::BenchEmbedArgs {
            depth,
            width,
            size,
            channels,
            batch: batch.max(1),
            batches,
            threads,
            json,
        })
        .map(printed),
        Command::Bench {
            what:
                BenchCommand::Augment {
                    json,
                    images,
                    seconds,
                    threads,
                    reference,
                },
        } => bench::augment(
            json,
            images.as_deref(),
            seconds,
            threads.max(1),
            reference.as_deref(),
        )
        .map(printed),
        Command::Bench {
            what:
                BenchCommand::Train {
                    json,
                    widths,
                    pairs,
                    steps,
                    reference,
                    device,
                    precision,
                    layers,
                },
        } => bench_train::Target::new(&device, &precision)
            .and_then(|on| {
                bench_train::train(
                    json,
                    &widths,
                    pairs.max(1),
                    steps,
                    reference.as_deref(),
                    &on,
                    layers,
                )
            })
            .map(printed),
        Command::Bench {
            what:
                BenchCommand::Parity {
                    device,
                    precision,
                    width,
                    channels,
                    pairs,
                    steps,
                    lr,
                    candle_ops,
                    f64_reference,
                },
        } => bench_train::Target::new(&device, &precision)
            .and_then(|on| {
                if !matches!(channels, 1 | 3) || width == 0 || pairs == 0 {
                    anyhow::bail!("--channels is 1 or 3, --width and --pairs at least 1");
                }
                bench_train::parity(
                    width,
                    channels,
                    pairs,
                    steps,
                    lr,
                    candle_ops,
                    f64_reference,
                    &on,
                )
            })
            .map(printed),
    };
    match result {
        Ok(code) => code,
        // `simclr stages | head`: the reader left; that is not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn preview_command(file: &Path, registry: &Registry, out: &Path, n: usize) -> Result<ExitCode> {
    let graph = match simclr::config::load_file(file, registry, &LoadOptions::default()) {
        Ok(graph) => graph,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let (w, h) = preview::preview(&graph, out, n.max(1))?;
    println!(
        "wrote {} ({w}x{h} px): one row per sample, columns original, t, t'",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
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

fn validate(
    files: &[PathBuf],
    registry: &Registry,
    overrides: &[(String, String)],
) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    let options = LoadOptions {
        overrides: overrides.to_vec(),
        ..LoadOptions::default()
    };
    for file in files {
        match simclr::config::load_file(file, registry, &options) {
            Ok(graph) => writeln!(
                out,
                "ok: {} (pipeline `{}`: {} stages, {} edges{})",
                file.display(),
                graph.name,
                graph.nodes.len(),
                graph.edges.len(),
                if graph.credits.is_empty() {
                    String::new()
                } else {
                    format!(", {} credit", graph.credits.len())
                }
            )?,
            Err(diagnostics) => {
                failed = true;
                eprintln!("{diagnostics}\n");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

fn stages(registry: &Registry, kind: Option<&str>, example: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let Some(name) = kind else {
        for kind in registry.iter() {
            writeln!(out, "{:<12} {}", kind.name, kind.summary)?;
            writeln!(
                out,
                "{:<12} takes: {}   emits: {}   workers: {}",
                "",
                kind.input,
                kind.output,
                workers_text(kind)
            )?;
            for p in kind.param_docs() {
                let default = p
                    .default
                    .map_or_else(|| "required".to_owned(), |d| format!("default {d}"));
                writeln!(
                    out,
                    "{:<14}{}: {} ({default}) — {}",
                    "", p.name, p.ty, p.doc
                )?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "`simclr stages KIND` shows one kind with an example definition."
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(kind) = registry.get(name) else {
        let names: Vec<&str> = registry.iter().map(|k| k.name).collect();
        anyhow::bail!(
            "unknown stage kind `{name}`; the kinds are: {}",
            names.join(", ")
        );
    };
    if example {
        write!(out, "{}", kind.example)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{} — {}\n", kind.name, kind.summary)?;
    writeln!(
        out,
        "takes:   {}\nemits:   {}\nworkers: {}\n",
        kind.input,
        kind.output,
        workers_text(kind)
    )?;
    let docs = kind.param_docs();
    if docs.is_empty() {
        writeln!(out, "parameters: none")?;
    } else {
        writeln!(out, "parameters:")?;
        for p in docs {
            let default = p
                .default
                .map_or_else(|| "required".to_owned(), |d| format!("default {d}"));
            writeln!(out, "  {}: {} ({default})\n      {}", p.name, p.ty, p.doc)?;
        }
    }
    writeln!(
        out,
        "\nexample (`simclr stages {} --example > example.yaml`):\n",
        kind.name
    )?;
    for line in kind.example.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn workers_text(kind: &StageKind) -> &'static str {
    match kind.parallelism {
        simclr::core::Parallelism::Single => "1 only",
        simclr::core::Parallelism::Internal => "any (a thread pool inside the stage)",
        simclr::core::Parallelism::Parallel { ordered: true } => "any (output keeps input order)",
        simclr::core::Parallelism::Parallel { ordered: false } => "any (output order not kept)",
    }
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

/// `KEY.PATH=VALUE` pairs of `--set`.
fn parse_overrides(set: &[String]) -> Result<Vec<(String, String)>> {
    set.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(anyhow::anyhow!(
                "--set {s}: expected KEY.PATH=VALUE, e.g. --set stages.images.params.count=512"
            )),
        })
        .collect()
}

/// `simclr run`: resolve the checkpoint to resume from, then run.
fn run_command(
    file: &Path,
    registry: &Registry,
    run_dir: Option<PathBuf>,
    max_steps: Option<u64>,
    resume: Option<PathBuf>,
    overrides: Vec<(String, String)>,
    measure: &MeasureArgs,
) -> Result<ExitCode> {
    let mut options = LoadOptions {
        run_dir,
        max_steps,
        overrides,
        ..LoadOptions::default()
    };
    if let Some(from) = &resume {
        let checkpoint = match simclr::model::stage::checkpoint::find_checkpoint(from) {
            Ok(c) => c,
            Err(message) => {
                eprintln!("error: cannot resume: {message}");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        };
        if options.run_dir.is_none() && from.join("checkpoints").join("latest").is_file() {
            options.run_dir = Some(from.clone());
        }
        if let Ok(text) = std::fs::read_to_string(file) {
            let hash = simclr::model::stage::checkpoint::text_hash(&text);
            if hash != checkpoint.info.definition_hash {
                eprintln!(
                    "warning: {} differs from the definition the checkpoint was trained with ({}); the run continues with the new one",
                    file.display(),
                    checkpoint.dir.join("definition.yaml").display()
                );
            }
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
    execute(file, registry, options, measure, true)
}

fn execute(
    file: &Path,
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
    if is_run && !resuming && graph.run_dir.join("checkpoints").join("latest").is_file() {
        eprintln!(
            "warning: {} holds checkpoints of an earlier run; this run replaces them as it writes its own (--run-dir picks another folder, --resume continues that run)",
            graph.run_dir.display()
        );
    }
    if is_run {
        std::fs::create_dir_all(&graph.run_dir)
            .with_context(|| format!("cannot create the run folder {}", graph.run_dir.display()))?;
        let copy = graph.run_dir.join("definition.yaml");
        std::fs::write(&copy, &graph.source)
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
    let mut metrics_paths: Vec<PathBuf> = measure.metrics.iter().cloned().collect();
    if is_run {
        metrics_paths.push(graph.run_dir.join("metrics.json"));
    }
    for path in &metrics_paths {
        let json =
            serde_json::to_string_pretty(&run.report).context("cannot serialise the metrics")?;
        std::fs::write(path, json)
            .with_context(|| format!("cannot write the metrics to {}", path.display()))?;
        eprintln!("metrics written to {}", path.display());
    }
    if let (Some(path), Some(trace)) = (&measure.trace, &run.trace) {
        trace
            .write(path)
            .with_context(|| format!("cannot write the trace to {}", path.display()))?;
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
    if let Some(message) = failure {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}
