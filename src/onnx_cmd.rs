//! `simclr export` (a checkpoint's encoder to ONNX, verified in ONNX Runtime), `simclr embed`
//! (embeddings of images with ONNX Runtime or candle) and `simclr bench embed`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use rayon::prelude::*;
use simclr::augment::{Img, Policy, Shape};
use simclr::eval::data::{RunData, load};
use simclr::model::{TrainedModel as Model, Weights};
use simclr::onnx::export::{
    DEFAULT_OPSET, ExportOptions, FEATURES, INPUT, InputShape, PROJECTION, export_model, to_bytes,
};
use simclr::onnx::meta::Preprocessing;
use simclr::onnx::runtime::OnnxModel;
use simclr::onnx::verify::{Comparison, compare, random_inputs};
use simclr::source::common::{Dataset, Split};

/// Options of `simclr export`.
pub struct ExportArgs<'a> {
    /// Run folder, checkpoints folder or checkpoint.
    pub path: &'a Path,
    /// Output file.
    pub out: &'a Path,
    /// Include the projection head (output `projection`).
    pub head: bool,
    /// ONNX opset.
    pub opset: i64,
    /// Fold BatchNorm into the convolutions.
    pub fold: bool,
    /// Check in ONNX Runtime against candle.
    pub verify: bool,
    /// Largest |ONNX Runtime − candle| accepted.
    pub tolerance: f64,
    /// Real images used by the verification (from the run's data, when readable).
    pub verify_images: usize,
}

/// The run's data and preprocessing, from the checkpoint's copy of its definition.
fn run_data(model: &Model) -> Result<(RunData, PathBuf)> {
    let dir = &model
        .checkpoint
        .as_ref()
        .context("the model has no checkpoint")?
        .dir;
    let run = RunData::from_checkpoint(dir).map_err(anyhow::Error::msg)?;
    Ok((run, dir.join("definition.yaml")))
}

/// The run's training split, opened at most once and only when something needs it (opening
/// Fashion-MNIST's reads 60 000 images).
struct TrainSplit<'a> {
    run: &'a RunData,
    data: std::cell::OnceCell<Result<std::sync::Arc<dyn Dataset>, String>>,
}

