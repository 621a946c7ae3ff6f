//! The ONNX graph of an encoder f (and optionally its projection head g), written from the
//! architecture and its named tensors.
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

use simclr_stage_model::projector::ProjectorKind;
use simclr_stage_model::resnet::Stem;
use simclr_stage_model::stage::encoder::Architecture;

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

/// BatchNorm's ε in the model stages (PyTorch's default).
const BN_EPS: f64 = 1e-5;

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
pub fn tensors_of(vars: &candle_nn::VarMap) -> Result<Tensors, String> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| "variable map poisoned".to_owned())?;
    data.iter()
        .map(|(name, var)| {
            let t = var.as_tensor();
            let values = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("`{name}`: {e}"))?;
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

/// Write the graph of `arch` with `encoder`'s tensors, and of the head when `head` is given.
///
/// # Errors
/// An opset outside [`OPSETS`], or tensors missing or of other shapes than the architecture
/// needs (named).
pub fn export(
    arch: &Architecture,
    encoder: &Tensors,
    head: Option<(ProjectorKind, &Tensors)>,
    input: InputShape,
    options: &ExportOptions,
) -> Result<ModelProto, String> {
    if !OPSETS.contains(&options.opset) {
        return Err(format!(
            "opset {} is not supported (choose {} to {})",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    if input.channels != arch.in_channels() {
        return Err(format!(
            "the input has {} channel(s), the encoder takes {}",
            input.channels,
            arch.in_channels()
        ));
    }
    let mut g = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        fold: options.fold_batch_norm,
        tensors: encoder,
    };
    let h = match arch {
        Architecture::ResNet(c) => resnet(&mut g, c)?,
        Architecture::SmallCnn { in_channels, width } => small_cnn(&mut g, *in_channels, *width)?,
    };
    let pooled = g.node("GlobalAveragePool", "avgpool", &[&h], vec![]);
    g.node_named(
        "Flatten",
        "flatten",
        &[&pooled],
        FEATURES,
        vec![attr_int("axis", 1)],
    );
    let feature_dim = arch.feature_dim();
    let batch = || Dimension {
        dim_param: Some("batch".into()),
        ..Default::default()
    };
    let fixed = |n: usize| Dimension {
        dim_value: Some(n as i64),
        ..Default::default()
    };
    let mut outputs = vec![value_info(FEATURES, vec![batch(), fixed(feature_dim)])];
    if let Some((kind, tensors)) = head {
        g.tensors = tensors;
        let out = projector(&mut g, kind, feature_dim)?;
        outputs.push(value_info(PROJECTION, vec![batch(), fixed(out)]));
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
        metadata_props: options
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
    })
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

impl Builder<'_> {
    /// A node whose one output is named after the node.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        self.node_named(op, name, inputs, name, attrs);
        name.to_owned()
    }

    fn node_named(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: Some(name.to_owned()),
            op_type: Some(op.to_owned()),
            domain: None,
            attribute: attrs,
            doc_string: None,
        });
    }

    fn tensor(&self, name: &str, dims: &[usize]) -> Result<&Array, String> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("no tensor `{name}`"))?;
        if t.dims != dims {
            return Err(format!(
                "tensor `{name}` is {:?}, the architecture needs {dims:?}",
                t.dims
            ));
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
    fn bn_affine(&self, prefix: &str, c: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
        let gamma = &self.tensor(&format!("{prefix}.weight"), &[c])?.data;
        let beta = &self.tensor(&format!("{prefix}.bias"), &[c])?.data;
        let mean = &self.tensor(&format!("{prefix}.running_mean"), &[c])?.data;
        let var = &self.tensor(&format!("{prefix}.running_var"), &[c])?.data;
        let s: Vec<f64> = (0..c)
            .map(|i| f64::from(gamma[i]) / (f64::from(var[i]) + BN_EPS).sqrt())
            .collect();
        let t = (0..c)
            .map(|i| f64::from(beta[i]) - s[i] * f64::from(mean[i]))
            .collect();
        Ok((s, t))
    }

    /// A `BatchNormalization` node in inference mode over `c` channels.
    fn batch_norm_node(&mut self, x: &str, prefix: &str, c: usize) -> Result<String, String> {
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
            vec![attr_float("epsilon", BN_EPS as f32)],
        ))
    }

    /// Convolution `conv` (no bias; `k×k`, `cin → cout`, padding k/2), BatchNorm `bn`,
    /// optionally ReLU.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        x: &str,
        conv: &str,
        bn: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        relu: Option<&str>,
    ) -> Result<String, String> {
        let wname = format!("{conv}.weight");
        let w = self.tensor(&wname, &[cout, cin, k, k])?.data.clone();
        let pad = (k / 2) as i64;
        let attrs = || {
            vec![
                attr_ints("kernel_shape", &[k as i64, k as i64]),
                attr_ints("strides", &[stride as i64, stride as i64]),
                attr_ints("pads", &[pad, pad, pad, pad]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ]
        };
        let y = if self.fold {
            let (s, t) = self.bn_affine(bn, cout)?;
            let per = cin * k * k;
            let folded: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, &v)| (f64::from(v) * s[i / per]) as f32)
                .collect();
            let bias: Vec<f32> = t.iter().map(|&v| v as f32).collect();
            let wi = self.initializer(&wname, &[cout, cin, k, k], &folded);
            let bi = self.initializer(&format!("{conv}.bias"), &[cout], &bias);
            self.node("Conv", conv, &[x, &wi, &bi], attrs())
        } else {
            let wi = self.initializer(&wname, &[cout, cin, k, k], &w);
            let c = self.node("Conv", conv, &[x, &wi], attrs());
            self.batch_norm_node(&c, bn, cout)?
        };
        Ok(match relu {
            Some(name) => self.node("Relu", name, &[&y], vec![]),
            None => y,
        })
    }

    /// Gemm `linear` (`cin → cout`, bias when the tensors have one), then BatchNorm `bn`
    /// (1-D) when given.
    fn linear(
        &mut self,
        x: &str,
        linear: &str,
        bn: Option<&str>,
        cin: usize,
        cout: usize,
    ) -> Result<String, String> {
        let wname = format!("{linear}.weight");
        let bname = format!("{linear}.bias");
        let w = self.tensor(&wname, &[cout, cin])?.data.clone();
        let b = match self.tensors.contains_key(&bname) {
            true => Some(self.tensor(&bname, &[cout])?.data.clone()),
            false => None,
        };
        let gemm = |g: &mut Self, w: &[f32], b: Option<&[f32]>| {
            let wi = g.initializer(&wname, &[cout, cin], w);
            let mut inputs = vec![x.to_owned(), wi];
            if let Some(b) = b {
                inputs.push(g.initializer(&bname, &[cout], b));
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            g.node("Gemm", linear, &refs, vec![attr_int("transB", 1)])
        };
        match bn {
            None => Ok(gemm(self, &w, b.as_deref())),
            Some(bn) if self.fold => {
                let (s, t) = self.bn_affine(bn, cout)?;
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
                Ok(gemm(self, &folded, Some(&bias)))
            }
            Some(bn) => {
                let y = gemm(self, &w, b.as_deref());
                self.batch_norm_node(&y, bn, cout)
            }
        }
    }
}

