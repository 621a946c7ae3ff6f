//! The built-in transforms, with torchvision's names, parameters and semantics
//! (`torchvision.transforms` v1/v2 on float tensors in [0, 1]).

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use simclr_core::rng::Rng;
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use crate::img::{Img, Pixels, Shape};
use crate::resample::{Interpolation, crop_resize};
use crate::transform::{
    EvalStep, Params, Policy, Transform, TransformError, TransformKind, invalid, parse_config,
};

/// ITU-R 601-2 luma weights, as torchvision's `rgb_to_grayscale` and PIL's `convert("L")`.
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Every built-in transform.
pub const BUILTINS: &[TransformKind] = &[
    TransformKind {
        name: "random_resized_crop",
        summary: "crop a random area and aspect ratio, resize to `size`",
        build: build_rrc,
    },
    TransformKind {
        name: "resize",
        summary: "resize (shorter side to `size`, or to [h, w])",
        build: build_resize,
    },
    TransformKind {
        name: "center_crop",
        summary: "crop the centre `size` (zero-padded if larger)",
        build: build_center_crop,
    },
    TransformKind {
        name: "horizontal_flip",
        summary: "mirror left-right with probability `p`",
        build: build_hflip,
    },
    TransformKind {
        name: "vertical_flip",
        summary: "mirror top-bottom with probability `p`",
        build: build_vflip,
    },
    TransformKind {
        name: "color_jitter",
        summary: "brightness, contrast, saturation, hue in random order",
        build: build_jitter,
    },
    TransformKind {
        name: "random_grayscale",
        summary: "convert to gray (kept 3-channel) with probability `p`",
        build: build_grayscale,
    },
    TransformKind {
        name: "gaussian_blur",
        summary: "Gaussian blur with sigma drawn from a range",
        build: build_blur,
    },
    TransformKind {
        name: "solarize",
        summary: "invert pixels above `threshold` with probability `p`",
        build: build_solarize,
    },
    TransformKind {
        name: "equalize",
        summary: "histogram equalisation with probability `p`",
        build: build_equalize,
    },
    TransformKind {
        name: "random_apply",
        summary: "apply a list of transforms with probability `p`",
        build: build_random_apply,
    },
    TransformKind {
        name: "normalize",
        summary: "(x - mean) / std per channel",
        build: build_normalize,
    },
];

/// `32` or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Size(pub u32, pub u32);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: one integer, or [height, width]")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                let s = u32::try_from(v)
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| E::custom(format!("size must be positive, found {v}")))?;
                Ok(Size(s, s))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Size, A::Error> {
                let h: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [height, width]"))?;
                let w: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [height, width]"))?;
                if seq.next_element::<u32>()?.is_some() || h == 0 || w == 0 {
                    return Err(de::Error::custom(
                        "expected [height, width] of two positive integers",
                    ));
                }
                Ok(Size(h, w))
            }
        }
        d.deserialize_any(V)
    }
}

/// `0.4` (meaning a range around a centre) or `[lo, hi]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Spread(pub Option<f64>, pub Option<(f64, f64)>);

impl<'de> Deserialize<'de> for Spread {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Spread;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or [min, max]")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Spread, E> {
                Ok(Spread(Some(v), None))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Spread, E> {
                Ok(Spread(Some(v as f64), None))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Spread, E> {
                Ok(Spread(Some(v as f64), None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Spread, A::Error> {
                let lo: f64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [min, max]"))?;
                let hi: f64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [min, max]"))?;
                if seq.next_element::<f64>()?.is_some() {
                    return Err(de::Error::custom("expected [min, max]"));
                }
                Ok(Spread(None, Some((lo, hi))))
            }
        }
        d.deserialize_any(V)
    }
}

impl Spread {
    /// The range: `x` means `[center - x, center + x]` clipped at `floor`.
    fn range(self, center: f64, floor: f64) -> (f64, f64) {
        match self {
            Spread(_, Some(r)) => r,
            Spread(Some(x), _) => ((center - x).max(floor), center + x),
            Spread(None, None) => (center, center),
        }
    }
}

fn check_p(node: &Value, path: &str, p: f64) -> Result<(), ParamError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(invalid(
            node.get("p").unwrap_or(node),
            &join_path(path, "p"),
            format!("`p` must be a probability in [0, 1], found {p}"),
            "0 never applies, 1 always",
        ))
    }
}

