//! `batch`: collates N view pairs into one contiguous float32 NCHW buffer of 2N views;
//! views 2k and 2k+1 are the pair of sample k.
//!
//! On `W` ranks, `batch_size` is the global batch: each rank collates its `N/W` pairs (the
//! source gives every rank its share of each global batch), emits at most the one-process
//! run's batches per epoch, and agrees with the other ranks before each batch that every rank
//! has one — so all ranks emit the same number of batches and the model stages' collectives
//! always pair up, even when one rank's data ends early or it is interrupted.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    Batch, BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError,
    PortType, SampleId, Stage, StageContext, StageError, StageFactory, StageKind, ViewPair,
};

/// Parameters of `batch`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Samples per batch, N (the batch holds 2N views).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Drop each epoch's last, incomplete batch (SimCLR's loss wants full batches).
    #[serde(default = "yes")]
    pub drop_last: bool,
}

fn default_batch() -> usize {
    256
}
fn yes() -> bool {
    true
}

/// The `batch` kind.
pub static KIND: StageKind = StageKind {
    name: "batch",
    summary: "collates N view pairs into one float32 NCHW batch of 2N views (2k, 2k+1 = pair k)",
    input: InputPorts::Accepts(&[PortType::ViewPairs]),
    output: OutputPort::Emits(PortType::Batches),
    parallelism: Parallelism::Single,
    example: "\
name: batch-example
stages:
  images: { kind: synthetic, params: { count: 256 } }
  views: { kind: views, inputs: [images], params: { size: 32 } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 64 } }
  drain: { kind: sink, inputs: [batches], params: { expect: 4 } }
",
    params: || schemars::schema_for!(BatchConfig),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: BatchConfig = cx.parse()?;
    if config.batch_size == 0 {
        return Err(cx.invalid(
            "batch_size",
            "`batch_size` must be at least 1",
            "SimCLR uses 256 to 4096; small machines 64-256",
        ));
    }
    let world = cx.extension::<simclr_dist::World>().cloned();
    let ranks = world.as_ref().map_or(1, simclr_dist::World::size);
    if ranks > 1 {
        if !config.batch_size.is_multiple_of(ranks) {
            return Err(cx.invalid(
                "batch_size",
                format!(
                    "`batch_size: {}` (the global batch) does not split evenly over the {ranks} ranks",
                    config.batch_size
                ),
                format!(
                    "use a multiple of {ranks}, e.g. {}",
                    config.batch_size.div_ceil(ranks) * ranks
                ),
            ));
        }
        if !config.drop_last {
            return Err(cx.invalid(
                "drop_last",
                "`drop_last: false` with several ranks would give them batches of different sizes",
                "keep `drop_last: true` (the default) for distributed runs",
            ));
        }
    }
    let per_epoch = cx.upstream.items_per_epoch.map(|n| {
        let b = config.batch_size as u64;
        if config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    });
    if per_epoch == Some(0)
        && let Some(n) = cx.upstream.items_per_epoch
    {
        return Err(cx.invalid(
            "batch_size",
            format!(
                "`batch_size: {}` is larger than the {n} samples of an epoch, so with `drop_last: true` no batch is ever emitted",
                config.batch_size
            ),
            "lower `batch_size`, use more samples, or set `drop_last: false`",
        ));
    }
    // Each bound holds alone (side <= 8192, batch_size any), their product may not: a batch
    // whose views alone exceed the machine's memory is refused here, not by the OOM killer.
    if let Some((h, w)) = cx.upstream.preprocessing.as_ref().and_then(|p| p.size) {
        let channels = cx.upstream.channels.unwrap_or(3);
        let bytes = 2 * config.batch_size as u128 * (channels * h * w) as u128 * 4;
        if let Some(total) = physical_memory()
            && bytes > u128::from(total)
        {
            let gib = |b: u128| b as f64 / f64::from(1u32 << 30);
            return Err(cx.invalid(
                "batch_size",
                format!(
                    "a batch of {} pairs of {channels}x{h}x{w} views needs {:.1} GiB for the views alone, more than this machine's {:.1} GiB of memory",
                    config.batch_size,
                    gib(bytes),
                    gib(u128::from(total))
                ),
                "lower `batch_size` or the views' `size`",
            ));
        }
    }
    cx.publish(simclr_core::StreamFacts {
        batch_size: Some(config.batch_size),
        batches_per_epoch: per_epoch,
        ..cx.upstream.clone()
    });
    // A resumed run's first batch is the step after the checkpoint's.
    let first_step = cx.resume.map_or(0, |r| r.step);
    let ranked = world.filter(|w| w.size() > 1).map(|w| Ranked {
        control: w.control,
        per_epoch,
        emitted: (
            cx.resume.map_or(0, |r| r.epoch),
            cx.resume
                .map_or(0, |r| r.position / config.batch_size as u64),
        ),
        closed: false,
    });
    let local = config.batch_size / ranks;
    Ok(StageFactory::stage(move |_| Batcher {
        config: config.clone(),
        local,
        pending: Vec::new(),
        step: first_step,
        ranked: ranked.clone(),
    }))
}

