//! Stage kinds for testing the runtime: deliberately slow, failing, panicking, stuck and
//! jittery stages, a collecting sink and a sink of the wrong type. They are registered only
//! by tests (`simclr::registry::with_testing_kinds`), never in the user-facing registry.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError, PortType,
    Stage, StageContext, StageError, StageFactory, StageKind,
};

/// Every test-only kind.
pub const KINDS: &[&StageKind] = &[
    &SLOW,
    &FAIL,
    &PANIC,
    &STUCK,
    &JITTER,
    &JITTER_UNORDERED,
    &INFLIGHT_START,
    &INFLIGHT_END,
    &COLLECT,
    &EXPECT_IMAGES,
];

/// Parameters of the pass-through test kinds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// `slow`: milliseconds to sleep per message. `stuck`: seconds to sleep, ignoring
    /// cancellation. `jitter*`: maximum microseconds of pseudo-random sleep per message.
    #[serde(default)]
    pub delay: f64,
    /// `fail` / `panic`: messages passed through before failing.
    #[serde(default)]
    pub after: u64,
    /// `collect`: the name under which received sequence numbers are kept.
    #[serde(default)]
    pub key: String,
    /// `inflight_start`: fail if more than this many messages are between it and the
    /// `inflight_end` stage with the same `key`.
    #[serde(default)]
    pub max_in_flight: u64,
}

fn schema() -> schemars::Schema {
    schemars::schema_for!(TestConfig)
}

const PASS_EXAMPLE: &str = "name: test\nstages:\n  numbers: { kind: sequence, params: { count: 10 } }\n  drain: { kind: sink, inputs: [numbers] }\n";

macro_rules! pass_kind {
    ($name:ident, $kind:literal, $summary:literal, $par:expr, $mode:expr) => {
        #[doc = $summary]
        pub static $name: StageKind = StageKind {
            name: $kind,
            summary: $summary,
            input: InputPorts::Any,
            output: OutputPort::SameAsInput,
            parallelism: $par,
            example: PASS_EXAMPLE,
            params: schema,
            build: |cx| build_pass(cx, $mode),
        };
    };
}

pass_kind!(
    SLOW,
    "slow",
    "test: sleeps `delay` ms per message, passes it on",
    Parallelism::Parallel { ordered: true },
    Mode::Slow
);
pass_kind!(
    FAIL,
    "fail",
    "test: returns an error after `after` messages",
    Parallelism::Single,
    Mode::Fail
);
pass_kind!(
    PANIC,
    "panic",
    "test: panics after `after` messages",
    Parallelism::Single,
    Mode::Panic
);
pass_kind!(
    STUCK,
    "stuck",
    "test: sleeps `delay` s on its first message, ignoring cancellation",
    Parallelism::Single,
    Mode::Stuck
);
pass_kind!(
    JITTER,
    "jitter",
    "test: ordered parallel pass-through with pseudo-random delays",
    Parallelism::Parallel { ordered: true },
    Mode::Jitter
);
pass_kind!(
    JITTER_UNORDERED,
    "jitter_unordered",
    "test: unordered parallel pass-through with pseudo-random delays",
    Parallelism::Parallel { ordered: false },
    Mode::Jitter
);

pass_kind!(
    INFLIGHT_START,
    "inflight_start",
    "test: counts messages in flight up to `inflight_end`; fails above `max_in_flight`",
    Parallelism::Single,
    Mode::InFlightStart
);
pass_kind!(
    INFLIGHT_END,
    "inflight_end",
    "test: pass-through that ends an `inflight_start` window",
    Parallelism::Single,
    Mode::InFlightEnd
);

/// `collect`: a sink that keeps the sequence numbers of the records it receives.
pub static COLLECT: StageKind = StageKind {
    name: "collect",
    summary: "test: keeps received record numbers under `key` (see `collected`)",
    input: InputPorts::Accepts(&[PortType::Records]),
    output: OutputPort::None,
    parallelism: Parallelism::Single,
    example: PASS_EXAMPLE,
    params: schema,
    build: |cx| build_pass(cx, Mode::Collect),
};

