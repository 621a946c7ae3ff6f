//! The model-side building blocks against independent computations (issue #4).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use simclr_stage_model::loss::nt_xent;
use simclr_stage_model::optim::{DEFAULT_TRUST, Lars, Optimizer, Param, Sgd};

/// Values printed by `python tests/reference/nt_xent_reference.py` (float64 NumPy: the loss
/// written out from the paper's eq. (1) with loops, gradient by central finite differences).
const REFERENCE_LOSS: f64 = 1.266793373171307;
const REFERENCE_GRAD: [f64; 24] = [
    -0.21321436682875117,
    -0.15294786359643098,
    -0.021233598657133257,
    0.11949514278075668,
    0.10516850357245033,
    -0.01580090158714853,
    -0.12443002284090454,
    -0.16472001407308312,
    0.35758993022216856,
    0.4222224807559627,
    0.28375803795555044,
    0.002799429466016079,
    -0.2624510635484967,
    0.014873321796393668,
    0.27727338980376715,
    0.39340912605378975,
    -0.12241293434467337,
    -0.19693300046252915,
    -0.1749940577999709,
    -0.06307599220711779,
    0.22585232473115724,
    0.14200956055532288,
    -0.009574911308263268,
    -0.15856093704691432,
];

fn reference_z() -> Vec<f64> {
    (0..6)
        .flat_map(|i| (0..4).map(move |j| (1.3 * i as f64 + 0.7 * j as f64).sin() + 0.1 * j as f64))
        .collect()
}

#[test]
fn nt_xent_matches_the_numpy_reference() {
    let z = Var::from_vec(reference_z(), (6, 4), &Device::Cpu).expect("z");
    let loss = nt_xent(z.as_tensor(), 0.5).expect("loss");
    let value = loss.to_scalar::<f64>().expect("scalar");
    assert!((value - REFERENCE_LOSS).abs() < 1e-12, "{value}");
    let grads = loss.backward().expect("backward");
    let g: Vec<f64> = grads
        .get(z.as_tensor())
        .expect("grad")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    for (i, (got, want)) in g.iter().zip(REFERENCE_GRAD).enumerate() {
        assert!((got - want).abs() < 1e-8, "grad[{i}]: {got} vs {want}");
    }
    // f32 agrees to float precision.
    let z32 = Tensor::from_vec(reference_z(), (6, 4), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .expect("z32");
    let v32 = nt_xent(&z32, 0.5)
        .and_then(|l| l.to_scalar::<f32>())
        .expect("f32 loss");
    assert!((f64::from(v32) - REFERENCE_LOSS).abs() < 1e-5);
}

#[test]
fn aligned_pairs_with_orthogonal_negatives_give_the_analytic_value() {
    // N samples, both views of sample k equal to e_k: s(i, partner) = 1, s(i, other) = 0.
    // l = -log(e^{1/τ} / (e^{1/τ} + (2N - 2)·e^0)) for every view.
    let (n, tau) = (4usize, 0.2f64);
    let mut rows = vec![0f64; 2 * n * n];
    for k in 0..n {
        rows[(2 * k) * n + k] = 1.0;
        rows[(2 * k + 1) * n + k] = 3.0; // Scale does not matter: cosine similarity.
    }
    let z = Tensor::from_vec(rows, (2 * n, n), &Device::Cpu).expect("z");
    let value = nt_xent(&z, tau)
        .and_then(|l| l.to_scalar::<f64>())
        .expect("loss");
    let e = (1.0 / tau).exp();
    let expected = -(e / (e + (2 * n - 2) as f64)).ln();
    assert!((value - expected).abs() < 1e-12, "{value} vs {expected}");
    // Perfectly correlated views of one vector everywhere: ln(2N - 1).
    let same = Tensor::ones((2 * n, n), DType::F64, &Device::Cpu).expect("ones");
    let value = nt_xent(&same, tau)
        .and_then(|l| l.to_scalar::<f64>())
        .expect("loss");
    assert!((value - ((2 * n - 1) as f64).ln()).abs() < 1e-12);
}

#[test]
fn nt_xent_rejects_bad_shapes() {
    let odd = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).expect("t");
    assert!(
        nt_xent(&odd, 0.5)
            .expect_err("odd")
            .to_string()
            .contains("even")
    );
    let z = Tensor::ones((2, 4), DType::F32, &Device::Cpu).expect("t");
    assert!(nt_xent(&z, 0.0).is_err());
}

