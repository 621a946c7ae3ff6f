//! The encoder f: ResNet-18/34/50 with BatchNorm in training mode, parameters named as in
//! torchvision's state dicts (`conv1.weight`, `layer1.0.bn1.running_mean`, ...).
//!
//! > "We opt for simplicity and adopt the commonly used ResNet to obtain h_i = f(x̃_i) =
//! > ResNet(x̃_i) where h_i ∈ R^d is the output after the average pooling layer."
//! > — \[0\] SimCLR, Chen et al. 2020, arXiv:2002.05709, §2.1.
//!
//! candle's stock ResNet runs BatchNorm in inference mode only; here every BatchNorm goes
//! through `ModuleT::forward_t(xs, train)`, which normalises with batch statistics and
//! updates the running mean and (unbiased) variance in training mode, as PyTorch does.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::encoder::plan::{Plan, Value};
use crate::encoder::{Encoder, EncoderKind, Invalid, check_channels};
use crate::kernels::batch_norm::BatchNorm2d;
use crate::kernels::conv::Conv;

/// The `resnet` encoder kind.
pub static KIND: EncoderKind = EncoderKind::of::<ResNet>();

/// The stem of the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Stem {
    /// 3×3 convolution, stride 1, no max-pool: for 28-64 px inputs (CIFAR, Fashion-MNIST).
    #[default]
    #[serde(rename = "cifar")]
    Cifar,
    /// 7×7 convolution, stride 2, then a 3×3 stride-2 max-pool: for 96 px and up (ImageNet).
    #[serde(rename = "imagenet")]
    ImageNet,
}

/// 3×3 max-pooling with stride 2 and padding 1 (`nn.MaxPool2d(3, 2, 1)`): our kernel for f32
/// on the CPU ([`crate::kernels::pool`]), elsewhere built from ops that candle differentiates
/// on every device (candle's own `max_pool2d` has no padding and no backward pass when the
/// stride differs from the kernel size).
///
/// Output `o[i, j] = max(x[2i-1..=2i+1, 2j-1..=2j+1])` over the positions inside the image.
/// Where several inputs tie for the maximum (zeros after the ReLU), our kernel gives the
/// gradient to the first in row-major order, as PyTorch does; candle's ops share it between
/// them (candle's rule for `maximum`).
///
/// # Errors
/// A tensor that is not 4-D.
pub fn max_pool_3x3_s2(xs: &Tensor) -> Result<Tensor> {
    if crate::kernels::pool::applies(xs) {
        return xs
            .contiguous()?
            .apply_op1(crate::kernels::pool::MaxPool3x3S2);
    }
    let (_b, _c, h, w) = xs.dims4()?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    // Pad with -inf: one row/column before, and after up to 2·out + 2 (an even size, so the
    // padded tensor splits into pairs of rows/columns).
    let (hp, wp) = (2 * ho + 2, 2 * wo + 2);
    let xs = pad_neg_inf(xs, 2, 1, hp - h - 1)?;
    let xs = pad_neg_inf(&xs, 3, 1, wp - w - 1)?;
    // Rows: padded row 2i + d for d in 0, 1, 2 = pair i slot 0, pair i slot 1, pair i+1 slot 0.
    let rows = |xs: &Tensor| -> Result<Tensor> {
        let (b, c, hp, wp) = xs.dims4()?;
        let pairs = xs.reshape((b, c, hp / 2, 2, wp))?;
        let even = pairs.narrow(3, 0, 1)?.squeeze(3)?;
        let odd = pairs.narrow(3, 1, 1)?.squeeze(3)?;
        let a = even.narrow(2, 0, hp / 2 - 1)?;
        let b_ = odd.narrow(2, 0, hp / 2 - 1)?;
        let c_ = even.narrow(2, 1, hp / 2 - 1)?;
        a.maximum(&b_)?.maximum(&c_)
    };
    let ys = rows(&xs)?; // [B, C, ho, wp]
    let ys = rows(&ys.transpose(2, 3)?.contiguous()?)?; // [B, C, wo, ho]
    ys.transpose(2, 3)?.contiguous()
}

fn pad_neg_inf(xs: &Tensor, dim: usize, before: usize, after: usize) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(3);
    let shape = |n: usize| {
        let mut dims = xs.dims().to_vec();
        dims[dim] = n;
        dims
    };
    if before > 0 {
        parts.push(
            Tensor::full(f32::NEG_INFINITY, shape(before), xs.device())?.to_dtype(xs.dtype())?,
        );
    }
    parts.push(xs.clone());
    if after > 0 {
        parts.push(
            Tensor::full(f32::NEG_INFINITY, shape(after), xs.device())?.to_dtype(xs.dtype())?,
        );
    }
    Tensor::cat(&parts, dim)
}

