//! The labelled images an evaluation reads, prepared as the encoder saw them in training minus
//! the randomness.
//!
//! A run's definition names its source stage (kind and parameters) and its `views` stage (the
//! augmentation policy). Evaluation opens the same source's train or test split and applies
//! the deterministic counterpart of the policy, as torchvision evaluation transforms do:
//! images whose size differs from the training crop are resized (shorter side) and
//! centre-cropped to it, and a `normalize` step of the policy is kept. Nothing is random.

use std::sync::Arc;

use rayon::prelude::*;
use simclr_core::{Value, ValueKind};
use simclr_stage_augment::{Img, Policy, Shape};
use simclr_stage_source::common::{Dataset, Split};

/// Source kinds evaluation can read labels from.
const SOURCE_KINDS: &[&str] = &["idx", "cifar", "image_folder", "synthetic"];

/// Where a run's images come from, read from its definition.
#[derive(Clone, Debug)]
pub struct RunData {
    /// The source stage's kind.
    pub kind: String,
    /// Its parameters.
    pub params: Value,
    /// The definition's seed.
    pub seed: u64,
    /// Side of the training crop (from `random_resized_crop`, `center_crop` or `resize` in the
    /// `t` policy), if the policy fixes one.
    pub crop: Option<usize>,
    /// `normalize` of the policy: per-channel mean and std.
    pub normalize: Option<(Vec<f64>, Vec<f64>)>,
    /// For `image_folder` sources: the folder of held-out images.
    pub test_path: Option<String>,
}

fn num(v: &Value) -> Option<f64> {
    match v.kind {
        ValueKind::Int(i) => Some(i as f64),
        ValueKind::UInt(u) => Some(u as f64),
        ValueKind::Float(f) => Some(f),
        _ => None,
    }
}

fn nums(v: &Value) -> Option<Vec<f64>> {
    match &v.kind {
        ValueKind::Seq(items) => items.iter().map(num).collect(),
        _ => num(v).map(|x| vec![x]),
    }
}

/// The side a `size:` fixes (`32` or `[32, 32]`).
fn side(v: &Value) -> Option<usize> {
    let n = nums(v)?;
    let first = *n.first()?;
    (n.iter().all(|&x| x == first) && first >= 1.0).then_some(first as usize)
}

