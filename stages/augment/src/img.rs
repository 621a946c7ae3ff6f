//! The working image of the augmentation pipeline.
//!
//! Geometric transforms run on the 8-bit interleaved pixels a source decoded (cheap, and what
//! PIL does); the first photometric transform converts to float32 planar CHW in [0, 1]
//! (torchvision's tensor semantics), and everything after works in float.

use std::sync::Arc;

use simclr_core::Image;

/// Channels, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// 1 or 3.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Shape {
    /// Elements (`channels × height × width`).
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the shape holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pixel storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 8-bit, interleaved HWC (as decoded).
    U8(Arc<[u8]>),
    /// float32, planar CHW, nominally in [0, 1] (any range after `normalize`).
    F32(Vec<f32>),
}

crate::simd::dispatch! {
/// De-interleave 8-bit HWC pixels into float planes scaled to [0, 1], appended to `chw`.
///
/// One pass per channel, each a plain map the compiler vectorises (a single pass writing
/// three planes at once does not: about 4× slower at 224 × 224 × 3).
fn planes_from_hwc(hwc: &[u8], channels: usize, chw: &mut Vec<f32>) {
    const SCALE: f32 = 1.0 / 255.0;
    match channels {
        1 => chw.extend(hwc.iter().map(|&v| f32::from(v) * SCALE)),
        3 => {
            let (pixels, _) = hwc.as_chunks::<3>();
            for c in 0..3 {
                chw.extend(pixels.iter().map(|p| f32::from(p[c]) * SCALE));
            }
        }
        _ => {
            for c in 0..channels {
                chw.extend(hwc.iter().skip(c).step_by(channels).map(|&v| f32::from(v) * SCALE));
            }
        }
    }
}
}

/// An image being augmented.
#[derive(Clone, Debug, PartialEq)]
pub struct Img {
    /// Its shape.
    pub shape: Shape,
    /// Its pixels.
    pub pixels: Pixels,
}

impl Img {
    /// Wrap a source's image (no copy).
    pub fn from_image(image: &Image) -> Self {
        Self {
            shape: Shape {
                channels: usize::from(image.channels),
                height: image.height as usize,
                width: image.width as usize,
            },
            pixels: Pixels::U8(image.pixels.clone()),
        }
    }

    /// An 8-bit HWC image.
    pub fn from_u8(shape: Shape, hwc: Vec<u8>) -> Self {
        Self {
            shape,
            pixels: Pixels::U8(Arc::from(hwc)),
        }
    }

    /// A float CHW image.
    pub fn from_f32(shape: Shape, chw: Vec<f32>) -> Self {
        Self {
            shape,
            pixels: Pixels::F32(chw),
        }
    }

    /// Convert to float32 planar in place (no-op if already) and return the planes.
    pub fn f32_mut(&mut self) -> &mut Vec<f32> {
        if let Pixels::U8(hwc) = &self.pixels {
            let mut chw = Vec::with_capacity(self.shape.len());
            planes_from_hwc(hwc, self.shape.channels, &mut chw);
            self.pixels = Pixels::F32(chw);
        }
        match &mut self.pixels {
            Pixels::F32(v) => v,
            Pixels::U8(_) => unreachable!("converted above"),
        }
    }

    /// The image as float32 CHW (converting a copy if needed).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.pixels {
            Pixels::F32(v) => v.clone(),
            Pixels::U8(_) => {
                let mut copy = self.clone();
                std::mem::take(copy.f32_mut())
            }
        }
    }

    /// The image as float32 CHW, consuming it (no copy when already float).
    pub fn into_f32(mut self) -> Vec<f32> {
        std::mem::take(self.f32_mut())
    }

    /// The image as 8-bit HWC, clamping floats to [0, 1] (for previews).
    pub fn to_u8_hwc(&self) -> Vec<u8> {
        match &self.pixels {
            Pixels::U8(hwc) => hwc.to_vec(),
            Pixels::F32(chw) => {
                let Shape {
                    channels,
                    height,
                    width,
                } = self.shape;
                let plane = height * width;
                let mut hwc = vec![0u8; channels * plane];
                for i in 0..plane {
                    for c in 0..channels {
                        hwc[i * channels + c] =
                            (chw[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
                    }
                }
                hwc
            }
        }
    }
}
