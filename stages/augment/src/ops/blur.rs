//! `gaussian_blur`.

use serde::Deserialize;
use simclr_core::rng::Rng;
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use super::params::*;
use crate::img::{Img, Shape};
use crate::transform::{Params, Transform, TransformError, Transforms, invalid, parse_config};

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

pub(super) fn build_blur(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
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

/// Outputs computed together in [`blur_planes`]: their running sums stay in registers across
/// the kernel's taps instead of being loaded and stored once per tap. 64 (eight AVX2
/// registers) keeps enough independent additions in flight to hide the adder's latency; 16
/// (two) left the loop waiting on it: a 21-tap blur of 224 × 224 × 3 took 1.25–1.5× as long.
const LANES: usize = 64;

/// The remainder of a row after the 64-wide blocks, in blocks of this many.
const SHORT: usize = 16;

/// `out[x..x + N] = Σ_k kernel[k] · data[src(k) + x..]`, the sum formed tap by tap from 0.
#[inline(always)]
fn block<const N: usize>(
    out: &mut [f32],
    x: usize,
    kernel: &[f32],
    src: &impl Fn(usize) -> usize,
    data: &[f32],
) {
    let mut acc = [0f32; N];
    for (k, &w) in kernel.iter().enumerate() {
        let row = &data[src(k) + x..src(k) + x + N];
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += w * v;
        }
    }
    out[x..x + N].copy_from_slice(&acc);
}

/// `out[i] = Σ_k kernel[k] · src(k)[i]`, the sum formed tap by tap from 0 in kernel order
/// (the same additions, in the same order, as one multiply-add pass per tap), for `LANES`
/// outputs at a time, then `SHORT`, then one.
#[inline(always)]
fn taps(out: &mut [f32], kernel: &[f32], src: impl Fn(usize) -> usize, data: &[f32]) {
    let n = out.len();
    let mut x = 0;
    while x + LANES <= n {
        block::<LANES>(out, x, kernel, &src, data);
        x += LANES;
    }
    while x + SHORT <= n {
        block::<SHORT>(out, x, kernel, &src, data);
        x += SHORT;
    }
    for (i, o) in out.iter_mut().enumerate().skip(x) {
        let mut a = 0f32;
        for (k, &w) in kernel.iter().enumerate() {
            a += w * data[src(k) + i];
        }
        *o = a;
    }
}

/// `row` with `half` reflected values on each side, into `padded` (`row.len() + 2·half`).
#[inline(always)]
fn pad_row(row: &[f32], padded: &mut [f32], half: usize) {
    let width = row.len();
    padded[half..half + width].copy_from_slice(row);
    for i in 0..half {
        padded[i] = row[reflect(i as isize - half as isize, width)];
        padded[half + width + i] = row[reflect((width + i) as isize, width)];
    }
}

crate::simd::dispatch! {
/// Separable blur of each plane with reflect padding (torchvision's `padding_mode="reflect"`).
///
/// Each pass sums the kernel's taps for 64 outputs at a time in registers (vectorised); the
/// reflected borders are materialised once per row.
pub fn blur_planes(chw: &mut [f32], height: usize, width: usize, kernel: &[f32]) {
    let half = kernel.len() / 2;
    let mut padded = vec![0f32; width + 2 * half];
    let mut tmp = vec![0f32; height * width];
    let rows: Vec<usize> = (0..height + 2 * half)
        .map(|i| reflect(i as isize - half as isize, height))
        .collect();
    for plane in chw.chunks_exact_mut(height * width) {
        for y in 0..height {
            pad_row(&plane[y * width..(y + 1) * width], &mut padded, half);
            taps(&mut tmp[y * width..(y + 1) * width], kernel, |k| k, &padded);
        }
        for y in 0..height {
            taps(
                &mut plane[y * width..(y + 1) * width],
                kernel,
                |k| rows[y + k] * width,
                &tmp,
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The blur as one multiply-add pass per tap over whole rows (the previous
    /// implementation): the blocked one must give the same bits.
    fn per_tap(chw: &mut [f32], height: usize, width: usize, kernel: &[f32]) {
        let half = kernel.len() / 2;
        let mut padded = vec![0f32; width + 2 * half];
        let mut tmp = vec![0f32; height * width];
        for plane in chw.chunks_exact_mut(height * width) {
            for y in 0..height {
                pad_row(&plane[y * width..(y + 1) * width], &mut padded, half);
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
                    let src = reflect((y + k) as isize - half as isize, height);
                    for (o, &v) in out.iter_mut().zip(&tmp[src * width..(src + 1) * width]) {
                        *o += w * v;
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_taps_give_the_per_tap_sums_bit_for_bit() {
        let mut rng = Rng::from_key(&[5]);
        for (h, w, size, sigma) in [
            (224, 224, 23, 1.7),
            (37, 53, 9, 0.8),
            (5, 17, 5, 2.0),
            (16, 15, 3, 0.3),
        ] {
            let img: Vec<f32> = (0..3 * h * w).map(|_| rng.next_f64() as f32).collect();
            let kernel = trim_kernel(gaussian_kernel(size, sigma));
            let (mut a, mut b) = (img.clone(), img);
            blur_planes(&mut a, h, w, &kernel);
            per_tap(&mut b, h, w, &kernel);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{h}x{w}, kernel {size}"
            );
        }
    }
}
