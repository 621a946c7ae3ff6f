//! Occlusion and noise: `random_erasing` (cutout) and `gaussian_noise`.

use serde::Deserialize;
use simclr_core::rng::Rng;
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use super::params::*;
use crate::img::{Img, Shape};
use crate::transform::{Params, Transform, TransformError, Transforms, invalid, parse_config};

/// What `random_erasing` writes into the box.
#[derive(Clone, Debug, PartialEq)]
pub enum EraseValue {
    /// One value per channel (one for all, or one each).
    Fill(Vec<f32>),
    /// Standard normal noise per pixel (torchvision's `value="random"`).
    Random,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ValueConfig {
    Channels(PerChannel),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasingConfig {
    #[serde(default = "half")]
    p: f64,
    #[serde(default = "default_scale")]
    scale: (f64, f64),
    #[serde(default = "default_ratio")]
    ratio: (f64, f64),
    #[serde(default)]
    value: Option<ValueConfig>,
}

fn default_scale() -> (f64, f64) {
    (0.02, 0.33)
}

fn default_ratio() -> (f64, f64) {
    (0.3, 3.3)
}

/// torchvision `RandomErasing(p, scale, ratio, value)` (Zhong et al. 2017; "cutout"): with
/// probability `p`, a box of `scale` × the area and aspect ratio in `ratio` (drawn on a log
/// scale) is filled with `value`; ten tries to fit the image, else nothing is erased.
#[derive(Debug, Clone)]
pub struct RandomErasing {
    /// Probability.
    pub p: f64,
    /// Area fraction range.
    pub scale: (f64, f64),
    /// Aspect ratio range (height / width).
    pub ratio: (f64, f64),
    /// The fill.
    pub value: EraseValue,
}

pub(super) fn build_erasing(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let c: ErasingConfig = parse_config(node, path)?;
    check_p(node, path, c.p)?;
    let at = |key: &str| node.get(key).unwrap_or(node);
    let (lo, hi) = c.scale;
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
        return Err(invalid(
            at("scale"),
            &join_path(path, "scale"),
            format!("`scale` is [min, max] area fractions in [0, 1], found [{lo}, {hi}]"),
            "torchvision's default is [0.02, 0.33]",
        ));
    }
    let (lo, hi) = c.ratio;
    if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
        return Err(invalid(
            at("ratio"),
            &join_path(path, "ratio"),
            format!("`ratio` is [min, max] with 0 < min <= max, found [{lo}, {hi}]"),
            "torchvision's default is [0.3, 3.3]",
        ));
    }
    let value = match c.value {
        None => Some(EraseValue::Fill(vec![0.0])),
        Some(ValueConfig::Channels(v)) => v.values().map(EraseValue::Fill),
        Some(ValueConfig::Word(w)) => (w == "random").then_some(EraseValue::Random),
    };
    let value = match value {
        Some(v) => v,
        None => {
            return Err(invalid(
                at("value"),
                &join_path(path, "value"),
                "`value` is a number, a list of 1 or 3 numbers (one per channel), or `random`",
                "0 erases to black on [0, 1] pixels; `random` fills with standard normal noise",
            ));
        }
    };
    Ok(Box::new(RandomErasing {
        p: c.p,
        scale: c.scale,
        ratio: c.ratio,
        value,
    }))
}

impl RandomErasing {
    /// torchvision's `get_params`: the box `(top, left, height, width)`, or `None` when ten
    /// tries did not fit one inside the image.
    fn draw_box(&self, h: usize, w: usize, rng: &mut Rng) -> Option<(u32, u32, u32, u32)> {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let erase = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(lr0, lr1).exp();
            // Python's round(): ties to even.
            let eh = (erase * aspect).sqrt().round_ties_even() as usize;
            let ew = (erase / aspect).sqrt().round_ties_even() as usize;
            if !(eh < h && ew < w) {
                continue;
            }
            let top = rng.below((h - eh + 1) as u64) as u32;
            let left = rng.below((w - ew + 1) as u64) as u32;
            return Some((top, left, eh as u32, ew as u32));
        }
        None
    }
}

