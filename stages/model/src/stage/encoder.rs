//! The encoder stages: `resnet` (18/34/50, CIFAR or ImageNet stem) and `small_cnn`.
//!
//! Each takes batches of 2N views and emits h = f(x) `[2N, d]` with BatchNorm in training mode
//! (batch statistics; running statistics updated). Weights start from the definition's seed
//! (see [`crate::init`]) or, in a resumed run, from the checkpoint.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    Batch, BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError,
    PortType, Stage, StageContext, StageError, StageFactory, StageKind,
};

use super::{Forward, ParamGroup, Role, candle_err, check_device, device, load_group, spec_of};
use crate::resnet::{ResNet, ResNetConfig, Stem};
use crate::small_cnn::SmallCnn;

/// A complete training definition around one encoder kind (the kinds' examples).
macro_rules! const_format_example {
    ($kind:literal, $params:literal) => {
        concat!(
            "name: ",
            $kind,
            "-example\n",
            "stages:\n",
            "  images: { kind: synthetic, params: { count: 64, size: 16 } }\n",
            "  views: { kind: views, inputs: [images], params: { size: 16 } }\n",
            "  batches: { kind: batch, inputs: [views], params: { batch_size: 16 } }\n",
            "  encoder: { kind: ",
            $kind,
            ", inputs: [batches], credit: { from: train }, params: ",
            $params,
            " }\n",
            "  head: { kind: projector, inputs: [encoder], params: { head: mlp, hidden: 32, out: 16 } }\n",
            "  train: { kind: nt_xent, inputs: [head], params: { optimizer: lars, lr: 0.3 } }\n",
            "  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 2 } }\n",
        )
    };
}

pub(crate) use const_format_example;

/// The stem of a ResNet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StemChoice {
    /// 3×3 convolution, stride 1, no max-pool: for 28-64 px inputs (CIFAR, Fashion-MNIST).
    #[default]
    Cifar,
    /// 7×7 convolution, stride 2, then a 3×3 stride-2 max-pool: for 96 px and up (ImageNet).
    Imagenet,
}

/// Parameters of `resnet`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResNetParams {
    /// 18, 34 or 50 layers.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Channels of the first stage: 64 is torchvision's ResNet; 16-32 trains in minutes on a
    /// few CPU cores. h has 8·width features (32·width for ResNet-50).
    #[serde(default = "default_width")]
    pub width: usize,
    /// `cifar` (3×3, stride 1, no max-pool) or `imagenet` (7×7, stride 2, max-pool).
    #[serde(default)]
    pub stem: StemChoice,
    /// Channels of the input views: 1 (gray) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Start each residual block's last BatchNorm γ at 0, so every block starts as the
    /// identity (torchvision's `zero_init_residual`).
    #[serde(default)]
    pub zero_init_residual: bool,
}

fn default_depth() -> usize {
    18
}
fn default_width() -> usize {
    64
}
fn default_channels() -> usize {
    3
}

/// Parameters of `small_cnn`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmallCnnParams {
    /// Channels of the first layer (then 2·, 4·, 8·width); h has 8·width features.
    #[serde(default = "default_small_width")]
    pub width: usize,
    /// Channels of the input views: 1 or 3.
    #[serde(default = "default_channels")]
    pub in_channels: usize,
}

fn default_small_width() -> usize {
    16
}

/// Which network a stage runs.
#[derive(Clone, Debug)]
pub enum Architecture {
    /// A ResNet.
    ResNet(ResNetConfig),
    /// The four-layer CNN.
    SmallCnn {
        /// Input channels.
        in_channels: usize,
        /// Base width.
        width: usize,
    },
}

impl Architecture {
    /// Input channels the network expects.
    pub fn in_channels(&self) -> usize {
        match self {
            Architecture::ResNet(c) => c.in_channels,
            Architecture::SmallCnn { in_channels, .. } => *in_channels,
        }
    }

    /// Size of h.
    pub fn feature_dim(&self) -> usize {
        match self {
            Architecture::ResNet(c) => c.feature_dim(),
            Architecture::SmallCnn { width, .. } => 8 * width,
        }
    }

