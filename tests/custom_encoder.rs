//! `examples/custom_encoder.rs`, run as a test: an encoder defined outside the workspace
//! crates trains from YAML, is evaluated by the kNN monitor, loads back from its checkpoint,
//! exports to ONNX and matches candle in ONNX Runtime.

mod common;
#[path = "../examples/custom_encoder.rs"]
mod example;

use candle_core::{Device, Tensor};
use simclr::onnx::runtime::OnnxModel;
use simclr::onnx::verify::{compare, random_inputs};

#[test]
fn a_user_defined_encoder_trains_evaluates_exports_and_verifies() {
    let dir = common::scratch("custom_encoder", "run");
    let out = example::run(&dir).expect("the example runs");

    // Trained and checkpointed as its own kind, with its own parameters.
    assert_eq!(out.model.arch.kind(), "res_cnn");
    assert_eq!(out.model.arch.feature_dim(), 32);
    let checkpoint = out.model.checkpoint.as_ref().expect("from a checkpoint");
    assert_eq!(checkpoint.info.steps, 16);
    let encoder = checkpoint.encoder().expect("encoder group");
    assert_eq!(encoder.kind, "res_cnn");
    assert_eq!(encoder.spec["depth"], 2);
    assert!(out.model.head.is_some(), "the head is loaded too");

    // The kNN monitor built the user's network from the training state, after each epoch.
    assert_eq!(out.knn.len(), 2, "{:?}", out.knn);
    for line in &out.knn {
        let top1 = line["top1"].as_f64().expect("top1");
        assert!((0.0..=1.0).contains(&top1), "{line}");
        assert_eq!(line["queries"], 128);
    }

    // The export holds the user's layers under their names, and ONNX Runtime agrees.
    let text = String::from_utf8_lossy(&out.onnx);
    for name in ["stem.conv", "blocks.1.add", "down.conv", "fc.weight"] {
        assert!(text.contains(name), "no `{name}` in the export");
    }
    assert!(
        out.max_difference <= 1e-4,
        "ONNX Runtime differs from candle by {:.2e}",
        out.max_difference
    );

    // The check can fail: weights that differ from the exported ones are caught.
    {
        let data = out.model.vars.data().lock().expect("vars");
        let fc = &data["fc.weight"];
        let zeros = Tensor::zeros(fc.dims(), fc.dtype(), &Device::Cpu).expect("zeros");
        fc.set(&zeros).expect("set");
    }
    let mut session = OnnxModel::from_bytes(&out.onnx, 1).expect("load");
    let dims = [3, 3, 16, 16];
    let x = random_inputs(dims.iter().product(), 11);
    let rows = compare(&mut session, &out.model, &x, &dims, "random").expect("compare");
    assert!(rows[0].max_abs > 1e-2, "a stale export passed: {}", rows[0]);
}

#[test]
fn a_user_defined_encoder_is_a_stage_kind_with_documented_parameters() {
    let mut registry = simclr::registry::user();
    registry.add(&example::RES_CNN.stage);
    let kind = registry.get("res_cnn").expect("registered");
    let docs = kind.param_docs();
    let mut names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["depth", "features", "in_channels", "width"]);
    assert!(docs.iter().all(|d| !d.doc.is_empty()));

    // Its parameters are checked at validation, located, as built-in kinds' are.
    let bad = example::DEFINITION.replace("depth: 2", "depth: 99");
    let err = simclr::config::load_str(
        std::path::Path::new("bad.yaml"),
        &bad,
        &registry,
        &Default::default(),
    )
    .expect_err("depth 99 is refused");
    let text = err.to_string();
    assert!(text.contains("`depth` must be 0-16, found 99"), "{text}");
    assert!(text.contains("bad.yaml:"), "{text}");
}
