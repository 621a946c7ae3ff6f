//! A trained model: an encoder f (and its projection head g, when the checkpoint has one) with
//! its weights, in evaluation mode. The one way every command gets a model from a checkpoint:
//! `eval`, `export` and `embed` load through [`TrainedModel::from_checkpoint`], the kNN
//! monitor through [`TrainedModel::from_snapshot`], tests and benchmarks build one with
//! [`TrainedModel::seeded`].

use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;

use crate::encoder::{Architecture, EncoderNet, Encoders};
use crate::error::ModelError;
use crate::projector::{Projector, ProjectorKind};
use crate::stage::checkpoint::{Checkpoint, find_checkpoint};
use crate::stage::head::{HeadParams, build_head};
use crate::stage::{GroupSnapshot, Role, load_vars};

/// Which weights a model gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// The checkpoint's trained weights.
    Trained,
    /// The same architecture as initialised before the first step (same seed and stage id):
    /// the baseline a trained encoder must beat.
    Initial,
}

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
pub struct TrainedModel {
    /// The encoder's kind and parameters.
    pub arch: Architecture,
    /// The network f.
    pub encoder: Box<dyn EncoderNet>,
    /// Its variables.
    pub vars: VarMap,
    /// The stage id the encoder was trained as.
    pub stage: String,
    /// The head, when the checkpoint has one.
    pub head: Option<Head>,
    /// The checkpoint it came from.
    pub checkpoint: Option<Checkpoint>,
    /// Where it runs.
    pub device: Device,
}

impl std::fmt::Debug for TrainedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainedModel")
            .field("arch", &self.arch)
            .field("head", &self.head.as_ref().map(|h| h.kind))
            .finish_non_exhaustive()
    }
}

impl TrainedModel {
    /// Load the encoder and head of a checkpoint (or of a run folder's latest checkpoint);
    /// the encoder's kind is looked up in `encoders`.
    ///
    /// # Errors
    /// No checkpoint there, no encoder in it, a kind not in `encoders`, or tensors that do not
    /// fit the architecture; messages name the checkpoint.
    pub fn from_checkpoint(
        path: &Path,
        encoders: &Encoders,
        weights: Weights,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let checkpoint = find_checkpoint(path)?;
        let here = |e: ModelError| e.inside(&checkpoint.dir);
        let enc = checkpoint.encoder().map_err(|e| match e {
            // The message names the folder already.
            e @ ModelError::Checkpoint { .. } => e,
            e => here(e),
        })?;
        let arch = encoders.architecture(&enc.kind, &enc.spec).map_err(here)?;
        let seed = checkpoint.info.seed;
        let built = arch
            .build_seeded(device, seed, &enc.stage)
            .map_err(|e| here(ModelError::candle("cannot build the encoder")(e)))?;
        let trained = weights == Weights::Trained;
        if trained {
            load_vars(&built.vars, &checkpoint.group_file(enc), device).map_err(here)?;
        }
        let head = match checkpoint.group(Role::Projector) {
            Some(g) => {
                let (params, input) = HeadParams::from_spec(&g.spec).map_err(here)?;
                let head = Head::seeded(&params, input, device, seed, &g.stage)
                    .map_err(|e| here(ModelError::candle("cannot build the head")(e)))?;
                if trained {
                    load_vars(&head.vars, &checkpoint.group_file(g), device).map_err(here)?;
                }
                Some(head)
            }
            None => None,
        };
        Ok(Self {
            stage: enc.stage.clone(),
            arch,
            encoder: built.net,
            vars: built.vars,
            head,
            checkpoint: Some(checkpoint),
            device: device.clone(),
        })
    }

    /// A model at its seeded initialisation (for tests and benchmarks), with a head of
    /// `head` when given; stage ids `encoder` and `head`.
    ///
    /// # Errors
    /// A configuration candle refuses.
    pub fn seeded(
        arch: Architecture,
        head: Option<&HeadParams>,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let built = arch
            .build_seeded(device, seed, "encoder")
            .map_err(ModelError::candle("cannot build the encoder"))?;
        let head = match head {
            Some(params) => Some(
                Head::seeded(params, arch.feature_dim(), device, seed, "head")
                    .map_err(ModelError::candle("cannot build the head"))?,
            ),
            None => None,
        };
        Ok(Self {
            arch,
            encoder: built.net,
            vars: built.vars,
            stage: "encoder".into(),
            head,
            checkpoint: None,
            device: device.clone(),
        })
    }

