//! Our convolution kernels against direct float64 loops: forward values
//! and both gradients, on shapes covering strides 1 and 2, padding 0/1/3, kernels 1×1, 3×3 and
//! 7×7, 1 to 512 channels, odd sizes and batches smaller and larger than the thread count; and a
//! whole ResNet training step with and without our kernels.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use simclr_stage_model::kernels::conv::{Conv2d, conv2d};
use simclr_stage_model::kernels::set_enabled;

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn max_rel_err(ours: &Tensor, reference: &[f64]) -> f64 {
    let a: Vec<f64> = ours
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("ours");
    assert_eq!(a.len(), reference.len());
    let scale = reference
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    a.iter()
        .zip(reference)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Direct float64 loops: y = conv(x, w), and the gradients of sum(y · r) w.r.t. x and w.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    w: &[f32],
    r: &[f32],
    (n, c, h, wi): (usize, usize, usize, usize),
    (cout, k): (usize, usize),
    (stride, pad): (usize, usize),
    (ho, wo): (usize, usize),
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0f64; n * cout * ho * wo];
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    for b in 0..n {
        for o in 0..cout {
            for oh in 0..ho {
                for ow in 0..wo {
                    let yi = ((b * cout + o) * ho + oh) * wo + ow;
                    for ci in 0..c {
                        for i in 0..k {
                            for j in 0..k {
                                let (ih, iw) = (
                                    (oh * stride + i) as isize - pad as isize,
                                    (ow * stride + j) as isize - pad as isize,
                                );
                                if ih < 0 || iw < 0 || ih as usize >= h || iw as usize >= wi {
                                    continue;
                                }
                                let xi = ((b * c + ci) * h + ih as usize) * wi + iw as usize;
                                let wj = ((o * c + ci) * k + i) * k + j;
                                y[yi] += f64::from(x[xi]) * f64::from(w[wj]);
                                dx[xi] += f64::from(r[yi]) * f64::from(w[wj]);
                                dw[wj] += f64::from(r[yi]) * f64::from(x[xi]);
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

/// Run `conv` (ours) on seeded inputs of one geometry and assert its output and both gradients
/// (of `sum(y · r)`) within 1e-5 of the float64 loops; the weight gradient, ours and exact.
fn check_against_float64(
    (n, c, (h, w), cout, k, stride, padding): (
        usize,
        usize,
        (usize, usize),
        usize,
        usize,
        usize,
        usize,
    ),
    seeds: (u64, u64, u64),
    conv: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> (Vec<f32>, Vec<f64>) {
    let dev = Device::Cpu;
    let xs = values(n * c * h * w, seeds.0);
    let ws = values(cout * c * k * k, seeds.1);
    let x = Var::from_vec(xs.clone(), (n, c, h, w), &dev).expect("x");
    let wt = Var::from_vec(ws.clone(), (cout, c, k, k), &dev).expect("w");
    let y = conv(x.as_tensor(), wt.as_tensor()).expect("ours");
    let (ho, wo) = (
        (h + 2 * padding - k) / stride + 1,
        (w + 2 * padding - k) / stride + 1,
    );
    assert_eq!(y.dims(), &[n, cout, ho, wo]);
    // A loss with a non-uniform gradient: sum(y · r).
    let rs = values(n * cout * ho * wo, seeds.2);
    let r = Tensor::from_vec(rs.clone(), y.shape(), &dev).expect("r");
    let grads = (&y * &r)
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("grads");
    let (y64, dx64, dw64) = reference(
        &xs,
        &ws,
        &rs,
        (n, c, h, w),
        (cout, k),
        (stride, padding),
        (ho, wo),
    );
    let case = format!("n{n} c{c} {h}x{w} cout{cout} k{k} s{stride} p{padding}");
    let e = max_rel_err(&y, &y64);
    assert!(e <= 1e-5, "{case}: forward error {e:e}");
    let e = max_rel_err(grads.get(x.as_tensor()).expect("dx"), &dx64);
    assert!(e <= 1e-5, "{case}: input gradient error {e:e}");
    let dw = grads.get(wt.as_tensor()).expect("dw");
    let e = max_rel_err(dw, &dw64);
    assert!(e <= 1e-5, "{case}: weight gradient error {e:e}");
    (
        dw.flatten_all().and_then(|t| t.to_vec1()).expect("dw"),
        dw64,
    )
}

#[test]
fn convolution_and_its_gradients_match_float64() {
    // (batch, channels in, size h×w, channels out, kernel, stride, padding)
    let cases = [
        (2, 3, (32, 32), 16, 3, 1, 1),
        (3, 16, (17, 15), 8, 3, 2, 1),
        (1, 1, (28, 28), 4, 7, 2, 3),
        (4, 8, (9, 9), 8, 1, 1, 0),
        (5, 8, (9, 11), 16, 1, 2, 0),
        (2, 32, (8, 8), 64, 3, 2, 1),
        (3, 4, (7, 5), 6, 3, 1, 0),
        (2, 512, (4, 4), 512, 3, 1, 1),
        (1, 64, (5, 5), 1, 3, 1, 1),
        // Geometries where (size + 2·pad − k) is not a multiple of the stride: candle's own
        // convolution backward fails on these ("shape mismatch in add").
        (1, 2, (2, 3), 3, 3, 2, 1),
        (3, 5, (6, 7), 2, 3, 3, 1),
        (2, 3, (5, 5), 4, 7, 1, 3),
        // Many small images: products are formed over several images side by side.
        (16, 32, (4, 4), 64, 3, 1, 1),
        (12, 16, (3, 5), 8, 1, 1, 0),
        // Column matrices larger than the forward's cache block: the image's output rows are
        // done in several blocks (16·9 rows × 32 positions: 18 KB a row; 40 rows, 3 blocks),
        // for the forward pass and for the input gradient computed through it.
        (2, 16, (40, 32), 16, 3, 1, 1),
    ];
    for (i, &case) in cases.iter().enumerate() {
        let (_, _, _, _, _, stride, padding) = case;
        let i = i as u64;
        check_against_float64(case, (2 * i + 1, 2 * i + 2, 99 + i), |x, w| {
            x.apply_op2(w, Conv2d { stride, padding })
        });
    }
}

/// `conv2d` runs a map smaller than its kernel (late layers of small inputs) as one dense
/// product: its output and both gradients still match the convolution's, and the taps that
/// only ever read padding get exactly zero gradient.
#[test]
fn convolutions_of_maps_smaller_than_the_kernel_match_float64() {
    // (batch, channels in, size, channels out, kernel, stride, padding)
    let cases = [
        (3, 8, 1, 16, 3, 1, 1), // 1×1 map: the centre tap alone
        (2, 8, 2, 16, 3, 1, 1), // 2×2: each output reads 4 of its 9 taps
        (2, 8, 2, 16, 3, 2, 1), // 2×2 → 1×1: the lower-right 2×2 taps
        (2, 4, 1, 8, 3, 2, 1),  // 1×1, stride 2
        (2, 2, 2, 4, 7, 2, 3),  // 7×7 over 2×2
        (2, 3, 3, 5, 5, 2, 1),  // 3×3 map, 5×5 kernel, stride 2
        (2, 4, 3, 4, 5, 1, 2),  // 9 positions, 25 taps
        (2, 4, 4, 4, 3, 1, 1),  // 16 positions, 9 taps: im2col, unchanged
    ];
    for (i, &(n, c, hw, cout, k, stride, padding)) in cases.iter().enumerate() {
        let i = i as u64;
        let (dw, dw64) = check_against_float64(
            (n, c, (hw, hw), cout, k, stride, padding),
            (7 * i + 1, 7 * i + 2, 50 + i),
            |x, w| conv2d(x, w, stride, padding),
        );
        for (j, (ours, exact)) in dw.iter().zip(&dw64).enumerate() {
            if *exact == 0.0 {
                assert_eq!(
                    *ours, 0.0,
                    "case {i}: weight gradient {j} of a padding-only tap"
                );
            }
        }
    }
}

/// A full ResNet-18 step (forward, NT-Xent, backward, LARS) with our kernels and with candle's
/// gives the same loss within 1e-5 and the same updated weights within 1e-5 (relative).
#[test]
fn a_resnet_training_step_is_the_same_with_and_without_our_kernels() {
    use candle_nn::{VarBuilder, VarMap};
    use simclr_stage_model::loss::nt_xent;
    use simclr_stage_model::optim::{DEFAULT_TRUST, Lars, Optimizer, trainable_params};
    use simclr_stage_model::resnet::{ResNet, ResNetConfig, Stem};
    let run = |ours: bool| -> (f32, f32, Vec<f32>) {
        set_enabled(ours);
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let config = ResNetConfig {
            depth: 18,
            width: 4,
            stem: Stem::ImageNet,
            in_channels: 3,
            zero_init_residual: false,
        };
        let net = ResNet::new(vb, config).expect("net");
        simclr_stage_model::init::seeded(&map, 5, "encoder").expect("init");
        let x = Tensor::from_vec(values(16 * 3 * 33 * 33, 7), (16, 3, 33, 33), &Device::Cpu)
            .expect("x");
        let mut opt = Lars::new(
            trainable_params(&map).expect("params"),
            0.9,
            DEFAULT_TRUST,
            1e-6,
            false,
        );
        let loss0 = nt_xent(&net.forward_t(&x, true).expect("h"), 0.5).expect("loss");
        opt.step(&loss0.backward().expect("grads"), 1.0)
            .expect("step");
        let loss1 = nt_xent(&net.forward_t(&x, true).expect("h"), 0.5).expect("loss");
        let w: Vec<f32> = map.data().lock().expect("map")["layer2.0.conv1.weight"]
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("w");
        set_enabled(true);
        (
            loss0.to_scalar().expect("l0"),
            loss1.to_scalar().expect("l1"),
            w,
        )
    };
    let (a0, a1, wa) = run(true);
    let (b0, b1, wb) = run(false);
    assert!((a0 - b0).abs() <= 1e-5 * b0.abs(), "{a0} vs {b0}");
    assert!((a1 - b1).abs() <= 1e-5 * b1.abs(), "{a1} vs {b1}");
    let scale = wb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = wa
        .iter()
        .zip(&wb)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale;
    assert!(err <= 1e-5, "updated weights differ by {err:e}");
}

/// Training-mode BatchNorm (+ ReLU) against direct float64 formulas: output, batch statistics
/// and the gradients w.r.t. x, γ and β of sum(y · r).
#[test]
fn batch_norm_and_its_gradients_match_float64() {
    use simclr_stage_model::kernels::batch_norm::batch_norm_train;
    for (case, &(n, c, h, w, relu)) in [
        (4, 3, 5, 7, false),
        (2, 8, 4, 4, true),
        (3, 16, 1, 1, true),
        (1, 2, 9, 3, false),
    ]
    .iter()
    .enumerate()
    {
        let dev = Device::Cpu;
        let seed = 1000 + 10 * case as u64;
        // Shifted and scaled inputs so the statistics are not trivial.
        let xs: Vec<f32> = values(n * c * h * w, seed)
            .iter()
            .map(|v| 3.0 * v + 0.7)
            .collect();
        let gs: Vec<f32> = values(c, seed + 1).iter().map(|v| 1.0 + 0.5 * v).collect();
        let bs = values(c, seed + 2);
        let rs = values(n * c * h * w, seed + 3);
        let x = Var::from_vec(xs.clone(), (n, c, h, w), &dev).expect("x");
        let g = Var::from_vec(gs.clone(), c, &dev).expect("g");
        let b = Var::from_vec(bs.clone(), c, &dev).expect("b");
        let (y, stats) =
            batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, relu).expect("bn");
        let r = Tensor::from_vec(rs.clone(), (n, c, h, w), &dev).expect("r");
        let grads = (&y * &r)
            .and_then(|t| t.sum_all())
            .and_then(|l| l.backward())
            .expect("grads");

        // Reference, channel by channel.
        let (s, m) = (h * w, (n * h * w) as f64);
        let at = |i: usize, ch: usize, k: usize| (i * c + ch) * s + k;
        let mut ry = vec![0.0f64; xs.len()];
        let mut rdx = vec![0.0f64; xs.len()];
        let (mut rdg, mut rdb, mut rmean, mut rvar) =
            (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|i| (0..s).map(move |k| at(i, ch, k)))
                .collect();
            let mean = idx.iter().map(|&j| f64::from(xs[j])).sum::<f64>() / m;
            let var = idx
                .iter()
                .map(|&j| (f64::from(xs[j]) - mean).powi(2))
                .sum::<f64>()
                / m;
            let inv = 1.0 / (var + 1e-5).sqrt();
            let (gamma, beta) = (f64::from(gs[ch]), f64::from(bs[ch]));
            // dy' = r masked by ReLU.
            let mut dyp = vec![0.0f64; idx.len()];
            for (t, &j) in idx.iter().enumerate() {
                let pre = gamma * (f64::from(xs[j]) - mean) * inv + beta;
                ry[j] = if relu { pre.max(0.0) } else { pre };
                dyp[t] = if relu && pre <= 0.0 {
                    0.0
                } else {
                    f64::from(rs[j])
                };
            }
            let sd: f64 = dyp.iter().sum();
            let sdx: f64 = idx
                .iter()
                .zip(&dyp)
                .map(|(&j, d)| d * (f64::from(xs[j]) - mean) * inv)
                .sum();
            for (t, &j) in idx.iter().enumerate() {
                let xhat = (f64::from(xs[j]) - mean) * inv;
                rdx[j] = gamma * inv * (dyp[t] - sd / m - xhat * sdx / m);
            }
            rdg[ch] = sdx;
            rdb[ch] = sd;
            rmean[ch] = mean;
            rvar[ch] = var;
        }
        let label = format!("case {case}: {n}x{c}x{h}x{w} relu {relu}");
        for (what, ours, reference) in [
            ("y", y.clone(), ry),
            ("dx", grads.get(x.as_tensor()).expect("dx").clone(), rdx),
            ("dgamma", grads.get(g.as_tensor()).expect("dg").clone(), rdg),
            ("dbeta", grads.get(b.as_tensor()).expect("db").clone(), rdb),
            ("mean", stats.get(0).expect("mean"), rmean),
            ("var", stats.get(1).expect("var"), rvar),
        ] {
            let e = max_rel_err(&ours, &reference);
            assert!(e <= 1e-5, "{label}: {what} error {e:e}");
        }
    }
}

/// Evaluation-mode BatchNorm (+ ReLU) against float64 formulas with given running statistics
/// (not the batch's): output, and the gradients w.r.t. x, γ and β of sum(y · r) with the
/// statistics held constant; and against candle-nn's evaluation-mode BatchNorm.
#[test]
fn evaluation_batch_norm_and_its_gradients_match_float64() {
    use simclr_stage_model::kernels::batch_norm::batch_norm_eval;
    for (case, &(n, c, h, w, relu)) in [(4, 3, 5, 7, false), (2, 8, 4, 4, true), (1, 5, 9, 3, true)]
        .iter()
        .enumerate()
    {
        let dev = Device::Cpu;
        let seed = 2000 + 10 * case as u64;
        let xs: Vec<f32> = values(n * c * h * w, seed)
            .iter()
            .map(|v| 3.0 * v + 0.7)
            .collect();
        let gs: Vec<f32> = values(c, seed + 1).iter().map(|v| 1.0 + 0.5 * v).collect();
        let bs = values(c, seed + 2);
        let means: Vec<f32> = values(c, seed + 4).iter().map(|v| 0.7 + v).collect();
        let vars: Vec<f32> = values(c, seed + 5).iter().map(|v| 2.0 + 1.5 * v).collect();
        let rs = values(n * c * h * w, seed + 3);
        let x = Var::from_vec(xs.clone(), (n, c, h, w), &dev).expect("x");
        let g = Var::from_vec(gs.clone(), c, &dev).expect("g");
        let b = Var::from_vec(bs.clone(), c, &dev).expect("b");
        let mean = Tensor::from_vec(means.clone(), c, &dev).expect("mean");
        let var = Tensor::from_vec(vars.clone(), c, &dev).expect("var");
        let y = batch_norm_eval(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            &mean,
            &var,
            1e-5,
            relu,
        )
        .expect("bn");
        let r = Tensor::from_vec(rs.clone(), (n, c, h, w), &dev).expect("r");
        let grads = (&y * &r)
            .and_then(|t| t.sum_all())
            .and_then(|l| l.backward())
            .expect("grads");
        let s = h * w;
        let (mut ry, mut rdx) = (vec![0.0f64; xs.len()], vec![0.0f64; xs.len()]);
        let (mut rdg, mut rdb) = (vec![0.0; c], vec![0.0; c]);
        for i in 0..n {
            for ch in 0..c {
                let inv = 1.0 / (f64::from(vars[ch]) + 1e-5).sqrt();
                for k in 0..s {
                    let j = (i * c + ch) * s + k;
                    let xhat = (f64::from(xs[j]) - f64::from(means[ch])) * inv;
                    let pre = f64::from(gs[ch]) * xhat + f64::from(bs[ch]);
                    ry[j] = if relu { pre.max(0.0) } else { pre };
                    let d = if relu && pre <= 0.0 {
                        0.0
                    } else {
                        f64::from(rs[j])
                    };
                    rdx[j] = f64::from(gs[ch]) * inv * d;
                    rdg[ch] += d * xhat;
                    rdb[ch] += d;
                }
            }
        }
        let label = format!("case {case}: {n}x{c}x{h}x{w} relu {relu}");
        for (what, ours, reference) in [
            ("y", y.clone(), ry),
            ("dx", grads.get(x.as_tensor()).expect("dx").clone(), rdx),
            ("dgamma", grads.get(g.as_tensor()).expect("dg").clone(), rdg),
            ("dbeta", grads.get(b.as_tensor()).expect("db").clone(), rdb),
        ] {
            let e = max_rel_err(&ours, &reference);
            assert!(e <= 1e-5, "{label}: {what} error {e:e}");
        }
        // candle-nn's evaluation mode gives the same output.
        let bn = candle_nn::BatchNorm::new(
            c,
            mean,
            var,
            g.as_tensor().clone(),
            b.as_tensor().clone(),
            1e-5,
        )
        .expect("candle bn");
        let theirs = bn.forward_t(x.as_tensor(), false).expect("candle");
        let theirs = if relu {
            theirs.relu().expect("relu")
        } else {
            theirs
        };
        let diff = (&theirs - &y)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        assert!(diff <= 1e-5, "{label}: vs candle-nn {diff:e}");
    }
}

/// relu(a + b) and its gradients (the same for a and b: dy where the output is positive).
#[test]
fn residual_add_relu_matches_its_definition() {
    use simclr_stage_model::kernels::residual::AddRelu;
    let dev = Device::Cpu;
    let n = 3 * 5 * 7 * 11;
    let (av, bv, rv) = (values(n, 71), values(n, 72), values(n, 73));
    let a = Var::from_vec(av.clone(), (3, 5, 7, 11), &dev).expect("a");
    let b = Var::from_vec(bv.clone(), (3, 5, 7, 11), &dev).expect("b");
    let y = a.as_tensor().apply_op2(b.as_tensor(), AddRelu).expect("y");
    let r = Tensor::from_vec(rv.clone(), (3, 5, 7, 11), &dev).expect("r");
    let grads = (&y * &r)
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("grads");
    let yv: Vec<f32> = y.flatten_all().and_then(|t| t.to_vec1()).expect("y");
    let expected: Vec<f32> = av.iter().zip(&bv).map(|(u, v)| (u + v).max(0.0)).collect();
    assert_eq!(yv, expected);
    let dgrad: Vec<f32> = av
        .iter()
        .zip(&bv)
        .zip(&rv)
        .map(|((u, v), g)| if u + v > 0.0 { *g } else { 0.0 })
        .collect();
    for var in [&a, &b] {
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .expect("grad")
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("g");
        assert_eq!(g, dgrad);
    }
    assert!(
        yv.contains(&0.0) && yv.iter().any(|&v| v > 0.0),
        "both sides of the ReLU exercised"
    );
}

/// Global BatchNorm: ranks (threads over in-process channels here; MPI processes in a run)
/// each normalising their share of a batch give the one-process output, input gradient and —
/// summed over the ranks — the γ and β gradients of BatchNorm over the whole batch.
#[test]
fn global_batch_norm_over_ranks_is_batch_norm_over_the_whole_batch() {
    use simclr_stage_model::kernels::batch_norm::{batch_norm_train, batch_norm_train_synced};
    let (n, c, h, w) = (6, 5, 3, 4);
    let per = c * h * w;
    let xs: Vec<f32> = values(n * per, 77).iter().map(|v| 2.0 * v - 0.4).collect();
    let gs: Vec<f32> = values(c, 78).iter().map(|v| 1.0 + 0.5 * v).collect();
    let bs = values(c, 79);
    let rs = values(n * per, 80);
    // (y, dx, dγ, dβ) of sum(y · r) over images `rows`, with statistics over `comm`'s ranks.
    let run = move |rows: Vec<usize>, comm: Option<simclr_dist::Comm>| {
        let pick = |v: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&i| v[i * per..(i + 1) * per].to_vec())
                .collect()
        };
        let dev = Device::Cpu;
        let x = Var::from_vec(pick(&xs), (rows.len(), c, h, w), &dev).expect("x");
        let g = Var::from_vec(gs.clone(), c, &dev).expect("g");
        let b = Var::from_vec(bs.clone(), c, &dev).expect("b");
        let (y, _) = match &comm {
            Some(_) => batch_norm_train_synced(
                x.as_tensor(),
                g.as_tensor(),
                b.as_tensor(),
                1e-5,
                true,
                comm,
            ),
            None => batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, true),
        }
        .expect("bn");
        let r = Tensor::from_vec(pick(&rs), (rows.len(), c, h, w), &dev).expect("r");
        let grads = (&y * &r)
            .and_then(|t| t.sum_all())
            .and_then(|l| l.backward())
            .expect("grads");
        let flat =
            |t: &Tensor| -> Vec<f32> { t.flatten_all().and_then(|t| t.to_vec1()).expect("values") };
        let get = |v: &Var| flat(grads.get(v.as_tensor()).expect("gradient"));
        (flat(&y), get(&x), get(&g), get(&b))
    };
    let whole = run((0..n).collect(), None);
    for ranks in [2, 3] {
        let comms = simclr_dist::local_world(ranks, std::time::Duration::from_secs(20));
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                let run = run.clone();
                // Rank r holds images r, r + W, ...: the source's split.
                let rows: Vec<usize> = (r..n).step_by(ranks).collect();
                std::thread::spawn(move || (rows.clone(), run(rows, Some(comm))))
            })
            .collect();
        let (mut dgamma, mut dbeta) = (vec![0.0f64; c], vec![0.0f64; c]);
        for h in handles {
            let (rows, (y, dx, dg, db)) = h.join().expect("rank");
            for (k, &i) in rows.iter().enumerate() {
                for (what, ours, all) in [("y", &y, &whole.0), ("dx", &dx, &whole.1)] {
                    for j in 0..per {
                        let (a, b) = (ours[k * per + j], all[i * per + j]);
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{ranks} ranks: {what} of image {i}: {a} vs {b}"
                        );
                    }
                }
            }
            for ch in 0..c {
                dgamma[ch] += f64::from(dg[ch]);
                dbeta[ch] += f64::from(db[ch]);
            }
        }
        for ch in 0..c {
            for (what, sum, all) in [
                ("dgamma", dgamma[ch], whole.2[ch]),
                ("dbeta", dbeta[ch], whole.3[ch]),
            ] {
                assert!(
                    (sum - f64::from(all)).abs() <= 1e-4 * (1.0 + f64::from(all).abs()),
                    "{ranks} ranks: {what}[{ch}]: summed {sum} vs {all}"
                );
            }
        }
    }
}
