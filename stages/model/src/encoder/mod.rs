//! The encoder f, as one trait and one list.
//!
//! > "Our framework allows various choices of the network architecture without any
//! > constraints." — \[0\] SimCLR, Chen et al. 2020, arXiv:2002.05709, §2.1.
//!
//! An encoder kind is a type that implements [`Encoder`]: its parameters (a serde config
//! struct whose doc comments `simclr stages` shows), how to check them, its input channels
//! and feature size, how to build the network from a `VarBuilder`, its forward pass
//! (`ModuleT::forward_t`, BatchNorm in training or evaluation mode) and its layers as a
//! [`plan::Plan`] that the ONNX writer walks. [`EncoderKind::of`] turns it into an entry of
//! [`ENCODERS`] — which also gives the YAML stage kind — and everything else (training,
//! checkpoints, resume, `eval`, `export`, `embed`, `simclr stages`) reaches the encoder
//! through that entry. Adding an encoder is one file and one line in [`ENCODERS`]; a program
//! outside this workspace adds its own to an [`Encoders`] list and to its stage registry
//! (`examples/custom_encoder.rs`).
//!
//! A checkpoint records the kind's name and its parameters (`spec`); [`Encoders::architecture`]
//! reads them back into an [`Architecture`], which builds the network.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::{DType, Device, ModuleT};
use candle_nn::{VarBuilder, VarMap};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use simclr_core::{InputPorts, OutputPort, Parallelism, PortType, StageKind};

use crate::error::ModelError;

pub mod plan;

pub use plan::Plan;

/// A definition parameter an encoder refuses: which one, why, and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The parameter's key under `params:`.
    pub field: &'static str,
    /// What is wrong, naming the value found.
    pub message: String,
    /// What would be accepted.
    pub help: String,
}

/// An encoder f: images `[B, C, H, W]` → representations h `[B, d]`.
///
/// `forward_t(x, true)` runs BatchNorm (if any) with batch statistics and updates its running
/// statistics; `forward_t(x, false)` is the evaluation form that [`Encoder::plan`] describes.
/// Variables should carry the names a PyTorch user expects (`vb.pp("layer1")`): checkpoints
/// and ONNX initializers keep them.
pub trait Encoder: ModuleT + Send + Sized + 'static {
    /// The YAML `kind:` (snake_case), also recorded in checkpoints.
    const KIND: &'static str;
    /// One line for `simclr stages`.
    const SUMMARY: &'static str;
    /// A complete training definition that uses the kind (see [`crate::encoder_example!`]); a test
    /// validates and runs every one.
    const EXAMPLE: &'static str;

    /// The parameters (`params:` of the stage), with a doc comment on every field.
    type Config: Clone + fmt::Debug + Serialize + DeserializeOwned + JsonSchema + Send + Sync;

    /// Check the parameters before anything is built.
    ///
    /// # Errors
    /// The first parameter out of range, named.
    fn check(config: &Self::Config) -> Result<(), Invalid>;

    /// Channels of the input views.
    fn in_channels(config: &Self::Config) -> usize;

    /// Size of h.
    fn feature_dim(config: &Self::Config) -> usize;

    /// A short description for reports and exports (`ResNet-18 (width 16, CIFAR stem)`).
    fn describe(config: &Self::Config) -> String;

    /// Build the network with its variables from `vb`.
    ///
    /// # Errors
    /// A variable of another shape already in `vb`, or a configuration candle refuses.
    fn build(config: &Self::Config, vb: VarBuilder<'_>) -> candle_core::Result<Self>;

    /// The network's layers in evaluation form, from the input to h.
    fn plan(&self) -> Plan;
}

/// A built encoder network, of any kind.
pub trait EncoderNet: ModuleT + Send {
    /// The network's layers in evaluation form (see [`Encoder::plan`]).
    fn plan(&self) -> Plan;
}

impl<E: Encoder> EncoderNet for E {
    fn plan(&self) -> Plan {
        Encoder::plan(self)
    }
}

