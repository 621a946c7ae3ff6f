//! `sequence`: emits numbered records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, Message, OutputPort, Parallelism, ParamError, PortType, Record,
    Source, StageContext, StageError, StageFactory, StageKind,
};

/// Default number of records.
pub const DEFAULT_COUNT: u64 = 1000;

/// Parameters of `sequence`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SequenceConfig {
    /// How many records to emit in all (split across workers).
    #[serde(default = "default_count")]
    pub count: u64,
    /// Payload bytes per record (zeros, allocated once and shared), to measure the cost of
    /// moving data through edges.
    #[serde(default)]
    pub payload_bytes: usize,
    /// Emit at most this many records per second over all workers; unset means as fast as
    /// possible. Simulates a slow reader.
    #[serde(default)]
    pub rate: Option<f64>,
}

fn default_count() -> u64 {
    DEFAULT_COUNT
}

/// The `sequence` kind.
pub static KIND: StageKind = StageKind {
    name: "sequence",
    summary: "source of numbered records (seq 0, 1, 2, ...), for exercising and profiling the runtime",
    input: InputPorts::None,
    output: OutputPort::Emits(PortType::Records),
    parallelism: Parallelism::Parallel { ordered: true },
    example: "\
name: sequence-example
stages:
  numbers:
    kind: sequence
    params: { count: 1000, payload_bytes: 4096 }
  drain:
    kind: sink
    inputs: [numbers]
",
    params: || schemars::schema_for!(SequenceConfig),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: SequenceConfig = cx.parse()?;
    if let Some(rate) = config.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(cx.invalid(
            "rate",
            format!("`rate` must be a positive number of records per second, found {rate}"),
            "leave `rate` out to emit as fast as possible",
        ));
    }
    const MAX_PAYLOAD: usize = 1 << 30;
    if config.payload_bytes > MAX_PAYLOAD {
        return Err(cx.invalid(
            "payload_bytes",
            format!(
                "`payload_bytes` must be at most {MAX_PAYLOAD}, found {}",
                config.payload_bytes
            ),
            "payloads are held in memory on every queued edge",
        ));
    }
    let workers = cx.workers as u64;
    let payload: Arc<[u8]> = vec![0u8; config.payload_bytes].into();
    Ok(StageFactory::source(move |worker| Sequence {
        next: worker as u64,
        step: workers,
        count: config.count,
        payload: payload.clone(),
        interval: config
            .rate
            .map(|r| Duration::from_secs_f64(workers as f64 / r)),
        due: None,
    }))
}

/// Worker `w` of `n` emits `w, w + n, w + 2n, ...` below `count`.
struct Sequence {
    next: u64,
    step: u64,
    count: u64,
    payload: Arc<[u8]>,
    interval: Option<Duration>,
    due: Option<Instant>,
}

impl Source for Sequence {
    fn next(&mut self, _cx: &mut StageContext) -> Result<Option<Message>, StageError> {
        if self.next >= self.count {
            return Ok(None);
        }
        if let Some(interval) = self.interval {
            let due = *self.due.get_or_insert_with(Instant::now);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            self.due = Some(due + interval);
        }
        let seq = self.next;
        self.next += self.step;
        Ok(Some(Message::Record(Record {
            seq,
            payload: self.payload.clone(),
        })))
    }

    fn len_hint(&self) -> Option<u64> {
        Some(
            self.count
                .saturating_sub(self.next)
                .div_ceil(self.step.max(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_split_the_sequence_without_overlap() {
        let mut seen = Vec::new();
        for w in 0..3 {
            let mut s = Sequence {
                next: w,
                step: 3,
                count: 10,
                payload: Arc::from(Vec::new()),
                interval: None,
                due: None,
            };
            assert_eq!(s.len_hint(), Some((10 - w).div_ceil(3)));
            let mut cx = StageContext::for_test("numbers");
            while let Some(Message::Record(r)) = s.next(&mut cx).expect("no error") {
                seen.push(r.seq);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }
}
