//! The sweep file, read strictly: every problem is collected and reported with line:column,
//! as definitions are. What a sweep file says is documented in docs/sweeps.md.

use std::path::{Path, PathBuf};

use simclr::config::diagnostic::closest;
use simclr::config::{Diagnostic, Diagnostics};
use simclr::core::{Value, ValueKind};

/// A sweep file, read.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The file.
    pub file: PathBuf,
    /// Its text.
    pub text: String,
    /// `name` (default: the file's stem).
    pub name: String,
    /// `base`: the definition every trial starts from (relative to the sweep file's folder).
    pub base: PathBuf,
    /// `out`: the sweep folder (default `runs/sweeps/<name>`).
    pub out: PathBuf,
    /// `set`: overrides of every trial, whose values may name axes as `$axis`.
    pub set: Vec<(String, Value)>,
    /// `axes`, in order (the first varies slowest in a grid).
    pub axes: Vec<Axis>,
    /// `combine`.
    pub combine: Combine,
    /// `diagonal: once`: in a grid, a later axis that takes the value name an earlier one took
    /// adds nothing (SimCLR's Figure 5: the diagonal is one transformation, not the same twice).
    pub diagonal_once: bool,
    /// `budget`.
    pub budget: Option<Budget>,
    /// Where `budget` is written (where its problems are reported).
    pub budget_at: simclr::core::Loc,
    /// `evaluate`.
    pub evaluate: Evaluate,
    /// `metric`: the column results are sorted and drawn by.
    pub metric: Metric,
}

/// One axis: a name and its values.
#[derive(Clone, Debug)]
pub struct Axis {
    /// `name`.
    pub name: String,
    /// Its values, in order.
    pub values: Vec<AxisValue>,
}

/// One value of an axis.
#[derive(Clone, Debug)]
pub struct AxisValue {
    /// The value's name (a scalar's text, a mapping key, or its position).
    pub name: String,
    /// What `$axis` stands for in `set`.
    pub bound: Value,
    /// The overrides the value makes (`path`/`paths`, or a variant's mapping).
    pub sets: Vec<(String, Value)>,
}

/// How axes combine into trials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Every combination.
    Grid,
    /// The i-th value of every axis together (axes of equal length).
    Zip,
}

/// How long each trial trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Passes over the data (every source's `epochs`).
    Epochs(u64),
    /// Training steps (the trainer's `total_steps`; the data must give that many batches).
    Steps(u64),
    /// Seconds of training steps (`simclr run --max-seconds`, over every attempt of the
    /// trial); the schedule keeps the length the definition gives it.
    Seconds(f64),
}

/// What each trained encoder is scored with.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluate {
    /// Weighted kNN (`k`, `temperature`).
    pub knn: Option<(usize, f64)>,
    /// Linear probe (`iterations`, `l2`).
    pub linear: Option<(usize, Option<f64>)>,
    /// Which features: `trained` (h), `projection` (z).
    pub features: Vec<String>,
    /// First N training images.
    pub train_limit: Option<usize>,
    /// First N test images.
    pub test_limit: Option<usize>,
}

impl Evaluate {
    /// Every (protocol, features) pair scored, in column order.
    pub fn columns(&self) -> Vec<(&'static str, String)> {
        let mut columns = Vec::new();
        for (protocol, on) in [
            ("knn", self.knn.is_some()),
            ("linear", self.linear.is_some()),
        ] {
            if on {
                for f in &self.features {
                    columns.push((protocol, f.clone()));
                }
            }
        }
        columns
    }

    /// What changes the scores, in words (a trained trial is scored again when it changes).
    pub fn identity(&self) -> String {
        let mut parts = Vec::new();
        if let Some((k, t)) = self.knn {
            parts.push(format!("knn k={k} temperature={t}"));
        }
        if let Some((iterations, l2)) = self.linear {
            let l2 = l2.map_or_else(|| "chosen".to_owned(), |l| l.to_string());
            parts.push(format!("linear iterations={iterations} l2={l2}"));
        }
        let limit = |l: Option<usize>| l.map_or_else(|| "all".to_owned(), |n| n.to_string());
        parts.push(format!("features={}", self.features.join("+")));
        parts.push(format!(
            "train={} test={}",
            limit(self.train_limit),
            limit(self.test_limit)
        ));
        parts.join("; ")
    }
}

