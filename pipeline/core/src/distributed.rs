//! The definition's `distributed:` settings: how a run launched on several ranks (processes)
//! trains as one. See docs/distributed.md.

use serde::{Deserialize, Serialize};

/// Which communication backend a run uses.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// MPI when a launcher (`mpirun`, `srun`) started several ranks, else one process.
    #[default]
    Auto,
    /// One process; refused when a launcher started several.
    None,
    /// MPI (the `mpi` cargo feature).
    Mpi,
    /// NCCL for CUDA tensors, bootstrapped over MPI (the `nccl` cargo feature).
    Nccl,
}

/// How BatchNorm computes its batch statistics across ranks.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormSync {
    /// Over the global batch (every rank's samples): the same statistics as one process
    /// with the whole batch (SimCLR's global BN).
    #[default]
    Global,
    /// Over each rank's own samples (per-device BN, "ghost" batches of B/W).
    Local,
}

/// `distributed:` of a definition.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Distributed {
    /// `auto`, `none`, `mpi` or `nccl`.
    #[serde(default)]
    pub backend: Backend,
    /// `global` (default) or `local`.
    #[serde(default)]
    pub batch_norm: BatchNormSync,
    /// Seconds a collective waits for a silent rank before it names it and stops the run.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Compare the ranks' weight checksums every this many steps (0: never).
    #[serde(default = "default_check_every")]
    pub check_every: u64,
    /// With `batch_norm: local`: split each rank's samples further into this many interleaved
    /// groups with statistics of their own ("ghost" batches). On one process, `local_groups: W`
    /// normalises exactly as `batch_norm: local` on W ranks.
    #[serde(default = "default_groups")]
    pub local_groups: usize,
}

fn default_groups() -> usize {
    1
}

fn default_timeout() -> f64 {
    300.0
}

fn default_check_every() -> u64 {
    100
}

impl Default for Distributed {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            batch_norm: BatchNormSync::Global,
            timeout_s: default_timeout(),
            check_every: default_check_every(),
            local_groups: default_groups(),
        }
    }
}
