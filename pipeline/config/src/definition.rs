//! Phase 2: the definition's own fields and each stage entry, read strictly from the value
//! tree. Every key is checked by hand rather than by one derived struct, so that one bad key
//! does not hide the next: all problems in the file are collected.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use simclr_core::value::{from_value, join_path};
use simclr_core::{DeviceSpec, Distributed, Loc, Precision, Value, ValueKind};

use crate::diagnostic::Diagnostic;

/// Default capacity of every edge, in messages (batches on the training path).
pub const DEFAULT_CAPACITY: usize = 4;
/// Largest edge capacity accepted: beyond this a "bounded" edge is unbounded in practice.
pub const MAX_CAPACITY: usize = 1 << 20;
/// Largest worker count accepted for one stage.
pub const MAX_WORKERS: usize = 1024;

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "seed",
    "device",
    "precision",
    "distributed",
    "run_dir",
    "edges",
    "stages",
];
const EDGE_KEYS: &[&str] = &["capacity"];
const STAGE_KEYS: &[&str] = &[
    "kind",
    "description",
    "inputs",
    "workers",
    "params",
    "credit",
];
const INPUT_KEYS: &[&str] = &["from", "capacity"];
const CREDIT_KEYS: &[&str] = &["from", "window"];

/// A definition's fields, read but not yet resolved against the registry.
#[derive(Clone, Debug)]
pub struct Definition {
    /// `name`.
    pub name: String,
    /// `description`, free text.
    pub description: Option<String>,
    /// `seed`: every random draw derives from it.
    pub seed: u64,
    /// `device`: `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: DeviceSpec,
    /// `precision`: `fp32` (strict float32, the default) or `tf32` (TensorFloat-32 matrix
    /// products and convolutions on CUDA tensor cores).
    pub precision: Precision,
    /// `distributed`: backend, BatchNorm across ranks, timeout, checksum interval.
    pub distributed: Distributed,
    /// `run_dir`, if given (default `runs/<name>`).
    pub run_dir: Option<PathBuf>,
    /// `edges.capacity`.
    pub default_capacity: usize,
    /// The stage entries, in document order (duplicates included, so they can be reported).
    pub stages: Vec<StageEntry>,
}

/// One entry under `stages:`.
#[derive(Clone, Debug)]
pub struct StageEntry {
    /// The id (the mapping key).
    pub id: String,
    /// Where the id is written.
    pub id_loc: Loc,
    /// `kind` and where it is written; `None` if missing or malformed (already reported).
    pub kind: Option<(String, Loc)>,
    /// `inputs`, in order.
    pub inputs: Vec<InputRef>,
    /// `workers` (default 1) and where it is written.
    pub workers: usize,
    /// Location of the `workers` value, if given.
    pub workers_loc: Option<Loc>,
    /// `params` (an empty mapping at the stage when absent).
    pub params: Value,
    /// `credit`, if given.
    pub credit: Option<CreditRef>,
    /// Whether `inputs` (or one of its entries) could not be read (already reported).
    pub inputs_malformed: bool,
}

/// One entry of a stage's `inputs`: `id` or `{ from: id, capacity: n }`.
#[derive(Clone, Debug)]
pub struct InputRef {
    /// The producing stage's id.
    pub from: String,
    /// Where it is written.
    pub loc: Loc,
    /// Capacity override for this edge.
    pub capacity: Option<usize>,
}

/// `credit: { from: id, window: n }`: the declared feedback edge of synchronous training.
#[derive(Clone, Debug)]
pub struct CreditRef {
    /// The downstream stage that returns a credit each time it finishes a message.
    pub from: String,
    /// Where it is written.
    pub loc: Loc,
    /// How many messages may be in flight between the two stages (1 = synchronous).
    pub window: usize,
}

