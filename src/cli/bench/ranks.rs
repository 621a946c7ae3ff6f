//! `simclr bench train --ranks N`: data-parallel scaling. The same definition (synthetic
//! 32×32 images, ResNet-18, MLP head, NT-Xent + LARS) at the same global batch, trained by one
//! process with N threads and by N MPI ranks (`mpirun`) with one thread each; images/s of
//! both from their `steps.jsonl`, the scaling efficiency, and the ranks' time in collectives.
//! The two runs alternate `repeats` times and the medians are reported (a shared machine's
//! noise moves single runs by ±20%).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Steps before the measured ones (allocation, caches, the first checkpoint-free steps).
const WARMUP: usize = 5;

/// The measured side of one run.
#[derive(Debug, serde::Serialize)]
struct Side {
    ranks: usize,
    threads_per_rank: usize,
    images_per_s: f64,
    ms_per_step: f64,
    /// Seconds per step in the gather, gradient reduce and BatchNorm collectives (rank 0).
    comm_ms_per_step: f64,
    comm_share: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    width: usize,
    global_batch: usize,
    steps: usize,
    repeats: usize,
    /// The run with the median images/s of each side.
    one_process: Side,
    distributed: Side,
    /// Median images/s of N ranks × 1 thread over median images/s of 1 rank × N threads.
    scaling_efficiency: f64,
    /// Each repeat's efficiency (its two runs ran back to back).
    efficiencies: Vec<f64>,
}

fn median(mut sides: Vec<Side>) -> Side {
    sides.sort_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s));
    let mid = sides.len() / 2;
    sides.swap_remove(mid)
}

fn definition(width: usize, pairs: usize, steps: usize) -> String {
    let count = pairs * (steps + WARMUP);
    format!(
        "\
name: bench-ranks
seed: 1
stages:
  images: {{ kind: synthetic, params: {{ count: {count}, size: 32 }} }}
  views: {{ kind: views, inputs: [images], params: {{ size: 32 }} }}
  batches: {{ kind: batch, inputs: [views], params: {{ batch_size: {pairs} }} }}
  encoder:
    kind: resnet
    inputs: [batches]
    credit: {{ from: train }}
    params: {{ depth: 18, width: {width}, in_channels: 3 }}
  head: {{ kind: projector, inputs: [encoder], params: {{ head: mlp, hidden: 128, out: 64 }} }}
  train: {{ kind: nt_xent, inputs: [head], params: {{ optimizer: lars }} }}
  drain: {{ kind: sink, inputs: [train] }}
"
    )
}

/// Mean step time, images/s and communication time per step over the steps after the warm-up.
fn measure(run: &Path, ranks: usize, threads: usize, pairs: usize) -> Result<Side> {
    let path = run.join("steps.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut step = Vec::new();
    let mut comm = Vec::new();
    for line in text.lines().skip(WARMUP) {
        let v: serde_json::Value = serde_json::from_str(line).context("a steps.jsonl line")?;
        step.push(v["step_seconds"].as_f64().unwrap_or(0.0));
        let s = &v["stage_seconds"];
        comm.push(
            ["comm_gather", "comm_reduce", "comm_batch_norm"]
                .iter()
                .map(|k| s[*k].as_f64().unwrap_or(0.0))
                .sum::<f64>(),
        );
    }
    if step.is_empty() {
        bail!(
            "{} has no steps past the {WARMUP} warm-up steps",
            path.display()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (secs, comm) = (mean(&step), mean(&comm));
    Ok(Side {
        ranks,
        threads_per_rank: threads,
        images_per_s: pairs as f64 / secs,
        ms_per_step: secs * 1e3,
        comm_ms_per_step: comm * 1e3,
        comm_share: comm / secs,
    })
}

/// Run the scaling benchmark for `ranks` ranks.
pub fn ranks(
    json: bool,
    width: usize,
    pairs: usize,
    steps: usize,
    ranks: usize,
    repeats: usize,
) -> Result<String> {
    if ranks < 2 {
        bail!("--ranks takes 2 or more");
    }
    if !pairs.is_multiple_of(ranks) {
        bail!("--pairs {pairs} (the global batch) must split evenly over {ranks} ranks");
    }
    let exe = std::env::current_exe().context("cannot find this program")?;
    let dir = std::env::temp_dir().join(format!("simclr-bench-ranks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let def = dir.join("bench.yaml");
    std::fs::write(&def, definition(width, pairs, steps))
        .with_context(|| format!("cannot write {}", def.display()))?;
    let (mut ones, mut manys, mut efficiencies) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..repeats.max(1) {
        let (one, many) = (dir.join(format!("one-{r}")), dir.join(format!("ranks-{r}")));
        let status = Command::new(&exe)
            .arg("run")
            .arg(&def)
            .arg("--run-dir")
            .arg(&one)
            .arg("--quiet")
            .env("RAYON_NUM_THREADS", ranks.to_string())
            .output()
            .context("cannot run simclr")?;
        if !status.status.success() {
            bail!(
                "the one-process run failed:\n{}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let out = Command::new("mpirun")
            .args(["-n", &ranks.to_string(), "--bind-to", "none"])
            .args(["-x", "RAYON_NUM_THREADS=1"])
            .arg(&exe)
            .arg("run")
            .arg(&def)
            .arg("--run-dir")
            .arg(&many)
            .arg("--quiet")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .output()
            .context("cannot run mpirun (install Open MPI: libopenmpi-dev openmpi-bin)")?;
        if !out.status.success() {
            bail!(
                "the {ranks}-rank run failed (this simclr needs the `mpi` feature):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (a, b) = (
            measure(&one, 1, ranks, pairs)?,
            measure(&many, ranks, 1, pairs)?,
        );
        efficiencies.push(b.images_per_s / a.images_per_s);
        ones.push(a);
        manys.push(b);
    }
    let (one_process, distributed) = (median(ones), median(manys));
    let report = Report {
        width,
        global_batch: pairs,
        steps,
        repeats: repeats.max(1),
        scaling_efficiency: distributed.images_per_s / one_process.images_per_s,
        one_process,
        distributed,
        efficiencies,
    };
    std::fs::remove_dir_all(&dir).ok();
    if json {
        return serde_json::to_string_pretty(&report).context("cannot serialise the report");
    }
    let row = |name: &str, s: &Side| {
        format!(
            "{name:<22} {:>5} {:>8} {:>10.1} {:>9.1} {:>9.1} {:>6.1}%",
            s.ranks,
            s.threads_per_rank,
            s.images_per_s,
            s.ms_per_step,
            s.comm_ms_per_step,
            100.0 * s.comm_share
        )
    };
    Ok(format!(
        "ResNet-18 width {width}, 32x32 synthetic images, global batch {pairs}, {steps} steps after {WARMUP} warm-up\n\
         {:<22} {:>5} {:>8} {:>10} {:>9} {:>9} {:>7}\n{}\n{}\n\
         scaling efficiency ({ranks} ranks x 1 thread vs 1 rank x {ranks} threads), medians of {} alternating runs: {:.2} (each pair: {})",
        "",
        "ranks",
        "threads",
        "images/s",
        "ms/step",
        "comm ms",
        "comm",
        row("one process", &report.one_process),
        row(&format!("{ranks} ranks (mpirun)"), &report.distributed),
        report.repeats,
        report.scaling_efficiency,
        report
            .efficiencies
            .iter()
            .map(|e| format!("{e:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
