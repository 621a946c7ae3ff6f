//! `synthetic`: a built-in, deterministic, labelled dataset: no download, any size.
//!
//! Ten classes, five shapes (disk, square, triangle, ring, plus) and five textures
//! (horizontal, vertical and diagonal stripes, checkerboard, dot grid), each drawn with a
//! random foreground and background colour, size, position, rotation or frequency, plus a
//! little pixel noise. Colour carries no class information, so an encoder must learn shape
//! and texture: exactly what SimCLR's colour jitter and grayscale push it to do. Item `i` is
//! a pure function of (seed, i).

use std::f64::consts::PI;
use std::sync::Arc;

use simclr_core::rng::{Rng, stream};
use simclr_core::{
    BuildContext, InputPorts, OutputPort, Parallelism, ParamError, PortType, StageFactory,
    StageKind,
};

use crate::common::{Dataset, ItemError, Sample, check_options, factory};

/// Class names, in label order.
pub const CLASSES: [&str; 10] = [
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "h_stripes",
    "v_stripes",
    "d_stripes",
    "checker",
    "dots",
];

crate::source_config! {
    /// Parameters of `synthetic`.
    pub struct SyntheticConfig {
        /// Number of images.
        #[serde(default = "default_count")]
        pub count: u64,
        /// Side length in pixels.
        #[serde(default = "default_size")]
        pub size: u32,
        /// Number of classes, 1-10 (disk, square, triangle, ring, plus, then textures).
        #[serde(default = "default_classes")]
        pub classes: u32,
        /// 3 (RGB) or 1 (gray).
        #[serde(default = "default_channels")]
        pub channels: u8,
    }
}

fn default_count() -> u64 {
    4096
}
fn default_size() -> u32 {
    32
}
fn default_classes() -> u32 {
    10
}
fn default_channels() -> u8 {
    3
}

/// The `synthetic` kind.
pub static KIND: StageKind = StageKind {
    name: "synthetic",
    summary: "built-in deterministic labelled RGB dataset of shapes and textures (no download)",
    input: InputPorts::None,
    output: OutputPort::Emits(PortType::Images),
    parallelism: Parallelism::Parallel { ordered: true },
    example: "\
name: synthetic-example
stages:
  images:
    kind: synthetic
    params: { count: 512, size: 32 }
  drain: { kind: sink, inputs: [images] }
",
    params: || schemars::schema_for!(SyntheticConfig),
    build,
};

/// The dataset itself.
#[derive(Clone, Debug)]
pub struct Synthetic {
    /// Seed (the definition's).
    pub seed: u64,
    /// Items.
    pub count: u64,
    /// Side.
    pub size: u32,
    /// Classes used.
    pub classes: u32,
    /// 1 or 3.
    pub channels: u8,
}

fn random_colour(rng: &mut Rng) -> [f64; 3] {
    [rng.next_f64(), rng.next_f64(), rng.next_f64()]
}

fn luma(c: [f64; 3]) -> f64 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

impl Synthetic {
    /// Render item `index`: HWC bytes and its label.
    pub fn render(&self, index: u64) -> (Vec<u8>, u32) {
        let mut rng = Rng::from_key(&[self.seed, index, stream::SYNTHETIC]);
        let label = (index % u64::from(self.classes)) as u32;
        let bg = random_colour(&mut rng);
        // Foreground far enough from the background in brightness to stay visible in gray.
        let mut fg = random_colour(&mut rng);
        for _ in 0..16 {
            if (luma(fg) - luma(bg)).abs() > 0.25 {
                break;
            }
            fg = random_colour(&mut rng);
        }
        let n = f64::from(self.size);
        let (cx, cy) = (rng.uniform(0.35, 0.65) * n, rng.uniform(0.35, 0.65) * n);
        let radius = rng.uniform(0.18, 0.34) * n;
        let theta = rng.uniform(0.0, 2.0 * PI);
        let period = rng.uniform(0.12, 0.3) * n;
        let phase = rng.uniform(0.0, 1.0);
        let (sin, cos) = theta.sin_cos();
        let inside = |x: f64, y: f64| -> bool {
            let (dx, dy) = (x - cx, y - cy);
            let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
            let r = (dx * dx + dy * dy).sqrt();
            match label {
                0 => r < radius,
                1 => u.abs().max(v.abs()) < radius * 0.8,
                2 => {
                    // Equilateral triangle of circumradius `radius`, rotated by theta.
                    let k = radius * 0.5;
                    v > -k && v - u * 3f64.sqrt() < radius && v + u * 3f64.sqrt() < radius
                }
                3 => r < radius && r > radius * 0.55,
                4 => {
                    (u.abs() < radius * 0.3 && v.abs() < radius)
                        || (v.abs() < radius * 0.3 && u.abs() < radius)
                }
                5 => ((y / period + phase).fract()) < 0.5,
                6 => ((x / period + phase).fract()) < 0.5,
                7 => (((x + y) / (period * 1.2) + phase).fract()) < 0.5,
                8 => {
                    ((x / period + phase).floor() as i64 + (y / period + phase).floor() as i64)
                        .rem_euclid(2)
                        == 0
                }
                _ => {
                    let gx = (x / period + phase).fract() - 0.5;
                    let gy = (y / period + phase).fract() - 0.5;
                    gx * gx + gy * gy < 0.09
                }
            }
        };
        let side = self.size as usize;
        let channels = usize::from(self.channels);
        let mut out = vec![0u8; side * side * channels];
        for py in 0..side {
            for px in 0..side {
                // 2x2 supersampling for smooth edges.
                let mut cover = 0.0;
                for (ox, oy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    if inside(px as f64 + ox, py as f64 + oy) {
                        cover += 0.25;
                    }
                }
                let noise = rng.uniform(-0.03, 0.03);
                let rgb: [f64; 3] = std::array::from_fn(|c| {
                    (fg[c] * cover + bg[c] * (1.0 - cover) + noise).clamp(0.0, 1.0)
                });
                let at = (py * side + px) * channels;
                if channels == 1 {
                    out[at] = (luma(rgb) * 255.0).round() as u8;
                } else {
                    for c in 0..3 {
                        out[at + c] = (rgb[c] * 255.0).round() as u8;
                    }
                }
            }
        }
        (out, label)
    }
}