/// Read a definition from its root node, pushing every problem found to `diags`.
pub fn read(root: &Value, diags: &mut Vec<Diagnostic>) -> Definition {
    let mut def = Definition {
        name: String::new(),
        description: None,
        seed: 0,
        device: DeviceSpec::Cpu,
        precision: Precision::Fp32,
        distributed: Distributed::default(),
        run_dir: None,
        default_capacity: DEFAULT_CAPACITY,
        stages: Vec::new(),
    };
    if root.is_null() {
        diags.push(
            Diagnostic::new(root.loc, "", "the definition is empty").with_help(
                "a definition needs at least `name:` and `stages:`; see docs/definitions.md",
            ),
        );
        return def;
    }
    if root.entries().is_none() {
        diags.push(
            Diagnostic::new(
                root.loc,
                "",
                format!(
                    "a definition is a mapping with `name:` and `stages:`, found {}",
                    root.describe()
                ),
            )
            .with_help("see docs/definitions.md for a complete example"),
        );
        return def;
    }
    check_keys(root, "", TOP_KEYS, "definition", diags);
    require(root, "", &["name", "stages"], diags);

    if let Some(name) = field::<String>(root, "name", "", diags) {
        if name.trim().is_empty() {
            diags.push(bad_value(
                root,
                "name",
                "",
                "`name` must not be empty",
                "give the pipeline a name, e.g. `name: cifar10-simclr`",
            ));
        } else if !is_plain_name(&name) {
            // The run folder defaults to `runs/<name>`: a name with a separator or `..` would
            // put it anywhere on the disk.
            diags.push(bad_value(
                root,
                "name",
                "",
                format!("`name` is a name, not a path: `{name}`"),
                "use letters, digits, `-`, `_` and `.` (no `/`, `\\` or `..`); set `run_dir:` or pass `--run-dir` to choose the folder",
            ));
        }
        def.name = name;
    }
    def.description = field::<String>(root, "description", "", diags);
    if let Some(seed) = field::<u64>(root, "seed", "", diags) {
        def.seed = seed;
    }
    if let Some(device) = field::<String>(root, "device", "", diags) {
        match device.parse() {
            Ok(d) => def.device = d,
            Err(_) => diags.push(bad_value(
                root,
                "device",
                "",
                format!("unknown device `{device}`"),
                "use `cpu`, `cuda`, `cuda:N` (N a GPU index) or `auto`",
            )),
        }
    }
    if let Some(precision) = field::<String>(root, "precision", "", diags) {
        match precision.parse() {
            Ok(p) => def.precision = p,
            Err(_) => diags.push(bad_value(
                root,
                "precision",
                "",
                format!("unknown precision `{precision}`"),
                "use `fp32` (strict float32) or `tf32` (TensorFloat-32 on CUDA tensor cores)",
            )),
        }
    }
    if let Some(d) = field::<Distributed>(root, "distributed", "", diags) {
        if !(d.timeout_s > 0.0 && d.timeout_s.is_finite()) {
            diags.push(bad_value(
                root,
                "distributed",
                "",
                format!(
                    "`distributed.timeout_s` must be a positive number of seconds, found {}",
                    d.timeout_s
                ),
                "e.g. `distributed: { timeout_s: 300 }`",
            ));
        }
        if d.local_groups == 0
            || (d.local_groups > 1
                && d.batch_norm != simclr_core::distributed::BatchNormSync::Local)
        {
            diags.push(bad_value(
                root,
                "distributed",
                "",
                format!(
                    "`distributed.local_groups: {}` needs `batch_norm: local` and at least 1 group",
                    d.local_groups
                ),
                "e.g. `distributed: { batch_norm: local, local_groups: 2 }`",
            ));
        }
        def.distributed = d;
    }
    def.run_dir = field::<String>(root, "run_dir", "", diags).map(PathBuf::from);
    if let Some(edges) = root.get("edges") {
        if edges.entries().is_some() {
            check_keys(edges, "edges", EDGE_KEYS, "`edges`", diags);
            if let Some(c) = capacity(edges, "capacity", "edges", diags) {
                def.default_capacity = c;
            }
        } else {
            diags.push(expected_mapping(edges, "edges", "`edges: { capacity: 4 }`"));
        }
    }
    if let Some(stages) = root.get("stages") {
        def.stages = read_stages(stages, diags);
    }
    def
}

