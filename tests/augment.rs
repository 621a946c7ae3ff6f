//! Transform correctness against independently computed values (issue #3).

use std::path::Path;

use simclr::augment::ops::{
    ColorJitter, Equalize, Flip, GaussianBlur, Normalize, RandomGrayscale, RandomResizedCrop,
    Solarize, adjust_hue, equalize_plane,
};
use simclr::augment::resample::Interpolation;
use simclr::augment::{Img, Params, Policy, Shape, Transform};
use simclr::config::graph::LoadOptions;
use simclr::core::rng::Rng;

fn rgb(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Img {
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

fn pattern() -> Img {
    rgb(17, 23, |c, y, x| {
        ((x * 7 + y * 13 + c * 29) % 256) as f32 / 255.0
    })
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

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
    let root = simclr::config::yaml::parse(text).expect("yaml");
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

#[test]
fn bad_policies_are_located_errors() {
    let registry = simclr::registry::user();
    let text = "\
name: x
stages:
  images: { kind: synthetic }
  views:
    kind: views
    inputs: [images]
    params:
      t:
        - random_resized_crop: { size: 32, scale: [0.5, 0.2] }
      t_prime:
        - colour_jitter: { brightness: 0.4 }
  drain: { kind: sink, inputs: [views] }
";
    let Err(d) = simclr::config::load_str(
        Path::new("p.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    ) else {
        panic!("invalid")
    };
    let summary = d.summary();
    assert_eq!(summary.len(), 1, "{d}");
    assert_eq!((summary[0].0, summary[0].1), (9, 51), "{d}");
    assert!(
        summary[0]
            .2
            .contains("`scale` must satisfy 0 < min <= max <= 1, found [0.5, 0.2]"),
        "{d}"
    );
    let text = text.replace("scale: [0.5, 0.2]", "scale: [0.2, 0.5]");
    let Err(d) = simclr::config::load_str(
        Path::new("p.yaml"),
        &text,
        &registry,
        &LoadOptions::default(),
    ) else {
        panic!("invalid")
    };
    assert_eq!(d.summary()[0].0, 11, "{d}");
    assert!(
        d.summary()[0]
            .2
            .contains("unknown transform `colour_jitter`"),
        "{d}"
    );
    assert!(
        d.to_string().contains("color_jitter"),
        "the help lists the transforms: {d}"
    );
}

#[derive(Debug)]
struct Fill(f32);

impl Transform for Fill {
    fn name(&self) -> &str {
        "test_fill"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Values(vec![self.0 + rng.uniform(0.0, 0.0) as f32])
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), simclr::augment::TransformError> {
        let Params::Values(v) = params else {
            return Err(simclr::augment::TransformError("values".into()));
        };
        img.f32_mut().fill(v[0]);
        Ok(())
    }
}

fn build_fill(
    node: &simclr::core::Value,
    path: &str,
    _transforms: &simclr::augment::Transforms,
) -> Result<Box<dyn Transform>, simclr::core::ParamError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        value: f32,
    }
    let c: C = simclr::augment::transform::parse_config(node, path)?;
    Ok(Box::new(Fill(c.value)))
}

#[test]
fn a_registered_custom_transform_is_usable_by_name() {
    use simclr::augment::transform::TransformKind;
    let mut transforms = simclr::augment::Transforms::default();
    transforms
        .add(TransformKind {
            name: "test_fill",
            summary: "fill",
            build: build_fill,
        })
        .expect("registers");
    assert!(
        transforms
            .add(TransformKind {
                name: "resize",
                summary: "x",
                build: build_fill
            })
            .is_err(),
        "built-in names are taken"
    );
    let root = simclr::config::yaml::parse(
        "[{ resize: { size: [4, 5] } }, { test_fill: { value: 0.25 } }]",
    )
    .expect("yaml");
    let policy = Policy::parse_with(&root, "t", &transforms).expect("policy");
    let mut img = pattern();
    policy
        .run(&mut img, &mut Rng::from_key(&[1]))
        .expect("runs");
    assert_eq!(
        img.shape,
        Shape {
            channels: 3,
            height: 4,
            width: 5
        }
    );
    assert!(img.to_f32().iter().all(|&v| v == 0.25));
    let bad = simclr::config::yaml::parse("[{ test_fill: { valeu: 1 } }]").expect("yaml");
    let err = Policy::parse_with(&bad, "t", &transforms).expect_err("unknown key");
    assert!(
        err.message.contains("unknown field `valeu`"),
        "{}",
        err.message
    );
}

#[test]
fn simd_and_baseline_paths_give_bit_identical_views() {
    let text = "
- random_resized_crop: { size: 40 }
- random_apply: { p: 1.0, transforms: [{ color_jitter: { brightness: 0.8, contrast: 0.8, saturation: 0.8, hue: 0.2 } }] }
- gaussian_blur: { kernel_size: 9 }
";
    let root = simclr::config::yaml::parse(text).expect("yaml");
    let policy = Policy::parse(&root, "t").expect("policy");
    let big = rgb(61, 77, |c, y, x| {
        ((x * 5 + y * 11 + c * 17) % 97) as f32 / 96.0
    });
    let run = |key: u64| {
        let mut img = big.clone();
        policy
            .run(&mut img, &mut Rng::from_key(&[key]))
            .expect("runs");
        img.to_f32()
    };
    for key in 0..10 {
        simclr::augment::simd::set_enabled(true);
        let fast = run(key);
        simclr::augment::simd::set_enabled(false);
        let plain = run(key);
        simclr::augment::simd::set_enabled(true);
        let (fast_bits, plain_bits): (Vec<u32>, Vec<u32>) = (
            fast.iter().map(|x| x.to_bits()).collect(),
            plain.iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(fast_bits, plain_bits, "draw {key}");
    }
}

/// A transform added to one registry is known to definitions loaded with it, and to no
/// other: there is no process-wide table.
#[test]
fn a_transform_belongs_to_the_registry_it_was_added_to() {
    use simclr::augment::transform::TransformKind;
    let definition = "\
name: fill
stages:
  images: { kind: synthetic, params: { count: 8, size: 16 } }
  views: { kind: views, inputs: [images], params: { size: 16, t: [{ random_resized_crop: { size: 12 } }, { test_fill2: { value: 0.5 } }] } }
  drain: { kind: sink, inputs: [views] }
";
    let load = |registry: &simclr::config::Registry| {
        simclr::config::load_str(
            std::path::Path::new("fill.yaml"),
            definition,
            registry,
            &Default::default(),
        )
    };
    let mut with = simclr::registry::user();
    simclr::registry::add_transform(
        &mut with,
        TransformKind {
            name: "test_fill2",
            summary: "fill",
            build: build_fill,
        },
    )
    .expect("added");
    let graph = load(&with).expect("known to its registry");
    let views = graph.nodes.iter().find(|n| n.id == "views").expect("views");
    assert_eq!(
        views.facts.preprocessing.as_ref().and_then(|p| p.size),
        Some((12, 12))
    );
    let err = load(&simclr::registry::user()).expect_err("unknown elsewhere");
    assert!(
        err.to_string().contains("unknown transform `test_fill2`"),
        "{err}"
    );
    assert!(
        simclr::registry::add_transform(
            &mut with,
            TransformKind {
                name: "test_fill2",
                summary: "again",
                build: build_fill,
            },
        )
        .is_err(),
        "a name is added once"
    );
}
