//! `simclr`: SimCLR contrastive representation learning as YAML-defined dataflow pipelines.
//!
//! This facade re-exports the framework crates and holds the stage registry; the `simclr`
//! binary (`src/main.rs`, one module per command under `src/cli/`) is the command-line
//! interface.
//!
//! - [`core`] (`simclr-core`): stage traits, message kinds, the stage-kind registry types.
//! - [`config`] (`simclr-config`): YAML definition → validated, typed stage graph.
//! - [`runtime`] (`simclr-runtime`): threads, bounded edges, credits, shutdown, metrics.
//! - [`registry`]: the explicit list of stage kinds a definition may use.

pub use simclr_config as config;
pub use simclr_core as core;
pub use simclr_runtime as runtime;
pub use simclr_stage_augment as augment;
pub use simclr_stage_eval as eval;
pub use simclr_stage_model as model;
pub use simclr_stage_onnx as onnx;
pub use simclr_stage_source as source;

pub mod registry {
    //! The explicit, ordered list of stage kinds. Add a kind here to make it usable from YAML.

    use simclr_config::Registry;

    /// Every user-facing stage kind, in the order `simclr stages` lists them.
    pub fn user() -> Registry {
        let encoders = simclr_stage_model::ENCODERS.iter().map(|e| &e.stage);
        let kinds = simclr_stage_source::KINDS
            .iter()
            .copied()
            .chain(simclr_stage_augment::KINDS.iter().copied())
            .chain(encoders)
            .chain(simclr_stage_model::KINDS.iter().copied())
            .chain(simclr_stage_eval::KINDS.iter().copied())
            .chain(simclr_stage_util::KINDS.iter().copied());
        Registry::new(kinds)
    }

    /// The encoder kinds the `simclr` commands read checkpoints of (the built-in ones).
    pub fn encoders() -> simclr_stage_model::Encoders {
        simclr_stage_model::Encoders::builtin()
    }

    /// Make `kind` usable by name in the policies of definitions loaded with `registry`.
    ///
    /// # Errors
    /// A name taken by a built-in transform or an earlier addition.
    pub fn add_transform(
        registry: &mut Registry,
        kind: simclr_stage_augment::TransformKind,
    ) -> Result<(), simclr_stage_augment::transform::DuplicateTransform> {
        registry
            .extensions_mut()
            .update(|transforms: &mut simclr_stage_augment::Transforms| transforms.add(kind))
    }

    /// The user-facing kinds plus the runtime's test-only kinds (slow, failing, panicking,
    /// stuck, jittery, collecting). Used by tests; never by the CLI.
    pub fn with_testing_kinds() -> Registry {
        let mut registry = user();
        for kind in simclr_stage_util::testing::KINDS {
            registry.add(kind);
        }
        registry
    }
}
