//! `simclr-stage-source`: the stages that produce images, the first link of the pipeline.
//!
//! - [`idx`]: MNIST / Fashion-MNIST IDX files, gzipped or raw, with optional labels.
//! - [`cifar`]: CIFAR-10 / CIFAR-100 binary batches.
//! - [`image_folder`]: a folder tree of JPEG/PNG/WebP/BMP/GIF files (class = sub-folder),
//!   decoded in parallel workers.
//! - [`webdataset`]: WebDataset tar shards (`key.jpg` + `key.cls`), shard order and a shuffle
//!   buffer seeded per epoch; [`pack`] writes them from any source.
//! - [`synthetic`]: a built-in, deterministic, labelled RGB dataset of shapes and textures.
//!
//! All of them share [`common::SourceOptions`] (epochs, per-epoch shuffle from the seed,
//! `limit`, `on_error: skip | fail`) and the [`common::DatasetSource`] driver, which turns
//! a random-access [`common::Dataset`] into a stream of `images` messages whose order depends
//! only on the seed and the epoch. Every kind publishes its labelled splits
//! ([`common::LabelledData`]) at build time, for evaluation.
#![deny(missing_docs)]

pub mod cifar;
pub mod common;
pub mod idx;
pub mod image_folder;
pub mod pack;
pub mod synthetic;
pub mod webdataset;

/// The kinds of this crate, in the order `simclr stages` lists them.
pub const KINDS: &[&simclr_core::StageKind] = &[
    &synthetic::KIND,
    &idx::KIND,
    &cifar::KIND,
    &image_folder::KIND,
    &webdataset::KIND,
];