/// An encoder kind with its parameters: what a checkpoint records, and what builds the
/// network. Cheap to clone.
#[derive(Clone)]
pub struct Architecture(Arc<dyn Configured>);

/// [`Architecture`]'s erased half: one implementation, for every [`Encoder`].
trait Configured: Send + Sync {
    fn kind(&self) -> &'static str;
    fn spec(&self) -> serde_json::Value;
    fn in_channels(&self) -> usize;
    fn feature_dim(&self) -> usize;
    fn describe(&self) -> String;
    fn build(&self, vb: VarBuilder<'_>) -> candle_core::Result<Box<dyn EncoderNet>>;
}

struct Typed<E: Encoder> {
    config: E::Config,
    net: PhantomData<fn() -> E>,
}

impl<E: Encoder> Configured for Typed<E> {
    fn kind(&self) -> &'static str {
        E::KIND
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null)
    }
    fn in_channels(&self) -> usize {
        E::in_channels(&self.config)
    }
    fn feature_dim(&self) -> usize {
        E::feature_dim(&self.config)
    }
    fn describe(&self) -> String {
        E::describe(&self.config)
    }
    fn build(&self, vb: VarBuilder<'_>) -> candle_core::Result<Box<dyn EncoderNet>> {
        Ok(Box::new(E::build(&self.config, vb)?))
    }
}

/// A built encoder: its network and variables.
pub struct BuiltEncoder {
    /// The network.
    pub net: Box<dyn EncoderNet>,
    /// Its variables.
    pub vars: VarMap,
}

impl Architecture {
    /// Encoder `E` with `config` (unchecked: see [`Encoder::check`]).
    pub fn new<E: Encoder>(config: E::Config) -> Self {
        Self(Arc::new(Typed::<E> {
            config,
            net: PhantomData,
        }))
    }

    /// The kind's name (`resnet`).
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    /// The parameters as JSON, as checkpoints record them.
    pub fn spec(&self) -> serde_json::Value {
        self.0.spec()
    }

    /// Channels of the input views.
    pub fn in_channels(&self) -> usize {
        self.0.in_channels()
    }

    /// Size of h.
    pub fn feature_dim(&self) -> usize {
        self.0.feature_dim()
    }

    /// A short description (`ResNet-18 (width 16, CIFAR stem)`).
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// Build the network with variables from `vb`.
    ///
    /// # Errors
    /// As [`Encoder::build`].
    pub fn build(&self, vb: VarBuilder<'_>) -> candle_core::Result<Box<dyn EncoderNet>> {
        self.0.build(vb)
    }

    /// Build the network on `device` with fresh variables initialised from `seed` for stage
    /// `stage`: the weights a pipeline's encoder stage of that id starts from
    /// ([`crate::init::seeded`]).
    ///
    /// # Errors
    /// As [`Encoder::build`].
    pub fn build_seeded(
        &self,
        device: &Device,
        seed: u64,
        stage: &str,
    ) -> candle_core::Result<BuiltEncoder> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let net = self.build(vb)?;
        crate::init::seeded(&vars, seed, stage)?;
        Ok(BuiltEncoder { net, vars })
    }
}

impl fmt::Debug for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.spec())
    }
}

/// An entry of the encoder list: the stage kind a definition names, and how a checkpoint's
/// spec of that kind becomes an [`Architecture`].
pub struct EncoderKind {
    /// The YAML stage kind (name, summary, ports, example, parameters, build).
    pub stage: StageKind,
    open: fn(&serde_json::Value) -> Result<Architecture, ModelError>,
}

impl fmt::Debug for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncoderKind")
            .field("name", &self.stage.name)
            .finish_non_exhaustive()
    }
}