/// Architecture of a ResNet: the `params:` of a `resnet` stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// 18, 34 or 50 layers.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Channels of the first stage: 64 is torchvision's ResNet; 16-32 trains in minutes on a
    /// few CPU cores. h has 8·width features (32·width for ResNet-50).
    #[serde(default = "default_width")]
    pub width: usize,
    /// `cifar` (3×3, stride 1, no max-pool) or `imagenet` (7×7, stride 2, max-pool).
    #[serde(default)]
    pub stem: Stem,
    /// Channels of the input views: 1 (gray) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Start each residual block's last BatchNorm γ at 0, so every block starts as the
    /// identity (torchvision's `zero_init_residual`).
    #[serde(default)]
    pub zero_init_residual: bool,
}

fn default_depth() -> usize {
    18
}
fn default_width() -> usize {
    64
}
fn default_channels() -> usize {
    3
}

impl ResNetConfig {
    /// Residual blocks per stage, and whether they are bottlenecks (ResNet-50).
    ///
    /// # Errors
    /// A depth other than 18, 34 or 50.
    pub fn blocks(&self) -> Result<([usize; 4], bool)> {
        Ok(match self.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            d => candle_core::bail!("resnet: depth {d} is not supported (18, 34 or 50)"),
        })
    }

    /// Size of the representation h.
    pub fn feature_dim(&self) -> usize {
        let expansion = if self.depth == 50 { 4 } else { 1 };
        8 * self.width * expansion
    }
}

fn conv(
    vb: VarBuilder<'_>,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv> {
    Conv::new(vb, cin, cout, k, stride, padding)
}

/// BatchNorm; `zero` starts γ at 0 (torchvision's zero_init_residual, for the block's last one).
fn bn(vb: VarBuilder<'_>, c: usize, zero: bool) -> Result<BatchNorm2d> {
    BatchNorm2d::new(vb, c, zero)
}

/// A residual block (basic for 18/34, bottleneck for 50).
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv, BatchNorm2d)>,
    downsample: Option<(Conv, BatchNorm2d)>,
    /// The variables' prefix (`layer1.0`).
    name: String,
}

impl Block {
    fn new(
        vb: VarBuilder<'_>,
        cin: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
        zero_last: bool,
    ) -> Result<Self> {
        let expansion = if bottleneck { 4 } else { 1 };
        let cout = planes * expansion;
        let convs = if bottleneck {
            vec![
                (
                    conv(vb.pp("conv1"), cin, planes, 1, 1, 0)?,
                    bn(vb.pp("bn1"), planes, false)?,
                ),
                (
                    conv(vb.pp("conv2"), planes, planes, 3, stride, 1)?,
                    bn(vb.pp("bn2"), planes, false)?,
                ),
                (
                    conv(vb.pp("conv3"), planes, cout, 1, 1, 0)?,
                    bn(vb.pp("bn3"), cout, zero_last)?,
                ),
            ]
        } else {
            vec![
                (
                    conv(vb.pp("conv1"), cin, planes, 3, stride, 1)?,
                    bn(vb.pp("bn1"), planes, false)?,
                ),
                (
                    conv(vb.pp("conv2"), planes, cout, 3, 1, 1)?,
                    bn(vb.pp("bn2"), cout, zero_last)?,
                ),
            ]
        };
        let downsample = if stride != 1 || cin != cout {
            Some((
                conv(vb.pp("downsample.0"), cin, cout, 1, stride, 0)?,
                bn(vb.pp("downsample.1"), cout, false)?,
            ))
        } else {
            None
        };
        Ok(Self {
            convs,
            downsample,
            name: vb.prefix(),
        })
    }

    /// The block's layers: the same order of operations as [`Block::forward_t`].
    fn plan(&self, plan: &mut Plan, x: Value) -> Value {
        let p = &self.name;
        let mut ys = x;
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            let y = c.plan(plan, ys);
            ys = b.plan(plan, y);
            if i != last {
                ys = plan.relu(format!("{p}.relu{}", i + 1), ys);
            }
        }
        let shortcut = match &self.downsample {
            Some((c, b)) => {
                let y = c.plan(plan, x);
                b.plan(plan, y)
            }
            None => x,
        };
        let sum = plan.add(format!("{p}.add"), ys, shortcut);
        plan.relu(format!("{p}.relu"), sum)
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = xs.clone();
        let last = self.convs.len() - 1;
        for (i, (c, b)) in self.convs.iter().enumerate() {
            ys = b.forward(&c.forward(&ys)?, train, i != last)?;
        }
        let shortcut = match &self.downsample {
            Some((c, b)) => b.forward(&c.forward(xs)?, train, false)?,
            None => xs.clone(),
        };
        crate::kernels::residual::add_relu(&ys, &shortcut)
    }
}

