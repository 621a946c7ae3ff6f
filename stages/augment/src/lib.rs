//! `simclr-stage-augment`: the augmentation half of the data pipeline.
//!
//! - [`transform`]: the [`Transform`] trait (draw parameters from an RNG, or apply explicit
//!   ones, so every augmentation can be logged, replayed and tested), [`Params`], policies,
//!   and [`Transforms`], the list of transform names a policy may use (a program adds its own
//!   and puts the list in its stage registry).
//! - [`ops`]: the built-ins, with torchvision's names, parameters and semantics.
//! - [`views`]: the `views` stage (t, t' per image on a rayon pool).
//! - [`batch`]: the `batch` stage (2N views, NCHW float32).
//!
//! Sits between the sources (`simclr-stage-source`) and the model stages.
#![deny(missing_docs)]

pub mod batch;
pub mod img;
pub mod ops;
pub mod resample;
pub mod simd;
pub mod transform;
pub mod views;

pub use img::{Img, Pixels, Shape};
pub use transform::{
    BUILTIN_TRANSFORMS, EvalStep, Params, Policy, Transform, TransformError, TransformKind,
    Transforms,
};

/// The kinds of this crate, in the order `simclr stages` lists them.
pub const KINDS: &[&simclr_core::StageKind] = &[&views::KIND, &batch::KIND];

#[cfg(test)]
mod tests;
