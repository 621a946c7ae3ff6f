//! The labelled images an evaluation reads, prepared as the encoder saw them in training minus
//! the randomness.
//!
//! The built graph says both: the source stage publishes its labelled splits and the `views`
//! stage the deterministic counterpart of its policy (`simclr_core::data`), and they reach
//! every stage downstream in its stream facts. The kNN monitor reads them from its own; the
//! commands that start from a checkpoint build the graph of its copy of the definition with
//! the registry (custom sources and transforms included) and read them from its last stage.
//! As torchvision's evaluation transforms do, images whose size differs from the training crop
//! are resized (shorter side) and centre-cropped to it, and a `normalize` step of the policy is
//! kept. Nothing is random.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use simclr_config::Registry;
use simclr_config::graph::LoadOptions;
use simclr_core::{LabelledData, Preprocess, StreamFacts};
use simclr_stage_augment::ops::{CenterCrop, Normalize, Resize};
use simclr_stage_augment::{Img, Policy, Shape, Transform};
use simclr_stage_model::stage::checkpoint::CheckpointInfo;
use simclr_stage_source::common::{Dataset, Split};

use crate::EvalError;

/// Where a run's images come from and how evaluation prepares them, from its built graph.
#[derive(Clone, Debug)]
pub struct RunData {
    /// The source's labelled splits.
    pub labelled: Arc<dyn LabelledData>,
    /// The deterministic counterpart of the training policy.
    pub preprocessing: Preprocess,
    /// For sources without a test split (an image folder): the folder of held-out images.
    pub test_path: Option<String>,
}

impl RunData {
    /// From the stream facts that reached a stage: its source's splits and its `views`
    /// stage's preprocessing (none when no `views` stage is upstream).
    ///
    /// # Errors
    /// No source with labelled splits upstream.
    pub fn from_facts(facts: &StreamFacts) -> Result<Self, EvalError> {
        let labelled = facts.labelled.clone().ok_or_else(|| {
            EvalError::Invalid(
                "no source stage upstream offers labelled data (idx, cifar, image_folder, synthetic)"
                    .into(),
            )
        })?;
        Ok(Self {
            labelled,
            preprocessing: facts.preprocessing.clone().unwrap_or_default(),
            test_path: None,
        })
    }

    /// From a built graph: the facts of the last stage that has a source upstream.
    ///
    /// # Errors
    /// A graph without a source of labelled data.
    pub fn from_graph(graph: &simclr_config::Graph) -> Result<Self, EvalError> {
        let facts = graph
            .nodes
            .iter()
            .rev()
            .map(|n| &n.facts)
            .find(|f| f.labelled.is_some())
            .ok_or_else(|| {
                EvalError::Invalid(
                    "the definition has no source stage with labels (idx, cifar, image_folder, synthetic)"
                        .into(),
                )
            })?;
        Self::from_facts(facts)
    }

    /// Build the graph of a definition's text with `registry` and read it. The graph is built
    /// for the CPU (a run trained on a GPU is evaluated anywhere): `device` and `precision` are
    /// set to `cpu` and `fp32`.
    ///
    /// # Errors
    /// A definition that does not validate here (its data missing, say), or one without a
    /// source of labelled data.
    pub fn from_definition(text: &str, registry: &Registry) -> Result<Self, EvalError> {
        Self::from_definition_file(
            Path::new(simclr_stage_model::run_dir::DEFINITION),
            text,
            registry,
        )
    }

    /// [`RunData::from_definition`] of the text of `file` (errors name it).
    ///
    /// # Errors
    /// A definition that does not build, or one without a labelled source.
    pub fn from_definition_file(
        file: &Path,
        text: &str,
        registry: &Registry,
    ) -> Result<Self, EvalError> {
        let options = LoadOptions {
            overrides: vec![
                ("device".into(), "cpu".into()),
                ("precision".into(), "fp32".into()),
            ],
            ..LoadOptions::default()
        };
        let graph = simclr_config::load_str(file, text, registry, &options)?;
        Self::from_graph(&graph)
    }

    /// Read the copy of the definition a checkpoint folder keeps (`definition.yaml`); errors
    /// name that file. The preprocessing is the one the checkpoint recorded from the graph
    /// that trained (`state.json`), when it has one: the definition copy may lack `--set`
    /// overrides.
    ///
    /// # Errors
    /// No readable definition there, or one [`RunData::from_definition`] refuses.
    pub fn from_checkpoint(dir: &Path, registry: &Registry) -> Result<Self, EvalError> {
        let definition = dir.join(simclr_stage_model::run_dir::DEFINITION);
        let text = std::fs::read_to_string(&definition).map_err(|source| EvalError::Read {
            path: definition.clone(),
            source,
        })?;
        let mut run = Self::from_definition_file(&definition, &text, registry)
            .map_err(|e| e.context(definition.display().to_string()))?;
        let state = dir.join(simclr_stage_model::run_dir::STATE);
        let recorded = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<CheckpointInfo>(&t).ok())
            .and_then(|info| info.preprocessing);
        if let Some(p) = recorded {
            run.preprocessing = p;
        }
        Ok(run)
    }

    /// Open one split.
    ///
    /// # Errors
    /// As the source's [`LabelledData::open`].
    pub fn open(&self, split: Split) -> Result<Arc<dyn Dataset>, EvalError> {
        Ok(self.labelled.open(split, self.test_path.as_deref())?)
    }

    /// The source, for reports (`idx (/data/fashion-mnist)`).
    pub fn source(&self) -> String {
        self.labelled.describe()
    }

    /// The deterministic preprocessing for images of `height × width`.
    fn policy(&self, height: usize, width: usize) -> Result<Policy, EvalError> {
        deterministic_policy(
            self.preprocessing.size,
            self.preprocessing
                .normalize
                .as_ref()
                .map(|(m, s)| (m.as_slice(), s.as_slice())),
            height,
            width,
        )
    }
}