fn read_stages(stages: &Value, diags: &mut Vec<Diagnostic>) -> Vec<StageEntry> {
    let Some(entries) = stages.entries() else {
        diags.push(expected_mapping(
            stages,
            "stages",
            "a mapping from stage id to `{ kind: ..., inputs: [...] }`",
        ));
        return Vec::new();
    };
    if entries.is_empty() {
        diags.push(
            Diagnostic::new(stages.loc, "stages", "`stages` is empty")
                .with_help("add at least a source and a stage that consumes it"),
        );
    }
    let mut out = Vec::new();
    for (key, node) in entries {
        let Some(id) = key.as_str() else {
            diags.push(Diagnostic::new(
                key.loc,
                "stages",
                format!("a stage id must be a string, found {}", key.describe()),
            ));
            continue;
        };
        let path = join_path("stages", id);
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            diags.push(
                Diagnostic::new(key.loc, &path, format!("invalid stage id `{id}`")).with_help(
                    "stage ids use letters, digits, `_` and `-` only, e.g. `views` or `encoder_f`",
                ),
            );
        }
        let mut entry = StageEntry {
            id: id.to_owned(),
            id_loc: key.loc,
            kind: None,
            inputs: Vec::new(),
            workers: 1,
            workers_loc: None,
            params: Value::empty_map(node.loc),
            credit: None,
            inputs_malformed: false,
        };
        if node.entries().is_none() {
            diags.push(expected_mapping(
                node,
                &path,
                "`{ kind: KIND, inputs: [ID, ...], params: {...} }`",
            ));
            out.push(entry);
            continue;
        }
        check_keys(node, &path, STAGE_KEYS, &format!("stage `{id}`"), diags);
        require(node, &path, &["kind"], diags);
        if let Some(kind) = field::<String>(node, "kind", &path, diags) {
            let loc = node.get("kind").map_or(node.loc, |v| v.loc);
            entry.kind = Some((kind, loc));
        }
        if let Some(inputs) = node.get("inputs") {
            let before = diags.len();
            entry.inputs = read_inputs(inputs, &join_path(&path, "inputs"), diags);
            entry.inputs_malformed = diags.len() > before;
        }
        if let Some(workers) = field::<i64>(node, "workers", &path, diags) {
            let loc = node.get("workers").map_or(node.loc, |v| v.loc);
            entry.workers_loc = Some(loc);
            match usize::try_from(workers) {
                Ok(n) if (1..=MAX_WORKERS).contains(&n) => entry.workers = n,
                _ => diags.push(
                    Diagnostic::new(
                        loc,
                        join_path(&path, "workers"),
                        format!("`workers` must be between 1 and {MAX_WORKERS}, found {workers}"),
                    )
                    .with_help("`workers: N` runs N threads of this stage; leave it out for 1"),
                ),
            }
        }
        if let Some(params) = node.get("params") {
            match params.kind {
                ValueKind::Map(_) => entry.params = params.clone(),
                ValueKind::Null => entry.params = Value::empty_map(params.loc),
                _ => diags.push(expected_mapping(
                    params,
                    &join_path(&path, "params"),
                    "`params: { key: value, ... }`",
                )),
            }
        }
        if let Some(credit) = node.get("credit") {
            entry.credit = read_credit(credit, &join_path(&path, "credit"), diags);
        }
        out.push(entry);
    }
    out
}

fn read_inputs(inputs: &Value, path: &str, diags: &mut Vec<Diagnostic>) -> Vec<InputRef> {
    let ValueKind::Seq(items) = &inputs.kind else {
        diags.push(
            Diagnostic::new(
                inputs.loc,
                path,
                format!(
                    "`inputs` must be a list of stage ids, found {}",
                    inputs.describe()
                ),
            )
            .with_help(
                "write `inputs: [source_id]`, or `inputs: [{ from: source_id, capacity: 8 }]`",
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        match &item.kind {
            ValueKind::Str(id) => out.push(InputRef {
                from: id.clone(),
                loc: item.loc,
                capacity: None,
            }),
            ValueKind::Map(_) => {
                check_keys(item, &item_path, INPUT_KEYS, "an input", diags);
                require(item, &item_path, &["from"], diags);
                let Some(from) = field::<String>(item, "from", &item_path, diags) else {
                    continue;
                };
                let loc = item.get("from").map_or(item.loc, |v| v.loc);
                let capacity = capacity(item, "capacity", &item_path, diags);
                out.push(InputRef {
                    from,
                    loc,
                    capacity,
                });
            }
            _ => diags.push(Diagnostic::new(
                item.loc,
                item_path,
                format!(
                    "an input is a stage id or `{{ from: id, capacity: n }}`, found {}",
                    item.describe()
                ),
            )),
        }
    }
    out
}

fn read_credit(credit: &Value, path: &str, diags: &mut Vec<Diagnostic>) -> Option<CreditRef> {
    if credit.entries().is_none() {
        diags.push(expected_mapping(
            credit,
            path,
            "`credit: { from: optimizer_stage_id, window: 1 }`",
        ));
        return None;
    }
    check_keys(credit, path, CREDIT_KEYS, "`credit`", diags);
    require(credit, path, &["from"], diags);
    let from = field::<String>(credit, "from", path, diags)?;
    let loc = credit.get("from").map_or(credit.loc, |v| v.loc);
    let mut window = 1;
    if let Some(w) = field::<i64>(credit, "window", path, diags) {
        match usize::try_from(w) {
            Ok(n) if n >= 1 => window = n,
            _ => diags.push(bad_value(
                credit,
                "window",
                path,
                format!("`window` must be at least 1, found {w}"),
                "`window: 1` is synchronous SGD: step k+1 starts after step k's update",
            )),
        }
    }
    Some(CreditRef { from, loc, window })
}

fn capacity(map: &Value, key: &str, path: &str, diags: &mut Vec<Diagnostic>) -> Option<usize> {
    let c = field::<i64>(map, key, path, diags)?;
    match usize::try_from(c) {
        Ok(n) if (1..=MAX_CAPACITY).contains(&n) => Some(n),
        _ => {
            diags.push(bad_value(
                map,
                key,
                path,
                format!("edge capacity must be between 1 and {MAX_CAPACITY}, found {c}"),
                "capacity counts messages (batches on the training path); 2-8 keeps the data stages ahead without hoarding memory",
            ));
            None
        }
    }
}

/// Deserialize `map[key]` if present; a malformed value becomes a diagnostic and `None`.
fn field<T: DeserializeOwned>(
    map: &Value,
    key: &str,
    path: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let node = map.get(key)?;
    match from_value::<T>(node, &join_path(path, key)) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(Diagnostic {
                loc: Some(e.loc.unwrap_or(node.loc)),
                path: e.path,
                message: format!("`{key}`: {}", e.message),
                help: Some(expected_form(key).to_owned()),
            });
            None
        }
    }
}