fn resnet(
    g: &mut Builder<'_>,
    c: &simclr_stage_model::resnet::ResNetConfig,
) -> Result<String, String> {
    let (counts, bottleneck) = c.blocks().map_err(|e| e.to_string())?;
    let (k, stride) = match c.stem {
        Stem::Cifar => (3, 1),
        Stem::ImageNet => (7, 2),
    };
    let mut y = g.conv_bn(
        INPUT,
        "conv1",
        "bn1",
        c.in_channels,
        c.width,
        k,
        stride,
        Some("relu"),
    )?;
    if c.stem == Stem::ImageNet {
        // Padding of MaxPool is ignored in the max, as the -inf padding of the model stages.
        y = g.node(
            "MaxPool",
            "maxpool",
            &[&y],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        );
    }
    let expansion = if bottleneck { 4 } else { 1 };
    let mut cin = c.width;
    for (stage, &count) in counts.iter().enumerate() {
        let planes = c.width << stage;
        let cout = planes * expansion;
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{i}", stage + 1);
            let x = y.clone();
            let layers: Vec<(usize, usize, usize, usize)> = if bottleneck {
                vec![
                    (cin, planes, 1, 1),
                    (planes, planes, 3, stride),
                    (planes, cout, 1, 1),
                ]
            } else {
                vec![(cin, planes, 3, stride), (planes, cout, 3, 1)]
            };
            let last = layers.len() - 1;
            let mut z = x.clone();
            for (j, &(a, b, k, s)) in layers.iter().enumerate() {
                let relu = (j != last).then(|| format!("{p}.relu{}", j + 1));
                z = g.conv_bn(
                    &z,
                    &format!("{p}.conv{}", j + 1),
                    &format!("{p}.bn{}", j + 1),
                    a,
                    b,
                    k,
                    s,
                    relu.as_deref(),
                )?;
            }
            let shortcut = if stride != 1 || cin != cout {
                g.conv_bn(
                    &x,
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    cin,
                    cout,
                    1,
                    stride,
                    None,
                )?
            } else {
                x
            };
            let sum = g.node("Add", &format!("{p}.add"), &[&z, &shortcut], vec![]);
            y = g.node("Relu", &format!("{p}.relu"), &[&sum], vec![]);
            cin = cout;
        }
    }
    Ok(y)
}

fn small_cnn(g: &mut Builder<'_>, in_channels: usize, width: usize) -> Result<String, String> {
    let mut y = INPUT.to_owned();
    let mut cin = in_channels;
    for (i, (mult, stride)) in simclr_stage_model::small_cnn::LAYERS
        .into_iter()
        .enumerate()
    {
        let p = format!("features.{i}");
        y = g.conv_bn(
            &y,
            &format!("{p}.conv"),
            &format!("{p}.bn"),
            cin,
            width * mult,
            3,
            stride,
            Some(&format!("{p}.relu")),
        )?;
        cin = width * mult;
    }
    Ok(y)
}

/// The head's nodes from `features`; returns the size of z.
fn projector(g: &mut Builder<'_>, kind: ProjectorKind, input: usize) -> Result<usize, String> {
    if kind == ProjectorKind::None {
        g.node_named("Identity", "head", &[FEATURES], PROJECTION, vec![]);
        return Ok(input);
    }
    let (sizes, batch_norm) = kind.sizes(input).map_err(|e| e.to_string())?;
    let mut y = FEATURES.to_owned();
    let n = sizes.len() - 1;
    for (i, pair) in sizes.windows(2).enumerate() {
        let hidden = i + 1 < n;
        let bn = (batch_norm && hidden).then(|| format!("head_bn.{i}"));
        y = g.linear(&y, &format!("head.{i}"), bn.as_deref(), pair[0], pair[1])?;
        if hidden {
            y = g.node("Relu", &format!("head.{i}.relu"), &[&y], vec![]);
        }
    }
    g.node_named("Identity", "head", &[&y], PROJECTION, vec![]);
    Ok(sizes[n])
}
