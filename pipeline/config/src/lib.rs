//! `simclr-config`: from a YAML definition to a validated, typed stage [`Graph`].
//!
//! Validation is phased, and every phase collects all the errors it can find before anything
//! is reported (a definition that fails validation starts no thread):
//!
//! 1. [`yaml`] parses the text into a [`simclr_core::Value`] tree that keeps line:column for
//!    every node. It is the only module that knows which YAML crate is used.
//! 2. [`definition`] reads the definition's own fields and each stage entry from the tree,
//!    strictly (unknown keys, wrong types and missing fields are errors).
//! 3. [`graph`] resolves stage kinds and inputs, rejects duplicates, cycles and unconnected
//!    stages, infers and checks the port type of every edge, and builds every stage (which
//!    parses and checks its parameters).
//!
//! Errors are [`Diagnostic`]s: file, line:column, key path, message and a help line.

mod check;
pub mod definition;
pub mod diagnostic;
pub mod graph;
pub mod registry;
mod topology;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use graph::{Credit, Edge, Graph, Node, load_file, load_str, resolved_text, set_path};
pub use registry::Registry;
