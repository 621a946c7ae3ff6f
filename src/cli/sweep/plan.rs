//! A sweep's trials: the axes combined, each trial's overrides applied to the base definition,
//! and every resolved definition validated before anything trains.

use std::path::{Path, PathBuf};

use simclr::config::graph::LoadOptions;
use simclr::config::{Diagnostic, Diagnostics, Registry};
use simclr::core::{Value, ValueKind};

use super::spec::{Budget, Combine, Sweep, substitute};

/// One trial: a combination of axis values and the definition it trains.
#[derive(Clone, Debug)]
pub struct Trial {
    /// 1-based position in the sweep (what `--trial` takes).
    pub index: usize,
    /// Folder name: `axis=value` pairs joined by `,`.
    pub name: String,
    /// (axis, value name), in axis order.
    pub values: Vec<(String, String)>,
    /// (key path, value as one line of YAML): what the trial changes in the base.
    pub overrides: Vec<(String, String)>,
    /// The resolved definition (what the trial's run folder keeps as `definition.yaml`).
    pub text: String,
    /// FNV-1a of `text`: the trial's identity. A trial whose folder holds another identity
    /// is trained again.
    pub identity: String,
    /// The trial's folder (its run folder).
    pub dir: PathBuf,
    /// Training steps, when the data declares its length.
    pub steps: Option<u64>,
    /// Samples per step.
    pub batch: Option<usize>,
}

/// The base definition's stages a budget changes: sources (no inputs) and trainers.
struct Roles {
    sources: Vec<String>,
    trainers: Vec<String>,
}

fn roles(root: &Value) -> Roles {
    let mut roles = Roles {
        sources: Vec::new(),
        trainers: Vec::new(),
    };
    for (k, stage) in root.get("stages").and_then(Value::entries).unwrap_or(&[]) {
        let Some(id) = k.as_str() else { continue };
        let has_inputs = stage
            .get("inputs")
            .is_some_and(|i| !matches!(&i.kind, ValueKind::Seq(s) if s.is_empty()) && !i.is_null());
        if !has_inputs {
            roles.sources.push(id.to_owned());
        }
        if stage.get("kind").and_then(Value::as_str) == Some("nt_xent") {
            roles.trainers.push(id.to_owned());
        }
    }
    roles
}