fn grads_for(pairs: &[(&Var, Vec<f64>)]) -> GradStore {
    // Build a loss whose gradient w.r.t. each var is the given vector: sum(var * g).
    let mut loss: Option<Tensor> = None;
    for (var, g) in pairs {
        let g = Tensor::from_vec(g.clone(), var.shape(), &Device::Cpu).expect("g");
        let term = (var.as_tensor() * g)
            .and_then(|t| t.sum_all())
            .expect("term");
        loss = Some(match loss {
            Some(l) => (l + term).expect("sum"),
            None => term,
        });
    }
    loss.expect("one var").backward().expect("backward")
}

fn values(v: &Var) -> Vec<f64> {
    v.as_tensor()
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("values")
}

#[test]
fn lars_step_matches_a_hand_computation_with_exclusions() {
    let w = Var::from_vec(vec![3.0f64, 4.0], (1, 2), &Device::Cpu).expect("w");
    let b = Var::from_vec(vec![1.0f64], 1, &Device::Cpu).expect("b");
    let params = vec![
        Param::new("fc.weight", w.clone()),
        Param::new("fc.bias", b.clone()),
    ];
    assert!(params[0].adapt && !params[1].adapt);
    let mut lars = Lars::new(params, 0.9, DEFAULT_TRUST, 0.1, false);
    // Step 1, lr 1: weight g' = [0.6, 0.8] + 0.1·[3, 4] = [0.9, 1.2], ‖w‖ = 5, ‖g'‖ = 1.5,
    // trust = 0.001·5/1.5; v = trust·g' = [0.003, 0.004]; w = [2.997, 3.996].
    // Bias: no decay, trust 1: v = 0.5, b = 0.5.
    lars.step(&grads_for(&[(&w, vec![0.6, 0.8]), (&b, vec![0.5])]), 1.0)
        .expect("step");
    let (w1, b1) = (values(&w), values(&b));
    assert!(
        (w1[0] - 2.997).abs() < 1e-12 && (w1[1] - 3.996).abs() < 1e-12,
        "{w1:?}"
    );
    assert!((b1[0] - 0.5).abs() < 1e-12, "{b1:?}");
    // Step 2, same gradients, lr 1: bias v = 0.9·0.5 + 0.5 = 0.95, b = 0.5 - 0.95 = -0.45.
    // Weight: g' = [0.6 + 0.2997, 0.8 + 0.3996] = [0.8997, 1.1996], ‖g'‖ = 1.49955,
    // ‖w‖ = 4.995, trust = 0.001·4.995/1.49955; v = 0.9·[0.003, 0.004] + trust·g'.
    lars.step(&grads_for(&[(&w, vec![0.6, 0.8]), (&b, vec![0.5])]), 1.0)
        .expect("step");
    let trust = 0.001 * (2.997f64.hypot(3.996)) / (0.8997f64.hypot(1.1996));
    let expected = [
        2.997 - (0.0027 + trust * 0.8997),
        3.996 - (0.0036 + trust * 1.1996),
    ];
    let (w2, b2) = (values(&w), values(&b));
    assert!(
        (w2[0] - expected[0]).abs() < 1e-12 && (w2[1] - expected[1]).abs() < 1e-12,
        "{w2:?} vs {expected:?}"
    );
    assert!((b2[0] + 0.45).abs() < 1e-12, "{b2:?}");
}

#[test]
fn sgd_with_momentum_and_decay_matches_pytorch_semantics() {
    let w = Var::from_vec(vec![1.0f64, -2.0], (1, 2), &Device::Cpu).expect("w");
    let mut sgd = Sgd::new(vec![Param::new("conv.weight", w.clone())], 0.9, false, 0.01);
    // PyTorch: d = g + λw; v = μv + d (v = d at the first step); w -= lr·v.
    sgd.step(&grads_for(&[(&w, vec![0.5, 0.5])]), 0.1)
        .expect("step");
    let d1 = [0.5 + 0.01, 0.5 - 0.02];
    let w1 = [1.0 - 0.1 * d1[0], -2.0 - 0.1 * d1[1]];
    let got = values(&w);
    assert!(
        (got[0] - w1[0]).abs() < 1e-12 && (got[1] - w1[1]).abs() < 1e-12,
        "{got:?}"
    );
    sgd.step(&grads_for(&[(&w, vec![0.5, 0.5])]), 0.1)
        .expect("step");
    let d2 = [0.5 + 0.01 * w1[0], 0.5 + 0.01 * w1[1]];
    let v2 = [0.9 * d1[0] + d2[0], 0.9 * d1[1] + d2[1]];
    let got = values(&w);
    assert!(
        (got[0] - (w1[0] - 0.1 * v2[0])).abs() < 1e-12
            && (got[1] - (w1[1] - 0.1 * v2[1])).abs() < 1e-12,
        "{got:?}"
    );
}

