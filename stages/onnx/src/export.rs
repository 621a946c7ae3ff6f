//! The ONNX graph of an encoder f (and optionally its projection head g), written by walking
//! the networks' layer plans ([`simclr_stage_model::encoder::plan`]) with their named tensors:
//! one writer for every encoder kind, built in or a user's.
//!
//! The graph is the network in evaluation mode: every BatchNorm uses its running statistics,
//! either folded into the convolution (or linear layer) before it — `W' = W·γ/√(σ²+ε)`,
//! `b' = β − γ·μ/√(σ²+ε)`, computed in float64 — or kept as a `BatchNormalization` node in
//! inference mode. Initializers keep torchvision's names (`layer1.0.conv1.weight`, with a
//! `….bias` for folded convolutions), so a consumer can map them back to a PyTorch model.
//!
//! Input `images` `[batch, C, H, W]` float32, NCHW; outputs `features` (h, `[batch, d]`) and,
//! with the head, `projection` (z = g(h)). The batch dimension is symbolic.

use std::collections::HashMap;

use simclr_stage_model::TrainedModel;

use crate::error::OnnxError;
use simclr_stage_model::encoder::plan::{ConvShape, Op, Plan};

use crate::proto::{
    AttributeProto, AttributeType, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    TypeTensor, ValueInfoProto, data_type,
};

/// Name of the graph's input.
pub const INPUT: &str = "images";
/// Name of the representation output h.
pub const FEATURES: &str = "features";
/// Name of the projection output z (exports with the head).
pub const PROJECTION: &str = "projection";

/// Opsets the exporter writes (the operators it uses have the same meaning in all of them).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=23;
/// The default opset.
pub const DEFAULT_OPSET: i64 = 17;

/// A tensor's shape and float32 values (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// Tensors by name.
pub type Tensors = HashMap<String, Array>;

/// Copy the variables of a candle `VarMap` out as named arrays.
///
/// # Errors
/// A variable that cannot be read as float32.
pub fn tensors_of(vars: &candle_nn::VarMap) -> Result<Tensors, OnnxError> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| OnnxError::Message("variable map poisoned".into()))?;
    data.iter()
        .map(|(name, var)| {
            let t = var.as_tensor();
            let values = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|source| OnnxError::Candle {
                    what: format!("`{name}`"),
                    source,
                })?;
            Ok((
                name.clone(),
                Array {
                    dims: t.dims().to_vec(),
                    data: values,
                },
            ))
        })
        .collect()
}

/// The input's spatial size: fixed, or symbolic (any size; the network pools globally).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputShape {
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height and width, when the model was trained at one size.
    pub size: Option<(usize, usize)>,
}

/// Options of an export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// ONNX opset (in [`OPSETS`]).
    pub opset: i64,
    /// Fold every BatchNorm into the layer before it (else `BatchNormalization` nodes).
    pub fold_batch_norm: bool,
    /// `metadata_props` of the model.
    pub metadata: Vec<(String, String)>,
    /// The model's `doc_string`.
    pub doc: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            opset: DEFAULT_OPSET,
            fold_batch_norm: true,
            metadata: Vec::new(),
            doc: String::new(),
        }
    }
}

/// The IR version that goes with an opset (onnx's `VERSION_TABLE`).
pub fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