/// A (protocol, features) column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// `knn` or `linear`.
    pub protocol: &'static str,
    /// `trained` or `projection`.
    pub features: String,
}

impl Metric {
    /// `knn`, `linear/projection`: how the file and the tables name it.
    pub fn label(&self) -> String {
        if self.features == "trained" {
            self.protocol.to_owned()
        } else {
            format!("{}/{}", self.protocol, self.features)
        }
    }
}

const KEYS: &[&str] = &[
    "name",
    "description",
    "base",
    "out",
    "set",
    "axes",
    "combine",
    "diagonal",
    "budget",
    "evaluate",
    "metric",
];

/// Problems found while reading one file.
struct Problems(Vec<Diagnostic>);

impl Problems {
    fn at(&mut self, v: &Value, path: &str, message: impl Into<String>) {
        self.0.push(Diagnostic::new(v.loc, path, message));
    }
    fn help(&mut self, v: &Value, path: &str, message: impl Into<String>, help: &str) {
        self.0
            .push(Diagnostic::new(v.loc, path, message).with_help(help.to_owned()));
    }
}

/// Read and check `file`: every problem, located.
///
/// # Errors
/// The problems, as definitions report them.
pub fn read(file: &Path) -> Result<Sweep, Diagnostics> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            return Err(Diagnostics::new(
                file,
                "",
                vec![Diagnostic {
                    loc: None,
                    path: String::new(),
                    message: format!("cannot read the sweep file: {e}"),
                    help: Some("shipped sweeps live in definitions/sweeps/".into()),
                }],
            ));
        }
    };
    parse(file, &text)
}

