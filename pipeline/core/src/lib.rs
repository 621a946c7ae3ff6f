//! `simclr-core`: the contract between the pipeline runtime and every stage.
//!
//! It sits at the bottom of the dependency graph: stage crates (`stages/*`) depend on it and
//! on nothing else of the pipeline; the configuration loader (`simclr-config`) and the runtime
//! (`simclr-runtime`) depend on it to type-check and run graphs of stages.
//!
//! - [`message`]: what travels on an edge ([`Message`]) and its kind ([`PortType`]).
//! - [`stage`]: the [`Stage`] and [`Source`] traits, [`Outputs`] and [`StageContext`].
//! - [`kind`]: [`StageKind`], the registry entry that declares a kind's ports, parallelism,
//!   parameters and how to build it.
//! - [`value`]: a YAML-agnostic value tree that keeps line:column for every node, and a serde
//!   deserializer over it, so stage parameters are parsed with exact error locations.
//! - [`rng`]: the deterministic generator keyed by (seed, epoch, index, view).

pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod extensions;
pub mod kind;
pub mod message;
pub mod rng;
pub mod stage;
pub mod value;

pub use data::{BoxError, DataError, Dataset, ItemError, LabelledData, Preprocess, Sample, Split};
pub use device::{DeviceSpec, Precision};
pub use distributed::Distributed;
pub use error::StageError;
pub use extensions::Extensions;
pub use kind::{
    BuildContext, InputPorts, Instance, OutputPort, Parallelism, ParamError, ResumePoint,
    StageFactory, StageKind, StreamFacts,
};
pub use message::{
    Activations, Batch, Image, Message, PortType, Record, SampleId, ViewPair, filled_pixels,
};
pub use rng::Rng;
pub use stage::{Emitter, Outputs, Source, Stage, StageContext, TestOutputs};
pub use stage::{MAX_SKIP_RECORDS, Signals, SkippedItem, StageLog};
pub use value::{Loc, Value, ValueError, ValueKind};