/// The encoder f: images `[B, C, H, W]` → representations h `[B, feature_dim]`.
#[derive(Debug)]
pub struct ResNet {
    stem: (Conv, BatchNorm2d),
    layers: Vec<Block>,
    config: ResNetConfig,
}

impl ResNet {
    /// Build with variables from `vb` (named as torchvision's state dict).
    ///
    /// # Errors
    /// An unsupported depth, or a variable of the wrong shape in `vb`.
    pub fn new(vb: VarBuilder<'_>, config: ResNetConfig) -> Result<Self> {
        let (counts, bottleneck) = config.blocks()?;
        let stem_conv = match config.stem {
            Stem::Cifar => conv(vb.pp("conv1"), config.in_channels, config.width, 3, 1, 1)?,
            Stem::ImageNet => conv(vb.pp("conv1"), config.in_channels, config.width, 7, 2, 3)?,
        };
        let stem = (stem_conv, bn(vb.pp("bn1"), config.width, false)?);
        let expansion = if bottleneck { 4 } else { 1 };
        let mut layers = Vec::new();
        let mut cin = config.width;
        for (stage, &count) in counts.iter().enumerate() {
            let planes = config.width << stage;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                layers.push(Block::new(
                    vb.pp(name),
                    cin,
                    planes,
                    stride,
                    bottleneck,
                    config.zero_init_residual,
                )?);
                cin = planes * expansion;
            }
        }
        Ok(Self {
            stem,
            layers,
            config,
        })
    }

    /// The architecture.
    pub fn config(&self) -> ResNetConfig {
        self.config
    }
}

impl Encoder for ResNet {
    const KIND: &'static str = "resnet";
    const SUMMARY: &'static str = "encoder f: ResNet-18/34/50 (CIFAR or ImageNet stem), BatchNorm in training mode; emits h = f(x)";
    const EXAMPLE: &'static str =
        crate::encoder_example!("resnet", "{ depth: 18, width: 4, in_channels: 3 }");
    type Config = ResNetConfig;

    fn check(config: &ResNetConfig) -> std::result::Result<(), Invalid> {
        if ![18, 34, 50].contains(&config.depth) {
            return Err(Invalid {
                field: "depth",
                message: format!("`depth` must be 18, 34 or 50, found {}", config.depth),
                help: "ResNet-18 is SimCLR's CIFAR encoder, ResNet-50 its ImageNet one".into(),
            });
        }
        if !(1..=512).contains(&config.width) {
            return Err(Invalid {
                field: "width",
                message: format!("`width` must be 1-512, found {}", config.width),
                help: "64 is torchvision's ResNet; 16 trains quickly on a CPU".into(),
            });
        }
        check_channels(config.in_channels)
    }

    fn in_channels(config: &ResNetConfig) -> usize {
        config.in_channels
    }

    fn feature_dim(config: &ResNetConfig) -> usize {
        config.feature_dim()
    }

    fn describe(config: &ResNetConfig) -> String {
        format!(
            "ResNet-{} (width {}, {} stem)",
            config.depth,
            config.width,
            match config.stem {
                Stem::Cifar => "CIFAR",
                Stem::ImageNet => "ImageNet",
            }
        )
    }

    fn build(config: &ResNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        ResNet::new(vb, *config)
    }

    /// The same order of operations as `forward_t`; the ImageNet stem's max-pool pads with
    /// −∞ in both (padding never wins the max).
    fn plan(&self) -> Plan {
        let mut plan = Plan::new(self.config.in_channels);
        let x = plan.input();
        let (conv, bn) = &self.stem;
        let y = conv.plan(&mut plan, x);
        let mut ys = bn.plan(&mut plan, y);
        ys = plan.relu("relu", ys);
        if self.config.stem == Stem::ImageNet {
            ys = plan.max_pool("maxpool", ys, 3, 2, 1);
        }
        for block in &self.layers {
            ys = block.plan(&mut plan, ys);
        }
        let pooled = plan.global_avg_pool("avgpool", ys);
        let h = plan.flatten("flatten", pooled);
        plan.finish(h, self.config.feature_dim())
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = self
            .stem
            .1
            .forward(&self.stem.0.forward(xs)?, train, true)?;
        if self.config.stem == Stem::ImageNet {
            ys = max_pool_3x3_s2(&ys)?;
        }
        for block in &self.layers {
            ys = block.forward_t(&ys, train)?;
        }
        // Global average pooling over H and W: h = [B, C].
        ys.mean(3)?.mean(2)
    }
}
