//! A trained encoder (and head) as candle runs it, in evaluation mode: what an export is
//! written from and verified against, and the candle backend of `embed`.

use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use simclr_stage_model::projector::{Projector, ProjectorKind};
use simclr_stage_model::stage::Role;
use simclr_stage_model::stage::checkpoint::{Checkpoint, find_checkpoint};
use simclr_stage_model::stage::encoder::{Architecture, build_encoder};
use simclr_stage_model::stage::head::{HeadParams, build_head};

use crate::export::{Tensors, tensors_of};

/// The projection head g of a model.
pub struct Head {
    /// Its configuration.
    pub kind: ProjectorKind,
    /// The network.
    pub net: Projector,
    /// Its variables.
    pub vars: VarMap,
    /// The stage id it was trained as.
    pub stage: String,
}

/// An encoder f, optionally with its head g.
pub struct Model {
    /// The architecture of f.
    pub arch: Architecture,
    /// The stage kind of f (`resnet`, `small_cnn`) and its parameters, as checkpointed.
    pub kind: String,
    /// The parameters of f.
    pub spec: serde_json::Value,
    /// The network f.
    pub encoder: Box<dyn ModuleT + Send>,
    /// Its variables.
    pub vars: VarMap,
    /// The head, when the checkpoint has one.
    pub head: Option<Head>,
    /// The checkpoint it came from.
    pub checkpoint: Option<Checkpoint>,
    /// Where it runs.
    pub device: Device,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("arch", &self.arch)
            .field("head", &self.head.as_ref().map(|h| h.kind))
            .finish_non_exhaustive()
    }
}

/// The head's configuration from its checkpointed spec (its parameters plus `input`).
///
/// # Errors
/// A spec that does not parse.
pub fn head_params(spec: &serde_json::Value) -> Result<(HeadParams, usize), String> {
    let mut spec = spec.clone();
    let input = spec
        .as_object_mut()
        .and_then(|m| m.remove("input"))
        .and_then(|v| v.as_u64())
        .ok_or("the head's spec has no `input` size")? as usize;
    let params: HeadParams = serde_json::from_value(spec).map_err(|e| format!("projector: {e}"))?;
    Ok((params, input))
}

impl Model {
    /// Load the encoder and head of a checkpoint (or of a run folder's latest checkpoint).
    ///
    /// # Errors
    /// No checkpoint there, no encoder in it, or tensors that do not fit the architecture.
    pub fn from_checkpoint(path: &Path, device: &Device) -> Result<Self, String> {
        let checkpoint = find_checkpoint(path)?;
        let enc = checkpoint.encoder()?.clone();
        let here = checkpoint.dir.display().to_string();
        let arch =
            Architecture::from_spec(&enc.kind, &enc.spec).map_err(|e| format!("{here}: {e}"))?;
        let built = build_encoder(&arch, device, checkpoint.info.seed, &enc.stage)
            .map_err(|e| format!("{here}: cannot build the encoder: {e}"))?;
        simclr_stage_model::stage::load_vars(&built.vars, &checkpoint.dir.join(&enc.file), device)?;
        let head = match checkpoint
            .info
            .groups
            .iter()
            .find(|g| g.role == Role::Projector)
        {
            Some(g) => {
                let (params, input) = head_params(&g.spec).map_err(|e| format!("{here}: {e}"))?;
                let (net, vars, _) =
                    build_head(&params, input, device, checkpoint.info.seed, &g.stage)
                        .map_err(|e| format!("{here}: cannot build the head: {e}"))?;
                simclr_stage_model::stage::load_vars(&vars, &checkpoint.dir.join(&g.file), device)?;
                Some(Head {
                    kind: params.kind(input),
                    net,
                    vars,
                    stage: g.stage.clone(),
                })
            }
            None => None,
        };
        Ok(Self {
            arch,
            kind: enc.kind,
            spec: enc.spec,
            encoder: built.net,
            vars: built.vars,
            head,
            checkpoint: Some(checkpoint),
            device: device.clone(),
        })
    }

    /// A model at its seeded initialisation (for tests and benchmarks): encoder kind `kind`
    /// with parameters `spec`, and a head with `head` when given.
    ///
    /// # Errors
    /// A spec that does not parse or an invalid configuration.
    pub fn seeded(
        kind: &str,
        spec: serde_json::Value,
        head: Option<&HeadParams>,
        seed: u64,
        device: &Device,
    ) -> Result<Self, String> {
        let arch = Architecture::from_spec(kind, &spec)?;
        let built = build_encoder(&arch, device, seed, "encoder").map_err(|e| e.to_string())?;
        let head = match head {
            Some(params) => {
                let input = arch.feature_dim();
                let (net, vars, _) =
                    build_head(params, input, device, seed, "head").map_err(|e| e.to_string())?;
                Some(Head {
                    kind: params.kind(input),
                    net,
                    vars,
                    stage: "head".into(),
                })
            }
            None => None,
        };
        Ok(Self {
            arch,
            kind: kind.to_owned(),
            spec,
            encoder: built.net,
            vars: built.vars,
            head,
            checkpoint: None,
            device: device.clone(),
        })
    }

    /// The encoder's tensors, and the head's.
    ///
    /// # Errors
    /// A variable that cannot be read.
    pub fn tensors(&self) -> Result<(Tensors, Option<Tensors>), String> {
        let head = match &self.head {
            Some(h) => Some(tensors_of(&h.vars)?),
            None => None,
        };
        Ok((tensors_of(&self.vars)?, head))
    }

    /// h (and z when the model has a head and `with_head`) of a batch `x` `[n, c, h, w]`, in
    /// evaluation mode.
    ///
    /// # Errors
    /// A shape the network does not take.
    pub fn forward(
        &self,
        x: &[f32],
        dims: &[usize],
        with_head: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), String> {
        let t = Tensor::from_slice(x, dims, &self.device).map_err(|e| e.to_string())?;
        let h = self
            .encoder
            .forward_t(&t, false)
            .map_err(|e| format!("encoder forward: {e}"))?;
        let flat = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| e.to_string())
        };
        let z = match (&self.head, with_head) {
            (Some(head), true) => Some(flat(
                &head
                    .net
                    .forward_t(&h, false)
                    .map_err(|e| format!("head forward: {e}"))?,
            )?),
            _ => None,
        };
        Ok((flat(&h)?, z))
    }
}
