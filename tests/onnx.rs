//! ONNX export: every encoder kind, depth, stem and channel count, with and without the head,
//! BatchNorm folded or kept, passes `onnx.checker.check_model(full_check=True)` and matches
//! candle in ONNX Runtime to 1e-4; the CLI's `export`/`embed` agree across backends; a missing
//! ONNX Runtime is an error that says what to install.
//!
//! Needs ONNX Runtime and Python's `onnx` (scripts/setup.sh installs both).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use simclr::model::TrainedModel as Model;
use simclr::model::stage::head::HeadParams;
use simclr::onnx::export::{ExportOptions, InputShape, export_model, to_bytes};
use simclr::onnx::meta::Preprocessing;
use simclr::onnx::runtime::OnnxModel;
use simclr::onnx::verify::{compare, random_inputs};

mod common;
use common::{ok, simclr_env};

/// `python3 scripts/check_onnx.py --json FILES...`: one JSON object per file.
fn python_check(files: &[PathBuf], extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_onnx.py"))
        .arg("--json")
        .args(files)
        .args(extra)
        .output()
        .expect("python3 runs (scripts/setup.sh installs onnx and onnxruntime)");
    assert!(
        out.status.success(),
        "onnx checker failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// Give every BatchNorm γ and β and every bias values far from their initialisation, then
/// run training-mode passes so the running statistics are those of real activations (not 0
/// and 1): folding and inference-mode BatchNorm are exercised as on a trained model.
fn perturb(model: &Model, seed: u64, dims: &[usize]) {
    let groups = std::iter::once(&model.vars).chain(model.head.as_ref().map(|h| &h.vars));
    for (g, vars) in groups.enumerate() {
        let data = vars.data().lock().expect("vars");
        // In name order: the map's own order changes from one process to the next, and with
        // it which values each tensor drew.
        let mut named: Vec<_> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (name, var)) in named.into_iter().enumerate() {
            if var.rank() != 1 || name.contains("running") {
                continue;
            }
            let n = var.dims()[0];
            let r = random_inputs(n, seed * 1000 + (g * 500 + i) as u64);
            let values: Vec<f32> = if name.ends_with("weight") {
                r.iter().map(|v| 1.0 + 0.3 * v).collect()
            } else {
                r.iter().map(|v| 0.2 * v).collect()
            };
            var.set(&Tensor::from_vec(values, n, &Device::Cpu).expect("tensor"))
                .expect("set");
        }
    }
    use candle_core::ModuleT;
    for pass in 0..30 {
        let x = random_inputs(dims.iter().product(), seed * 77 + pass);
        let x = Tensor::from_vec(x, dims, &Device::Cpu).expect("input");
        let h = model.encoder.forward_t(&x, true).expect("forward");
        if let Some(head) = &model.head {
            head.net.forward_t(&h, true).expect("head forward");
        }
    }
}

struct Case {
    name: String,
    kind: &'static str,
    spec: serde_json::Value,
    head: Option<HeadParams>,
    fold: bool,
    channels: usize,
    /// Height and width of the input.
    size: (usize, usize),
}

fn head_params(batch_norm: bool) -> HeadParams {
    serde_json::from_value(serde_json::json!({
        "head": "mlp", "hidden": 24, "out": 12, "batch_norm": batch_norm
    }))
    .expect("head params")
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for depth in [18, 50] {
        for stem in ["cifar", "imagenet"] {
            for channels in [1, 3] {
                for head in [false, true] {
                    for fold in [true, false] {
                        cases.push(Case {
                            name: format!(
                                "resnet{depth}-{stem}-c{channels}-{}-{}",
                                if head { "head" } else { "nohead" },
                                if fold { "folded" } else { "bn" }
                            ),
                            kind: "resnet",
                            spec: serde_json::json!({
                                "depth": depth, "width": 4, "stem": stem, "in_channels": channels
                            }),
                            // ResNet-50's head has BatchNorm (SimCLR v2), ResNet-18's not.
                            head: head.then(|| head_params(depth == 50)),
                            fold,
                            channels,
                            // Odd sizes; the ImageNet stem needs room for its two strides.
                            size: if stem == "cifar" { (17, 17) } else { (33, 33) },
                        });
                    }
                }
            }
        }
    }
    for fold in [true, false] {
        cases.push(Case {
            name: format!("small_cnn-{}", if fold { "folded" } else { "bn" }),
            kind: "small_cnn",
            spec: serde_json::json!({ "width": 4, "in_channels": 3 }),
            head: Some(head_params(true)),
            fold,
            channels: 3,
            size: (15, 15),
        });
    }
    // The other heads, ResNet-34 with the ImageNet stem, and non-square inputs.
    let heads = [
        ("none", serde_json::json!({ "head": "none" })),
        ("linear", serde_json::json!({ "head": "linear", "out": 6 })),
        (
            "mlp3",
            serde_json::json!({ "head": "mlp", "layers": 3, "hidden": 10, "out": 6, "batch_norm": true }),
        ),
    ];
    for (name, head) in heads {
        for fold in [true, false] {
            cases.push(Case {
                name: format!(
                    "resnet34-imagenet-head-{name}-{}",
                    if fold { "folded" } else { "bn" }
                ),
                kind: "resnet",
                spec: serde_json::json!({ "depth": 34, "width": 4, "stem": "imagenet", "in_channels": 3 }),
                head: Some(serde_json::from_value(head.clone()).expect("head params")),
                fold,
                channels: 3,
                size: (32, 45),
            });
        }
    }
    cases.push(Case {
        name: "resnet34-cifar".into(),
        kind: "resnet",
        spec: serde_json::json!({ "depth": 34, "width": 4, "stem": "cifar", "in_channels": 3 }),
        head: None,
        fold: true,
        channels: 3,
        size: (16, 16),
    });
    cases
}

fn exported(case: &Case, seed: u64) -> (Model, Vec<u8>) {
    let arch = simclr::registry::encoders()
        .architecture(case.kind, &case.spec)
        .expect("architecture");
    let model = Model::seeded(arch, case.head.as_ref(), seed, &Device::Cpu).expect("model");
    perturb(&model, seed, &[8, case.channels, case.size.0, case.size.1]);
    let options = ExportOptions {
        fold_batch_norm: case.fold,
        metadata: Preprocessing::identity(case.channels, Some(case.size)).to_metadata(),
        ..ExportOptions::default()
    };
    let proto = export_model(
        &model,
        model.head.is_some(),
        InputShape {
            channels: case.channels,
            size: Some(case.size),
        },
        &options,
    )
    .expect("export");
    (model, to_bytes(&proto))
}

#[test]
fn every_architecture_exports_checks_and_matches_candle_in_onnx_runtime() {
    let dir = common::scratch("onnx", "matrix");
    let mut files = Vec::new();
    let mut worst: f64 = 0.0;
    for (i, case) in cases().iter().enumerate() {
        let (model, bytes) = exported(case, 10 + i as u64);
        let file = dir.join(format!("{}.onnx", case.name));
        std::fs::write(&file, &bytes).expect("write");
        let mut onnx = OnnxModel::load(&file, 2).expect("ONNX Runtime loads the export");
        let expected_outputs: Vec<&str> = if case.head.is_some() {
            vec!["features", "projection"]
        } else {
            vec!["features"]
        };
        assert_eq!(onnx.output_names(), expected_outputs, "{}", case.name);
        let dims = [3, case.channels, case.size.0, case.size.1];
        let x = random_inputs(dims.iter().product(), i as u64);
        for c in compare(&mut onnx, &model, &x, &dims, "random").expect("compare") {
            assert!(c.max_abs <= 1e-4, "{}: {c} — above 1e-4", case.name);
            assert!(c.max_ref > 1e-3, "{}: degenerate output {c}", case.name);
            worst = worst.max(c.max_abs);
            eprintln!("{}: {c}", case.name);
        }
        files.push(file);
    }
    eprintln!(
        "worst |ort - candle| over {} models: {worst:.2e}",
        files.len()
    );
    let infos = python_check(&files, &[]);
    assert_eq!(infos.len(), files.len());
    for (info, case) in infos.iter().zip(cases()) {
        let ops = &info["ops"];
        let bn = ops
            .get("BatchNormalization")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        assert_eq!(bn == 0, case.fold, "{}: {ops}", case.name);
        assert_eq!(info["opset"], 17);
        assert_eq!(
            info["weights_sha256_verified"], true,
            "{}: Python's SHA-256 of the weights equals the metadata's",
            case.name
        );
        assert_eq!(
            info["inputs"]["images"][0], "batch",
            "{}: symbolic batch",
            case.name
        );
        assert_eq!(
            info["inputs"]["images"][1].as_u64(),
            Some(case.channels as u64)
        );
        assert_eq!(
            ops.get("MaxPool").is_some(),
            case.spec["stem"] == "imagenet",
            "{}",
            case.name
        );
    }
}

#[test]
fn one_exported_file_runs_at_batch_sizes_1_7_and_64() {
    let case = Case {
        name: "batches".into(),
        kind: "resnet",
        spec: serde_json::json!({ "depth": 18, "width": 8, "stem": "cifar", "in_channels": 3 }),
        head: Some(head_params(false)),
        fold: true,
        channels: 3,
        size: (16, 16),
    };
    let (model, bytes) = exported(&case, 5);
    let mut onnx = OnnxModel::from_bytes(&bytes, 2).expect("ONNX Runtime loads the export");
    for n in [1, 7, 64] {
        let dims = [n, 3, 16, 16];
        let x = random_inputs(dims.iter().product(), n as u64);
        let results = compare(&mut onnx, &model, &x, &dims, "random").expect("compare");
        assert_eq!(results.len(), 2);
        for c in results {
            assert_eq!(c.batch, n);
            assert!(c.max_abs <= 1e-4, "batch {n}: {c}");
        }
        // Rows do not depend on their batch: the first image alone gives the first row.
        let outputs = onnx.run(&x[..3 * 16 * 16], &[1, 3, 16, 16]).expect("run");
        let all = onnx.run(&x, &dims).expect("run");
        assert_eq!(outputs[0].dims, vec![1, 64]);
        assert_eq!(all[0].dims, vec![n, 64]);
        let d = max_diff(&outputs[0].data, &all[0].data[..64]);
        assert!(d <= 1e-5, "row 0 alone vs in a batch of {n}: {d}");
    }
}

#[test]
fn an_export_that_differs_from_candle_is_caught() {
    // The check can fail: a folded export whose BatchNorm statistics are then changed in
    // candle (so the file no longer describes the model) is far outside 1e-4.
    let case = Case {
        name: "stale".into(),
        kind: "small_cnn",
        spec: serde_json::json!({ "width": 4, "in_channels": 1 }),
        head: None,
        fold: true,
        channels: 1,
        size: (12, 12),
    };
    let (model, bytes) = exported(&case, 8);
    perturb(&model, 99, &[8, 1, 12, 12]);
    let mut onnx = OnnxModel::from_bytes(&bytes, 1).expect("load");
    let dims = [4, 1, 12, 12];
    let x = random_inputs(48 * 12, 1);
    let c = compare(&mut onnx, &model, &x, &dims, "random").expect("compare");
    assert!(c[0].max_abs > 1e-2, "a stale export passed: {}", c[0]);
}

/// A tiny trained run: synthetic images of `size` px with `channels` channels, a policy with
/// a normalisation (so the metadata's mean/std are not the identity), a ResNet-18 of width 4
/// and an MLP head with BatchNorm; 4 steps.
fn train(dir: &Path, channels: usize) -> PathBuf {
    let (mean, std) = if channels == 3 {
        ("[0.5, 0.4, 0.3]", "[0.2, 0.25, 0.3]")
    } else {
        ("[0.3]", "[0.35]")
    };
    let text = format!(
        "\
name: onnx-test
seed: 11
stages:
  images: {{ kind: synthetic, params: {{ count: 32, size: 16, channels: {channels} }} }}
  views:
    kind: views
    inputs: [images]
    params:
      t:
        - random_resized_crop: {{ size: 16, scale: [0.3, 1.0] }}
        - horizontal_flip: {{ p: 0.5 }}
        - normalize: {{ mean: {mean}, std: {std} }}
  batches: {{ kind: batch, inputs: [views], params: {{ batch_size: 8 }} }}
  encoder: {{ kind: resnet, inputs: [batches], credit: {{ from: train }}, params: {{ depth: 18, width: 4, in_channels: {channels} }} }}
  head: {{ kind: projector, inputs: [encoder], params: {{ head: mlp, hidden: 16, out: 8, batch_norm: true }} }}
  train: {{ kind: nt_xent, inputs: [head], params: {{ optimizer: lars, lr: 1.0, warmup_steps: 1 }} }}
  checkpoints: {{ kind: checkpoint, inputs: [train], params: {{ every: 0 }} }}
"
    );
    std::fs::create_dir_all(dir).expect("dir");
    let file = dir.join("def.yaml");
    std::fs::write(&file, text).expect("definition");
    let run = dir.join("run");
    ok(&simclr_env(
        &[
            "run",
            file.to_str().expect("utf-8"),
            "--run-dir",
            run.to_str().expect("utf-8"),
            "--quiet",
        ],
        &[],
    ));
    run
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    simclr::onnx::npy::read_f32(path).expect("npy")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

/// A PNG of `w × h` with a gradient pattern.
fn png(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + seed * 31) % 256) as u8,
            ((y * 11 + seed * 17) % 256) as u8,
            (((x + y) * 5 + seed) % 256) as u8,
        ])
    });
    img.save(path).expect("png");
}

