//! Training as a pipeline: the pipelined run computes exactly what a plain sequential loop
//! does; a resumed run is bit-identical to an uninterrupted one; the run folder holds what the
//! docs promise; a definition without the step credit is refused at its first stale batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{Device, ModuleT, Tensor};
use simclr::config::graph::LoadOptions;
use simclr::config::{Graph, Registry, load_str};
use simclr::core::{
    Batch, BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError,
    PortType, Stage, StageContext, StageError, StageFactory, StageKind,
};
use simclr::model::loss::nt_xent;
use simclr::model::stage::checkpoint::find_checkpoint;
use simclr::model::stage::head::{HeadParams, build_head};
use simclr::model::stage::train::{TrainParams, group_params};
use simclr::runtime::{self, RunOptions};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("training")
        .join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn load(text: &str, registry: &Registry, options: &LoadOptions) -> Graph {
    load_str(Path::new("test.yaml"), text, registry, options).unwrap_or_else(|d| panic!("{d}"))
}

fn run(graph: &Graph) {
    let options = RunOptions {
        shutdown_grace: Duration::from_secs(5),
        ..RunOptions::default()
    };
    if let Err(f) = runtime::run(graph, &options) {
        panic!("run failed: {f}");
    }
}

/// (step, loss) from a run folder's steps.jsonl.
fn losses(run_dir: &Path) -> Vec<(u64, f32)> {
    let text = std::fs::read_to_string(run_dir.join("steps.jsonl")).expect("steps.jsonl");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["step"].as_u64().expect("step"),
                v["loss"].as_f64().expect("loss") as f32,
            )
        })
        .collect()
}

/// The data and model half shared by these tests: 2 source workers, small views, a tiny
/// ResNet, an MLP head, LARS.
fn definition(count: u64, epochs: u32, every: u64) -> String {
    format!(
        "\
name: training-test
seed: 7
stages:
  images: {{ kind: synthetic, workers: 2, params: {{ count: {count}, size: 16, epochs: {epochs} }} }}
  views: {{ kind: views, inputs: [images], params: {{ size: 16 }} }}
  batches: {{ kind: batch, inputs: [views], params: {{ batch_size: 8 }} }}
  encoder: {{ kind: resnet, inputs: [batches], credit: {{ from: train }}, params: {{ depth: 18, width: 4 }} }}
  head: {{ kind: projector, inputs: [encoder], params: {{ head: mlp, hidden: 16, out: 8 }} }}
  train: {{ kind: nt_xent, inputs: [head], params: {{ optimizer: lars, lr: 1.0, warmup_steps: 1 }} }}
  checkpoints: {{ kind: checkpoint, inputs: [train], params: {{ every: {every}, keep_last: 0 }} }}
"
    )
}

// A test-only sink that keeps the batches it receives, for the sequential loop.
static BATCHES: Mutex<Vec<Batch>> = Mutex::new(Vec::new());

struct KeepBatches;

impl Stage for KeepBatches {
    fn process(
        &mut self,
        msg: Message,
        _out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        if let Message::Batch(b) = msg {
            BATCHES.lock().expect("lock").push(b);
        }
        Ok(())
    }
}

fn build_keep(_cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    Ok(StageFactory::stage(|_| KeepBatches))
}

static KEEP_BATCHES: StageKind = StageKind {
    name: "keep_batches",
    summary: "test: keeps batches",
    input: InputPorts::Accepts(&[PortType::Batches]),
    output: OutputPort::None,
    parallelism: Parallelism::Single,
    example: "",
    params: || schemars::schema_for!(()),
    build: build_keep,
};

/// The pipelined run (stages on their own threads, data running ahead, credit-paced model)
/// and a plain loop over the same batches, with the same seeded weights, loss, optimizer and
/// schedule, give identical losses for 5 steps (compared bit for bit).
#[test]
fn pipelined_training_equals_a_sequential_loop() {
    let dir = tmp("pipelined");
    let text = definition(40, 1, 0);
    let registry = simclr::registry::user();
    let graph = load(
        &text,
        &registry,
        &LoadOptions {
            run_dir: Some(dir.clone()),
            ..LoadOptions::default()
        },
    );
    run(&graph);
    let pipelined = losses(&dir);
    assert_eq!(pipelined.len(), 5, "40 samples / 8 = 5 steps");

    // The same data stages, drained into a plain vector.
    let data_only = text
        .lines()
        .take_while(|l| !l.contains("encoder:"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n  keep: { kind: keep_batches, inputs: [batches] }\n";
    let mut with_keep = simclr::registry::user();
    with_keep.add(&KEEP_BATCHES);
    BATCHES.lock().expect("lock").clear();
    run(&load(&data_only, &with_keep, &LoadOptions::default()));
    let batches = std::mem::take(&mut *BATCHES.lock().expect("lock"));
    assert_eq!(batches.len(), 5);

    // The sequential loop: build the same networks (seeded per stage id), then
    // forward → NT-Xent → backward → LARS, batch after batch.
    let device = Device::Cpu;
    let arch = simclr::registry::encoders()
        .architecture("resnet", &serde_json::json!({ "depth": 18, "width": 4 }))
        .expect("arch");
    let encoder = arch.build_seeded(&device, 7, "encoder").expect("encoder");
    let head_params: HeadParams =
        serde_json::from_value(serde_json::json!({ "head": "mlp", "hidden": 16, "out": 8 }))
            .expect("head params");
    let (head, head_vars, _) =
        build_head(&head_params, arch.feature_dim(), &device, 7, "head").expect("head");
    let train: TrainParams = serde_json::from_value(
        serde_json::json!({ "optimizer": "lars", "lr": 1.0, "warmup_steps": 1 }),
    )
    .expect("train params");
    let groups = vec![
        group("encoder", encoder.vars.clone()),
        group("head", head_vars.clone()),
    ];
    let mut optimizer = train.optimizer(group_params(&groups).expect("params"));
    let schedule = train.schedule(5, 8);
    let mut sequential = Vec::new();
    for b in &batches {
        let [n, c, h, w] = b.shape;
        let x = Tensor::from_slice(&b.data, (n, c, h, w), &device).expect("x");
        let z = head
            .forward_t(&encoder.net.forward_t(&x, true).expect("h"), true)
            .expect("z");
        let loss = nt_xent(&z, 0.5).expect("loss");
        sequential.push((b.step, loss.to_scalar::<f32>().expect("scalar")));
        optimizer
            .step(&loss.backward().expect("grads"), schedule.lr(b.step))
            .expect("step");
    }
    assert_eq!(pipelined, sequential);
    assert!(
        sequential
            .iter()
            .map(|s| s.1)
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] != w[1]),
        "the weights change between steps"
    );
}

