//! The `projector` stage: the projection head g (none, linear or MLP) between the encoder's h
//! and the loss. Built when the first batch arrives, from the size of h.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT};
use candle_nn::{VarBuilder, VarMap};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError, PortType,
    Stage, StageContext, StageError, StageFactory, StageKind,
};

use super::{Forward, ParamGroup, Role, candle_err, load_group};
use crate::projector::{Projector, ProjectorKind};

/// Which head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeadChoice {
    /// z = h (no head).
    None,
    /// z = W·h.
    Linear,
    /// `layers` linear layers with ReLU between them (SimCLR's choice).
    #[default]
    Mlp,
}

/// Parameters of `projector`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadParams {
    /// `none`, `linear` or `mlp`: the paper's ablation (§4.2: mlp > linear by 3%, > none by
    /// more than 10%).
    #[serde(default)]
    pub head: HeadChoice,
    /// Linear layers of the mlp (2 in SimCLR v1, 3 in v2).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Hidden size of the mlp; unset: the size of h, as in SimCLR.
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Size of z (SimCLR: 128). Ignored by `none`.
    #[serde(default = "default_out")]
    pub out: usize,
    /// BatchNorm after each hidden layer of the mlp (SimCLR v2).
    #[serde(default)]
    pub batch_norm: bool,
}

fn default_layers() -> usize {
    2
}
fn default_out() -> usize {
    128
}

/// The widest layer a head may have (a 65536 × 65536 float32 matrix is 16 GiB).
pub const MAX_UNITS: usize = 1 << 16;

impl HeadParams {
    /// The head's parameters and input size from its checkpointed spec (its parameters plus
    /// `input`).
    ///
    /// # Errors
    /// A spec that does not parse.
    pub fn from_spec(spec: &serde_json::Value) -> Result<(Self, usize), crate::ModelError> {
        let mut spec = spec.clone();
        let input = spec
            .as_object_mut()
            .and_then(|m| m.remove("input"))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| crate::ModelError::Invalid {
                kind: "projector".into(),
                message: "the head's spec has no `input` size".into(),
            })? as usize;
        let params: Self =
            serde_json::from_value(spec).map_err(|source| crate::ModelError::Spec {
                kind: "projector".into(),
                source,
            })?;
        Ok((params, input))
    }

    /// The head for representations of size `input`.
    pub fn kind(&self, input: usize) -> ProjectorKind {
        match self.head {
            HeadChoice::None => ProjectorKind::None,
            HeadChoice::Linear => ProjectorKind::Linear { out: self.out },
            HeadChoice::Mlp => ProjectorKind::Mlp {
                layers: self.layers,
                hidden: self.hidden.unwrap_or(input),
                out: self.out,
                batch_norm: self.batch_norm,
            },
        }
    }
}