mod encoder {
    use candle_core::{DType, Device, ModuleT, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use simclr_stage_model::resnet::{ResNet, ResNetConfig, Stem};

    fn build(depth: usize, width: usize, zero: bool) -> (VarMap, ResNet) {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let config = ResNetConfig {
            depth,
            width,
            stem: Stem::Cifar,
            in_channels: 3,
            zero_init_residual: zero,
        };
        let net = ResNet::new(vb, config).expect("builds");
        (map, net)
    }

    fn input() -> Tensor {
        let v: Vec<f32> = (0..4 * 3 * 8 * 8)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (4, 3, 8, 8), &Device::Cpu).expect("input")
    }

    fn get(map: &VarMap, name: &str) -> Vec<f32> {
        let data = map.data().lock().expect("varmap");
        data.get(name)
            .unwrap_or_else(|| panic!("no `{name}`"))
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values")
    }

    #[test]
    fn resnet18_has_torchvision_names_and_shapes() {
        let (map, net) = build(18, 4, false);
        let names: Vec<String> = map.data().lock().expect("varmap").keys().cloned().collect();
        // torchvision's resnet18 state dict without `fc.*` and `num_batches_tracked`:
        // 20 convolutions + 20 BatchNorms x 4 tensors.
        assert_eq!(names.len(), 100, "{names:?}");
        for name in [
            "conv1.weight",
            "bn1.running_mean",
            "layer1.0.conv1.weight",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_var",
            "layer4.1.bn2.bias",
        ] {
            assert!(names.iter().any(|n| n == name), "missing {name}");
        }
        let h = net.forward_t(&input(), true).expect("forward");
        assert_eq!(h.dims(), &[4, 32]);
        assert_eq!(net.config().feature_dim(), 32);
        let (_, net50) = build(50, 2, false);
        assert_eq!(
            net50.forward_t(&input(), true).expect("forward").dims(),
            &[4, 2 * 8 * 4]
        );
    }

    #[test]
    fn batchnorm_statistics_update_in_training_and_are_used_in_eval() {
        let (map, net) = build(18, 4, false);
        let x = input();
        assert!(get(&map, "bn1.running_mean").iter().all(|&v| v == 0.0));
        let train_out = net.forward_t(&x, true).expect("train forward");
        let after_train = get(&map, "bn1.running_mean");
        assert!(
            after_train.iter().any(|&v| v != 0.0),
            "training updates running statistics"
        );
        assert!(
            get(&map, "layer3.1.bn2.running_var")
                .iter()
                .any(|&v| (v - 1.0).abs() > 1e-6)
        );
        let eval1 = net.forward_t(&x, false).expect("eval");
        let eval2 = net.forward_t(&x, false).expect("eval");
        assert_eq!(
            get(&map, "bn1.running_mean"),
            after_train,
            "eval leaves statistics alone"
        );
        let (e1, e2, t): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            eval1.flatten_all().and_then(|t| t.to_vec1()).expect("v"),
            eval2.flatten_all().and_then(|t| t.to_vec1()).expect("v"),
            train_out
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("v"),
        );
        assert_eq!(e1, e2, "eval is deterministic");
        assert_ne!(
            e1, t,
            "eval normalises with running statistics, not the batch's"
        );
    }

    #[test]
    fn zero_init_residual_zeroes_each_blocks_last_batchnorm() {
        let (map, _) = build(18, 4, true);
        assert!(get(&map, "layer1.0.bn2.weight").iter().all(|&v| v == 0.0));
        assert!(get(&map, "layer1.0.bn1.weight").iter().all(|&v| v == 1.0));
        let (map50, _) = build(50, 2, true);
        assert!(get(&map50, "layer2.1.bn3.weight").iter().all(|&v| v == 0.0));
    }

    #[test]
    fn unsupported_depth_is_an_error() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let config = ResNetConfig {
            depth: 20,
            width: 4,
            stem: Stem::Cifar,
            in_channels: 3,
            zero_init_residual: false,
        };
        let err = ResNet::new(vb, config).expect_err("depth 20");
        assert!(
            err.to_string().contains("depth 20 is not supported"),
            "{err}"
        );
    }
}

