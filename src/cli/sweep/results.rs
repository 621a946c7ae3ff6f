//! A sweep's tables and picture, from its trial folders: `results.json`, `results.csv`,
//! `results.md` (sorted by the metric) and `results.png` (a heatmap for two axes, bars
//! otherwise).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::exec::{Record, Status, read_record};
use super::plan::Trial;
use super::spec::{Combine, Sweep};

/// One trial's row.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// 1-based position.
    pub index: usize,
    /// Folder name.
    pub trial: String,
    /// (axis, value).
    pub values: Vec<(String, String)>,
    /// `done`, `trained`, `training`, `failed`, or `missing` (no folder, or a folder of
    /// another definition).
    pub status: String,
    /// The metric's top-1.
    pub metric: Option<f64>,
    /// Every score.
    pub scores: Vec<super::exec::Score>,
    /// Training steps.
    pub steps: u64,
    /// Training wall seconds.
    pub train_seconds: f64,
    /// Evaluation wall seconds.
    pub eval_seconds: f64,
    /// Samples per second of training.
    pub images_per_s: Option<f64>,
    /// The last step's loss.
    pub final_loss: Option<f64>,
    /// The trial's folder.
    pub dir: PathBuf,
    /// Why it failed.
    pub error: Option<String>,
}

/// `results.json`.
#[derive(Serialize)]
struct Results<'a> {
    sweep: &'a str,
    file: String,
    base: String,
    metric: String,
    axes: Vec<(String, Vec<String>)>,
    done: usize,
    trials: &'a [Row],
}

/// What the folders hold, trial by trial (in sweep order).
pub fn rows(sweep: &Sweep, trials: &[Trial]) -> Vec<Row> {
    trials
        .iter()
        .map(|t| {
            let record: Option<Record> = read_record(&t.dir).filter(|r| r.identity == t.identity);
            let m = &sweep.metric;
            let evaluation = sweep.evaluate.identity();
            match record {
                // Scored with another `evaluate` than the file's now: trained, not scored.
                Some(mut r)
                    if r.status == Status::Done && r.evaluation.as_deref() != Some(&evaluation) =>
                {
                    r.status = Status::Trained;
                    r.scores.clear();
                    row(t, &r, m)
                }
                Some(r) => row(t, &r, m),
                None => Row {
                    index: t.index,
                    trial: t.name.clone(),
                    values: t.values.clone(),
                    status: "missing".into(),
                    metric: None,
                    scores: Vec::new(),
                    steps: 0,
                    train_seconds: 0.0,
                    eval_seconds: 0.0,
                    images_per_s: None,
                    final_loss: None,
                    dir: t.dir.clone(),
                    error: None,
                },
            }
        })
        .collect()
}

fn row(t: &Trial, r: &Record, m: &super::spec::Metric) -> Row {
    Row {
        index: t.index,
        trial: t.name.clone(),
        values: t.values.clone(),
        status: match r.status {
            Status::Training => "training",
            Status::Trained => "trained",
            Status::Done => "done",
            Status::Failed => "failed",
        }
        .to_owned(),
        metric: r
            .top1(m.protocol, &m.features)
            .filter(|_| r.status == Status::Done),
        scores: if r.status == Status::Done {
            r.scores.clone()
        } else {
            Vec::new()
        },
        steps: r.steps,
        train_seconds: r.train_seconds,
        eval_seconds: r.eval_seconds,
        images_per_s: r.images_per_s,
        final_loss: r.final_loss,
        dir: t.dir.clone(),
        error: r.error.clone(),
    }
}

/// Rows sorted by the metric, best first (unscored trials last, in sweep order).
pub fn sorted(rows: &[Row]) -> Vec<Row> {
    let mut out = rows.to_vec();
    out.sort_by(|a, b| match (a.metric, b.metric) {
        (Some(x), Some(y)) => y.total_cmp(&x).then(a.index.cmp(&b.index)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.index.cmp(&b.index),
    });
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.digits$}"))
}

