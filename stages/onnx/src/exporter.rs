//! Export a checkpoint's encoder (and optionally its head) to ONNX, verified in ONNX Runtime
//! against candle: what `simclr export` runs, as a library call.
//!
//! The input size and normalisation come from the run (the copy of its definition in the
//! checkpoint): the training crop's size — or, without one, the size of the run's own images
//! when they can be read here, else any size — and the policy's `normalize`. They go into the
//! model's metadata ([`crate::meta`]) and its doc string. Verification runs random batches of
//! 7 and 1 and up to `images` of the run's training images, preprocessed as for evaluation,
//! through both; a difference above the tolerance is an error and no bytes are returned.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use simclr_config::Registry;
use simclr_core::Preprocess;
use simclr_stage_eval::EvalError;
use simclr_stage_eval::data::{RunData, load};
use simclr_stage_model::error::chain;
use simclr_stage_model::run_dir::DEFINITION;
use simclr_stage_model::{Encoders, TrainedModel, Weights};
use simclr_stage_source::common::{Dataset, Split};

use crate::error::OnnxError;
use crate::export::{
    ExportOptions, FEATURES, INPUT, InputShape, PROJECTION, export_model, to_bytes,
};
use crate::meta::Preprocessing;
use crate::runtime::OnnxModel;
use crate::verify::{Comparison, compare, random_inputs};

/// How to export.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// Include the projection head (output `projection`).
    pub head: bool,
    /// ONNX opset.
    pub opset: i64,
    /// Fold BatchNorm into the layers before it.
    pub fold_batch_norm: bool,
    /// Check the file in ONNX Runtime against candle (`None`: no check, no ONNX Runtime).
    pub verify: Option<VerifySettings>,
}

/// How to verify.
#[derive(Clone, Copy, Debug)]
pub struct VerifySettings {
    /// Largest |ONNX Runtime − candle| accepted.
    pub tolerance: f64,
    /// Images of the run's own data to check too (when readable here).
    pub images: usize,
}

/// A finished export.
#[derive(Debug)]
pub struct Exported {
    /// The model file.
    pub bytes: Vec<u8>,
    /// Nodes in its graph.
    pub nodes: usize,
    /// The encoder, described (`ResNet-18 (width 8, CIFAR stem)`).
    pub description: String,
    /// The checkpoint exported.
    pub checkpoint: PathBuf,
    /// Its training step.
    pub step: u64,
    /// The input's preprocessing (also in the metadata).
    pub preprocessing: Preprocessing,
    /// Size of h.
    pub feature_dim: usize,
    /// Size of z, with the head.
    pub projection_size: Option<usize>,
    /// The verification's comparisons (`None` when not verified).
    pub comparisons: Option<Vec<Comparison>>,
    /// What the caller should tell the user (data not readable here, size left open).
    pub notes: Vec<String>,
}

impl Exported {
    /// The largest difference the verification found.
    pub fn worst(&self) -> Option<f64> {
        self.comparisons
            .as_ref()
            .map(|rows| rows.iter().map(|c| c.max_abs).fold(0.0, f64::max))
    }
}

/// The run's training split, opened at most once and only when something needs it (opening
/// Fashion-MNIST's reads 60 000 images).
pub struct TrainSplit<'a> {
    run: Result<&'a RunData, &'a Arc<EvalError>>,
    data: std::cell::OnceCell<Result<Arc<dyn Dataset>, Arc<EvalError>>>,
}

impl<'a> TrainSplit<'a> {
    /// The training split of `run`, not yet opened (`Err`: why the run's data is not
    /// available here).
    pub fn new(run: Result<&'a RunData, &'a Arc<EvalError>>) -> Self {
        Self {
            run,
            data: std::cell::OnceCell::new(),
        }
    }

