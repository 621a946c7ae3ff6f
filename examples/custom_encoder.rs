//! A user-defined encoder f, written outside the workspace crates: registered from this file,
//! trained from a YAML definition on synthetic data (with the kNN monitor evaluating it as it
//! trains), loaded back from its checkpoint, exported to ONNX and verified in ONNX Runtime.
//!
//! ```sh
//! cargo run --release --example custom_encoder            # writes runs/custom-encoder
//! ```
//!
//! An encoder is a type that implements `simclr::model::encoder::Encoder`: its parameters (a
//! serde struct; the doc comments are what `simclr stages` shows), a check of them, input
//! channels and feature size, how to build it from a `VarBuilder`, `ModuleT::forward_t` and
//! its layers as a `Plan` (what the ONNX writer walks). `EncoderKind::of` makes it a kind;
//! adding that kind to the stage registry and to the encoder list is all the registration
//! there is. ONNX Runtime comes from `ORT_DYLIB_PATH` or Python's `onnxruntime` package
//! (`pip install onnxruntime==1.31.1`).

use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr::config::graph::LoadOptions;
use simclr::model::encoder::plan::{ConvShape, Plan, Value};
use simclr::model::encoder::{Encoder, EncoderKind, Invalid};
use simclr::model::{TrainedModel, Weights};
use simclr::onnx::export::{ExportOptions, InputShape, export_model, to_bytes};
use simclr::onnx::runtime::OnnxModel;
use simclr::onnx::verify::{compare, random_inputs};

/// Parameters of `res_cnn`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResCnnConfig {
    /// Channels of the stem and the residual blocks (the last layer has twice as many).
    pub width: usize,
    /// Residual conv-BN-ReLU blocks at full resolution.
    pub depth: usize,
    /// Size of h (a linear layer after global pooling).
    pub features: usize,
    /// Channels of the input views: 1 or 3.
    #[serde(default = "three")]
    pub in_channels: usize,
}

fn three() -> usize {
    3
}

/// stem conv3×3 → BN → ReLU; `depth` blocks x + ReLU(BN(conv3×3(x))); a stride-2 conv3×3 →
/// BN → ReLU to 2·width channels; global average pooling; a linear layer to `features`.
pub struct ResCnn {
    config: ResCnnConfig,
    stem: (Conv2d, BatchNorm),
    blocks: Vec<(Conv2d, BatchNorm)>,
    down: (Conv2d, BatchNorm),
    fc: Linear,
}

/// conv3×3 (no bias) then BatchNorm, named `<prefix>.conv` and `<prefix>.bn`.
fn conv_bn(
    vb: &VarBuilder<'_>,
    prefix: &str,
    cin: usize,
    cout: usize,
    stride: usize,
) -> Result<(Conv2d, BatchNorm)> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Conv2dConfig::default()
    };
    let conv = candle_nn::conv2d_no_bias(cin, cout, 3, cfg, vb.pp(format!("{prefix}.conv")))?;
    let bn = candle_nn::batch_norm(
        cout,
        BatchNormConfig::default(),
        vb.pp(format!("{prefix}.bn")),
    )?;
    Ok((conv, bn))
}

/// The same layers as `conv_bn`, with the ReLU after them, in plan form.
fn plan_conv_bn(plan: &mut Plan, x: Value, prefix: &str, shape: ConvShape) -> Value {
    let y = plan.conv(format!("{prefix}.conv"), x, shape);
    let y = plan.batch_norm(format!("{prefix}.bn"), y, shape.cout, 1e-5);
    plan.relu(format!("{prefix}.relu"), y)
}

fn apply(layer: &(Conv2d, BatchNorm), x: &Tensor, train: bool) -> Result<Tensor> {
    layer.1.forward_t(&layer.0.forward(x)?, train)?.relu()
}

impl ModuleT for ResCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = apply(&self.stem, xs, train)?;
        for block in &self.blocks {
            x = (&x + apply(block, &x, train)?)?;
        }
        let x = apply(&self.down, &x, train)?;
        // Global average pooling: [B, C, H, W] -> [B, C].
        self.fc.forward(&x.mean(3)?.mean(2)?)
    }
}

impl Encoder for ResCnn {
    const KIND: &'static str = "res_cnn";
    const SUMMARY: &'static str = "encoder f: a residual CNN defined in examples/custom_encoder.rs";
    const EXAMPLE: &'static str =
        simclr::model::encoder_example!("res_cnn", "{ width: 8, depth: 2, features: 32 }");
    type Config = ResCnnConfig;

    fn check(config: &ResCnnConfig) -> std::result::Result<(), Invalid> {
        for (field, value) in [("width", config.width), ("features", config.features)] {
            if !(1..=1024).contains(&value) {
                return Err(Invalid {
                    field,
                    message: format!("`{field}` must be 1-1024, found {value}"),
                    help: "8-64 trains in seconds on a CPU".into(),
                });
            }
        }
        if config.depth > 16 {
            return Err(Invalid {
                field: "depth",
                message: format!("`depth` must be 0-16, found {}", config.depth),
                help: "2-4 blocks".into(),
            });
        }
        simclr::model::encoder::check_channels(config.in_channels)
    }

    fn in_channels(config: &ResCnnConfig) -> usize {
        config.in_channels
    }

    fn feature_dim(config: &ResCnnConfig) -> usize {
        config.features
    }

    fn describe(config: &ResCnnConfig) -> String {
        format!(
            "res_cnn (width {}, {} blocks, {} features)",
            config.width, config.depth, config.features
        )
    }