/// Write the graph of an encoder from its layer plan and tensors, followed by the head's
/// (from `features`) when `head` is given.
///
/// # Errors
/// An opset outside [`OPSETS`], an input of other channels than the encoder takes, or tensors
/// missing or of other shapes than the plans need (named).
pub fn export(
    encoder: &Plan,
    tensors: &Tensors,
    head: Option<(&Plan, &Tensors)>,
    input: InputShape,
    options: &ExportOptions,
) -> Result<ModelProto, OnnxError> {
    if !OPSETS.contains(&options.opset) {
        return Err(OnnxError::Message(format!(
            "opset {} is not supported (choose {} to {})",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    if input.channels != encoder.in_channels() {
        return Err(OnnxError::Message(format!(
            "the input has {} channel(s), the encoder takes {}",
            input.channels,
            encoder.in_channels()
        )));
    }
    let mut g = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        fold: options.fold_batch_norm,
        tensors,
    };
    g.plan(encoder, INPUT, FEATURES)?;
    let feature_dim = encoder.output().1;
    let batch = || Dimension {
        dim_param: Some("batch".into()),
        ..Default::default()
    };
    let fixed = |n: usize| Dimension {
        dim_value: Some(n as i64),
        ..Default::default()
    };
    let mut outputs = vec![value_info(FEATURES, vec![batch(), fixed(feature_dim)])];
    if let Some((plan, tensors)) = head {
        if plan.in_channels() != feature_dim {
            return Err(OnnxError::Message(format!(
                "the head takes {} features, the encoder gives {feature_dim}",
                plan.in_channels()
            )));
        }
        g.tensors = tensors;
        g.plan(plan, FEATURES, PROJECTION)?;
        outputs.push(value_info(
            PROJECTION,
            vec![batch(), fixed(plan.output().1)],
        ));
    }
    let (height, width) = match input.size {
        Some((h, w)) => (fixed(h), fixed(w)),
        None => (
            Dimension {
                dim_param: Some("height".into()),
                ..Default::default()
            },
            Dimension {
                dim_param: Some("width".into()),
                ..Default::default()
            },
        ),
    };
    let graph = GraphProto {
        node: g.nodes,
        name: Some("simclr_encoder".into()),
        initializer: g.initializers,
        doc_string: None,
        input: vec![value_info(
            INPUT,
            vec![batch(), fixed(input.channels), height, width],
        )],
        output: outputs,
        value_info: Vec::new(),
    };
    let mut metadata = options.metadata.clone();
    metadata.push((
        crate::checksum::KEY.to_owned(),
        crate::checksum::weights_sha256(&graph),
    ));
    Ok(ModelProto {
        ir_version: Some(ir_version(options.opset)),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(options.opset),
        }],
        producer_name: Some("simclr".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: (!options.doc.is_empty()).then(|| options.doc.clone()),
        graph: Some(graph),
        metadata_props: metadata
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k),
                value: Some(v),
            })
            .collect(),
    })
}

/// Write the graph of a model's encoder, and of its head when `with_head` (it must have one).
///
/// # Errors
/// As [`export`]; a model without a head when `with_head`.
pub fn export_model(
    model: &TrainedModel,
    with_head: bool,
    input: InputShape,
    options: &ExportOptions,
) -> Result<ModelProto, OnnxError> {
    let tensors = tensors_of(&model.vars)?;
    let head = match (&model.head, with_head) {
        (Some(head), true) => Some((head.net.plan(), tensors_of(&head.vars)?)),
        (None, true) => {
            return Err(OnnxError::Message(
                "the model has no projection head to include".into(),
            ));
        }
        (_, false) => None,
    };
    export(
        &model.encoder.plan(),
        &tensors,
        head.as_ref().map(|(p, t)| (p, t)),
        input,
        options,
    )
}

/// Serialise a model.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

fn value_info(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim: dims }),
            }),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

struct Builder<'a> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    fold: bool,
    tensors: &'a Tensors,
}

/// The BatchNorm a convolution or linear layer absorbs: its name and ε.
type Folded<'p> = Option<(&'p str, f64)>;

