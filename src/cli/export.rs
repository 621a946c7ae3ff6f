//! `simclr export RUN|CHECKPOINT --out F`: the encoder to ONNX, verified in ONNX Runtime.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use simclr::config::Registry;
use simclr::onnx::export::{DEFAULT_OPSET, FEATURES, INPUT, PROJECTION};
use simclr::onnx::exporter::{ExportSettings, VerifySettings, export_checkpoint};

/// Arguments of `simclr export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run folder (its latest checkpoint), a checkpoints folder or one checkpoint folder.
    path: PathBuf,
    /// Output file.
    #[arg(long, default_value = "encoder.onnx")]
    out: PathBuf,
    /// Include the projection head g (output `projection`).
    #[arg(long)]
    head: bool,
    /// ONNX opset (13 to 23).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
    /// Keep BatchNorm as BatchNormalization nodes (inference mode) instead of folding it
    /// into the convolutions.
    #[arg(long)]
    no_fold_bn: bool,
    /// Skip the check in ONNX Runtime (no ONNX Runtime needed).
    #[arg(long)]
    no_verify: bool,
    /// Largest |ONNX Runtime - candle| the check accepts.
    #[arg(long, default_value_t = 1e-4, value_parser = super::tolerance)]
    tolerance: f64,
    /// Images of the run's own data the check also runs (when readable here).
    #[arg(long, default_value_t = 16)]
    verify_images: usize,
}

impl ExportArgs {
    /// Export, verify, write the file atomically; the report.
    pub fn run(&self, registry: &Registry) -> Result<String> {
        let t0 = Instant::now();
        let settings = ExportSettings {
            head: self.head,
            opset: self.opset,
            fold_batch_norm: !self.no_fold_bn,
            verify: (!self.no_verify).then_some(VerifySettings {
                tolerance: self.tolerance,
                images: self.verify_images,
            }),
        };
        let encoders = simclr::registry::encoders();
        let e = export_checkpoint(&self.path, registry, &encoders, &settings)?;
        for note in &e.notes {
            eprintln!("note: {note}");
        }
        let pre = &e.preprocessing;
        let mut text = format!(
            "exported {} from {} (step {}) to {}: {} nodes, opset {}, {:.1} MB, BatchNorm {}\n  \
             input `{INPUT}` [batch, {}, {}] float32 NCHW; outputs `{FEATURES}` [batch, {}]{}\n",
            e.description,
            e.checkpoint.display(),
            e.step,
            self.out.display(),
            e.nodes,
            self.opset,
            e.bytes.len() as f64 / 1e6,
            if self.no_fold_bn {
                "kept (inference mode)"
            } else {
                "folded"
            },
            pre.channels,
            pre.size
                .map_or_else(|| "height, width".to_owned(), |(h, w)| format!("{h}, {w}")),
            e.feature_dim,
            e.projection_size
                .map_or_else(String::new, |p| format!(", `{PROJECTION}` [batch, {p}]")),
        );
        match (&e.comparisons, e.worst()) {
            (Some(rows), Some(worst)) => {
                let table: Vec<String> = rows.iter().map(|c| format!("  {c}")).collect();
                text.push_str(&format!(
                    "  verified in ONNX Runtime against candle: max |difference| {worst:.2e} <= {:.0e}\n{}\n",
                    self.tolerance,
                    table.join("\n")
                ));
            }
            _ => text.push_str("  not verified (--no-verify)\n"),
        }
        simclr::onnx::files::write_atomic(&self.out, &e.bytes)?;
        text.push_str(&format!("  {:.1} s", t0.elapsed().as_secs_f64()));
        Ok(text)
    }
}