/// Collates pairs.
pub struct Batcher {
    config: BatchConfig,
    /// Pairs per batch on this rank (`batch_size` over the ranks).
    local: usize,
    pending: Vec<ViewPair>,
    step: u64,
    ranked: Option<Ranked>,
}

/// A batcher's state on one of several ranks.
#[derive(Clone)]
struct Ranked {
    control: simclr_dist::Comm,
    /// The one-process run's batches per epoch.
    per_epoch: Option<u64>,
    /// (epoch, batches emitted in it).
    emitted: (u32, u64),
    /// Some rank has no more batches: emit nothing more.
    closed: bool,
}

impl Ranked {
    /// Agree with every rank on batch `step`: `Ok(true)` when every rank has one (`more`);
    /// after any rank says it has none, every rank stops.
    fn agree(&mut self, step: u64, more: bool, cx: &mut StageContext) -> Result<bool, StageError> {
        if self.closed {
            return Ok(false);
        }
        let what = format!("batch agreement, step {step}");
        let all = self
            .control
            .all_gather_equal(
                simclr_dist::Purpose::Control,
                &what,
                &[u64::from(more), step],
            )
            .map_err(|e| StageError::msg(e.to_string()))?;
        let ended: Vec<usize> = all
            .chunks(2)
            .enumerate()
            .filter(|(_, v)| v[0] == 0)
            .map(|(r, _)| r)
            .collect();
        if let Some(other) = all.chunks(2).position(|v| v[0] == 1 && v[1] != step) {
            return Err(StageError::msg(format!(
                "rank {} is at batch {} but rank {} at batch {step}: the ranks' data streams differ",
                other,
                all[2 * other + 1],
                self.control.rank()
            )));
        }
        if ended.is_empty() {
            return Ok(true);
        }
        self.closed = true;
        if more {
            cx.note(format!(
                "every rank stops before batch {step}: rank {} has no more (its data ended, or a stop was asked)",
                ended
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(false)
    }
}

impl Batcher {
    /// A batcher with these parameters (one process).
    pub fn new(config: BatchConfig) -> Self {
        Self {
            local: config.batch_size,
            config,
            pending: Vec::new(),
            step: 0,
            ranked: None,
        }
    }

    fn emit(&mut self, out: &mut Outputs<'_>, cx: &mut StageContext) -> Result<(), StageError> {
        let pairs = std::mem::take(&mut self.pending);
        let Some(first) = pairs.first() else {
            return Ok(());
        };
        if let Some(ranked) = self.ranked.as_mut() {
            let epoch = first.id.epoch;
            if ranked.emitted.0 != epoch {
                ranked.emitted = (epoch, 0);
            }
            if ranked.per_epoch.is_some_and(|cap| ranked.emitted.1 >= cap) {
                // This rank's share of an epoch whose length does not split evenly into global
                // batches: the one-process run drops these samples too.
                return Ok(());
            }
            if !ranked.agree(self.step, true, cx)? {
                return Ok(());
            }
            ranked.emitted.1 += 1;
        }
        let [c, h, w] = first.shape;
        let mut data = Vec::with_capacity(2 * pairs.len() * c * h * w);
        for p in &pairs {
            data.extend_from_slice(&p.first);
            data.extend_from_slice(&p.second);
        }
        let batch = Batch {
            step: self.step,
            epoch: first.id.epoch,
            ids: pairs.iter().map(|p| p.id).collect::<Vec<SampleId>>(),
            shape: [2 * pairs.len(), c, h, w],
            data: Arc::new(data),
        };
        self.step += 1;
        out.push(Message::Batch(batch))
    }
}

impl Stage for Batcher {
    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let Message::ViewPair(pair) = msg else {
            return Err(StageError::UnexpectedMessage {
                expected: "view_pairs",
                got: msg.port_type().name(),
            });
        };
        if let Some(head) = self.pending.first() {
            if head.id.epoch != pair.id.epoch {
                if self.config.drop_last {
                    cx.note(format!(
                        "dropped {} samples at the end of epoch {}",
                        self.pending.len(),
                        head.id.epoch
                    ));
                    self.pending.clear();
                } else {
                    self.emit(out, cx)?;
                }
            } else if head.shape != pair.shape {
                return Err(StageError::msg(format!(
                    "sample {} has views of shape {:?} but the batch holds {:?}; give every view one size (e.g. `random_resized_crop: {{ size: 32 }}`)",
                    pair.id.index, pair.shape, head.shape
                )));
            }
        }
        self.pending.push(pair);
        if self.pending.len() == self.local {
            self.emit(out, cx)?;
        }
        Ok(())
    }

    fn on_finish(
        &mut self,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let end = if self.pending.is_empty() {
            Ok(())
        } else if self.config.drop_last {
            cx.note(format!(
                "dropped the last {} samples (incomplete batch)",
                self.pending.len()
            ));
            self.pending.clear();
            Ok(())
        } else {
            self.emit(out, cx)
        };
        // Tell the other ranks this one has no more batches.
        if let Some(ranked) = self.ranked.as_mut() {
            ranked.agree(self.step, false, cx)?;
        }
        end
    }
}

/// The machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`), where known.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
