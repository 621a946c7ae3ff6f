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
    embed_layer(model, set, batch, false).map(|(values, _)| values)
}

/// The projections z = g(h) of every image of `set` (the head's output, what the loss saw;
/// the paper's Figure 8 compares them with h), `[n, d_z]` row-major, and d_z.
///
/// # Errors
/// A model without a head, and as [`embed`].
pub fn embed_projection(
    model: &TrainedModel,
    set: &LabelledSet,
    batch: usize,
) -> Result<(Vec<f32>, usize), EvalError> {
    if model.head.is_none() {
        return Err(EvalError::Invalid(
            "the checkpoint has no projection head (`head: none`): there is no z to evaluate; evaluate the features h".into(),
        ));
    }
    embed_layer(model, set, batch, true)
}

fn embed_layer(
    model: &TrainedModel,
    set: &LabelledSet,
    batch: usize,
    projection: bool,
) -> Result<(Vec<f32>, usize), EvalError> {
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
    let mut dim = arch.feature_dim();
    for chunk in set.pixels.chunks(per * batch.max(1)) {
        let n = chunk.len() / per;
        let x = Tensor::from_slice(chunk, (n, c, h, w), &model.device)
            .map_err(EvalError::candle("cannot copy the images to the device"))?;
        let (features, z) = model
            .forward_t(&x, projection)
            .map_err(|e| EvalError::Invalid(simclr_stage_model::error::chain(&e)))?;
        let t = if projection {
            z.unwrap_or(features)
        } else {
            features
        };
        dim = t.dims().last().copied().unwrap_or(dim);
        let f = t
            .to_dtype(DType::F32)
            .and_then(|f| f.flatten_all())
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(EvalError::candle("encoder forward"))?;
        out.extend_from_slice(&f);
    }
    let d = dim.max(1);
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
    Ok((out, dim))
}