impl<'a> TrainSplit<'a> {
    fn new(run: &'a RunData) -> Self {
        Self {
            run,
            data: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> Result<&dyn Dataset, String> {
        match self.data.get_or_init(|| self.run.open(Split::Train)) {
            Ok(d) => Ok(d.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// How images become this model's input: the training crop size (or, without one, the size
/// of the run's images when they can be read; else any size), `normalize` of the policy.
fn preprocessing(model: &Model, run: &RunData, train: &TrainSplit<'_>) -> Result<Preprocessing> {
    let channels = model.arch.in_channels();
    let size = match run.crop {
        Some(s) => Some((s, s)),
        None => match train
            .get()
            .and_then(|d| d.get(0).map_err(|e| e.to_string()))
        {
            Ok(s) => Some((s.height as usize, s.width as usize)),
            Err(e) => {
                eprintln!(
                    "note: the run's policy fixes no size and its images are not readable here \
                     ({e}); the model takes any size and images are not resized"
                );
                None
            }
        },
    };
    let mut p = Preprocessing::identity(channels, size);
    if let Some((mean, std)) = &run.normalize {
        let fit = |v: &Vec<f64>| -> Result<Vec<f64>> {
            match v.len() {
                1 => Ok(vec![v[0]; channels]),
                n if n == channels => Ok(v.clone()),
                n => bail!("the definition's normalize has {n} values for {channels} channel(s)"),
            }
        };
        p.mean = fit(mean)?;
        p.std = fit(std)?;
    }
    Ok(p)
}

/// A checkpoint's model (its trained weights) on the CPU, with the built-in encoders.
fn load_model(path: &Path) -> Result<Model> {
    Model::from_checkpoint(
        path,
        &simclr::registry::encoders(),
        Weights::Trained,
        &Device::Cpu,
    )
    .map_err(anyhow::Error::from)
}

/// `simclr export`.
pub fn export_command(a: &ExportArgs<'_>) -> Result<String> {
    let t0 = Instant::now();
    let model = load_model(a.path)?;
    let checkpoint = model.checkpoint.clone().context("checkpoint")?;
    let (run, definition) = run_data(&model)?;
    let train = TrainSplit::new(&run);
    let pre = preprocessing(&model, &run, &train)?;
    if a.head && model.head.is_none() {
        bail!(
            "{}: the checkpoint has no projection head to include",
            checkpoint.dir.display()
        );
    }
    let head = model.head.as_ref().filter(|_| a.head).map(|h| h.kind);
    let feature_dim = model.arch.feature_dim();
    let mut metadata = pre.to_metadata();
    metadata.push(("embedding_output".into(), FEATURES.into()));
    metadata.push(("embedding_size".into(), feature_dim.to_string()));
    let mut projection_size = None;
    if let Some(kind) = &head {
        let out = kind.out_size(feature_dim);
        projection_size = Some(out);
        metadata.push(("projection_output".into(), PROJECTION.into()));
        metadata.push(("projection_size".into(), out.to_string()));
    }
    let info = &checkpoint.info;
    metadata.extend([
        ("encoder".to_owned(), model.arch.kind().to_owned()),
        ("encoder_spec".into(), model.arch.spec().to_string()),
        (
            "batch_norm".into(),
            if a.fold {
                "folded"
            } else {
                "BatchNormalization"
            }
            .into(),
        ),
        ("definition_hash".into(), info.definition_hash.clone()),
        ("training_step".into(), info.steps.to_string()),
        ("epoch".into(), info.epoch.to_string()),
        ("seed".into(), info.seed.to_string()),
        (
            "exported_by".into(),
            format!("simclr {}", env!("CARGO_PKG_VERSION")),
        ),
    ]);
    let size_text = pre
        .size
        .map_or_else(|| "any size".to_owned(), |(h, w)| format!("{h}x{w}"));
    let doc = format!(
        "SimCLR encoder f: {}, trained {} steps (definition {}). Input `{INPUT}`: float32 \
         [batch, {}, H, W] ({size_text}), pixels/255 normalised with mean {:?} and std {:?}. \
         Output `{FEATURES}`: h [batch, {feature_dim}]{}.",
        model.arch.describe(),
        info.steps,
        info.definition_hash,
        pre.channels,
        pre.mean,
        pre.std,
        projection_size.map_or_else(String::new, |p| format!(
            "; `{PROJECTION}`: z = g(h) [batch, {p}]"
        )),
    );
    let options = ExportOptions {
        opset: a.opset,
        fold_batch_norm: a.fold,
        metadata,
        doc,
    };
    let proto = export_model(
        &model,
        a.head,
        InputShape {
            channels: pre.channels,
            size: pre.size,
        },
        &options,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.dir.display()))?;
    let nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
    let bytes = to_bytes(&proto);
    let mut text = format!(
        "exported {} from {} (step {}) to {}: {} nodes, opset {}, {:.1} MB, BatchNorm {}\n  \
         input `{INPUT}` [batch, {}, {}] float32 NCHW; outputs `{FEATURES}` [batch, {feature_dim}]{}\n",
        model.arch.describe(),
        checkpoint.dir.display(),
        info.steps,
        a.out.display(),
        nodes,
        a.opset,
        bytes.len() as f64 / 1e6,
        if a.fold {
            "folded"
        } else {
            "kept (inference mode)"
        },
        pre.channels,
        pre.size
            .map_or_else(|| "height, width".to_owned(), |(h, w)| format!("{h}, {w}")),
        projection_size.map_or_else(String::new, |p| format!(", `{PROJECTION}` [batch, {p}]")),
    );
    if a.verify {
        let rows = verify(&model, &bytes, &pre, &train, &definition, a.verify_images)?;
        let worst = rows.iter().map(|c| c.max_abs).fold(0.0, f64::max);
        let table: Vec<String> = rows.iter().map(|c| format!("  {c}")).collect();
        if worst.is_nan() || worst > a.tolerance {
            bail!(
                "verification failed: ONNX Runtime differs from candle by {worst:.3e} (tolerance \
                 {:.0e}, --tolerance to change it); nothing written\n{}",
                a.tolerance,
                table.join("\n")
            );
        }
        text.push_str(&format!(
            "  verified in ONNX Runtime against candle: max |difference| {worst:.2e} <= {:.0e}\n{}\n",
            a.tolerance,
            table.join("\n")
        ));
    } else {
        text.push_str("  not verified (--no-verify)\n");
    }
    simclr::onnx::files::write_atomic(a.out, &bytes).map_err(anyhow::Error::msg)?;
    text.push_str(&format!("  {:.1} s", t0.elapsed().as_secs_f64()));
    Ok(text)
}

/// The export against candle: random batches of 7 and 1, and up to `images` of the run's own
/// training images, preprocessed as for evaluation (when the data is readable here).
fn verify(
    model: &Model,
    bytes: &[u8],
    pre: &Preprocessing,
    train: &TrainSplit<'_>,
    definition: &Path,
    images: usize,
) -> Result<Vec<Comparison>> {
    let mut onnx = OnnxModel::from_bytes(bytes, 0)
        .map_err(|e| anyhow::anyhow!("{e}\n(to export without the check: --no-verify)"))?;
    let (h, w) = pre.size.unwrap_or((32, 32));
    let c = pre.channels;
    let x = random_inputs(7 * c * h * w, 1);
    let mut rows =
        compare(&mut onnx, model, &x, &[7, c, h, w], "random").map_err(anyhow::Error::msg)?;
    rows.extend(
        compare(&mut onnx, model, &x[..c * h * w], &[1, c, h, w], "random")
            .map_err(anyhow::Error::msg)?,
    );
    if images > 0 {
        let real = train.get().and_then(|d| load(train.run, d, Some(images)));
        match real {
            Ok(set) => {
                let (sc, sh, sw) = set.shape;
                rows.extend(
                    compare(
                        &mut onnx,
                        model,
                        &set.pixels,
                        &[set.len(), sc, sh, sw],
                        "dataset",
                    )
                    .map_err(anyhow::Error::msg)?,
                );
            }
            Err(e) => eprintln!(
                "note: verifying on random inputs only; the run's images are not readable here ({}: {e})",
                definition.display()
            ),
        }
    }
    Ok(rows)
}

/// Options of `simclr embed`.
pub struct EmbedArgs<'a> {
    /// `.onnx` file or checkpoint.
    pub model: &'a Path,
    /// Image folder, IDX file or `.npy`.
    pub input: &'a Path,
    /// Output `.npy`.
    pub out: &'a Path,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Threads (0: one per core).
    pub threads: usize,
    /// `features` or `projection`.
    pub output: &'a str,
    /// Only the first N inputs.
    pub limit: Option<usize>,
    /// No progress bar.
    pub quiet: bool,
}

enum Backend {
    Onnx {
        model: Box<OnnxModel>,
        path: PathBuf,
    },
    Candle(Box<Model>),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Onnx { .. } => "ONNX Runtime",
            Backend::Candle(_) => "candle",
        }
    }

    /// Rows of the chosen output for a batch.
    fn run(&mut self, x: &[f32], dims: &[usize], output: &str) -> Result<(usize, Vec<f32>)> {
        match self {
            Backend::Onnx { model, path } => {
                let outs = model.run(x, dims).map_err(anyhow::Error::msg)?;
                // A model from elsewhere with one output: that one is the embedding.
                let only = outs.len() == 1 && output == FEATURES;
                let o = outs
                    .into_iter()
                    .find(|o| o.name == output || only)
                    .with_context(|| {
                        format!(
                            "{}: the model has no output `{output}` (it has {})",
                            path.display(),
                            model.output_names().join(", ")
                        )
                    })?;
                Ok((o.dims.get(1).copied().unwrap_or(1), o.data))
            }
            Backend::Candle(m) => {
                let (h, z) = m.forward(x, dims, output == PROJECTION)?;
                let rows = if output == PROJECTION {
                    z.context("the checkpoint has no projection head")?
                } else {
                    h
                };
                Ok((rows.len() / dims[0].max(1), rows))
            }
        }
    }
}

/// What to embed.
enum Inputs {
    /// Decoded on demand and preprocessed; ids for folders.
    Images {
        data: std::sync::Arc<dyn Dataset>,
        ids: Option<Vec<String>>,
    },
    /// Already preprocessed `[n, c, h, w]`.
    Tensor { dims: Vec<usize>, data: Vec<f32> },
}

fn open_inputs(path: &Path, channels: usize) -> Result<Inputs> {
    if path.is_dir() {
        let (files, _) =
            simclr::source::image_folder::scan(path, false).map_err(anyhow::Error::msg)?;
        if files.is_empty() {
            bail!(
                "{}: no images (png, jpeg, webp, bmp, gif) under it",
                path.display()
            );
        }
        let ids = files
            .iter()
            .map(|(p, _)| {
                p.strip_prefix(path)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let data = simclr::source::image_folder::ImageFolder::new(files, channels as u8);
        return Ok(Inputs::Images {
            data: std::sync::Arc::new(data),
            ids: Some(ids),
        });
    }
    if !path.is_file() {
        bail!("{}: no such file or folder", path.display());
    }
    if path.extension().is_some_and(|e| e == "npy") {
        let (dims, data) = simclr::onnx::npy::read_f32(path).map_err(anyhow::Error::msg)?;
        if dims.len() != 4 {
            bail!(
                "{}: shape {dims:?}; a .npy input holds preprocessed images [n, channels, height, width]",
                path.display()
            );
        }
        return Ok(Inputs::Tensor { dims, data });
    }
    let data = simclr::source::idx::IdxDataset::load(path, None).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an image folder, .npy or IDX file: {e}",
            path.display()
        )
    })?;
    Ok(Inputs::Images {
        data: std::sync::Arc::new(data),
        ids: None,
    })
}

/// The deterministic preprocessing of an image of `height × width`: scale and crop the
/// centre to the model's size when it differs, then pixel/255 and normalisation.
fn policy(pre: &Preprocessing, height: usize, width: usize) -> Result<Policy> {
    simclr::eval::data::deterministic_policy(
        pre.size,
        Some((pre.mean.as_slice(), pre.std.as_slice())),
        height,
        width,
    )
    .map_err(anyhow::Error::msg)
}

/// `simclr embed`.
pub fn embed_command(a: &EmbedArgs<'_>) -> Result<String> {
    let t0 = Instant::now();
    let is_onnx = a.model.is_file();
    if !is_onnx && a.output != FEATURES && a.output != PROJECTION {
        bail!(
            "--output is `{FEATURES}` or `{PROJECTION}`, not `{}`",
            a.output
        );
    }
    let (mut backend, pre) = if is_onnx {
        let m = OnnxModel::load(a.model, a.threads).map_err(anyhow::Error::msg)?;
        let pre = match Preprocessing::from_metadata(m.metadata()) {
            Ok(pre) => pre,
            // A model from elsewhere: preprocessed .npy inputs need no metadata.
            Err(_) if a.input.extension().is_some_and(|e| e == "npy") => {
                let (dims, _) = simclr::onnx::npy::read_f32(a.input).map_err(anyhow::Error::msg)?;
                Preprocessing::identity(dims.get(1).copied().unwrap_or(0), None)
            }
            Err(e) => bail!(
                "{}: {e}; without it only preprocessed .npy inputs can be embedded",
                a.model.display()
            ),
        };
        (
            Backend::Onnx {
                model: Box::new(m),
                path: a.model.to_owned(),
            },
            pre,
        )
    } else {
        let m = load_model(a.model)?;
        let (run, _) = run_data(&m)?;
        let pre = preprocessing(&m, &run, &TrainSplit::new(&run))?;
        (Backend::Candle(Box::new(m)), pre)
    };
    let inputs = open_inputs(a.input, pre.channels)?;
    let total = match &inputs {
        Inputs::Images { data, .. } => data.len() as usize,
        Inputs::Tensor { dims, .. } => dims[0],
    }
    .min(a.limit.unwrap_or(usize::MAX));
    if total == 0 {
        bail!("{}: nothing to embed", a.input.display());
    }
    if let Inputs::Tensor { dims, .. } = &inputs {
        if dims[1] != pre.channels {
            bail!(
                "{}: {} channel(s), the model takes {}",
                a.input.display(),
                dims[1],
                pre.channels
            );
        }
        if let Some((h, w)) = pre.size
            && (dims[2], dims[3]) != (h, w)
        {
            bail!(
                "{}: images of {}x{}, the model takes {h}x{w} (a .npy input is used as it is: preprocess it to that size)",
                a.input.display(),
                dims[2],
                dims[3]
            );
        }
    }
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} images  {per_sec}  eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    };
    let batch = a.batch_size.max(1);
    let mut rows: Vec<f32> = Vec::new();
    let mut dim = 0;
    let mut start = 0;
    // Every input must reach the model at one size (a model for any size gets the images as
    // they are): the first image's, checked across batches.
    let mut first_shape: Option<Shape> = None;
    let mut policies: std::collections::HashMap<(usize, usize), Policy> = Default::default();
    while start < total {
        let n = batch.min(total - start);
        let (x, dims) = match &inputs {
            Inputs::Tensor { dims, data } => {
                let per = dims[1] * dims[2] * dims[3];
                (
                    data[start * per..(start + n) * per].to_vec(),
                    vec![n, dims[1], dims[2], dims[3]],
                )
            }
            Inputs::Images { data, ids } => {
                let name = |i: usize| {
                    ids.as_ref()
                        .map_or_else(|| format!("item {i}"), |ids| ids[i].clone())
                };
                let samples: Vec<simclr::source::common::Sample> = (start..start + n)
                    .into_par_iter()
                    .map(|i| {
                        let s = data.get(i as u64).map_err(|e| {
                            anyhow::anyhow!("{}: {}: {}", a.input.display(), e.item, e.cause)
                        })?;
                        if usize::from(s.channels) != pre.channels {
                            bail!(
                                "{}: {} has {} channel(s), the model takes {}",
                                a.input.display(),
                                name(i),
                                s.channels,
                                pre.channels
                            );
                        }
                        Ok(s)
                    })
                    .collect::<Result<_>>()?;
                for s in &samples {
                    let key = (s.height as usize, s.width as usize);
                    if let std::collections::hash_map::Entry::Vacant(e) = policies.entry(key) {
                        e.insert(policy(&pre, key.0, key.1)?);
                    }
                }
                let images: Vec<(Vec<f32>, Shape)> = samples
                    .into_par_iter()
                    .enumerate()
                    .map(|(k, s)| {
                        let shape = Shape {
                            channels: usize::from(s.channels),
                            height: s.height as usize,
                            width: s.width as usize,
                        };
                        let mut img = Img::from_u8(shape, s.pixels.to_vec());
                        let mut rng = simclr::core::Rng::from_key(&[0]);
                        policies[&(shape.height, shape.width)]
                            .run(&mut img, &mut rng)
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "{}: {}: {}",
                                    a.input.display(),
                                    name(start + k),
                                    e.0
                                )
                            })?;
                        let shape = img.shape;
                        Ok((img.into_f32(), shape))
                    })
                    .collect::<Result<_>>()?;
                let shape = *first_shape.get_or_insert(images[0].1);
                if let Some((k, (_, s))) = images.iter().enumerate().find(|(_, im)| im.1 != shape) {
                    bail!(
                        "{}: {} is {}x{} after preprocessing, the first image {}x{}: the model \
                         takes any size, so images are not resized and must share one (export \
                         from a run whose policy fixes the size, or resize them)",
                        a.input.display(),
                        name(start + k),
                        s.height,
                        s.width,
                        shape.height,
                        shape.width
                    );
                }
                let mut x = Vec::with_capacity(n * shape.len());
                for (p, _) in images {
                    x.extend_from_slice(&p);
                }
                (x, vec![n, shape.channels, shape.height, shape.width])
            }
        };
        let (d, out) = backend.run(&x, &dims, a.output)?;
        dim = d;
        rows.extend_from_slice(&out);
        start += n;
        bar.set_position(start as u64);
    }
    bar.finish_and_clear();
    simclr::onnx::npy::write_f32(a.out, &[total, dim], &rows).map_err(anyhow::Error::msg)?;
    let mut text = format!(
        "{} embeddings ({}, {dim} values each) of {} with {} -> {}",
        total,
        a.output,
        a.input.display(),
        backend.name(),
        a.out.display()
    );
    let ids_path = a.out.with_extension("ids.txt");
    if let Inputs::Images { ids: Some(ids), .. } = &inputs {
        // One line per row; a newline or backslash inside a file name is escaped.
        let mut body = String::new();
        for id in &ids[..total] {
            body.push_str(&id.replace('\\', "\\\\").replace('\n', "\\n"));
            body.push('\n');
        }
        simclr::onnx::files::write_atomic(&ids_path, body.as_bytes())
            .map_err(anyhow::Error::msg)?;
        text.push_str(&format!(" (row ids: {})", ids_path.display()));
    } else if ids_path.is_file() {
        // A previous run's ids would describe other rows.
        std::fs::remove_file(&ids_path)
            .with_context(|| format!("cannot remove the stale {}", ids_path.display()))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    text.push_str(&format!(
        "\n{secs:.1} s, {:.0} images/s",
        total as f64 / secs.max(1e-9)
    ));
    Ok(text)
}