/// Read and check a sweep held in memory; `file` names it (and `base` is relative to its folder).
///
/// # Errors
/// Every problem found, located.
pub fn parse(file: &Path, text: &str) -> Result<Sweep, Diagnostics> {
    let root = match simclr::config::yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let d = Diagnostic::new(e.loc, "", format!("YAML syntax error: {}", e.message))
                .with_help("check indentation, brackets and quotes around this point");
            return Err(Diagnostics::new(file, text, vec![d]));
        }
    };
    let mut p = Problems(Vec::new());
    let Some(entries) = root.entries() else {
        p.help(
            &root,
            "",
            format!("a sweep file is a mapping, not {}", root.describe()),
            "start from a shipped sweep: definitions/sweeps/",
        );
        return Err(Diagnostics::new(file, text, p.0));
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in entries {
        match k.as_str() {
            Some(key) if KEYS.contains(&key) => {
                if seen.contains(&key) {
                    p.at(k, key, format!("`{key}` is given twice"));
                }
                seen.push(key);
            }
            Some(key) => {
                let hint = closest(key, KEYS.iter().copied())
                    .map_or_else(String::new, |c| format!("did you mean `{c}`? "));
                p.help(
                    k,
                    key,
                    format!("unknown key `{key}` in a sweep file"),
                    &format!("{hint}the keys are: {}", KEYS.join(", ")),
                );
            }
            None => p.at(k, "", "a key of a sweep file must be a string"),
        }
    }
    let get = |key: &str| root.get(key);
    let name = match get("name") {
        Some(v) => match v.as_str() {
            Some(s) if !s.trim().is_empty() => s.to_owned(),
            _ => {
                p.at(v, "name", "`name` must be a non-empty string");
                String::new()
            }
        },
        None => file
            .file_stem()
            .map_or_else(|| "sweep".to_owned(), |s| s.to_string_lossy().into_owned()),
    };
    let folder = file.parent().unwrap_or(Path::new(""));
    let base = match get("base") {
        Some(v) => match v.as_str() {
            Some(s) if !s.is_empty() => {
                let base = folder.join(s);
                if !base.is_file() {
                    p.help(
                        v,
                        "base",
                        format!("the base definition {} does not exist", base.display()),
                        "`base` is relative to the sweep file's folder",
                    );
                }
                base
            }
            _ => {
                p.at(v, "base", "`base` must be the path of a definition file");
                PathBuf::new()
            }
        },
        None => {
            p.0.push(
                Diagnostic::new(
                    root.loc,
                    "base",
                    "a sweep needs `base:`, the definition every trial starts from",
                )
                .with_help(
                    "e.g. `base: ../fashion-mnist.yaml` (relative to the sweep file's folder)",
                ),
            );
            PathBuf::new()
        }
    };
    let out = match get("out") {
        Some(v) => match v.as_str() {
            Some(s) if !s.is_empty() => PathBuf::from(s),
            _ => {
                p.at(v, "out", "`out` must be a folder path");
                PathBuf::new()
            }
        },
        None => Path::new("runs").join("sweeps").join(&name),
    };
    let set = get("set").map_or_else(Vec::new, |v| overrides(v, "set", &mut p));
    let axes = match get("axes") {
        Some(v) => axes(v, &mut p),
        None => {
            p.0.push(
                Diagnostic::new(root.loc, "axes", "a sweep needs `axes:`, what varies between trials")
                    .with_help("e.g. `axes: [{ name: temperature, path: stages.train.params.temperature, values: [0.1, 0.5] }]`"),
            );
            Vec::new()
        }
    };
    let combine = match get("combine") {
        None => Combine::Grid,
        Some(v) => match v.as_str() {
            Some("grid") => Combine::Grid,
            Some("zip") => Combine::Zip,
            _ => {
                p.help(
                    v,
                    "combine",
                    "`combine` is `grid` or `zip`",
                    "grid: every combination; zip: the i-th values together",
                );
                Combine::Grid
            }
        },
    };
    if combine == Combine::Zip
        && let Some(first) = axes.first()
    {
        for (a, node) in axes.iter().zip(axis_nodes(get("axes"))) {
            if a.values.len() != first.values.len() {
                p.at(
                    node,
                    "axes",
                    format!(
                        "`combine: zip` takes axes of equal length: `{}` has {} values, `{}` {}",
                        a.name,
                        a.values.len(),
                        first.name,
                        first.values.len()
                    ),
                );
            }
        }
    }
    let diagonal_once = match get("diagonal") {
        None => false,
        Some(v) => match v.as_str() {
            Some("once") => {
                if axes.len() < 2 || combine != Combine::Grid {
                    p.at(
                        v,
                        "diagonal",
                        "`diagonal: once` needs a grid of two axes or more",
                    );
                }
                true
            }
            Some("twice") => false,
            _ => {
                p.help(v, "diagonal", "`diagonal` is `once` or `twice`", "once: a trial whose axes take the same value applies it once (SimCLR's Figure 5 diagonal)");
                false
            }
        },
    };
    let budget_at = get("budget").map_or(root.loc, |v| v.loc);
    let budget = get("budget").and_then(|v| budget(v, &mut p));
    let evaluate = evaluate(get("evaluate"), &root, &mut p);
    let metric = metric(get("metric"), &evaluate, &mut p);
    // Every axis must change something: a path, a variant, or a `$axis` in `set`.
    let mut used: Vec<String> = Vec::new();
    for (_, v) in &set {
        placeholders(v, &mut used);
    }
    for (a, node) in axes.iter().zip(axis_nodes(get("axes"))) {
        let changes = a.values.iter().any(|v| !v.sets.is_empty());
        if !a.values.is_empty() && !changes && !used.contains(&a.name) {
            p.help(
                node,
                "axes",
                format!("axis `{}` changes nothing: it has no `path`, `paths` or `variants`, and `set` does not use `${}`", a.name, a.name),
                "give it `path: stages.<id>.params.<key>`, or write `$name` in a `set` value",
            );
        }
    }
    for (path, v) in &set {
        check_placeholders(v, path, &axes, &mut p);
    }
    if !p.0.is_empty() {
        return Err(Diagnostics::new(file, text, p.0));
    }
    Ok(Sweep {
        file: file.to_owned(),
        text: text.to_owned(),
        name,
        base,
        out,
        set,
        axes,
        combine,
        diagonal_once,
        budget,
        budget_at,
        evaluate,
        metric,
    })
}