impl EncoderKind {
    /// The entry of encoder `E`: `pub static KIND: EncoderKind = EncoderKind::of::<MyNet>();`.
    pub const fn of<E: Encoder>() -> Self {
        Self {
            stage: StageKind {
                name: E::KIND,
                summary: E::SUMMARY,
                input: InputPorts::Accepts(&[PortType::Batches]),
                output: OutputPort::Emits(PortType::Features),
                parallelism: Parallelism::Single,
                example: E::EXAMPLE,
                params: schema::<E>,
                build: crate::stage::encoder::build::<E>,
            },
            open: open::<E>,
        }
    }

    /// The kind's name.
    pub fn name(&self) -> &'static str {
        self.stage.name
    }

    /// The architecture a checkpoint's `spec` of this kind describes (checked as a
    /// definition's parameters are).
    ///
    /// # Errors
    /// A spec that does not parse, or parameters the kind refuses.
    pub fn architecture(&self, spec: &serde_json::Value) -> Result<Architecture, ModelError> {
        (self.open)(spec)
    }
}

fn schema<E: Encoder>() -> schemars::Schema {
    schemars::schema_for!(E::Config)
}

fn open<E: Encoder>(spec: &serde_json::Value) -> Result<Architecture, ModelError> {
    let config: E::Config =
        serde_json::from_value(spec.clone()).map_err(|source| ModelError::Spec {
            kind: E::KIND.into(),
            source,
        })?;
    E::check(&config).map_err(|p| ModelError::Invalid {
        kind: E::KIND.into(),
        message: p.message,
    })?;
    Ok(Architecture::new::<E>(config))
}

/// The built-in encoders, in the order `simclr stages` lists them.
pub static ENCODERS: &[&EncoderKind] = &[&crate::resnet::KIND, &crate::small_cnn::KIND];

/// An ordered list of encoder kinds: the built-in ones plus any a program adds.
#[derive(Clone, Debug)]
pub struct Encoders {
    kinds: Vec<&'static EncoderKind>,
}

impl Default for Encoders {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Encoders {
    /// The built-in encoders ([`ENCODERS`]).
    pub fn builtin() -> Self {
        Self {
            kinds: ENCODERS.to_vec(),
        }
    }

    /// Add an encoder kind.
    ///
    /// # Panics
    /// If a kind of that name is already in the list (a programming error).
    pub fn add(&mut self, kind: &'static EncoderKind) {
        assert!(
            self.get(kind.name()).is_none(),
            "encoder kind `{}` added twice",
            kind.name()
        );
        self.kinds.push(kind);
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<&'static EncoderKind> {
        self.kinds.iter().copied().find(|k| k.name() == name)
    }

    /// Every kind, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'static EncoderKind> + '_ {
        self.kinds.iter().copied()
    }

    /// The architecture recorded as `kind` with parameters `spec` (a checkpoint's encoder).
    ///
    /// # Errors
    /// A kind not in the list, or a spec it refuses.
    pub fn architecture(
        &self,
        kind: &str,
        spec: &serde_json::Value,
    ) -> Result<Architecture, ModelError> {
        match self.get(kind) {
            Some(k) => k.architecture(spec),
            None => Err(ModelError::UnknownEncoder {
                kind: kind.into(),
                known: self
                    .iter()
                    .map(EncoderKind::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// A complete training definition around one encoder kind, for [`Encoder::EXAMPLE`]:
/// `encoder_example!("my_net", "{ width: 4 }")` — synthetic 16 px images, views, batches of 16,
/// the encoder, an MLP head, NT-Xent with LARS and a checkpoint sink.
#[macro_export]
macro_rules! encoder_example {
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

/// `in_channels` must be 1 or 3 (gray or RGB views): the check the built-in encoders share.
///
/// # Errors
/// Any other count.
pub fn check_channels(channels: usize) -> Result<(), Invalid> {
    if channels != 1 && channels != 3 {
        return Err(Invalid {
            field: "in_channels",
            message: format!("`in_channels` must be 1 or 3, found {channels}"),
            help: "1 for gray images (Fashion-MNIST), 3 for RGB".into(),
        });
    }
    Ok(())
}