    /// The split, opened on first use.
    ///
    /// # Errors
    /// The data cannot be read here (the same error on every call).
    pub fn get(&self) -> Result<&dyn Dataset, Arc<EvalError>> {
        let open = || match self.run {
            Ok(run) => run.open(Split::Train).map_err(Arc::new),
            Err(e) => Err(e.clone()),
        };
        match self.data.get_or_init(open) {
            Ok(d) => Ok(d.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Its first `limit` images, prepared for evaluation.
    ///
    /// # Errors
    /// As [`TrainSplit::get`] and [`load`].
    pub fn load(
        &self,
        limit: usize,
    ) -> Result<simclr_stage_eval::data::LabelledSet, Arc<EvalError>> {
        let data = self.get()?;
        match self.run {
            Ok(run) => load(run, data, Some(limit)).map_err(Arc::new),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A checkpoint's run as export and embed need it: the deterministic preprocessing its
/// checkpoint recorded (or, for older checkpoints, its graph's), and its data when the graph
/// of its definition builds here.
pub struct RunInputs {
    /// The policy's deterministic counterpart.
    pub preprocess: Preprocess,
    /// The run's data, or why it is not available here.
    pub run: Result<RunData, Arc<EvalError>>,
}

impl RunInputs {
    /// Read `model`'s checkpoint: its recorded preprocessing, and the graph of its definition
    /// copy built with `registry`.
    ///
    /// # Errors
    /// A model without a checkpoint; a checkpoint that recorded no preprocessing (written by
    /// an older build) whose definition does not build here.
    pub fn of(model: &TrainedModel, registry: &Registry) -> Result<Self, OnnxError> {
        let checkpoint = model
            .checkpoint
            .as_ref()
            .ok_or_else(|| OnnxError::Message("the model has no checkpoint".into()))?;
        // `from_checkpoint` prepares the run's images with the checkpoint's recorded
        // preprocessing when it has one (its definition copy may lack `--set` overrides).
        let run = RunData::from_checkpoint(&checkpoint.dir, registry).map_err(Arc::new);
        let preprocess = match (&run, &checkpoint.info.preprocessing) {
            (Ok(run), _) => run.preprocessing.clone(),
            (Err(_), Some(p)) => p.clone(),
            (Err(e), None) => return Err(OnnxError::Eval(e.clone())),
        };
        Ok(Self { preprocess, run })
    }

    /// The run's training split, opened on first use.
    pub fn train(&self) -> TrainSplit<'_> {
        TrainSplit::new(self.run.as_ref())
    }
}

/// How images become `model`'s input: the training crop size (or, without one, the size of
/// the run's images when they can be read; else any size, with a note), `normalize` of the
/// policy.
///
/// # Errors
/// A `normalize` whose values do not fit the channels.
pub fn preprocessing(
    model: &TrainedModel,
    preprocess: &Preprocess,
    train: &TrainSplit<'_>,
    notes: &mut Vec<String>,
) -> Result<Preprocessing, OnnxError> {
    let channels = model.arch.in_channels();
    let size = match preprocess.size {
        Some(s) => Some(s),
        None => match train
            .get()
            .map_err(|e| chain(&*e))
            .and_then(|d| d.get(0).map_err(|e| e.to_string()))
        {
            Ok(s) => Some((s.height as usize, s.width as usize)),
            Err(e) => {
                notes.push(format!(
                    "the run's policy fixes no size and its images are not readable here \
                     ({e}); the model takes any size and images are not resized"
                ));
                None
            }
        },
    };
    let mut p = Preprocessing::identity(channels, size);
    if let Some((mean, std)) = &preprocess.normalize {
        let fit = |v: &Vec<f64>| -> Result<Vec<f64>, OnnxError> {
            match v.len() {
                1 => Ok(vec![v[0]; channels]),
                n if n == channels => Ok(v.clone()),
                n => Err(OnnxError::Message(format!(
                    "the definition's normalize has {n} values for {channels} channel(s)"
                ))),
            }
        };
        p.mean = fit(mean)?;
        p.std = fit(std)?;
    }
    Ok(p)
}

/// Export the model of the checkpoint at `path` (a run folder, checkpoints folder or
/// checkpoint), reading its encoder kind from `encoders`.
///
/// # Errors
/// A tolerance that is not a finite number ≥ 0, no usable checkpoint, `head` without a head in it, an export the writer refuses, ONNX
/// Runtime missing (when verifying), or a verification over the tolerance
/// ([`OnnxError::Verification`]).
pub fn export_checkpoint(
    path: &Path,
    registry: &Registry,
    encoders: &Encoders,
    settings: &ExportSettings,
) -> Result<Exported, OnnxError> {
    if let Some(v) = &settings.verify
        && !(v.tolerance.is_finite() && v.tolerance >= 0.0)
    {
        // A NaN tolerance would pass every comparison.
        return Err(OnnxError::Message(format!(
            "the verification tolerance must be a finite number ≥ 0, not {}",
            v.tolerance
        )));
    }
    let model = TrainedModel::from_checkpoint(path, encoders, Weights::Trained, &Device::Cpu)?;
    let checkpoint = model
        .checkpoint
        .clone()
        .ok_or_else(|| OnnxError::Message("checkpoint".into()))?;
    let inputs = RunInputs::of(&model, registry)?;
    let train = inputs.train();
    let mut notes = Vec::new();
    let pre = preprocessing(&model, &inputs.preprocess, &train, &mut notes)?;
    let head = match (&model.head, settings.head) {
        (Some(h), true) => Some(h.kind),
        (None, true) => {
            return Err(OnnxError::file(
                &checkpoint.dir,
                "the checkpoint has no projection head to include",
            ));
        }
        (_, false) => None,
    };
    let feature_dim = model.arch.feature_dim();
    let mut metadata = pre.to_metadata();
    metadata.push(("embedding_output".into(), FEATURES.into()));
    metadata.push(("embedding_size".into(), feature_dim.to_string()));
    let projection_size = head.map(|kind| kind.out_size(feature_dim));
    if let Some(out) = projection_size {
        metadata.push(("projection_output".into(), PROJECTION.into()));
        metadata.push(("projection_size".into(), out.to_string()));
    }
    let info = &checkpoint.info;
    let batch_norm = if settings.fold_batch_norm {
        "folded"
    } else {
        "BatchNormalization"
    };
    metadata.extend([
        ("encoder".to_owned(), model.arch.kind().to_owned()),
        ("encoder_spec".into(), model.arch.spec().to_string()),
        ("batch_norm".into(), batch_norm.into()),
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
    let description = model.arch.describe();
    let doc = format!(
        "SimCLR encoder f: {description}, trained {} steps (definition {}). Input `{INPUT}`: \
         float32 [batch, {}, H, W] ({size_text}), pixels/255 normalised with mean {:?} and std \
         {:?}. Output `{FEATURES}`: h [batch, {feature_dim}]{}.",
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
        opset: settings.opset,
        fold_batch_norm: settings.fold_batch_norm,
        metadata,
        doc,
    };
    let input = InputShape {
        channels: pre.channels,
        size: pre.size,
    };
    let proto =
        export_model(&model, settings.head, input, &options).map_err(|e| OnnxError::In {
            path: checkpoint.dir.clone(),
            source: Box::new(e),
        })?;
    let nodes = proto.graph.as_ref().map_or(0, |g| g.node.len());
    let bytes = to_bytes(&proto);
    let comparisons = match settings.verify {
        Some(v) => {
            let definition = checkpoint.dir.join(DEFINITION);
            let rows = verify(
                &model,
                &bytes,
                &pre,
                &train,
                &definition,
                v.images,
                &mut notes,
            )?;
            let worst = rows.iter().map(|c| c.max_abs).fold(0.0, f64::max);
            if worst.is_nan() || worst > v.tolerance {
                return Err(OnnxError::Verification {
                    worst,
                    tolerance: v.tolerance,
                    rows,
                });
            }
            Some(rows)
        }
        None => None,
    };
    Ok(Exported {
        bytes,
        nodes,
        description,
        checkpoint: checkpoint.dir.clone(),
        step: info.steps,
        preprocessing: pre,
        feature_dim,
        projection_size,
        comparisons,
        notes,
    })
}

/// The export against candle: random batches of 7 and 1, and up to `images` of the run's own
/// training images, preprocessed as for evaluation (when the data is readable here).
fn verify(
    model: &TrainedModel,
    bytes: &[u8],
    pre: &Preprocessing,
    train: &TrainSplit<'_>,
    definition: &Path,
    images: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Comparison>, OnnxError> {
    let mut onnx = OnnxModel::from_bytes(bytes, 0).map_err(|e| {
        OnnxError::Message(format!(
            "{}\n(to export without the check: --no-verify)",
            chain(&e)
        ))
    })?;
    let (h, w) = pre.size.unwrap_or((32, 32));
    let c = pre.channels;
    let x = random_inputs(7 * c * h * w, 1);
    let mut rows = compare(&mut onnx, model, &x, &[7, c, h, w], "random")?;
    rows.extend(compare(
        &mut onnx,
        model,
        &x[..c * h * w],
        &[1, c, h, w],
        "random",
    )?);
    if images > 0 {
        match train.load(images) {
            Ok(set) => {
                let (sc, sh, sw) = set.shape;
                let dims = [set.len(), sc, sh, sw];
                rows.extend(compare(&mut onnx, model, &set.pixels, &dims, "dataset")?);
            }
            Err(e) => notes.push(format!(
                "verifying on random inputs only; the run's images are not readable here ({}: {})",
                definition.display(),
                chain(&*e)
            )),
        }
    }
    Ok(rows)
}