    /// Build the network with variables from `vb`.
    ///
    /// # Errors
    /// An invalid configuration or a variable of the wrong shape.
    pub fn build(&self, vb: VarBuilder<'_>) -> candle_core::Result<Box<dyn ModuleT + Send>> {
        Ok(match self {
            Architecture::ResNet(c) => Box::new(ResNet::new(vb, *c)?),
            Architecture::SmallCnn { in_channels, width } => {
                Box::new(SmallCnn::new(vb, *in_channels, *width)?)
            }
        })
    }

    /// Read the architecture back from a stage kind and its checkpointed `spec`.
    ///
    /// # Errors
    /// A kind that is not an encoder, or a spec that does not parse.
    pub fn from_spec(kind: &str, spec: &serde_json::Value) -> Result<Self, String> {
        match kind {
            "resnet" => {
                let p: ResNetParams =
                    serde_json::from_value(spec.clone()).map_err(|e| format!("resnet: {e}"))?;
                Ok(Architecture::ResNet(resnet_config(&p)))
            }
            "small_cnn" => {
                let p: SmallCnnParams =
                    serde_json::from_value(spec.clone()).map_err(|e| format!("small_cnn: {e}"))?;
                Ok(Architecture::SmallCnn {
                    in_channels: p.in_channels,
                    width: p.width,
                })
            }
            other => Err(format!("`{other}` is not an encoder kind")),
        }
    }
}

fn resnet_config(p: &ResNetParams) -> ResNetConfig {
    ResNetConfig {
        depth: p.depth,
        width: p.width,
        stem: match p.stem {
            StemChoice::Cifar => Stem::Cifar,
            StemChoice::Imagenet => Stem::ImageNet,
        },
        in_channels: p.in_channels,
        zero_init_residual: p.zero_init_residual,
    }
}

/// `resnet`.
pub static RESNET: StageKind = StageKind {
    name: "resnet",
    summary: "encoder f: ResNet-18/34/50 (CIFAR or ImageNet stem), BatchNorm in training mode; emits h = f(x)",
    input: InputPorts::Accepts(&[PortType::Batches]),
    output: OutputPort::Emits(PortType::Features),
    parallelism: Parallelism::Single,
    example: const_format_example!("resnet", "{ depth: 18, width: 4, in_channels: 3 }"),
    params: || schemars::schema_for!(ResNetParams),
    build: build_resnet,
};

/// `small_cnn`.
pub static SMALL_CNN: StageKind = StageKind {
    name: "small_cnn",
    summary: "encoder f: four conv-BN-ReLU layers and global pooling, for fast tests and tiny experiments",
    input: InputPorts::Accepts(&[PortType::Batches]),
    output: OutputPort::Emits(PortType::Features),
    parallelism: Parallelism::Single,
    example: const_format_example!("small_cnn", "{ width: 4, in_channels: 3 }"),
    params: || schemars::schema_for!(SmallCnnParams),
    build: build_small_cnn,
};

fn check_channels(cx: &BuildContext<'_>, channels: usize) -> Result<(), ParamError> {
    if channels != 1 && channels != 3 {
        return Err(cx.invalid(
            "in_channels",
            format!("`in_channels` must be 1 or 3, found {channels}"),
            "1 for gray images (Fashion-MNIST), 3 for RGB",
        ));
    }
    Ok(())
}

fn build_resnet(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let params: ResNetParams = cx.parse()?;
    if ![18, 34, 50].contains(&params.depth) {
        return Err(cx.invalid(
            "depth",
            format!("`depth` must be 18, 34 or 50, found {}", params.depth),
            "ResNet-18 is SimCLR's CIFAR encoder, ResNet-50 its ImageNet one",
        ));
    }
    if !(1..=512).contains(&params.width) {
        return Err(cx.invalid(
            "width",
            format!("`width` must be 1-512, found {}", params.width),
            "64 is torchvision's ResNet; 16 trains quickly on a CPU",
        ));
    }
    check_channels(cx, params.in_channels)?;
    check_device(cx)?;
    let arch = Architecture::ResNet(resnet_config(&params));
    Ok(factory(cx, "resnet", arch, spec_of(&params)))
}

