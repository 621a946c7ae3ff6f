//! The projection head g: `none`, `linear` or `mlp`, the paper's ablation in one enum.
//!
//! > "We use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2)σ(W(1)h_i) where σ is a
//! > ReLU non-linearity. ... a nonlinear projection is better than a linear projection (+3%),
//! > and much better than no projection (>10%)." — \[0\] SimCLR, §2.1 and §4.2.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Linear, VarBuilder};

use crate::encoder::plan::Plan;

/// BatchNorm's ε in the head (PyTorch's default).
const BN_EPS: f64 = 1e-5;

fn linear_name(i: usize) -> String {
    format!("head.{i}")
}

fn norm_name(i: usize) -> String {
    format!("head_bn.{i}")
}

/// Which head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorKind {
    /// z = h.
    None,
    /// z = W h.
    Linear {
        /// Output size.
        out: usize,
    },
    /// `layers` linear layers with ReLU (and optionally BatchNorm) between them.
    Mlp {
        /// Number of linear layers (at least 2).
        layers: usize,
        /// Hidden size.
        hidden: usize,
        /// Output size.
        out: usize,
        /// BatchNorm after every hidden linear layer (SimCLR v2 style).
        batch_norm: bool,
    },
}

impl ProjectorKind {
    /// Sizes of the linear layers' inputs and outputs for representations of size `input`
    /// (`[input, hidden…, out]`; empty for `none`), and whether hidden layers have BatchNorm.
    ///
    /// # Errors
    /// An MLP with fewer than two layers, or a zero size.
    pub fn sizes(&self, input: usize) -> Result<(Vec<usize>, bool)> {
        let (sizes, batch_norm) = match *self {
            ProjectorKind::None => (Vec::new(), false),
            ProjectorKind::Linear { out } => (vec![input, out], false),
            ProjectorKind::Mlp {
                layers,
                hidden,
                out,
                batch_norm,
            } => {
                if layers < 2 {
                    candle_core::bail!("projector: an mlp needs at least 2 layers, got {layers}");
                }
                let mut sizes = vec![input];
                sizes.extend(std::iter::repeat_n(hidden, layers - 1));
                sizes.push(out);
                (sizes, batch_norm)
            }
        };
        if sizes.contains(&0) {
            candle_core::bail!("projector: sizes must be positive, got {sizes:?}");
        }
        Ok((sizes, batch_norm))
    }

    /// Size of z for representations of size `input`.
    pub fn out_size(&self, input: usize) -> usize {
        match *self {
            ProjectorKind::None => input,
            ProjectorKind::Linear { out } | ProjectorKind::Mlp { out, .. } => out,
        }
    }
}

/// The head g, named `head.{i}` / `head_bn.{i}`.
#[derive(Debug)]
pub struct Projector {
    linears: Vec<Linear>,
    norms: Vec<Option<BatchNorm>>,
    sizes: Vec<usize>,
    input: usize,
}

impl Projector {
    /// Build a head for representations of size `input`.
    ///
    /// # Errors
    /// An MLP with fewer than two layers, or a zero size.
    pub fn new(vb: VarBuilder<'_>, input: usize, kind: ProjectorKind) -> Result<Self> {
        let (sizes, batch_norm) = kind.sizes(input)?;
        let mut linears = Vec::new();
        let mut norms = Vec::new();
        for (i, pair) in sizes.windows(2).enumerate() {
            let hidden_layer = i + 2 < sizes.len();
            // Biases are redundant before a BatchNorm.
            let linear = if batch_norm && hidden_layer {
                candle_nn::linear_no_bias(pair[0], pair[1], vb.pp(linear_name(i)))?
            } else {
                candle_nn::linear(pair[0], pair[1], vb.pp(linear_name(i)))?
            };
            linears.push(linear);
            norms.push(if batch_norm && hidden_layer {
                let cfg = BatchNormConfig {
                    eps: BN_EPS,
                    remove_mean: true,
                    affine: true,
                    momentum: 0.1,
                };
                Some(candle_nn::batch_norm(pair[1], cfg, vb.pp(norm_name(i)))?)
            } else {
                None
            });
        }
        Ok(Self {
            linears,
            norms,
            sizes,
            input,
        })
    }

    /// The head's layers in evaluation form, from h to z (the layer `head` names z): the
    /// same order of operations as `forward_t`.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::new(self.input);
        let mut ys = plan.input();
        let last = self.linears.len().saturating_sub(1);
        for (i, (linear, norm)) in self.linears.iter().zip(&self.norms).enumerate() {
            let (cin, cout) = (self.sizes[i], self.sizes[i + 1]);
            ys = plan.linear(linear_name(i), ys, cin, cout, linear.bias().is_some());
            if norm.is_some() {
                ys = plan.batch_norm(norm_name(i), ys, cout, BN_EPS);
            }
            if i != last {
                ys = plan.relu(format!("head.{i}.relu"), ys);
            }
        }
        let z = plan.identity("head", ys);
        let out = self.sizes.last().copied().unwrap_or(self.input);
        plan.finish(z, out)
    }
}

impl ModuleT for Projector {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = xs.clone();
        let last = self.linears.len().saturating_sub(1);
        for (i, (linear, norm)) in self.linears.iter().zip(&self.norms).enumerate() {
            ys = linear.forward(&ys)?;
            if let Some(norm) = norm {
                ys = norm.forward_t(&ys, train)?;
            }
            if i != last {
                ys = ys.relu()?;
            }
        }
        Ok(ys)
    }
}
