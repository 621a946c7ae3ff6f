//! Collective communication for data-parallel runs: every rank (process) of a run holds a
//! [`Comm`], and the model stages use it to gather projections, sum gradients and share
//! BatchNorm statistics.
//!
//! A [`Transport`] moves bytes between ranks — `solo` (one process: nothing to move), MPI
//! (`mpi` feature: Open MPI or MPICH, launched by `mpirun` or `srun`), or in-process threads
//! for tests ([`local_world`]). The collectives are built on its one primitive, a timed
//! exchange of one buffer with every peer, so that:
//!
//! - **every rank ends with bit-identical sums**: [`Comm::all_reduce_sum`] is a reduce-scatter
//!   in which the owner of each chunk adds the ranks' contributions in rank order, followed by
//!   an all-gather of the summed chunks (2·(W−1)/W of the buffer sent per rank, as a ring
//!   all-reduce). MPI's own `MPI_Allreduce` may associate differently per rank.
//! - **a dead or hung rank is named**: an exchange that has not heard from a peer within the
//!   timeout reports which ranks it is waiting for.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::Pod;

pub mod launch;
mod local;
#[cfg(feature = "mpi")]
pub mod mpi_backend;

pub use launch::Launch;
pub use local::local_world;

/// A collective that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// Some peers sent nothing within the timeout.
    #[error(
        "rank {rank}: {what}: nothing from rank {} within {seconds:.0} s: the rank died or hangs",
        list(waiting)
    )]
    Timeout {
        /// This rank.
        rank: usize,
        /// The collective and its purpose (`gradient all-reduce, step 12`).
        what: String,
        /// The peers not heard from.
        waiting: Vec<usize>,
        /// The timeout.
        seconds: f64,
    },
    /// The transport failed, or the ranks disagree.
    #[error("rank {rank}: {what}: {message}")]
    Failed {
        /// This rank.
        rank: usize,
        /// The collective.
        what: String,
        /// What went wrong.
        message: String,
    },
}

fn list(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// Moves bytes between the ranks of one communicator. Calls on one transport are made in the
/// same order on every rank (a collective's contract); distinct transports
/// ([`Transport::duplicate`]) may be used from different threads at once.
pub trait Transport: Send + Sync + fmt::Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// The backend's name (`solo`, `mpi`, `local`).
    fn backend(&self) -> &'static str;
    /// Send `sends[p]` to every peer `p ≠ rank` and receive peer `p`'s buffer into `recvs[p]`
    /// (exactly its length; the entries at `rank` are ignored), within `timeout`.
    ///
    /// # Errors
    /// A peer silent past `timeout` ([`CommError::Timeout`], naming it), or a transport
    /// failure. A backend that cannot return with messages in flight (MPI) prints the error
    /// and aborts every rank instead.
    fn exchange(
        &self,
        what: &str,
        sends: &[&[u8]],
        recvs: &mut [&mut [u8]],
        timeout: Duration,
    ) -> Result<(), CommError>;
    /// A new transport over the same ranks whose messages never mix with this one's (a
    /// collective call: every rank makes it, in the same order).
    ///
    /// # Errors
    /// A backend that cannot duplicate.
    fn duplicate(&self) -> Result<Arc<dyn Transport>, CommError>;
}

/// One process, world size 1: nothing to exchange.
#[derive(Debug)]
struct Solo;

impl Transport for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "solo"
    }
    fn exchange(
        &self,
        _: &str,
        _: &[&[u8]],
        _: &mut [&mut [u8]],
        _: Duration,
    ) -> Result<(), CommError> {
        Ok(())
    }
    fn duplicate(&self) -> Result<Arc<dyn Transport>, CommError> {
        Ok(Arc::new(Solo))
    }
}

/// What a collective is for, as counted in [`CommStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Gathering projections (and other per-rank rows).
    Gather,
    /// Summing gradients.
    Reduce,
    /// BatchNorm statistics.
    BatchNorm,
    /// Agreement on the step, checksums, barriers.
    Control,
}

