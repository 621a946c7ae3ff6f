//! A network's layers in evaluation form, as a list an exporter walks: the one description of
//! an encoder's (or head's) topology outside its candle `forward_t`.
//!
//! Each layer names the tensors it reads by the prefix its weights carry in the variable map
//! (`layer1.0.conv1` reads `layer1.0.conv1.weight`), takes earlier values as inputs and gives
//! one value. BatchNorm here is inference-mode BatchNorm (running statistics); an exporter may
//! fold it into the convolution or linear layer before it. The ONNX writer in
//! `simclr-stage-onnx` turns every layer into one ONNX node (two for a folded pair's one) and
//! its name into the node's name; ONNX Runtime then checks the file against candle's forward
//! pass, so a plan that disagrees with the network fails verification instead of shipping.
//!
//! # Example
//! ```
//! use simclr_stage_model::encoder::plan::{ConvShape, Plan};
//!
//! // conv3×3 → BN → ReLU → global average pool: h has 8 features.
//! let mut p = Plan::new(3);
//! let x = p.input();
//! let y = p.conv("conv", x, ConvShape { cin: 3, cout: 8, kernel: 3, stride: 1, padding: 1 });
//! let y = p.batch_norm("bn", y, 8, 1e-5);
//! let y = p.relu("relu", y);
//! let y = p.global_avg_pool("pool", y);
//! let h = p.flatten("flatten", y);
//! let plan = p.finish(h, 8);
//! assert_eq!(plan.layers().len(), 5);
//! assert_eq!(plan.output(), (h, 8));
//! ```

/// A value of a plan: its input, or the output of one of its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(usize);

impl Value {
    /// The layer that gives this value (`None` for the plan's input).
    pub fn layer(self) -> Option<usize> {
        self.0.checked_sub(1)
    }
}

/// Geometry of a square convolution without bias (weights `[cout, cin, kernel, kernel]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

/// What a layer computes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Op {
    /// Convolution without bias; weight `<name>.weight`.
    Conv(ConvShape),
    /// Inference-mode BatchNorm over `channels` (dimension 1): `<name>.weight`, `.bias`,
    /// `.running_mean`, `.running_var`, with `eps`.
    BatchNorm {
        /// Channels (features, for a 2-D input).
        channels: usize,
        /// The ε added to the variance.
        eps: f64,
    },
    /// `max(x, 0)`.
    Relu,
    /// The sum of its two inputs.
    Add,
    /// Max-pooling over `kernel × kernel` windows; padding never wins the max.
    MaxPool {
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on every side.
        padding: usize,
    },
    /// Mean over the spatial dimensions: `[B, C, H, W]` → `[B, C, 1, 1]`.
    GlobalAvgPool,
    /// `[B, C, 1, 1]` (or any shape) → `[B, C·…]`.
    Flatten,
    /// `y = x·Wᵀ (+ b)`; weight `<name>.weight` `[cout, cin]`, bias `<name>.bias` when `bias`.
    Linear {
        /// Input features.
        cin: usize,
        /// Output features.
        cout: usize,
        /// Whether the layer has a bias.
        bias: bool,
    },
    /// The input, unchanged (names an output).
    Identity,
}

/// One layer: a name (its tensors' prefix and the exported node's name), an operation and
/// the values it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Name.
    pub name: String,
    /// Operation.
    pub op: Op,
    /// Inputs (two for [`Op::Add`], one otherwise).
    pub inputs: Vec<Value>,
}

/// The layers of a network from its input to its output, in an order where every value is
/// computed before it is read.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    in_channels: usize,
    layers: Vec<Layer>,
    output: (Value, usize),
}

impl Plan {
    /// An empty plan whose input has `in_channels` channels (features, for a head).
    pub fn new(in_channels: usize) -> Self {
        Self {
            in_channels,
            layers: Vec::new(),
            output: (Value(0), in_channels),
        }
    }

    /// The plan's input.
    pub fn input(&self) -> Value {
        Value(0)
    }

    /// Channels (or features) of the input.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Every layer, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The output value and its size (h's features, or z's).
    pub fn output(&self) -> (Value, usize) {
        self.output
    }

    /// Declare `value`, of `size` features, the output.
    pub fn finish(mut self, value: Value, size: usize) -> Self {
        self.output = (value, size);
        self
    }

    /// The value layer `index` gives.
    pub fn value(&self, index: usize) -> Value {
        Value(index + 1)
    }

    /// Indices of the layers that read `value`.
    pub fn readers(&self, value: Value) -> impl Iterator<Item = usize> + '_ {
        self.layers
            .iter()
            .enumerate()
            .filter(move |(_, l)| l.inputs.contains(&value))
            .map(|(i, _)| i)
    }

    /// Append a layer; returns its output.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: Vec<Value>) -> Value {
        self.layers.push(Layer {
            name: name.into(),
            op,
            inputs,
        });
        Value(self.layers.len())
    }

    /// A convolution without bias.
    pub fn conv(&mut self, name: impl Into<String>, x: Value, shape: ConvShape) -> Value {
        self.push(name, Op::Conv(shape), vec![x])
    }

    /// Inference-mode BatchNorm.
    pub fn batch_norm(
        &mut self,
        name: impl Into<String>,
        x: Value,
        channels: usize,
        eps: f64,
    ) -> Value {
        self.push(name, Op::BatchNorm { channels, eps }, vec![x])
    }

    /// ReLU.
    pub fn relu(&mut self, name: impl Into<String>, x: Value) -> Value {
        self.push(name, Op::Relu, vec![x])
    }

    /// `a + b`.
    pub fn add(&mut self, name: impl Into<String>, a: Value, b: Value) -> Value {
        self.push(name, Op::Add, vec![a, b])
    }

    /// Max-pooling.
    pub fn max_pool(
        &mut self,
        name: impl Into<String>,
        x: Value,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Value {
        let op = Op::MaxPool {
            kernel,
            stride,
            padding,
        };
        self.push(name, op, vec![x])
    }

    /// Global average pooling (`[B, C, 1, 1]`).
    pub fn global_avg_pool(&mut self, name: impl Into<String>, x: Value) -> Value {
        self.push(name, Op::GlobalAvgPool, vec![x])
    }

    /// Flatten to `[B, features]`.
    pub fn flatten(&mut self, name: impl Into<String>, x: Value) -> Value {
        self.push(name, Op::Flatten, vec![x])
    }

    /// A linear layer.
    pub fn linear(
        &mut self,
        name: impl Into<String>,
        x: Value,
        cin: usize,
        cout: usize,
        bias: bool,
    ) -> Value {
        self.push(name, Op::Linear { cin, cout, bias }, vec![x])
    }

    /// The input unchanged, under a new name.
    pub fn identity(&mut self, name: impl Into<String>, x: Value) -> Value {
        self.push(name, Op::Identity, vec![x])
    }
}