fn build_small_cnn(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let params: SmallCnnParams = cx.parse()?;
    if !(1..=512).contains(&params.width) {
        return Err(cx.invalid(
            "width",
            format!("`width` must be 1-512, found {}", params.width),
            "8-32 is typical for this network",
        ));
    }
    check_channels(cx, params.in_channels)?;
    check_device(cx)?;
    let arch = Architecture::SmallCnn {
        in_channels: params.in_channels,
        width: params.width,
    };
    Ok(factory(cx, "small_cnn", arch, spec_of(&params)))
}

fn factory(
    cx: &BuildContext<'_>,
    kind: &'static str,
    arch: Architecture,
    spec: serde_json::Value,
) -> StageFactory {
    let stage = cx.stage_id.to_owned();
    let device = cx.device.to_owned();
    let seed = cx.seed;
    let resume = cx.resume.map(|r| r.checkpoint.clone());
    StageFactory::stage(move |_| Encoder {
        stage: stage.clone(),
        kind,
        arch: arch.clone(),
        spec: spec.clone(),
        device_spec: device.clone(),
        seed,
        resume: resume.clone(),
        model: None,
    })
}

/// A built encoder: its variables and network, seeded or loaded.
pub struct BuiltEncoder {
    /// The network.
    pub net: Box<dyn ModuleT + Send>,
    /// Its variables.
    pub vars: VarMap,
}

/// Build an encoder on `device`, initialised from `seed` for stage `stage` (the same weights
/// a pipeline's encoder stage of that id starts from).
///
/// # Errors
/// An invalid architecture.
pub fn build_encoder(
    arch: &Architecture,
    device: &Device,
    seed: u64,
    stage: &str,
) -> candle_core::Result<BuiltEncoder> {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
    let net = arch.build(vb)?;
    crate::init::seeded(&vars, seed, stage)?;
    Ok(BuiltEncoder { net, vars })
}

struct Encoder {
    stage: String,
    kind: &'static str,
    arch: Architecture,
    spec: serde_json::Value,
    device_spec: String,
    seed: u64,
    resume: Option<std::path::PathBuf>,
    model: Option<(Box<dyn ModuleT + Send>, Arc<ParamGroup>, Device)>,
}

impl Stage for Encoder {
    fn on_start(&mut self, _cx: &mut StageContext) -> Result<(), StageError> {
        let device = device(&self.device_spec).map_err(StageError::msg)?;
        super::bind(&device)?;
        let built = build_encoder(&self.arch, &device, self.seed, &self.stage)
            .map_err(candle_err("cannot build the encoder"))?;
        if let Some(checkpoint) = &self.resume {
            load_group(&built.vars, checkpoint, &self.stage)?;
        }
        let group = Arc::new(ParamGroup {
            stage: self.stage.clone(),
            role: Role::Encoder,
            kind: self.kind.to_owned(),
            spec: self.spec.clone(),
            vars: built.vars,
            version: AtomicU64::new(0),
        });
        self.model = Some((built.net, group, device));
        Ok(())
    }

    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let Message::Batch(batch) = msg else {
            return Err(StageError::UnexpectedMessage {
                expected: "batches",
                got: msg.port_type().name(),
            });
        };
        // After a stop request or the last step, queued batches are dropped, not computed.
        if cx.should_stop() {
            return Ok(());
        }
        let Some((net, group, device)) = &self.model else {
            return Err(StageError::msg("encoder not built (on_start did not run)"));
        };
        let Batch {
            step,
            epoch,
            ids,
            shape,
            data,
        } = batch;
        if shape[1] != self.arch.in_channels() {
            return Err(StageError::msg(format!(
                "batch {step} has {}-channel views but the encoder takes {} (set `in_channels: {}`)",
                shape[1],
                self.arch.in_channels(),
                shape[1]
            )));
        }
        super::bind(device)?;
        let t0 = Instant::now();
        let x = Tensor::from_slice(&data, (shape[0], shape[1], shape[2], shape[3]), device)
            .map_err(candle_err("input batch"))?;
        let version = group.version();
        let h = net
            .forward_t(&x, true)
            .map_err(candle_err("encoder forward"))?;
        let forward = Forward {
            tensor: h,
            groups: vec![(group.clone(), version)],
            timings: vec![(self.stage.clone(), t0.elapsed().as_secs_f64())],
            views: shape[0],
        };
        out.push(Message::Features(forward.into_activations(
            step,
            epoch,
            Arc::from(ids),
        )))
    }
}
