//! `simclr bench embed`: ONNX Runtime against candle on the same seeded ResNet.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use simclr::model::TrainedModel as Model;
use simclr::onnx::export::{DEFAULT_OPSET, ExportOptions, InputShape, export_model, to_bytes};
use simclr::onnx::runtime::OnnxModel;
use simclr::onnx::verify::{compare, random_inputs};

/// Options of `simclr bench embed`.
pub struct BenchEmbedArgs {
    /// ResNet depth.
    pub depth: usize,
    /// ResNet width.
    pub width: usize,
    /// Input side.
    pub size: usize,
    /// Input channels.
    pub channels: usize,
    /// Images per batch.
    pub batch: usize,
    /// Timed batches per backend.
    pub batches: usize,
    /// ONNX Runtime intra-op threads (0: one per core).
    pub threads: usize,
    /// JSON output.
    pub json: bool,
}

/// `simclr bench embed`: forward throughput of ONNX Runtime (the exported, folded model) vs
/// candle (the model stages in evaluation mode) on the same seeded ResNet and inputs.
pub fn bench_embed(a: &BenchEmbedArgs) -> Result<String> {
    let spec = serde_json::json!({
        "depth": a.depth, "width": a.width, "stem": "cifar", "in_channels": a.channels
    });
    let arch = simclr::registry::encoders().architecture("resnet", &spec)?;
    let model = Model::seeded(arch, None, 0, &Device::Cpu)?;
    let proto = export_model(
        &model,
        false,
        InputShape {
            channels: a.channels,
            size: Some((a.size, a.size)),
        },
        &ExportOptions {
            opset: DEFAULT_OPSET,
            ..ExportOptions::default()
        },
    )?;
    let mut onnx = OnnxModel::from_bytes(&to_bytes(&proto), a.threads)?;
    let dims = [a.batch, a.channels, a.size, a.size];
    let x = random_inputs(dims.iter().product(), 7);
    let diff = compare(&mut onnx, &model, &x, &dims, "random")?
        .iter()
        .map(|c| c.max_abs)
        .fold(0.0, f64::max);
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        let t = Instant::now();
        for _ in 0..a.batches.max(1) {
            f()?;
        }
        Ok(t.elapsed().as_secs_f64() / a.batches.max(1) as f64)
    };
    let ort_s = time(&mut || {
        onnx.run(&x, &dims)?;
        Ok(())
    })?;
    let candle_s = time(&mut || {
        model.forward(&x, &dims, false)?;
        Ok(())
    })?;
    let per = |s: f64| a.batch as f64 / s;
    if a.json {
        return Ok(serde_json::json!({
            "model": format!("resnet{} width {} {}x{}x{}", a.depth, a.width, a.channels, a.size, a.size),
            "batch": a.batch,
            "batches": a.batches,
            "onnxruntime_ms_per_batch": ort_s * 1e3,
            "candle_ms_per_batch": candle_s * 1e3,
            "onnxruntime_images_per_s": per(ort_s),
            "candle_images_per_s": per(candle_s),
            "ratio_onnxruntime_over_candle": per(ort_s) / per(candle_s),
            "max_abs_difference": diff,
        })
        .to_string());
    }
    Ok(format!(
        "ResNet-{} width {}, {}x{}x{}, batch {}, {} timed batches each (after one warm-up)\n\
         | backend | ms/batch | images/s |\n|---|---|---|\n\
         | ONNX Runtime (exported, BatchNorm folded) | {:.1} | {:.0} |\n\
         | candle (model stages, evaluation mode) | {:.1} | {:.0} |\n\
         ONNX Runtime / candle throughput: {:.2}x; max |difference| {diff:.1e}",
        a.depth,
        a.width,
        a.channels,
        a.size,
        a.size,
        a.batch,
        a.batches.max(1),
        ort_s * 1e3,
        per(ort_s),
        candle_s * 1e3,
        per(candle_s),
        per(ort_s) / per(candle_s),
    ))
}
