//! The registry entry of a stage kind: what it takes and emits, whether it runs on several
//! workers, its parameters and how to build it.
//!
//! The registry itself is an explicit list (`simclr::registry`), greppable and tested for
//! duplicate names; there is no inventory or typetag magic.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::message::PortType;
use crate::stage::{Source, Stage};
use crate::value::{Loc, Value, from_value, join_path};

/// What a kind accepts on its input edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputPorts {
    /// A source: no inputs.
    None,
    /// Any of these port types (every input edge must carry one of them).
    Accepts(&'static [PortType]),
    /// Any port type (drains, taps, pass-through stages).
    Any,
}

impl InputPorts {
    /// Whether an edge carrying `ty` may feed this kind.
    pub fn accepts(self, ty: PortType) -> bool {
        match self {
            InputPorts::None => false,
            InputPorts::Accepts(list) => list.contains(&ty),
            InputPorts::Any => true,
        }
    }
}

impl fmt::Display for InputPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputPorts::None => f.write_str("-"),
            InputPorts::Any => f.write_str("any"),
            InputPorts::Accepts(list) => {
                let names: Vec<_> = list.iter().map(|t| t.name()).collect();
                f.write_str(&names.join(" | "))
            }
        }
    }
}

/// What a kind emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputPort {
    /// A sink: nothing.
    None,
    /// Always this port type.
    Emits(PortType),
    /// Whatever its input carries (pass-through stages); all inputs must then agree.
    SameAsInput,
}

impl fmt::Display for OutputPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputPort::None => f.write_str("-"),
            OutputPort::Emits(t) => f.write_str(t.name()),
            OutputPort::SameAsInput => f.write_str("same as input"),
        }
    }
}

/// Whether a kind may run on several worker threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// One thread only (`workers` must be 1): stateful stages, sinks that write files.
    Single,
    /// One runtime thread; the stage runs its own pool of `workers` threads internally
    /// (see [`BuildContext::workers`]), e.g. a rayon pool over a chunk of messages.
    Internal,
    /// `workers: N` instances, each fed a share of the input.
    Parallel {
        /// Whether output must leave in input order. The runtime then hands inputs out
        /// round-robin and re-assembles outputs in the same order.
        ordered: bool,
    },
}

/// A configuration error in a stage's parameters, located.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamError {
    /// What is wrong, naming the values involved.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// Where, when known.
    pub loc: Option<Loc>,
    /// Dotted key path of the offending node.
    pub path: String,
}

/// One instance of a stage, for one worker.
pub enum Instance {
    /// A source (a kind with no inputs).
    Source(Box<dyn Source>),
    /// A stage that consumes messages.
    Stage(Box<dyn Stage>),
}

/// Makes the per-worker instances of a configured stage. Built (and its parameters checked)
/// during validation; called on the stage's threads when the pipeline starts.
pub struct StageFactory(Box<dyn Fn(usize) -> Instance + Send + Sync>);

impl StageFactory {
    /// A factory of sources; `make(worker)` builds the instance of worker `worker`.
    pub fn source<S: Source + 'static>(make: impl Fn(usize) -> S + Send + Sync + 'static) -> Self {
        Self(Box::new(move |worker| {
            Instance::Source(Box::new(make(worker)))
        }))
    }

    /// A factory of stages; `make(worker)` builds the instance of worker `worker`.
    pub fn stage<S: Stage + 'static>(make: impl Fn(usize) -> S + Send + Sync + 'static) -> Self {
        Self(Box::new(move |worker| {
            Instance::Stage(Box::new(make(worker)))
        }))
    }

    /// Build the instance for `worker`.
    pub fn instance(&self, worker: usize) -> Instance {
        (self.0)(worker)
    }
}

impl fmt::Debug for StageFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StageFactory")
    }
}

