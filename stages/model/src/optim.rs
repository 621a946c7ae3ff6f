//! Optimizers over candle variables: SGD (momentum, Nesterov, weight decay), LARS and AdamW.
//! candle-nn ships plain SGD (no momentum) and an AdamW without parameter exclusions or
//! checkpointable state.
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

/// Named optimizer state, as saved in checkpoints: `<param>.<buffer>` → tensor.
pub type NamedState = std::collections::HashMap<String, Tensor>;

/// What every optimizer offers.
pub trait Optimizer: Send {
    /// Apply one update with learning rate `lr`.
    ///
    /// # Errors
    /// A tensor operation failure.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;

    /// The optimizer's state (momentum buffers, moment estimates, step count), named
    /// `<param>.<buffer>`, for checkpoints. The tensors are never modified in place later, so
    /// the returned handles stay valid after further steps.
    fn state(&self) -> NamedState;

    /// Restore state saved by [`Optimizer::state`].
    ///
    /// # Errors
    /// A buffer for an unknown parameter or of the wrong shape.
    fn set_state(&mut self, state: NamedState) -> Result<()>;
}

/// Save one buffer per parameter as `<name>.<buffer>`.
fn save_buffers(params: &[Param], buffers: &[Option<Tensor>], buffer: &str, out: &mut NamedState) {
    for (p, b) in params.iter().zip(buffers) {
        if let Some(b) = b {
            out.insert(format!("{}.{buffer}", p.name), b.clone());
        }
    }
}

/// Take the `<name>.<buffer>` entries of `state` into one buffer per parameter.
fn load_buffers(
    optimizer: &str,
    params: &[Param],
    state: &mut NamedState,
    buffer: &str,
) -> Result<Vec<Option<Tensor>>> {
    params
        .iter()
        .map(|p| {
            let Some(t) = state.remove(&format!("{}.{buffer}", p.name)) else {
                return Ok(None);
            };
            if t.dims() != p.var.dims() {
                candle_core::bail!(
                    "{optimizer}: saved `{buffer}` of `{}` has shape {:?}, the parameter {:?}",
                    p.name,
                    t.dims(),
                    p.var.dims()
                );
            }
            Ok(Some(t.to_device(p.var.device())?.to_dtype(p.var.dtype())?))
        })
        .collect()
}

/// Fail on state entries no parameter claimed (a checkpoint of another model).
fn check_consumed(optimizer: &str, state: &NamedState) -> Result<()> {
    if let Some(name) = state.keys().min() {
        candle_core::bail!(
            "{optimizer}: the saved state has `{name}` (and {} more entries) for no parameter of this model",
            state.len() - 1
        );
    }
    Ok(())
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
                *v = Some(next.detach());
                update
            } else {
                g
            };
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    fn state(&self) -> NamedState {
        let mut out = NamedState::new();
        save_buffers(&self.params, &self.velocity, "momentum", &mut out);
        out
    }

    fn set_state(&mut self, mut state: NamedState) -> Result<()> {
        self.velocity = load_buffers("sgd", &self.params, &mut state, "momentum")?;
        check_consumed("sgd", &state)
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

/// ‖t‖₂ as a 0-d tensor on t's device (no host round trip).
fn norm(t: &Tensor) -> Result<Tensor> {
    t.sqr()?.sum_all()?.sqrt()
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
                // The trust ratio stays on the device: reading the norms back to the host
                // would synchronise the device twice per parameter.
                let (wn, gn) = (norm(w)?, norm(&g)?);
                let both_positive = wn.gt(0.0)?.mul(&gn.gt(0.0)?)?;
                let ratio = both_positive.where_cond(
                    &((wn * self.trust)? / gn)?,
                    &Tensor::ones((), w.dtype(), w.device())?,
                )?;
                (g, Some(ratio))
            } else {
                (g.clone(), None)
            };
            let scaled = match ratio {
                Some(ratio) => g.broadcast_mul(&(ratio * lr)?)?,
                None => (&g * lr)?,
            };
            let next = match v.as_ref() {
                Some(prev) => ((prev * self.momentum)? + &scaled)?,
                None => scaled.clone(),
            };
            let update = if self.nesterov {
                ((&next * self.momentum)? + &scaled)?
            } else {
                next.clone()
            };
            *v = Some(next.detach());
            p.var.set(&(w - update)?)?;
        }
        Ok(())
    }

    fn state(&self) -> NamedState {
        let mut out = NamedState::new();
        save_buffers(&self.params, &self.velocity, "momentum", &mut out);
        out
    }

    fn set_state(&mut self, mut state: NamedState) -> Result<()> {
        self.velocity = load_buffers("lars", &self.params, &mut state, "momentum")?;
        check_consumed("lars", &state)
    }
}

/// AdamW (Loshchilov & Hutter 2019), as `torch.optim.AdamW`:
///
/// ```text
/// w = w − lr·λ·w                     (decoupled weight decay; adapted parameters only)
/// m = β1·m + (1 − β1)·g,  v = β2·v + (1 − β2)·g²
/// w = w − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
/// ```
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    t: u64,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
}

impl AdamW {
    /// AdamW over `params`.
    pub fn new(params: Vec<Param>, betas: (f64, f64), eps: f64, weight_decay: f64) -> Self {
        let n = params.len();
        Self {
            params,
            betas,
            eps,
            weight_decay,
            t: 0,
            m: vec![None; n],
            v: vec![None; n],
        }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.betas;
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for ((p, m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let w = p.var.as_tensor();
            let w = if p.adapt && self.weight_decay != 0.0 {
                (w * (1.0 - lr * self.weight_decay))?
            } else {
                w.clone()
            };
            let next_m = match m.as_ref() {
                Some(prev) => ((prev * b1)? + (g * (1.0 - b1))?)?,
                None => (g * (1.0 - b1))?,
            };
            let next_v = match v.as_ref() {
                Some(prev) => ((prev * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                None => (g.sqr()? * (1.0 - b2))?,
            };
            let denom = ((&next_v / c2)?.sqrt()? + self.eps)?;
            let update = ((&next_m / c1)? / denom)?;
            p.var.set(&(w - (update * lr)?)?)?;
            *m = Some(next_m.detach());
            *v = Some(next_v.detach());
        }
        Ok(())
    }

    fn state(&self) -> NamedState {
        let mut out = NamedState::new();
        save_buffers(&self.params, &self.m, "exp_avg", &mut out);
        save_buffers(&self.params, &self.v, "exp_avg_sq", &mut out);
        if let Ok(t) = Tensor::new(&[self.t as f64], &candle_core::Device::Cpu) {
            out.insert("step".into(), t);
        }
        out
    }

    fn set_state(&mut self, mut state: NamedState) -> Result<()> {
        self.m = load_buffers("adamw", &self.params, &mut state, "exp_avg")?;
        self.v = load_buffers("adamw", &self.params, &mut state, "exp_avg_sq")?;
        self.t = match state.remove("step") {
            Some(t) => t
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?
                .first()
                .copied()
                .unwrap_or(0.0) as u64,
            None => 0,
        };
        check_consumed("adamw", &state)
    }
}