/// `projector`.
pub static PROJECTOR: StageKind = StageKind {
    name: "projector",
    summary: "projection head g: none | linear | mlp (layers, hidden, out, batch_norm); emits z = g(h)",
    input: InputPorts::Accepts(&[PortType::Features]),
    output: OutputPort::Emits(PortType::Projections),
    parallelism: Parallelism::Single,
    example: crate::encoder_example!("small_cnn", "{ width: 4 }"),
    params: || schemars::schema_for!(HeadParams),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let params: HeadParams = cx.parse()?;
    let ranks = cx
        .extension::<simclr_dist::World>()
        .map_or(1, simclr_dist::World::size);
    if params.batch_norm
        && ranks > 1
        && cx.distributed.batch_norm == simclr_core::distributed::BatchNormSync::Global
    {
        return Err(cx.invalid(
            "batch_norm",
            format!(
                "the head's BatchNorm is not synchronised across ranks, and this run has {ranks}"
            ),
            "set `batch_norm: false` on the head, or `distributed: { batch_norm: local }`",
        ));
    }
    if params.head == HeadChoice::Mlp && params.layers < 2 {
        return Err(cx.invalid(
            "layers",
            format!(
                "an mlp head needs at least 2 layers, found {}",
                params.layers
            ),
            "use `head: linear` for a single layer",
        ));
    }
    if let Some((field, n)) = [("out", params.out), ("hidden", params.hidden.unwrap_or(0))]
        .into_iter()
        .find(|&(_, n)| n > MAX_UNITS)
    {
        // The weight matrix would be allocated before anything else could fail.
        return Err(cx.invalid(
            field,
            format!("`{field}` is {n}, more than the largest supported layer, {MAX_UNITS} units"),
            "SimCLR uses hidden: 2048 (the encoder's width), out: 128",
        ));
    }
    if params.out == 0 || params.hidden == Some(0) {
        let field = if params.out == 0 { "out" } else { "hidden" };
        return Err(cx.invalid(
            field,
            format!("`{field}` must be at least 1"),
            "SimCLR uses out: 128",
        ));
    }
    let stage = cx.stage_id.to_owned();
    let seed = cx.seed;
    let resume = cx.resume.map(|r| r.checkpoint.clone());
    Ok(StageFactory::stage(move |_| Head {
        stage: stage.clone(),
        params: params.clone(),
        seed,
        resume: resume.clone(),
        model: None,
    }))
}

/// Build a head for inputs of size `input` on `device`, initialised from `seed` for stage
/// `stage`; also returns its architecture spec (the parameters plus `input`).
///
/// # Errors
/// An invalid configuration.
pub fn build_head(
    params: &HeadParams,
    input: usize,
    device: &Device,
    seed: u64,
    stage: &str,
) -> candle_core::Result<(Projector, VarMap, serde_json::Value)> {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
    let net = Projector::new(vb, input, params.kind(input))?;
    crate::init::seeded(&vars, seed, stage)?;
    let mut spec = super::spec_of(params);
    if let serde_json::Value::Object(map) = &mut spec {
        map.insert("input".into(), input.into());
    }
    Ok((net, vars, spec))
}

struct Head {
    stage: String,
    params: HeadParams,
    seed: u64,
    resume: Option<std::path::PathBuf>,
    model: Option<(Projector, Arc<ParamGroup>)>,
}

impl Stage for Head {
    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let Message::Features(act) = msg else {
            return Err(StageError::UnexpectedMessage {
                expected: "features",
                got: msg.port_type().name(),
            });
        };
        let Some(fwd) = act.payload::<Forward>() else {
            return Err(StageError::msg("features without a model payload"));
        };
        super::bind(fwd.tensor.device())?;
        let t0 = Instant::now();
        let (_, input) = fwd.tensor.dims2().map_err(candle_err("h"))?;
        if self.model.is_none() {
            let (net, vars, spec) = build_head(
                &self.params,
                input,
                fwd.tensor.device(),
                self.seed,
                &self.stage,
            )
            .map_err(candle_err("cannot build the projector"))?;
            if let Some(checkpoint) = &self.resume {
                load_group(&vars, checkpoint, &self.stage)?;
            }
            let group = Arc::new(ParamGroup {
                stage: self.stage.clone(),
                role: Role::Projector,
                kind: "projector".into(),
                spec,
                arch: None,
                vars,
                version: AtomicU64::new(0),
            });
            self.model = Some((net, group));
        }
        let Some((net, group)) = &self.model else {
            return Err(StageError::msg("projector not built"));
        };
        let z = net
            .forward_t(&fwd.tensor, true)
            .map_err(candle_err("projector forward"))?;
        let mut groups = fwd.groups.clone();
        groups.push((group.clone(), group.version()));
        let mut timings = fwd.timings.clone();
        timings.push((self.stage.clone(), t0.elapsed().as_secs_f64()));
        let next = Forward {
            tensor: z,
            groups,
            timings,
            views: fwd.views,
        };
        out.push(Message::Projections(next.into_activations(
            act.step,
            act.epoch,
            act.ids.clone(),
        )))
    }
}
