//! `simclr bench augment`: pairs per second of the `views` stage's work on four suites,
//! with a per-transform cost breakdown, against torchvision's figures on this machine. Suite
//! (d) reads suite (c)'s photos packed into a WebDataset shard (`simclr data pack`'s
//! defaults: longer side 256, JPEG quality 90) through the `webdataset` source's reader.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use simclr::augment::views::make_pair;
use simclr::augment::{Img, Policy};
use simclr::core::rng::{Rng, stream};
use simclr::core::{Image, SampleId};
use simclr::source::common::{Dataset, ItemError, Sample};
use simclr::source::pack::{Format, PackOptions, pack};
use simclr::source::webdataset::{Shards, counts, read_table, shard_paths};

/// torchvision (PIL path, DataLoader with 2 workers) on this 2-core machine, pairs/s, as
/// measured for issue #3; `benches/reference/augment_torchvision.py` re-measures it.
const TORCHVISION: [(&str, f64); 3] = [("a", 2420.0), ("b", 1238.0), ("c", 110.0)];

struct Suite {
    key: &'static str,
    description: &'static str,
    policy: Policy,
    /// Either decoded images, or encoded JPEGs decoded per pair (suite c).
    inputs: Inputs,
}

enum Inputs {
    Decoded(Vec<Image>),
    Jpeg(Vec<Arc<[u8]>>),
    /// Samples of packed shards, read and decoded per pair (suite d).
    Shards(Arc<Shards>),
}

/// Suite (c)'s JPEGs as a dataset, for packing.
struct JpegList(Vec<Arc<[u8]>>);

impl Dataset for JpegList {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn get(&self, index: u64) -> std::result::Result<Sample, ItemError> {
        decode_sample(&self.0[index as usize]).map_err(|e| ItemError {
            item: format!("photo {index}"),
            cause: format!("{e:#}"),
        })
    }
}