impl RunData {
    /// Read the source and the policy from a definition's text.
    ///
    /// # Errors
    /// A definition that does not parse, or one without a source stage evaluation can read.
    pub fn from_definition(text: &str) -> Result<Self, String> {
        let root = simclr_config::yaml::parse(text)
            .map_err(|e| format!("definition, line {}: {}", e.loc.line, e.message))?;
        let seed = root
            .get("seed")
            .and_then(num)
            .map_or(0, |s| s.max(0.0) as u64);
        let stages = root
            .get("stages")
            .and_then(Value::entries)
            .ok_or("the definition has no `stages`")?;
        let kind_of = |s: &Value| s.get("kind").and_then(Value::as_str).map(str::to_owned);
        let (kind, params) = stages
            .iter()
            .find_map(|(_, s)| {
                let kind = kind_of(s)?;
                SOURCE_KINDS.contains(&kind.as_str()).then(|| {
                    (
                        kind,
                        s.get("params")
                            .cloned()
                            .unwrap_or_else(|| Value::empty_map(s.loc)),
                    )
                })
            })
            .ok_or("the definition has no source stage with labels (idx, cifar, image_folder, synthetic)")?;
        let policy = stages
            .iter()
            .find(|(_, s)| kind_of(s).as_deref() == Some("views"))
            .and_then(|(_, s)| s.get("params")?.get("t").cloned());
        let (mut crop, mut normalize) = (None, None);
        if let Some(Value {
            kind: ValueKind::Seq(ops),
            ..
        }) = &policy
        {
            for op in ops {
                let Some([(name, cfg)]) = op.entries() else {
                    continue;
                };
                match name.as_str() {
                    Some("random_resized_crop" | "center_crop") => {
                        crop = cfg.get("size").and_then(side).or(crop);
                    }
                    Some("resize") if crop.is_none() => crop = cfg.get("size").and_then(side),
                    Some("normalize") => {
                        if let (Some(m), Some(s)) = (
                            cfg.get("mean").and_then(nums),
                            cfg.get("std").and_then(nums),
                        ) {
                            normalize = Some((m, s));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            kind,
            params,
            seed,
            crop,
            normalize,
            test_path: None,
        })
    }

    /// Read the source and the policy from the copy of the definition a checkpoint folder
    /// keeps (`definition.yaml`); errors name that file.
    ///
    /// # Errors
    /// No readable definition there, or one [`RunData::from_definition`] refuses.
    pub fn from_checkpoint(dir: &std::path::Path) -> Result<Self, String> {
        let definition = dir.join(simclr_stage_model::run_dir::DEFINITION);
        let text = std::fs::read_to_string(&definition)
            .map_err(|e| format!("cannot read {}: {e}", definition.display()))?;
        Self::from_definition(&text).map_err(|e| format!("{}: {e}", definition.display()))
    }

    /// Open one split.
    ///
    /// # Errors
    /// As [`simclr_stage_source::open_split`].
    pub fn open(&self, split: Split) -> Result<Arc<dyn Dataset>, String> {
        simclr_stage_source::open_split(
            &self.kind,
            &self.params,
            self.seed,
            split,
            self.test_path.as_deref(),
        )
    }

    /// The deterministic preprocessing for images of `height × width`.
    fn policy(&self, height: usize, width: usize) -> Result<Policy, String> {
        deterministic_policy(
            self.crop.map(|s| (s, s)),
            self.normalize
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
) -> Result<Policy, String> {
    let mut yaml = String::from("[");
    if let Some((h, w)) = size
        && (height, width) != (h, w)
    {
        if h == w {
            yaml.push_str(&format!("{{resize: {{size: {h}}}}}, "));
        } else {
            let s = f64::max(
                h as f64 / height.max(1) as f64,
                w as f64 / width.max(1) as f64,
            );
            let rh = ((height as f64 * s).ceil() as usize).max(h);
            let rw = ((width as f64 * s).ceil() as usize).max(w);
            yaml.push_str(&format!("{{resize: {{size: [{rh}, {rw}]}}}}, "));
        }
        yaml.push_str(&format!("{{center_crop: {{size: [{h}, {w}]}}}}, "));
    }
    if let Some((m, s)) = normalize {
        yaml.push_str(&format!("{{normalize: {{mean: {m:?}, std: {s:?}}}}}"));
    }
    yaml.push(']');
    let node = simclr_config::yaml::parse(&yaml).map_err(|e| e.message)?;
    Policy::parse(&node, "eval").map_err(|e| e.message)
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
) -> Result<LabelledSet, String> {
    let n = (data.len() as usize).min(limit.unwrap_or(usize::MAX));
    if n == 0 {
        return Err("the dataset is empty".into());
    }
    let first = data.get(0).map_err(|e| e.to_string())?;
    let policy = run.policy(first.height as usize, first.width as usize)?;
    let items: Vec<(Vec<f32>, u32, Shape)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let s = data.get(i as u64).map_err(|e| e.to_string())?;
            let label = s
                .label
                .ok_or_else(|| format!("item {i} has no label; evaluation needs labelled data"))?;
            let shape = Shape {
                channels: usize::from(s.channels),
                height: s.height as usize,
                width: s.width as usize,
            };
            let mut img = Img::from_u8(shape, s.pixels.to_vec());
            let mut rng = simclr_core::Rng::from_key(&[0]);
            policy
                .run(&mut img, &mut rng)
                .map_err(|e| format!("item {i}: {}", e.0))?;
            let shape = img.shape;
            Ok((img.into_f32(), label, shape))
        })
        .collect::<Result<_, String>>()?;
    let shape = items[0].2;
    if let Some((i, s)) = items.iter().enumerate().find(|(_, it)| it.2 != shape) {
        return Err(format!(
            "item {i} is {}×{}×{} after preprocessing, item 0 {}×{}×{}; evaluation needs one size",
            s.2.channels, s.2.height, s.2.width, shape.channels, shape.height, shape.width
        ));
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
