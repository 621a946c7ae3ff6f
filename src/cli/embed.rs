//! `simclr embed --model M --input I --out E.npy`: embeddings of images, in input order.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use simclr::config::Registry;
use simclr::onnx::embed::{Embedder, Inputs};
use simclr::onnx::export::{FEATURES, PROJECTION};

/// Arguments of `simclr embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
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
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
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
}

impl EmbedArgs {
    /// Embed, write the `.npy` (and `.ids.txt` for folders); the report.
    pub fn run(&self, registry: &Registry) -> Result<String> {
        let t0 = Instant::now();
        super::use_threads(self.threads);
        if !self.model.is_file() && self.output != FEATURES && self.output != PROJECTION {
            bail!(
                "--output is `{FEATURES}` or `{PROJECTION}`, not `{}`",
                self.output
            );
        }
        let encoders = simclr::registry::encoders();
        let mut embedder = Embedder::open_for(
            &self.model,
            registry,
            &encoders,
            self.threads,
            Some(&self.input),
        )?;
        let inputs = Inputs::open(&self.input, embedder.preprocessing().channels)?;
        let total = inputs.len().min(self.limit.unwrap_or(usize::MAX));
        let bar = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total as u64),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} images  {per_sec}  eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        };
        let out = embedder.embed(
            &inputs,
            &self.output,
            self.batch_size,
            self.limit,
            &mut |done| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        simclr::onnx::npy::write_f32(&self.out, &[out.total, out.dim], &out.rows)?;
        let mut text = format!(
            "{} embeddings ({}, {} values each) of {} with {} -> {}",
            out.total,
            self.output,
            out.dim,
            self.input.display(),
            embedder.backend_name(),
            self.out.display()
        );
        let ids_path = self.out.with_extension("ids.txt");
        if let Some(ids) = inputs.ids() {
            // One line per row; a newline or backslash inside a file name is escaped.
            let mut body = String::new();
            for id in &ids[..out.total] {
                body.push_str(&id.replace('\\', "\\\\").replace('\n', "\\n"));
                body.push('\n');
            }
            simclr::onnx::files::write_atomic(&ids_path, body.as_bytes())?;
            text.push_str(&format!(" (row ids: {})", ids_path.display()));
        } else if ids_path.is_file() {
            // A previous run's ids would describe other rows.
            std::fs::remove_file(&ids_path)
                .with_context(|| format!("cannot remove the stale {}", ids_path.display()))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        text.push_str(&format!(
            "\n{secs:.1} s, {:.0} images/s",
            out.total as f64 / secs.max(1e-9)
        ));
        Ok(text)
    }
}
