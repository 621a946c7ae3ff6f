//! What a hostile or careless user can hand the commands (issue 14): output paths that are not
//! regular files, definitions whose name is a path, checks given values that would switch them
//! off. Each case failed before its fix.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use common::{ok, scratch, simclr};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A checkpoint of a tiny run (synthetic data, a ResNet-18 of width 4, 2 steps).
fn tiny_run(dir: &Path) -> PathBuf {
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        "\
name: hostile
seed: 3
stages:
  images: { kind: synthetic, params: { count: 16, size: 16, channels: 1 } }
  views:
    kind: views
    inputs: [images]
    params: { t: [{ random_resized_crop: { size: 16 } }] }
  batches: { kind: batch, inputs: [views], params: { batch_size: 8 } }
  encoder: { kind: resnet, inputs: [batches], credit: { from: train }, params: { depth: 18, width: 4, in_channels: 1 } }
  head: { kind: projector, inputs: [encoder], params: { head: mlp, out: 8 } }
  train: { kind: nt_xent, inputs: [head], params: { optimizer: lars, lr: 0.5 } }
  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 0 } }
",
    )
    .expect("definition");
    let run = dir.join("run");
    ok(&simclr(&[
        "run",
        file.to_str().expect("utf-8"),
        "--run-dir",
        run.to_str().expect("utf-8"),
        "--quiet",
    ]));
    run
}