mod head {
    use candle_core::{DType, Device, ModuleT, Tensor};
    use candle_nn::{VarBuilder, VarMap};
    use simclr_stage_model::projector::{Projector, ProjectorKind};

    fn head(kind: ProjectorKind) -> (VarMap, Projector) {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let p = Projector::new(vb, 8, kind).expect("builds");
        (map, p)
    }

    #[test]
    fn none_linear_and_mlp_heads_have_the_declared_shapes_and_parameters() {
        let h = Tensor::ones((5, 8), DType::F32, &Device::Cpu).expect("h");
        let (map, none) = head(ProjectorKind::None);
        assert_eq!(
            none.forward_t(&h, true)
                .expect("z")
                .to_vec2::<f32>()
                .expect("v"),
            h.to_vec2::<f32>().expect("v")
        );
        assert!(map.all_vars().is_empty());
        let (map, linear) = head(ProjectorKind::Linear { out: 3 });
        assert_eq!(linear.forward_t(&h, true).expect("z").dims(), &[5, 3]);
        assert_eq!(map.all_vars().len(), 2);
        let (map, mlp) = head(ProjectorKind::Mlp {
            layers: 3,
            hidden: 16,
            out: 4,
            batch_norm: true,
        });
        let z = mlp.forward_t(&h, true).expect("z");
        assert_eq!(z.dims(), &[5, 4]);
        let mut names: Vec<String> = map.data().lock().expect("varmap").keys().cloned().collect();
        names.sort();
        // Two hidden layers without bias + BatchNorm (4 tensors each), last layer with bias.
        assert_eq!(
            names,
            vec![
                "head.0.weight",
                "head.1.weight",
                "head.2.bias",
                "head.2.weight",
                "head_bn.0.bias",
                "head_bn.0.running_mean",
                "head_bn.0.running_var",
                "head_bn.0.weight",
                "head_bn.1.bias",
                "head_bn.1.running_mean",
                "head_bn.1.running_var",
                "head_bn.1.weight",
            ]
        );
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        assert!(
            Projector::new(
                vb,
                8,
                ProjectorKind::Mlp {
                    layers: 1,
                    hidden: 4,
                    out: 2,
                    batch_norm: false
                }
            )
            .is_err()
        );
    }
}

#[test]
fn a_few_sgd_steps_lower_the_nt_xent_loss_of_encoder_and_head() {
    use candle_core::ModuleT;
    use candle_nn::{VarBuilder, VarMap};
    use simclr_stage_model::projector::{Projector, ProjectorKind};
    use simclr_stage_model::resnet::{ResNet, ResNetConfig, Stem};

    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let config = ResNetConfig {
        depth: 18,
        width: 4,
        stem: Stem::Cifar,
        in_channels: 3,
        zero_init_residual: false,
    };
    let encoder = ResNet::new(vb.pp("encoder"), config).expect("encoder");
    let head = Projector::new(
        vb.pp("projector"),
        config.feature_dim(),
        ProjectorKind::Mlp {
            layers: 2,
            hidden: 32,
            out: 16,
            batch_norm: false,
        },
    )
    .expect("head");
    // 8 samples, two views each: view 2k+1 is view 2k plus a little structured noise.
    let views: Vec<f32> = (0..16)
        .flat_map(|v| {
            let k = v / 2;
            (0..3 * 8 * 8).map(move |i| {
                (((i * (k + 3)) % 17) as f32 / 8.0 - 1.0)
                    + if v % 2 == 1 {
                        0.05 * ((i % 5) as f32 - 2.0)
                    } else {
                        0.0
                    }
            })
        })
        .collect();
    let x = Tensor::from_vec(views, (16, 3, 8, 8), &Device::Cpu).expect("x");
    let params = simclr_stage_model::optim::trainable_params(&map).expect("params");
    let mut sgd = Sgd::new(params, 0.9, false, 1e-4);
    let mut losses = Vec::new();
    for _ in 0..6 {
        let z = head
            .forward_t(&encoder.forward_t(&x, true).expect("h"), true)
            .expect("z");
        let loss = nt_xent(&z, 0.5).expect("loss");
        losses.push(loss.to_scalar::<f32>().expect("scalar"));
        sgd.step(&loss.backward().expect("backward"), 0.05)
            .expect("step");
    }
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[5] < losses[0] - 0.05, "the loss falls: {losses:?}");
}

