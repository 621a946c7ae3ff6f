//! `simclr bench train`: one SimCLR training step (ResNet-18 with the CIFAR or ImageNet stem +
//! MLP head + NT-Xent + LARS) split into forward, backward and optimizer time, per
//! configuration.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use simclr::model::loss::nt_xent;
use simclr::model::optim::{DEFAULT_TRUST, Lars, Optimizer, trainable_params};
use simclr::model::projector::{Projector, ProjectorKind};
use simclr::model::resnet::{ResNet, ResNetConfig, Stem};

/// One measured configuration.
#[derive(Debug, serde::Serialize)]
struct Row {
    width: usize,
    stem: &'static str,
    channels: usize,
    size: usize,
    pairs: usize,
    forward_ms: f64,
    backward_ms: f64,
    optimizer_ms: f64,
    ms_per_step: f64,
    views_per_s: f64,
    peak_rss_mb: Option<f64>,
    /// Share of the step spent in our convolution kernels (forward and both gradients).
    conv_share: f64,
    /// Floating-point operations per second achieved inside those kernels, in GFLOP/s.
    conv_gflops_per_s: f64,
    /// PyTorch's ms/step for the same configuration, measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    torch_ms_per_step: Option<f64>,
    /// `ms_per_step / torch_ms_per_step` (above 1: slower than PyTorch).
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_torch: Option<f64>,
    /// Per-layer kernel times over the measured steps (with `--layers`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layers: Vec<simclr::model::kernels::LayerTime>,
}

/// One configuration as the PyTorch reference prints it.
#[derive(Debug, serde::Deserialize)]
struct TorchRow {
    width: usize,
    channels: usize,
    size: usize,
    ms_per_step: f64,
}

/// Run `benches/reference/train_step_torch.py` with `python` on the same configurations.
fn measure_torch(
    python: &str,
    widths: &[usize],
    stem: Stem,
    pairs: usize,
    steps: usize,
    on: &Target,
) -> Result<Vec<TorchRow>> {
    // The checkout the command runs in, else the one the binary was built from.
    let relative = std::path::Path::new("benches/reference/train_step_torch.py");
    let script = if relative.is_file() {
        relative.to_path_buf()
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    };
    let widths: Vec<String> = widths.iter().map(ToString::to_string).collect();
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(["--widths", &widths.join(","), "--pairs", &pairs.to_string()])
        .args(["--stem", stem_name(stem)])
        .args([
            "--steps",
            &steps.to_string(),
            "--threads",
            &rayon::current_num_threads().to_string(),
        ])
        .args(if on.device.is_cuda() {
            vec!["--device", "cuda"]
        } else {
            vec![]
        })
        .args(if on.tf32 { vec!["--tf32"] } else { vec![] })
        .output()
        .with_context(|| {
            format!("cannot run `{python}` (the PyTorch reference needs Python with torch)")
        })?;
    if !out.status.success() {
        anyhow::bail!(
            "the PyTorch reference failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("unexpected line from the PyTorch reference: {l}"))
        })
        .collect()
}

/// Peak resident memory of this process so far (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Where the bench runs: the device and, on CUDA, whether TF32 is allowed.
pub struct Target {
    /// The candle device.
    pub device: Device,
    /// TensorFloat-32 in matrix products and convolutions (CUDA only).
    pub tf32: bool,
}

impl Target {
    /// `cpu`, `cuda` or `cuda:N`, and `fp32` or `tf32`.
    ///
    /// # Errors
    /// An unknown or unavailable device, TF32 on the CPU, an unknown precision.
    pub fn new(device: &str, precision: &str) -> Result<Self> {
        let device = simclr::model::stage::device(device.parse()?)?;
        let tf32 = match precision {
            "fp32" => false,
            "tf32" if device.is_cuda() => true,
            "tf32" => anyhow::bail!("precision tf32 applies to CUDA devices, not the CPU"),
            other => anyhow::bail!("unknown precision `{other}` (fp32 or tf32)"),
        };
        simclr::model::kernels::set_tf32(tf32);
        Ok(Self { device, tf32 })
    }

