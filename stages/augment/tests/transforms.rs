//! Transform correctness against independently computed values (issue #3): each transform,
//! its sampled parameters, and a logged policy's replay.

use simclr_core::rng::Rng;
use simclr_stage_augment::ops::{
    ColorJitter, Flip, GaussianBlur, RandomGrayscale, RandomResizedCrop, Solarize,
};
use simclr_stage_augment::resample::Interpolation;
use simclr_stage_augment::{Img, Params, Policy, Shape, Transform};

mod images;
use images::{max_diff, pattern, rgb};

#[test]
fn identity_parameters_return_the_input() {
    let img = pattern();
    // Colour jitter with factors 1 and hue 0, in any order.
    let jitter = ColorJitter {
        ranges: [Some((1.0, 1.0)); 4],
    };
    let mut out = img.clone();
    let params = Params::Jitter {
        order: [3, 1, 0, 2],
        brightness: Some(1.0),
        contrast: Some(1.0),
        saturation: Some(1.0),
        hue: Some(0.0),
    };
    jitter.apply(&mut out, &params).expect("applies");
    assert!(max_diff(&out.to_f32(), &img.to_f32()) < 1e-6);
    // A full-image crop resized to its own size, from 8-bit pixels.
    let bytes: Vec<u8> = (0..17 * 23 * 3).map(|i| (i * 37 % 251) as u8).collect();
    let u8_img = Img::from_u8(
        Shape {
            channels: 3,
            height: 17,
            width: 23,
        },
        bytes,
    );
    let crop = RandomResizedCrop {
        size: (17, 23),
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        interpolation: Interpolation::Bilinear,
    };
    let mut out = u8_img.clone();
    crop.apply(
        &mut out,
        &Params::Crop {
            top: 0,
            left: 0,
            height: 17,
            width: 23,
        },
    )
    .expect("crop");
    assert_eq!(out.to_u8_hwc(), u8_img.to_u8_hwc());
    // Flips off, grayscale off, solarize off change nothing; a flip twice is the identity.
    let mut out = img.clone();
    Flip {
        p: 0.5,
        vertical: false,
    }
    .apply(&mut out, &Params::Flag(false))
    .expect("flip");
    RandomGrayscale { p: 0.5 }
        .apply(&mut out, &Params::Flag(false))
        .expect("gray");
    Solarize {
        threshold: 0.5,
        p: 0.5,
    }
    .apply(&mut out, &Params::Flag(false))
    .expect("solarize");
    assert_eq!(out, img);
    for vertical in [false, true] {
        let flip = Flip { p: 0.5, vertical };
        let mut twice = img.clone();
        flip.apply(&mut twice, &Params::Flag(true)).expect("flip");
        assert_ne!(twice, img);
        flip.apply(&mut twice, &Params::Flag(true)).expect("flip");
        assert_eq!(twice, img);
    }
}

#[test]
fn horizontal_flip_mirrors_columns_in_both_pixel_formats() {
    let bytes: Vec<u8> = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]; // 2x2 RGB
    let mut img = Img::from_u8(
        Shape {
            channels: 3,
            height: 2,
            width: 2,
        },
        bytes,
    );
    Flip {
        p: 1.0,
        vertical: false,
    }
    .apply(&mut img, &Params::Flag(true))
    .expect("flip");
    assert_eq!(img.to_u8_hwc(), vec![4, 5, 6, 1, 2, 3, 10, 11, 12, 7, 8, 9]);
}

#[test]
fn grayscale_uses_itu_601_weights() {
    let mut img = rgb(1, 2, |c, _, x| [[0.2, 0.6, 1.0], [1.0, 0.0, 0.0]][x][c]);
    RandomGrayscale { p: 1.0 }
        .apply(&mut img, &Params::Flag(true))
        .expect("gray");
    let out = img.to_f32();
    let expected = [0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 1.0, 0.299];
    for c in 0..3 {
        for x in 0..2 {
            assert!(
                (out[c * 2 + x] - expected[x]).abs() < 1e-6,
                "channel {c} pixel {x}: {}",
                out[c * 2 + x]
            );
        }
    }
}

#[test]
fn brightness_contrast_saturation_match_hand_computed_values() {
    let img = rgb(1, 2, |c, _, x| [[0.2, 0.4, 0.6], [0.8, 0.5, 0.1]][x][c]);
    let run = |order: [u8; 4], b, c, s| {
        let mut out = img.clone();
        let jitter = ColorJitter {
            ranges: [Some((0.0, 2.0)); 4],
        };
        jitter
            .apply(
                &mut out,
                &Params::Jitter {
                    order,
                    brightness: b,
                    contrast: c,
                    saturation: s,
                    hue: None,
                },
            )
            .expect("jitter");
        out.to_f32()
    };
    // Brightness 1.5: x * 1.5, clamped.
    let out = run([0, 1, 2, 3], Some(1.5), None, None);
    assert!(
        max_diff(&out, &[0.3, 1.0, 0.6, 0.75, 0.9, 0.15]) < 1e-6,
        "{out:?}"
    );
    // Contrast 0.5 around the mean gray level.
    let gray = [
        0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6,
        0.299 * 0.8 + 0.587 * 0.5 + 0.114 * 0.1,
    ];
    let mean = (gray[0] + gray[1]) / 2.0;
    let out = run([1, 0, 2, 3], None, Some(0.5), None);
    let expected: Vec<f32> = img.to_f32().iter().map(|x| 0.5 * x + 0.5 * mean).collect();
    assert!(max_diff(&out, &expected) < 1e-6);
    // Saturation 0 gives the gray image in every channel.
    let out = run([2, 0, 1, 3], None, None, Some(0.0));
    assert!(
        max_diff(
            &out,
            &[gray[0], gray[1], gray[0], gray[1], gray[0], gray[1]]
        ) < 1e-6
    );
}