#[test]
fn small_cnn_shapes_names_and_training_mode_batchnorm() {
    use candle_core::ModuleT;
    use candle_nn::{VarBuilder, VarMap};
    use simclr_stage_model::small_cnn::SmallCnn;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let net = SmallCnn::new(vb, 1, 4).expect("builds");
    let x = Tensor::from_vec(
        (0..2 * 28 * 28)
            .map(|i| (i % 13) as f32 / 6.0 - 1.0)
            .collect::<Vec<f32>>(),
        (2, 1, 28, 28),
        &Device::Cpu,
    )
    .expect("x");
    let h = net.forward_t(&x, true).expect("forward");
    assert_eq!(h.dims(), &[2, net.feature_dim()]);
    assert_eq!(net.feature_dim(), 32);
    let data = map.data().lock().expect("varmap");
    assert_eq!(
        data.len(),
        4 * 5,
        "4 layers: conv weight + 4 BatchNorm tensors"
    );
    let mean: Vec<f32> = data["features.0.bn.running_mean"]
        .as_tensor()
        .to_vec1()
        .expect("v");
    assert!(
        mean.iter().any(|&v| v != 0.0),
        "training mode updates running statistics"
    );
    drop(data);
    let map = VarMap::new();
    assert!(
        SmallCnn::new(
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
            3,
            0
        )
        .is_err()
    );
}

#[test]
fn adamw_matches_a_hand_computation_with_exclusions_and_resumes_exactly() {
    use simclr_stage_model::optim::AdamW;
    let new = || {
        let w = Var::from_vec(vec![1.0f64, -2.0], (1, 2), &Device::Cpu).expect("w");
        let b = Var::from_vec(vec![0.5f64], 1, &Device::Cpu).expect("b");
        let opt = AdamW::new(
            vec![
                Param::new("fc.weight", w.clone()),
                Param::new("fc.bias", b.clone()),
            ],
            (0.9, 0.999),
            1e-8,
            0.1,
        );
        (w, b, opt)
    };
    let (w, b, mut opt) = new();
    let (gw, gb) = (vec![0.5, -1.0], vec![2.0]);
    // Scalar AdamW as torch.optim.AdamW documents it, decay on the weight only.
    let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.1f64);
    let mut ew = vec![1.0f64, -2.0];
    let mut eb = 0.5f64;
    let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 2], vec![0.0; 2], 0.0f64, 0.0f64);
    for t in 1..=3 {
        opt.step(&grads_for(&[(&w, gw.clone()), (&b, gb.clone())]), lr)
            .expect("step");
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for i in 0..2 {
            ew[i] *= 1.0 - lr * wd;
            mw[i] = b1 * mw[i] + (1.0 - b1) * gw[i];
            vw[i] = b2 * vw[i] + (1.0 - b2) * gw[i] * gw[i];
            ew[i] -= lr * (mw[i] / c1) / ((vw[i] / c2).sqrt() + eps);
        }
        mb = b1 * mb + (1.0 - b1) * gb[0];
        vb = b2 * vb + (1.0 - b2) * gb[0] * gb[0];
        eb -= lr * (mb / c1) / ((vb / c2).sqrt() + eps);
        let (w_now, b_now) = (values(&w), values(&b));
        assert!(
            (w_now[0] - ew[0]).abs() < 1e-12 && (w_now[1] - ew[1]).abs() < 1e-12,
            "step {t}: {w_now:?} vs {ew:?}"
        );
        assert!(
            (b_now[0] - eb).abs() < 1e-12,
            "step {t}: bias {b_now:?} vs {eb}"
        );
    }
    // The first step moves each weight by about lr (Adam's normalised step) plus the decay.
    assert!((values(&w)[0] - 1.0).abs() > 0.25);
    // State round trip: a fresh optimizer given the saved state continues identically.
    let (w2, b2_, mut opt2) = new();
    w2.set(w.as_tensor()).expect("copy w");
    b2_.set(b.as_tensor()).expect("copy b");
    opt2.set_state(opt.state()).expect("state");
    opt.step(&grads_for(&[(&w, gw.clone()), (&b, gb.clone())]), lr)
        .expect("step");
    opt2.step(&grads_for(&[(&w2, gw.clone()), (&b2_, gb.clone())]), lr)
        .expect("step");
    assert_eq!(values(&w), values(&w2));
    assert_eq!(values(&b), values(&b2_));
    // A state for another model is refused, naming the entry.
    let mut foreign = opt.state();
    foreign.insert(
        "other.weight.exp_avg".into(),
        Tensor::zeros(2, DType::F64, &Device::Cpu).expect("t"),
    );
    let (_, _, mut opt3) = new();
    let err = opt3.set_state(foreign).expect_err("foreign state");
    assert!(err.to_string().contains("other.weight.exp_avg"), "{err}");
}