/// Check a `[min, max]` parameter: `0 < min <= max` (and `max <= upper` when given).
fn check_range(
    node: &Value,
    path: &str,
    key: &str,
    (lo, hi): (f64, f64),
    upper: Option<f64>,
    help: &str,
) -> Result<(), ParamError> {
    if 0.0 < lo && lo <= hi && upper.is_none_or(|u| hi <= u) {
        return Ok(());
    }
    let bound = upper.map_or(String::new(), |u| format!(" <= {u}"));
    Err(invalid(
        node.get(key).unwrap_or(node),
        &join_path(path, key),
        format!("`{key}` must satisfy 0 < min <= max{bound}, found [{lo}, {hi}]"),
        help,
    ))
}

fn wrong(expected: &str, got: &Params) -> TransformError {
    TransformError(format!("expected {expected} parameters, got {got:?}"))
}

// ---------------------------------------------------------------------------------------
// Geometry

fn default_scale() -> (f64, f64) {
    (0.08, 1.0)
}
fn default_ratio() -> (f64, f64) {
    (3.0 / 4.0, 4.0 / 3.0)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RrcConfig {
    size: Size,
    #[serde(default = "default_scale")]
    scale: (f64, f64),
    #[serde(default = "default_ratio")]
    ratio: (f64, f64),
    #[serde(default)]
    interpolation: Interpolation,
}

/// torchvision `RandomResizedCrop(size, scale, ratio, interpolation)`.
#[derive(Debug, Clone)]
pub struct RandomResizedCrop {
    /// Output (height, width).
    pub size: (u32, u32),
    /// Area fraction range.
    pub scale: (f64, f64),
    /// Aspect ratio (w / h) range.
    pub ratio: (f64, f64),
    /// Filter.
    pub interpolation: Interpolation,
}

fn build_rrc(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: RrcConfig = parse_config(node, path)?;
    check_range(
        node,
        path,
        "scale",
        c.scale,
        Some(1.0),
        "SimCLR uses [0.08, 1.0]",
    )?;
    check_range(
        node,
        path,
        "ratio",
        c.ratio,
        None,
        "torchvision uses [3/4, 4/3]",
    )?;
    Ok(Box::new(RandomResizedCrop {
        size: (c.size.0, c.size.1),
        scale: c.scale,
        ratio: c.ratio,
        interpolation: c.interpolation,
    }))
}

impl RandomResizedCrop {
    /// torchvision's `get_params`: up to 10 tries at a random area and log-uniform aspect,
    /// then a centre crop at the clamped aspect ratio.
    pub fn crop_box(&self, height: usize, width: usize, rng: &mut Rng) -> [u32; 4] {
        let (h_img, w_img) = (height as f64, width as f64);
        let area = h_img * w_img;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_lo, log_hi).exp();
            let w = (target * aspect).sqrt().round();
            let h = (target / aspect).sqrt().round();
            if 0.0 < w && w <= w_img && 0.0 < h && h <= h_img {
                let top = rng.range_inclusive(0, (h_img - h) as i64) as u32;
                let left = rng.range_inclusive(0, (w_img - w) as i64) as u32;
                return [left, top, w as u32, h as u32];
            }
        }
        let in_ratio = w_img / h_img;
        let (w, h) = if in_ratio < self.ratio.0 {
            (w_img, (w_img / self.ratio.0).round())
        } else if in_ratio > self.ratio.1 {
            ((h_img * self.ratio.1).round(), h_img)
        } else {
            (w_img, h_img)
        };
        let top = ((h_img - h) / 2.0) as u32;
        let left = ((w_img - w) / 2.0) as u32;
        [left, top, w.max(1.0) as u32, h.max(1.0) as u32]
    }
}

