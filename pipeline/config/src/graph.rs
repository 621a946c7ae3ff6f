//! Phase 3: resolve kinds and inputs, check the graph's shape and types, build every stage.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use simclr_core::value::join_path;
use simclr_core::{
    BuildContext, InputPorts, Loc, OutputPort, Parallelism, PortType, StageFactory, StageKind,
    StreamFacts, Value, ValueKind,
};

use crate::definition::{self, StageEntry};
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
    pub device: String,
    /// Run folder (`run_dir`, or `runs/<name>`, or the override given to the loader).
    pub run_dir: PathBuf,
    /// The definition file.
    pub file: PathBuf,
    /// Its text, kept so a run can store an exact copy.
    pub source: String,
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
    /// `workers` as written (for [`Parallelism::Internal`] kinds, the stage's own pool size).
    pub workers: usize,
    /// Runtime threads running the stage: `workers`, or 1 for [`Parallelism::Internal`] kinds.
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
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(path, &text, registry, options),
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
        |kind, cx| {
            let cx = BuildContext {
                seed: def.seed,
                device: &def.device,
                precision: &def.precision,
                run_dir: &run_dir,
                resume: options.resume.as_ref(),
                max_steps: options.max_steps,
                definition: text,
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
        run_dir,
        file: file.to_owned(),
        source: text.to_owned(),
        nodes,
        edges,
        credits,
    })
}

/// Set `path` (dotted keys) of `root` to the YAML `value`, creating missing mappings. The new
/// nodes take the location of what they replace, so later diagnostics point at the file.
fn apply_override(root: &mut Value, path: &str, value: &str) -> Result<(), String> {
    let mut parsed =
        yaml::parse(value).map_err(|e| format!("the value is not YAML: {}", e.message))?;
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
    relocate(&mut parsed, node.loc);
    *node = parsed;
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

type Built = (Vec<Node>, Vec<Edge>, Vec<Credit>);

struct Pending<'a> {
    entry: &'a StageEntry,
    kind: Option<&'static StageKind>,
    /// (producer index, capacity, loc of the input entry)
    inputs: Vec<(usize, usize, Loc)>,
}

