//! `simclr bench train`: one SimCLR training step (ResNet-18 CIFAR stem + MLP head + NT-Xent
//! + LARS) split into forward, backward and optimizer time, per configuration.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use simclr_stage_model::loss::nt_xent;
use simclr_stage_model::optim::{DEFAULT_TRUST, Lars, Optimizer, trainable_params};
use simclr_stage_model::projector::{Projector, ProjectorKind};
use simclr_stage_model::resnet::{ResNet, ResNetConfig, Stem};

/// One measured configuration.
#[derive(Debug, serde::Serialize)]
struct Row {
    width: usize,
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
    pairs: usize,
    steps: usize,
) -> Result<Vec<TorchRow>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/reference/train_step_torch.py");
    let widths: Vec<String> = widths.iter().map(ToString::to_string).collect();
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(["--widths", &widths.join(","), "--pairs", &pairs.to_string()])
        .args([
            "--steps",
            &steps.to_string(),
            "--threads",
            &rayon::current_num_threads().to_string(),
        ])
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

fn measure(width: usize, channels: usize, size: usize, pairs: usize, steps: usize) -> Result<Row> {
    let device = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &device);
    let config = ResNetConfig {
        depth: 18,
        width,
        stem: Stem::Cifar,
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
    let params = trainable_params(&map)?;
    let mut optimizer = Lars::new(params, 0.9, DEFAULT_TRUST, 1e-6, false);
    let views = 2 * pairs;
    let x =
        Tensor::randn(0f32, 1.0, (views, channels, size, size), &device).context("input batch")?;
    let (mut fwd, mut bwd, mut opt) = (0.0, 0.0, 0.0);
    for step in 0..=steps {
        let t0 = Instant::now();
        let z = head.forward_t(&encoder.forward_t(&x, true)?, true)?;
        let loss = nt_xent(&z, 0.5)?;
        let _value = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        optimizer.step(&grads, 0.1)?;
        let t3 = Instant::now();
        if step == 0 {
            simclr_stage_model::kernels::take_conv_counters();
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
    let (conv_flops, conv_secs) = simclr_stage_model::kernels::take_conv_counters();
    Ok(Row {
        width,
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
    })
}

/// Run the configurations (widths × {32²×3, 28²×1}) and print a table or JSON. With
/// `reference` (a Python interpreter with torch), PyTorch runs the same configurations in the
/// same run and the ratios are printed.
pub fn train(
    json: bool,
    widths: &[usize],
    pairs: usize,
    steps: usize,
    reference: Option<&str>,
) -> Result<String> {
    let mut rows = Vec::new();
    for &width in widths {
        for (channels, size) in [(3, 32), (1, 28)] {
            rows.push(measure(width, channels, size, pairs, steps.max(1))?);
        }
    }
    if let Some(python) = reference {
        let torch = measure_torch(python, widths, pairs, steps.max(1))?;
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
        "SimCLR training step, ResNet-18 CIFAR stem + MLP head + NT-Xent + LARS, fp32 CPU, {pairs} pairs ({} views), mean of {steps} step(s) after one warm-up\n\n",
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
        out.push_str(&format!(
            " {:>5.0}% {:>11.1}\n",
            100.0 * r.conv_share,
            r.conv_gflops_per_s
        ));
        if let (Some(t), Some(ratio)) = (r.torch_ms_per_step, r.ratio_to_torch) {
            out.pop();
            out.push_str(&format!(" {t:>10.0} {ratio:>8.2}\n"));
        }
    }
    out.push_str(
        "\n(peak MB is the process's high-water mark so far, so it only grows down the table; conv: share of the step in our convolution kernels, forward and both gradients, and the rate they achieve — multiply-adds count 2)\n",
    );
    if with_torch {
        out.push_str("(torch: benches/reference/train_step_torch.py, same step, same threads, measured in this run; × torch above 1 means slower)\n");
    }
    Ok(out)
}
