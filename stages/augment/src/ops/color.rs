//! Colour: `color_jitter`, `random_grayscale`, `solarize`, `equalize`.

use serde::Deserialize;
use simclr_core::rng::Rng;
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use super::LUMA;
use super::params::*;
use crate::img::{Img, Shape};
use crate::transform::{Params, Transform, TransformError, Transforms, invalid, parse_config};

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

pub(super) fn build_jitter(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
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

/// One pixel's gray level (0.299 R + 0.587 G + 0.114 B, in that order).
#[inline(always)]
fn gray_level(r: f32, g: f32, b: f32) -> f32 {
    LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
}

#[inline(always)]
fn gray_of(chw: &[f32], plane: usize, out: &mut [f32]) {
    let (r, rest) = chw.split_at(plane);
    let (g, b) = rest.split_at(plane);
    for i in 0..plane {
        out[i] = gray_level(r[i], g[i], b[i]);
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

/// The left-to-right f64 sum of `values` (each widened from f32), the contrast mean's
/// definition.
#[inline(always)]
fn sequential_sum(values: impl Iterator<Item = f32>) -> f64 {
    values.map(f64::from).sum()
}

/// Values summed per block by [`exact_sum`].
const BLOCK: usize = 16;

/// The sum of `values` in f64 when it is provably the same as [`sequential_sum`]'s, computed
/// in parallel lanes; `None` when that cannot be shown (the caller then sums in order).
///
/// Why lanes can give the same bits: an f32 whose biased exponent field is `e` (`e = 0`,
/// subnormal, counted as 1) is a whole multiple of `2^(e - 150)` and below `2^(e - 126)` in
/// magnitude. So with `lo`/`hi` the smallest/largest exponent over the non-zero values, every
/// sum of any of the `n` values is a multiple of `2^(lo - 150)` and at most `n · 2^(hi - 126)`
/// in magnitude. While `n · 2^(hi - 126) ≤ 2^53 · 2^(lo - 150)`, i.e.
/// `log2(n) + hi - lo ≤ 29`, every such sum is an f64, so every addition is exact and any
/// order or grouping gives the exact sum, the sequential one's bits included (a zero total
/// is +0 either way once a non-zero value is summed). For 224 × 224 values in [0, 1] this
/// fails only if some non-zero value is below about 6e-5. NaN, infinity and all-zero input
/// take the sequential path.
#[inline(always)]
fn exact_sum(values: &[f32]) -> Option<f64> {
    let (blocks, rest) = values.as_chunks::<BLOCK>();
    // Magnitude bits: for non-negative floats their integer order is the float order. Zero
    // is left out of the smallest by subtracting one with wrap-around (0 becomes the largest).
    let (mut small, mut large) = ([u32::MAX; BLOCK], [0u32; BLOCK]);
    let mut lanes = [0f64; BLOCK];
    for block in blocks {
        for l in 0..BLOCK {
            let a = block[l].to_bits() & 0x7fff_ffff;
            small[l] = small[l].min(a.wrapping_sub(1));
            large[l] = large[l].max(a);
            lanes[l] += f64::from(block[l]);
        }
    }
    let (mut small, mut large) = (
        small.into_iter().min().unwrap_or(u32::MAX),
        large.into_iter().max().unwrap_or(0),
    );
    let mut total = lanes.iter().sum::<f64>();
    for &v in rest {
        let a = v.to_bits() & 0x7fff_ffff;
        small = small.min(a.wrapping_sub(1));
        large = large.max(a);
        total += f64::from(v);
    }
    if small == u32::MAX || large >= 0x7f80_0000 {
        return None;
    }
    let (lo, hi) = (((small + 1) >> 23).max(1), (large >> 23).max(1));
    let bits = usize::BITS - values.len().leading_zeros(); // ≥ log2(n)
    (bits + hi - lo <= 29).then_some(total)
}

/// The contrast mean's sum: [`exact_sum`] where it applies, else [`sequential_sum`].
#[inline(always)]
fn sum(values: &[f32]) -> f64 {
    exact_sum(values).unwrap_or_else(|| sequential_sum(values.iter().copied()))
}

crate::simd::dispatch! {
/// Contrast: blend with the mean gray level of the image.
pub fn adjust_contrast(chw: &mut [f32], channels: usize, plane: usize, f: f32) {
    let mean = if channels == 3 {
        let mut gray = vec![0f32; plane];
        gray_of(chw, plane, &mut gray);
        sum(&gray) / plane as f64
    } else {
        sum(chw) / chw.len() as f64
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
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    // Block by block: each pixel's gray level is formed from its own unblended channels, as
    // when the whole gray plane is made first, without that plane.
    const BLOCK: usize = 64;
    let blend = |x: &mut f32, gray: f32| *x = (f * *x + (1.0 - f) * gray).clamp(0.0, 1.0);
    for ((r, g), b) in r.chunks_mut(BLOCK).zip(g.chunks_mut(BLOCK)).zip(b.chunks_mut(BLOCK)) {
        let mut gray = [0f32; BLOCK];
        for (((y, &r), &g), &b) in gray.iter_mut().zip(&*r).zip(&*g).zip(&*b) {
            *y = gray_level(r, g, b);
        }
        for plane in [r, g, b] {
            for (x, &y) in plane.iter_mut().zip(&gray) {
                blend(x, y);
            }
        }
    }
}
}

crate::simd::dispatch_wide! {
/// Hue: rotate the hue by `shift` turns in HSV space (no-op on gray images), following
/// torchvision's `_rgb2hsv` / `_hsv2rgb`. Written without `floor`/`fmod` (library calls on
/// baseline x86-64): every wrapped quantity is known to lie in a small positive range.
pub(crate) fn adjust_hue(chw: &mut [f32], channels: usize, plane: usize, shift: f32) {
    if channels != 3 {
        return;
    }
    let (r, rest) = chw.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    // Sixteen pixels at a time through fixed-size lanes, which the compiler turns into SIMD
    // (eight gave the same speed with AVX2, and 1.25× less than sixteen with AVX-512).
    const LANES: usize = 16;
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

pub(super) fn build_grayscale(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
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

pub(super) fn build_solarize(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
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

pub(super) fn build_equalize(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let c: ProbConfig = parse_config(node, path)?;
    check_p(node, path, c.p)?;
    Ok(Box::new(Equalize { p: c.p }))
}

/// torchvision's `_scale_channel` on one plane of 8-bit levels.
pub(crate) fn equalize_plane(levels: &mut [u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of the kinds contrast sees: 8-bit levels, arbitrary floats, blends clamped at 0
    /// by a factor above 1, tiny non-zero values (where lanes may round differently), zeros,
    /// negative ones (after a normalize), subnormals and NaN.
    fn planes() -> Vec<(&'static str, Vec<f32>)> {
        let mut rng = Rng::from_key(&[11]);
        let n = 224 * 224;
        let mut out = Vec::new();
        let levels = (0..n).map(|_| (rng.below(256) as f32) / 255.0).collect();
        out.push(("levels", levels));
        // Arbitrary mantissas, none below 1e-3 (a pixel that dark is 8-bit level 0 or 1 times
        // a brightness factor of at least 0.2, or exactly 0).
        let floats = (0..n)
            .map(|_| 1e-3 + rng.next_f64() as f32 * 0.999)
            .collect();
        out.push(("floats", floats));
        for f in [1.2f32, 1.8] {
            let mean = 0.43f32;
            let offset = (1.0 - f) * mean;
            let blended = (0..n)
                .map(|_| (f * rng.next_f64() as f32 + offset).clamp(0.0, 1.0))
                .collect();
            out.push(("blended", blended));
        }
        let mut tiny: Vec<f32> = (0..n).map(|_| rng.next_f64() as f32).collect();
        for i in (0..n).step_by(997) {
            tiny[i] = rng.next_f64() as f32 * 1e-6;
        }
        out.push(("tiny", tiny));
        let odd: Vec<f32> = (0..1001)
            .map(|_| rng.next_f64() as f32 * 2.0 - 0.5)
            .collect();
        out.push(("signed, odd length", odd));
        out.push(("subnormal", vec![1e-40; 37]));
        out.push(("zeros", vec![0.0; 64]));
        out.push(("nan", vec![0.5, f32::NAN, 0.25]));
        out
    }

    #[test]
    fn lane_sums_are_taken_only_where_they_equal_the_sequential_sum() {
        for (what, values) in planes() {
            let sequential = sequential_sum(values.iter().copied());
            let lanes = exact_sum(&values);
            if let Some(sum) = lanes {
                assert_eq!(sum.to_bits(), sequential.to_bits(), "{what}");
            }
            match what {
                // Either path: values clamped at 0 come with a few just above it.
                "blended" => {}
                "tiny" | "zeros" | "nan" => assert_eq!(lanes, None, "{what}"),
                _ => assert!(lanes.is_some(), "{what}: the lane sum should apply"),
            }
        }
        // The smallest value decides: 2^-14 below the largest still passes at 224², 2^-15 not.
        let mut values = vec![0.75f32; 224 * 224];
        values[5] = 0.75 * 2f32.powi(-13);
        assert!(exact_sum(&values).is_some());
        values[5] = 0.75 * 2f32.powi(-15);
        assert!(exact_sum(&values).is_none());
    }

    /// A case where lanes and order differ: large values, then many that each round away.
    #[test]
    fn the_guard_refuses_sums_that_round() {
        let mut values = vec![1.0f32; 8];
        values.extend(std::iter::repeat_n(1.0 + f32::EPSILON, 4096));
        values.extend(std::iter::repeat_n(3e-9f32, 4096));
        let sequential = sequential_sum(values.iter().copied());
        let lanes = {
            let mut l = [0f64; 16];
            for (i, &v) in values.iter().enumerate() {
                l[i % 16] += f64::from(v);
            }
            l.iter().sum::<f64>()
        };
        assert_ne!(lanes.to_bits(), sequential.to_bits(), "the example rounds");
        assert_eq!(exact_sum(&values), None);
    }
}