impl Dataset for Synthetic {
    fn len(&self) -> u64 {
        self.count
    }

    fn get(&self, index: u64) -> Result<Sample, ItemError> {
        let (pixels, label) = self.render(index);
        Ok(Sample {
            width: self.size,
            height: self.size,
            channels: self.channels,
            pixels: Arc::from(pixels),
            label: Some(label),
        })
    }
}

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: SyntheticConfig = cx.parse()?;
    let options = config.source_options();
    check_options(&options).map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    if !(1..=10).contains(&config.classes) {
        return Err(cx.invalid(
            "classes",
            format!("`classes` must be 1-10, found {}", config.classes),
            "the dataset has ten classes: five shapes and five textures",
        ));
    }
    if !(8..=1024).contains(&config.size) {
        return Err(cx.invalid(
            "size",
            format!("`size` must be 8-1024 pixels, found {}", config.size),
            "32 matches CIFAR",
        ));
    }
    if config.channels != 1 && config.channels != 3 {
        return Err(cx.invalid(
            "channels",
            format!("`channels` must be 1 or 3, found {}", config.channels),
            "1 renders gray, 3 RGB",
        ));
    }
    if config.count == 0 {
        return Err(cx.invalid("count", "`count` must be at least 1", "e.g. `count: 4096`"));
    }
    let data = Synthetic {
        seed: cx.seed,
        count: config.count,
        size: config.size,
        classes: config.classes,
        channels: config.channels,
    };
    let labelled = Arc::new(SyntheticSplits(data.clone()));
    Ok(factory(
        cx,
        options,
        config.count,
        usize::from(config.channels),
        labelled,
        move || Ok(Arc::new(data.clone()) as Arc<dyn Dataset>),
    ))
}

/// The labelled splits of a `synthetic` stage: the test part is a disjoint set of images of
/// the same classes, drawn from another seed.
#[derive(Debug)]
struct SyntheticSplits(Synthetic);

impl crate::common::LabelledData for SyntheticSplits {
    fn describe(&self) -> String {
        "synthetic ".into()
    }

    fn open(
        &self,
        split: crate::common::Split,
        _test_path: Option<&str>,
    ) -> Result<Arc<dyn Dataset>, simclr_core::DataError> {
        let mut data = self.0.clone();
        if split == crate::common::Split::Test {
            // A different seed draws different images of the same classes.
            data.seed ^= 0x7e57_5e7d_0000_0001;
        }
        Ok(Arc::new(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_deterministic_labelled_and_varied() {
        let data = Synthetic {
            seed: 3,
            count: 100,
            size: 32,
            classes: 10,
            channels: 3,
        };
        let a = data.get(17).expect("item");
        assert_eq!(
            a,
            data.get(17).expect("again"),
            "a pure function of (seed, index)"
        );
        assert_eq!(a.label, Some(7));
        assert_eq!(a.pixels.len(), 32 * 32 * 3);
        let other_seed = Synthetic {
            seed: 4,
            ..data.clone()
        };
        assert_ne!(a.pixels, other_seed.get(17).expect("item").pixels);
        // Every class draws something: the image is not a flat background.
        for i in 0..10 {
            let s = data.get(i).expect("item");
            let min = s.pixels.iter().min().copied().unwrap_or(0);
            let max = s.pixels.iter().max().copied().unwrap_or(0);
            assert!(max - min > 40, "class {i} has contrast ({min}..{max})");
        }
    }
}
