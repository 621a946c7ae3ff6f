//! Our transforms against torchvision's, on the same parameters.
//!
//! `random_rotation`: values printed by `python tests/reference/rotation_reference.py`
//! (torch 2.15.0+cu132, torchvision 0.29.2+cu132): `torchvision.transforms.functional.rotate` of a 3×5×7 float image, nearest and
//! bilinear, with fills.
//!
//! `random_erasing` and `gaussian_noise` draw from our generator, not torch's, so their
//! parameters are checked by distribution: the erased box's area and aspect ratio against
//! torchvision's sampler written out, and the noise's mean and spread.

use simclr_core::rng::Rng;
use simclr_stage_augment::ops::{
    EraseValue, GaussianNoise, RandomErasing, RandomRotation, RotateInterpolation,
};
use simclr_stage_augment::transform::{Params, Transform};
use simclr_stage_augment::{Img, Shape};

const C: usize = 3;
const H: usize = 5;
const W: usize = 7;

/// The reference script's image.
fn image() -> Img {
    let mut v = Vec::with_capacity(C * H * W);
    for c in 0..C {
        for y in 0..H {
            for x in 0..W {
                let (c, y, x) = (c as f64, y as f64, x as f64);
                v.push((0.5 + 0.5 * (1.7 * c + 0.9 * y + 0.37 * x * (y + 1.0)).sin()) as f32);
            }
        }
    }
    Img::from_f32(
        Shape {
            channels: C,
            height: H,
            width: W,
        },
        v,
    )
}