/// What is known, at build time, about the stream arriving on a stage's inputs: sources
/// publish their length and epochs (and their labelled splits), `views` the deterministic
/// counterpart of its policy, batchers their batch size, and stages downstream read them (a
/// trainer derives its schedule's total steps from them, the kNN monitor its data). A stage
/// that publishes facts of its own keeps the rest of its input's (`..cx.upstream.clone()`).
#[derive(Clone, Debug, Default)]
pub struct StreamFacts {
    /// Samples per epoch, when the source knows it before running.
    pub items_per_epoch: Option<u64>,
    /// Passes over the data.
    pub epochs: Option<u32>,
    /// Channels of the source's images, when it fixes them.
    pub channels: Option<usize>,
    /// Samples (N, not 2N views) per batch.
    pub batch_size: Option<usize>,
    /// Batches per epoch.
    pub batches_per_epoch: Option<u64>,
    /// The labelled splits of the source upstream, for evaluation.
    pub labelled: Option<Arc<dyn crate::data::LabelledData>>,
    /// The deterministic counterpart of the augmentation policy upstream, for evaluation.
    pub preprocessing: Option<crate::data::Preprocess>,
    /// A stage upstream could not be configured (its error is reported), so missing facts
    /// are not worth a second error.
    pub incomplete: bool,
}

impl StreamFacts {
    /// Total batches of the run, when known.
    pub fn total_batches(&self) -> Option<u64> {
        Some(self.batches_per_epoch? * u64::from(self.epochs?))
    }
}

/// Where a resumed run starts: read from a checkpoint before the graph is built, so every
/// stage can pick up from it (sources skip what was consumed, model stages load weights).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
    /// Training steps completed (the next batch is step `step`).
    pub step: u64,
    /// Epoch of the next sample.
    pub epoch: u32,
    /// Samples of `epoch` consumed (stream positions, after shuffling).
    pub position: u64,
}

/// What a kind's `build` function may know about the stage it configures.
#[derive(Debug)]
pub struct BuildContext<'a> {
    /// The stage's id in the definition.
    pub stage_id: &'a str,
    /// The `params:` node (an empty mapping when absent).
    pub params: &'a Value,
    /// Key path of `params`, e.g. `stages.views.params`.
    pub params_path: String,
    /// The definition's seed.
    pub seed: u64,
    /// The definition's device (`cpu`, `cuda`, `cuda:N`, `auto`).
    pub device: crate::DeviceSpec,
    /// The definition's `precision` for float32 work on CUDA: `fp32` (strict) or `tf32`.
    pub precision: crate::Precision,
    /// The definition's `distributed:` settings (the ranks themselves are the program's
    /// `simclr_dist::World` extension).
    pub distributed: crate::Distributed,
    /// The run folder.
    pub run_dir: &'a Path,
    /// How many workers the stage runs.
    pub workers: usize,
    /// The port type arriving on its inputs (`None` for sources).
    pub input_type: Option<PortType>,
    /// What is known about the stream on its (first) input.
    pub upstream: StreamFacts,
    /// Set by the kind to describe its output stream; unset, the input's facts pass through.
    pub published: RefCell<Option<StreamFacts>>,
    /// The checkpoint a resumed run starts from.
    pub resume: Option<&'a ResumePoint>,
    /// Stop training after this many steps in all (`simclr run --max-steps`).
    pub max_steps: Option<u64>,
    /// Stop training after this many seconds of steps in this run (`simclr run --max-seconds`).
    pub max_seconds: Option<f64>,
    /// The definition's text as it runs (`--set` overrides applied; checkpoints keep a copy).
    pub definition: &'a str,
    /// What the program added to its registry beside the stage kinds (registered
    /// transforms, say), for kinds that look such things up.
    pub extensions: &'a crate::Extensions,
}

impl BuildContext<'_> {
    /// The registry's value of type `T`, if the program added one.
    pub fn extension<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }
}

impl BuildContext<'_> {
    /// Describe the stream this stage emits (see [`StreamFacts`]).
    pub fn publish(&self, facts: StreamFacts) {
        *self.published.borrow_mut() = Some(facts);
    }

    /// Deserialize the parameters into the kind's config struct.
    ///
    /// # Errors
    /// The first mismatch (unknown key, wrong type, missing field), located.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ParamError> {
        from_value(self.params, &self.params_path).map_err(|e| ParamError {
            message: e.message,
            help: None,
            loc: e.loc,
            path: e.path,
        })
    }

    /// An error about parameter `field`, pointing at its value (or at `params` if absent).
    pub fn invalid(
        &self,
        field: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> ParamError {
        let node = self.params.get(field).unwrap_or(self.params);
        ParamError {
            message: message.into(),
            help: Some(help.into()),
            loc: Some(node.loc),
            path: join_path(&self.params_path, field),
        }
    }
}