/// Write the tables and the picture into the sweep folder; the paths written.
///
/// # Errors
/// A file that cannot be written or a picture that cannot be drawn.
pub fn write(sweep: &Sweep, trials: &[Trial]) -> Result<(Vec<Row>, Vec<PathBuf>)> {
    let rows = rows(sweep, trials);
    let out = &sweep.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let columns = sweep.evaluate.columns();
    let label = |p: &str, f: &str| {
        if f == "trained" {
            format!("{p} top-1")
        } else {
            format!("{p}/{f} top-1")
        }
    };
    let done = rows.iter().filter(|r| r.status == "done").count();
    let mut written = Vec::new();

    let json = out.join("results.json");
    let results = Results {
        sweep: &sweep.name,
        file: sweep.file.display().to_string(),
        base: sweep.base.display().to_string(),
        metric: sweep.metric.label(),
        axes: sweep
            .axes
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.values.iter().map(|v| v.name.clone()).collect(),
                )
            })
            .collect(),
        done,
        trials: &rows,
    };
    let text = serde_json::to_string_pretty(&results).context("cannot serialise the results")?;
    write_file(&json, &(text + "\n"))?;
    written.push(json);

    let sorted = sorted(&rows);
    let mut header: Vec<String> = vec!["index".into(), "trial".into()];
    header.extend(sweep.axes.iter().map(|a| a.name.clone()));
    header.extend(columns.iter().map(|(p, f)| label(p, f)));
    let mut csv = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    csv.push_str(",steps,train_seconds,eval_seconds,images_per_s,final_loss,status\n");
    for r in &sorted {
        let cells = cells(r, &columns, Precision::Csv);
        csv.push_str(
            &cells
                .iter()
                .map(|c| csv_field(c))
                .collect::<Vec<_>>()
                .join(","),
        );
        csv.push('\n');
    }
    let path = out.join("results.csv");
    write_file(&path, &csv)?;
    written.push(path);

    let picture = out.join("results.png");
    let drew = draw(sweep, &rows, &picture)?;
    let mut md = format!(
        "# Sweep `{}`\n\n{} trials of {} ({} done), sorted by {} (higher is better). \
         Train and eval are wall seconds; images/s is training samples per second of step time.\n\n",
        sweep.name,
        rows.len(),
        sweep.file.display(),
        done,
        label(sweep.metric.protocol, &sweep.metric.features),
    );
    header[0] = "#".into();
    let _ = writeln!(
        md,
        "| {} | steps | train s | eval s | images/s | final loss | status |",
        header.join(" | ")
    );
    md.push('|');
    md.push_str(&"---|".repeat(header.len() + 6));
    md.push('\n');
    for r in &sorted {
        let _ = writeln!(
            md,
            "| {} |",
            cells(r, &columns, Precision::Table).join(" | ")
        );
    }
    let total: f64 = rows.iter().map(|r| r.train_seconds + r.eval_seconds).sum();
    let mut threads: Vec<usize> = trials
        .iter()
        .filter_map(|t| read_record(&t.dir).filter(|r| r.identity == t.identity))
        .map(|r| r.threads)
        .filter(|&n| n > 0)
        .collect();
    threads.sort_unstable();
    threads.dedup();
    let threads = match threads.as_slice() {
        [] => String::new(),
        [n] => format!(
            " Each trial ran with {n} thread{}.",
            if *n == 1 { "" } else { "s" }
        ),
        many => format!(
            " Trials ran with {} threads.",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    let _ = writeln!(
        md,
        "\nTotal: {:.1} min of training and evaluation (summed over trials; trials run side by side overlap).{threads}",
        total / 60.0
    );
    if drew {
        md.push_str("\n![results](results.png)\n");
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        md.push_str("\n## Failed trials (training or scoring)\n\n");
        for r in failed {
            let first = r
                .error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("");
            let _ = writeln!(md, "- {}: {}", r.trial, first);
        }
    }
    let path = out.join("results.md");
    write_file(&path, &md)?;
    written.push(path);
    if drew {
        written.push(picture);
    }
    Ok((rows, written))
}

/// How many digits the cells of a row keep.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Precision {
    /// For reading (results.md).
    Table,
    /// For tools (results.csv).
    Csv,
}

/// One row's cells: index, trial, axis values, scores, steps, seconds, images/s, loss, status.
fn cells(r: &Row, columns: &[(&'static str, String)], precision: Precision) -> Vec<String> {
    let table = precision == Precision::Table;
    let mut out = vec![r.index.to_string(), r.trial.clone()];
    out.extend(r.values.iter().map(|(_, v)| v.clone()));
    for (p, f) in columns {
        let score = r
            .scores
            .iter()
            .find(|s| s.protocol == *p && s.features == *f);
        out.push(opt(score.map(|s| s.top1), 4));
    }
    let seconds = |s: f64| {
        if table {
            format!("{s:.0}")
        } else {
            format!("{s:.1}")
        }
    };
    out.extend([
        r.steps.to_string(),
        seconds(r.train_seconds),
        seconds(r.eval_seconds),
        opt(r.images_per_s, if table { 0 } else { 1 }),
        opt(r.final_loss, if table { 3 } else { 4 }),
        r.status.clone(),
    ]);
    out
}

/// The picture: a heatmap over two grid axes (rows the first), bars over one axis or over the
/// trials otherwise. `false` when nothing was measured yet.
fn draw(sweep: &Sweep, rows: &[Row], path: &Path) -> Result<bool> {
    if rows.iter().all(|r| r.metric.is_none()) {
        return Ok(false);
    }
    let metric = if sweep.metric.features == "trained" {
        format!("{} top-1", sweep.metric.protocol)
    } else {
        format!(
            "{} top-1 on {}",
            sweep.metric.protocol, sweep.metric.features
        )
    };
    let title = format!("{}: {metric}", sweep.name);
    if sweep.axes.len() == 2 && sweep.combine == Combine::Grid {
        let names = |a: usize| -> Vec<String> {
            sweep.axes[a]
                .values
                .iter()
                .map(|v| v.name.clone())
                .collect()
        };
        let (rn, cn) = (names(0), names(1));
        let mut values = vec![vec![None; cn.len()]; rn.len()];
        for r in rows {
            let ri = rn.iter().position(|n| *n == r.values[0].1);
            let ci = cn.iter().position(|n| *n == r.values[1].1);
            if let (Some(ri), Some(ci)) = (ri, ci) {
                values[ri][ci] = r.metric;
            }
        }
        let grid = simclr::model::plot::Grid {
            title: &title,
            row_axis: &sweep.axes[0].name,
            col_axis: &sweep.axes[1].name,
            rows: &rn,
            cols: &cn,
            values: &values,
            metric: &metric,
        };
        simclr::model::plot::heatmap(&grid, path)?;
    } else {
        let (axis, names): (String, Vec<String>) = if sweep.axes.len() == 1 {
            (
                sweep.axes[0].name.clone(),
                rows.iter().map(|r| r.values[0].1.clone()).collect(),
            )
        } else {
            (
                "trial".into(),
                rows.iter().map(|r| r.trial.clone()).collect(),
            )
        };
        let values: Vec<Option<f64>> = rows.iter().map(|r| r.metric).collect();
        let chart = simclr::model::plot::Bars {
            title: &title,
            axis: &axis,
            names: &names,
            values: &values,
            metric: &metric,
        };
        simclr::model::plot::bars(&chart, path)?;
    }
    Ok(true)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Write `text` to `path` through a temporary file and a rename (a reader never sees half).
fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
