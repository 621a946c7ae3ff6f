//! `simclr eval linear | knn`: evaluate a trained encoder (or its random initialisation, or
//! the raw pixels) on the labelled train/test splits of the run's source.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use simclr::config::Registry;
use simclr::eval::data::{LabelledSet, RunData, load};
use simclr::eval::features::{embed, embed_projection};
use simclr::eval::knn::{KnnSettings, evaluate};
use simclr::eval::linear::{ProbeSettings, probe};
use simclr::model::run_dir::{DEFINITION, STATE};
use simclr::model::stage::checkpoint::find_checkpoint;
use simclr::model::{RunDir, TrainedModel, Weights};
use simclr::source::common::Split;

/// `simclr eval linear | knn`.
#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Frozen encoder, standardised features of un-augmented images, multinomial logistic
    /// regression trained on the train split, top-1/top-5 on the test split.
    Linear {
        #[command(flatten)]
        common: EvalArgs,
        /// L2 strength (default: chosen on a held-out tenth of the train split).
        #[arg(long)]
        l2: Option<f64>,
        /// Full-batch optimisation steps of the probe.
        #[arg(long, default_value_t = 500)]
        iterations: usize,
    },
    /// Weighted k-nearest neighbours on cosine similarity, bank = train split.
    Knn {
        #[command(flatten)]
        common: EvalArgs,
        /// Neighbours that vote.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// Temperature of the vote weights.
        #[arg(long, default_value_t = 0.1)]
        temperature: f64,
        /// Evaluate every checkpoint of the run (PATH: a run or checkpoints folder) and draw
        /// the curve: knn-checkpoints.jsonl and knn.png in the run folder.
        #[arg(long)]
        every_checkpoint: bool,
    },
    /// Time to accuracy: kNN and the linear probe for every checkpoint of a run (each embedded
    /// once), against the training time at that checkpoint (from the run's steps.jsonl):
    /// curve.jsonl, curve.md and curve.png in the run folder.
    Curve {
        #[command(flatten)]
        common: EvalArgs,
        /// kNN neighbours that vote.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// Temperature of the kNN vote weights.
        #[arg(long, default_value_t = 0.1)]
        temperature: f64,
        /// L2 strength of the probe (default: chosen on a held-out tenth of the train split,
        /// for every checkpoint).
        #[arg(long)]
        l2: Option<f64>,
        /// Full-batch optimisation steps of the probe.
        #[arg(long, default_value_t = 500)]
        iterations: usize,
    },
}

/// What both protocols take.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run folder (its latest checkpoint), a checkpoints folder or one checkpoint folder.
    path: PathBuf,
    /// Features: the trained encoder's h, the same encoder at its initialisation (baseline),
    /// the preprocessed pixels (baseline), or the trained head's projections z.
    #[arg(long, value_enum, default_value = "trained")]
    features: Features,
    /// `--init random` is `--features random` (`--init trained`: the default).
    #[arg(long, value_name = "trained|random", conflicts_with_all = ["features", "raw_pixels"])]
    init: Option<InitArg>,
    /// Same as `--features raw-pixels`.
    #[arg(long, conflicts_with = "features")]
    raw_pixels: bool,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Device for the encoder: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
    batch_size: usize,
    /// For `image_folder` sources: a folder of held-out images, one sub-folder per class.
    #[arg(long, value_name = "DIR")]
    test_path: Option<String>,
    /// Result file (default: eval-<protocol>-<features>.json in the checkpoint folder).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InitArg {
    Trained,
    Random,
}

impl EvalArgs {
    fn common<'a>(&'a self, registry: &'a Registry) -> Common<'a> {
        let features = match (self.init, self.raw_pixels) {
            (_, true) => Features::RawPixels,
            (Some(InitArg::Random), _) => Features::Random,
            (Some(InitArg::Trained), _) => Features::Trained,
            (None, false) => self.features,
        };
        Common {
            registry,
            path: &self.path,
            features,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            device: &self.device,
            batch_size: self.batch_size,
            test_path: self.test_path.clone(),
            out: self.out.clone(),
        }
    }
}