fn resolve(
    entries: &[StageEntry],
    default_capacity: usize,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
    build: impl Fn(
        &'static StageKind,
        BuildContext<'_>,
    ) -> Result<(StageFactory, StreamFacts), simclr_core::ParamError>,
) -> Option<Built> {
    // Unique ids; later duplicates are reported and dropped.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut stages: Vec<Pending<'_>> = Vec::new();
    for entry in entries {
        if let Some(&first) = index.get(entry.id.as_str()) {
            let first_loc = stages[first].entry.id_loc;
            diags.push(
                Diagnostic::new(
                    entry.id_loc,
                    join_path("stages", &entry.id),
                    format!(
                        "duplicate stage id `{}` (first defined at line {})",
                        entry.id, first_loc.line
                    ),
                )
                .with_help("every stage id must be unique; rename one of them"),
            );
            continue;
        }
        index.insert(&entry.id, stages.len());
        let kind = entry
            .kind
            .as_ref()
            .and_then(|(name, loc)| match registry.get(name) {
                Some(kind) => Some(kind),
                None => {
                    let help = match closest(name, registry.iter().map(|k| k.name)) {
                        Some(best) => {
                            format!("did you mean `{best}`? `simclr stages` lists every kind")
                        }
                        None => "`simclr stages` lists every kind".to_owned(),
                    };
                    diags.push(
                        Diagnostic::new(
                            *loc,
                            join_path(&join_path("stages", &entry.id), "kind"),
                            format!("unknown stage kind `{name}`"),
                        )
                        .with_help(help),
                    );
                    None
                }
            });
        stages.push(Pending {
            entry,
            kind,
            inputs: Vec::new(),
        });
    }
    let ids: Vec<&str> = stages.iter().map(|s| s.entry.id.as_str()).collect();

    // Inputs.
    for i in 0..stages.len() {
        let entry = stages[i].entry;
        let path = join_path("stages", &entry.id);
        let mut seen = BTreeSet::new();
        for input in &entry.inputs {
            let Some(&from) = index.get(input.from.as_str()) else {
                let help = match closest(
                    &input.from,
                    ids.iter().copied().filter(|id| *id != entry.id),
                ) {
                    Some(best) => format!(
                        "did you mean `{best}`? inputs name stage ids defined under `stages:`"
                    ),
                    None => "inputs name stage ids defined under `stages:`".to_owned(),
                };
                diags.push(
                    Diagnostic::new(
                        input.loc,
                        join_path(&path, "inputs"),
                        format!(
                            "stage `{}` takes input from `{}`, which is not defined",
                            entry.id, input.from
                        ),
                    )
                    .with_help(help),
                );
                continue;
            };
            if from == i {
                diags.push(
                    Diagnostic::new(input.loc, join_path(&path, "inputs"), format!("stage `{}` lists itself as an input", entry.id))
                        .with_help("a stage cannot consume its own output; feedback in a training loop is declared with `credit:`"),
                );
                continue;
            }
            if !seen.insert(from) {
                diags.push(
                    Diagnostic::new(
                        input.loc,
                        join_path(&path, "inputs"),
                        format!("stage `{}` lists input `{}` twice", entry.id, input.from),
                    )
                    .with_help("list each input once"),
                );
                continue;
            }
            if let Some(producer) = stages[from].kind.filter(|k| k.output == OutputPort::None) {
                diags.push(
                    Diagnostic::new(
                        input.loc,
                        join_path(&path, "inputs"),
                        format!(
                            "stage `{}` (kind `{}`) emits nothing, so it cannot feed `{}`",
                            input.from, producer.name, entry.id
                        ),
                    )
                    .with_help(format!(
                        "`{}` ends a pipeline; take `{}`'s input from the stage that feeds it",
                        input.from, entry.id
                    )),
                );
                continue;
            }
            stages[i]
                .inputs
                .push((from, input.capacity.unwrap_or(default_capacity), input.loc));
        }
        if let Some(kind) = stages[i].kind {
            match kind.input {
                InputPorts::None if !entry.inputs.is_empty() => diags.push(
                    Diagnostic::new(entry.inputs[0].loc, join_path(&path, "inputs"), format!("stage `{}` is a source (kind `{}`) and takes no inputs", entry.id, kind.name))
                        .with_help("remove `inputs:` from this stage"),
                ),
                InputPorts::Accepts(_) | InputPorts::Any if entry.inputs.is_empty() => diags.push(
                    Diagnostic::new(entry.id_loc, path.clone(), format!("stage `{}` (kind `{}`) has no inputs, so it would never receive anything", entry.id, kind.name))
                        .with_help(format!("add `inputs: [ID]` naming the stage that feeds it (it takes {})", kind.input)),
                ),
                _ => {}
            }
            if entry.workers > 1 && kind.parallelism == Parallelism::Single {
                let loc = entry.workers_loc.unwrap_or(entry.id_loc);
                diags.push(
                    Diagnostic::new(loc, join_path(&path, "workers"), format!("stage `{}`: kind `{}` runs on one thread, but `workers: {}` was given", entry.id, kind.name, entry.workers))
                        .with_help("remove `workers:` (this kind keeps state that cannot be split across threads)"),
                );
            }
        }
    }

    // Cycles over data edges.
    let adjacency: Vec<Vec<usize>> = {
        let mut adj = vec![Vec::new(); stages.len()];
        for (i, s) in stages.iter().enumerate() {
            for &(from, _, _) in &s.inputs {
                adj[from].push(i);
            }
        }
        adj
    };
    let cycles = find_cycles(&adjacency);
    for cycle in &cycles {
        let first = cycle[0];
        let names: Vec<&str> = cycle
            .iter()
            .chain(std::iter::once(&first))
            .map(|&i| ids[i])
            .collect();
        let (back_from, back_to) = (ids[*cycle.last().unwrap_or(&first)], ids[first]);
        diags.push(
            Diagnostic::new(stages[first].entry.id_loc, join_path("stages", ids[first]), format!("cycle between stages: {}", names.join(" -> ")))
                .with_help(format!("data edges must not loop; if `{back_from}` feeds back to `{back_to}` to pace training, remove it from `{back_to}`'s inputs and declare `credit: {{ from: {back_from} }}` on `{back_to}`")),
        );
    }

    // Credits.
    let mut credits = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        let Some(credit) = &s.entry.credit else {
            continue;
        };
        let path = join_path(&join_path("stages", &s.entry.id), "credit.from");
        let Some(&from) = index.get(credit.from.as_str()) else {
            let help = match closest(&credit.from, ids.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => "name the downstream stage that finishes each step".to_owned(),
            };
            diags.push(
                Diagnostic::new(
                    credit.loc,
                    path,
                    format!(
                        "stage `{}` takes credit from `{}`, which is not defined",
                        s.entry.id, credit.from
                    ),
                )
                .with_help(help),
            );
            continue;
        };
        if !reachable(&adjacency, i, from) || from == i {
            diags.push(
                Diagnostic::new(credit.loc, path, format!("credit from `{}` to `{}` does not close a loop: `{}` is not downstream of `{}`", credit.from, s.entry.id, credit.from, s.entry.id))
                    .with_help("a credit returns from the stage that finishes a step (the optimizer) to the stage that starts it (the encoder)"),
            );
            continue;
        }
        credits.push(Credit {
            from,
            to: i,
            window: credit.window,
        });
    }

    // Port types, in topological order (only meaningful without cycles).
    let order = if cycles.is_empty() {
        topological(&adjacency)
    } else {
        (0..stages.len()).collect()
    };
    let mut out_type: Vec<Option<PortType>> = vec![None; stages.len()];
    let mut type_ok = cycles.is_empty();
    for &i in &order {
        let s = &stages[i];
        let Some(kind) = s.kind else {
            type_ok = false;
            continue;
        };
        let path = join_path("stages", &s.entry.id);
        let mut in_types: Vec<PortType> = Vec::new();
        for &(from, _, loc) in &s.inputs {
            let Some(t) = out_type[from] else { continue };
            if !kind.input.accepts(t) {
                let producer_kind = stages[from].kind.map_or("?", |k| k.name);
                diags.push(
                    Diagnostic::new(loc, join_path(&path, "inputs"), format!("stage `{}` (kind `{}`) takes {}, but its input `{}` (kind `{}`) emits {}", s.entry.id, kind.name, kind.input, ids[from], producer_kind, t))
                        .with_help(converter_help(registry, t, kind.input, ids[from], &s.entry.id)),
                );
                type_ok = false;
            }
            in_types.push(t);
        }
        out_type[i] = match kind.output {
            OutputPort::None => None,
            OutputPort::Emits(t) => Some(t),
            OutputPort::SameAsInput => {
                in_types.dedup();
                match in_types.as_slice() {
                    [t] => Some(*t),
                    [] => None,
                    many => {
                        let list: Vec<_> = many.iter().map(|t| t.name()).collect();
                        diags.push(
                            Diagnostic::new(s.entry.id_loc, path.clone(), format!("stage `{}` (kind `{}`) passes its input through, but its inputs carry different kinds: {}", s.entry.id, kind.name, list.join(", ")))
                                .with_help("give a pass-through stage inputs of one kind only"),
                        );
                        type_ok = false;
                        None
                    }
                }
            }
        };
    }

    // Unconnected outputs. Skipped when some input could not be read or resolved: that input
    // may have been meant for the stage, and the error already reported says so.
    let inputs_unresolved = entries.iter().any(|e| e.inputs_malformed)
        || stages.iter().any(|s| {
            s.entry
                .inputs
                .iter()
                .any(|input| !index.contains_key(input.from.as_str()))
        });
    for (i, s) in stages.iter().enumerate().filter(|_| !inputs_unresolved) {
        let Some(kind) = s.kind else { continue };
        if kind.output != OutputPort::None && adjacency[i].is_empty() {
            let what = out_type[i].map_or_else(String::new, |t| format!(" ({t})"));
            diags.push(
                Diagnostic::new(s.entry.id_loc, join_path("stages", &s.entry.id), format!("the output of stage `{}`{what} goes nowhere: no stage lists it in `inputs`", s.entry.id))
                    .with_help(format!("add `{}` to the inputs of a stage (a `sink` drains any stream), or remove the stage", s.entry.id)),
            );
        }
    }

    // Build every stage whose kind is known: parameters are checked even when the graph has
    // other problems, so one run of `simclr validate` shows them all.
    // Built in topological order, so each sees the stream facts its producers published.
    let mut factories: Vec<Option<StageFactory>> = (0..stages.len()).map(|_| None).collect();
    let mut facts: Vec<StreamFacts> = vec![StreamFacts::default(); stages.len()];
    for &i in &order {
        let s = &stages[i];
        let Some(kind) = s.kind else {
            continue;
        };
        let params_path = join_path(&join_path("stages", &s.entry.id), "params");
        let input_type = s.inputs.first().and_then(|&(from, _, _)| out_type[from]);
        let cx = BuildContext {
            stage_id: &s.entry.id,
            params: &s.entry.params,
            params_path,
            seed: 0,
            device: "cpu",
            precision: "fp32",
            run_dir: Path::new(""),
            workers: s.entry.workers,
            input_type,
            upstream: s
                .inputs
                .first()
                .map(|&(from, _, _)| {
                    let mut f = facts[from].clone();
                    f.incomplete |= stages[from].kind.is_some() && factories[from].is_none();
                    f
                })
                .unwrap_or_default(),
            published: std::cell::RefCell::new(None),
            resume: None,
            max_steps: None,
            definition: "",
            extensions: registry.extensions(),
        };
        match build(kind, cx) {
            Ok((f, published)) => {
                factories[i] = Some(f);
                facts[i] = published;
            }
            Err(e) => {
                diags.push(Diagnostic {
                    loc: Some(e.loc.unwrap_or(s.entry.params.loc)),
                    path: e.path,
                    message: format!(
                        "stage `{}` (kind `{}`): {}",
                        s.entry.id, kind.name, e.message
                    ),
                    help: Some(e.help.unwrap_or_else(|| {
                        format!("`simclr stages {}` lists this kind's parameters", kind.name)
                    })),
                });
            }
        }
    }

    if !diags.is_empty() || !type_ok {
        return None;
    }

    // Assemble in topological order.
    let mut new_index = vec![0; stages.len()];
    for (pos, &i) in order.iter().enumerate() {
        new_index[i] = pos;
    }
    let mut edges = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut factories: Vec<Option<StageFactory>> = factories;
    for &i in &order {
        let s = &stages[i];
        let kind = s.kind?;
        nodes.push(Node {
            id: s.entry.id.clone(),
            kind,
            workers: s.entry.workers,
            threads: if kind.parallelism == Parallelism::Internal {
                1
            } else {
                s.entry.workers
            },
            params: s.entry.params.clone(),
            ordered: matches!(kind.parallelism, Parallelism::Parallel { ordered: true }),
            inputs: Vec::new(),
            outputs: Vec::new(),
            output_type: out_type[i],
            factory: factories[i].take()?,
            facts: std::mem::take(&mut facts[i]),
            loc: s.entry.id_loc,
        });
    }
    for &i in &order {
        for &(from, capacity, _) in &stages[i].inputs {
            let port_type = out_type[from]?;
            let e = edges.len();
            edges.push(Edge {
                from: new_index[from],
                to: new_index[i],
                capacity,
                port_type,
            });
            nodes[new_index[from]].outputs.push(e);
            nodes[new_index[i]].inputs.push(e);
        }
    }
    for c in &mut credits {
        c.from = new_index[c.from];
        c.to = new_index[c.to];
    }
    Some((nodes, edges, credits))
}

