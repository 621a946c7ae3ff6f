//! The features a frozen encoder gives.
//!
//! Models come from [`simclr_stage_model::TrainedModel`] (checkpoints, training states): in
//! evaluation mode BatchNorm uses its running statistics and nothing is updated; the
//! variables are never handed to an optimizer.

use candle_core::{DType, Tensor};
use simclr_stage_model::TrainedModel;

use crate::EvalError;
use crate::data::LabelledSet;

/// Features h of every image of `set`, `[n, d]` row-major, computed in batches of `batch`
/// in evaluation mode on the model's device.
///
/// # Errors
/// Images the network does not take (channels), a device failure, or features that are not
/// finite (NaN weights).
pub fn embed(model: &TrainedModel, set: &LabelledSet, batch: usize) -> Result<Vec<f32>, EvalError> {
    let (c, h, w) = set.shape;
    let arch = &model.arch;
    if c != arch.in_channels() {
        return Err(EvalError::Invalid(format!(
            "the images have {c} channel(s), the encoder takes {}",
            arch.in_channels()
        )));
    }
    let per = c * h * w;
    let mut out = Vec::with_capacity(set.len() * arch.feature_dim());
    for chunk in set.pixels.chunks(per * batch.max(1)) {
        let n = chunk.len() / per;
        let x = Tensor::from_slice(chunk, (n, c, h, w), &model.device)
            .map_err(EvalError::candle("cannot copy the images to the device"))?;
        let f = model
            .encoder
            .forward_t(&x, false)
            .and_then(|f| f.to_dtype(DType::F32))
            .and_then(|f| f.flatten_all())
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(EvalError::candle("encoder forward"))?;
        out.extend_from_slice(&f);
    }
    let d = arch.feature_dim().max(1);
    let bad = out
        .chunks(d)
        .filter(|row| row.iter().any(|v| !v.is_finite()))
        .count();
    if bad > 0 {
        // Scores over such features are chance-level noise, not a measurement.
        return Err(EvalError::Invalid(format!(
            "the encoder gives non-finite features (NaN or infinity) for {bad} of {} images: its weights are damaged or its training diverged",
            set.len()
        )));
    }
    Ok(out)
}