const PURPOSES: usize = 4;

impl Purpose {
    fn index(self) -> usize {
        match self {
            Purpose::Gather => 0,
            Purpose::Reduce => 1,
            Purpose::BatchNorm => 2,
            Purpose::Control => 3,
        }
    }

    /// `gather`, `reduce`, `batch_norm`, `control`.
    pub fn name(self) -> &'static str {
        ["gather", "reduce", "batch_norm", "control"][self.index()]
    }

    /// Every purpose, in [`Purpose::index`] order.
    pub const ALL: [Purpose; PURPOSES] = [
        Purpose::Gather,
        Purpose::Reduce,
        Purpose::BatchNorm,
        Purpose::Control,
    ];
}

/// Time and bytes a [`Comm`] spent, per [`Purpose`], since it was made; and, while
/// [`CommStats::record`] is on, every exchange as a span (for traces).
#[derive(Debug, Default)]
pub struct CommStats {
    nanos: [AtomicU64; PURPOSES],
    bytes: [AtomicU64; PURPOSES],
    calls: [AtomicU64; PURPOSES],
    spans: std::sync::Mutex<Option<Vec<Exchange>>>,
    dropped: AtomicU64,
}

/// One exchange with the other ranks, as recorded for a trace.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// What it was for (`gradient all-reduce`, without the step).
    pub what: String,
    /// Its kind.
    pub purpose: Purpose,
    /// When it started.
    pub start: Instant,
    /// How long it took (waiting for the other ranks included).
    pub took: Duration,
}

/// Exchanges recorded beyond this are counted, not kept.
const MAX_RECORDED: usize = 250_000;

/// A copy of [`CommStats`]' counters for one purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spent {
    /// Seconds inside the collectives (waiting for peers included).
    pub seconds: f64,
    /// Bytes sent.
    pub bytes: u64,
    /// Collective calls.
    pub calls: u64,
}

impl CommStats {
    /// The counters for `purpose`.
    pub fn spent(&self, purpose: Purpose) -> Spent {
        let i = purpose.index();
        Spent {
            seconds: self.nanos[i].load(Ordering::Relaxed) as f64 * 1e-9,
            bytes: self.bytes[i].load(Ordering::Relaxed),
            calls: self.calls[i].load(Ordering::Relaxed),
        }
    }

    /// Start (from empty) or stop recording exchanges.
    pub fn record(&self, on: bool) {
        if let Ok(mut s) = self.spans.lock() {
            *s = on.then(Vec::new);
        }
    }

    /// The exchanges recorded since [`CommStats::record`] and how many were over the cap.
    pub fn take_recorded(&self) -> (Vec<Exchange>, u64) {
        let spans = self
            .spans
            .lock()
            .ok()
            .and_then(|mut s| s.as_mut().map(std::mem::take))
            .unwrap_or_default();
        (spans, self.dropped.swap(0, Ordering::Relaxed))
    }

