//! Rank, world size and local rank from the launcher's environment.
//!
//! | launcher | rank | size | local rank |
//! |---|---|---|---|
//! | Open MPI `mpirun` | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` |
//! | MPICH / Intel MPI (Hydra, PMI) | `PMI_RANK` | `PMI_SIZE` | `MPI_LOCALRANKID` |
//! | PMIx (Open MPI 5, `prterun`) | `PMIX_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` |
//! | Slurm `srun` | `SLURM_PROCID` | `SLURM_STEP_NUM_TASKS` | `SLURM_LOCALID` |
//!
//! Slurm's `SLURM_NTASKS` is also set in a batch script outside `srun` (one process), so the
//! step's task count is read instead.

/// What a launcher says about this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank.
    pub rank: usize,
    /// The number of ranks.
    pub size: usize,
    /// Rank within this node.
    pub local_rank: usize,
    /// `mpirun`, `mpiexec` (PMI), `srun`.
    pub launcher: &'static str,
}

/// The launch this process is part of, from `var` (the environment: `std::env::var`).
pub fn detect_with(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let num = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    let found = |rank, size, local, launcher| {
        Some(Launch {
            rank: num(rank)?,
            size: num(size)?,
            local_rank: num(local).unwrap_or(0),
            launcher,
        })
    };
    found(
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "mpirun",
    )
    .or_else(|| {
        found(
            "PMIX_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "mpirun",
        )
    })
    .or_else(|| found("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "mpiexec"))
    .or_else(|| {
        found(
            "SLURM_PROCID",
            "SLURM_STEP_NUM_TASKS",
            "SLURM_LOCALID",
            "srun",
        )
    })
    .filter(|l| l.size >= 1 && l.rank < l.size)
}

/// The launch this process is part of, from its environment; `None` when no launcher started
/// it.
pub fn detect() -> Option<Launch> {
    detect_with(|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn each_launcher_is_read() {
        let ompi = env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        assert_eq!(
            detect_with(ompi),
            Some(Launch {
                rank: 1,
                size: 4,
                local_rank: 1,
                launcher: "mpirun"
            })
        );
        let pmi = env(&[("PMI_RANK", "2"), ("PMI_SIZE", "3")]);
        assert_eq!(
            detect_with(pmi).map(|l| (l.rank, l.size, l.launcher)),
            Some((2, 3, "mpiexec"))
        );
        let slurm = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ]);
        assert_eq!(
            detect_with(slurm).map(|l| (l.rank, l.size, l.local_rank)),
            Some((5, 8, 1))
        );
        // A batch script outside srun: SLURM_NTASKS but no step.
        let batch = env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")]);
        assert_eq!(detect_with(batch), None);
        assert_eq!(
            detect_with(env(&[("PMI_RANK", "3"), ("PMI_SIZE", "3")])),
            None
        );
    }
}
