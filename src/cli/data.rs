//! `simclr data pack SRC --out DIR`: a dataset written as WebDataset tar shards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use simclr::config::Registry;
use simclr::source::common::{Dataset, OnError, Split};
use simclr::source::pack::{Chroma, Format, PackOptions, Side, pack};

/// `simclr data …`.
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Write a dataset as WebDataset tar shards (key.jpg|png + key.cls + key.json) with an
    /// index.json, for the `webdataset` source: images resized to at most --max-side, in shards
    /// of about --shard-size; deterministic, parallel, atomic per shard, resumable.
    Pack(PackArgs),
}

impl DataCommand {
    /// Run the subcommand; its report.
    pub fn run(&self, registry: &Registry) -> Result<String> {
        match self {
            DataCommand::Pack(args) => args.run(registry),
        }
    }
}

/// Arguments of `simclr data pack`.
#[derive(clap::Args)]
pub struct PackArgs {
    /// What to pack: a folder of images (one sub-folder per class), or a definition whose
    /// source stage is read (idx, cifar, image_folder, synthetic, webdataset).
    src: PathBuf,
    /// The folder the shards and index.json go to.
    #[arg(long)]
    out: PathBuf,
    /// From a definition: the split to pack.
    #[arg(long, value_enum, default_value = "train")]
    split: SplitArg,
    /// With `--split test` from a folder-based source: the held-out folder or shards.
    #[arg(long, value_name = "PATH")]
    test_path: Option<String>,
    /// The bounded side's largest size in pixels (smaller images are kept as they are).
    #[arg(long, default_value_t = 256)]
    max_side: u32,
    /// Bound the shorter side instead of the longer one.
    #[arg(long)]
    shorter: bool,
    /// auto: PNG for images of at most 64×64 (after resizing), JPEG otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Chroma resolution of colour JPEGs: 420 (half, PIL's and libjpeg's default) or 444.
    #[arg(long, value_enum, default_value = "420")]
    chroma: ChromaArg,
    /// Shard size: bytes, or with a unit (512MB, 1GB, 64KB).
    #[arg(long, default_value = "512MB", value_parser = parse_size)]
    shard_size: u64,
    /// Shard names: PREFIX-000000.tar, … (default: the split's name).
    #[arg(long)]
    prefix: Option<String>,
    /// Pack only the first N items.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// `skip` leaves unreadable items out (listed); `fail` stops at the first.
    #[arg(long, value_enum, default_value = "fail")]
    on_error: OnErrorArg,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Auto,
    Jpg,
    Png,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ChromaArg {
    #[value(name = "420")]
    Half,
    #[value(name = "444")]
    Full,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnErrorArg {
    Fail,
    Skip,
}

/// `512MB`, `1GB`, `64KB`, `4096` (bytes; units of 1024).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (write 512MB, 1GB or a number of bytes)"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (B, KB, MB, GB)")),
    };
    value
        .checked_mul(scale)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?} is not a usable shard size"))
}

impl PackArgs {
    fn run(&self, registry: &Registry) -> Result<String> {
        let t0 = Instant::now();
        super::use_threads(self.threads);
        let split = match self.split {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        };
        let (data, source, classes) =
            open_source(&self.src, split, self.test_path.as_deref(), registry)?;
        let options = PackOptions {
            max_side: self.max_side,
            side: if self.shorter {
                Side::Shorter
            } else {
                Side::Longer
            },
            format: match self.format {
                FormatArg::Auto => Format::Auto,
                FormatArg::Jpg => Format::Jpg,
                FormatArg::Png => Format::Png,
            },
            quality: self.quality,
            chroma: match self.chroma {
                ChromaArg::Half => Chroma::Half,
                ChromaArg::Full => Chroma::Full,
            },
            shard_size: self.shard_size,
            prefix: self.prefix.clone().unwrap_or_else(|| {
                match split {
                    Split::Train => "train",
                    Split::Test => "test",
                }
                .to_owned()
            }),
            limit: self.limit,
            on_error: match self.on_error {
                OnErrorArg::Fail => OnError::Fail,
                OnErrorArg::Skip => OnError::Skip,
            },
        };
        let total = self.limit.map_or(data.len(), |l| l.min(data.len()));
        let bar = super::progress_bar(self.quiet, total, "items");
        let report = pack(
            data.as_ref(),
            &source,
            classes,
            &self.out,
            &options,
            &|done| {
                bar.set_position(done);
            },
        )
        .with_context(|| format!("packing {} into {}", self.src.display(), self.out.display()))?;
        bar.finish_and_clear();
        let Some(index) = report.index else {
            bail!("no index was written");
        };
        let bytes: u64 = index.shards.iter().map(|s| s.bytes).sum();
        let secs = t0.elapsed().as_secs_f64();
        let mut text = format!(
            "packed {} items of {} into {} shard(s) in {} ({:.1} MB; {:.0} items/s, {:.1} s){}",
            index.count,
            source,
            index.shards.len(),
            self.out.display(),
            bytes as f64 / 1e6,
            (index.count as f64) / secs.max(1e-9),
            secs,
            if report.reused > 0 {
                format!(
                    "; {} shard(s) kept from the interrupted pack",
                    report.reused
                )
            } else {
                String::new()
            }
        );
        if !report.skipped.is_empty() {
            text.push_str(&format!(
                "\nskipped {} unreadable item(s):",
                report.skipped.len()
            ));
            for e in report.skipped.iter().take(10) {
                text.push_str(&format!("\n  {e}"));
            }
        }
        text.push_str(&format!(
            "\nread it with: {{ kind: webdataset, params: {{ path: {} }} }}",
            self.out.display()
        ));
        Ok(text)
    }
}

/// The dataset `src` names, its description and its class names.
fn open_source(
    src: &Path,
    split: Split,
    test_path: Option<&str>,
    registry: &Registry,
) -> Result<(Arc<dyn Dataset>, String, Vec<String>)> {
    if src.is_dir() {
        let root = match (split, test_path) {
            (Split::Train, _) => src.to_owned(),
            (Split::Test, Some(p)) => PathBuf::from(p),
            (Split::Test, None) => {
                bail!("a folder has no test split: pack the held-out folder itself")
            }
        };
        let (files, classes, _) = simclr::source::image_folder::scan_cached(&root, true, None)
            .with_context(|| root.display().to_string())?;
        if files.is_empty() {
            bail!("no images under {}", root.display());
        }
        let data = simclr::source::image_folder::ImageFolder::new(files, 3);
        return Ok((
            Arc::new(data),
            format!("image_folder ({})", root.display()),
            classes,
        ));
    }
    let text = std::fs::read_to_string(src).with_context(|| {
        format!(
            "{}: not a folder of images, and not a readable definition",
            src.display()
        )
    })?;
    let mut run = simclr::eval::data::RunData::from_definition_file(src, &text, registry)
        .with_context(|| src.display().to_string())?;
    run.test_path = test_path.map(str::to_owned);
    let data = run.open(split).with_context(|| src.display().to_string())?;
    Ok((data, run.source().trim().to_owned(), Vec::new()))
}
