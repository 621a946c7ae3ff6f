//! Checking a definition's stages and connecting them, phase by phase: ids and kinds, inputs,
//! cycles, credits, port types, unconnected outputs, then every stage's own `build` and the
//! graph's assembly in topological order. Every problem is collected, in that order, so one
//! `simclr validate` reports them all.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use simclr_core::value::join_path;
use simclr_core::{
    BuildContext, InputPorts, Loc, OutputPort, Parallelism, PortType, StageFactory, StageKind,
    StreamFacts,
};

use crate::definition::StageEntry;
use crate::diagnostic::{Diagnostic, closest};
use crate::graph::{Credit, Edge, Node};
use crate::registry::Registry;
use crate::topology::{find_cycles, reachable, topological};

pub(crate) type Built = (Vec<Node>, Vec<Edge>, Vec<Credit>);

struct Pending<'a> {
    entry: &'a StageEntry,
    kind: Option<&'static StageKind>,
    /// (producer index, capacity, loc of the input entry)
    inputs: Vec<(usize, usize, Loc)>,
}

/// What one stage's `build` gets from the definition (seed, device, run folder...).
pub(crate) type BuildFn<'b> = dyn Fn(
        &'static StageKind,
        BuildContext<'_>,
    ) -> Result<(StageFactory, StreamFacts), simclr_core::ParamError>
    + 'b;

/// Check the stages and connect them: ids and kinds, inputs, cycles, credits, port types and
/// unconnected outputs, then build every stage whose kind is known (parameters are checked
/// even when the graph has other problems, so one `simclr validate` shows them all) and
/// assemble the graph in topological order. Every problem goes into `diags`, in that order.
pub(crate) fn resolve(
    entries: &[StageEntry],
    default_capacity: usize,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
    build: &BuildFn<'_>,
) -> Option<Built> {
    let (index, mut stages) = collect_stages(entries, registry, diags);
    let ids: Vec<&str> = stages.iter().map(|s| s.entry.id.as_str()).collect();
    connect_inputs(&mut stages, &index, &ids, default_capacity, diags);
    let (adjacency, cycles) = check_cycles(&stages, &ids, diags);
    let credits = resolve_credits(&stages, &index, &ids, &adjacency, diags);
    // Port types, in topological order (only meaningful without cycles).
    let order = if cycles.is_empty() {
        topological(&adjacency)
    } else {
        (0..stages.len()).collect()
    };
    let (out_type, types_ok) = port_types(&stages, &order, &ids, registry, diags);
    check_credit_rates(&stages, &ids, &credits, &out_type, diags);
    let type_ok = types_ok && cycles.is_empty();
    check_outputs(entries, &stages, &index, &adjacency, &out_type, diags);
    let (factories, facts) = build_stages(&stages, &order, &out_type, registry, diags, build);
    if !diags.is_empty() || !type_ok {
        return None;
    }
    assemble(&stages, &order, &out_type, factories, facts, credits)
}

/// Stage ids (later duplicates are reported and dropped) and kinds (unknown ones reported).
fn collect_stages<'a>(
    entries: &'a [StageEntry],
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) -> (HashMap<&'a str, usize>, Vec<Pending<'a>>) {
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
    (index, stages)
}