impl Builder<'_> {
    /// A node `name` computing `output` from `inputs`; returns `output`.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: Some(name.to_owned()),
            op_type: Some(op.to_owned()),
            domain: None,
            attribute: attrs,
            doc_string: None,
        });
        output.to_owned()
    }

    fn tensor(&self, name: &str, dims: &[usize]) -> Result<&Array, OnnxError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| OnnxError::Message(format!("no tensor `{name}`")))?;
        if t.dims != dims {
            return Err(OnnxError::Message(format!(
                "tensor `{name}` is {:?}, the architecture needs {dims:?}",
                t.dims
            )));
        }
        Ok(t)
    }

    fn initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let mut raw = Vec::with_capacity(values.len() * 4);
        for v in values {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type::FLOAT),
            name: Some(name.to_owned()),
            doc_string: None,
            raw_data: Some(raw),
        });
        name.to_owned()
    }

    /// Scale `s` and shift `t` per channel of the BatchNorm `prefix` over `c` channels
    /// (y = s·x + t), in float64.
    fn bn_affine(
        &self,
        prefix: &str,
        c: usize,
        eps: f64,
    ) -> Result<(Vec<f64>, Vec<f64>), OnnxError> {
        let gamma = &self.tensor(&format!("{prefix}.weight"), &[c])?.data;
        let beta = &self.tensor(&format!("{prefix}.bias"), &[c])?.data;
        let mean = &self.tensor(&format!("{prefix}.running_mean"), &[c])?.data;
        let var = &self.tensor(&format!("{prefix}.running_var"), &[c])?.data;
        let s: Vec<f64> = (0..c)
            .map(|i| f64::from(gamma[i]) / (f64::from(var[i]) + eps).sqrt())
            .collect();
        let t = (0..c)
            .map(|i| f64::from(beta[i]) - s[i] * f64::from(mean[i]))
            .collect();
        Ok((s, t))
    }

    /// A `BatchNormalization` node `prefix` in inference mode over `c` channels.
    fn batch_norm(
        &mut self,
        x: &str,
        prefix: &str,
        c: usize,
        eps: f64,
        output: &str,
    ) -> Result<String, OnnxError> {
        let mut inputs = vec![x.to_owned()];
        for part in ["weight", "bias", "running_mean", "running_var"] {
            let name = format!("{prefix}.{part}");
            let values = self.tensor(&name, &[c])?.data.clone();
            inputs.push(self.initializer(&name, &[c], &values));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node(
            "BatchNormalization",
            prefix,
            &refs,
            output,
            vec![attr_float("epsilon", eps as f32)],
        ))
    }

    /// Convolution `conv` (no bias), with BatchNorm `bn` folded in when given.
    fn conv(
        &mut self,
        x: &str,
        conv: &str,
        shape: ConvShape,
        bn: Folded<'_>,
        output: &str,
    ) -> Result<String, OnnxError> {
        let ConvShape {
            cin,
            cout,
            kernel: k,
            stride,
            padding,
        } = shape;
        let wname = format!("{conv}.weight");
        let w = self.tensor(&wname, &[cout, cin, k, k])?.data.clone();
        let (k, stride, pad) = (k as i64, stride as i64, padding as i64);
        let attrs = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[pad, pad, pad, pad]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ];
        let dims = [cout, cin, shape.kernel, shape.kernel];
        Ok(match bn {
            Some((bn, eps)) => {
                let (s, t) = self.bn_affine(bn, cout, eps)?;
                let per = cin * shape.kernel * shape.kernel;
                let folded: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (f64::from(v) * s[i / per]) as f32)
                    .collect();
                let bias: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                let wi = self.initializer(&wname, &dims, &folded);
                let bi = self.initializer(&format!("{conv}.bias"), &[cout], &bias);
                self.node("Conv", conv, &[x, &wi, &bi], output, attrs)
            }
            None => {
                let wi = self.initializer(&wname, &dims, &w);
                self.node("Conv", conv, &[x, &wi], output, attrs)
            }
        })
    }

    /// Gemm `linear` (`cin → cout`, with a bias when `bias`), with BatchNorm `bn` (1-D)
    /// folded in when given.
    fn linear(
        &mut self,
        x: &str,
        linear: &str,
        (cin, cout, bias): (usize, usize, bool),
        bn: Folded<'_>,
        output: &str,
    ) -> Result<String, OnnxError> {
        let wname = format!("{linear}.weight");
        let bname = format!("{linear}.bias");
        let w = self.tensor(&wname, &[cout, cin])?.data.clone();
        let b = match bias {
            true => Some(self.tensor(&bname, &[cout])?.data.clone()),
            false => None,
        };
        let (w, b) = match bn {
            None => (w, b),
            Some((bn, eps)) => {
                let (s, t) = self.bn_affine(bn, cout, eps)?;
                let folded: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (f64::from(v) * s[i / cin]) as f32)
                    .collect();
                let bias: Vec<f32> = (0..cout)
                    .map(|o| {
                        let b0 = b.as_ref().map_or(0.0, |b| f64::from(b[o]));
                        (s[o] * b0 + t[o]) as f32
                    })
                    .collect();
                (folded, Some(bias))
            }
        };
        let wi = self.initializer(&wname, &[cout, cin], &w);
        let mut inputs = vec![x.to_owned(), wi];
        if let Some(b) = &b {
            inputs.push(self.initializer(&bname, &[cout], b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node("Gemm", linear, &refs, output, vec![attr_int("transB", 1)]))
    }

    /// Every layer of `plan` as nodes, reading the graph value `input` and naming the plan's
    /// output `output`; every other node's output is named after the node. With folding, a
    /// BatchNorm that alone reads a convolution's or linear layer's output is folded into
    /// that layer (one node, named after the layer).
    ///
    /// # Errors
    /// A layer that reads a value not computed before it, or a tensor the layer needs that
    /// is missing or of another shape.
    fn plan(&mut self, plan: &Plan, input: &str, output: &str) -> Result<(), OnnxError> {
        let layers = plan.layers();
        let (out, _) = plan.output();
        // The graph name of each value: the input's, then each layer's.
        let mut names: Vec<Option<String>> = vec![None; layers.len() + 1];
        names[0] = Some(input.to_owned());
        for (i, layer) in layers.iter().enumerate() {
            if names[i + 1].is_some() {
                continue; // a BatchNorm folded into the layer before it
            }
            let inputs = layer
                .inputs
                .iter()
                .map(|v| match v.layer() {
                    None => names[0].clone(),
                    Some(l) if l < i => names[l + 1].clone(),
                    Some(_) => None,
                })
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    OnnxError::Message(format!(
                        "layer `{}` reads a value not computed before it",
                        layer.name
                    ))
                })?;
            let arity = if layer.op == Op::Add { 2 } else { 1 };
            if inputs.len() != arity {
                return Err(OnnxError::Message(format!(
                    "layer `{}` has {} input(s), its operation takes {arity}",
                    layer.name,
                    inputs.len()
                )));
            }
            let x = inputs[0].as_str();
            let this = plan.value(i);
            let bn = match (&layer.op, self.fold) {
                (Op::Conv(_) | Op::Linear { .. }, true) => {
                    let mut readers = plan.readers(this);
                    match (readers.next(), readers.next()) {
                        (Some(j), None) => match layers[j].op {
                            Op::BatchNorm { eps, .. } => Some((j, eps)),
                            _ => None,
                        },
                        _ => None,
                    }
                }
                _ => None,
            };
            // The value this node gives: its own, or that of the BatchNorm folded into it.
            let gives = bn.map_or(this, |(j, _)| plan.value(j));
            let target = if gives == out { output } else { &layer.name };
            let folded = bn.map(|(j, eps)| (layers[j].name.as_str(), eps));
            let name = layer.name.as_str();
            let y = match &layer.op {
                Op::Conv(shape) => self.conv(x, name, *shape, folded, target)?,
                Op::Linear { cin, cout, bias } => {
                    self.linear(x, name, (*cin, *cout, *bias), folded, target)?
                }
                Op::BatchNorm { channels, eps } => {
                    self.batch_norm(x, name, *channels, *eps, target)?
                }
                Op::Relu => self.node("Relu", name, &[x], target, vec![]),
                Op::Add => self.node("Add", name, &[x, &inputs[1]], target, vec![]),
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => {
                    let (k, s, p) = (*kernel as i64, *stride as i64, *padding as i64);
                    // ONNX's MaxPool leaves its padding out of the max, as the model stages'
                    // −∞ padding does.
                    let attrs = vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("strides", &[s, s]),
                        attr_ints("pads", &[p, p, p, p]),
                    ];
                    self.node("MaxPool", name, &[x], target, attrs)
                }
                Op::GlobalAvgPool => self.node("GlobalAveragePool", name, &[x], target, vec![]),
                Op::Flatten => self.node("Flatten", name, &[x], target, vec![attr_int("axis", 1)]),
                Op::Identity => self.node("Identity", name, &[x], target, vec![]),
                other => {
                    return Err(OnnxError::Message(format!(
                        "layer `{name}`: {other:?} has no ONNX form here"
                    )));
                }
            };
            if let Some((j, _)) = bn {
                names[j + 1] = Some(y.clone());
            }
            names[i + 1] = Some(y);
        }
        if out == plan.input() {
            self.node("Identity", output, &[input], output, vec![]);
        }
        Ok(())
    }
}