fn is_char_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// `export --out` a device writes to the device (and reports its failure) instead of renaming
/// a temporary file over the device node; through a symbolic link, the file it points to is
/// replaced and the link stays; a folder is refused.
#[test]
fn export_writes_through_devices_and_links_and_refuses_folders() {
    let dir = scratch("hostile", "export-targets");
    let run = tiny_run(&dir);
    let run = run.to_str().expect("utf-8");
    let export = |out: &str| simclr(&["export", run, "--no-verify", "--out", out]);

    // Device nodes of our own (null and full, made with mknod: root only, as CI runs), so a
    // regression replaces those and not the system's.
    let null = dir.join("null");
    let full = dir.join("full");
    let made = [(&null, "3"), (&full, "7")].iter().all(|(path, minor)| {
        std::process::Command::new("mknod")
            .args(["-m", "666", path.to_str().expect("utf-8"), "c", "1", minor])
            .status()
            .is_ok_and(|s| s.success())
    });
    if made {
        ok(&export(null.to_str().expect("utf-8")));
        assert!(
            is_char_device(&null),
            "the null device was replaced by a file"
        );
        let out = export(full.to_str().expect("utf-8"));
        assert!(
            !out.status.success(),
            "a write to the full device succeeded"
        );
        assert!(
            text(&out.stderr).contains("No space left on device"),
            "{}",
            text(&out.stderr)
        );
        assert!(
            is_char_device(&full),
            "the full device was replaced by a file"
        );
    } else {
        eprintln!("not root: the device cases are skipped (CI runs them)");
    }

    let real = dir.join("real.onnx");
    std::fs::write(&real, b"old").expect("file");
    let link = dir.join("link.onnx");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    ok(&export(link.to_str().expect("utf-8")));
    assert!(
        std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
        "the link was replaced by a file"
    );
    let written = std::fs::read(&real).expect("target");
    assert!(written.len() > 1000, "the link's target was not written");

    let folder = dir.join("a-folder");
    std::fs::create_dir_all(&folder).expect("folder");
    let out = export(folder.to_str().expect("utf-8"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is a folder"),
        "{}",
        text(&out.stderr)
    );
    assert!(folder.is_dir());
}

/// A definition's `name` is one path component: `runs/<name>` must not leave `runs/`.
#[test]
fn a_name_that_is_a_path_is_refused_with_its_location() {
    let dir = scratch("hostile", "name-path");
    for name in ["../escape", "/tmp/elsewhere", "a/b", "..", "back\\\\slash"] {
        let file = dir.join("def.yaml");
        std::fs::write(
            &file,
            format!(
                "name: \"{name}\"\nstages:\n  images: {{ kind: synthetic, params: {{ count: 4, size: 8 }} }}\n  drain: {{ kind: sink, inputs: [images] }}\n"
            ),
        )
        .expect("definition");
        let out = simclr(&["validate", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("is a name, not a path"), "{name}: {err}");
        assert!(err.contains("def.yaml:1:7"), "{name}: located: {err}");
    }
}

/// Values that would switch a check off are refused: a NaN tolerance passed every comparison,
/// a batch size of 0 was accepted.
#[test]
fn checks_cannot_be_switched_off_by_their_parameters() {
    let dir = scratch("hostile", "switched-off");
    let run = tiny_run(&dir);
    let run = run.to_str().expect("utf-8");
    let out_file = dir.join("model.onnx");
    let out_file = out_file.to_str().expect("utf-8");
    for bad in ["NaN", "inf", "-1"] {
        let flag = format!("--tolerance={bad}");
        let out = simclr(&["export", run, &flag, "--out", out_file]);
        assert_eq!(out.status.code(), Some(2), "--tolerance {bad}");
        assert!(
            text(&out.stderr).contains("--tolerance"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(!Path::new(out_file).exists(), "nothing written");
    // The library refuses it too, for programs that call it directly.
    let settings = simclr::onnx::exporter::ExportSettings {
        head: false,
        opset: 17,
        fold_batch_norm: true,
        verify: Some(simclr::onnx::exporter::VerifySettings {
            tolerance: f64::NAN,
            images: 0,
        }),
    };
    let err = simclr::onnx::exporter::export_checkpoint(
        Path::new(run),
        &simclr::registry::user(),
        &simclr::registry::encoders(),
        &settings,
    )
    .expect_err("a NaN tolerance");
    assert!(err.to_string().contains("tolerance"), "{err}");
    for command in [
        vec!["embed", "--model", run, "--input", "/dev/null"],
        vec!["eval", "knn", run],
    ] {
        let mut args = command.clone();
        args.extend(["--batch-size", "0"]);
        let out = simclr(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("must be at least 1"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// `--set` overrides reach the run folder: its `definition.yaml` and the checkpoint's copy are
/// the definition that ran (evaluation and export read those), and `--resume` compares the
/// definition as it would run now — overrides included — with the one that trained.
#[test]
fn overrides_are_recorded_and_compared_on_resume() {
    let dir = scratch("hostile", "overrides");
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        "\
name: overrides # a comment the resolved copy does not keep
seed: 3
stages:
  images: { kind: synthetic, params: { count: 16, size: 16, channels: 1 } }
  views: { kind: views, inputs: [images], params: { t: [{ random_resized_crop: { size: 16 } }] } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 8 } }
  encoder: { kind: resnet, inputs: [batches], credit: { from: train }, params: { depth: 18, width: 4, in_channels: 1 } }
  head: { kind: projector, inputs: [encoder], params: { head: mlp, out: 8 } }
  train: { kind: nt_xent, inputs: [head], params: { optimizer: lars, lr: 0.5 } }
  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 1 } }
",
    )
    .expect("definition");
    let run = dir.join("run");
    let (file, run) = (file.to_str().expect("utf-8"), run.to_str().expect("utf-8"));
    let sets = ["--set", "stages.images.params.count=24", "--set", "seed=9"];
    let mut args = vec!["run", file, "--run-dir", run, "--quiet", "--max-steps", "1"];
    args.extend(sets);
    ok(&simclr(&args));
    let latest =
        std::fs::read_to_string(Path::new(run).join("checkpoints/latest")).expect("latest");
    let checkpoint = Path::new(run).join("checkpoints").join(latest.trim());
    for copy in [
        Path::new(run).join("definition.yaml"),
        checkpoint.join("definition.yaml"),
    ] {
        let text = std::fs::read_to_string(&copy).expect("copy");
        let tree = simclr::config::yaml::parse(&text).expect("the copy parses");
        let count = tree
            .get("stages")
            .and_then(|s| s.get("images"))
            .and_then(|s| s.get("params"))
            .and_then(|p| p.get("count"));
        assert!(
            count.is_some_and(|c| matches!(
                c.kind,
                simclr::core::ValueKind::Int(24) | simclr::core::ValueKind::UInt(24)
            )),
            "{}: {text}",
            copy.display()
        );
        assert!(
            text.contains("--set seed=9"),
            "says what was overridden: {text}"
        );
        // And it is a definition that validates as it stands.
        ok(&simclr(&["validate", copy.to_str().expect("utf-8")]));
    }
    let state = std::fs::read_to_string(checkpoint.join("state.json")).expect("state");
    assert!(state.contains("\"seed\": 9"), "{state}");

    // Resuming with the same overrides: the same definition, no warning.
    let mut same = vec!["run", file, "--resume", run, "--quiet", "--max-steps", "2"];
    same.extend(sets);
    let out = simclr(&same);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("differs"),
        "{}",
        text(&out.stderr)
    );
    // Without them, the run would train another definition: say so.
    let out = simclr(&["run", file, "--resume", run, "--quiet", "--max-steps", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("differs from the definition the checkpoint was trained with"),
        "{}",
        text(&out.stderr)
    );
}

/// Run `simclr ARGS`; a failure if it is still running after `secs`.
fn simclr_within(args: &[&str], secs: u64) -> std::process::Output {
    common::simclr_within(args, std::time::Duration::from_secs(secs))
        .unwrap_or_else(|| panic!("`simclr {}` still running after {secs} s", args.join(" ")))
}

fn validate_text(dir: &Path, definition: &str) -> (Option<i32>, String) {
    let file = dir.join("def.yaml");
    std::fs::write(&file, definition).expect("definition");
    let out = simclr(&["validate", file.to_str().expect("utf-8")]);
    (out.status.code(), text(&out.stderr))
}

/// Sizes from a definition are bounded before anything is allocated for them: a projector of
/// 2⁶⁴ − 1 units panicked ("capacity overflow"), a crop of 100 000 px aborted allocating 10 GB.
#[test]
fn sizes_beyond_any_sane_run_are_refused_at_validation() {
    let dir = scratch("hostile", "sizes");
    let (code, err) = validate_text(
        &dir,
        "\
name: sizes
stages:
  images: { kind: synthetic, params: { count: 8, size: 16 } }
  views: { kind: views, inputs: [images], params: { t: [{ random_resized_crop: { size: 100000 } }] } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 4 } }
  encoder: { kind: resnet, inputs: [batches], credit: { from: train }, params: { depth: 18, width: 4 } }
  head: { kind: projector, inputs: [encoder], params: { head: mlp, hidden: 18446744073709551615, out: 8 } }
  train: { kind: nt_xent, inputs: [head] }
  drain: { kind: sink, inputs: [train] }
",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("largest supported side, 8192"), "{err}");
    assert!(err.contains("largest supported layer"), "{err}");
    assert!(err.contains("def.yaml:4:"), "located: {err}");
}

/// An IDX header claiming 2³² − 1 images in a file of a few bytes is reported as truncated
/// (it aborted allocating 3.4 TB).
#[test]
fn an_idx_header_that_lies_about_its_size_is_truncated_not_fatal() {
    let dir = scratch("hostile", "idx-lies");
    let mut bytes = vec![0, 0, 0x08, 3];
    for d in [u32::MAX, 28, 28] {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend([7u8; 100]);
    let file = dir.join("huge.idx");
    std::fs::write(&file, &bytes).expect("idx");
    let err = simclr::source::idx::IdxDataset::load(&file, None).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    let out = simclr_within(
        &[
            "embed",
            "--model",
            "/nonexistent.onnx",
            "--input",
            file.to_str().expect("utf-8"),
        ],
        60,
    );
    assert!(!out.status.success());
    assert!(out.status.code().is_some(), "killed by a signal: {out:?}");
}

/// An image folder with a pipe named like an image and a symbolic link back up the tree: the
/// pipe is not an image (reading it hung the run), each real folder is read once (48 images
/// became 1 968).
#[test]
fn image_folders_skip_pipes_and_read_each_real_folder_once() {
    let dir = scratch("hostile", "folder");
    let root = dir.join("images");
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).expect("class");
        for i in 0..3 {
            image::GrayImage::from_pixel(4, 4, image::Luma([i * 60]))
                .save(root.join(class).join(format!("{i}.png")))
                .expect("png");
        }
    }
    std::os::unix::fs::symlink("..", root.join("a").join("loop")).expect("loop");
    let fifo = root.join("b").join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "mkfifo");
    let (files, classes) = simclr::source::image_folder::scan(&root, true).expect("scan");
    assert_eq!(files.len(), 6, "{files:?}");
    assert_eq!(classes, ["a", "b"]);
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        format!(
            "name: folder\nstages:\n  images: {{ kind: image_folder, params: {{ path: {}, channels: 1 }} }}\n  drain: {{ kind: sink, inputs: [images], params: {{ expect: 6 }} }}\n",
            root.display()
        ),
    )
    .expect("definition");
    for on_error in ["fail", "skip"] {
        let out = simclr_within(
            &[
                "run",
                file.to_str().expect("utf-8"),
                "--run-dir",
                dir.join("run").to_str().expect("utf-8"),
                "--quiet",
                "--set",
                &format!("stages.images.params.on_error={on_error}"),
            ],
            60,
        );
        assert!(out.status.success(), "{on_error}: {}", text(&out.stderr));
    }
}

/// A credit on a stage that emits one message per sample, from one that finishes one per
/// batch, deadlocked the run with no output: refused at validation.
#[test]
fn a_credit_that_can_never_be_repaid_is_refused() {
    let dir = scratch("hostile", "credit");
    for (stage, line) in [("images", 3), ("views", 4)] {
        let credit = |s: &str| {
            if s == stage {
                "credit: { from: train }, "
            } else {
                ""
            }
        };
        let definition = format!(
            "\
name: credit
stages:
  images: {{ kind: synthetic, {}params: {{ count: 8, size: 16 }} }}
  views: {{ kind: views, inputs: [images], {}params: {{ t: [{{ random_resized_crop: {{ size: 16 }} }}] }} }}
  batches: {{ kind: batch, inputs: [views], params: {{ batch_size: 4 }} }}
  encoder: {{ kind: resnet, inputs: [batches], params: {{ depth: 18, width: 4 }} }}
  head: {{ kind: projector, inputs: [encoder], params: {{ head: mlp, out: 8 }} }}
  train: {{ kind: nt_xent, inputs: [head] }}
  drain: {{ kind: sink, inputs: [train] }}
",
            credit("images"),
            credit("views")
        );
        let (code, err) = validate_text(&dir, &definition);
        assert_eq!(code, Some(2), "{stage}: {err}");
        assert!(
            err.contains("wait for the second credit forever"),
            "{stage}: {err}"
        );
        assert!(err.contains(&format!("def.yaml:{line}:")), "{stage}: {err}");
    }
}

/// Found by the fuzzer (`tests/fuzz_definitions.rs`): a synthetic source of 2⁶⁴ − 1 items
/// panicked ("capacity overflow") building its shuffled order, and a `views` `size` of 10 204
/// was accepted (the default policy's views never went through the transforms' bound).
#[test]
fn fuzzer_findings_are_errors_not_panics() {
    let dir = scratch("hostile", "fuzz-findings");
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        "\
name: huge
stages:
  images: { kind: synthetic, params: { count: 18446744073709551615, size: 8 } }
  drain: { kind: sink, inputs: [images] }
",
    )
    .expect("definition");
    let out = simclr_within(
        &[
            "run",
            file.to_str().expect("utf-8"),
            "--run-dir",
            dir.join("run").to_str().expect("utf-8"),
            "--items",
            "4",
            "--quiet",
        ],
        60,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot shuffle"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    let (code, err) = validate_text(
        &dir,
        "\
name: views-size
stages:
  images: { kind: synthetic, params: { count: 8, size: 8 } }
  views: { kind: views, inputs: [images], params: { size: 10204 } }
  drain: { kind: sink, inputs: [views] }
",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("largest supported side"), "{err}");
}

/// An IDX file of 0×0 images gave 0 items and exit 0: refused where the definition names it.
#[test]
fn an_idx_file_of_empty_images_is_refused() {
    let dir = scratch("hostile", "idx-empty");
    let mut bytes = vec![0, 0, 0x08, 3];
    for d in [5u32, 0, 0] {
        bytes.extend(d.to_be_bytes());
    }
    let file = dir.join("empty.idx");
    std::fs::write(&file, &bytes).expect("idx");
    let (code, err) = validate_text(
        &dir,
        &format!(
            "name: empty\nstages:\n  images: {{ kind: idx, params: {{ path: {} }} }}\n  drain: {{ kind: sink, inputs: [images] }}\n",
            file.display()
        ),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("images of 0×0 pixels"), "{err}");
}

/// `eval` on an encoder whose weights are NaN reported chance accuracy with exit 0 (a NaN
/// turns into 0 after a ReLU, so even the features looked finite).
#[test]
fn evaluation_refuses_non_finite_features() {
    let dir = scratch("hostile", "nan-weights");
    let run = tiny_run(&dir);
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).expect("latest");
    let file = run
        .join("checkpoints")
        .join(latest.trim())
        .join("encoder.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).expect("load");
    let poisoned: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let nan = (t.ones_like().expect("ones") * f64::NAN).expect("nan");
            (name, nan)
        })
        .collect();
    candle_core::safetensors::save(&poisoned, &file).expect("save");
    for what in ["linear", "knn"] {
        let out = simclr(&[
            "eval",
            what,
            run.to_str().expect("utf-8"),
            "--train-limit",
            "16",
            "--test-limit",
            "16",
        ]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("holds NaN or infinite values"),
            "{what}: {}",
            text(&out.stderr)
        );
    }
}