#[test]
fn export_and_embed_through_the_cli_agree_across_backends() {
    let dir = common::scratch("onnx", "cli");
    let run = train(&dir, 3);
    // Export with the head, BatchNorm folded: verified on random and dataset images.
    let model = dir.join("encoder.onnx");
    let out = ok(&simclr_env(
        &["export", s(&run), "--out", s(&model), "--head"],
        &[],
    ));
    assert!(out.contains("verified in ONNX Runtime"), "{out}");
    assert!(out.contains("dataset  batch  16  projection"), "{out}");
    // Unfolded, another opset.
    let unfolded = dir.join("unfolded.onnx");
    ok(&simclr_env(
        &[
            "export",
            s(&run),
            "--out",
            s(&unfolded),
            "--no-fold-bn",
            "--opset",
            "21",
        ],
        &[],
    ));
    let infos = python_check(&[model.clone(), unfolded.clone()], &[]);
    let meta = &infos[0]["metadata"];
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/latest"))
            .map(|name| run.join("checkpoints").join(name.trim()).join("state.json"))
            .and_then(std::fs::read_to_string)
            .expect("state.json"),
    )
    .expect("json");
    assert_eq!(meta["definition_hash"], state["definition_hash"]);
    assert_eq!(meta["training_step"], state["steps"].to_string());
    assert_eq!(meta["mean"], "0.5,0.4,0.3");
    assert_eq!(meta["std"], "0.2,0.25,0.3");
    assert_eq!(meta["input_height"], "16");
    assert_eq!(meta["input_channels"], "3");
    assert_eq!(meta["embedding_size"], "32");
    assert_eq!(meta["projection_size"], "8");
    assert_eq!(meta["batch_norm"], "folded");
    assert_eq!(infos[0]["outputs"]["projection"][1], 8);
    assert_eq!(infos[1]["opset"], 21);
    assert_eq!(infos[1]["ir_version"], 10);
    // 17 convolutions and 3 shortcuts, each with its BatchNorm.
    assert_eq!(infos[1]["ops"]["BatchNormalization"], 20);
    assert_eq!(infos[1]["metadata"]["batch_norm"], "BatchNormalization");

    // An image folder (sizes that need the resize and centre crop), both backends.
    let images = dir.join("images");
    png(&images.join("b/one.png"), 16, 16, 1);
    png(&images.join("a/two.png"), 24, 20, 2);
    png(&images.join("three.png"), 40, 40, 3);
    png(&images.join("a/four.png"), 13, 30, 4);
    let embed = |model: &Path, input: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "embed",
            "--model",
            s(model),
            "--input",
            s(input),
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        ok(&simclr_env(&args, &[]))
    };
    let (e_ort, e_candle) = (dir.join("ort.npy"), dir.join("candle.npy"));
    embed(&model, &images, &e_ort, &["--batch-size", "3"]);
    embed(&run, &images, &e_candle, &[]);
    let (a, b) = (npy(&e_ort), npy(&e_candle));
    assert_eq!(a.0, vec![4, 32]);
    assert_eq!(a.0, b.0);
    assert!(max_diff(&a.1, &b.1) <= 1e-4, "{}", max_diff(&a.1, &b.1));
    let ids = std::fs::read_to_string(dir.join("ort.ids.txt")).expect("ids");
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        ["a/four.png", "a/two.png", "b/one.png", "three.png"]
    );
    // Rows are in input order: the same image alone gives the same row.
    let single = dir.join("single");
    png(&single.join("x.png"), 24, 20, 2);
    embed(&model, &single, &dir.join("single.npy"), &[]);
    assert!(max_diff(&npy(&dir.join("single.npy")).1, &a.1[32..64]) <= 1e-5);

    // examples/serve_onnx.rs (built by `cargo test` beside this test) gives the same h for
    // an image at the input size: its norm is that of `embed`'s row.
    let example = std::env::current_exe()
        .ok()
        .and_then(|t| Some(t.parent()?.parent()?.join("examples/serve_onnx")))
        .filter(|p| p.is_file());
    match example {
        Some(bin) => {
            // Rows of `embed` are in path order: a/four, a/two, b/one, three.
            let order = ["a/four.png", "a/two.png", "b/one.png", "three.png"];
            let mut args = vec![s(&model).to_owned()];
            args.extend(order.iter().map(|f| s(&images.join(f)).to_owned()));
            let out = Command::new(bin)
                .args(&args)
                .output()
                .expect("example runs");
            let text = ok(&out);
            let norms: Vec<f32> = text
                .lines()
                .take(4)
                .map(|l| {
                    l.rsplit("norm ")
                        .next()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or_else(|| panic!("no norm in {l}"))
                })
                .collect();
            for (i, (file, norm)) in order.iter().zip(&norms).enumerate() {
                let row = &a.1[i * 32..(i + 1) * 32];
                let expected = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                // b/one.png is at the input size: the same numbers. The others are scaled
                // and cropped by the same rule, with `image`'s triangle filter in place of
                // the project's resampler: within 1 %.
                let tolerance = if *file == "b/one.png" { 1e-3 } else { 1e-2 };
                assert!(
                    (norm - expected).abs() <= tolerance * expected,
                    "{file}: example {norm} vs embed {expected}"
                );
            }
            assert!(text.contains("cosine similarities:\n  +1.000"), "{text}");
        }
        None => eprintln!(
            "NOTE: examples/serve_onnx not built (cargo test --test onnx skips examples); the full `cargo test` runs it"
        ),
    }

    // Preprocessed .npy input, both backends and Python's onnxruntime.
    let x: Vec<f32> = simclr::onnx::verify::random_inputs(6 * 3 * 16 * 16, 3);
    let xin = dir.join("x.npy");
    simclr::onnx::npy::write_f32(&xin, &[6, 3, 16, 16], &x).expect("npy");
    let (p_ort, p_candle) = (dir.join("p-ort.npy"), dir.join("p-candle.npy"));
    embed(&model, &xin, &p_ort, &["--output", "projection"]);
    embed(&run, &xin, &p_candle, &["--output", "projection"]);
    python_check(
        std::slice::from_ref(&model),
        &[
            "--input",
            s(&xin),
            "--expect",
            s(&p_ort),
            "--output",
            "projection",
            "--tolerance",
            "1e-6",
        ],
    );
    // Embedding a .npy into the folder's output file removes its stale ids.
    embed(&model, &xin, &e_ort, &[]);
    assert!(
        !dir.join("ort.ids.txt").exists(),
        "stale ids left beside a .npy input's rows"
    );
    let (a, b) = (npy(&p_ort), npy(&p_candle));
    assert_eq!(a.0, vec![6, 8]);
    assert!(max_diff(&a.1, &b.1) <= 1e-4);
    let h_ort = dir.join("h-ort.npy");
    embed(&unfolded, &xin, &h_ort, &["--threads", "1"]);
    python_check(
        std::slice::from_ref(&unfolded),
        &[
            "--input",
            s(&xin),
            "--expect",
            s(&h_ort),
            "--tolerance",
            "1e-6",
        ],
    );
    // The unfolded export has no head: asking for z is an error naming the output.
    let out = simclr_env(
        &[
            "embed",
            "--model",
            s(&unfolded),
            "--input",
            s(&xin),
            "--output",
            "projection",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no output `projection`"));
}

#[test]
fn embed_reads_idx_files_for_gray_models() {
    let dir = common::scratch("onnx", "idx");
    let run = train(&dir, 1);
    let model = dir.join("gray.onnx");
    ok(&simclr_env(&["export", s(&run), "--out", s(&model)], &[]));
    // An IDX file of 5 images of 20×20 (resized and cropped to 16), gzip or not.
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 20, 0, 0, 0, 20];
    bytes.extend((0..5 * 400).map(|i| (i * 37 % 251) as u8));
    let idx = dir.join("images-idx3-ubyte");
    std::fs::write(&idx, &bytes).expect("idx");
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    ok(&simclr_env(
        &[
            "embed",
            "--model",
            s(&model),
            "--input",
            s(&idx),
            "--out",
            s(&a),
        ],
        &[],
    ));
    ok(&simclr_env(
        &[
            "embed",
            "--model",
            s(&run),
            "--input",
            s(&idx),
            "--out",
            s(&b),
            "--limit",
            "5",
        ],
        &[],
    ));
    let (a, b) = (npy(&a), npy(&b));
    assert_eq!(a.0, vec![5, 32]);
    assert!(max_diff(&a.1, &b.1) <= 1e-4);
    assert!(
        !dir.join("a.ids.txt").exists(),
        "ids are written for folders only"
    );
    // A gray IDX file into an RGB model is refused with the reason.
    let rgb = train(&dir.join("rgb"), 3);
    let out = simclr_env(
        &[
            "embed",
            "--model",
            s(&rgb),
            "--input",
            s(&idx),
            "--out",
            s(&dir.join("c.npy")),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 channel(s), the model takes 3"), "{err}");
}

#[test]
fn export_failures_are_clear_and_leave_no_file() {
    let dir = common::scratch("onnx", "failures");
    let run = train(&dir, 3);
    // No ONNX Runtime: ORT_DYLIB_PATH pointing nowhere, or nothing to find at all.
    let target = dir.join("x.onnx");
    for env in [
        vec![("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")],
        vec![("PATH", "/nonexistent"), ("ORT_DYLIB_PATH", "")],
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_simclr"));
        cmd.args(["export", s(&run), "--out", s(&target)])
            .current_dir(&dir);
        for (k, v) in &env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = cmd.output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("pip install onnxruntime==1.31.1"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!target.exists());
    }
    // --no-verify needs no ONNX Runtime and writes a valid file.
    let out = simclr_env(
        &["export", s(&run), "--out", s(&target), "--no-verify"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert!(ok(&out).contains("not verified"));
    python_check(std::slice::from_ref(&target), &[]);
    // A verification that fails reports the numbers and writes nothing.
    let strict = dir.join("strict.onnx");
    let out = simclr_env(
        &[
            "export",
            s(&run),
            "--out",
            s(&strict),
            "--tolerance",
            "1e-12",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("verification failed") && err.contains("max |ort - candle|"),
        "{err}"
    );
    assert!(!strict.exists());
    // Bad inputs name the file and the cause.
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 16, 16), }\n";
    let mut f64_npy = b"\x93NUMPY\x01\x00".to_vec();
    f64_npy.extend((header.len() as u16).to_le_bytes());
    f64_npy.extend(header.as_bytes());
    f64_npy.extend(vec![0u8; 8 * 768]);
    let cases: [(&str, &[u8], &str); 3] = [
        ("missing", b"", "no such file or folder"),
        ("f64.npy", &f64_npy, "not float32"),
        (
            "junk.bin",
            b"not an image file",
            "not an image folder, .npy or IDX file",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.join(name);
        if !bytes.is_empty() {
            std::fs::write(&path, bytes).expect("write");
        }
        let out = simclr_env(&["embed", "--model", s(&run), "--input", s(&path)], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(expect) && err.contains(name), "{name}: {err}");
    }
    let out = simclr_env(
        &["export", s(&dir.join("nowhere")), "--out", s(&strict)],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no checkpoint found"));
    let out = simclr_env(
        &["export", s(&run), "--out", s(&strict), "--opset", "9"],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("opset 9 is not supported"));
}

#[test]
fn embed_takes_onnx_models_from_elsewhere_with_npy_inputs() {
    // A model made with Python's onnx helpers: no metadata, one output named `y`.
    let dir = common::scratch("onnx", "foreign");
    let model = dir.join("foreign.onnx");
    let script = format!(
        "import numpy as np, onnx\n\
         from onnx import helper, TensorProto, numpy_helper\n\
         w = numpy_helper.from_array(np.linspace(-1, 1, 108, dtype=np.float32).reshape(4, 3, 3, 3), 'w')\n\
         g = helper.make_graph([helper.make_node('Conv', ['x', 'w'], ['c'], pads=[1, 1, 1, 1]),\n\
             helper.make_node('GlobalAveragePool', ['c'], ['p']), helper.make_node('Flatten', ['p'], ['y'])],\n\
             'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['n', 3, 8, 8])],\n\
             [helper.make_tensor_value_info('y', TensorProto.FLOAT, ['n', 4])], [w])\n\
         m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n\
         m.ir_version = 8\n\
         onnx.save(m, r'{}')\n",
        model.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x: Vec<f32> = simclr::onnx::verify::random_inputs(5 * 3 * 64, 9);
    let xin = dir.join("x.npy");
    simclr::onnx::npy::write_f32(&xin, &[5, 3, 8, 8], &x).expect("npy");
    let e = dir.join("e.npy");
    ok(&simclr_env(
        &[
            "embed",
            "--model",
            s(&model),
            "--input",
            s(&xin),
            "--out",
            s(&e),
        ],
        &[],
    ));
    assert_eq!(npy(&e).0, vec![5, 4]);
    // Its only output, checked against Python's onnxruntime.
    python_check(
        std::slice::from_ref(&model),
        &["--input", s(&xin), "--expect", s(&e), "--tolerance", "1e-6"],
    );
    // Images need the preprocessing a foreign model does not describe: a clear error.
    let images = dir.join("images");
    png(&images.join("a.png"), 8, 8, 1);
    let out = simclr_env(&["embed", "--model", s(&model), "--input", s(&images)], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("only preprocessed .npy inputs"), "{err}");
}
