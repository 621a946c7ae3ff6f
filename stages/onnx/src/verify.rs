//! An exported model checked against the candle model it came from, on the same inputs.

use crate::error::OnnxError;
use crate::runtime::OnnxModel;
use simclr_stage_model::TrainedModel as Model;

/// One output compared on one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// What the inputs were (`random`, `dataset`).
    pub inputs: String,
    /// Batch size.
    pub batch: usize,
    /// The output (`features`, `projection`).
    pub output: String,
    /// Largest |ONNX Runtime − candle|.
    pub max_abs: f64,
    /// Largest |candle| (the scale the difference is read against).
    pub max_ref: f64,
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} batch {:>3}  {:<10}  max |ort - candle| {:.2e}  (max |candle| {:.3})",
            self.inputs, self.batch, self.output, self.max_abs, self.max_ref
        )
    }
}

/// Standard normal values from `seed` (deterministic), for `n` values.
pub fn random_inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = simclr_core::Rng::from_key(&[seed]);
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// Run `x` (`dims` = `[n, c, h, w]`) through both and compare every output the ONNX model has.
///
/// # Errors
/// Either side failing to run, or an output missing on one side.
pub fn compare(
    onnx: &mut OnnxModel,
    model: &Model,
    x: &[f32],
    dims: &[usize],
    inputs: &str,
) -> Result<Vec<Comparison>, OnnxError> {
    let with_head = onnx
        .output_names()
        .iter()
        .any(|n| n == crate::export::PROJECTION);
    let (h, z) = model.forward(x, dims, with_head)?;
    let outputs = onnx.run(x, dims)?;
    let mut out = Vec::new();
    for o in outputs {
        let reference = match o.name.as_str() {
            crate::export::FEATURES => &h,
            crate::export::PROJECTION => z.as_ref().ok_or_else(|| {
                OnnxError::Message("the model has no head to compare the projection with".into())
            })?,
            other => return Err(OnnxError::Message(format!("unexpected output `{other}`"))),
        };
        if reference.len() != o.data.len() {
            return Err(OnnxError::Message(format!(
                "`{}`: ONNX Runtime gave {} values {:?}, candle {}",
                o.name,
                o.data.len(),
                o.dims,
                reference.len()
            )));
        }
        let max_abs = o
            .data
            .iter()
            .zip(reference)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(
                0.0,
                |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
            );
        let max_ref = reference
            .iter()
            .map(|v| f64::from(v.abs()))
            .fold(0.0, f64::max);
        out.push(Comparison {
            inputs: inputs.to_owned(),
            batch: dims[0],
            output: o.name,
            max_abs,
            max_ref,
        });
    }
    Ok(out)
}