/// Where the bench writes the photos and their packed shard (and the packed JPEGs as files,
/// for the torchvision reference): a fresh folder under the system's temporary folder.
fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("simclr-bench-augment-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Pack `jpegs` as `simclr data pack` does by default (longer side ≤ 256, JPEG q90) into
/// `dir/shards`; the packed JPEGs are also written to `dir/packed` (for the reference).
fn packed(jpegs: &[Arc<[u8]>], dir: &Path) -> Result<Arc<Shards>> {
    let out = dir.join("shards");
    let options = PackOptions {
        format: Format::Jpg,
        ..PackOptions::default()
    };
    pack(
        &JpegList(jpegs.to_vec()),
        "bench photos",
        Vec::new(),
        &out,
        &options,
        &|_| {},
    )
    .context("cannot pack the photos")?;
    let paths = shard_paths(&out.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (counts, _) = counts(&paths).context("cannot read the packed shard")?;
    let files = dir.join("packed");
    std::fs::create_dir_all(&files)?;
    for path in &paths {
        let table = read_table(path)?;
        let bytes = std::fs::read(path)?;
        for m in &table.members {
            if let Some((name, off, len)) = &m.image {
                std::fs::write(
                    files.join(name),
                    &bytes[*off as usize..(*off + *len) as usize],
                )?;
            }
        }
    }
    Ok(Arc::new(Shards::new(paths, &counts, 3, false, 4)))
}

/// A decoded sample as the `images` message item `index` (unlabelled).
fn image_of(s: Sample, index: u64) -> Image {
    Image {
        id: SampleId { epoch: 0, index },
        label: None,
        width: s.width,
        height: s.height,
        channels: s.channels,
        pixels: s.pixels,
    }
}

/// Pair `i`'s input image; the time spent reading and decoding it (zero for decoded inputs).
fn input(inputs: &Inputs, i: u64) -> Result<(Image, Duration)> {
    let t = Instant::now();
    let image = match inputs {
        Inputs::Decoded(v) => {
            let mut img = v[(i % v.len() as u64) as usize].clone();
            img.id.index = i;
            return Ok((img, Duration::ZERO));
        }
        Inputs::Jpeg(v) => image_of(decode_sample(&v[(i % v.len() as u64) as usize])?, i),
        Inputs::Shards(s) => image_of(s.get(i % s.len()).map_err(|e| anyhow::anyhow!("{e}"))?, i),
    };
    Ok((image, t.elapsed()))
}

fn policy(yaml: &str) -> Result<Policy> {
    let node = simclr::config::yaml::parse(yaml).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Policy::parse(&node, "bench").map_err(|e| anyhow::anyhow!("{}: {}", e.path, e.message))
}

fn synthetic(size: u32, channels: u8, n: u64) -> Vec<Image> {
    let data = simclr::source::synthetic::Synthetic {
        seed: 1,
        count: n,
        size,
        classes: 10,
        channels,
    };
    (0..n)
        .map(|i| {
            let (pixels, label) = data.render(i);
            Image {
                id: SampleId { epoch: 0, index: i },
                label: Some(label),
                width: size,
                height: size,
                channels,
                pixels: pixels.into(),
            }
        })
        .collect()
}

/// Photo-sized test images: smooth gradients, shapes and noise, encoded as JPEG (quality 90).
fn photos(n: u64) -> Result<Vec<Arc<[u8]>>> {
    (0..n)
        .map(|i| {
            let mut rng = Rng::from_key(&[i, 0xC0FFEE]);
            let (a, b) = (
                rng.uniform(0.0, std::f64::consts::TAU),
                rng.uniform(0.02, 0.06),
            );
            let (cx, cy, r) = (
                rng.uniform(100.0, 400.0),
                rng.uniform(80.0, 300.0),
                rng.uniform(40.0, 120.0),
            );
            let img = image::RgbImage::from_fn(500, 375, |x, y| {
                let (xf, yf) = (f64::from(x), f64::from(y));
                let inside = (xf - cx).hypot(yf - cy) < r;
                let noise = (rng.next_f64() - 0.5) * 24.0;
                let base = [
                    128.0 + 100.0 * (xf * b + a).sin(),
                    128.0 + 90.0 * (yf * b * 1.3 + a).cos(),
                    if inside { 220.0 } else { 60.0 + 0.3 * yf },
                ];
                image::Rgb(base.map(|v| (v + noise).clamp(0.0, 255.0) as u8))
            });
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut Cursor::new(&mut bytes), 90)
                .encode_image(&img)
                .context("cannot encode a test JPEG")?;
            Ok(Arc::from(bytes))
        })
        .collect()
}

fn jpegs_from(dir: &Path) -> Result<Vec<Arc<[u8]>>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    files.truncate(256);
    if files.is_empty() {
        bail!("no .jpg/.jpeg files in {}", dir.display());
    }
    files
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(Arc::from)
                .with_context(|| format!("cannot read {}", p.display()))
        })
        .collect()
}

/// The `image_folder` source's decode (with its truncation check) to RGB: what a run does.
fn decode_sample(bytes: &[u8]) -> Result<Sample> {
    simclr::source::image_folder::decode_sample(bytes, 3, None).context("cannot decode a JPEG")
}

/// The photos of suite (c): JPEGs from `images`, else generated ones (written to
/// `dir/photos` so the reference decodes the same files).
fn photo_inputs(images: Option<&Path>, dir: &Path) -> Result<Vec<Arc<[u8]>>> {
    if let Some(d) = images {
        return jpegs_from(d);
    }
    let jpegs = photos(24)?;
    let folder = dir.join("photos");
    std::fs::create_dir_all(&folder)?;
    for (i, j) in jpegs.iter().enumerate() {
        std::fs::write(folder.join(format!("{i:04}.jpg")), j)?;
    }
    Ok(jpegs)
}

const PHOTO_POLICY: &str = "[{random_resized_crop: {size: 224}}, horizontal_flip, {random_apply: {p: 0.8, transforms: [{color_jitter: {brightness: 0.8, contrast: 0.8, saturation: 0.8, hue: 0.2}}]}}, {random_grayscale: {p: 0.2}}, {random_apply: {p: 0.5, transforms: [{gaussian_blur: {kernel_size: 23, sigma: [0.1, 2.0]}}]}}, {normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}]";