    fn add(&self, purpose: Purpose, what: &str, start: Instant, bytes: usize) {
        let took = start.elapsed();
        if let Ok(mut guard) = self.spans.lock()
            && let Some(spans) = guard.as_mut()
        {
            if spans.len() < MAX_RECORDED {
                spans.push(Exchange {
                    what: what.split(", step").next().unwrap_or(what).to_owned(),
                    purpose,
                    start,
                    took,
                });
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let i = purpose.index();
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[i].fetch_add(nanos, Ordering::Relaxed);
        self.bytes[i].fetch_add(bytes as u64, Ordering::Relaxed);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Default time a collective waits for a silent peer before it names it and stops the run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A communicator: the ranks of a run and the collectives among them. Cheap to clone (clones
/// share the transport, the statistics and the timeout).
#[derive(Clone)]
pub struct Comm {
    transport: Arc<dyn Transport>,
    stats: Arc<CommStats>,
    timeout_ms: Arc<AtomicU64>,
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Comm({} rank {}/{})",
            self.backend(),
            self.rank(),
            self.size()
        )
    }
}

/// Elements that [`Comm::all_reduce_sum`] adds.
pub trait Summable: Pod + std::ops::AddAssign {}
impl Summable for f32 {}
impl Summable for f64 {}
impl Summable for u64 {}

impl Comm {
    /// World size 1.
    pub fn solo() -> Self {
        Self::new(Arc::new(Solo))
    }

    /// A communicator over `transport`, timing out after [`DEFAULT_TIMEOUT`].
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            stats: Arc::default(),
            timeout_ms: Arc::new(AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64)),
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.transport.rank()
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.transport.size()
    }

    /// Whether this is the only rank (nothing is ever exchanged).
    pub fn is_solo(&self) -> bool {
        self.size() == 1
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.transport.backend()
    }

    /// How long a collective waits for a silent peer (shared by this communicator's clones).
    pub fn set_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The current timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Time and bytes spent so far.
    pub fn stats(&self) -> &CommStats {
        &self.stats
    }

    /// A communicator whose messages never mix with this one's, for use from another thread
    /// (a collective call), with its own statistics and this one's timeout.
    ///
    /// # Errors
    /// A backend that cannot duplicate.
    pub fn duplicate(&self) -> Result<Comm, CommError> {
        let dup = Self::new(self.transport.duplicate()?);
        dup.set_timeout(self.timeout());
        Ok(dup)
    }

    fn failed(&self, what: &str, message: String) -> CommError {
        CommError::Failed {
            rank: self.rank(),
            what: what.to_owned(),
            message,
        }
    }

    fn exchange(
        &self,
        purpose: Purpose,
        what: &str,
        sends: &[&[u8]],
        recvs: &mut [&mut [u8]],
    ) -> Result<(), CommError> {
        let t0 = Instant::now();
        let bytes: usize = sends
            .iter()
            .enumerate()
            .filter(|(p, _)| *p != self.rank())
            .map(|(_, s)| s.len())
            .sum();
        let result = self.transport.exchange(what, sends, recvs, self.timeout());
        self.stats.add(purpose, what, t0, bytes);
        result
    }

    /// Every rank's `local` bytes (lengths may differ), in rank order.
    ///
    /// # Errors
    /// See [`Transport::exchange`].
    pub fn all_gather(
        &self,
        purpose: Purpose,
        what: &str,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CommError> {
        let (w, r) = (self.size(), self.rank());
        if w == 1 {
            return Ok(vec![local.to_vec()]);
        }
        let lens = self.all_gather_equal(purpose, what, &[local.len() as u64])?;
        let mut out: Vec<Vec<u8>> = lens
            .iter()
            .map(|&n| vec![0u8; usize::try_from(n).unwrap_or(0)])
            .collect();
        out[r].copy_from_slice(local);
        let sends = vec![local; w];
        let mut recvs: Vec<&mut [u8]> = out.iter_mut().map(Vec::as_mut_slice).collect();
        self.exchange(purpose, what, &sends, &mut recvs)?;
        Ok(out)
    }

    /// Every rank's `local` (the same length on every rank), concatenated in rank order.
    ///
    /// # Errors
    /// See [`Transport::exchange`].
    pub fn all_gather_equal<T: Pod>(
        &self,
        purpose: Purpose,
        what: &str,
        local: &[T],
    ) -> Result<Vec<T>, CommError> {
        let (w, r, n) = (self.size(), self.rank(), local.len());
        let mut out = vec![T::zeroed(); w * n];
        out[r * n..(r + 1) * n].copy_from_slice(local);
        if w == 1 {
            return Ok(out);
        }
        let bytes: &[u8] = bytemuck::cast_slice(local);
        let sends = vec![bytes; w];
        let mut recvs: Vec<&mut [u8]> = out
            .chunks_mut(n.max(1))
            .map(|c| bytemuck::cast_slice_mut(c))
            .collect();
        recvs.resize_with(w, Default::default);
        self.exchange(purpose, what, &sends, &mut recvs)?;
        Ok(out)
    }

    /// Sum `buf` over the ranks in place; every rank ends with the same bits. The buffer must
    /// have the same length on every rank.
    ///
    /// Chunk `q` of the buffer (`q·len/W..(q+1)·len/W`) is summed by rank `q`, adding the ranks'
    /// chunks in rank order, then sent to every rank.
    ///
    /// # Errors
    /// See [`Transport::exchange`].
    pub fn all_reduce_sum<T: Summable>(
        &self,
        purpose: Purpose,
        what: &str,
        buf: &mut [T],
    ) -> Result<(), CommError> {
        let (w, r, n) = (self.size(), self.rank(), buf.len());
        if w == 1 {
            return Ok(());
        }
        let bounds: Vec<usize> = (0..=w).map(|q| q * n / w).collect();
        let own = bounds[r]..bounds[r + 1];
        // Reduce-scatter: chunk q of this rank's buffer to rank q; every rank's chunk r here.
        let mut parts: Vec<Vec<T>> = (0..w)
            .map(|q| {
                if q == r {
                    Vec::new()
                } else {
                    vec![T::zeroed(); own.len()]
                }
            })
            .collect();
        {
            let sends: Vec<&[u8]> = (0..w)
                .map(|q| bytemuck::cast_slice(&buf[bounds[q]..bounds[q + 1]]))
                .collect();
            let mut recvs: Vec<&mut [u8]> = parts
                .iter_mut()
                .map(|p| bytemuck::cast_slice_mut(p.as_mut_slice()))
                .collect();
            self.exchange(purpose, what, &sends, &mut recvs)?;
        }
        let mut sum: Vec<T> = if r == 0 {
            buf[own.clone()].to_vec()
        } else {
            std::mem::take(&mut parts[0])
        };
        for (q, part) in parts.iter().enumerate().skip(1) {
            let part: &[T] = if q == r { &buf[own.clone()] } else { part };
            for (s, &v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        buf[own].copy_from_slice(&sum);
        // All-gather the summed chunks.
        let mut chunks: Vec<&mut [T]> = Vec::with_capacity(w);
        let mut rest: &mut [T] = buf;
        for q in 0..w {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(bounds[q + 1] - bounds[q]);
            chunks.push(head);
            rest = tail;
        }
        let mine: Vec<u8> = bytemuck::cast_slice(&*chunks[r]).to_vec();
        let sends = vec![mine.as_slice(); w];
        let mut recvs: Vec<&mut [u8]> = chunks
            .into_iter()
            .map(|c| bytemuck::cast_slice_mut(c))
            .collect();
        self.exchange(purpose, what, &sends, &mut recvs)
    }

    /// Rank `root`'s `buf` on every rank.
    ///
    /// # Errors
    /// See [`Transport::exchange`].
    pub fn broadcast(&self, what: &str, root: usize, buf: &mut Vec<u8>) -> Result<(), CommError> {
        if self.is_solo() {
            return Ok(());
        }
        let mut all = self.all_gather(
            Purpose::Control,
            what,
            if self.rank() == root { buf } else { &[] },
        )?;
        if root >= all.len() {
            return Err(self.failed(what, format!("no rank {root}")));
        }
        *buf = std::mem::take(&mut all[root]);
        Ok(())
    }

    /// Wait until every rank has called it.
    ///
    /// # Errors
    /// See [`Transport::exchange`].
    pub fn barrier(&self, what: &str) -> Result<(), CommError> {
        self.all_gather_equal::<u8>(Purpose::Control, what, &[])
            .map(drop)
    }
}

/// The ranks a run spans, for its stages: the communicator of the training chain (projections,
/// gradients, BatchNorm) and a second one for the batch stage's agreement on each step (another
/// thread). A definition's stages find it among the registry's extensions; absent, the run is
/// world size 1.
#[derive(Clone, Debug)]
pub struct World {
    /// The training chain's communicator.
    pub comm: Comm,
    /// The batch stage's communicator.
    pub control: Comm,
    /// Rank within this node (selects the GPU).
    pub local_rank: usize,
    /// What started the ranks (`mpirun`, `srun`, `none`).
    pub launcher: &'static str,
}

impl World {
    /// One process.
    pub fn solo() -> Self {
        Self {
            comm: Comm::solo(),
            control: Comm::solo(),
            local_rank: 0,
            launcher: "none",
        }
    }

    /// The ranks of `comm` (the control communicator duplicated from it).
    ///
    /// # Errors
    /// A backend that cannot duplicate.
    pub fn new(comm: Comm, local_rank: usize, launcher: &'static str) -> Result<Self, CommError> {
        let control = comm.duplicate()?;
        Ok(Self {
            comm,
            control,
            local_rank,
            launcher,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Whether this rank writes the run's files (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// Set the timeout of both communicators.
    pub fn set_timeout(&self, timeout: Duration) {
        self.comm.set_timeout(timeout);
        self.control.set_timeout(timeout);
    }
}

impl Default for World {
    fn default() -> Self {
        Self::solo()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<R: Send + 'static>(
        n: usize,
        f: impl Fn(Comm) -> R + Send + Sync + 'static,
    ) -> Vec<R> {
        let f = Arc::new(f);
        let handles: Vec<_> = local_world(n, Duration::from_secs(10))
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    }

    #[test]
    fn all_reduce_is_the_rank_ordered_sum_on_every_rank() {
        for n in [1, 2, 3, 5] {
            for len in [0, 1, 3, 7, 1000] {
                let out = on_ranks(n, move |c| {
                    let r = c.rank();
                    let mut v: Vec<f32> = (0..len)
                        .map(|i| ((i * 31 + r * 7) % 13) as f32 * 0.1 + 1e-7 * r as f32)
                        .collect();
                    c.all_reduce_sum(Purpose::Reduce, "test", &mut v)
                        .expect("reduce");
                    v
                });
                let expect: Vec<f32> = (0..len)
                    .map(|i| {
                        let mut s = 0.0f32;
                        for r in 0..n {
                            s += ((i * 31 + r * 7) % 13) as f32 * 0.1 + 1e-7 * r as f32;
                        }
                        s
                    })
                    .collect();
                for (r, v) in out.iter().enumerate() {
                    let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                    let want: Vec<u32> = expect.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(bits, want, "world {n}, length {len}, rank {r}");
                }
            }
        }
    }

    #[test]
    fn gathers_keep_rank_order_and_lengths() {
        let out = on_ranks(3, |c| {
            let r = c.rank();
            let local = vec![r as u8; r + 1];
            let var = c
                .all_gather(Purpose::Gather, "test", &local)
                .expect("gather");
            let eq = c
                .all_gather_equal(Purpose::Gather, "test", &[r as u64 * 10, 1])
                .expect("gather");
            let mut b = if r == 2 { vec![9, 8, 7] } else { Vec::new() };
            c.broadcast("test", 2, &mut b).expect("broadcast");
            c.barrier("test").expect("barrier");
            (var, eq, b)
        });
        for (var, eq, b) in out {
            assert_eq!(var, vec![vec![0], vec![1, 1], vec![2, 2, 2]]);
            assert_eq!(eq, vec![0, 1, 10, 1, 20, 1]);
            assert_eq!(b, vec![9, 8, 7]);
        }
    }

    #[test]
    fn a_silent_rank_is_named_within_the_timeout() {
        let mut comms = local_world(3, Duration::from_millis(300));
        let silent = comms.pop().expect("rank 2");
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let err = c.barrier("step 4").expect_err("rank 2 never takes part");
                    (err.to_string(), t0.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (msg, took) = h.join().expect("rank thread");
            assert!(msg.contains("nothing from rank 2 within"), "{msg}");
            assert!(msg.contains("step 4"), "{msg}");
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
        drop(silent);
    }
}