    fn describe(&self) -> String {
        match (&self.device, self.tf32) {
            (Device::Cpu, _) => "fp32 CPU".into(),
            (_, false) => "fp32 (strict) CUDA".into(),
            (_, true) => "TF32 CUDA".into(),
        }
    }
}

/// `cifar` or `imagenet` (the CLI has checked it).
pub fn stem(name: &str) -> Stem {
    if name == "imagenet" {
        Stem::ImageNet
    } else {
        Stem::Cifar
    }
}

fn stem_name(stem: Stem) -> &'static str {
    match stem {
        Stem::Cifar => "cifar",
        Stem::ImageNet => "imagenet",
    }
}

/// ResNet-18 + MLP head (8w → 8w → 128), as the reference script builds it.
fn model(
    vb: &VarBuilder<'_>,
    width: usize,
    stem: Stem,
    channels: usize,
) -> candle_core::Result<(ResNet, Projector)> {
    let config = ResNetConfig {
        depth: 18,
        width,
        stem,
        in_channels: channels,
        zero_init_residual: false,
    };
    let encoder = ResNet::new(vb.pp("encoder"), config)?;
    let dim = config.feature_dim();
    let head = Projector::new(
        vb.pp("projector"),
        dim,
        ProjectorKind::Mlp {
            layers: 2,
            hidden: dim,
            out: 128,
            batch_norm: false,
        },
    )?;
    Ok((encoder, head))
}

#[allow(clippy::too_many_arguments)] // one per measured dimension
fn measure(
    width: usize,
    stem: Stem,
    channels: usize,
    size: usize,
    pairs: usize,
    steps: usize,
    on: &Target,
    layers: bool,
) -> Result<Row> {
    let device = &on.device;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, device);
    let (encoder, head) = model(&vb, width, stem, channels)?;
    let params = trainable_params(&map)?;
    let mut optimizer = Lars::new(params, 0.9, DEFAULT_TRUST, 1e-6, false);
    let views = 2 * pairs;
    let x =
        Tensor::randn(0f32, 1.0, (views, channels, size, size), device).context("input batch")?;
    let (mut fwd, mut bwd, mut opt) = (0.0, 0.0, 0.0);
    for step in 0..=steps {
        let t0 = Instant::now();
        let z = head.forward_t(&encoder.forward_t(&x, true)?, true)?;
        let loss = nt_xent(&z, 0.5)?;
        let _value = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        device.synchronize()?;
        let t2 = Instant::now();
        optimizer.step(&grads, 0.1)?;
        device.synchronize()?;
        let t3 = Instant::now();
        if step == 0 {
            simclr::model::kernels::take_conv_counters();
            simclr::model::kernels::set_layer_profile(layers);
        }
        // Step 0 warms up allocator and kernels and is not counted.
        if step > 0 {
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            opt += (t3 - t2).as_secs_f64();
        }
    }
    let n = steps as f64;
    let total = (fwd + bwd + opt) / n;
    let (conv_flops, conv_secs) = simclr::model::kernels::take_conv_counters();
    let layers = simclr::model::kernels::take_layer_profile();
    simclr::model::kernels::set_layer_profile(false);
    Ok(Row {
        width,
        stem: stem_name(stem),
        channels,
        size,
        pairs,
        forward_ms: 1e3 * fwd / n,
        backward_ms: 1e3 * bwd / n,
        optimizer_ms: 1e3 * opt / n,
        ms_per_step: 1e3 * total,
        views_per_s: views as f64 / total,
        peak_rss_mb: peak_rss_mb(),
        conv_share: conv_secs / n / total,
        conv_gflops_per_s: if conv_secs > 0.0 {
            conv_flops as f64 / conv_secs / 1e9
        } else {
            0.0
        },
        torch_ms_per_step: None,
        ratio_to_torch: None,
        layers,
    })
}

