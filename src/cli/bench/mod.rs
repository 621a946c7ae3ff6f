//! `simclr bench embed | augment | train | parity`: measurements that print ratios against a
//! baseline measured in the same run.

use std::path::PathBuf;

use anyhow::Result;

mod augment;
mod embed;
mod ranks;
mod train;

/// `simclr bench …`.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
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
    /// Augmentation throughput (pairs/s) on four suites, with a per-transform breakdown.
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
        /// Measure the reference and the suites this many times, alternated, and report the
        /// medians and the range of the ratios (a shared machine's speed drifts between runs).
        #[arg(long, default_value_t = 1)]
        repeats: usize,
    },
    /// One training step (ResNet-18 + MLP head + NT-Xent + LARS): forward, backward and
    /// optimizer time for widths x {32x32x3, 28x28x1}.
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
        /// The encoder's stem: cifar (3x3 stride 1) or imagenet (7x7 stride 2 + 3x3 stride-2
        /// max-pool, as definitions/fashion-mnist.yaml trains).
        #[arg(long, default_value = "cifar", value_parser = ["cifar", "imagenet"])]
        stem: String,
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
        /// Instead: data-parallel scaling. Train a ResNet-18 of the first width at the same
        /// global batch (--pairs) by one process with N threads and by N MPI ranks with one
        /// thread each (`mpirun`; needs the `mpi` build), and print images/s, the scaling
        /// efficiency and the ranks' time in collectives. Measures --steps steps (use ~30).
        #[arg(long, value_name = "N")]
        ranks: Option<usize>,
        /// With --ranks: alternate the two runs this many times and report the medians.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
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

impl BenchCommand {
    /// Run the benchmark; its report.
    pub fn run(&self) -> Result<String> {
        match self {
            BenchCommand::Embed {
                depth,
                width,
                size,
                channels,
                batch,
                batches,
                threads,
                json,
            } => embed::bench_embed(&embed::BenchEmbedArgs {
                depth: *depth,
                width: *width,
                size: *size,
                channels: *channels,
                batch: (*batch).max(1),
                batches: *batches,
                threads: *threads,
                json: *json,
            }),
            BenchCommand::Augment {
                json,
                images,
                seconds,
                threads,
                reference,
                repeats,
            } => augment::augment(
                *json,
                images.as_deref(),
                *seconds,
                (*threads).max(1),
                reference.as_deref(),
                *repeats,
            ),
            BenchCommand::Train {
                json,
                widths,
                pairs,
                steps,
                ranks: Some(n),
                repeats,
                stem,
                ..
            } => {
                if stem != "cifar" {
                    anyhow::bail!(
                        "--stem {stem}: the --ranks scaling bench trains the CIFAR stem only"
                    );
                }
                ranks::ranks(
                    *json,
                    widths.first().copied().unwrap_or(16),
                    (*pairs).max(1),
                    (*steps).max(1),
                    *n,
                    *repeats,
                )
            }
            BenchCommand::Train {
                json,
                widths,
                pairs,
                steps,
                reference,
                device,
                precision,
                layers,
                stem,
                ranks: None,
                ..
            } => {
                let on = train::Target::new(device, precision)?;
                train::train(
                    *json,
                    widths,
                    train::stem(stem),
                    (*pairs).max(1),
                    *steps,
                    reference.as_deref(),
                    &on,
                    *layers,
                )
            }
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
            } => {
                let on = train::Target::new(device, precision)?;
                if !matches!(channels, 1 | 3) || *width == 0 || *pairs == 0 {
                    anyhow::bail!("--channels is 1 or 3, --width and --pairs at least 1");
                }
                train::parity(
                    *width,
                    *channels,
                    *pairs,
                    *steps,
                    *lr,
                    *candle_ops,
                    *f64_reference,
                    &on,
                )
            }
        }
    }
}
