//! The transform contract, its parameters, the registry of transform names, and policies
//! (ordered lists of transforms) parsed from a definition.

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use simclr_core::rng::Rng;
use simclr_core::value::{from_value, join_path};
use simclr_core::{ParamError, Value, ValueKind};

use crate::img::{Img, Shape};

/// The drawn parameters of one transform application: enough to replay it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Params {
    /// A deterministic transform (resize, normalize, ...).
    None,
    /// Applied or not (flips, grayscale, solarize, equalize).
    Flag(bool),
    /// A crop box in input pixels.
    Crop {
        /// First row.
        top: u32,
        /// First column.
        left: u32,
        /// Rows.
        height: u32,
        /// Columns.
        width: u32,
    },
    /// Colour jitter: the order of the four adjustments (0 brightness, 1 contrast,
    /// 2 saturation, 3 hue) and each factor (absent when that adjustment is off).
    Jitter {
        /// Application order.
        order: [u8; 4],
        /// Brightness factor.
        brightness: Option<f32>,
        /// Contrast factor.
        contrast: Option<f32>,
        /// Saturation factor.
        saturation: Option<f32>,
        /// Hue shift, in turns.
        hue: Option<f32>,
    },
    /// A blur's sigma.
    Sigma(f32),
    /// `random_erasing`'s box (`height` 0: nothing erased) and the seed of its random fill.
    Erase {
        /// First row.
        top: u32,
        /// First column.
        left: u32,
        /// Rows.
        height: u32,
        /// Columns.
        width: u32,
        /// Seed of the `value: random` noise.
        seed: u64,
    },
    /// The seed of `gaussian_noise`'s per-pixel draws.
    Noise {
        /// Seed.
        seed: u64,
    },
    /// A rotation, degrees counter-clockwise.
    Angle(f32),
    /// `random_apply`: whether it applied, and its transforms' parameters.
    Applied {
        /// Applied or not.
        apply: bool,
        /// Parameters of the inner transforms (empty when not applied).
        inner: Vec<Params>,
    },
    /// Free-form numbers, for custom transforms.
    Values(Vec<f32>),
}

/// A transform failure (bad parameters for the image, mismatched replay log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformError(pub String);

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransformError {}

/// One augmentation operation. Every transform can draw its parameters from an RNG
/// ([`Transform::sample`]) and be applied with explicit ones ([`Transform::apply`]), so an
/// augmentation can be logged, replayed and tested.
pub trait Transform: Send + Sync + fmt::Debug {
    /// The name used in definitions.
    fn name(&self) -> &str;

    /// Draw parameters for an image of `shape`.
    fn sample(&self, shape: Shape, rng: &mut Rng) -> Params;

    /// Apply with explicit parameters.
    ///
    /// # Errors
    /// Parameters of the wrong kind, or that do not fit the image.
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError>;

    /// Draw and apply; returns what was drawn. Transforms whose inner steps change the shape
    /// (`random_apply`) override this to draw each step on the shape it sees.
    ///
    /// # Errors
    /// As for [`Transform::apply`].
    fn run(&self, img: &mut Img, rng: &mut Rng) -> Result<Params, TransformError> {
        let params = self.sample(img.shape, rng);
        self.apply(img, &params)?;
        Ok(params)
    }

    /// The shape this transform produces from `input`.
    fn output_shape(&self, input: Shape) -> Shape {
        input
    }

    /// Whether this is a normalization (skipped when a preview shows views as pictures).
    fn is_normalize(&self) -> bool {
        false
    }

    /// What the transform becomes in the deterministic counterpart of a policy (evaluation,
    /// exports): by default nothing — a random augmentation is left out.
    fn eval_counterpart(&self) -> EvalStep {
        EvalStep::Drop
    }
}

/// A transform's part in the deterministic counterpart of its policy ([`Policy::preprocess`]).
#[derive(Clone, Debug, PartialEq)]
pub enum EvalStep {
    /// Left out (random augmentations: flips, colour jitter, blur, grayscale, ...).
    Drop,
    /// Fixes the views to `(height, width)` (`random_resized_crop`, `center_crop`).
    Crop(usize, usize),
    /// Resizes to `(height, width)` (`resize`; a single size counts as a square): fixes the
    /// size when no crop does.
    Resize(usize, usize),
    /// Normalises with per-channel mean and std, as written in the definition.
    Normalize(Vec<f64>, Vec<f64>),
}