    /// The encoder of a training state's snapshot (the kNN monitor's view of the model being
    /// trained), on `device`; no head.
    ///
    /// # Errors
    /// A snapshot without an encoder, or tensors that do not fit it.
    pub fn from_snapshot(groups: &[GroupSnapshot], device: &Device) -> Result<Self, ModelError> {
        let group = groups
            .iter()
            .find(|g| g.role == Role::Encoder)
            .ok_or_else(|| ModelError::Invalid {
                kind: "training state".into(),
                message: "it holds no encoder".into(),
            })?;
        let arch = group.arch.clone().ok_or_else(|| ModelError::Invalid {
            kind: group.kind.clone(),
            message: "the training state does not describe the encoder".into(),
        })?;
        let built = arch
            .build_seeded(device, 0, &group.stage)
            .map_err(ModelError::candle("cannot build the encoder"))?;
        let missing = |name: &str| ModelError::Invalid {
            kind: group.kind.clone(),
            message: format!("the training state has no tensor `{name}`"),
        };
        {
            let data = built.vars.data().lock().map_err(|_| ModelError::Invalid {
                kind: group.kind.clone(),
                message: "variable map poisoned".into(),
            })?;
            for (name, var) in data.iter() {
                let t = group
                    .tensors
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| missing(name))?;
                let t = t
                    .to_device(device)
                    .map_err(ModelError::candle(format!("`{name}`")))?;
                var.set(&t)
                    .map_err(ModelError::candle(format!("`{name}`")))?;
            }
        }
        Ok(Self {
            arch,
            encoder: built.net,
            vars: built.vars,
            stage: group.stage.clone(),
            head: None,
            checkpoint: None,
            device: device.clone(),
        })
    }

    /// h `[n, d]` (and z when the model has a head and `with_head`) of `x` in evaluation
    /// mode.
    ///
    /// # Errors
    /// A shape the network does not take.
    pub fn forward_t(
        &self,
        x: &Tensor,
        with_head: bool,
    ) -> Result<(Tensor, Option<Tensor>), ModelError> {
        let h = self
            .encoder
            .forward_t(x, false)
            .map_err(ModelError::candle("encoder forward"))?;
        let z = match (&self.head, with_head) {
            (Some(head), true) => Some(
                head.net
                    .forward_t(&h, false)
                    .map_err(ModelError::candle("head forward"))?,
            ),
            _ => None,
        };
        Ok((h, z))
    }

    /// h (and z when the model has a head and `with_head`) of a batch `x` `[n, c, h, w]` given
    /// as float32 values, in evaluation mode, as row-major values.
    ///
    /// # Errors
    /// A shape the network does not take.
    pub fn forward(
        &self,
        x: &[f32],
        dims: &[usize],
        with_head: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let t =
            Tensor::from_slice(x, dims, &self.device).map_err(ModelError::candle("input batch"))?;
        let (h, z) = self.forward_t(&t, with_head)?;
        let flat = |t: &Tensor| {
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(ModelError::candle("output"))
        };
        Ok((flat(&h)?, z.as_ref().map(flat).transpose()?))
    }
}

impl Head {
    /// A head for inputs of size `input` on `device`, initialised from `seed` for stage
    /// `stage` (the weights a pipeline's projector of that id starts from).
    ///
    /// # Errors
    /// A configuration candle refuses.
    pub fn seeded(
        params: &HeadParams,
        input: usize,
        device: &Device,
        seed: u64,
        stage: &str,
    ) -> candle_core::Result<Self> {
        let (net, vars, _) = build_head(params, input, device, seed, stage)?;
        Ok(Self {
            kind: params.kind(input),
            net,
            vars,
            stage: stage.to_owned(),
        })
    }
}