fn suites(jpegs: Vec<Arc<[u8]>>, shards: Arc<Shards>) -> Result<Vec<Suite>> {
    Ok(vec![
        Suite {
            key: "a",
            description: "28x28 gray: crop(28, 0.08-1), flip, jitter(0.4, 0.4) p0.8",
            policy: policy(
                "[{random_resized_crop: {size: 28}}, horizontal_flip, {random_apply: {p: 0.8, transforms: [{color_jitter: {brightness: 0.4, contrast: 0.4}}]}}]",
            )?,
            inputs: Inputs::Decoded(synthetic(28, 1, 512)),
        },
        Suite {
            key: "b",
            description: "32x32 RGB: crop(32), flip, jitter(.4,.4,.4,.1) p0.8, gray 0.2, normalize",
            policy: policy(
                "[{random_resized_crop: {size: 32}}, horizontal_flip, {random_apply: {p: 0.8, transforms: [{color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1}}]}}, {random_grayscale: {p: 0.2}}, {normalize: {mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.243, 0.261]}}]",
            )?,
            inputs: Inputs::Decoded(synthetic(32, 3, 512)),
        },
        Suite {
            key: "c",
            description: "JPEG ~500x375 -> decode, crop(224), flip, jitter(.8,.8,.8,.2) p0.8, gray 0.2, blur(23) p0.5, normalize",
            policy: policy(PHOTO_POLICY)?,
            inputs: Inputs::Jpeg(jpegs),
        },
        Suite {
            key: "d",
            description: "(c)'s photos packed (data pack: longer side 256, q90) -> shard read + decode, then (c)'s policy",
            policy: policy(PHOTO_POLICY)?,
            inputs: Inputs::Shards(shards),
        },
    ])
}

