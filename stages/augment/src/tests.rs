//! Tests of the crate's internal routines (`ops::color::adjust_hue`, `equalize_plane`, the
//! SIMD switch), which are not part of its public interface.

use simclr_core::rng::Rng;

use crate::ops::color::{adjust_hue, equalize_plane};
use crate::ops::{Equalize, Normalize};
use crate::simd::Level;
use crate::{Img, Params, Policy, Shape, Transform};

#[path = "../tests/images/mod.rs"]
mod images;
use images::{max_diff, pattern, rgb};

#[test]
fn hue_shift_then_its_inverse_returns_the_input_within_one_level() {
    let img = pattern();
    for shift in [0.05f32, 0.2, 0.37, 0.5] {
        let mut chw = img.to_f32();
        let plane = 17 * 23;
        adjust_hue(&mut chw, 3, plane, shift);
        assert!(
            max_diff(&chw, &img.to_f32()) > 0.01,
            "shift {shift} changes the image"
        );
        adjust_hue(&mut chw, 3, plane, -shift);
        assert!(
            max_diff(&chw, &img.to_f32()) <= 1.0 / 255.0,
            "shift {shift}: {}",
            max_diff(&chw, &img.to_f32())
        );
    }
    // A pure hue rotation by 1/3 turn maps red to green.
    let mut red = vec![1.0, 0.0, 0.0];
    adjust_hue(&mut red, 3, 1, 1.0 / 3.0);
    assert!(max_diff(&red, &[0.0, 1.0, 0.0]) < 1e-5, "{red:?}");
}

#[test]
fn equalize_and_normalize_match_hand_computed_values() {
    // Levels 0 (x2), 100 (x1), 200 (x1): step = (4 - 1) / 255 = 0 -> unchanged (torchvision).
    let mut tiny = vec![0u8, 0, 100, 200];
    equalize_plane(&mut tiny);
    assert_eq!(tiny, vec![0, 0, 100, 200]);
    // 256 pixels, levels 10 (x128) and 20 (x128): step = 128 / 255 = 0 -> unchanged as well;
    // with 1024 pixels: step = 512 / 255 = 2, lut[10] = 1 / 2 = 0, lut[20] = (512 + 1) / 2 = 256 -> 255.
    let mut plane: Vec<u8> = (0..1024).map(|i| if i < 512 { 10 } else { 20 }).collect();
    equalize_plane(&mut plane);
    assert!(plane[..512].iter().all(|&v| v == 0) && plane[512..].iter().all(|&v| v == 255));
    // The transform does the same through the [0, 1] float scale.
    let mut img = Img::from_f32(
        Shape {
            channels: 1,
            height: 32,
            width: 32,
        },
        (0..1024)
            .map(|i| if i < 512 { 10.0 / 255.0 } else { 20.0 / 255.0 })
            .collect(),
    );
    Equalize { p: 1.0 }
        .apply(&mut img, &Params::Flag(true))
        .expect("equalize");
    assert!(
        img.to_f32()[..512].iter().all(|&v| v == 0.0)
            && img.to_f32()[512..].iter().all(|&v| v == 1.0)
    );
    let mut img = rgb(1, 1, |c, _, _| [0.5, 0.25, 1.0][c]);
    Normalize {
        mean: vec![0.5, 0.5, 0.5],
        std: vec![0.25, 0.5, 0.5],
    }
    .apply(&mut img, &Params::None)
    .expect("normalize");
    assert!(max_diff(&img.to_f32(), &[0.0, -0.5, 1.0]) < 1e-6);
}

#[test]
fn simd_and_baseline_paths_give_bit_identical_views() {
    let text = "
- random_resized_crop: { size: 40 }
- random_apply: { p: 1.0, transforms: [{ color_jitter: { brightness: 0.8, contrast: 0.8, saturation: 0.8, hue: 0.2 } }] }
- gaussian_blur: { kernel_size: 9 }
";
    let root = simclr_config::yaml::parse(text).expect("yaml");
    let policy = Policy::parse(&root, "t").expect("policy");
    let float = rgb(61, 77, |c, y, x| {
        ((x * 5 + y * 11 + c * 17) % 97) as f32 / 96.0
    });
    // 8-bit input too: the first photometric transform converts it to float planes.
    let shape = Shape {
        channels: 3,
        height: 61,
        width: 77,
    };
    let bytes = (0..shape.len()).map(|i| (i * 37 % 251) as u8).collect();
    let eight = Img::from_u8(shape, bytes);
    let run = |key: u64| {
        let mut img = if key % 2 == 0 {
            float.clone()
        } else {
            eight.clone()
        };
        policy
            .run(&mut img, &mut Rng::from_key(&[key]))
            .expect("runs");
        img.to_f32()
    };
    let bits = |v: Vec<f32>| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
    for key in 0..10 {
        crate::simd::set_level(Level::Baseline);
        let plain = bits(run(key));
        // On a CPU without a level's instructions, that level runs the one below it.
        for level in [Level::Avx2, Level::Avx512] {
            crate::simd::set_level(level);
            assert_eq!(bits(run(key)), plain, "draw {key}, {level:?}");
        }
    }
}

#[test]
fn float_planes_from_bytes_match_the_per_pixel_definition() {
    for (channels, height, width) in [(3, 224, 224), (3, 7, 13), (1, 28, 28), (1, 3, 5)] {
        let shape = Shape {
            channels,
            height,
            width,
        };
        let hwc: Vec<u8> = (0..shape.len()).map(|i| (i * 101 % 256) as u8).collect();
        let plane = height * width;
        let mut expected = vec![0f32; shape.len()];
        for i in 0..plane {
            for c in 0..channels {
                expected[c * plane + i] = f32::from(hwc[i * channels + c]) * (1.0 / 255.0);
            }
        }
        for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
            crate::simd::set_level(level);
            let mut img = Img::from_u8(shape, hwc.clone());
            assert_eq!(img.f32_mut(), &expected, "{shape:?} {level:?}");
        }
        crate::simd::set_level(Level::Avx512);
    }
}

#[test]
fn horizontal_flip_of_bytes_mirrors_every_row() {
    use crate::ops::Flip;
    for channels in [1, 2, 3] {
        for width in [1, 15, 16, 17, 33, 224] {
            let shape = Shape {
                channels,
                height: 3,
                width,
            };
            let hwc: Vec<u8> = (0..shape.len()).map(|i| (i * 13 % 256) as u8).collect();
            let mut expected = vec![0u8; shape.len()];
            for y in 0..3 {
                for x in 0..width {
                    for c in 0..channels {
                        expected[(y * width + x) * channels + c] =
                            hwc[(y * width + width - 1 - x) * channels + c];
                    }
                }
            }
            for level in [Level::Baseline, Level::Avx2, Level::Avx512] {
                crate::simd::set_level(level);
                let mut img = Img::from_u8(shape, hwc.clone());
                Flip {
                    p: 1.0,
                    vertical: false,
                }
                .apply(&mut img, &Params::Flag(true))
                .expect("flips");
                assert_eq!(img.to_u8_hwc(), expected, "{shape:?} {level:?}");
            }
            crate::simd::set_level(Level::Avx512);
        }
    }
}