/// Run the configurations (widths × {32²×3, 28²×1}) and print a table or JSON. With
/// `reference` (a Python interpreter with torch), PyTorch runs the same configurations in the
/// same run and the ratios are printed.
pub fn train(
    json: bool,
    widths: &[usize],
    stem: Stem,
    pairs: usize,
    steps: usize,
    reference: Option<&str>,
    on: &Target,
    layers: bool,
) -> Result<String> {
    let mut rows = Vec::new();
    for &width in widths {
        for (channels, size) in [(3, 32), (1, 28)] {
            rows.push(measure(
                width,
                stem,
                channels,
                size,
                pairs,
                steps.max(1),
                on,
                layers,
            )?);
        }
    }
    if let Some(python) = reference {
        let torch = measure_torch(python, widths, stem, pairs, steps.max(1), on)?;
        for r in &mut rows {
            let t = torch
                .iter()
                .find(|t| (t.width, t.channels, t.size) == (r.width, r.channels, r.size));
            r.torch_ms_per_step = t.map(|t| t.ms_per_step);
            r.ratio_to_torch = t.map(|t| r.ms_per_step / t.ms_per_step);
        }
    }
    if json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let mut out = format!(
        "SimCLR training step, ResNet-18 {} stem + MLP head + NT-Xent + LARS, {}, {pairs} pairs ({} views), mean of {steps} step(s) after one warm-up\n\n",
        match stem {
            Stem::Cifar => "CIFAR",
            Stem::ImageNet => "ImageNet",
        },
        on.describe(),
        2 * pairs
    );
    out.push_str(&format!(
        "{:<6} {:<9} {:>11} {:>12} {:>13} {:>11} {:>9} {:>9}\n",
        "width",
        "input",
        "forward ms",
        "backward ms",
        "optimizer ms",
        "ms/step",
        "views/s",
        "peak MB"
    ));
    out.pop();
    out.push_str(&format!(" {:>6} {:>11}\n", "conv", "conv GFLOP/s"));
    let with_torch = rows.iter().any(|r| r.torch_ms_per_step.is_some());
    if with_torch {
        out.pop();
        out.push_str(&format!(" {:>10} {:>8}\n", "torch ms", "× torch"));
    }
    for r in &rows {
        out.push_str(&format!(
            "{:<6} {:<9} {:>11.0} {:>12.0} {:>13.1} {:>11.0} {:>9.1} {:>9.0}\n",
            r.width,
            format!("{}x{}x{}", r.size, r.size, r.channels),
            r.forward_ms,
            r.backward_ms,
            r.optimizer_ms,
            r.ms_per_step,
            r.views_per_s,
            r.peak_rss_mb.unwrap_or(f64::NAN)
        ));
        out.pop();
        if r.conv_gflops_per_s > 0.0 {
            out.push_str(&format!(
                " {:>5.0}% {:>11.1}\n",
                100.0 * r.conv_share,
                r.conv_gflops_per_s
            ));
        } else {
            // Counted in the CPU kernels only.
            out.push_str(&format!(" {:>6} {:>11}\n", "-", "-"));
        }
        if let (Some(t), Some(ratio)) = (r.torch_ms_per_step, r.ratio_to_torch) {
            out.pop();
            out.push_str(&format!(" {t:>10.0} {ratio:>8.2}\n"));
        }
    }
    for r in rows.iter().filter(|r| !r.layers.is_empty()) {
        out.push_str(&layer_table(r, steps.max(1)));
    }
    out.push_str(
        "\n(peak MB is the process's high-water mark so far, so it only grows down the table; conv: share of the step in our convolution kernels, forward and both gradients, and the rate they achieve — multiply-adds count 2)\n",
    );
    if with_torch {
        out.push_str("(torch: benches/reference/train_step_torch.py, same step, same threads, measured in this run; × torch above 1 means slower)\n");
    }
    Ok(out)
}

