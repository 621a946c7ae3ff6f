//! Composition and normalisation: `random_apply`, `normalize`.

use serde::Deserialize;
use simclr_core::rng::Rng;
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use super::params::*;
use crate::img::{Img, Shape};
use crate::transform::{
    EvalStep, Params, Policy, Transform, TransformError, Transforms, invalid, parse_config,
};

/// torchvision `RandomApply(transforms, p)`.
#[derive(Debug)]
pub struct RandomApply {
    /// Probability.
    pub p: f64,
    /// The transforms applied together.
    pub inner: Policy,
}

pub(super) fn build_random_apply(
    node: &Value,
    path: &str,
    transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let Some(entries) = node.entries() else {
        return Err(invalid(
            node,
            path,
            "`random_apply` takes `{ p: 0.8, transforms: [...] }`",
            "e.g. `random_apply: { p: 0.8, transforms: [{ color_jitter: { brightness: 0.4 } }] }`",
        ));
    };
    for (i, (k, _)) in entries.iter().enumerate() {
        let key = k.as_str().unwrap_or_default();
        if entries[..i]
            .iter()
            .any(|(earlier, _)| earlier.as_str() == Some(key))
        {
            // As serde reports a duplicate field of any other transform's parameters.
            return Err(invalid(
                k,
                &join_path(path, key),
                format!("duplicate field `{key}`"),
                "give each of `p` and `transforms` once",
            ));
        }
        if key != "p" && key != "transforms" {
            return Err(invalid(
                k,
                &join_path(path, key),
                format!("unknown key `{key}` in `random_apply`"),
                "`random_apply` takes `p` and `transforms`",
            ));
        }
    }
    let p: f64 = match node.get("p") {
        Some(v) => parse_config(v, &join_path(path, "p"))?,
        None => 0.5,
    };
    check_p(node, path, p)?;
    let Some(list) = node.get("transforms") else {
        return Err(invalid(
            node,
            path,
            "`random_apply` needs `transforms`",
            "list the transforms to apply together",
        ));
    };
    Ok(Box::new(RandomApply {
        p,
        inner: Policy::parse_with(list, &join_path(path, "transforms"), transforms)?,
    }))
}

impl Transform for RandomApply {
    fn name(&self) -> &str {
        "random_apply"
    }
    fn sample(&self, shape: Shape, rng: &mut Rng) -> Params {
        let apply = rng.bernoulli(self.p);
        let inner = if apply {
            self.inner
                .ops()
                .iter()
                .map(|op| op.sample(shape, rng))
                .collect()
        } else {
            Vec::new()
        };
        Params::Applied { apply, inner }
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Applied { apply, inner } = params else {
            return Err(wrong("random_apply", params));
        };
        if *apply {
            self.inner.replay(img, inner)
        } else {
            Ok(())
        }
    }
    fn run(&self, img: &mut Img, rng: &mut Rng) -> Result<Params, TransformError> {
        let apply = rng.bernoulli(self.p);
        let inner = if apply {
            self.inner.run(img, rng)?
        } else {
            Vec::new()
        };
        Ok(Params::Applied { apply, inner })
    }
    fn output_shape(&self, input: Shape) -> Shape {
        self.inner.output_shape(input)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NormalizeConfig {
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// torchvision `Normalize(mean, std)`.
#[derive(Debug, Clone)]
pub struct Normalize {
    /// Per-channel mean (one value applies to every channel).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

/// `normalize`'s values read as written (float64), beside the float32 ones it computes with.
#[derive(Deserialize)]
struct NormalizeWritten {
    mean: Vec<f64>,
    std: Vec<f64>,
}

/// `normalize` from a definition: [`Normalize`], with its values as written for its
/// evaluation counterpart (exports and evaluation keep `0.4914`, not its float32 rounding).
#[derive(Debug, Clone)]
struct WrittenNormalize {
    op: Normalize,
    written: (Vec<f64>, Vec<f64>),
}

impl Transform for WrittenNormalize {
    fn eval_counterpart(&self) -> EvalStep {
        EvalStep::Normalize(self.written.0.clone(), self.written.1.clone())
    }
    fn name(&self) -> &str {
        self.op.name()
    }
    fn sample(&self, shape: Shape, rng: &mut Rng) -> Params {
        self.op.sample(shape, rng)
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        self.op.apply(img, params)
    }
    fn is_normalize(&self) -> bool {
        true
    }
}

pub(super) fn build_normalize(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let c: NormalizeConfig = parse_config(node, path)?;
    if c.mean.is_empty() || c.mean.len() != c.std.len() {
        return Err(invalid(
            node,
            path,
            format!(
                "`mean` and `std` need the same, non-zero length (found {} and {})",
                c.mean.len(),
                c.std.len()
            ),
            "one value per channel, e.g. CIFAR-10: mean [0.4914, 0.4822, 0.4465], std [0.247, 0.243, 0.261]",
        ));
    }
    if c.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return Err(invalid(
            node.get("std").unwrap_or(node),
            &join_path(path, "std"),
            "every `std` must be positive",
            "a zero std would divide by zero",
        ));
    }
    let written: NormalizeWritten = parse_config(node, path)?;
    Ok(Box::new(WrittenNormalize {
        op: Normalize {
            mean: c.mean,
            std: c.std,
        },
        written: (written.mean, written.std),
    }))
}

crate::simd::dispatch! {
/// `(x - mean) · (1 / std)` over one plane.
fn normalize_plane(plane: &mut [f32], mean: f32, inv: f32) {
    for x in plane {
        *x = (*x - mean) * inv;
    }
}
}

impl Transform for Normalize {
    fn eval_counterpart(&self) -> EvalStep {
        let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect();
        EvalStep::Normalize(wide(&self.mean), wide(&self.std))
    }
    fn name(&self) -> &str {
        "normalize"
    }
    fn sample(&self, _shape: Shape, _rng: &mut Rng) -> Params {
        Params::None
    }
    fn apply(&self, img: &mut Img, _params: &Params) -> Result<(), TransformError> {
        let Shape {
            channels,
            height,
            width,
        } = img.shape;
        if self.mean.len() != 1 && self.mean.len() != channels {
            return Err(TransformError(format!(
                "{} means for a {channels}-channel image",
                self.mean.len()
            )));
        }
        let plane = height * width;
        for (c, chunk) in img.f32_mut().chunks_exact_mut(plane).enumerate() {
            let (m, s) = if self.mean.len() == 1 {
                (self.mean[0], self.std[0])
            } else {
                (self.mean[c], self.std[c])
            };
            normalize_plane(chunk, m, 1.0 / s);
        }
        Ok(())
    }
    fn is_normalize(&self) -> bool {
        true
    }
}
