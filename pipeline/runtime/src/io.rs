//! Receiving from and sending to edges, with cancellation polling and timing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, SendTimeoutError, Sender};
use simclr_core::stage::Signals;
use simclr_core::{Message, StageError};

use crate::POLL;
use crate::worker::EdgeCounters;

/// What a worker's output channel to the collector carries (ordered parallel stages).
pub(crate) enum Envelope {
    /// One output message.
    Msg(Message),
    /// The worker finished one input (or one `next` call): move on to the next worker.
    Done,
}

/// Where a worker reads from.
pub(crate) enum Inputs {
    /// A source.
    None,
    /// The stage's input edges, shared with its other workers: `(input index, receiver)`.
    Edges(Vec<(usize, Receiver<Message>)>),
    /// A private channel from the dispatcher (ordered parallel stages).
    Private(Receiver<(usize, Message)>),
}

impl Inputs {
    /// The next message and the index of the input it came from; `Ok(None)` at end of stream.
    pub fn recv(&mut self, signals: &Signals) -> Result<Option<(usize, Message)>, StageError> {
        loop {
            if signals.is_cancelled() {
                return Err(StageError::Cancelled);
            }
            match self {
                Inputs::None => return Ok(None),
                Inputs::Private(rx) => match rx.recv_timeout(POLL) {
                    Ok(item) => return Ok(Some(item)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(None),
                },
                Inputs::Edges(live) => {
                    if live.is_empty() {
                        return Ok(None);
                    }
                    if live.len() == 1 {
                        match live[0].1.recv_timeout(POLL) {
                            Ok(msg) => return Ok(Some((live[0].0, msg))),
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => {
                                live.clear();
                            }
                        }
                        continue;
                    }
                    let mut select = Select::new();
                    for (_, rx) in live.iter() {
                        select.recv(rx);
                    }
                    let outcome = match select.select_timeout(POLL) {
                        Ok(op) => {
                            let i = op.index();
                            Some((i, op.recv(&live[i].1)))
                        }
                        Err(_) => None,
                    };
                    drop(select);
                    match outcome {
                        Some((i, Ok(msg))) => return Ok(Some((live[i].0, msg))),
                        Some((i, Err(_))) => {
                            live.remove(i);
                        }
                        None => {}
                    }
                }
            }
        }
    }
}

/// Outcome of a blocking send.
pub(crate) enum SendFail {
    Cancelled,
    Closed,
}

/// Send, waking every [`POLL`] to check for cancellation.
pub(crate) fn send_blocking<T>(
    tx: &Sender<T>,
    mut item: T,
    signals: &Signals,
) -> Result<(), SendFail> {
    loop {
        match tx.send_timeout(item, POLL) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(back)) => {
                if signals.is_cancelled() {
                    return Err(SendFail::Cancelled);
                }
                item = back;
            }
            Err(SendTimeoutError::Disconnected(_)) => return Err(SendFail::Closed),
        }
    }
}

/// A stage's output edges: every message goes to every consumer.
#[derive(Clone)]
pub(crate) struct FanOut {
    edges: Vec<Option<(Sender<Message>, Arc<EdgeCounters>)>>,
    signals: Signals,
}

impl FanOut {
    pub fn new(edges: Vec<(Sender<Message>, Arc<EdgeCounters>)>, signals: Signals) -> Self {
        Self {
            edges: edges.into_iter().map(Some).collect(),
            signals,
        }
    }

    /// Deliver to every live consumer (cloning for all but the last).
    pub fn send(&mut self, msg: Message) -> Result<(), StageError> {
        let last = self.edges.iter().rposition(Option::is_some);
        let Some(last) = last else {
            return Err(StageError::DownstreamClosed);
        };
        let mut msg = Some(msg);
        for i in 0..=last {
            let Some((tx, counters)) = &self.edges[i] else {
                continue;
            };
            let item = if i == last { msg.take() } else { msg.clone() };
            let Some(item) = item else { continue };
            match send_blocking(tx, item, &self.signals) {
                Ok(()) => {
                    counters.pushed.fetch_add(1, Ordering::Relaxed);
                }
                Err(SendFail::Cancelled) => return Err(StageError::Cancelled),
                Err(SendFail::Closed) => self.edges[i] = None,
            }
        }
        if self.edges.iter().all(Option::is_none) {
            return Err(StageError::DownstreamClosed);
        }
        Ok(())
    }
}

/// Where a worker's output goes.
pub(crate) enum Target {
    /// Straight to the output edges.
    Edges(FanOut),
    /// To the collector that restores input order.
    Collector(Sender<Envelope>),
}

impl Target {
    pub fn send(&mut self, msg: Message, signals: &Signals) -> Result<(), StageError> {
        match self {
            Target::Edges(fan) => fan.send(msg),
            Target::Collector(tx) => {
                send_blocking(tx, Envelope::Msg(msg), signals).map_err(|e| match e {
                    SendFail::Cancelled => StageError::Cancelled,
                    SendFail::Closed => StageError::DownstreamClosed,
                })
            }
        }
    }

    /// Mark the end of one unit of work (ordered parallel stages only).
    pub fn done(&mut self, signals: &Signals) -> Result<(), StageError> {
        match self {
            Target::Edges(_) => Ok(()),
            Target::Collector(tx) => {
                send_blocking(tx, Envelope::Done, signals).map_err(|e| match e {
                    SendFail::Cancelled => StageError::Cancelled,
                    SendFail::Closed => StageError::DownstreamClosed,
                })
            }
        }
    }
}