fn axis_nodes(axes: Option<&Value>) -> Vec<&Value> {
    match axes.map(|a| &a.kind) {
        Some(ValueKind::Seq(items)) => items.iter().collect(),
        _ => Vec::new(),
    }
}

/// A mapping of `dotted.path: value` overrides.
fn overrides(v: &Value, at: &str, p: &mut Problems) -> Vec<(String, Value)> {
    let Some(entries) = v.entries() else {
        p.help(
            v,
            at,
            format!(
                "`{at}` must be a mapping of key paths to values, not {}",
                v.describe()
            ),
            "e.g. `stages.train.params.temperature: 0.2`",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, value) in entries {
        match k.as_str() {
            Some(path) if !path.is_empty() && !path.split('.').any(str::is_empty) => {
                out.push((path.to_owned(), value.clone()));
            }
            _ => p.help(
                k,
                at,
                "a key path is dotted keys, e.g. `stages.views.params.t`",
                "the same paths `simclr run --set` takes",
            ),
        }
    }
    out
}

fn axes(v: &Value, p: &mut Problems) -> Vec<Axis> {
    let ValueKind::Seq(items) = &v.kind else {
        p.help(
            v,
            "axes",
            format!("`axes` must be a list of axes, not {}", v.describe()),
            "each axis: `{ name: ..., path: ..., values: [...] }` or `{ name: ..., variants: {...} }`",
        );
        return Vec::new();
    };
    if items.is_empty() {
        p.at(
            v,
            "axes",
            "`axes` is empty: a sweep needs at least one axis",
        );
    }
    let mut out: Vec<Axis> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("axes[{i}]");
        if let Some(axis) = axis(item, &at, p) {
            if out.iter().any(|a| a.name == axis.name) {
                p.at(item, &at, format!("two axes are named `{}`", axis.name));
            }
            out.push(axis);
        }
    }
    out
}

const AXIS_KEYS: &[&str] = &["name", "path", "paths", "values", "variants"];

