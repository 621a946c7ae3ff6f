//! Phase 3: the validated graph and the loaders that make one ([`load_file`], [`load_str`]):
//! parse the definition, apply overrides, then check and build its stages
//! (`check.rs`, phase by phase).

use std::path::{Path, PathBuf};

use simclr_core::{
    BuildContext, Loc, PortType, StageFactory, StageKind, StreamFacts, Value, ValueKind,
};

use crate::check::resolve;
use crate::definition;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::registry::Registry;
use crate::yaml;

/// A validated pipeline, ready to run. Nodes are in topological order (sources first).
#[derive(Debug)]
pub struct Graph {
    /// `name`.
    pub name: String,
    /// `description`.
    pub description: Option<String>,
    /// `seed`.
    pub seed: u64,
    /// `device`.
    pub device: simclr_core::DeviceSpec,
    /// `distributed`.
    pub distributed: simclr_core::Distributed,
    /// Run folder (`run_dir`, or `runs/<name>`, or the override given to the loader).
    pub run_dir: PathBuf,
    /// The definition file.
    pub file: PathBuf,
    /// Its text, as read.
    pub source: String,
    /// The definition this graph was built from: `source` itself, or — with `--set`
    /// overrides — the resolved document (see [`resolved_text`]). What a run folder and its
    /// checkpoints keep, and what `--resume` compares.
    pub resolved: String,
    /// Stages, sources first.
    pub nodes: Vec<Node>,
    /// Data edges.
    pub edges: Vec<Edge>,
    /// Declared credit (feedback) edges.
    pub credits: Vec<Credit>,
}

/// A configured stage.
#[derive(Debug)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: &'static StageKind,
    /// `workers` as written (for [`simclr_core::Parallelism::Internal`] kinds, the stage's own pool size).
    pub workers: usize,
    /// Runtime threads running the stage: `workers`, or 1 for [`simclr_core::Parallelism::Internal`] kinds.
    pub threads: usize,
    /// The `params` node, for tools that inspect a stage's configuration (`simclr preview`).
    pub params: simclr_core::Value,
    /// Whether the runtime must keep input order on output (parallel, ordered kinds).
    pub ordered: bool,
    /// Indices into [`Graph::edges`] of its inputs, in definition order.
    pub inputs: Vec<usize>,
    /// Indices into [`Graph::edges`] of its consumers.
    pub outputs: Vec<usize>,
    /// The port type it emits (`None` for sinks).
    pub output_type: Option<PortType>,
    /// Makes its per-worker instances.
    pub factory: StageFactory,
    /// What it told the stages downstream about its output stream at build time (its input's
    /// facts, for a stage that publishes none).
    pub facts: StreamFacts,
    /// Where its id is written.
    pub loc: Loc,
}

/// A bounded data edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Producing node (index into [`Graph::nodes`]).
    pub from: usize,
    /// Consuming node.
    pub to: usize,
    /// Channel capacity in messages.
    pub capacity: usize,
    /// What it carries.
    pub port_type: PortType,
}

/// A credit edge: `to` takes one credit before each message it processes; `from` returns one
/// each time it finishes one. With `window` 1, step k+1 starts after step k completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    /// The downstream node returning credits.
    pub from: usize,
    /// The upstream node waiting for them.
    pub to: usize,
    /// Credits in circulation.
    pub window: usize,
}

/// Options a caller may impose on a definition.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Replace the definition's `run_dir`.
    pub run_dir: Option<PathBuf>,
    /// Resume from this checkpoint (every stage sees it while being built).
    pub resume: Option<simclr_core::ResumePoint>,
    /// Stop training after this many steps in all.
    pub max_steps: Option<u64>,
    /// Stop training after this many seconds of steps in this run.
    pub max_seconds: Option<f64>,
    /// `(dotted.key.path, YAML value)` pairs replacing or adding values of the definition
    /// before it is read (`simclr run --set stages.images.params.path=/data/cifar`).
    pub overrides: Vec<(String, String)>,
}

/// Read, parse and validate a definition file.
///
/// # Errors
/// Every problem found, located (an unreadable file is one problem without a location).
pub fn load_file(
    path: &Path,
    registry: &Registry,
    options: &LoadOptions,
) -> Result<Graph, Diagnostics> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load_str(path, &text, registry, options),
            Err(e) => Err(not_utf8(path, e.as_bytes(), e.utf8_error())),
        },
        Err(e) => Err(Diagnostics::new(
            path,
            "",
            vec![Diagnostic {
                loc: None,
                path: String::new(),
                message: format!("cannot read the definition: {e}"),
                help: Some("check the path; shipped definitions live in definitions/".into()),
            }],
        )),
    }
}

/// A definition that is not UTF-8: located at its first invalid byte (line, and column in
/// characters of the valid text before it), the line shown with the bad bytes replaced.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Diagnostics {
    let at = e.valid_up_to();
    let before = String::from_utf8_lossy(&bytes[..at]);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let bad: Vec<String> = bytes[at..at + e.error_len().unwrap_or(bytes.len() - at).min(4)]
        .iter()
        .map(|b| format!("0x{b:02X}"))
        .collect();
    let loc = Loc {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
    };
    let d = Diagnostic::new(
        loc,
        "",
        format!(
            "the definition is not UTF-8 text: byte {} ({}) is not valid UTF-8",
            at,
            bad.join(" ")
        ),
    )
    .with_help("save the file as UTF-8 (a Latin-1 `é` is the byte 0xE9; in UTF-8 it is 0xC3 0xA9), e.g. `iconv -f latin1 -t utf-8`");
    Diagnostics::new(path, &String::from_utf8_lossy(bytes), vec![d])
}