impl Transform for RandomResizedCrop {
    fn eval_counterpart(&self) -> EvalStep {
        EvalStep::Crop(self.size.0 as usize, self.size.1 as usize)
    }
    fn name(&self) -> &str {
        "random_resized_crop"
    }
    fn sample(&self, shape: Shape, rng: &mut Rng) -> Params {
        let [left, top, width, height] = self.crop_box(shape.height, shape.width, rng);
        Params::Crop {
            top,
            left,
            height,
            width,
        }
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Crop {
            top,
            left,
            height,
            width,
        } = *params
        else {
            return Err(wrong("crop", params));
        };
        *img = crop_resize(
            img,
            [left, top, width, height],
            self.size.0 as usize,
            self.size.1 as usize,
            self.interpolation,
        )?;
        Ok(())
    }
    fn output_shape(&self, input: Shape) -> Shape {
        Shape {
            height: self.size.0 as usize,
            width: self.size.1 as usize,
            ..input
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeConfig {
    size: Size,
    #[serde(default)]
    interpolation: Interpolation,
}

/// torchvision `Resize`: an integer resizes the shorter side (keeping the aspect ratio),
/// `[h, w]` resizes to exactly that.
#[derive(Debug, Clone)]
pub struct Resize {
    size: Size,
    square_means_shorter_side: bool,
    interpolation: Interpolation,
}

fn build_resize(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: ResizeConfig = parse_config(node, path)?;
    let shorter = node
        .get("size")
        .is_some_and(|s| !matches!(s.kind, simclr_core::ValueKind::Seq(_)));
    Ok(Box::new(Resize {
        size: c.size,
        square_means_shorter_side: shorter,
        interpolation: c.interpolation,
    }))
}

impl Resize {
    fn target(&self, h: usize, w: usize) -> (usize, usize) {
        if !self.square_means_shorter_side {
            return (self.size.0 as usize, self.size.1 as usize);
        }
        let s = self.size.0 as f64;
        if h <= w {
            (s as usize, ((s * w as f64 / h as f64) as usize).max(1))
        } else {
            (((s * h as f64 / w as f64) as usize).max(1), s as usize)
        }
    }
}

impl Transform for Resize {
    fn eval_counterpart(&self) -> EvalStep {
        EvalStep::Resize(self.size.0 as usize, self.size.1 as usize)
    }
    fn name(&self) -> &str {
        "resize"
    }
    fn sample(&self, _shape: Shape, _rng: &mut Rng) -> Params {
        Params::None
    }
    fn apply(&self, img: &mut Img, _params: &Params) -> Result<(), TransformError> {
        let Shape { height, width, .. } = img.shape;
        let (h, w) = self.target(height, width);
        *img = crop_resize(
            img,
            [0, 0, width as u32, height as u32],
            h,
            w,
            self.interpolation,
        )?;
        Ok(())
    }
    fn output_shape(&self, input: Shape) -> Shape {
        let (height, width) = self.target(input.height, input.width);
        Shape {
            height,
            width,
            ..input
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CenterCropConfig {
    size: Size,
}

/// torchvision `CenterCrop` (zero padding when the image is smaller).
#[derive(Debug, Clone)]
pub struct CenterCrop {
    size: (usize, usize),
}

fn build_center_crop(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: CenterCropConfig = parse_config(node, path)?;
    Ok(Box::new(CenterCrop {
        size: (c.size.0 as usize, c.size.1 as usize),
    }))
}

impl Transform for CenterCrop {
    fn eval_counterpart(&self) -> EvalStep {
        EvalStep::Crop(self.size.0, self.size.1)
    }
    fn name(&self) -> &str {
        "center_crop"
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
        let (oh, ow) = self.size;
        // torchvision: top = round((H - h) / 2), negative means padding.
        let top = ((height as f64 - oh as f64) / 2.0).round() as i64;
        let left = ((width as f64 - ow as f64) / 2.0).round() as i64;
        let src = img.f32_mut().clone();
        let mut out = vec![0f32; channels * oh * ow];
        for c in 0..channels {
            for y in 0..oh {
                let sy = y as i64 + top;
                if sy < 0 || sy >= height as i64 {
                    continue;
                }
                for x in 0..ow {
                    let sx = x as i64 + left;
                    if sx >= 0 && sx < width as i64 {
                        out[(c * oh + y) * ow + x] =
                            src[(c * height + sy as usize) * width + sx as usize];
                    }
                }
            }
        }
        *img = Img::from_f32(
            Shape {
                channels,
                height: oh,
                width: ow,
            },
            out,
        );
        Ok(())
    }
    fn output_shape(&self, input: Shape) -> Shape {
        Shape {
            height: self.size.0,
            width: self.size.1,
            ..input
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbConfig {
    #[serde(default = "half")]
    p: f64,
}

fn half() -> f64 {
    0.5
}

/// torchvision `RandomHorizontalFlip` / `RandomVerticalFlip`.
#[derive(Debug, Clone)]
pub struct Flip {
    /// Probability.
    pub p: f64,
    /// Mirror rows (vertical) instead of columns (horizontal).
    pub vertical: bool,
}

fn build_flip(node: &Value, path: &str, vertical: bool) -> Result<Box<dyn Transform>, ParamError> {
    let c: ProbConfig = parse_config(node, path)?;
    check_p(node, path, c.p)?;
    Ok(Box::new(Flip { p: c.p, vertical }))
}

fn build_hflip(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    build_flip(node, path, false)
}

fn build_vflip(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    build_flip(node, path, true)
}

impl Transform for Flip {
    fn name(&self) -> &str {
        if self.vertical {
            "vertical_flip"
        } else {
            "horizontal_flip"
        }
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Flag(rng.bernoulli(self.p))
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Flag(flip) = *params else {
            return Err(wrong("flag", params));
        };
        if !flip {
            return Ok(());
        }
        let Shape {
            channels,
            height,
            width,
        } = img.shape;
        match &mut img.pixels {
            Pixels::U8(hwc) => {
                let row = width * channels;
                let mut out = vec![0u8; hwc.len()];
                for (y, dst) in out.chunks_exact_mut(row).enumerate() {
                    let sy = if self.vertical { height - 1 - y } else { y };
                    let src = &hwc[sy * row..(sy + 1) * row];
                    if self.vertical {
                        dst.copy_from_slice(src);
                    } else if channels == 3 {
                        let (d, _) = dst.as_chunks_mut::<3>();
                        let (s, _) = src.as_chunks::<3>();
                        for (d, s) in d.iter_mut().zip(s.iter().rev()) {
                            *d = *s;
                        }
                    } else {
                        for (d, s) in dst
                            .chunks_exact_mut(channels)
                            .zip(src.chunks_exact(channels).rev())
                        {
                            d.copy_from_slice(s);
                        }
                    }
                }
                *hwc = out.into();
            }
            Pixels::F32(chw) => {
                for plane in chw.chunks_exact_mut(height * width) {
                    if self.vertical {
                        for y in 0..height / 2 {
                            let (a, b) = plane.split_at_mut((height - 1 - y) * width);
                            a[y * width..(y + 1) * width].swap_with_slice(&mut b[..width]);
                        }
                    } else {
                        for row in plane.chunks_exact_mut(width) {
                            row.reverse();
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Colour

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JitterConfig {
    #[serde(default)]
    brightness: Option<Spread>,
    #[serde(default)]
    contrast: Option<Spread>,
    #[serde(default)]
    saturation: Option<Spread>,
    #[serde(default)]
    hue: Option<Spread>,
}

/// torchvision `ColorJitter(brightness, contrast, saturation, hue)`: each enabled adjustment
/// draws a factor from its range, and the four are applied in a random order.
#[derive(Debug, Clone)]
pub struct ColorJitter {
    /// Factor ranges; `None` when disabled.
    pub ranges: [Option<(f64, f64)>; 4],
}

fn build_jitter(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: JitterConfig = parse_config(node, path)?;
    let mut ranges = [None; 4];
    for (i, (key, spread, center, floor)) in [
        ("brightness", c.brightness, 1.0, 0.0),
        ("contrast", c.contrast, 1.0, 0.0),
        ("saturation", c.saturation, 1.0, 0.0),
        ("hue", c.hue, 0.0, -0.5),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(spread) = spread else { continue };
        if spread.0.is_some_and(|x| x < 0.0) {
            return Err(invalid(
                node.get(key).unwrap_or(node),
                &join_path(path, key),
                format!("`{key}` must be non-negative"),
                "0 disables this adjustment",
            ));
        }
        let (lo, hi) = spread.range(center, floor);
        if lo > hi || (key == "hue" && (lo < -0.5 || hi > 0.5)) || (key != "hue" && lo < 0.0) {
            let bound = if key == "hue" {
                "within [-0.5, 0.5]"
            } else {
                "non-negative"
            };
            return Err(invalid(
                node.get(key).unwrap_or(node),
                &join_path(path, key),
                format!("`{key}` range [{lo}, {hi}] must be increasing and {bound}"),
                "give one number x (the range around no change) or [min, max]",
            ));
        }
        // torchvision skips an adjustment whose range is exactly "no change".
        if (lo, hi) != (center, center) {
            ranges[i] = Some((lo, hi));
        }
    }
    Ok(Box::new(ColorJitter { ranges }))
}

fn gray_of(chw: &[f32], plane: usize, out: &mut [f32]) {
    let (r, rest) = chw.split_at(plane);
    let (g, b) = rest.split_at(plane);
    for i in 0..plane {
        out[i] = LUMA[0] * r[i] + LUMA[1] * g[i] + LUMA[2] * b[i];
    }
}

crate::simd::dispatch! {
/// Brightness: `x * f`, clamped.
pub fn adjust_brightness(chw: &mut [f32], f: f32) {
    for x in chw {
        *x = (*x * f).clamp(0.0, 1.0);
    }
}
}

crate::simd::dispatch! {
/// Contrast: blend with the mean gray level of the image.
pub fn adjust_contrast(chw: &mut [f32], channels: usize, plane: usize, f: f32) {
    let mean = if channels == 3 {
        let mut gray = vec![0f32; plane];
        gray_of(chw, plane, &mut gray);
        gray.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64
    } else {
        chw.iter().map(|&v| f64::from(v)).sum::<f64>() / chw.len() as f64
    } as f32;
    let offset = (1.0 - f) * mean;
    for x in chw {
        *x = (f * *x + offset).clamp(0.0, 1.0);
    }
}
}

crate::simd::dispatch! {
/// Saturation: blend with the image's own gray version (no-op on gray images).
pub fn adjust_saturation(chw: &mut [f32], channels: usize, plane: usize, f: f32) {
    if channels != 3 {
        return;
    }
    let mut gray = vec![0f32; plane];
    gray_of(chw, plane, &mut gray);
    for c in 0..3 {
        for (x, &g) in chw[c * plane..(c + 1) * plane].iter_mut().zip(&gray) {
            *x = (f * *x + (1.0 - f) * g).clamp(0.0, 1.0);
        }
    }
}
}

crate::simd::dispatch! {
/// Hue: rotate the hue by `shift` turns in HSV space (no-op on gray images), following
/// torchvision's `_rgb2hsv` / `_hsv2rgb`. Written without `floor`/`fmod` (library calls on
/// baseline x86-64): every wrapped quantity is known to lie in a small positive range.
pub fn adjust_hue(chw: &mut [f32], channels: usize, plane: usize, shift: f32) {
    if channels != 3 {
        return;
    }
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    // Eight pixels at a time through fixed-size lanes, which the compiler turns into SIMD.
    const LANES: usize = 8;
    let mut rc = r.chunks_exact_mut(LANES);
    let mut gc = g.chunks_exact_mut(LANES);
    let mut bc = b.chunks_exact_mut(LANES);
    for ((r8, g8), b8) in (&mut rc).zip(&mut gc).zip(&mut bc) {
        let mut out = [[0f32; LANES]; 3];
        for l in 0..LANES {
            let (nr, ng, nb) = hue_pixel(r8[l], g8[l], b8[l], shift);
            out[0][l] = nr;
            out[1][l] = ng;
            out[2][l] = nb;
        }
        r8.copy_from_slice(&out[0]);
        g8.copy_from_slice(&out[1]);
        b8.copy_from_slice(&out[2]);
    }
    for ((rp, gp), bp) in rc
        .into_remainder()
        .iter_mut()
        .zip(gc.into_remainder())
        .zip(bc.into_remainder())
    {
        (*rp, *gp, *bp) = hue_pixel(*rp, *gp, *bp, shift);
    }
}
}

/// One pixel of [`adjust_hue`], branch-free (selects only) so lanes vectorise.
#[inline(always)]
fn hue_pixel(rv: f32, gv: f32, bv: f32, shift: f32) -> (f32, f32, f32) {
    let maxc = rv.max(gv).max(bv);
    let minc = rv.min(gv).min(bv);
    let cr = maxc - minc;
    let flat = cr == 0.0;
    let s = if flat { 0.0 } else { cr / maxc };
    let inv = 1.0 / if flat { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - rv) * inv, (maxc - gv) * inv, (maxc - bv) * inv);
    // torchvision's masked sum of the three hue formulas.
    let is_r = maxc == rv;
    let is_g = (maxc == gv) & !is_r;
    let h = if is_r {
        bc - gc
    } else if is_g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // h / 6 + 1 lies in [5/6, 2), so its fractional part needs one compare, not `floor`;
    // everything below is float compares and selects, which vectorise.
    let turns = h * (1.0 / 6.0) + 1.0;
    let mut hue = turns - if turns >= 1.0 { 1.0 } else { 0.0 } + shift;
    hue += if hue < 0.0 { 1.0 } else { 0.0 };
    hue -= if hue >= 1.0 { 1.0 } else { 0.0 };
    let v = maxc;
    let h6 = hue * 6.0;
    let step = |edge: f32| if h6 >= edge { 1.0f32 } else { 0.0 };
    let sector = step(1.0) + step(2.0) + step(3.0) + step(4.0) + step(5.0);
    let f = h6 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    let nr = if !(1.0..5.0).contains(&h6) {
        v
    } else if h6 < 2.0 {
        q
    } else if h6 < 4.0 {
        p
    } else {
        t
    };
    let ng = if h6 < 1.0 {
        t
    } else if h6 < 3.0 {
        v
    } else if h6 < 4.0 {
        q
    } else {
        p
    };
    let nb = if h6 < 2.0 {
        p
    } else if h6 < 3.0 {
        t
    } else if h6 < 5.0 {
        v
    } else {
        q
    };
    (nr, ng, nb)
}

impl Transform for ColorJitter {
    fn name(&self) -> &str {
        "color_jitter"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        let mut order = [0u8, 1, 2, 3];
        rng.shuffle(&mut order);
        let mut draw = |i: usize| self.ranges[i].map(|(lo, hi)| rng.uniform(lo, hi) as f32);
        let (brightness, contrast, saturation, hue) = (draw(0), draw(1), draw(2), draw(3));
        Params::Jitter {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Jitter {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        } = *params
        else {
            return Err(wrong("jitter", params));
        };
        let Shape {
            channels,
            height,
            width,
        } = img.shape;
        let plane = height * width;
        let chw = img.f32_mut();
        for step in order {
            match (step, brightness, contrast, saturation, hue) {
                (0, Some(f), _, _, _) => adjust_brightness(chw, f),
                (1, _, Some(f), _, _) => adjust_contrast(chw, channels, plane, f),
                (2, _, _, Some(f), _) => adjust_saturation(chw, channels, plane, f),
                (3, _, _, _, Some(h)) => adjust_hue(chw, channels, plane, h),
                _ => {}
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrayConfig {
    #[serde(default = "tenth")]
    p: f64,
}

fn tenth() -> f64 {
    0.1
}

/// torchvision `RandomGrayscale(p)`: gray with 0.299/0.587/0.114, channel count kept.
#[derive(Debug, Clone)]
pub struct RandomGrayscale {
    /// Probability.
    pub p: f64,
}

fn build_grayscale(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: GrayConfig = parse_config(node, path)?;
    check_p(node, path, c.p)?;
    Ok(Box::new(RandomGrayscale { p: c.p }))
}

impl Transform for RandomGrayscale {
    fn name(&self) -> &str {
        "random_grayscale"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Flag(rng.bernoulli(self.p))
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Flag(on) = *params else {
            return Err(wrong("flag", params));
        };
        if !on || img.shape.channels != 3 {
            return Ok(());
        }
        let plane = img.shape.height * img.shape.width;
        let chw = img.f32_mut();
        let mut gray = vec![0f32; plane];
        gray_of(chw, plane, &mut gray);
        for c in 0..3 {
            chw[c * plane..(c + 1) * plane].copy_from_slice(&gray);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlurConfig {
    #[serde(default)]
    kernel_size: Option<u32>,
    #[serde(default)]
    kernel_fraction: Option<f64>,
    #[serde(default = "default_sigma")]
    sigma: (f64, f64),
}

fn default_sigma() -> (f64, f64) {
    (0.1, 2.0)
}

/// torchvision `GaussianBlur(kernel_size, sigma)`, reflect padding; the kernel can also be a
/// fraction of the image side (SimCLR: 10%), rounded to an odd size.
#[derive(Debug, Clone)]
pub struct GaussianBlur {
    /// Fixed odd kernel size, or
    pub kernel_size: Option<usize>,
    /// a fraction of the shorter side.
    pub kernel_fraction: Option<f64>,
    /// Sigma range.
    pub sigma: (f64, f64),
}

fn build_blur(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: BlurConfig = parse_config(node, path)?;
    let kernel_fraction = match (c.kernel_size, c.kernel_fraction) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                node,
                path,
                "give `kernel_size` or `kernel_fraction`, not both",
                "SimCLR uses `kernel_fraction: 0.1`",
            ));
        }
        (None, None) => Some(0.1),
        (_, f) => f,
    };
    if let Some(k) = c.kernel_size
        && (k == 0 || k % 2 == 0)
    {
        return Err(invalid(
            node.get("kernel_size").unwrap_or(node),
            &join_path(path, "kernel_size"),
            format!("`kernel_size` must be odd and positive, found {k}"),
            "e.g. 23 for 224-pixel views",
        ));
    }
    if let Some(f) = kernel_fraction
        && !(f > 0.0 && f <= 1.0)
    {
        return Err(invalid(
            node.get("kernel_fraction").unwrap_or(node),
            &join_path(path, "kernel_fraction"),
            format!("`kernel_fraction` must be in (0, 1], found {f}"),
            "SimCLR uses 0.1",
        ));
    }
    check_range(node, path, "sigma", c.sigma, None, "SimCLR uses [0.1, 2.0]")?;
    Ok(Box::new(GaussianBlur {
        kernel_size: c.kernel_size.map(|k| k as usize),
        kernel_fraction,
        sigma: c.sigma,
    }))
}

/// torchvision's `_get_gaussian_kernel1d`.
pub fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let half = (size as f32 - 1.0) / 2.0;
    let mut k: Vec<f32> = (0..size)
        .map(|i| (-0.5 * ((i as f32 - half) / sigma).powi(2)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    for v in &mut k {
        *v /= sum;
    }
    k
}

fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Drop the symmetric tail taps whose weight is below f32 resolution (1e-7 of the total): a
/// 23-tap kernel at sigma 0.5 has 5 taps that matter. The kept weights are not renormalised,
/// so the result differs from the full kernel's by less than 1e-6 of a pixel's range.
pub fn trim_kernel(kernel: Vec<f32>) -> Vec<f32> {
    let tail = kernel
        .iter()
        .take(kernel.len() / 2)
        .take_while(|&&w| w < 1e-7)
        .count();
    kernel[tail..kernel.len() - tail].to_vec()
}

crate::simd::dispatch! {
/// Separable blur of each plane with reflect padding (torchvision's `padding_mode="reflect"`).
///
/// Both passes are written as one multiply-add of a whole row per kernel tap, which the
/// compiler vectorises; the reflected borders are materialised once per row.
pub fn blur_planes(chw: &mut [f32], height: usize, width: usize, kernel: &[f32]) {
    let half = kernel.len() / 2;
    let mut padded = vec![0f32; width + 2 * half];
    let mut tmp = vec![0f32; height * width];
    let rows: Vec<usize> = (0..height + 2 * half)
        .map(|i| reflect(i as isize - half as isize, height))
        .collect();
    for plane in chw.chunks_exact_mut(height * width) {
        for y in 0..height {
            let row = &plane[y * width..(y + 1) * width];
            padded[half..half + width].copy_from_slice(row);
            for i in 0..half {
                padded[i] = row[reflect(i as isize - half as isize, width)];
                padded[half + width + i] = row[reflect((width + i) as isize, width)];
            }
            let out = &mut tmp[y * width..(y + 1) * width];
            out.fill(0.0);
            for (k, &w) in kernel.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&padded[k..k + width]) {
                    *o += w * v;
                }
            }
        }
        for y in 0..height {
            let out = &mut plane[y * width..(y + 1) * width];
            out.fill(0.0);
            for (k, &w) in kernel.iter().enumerate() {
                let src = rows[y + k];
                for (o, &v) in out.iter_mut().zip(&tmp[src * width..(src + 1) * width]) {
                    *o += w * v;
                }
            }
        }
    }
}
}

impl GaussianBlur {
    fn kernel_for(&self, shape: Shape) -> usize {
        let k = match (self.kernel_size, self.kernel_fraction) {
            (Some(k), _) => k,
            (None, Some(f)) => ((f * shape.height.min(shape.width) as f64).round() as usize) | 1,
            (None, None) => 3,
        };
        // Reflect padding needs the half-kernel inside the image.
        let max = (2 * shape.height.min(shape.width)).saturating_sub(1).max(1);
        k.min(max) | 1
    }
}

impl Transform for GaussianBlur {
    fn name(&self) -> &str {
        "gaussian_blur"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Sigma(rng.uniform(self.sigma.0, self.sigma.1) as f32)
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Sigma(sigma) = *params else {
            return Err(wrong("sigma", params));
        };
        let shape = img.shape;
        let kernel = trim_kernel(gaussian_kernel(self.kernel_for(shape), sigma));
        blur_planes(img.f32_mut(), shape.height, shape.width, &kernel);
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SolarizeConfig {
    #[serde(default = "half")]
    threshold: f64,
    #[serde(default = "half")]
    p: f64,
}

/// torchvision `RandomSolarize(threshold, p)`: pixels `>= threshold` (on the [0, 1] scale)
/// become `1 - x`.
#[derive(Debug, Clone)]
pub struct Solarize {
    /// Threshold in [0, 1].
    pub threshold: f32,
    /// Probability.
    pub p: f64,
}

fn build_solarize(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: SolarizeConfig = parse_config(node, path)?;
    check_p(node, path, c.p)?;
    if !(0.0..=1.0).contains(&c.threshold) {
        return Err(invalid(
            node.get("threshold").unwrap_or(node),
            &join_path(path, "threshold"),
            format!(
                "`threshold` is on the [0, 1] pixel scale, found {}",
                c.threshold
            ),
            "128/255 is 0.502",
        ));
    }
    Ok(Box::new(Solarize {
        threshold: c.threshold as f32,
        p: c.p,
    }))
}

impl Transform for Solarize {
    fn name(&self) -> &str {
        "solarize"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Flag(rng.bernoulli(self.p))
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Flag(on) = *params else {
            return Err(wrong("flag", params));
        };
        if on {
            for x in img.f32_mut() {
                if *x >= self.threshold {
                    *x = 1.0 - *x;
                }
            }
        }
        Ok(())
    }
}

/// torchvision `RandomEqualize(p)`: per-channel histogram equalisation of the 8-bit levels.
#[derive(Debug, Clone)]
pub struct Equalize {
    /// Probability.
    pub p: f64,
}

fn build_equalize(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let c: ProbConfig = parse_config(node, path)?;
    check_p(node, path, c.p)?;
    Ok(Box::new(Equalize { p: c.p }))
}

/// torchvision's `_scale_channel` on one plane of 8-bit levels.
pub fn equalize_plane(levels: &mut [u8]) {
    let mut hist = [0usize; 256];
    for &v in levels.iter() {
        hist[usize::from(v)] += 1;
    }
    let last_nonzero = hist.iter().rposition(|&h| h > 0).map_or(0, |i| hist[i]);
    let step = (levels.len() - last_nonzero) / 255;
    if step == 0 {
        return;
    }
    let mut lut = [0u8; 256];
    let mut cum = 0usize;
    for (i, &h) in hist.iter().enumerate() {
        lut[i] = ((cum + step / 2) / step).min(255) as u8;
        cum += h;
    }
    for v in levels {
        *v = lut[usize::from(*v)];
    }
}

impl Transform for Equalize {
    fn name(&self) -> &str {
        "equalize"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Flag(rng.bernoulli(self.p))
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Flag(on) = *params else {
            return Err(wrong("flag", params));
        };
        if !on {
            return Ok(());
        }
        let plane = img.shape.height * img.shape.width;
        for chunk in img.f32_mut().chunks_exact_mut(plane) {
            let mut levels: Vec<u8> = chunk
                .iter()
                .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            equalize_plane(&mut levels);
            for (x, &l) in chunk.iter_mut().zip(&levels) {
                *x = f32::from(l) / 255.0;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Composition and normalisation

/// torchvision `RandomApply(transforms, p)`.
#[derive(Debug)]
pub struct RandomApply {
    /// Probability.
    pub p: f64,
    /// The transforms applied together.
    pub inner: Policy,
}

fn build_random_apply(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
    let Some(entries) = node.entries() else {
        return Err(invalid(
            node,
            path,
            "`random_apply` takes `{ p: 0.8, transforms: [...] }`",
            "e.g. `random_apply: { p: 0.8, transforms: [{ color_jitter: { brightness: 0.4 } }] }`",
        ));
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or_default();
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
        inner: Policy::parse(list, &join_path(path, "transforms"))?,
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

fn build_normalize(node: &Value, path: &str) -> Result<Box<dyn Transform>, ParamError> {
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
            let inv = 1.0 / s;
            for x in chunk {
                *x = (*x - m) * inv;
            }
        }
        Ok(())
    }
    fn is_normalize(&self) -> bool {
        true
    }
}
