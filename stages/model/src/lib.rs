//! `simclr-stage-model`: the learning half of SimCLR, in candle.
//!
//! - Building blocks, each checked against independent computations: the NT-Xent loss
//!   ([`loss`]), optimizers candle-nn lacks (SGD with momentum and Nesterov, LARS, AdamW with
//!   exclusions and checkpointable state) ([`optim`]), learning-rate schedules and scaling
//!   rules ([`schedule`]), the networks ([`resnet`], [`small_cnn`], [`projector`]) and seeded
//!   initialisation ([`init`]).
//! - The encoder f as one trait and one list ([`encoder`]): a kind is a type implementing
//!   [`encoder::Encoder`] plus a line in [`encoder::ENCODERS`]; its layers in evaluation form
//!   ([`encoder::plan`]) are what the ONNX writer walks.
//! - The stage kinds built on them ([`stage`]): every encoder, `projector`, `nt_xent` (loss +
//!   optimizer) and `checkpoint`.
//!
//! \[0\] SimCLR, Chen et al. 2020, arXiv:2002.05709.
#![deny(missing_docs)]

pub mod encoder;
pub mod error;
pub mod init;
pub mod kernels;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod projector;
pub mod resnet;
pub mod run_dir;
pub mod schedule;
pub mod small_cnn;
pub mod stage;
pub mod trained;

pub use encoder::{ENCODERS, Encoders};
pub use error::ModelError;
pub use run_dir::RunDir;
pub use trained::{TrainedModel, Weights};

/// The model stage kinds other than the encoders, for the registry (which lists
/// [`ENCODERS`]' stage kinds first).
pub static KINDS: &[&simclr_core::StageKind] = &[
    &stage::head::PROJECTOR,
    &stage::train::NT_XENT,
    &stage::checkpoint::CHECKPOINT,
];
