//! A custom stage kind, registered beside the built-in ones and used from YAML.
//!
//! ```sh
//! cargo run --example custom_stage
//! ```
//!
//! `every_nth` keeps one record in N: a transform that emits zero or one message per input.
//! Writing a kind takes three things: a config struct (serde + a doc comment per field, which
//! `simclr stages` shows), a `Stage` implementation, and a `StageKind` entry that declares its
//! ports, parallelism, example and build function.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr::config::graph::LoadOptions;
use simclr::core::{
    BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError, PortType,
    Stage, StageContext, StageError, StageFactory, StageKind,
};

/// Parameters of `every_nth`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EveryNthConfig {
    /// Keep records whose number is a multiple of this.
    n: u64,
}

static EVERY_NTH: StageKind = StageKind {
    name: "every_nth",
    summary: "keeps one record in `n`",
    input: InputPorts::Accepts(&[PortType::Records]),
    output: OutputPort::Emits(PortType::Records),
    // Stateless, so any number of workers; the runtime keeps input order.
    parallelism: Parallelism::Parallel { ordered: true },
    example: DEFINITION,
    params: || schemars::schema_for!(EveryNthConfig),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: EveryNthConfig = cx.parse()?;
    if config.n == 0 {
        return Err(cx.invalid("n", "`n` must be at least 1", "`n: 1` keeps every record"));
    }
    Ok(StageFactory::stage(move |_worker| EveryNth { n: config.n }))
}

struct EveryNth {
    n: u64,
}

impl Stage for EveryNth {
    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        match &msg {
            Message::Record(r) if r.seq % self.n == 0 => out.push(msg),
            Message::Record(_) => Ok(()),
            other => Err(StageError::UnexpectedMessage {
                expected: "records",
                got: other.port_type().name(),
            }),
        }
    }
}

const DEFINITION: &str = "\
name: custom-stage
stages:
  numbers: { kind: sequence, params: { count: 100000 } }
  thin: { kind: every_nth, workers: 2, inputs: [numbers], params: { n: 10 } }
  drain: { kind: sink, inputs: [thin], params: { expect: 10000 } }
";

fn main() -> anyhow::Result<()> {
    let mut registry = simclr::registry::user();
    registry.add(&EVERY_NTH);
    let graph = simclr::config::load_str(
        Path::new("custom-stage.yaml"),
        DEFINITION,
        &registry,
        &LoadOptions::default(),
    )
    .map_err(|d| anyhow::anyhow!("{d}"))?;
    let run = simclr::runtime::run(&graph, &simclr::runtime::RunOptions::default())?;
    println!("{}", run.report);
    Ok(())
}