/// Every trial of `sweep`, resolved and validated with `registry`.
///
/// # Errors
/// Every problem: the sweep file's (an override that does not apply) and each trial's
/// definition's, named by trial.
pub fn plan(sweep: &Sweep, registry: &Registry) -> Result<Vec<Trial>, Vec<Diagnostics>> {
    let base_text = match std::fs::read_to_string(&sweep.base) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Diagnostics::new(
                &sweep.base,
                "",
                vec![Diagnostic {
                    loc: None,
                    path: String::new(),
                    message: format!("cannot read the sweep's base definition: {e}"),
                    help: None,
                }],
            )]);
        }
    };
    let base = match simclr::config::yaml::parse(&base_text) {
        Ok(root) => root,
        Err(e) => {
            let d = Diagnostic::new(e.loc, "", format!("YAML syntax error: {}", e.message));
            return Err(vec![Diagnostics::new(&sweep.base, &base_text, vec![d])]);
        }
    };
    let roles = roles(&base);
    let mut sweep_problems: Vec<Diagnostic> = Vec::new();
    let mut budget_sets: Vec<(String, Value)> = Vec::new();
    let budget_loc = sweep.budget_at;
    match sweep.budget {
        Some(Budget::Epochs(n)) => {
            for id in &roles.sources {
                budget_sets.push((
                    format!("stages.{id}.params.epochs"),
                    Value::new(budget_loc, ValueKind::Int(n as i64)),
                ));
            }
        }
        Some(Budget::Steps(n)) => {
            if roles.trainers.is_empty() {
                sweep_problems.push(Diagnostic::new(
                    budget_loc,
                    "budget",
                    format!(
                        "`budget: {{ steps: {n} }}` needs a trainer (`kind: nt_xent`) in {}",
                        sweep.base.display()
                    ),
                ));
            }
            for id in &roles.trainers {
                budget_sets.push((
                    format!("stages.{id}.params.total_steps"),
                    Value::new(budget_loc, ValueKind::Int(n as i64)),
                ));
            }
        }
        // Part of the definition (the trial's identity); a resumed attempt is given what is
        // left of it on the command line.
        Some(Budget::Seconds(s)) => {
            for id in &roles.trainers {
                budget_sets.push((
                    format!("stages.{id}.params.max_seconds"),
                    Value::new(budget_loc, ValueKind::Float(s)),
                ));
            }
        }
        None => {}
    }
    let combos = combinations(sweep);
    let mut trials = Vec::new();
    let mut problems: Vec<Diagnostics> = Vec::new();
    for (i, combo) in combos.iter().enumerate() {
        let index = i + 1;
        // `diagonal: once`: an axis whose value an earlier axis took adds nothing.
        let active: Vec<bool> = combo
            .iter()
            .enumerate()
            .map(|(a, &v)| {
                !(sweep.diagonal_once
                    && (0..a).any(|b| {
                        sweep.axes[b].values[combo[b]].name == sweep.axes[a].values[v].name
                    }))
            })
            .collect();
        let bound = |name: &str| -> Option<Value> {
            let a = sweep.axes.iter().position(|x| x.name == name)?;
            Some(if active[a] {
                sweep.axes[a].values[combo[a]].bound.clone()
            } else {
                Value::new(simclr::core::Loc::default(), ValueKind::Null)
            })
        };
        // The budget, then `set`, then the axes: the more specific a value, the later it
        // applies (an axis over `epochs` wins over `budget: { epochs }`).
        let mut sets: Vec<(String, Value)> = budget_sets.clone();
        sets.extend(
            sweep
                .set
                .iter()
                .map(|(p, v)| (p.clone(), substitute(v, &bound))),
        );
        for (a, &v) in combo.iter().enumerate() {
            if active[a] {
                sets.extend(sweep.axes[a].values[v].sets.iter().cloned());
            }
        }
        let values: Vec<(String, String)> = combo
            .iter()
            .enumerate()
            .map(|(a, &v)| {
                (
                    sweep.axes[a].name.clone(),
                    sweep.axes[a].values[v].name.clone(),
                )
            })
            .collect();
        let name = values
            .iter()
            .map(|(a, v)| format!("{a}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut root = base.clone();
        let mut bad = false;
        for (path, value) in &sets {
            if let Err(message) = simclr::config::set_path(&mut root, path, value.clone(), false) {
                sweep_problems.push(Diagnostic::new(
                    value.loc,
                    path.clone(),
                    format!(
                        "trial {index} ({name}): `{path}` cannot be set in {}: {message}",
                        sweep.base.display()
                    ),
                ));
                bad = true;
            }
        }
        if bad {
            continue;
        }
        let text = simclr::config::yaml::emit(&root);
        let identity = simclr::model::stage::checkpoint::text_hash(&text);
        let dir = sweep.out.join(&name);
        let label = PathBuf::from(format!("{} trial {index} ({name})", sweep.file.display()));
        let options = LoadOptions {
            run_dir: Some(dir.clone()),
            ..LoadOptions::default()
        };
        let (mut steps, mut batch) = (None, None);
        match simclr::config::load_str(&label, &text, registry, &options) {
            Err(d) => problems.push(d),
            Ok(graph) => {
                if let Some((total_steps, facts)) = trainer_input(&graph) {
                    steps = total_steps.or(facts.total_batches());
                    batch = facts.batch_size;
                    if let (Some(Budget::Steps(want)), Some(have)) =
                        (sweep.budget, facts.total_batches())
                        && have < want
                    {
                        sweep_problems.push(Diagnostic::new(
                            budget_loc,
                            "budget",
                            format!("trial {index} ({name}): the data gives {have} batches, fewer than the budget's {want} steps"),
                        ).with_help("raise the source's `epochs` in `set:`, or lower the budget"));
                    }
                }
            }
        }
        trials.push(Trial {
            index,
            name,
            values,
            overrides: sets.iter().map(|(p, v)| (p.clone(), flow(v))).collect(),
            text,
            identity,
            dir,
            steps,
            batch,
        });
    }
    if !sweep_problems.is_empty() {
        problems.insert(
            0,
            Diagnostics::new(&sweep.file, &sweep.text, sweep_problems),
        );
    }
    if problems.is_empty() {
        Ok(trials)
    } else {
        Err(problems)
    }
}

/// The trainer's explicit `total_steps` and the facts of the stream it trains on.
fn trainer_input(
    graph: &simclr::config::Graph,
) -> Option<(Option<u64>, simclr::core::StreamFacts)> {
    let (i, node) = graph
        .nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.kind.name == "nt_xent")?;
    let edge = graph.edges.iter().find(|e| e.to == i)?;
    let total_steps = node.params.get("total_steps").and_then(|v| match v.kind {
        ValueKind::Int(n) if n > 0 => Some(n as u64),
        _ => None,
    });
    Some((total_steps, graph.nodes[edge.from].facts.clone()))
}

/// The trials' positions in each axis: every combination (the first axis slowest), or the
/// i-th value of every axis.
fn combinations(sweep: &Sweep) -> Vec<Vec<usize>> {
    match sweep.combine {
        Combine::Zip => {
            let n = sweep.axes.iter().map(|a| a.values.len()).min().unwrap_or(0);
            (0..n).map(|i| vec![i; sweep.axes.len()]).collect()
        }
        Combine::Grid => {
            let mut out: Vec<Vec<usize>> = vec![Vec::new()];
            for axis in &sweep.axes {
                out = out
                    .into_iter()
                    .flat_map(|prefix| {
                        (0..axis.values.len()).map(move |v| {
                            let mut c = prefix.clone();
                            c.push(v);
                            c
                        })
                    })
                    .collect();
            }
            if sweep.axes.is_empty() {
                Vec::new()
            } else {
                out
            }
        }
    }
}

/// A value as one line of YAML (flow style), for listings.
pub fn flow(v: &Value) -> String {
    match &v.kind {
        ValueKind::Null => "null".into(),
        ValueKind::Bool(b) => b.to_string(),
        ValueKind::Int(i) => i.to_string(),
        ValueKind::UInt(u) => u.to_string(),
        ValueKind::Float(f) => format!("{f:?}"),
        ValueKind::Str(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
                && s.parse::<f64>().is_err()
                && !matches!(
                    s.as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                );
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_else(|_| s.clone())
            }
        }
        ValueKind::Seq(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        ValueKind::Map(entries) => format!(
            "{{ {} }}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", flow(k), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Trials by 1-based index (`--trial I`).
pub fn pick(trials: &[Trial], index: usize) -> Option<&Trial> {
    trials.iter().find(|t| t.index == index)
}

/// The folder a trial of another identity is moved to, so nothing a user trained is lost.
pub fn superseded(out: &Path, name: &str, identity: &str) -> PathBuf {
    out.join(".superseded").join(format!("{name}-{identity}"))
}
