//! A custom augmentation, registered by name and used from a definition.
//!
//! ```sh
//! cargo run --release --example custom_transform
//! ```
//!
//! `random_cutout` (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural
//! Networks with Cutout") blanks a random square of the view. Like every transform it can
//! draw its parameters from the sample's RNG (`sample`) or be applied with explicit ones
//! (`apply`), so runs using it stay deterministic, loggable and replayable.

use std::path::Path;

use serde::Deserialize;
use simclr::augment::transform::{TransformKind, invalid, parse_config};
use simclr::augment::{Img, Params, Shape, Transform, TransformError, Transforms};
use simclr::config::graph::LoadOptions;
use simclr::core::rng::Rng;
use simclr::core::{ParamError, Value};

/// Parameters in the definition: `- random_cutout: { size: 0.3, p: 0.5, fill: 0.0 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CutoutConfig {
    /// Side of the square, as a fraction of the shorter image side.
    size: f64,
    /// Probability of applying it.
    #[serde(default = "one")]
    p: f64,
    /// Value written into the square (on the [0, 1] scale).
    #[serde(default)]
    fill: f32,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug)]
struct RandomCutout {
    size: f64,
    p: f64,
    fill: f32,
}

impl Transform for RandomCutout {
    fn name(&self) -> &str {
        "random_cutout"
    }

    /// Parameters: `[applied, top, left, side]` as numbers.
    fn sample(&self, shape: Shape, rng: &mut Rng) -> Params {
        let side = ((shape.height.min(shape.width) as f64) * self.size)
            .round()
            .max(1.0);
        let applied = rng.bernoulli(self.p);
        let top = rng.range_inclusive(0, (shape.height as f64 - side).max(0.0) as i64);
        let left = rng.range_inclusive(0, (shape.width as f64 - side).max(0.0) as i64);
        Params::Values(vec![
            f32::from(u8::from(applied)),
            top as f32,
            left as f32,
            side as f32,
        ])
    }

    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), TransformError> {
        let Params::Values(v) = params else {
            return Err(TransformError(format!(
                "expected [applied, top, left, side], got {params:?}"
            )));
        };
        let [applied, top, left, side] = v.as_slice() else {
            return Err(TransformError(format!(
                "expected 4 values, got {}",
                v.len()
            )));
        };
        if *applied == 0.0 {
            return Ok(());
        }
        let Shape { height, width, .. } = img.shape;
        let (top, left, side) = (*top as usize, *left as usize, *side as usize);
        let planes = img.f32_mut();
        for plane in planes.chunks_exact_mut(height * width) {
            for y in top..(top + side).min(height) {
                plane[y * width + left..y * width + (left + side).min(width)].fill(self.fill);
            }
        }
        Ok(())
    }
}

fn build_cutout(
    node: &Value,
    path: &str,
    _transforms: &Transforms,
) -> Result<Box<dyn Transform>, ParamError> {
    let c: CutoutConfig = parse_config(node, path)?;
    if !(c.size > 0.0 && c.size <= 1.0) {
        return Err(invalid(
            node,
            path,
            format!("`size` must be in (0, 1], found {}", c.size),
            "0.3 blanks a third of the side",
        ));
    }
    Ok(Box::new(RandomCutout {
        size: c.size,
        p: c.p,
        fill: c.fill,
    }))
}

const DEFINITION: &str = "\
name: cutout
seed: 3
stages:
  images: { kind: synthetic, params: { count: 512, size: 32 } }
  views:
    kind: views
    inputs: [images]
    workers: 2
    params:
      t:
        - random_resized_crop: { size: 32 }
        - horizontal_flip
        - random_cutout: { size: 0.4, p: 1.0, fill: 0.5 }
  batches: { kind: batch, inputs: [views], params: { batch_size: 128 } }
  drain: { kind: sink, inputs: [batches], params: { expect: 4, digest: true } }
";

fn main() -> anyhow::Result<()> {
    let mut registry = simclr::registry::user();
    simclr::registry::add_transform(
        &mut registry,
        TransformKind {
            name: "random_cutout",
            summary: "blank a random square",
            build: build_cutout,
        },
    )
    .map_err(anyhow::Error::msg)?;
    let graph = simclr::config::load_str(
        Path::new("cutout.yaml"),
        DEFINITION,
        &registry,
        &LoadOptions::default(),
    )
    .map_err(|d| anyhow::anyhow!("{d}"))?;
    let run = simclr::runtime::run(&graph, &simclr::runtime::RunOptions::default())?;
    println!("{}", run.report);
    Ok(())
}
