//! `simclr-stage-model`: the learning half of SimCLR, in candle.
//!
//! - Building blocks, each checked against independent computations: the NT-Xent loss
//!   ([`loss`]), optimizers candle-nn lacks (SGD with momentum and Nesterov, LARS, AdamW with
//!   exclusions and checkpointable state) ([`optim`]), learning-rate schedules and scaling
//!   rules ([`schedule`]), the networks ([`resnet`], [`small_cnn`], [`projector`]) and seeded
//!   initialisation ([`init`]).
//! - The stage kinds built on them ([`stage`]): `resnet`, `small_cnn`, `projector`,
//!   `nt_xent` (loss + optimizer) and `checkpoint`.
//!
//! \[0\] SimCLR, Chen et al. 2020, arXiv:2002.05709.
#![deny(missing_docs)]

pub mod init;
pub mod kernels;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod projector;
pub mod resnet;
pub mod schedule;
pub mod small_cnn;
pub mod stage;

/// The model stage kinds, for the registry.
pub static KINDS: &[&simclr_core::StageKind] = &[
    &stage::encoder::RESNET,
    &stage::encoder::SMALL_CNN,
    &stage::head::PROJECTOR,
    &stage::train::NT_XENT,
    &stage::checkpoint::CHECKPOINT,
];
