//! `sink`: drains any stream and counts it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError, Stage,
    StageContext, StageError, StageFactory, StageKind,
};

/// Parameters of `sink`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Fail at the end of the stream unless exactly this many messages arrived: a smoke check
    /// that nothing was lost or duplicated on the way. Not checked when the stream was cut
    /// short (Ctrl-C, `--items`).
    #[serde(default)]
    pub expect: Option<u64>,
    /// Report an order-sensitive digest (FNV-1a, 64 bits) of everything received: two runs
    /// that print the same digest received byte-identical streams.
    #[serde(default)]
    pub digest: bool,
}

/// The `sink` kind.
pub static KIND: StageKind = StageKind {
    name: "sink",
    summary: "drains any stream and counts messages and payload bytes; ends a pipeline",
    input: InputPorts::Any,
    output: OutputPort::None,
    parallelism: Parallelism::Single,
    example: "\
name: sink-example
stages:
  numbers:
    kind: sequence
    params: { count: 500 }
  drain:
    kind: sink
    inputs: [numbers]
    params: { expect: 500 }
",
    params: || schemars::schema_for!(SinkConfig),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: SinkConfig = cx.parse()?;
    Ok(StageFactory::stage(move |_| Sink {
        expect: config.expect,
        digest: config.digest.then_some(FNV_OFFSET),
        messages: 0,
        bytes: 0,
    }))
}

/// Counts what arrives.
#[derive(Debug)]
pub struct Sink {
    expect: Option<u64>,
    digest: Option<u64>,
    messages: u64,
    bytes: u64,
}

impl Stage for Sink {
    fn process(
        &mut self,
        msg: Message,
        _out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        self.messages += 1;
        self.bytes += msg.payload_bytes() as u64;
        if let Some(h) = &mut self.digest {
            digest_message(h, &msg);
        }
        Ok(())
    }

    fn on_finish(
        &mut self,
        _out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        if let Some(h) = self.digest {
            cx.note(format!("digest {h:016x} over {} messages", self.messages));
        }
        match self.expect {
            // A stream cut short by a stop request or an item limit cannot meet the count.
            Some(n) if n != self.messages && !cx.stream_truncated() => {
                Err(StageError::msg(format!(
                    "expected {n} messages, received {} ({} payload bytes)",
                    self.messages, self.bytes
                )))
            }
            _ => Ok(()),
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Floats are folded a 32-bit word at a time (FNV-1a over words): 4x fewer steps than bytes.
fn digest_floats(h: &mut u64, xs: &[f32]) {
    for x in xs {
        *h ^= u64::from(x.to_bits());
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// Fold a message's content (not just its payload bytes) into an FNV-1a digest.
fn digest_message(h: &mut u64, msg: &Message) {
    let id = |h: &mut u64, id: &simclr_core::SampleId| {
        fnv(h, &id.epoch.to_le_bytes());
        fnv(h, &id.index.to_le_bytes());
    };
    match msg {
        Message::Record(r) => {
            fnv(h, &r.seq.to_le_bytes());
            fnv(h, &r.payload);
        }
        Message::Image(i) => {
            id(h, &i.id);
            fnv(h, &i.pixels);
        }
        Message::ViewPair(p) => {
            id(h, &p.id);
            digest_floats(h, &p.first);
            digest_floats(h, &p.second);
        }
        Message::Batch(b) => {
            fnv(h, &b.step.to_le_bytes());
            for i in &b.ids {
                id(h, i);
            }
            for d in b.shape {
                fnv(h, &(d as u64).to_le_bytes());
            }
            digest_floats(h, &b.data);
        }
        _ => fnv(h, msg.port_type().name().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use simclr_core::{Record, TestOutputs};

    use super::*;

    fn feed(sink: &mut Sink, n: u64) -> Result<(), StageError> {
        let mut collected = TestOutputs::default();
        let mut cx = StageContext::for_test("drain");
        for seq in 0..n {
            let mut out = Outputs::new(&mut collected, None);
            sink.process(
                Message::Record(Record {
                    seq,
                    payload: Arc::from(vec![0u8; 3]),
                }),
                &mut out,
                &mut cx,
            )?;
        }
        let mut out = Outputs::new(&mut collected, None);
        sink.on_finish(&mut out, &mut cx)
    }

    #[test]
    fn an_expected_count_is_checked_at_the_end() {
        let mut ok = Sink {
            expect: Some(5),
            digest: None,
            messages: 0,
            bytes: 0,
        };
        feed(&mut ok, 5).expect("five arrived");
        let mut short = Sink {
            expect: Some(5),
            digest: None,
            messages: 0,
            bytes: 0,
        };
        let err = feed(&mut short, 4).expect_err("one missing");
        assert_eq!(
            err.to_string(),
            "expected 5 messages, received 4 (12 payload bytes)"
        );
    }
}