fn check_keys(map: &Value, path: &str, allowed: &[&str], what: &str, diags: &mut Vec<Diagnostic>) {
    let Some(entries) = map.entries() else { return };
    let mut seen: Vec<&str> = Vec::new();
    for (key, _) in entries {
        let Some(name) = key.as_str() else {
            diags.push(Diagnostic::new(
                key.loc,
                path,
                format!("keys of {what} must be strings, found {}", key.describe()),
            ));
            continue;
        };
        if !allowed.contains(&name) {
            let help = match crate::diagnostic::closest(name, allowed.iter().copied()) {
                Some(best) => format!(
                    "did you mean `{best}`? {what} takes: {}",
                    allowed.join(", ")
                ),
                None => format!("{what} takes: {}", allowed.join(", ")),
            };
            diags.push(
                Diagnostic::new(
                    key.loc,
                    join_path(path, name),
                    format!("unknown key `{name}` in {what}"),
                )
                .with_help(help),
            );
        } else if seen.contains(&name) {
            diags.push(
                Diagnostic::new(
                    key.loc,
                    join_path(path, name),
                    format!("key `{name}` appears twice in {what}"),
                )
                .with_help("keep one of them"),
            );
        }
        seen.push(name);
    }
}

fn require(map: &Value, path: &str, keys: &[&str], diags: &mut Vec<Diagnostic>) {
    for key in keys {
        if map.get(key).is_none() {
            let at = if path.is_empty() {
                "the definition".to_owned()
            } else {
                format!("`{path}`")
            };
            diags.push(
                Diagnostic::new(
                    map.loc,
                    path,
                    format!("missing required key `{key}` in {at}"),
                )
                .with_help(match *key {
                    "kind" => {
                        "every stage names its kind, e.g. `kind: sink`; `simclr stages` lists them"
                    }
                    "stages" => "add `stages:` with at least a source and a stage that consumes it",
                    "name" => "add `name: my-pipeline`",
                    _ => "see docs/definitions.md",
                }),
            );
        }
    }
}

/// Whether `name` can stand as one path component: no separator, not `.` or `..`, nothing
/// a file system treats specially.
fn is_plain_name(name: &str) -> bool {
    name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

fn bad_value(
    map: &Value,
    key: &str,
    path: &str,
    message: impl Into<String>,
    help: &str,
) -> Diagnostic {
    let loc = map.get(key).map_or(map.loc, |v| v.loc);
    Diagnostic::new(loc, join_path(path, key), message).with_help(help)
}

fn expected_mapping(node: &Value, path: &str, example: &str) -> Diagnostic {
    Diagnostic::new(
        node.loc,
        path,
        format!(
            "`{}` must be a mapping, found {}",
            path.rsplit('.').next().unwrap_or(path),
            node.describe()
        ),
    )
    .with_help(format!("write {example}"))
}

/// What each definition key takes, for the help line of a malformed value.
fn expected_form(key: &str) -> &'static str {
    match key {
        "name" => "`name` is a string, e.g. `name: cifar10-simclr`",
        "description" => "`description` is free text",
        "seed" => "`seed` is a non-negative integer, e.g. `seed: 42`",
        "device" => "`device` is `cpu`, `cuda`, `cuda:N` or `auto`",
        "precision" => "`precision` is `fp32` or `tf32`",
        "distributed" => {
            "`distributed` is a mapping: `{ backend: auto | none | mpi | nccl, batch_norm: global | local, timeout_s: 300, check_every: 100 }`"
        }
        "run_dir" => "`run_dir` is a folder path, e.g. `run_dir: runs/demo`",
        "kind" => "`kind` is a stage kind name; `simclr stages` lists them",
        "workers" => "`workers` is a positive integer, e.g. `workers: 2`",
        "capacity" => "`capacity` is a positive integer number of messages, e.g. `capacity: 4`",
        "from" => "`from` is a stage id",
        "window" => "`window` is a positive integer; 1 is synchronous",
        _ => "see docs/definitions.md",
    }
}