impl EvalCommand {
    /// Run the protocol; the report's text.
    pub fn run(&self, registry: &Registry) -> Result<String> {
        match self {
            EvalCommand::Linear {
                common,
                l2,
                iterations,
            } => linear(
                &common.common(registry),
                &ProbeSettings {
                    l2: *l2,
                    iterations: (*iterations).max(1),
                    ..Default::default()
                },
            ),
            EvalCommand::Curve {
                common,
                k,
                temperature,
                l2,
                iterations,
            } => curve(
                &common.common(registry),
                KnnSettings {
                    k: *k,
                    temperature: *temperature,
                },
                &ProbeSettings {
                    l2: *l2,
                    iterations: (*iterations).max(1),
                    ..Default::default()
                },
            ),
            EvalCommand::Knn {
                common,
                k,
                temperature,
                every_checkpoint,
            } => {
                let settings = KnnSettings {
                    k: *k,
                    temperature: *temperature,
                };
                if *every_checkpoint {
                    knn_curve(&common.common(registry), settings)
                } else {
                    knn(&common.common(registry), settings)
                }
            }
        }
    }
}

/// What the features are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Features {
    /// The checkpoint's trained encoder.
    Trained,
    /// The same architecture at its initialisation (same seed): the baseline.
    Random,
    /// The preprocessed pixels themselves.
    RawPixels,
    /// The trained projection head's output z = g(h): what the loss saw (SimCLR's Figure 8
    /// compares it with h; h is the representation to keep).
    Projection,
}

impl Features {
    fn name(self) -> &'static str {
        match self {
            Features::Trained => "trained",
            Features::Random => "random-init",
            Features::RawPixels => "raw-pixels",
            Features::Projection => "projection",
        }
    }
}

/// Options shared by both protocols.
struct Common<'a> {
    /// The stage kinds the run's definition is built with.
    registry: &'a Registry,
    /// Run folder, checkpoints folder or checkpoint.
    pub path: &'a Path,
    /// Which features.
    pub features: Features,
    /// First N training images (all by default).
    pub train_limit: Option<usize>,
    /// First N test images.
    pub test_limit: Option<usize>,
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: &'a str,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Held-out folder for `image_folder` sources.
    pub test_path: Option<String>,
    /// Result file (default: in the checkpoint folder).
    pub out: Option<PathBuf>,
}

/// The result file.
#[derive(Serialize)]
struct Report<T: Serialize> {
    protocol: &'static str,
    features: &'static str,
    checkpoint: String,
    step: u64,
    source: String,
    train: usize,
    test: usize,
    dim: usize,
    #[serde(flatten)]
    result: T,
    embed_seconds: f64,
    seconds: f64,
}

/// The labelled splits of a run's source, loaded once (`--every-checkpoint` embeds them with
/// every checkpoint of the run).
struct Splits {
    train: LabelledSet,
    test: LabelledSet,
    source: String,
}

/// Features of both splits under one checkpoint.
struct Prepared {
    train: Vec<f32>,
    test: Vec<f32>,
    dim: usize,
    checkpoint: PathBuf,
    step: u64,
    embed_seconds: f64,
}

fn load_splits(c: &Common<'_>, checkpoint: &Path) -> Result<Splits> {
    let mut run = RunData::from_checkpoint(checkpoint, c.registry)?;
    run.test_path.clone_from(&c.test_path);
    let definition = checkpoint.join(DEFINITION);
    let open = |split: Split, limit: Option<usize>| -> Result<LabelledSet> {
        let data = run
            .open(split)
            .with_context(|| definition.display().to_string())?;
        Ok(load(&run, data.as_ref(), limit)?)
    };
    Ok(Splits {
        train: open(Split::Train, c.train_limit)?,
        test: open(Split::Test, c.test_limit)?,
        source: run.source(),
    })
}