fn axis(v: &Value, at: &str, p: &mut Problems) -> Option<Axis> {
    let Some(entries) = v.entries() else {
        p.at(
            v,
            at,
            format!(
                "an axis is a mapping (`name`, `path`, `values` or `variants`), not {}",
                v.describe()
            ),
        );
        return None;
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or("");
        if !AXIS_KEYS.contains(&key) {
            let hint = closest(key, AXIS_KEYS.iter().copied())
                .map_or_else(String::new, |c| format!("did you mean `{c}`? "));
            p.help(
                k,
                at,
                format!("unknown key `{key}` in an axis"),
                &format!("{hint}an axis has: {}", AXIS_KEYS.join(", ")),
            );
        }
    }
    let name = match v.get("name").map(|n| (n, n.as_str())) {
        Some((_, Some(s))) if valid_name(s) => s.to_owned(),
        Some((n, _)) => {
            p.at(
                n,
                &format!("{at}.name"),
                "an axis name is letters, digits, `_` and `-`",
            );
            return None;
        }
        None => {
            p.at(v, at, "an axis needs a `name`");
            return None;
        }
    };
    let at = format!("{at} ({name})");
    let paths: Vec<String> = match (v.get("path"), v.get("paths")) {
        (Some(_), Some(ps)) => {
            p.at(ps, &at, "give `path` or `paths`, not both");
            Vec::new()
        }
        (Some(one), None) => match one.as_str() {
            Some(s) if is_path(s) => vec![s.to_owned()],
            _ => {
                p.help(
                    one,
                    &at,
                    "`path` is a dotted key path",
                    "e.g. `stages.train.params.temperature`",
                );
                Vec::new()
            }
        },
        (None, Some(many)) => match &many.kind {
            ValueKind::Seq(items) if !items.is_empty() => items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) if is_path(s) => Some(s.to_owned()),
                    _ => {
                        p.at(i, &at, "each of `paths` is a dotted key path");
                        None
                    }
                })
                .collect(),
            _ => {
                p.at(many, &at, "`paths` is a non-empty list of dotted key paths");
                Vec::new()
            }
        },
        (None, None) => Vec::new(),
    };
    let mut values = Vec::new();
    match (v.get("values"), v.get("variants")) {
        (Some(_), Some(variants)) => {
            p.at(variants, &at, "give `values` or `variants`, not both");
        }
        (None, None) => {
            p.help(
                v,
                &at,
                format!("axis `{name}` has no `values` or `variants`"),
                "e.g. `values: [0.1, 0.2, 0.5]`",
            );
        }
        (Some(list), None) => {
            let named: Vec<(String, &Value, &Value)> = match &list.kind {
                ValueKind::Seq(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        (
                            scalar_name(item).unwrap_or_else(|| (i + 1).to_string()),
                            item,
                            item,
                        )
                    })
                    .collect(),
                ValueKind::Map(entries) => entries
                    .iter()
                    .filter_map(|(k, item)| match k.as_str() {
                        Some(n) if valid_value_name(n) => Some((n.to_owned(), k, item)),
                        _ => {
                            p.at(k, &at, "a value's name is letters, digits and `_ - . +`");
                            None
                        }
                    })
                    .collect(),
                _ => {
                    p.help(
                        list,
                        &at,
                        format!(
                            "`values` is a list or a mapping of named values, not {}",
                            list.describe()
                        ),
                        "e.g. `values: [64, 128]` or `values: { crop: [], blur: [...] }`",
                    );
                    Vec::new()
                }
            };
            if named.is_empty() && matches!(list.kind, ValueKind::Seq(_) | ValueKind::Map(_)) {
                p.at(list, &at, format!("axis `{name}` has no values"));
            }
            for (vname, node, item) in named {
                let mut sets = Vec::new();
                if paths.len() == 1 {
                    sets.push((paths[0].clone(), item.clone()));
                } else if paths.len() > 1 {
                    match &item.kind {
                        ValueKind::Seq(parts) if parts.len() == paths.len() => {
                            sets.extend(paths.iter().cloned().zip(parts.iter().cloned()));
                        }
                        _ => p.at(
                            node,
                            &at,
                            format!(
                                "with {} `paths`, each value is a list of {} values, one per path",
                                paths.len(),
                                paths.len()
                            ),
                        ),
                    }
                }
                if values.iter().any(|x: &AxisValue| x.name == vname) {
                    p.at(
                        node,
                        &at,
                        format!("axis `{name}` has two values named `{vname}`"),
                    );
                }
                values.push(AxisValue {
                    name: vname,
                    bound: item.clone(),
                    sets,
                });
            }
        }
        (None, Some(variants)) => {
            if !paths.is_empty() {
                p.at(
                    variants,
                    &at,
                    "a variant names its own key paths; `path`/`paths` go with `values`",
                );
            }
            match variants.entries() {
                Some(entries) if !entries.is_empty() => {
                    for (k, item) in entries {
                        let Some(vname) = k.as_str().filter(|n| valid_value_name(n)) else {
                            p.at(k, &at, "a variant's name is letters, digits and `_ - . +`");
                            continue;
                        };
                        if values.iter().any(|x: &AxisValue| x.name == vname) {
                            p.at(
                                k,
                                &at,
                                format!("axis `{name}` has two variants named `{vname}`"),
                            );
                        }
                        let sets = overrides(item, &format!("{at}.variants.{vname}"), p);
                        values.push(AxisValue {
                            name: vname.to_owned(),
                            bound: Value::new(k.loc, ValueKind::Str(vname.to_owned())),
                            sets,
                        });
                    }
                }
                _ => p.help(
                    variants,
                    &at,
                    "`variants` is a mapping of variant names to overrides",
                    "e.g. `variants: { linear: { stages.head.params.head: linear } }`",
                ),
            }
        }
    }
    Some(Axis { name, values })
}

