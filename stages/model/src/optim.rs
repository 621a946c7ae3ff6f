//! Optimizers over candle variables: SGD (momentum, Nesterov, weight decay) and LARS.
//! candle-nn ships plain SGD (no momentum) and AdamW only.
//!
//! Parameters are registered with their names; following SimCLR, biases and BatchNorm
//! parameters (1-D tensors) are excluded from weight decay and from LARS's trust ratio.
//! Variables without a gradient (BatchNorm running statistics) are never touched.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// One trainable tensor.
#[derive(Debug, Clone)]
pub struct Param {
    /// Its name (torchvision state-dict style, e.g. `layer1.0.conv1.weight`).
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Whether weight decay and layer adaptation apply (false for biases and BatchNorm).
    pub adapt: bool,
}

impl Param {
    /// A parameter; biases and BatchNorm parameters (1-D, or named `bias` / `bn` / `running_`)
    /// are excluded from weight decay and adaptation, as in SimCLR.
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let name = name.into();
        let excluded = var.rank() <= 1
            || name.ends_with("bias")
            || name.contains("bn")
            || name.contains("running_");
        Self {
            name,
            var,
            adapt: !excluded,
        }
    }
}

/// The trainable parameters of a variable map, sorted by name: every variable except
/// BatchNorm running statistics (which get no gradient).
///
/// # Errors
/// A poisoned variable map.
pub fn trainable_params(map: &candle_nn::VarMap) -> Result<Vec<Param>> {
    let data = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map poisoned".into()))?;
    let mut named: Vec<(String, Var)> = data
        .iter()
        .filter(|(n, _)| !n.contains("running_"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named.into_iter().map(|(n, v)| Param::new(n, v)).collect())
}

/// Check and take optimizer state restored from a checkpoint.
fn restore(
    optimizer: &str,
    state: Vec<Option<Tensor>>,
    params: usize,
) -> Result<Vec<Option<Tensor>>> {
    if state.len() != params {
        candle_core::bail!(
            "{optimizer}: state for {} parameters, have {params}",
            state.len()
        );
    }
    Ok(state)
}

/// What every optimizer offers.
pub trait Optimizer {
    /// Apply one update with learning rate `lr`.
    ///
    /// # Errors
    /// A tensor operation failure.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;

    /// The optimizer's state tensors (momentum buffers), in parameter order, for checkpoints.
    fn state(&self) -> Vec<Option<Tensor>>;

    /// Restore state saved by [`Optimizer::state`].
    ///
    /// # Errors
    /// A state of the wrong length.
    fn set_state(&mut self, state: Vec<Option<Tensor>>) -> Result<()>;
}

/// SGD: `v = μ·v + (g + λ·w)`, `w -= lr·v` (Nesterov: `w -= lr·(g' + μ·v)`), as PyTorch.
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    velocity: Vec<Option<Tensor>>,
}

impl Sgd {
    /// SGD over `params`.
    pub fn new(params: Vec<Param>, momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let n = params.len();
        Self {
            params,
            momentum,
            nesterov,
            weight_decay,
            velocity: vec![None; n],
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (p, v) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let w = p.var.as_tensor();
            let g = if p.adapt && self.weight_decay != 0.0 {
                (g + (w * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let update = if self.momentum != 0.0 {
                let next = match v.as_ref() {
                    Some(prev) => ((prev * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                let update = if self.nesterov {
                    (&g + (&next * self.momentum)?)?
                } else {
                    next.clone()
                };
                *v = Some(next);
                update
            } else {
                g
            };
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<Option<Tensor>> {
        self.velocity.clone()
    }

    fn set_state(&mut self, state: Vec<Option<Tensor>>) -> Result<()> {
        self.velocity = restore("sgd", state, self.params.len())?;
        Ok(())
    }
}

/// LARS, as in SimCLR's `LARSOptimizer` (You et al. 2017, arXiv:1708.03888):
///
/// ```text
/// g' = g + λ·w                                  (adapted parameters only)
/// r  = η·‖w‖/‖g'‖ if both norms > 0, else 1     (adapted parameters only; else r = 1)
/// v  = μ·v + lr·r·g'
/// w  = w − v                                    (Nesterov: w − (μ·v + lr·r·g'))
/// ```
#[derive(Debug)]
pub struct Lars {
    params: Vec<Param>,
    momentum: f64,
    trust: f64,
    weight_decay: f64,
    nesterov: bool,
    velocity: Vec<Option<Tensor>>,
}

/// SimCLR's trust coefficient η.
pub const DEFAULT_TRUST: f64 = 0.001;

impl Lars {
    /// LARS over `params`.
    pub fn new(
        params: Vec<Param>,
        momentum: f64,
        trust: f64,
        weight_decay: f64,
        nesterov: bool,
    ) -> Self {
        let n = params.len();
        Self {
            params,
            momentum,
            trust,
            weight_decay,
            nesterov,
            velocity: vec![None; n],
        }
    }
}

fn norm(t: &Tensor) -> Result<f64> {
    t.sqr()?
        .sum_all()?
        .sqrt()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()
}

impl Optimizer for Lars {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (p, v) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let w = p.var.as_tensor();
            let (g, ratio) = if p.adapt {
                let g = if self.weight_decay != 0.0 {
                    (g + (w * self.weight_decay)?)?
                } else {
                    g.clone()
                };
                let (wn, gn) = (norm(w)?, norm(&g)?);
                let ratio = if wn > 0.0 && gn > 0.0 {
                    self.trust * wn / gn
                } else {
                    1.0
                };
                (g, ratio)
            } else {
                (g.clone(), 1.0)
            };
            let scaled = (&g * (lr * ratio))?;
            let next = match v.as_ref() {
                Some(prev) => ((prev * self.momentum)? + &scaled)?,
                None => scaled.clone(),
            };
            let update = if self.nesterov {
                ((&next * self.momentum)? + &scaled)?
            } else {
                next.clone()
            };
            *v = Some(next);
            p.var.set(&(w - update)?)?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<Option<Tensor>> {
        self.velocity.clone()
    }

    fn set_state(&mut self, state: Vec<Option<Tensor>>) -> Result<()> {
        self.velocity = restore("lars", state, self.params.len())?;
        Ok(())
    }
}