/// The per-layer kernel table of one configuration: ms per step, share of the step and (for
/// convolutions) GFLOP/s for each pass and shape, slowest first; then the rest of the step.
fn layer_table(r: &Row, steps: usize) -> String {
    let mut layers: Vec<_> = r.layers.iter().collect();
    layers.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let mut out = format!(
        "\nwidth {} {}x{}x{}, our kernels by pass and shape (channels in→out kernel/stride input):\n{:<40} {:>7} {:>10} {:>7} {:>9}\n",
        r.width, r.size, r.size, r.channels, "", "calls", "ms/step", "share", "GFLOP/s"
    );
    for l in layers {
        let ms = 1e3 * l.seconds / steps as f64;
        out.push_str(&format!(
            "{:<40} {:>7} {:>10.1} {:>6.1}% {:>9}\n",
            l.label,
            l.calls / steps as u64,
            ms,
            100.0 * ms / r.ms_per_step,
            if l.flops > 0 && l.seconds > 0.0 {
                format!("{:.1}", l.flops as f64 / l.seconds / 1e9)
            } else {
                "-".to_owned()
            }
        ));
    }
    let kernels: f64 = r.layers.iter().map(|l| l.seconds).sum::<f64>() * 1e3 / steps as f64;
    out.push_str(&format!(
        "{:<40} {:>7} {:>10.1} {:>6.1}%\n",
        "everything else (candle's operations)",
        "",
        r.ms_per_step - kernels,
        100.0 * (1.0 - kernels / r.ms_per_step)
    ));
    out
}