/// `max_pool_3x3_s2` (built from differentiable ops) against a direct loop, values and
/// gradients, on even and odd sizes.
#[test]
fn imagenet_stem_max_pool_matches_a_direct_loop() {
    use simclr_stage_model::resnet::max_pool_3x3_s2;
    for (h, w) in [(8, 8), (7, 7), (5, 6), (1, 3)] {
        let n = 2 * 3 * h * w;
        // Distinct values (no ties), scrambled.
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1009) as f32 / 100.0 - 5.0)
            .collect();
        let x = Var::from_vec(xs.clone(), (2, 3, h, w), &Device::Cpu).expect("x");
        let y = max_pool_3x3_s2(x.as_tensor()).expect("pool");
        let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
        assert_eq!(y.dims(), &[2, 3, ho, wo], "{h}x{w}");
        let r: Vec<f32> = (0..2 * 3 * ho * wo).map(|i| (i % 5) as f32 + 1.0).collect();
        let loss = (&y * Tensor::from_vec(r.clone(), (2, 3, ho, wo), &Device::Cpu).expect("r"))
            .and_then(|t| t.sum_all())
            .expect("loss");
        let grad: Vec<f32> = loss
            .backward()
            .expect("backward")
            .get(x.as_tensor())
            .expect("grad")
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values");
        let got: Vec<f32> = y.flatten_all().and_then(|t| t.to_vec1()).expect("values");
        let mut expected_grad = vec![0.0f32; n];
        for plane in 0..6 {
            for i in 0..ho {
                for j in 0..wo {
                    let mut best = (f32::NEG_INFINITY, 0);
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (r_, c_) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                            if r_ < 0 || c_ < 0 || r_ as usize >= h || c_ as usize >= w {
                                continue;
                            }
                            let at = plane * h * w + r_ as usize * w + c_ as usize;
                            if xs[at] > best.0 {
                                best = (xs[at], at);
                            }
                        }
                    }
                    let o = plane * ho * wo + i * wo + j;
                    assert_eq!(got[o], best.0, "{h}x{w} plane {plane} ({i},{j})");
                    expected_grad[best.1] += r[o];
                }
            }
        }
        assert_eq!(grad, expected_grad, "{h}x{w} gradient");
    }
}

/// Ties (zeros after a ReLU): the CPU kernel gives each window's gradient to its first
/// maximum in row-major order, as `nn.MaxPool2d` does.
#[test]
fn imagenet_stem_max_pool_gives_a_tie_to_the_first_maximum() {
    use simclr_stage_model::resnet::max_pool_3x3_s2;
    // One 4×4 plane: zeros, and a 1 at (3, 3).
    let mut xs = vec![0.0f32; 16];
    xs[15] = 1.0;
    let x = Var::from_vec(xs, (1, 1, 4, 4), &Device::Cpu).expect("x");
    let y = max_pool_3x3_s2(x.as_tensor()).expect("pool");
    let values: Vec<f32> = y.flatten_all().and_then(|t| t.to_vec1()).expect("y");
    assert_eq!(values, [0.0, 0.0, 0.0, 1.0]);
    let r = Tensor::new(&[[[[1.0f32, 2.0], [4.0, 8.0]]]], &Device::Cpu).expect("r");
    let grad: Vec<f32> = (&y * r)
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("backward")
        .get(x.as_tensor())
        .expect("grad")
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("values");
    // Windows: (0,0) rows 0-1 × cols 0-1 → (0,0); (0,1) rows 0-1 × cols 1-3 → (0,1);
    // (1,0) rows 1-3 × cols 0-1 → (1,0); (1,1) → the 1 at (3,3).
    let mut expected = vec![0.0f32; 16];
    expected[0] = 1.0;
    expected[1] = 2.0;
    expected[4] = 4.0;
    expected[15] = 8.0;
    assert_eq!(grad, expected);
}