/// A duplicate key inside `random_apply` was accepted (the last one won), where every other
/// transform's parameters refuse one.
#[test]
fn a_duplicate_key_inside_random_apply_is_refused() {
    let dir = scratch("hostile", "random-apply-duplicate");
    let (code, err) = validate_text(
        &dir,
        "\
name: duplicate
stages:
  images: { kind: synthetic, params: { count: 8, size: 16 } }
  views: { kind: views, inputs: [images], params: { t: [{ random_apply: { p: 0.5, p: 0.9, transforms: [{ random_grayscale: { p: 1.0 } }] } }] } }
  drain: { kind: sink, inputs: [views] }
",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("duplicate field `p`"), "{err}");
    assert!(
        err.contains("def.yaml:4:83"),
        "located at the second `p`: {err}"
    );
}

/// A JPEG cut to a third decoded without error, its missing part gray; and of 11 bad files
/// skipped only 5 were named anywhere. Cut images are refused like PIL's "image file is
/// truncated" (skipped or fatal as `on_error` says), and every skipped file is named in the
/// run folder's `skipped.jsonl` with its cause and how many epochs skipped it.
#[test]
fn truncated_images_are_refused_and_every_skipped_file_is_named() {
    let dir = scratch("hostile", "truncated");
    let root = dir.join("images");
    std::fs::create_dir_all(&root).expect("folder");
    let photo = image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x * y) % 251) as u8])
    });
    let mut jpeg = Vec::new();
    photo
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .expect("jpeg");
    let mut png = Vec::new();
    photo
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    for i in 0..3 {
        std::fs::write(root.join(format!("good-{i}.jpg")), &jpeg).expect("good");
    }
    let mut bad = Vec::new();
    for i in 0..8 {
        let name = format!("cut-{i}.jpg");
        std::fs::write(root.join(&name), &jpeg[..jpeg.len() * (i + 2) / 12]).expect("cut");
        bad.push(name);
    }
    std::fs::write(root.join("cut.png"), &png[..png.len() / 3]).expect("cut png");
    std::fs::write(root.join("empty.jpg"), b"").expect("empty");
    std::fs::write(root.join("text.jpg"), b"not an image").expect("text");
    bad.extend(["cut.png", "empty.jpg", "text.jpg"].map(String::from));
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        format!(
            "name: cut\nstages:\n  images: {{ kind: image_folder, params: {{ path: {}, labels: false, epochs: 2, on_error: skip }} }}\n  drain: {{ kind: sink, inputs: [images], params: {{ expect: 6 }} }}\n",
            root.display()
        ),
    )
    .expect("definition");
    let run = dir.join("run");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "run".to_string(),
            file.display().to_string(),
            "--run-dir".into(),
            run.display().to_string(),
            "--quiet".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let skip = args(&[]);
    let out = simclr_within(&skip.iter().map(String::as_str).collect::<Vec<_>>(), 60);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("skipped 22 item(s) (11 distinct)"),
        "{stdout}"
    );
    let listed = std::fs::read_to_string(run.join("skipped.jsonl")).expect("skipped.jsonl");
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let mut named: Vec<String> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["stage"], "images", "{l}");
            assert_eq!(l["times"], 2, "skipped in both epochs: {l}");
            let item = l["item"].as_str().expect("item");
            let cause = l["cause"].as_str().expect("cause");
            if item.ends_with(".jpg") && item.contains("cut-") {
                assert!(cause.contains("image file is truncated"), "{l}");
            }
            assert!(!cause.is_empty(), "{l}");
            Path::new(item)
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    named.sort();
    bad.sort();
    assert_eq!(named, bad);

    // A fresh run that skips nothing leaves no stale list behind.
    for name in &bad {
        std::fs::remove_file(root.join(name)).expect("remove");
    }
    ok(&simclr(
        &skip.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(!run.join("skipped.jsonl").exists());

    // Under `on_error: fail`, the cut file stops the run, named.
    std::fs::write(root.join("cut.jpg"), &jpeg[..jpeg.len() / 3]).expect("cut");
    let fail = args(&["--set", "stages.images.params.on_error=fail"]);
    let out = simclr_within(&fail.iter().map(String::as_str).collect::<Vec<_>>(), 60);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cut.jpg: image file is truncated"),
        "{stderr}"
    );
}

