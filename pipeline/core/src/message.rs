//! What travels on an edge.
//!
//! Every edge carries one [`PortType`]; the configuration layer checks, before any thread
//! starts, that the producer's output kind is one the consumer accepts. Payloads are behind
//! `Arc`, so fanning a message out to several consumers copies pointers, not pixels.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The kind of message an edge carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PortType {
    /// Opaque numbered records: the utility stages' currency, for exercising the runtime.
    Records,
    /// Decoded images, one sample each.
    Images,
    /// The two augmented views t(x), t'(x) of one sample.
    ViewPairs,
    /// Collated batches of 2N views as one contiguous float32 NCHW buffer.
    Batches,
    /// Representations h = f(x) of a batch, from an encoder (model tensors, see [`Activations`]).
    Features,
    /// Projections z = g(h) of a batch, from a projection head.
    Projections,
    /// The state after one optimizer step (weights, optimizer state, position), for
    /// checkpoint sinks and monitors.
    TrainStates,
}

impl PortType {
    /// Every port type, in declaration order.
    pub const ALL: &'static [PortType] = &[
        PortType::Records,
        PortType::Images,
        PortType::ViewPairs,
        PortType::Batches,
        PortType::Features,
        PortType::Projections,
        PortType::TrainStates,
    ];

    /// The snake_case name used in definitions, errors and `simclr stages`.
    pub fn name(self) -> &'static str {
        match self {
            PortType::Records => "records",
            PortType::Images => "images",
            PortType::ViewPairs => "view_pairs",
            PortType::Batches => "batches",
            PortType::Features => "features",
            PortType::Projections => "projections",
            PortType::TrainStates => "train_states",
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a sample comes from: its position in the (shuffled) stream of one epoch. Every random
/// draw made for a sample derives from the run's seed and this identity, never from thread
/// scheduling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SampleId {
    /// Epoch, from 0.
    pub epoch: u32,
    /// Index of the sample in the dataset (not its position after shuffling).
    pub index: u64,
}

/// A numbered record with an optional opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the producing source's stream, from 0.
    pub seq: u64,
    /// Payload bytes (shared, never copied on fan-out).
    pub payload: Arc<[u8]>,
}

/// A pixel buffer of `len` bytes filled by `fill`, allocated once as the shared buffer it is
/// stored in: pixels written into a `Vec` and then converted with `Arc::from` are copied once
/// more (about 560 KB for a 500 × 375 RGB photo). The buffer starts zeroed.
///
/// # Errors
/// Whatever `fill` returns.
pub fn filled_pixels<E>(
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Arc<[u8]>, E> {
    let mut pixels: Arc<[u8]> = std::iter::repeat_n(0, len).collect();
    match Arc::get_mut(&mut pixels) {
        Some(buf) => fill(buf)?,
        None => unreachable!("a buffer just allocated has no other owner"),
    }
    Ok(pixels)
}

/// One decoded image, 8 bits per channel, interleaved (HWC).
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Which sample this is.
    pub id: SampleId,
    /// Class label, when the source has one. Training never reads it.
    pub label: Option<u32>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// `height * width * channels` bytes, row-major, channels interleaved.
    pub pixels: Arc<[u8]>,
}

/// The two augmented views of one sample, float32 CHW each.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewPair {
    /// Which sample both views come from.
    pub id: SampleId,
    /// Label carried through for evaluation; never used by the loss.
    pub label: Option<u32>,
    /// `[channels, height, width]` of each view.
    pub shape: [usize; 3],
    /// View t(x), `shape` elements. (`Arc<Vec>` rather than `Arc<[f32]>`: made from the
    /// augmentation's own buffer without copying it.)
    pub first: Arc<Vec<f32>>,
    /// View t'(x), `shape` elements.
    pub second: Arc<Vec<f32>>,
}

/// N samples' view pairs collated into 2N views, NCHW; views `2k` and `2k+1` are the pair of
/// sample `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Position of the batch in the run, from 0.
    pub step: u64,
    /// Epoch the samples belong to.
    pub epoch: u32,
    /// The N samples, in order.
    pub ids: Vec<SampleId>,
    /// `[2N, channels, height, width]`.
    pub shape: [usize; 4],
    /// `2N * channels * height * width` floats (an `Arc<Vec>`: made without a copy, and the
    /// encoder takes the buffer itself when it holds the only reference).
    pub data: Arc<Vec<f32>>,
}

/// A batch's tensors on their way through the model stages (h, z), or the state after a
/// training step. The payload's type belongs to the model stages (it holds device tensors
/// still attached to the autograd graph); the runtime only moves it.
#[derive(Clone)]
pub struct Activations {
    /// The training step the batch is for (the batch's position in the run, from 0).
    pub step: u64,
    /// Epoch its samples belong to.
    pub epoch: u32,
    /// The N samples of the batch, in order.
    pub ids: Arc<[SampleId]>,
    /// Shape of the main tensor (e.g. `[2N, 512]`).
    pub shape: Vec<usize>,
    /// The model stages' payload.
    pub payload: Arc<dyn Any + Send + Sync>,
}

impl Activations {
    /// The payload as `T`, if it is one.
    pub fn payload<T: Any>(&self) -> Option<&T> {
        self.payload.downcast_ref::<T>()
    }
}

impl fmt::Debug for Activations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activations")
            .field("step", &self.step)
            .field("epoch", &self.epoch)
            .field("samples", &self.ids.len())
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Activations {
    /// Same step and shape, and the very same payload.
    fn eq(&self, other: &Self) -> bool {
        self.step == other.step
            && self.epoch == other.epoch
            && self.shape == other.shape
            && Arc::ptr_eq(&self.payload, &other.payload)
    }
}

/// A message on an edge.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Message {
    /// See [`Record`].
    Record(Record),
    /// See [`Image`].
    Image(Image),
    /// See [`ViewPair`].
    ViewPair(ViewPair),
    /// See [`Batch`].
    Batch(Batch),
    /// h of a batch (see [`Activations`]).
    Features(Activations),
    /// z of a batch (see [`Activations`]).
    Projections(Activations),
    /// The state after an optimizer step (see [`Activations`]).
    TrainState(Activations),
}

impl Message {
    /// The port type this message travels as.
    pub fn port_type(&self) -> PortType {
        match self {
            Message::Record(_) => PortType::Records,
            Message::Image(_) => PortType::Images,
            Message::ViewPair(_) => PortType::ViewPairs,
            Message::Batch(_) => PortType::Batches,
            Message::Features(_) => PortType::Features,
            Message::Projections(_) => PortType::Projections,
            Message::TrainState(_) => PortType::TrainStates,
        }
    }

    /// Approximate payload size in bytes, for throughput reports.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Message::Record(r) => r.payload.len(),
            Message::Image(i) => i.pixels.len(),
            Message::ViewPair(p) => 4 * (p.first.len() + p.second.len()),
            Message::Batch(b) => 4 * b.data.len(),
            Message::Features(a) | Message::Projections(a) => 4 * a.shape.iter().product::<usize>(),
            Message::TrainState(_) => 0,
        }
    }
}