/// Parse and validate a definition held in memory; `file` names it in diagnostics.
///
/// # Errors
/// Every problem found, located.
pub fn load_str(
    file: &Path,
    text: &str,
    registry: &Registry,
    options: &LoadOptions,
) -> Result<Graph, Diagnostics> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let d = Diagnostic::new(e.loc, "", format!("YAML syntax error: {}", e.message))
                .with_help("check indentation, brackets and quotes around this point");
            return Err(Diagnostics::new(file, text, vec![d]));
        }
    };
    let mut root = root;
    for (path, value) in &options.overrides {
        if let Err(message) = apply_override(&mut root, path, value) {
            let d = Diagnostic {
                loc: None,
                path: path.clone(),
                message: format!("--set {path}={value}: {message}"),
                help: Some(
                    "`--set` takes KEY.PATH=VALUE, e.g. `--set stages.images.params.count=512`"
                        .into(),
                ),
            };
            return Err(Diagnostics::new(file, text, vec![d]));
        }
    }
    let resolved = resolved_from(file, text, &root, &options.overrides);
    let mut diags = Vec::new();
    let def = definition::read(&root, &mut diags);
    let run_dir = options
        .run_dir
        .clone()
        .or_else(|| def.run_dir.clone())
        .unwrap_or_else(|| {
            Path::new("runs").join(if def.name.is_empty() {
                "unnamed"
            } else {
                &def.name
            })
        });
    let built = resolve(
        &def.stages,
        def.default_capacity,
        registry,
        &mut diags,
        &|kind, cx| {
            let cx = BuildContext {
                seed: def.seed,
                device: def.device,
                precision: def.precision,
                distributed: def.distributed,
                run_dir: &run_dir,
                resume: options.resume.as_ref(),
                max_steps: options.max_steps,
                max_seconds: options.max_seconds,
                definition: &resolved,
                ..cx
            };
            let factory = (kind.build)(&cx)?;
            let published = cx
                .published
                .borrow()
                .clone()
                .unwrap_or_else(|| cx.upstream.clone());
            Ok((factory, published))
        },
    );
    if !diags.is_empty() {
        return Err(Diagnostics::new(file, text, diags));
    }
    let Some((nodes, edges, credits)) = built else {
        return Err(Diagnostics::new(file, text, diags));
    };
    Ok(Graph {
        name: def.name,
        description: def.description,
        seed: def.seed,
        device: def.device,
        distributed: def.distributed,
        run_dir,
        file: file.to_owned(),
        source: text.to_owned(),
        resolved: resolved.clone(),
        nodes,
        edges,
        credits,
    })
}

/// The definition that runs when `text` is loaded with `overrides`: `text` itself when
/// there are none; otherwise the document with the overrides applied, written back as YAML
/// under a comment naming the file and the overrides (the original's comments and anchors
/// are not kept). `None` when the text or an override does not parse.
pub fn resolved_text(file: &Path, text: &str, overrides: &[(String, String)]) -> Option<String> {
    if overrides.is_empty() {
        return Some(text.to_owned());
    }
    let mut root = yaml::parse(text).ok()?;
    for (path, value) in overrides {
        apply_override(&mut root, path, value).ok()?;
    }
    Some(resolved_from(file, text, &root, overrides))
}

fn resolved_from(file: &Path, text: &str, root: &Value, overrides: &[(String, String)]) -> String {
    if overrides.is_empty() {
        return text.to_owned();
    }
    let sets: Vec<String> = overrides
        .iter()
        .map(|(k, v)| format!("--set {k}={}", v.replace('\n', " ")))
        .collect();
    format!(
        "# {} with {}: the definition that ran\n{}",
        file.display().to_string().replace('\n', " "),
        sets.join(" "),
        yaml::emit(root)
    )
}

/// Set `path` (dotted keys) of `root` to the YAML `value`, creating missing mappings. The new
/// nodes take the location of what they replace, so later diagnostics point at the file.
fn apply_override(root: &mut Value, path: &str, value: &str) -> Result<(), String> {
    let parsed = yaml::parse(value).map_err(|e| format!("the value is not YAML: {}", e.message))?;
    set_path(root, path, parsed, true)
}

/// Set `path` (dotted keys, e.g. `stages.train.params.temperature`) of `root` to `value`,
/// creating missing mappings: what `--set` does, for tools that hold the value as a tree
/// (`simclr sweep`). With `relocate`, the new nodes take the location of what they replace.
///
/// # Errors
/// An empty key, or a key under something that is not a mapping (named by its path).
pub fn set_path(
    root: &mut Value,
    path: &str,
    value: Value,
    relocate_to_target: bool,
) -> Result<(), String> {
    let mut value = value;
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err("the key path has an empty part".into());
    }
    let mut node = root;
    for (depth, key) in keys.iter().enumerate() {
        let loc = node.loc;
        if node.is_null() {
            node.kind = ValueKind::Map(Vec::new());
        }
        let ValueKind::Map(entries) = &mut node.kind else {
            return Err(format!("`{}` is not a mapping", keys[..depth].join(".")));
        };
        let at = match entries.iter().position(|(k, _)| k.as_str() == Some(key)) {
            Some(i) => i,
            None => {
                entries.push((
                    Value::new(loc, ValueKind::Str((*key).to_owned())),
                    Value::new(loc, ValueKind::Null),
                ));
                entries.len() - 1
            }
        };
        node = &mut entries[at].1;
    }
    if relocate_to_target {
        relocate(&mut value, node.loc);
    }
    *node = value;
    Ok(())
}

fn relocate(v: &mut Value, loc: Loc) {
    v.loc = loc;
    match &mut v.kind {
        ValueKind::Seq(items) => items.iter_mut().for_each(|i| relocate(i, loc)),
        ValueKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            relocate(k, loc);
            relocate(v, loc);
        }),
        _ => {}
    }
}