/// A stage kind: the registry entry behind a definition's `kind:`.
pub struct StageKind {
    /// The name used as `kind:` (snake_case; sources and sinks nouns, transforms verbs).
    pub name: &'static str,
    /// One line for `simclr stages`.
    pub summary: &'static str,
    /// What it accepts.
    pub input: InputPorts,
    /// What it emits.
    pub output: OutputPort,
    /// Whether `workers: N > 1` is allowed, and whether order is kept.
    pub parallelism: Parallelism,
    /// A complete definition that uses this kind; a test validates and runs every one.
    pub example: &'static str,
    /// JSON schema of the parameters (from the config struct and its doc comments).
    pub params: fn() -> schemars::Schema,
    /// Check the parameters and make a factory of instances.
    pub build: fn(&BuildContext<'_>) -> Result<StageFactory, ParamError>,
}

impl fmt::Debug for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageKind")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One documented parameter, read from a kind's schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamDoc {
    /// Key under `params:`.
    pub name: String,
    /// Type, in YAML terms (`integer`, `string`, `fast | slow`, ...).
    pub ty: String,
    /// Default as YAML text, or `None` when the parameter is required.
    pub default: Option<String>,
    /// The field's doc comment.
    pub doc: String,
}

impl StageKind {
    /// The documented parameters, in declaration order.
    pub fn param_docs(&self) -> Vec<ParamDoc> {
        let schema = (self.params)();
        let root = schema.as_value();
        let required: Vec<&str> = root
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        let Some(props) = root.get("properties").and_then(|p| p.as_object()) else {
            return Vec::new();
        };
        props
            .iter()
            .map(|(name, prop)| {
                let default = prop
                    .get("default")
                    .map(|d| {
                        if d.is_null() {
                            "unset".to_owned()
                        } else {
                            json_to_yaml(d)
                        }
                    })
                    .or_else(|| (!required.contains(&name.as_str())).then(|| "unset".to_owned()));
                ParamDoc {
                    name: name.clone(),
                    ty: schema_type(prop, root),
                    default: if required.contains(&name.as_str()) {
                        None
                    } else {
                        default
                    },
                    doc: prop
                        .get("description")
                        .and_then(|d| d.as_str())
                        .or_else(|| {
                            resolve(prop, root)
                                .get("description")
                                .and_then(|d| d.as_str())
                        })
                        .unwrap_or("")
                        .replace('\n', " "),
                }
            })
            .collect()
    }
}

fn resolve<'a>(prop: &'a serde_json::Value, root: &'a serde_json::Value) -> &'a serde_json::Value {
    if let Some(r) = prop.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or(r);
        if let Some(def) = root.get("$defs").and_then(|d| d.get(name)) {
            return def;
        }
    }
    prop
}

fn schema_type(prop: &serde_json::Value, root: &serde_json::Value) -> String {
    let prop = resolve(prop, root);
    if let Some(values) = prop.get("enum").and_then(|e| e.as_array()) {
        return values
            .iter()
            .map(json_to_yaml)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(c) = prop.get("const") {
        return json_to_yaml(c);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = prop.get(key).and_then(|a| a.as_array()) {
            let parts: Vec<String> = alts
                .iter()
                .map(|a| schema_type(a, root))
                .filter(|t| t != "null")
                .collect();
            return parts.join(" | ");
        }
    }
    match prop.get("type") {
        Some(serde_json::Value::String(t)) => match t.as_str() {
            "array" => match prop.get("items") {
                Some(items) => format!("list of {}", schema_type(items, root)),
                None => "list".to_owned(),
            },
            "object" => "mapping".to_owned(),
            "integer" if prop.get("minimum").and_then(serde_json::Value::as_f64) == Some(0.0) => {
                "integer ≥ 0".to_owned()
            }
            other => other.to_owned(),
        },
        Some(serde_json::Value::Array(types)) => types
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    }
}

fn json_to_yaml(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