/// (interpolation, degrees, fill, torchvision's output).
#[allow(clippy::type_complexity)]
const TORCHVISION: &[(RotateInterpolation, f32, &[f32], &[f32])] = &[
    (
        RotateInterpolation::Nearest,
        30.0,
        &[0.0],
        &[
            0.0,
            0.0,
            0.9478493,
            0.9979404,
            0.003154498,
            0.09528367,
            0.0,
            0.6808077,
            0.837144,
            0.5107955,
            0.1709068,
            0.4784141,
            0.9378334,
            0.08298547,
            0.5,
            0.9988032,
            0.1151384,
            0.04296977,
            0.4784141,
            0.1874647,
            0.9228734,
            0.8916634,
            0.614764,
            0.1151384,
            0.2081877,
            0.8778803,
            4.896724e-06,
            0.6399209,
            0.0,
            0.7136899,
            0.06920155,
            0.9252183,
            0.6356666,
            0.0,
            0.0,
            0.0,
            0.0,
            0.6627747,
            0.480801,
            0.5084069,
            0.8433046,
            0.0,
            0.938982,
            0.8227175,
            0.00289224,
            0.169112,
            0.9981514,
            0.6830329,
            0.827291,
            0.9958324,
            0.4014459,
            0.2330589,
            0.7599845,
            0.9981514,
            0.1532375,
            0.1809467,
            0.7577507,
            0.002618587,
            0.2330589,
            0.940226,
            0.7760071,
            0.566616,
            0.9579939,
            0.0,
            0.02419896,
            0.3038249,
            0.7060592,
            0.005288619,
            0.0,
            0.0,
            0.0,
            0.0,
            0.01020542,
            0.007006936,
            0.9946792,
            0.8162505,
            0.0,
            0.2060715,
            0.0796953,
            0.6173037,
            0.9143595,
            0.3932178,
            0.01500107,
            0.8326753,
            0.3722295,
            0.02659311,
            0.9536493,
            0.8900351,
            0.3932178,
            0.9018922,
            0.1593431,
            0.04191703,
            0.5134057,
            0.9536493,
            0.678371,
            0.05099575,
            0.9828289,
            0.2420591,
            0.0,
            0.4089187,
            0.9813506,
            0.02168249,
            0.4918151,
            0.0,
            0.0,
        ],
    ),
    (
        RotateInterpolation::Nearest,
        -47.5,
        &[0.2, 0.5, 0.8],
        &[
            0.2,
            0.9869238,
            0.9988032,
            0.8450375,
            0.837144,
            0.2,
            0.2,
            0.2787398,
            0.06920155,
            0.1151384,
            0.8450375,
            0.5107955,
            0.9979404,
            0.2,
            0.1299613,
            0.2081877,
            0.2081877,
            0.04296977,
            0.1709068,
            0.1709068,
            0.9806376,
            0.2,
            0.9252183,
            0.8778803,
            0.8603384,
            0.4784141,
            0.003154498,
            0.8982827,
            0.2,
            0.2,
            4.896724e-06,
            0.8603384,
            0.1874647,
            0.9109612,
            0.2,
            0.5,
            0.3246084,
            0.4014459,
            0.09669112,
            0.8227175,
            0.5,
            0.5,
            0.08386628,
            0.3038249,
            0.2330589,
            0.09669112,
            0.00289224,
            0.480801,
            0.5,
            0.8811355,
            0.940226,
            0.940226,
            0.7599845,
            0.169112,
            0.169112,
            0.3014259,
            0.5,
            0.7060592,
            0.7760071,
            0.109826,
            0.9981514,
            0.5084069,
            0.1489269,
            0.5,
            0.5,
            0.566616,
            0.109826,
            0.1532375,
            0.1646241,
            0.5,
            0.8,
            0.05827267,
            0.02659311,
            0.2588908,
            0.0796953,
            0.8,
            0.8,
            0.8284933,
            0.9813506,
            0.9536493,
            0.2588908,
            0.6173037,
            0.007006936,
            0.8,
            0.7718242,
            0.678371,
            0.678371,
            0.8900351,
            0.9143595,
            0.9143595,
            0.07053275,
            0.8,
            0.02168249,
            0.05099575,
            0.2402052,
            0.3932178,
            0.9946792,
            0.1921849,
            0.8,
            0.8,
            0.9828289,
            0.2402052,
            0.9018922,
            0.1754615,
            0.8,
        ],
    ),
    (
        RotateInterpolation::Bilinear,
        30.0,
        &[0.25],
        &[
            0.25, 0.2452467, 0.6209608, 0.7763374, 0.2477774, 0.2977017, 0.2661016, 0.3580118,
            0.8115643, 0.7334977, 0.3301117, 0.4499927, 0.8286545, 0.3385542, 0.7536982, 0.9576018,
            0.4528636, 0.04296977, 0.6413821, 0.3677606, 0.4670631, 0.7782212, 0.7376746,
            0.2465148, 0.4808725, 0.6999909, 0.2229476, 0.3598596, 0.2987069, 0.6337649, 0.1223242,
            0.7330906, 0.4557722, 0.1952418, 0.25, 0.25, 0.2390042, 0.4345035, 0.3972842,
            0.4310449, 0.6329818, 0.201554, 0.4711465, 0.7582875, 0.2876203, 0.1922528, 0.6670353,
            0.5288289, 0.5001837, 0.7937631, 0.3197871, 0.193889, 0.7599845, 0.5826602, 0.1416054,
            0.5248166, 0.5119561, 0.1318361, 0.3531645, 0.8096721, 0.4145204, 0.5854195, 0.4459163,
            0.190696, 0.1364249, 0.4978238, 0.768804, 0.1165002, 0.2128951, 0.25, 0.25, 0.1873977,
            0.06377859, 0.2501313, 0.7699916, 0.6680304, 0.2018843, 0.1808812, 0.1218778,
            0.3212302, 0.7491913, 0.5069642, 0.1639165, 0.5061874, 0.1706023, 0.08883712,
            0.6260178, 0.8900351, 0.3373173, 0.7245938, 0.5265419, 0.06348702, 0.3571972,
            0.7913232, 0.4393285, 0.3220363, 0.7550408, 0.185535, 0.172077, 0.4599244, 0.8782365,
            0.1976416, 0.310913, 0.2441307, 0.25,
        ],
    ),
    (
        RotateInterpolation::Bilinear,
        101.0,
        &[0.0],
        &[
            0.1786308,
            0.5684672,
            0.3838778,
            0.6504754,
            0.39642,
            0.1597467,
            0.0,
            0.05977594,
            0.7910242,
            0.2289275,
            0.5448763,
            0.737951,
            0.1819534,
            0.0,
            0.002966712,
            0.9454366,
            0.4400644,
            0.04296977,
            0.7373578,
            0.7416137,
            0.002434698,
            0.0,
            0.6307556,
            0.7898085,
            0.252165,
            0.1877923,
            0.5274277,
            0.0293089,
            0.0,
            0.3202689,
            0.8739352,
            0.7478112,
            0.3699316,
            0.2273733,
            0.03999006,
            0.04191193,
            0.4057491,
            0.5772671,
            0.4874052,
            0.4069208,
            0.3408882,
            0.0,
            0.02306825,
            0.3875899,
            0.3774336,
            0.8274454,
            0.2836692,
            0.2448028,
            0.0,
            0.001697071,
            0.5739651,
            0.0487707,
            0.7599845,
            0.8046242,
            0.293512,
            0.001234732,
            0.0,
            0.5429624,
            0.1998775,
            0.2145438,
            0.6972041,
            0.7558654,
            0.04856933,
            0.0,
            0.3821275,
            0.5429353,
            0.155781,
            0.177339,
            0.4393403,
            0.0866054,
            0.02588313,
            0.4558202,
            0.5962113,
            0.3527701,
            0.6275655,
            0.2369013,
            0.0,
            0.002552492,
            0.2379427,
            0.8026565,
            0.3707446,
            0.317795,
            0.5627749,
            0.0,
            2.544209e-05,
            0.03550344,
            0.6762125,
            0.8900351,
            0.1841439,
            0.3115959,
            0.0006765586,
            0.0,
            0.03714009,
            0.2875298,
            0.8213938,
            0.7613904,
            0.4066387,
            0.02644812,
            0.0,
            0.06575236,
            0.1150009,
            0.3408903,
            0.7132146,
            0.7882581,
            0.1530067,
        ],
    ),
];

