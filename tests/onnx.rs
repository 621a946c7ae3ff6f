//! ONNX export: every encoder kind, depth, stem and channel count, with and without the head,
//! BatchNorm folded or kept, passes `onnx.checker.check_model(full_check=True)` and matches
//! candle in ONNX Runtime to 1e-4; the CLI's `export`/`embed` agree across backends; a missing
//! ONNX Runtime is an error that says what to install.
//!
//! Needs ONNX Runtime and Python's `onnx` (scripts/setup.sh installs both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use simclr::model::stage::head::HeadParams;
use simclr::onnx::export::{ExportOptions, InputShape, export, to_bytes};
use simclr::onnx::meta::Preprocessing;
use simclr::onnx::model::Model;
use simclr::onnx::runtime::OnnxModel;
use simclr::onnx::verify::{compare, random_inputs};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("onnx")
        .join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn simclr(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simclr"));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
        for (i, (name, var)) in data.iter().enumerate() {
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
    size: usize,
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
                            size: if stem == "cifar" { 17 } else { 33 },
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
            size: 15,
        });
    }
    cases.push(Case {
        name: "resnet34-cifar".into(),
        kind: "resnet",
        spec: serde_json::json!({ "depth": 34, "width": 4, "stem": "cifar", "in_channels": 3 }),
        head: None,
        fold: true,
        channels: 3,
        size: 16,
    });
    cases
}

fn exported(case: &Case, seed: u64) -> (Model, Vec<u8>) {
    let model = Model::seeded(
        case.kind,
        case.spec.clone(),
        case.head.as_ref(),
        seed,
        &Device::Cpu,
    )
    .expect("model");
    perturb(&model, seed, &[8, case.channels, case.size, case.size]);
    let (enc, head) = model.tensors().expect("tensors");
    let options = ExportOptions {
        fold_batch_norm: case.fold,
        metadata: Preprocessing::identity(case.channels, Some((case.size, case.size)))
            .to_metadata(),
        ..ExportOptions::default()
    };
    let proto = export(
        &model.arch,
        &enc,
        model.head.as_ref().zip(head.as_ref()).map(|(h, t)| (h.kind, t)),
        InputShape {
            channels: case.channels,
            size: Some((case.size, case.size)),
        },
        &options,
    )
    .expect("export");
    (model, to_bytes(&proto))
}

#[test]
fn every_architecture_exports_checks_and_matches_candle_in_onnx_runtime() {
    let dir = scratch("matrix");
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
        let dims = [3, case.channels, case.size, case.size];
        let x = random_inputs(dims.iter().product(), i as u64);
        for c in compare(&mut onnx, &model, &x, &dims, "random").expect("compare") {
            assert!(
                c.max_abs <= 1e-4,
                "{}: {c} — above 1e-4",
                case.name
            );
            assert!(c.max_ref > 1e-3, "{}: degenerate output {c}", case.name);
            worst = worst.max(c.max_abs);
            eprintln!("{}: {c}", case.name);
        }
        files.push(file);
    }
    eprintln!("worst |ort - candle| over {} models: {worst:.2e}", files.len());
    let infos = python_check(&files, &[]);
    assert_eq!(infos.len(), files.len());
    for (info, case) in infos.iter().zip(cases()) {
        let ops = &info["ops"];
        let bn = ops.get("BatchNormalization").and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(bn == 0, case.fold, "{}: {ops}", case.name);
        assert_eq!(info["opset"], 17);
        assert_eq!(info["inputs"]["images"][0], "batch", "{}: symbolic batch", case.name);
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
        size: 16,
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
        let d = outputs[0]
            .data
            .iter()
            .zip(&all[0].data[..64])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
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
        size: 12,
    };
    let (model, bytes) = exported(&case, 8);
    perturb(&model, 99, &[8, 1, 12, 12]);
    let mut onnx = OnnxModel::from_bytes(&bytes, 1).expect("load");
    let dims = [4, 1, 12, 12];
    let x = random_inputs(48 * 12, 1);
    let c = compare(&mut onnx, &model, &x, &dims, "random").expect("compare");
    assert!(c[0].max_abs > 1e-2, "a stale export passed: {}", c[0]);
}