/// An `.onnx` file with flipped weight bytes embedded without complaint. The export records the
/// weights' SHA-256 in its metadata and every load verifies it: a bit flipped in the file and a
/// weight edited (and re-saved) with the `onnx` package are both refused, naming the file.
#[test]
fn an_onnx_file_whose_weights_changed_is_refused() {
    let dir = scratch("hostile", "onnx-checksum");
    let run = tiny_run(&dir);
    let model = dir.join("encoder.onnx");
    ok(&simclr(&[
        "export",
        run.to_str().expect("utf-8"),
        "--out",
        model.to_str().expect("utf-8"),
    ]));
    let flipped = dir.join("flipped.onnx");
    let edited = dir.join("edited.onnx");
    let input = dir.join("x.npy");
    // The flip lands inside the largest initializer's raw bytes, found in the file.
    let script = r#"
import sys, numpy as np, onnx
from onnx import numpy_helper
src, flipped, edited, npy = sys.argv[1:]
data = bytearray(open(src, "rb").read())
m = onnx.load(src)
t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
at = bytes(data).find(t.raw_data) + len(t.raw_data) // 2
data[at] ^= 0x10
open(flipped, "wb").write(data)
w = numpy_helper.to_array(t).copy()
w.flat[0] += 1e-3
t.CopyFrom(numpy_helper.from_array(w, t.name))
onnx.save(m, edited)
np.save(npy, np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32))
"#;
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([&model, &flipped, &edited, &input])
        .output()
        .expect("python3 runs (scripts/setup.sh installs onnx)");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let embed = |m: &Path| {
        simclr(&[
            "embed",
            "--model",
            m.to_str().expect("utf-8"),
            "--input",
            input.to_str().expect("utf-8"),
            "--out",
            dir.join("h.npy").to_str().expect("utf-8"),
        ])
    };
    ok(&embed(&model));
    for bad in [&flipped, &edited] {
        let out = embed(bad);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", bad.display());
        assert!(
            stderr.contains(&bad.display().to_string())
                && stderr.contains("do not match the checksum recorded when it was exported"),
            "{stderr}"
        );
    }
}