/// `expect_images`: a sink that only accepts images (for type-mismatch tests).
pub static EXPECT_IMAGES: StageKind = StageKind {
    name: "expect_images",
    summary: "test: a sink that accepts only images",
    input: InputPorts::Accepts(&[PortType::Images]),
    output: OutputPort::None,
    parallelism: Parallelism::Single,
    example: PASS_EXAMPLE,
    params: schema,
    build: |cx| build_pass(cx, Mode::Collect),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Slow,
    Fail,
    Panic,
    Stuck,
    Jitter,
    Collect,
    InFlightStart,
    InFlightEnd,
}

fn in_flight(key: &str) -> std::sync::Arc<std::sync::atomic::AtomicI64> {
    static STORE: OnceLock<Mutex<BTreeMap<String, std::sync::Arc<std::sync::atomic::AtomicI64>>>> =
        OnceLock::new();
    let store = STORE.get_or_init(|| Mutex::new(BTreeMap::new()));
    let mut map = store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(key.to_owned()).or_default().clone()
}

fn collected_store() -> &'static Mutex<BTreeMap<String, Vec<u64>>> {
    static STORE: OnceLock<Mutex<BTreeMap<String, Vec<u64>>>> = OnceLock::new();
    STORE.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The record numbers a `collect` stage with this `key` received, in arrival order; clears them.
pub fn collected(key: &str) -> Vec<u64> {
    collected_store()
        .lock()
        .map(|mut m| m.remove(key).unwrap_or_default())
        .unwrap_or_default()
}

fn build_pass(cx: &BuildContext<'_>, mode: Mode) -> Result<StageFactory, ParamError> {
    let config: TestConfig = cx.parse()?;
    if !(config.delay.is_finite() && config.delay >= 0.0) {
        return Err(cx.invalid(
            "delay",
            "`delay` must be a non-negative number",
            "use 0 for no delay",
        ));
    }
    Ok(StageFactory::stage(move |_| Pass {
        mode,
        config: config.clone(),
        seen: 0,
    }))
}

struct Pass {
    mode: Mode,
    config: TestConfig,
    seen: u64,
}

/// A fixed pseudo-random mix (splitmix64) so jitter is reproducible.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Stage for Pass {
    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        self.seen += 1;
        match self.mode {
            Mode::Slow => std::thread::sleep(Duration::from_secs_f64(self.config.delay / 1e3)),
            Mode::Fail if self.seen > self.config.after => {
                return Err(StageError::msg(format!(
                    "injected failure after {} messages",
                    self.config.after
                )));
            }
            Mode::Panic if self.seen > self.config.after => {
                panic!("injected panic after {} messages", self.config.after);
            }
            Mode::Stuck => std::thread::sleep(Duration::from_secs_f64(self.config.delay)),
            Mode::Jitter => {
                let seq = match &msg {
                    Message::Record(r) => r.seq,
                    _ => self.seen,
                };
                let max = self.config.delay.max(0.0) as u64;
                if max > 0 {
                    std::thread::sleep(Duration::from_micros(mix(seq ^ cx.worker() as u64) % max));
                }
            }
            Mode::Collect => {
                if let Message::Record(r) = &msg
                    && let Ok(mut store) = collected_store().lock()
                {
                    store
                        .entry(self.config.key.clone())
                        .or_default()
                        .push(r.seq);
                }
                return Ok(());
            }
            Mode::InFlightStart => {
                let now = in_flight(&self.config.key)
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1;
                if now > self.config.max_in_flight as i64 {
                    return Err(StageError::msg(format!(
                        "{now} messages in flight, more than {}",
                        self.config.max_in_flight
                    )));
                }
            }
            Mode::InFlightEnd => {
                in_flight(&self.config.key).fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
            Mode::Fail | Mode::Panic => {}
        }
        out.push(msg)
    }
}
