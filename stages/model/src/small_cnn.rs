//! `small_cnn`: a four-layer convolutional encoder for fast tests and tiny experiments.
//!
//! conv3×3 → BN → ReLU, four times, with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2, then
//! global average pooling: h has 8w features. BatchNorm runs in training mode like the
//! ResNet's. Parameters are named `features.{i}.conv.weight` and `features.{i}.bn.*`.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::batch_norm::BatchNorm2d;
use crate::kernels::conv::Conv;

/// Per layer: channels as a multiple of the width, and stride.
pub const LAYERS: [(usize, usize); 4] = [(1, 1), (2, 2), (4, 2), (8, 2)];

/// The encoder.
#[derive(Debug)]
pub struct SmallCnn {
    layers: Vec<(Conv, BatchNorm2d)>,
    width: usize,
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
        Ok(Self { layers, width })
    }

    /// Size of the representation h (8 × width).
    pub fn feature_dim(&self) -> usize {
        8 * self.width
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
