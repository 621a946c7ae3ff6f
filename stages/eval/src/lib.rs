//! `simclr-stage-eval`: how good is a representation?
//!
//! - [`knn`]: weighted k-nearest-neighbour classification on cosine similarity.
//! - [`linear`]: the linear probe, multinomial logistic regression on frozen, standardised
//!   features.
//! - [`data`]: the labelled images of a run's source, preprocessed without randomness.
//! - [`features`]: frozen encoders from checkpoints (or their random initialisation) and the
//!   features they give.
//! - [`monitor`]: the `knn_monitor` stage, kNN accuracy every N epochs of a training run.
#![deny(missing_docs)]

pub mod data;
pub mod error;
pub mod features;
pub mod knn;
pub mod linear;
pub mod monitor;

pub use error::EvalError;

/// The stage kinds of this crate.
pub static KINDS: &[&simclr_core::StageKind] = &[&monitor::KNN_MONITOR];