fn budget(v: &Value, p: &mut Problems) -> Option<Budget> {
    let entries = v.entries().filter(|e| e.len() == 1);
    let Some([(k, n)]) = entries else {
        p.help(v, "budget", "`budget` is one of `{ epochs: N }`, `{ steps: N }` or `{ seconds: S }`", "epochs: every source's passes; steps: the trainer's total steps; seconds: training time");
        return None;
    };
    if k.as_str() == Some("seconds") {
        return match n.kind {
            ValueKind::Int(i) if i > 0 => Some(Budget::Seconds(i as f64)),
            ValueKind::Float(x) if x > 0.0 && x.is_finite() => Some(Budget::Seconds(x)),
            _ => {
                p.at(n, "budget", "the budget's seconds are a number above 0");
                None
            }
        };
    }
    let count = match n.kind {
        ValueKind::Int(i) if i > 0 => i as u64,
        _ => {
            p.at(n, "budget", "the budget is a whole number above 0");
            return None;
        }
    };
    match k.as_str() {
        Some("epochs") => Some(Budget::Epochs(count)),
        Some("steps") => Some(Budget::Steps(count)),
        _ => {
            p.help(
                k,
                "budget",
                format!("unknown budget `{}`", k.as_str().unwrap_or("?")),
                "`epochs`, `steps` or `seconds`",
            );
            None
        }
    }
}

const EVAL_KEYS: &[&str] = &["knn", "linear", "features", "train_limit", "test_limit"];