fn converter_help(
    registry: &Registry,
    from: PortType,
    wanted: InputPorts,
    producer: &str,
    consumer: &str,
) -> String {
    let converters: Vec<&str> = registry
        .iter()
        .filter(|k| k.input.accepts(from))
        .filter(|k| matches!(k.output, OutputPort::Emits(t) if wanted.accepts(t)))
        .map(|k| k.name)
        .collect();
    if converters.is_empty() {
        format!(
            "no stage kind turns {from} into {wanted}; check that `{consumer}` should really read from `{producer}`"
        )
    } else {
        let list: Vec<String> = converters.iter().map(|c| format!("`{c}`")).collect();
        format!(
            "insert a stage between `{producer}` and `{consumer}` that turns {from} into {wanted}: {}",
            list.join(", ")
        )
    }
}

/// Whether `to` can be reached from `from` over data edges.
fn reachable(adjacency: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; adjacency.len()];
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        for &m in &adjacency[n] {
            if m == to {
                return true;
            }
            if !seen[m] {
                seen[m] = true;
                stack.push(m);
            }
        }
    }
    false
}

/// Kahn's algorithm, taking ready nodes in definition order (stable and deterministic).
fn topological(adjacency: &[Vec<usize>]) -> Vec<usize> {
    let n = adjacency.len();
    let mut indegree = vec![0; n];
    for outs in adjacency {
        for &m in outs {
            indegree[m] += 1;
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(&i) = ready.iter().next() {
        ready.remove(&i);
        order.push(i);
        for &m in &adjacency[i] {
            indegree[m] -= 1;
            if indegree[m] == 0 {
                ready.insert(m);
            }
        }
    }
    order
}

/// One representative cycle per strongly connected component with more than one node, each
/// starting at its lowest index (self-loops are rejected earlier).
fn find_cycles(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adjacency.len();
    let mut component = vec![usize::MAX; n];
    let mut cycles = Vec::new();
    for start in 0..n {
        if component[start] != usize::MAX {
            continue;
        }
        // Nodes reachable from `start` that can reach `start` back form its component.
        let forward = reach_set(adjacency, start);
        let members: Vec<usize> = (0..n)
            .filter(|&m| m == start || (forward[m] && reach_set(adjacency, m)[start]))
            .collect();
        for &m in &members {
            component[m] = start;
        }
        if members.len() > 1 {
            cycles.push(path_back(adjacency, start, &members));
        }
    }
    cycles
}

fn reach_set(adjacency: &[Vec<usize>], from: usize) -> Vec<bool> {
    let mut seen = vec![false; adjacency.len()];
    let mut stack = vec![from];
    while let Some(n) = stack.pop() {
        for &m in &adjacency[n] {
            if !seen[m] {
                seen[m] = true;
                stack.push(m);
            }
        }
    }
    seen
}

/// A shortest path start -> ... -> (back to start) within `members` (BFS).
fn path_back(adjacency: &[Vec<usize>], start: usize, members: &[usize]) -> Vec<usize> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in &adjacency[n] {
            if !members.contains(&m) {
                continue;
            }
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = parent[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    vec![start]
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions (the commonest typo, `sikn` for `sink`) each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let kinds = ["sink", "sequence", "resnet"];
        assert_eq!(closest("sikn", kinds.iter().copied()), Some("sink"));
        assert_eq!(closest("sequense", kinds.iter().copied()), Some("sequence"));
        assert_eq!(closest("transformer", kinds.iter().copied()), None);
    }

    #[test]
    fn finds_each_cycle_once_with_its_path() {
        // 0 -> 1 -> 2 -> 1, 3 -> 3 is not here (self loops are rejected earlier).
        let adj = vec![vec![1], vec![2], vec![1]];
        assert_eq!(find_cycles(&adj), vec![vec![1, 2]]);
        assert!(find_cycles(&[vec![1], vec![2], vec![]]).is_empty());
    }

    #[test]
    fn topological_order_is_stable() {
        let adj = vec![vec![2], vec![2], vec![]];
        assert_eq!(topological(&adj), vec![0, 1, 2]);
    }
}