#[test]
fn imagenet_stem_resnet_shapes() {
    use candle_core::ModuleT;
    use candle_nn::{VarBuilder, VarMap};
    use simclr_stage_model::resnet::{ResNet, ResNetConfig, Stem};
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let config = ResNetConfig {
        depth: 18,
        width: 4,
        stem: Stem::ImageNet,
        in_channels: 1,
        zero_init_residual: false,
    };
    let net = ResNet::new(vb, config).expect("builds");
    assert_eq!(
        map.data().lock().expect("map")["conv1.weight"].dims(),
        &[4, 1, 7, 7]
    );
    let x = Tensor::ones((2, 1, 64, 64), DType::F32, &Device::Cpu).expect("x");
    let h = net.forward_t(&x, true).expect("forward");
    assert_eq!(h.dims(), &[2, 32]);
    // And it trains: the gradient reaches the stem.
    let grads = h
        .sqr()
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("grads");
    let stem = map.data().lock().expect("map")["conv1.weight"].clone();
    assert!(grads.get(stem.as_tensor()).is_some());
}

/// Optimizer state must not keep autograd history: a momentum buffer computed from the
/// previous one and the gradient would otherwise chain every step's graph (activations
/// included) to the next, and memory would grow by the activations of a step per step.
#[test]
fn optimizer_state_is_detached_from_the_graph() {
    use simclr_stage_model::optim::AdamW;
    let make = |which: usize| -> (Var, Box<dyn Optimizer>) {
        let w = Var::from_vec(vec![1.0f64, -2.0, 0.5, 3.0], (2, 2), &Device::Cpu).expect("w");
        let params = vec![Param::new("fc.weight", w.clone())];
        let opt: Box<dyn Optimizer> = match which {
            0 => Box::new(Lars::new(params, 0.9, DEFAULT_TRUST, 1e-4, false)),
            1 => Box::new(Sgd::new(params, 0.9, true, 1e-4)),
            _ => Box::new(AdamW::new(params, (0.9, 0.999), 1e-8, 0.01)),
        };
        (w, opt)
    };
    for which in 0..3 {
        let (w, mut opt) = make(which);
        for _ in 0..3 {
            // A loss with a real graph: sum((w·w)²).
            let loss = w
                .as_tensor()
                .matmul(w.as_tensor())
                .and_then(|t| t.sqr())
                .and_then(|t| t.sum_all())
                .expect("loss");
            opt.step(&loss.backward().expect("grads"), 0.01)
                .expect("step");
        }
        let state = opt.state();
        assert!(!state.is_empty());
        for (name, t) in &state {
            assert!(
                !t.track_op(),
                "optimizer {which}: `{name}` keeps autograd history"
            );
        }
    }
}

/// LARS with a zero weight (a fresh zero-initialised layer) falls back to a trust ratio of 1,
/// as SimCLR's implementation does, instead of dividing by zero.
#[test]
fn lars_uses_ratio_one_when_a_norm_is_zero() {
    let w = Var::from_vec(vec![0.0f64, 0.0], (1, 2), &Device::Cpu).expect("w");
    let mut lars = Lars::new(
        vec![Param::new("fc.weight", w.clone())],
        0.9,
        DEFAULT_TRUST,
        0.1,
        false,
    );
    lars.step(&grads_for(&[(&w, vec![0.5, -1.0])]), 0.1)
        .expect("step");
    let got = values(&w);
    assert!(
        (got[0] + 0.05).abs() < 1e-12 && (got[1] - 0.1).abs() < 1e-12,
        "{got:?}"
    );
}
