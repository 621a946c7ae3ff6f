//! `random_rotation`.

use serde::Deserialize;
use simclr_core::rng::Rng;
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use super::params::*;
use crate::img::{Img, Shape};
use crate::transform::{Params, Transform, TransformError, Transforms, invalid, parse_config};

/// How `random_rotation` samples the input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotateInterpolation {
    /// The nearest pixel (torchvision's default).
    #[default]
    Nearest,
    /// Bilinear between the four nearest pixels.
    Bilinear,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationConfig {
    degrees: Spread,
    #[serde(default)]
    interpolation: RotateInterpolation,
    #[serde(default)]
    fill: Option<PerChannel>,
}

/// torchvision `RandomRotation(degrees, interpolation, fill)` with `expand=False` and the
/// image centre: an angle drawn uniformly from `[-d, d]` (or `[min, max]`), counter-clockwise,
/// the output the input's size; pixels from outside the input take `fill`.
#[derive(Debug, Clone)]
pub struct RandomRotation {
    /// Angle range in degrees.
    pub degrees: (f64, f64),
    /// Sampling.
    pub interpolation: RotateInterpolation,
    /// One value for every channel, or one each.
    pub fill: Vec<f32>,
}

pub(super) fn build_rotation(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let c: RotationConfig = parse_config(node, path)?;
    let at = |key: &str| node.get(key).unwrap_or(node);
    let degrees = match c.degrees {
        Spread(Some(d), None) if d >= 0.0 && d.is_finite() => (-d, d),
        Spread(None, Some((lo, hi))) if lo <= hi && lo.is_finite() && hi.is_finite() => (lo, hi),
        _ => {
            return Err(invalid(
                at("degrees"),
                &join_path(path, "degrees"),
                "`degrees` is d ≥ 0 (for [-d, d]) or [min, max] with min ≤ max",
                "e.g. `degrees: 30`",
            ));
        }
    };
    let fill = match c.fill.map_or(Some(vec![0.0]), |f| f.values()) {
        Some(fill) => fill,
        None => {
            return Err(invalid(
                at("fill"),
                &join_path(path, "fill"),
                "`fill` is a number or a list of 1 or 3 numbers (one per channel)",
                "0 fills the corners with black",
            ));
        }
    };
    Ok(Box::new(RandomRotation {
        degrees,
        interpolation: c.interpolation,
        fill,
    }))
}

impl Transform for RandomRotation {
    fn name(&self) -> &str {
        "random_rotation"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Angle(rng.uniform(self.degrees.0, self.degrees.1) as f32)
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Angle(degrees) = *params else {
            return Err(wrong("angle", params));
        };
        let Shape {
            channels: c,
            height: h,
            width: w,
        } = img.shape;
        if self.fill.len() != 1 && self.fill.len() != c {
            return Err(TransformError(format!(
                "`fill` has {} numbers for an image of {c} channel(s)",
                self.fill.len()
            )));
        }
        let src = img.to_f32();
        let mut out = vec![0.0f32; src.len()];
        // torchvision's grid: output pixel (i, j) at (x, y) = (j − cx, i − cy) from the centre
        // reads the input at centre + R(θ)·(x, y), R(θ) = [[cos, −sin], [sin, cos]], with
        // grid_sample's align_corners=False and zero padding, then `fill` where the sample
        // fell outside (bilinear: `img·mask + (1 − mask)·fill`, mask the in-bounds weight).
        let t = f64::from(degrees).to_radians();
        let (cos, sin) = (t.cos() as f32, t.sin() as f32);
        let (cx, cy) = ((w as f32 - 1.0) * 0.5, (h as f32 - 1.0) * 0.5);
        let plane = h * w;
        let inside =
            |xi: i64, yi: i64| xi >= 0 && yi >= 0 && (xi as usize) < w && (yi as usize) < h;
        for i in 0..h {
            let y = i as f32 - cy;
            for j in 0..w {
                let x = j as f32 - cx;
                let sx = cx + cos * x - sin * y;
                let sy = cy + sin * x + cos * y;
                match self.interpolation {
                    RotateInterpolation::Nearest => {
                        let (xi, yi) = (sx.round_ties_even() as i64, sy.round_ties_even() as i64);
                        for ch in 0..c {
                            out[ch * plane + i * w + j] = if inside(xi, yi) {
                                src[ch * plane + yi as usize * w + xi as usize]
                            } else {
                                self.fill[ch.min(self.fill.len() - 1)]
                            };
                        }
                    }
                    RotateInterpolation::Bilinear => {
                        let (x0, y0) = (sx.floor(), sy.floor());
                        let (fx, fy) = (sx - x0, sy - y0);
                        let (x0, y0) = (x0 as i64, y0 as i64);
                        let taps = [
                            (x0, y0, (1.0 - fx) * (1.0 - fy)),
                            (x0 + 1, y0, fx * (1.0 - fy)),
                            (x0, y0 + 1, (1.0 - fx) * fy),
                            (x0 + 1, y0 + 1, fx * fy),
                        ];
                        let mask: f32 = taps
                            .iter()
                            .filter(|(xi, yi, _)| inside(*xi, *yi))
                            .map(|t| t.2)
                            .sum();
                        for ch in 0..c {
                            let v: f32 = taps
                                .iter()
                                .filter(|(xi, yi, _)| inside(*xi, *yi))
                                .map(|&(xi, yi, wt)| {
                                    wt * src[ch * plane + yi as usize * w + xi as usize]
                                })
                                .sum();
                            let fill = self.fill[ch.min(self.fill.len() - 1)];
                            // torchvision: img·mask + (1 − mask)·fill, img already
                            // zero-padded.
                            out[ch * plane + i * w + j] = v * mask + (1.0 - mask) * fill;
                        }
                    }
                }
            }
        }
        *img = Img::from_f32(img.shape, out);
        Ok(())
    }
}
