//! `small_cnn`: a four-layer convolutional encoder for fast tests and tiny experiments.
//!
//! conv3×3 → BN → ReLU, four times, with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2, then
//! global average pooling: h has 8w features. BatchNorm runs in training mode like the
//! ResNet's. Parameters are named `features.{i}.conv.weight` and `features.{i}.bn.*`.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::encoder::plan::Plan;
use crate::encoder::{Encoder, EncoderKind, Invalid, check_channels};
use crate::kernels::batch_norm::BatchNorm2d;
use crate::kernels::conv::Conv;

/// The `small_cnn` encoder kind.
pub static KIND: EncoderKind = EncoderKind::of::<SmallCnn>();

/// Parameters of `small_cnn`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmallCnnConfig {
    /// Channels of the first layer (then 2·, 4·, 8·width); h has 8·width features.
    #[serde(default = "default_width")]
    pub width: usize,
    /// Channels of the input views: 1 or 3.
    #[serde(default = "default_channels")]
    pub in_channels: usize,
}

fn default_width() -> usize {
    16
}
fn default_channels() -> usize {
    3
}

/// Per layer: channels as a multiple of the width, and stride.
pub const LAYERS: [(usize, usize); 4] = [(1, 1), (2, 2), (4, 2), (8, 2)];

/// The encoder.
#[derive(Debug)]
pub struct SmallCnn {
    layers: Vec<(Conv, BatchNorm2d)>,
    width: usize,
    in_channels: usize,
}

impl SmallCnn {
    /// Build with base width `width` for `in_channels` input channels.
    ///
    /// # Errors
    /// A zero width or channel count, or a variable of the wrong shape in `vb`.
    pub fn new(vb: VarBuilder<'_>, in_channels: usize, width: usize) -> Result<Self> {
        if width == 0 || in_channels == 0 {
            candle_core::bail!("small_cnn: width and input channels must be positive");
        }
        let mut layers = Vec::new();
        let mut cin = in_channels;
        for (i, (mult, stride)) in LAYERS.into_iter().enumerate() {
            let cout = width * mult;
            let vb = vb.pp(format!("features.{i}"));
            let conv = Conv::new(vb.pp("conv"), cin, cout, 3, stride, 1)?;
            layers.push((conv, BatchNorm2d::new(vb.pp("bn"), cout, false)?));
            cin = cout;
        }
        Ok(Self {
            layers,
            width,
            in_channels,
        })
    }

    /// Size of the representation h (8 × width).
    pub fn feature_dim(&self) -> usize {
        8 * self.width
    }
}

impl Encoder for SmallCnn {
    const KIND: &'static str = "small_cnn";
    const SUMMARY: &'static str = "encoder f: four conv-BN-ReLU layers and global pooling, for fast tests and tiny experiments";
    const EXAMPLE: &'static str =
        crate::encoder_example!("small_cnn", "{ width: 4, in_channels: 3 }");
    type Config = SmallCnnConfig;

    fn check(config: &SmallCnnConfig) -> std::result::Result<(), Invalid> {
        if !(1..=512).contains(&config.width) {
            return Err(Invalid {
                field: "width",
                message: format!("`width` must be 1-512, found {}", config.width),
                help: "8-32 is typical for this network".into(),
            });
        }
        check_channels(config.in_channels)
    }

    fn in_channels(config: &SmallCnnConfig) -> usize {
        config.in_channels
    }

    fn feature_dim(config: &SmallCnnConfig) -> usize {
        8 * config.width
    }

    fn describe(config: &SmallCnnConfig) -> String {
        format!("small_cnn (width {})", config.width)
    }

    fn build(config: &SmallCnnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        SmallCnn::new(vb, config.in_channels, config.width)
    }

    fn plan(&self) -> Plan {
        let mut plan = Plan::new(self.in_channels);
        let mut ys = plan.input();
        for (i, (conv, bn)) in self.layers.iter().enumerate() {
            let y = conv.plan(&mut plan, ys);
            ys = bn.plan(&mut plan, y);
            ys = plan.relu(format!("features.{i}.relu"), ys);
        }
        let pooled = plan.global_avg_pool("avgpool", ys);
        let h = plan.flatten("flatten", pooled);
        plan.finish(h, self.feature_dim())
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = xs.clone();
        for (conv, bn) in &self.layers {
            ys = bn.forward(&conv.forward(&ys)?, train, true)?;
        }
        ys.mean(3)?.mean(2)
    }
}