#[test]
fn rotation_matches_torchvision() {
    for &(interpolation, degrees, fill, expect) in TORCHVISION {
        let rotate = RandomRotation {
            degrees: (0.0, 0.0),
            interpolation,
            fill: fill.to_vec(),
        };
        let mut img = image();
        rotate
            .apply(&mut img, &Params::Angle(degrees))
            .expect("rotate");
        let got = img.to_f32();
        assert_eq!(got.len(), expect.len());
        let worst = got
            .iter()
            .zip(expect)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 2e-6,
            "{interpolation:?} {degrees}°: off torchvision by {worst}\nours  {got:?}\ntheirs {expect:?}"
        );
    }
}

#[test]
fn rotation_angles_are_drawn_from_the_range() {
    let rotate = RandomRotation {
        degrees: (-10.0, 30.0),
        interpolation: RotateInterpolation::Nearest,
        fill: vec![0.0],
    };
    let mut rng = Rng::from_key(&[5]);
    let shape = Shape {
        channels: 1,
        height: 4,
        width: 4,
    };
    let angles: Vec<f32> = (0..2000)
        .map(|_| match rotate.sample(shape, &mut rng) {
            Params::Angle(a) => a,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(angles.iter().all(|a| (-10.0..=30.0).contains(a)));
    let mean = angles.iter().sum::<f32>() / angles.len() as f32;
    assert!((mean - 10.0).abs() < 0.8, "mean {mean}");
}

/// torchvision's `RandomErasing.get_params` box statistics, drawn through our sampler: the
/// area fraction is uniform on `scale` (given the box fits) and log(aspect) uniform on
/// log(`ratio`); with `p` the share of images erased.
#[test]
fn erasing_boxes_follow_torchvision_sampler() {
    let erase = RandomErasing {
        p: 0.5,
        scale: (0.02, 0.33),
        ratio: (0.3, 3.3),
        value: EraseValue::Fill(vec![0.0]),
    };
    let (h, w) = (64, 64);
    let shape = Shape {
        channels: 1,
        height: h,
        width: w,
    };
    let mut rng = Rng::from_key(&[11]);
    let (mut erased, mut areas, mut log_aspects) = (0, Vec::new(), Vec::new());
    let n = 4000;
    for _ in 0..n {
        let Params::Erase {
            top,
            left,
            height,
            width,
            ..
        } = erase.sample(shape, &mut rng)
        else {
            panic!("erase parameters");
        };
        if height == 0 {
            continue;
        }
        erased += 1;
        assert!(top + height <= h as u32 && left + width <= w as u32);
        assert!((height as usize) < h && (width as usize) < w);
        areas.push(f64::from(height * width) / (h * w) as f64);
        log_aspects.push((f64::from(height) / f64::from(width)).ln());
    }
    let share = erased as f64 / n as f64;
    assert!((share - 0.5).abs() < 0.03, "erased {share}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // Uniform on [0.02, 0.33] has mean 0.175; rounding the sides moves it a little.
    assert!((mean(&areas) - 0.175).abs() < 0.01, "area {}", mean(&areas));
    assert!(
        mean(&log_aspects).abs() < 0.05,
        "log aspect {}",
        mean(&log_aspects)
    );
    // The box is written with the value, and only the box.
    let mut img = Img::from_f32(
        Shape {
            channels: 3,
            height: 6,
            width: 8,
        },
        vec![1.0; 144],
    );
    let box_fill = RandomErasing {
        value: EraseValue::Fill(vec![0.1, 0.2, 0.3]),
        ..erase
    };
    box_fill
        .apply(
            &mut img,
            &Params::Erase {
                top: 1,
                left: 2,
                height: 3,
                width: 4,
                seed: 0,
            },
        )
        .expect("erase");
    let px = img.to_f32();
    for c in 0..3 {
        for y in 0..6 {
            for x in 0..8 {
                let inside = (1..4).contains(&y) && (2..6).contains(&x);
                let want = if inside { [0.1, 0.2, 0.3][c] } else { 1.0 };
                assert_eq!(px[(c * 6 + y) * 8 + x], want, "c{c} y{y} x{x}");
            }
        }
    }
}

#[test]
fn gaussian_noise_has_the_mean_and_sigma_and_is_clipped() {
    let noise = GaussianNoise {
        mean: 0.05,
        sigma: 0.1,
        clip: false,
    };
    let shape = Shape {
        channels: 1,
        height: 100,
        width: 100,
    };
    let mut img = Img::from_f32(shape, vec![0.5; 10_000]);
    let p = noise.sample(shape, &mut Rng::from_key(&[3]));
    noise.apply(&mut img, &p).expect("noise");
    let d: Vec<f64> = img.to_f32().iter().map(|&v| f64::from(v) - 0.5).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!(
        (mean - 0.05).abs() < 0.005 && (sd - 0.1).abs() < 0.005,
        "mean {mean}, sd {sd}"
    );
    // The same parameters replay the same noise; clip keeps [0, 1].
    let mut again = Img::from_f32(shape, vec![0.5; 10_000]);
    noise.apply(&mut again, &p).expect("noise");
    assert_eq!(again.to_f32(), img.to_f32());
    let clipped = GaussianNoise {
        mean: 0.0,
        sigma: 2.0,
        clip: true,
    };
    let mut img = Img::from_f32(shape, vec![0.5; 10_000]);
    clipped.apply(&mut img, &p).expect("noise");
    assert!(img.to_f32().iter().all(|v| (0.0..=1.0).contains(v)));
}