/// The deterministic preprocessing of an image of `height × width` for a model that takes
/// `size` (H, W) when it is fixed: scale so that it covers H × W (the shorter side to H for
/// square inputs, torchvision's `Resize(H)`), crop the centre; then pixel/255 and `normalize`
/// (per-channel mean and std) when given.
///
/// # Errors
/// Parameters the transforms refuse (a zero std, say).
pub fn deterministic_policy(
    size: Option<(usize, usize)>,
    normalize: Option<(&[f64], &[f64])>,
    height: usize,
    width: usize,
) -> Result<Policy, EvalError> {
    let mut ops: Vec<Box<dyn Transform>> = Vec::new();
    if let Some((h, w)) = size
        && (height, width) != (h, w)
    {
        let side = |n: usize| {
            u32::try_from(n).map_err(|_| EvalError::Invalid(format!("size {n} is too large")))
        };
        if h == w {
            ops.push(Box::new(Resize::shorter_side(side(h)?)));
        } else {
            let s = f64::max(
                h as f64 / height.max(1) as f64,
                w as f64 / width.max(1) as f64,
            );
            let rh = ((height as f64 * s).ceil() as usize).max(h);
            let rw = ((width as f64 * s).ceil() as usize).max(w);
            ops.push(Box::new(Resize::exact(side(rh)?, side(rw)?)));
        }
        ops.push(Box::new(CenterCrop::new(h, w)));
    }
    if let Some((mean, std)) = normalize {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(EvalError::Invalid(format!(
                "`mean` and `std` need the same, non-zero length (found {} and {})",
                mean.len(),
                std.len()
            )));
        }
        if std.iter().any(|&s| s.is_nan() || s <= 0.0) {
            return Err(EvalError::Invalid("every `std` must be positive".into()));
        }
        ops.push(Box::new(Normalize {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std.iter().map(|&s| s as f32).collect(),
        }));
    }
    Ok(Policy::new(ops))
}

/// A decoded item through a deterministic `policy` (one of [`deterministic_policy`]'s): its
/// float32 CHW values and their shape.
///
/// # Errors
/// A transform that refuses the image.
pub fn prepare(
    sample: &simclr_core::Sample,
    policy: &Policy,
) -> Result<(Vec<f32>, Shape), simclr_stage_augment::TransformError> {
    let shape = Shape {
        channels: usize::from(sample.channels),
        height: sample.height as usize,
        width: sample.width as usize,
    };
    let mut img = Img::from_u8(shape, sample.pixels.to_vec());
    // Nothing in the policy draws; the generator only satisfies the interface.
    let mut rng = simclr_core::Rng::from_key(&[0]);
    policy.run(&mut img, &mut rng)?;
    let shape = img.shape;
    Ok((img.into_f32(), shape))
}

/// Labelled images as float32 CHW tensors' data, in dataset order.
#[derive(Clone, Debug)]
pub struct LabelledSet {
    /// `n × c × h × w` values.
    pub pixels: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// `(c, h, w)`.
    pub shape: (usize, usize, usize),
}

impl LabelledSet {
    /// Images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Classes: the largest label + 1.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }
}

/// Read the first `limit` items (all when `None`) of `data`, preprocessed as `run` says. Every
/// item needs a label.
///
/// # Errors
/// An unreadable or unlabelled item, named; images of different sizes after preprocessing.
pub fn load(
    run: &RunData,
    data: &dyn Dataset,
    limit: Option<usize>,
) -> Result<LabelledSet, EvalError> {
    let n = (data.len() as usize).min(limit.unwrap_or(usize::MAX));
    if n == 0 {
        return Err(EvalError::Invalid("the dataset is empty".into()));
    }
    let first = data.get(0).map_err(|e| EvalError::Invalid(e.to_string()))?;
    let policy = run.policy(first.height as usize, first.width as usize)?;
    let items: Vec<(Vec<f32>, u32, Shape)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let s = data
                .get(i as u64)
                .map_err(|e| EvalError::Invalid(e.to_string()))?;
            let label = s.label.ok_or_else(|| {
                EvalError::Invalid(format!(
                    "item {i} has no label; evaluation needs labelled data"
                ))
            })?;
            let (pixels, shape) = prepare(&s, &policy)
                .map_err(|e| EvalError::Invalid(format!("item {i}: {}", e.0)))?;
            Ok((pixels, label, shape))
        })
        .collect::<Result<_, EvalError>>()?;
    let shape = items[0].2;
    if let Some((i, s)) = items.iter().enumerate().find(|(_, it)| it.2 != shape) {
        return Err(EvalError::Invalid(format!(
            "item {i} is {}×{}×{} after preprocessing, item 0 {}×{}×{}; evaluation needs one size",
            s.2.channels, s.2.height, s.2.width, shape.channels, shape.height, shape.width
        )));
    }
    let mut pixels = Vec::with_capacity(n * shape.len());
    let mut labels = Vec::with_capacity(n);
    for (p, l, _) in items {
        pixels.extend_from_slice(&p);
        labels.push(l);
    }
    Ok(LabelledSet {
        pixels,
        labels,
        shape: (shape.channels, shape.height, shape.width),
    })
}