/// The features of `splits` for the checkpoint at `path`.
fn features(c: &Common<'_>, splits: &Splits, path: &Path) -> Result<Prepared> {
    let checkpoint = find_checkpoint(path)?;
    let t0 = Instant::now();
    let (train, test) = (&splits.train, &splits.test);
    let (ftr, fte, dim) = match c.features {
        Features::RawPixels => {
            let (ch, h, w) = train.shape;
            (train.pixels.clone(), test.pixels.clone(), ch * h * w)
        }
        Features::Trained | Features::Random | Features::Projection => {
            let device = simclr::model::stage::device(c.device.parse()?)?;
            let weights = if c.features == Features::Random {
                Weights::Initial
            } else {
                Weights::Trained
            };
            let encoders = simclr::registry::encoders();
            let model = TrainedModel::from_checkpoint(path, &encoders, weights, &device)?;
            let b = c.batch_size.max(1);
            if c.features == Features::Projection {
                let (ftr, dim) = embed_projection(&model, train, b)?;
                let (fte, _) = embed_projection(&model, test, b)?;
                (ftr, fte, dim)
            } else {
                let ftr = embed(&model, train, b)?;
                let fte = embed(&model, test, b)?;
                (ftr, fte, model.arch.feature_dim())
            }
        }
    };
    Ok(Prepared {
        train: ftr,
        test: fte,
        dim,
        checkpoint: checkpoint.dir,
        step: checkpoint.info.steps,
        embed_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The splits and their features for `c.path`.
fn prepare(c: &Common<'_>) -> Result<(Splits, Prepared)> {
    let checkpoint = find_checkpoint(c.path)?;
    let splits = load_splits(c, &checkpoint.dir)?;
    let prepared = features(c, &splits, &checkpoint.dir)?;
    Ok((splits, prepared))
}

impl<T: Serialize> Report<T> {
    /// A protocol's result with the facts every report carries.
    fn new(
        c: &Common<'_>,
        protocol: &'static str,
        (splits, p): (&Splits, &Prepared),
        (train, test): (usize, usize),
        result: T,
        t0: Instant,
    ) -> Self {
        Report {
            protocol,
            features: c.features.name(),
            checkpoint: p.checkpoint.display().to_string(),
            step: p.step,
            source: splits.source.clone(),
            train,
            test,
            dim: p.dim,
            result,
            embed_seconds: p.embed_seconds,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

fn write<T: Serialize>(c: &Common<'_>, report: &Report<T>, default_name: &str) -> Result<PathBuf> {
    let out = c
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(&report.checkpoint).join(default_name));
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(&out, text + "\n").with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

/// `simclr eval linear`.
fn linear(c: &Common<'_>, settings: &ProbeSettings) -> Result<String> {
    let t0 = Instant::now();
    let (splits, p) = prepare(c)?;
    let score = probe(
        &p.train,
        &splits.train.labels,
        &p.test,
        &splits.test.labels,
        p.dim,
        settings,
    )?;
    let report = Report::new(
        c,
        "linear",
        (&splits, &p),
        (score.train, score.test),
        &score,
        t0,
    );
    let out = write(
        c,
        &report,
        &format!("eval-linear-{}.json", c.features.name()),
    )?;
    Ok(format!(
        "linear probe, {} features of {} (step {}), {} train / {} test, dim {}, L2 {}\n\
         | protocol | features | step | top-1 | top-5 | train top-1 |\n|---|---|---|---|---|---|\n\
         | linear | {} | {} | {:.4} | {:.4} | {:.4} |\nwritten to {}",
        c.features.name(),
        report.checkpoint,
        p.step,
        score.train,
        score.test,
        p.dim,
        score.l2,
        c.features.name(),
        p.step,
        score.top1,
        score.top5,
        score.train_top1,
        out.display()
    ))
}

/// The kNN result written into a report file.
#[derive(Serialize)]
struct Knn {
    #[serde(flatten)]
    score: simclr::eval::knn::KnnScore,
    #[serde(flatten)]
    settings: KnnSettings,
}

/// Score `p` by kNN and write its report (`c.out`, or in the checkpoint folder).
fn knn_report(
    c: &Common<'_>,
    splits: &Splits,
    p: &Prepared,
    settings: KnnSettings,
    t0: Instant,
) -> Result<(Report<Knn>, PathBuf)> {
    let score = evaluate(
        &p.train,
        &splits.train.labels,
        &p.test,
        &splits.test.labels,
        p.dim,
        settings,
    )?;
    let report = Report::new(
        c,
        "knn",
        (splits, p),
        (score.bank, score.queries),
        Knn { score, settings },
        t0,
    );
    let out = write(c, &report, &format!("eval-knn-{}.json", c.features.name()))?;
    Ok((report, out))
}

fn check_knn(settings: KnnSettings) -> Result<()> {
    if settings.k == 0 || settings.temperature.is_nan() || settings.temperature <= 0.0 {
        bail!("--k must be at least 1 and --temperature positive");
    }
    Ok(())
}

/// `simclr eval knn`.
fn knn(c: &Common<'_>, settings: KnnSettings) -> Result<String> {
    let t0 = Instant::now();
    check_knn(settings)?;
    let (splits, p) = prepare(c)?;
    let (report, out) = knn_report(c, &splits, &p, settings, t0)?;
    let score = &report.result.score;
    Ok(format!(
        "weighted kNN (k {}, T {}), {} features of {} (step {}), bank {} / test {}, dim {}\n\
         | protocol | features | step | top-1 | top-5 |\n|---|---|---|---|---|\n\
         | knn | {} | {} | {:.4} | {:.4} |\nwritten to {}",
        settings.k,
        settings.temperature,
        c.features.name(),
        report.checkpoint,
        p.step,
        score.bank,
        score.queries,
        p.dim,
        c.features.name(),
        p.step,
        score.top1,
        score.top5,
        out.display()
    ))
}

/// The checkpoints (step-*/ folders with a state.json, in step order) of a run folder or a
/// checkpoints folder, and the run folder they belong to.
fn every_checkpoint(path: &Path) -> Result<(RunDir, Vec<PathBuf>)> {
    let root = if RunDir::new(path).checkpoints().is_dir() {
        RunDir::new(path).checkpoints()
    } else {
        path.to_path_buf()
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.join(STATE).is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!(
            "{}: no checkpoints (step-*/state.json) found",
            root.display()
        );
    }
    Ok((RunDir::new(root.parent().unwrap_or(&root)), dirs))
}

/// Embed the splits under each checkpoint folder of `dirs` in turn and hand them to `score`
/// (with the checkpoint's own `Common` and the time its evaluation started); the splits are
/// loaded once, again only for a checkpoint whose definition differs.
fn each_checkpoint(
    c: &Common<'_>,
    dirs: &[PathBuf],
    mut score: impl FnMut(&Common<'_>, &Splits, &Prepared, Instant) -> Result<()>,
) -> Result<()> {
    let mut loaded: Option<(String, Splits)> = None;
    for dir in dirs {
        let t0 = Instant::now();
        let one = Common {
            path: dir,
            out: None,
            test_path: c.test_path.clone(),
            ..*c
        };
        let definition = dir.join(DEFINITION);
        let text = std::fs::read_to_string(&definition)
            .with_context(|| format!("cannot read {}", definition.display()))?;
        let (text, splits) = match loaded.take() {
            Some((t, splits)) if t == text => (t, splits),
            _ => {
                let splits = load_splits(&one, dir)?;
                (text, splits)
            }
        };
        let p = features(&one, &splits, dir)?;
        score(&one, &splits, &p, t0)?;
        loaded = Some((text, splits));
    }
    Ok(())
}

/// `simclr eval knn --every-checkpoint`: kNN accuracy of every checkpoint of a run, as a curve:
/// `knn-checkpoints.jsonl` and `knn.png` in the run folder.
fn knn_curve(c: &Common<'_>, settings: KnnSettings) -> Result<String> {
    check_knn(settings)?;
    let (run_dir, dirs) = every_checkpoint(c.path)?;
    let mut lines = String::new();
    let mut points = Vec::new();
    let mut table = String::from("| step | kNN top-1 | top-5 |\n|---|---|---|\n");
    each_checkpoint(c, &dirs, |one, splits, p, t0| {
        let (report, _) = knn_report(one, splits, p, settings, t0)?;
        let (step, top1, top5) = (
            report.step,
            report.result.score.top1,
            report.result.score.top5,
        );
        points.push((step, top1));
        lines.push_str(&serde_json::to_string(&report)?);
        lines.push('\n');
        table.push_str(&format!("| {step} | {top1:.4} | {top5:.4} |\n"));
        eprintln!("step {step}: kNN top-1 {top1:.4}");
        Ok(())
    })?;
    let file = run_dir.knn_checkpoints();
    std::fs::write(&file, lines).with_context(|| format!("cannot write {}", file.display()))?;
    let png = run_dir.knn_plot();
    simclr::model::plot::curve(&points, &png, "knn top-1", false)?;
    Ok(format!(
        "{table}written to {} and {}",
        file.display(),
        png.display()
    ))
}

/// Seconds of training at the end of each step, from a run's steps.jsonl (`step` →
/// `elapsed_seconds`); empty when the file is missing. A resumed run's steps continue the
/// earlier attempt's clock only if its lines do, so the x axis is this file's own time.
fn step_clock(run_dir: &RunDir) -> std::collections::BTreeMap<u64, f64> {
    let mut clock = std::collections::BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(run_dir.steps()) else {
        return clock;
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(step), Some(t)) = (
            v.get("step").and_then(serde_json::Value::as_u64),
            v.get("elapsed_seconds").and_then(serde_json::Value::as_f64),
        ) {
            clock.insert(step, t);
        }
    }
    clock
}

/// One checkpoint's point of `simclr eval curve`.
#[derive(Serialize)]
struct CurvePoint {
    checkpoint: String,
    step: u64,
    /// Training seconds when the checkpoint was written (end of its last step).
    train_seconds: Option<f64>,
    features: &'static str,
    dim: usize,
    knn_top1: f64,
    knn_top5: f64,
    linear_top1: f64,
    linear_top5: f64,
    linear_train_top1: f64,
    l2: f64,
    train: usize,
    test: usize,
    embed_seconds: f64,
    seconds: f64,
}

/// `simclr eval curve`: kNN and the linear probe of every checkpoint against training time.
fn curve(c: &Common<'_>, knn: KnnSettings, probe_settings: &ProbeSettings) -> Result<String> {
    check_knn(knn)?;
    let (run_dir, dirs) = every_checkpoint(c.path)?;
    let clock = step_clock(&run_dir);
    let mut lines = String::new();
    let mut points = Vec::new();
    let mut table = String::from(
        "| step | training minutes | kNN top-1 | linear top-1 | linear top-5 | L2 |\n|---|---|---|---|---|---|\n",
    );
    each_checkpoint(c, &dirs, |_, splits, p, t0| {
        let k = evaluate(
            &p.train,
            &splits.train.labels,
            &p.test,
            &splits.test.labels,
            p.dim,
            knn,
        )?;
        let l = probe(
            &p.train,
            &splits.train.labels,
            &p.test,
            &splits.test.labels,
            p.dim,
            probe_settings,
        )?;
        // A checkpoint after N steps was written at the end of step N - 1.
        let train_seconds = p.step.checked_sub(1).and_then(|s| clock.get(&s).copied());
        let point = CurvePoint {
            checkpoint: p.checkpoint.display().to_string(),
            step: p.step,
            train_seconds,
            features: c.features.name(),
            dim: p.dim,
            knn_top1: k.top1,
            knn_top5: k.top5,
            linear_top1: l.top1,
            linear_top5: l.top5,
            linear_train_top1: l.train_top1,
            l2: l.l2,
            train: l.train,
            test: l.test,
            embed_seconds: p.embed_seconds,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let minutes = train_seconds.map_or("–".to_owned(), |s| format!("{:.1}", s / 60.0));
        table.push_str(&format!(
            "| {} | {minutes} | {:.4} | {:.4} | {:.4} | {} |\n",
            point.step, point.knn_top1, point.linear_top1, point.linear_top5, point.l2
        ));
        eprintln!(
            "step {} ({minutes} min): kNN top-1 {:.4}, linear top-1 {:.4}",
            point.step, point.knn_top1, point.linear_top1
        );
        lines.push_str(&serde_json::to_string(&point)?);
        lines.push('\n');
        points.push(point);
        Ok(())
    })?;
    let file = run_dir.root().join("curve.jsonl");
    std::fs::write(&file, &lines).with_context(|| format!("cannot write {}", file.display()))?;
    let md = run_dir.root().join("curve.md");
    std::fs::write(&md, &table).with_context(|| format!("cannot write {}", md.display()))?;
    // Minutes on the x axis when every point has a time, otherwise steps.
    let timed = points.iter().all(|p| p.train_seconds.is_some());
    let x = |p: &CurvePoint| {
        if timed {
            p.train_seconds.unwrap_or(0.0) / 60.0
        } else {
            p.step as f64
        }
    };
    let series = [
        simclr::model::plot::Series {
            label: "linear probe top-1".into(),
            points: points.iter().map(|p| (x(p), p.linear_top1)).collect(),
        },
        simclr::model::plot::Series {
            label: format!("kNN top-1 (k {})", knn.k),
            points: points.iter().map(|p| (x(p), p.knn_top1)).collect(),
        },
    ];
    let png = run_dir.root().join("curve.png");
    let title = format!(
        "{} features: accuracy against training time ({} train / {} test)",
        c.features.name(),
        points.first().map_or(0, |p| p.train),
        points.first().map_or(0, |p| p.test)
    );
    simclr::model::plot::lines(
        &simclr::model::plot::Lines {
            title: &title,
            x_label: if timed { "training minutes" } else { "step" },
            y_label: "top-1",
            series: &series,
        },
        &png,
    )?;
    Ok(format!(
        "{table}written to {}, {} and {}",
        file.display(),
        md.display(),
        png.display()
    ))
}