/// Largest `|a − b|` over `max |a|` (0 when both are zero): the relative error of `b` as an
/// approximation of `a`, for whole tensors.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    let scale = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// `‖a − b‖² ` and `‖a‖²` of two tensors, for an error over many tensors.
fn sq_norms(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    Ok((
        (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
        a.sqr()?.sum_all()?.to_scalar::<f64>()?,
    ))
}

/// The worst entry of `(name, error)` pairs, formatted.
fn worst(errors: &[(String, f64)]) -> String {
    errors
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or_else(|| "-".into(), |(n, e)| format!("{e:.1e} ({n})"))
}

/// `simclr bench parity`: train the same model from the same weights on the same batch on the
/// CPU and on `on`'s device, step by step, and print how far the device drifts: the loss,
/// each parameter's gradient and each variable after the update (weights, BatchNorm
/// statistics), relative to the CPU's. With `candle_ops`, the device uses candle's own
/// operations instead of ours (cuDNN), to tell a fault in one from a fault in the other.
#[allow(clippy::too_many_arguments)] // one per CLI option
pub fn parity(
    width: usize,
    channels: usize,
    pairs: usize,
    steps: usize,
    lr: f64,
    candle_ops: bool,
    f64_reference: bool,
    on: &Target,
) -> Result<String> {
    if f64_reference && !on.device.is_cpu() {
        anyhow::bail!(
            "--f64-reference compares against candle's float64 CPU operations: use --device cpu"
        );
    }
    // The compared side: float64 (candle's operations: ours are float32 only) or float32.
    let dev_dtype = if f64_reference {
        DType::F64
    } else {
        DType::F32
    };
    let size = if channels == 1 { 28 } else { 32 };
    let cpu_map = VarMap::new();
    let (cpu_enc, cpu_head) = model(
        &VarBuilder::from_varmap(&cpu_map, DType::F32, &Device::Cpu),
        width,
        Stem::Cifar,
        channels,
    )?;
    // Seeded weights and inputs: the same comparison every run.
    simclr::model::init::seeded(&cpu_map, 0, "parity")?;
    let mut dev_map = VarMap::new();
    let (dev_enc, dev_head) = model(
        &VarBuilder::from_varmap(&dev_map, dev_dtype, &on.device),
        width,
        Stem::Cifar,
        channels,
    )?;
    let names: Vec<String> = {
        let data = cpu_map
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut n: Vec<String> = data.keys().cloned().collect();
        n.sort();
        n
    };
    for name in &names {
        let value = cpu_map
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?[name]
            .as_tensor()
            .to_device(&on.device)?
            .to_dtype(dev_dtype)?;
        dev_map.set_one(name, value)?;
    }
    let mut cpu_opt = Lars::new(trainable_params(&cpu_map)?, 0.9, DEFAULT_TRUST, 1e-6, false);
    let mut dev_opt = Lars::new(trainable_params(&dev_map)?, 0.9, DEFAULT_TRUST, 1e-6, false);
    let trainable: Vec<(String, candle_core::Var, candle_core::Var)> = {
        let c = cpu_map
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let d = dev_map
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        names
            .iter()
            .map(|n| (n.clone(), c[n].clone(), d[n].clone()))
            .collect()
    };
    let mut out = format!(
        "CPU vs {} ({}), ResNet-18 CIFAR stem width {width} + MLP head, {pairs} pairs of {size}x{size}x{channels}, LARS lr {lr}\n\n{:<5} {:>12} {:>12} {:>9} {:>9} {:>9}  {:<44} {}\n",
        if f64_reference {
            "float64 CPU".to_owned()
        } else {
            on.describe()
        },
        if candle_ops || f64_reference {
            "candle's operations"
        } else {
            "our operations"
        },
        "step",
        "loss cpu",
        "loss device",
        "rel diff",
        "grads",
        "weights",
        "worst gradient rel diff",
        "worst variable rel diff after the update"
    );
    let mut rng = simclr::core::Rng::from_key(&[0x9a21_7e57]);
    let numel = steps.max(1) * 2 * pairs * channels * size * size;
    let data: Vec<f32> = (0..numel)
        .map(|_| (2.0 * rng.next_f64() - 1.0) as f32)
        .collect();
    let batch = Tensor::from_vec(
        data,
        (steps.max(1), 2 * pairs, channels, size, size),
        &Device::Cpu,
    )?;
    for step in 0..steps.max(1) {
        let x = batch.get(step)?;
        simclr::model::kernels::set_enabled(!(candle_ops && f64_reference));
        let cpu_loss = nt_xent(
            &cpu_head.forward_t(&cpu_enc.forward_t(&x, true)?, true)?,
            0.5,
        )?;
        let cpu_grads = cpu_loss.backward()?;
        simclr::model::kernels::set_enabled(!candle_ops);
        let xd = x.to_device(&on.device)?.to_dtype(dev_dtype)?;
        let dev_loss = nt_xent(
            &dev_head.forward_t(&dev_enc.forward_t(&xd, true)?, true)?,
            0.5,
        )?;
        let dev_grads = dev_loss.backward()?;
        simclr::model::kernels::set_enabled(true);
        let (mut grad_err, mut grad_sq) = (Vec::new(), (0.0, 0.0));
        for (name, c, d) in &trainable {
            if let (Some(gc), Some(gd)) =
                (cpu_grads.get(c.as_tensor()), dev_grads.get(d.as_tensor()))
            {
                grad_err.push((name.clone(), rel_diff(gc, gd)?));
                let (e, n) = sq_norms(gc, gd)?;
                grad_sq = (grad_sq.0 + e, grad_sq.1 + n);
            }
        }
        cpu_opt.step(&cpu_grads, lr)?;
        dev_opt.step(&dev_grads, lr)?;
        let (mut var_err, mut var_sq) = (Vec::new(), (0.0, 0.0));
        for (name, c, d) in &trainable {
            var_err.push((name.clone(), rel_diff(c.as_tensor(), d.as_tensor())?));
            let (e, n) = sq_norms(c.as_tensor(), d.as_tensor())?;
            var_sq = (var_sq.0 + e, var_sq.1 + n);
        }
        let (lc, ld) = (
            f64::from(cpu_loss.to_scalar::<f32>()?),
            dev_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        );
        out.push_str(&format!(
            "{step:<5} {lc:>12.7} {ld:>12.7} {:>9.1e} {:>9.1e} {:>9.1e}  {:<44} {}\n",
            (lc - ld).abs() / lc.abs().max(f64::MIN_POSITIVE),
            (grad_sq.0 / grad_sq.1.max(f64::MIN_POSITIVE)).sqrt(),
            (var_sq.0 / var_sq.1.max(f64::MIN_POSITIVE)).sqrt(),
            worst(&grad_err),
            worst(&var_err)
        ));
    }
    out.push_str("\n(rel diff: of the loss; grads, weights: ‖cpu − device‖ / ‖cpu‖ over all gradients, all variables after the update; worst: max |cpu − device| / max |cpu| of one tensor. Weights are initialised as the pipeline does (seeded, torchvision-style) and inputs are seeded: two correct float32 implementations agree to ~1e-5 in gradients and ~1e-7 in weights; some per-tensor figures are larger where a gradient is almost pure rounding, e.g. a bias feeding a BatchNorm)\n");
    Ok(out)
}