    fn build(config: &ResCnnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let w = config.width;
        Ok(Self {
            stem: conv_bn(&vb, "stem", config.in_channels, w, 1)?,
            blocks: (0..config.depth)
                .map(|i| conv_bn(&vb, &format!("blocks.{i}"), w, w, 1))
                .collect::<Result<_>>()?,
            down: conv_bn(&vb, "down", w, 2 * w, 2)?,
            fc: candle_nn::linear(2 * w, config.features, vb.pp("fc"))?,
            config: config.clone(),
        })
    }

    fn plan(&self) -> Plan {
        let c = &self.config;
        let shape = |cin, cout, stride| ConvShape {
            cin,
            cout,
            kernel: 3,
            stride,
            padding: 1,
        };
        let mut plan = Plan::new(c.in_channels);
        let input = plan.input();
        let mut x = plan_conv_bn(&mut plan, input, "stem", shape(c.in_channels, c.width, 1));
        for i in 0..c.depth {
            let prefix = format!("blocks.{i}");
            let y = plan_conv_bn(&mut plan, x, &prefix, shape(c.width, c.width, 1));
            x = plan.add(format!("{prefix}.add"), x, y);
        }
        let x = plan_conv_bn(&mut plan, x, "down", shape(c.width, 2 * c.width, 2));
        let pooled = plan.global_avg_pool("pool", x);
        let flat = plan.flatten("flatten", pooled);
        let h = plan.linear("fc", flat, 2 * c.width, c.features, true);
        plan.finish(h, c.features)
    }
}

/// The kind: what the stage registry and the encoder list take.
pub static RES_CNN: EncoderKind = EncoderKind::of::<ResCnn>();

/// The training definition: 256 synthetic 16 px images, 2 epochs of 8 steps, kNN after each.
pub const DEFINITION: &str = "\
name: custom-encoder
seed: 3
stages:
  images: { kind: synthetic, params: { count: 256, size: 16, epochs: 2 } }
  views: { kind: views, inputs: [images], params: { size: 16 } }
  batches: { kind: batch, inputs: [views], params: { batch_size: 32 } }
  encoder: { kind: res_cnn, inputs: [batches], credit: { from: train }, params: { width: 8, depth: 2, features: 32 } }
  head: { kind: projector, inputs: [encoder], params: { head: mlp, hidden: 32, out: 16 } }
  train: { kind: nt_xent, inputs: [head], params: { optimizer: lars, lr: 0.3 } }
  knn: { kind: knn_monitor, inputs: [train], params: { every_epochs: 1, k: 20, test_limit: 128 } }
  checkpoints: { kind: checkpoint, inputs: [train], params: { every: 0 } }
";

/// What a run of the example gives.
#[derive(Debug)]
pub struct Outcome {
    /// The loaded model (from the run's checkpoint).
    pub model: TrainedModel,
    /// The exported file's bytes.
    pub onnx: Vec<u8>,
    /// Largest |ONNX Runtime − candle| over the verification batches.
    pub max_difference: f64,
    /// The kNN monitor's lines (`knn.jsonl`).
    pub knn: Vec<serde_json::Value>,
}

/// Train into `run_dir`, load the checkpoint, export to `run_dir/res_cnn.onnx` and verify it.
///
/// # Errors
/// Any step failing, with its cause.
pub fn run(run_dir: &Path) -> anyhow::Result<Outcome> {
    // Registration: the stage kind for definitions, the encoder kind for checkpoints.
    let mut registry = simclr::registry::user();
    registry.add(&RES_CNN.stage);
    let mut encoders = simclr::registry::encoders();
    encoders.add(&RES_CNN);

    let options = LoadOptions {
        run_dir: Some(run_dir.to_owned()),
        ..LoadOptions::default()
    };
    let graph = simclr::config::load_str(
        Path::new("custom-encoder.yaml"),
        DEFINITION,
        &registry,
        &options,
    )
    .map_err(|d| anyhow::anyhow!("{d}"))?;
    let run = simclr::runtime::run(
        &graph,
        &simclr::runtime::RunOptions {
            progress: false,
            ..simclr::runtime::RunOptions::default()
        },
    )?;
    println!("{}", run.report);

    let model = TrainedModel::from_checkpoint(run_dir, &encoders, Weights::Trained, &Device::Cpu)?;
    let (c, size) = (model.arch.in_channels(), 16);
    let proto = export_model(
        &model,
        false,
        InputShape {
            channels: c,
            size: Some((size, size)),
        },
        &ExportOptions::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let onnx = to_bytes(&proto);
    let file = run_dir.join("res_cnn.onnx");
    std::fs::write(&file, &onnx).with_context(|| format!("cannot write {}", file.display()))?;

    let mut session = OnnxModel::from_bytes(&onnx, 1).map_err(anyhow::Error::msg)?;
    let mut max_difference: f64 = 0.0;
    for n in [1, 7] {
        let dims = [n, c, size, size];
        let x = random_inputs(dims.iter().product(), n as u64);
        for row in compare(&mut session, &model, &x, &dims, "random").map_err(anyhow::Error::msg)? {
            println!("  {row}");
            max_difference = max_difference.max(row.max_abs);
        }
    }
    let knn = std::fs::read_to_string(simclr::model::RunDir::new(run_dir).knn())?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<serde_json::Value>, _>>()?;
    println!(
        "{} from {}: exported to {} ({} nodes), max |ONNX Runtime - candle| {max_difference:.2e}",
        model.arch.describe(),
        run_dir.display(),
        file.display(),
        proto.graph.as_ref().map_or(0, |g| g.node.len()),
    );
    Ok(Outcome {
        model,
        onnx,
        max_difference,
        knn,
    })
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let outcome = run(Path::new("runs/custom-encoder"))?;
    anyhow::ensure!(
        outcome.max_difference <= 1e-4,
        "ONNX Runtime differs from candle by {:.2e}",
        outcome.max_difference
    );
    Ok(())
}
