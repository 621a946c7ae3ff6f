//! In-process ranks on threads, for tests of the collectives and of the distributed model code
//! without MPI: rank `p` sends to rank `q` over its own channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

use crate::{Comm, CommError, Transport};

/// One rank of a [`local_world`].
#[derive(Debug)]
struct Local {
    rank: usize,
    /// `to[q]`: messages to rank q.
    to: Vec<Sender<Vec<u8>>>,
    /// `from[q]`: messages from rank q.
    from: Vec<Receiver<Vec<u8>>>,
}

/// `n` communicators over in-process channels, one per rank (hand each to its own thread),
/// timing out after `timeout`. They cannot be duplicated.
pub fn local_world(n: usize, timeout: Duration) -> Vec<Comm> {
    let mut senders: Vec<Vec<Option<Sender<Vec<u8>>>>> = (0..n).map(|_| vec![None; n]).collect();
    let mut receivers: Vec<Vec<Option<Receiver<Vec<u8>>>>> =
        (0..n).map(|_| vec![None; n]).collect();
    for (p, row) in senders.iter_mut().enumerate() {
        for (q, slot) in row.iter_mut().enumerate() {
            let (tx, rx) = unbounded();
            *slot = Some(tx);
            receivers[q][p] = Some(rx);
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(rank, (to, from))| {
            let comm = Comm::new(Arc::new(Local {
                rank,
                to: to.into_iter().flatten().collect(),
                from: from.into_iter().flatten().collect(),
            }));
            comm.set_timeout(timeout);
            comm
        })
        .collect()
}

impl Transport for Local {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.to.len()
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    fn exchange(
        &self,
        what: &str,
        sends: &[&[u8]],
        recvs: &mut [&mut [u8]],
        timeout: Duration,
    ) -> Result<(), CommError> {
        let failed = |message: String| CommError::Failed {
            rank: self.rank,
            what: what.to_owned(),
            message,
        };
        for (q, tx) in self.to.iter().enumerate() {
            if q != self.rank {
                tx.send(sends[q].to_vec())
                    .map_err(|_| failed(format!("rank {q} has left")))?;
            }
        }
        let deadline = Instant::now() + timeout;
        let mut waiting = Vec::new();
        for (q, rx) in self.from.iter().enumerate() {
            if q == self.rank {
                continue;
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(msg) if msg.len() == recvs[q].len() => recvs[q].copy_from_slice(&msg),
                Ok(msg) => {
                    return Err(failed(format!(
                        "rank {q} sent {} bytes, {} expected",
                        msg.len(),
                        recvs[q].len()
                    )));
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => waiting.push(q),
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(CommError::Timeout {
                rank: self.rank,
                what: what.to_owned(),
                waiting,
                seconds: timeout.as_secs_f64(),
            })
        }
    }

    fn duplicate(&self) -> Result<Arc<dyn Transport>, CommError> {
        Err(CommError::Failed {
            rank: self.rank,
            what: "duplicate".into(),
            message: "in-process ranks cannot be duplicated".into(),
        })
    }
}