/// Builds a transform from its parameters node (`path` is its key path, for errors); a
/// transform that holds a policy of its own (`random_apply`) parses it with `transforms`.
pub type BuildTransform = fn(&Value, &str, &Transforms) -> Result<Box<dyn Transform>, ParamError>;

/// A named transform: the entry behind `- name: {...}` in a policy.
#[derive(Clone, Copy)]
pub struct TransformKind {
    /// Name in definitions.
    pub name: &'static str,
    /// One line for documentation.
    pub summary: &'static str,
    /// Constructor.
    pub build: BuildTransform,
}

impl fmt::Debug for TransformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The transforms a policy may name: the built-in ones ([`crate::ops::BUILTINS`]) and those a
/// program adds. A program puts its list in its stage registry
/// (`registry.extensions_mut().insert(transforms)`, or `simclr::registry::add_transform`), where
/// the `views` stage finds it; see `examples/custom_transform.rs`.
#[derive(Clone, Debug, Default)]
pub struct Transforms {
    added: Vec<TransformKind>,
}

/// The built-in transforms only.
pub static BUILTIN_TRANSFORMS: Transforms = Transforms { added: Vec::new() };

/// A transform kind added under a name already taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateTransform(pub &'static str);

impl fmt::Display for DuplicateTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a transform named `{}` is already registered", self.0)
    }
}

impl std::error::Error for DuplicateTransform {}

impl Transforms {
    /// Add a transform kind.
    ///
    /// # Errors
    /// If the name is taken by a built-in or an earlier addition.
    pub fn add(&mut self, kind: TransformKind) -> Result<(), DuplicateTransform> {
        if self.get(kind.name).is_some() {
            return Err(DuplicateTransform(kind.name));
        }
        self.added.push(kind);
        Ok(())
    }

    /// The transform named `name`: built-ins first, then added ones.
    pub fn get(&self, name: &str) -> Option<TransformKind> {
        self.iter().find(|k| k.name == name)
    }

    /// Every transform kind, built-ins first.
    pub fn iter(&self) -> impl Iterator<Item = TransformKind> + '_ {
        crate::ops::BUILTINS.iter().chain(&self.added).copied()
    }

    /// Every transform name, built-ins first.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(|k| k.name).collect()
    }
}

/// Deserialize a transform's config from its node, mapping errors to [`ParamError`].
///
/// # Errors
/// The first mismatch, located.
pub fn parse_config<T: DeserializeOwned>(node: &Value, path: &str) -> Result<T, ParamError> {
    from_value(node, path).map_err(|e| ParamError {
        message: e.message,
        help: None,
        loc: e.loc,
        path: e.path,
    })
}

/// A located error about `node`.
pub fn invalid(
    node: &Value,
    path: &str,
    message: impl Into<String>,
    help: impl Into<String>,
) -> ParamError {
    ParamError {
        message: message.into(),
        help: Some(help.into()),
        loc: Some(node.loc),
        path: path.to_owned(),
    }
}

/// An ordered list of transforms: one view's augmentation T.
#[derive(Debug, Default)]
pub struct Policy {
    ops: Vec<Box<dyn Transform>>,
}

impl Policy {
    /// A policy of these transforms, applied in order.
    pub fn new(ops: Vec<Box<dyn Transform>>) -> Self {
        Self { ops }
    }

    /// The deterministic counterpart of the policy, for evaluation: the size of its last crop
    /// (or, without one, of its first resize) and its last normalisation; every random step
    /// is left out.
    pub fn preprocess(&self) -> simclr_core::Preprocess {
        let mut out = simclr_core::Preprocess::default();
        let mut cropped = false;
        for op in &self.ops {
            match op.eval_counterpart() {
                EvalStep::Drop => {}
                EvalStep::Crop(h, w) => {
                    out.size = Some((h, w));
                    cropped = true;
                }
                EvalStep::Resize(h, w) if !cropped && out.size.is_none() => {
                    out.size = Some((h, w));
                }
                EvalStep::Resize(..) => {}
                EvalStep::Normalize(mean, std) => out.normalize = Some((mean, std)),
            }
        }
        out
    }

    /// Parse a policy of built-in transforms: a list whose items are `name` or
    /// `{ name: { params } }`.
    ///
    /// # Errors
    /// An unknown name or bad parameters, located.
    pub fn parse(node: &Value, path: &str) -> Result<Self, ParamError> {
        Self::parse_with(node, path, &BUILTIN_TRANSFORMS)
    }