/// Resolve every stage's inputs to producers, and check sources, sinks and `workers`.
fn connect_inputs(
    stages: &mut [Pending<'_>],
    index: &HashMap<&str, usize>,
    ids: &[&str],
    default_capacity: usize,
    diags: &mut Vec<Diagnostic>,
) {
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
}

/// The data edges as adjacency lists, and every cycle over them (reported).
fn check_cycles(
    stages: &[Pending<'_>],
    ids: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
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
    (adjacency, cycles)
}

/// Credits: each from a stage downstream of the one it paces.
fn resolve_credits(
    stages: &[Pending<'_>],
    index: &HashMap<&str, usize>,
    ids: &[&str],
    adjacency: &[Vec<usize>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Credit> {
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
        if !reachable(adjacency, i, from) || from == i {
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
    credits
}

/// The port type each stage emits, checking that every input fits its consumer; `false`
/// when a type is unknown or wrong.
/// A credit returns one token per message the giver finishes, and the taker spends one per
/// message it emits. A taker that emits one message per sample (images, view pairs) paced by
/// a giver that finishes one per batch would wait for the second credit forever: refuse it.
fn check_credit_rates(
    stages: &[Pending<'_>],
    ids: &[&str],
    credits: &[Credit],
    out_type: &[Option<PortType>],
    diags: &mut Vec<Diagnostic>,
) {
    let per_sample = |t: PortType| matches!(t, PortType::Images | PortType::ViewPairs);
    let per_batch = |t: PortType| {
        matches!(
            t,
            PortType::Batches | PortType::Features | PortType::Projections | PortType::TrainStates
        )
    };
    for c in credits {
        let (Some(taken), Some(given)) = (out_type[c.to], out_type[c.from]) else {
            continue;
        };
        if per_sample(taken) && per_batch(given) {
            let Some(loc) = stages[c.to].entry.credit.as_ref().map(|k| k.loc) else {
                continue;
            };
            diags.push(
                Diagnostic::new(
                    loc,
                    join_path(&join_path("stages", ids[c.to]), "credit.from"),
                    format!(
                        "`{}` emits one message per sample ({}) but `{}` returns one credit per batch: the run would wait for the second credit forever",
                        ids[c.to],
                        taken.name(),
                        ids[c.from]
                    ),
                )
                .with_help(format!(
                    "pace the stage that takes the batches instead (the encoder: `credit: {{ from: {} }}`)",
                    ids[c.from]
                )),
            );
        }
    }
}

fn port_types(
    stages: &[Pending<'_>],
    order: &[usize],
    ids: &[&str],
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Option<PortType>>, bool) {
    let mut out_type: Vec<Option<PortType>> = vec![None; stages.len()];
    let mut type_ok = true;
    for &i in order {
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
    (out_type, type_ok)
}

/// Outputs no stage reads. Skipped when some input could not be read or resolved: that input
/// may have been meant for the stage, and the error already reported says so.
fn check_outputs(
    entries: &[StageEntry],
    stages: &[Pending<'_>],
    index: &HashMap<&str, usize>,
    adjacency: &[Vec<usize>],
    out_type: &[Option<PortType>],
    diags: &mut Vec<Diagnostic>,
) {
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
}

/// Build every stage whose kind is known, in topological order, so each sees the stream facts
/// its producers published.
fn build_stages(
    stages: &[Pending<'_>],
    order: &[usize],
    out_type: &[Option<PortType>],
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
    build: &BuildFn<'_>,
) -> (Vec<Option<StageFactory>>, Vec<StreamFacts>) {
    let mut factories: Vec<Option<StageFactory>> = (0..stages.len()).map(|_| None).collect();
    let mut facts: Vec<StreamFacts> = vec![StreamFacts::default(); stages.len()];
    for &i in order {
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
            device: simclr_core::DeviceSpec::Cpu,
            precision: simclr_core::Precision::Fp32,
            distributed: simclr_core::Distributed::default(),
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
            max_seconds: None,
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
    (factories, facts)
}

/// The graph, in topological order.
fn assemble(
    stages: &[Pending<'_>],
    order: &[usize],
    out_type: &[Option<PortType>],
    mut factories: Vec<Option<StageFactory>>,
    mut facts: Vec<StreamFacts>,
    mut credits: Vec<Credit>,
) -> Option<Built> {
    let mut new_index = vec![0; stages.len()];
    for (pos, &i) in order.iter().enumerate() {
        new_index[i] = pos;
    }
    let mut edges = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    for &i in order {
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
    for &i in order {
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