/// A definition saved as Latin-1 got "stream did not contain valid UTF-8" with no position
/// and a help line about the path. Now: the line and column of the first bad byte, the byte,
/// and how to convert the file.
#[test]
fn a_definition_that_is_not_utf8_is_located() {
    let dir = scratch("hostile", "latin1");
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        b"name: latin\nstages:\n  # caf\xe9 images\n  images: { kind: synthetic }\n",
    )
    .expect("definition");
    let out = simclr(&["validate", file.to_str().expect("utf-8")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("def.yaml:3:8"), "{err}");
    assert!(err.contains("not UTF-8") && err.contains("0xE9"), "{err}");
    assert!(err.contains("iconv"), "{err}");
    assert!(!err.contains("check the path"), "{err}");
}

/// `keep_last: K` needed room for K + 1 checkpoints: the oldest went only after the new one was
/// written. Now, with K >= 2, it goes first: a crash while writing (`SIMCLR_FAILPOINT` aborts
/// the process in the middle of the Nth weights file) finds at most K checkpoints on disk,
/// counting the half-written one; with K = 1 the only checkpoint stays until its successor is
/// complete.
#[test]
fn keep_last_makes_room_before_writing_when_that_is_safe() {
    let dir = scratch("hostile", "keep-last");
    let file = dir.join("def.yaml");
    std::fs::write(&file, common::TRAINING).expect("definition");
    // Three files per checkpoint (encoder, head, optimizer): write 7 is step 6's first, write
    // 4 is step 4's first.
    for (keep, failpoint, expect) in [(2, 7, vec!["step-00000004"]), (1, 4, vec!["step-00000002"])]
    {
        let run = dir.join(format!("run-{keep}"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_simclr"))
            .args([
                "run",
                file.to_str().expect("utf-8"),
                "--quiet",
                "--run-dir",
                run.to_str().expect("utf-8"),
                "--set",
                &format!("stages.checkpoints.params.keep_last={keep}"),
            ])
            .env("SIMCLR_FAILPOINT", format!("checkpoint-write:{failpoint}"))
            .output()
            .expect("runs");
        assert!(!out.status.success(), "the failpoint aborts the run");
        let ckpts = run.join("checkpoints");
        let mut complete: Vec<String> = std::fs::read_dir(&ckpts)
            .expect("checkpoints")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("step-"))
            .collect();
        complete.sort();
        assert_eq!(complete, expect, "keep_last {keep}");
        let latest = std::fs::read_to_string(ckpts.join("latest")).expect("latest");
        assert_eq!(latest.trim(), expect[0], "keep_last {keep}");
    }
}

/// Each size had its bound, their product none: the fuzzer found a valid definition whose
/// batch of 8192-px views could never fit in memory (an OOM kill). A batch whose views alone
/// exceed the machine's memory is refused at validation, located at `batch_size`; the same
/// views in small batches validate.
#[test]
fn a_batch_larger_than_memory_is_refused_at_validation() {
    let dir = scratch("hostile", "batch-memory");
    let definition = |batch: usize| {
        format!(
            "\
name: memory
stages:
  images: {{ kind: synthetic, params: {{ count: 8192, size: 8, channels: 1 }} }}
  views: {{ kind: views, inputs: [images], params: {{ size: 8192 }} }}
  batches: {{ kind: batch, inputs: [views], params: {{ batch_size: {batch} }} }}
  drain: {{ kind: sink, inputs: [batches] }}
"
        )
    };
    // 2 x 4096 x 8192² gray floats: 2 TiB.
    let (code, err) = validate_text(&dir, &definition(4096));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("def.yaml:5:"), "{err}");
    assert!(
        err.contains("4096 pairs of 1x8192x8192 views needs 2048.0 GiB"),
        "{err}"
    );
    let (code, err) = validate_text(&dir, &definition(1));
    assert_eq!(code, Some(0), "{err}");
}

/// When the disk was full the console showed the `metrics.json` failure and hid the run's own
/// error (the first cause) behind it. Every output is now attempted, each failure reported,
/// and the run's error printed last, marked as the first.
#[test]
fn a_failed_run_whose_metrics_cannot_be_written_still_shows_its_error() {
    let dir = scratch("hostile", "metrics-full");
    let file = dir.join("def.yaml");
    std::fs::write(
        &file,
        "name: full\nstages:\n  images: { kind: synthetic, params: { count: 4, size: 8 } }\n  drain: { kind: sink, inputs: [images], params: { expect: 5 } }\n",
    )
    .expect("definition");
    let out = simclr(&[
        "run",
        file.to_str().expect("utf-8"),
        "--quiet",
        "--run-dir",
        dir.join("run").to_str().expect("utf-8"),
        "--metrics",
        "/dev/full",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let metrics = err
        .find("cannot write the metrics to /dev/full")
        .expect(&err);
    let first = err.find("error (the first error):").expect(&err);
    assert!(metrics < first, "{err}");
    assert!(err[first..].contains("expected 5"), "{err}");
    assert!(
        dir.join("run").join("metrics.json").is_file(),
        "the run folder's metrics were still written: {err}"
    );
}
