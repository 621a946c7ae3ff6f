//! The MPI transport (crate `mpi`, Open MPI or MPICH): non-blocking point-to-point sends and
//! receives, polled until they complete or the timeout passes.
//!
//! MPI cannot take back a receive buffer it was given, so an exchange that times out cannot
//! return: it prints which ranks it waited for and calls `MPI_Abort`, which ends every rank of
//! the job (the launcher reports it). Checkpoints are written to a temporary folder and renamed,
//! so the last complete one survives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::{Comm, CommError, Transport};

/// The tag of every message: exchanges on one communicator never overlap, and MPI keeps the
/// order of messages between two ranks.
const TAG: i32 = 77;

/// The exit code of ranks stopped by a failed collective.
pub const ABORT_CODE: i32 = 1;

/// MPI initialised for this process; finalised when dropped (after every [`Comm`] is done).
pub struct Session {
    _universe: Universe,
}

/// One MPI communicator.
struct Mpi {
    comm: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi(rank {}/{})", self.rank, self.size)
    }
}

// SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE (checked in `init`), under which any
// thread may call MPI on any communicator; the mutex keeps one exchange at a time per
// communicator, as collectives require.
#[allow(unsafe_code)]
unsafe impl Send for Mpi {}
#[allow(unsafe_code)]
unsafe impl Sync for Mpi {}

/// Initialise MPI (thread level `MPI_THREAD_MULTIPLE`) and return the session guard and the
/// world communicator.
///
/// # Errors
/// MPI already initialised, or a library without multi-threading support.
pub fn init() -> Result<(Session, Comm), CommError> {
    let failed = |message: String| CommError::Failed {
        rank: 0,
        what: "MPI initialisation".into(),
        message,
    };
    let (universe, level) = mpi::initialize_with_threading(Threading::Multiple)
        .ok_or_else(|| failed("MPI was already initialised".into()))?;
    if level < Threading::Multiple {
        return Err(failed(format!(
            "the MPI library offers thread level {level:?}; simclr's stages call MPI from several threads and need MPI_THREAD_MULTIPLE (Open MPI and MPICH builds from Debian have it)"
        )));
    }
    let world = universe.world();
    let transport = wrap(world);
    Ok((
        Session {
            _universe: universe,
        },
        Comm::new(Arc::new(transport)),
    ))
}

fn wrap(comm: SimpleCommunicator) -> Mpi {
    let rank = usize::try_from(comm.rank()).unwrap_or(0);
    let size = usize::try_from(comm.size()).unwrap_or(1);
    Mpi {
        comm: Mutex::new(comm),
        rank,
        size,
    }
}

impl Transport for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn exchange(
        &self,
        what: &str,
        sends: &[&[u8]],
        recvs: &mut [&mut [u8]],
        timeout: Duration,
    ) -> Result<(), CommError> {
        let comm = self.comm.lock().map_err(|_| CommError::Failed {
            rank: self.rank,
            what: what.to_owned(),
            message: "the communicator's lock is poisoned".into(),
        })?;
        let me = self.rank;
        mpi::request::scope(|scope| {
            // (peer, is a receive, request)
            let mut pending = Vec::with_capacity(2 * self.size);
            for (q, buf) in recvs.iter_mut().enumerate() {
                if q != me {
                    let req = comm
                        .process_at_rank(q as i32)
                        .immediate_receive_into_with_tag(scope, &mut **buf, TAG);
                    pending.push((q, true, Some(req)));
                }
            }
            for (q, buf) in sends.iter().enumerate() {
                if q != me {
                    let req = comm
                        .process_at_rank(q as i32)
                        .immediate_send_with_tag(scope, *buf, TAG);
                    pending.push((q, false, Some(req)));
                }
            }
            let start = Instant::now();
            let mut polls = 0u32;
            loop {
                let mut open = 0;
                for (_, _, slot) in &mut pending {
                    if let Some(req) = slot.take() {
                        match req.test() {
                            Ok(_) => {}
                            Err(req) => {
                                *slot = Some(req);
                                open += 1;
                            }
                        }
                    }
                }
                if open == 0 {
                    return Ok(());
                }
                if start.elapsed() > timeout {
                    let mut waiting: Vec<usize> = pending
                        .iter()
                        .filter(|(_, recv, slot)| *recv && slot.is_some())
                        .map(|(q, _, _)| *q)
                        .collect();
                    if waiting.is_empty() {
                        waiting = pending
                            .iter()
                            .filter(|(_, _, slot)| slot.is_some())
                            .map(|(q, _, _)| *q)
                            .collect();
                    }
                    let err = CommError::Timeout {
                        rank: me,
                        what: what.to_owned(),
                        waiting,
                        seconds: timeout.as_secs_f64(),
                    };
                    eprintln!("error: {err}; stopping every rank");
                    comm.abort(ABORT_CODE);
                }
                // Spin briefly (a peer is usually microseconds away), then back off so a
                // waiting thread leaves the cores to the compute threads.
                polls += 1;
                if polls < 200 {
                    std::hint::spin_loop();
                } else if polls < 400 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(if polls < 2000 { 50 } else { 500 }));
                }
            }
        })
    }

    fn duplicate(&self) -> Result<Arc<dyn Transport>, CommError> {
        let comm = self.comm.lock().map_err(|_| CommError::Failed {
            rank: self.rank,
            what: "duplicate".into(),
            message: "the communicator's lock is poisoned".into(),
        })?;
        Ok(Arc::new(wrap(comm.duplicate())))
    }
}

/// Stop every rank of the job now (`MPI_Abort` on the world), after a failure on this rank
/// that the others cannot see.
pub fn abort_all(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}
