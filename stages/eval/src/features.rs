//! Frozen encoders and the features they give.

use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use simclr_stage_model::stage::checkpoint::{Checkpoint, find_checkpoint};
use simclr_stage_model::stage::encoder::{Architecture, build_encoder};

use crate::data::LabelledSet;

/// An encoder in evaluation mode: BatchNorm uses its running statistics and nothing is
/// updated; its variables are never handed to an optimizer.
pub struct FrozenEncoder {
    /// The network.
    pub net: Box<dyn ModuleT + Send>,
    /// Its variables (for checks that they stay untouched).
    pub vars: candle_nn::VarMap,
    /// The architecture.
    pub arch: Architecture,
    /// The stage id it was trained as.
    pub stage: String,
    /// The checkpoint it came from.
    pub checkpoint: Checkpoint,
    /// Where it runs.
    pub device: Device,
}

/// Which weights to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// The checkpoint's trained weights.
    Trained,
    /// The same architecture as initialised before the first step (same seed): the baseline
    /// a trained encoder must beat.
    Random,
}

/// Load the encoder of a checkpoint (or of a run folder's latest checkpoint).
///
/// # Errors
/// No checkpoint there, no encoder in it, or tensors that do not fit the architecture.
pub fn load_encoder(path: &Path, init: Init, device: &Device) -> Result<FrozenEncoder, String> {
    let checkpoint = find_checkpoint(path)?;
    let group = checkpoint.encoder()?.clone();
    let arch = Architecture::from_spec(&group.kind, &group.spec)?;
    let built = build_encoder(&arch, device, checkpoint.info.seed, &group.stage)
        .map_err(|e| format!("cannot build the encoder: {e}"))?;
    if init == Init::Trained {
        simclr_stage_model::stage::load_vars(
            &built.vars,
            &checkpoint.dir.join(&group.file),
            device,
        )?;
    }
    Ok(FrozenEncoder {
        net: built.net,
        vars: built.vars,
        arch,
        stage: group.stage,
        checkpoint,
        device: device.clone(),
    })
}

/// Build a frozen encoder from tensors already in memory (a training state's snapshot).
///
/// # Errors
/// A spec that does not parse, or missing/mis-shaped tensors.
pub fn encoder_from_tensors(
    kind: &str,
    spec: &serde_json::Value,
    tensors: &[(String, Tensor)],
    device: &Device,
) -> Result<(Box<dyn ModuleT + Send>, Architecture), String> {
    let arch = Architecture::from_spec(kind, spec)?;
    let built = build_encoder(&arch, device, 0, "eval").map_err(|e| e.to_string())?;
    let data = built
        .vars
        .data()
        .lock()
        .map_err(|_| "variable map poisoned".to_owned())?;
    for (name, var) in data.iter() {
        let t = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("the training state has no tensor `{name}`"))?;
        var.set(&t.to_device(device).map_err(|e| e.to_string())?)
            .map_err(|e| format!("`{name}`: {e}"))?;
    }
    drop(data);
    Ok((built.net, arch))
}

/// Features h of every image of `set`, `[n, d]` row-major, computed in batches of `batch`
/// in evaluation mode.
///
/// # Errors
/// Images the network does not take (channels), or a device failure.
pub fn embed(
    net: &dyn ModuleT,
    arch: &Architecture,
    set: &LabelledSet,
    device: &Device,
    batch: usize,
) -> Result<Vec<f32>, String> {
    let (c, h, w) = set.shape;
    if c != arch.in_channels() {
        return Err(format!(
            "the images have {c} channel(s), the encoder takes {}",
            arch.in_channels()
        ));
    }
    let per = c * h * w;
    let mut out = Vec::with_capacity(set.len() * arch.feature_dim());
    for chunk in set.pixels.chunks(per * batch.max(1)) {
        let n = chunk.len() / per;
        let x = Tensor::from_slice(chunk, (n, c, h, w), device).map_err(|e| e.to_string())?;
        let f = net
            .forward_t(&x, false)
            .and_then(|f| f.to_dtype(DType::F32))
            .and_then(|f| f.flatten_all())
            .and_then(|f| f.to_vec1::<f32>())
            .map_err(|e| format!("encoder forward: {e}"))?;
        out.extend_from_slice(&f);
    }
    Ok(out)
}
