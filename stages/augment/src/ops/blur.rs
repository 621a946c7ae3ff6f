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