/// Options of `simclr bench embed`.
pub struct BenchEmbedArgs {
    /// ResNet depth.
    pub depth: usize,
    /// ResNet width.
    pub width: usize,
    /// Input side.
    pub size: usize,
    /// Input channels.
    pub channels: usize,
    /// Images per batch.
    pub batch: usize,
    /// Timed batches per backend.
    pub batches: usize,
    /// ONNX Runtime intra-op threads (0: one per core).
    pub threads: usize,
    /// JSON output.
    pub json: bool,
}

/// `simclr bench embed`: forward throughput of ONNX Runtime (the exported, folded model) vs
/// candle (the model stages in evaluation mode) on the same seeded ResNet and inputs.
pub fn bench_embed(a: &BenchEmbedArgs) -> Result<String> {
    let spec = serde_json::json!({
        "depth": a.depth, "width": a.width, "stem": "cifar", "in_channels": a.channels
    });
    let arch = simclr::registry::encoders().architecture("resnet", &spec)?;
    let model = Model::seeded(arch, None, 0, &Device::Cpu)?;
    let proto = export_model(
        &model,
        false,
        InputShape {
            channels: a.channels,
            size: Some((a.size, a.size)),
        },
        &ExportOptions {
            opset: DEFAULT_OPSET,
            ..ExportOptions::default()
        },
    )
    .map_err(anyhow::Error::msg)?;
    let mut onnx =
        OnnxModel::from_bytes(&to_bytes(&proto), a.threads).map_err(anyhow::Error::msg)?;
    let dims = [a.batch, a.channels, a.size, a.size];
    let x = random_inputs(dims.iter().product(), 7);
    let diff = compare(&mut onnx, &model, &x, &dims, "random")
        .map_err(anyhow::Error::msg)?
        .iter()
        .map(|c| c.max_abs)
        .fold(0.0, f64::max);
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        let t = Instant::now();
        for _ in 0..a.batches.max(1) {
            f()?;
        }
        Ok(t.elapsed().as_secs_f64() / a.batches.max(1) as f64)
    };
    let ort_s = time(&mut || {
        onnx.run(&x, &dims).map_err(anyhow::Error::msg)?;
        Ok(())
    })?;
    let candle_s = time(&mut || {
        model.forward(&x, &dims, false)?;
        Ok(())
    })?;
    let per = |s: f64| a.batch as f64 / s;
    if a.json {
        return Ok(serde_json::json!({
            "model": format!("resnet{} width {} {}x{}x{}", a.depth, a.width, a.channels, a.size, a.size),
            "batch": a.batch,
            "batches": a.batches,
            "onnxruntime_ms_per_batch": ort_s * 1e3,
            "candle_ms_per_batch": candle_s * 1e3,
            "onnxruntime_images_per_s": per(ort_s),
            "candle_images_per_s": per(candle_s),
            "ratio_onnxruntime_over_candle": per(ort_s) / per(candle_s),
            "max_abs_difference": diff,
        })
        .to_string());
    }
    Ok(format!(
        "ResNet-{} width {}, {}x{}x{}, batch {}, {} timed batches each (after one warm-up)\n\
         | backend | ms/batch | images/s |\n|---|---|---|\n\
         | ONNX Runtime (exported, BatchNorm folded) | {:.1} | {:.0} |\n\
         | candle (model stages, evaluation mode) | {:.1} | {:.0} |\n\
         ONNX Runtime / candle throughput: {:.2}x; max |difference| {diff:.1e}",
        a.depth,
        a.width,
        a.channels,
        a.size,
        a.size,
        a.batch,
        a.batches.max(1),
        ort_s * 1e3,
        per(ort_s),
        candle_s * 1e3,
        per(candle_s),
        per(ort_s) / per(candle_s),
    ))
}
