//! `simclr-stage-util`: utility stages that exercise and measure the pipeline runtime before
//! (and beside) the real data and model stages.
//!
//! - [`sequence`]: a source of numbered records, optionally with a payload and a rate limit.
//! - [`sink`]: drains and counts any stream, optionally checking the count.
//! - [`testing`]: deliberately slow, failing, panicking, stuck and jittery stages for the
//!   runtime's own tests. They are not in the user-facing registry.
#![deny(missing_docs)]

pub mod sequence;
pub mod sink;
pub mod testing;

/// The user-facing kinds of this crate, in the order `simclr stages` lists them.
pub const KINDS: &[&simclr_core::StageKind] = &[&sequence::KIND, &sink::KIND];