    /// Parse a policy whose transforms are named in `transforms`.
    ///
    /// # Errors
    /// An unknown name or bad parameters, located.
    pub fn parse_with(
        node: &Value,
        path: &str,
        transforms: &Transforms,
    ) -> Result<Self, ParamError> {
        let ValueKind::Seq(items) = &node.kind else {
            return Err(invalid(
                node,
                path,
                format!(
                    "a policy is a list of transforms, found {}",
                    node.describe()
                ),
                "e.g. `[{ random_resized_crop: { size: 32 } }, horizontal_flip]`",
            ));
        };
        let mut ops = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let (name_node, params) = match &item.kind {
                ValueKind::Str(_) => (item, Value::empty_map(item.loc)),
                ValueKind::Map(entries) if entries.len() == 1 => {
                    let (k, v) = &entries[0];
                    let params = if v.is_null() {
                        Value::empty_map(v.loc)
                    } else {
                        v.clone()
                    };
                    (k, params)
                }
                _ => {
                    return Err(invalid(
                        item,
                        &item_path,
                        format!(
                            "a transform is a name or a one-key mapping `{{ name: {{ params }} }}`, found {}",
                            item.describe()
                        ),
                        "e.g. `- horizontal_flip: { p: 0.5 }`",
                    ));
                }
            };
            let name = name_node.as_str().unwrap_or_default();
            let Some(kind) = transforms.get(name) else {
                let known = transforms.names();
                return Err(invalid(
                    name_node,
                    &item_path,
                    format!("unknown transform `{name}`"),
                    format!("the transforms are: {}", known.join(", ")),
                ));
            };
            ops.push((kind.build)(
                &params,
                &join_path(&item_path, name),
                transforms,
            )?);
        }
        Ok(Self { ops })
    }

    /// The transforms.
    pub fn ops(&self) -> &[Box<dyn Transform>] {
        &self.ops
    }

    /// The output shape for an input of `input`.
    pub fn output_shape(&self, input: Shape) -> Shape {
        self.ops.iter().fold(input, |s, op| op.output_shape(s))
    }

    /// Draw and apply every transform; returns what each drew.
    ///
    /// # Errors
    /// The first transform that fails, named.
    pub fn run(&self, img: &mut Img, rng: &mut Rng) -> Result<Vec<Params>, TransformError> {
        self.ops
            .iter()
            .map(|op| {
                op.run(img, rng)
                    .map_err(|e| TransformError(format!("{}: {e}", op.name())))
            })
            .collect()
    }

    /// [`Policy::run`] without keeping the parameters, adding each transform's time to
    /// `timings` (one slot per transform) when given.
    ///
    /// # Errors
    /// As for [`Policy::run`].
    pub fn run_timed(
        &self,
        img: &mut Img,
        rng: &mut Rng,
        mut timings: Option<&mut [Duration]>,
    ) -> Result<(), TransformError> {
        for (i, op) in self.ops.iter().enumerate() {
            let start = timings.is_some().then(Instant::now);
            op.run(img, rng)
                .map_err(|e| TransformError(format!("{}: {e}", op.name())))?;
            if let (Some(t), Some(start)) = (timings.as_deref_mut(), start) {
                t[i] += start.elapsed();
            }
        }
        Ok(())
    }

    /// [`Policy::run`] skipping normalizations: what the views look like as pictures. The
    /// random stream is the same as [`Policy::run`]'s (normalizations draw nothing), so the
    /// result is exactly the training view before normalization.
    ///
    /// # Errors
    /// As for [`Policy::run`].
    pub fn run_for_display(&self, img: &mut Img, rng: &mut Rng) -> Result<(), TransformError> {
        for op in self.ops.iter().filter(|o| !o.is_normalize()) {
            op.run(img, rng)
                .map_err(|e| TransformError(format!("{}: {e}", op.name())))?;
        }
        Ok(())
    }

    /// Re-apply a logged run.
    ///
    /// # Errors
    /// A log of the wrong length or kind.
    pub fn replay(&self, img: &mut Img, log: &[Params]) -> Result<(), TransformError> {
        if log.len() != self.ops.len() {
            return Err(TransformError(format!(
                "the log has {} entries for {} transforms",
                log.len(),
                self.ops.len()
            )));
        }
        for (op, params) in self.ops.iter().zip(log) {
            op.apply(img, params)
                .map_err(|e| TransformError(format!("{}: {e}", op.name())))?;
        }
        Ok(())
    }
}
