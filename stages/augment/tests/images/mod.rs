//! Test images and comparisons shared by the crate's integration tests and its in-crate
//! tests (which include this file by path).

use super::{Img, Shape};

/// A 3-channel `h × w` image with pixel (c, y, x) = `f(c, y, x)`.
pub fn rgb(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Img {
    let shape = Shape {
        channels: 3,
        height: h,
        width: w,
    };
    let mut v = vec![0f32; shape.len()];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                v[(c * h + y) * w + x] = f(c, y, x);
            }
        }
    }
    Img::from_f32(shape, v)
}

/// A 17 × 23 image with every channel varying.
pub fn pattern() -> Img {
    rgb(17, 23, |c, y, x| {
        ((x * 7 + y * 13 + c * 29) % 256) as f32 / 255.0
    })
}

/// The largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