#[test]
fn blur_of_a_constant_image_is_constant_and_blur_smooths() {
    let blur = GaussianBlur {
        kernel_size: Some(9),
        kernel_fraction: None,
        sigma: (0.1, 2.0),
    };
    let mut flat = rgb(12, 15, |_, _, _| 0.42);
    blur.apply(&mut flat, &Params::Sigma(1.7)).expect("blur");
    assert!(flat.to_f32().iter().all(|&v| (v - 0.42).abs() < 1e-6));
    // A single bright pixel spreads out but keeps its mass (reflect padding, far from edges).
    let mut dot = rgb(15, 15, |_, y, x| if (y, x) == (7, 7) { 1.0 } else { 0.0 });
    blur.apply(&mut dot, &Params::Sigma(1.0)).expect("blur");
    let plane = &dot.to_f32()[..225];
    let sum: f32 = plane.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    assert!(plane[7 * 15 + 7] < 0.2 && plane[7 * 15 + 8] > 0.05);
}

#[test]
fn crop_boxes_stay_inside_with_area_and_aspect_in_range() {
    let crop = RandomResizedCrop {
        size: (32, 32),
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
        interpolation: Interpolation::Bilinear,
    };
    let (h, w) = (375usize, 500usize);
    let mut rng = Rng::from_key(&[11]);
    let mut areas = Vec::new();
    for _ in 0..10_000 {
        let [left, top, cw, ch] = crop.crop_box(h, w, &mut rng);
        assert!(
            cw >= 1 && ch >= 1 && (left + cw) as usize <= w && (top + ch) as usize <= h,
            "{left} {top} {cw} {ch}"
        );
        let area = f64::from(cw * ch) / (h * w) as f64;
        let aspect = f64::from(cw) / f64::from(ch);
        // Rounding the sides to whole pixels moves area and aspect slightly.
        assert!((0.08 * 0.97..=1.0).contains(&area), "area {area}");
        assert!(
            (0.75 * 0.97..=4.0 / 3.0 * 1.03).contains(&aspect),
            "aspect {aspect}"
        );
        areas.push(area);
    }
    let mean = areas.iter().sum::<f64>() / areas.len() as f64;
    assert!(
        mean > 0.35 && mean < 0.6,
        "areas spread over the range, mean {mean}"
    );
}

#[test]
fn sampled_parameters_follow_their_declared_ranges() {
    let shape = Shape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let mut rng = Rng::from_key(&[5]);
    let jitter = ColorJitter {
        ranges: [Some((0.6, 1.4)), Some((0.2, 1.8)), None, Some((-0.1, 0.1))],
    };
    let mut orders = std::collections::BTreeSet::new();
    for _ in 0..5_000 {
        let Params::Jitter {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        } = jitter.sample(shape, &mut rng)
        else {
            panic!("jitter")
        };
        assert!((0.6..1.4).contains(&brightness.expect("on")));
        assert!((0.2..1.8).contains(&contrast.expect("on")));
        assert!(saturation.is_none());
        assert!((-0.1..0.1).contains(&hue.expect("on")));
        let mut sorted = order;
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3]);
        orders.insert(order);
    }
    assert_eq!(
        orders.len(),
        24,
        "every order of the four adjustments occurs"
    );
    let blur = GaussianBlur {
        kernel_size: None,
        kernel_fraction: Some(0.1),
        sigma: (0.1, 2.0),
    };
    let flip = Flip {
        p: 0.3,
        vertical: false,
    };
    let mut flips = 0;
    for _ in 0..10_000 {
        let Params::Sigma(s) = blur.sample(shape, &mut rng) else {
            panic!("sigma")
        };
        assert!((0.1..2.0).contains(&s));
        if flip.sample(shape, &mut rng) == Params::Flag(true) {
            flips += 1;
        }
    }
    assert!(
        (2_800..3_200).contains(&flips),
        "{flips} flips of 10000 at p 0.3"
    );
}

#[test]
fn a_logged_policy_replays_exactly() {
    let text = "
- random_resized_crop: { size: 24 }
- horizontal_flip
- random_apply: { p: 0.8, transforms: [{ color_jitter: { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 } }] }
- random_grayscale: { p: 0.2 }
- gaussian_blur: { kernel_size: 5 }
- solarize: { p: 0.3 }
- equalize: { p: 0.3 }
- normalize: { mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2] }
";
    let root = simclr_config::yaml::parse(text).expect("yaml");
    let policy = Policy::parse(&root, "t").expect("policy");
    for key in 0..20 {
        let mut a = pattern();
        let log = policy
            .run(&mut a, &mut Rng::from_key(&[key]))
            .expect("runs");
        let json = serde_json::to_string(&log).expect("log serialises");
        let back: Vec<Params> = serde_json::from_str(&json).expect("log parses");
        let mut b = pattern();
        policy.replay(&mut b, &back).expect("replays");
        assert_eq!(a, b, "draw {key}");
        assert_eq!(
            a.shape,
            Shape {
                channels: 3,
                height: 24,
                width: 24
            }
        );
    }
}