fn evaluate(v: Option<&Value>, root: &Value, p: &mut Problems) -> Evaluate {
    let mut e = Evaluate {
        knn: None,
        linear: None,
        features: vec!["trained".into()],
        train_limit: None,
        test_limit: None,
    };
    let Some(v) = v else {
        p.0.push(
            Diagnostic::new(
                root.loc,
                "evaluate",
                "a sweep needs `evaluate:`, how each trained encoder is scored",
            )
            .with_help(
                "e.g. `evaluate: { knn: { k: 200 }, train_limit: 10000, test_limit: 2000 }`",
            ),
        );
        return e;
    };
    let Some(entries) = v.entries() else {
        p.at(
            v,
            "evaluate",
            format!("`evaluate` is a mapping, not {}", v.describe()),
        );
        return e;
    };
    for (k, item) in entries {
        let key = k.as_str().unwrap_or("");
        let at = format!("evaluate.{key}");
        match key {
            "knn" => {
                let (mut kk, mut t) = (200usize, 0.1f64);
                for (sk, sv) in item.entries().unwrap_or(&[]) {
                    match (sk.as_str(), &sv.kind) {
                        (Some("k"), ValueKind::Int(n)) if *n > 0 => kk = *n as usize,
                        (Some("temperature"), ValueKind::Float(x)) if *x > 0.0 => t = *x,
                        (Some("temperature"), ValueKind::Int(x)) if *x > 0 => t = *x as f64,
                        (Some(name @ ("k" | "temperature")), _) => {
                            p.at(sv, &at, format!("`{name}` must be a number above 0"))
                        }
                        _ => p.help(
                            sk,
                            &at,
                            "unknown key of `knn`",
                            "`k` (neighbours, 200) and `temperature` (0.1)",
                        ),
                    }
                }
                if !item.is_null() && item.entries().is_none() {
                    p.at(item, &at, "`knn` is a mapping (`{}` for the defaults)");
                }
                e.knn = Some((kk, t));
            }
            "linear" => {
                let (mut iterations, mut l2) = (500usize, None);
                for (sk, sv) in item.entries().unwrap_or(&[]) {
                    match (sk.as_str(), &sv.kind) {
                        (Some("iterations"), ValueKind::Int(n)) if *n > 0 => {
                            iterations = *n as usize
                        }
                        (Some("l2"), ValueKind::Float(x)) if *x >= 0.0 => l2 = Some(*x),
                        (Some("l2"), ValueKind::Int(x)) if *x >= 0 => l2 = Some(*x as f64),
                        (Some(name @ ("iterations" | "l2")), _) => {
                            p.at(sv, &at, format!("`{name}` must be a number ≥ 0"))
                        }
                        _ => p.help(
                            sk,
                            &at,
                            "unknown key of `linear`",
                            "`iterations` (500) and `l2` (default: chosen on held-out data)",
                        ),
                    }
                }
                if !item.is_null() && item.entries().is_none() {
                    p.at(item, &at, "`linear` is a mapping (`{}` for the defaults)");
                }
                e.linear = Some((iterations, l2));
            }
            "features" => {
                let names: Vec<&Value> = match &item.kind {
                    ValueKind::Seq(items) => items.iter().collect(),
                    _ => vec![item],
                };
                e.features.clear();
                for n in names {
                    match n.as_str() {
                        Some(f @ ("trained" | "projection")) => {
                            if !e.features.iter().any(|x| x == f) {
                                e.features.push(f.to_owned());
                            }
                        }
                        _ => p.help(n, &at, "features are `trained` (h, the encoder's output) or `projection` (z, the head's)", "e.g. `features: [trained, projection]`"),
                    }
                }
            }
            "train_limit" | "test_limit" => match item.kind {
                ValueKind::Int(n) if n > 0 => {
                    if key == "train_limit" {
                        e.train_limit = Some(n as usize);
                    } else {
                        e.test_limit = Some(n as usize);
                    }
                }
                _ => p.at(item, &at, format!("`{key}` is a number of images above 0")),
            },
            _ => {
                let hint = closest(key, EVAL_KEYS.iter().copied())
                    .map_or_else(String::new, |c| format!("did you mean `{c}`? "));
                p.help(
                    k,
                    "evaluate",
                    format!("unknown key `{key}` in `evaluate`"),
                    &format!("{hint}`evaluate` has: {}", EVAL_KEYS.join(", ")),
                );
            }
        }
    }
    if e.features.is_empty() {
        p.help(
            v,
            "evaluate",
            "`features` is empty: nothing would be scored",
            "`features: [trained]` (h), and/or `projection` (z)",
        );
    }
    if e.knn.is_none() && e.linear.is_none() {
        p.help(
            v,
            "evaluate",
            "`evaluate` names no protocol",
            "add `knn: {}` and/or `linear: {}`",
        );
    }
    e
}

fn metric(v: Option<&Value>, e: &Evaluate, p: &mut Problems) -> Metric {
    let columns = e.columns();
    let first = columns.first().map_or(
        Metric {
            protocol: "knn",
            features: "trained".into(),
        },
        |(protocol, f)| Metric {
            protocol,
            features: f.clone(),
        },
    );
    let Some(v) = v else {
        return first;
    };
    let Some(text) = v.as_str() else {
        p.at(
            v,
            "metric",
            "`metric` is a protocol: `knn`, `linear`, or `knn/projection`, `linear/projection`",
        );
        return first;
    };
    let (protocol, features) = text.split_once('/').unwrap_or((text, "trained"));
    match columns
        .iter()
        .find(|(p, f)| *p == protocol && f == features)
    {
        Some((protocol, f)) => Metric {
            protocol,
            features: f.clone(),
        },
        None => {
            let named: Vec<String> = columns
                .iter()
                .map(|(p, f)| {
                    Metric {
                        protocol: p,
                        features: f.clone(),
                    }
                    .label()
                })
                .collect();
            p.help(
                v,
                "metric",
                format!("`metric: {text}` is not one of the scores `evaluate` gives"),
                &format!("the sweep scores: {}", named.join(", ")),
            );
            first
        }
    }
}