fn one_pair(suite: &Suite, i: u64) -> Result<()> {
    let (image, _) = input(&suite.inputs, i)?;
    make_pair(&image, &suite.policy, &suite.policy, 7).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Pairs per second on `threads` threads for about `seconds`.
fn throughput(suite: &Suite, threads: usize, seconds: f64) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("thread pool")?;
    // Big photos are ~100x the work of small images: smaller chunks keep short runs short.
    let chunk = match suite.inputs {
        Inputs::Decoded(_) => 64u64,
        Inputs::Jpeg(_) | Inputs::Shards(_) => 8,
    };
    // Warm-up (allocator, resizer tables).
    pool.install(|| {
        (0..chunk)
            .into_par_iter()
            .try_for_each(|i| one_pair(suite, i))
    })?;
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        pool.install(|| {
            (done..done + chunk)
                .into_par_iter()
                .try_for_each(|i| one_pair(suite, i))
        })?;
        done += chunk;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Mean microseconds per view of each top-level transform (and of decoding), on one thread.
fn breakdown(suite: &Suite, pairs: u64) -> Result<Vec<(String, f64)>> {
    let mut timings = vec![Duration::ZERO; suite.policy.ops().len()];
    let mut decode_time = Duration::ZERO;
    for i in 0..pairs {
        let (image, took) = input(&suite.inputs, i)?;
        decode_time += took;
        for which in [stream::VIEW_T, stream::VIEW_T_PRIME] {
            let mut img = Img::from_image(&image);
            let mut rng = Rng::for_sample(7, 0, i, which);
            suite
                .policy
                .run_timed(&mut img, &mut rng, Some(&mut timings))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let t = Instant::now();
            std::hint::black_box(img.to_f32());
            if let Some(last) = timings.last_mut() {
                *last += t.elapsed();
            }
        }
    }
    let views = (2 * pairs) as f64;
    let mut rows = Vec::new();
    if decode_time > Duration::ZERO {
        // Decoding happens once per pair; report it per view like the rest.
        rows.push((
            if matches!(suite.inputs, Inputs::Shards(_)) {
                "shard read + jpeg decode".to_owned()
            } else {
                "jpeg decode".to_owned()
            },
            decode_time.as_secs_f64() * 1e6 / views,
        ));
    }
    for (op, t) in suite.policy.ops().iter().zip(&timings) {
        rows.push((op.name().to_owned(), t.as_secs_f64() * 1e6 / views));
    }
    Ok(rows)
}

/// Run `benches/reference/augment_torchvision.py` with `python` and read its pairs/s.
fn measure_torchvision(
    python: &str,
    images: &Path,
    packed: &Path,
    seconds: f64,
) -> Result<Vec<(String, f64)>> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/augment_torchvision.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script).arg("--seconds").arg(seconds.to_string());
    cmd.arg("--images").arg(images).arg("--packed").arg(packed);
    let out = cmd.output().with_context(|| format!("cannot run `{python}` (the torchvision reference needs Python with torch and torchvision)"))?;
    if !out.status.success() {
        bail!(
            "the torchvision reference failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect();
    if !["a", "b", "c", "c_pil", "d", "d_pil"]
        .iter()
        .all(|k| rates.iter().any(|(r, _)| r == k))
    {
        bail!("unexpected output from the torchvision reference:\n{text}");
    }
    Ok(rates)
}

/// The median of `values` (the mean of the middle two for an even count; NaN for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The smallest and largest of `values`.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Run every suite and print a table (or JSON). With `reference` (a Python interpreter with
/// torch and torchvision), torchvision is measured in the same run on the same files (and its
/// PIL-blur variant, `ImageFilter.GaussianBlur` as lightly blurs, for the photo suites);
/// otherwise its figures quoted above are used. With `repeats` above 1 the reference and the
/// suites are measured that many times, alternated, and the table shows medians: of pairs/s,
/// and of each repeat's ratio (a ratio of two figures measured a minute apart on a shared
/// machine), with the range of the ratios below it.
pub fn augment(
    json: bool,
    images: Option<&Path>,
    seconds: f64,
    threads: usize,
    reference: Option<&str>,
    repeats: usize,
) -> Result<String> {
    if repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let dir = scratch_dir()?;
    let jpegs = photo_inputs(images, &dir)?;
    let shards = packed(&jpegs, &dir)?;
    let photo_dir = images.map_or_else(|| dir.join("photos"), Path::to_owned);
    let suites = suites(jpegs, shards)?;
    // Each repeat: the reference (if any), then every suite.
    let mut measured: Vec<Vec<(String, f64)>> = Vec::new();
    let mut each: Vec<Vec<f64>> = vec![Vec::new(); suites.len()];
    for _ in 0..repeats {
        if let Some(python) = reference {
            measured.push(measure_torchvision(
                python,
                &photo_dir,
                &dir.join("packed"),
                seconds,
            )?);
        }
        for (suite, rates) in suites.iter().zip(&mut each) {
            rates.push(throughput(suite, threads, seconds)?);
        }
    }
    let quoted = |key: &str| {
        TORCHVISION
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    // torchvision's figure for `key` in each repeat.
    let torchvision = |key: &str| -> Vec<f64> {
        if measured.is_empty() {
            return vec![quoted(key); repeats];
        }
        measured
            .iter()
            .map(|rates| {
                rates
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or(f64::NAN, |(_, v)| *v)
            })
            .collect()
    };
    let ratios = |ours: &[f64], theirs: &[f64]| -> Vec<f64> {
        ours.iter().zip(theirs).map(|(a, b)| a / b).collect()
    };
    let mut out = String::new();
    let mut report = serde_json::Map::new();
    if !json {
        let how = if repeats > 1 {
            format!(", medians of {repeats} alternated repeats")
        } else {
            String::new()
        };
        out.push_str(&format!("augmentation throughput, {threads} threads, ~{seconds} s per suite{how} (pairs = two views)\n\n"));
        let source = if measured.is_empty() {
            "torchvision*"
        } else {
            "torchvision now"
        };
        out.push_str(&format!(
            "{:<5} {:>10} {:>15} {:>7} {:>14} {:>7}  {}\n",
            "suite", "pairs/s", source, "ratio", "PIL-blur tv", "ratio", "what"
        ));
    }
    let mut breakdowns = Vec::new();
    let mut spreads = Vec::new();
    for (suite, rates) in suites.iter().zip(&each) {
        let rate = median(rates);
        let tv = torchvision(suite.key);
        let pil = torchvision(&format!("{}_pil", suite.key));
        let (ratio_each, pil_each) = (ratios(rates, &tv), ratios(rates, &pil));
        let (ratio, ratio_pil) = (median(&ratio_each), median(&pil_each));
        // About a third of the measuring time again for the breakdown.
        let pairs = match suite.inputs {
            Inputs::Decoded(_) => ((seconds * 700.0) as u64).clamp(50, 2000),
            Inputs::Jpeg(_) | Inputs::Shards(_) => ((seconds * 20.0) as u64).clamp(4, 60),
        };
        let costs = breakdown(suite, pairs)?;
        if json {
            let costs_json: serde_json::Map<String, serde_json::Value> = costs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect();
            report.insert(
                suite.key.to_owned(),
                serde_json::json!({
                    "description": suite.description,
                    "pairs_per_s": rate,
                    "torchvision_pairs_per_s": median(&tv),
                    "torchvision_pil_blur_pairs_per_s": median(&pil),
                    "torchvision_measured": !measured.is_empty(),
                    "ratio": ratio,
                    "ratio_pil_blur": ratio_pil,
                    "repeats": repeats,
                    "pairs_per_s_each": rates,
                    "ratio_each": ratio_each,
                    "ratio_pil_blur_each": pil_each,
                    "threads": threads,
                    "us_per_view": costs_json,
                }),
            );
        } else {
            let cell = |v: f64, width: usize, ratio: bool| {
                let text = match (v.is_finite(), ratio) {
                    (false, _) => "-".to_owned(),
                    (true, true) => format!("{v:.1}x"),
                    (true, false) => format!("{v:.0}"),
                };
                format!("{text:>width$}")
            };
            out.push_str(&format!(
                "{:<5} {:>10.0} {} {} {} {}  {}\n",
                suite.key,
                rate,
                cell(median(&tv), 15, false),
                cell(ratio, 7, true),
                cell(median(&pil), 14, false),
                cell(ratio_pil, 7, true),
                suite.description
            ));
            let (lo, hi) = range(&ratio_each);
            let mut spread = format!("{} {lo:.1}-{hi:.1}x", suite.key);
            if pil_each.iter().all(|r| r.is_finite()) {
                let (lo, hi) = range(&pil_each);
                spread.push_str(&format!(" (PIL-blur {lo:.1}-{hi:.1}x)"));
            }
            if ratio_each.iter().all(|r| r.is_finite()) {
                spreads.push(spread);
            }
        }
        breakdowns.push((suite.key, costs));
    }
    std::fs::remove_dir_all(&dir).ok();
    let rates_of = |key: &str| {
        suites
            .iter()
            .zip(&each)
            .find(|(s, _)| s.key == key)
            .map_or_else(Vec::new, |(_, r)| r.clone())
    };
    let gain_each = ratios(&rates_of("d"), &rates_of("c"));
    let packed_gain = median(&gain_each);
    if json {
        report.insert("d_over_c".into(), serde_json::json!(packed_gain));
        report.insert("d_over_c_each".into(), serde_json::json!(gain_each));
        return Ok(serde_json::to_string_pretty(&serde_json::Value::Object(
            report,
        ))?);
    }
    if repeats > 1 {
        let (lo, hi) = range(&gain_each);
        spreads.push(format!("(d)/(c) {lo:.2}-{hi:.2}x"));
        out.push_str(&format!(
            "\nratios in each of the {repeats} repeats, lowest-highest: {}\n",
            spreads.join(", ")
        ));
    }
    out.push_str(&format!(
        "\npacked shards against the original JPEGs, same policy: (d) / (c) = {packed_gain:.2}x\n"
    ));
    out.push_str(
        "\nper-transform cost, one thread, microseconds per view (share of the view's time):\n",
    );
    for (key, costs) in breakdowns {
        let total: f64 = costs.iter().map(|(_, v)| v).sum();
        let parts: Vec<String> = costs
            .iter()
            .map(|(k, v)| format!("{k} {v:.1} ({:.0}%)", 100.0 * v / total))
            .collect();
        out.push_str(&format!("{key}: {}\n", parts.join(", ")));
    }
    out.push_str("\n(the last transform's time includes the final float conversion; torchvision: PIL path, DataLoader with 2 workers, on the same files, benches/reference/augment_torchvision.py; PIL-blur: the same with PIL's ImageFilter.GaussianBlur instead of torchvision's GaussianBlur(23); * = figures quoted from an earlier run on this machine, `--reference python3` measures it in this run)\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{median, range};

    #[test]
    fn medians_and_ranges_of_repeats() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        assert_eq!(range(&[3.0, 1.0, 2.0]), (1.0, 3.0));
    }
}