impl Transform for RandomErasing {
    fn name(&self) -> &str {
        "random_erasing"
    }
    fn sample(&self, shape: Shape, rng: &mut Rng) -> Params {
        let none = Params::Erase {
            top: 0,
            left: 0,
            height: 0,
            width: 0,
            seed: 0,
        };
        if !rng.bernoulli(self.p) {
            return none;
        }
        match self.draw_box(shape.height, shape.width, rng) {
            Some((top, left, height, width)) => Params::Erase {
                top,
                left,
                height,
                width,
                seed: rng.next_u64(),
            },
            None => none,
        }
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Erase {
            top,
            left,
            height,
            width,
            seed,
        } = *params
        else {
            return Err(wrong("erase", params));
        };
        let Shape {
            channels: c,
            height: h,
            width: w,
        } = img.shape;
        let (top, left, eh, ew) = (top as usize, left as usize, height as usize, width as usize);
        if eh == 0 || ew == 0 {
            return Ok(());
        }
        if top + eh > h || left + ew > w {
            return Err(TransformError(format!(
                "an erased box {eh}x{ew} at ({top}, {left}) does not fit a {h}x{w} image"
            )));
        }
        if let EraseValue::Fill(v) = &self.value
            && v.len() != 1
            && v.len() != c
        {
            return Err(TransformError(format!(
                "`value` has {} numbers for an image of {c} channel(s)",
                v.len()
            )));
        }
        let mut noise = Rng::from_key(&[seed]);
        let px = img.f32_mut();
        for ch in 0..c {
            let fill = match &self.value {
                EraseValue::Fill(v) => Some(v[ch.min(v.len() - 1)]),
                EraseValue::Random => None,
            };
            for y in top..top + eh {
                let row = &mut px[(ch * h + y) * w + left..][..ew];
                for x in row {
                    *x = fill.unwrap_or_else(|| noise.normal() as f32);
                }
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoiseConfig {
    #[serde(default)]
    mean: f64,
    #[serde(default = "default_noise_sigma")]
    sigma: f64,
    #[serde(default = "yes")]
    clip: bool,
}

fn default_noise_sigma() -> f64 {
    0.1
}

fn yes() -> bool {
    true
}

/// torchvision v2 `GaussianNoise(mean, sigma, clip)`: adds `mean + sigma·N(0, 1)` to every
/// pixel, then clamps to [0, 1] with `clip`. Always applied: wrap it in `random_apply` for a
/// probability.
#[derive(Debug, Clone)]
pub struct GaussianNoise {
    /// Mean of the noise.
    pub mean: f32,
    /// Its standard deviation.
    pub sigma: f32,
    /// Clamp the result to [0, 1].
    pub clip: bool,
}

pub(super) fn build_noise(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let c: NoiseConfig = parse_config(node, path)?;
    if !(c.sigma >= 0.0 && c.sigma.is_finite() && c.mean.is_finite()) {
        return Err(invalid(
            node.get("sigma").unwrap_or(node),
            &join_path(path, "sigma"),
            format!(
                "`sigma` must be ≥ 0 and `mean` finite, found sigma {} and mean {}",
                c.sigma, c.mean
            ),
            "torchvision's default is `sigma: 0.1` on [0, 1] pixels",
        ));
    }
    Ok(Box::new(GaussianNoise {
        mean: c.mean as f32,
        sigma: c.sigma as f32,
        clip: c.clip,
    }))
}

impl Transform for GaussianNoise {
    fn name(&self) -> &str {
        "gaussian_noise"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Noise {
            seed: rng.next_u64(),
        }
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Noise { seed } = *params else {
            return Err(wrong("noise", params));
        };
        let mut rng = Rng::from_key(&[seed]);
        for x in img.f32_mut() {
            let v = *x + self.mean + self.sigma * rng.normal() as f32;
            *x = if self.clip { v.clamp(0.0, 1.0) } else { v };
        }
        Ok(())
    }
}