fn group(stage: &str, vars: candle_nn::VarMap) -> Arc<simclr::model::stage::ParamGroup> {
    Arc::new(simclr::model::stage::ParamGroup {
        stage: stage.into(),
        role: simclr::model::stage::Role::Encoder,
        kind: "test".into(),
        spec: serde_json::Value::Null,
        arch: None,
        vars,
        version: Default::default(),
    })
}

/// Every tensor of a checkpoint's weights and optimizer files, as raw f32 values.
fn checkpoint_tensors(dir: &Path) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    for file in ["encoder", "head", "optimizer"] {
        let path = dir.join(format!("{file}.safetensors"));
        for (name, t) in candle_core::safetensors::load(&path, &Device::Cpu).expect("load") {
            if name == "step" {
                continue;
            }
            let v = t
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("f32");
            out.insert(format!("{file}/{name}"), v);
        }
    }
    out
}

/// 6 steps straight versus 3 steps, resume, 3 more: the final weights, BatchNorm statistics
/// and optimizer state are bit-identical, and so are the losses. The split falls in the middle
/// of an epoch whose last samples `drop_last` discards, with two source workers.
#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    // 20 samples, batches of 8: 2 steps per epoch (4 samples dropped), 3 epochs = 6 steps.
    let text = definition(20, 3, 2);
    let registry = simclr::registry::user();
    let straight = tmp("straight");
    run(&load(
        &text,
        &registry,
        &LoadOptions {
            run_dir: Some(straight.clone()),
            ..LoadOptions::default()
        },
    ));
    let split = tmp("split");
    run(&load(
        &text,
        &registry,
        &LoadOptions {
            run_dir: Some(split.clone()),
            max_steps: Some(3),
            ..LoadOptions::default()
        },
    ));
    let first = find_checkpoint(&split).expect("checkpoint after 3 steps");
    assert_eq!(first.info.steps, 3);
    assert_eq!((first.info.epoch, first.info.position), (1, 8));
    assert_eq!(losses(&split).len(), 3);
    run(&load(
        &text,
        &registry,
        &LoadOptions {
            run_dir: Some(split.clone()),
            resume: Some(first.resume_point()),
            ..LoadOptions::default()
        },
    ));
    let (a, b) = (
        find_checkpoint(&straight).expect("final"),
        find_checkpoint(&split).expect("final"),
    );
    assert_eq!((a.info.steps, b.info.steps), (6, 6));
    let (ta, tb) = (checkpoint_tensors(&a.dir), checkpoint_tensors(&b.dir));
    assert!(
        ta.len() > 100,
        "encoder, head and optimizer tensors: {}",
        ta.len()
    );
    assert_eq!(ta.len(), tb.len());
    for (name, va) in &ta {
        let vb = &tb[name];
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs after resume"
        );
    }
    assert_eq!(
        losses(&straight),
        losses(&split),
        "steps.jsonl continues, not restarts"
    );
    // Every 2 steps and at the end, all kept (keep_last: 0).
    let kept: Vec<String> = std::fs::read_dir(straight.join("checkpoints"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(kept, ["step-00000002", "step-00000004", "step-00000006"]);
    assert!(straight.join("loss.png").is_file());
}

/// Without the credit edge the encoder runs ahead and computes batch k+1 before step k's
/// update: the trainer refuses it and says how to fix the definition.
#[test]
fn a_definition_without_the_step_credit_is_refused() {
    let text = definition(64, 1, 0)
        .replace(", credit: { from: train }", "")
        // The slow stage holds each batch's z long enough for the encoder to run ahead.
        .replace(
            "  train: { kind: nt_xent, inputs: [head]",
            "  hold: { kind: slow, inputs: [head], params: { delay: 50 } }\n  train: { kind: nt_xent, inputs: [hold]",
        );
    let registry = simclr::registry::with_testing_kinds();
    let graph = load(
        &text,
        &registry,
        &LoadOptions {
            run_dir: Some(tmp("no-credit")),
            ..LoadOptions::default()
        },
    );
    let options = RunOptions {
        shutdown_grace: Duration::from_secs(5),
        ..RunOptions::default()
    };
    let failure = runtime::run(&graph, &options).expect_err("stale weights are refused");
    let message = failure.to_string();
    assert!(
        message.contains("train") && message.contains("credit: { from: train }"),
        "{message}"
    );
}