/// Every `$name` in `v`.
fn placeholders(v: &Value, out: &mut Vec<String>) {
    match &v.kind {
        ValueKind::Str(s) => {
            if let Some(name) = placeholder(s) {
                out.push(name.to_owned());
            }
        }
        ValueKind::Seq(items) => items.iter().for_each(|i| placeholders(i, out)),
        ValueKind::Map(entries) => entries.iter().for_each(|(_, i)| placeholders(i, out)),
        _ => {}
    }
}

fn check_placeholders(v: &Value, path: &str, axes: &[Axis], p: &mut Problems) {
    let mut names = Vec::new();
    placeholders(v, &mut names);
    for name in names {
        if !axes.iter().any(|a| a.name == name) {
            let hint = closest(&name, axes.iter().map(|a| a.name.as_str()))
                .map_or_else(String::new, |c| format!("did you mean `${c}`? "));
            p.help(
                &find_placeholder(v, &name).unwrap_or_else(|| v.clone()),
                &format!("set.{path}"),
                format!("`${name}` names no axis"),
                &format!(
                    "{hint}the axes are: {}",
                    axes.iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
}

fn find_placeholder(v: &Value, name: &str) -> Option<Value> {
    match &v.kind {
        ValueKind::Str(s) if placeholder(s) == Some(name) => Some(v.clone()),
        ValueKind::Seq(items) => items.iter().find_map(|i| find_placeholder(i, name)),
        ValueKind::Map(entries) => entries.iter().find_map(|(_, i)| find_placeholder(i, name)),
        _ => None,
    }
}

/// `$name` → `name` (a whole string; `$$x` is the literal `$x`).
pub fn placeholder(s: &str) -> Option<&str> {
    let name = s.strip_prefix('$')?;
    (!name.starts_with('$') && valid_name(name)).then_some(name)
}

/// `v` with every `$axis` replaced by the value bound to it; inside a list, a bound list is
/// spliced and a bound null is left out.
pub fn substitute(v: &Value, bound: &dyn Fn(&str) -> Option<Value>) -> Value {
    match &v.kind {
        ValueKind::Str(s) => match placeholder(s).and_then(bound) {
            Some(b) => b,
            None => match s.strip_prefix("$$") {
                Some(rest) => Value::new(v.loc, ValueKind::Str(format!("${rest}"))),
                None => v.clone(),
            },
        },
        ValueKind::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                let spliced = match &item.kind {
                    ValueKind::Str(s) => placeholder(s).and_then(bound),
                    _ => None,
                };
                match spliced {
                    Some(Value {
                        kind: ValueKind::Seq(inner),
                        ..
                    }) => out.extend(inner),
                    Some(Value {
                        kind: ValueKind::Null,
                        ..
                    }) => {}
                    Some(other) => out.push(other),
                    None => out.push(substitute(item, bound)),
                }
            }
            Value::new(v.loc, ValueKind::Seq(out))
        }
        ValueKind::Map(entries) => Value::new(
            v.loc,
            ValueKind::Map(
                entries
                    .iter()
                    .map(|(k, i)| (k.clone(), substitute(i, bound)))
                    .collect(),
            ),
        ),
        _ => v.clone(),
    }
}

fn scalar_name(v: &Value) -> Option<String> {
    let text = match &v.kind {
        ValueKind::Bool(b) => b.to_string(),
        ValueKind::Int(i) => i.to_string(),
        ValueKind::UInt(u) => u.to_string(),
        // As written: `1.0` stays `1.0` (Display would say `1`).
        ValueKind::Float(f) => format!("{f:?}"),
        ValueKind::Str(s) => s.clone(),
        ValueKind::Null => "null".into(),
        _ => return None,
    };
    valid_value_name(&text).then_some(text)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_value_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
}

fn is_path(s: &str) -> bool {
    !s.is_empty() && !s.split('.').any(str::is_empty)
}
