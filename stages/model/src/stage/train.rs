//! The `nt_xent` stage: NT-Xent loss over the 2N projections, one backward pass through every
//! model stage, and the optimizer step (LARS, SGD or AdamW) on a warm-up + cosine schedule.
//!
//! Per step it appends a line to `steps.jsonl` in the run folder (step, epoch, loss, lr,
//! images/s, seconds per stage), shows step, loss, lr, images/s and ETA next to the progress
//! bar, and emits the state after the update (weights copied, optimizer state) for checkpoint
//! sinks. At the end it draws `loss.png`.
//!
//! On `W` ranks (docs/distributed.md) each rank holds `N/W` of the global batch's samples. The
//! loss is the global one: every rank gathers all ranks' projections, computes NT-Xent over the
//! whole `2N × 2N` similarity, and back-propagates into its own rows only (the other ranks'
//! rows are constants here); the parameter gradients are then **summed** over the ranks — no
//! division anywhere, so the gradient is the one-process gradient of the same batch. Every
//! rank ends the step with the same weights (the sum is bit-identical on all ranks), which a
//! checksum confirms every `distributed.check_every` steps. Rank 0 alone writes the log.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    Activations, BuildContext, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError,
    PortType, Stage, StageContext, StageError, StageFactory, StageKind,
};

use super::{Forward, ParamGroup, TrainState, candle_err, snapshot};
use crate::loss::nt_xent;
use crate::optim::{AdamW, Lars, NamedState, Optimizer, Sgd, trainable_params};
use crate::schedule::{LrScaling, WarmupCosine};

/// The optimizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerChoice {
    /// LARS (SimCLR's optimizer): momentum, trust ratio, weight decay; biases and BatchNorm
    /// parameters excluded from both.
    #[default]
    Lars,
    /// SGD with momentum (optionally Nesterov) and weight decay.
    Sgd,
    /// AdamW with decoupled weight decay.
    Adamw,
}

impl OptimizerChoice {
    fn name(self) -> &'static str {
        match self {
            OptimizerChoice::Lars => "lars",
            OptimizerChoice::Sgd => "sgd",
            OptimizerChoice::Adamw => "adamw",
        }
    }
}

/// Parameters of `nt_xent`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// NT-Xent temperature τ (SimCLR: 0.5 for CIFAR-10, 0.1 for ImageNet with large batches).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// `lars`, `sgd` or `adamw`.
    #[serde(default)]
    pub optimizer: OptimizerChoice,
    /// Base learning rate, scaled by `lr_scaling`. Unset: 0.3 for lars, 0.06 for sgd (both
    /// ·B/256), 0.001 for adamw.
    #[serde(default)]
    pub lr: Option<f64>,
    /// `linear` (base·B/256), `sqrt` (base·√B) or `none`. Unset: linear for lars and sgd, none
    /// for adamw.
    #[serde(default)]
    pub lr_scaling: Option<LrScaling>,
    /// Linear warm-up steps before the cosine decay. Unset: 10% of the total steps.
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Steps of the schedule. Unset: batches per epoch × epochs, as the data stages declare.
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Stop after this many steps in all (the schedule still spans `total_steps`, so a
    /// resumed run continues it); `simclr run --max-steps` overrides it.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Stop after the step that brings this run's training time (seconds of steps, data
    /// waits included, start-up not) to this many seconds; the schedule still spans
    /// `total_steps`. `simclr run --max-seconds` overrides it.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// Momentum of lars and sgd.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Nesterov momentum (lars and sgd).
    #[serde(default)]
    pub nesterov: bool,
    /// Weight decay (not applied to biases and BatchNorm parameters). Unset: 1e-6 for lars
    /// (SimCLR), 5e-4 for sgd, 0.05 for adamw.
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// LARS trust coefficient η.
    #[serde(default = "default_trust")]
    pub trust_coefficient: f64,
    /// AdamW's β1, β2.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW's ε.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Write `steps.jsonl` and `loss.png` into the run folder.
    #[serde(default = "yes")]
    pub metrics: bool,
}

fn default_temperature() -> f64 {
    0.5
}
fn default_momentum() -> f64 {
    0.9
}
fn default_trust() -> f64 {
    crate::optim::DEFAULT_TRUST
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn yes() -> bool {
    true
}

impl TrainParams {
    /// The base learning rate (explicit or the optimizer's default).
    pub fn base_lr(&self) -> f64 {
        self.lr.unwrap_or(match self.optimizer {
            OptimizerChoice::Lars => 0.3,
            OptimizerChoice::Sgd => 0.06,
            OptimizerChoice::Adamw => 0.001,
        })
    }

    /// The scaling rule (explicit or the optimizer's default).
    pub fn scaling(&self) -> LrScaling {
        self.lr_scaling.unwrap_or(match self.optimizer {
            OptimizerChoice::Adamw => LrScaling::None,
            _ => LrScaling::Linear,
        })
    }

    /// The weight decay (explicit or the optimizer's default).
    pub fn decay(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.optimizer {
            OptimizerChoice::Lars => 1e-6,
            OptimizerChoice::Sgd => 5e-4,
            OptimizerChoice::Adamw => 0.05,
        })
    }

    /// The schedule for `total` steps at `batch_size` samples per batch.
    pub fn schedule(&self, total: u64, batch_size: usize) -> WarmupCosine {
        WarmupCosine {
            peak: self.scaling().peak(self.base_lr(), batch_size),
            warmup: self.warmup_steps.unwrap_or(total / 10),
            total,
        }
    }

    /// The optimizer over `params`.
    pub fn optimizer(&self, params: Vec<crate::optim::Param>) -> Box<dyn Optimizer> {
        match self.optimizer {
            OptimizerChoice::Lars => Box::new(Lars::new(
                params,
                self.momentum,
                self.trust_coefficient,
                self.decay(),
                self.nesterov,
            )),
            OptimizerChoice::Sgd => {
                Box::new(Sgd::new(params, self.momentum, self.nesterov, self.decay()))
            }
            OptimizerChoice::Adamw => Box::new(AdamW::new(
                params,
                (self.betas[0], self.betas[1]),
                self.eps,
                self.decay(),
            )),
        }
    }
}

/// The trainable parameters of some groups, named `<stage>.<param>`, in group order.
///
/// # Errors
/// A poisoned variable map.
pub fn group_params(groups: &[Arc<ParamGroup>]) -> candle_core::Result<Vec<crate::optim::Param>> {
    let mut all = Vec::new();
    for g in groups {
        for mut p in trainable_params(&g.vars)? {
            p.name = format!("{}.{}", g.stage, p.name);
            all.push(p);
        }
    }
    Ok(all)
}

/// `nt_xent`.
pub static NT_XENT: StageKind = StageKind {
    name: "nt_xent",
    summary: "NT-Xent loss over the 2N views, backward through every model stage, optimizer step (lars | sgd | adamw) on a warm-up + cosine schedule; emits the state after each step",
    input: InputPorts::Accepts(&[PortType::Projections, PortType::Features]),
    output: OutputPort::Emits(PortType::TrainStates),
    parallelism: Parallelism::Single,
    example: crate::encoder_example!("small_cnn", "{ width: 4 }"),
    params: || schemars::schema_for!(TrainParams),
    build,
};

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let params: TrainParams = cx.parse()?;
    if !(params.temperature > 0.0 && params.temperature.is_finite()) {
        return Err(cx.invalid(
            "temperature",
            format!(
                "`temperature` must be positive, found {}",
                params.temperature
            ),
            "SimCLR uses 0.5 (CIFAR-10) or 0.1 (ImageNet)",
        ));
    }
    if !(params.base_lr() > 0.0 && params.base_lr().is_finite()) {
        return Err(cx.invalid(
            "lr",
            format!("`lr` must be positive, found {}", params.base_lr()),
            "e.g. `lr: 0.3` with lars",
        ));
    }
    if !(0.0..1.0).contains(&params.momentum) {
        return Err(cx.invalid(
            "momentum",
            format!("`momentum` must be in [0, 1), found {}", params.momentum),
            "0.9 is standard",
        ));
    }
    if params.decay() < 0.0 {
        return Err(cx.invalid(
            "weight_decay",
            "`weight_decay` must be ≥ 0",
            "SimCLR uses 1e-6 with lars",
        ));
    }
    let total = match params.total_steps.or(cx.upstream.total_batches()) {
        Some(0) => {
            return Err(cx.invalid(
                "total_steps",
                "the run has 0 training steps",
                "give the source more samples or epochs, or lower `batch_size`",
            ));
        }
        Some(n) => n,
        // An upstream stage failed to configure and says so; don't pile on.
        None if cx.upstream.incomplete => 1,
        None => {
            return Err(cx.invalid(
                "total_steps",
                "cannot tell how many steps the run has: the data stages do not declare their length",
                "set `total_steps:` (the schedule's length in batches)",
            ));
        }
    };
    if params.warmup_steps.is_some_and(|w| w > total) {
        return Err(cx.invalid(
            "warmup_steps",
            format!("`warmup_steps` exceeds the {total} steps of the run"),
            "SimCLR warms up for about 10 epochs out of 100-1000",
        ));
    }
    let max_steps = cx.max_steps.or(params.max_steps);
    let max_seconds = cx.max_seconds.or(params.max_seconds);
    if max_seconds.is_some_and(|s| s.is_nan() || s <= 0.0) {
        return Err(cx.invalid(
            "max_seconds",
            "`max_seconds` must be above 0",
            "the training time this run may take, in seconds",
        ));
    }
    let world = cx
        .extension::<simclr_dist::World>()
        .cloned()
        .unwrap_or_default();
    if max_seconds.is_some() && world.size() > 1 {
        return Err(cx.invalid(
            "max_seconds",
            format!(
                "a time limit is not supported over {} ranks: each rank's clock would stop it at another step",
                world.size()
            ),
            "limit the run with `max_steps` (or `--max-steps`), which every rank counts alike",
        ));
    }
    let global_bn = cx.distributed.batch_norm == simclr_core::distributed::BatchNormSync::Global;
    if world.size() > 1 && global_bn && !matches!(cx.device, simclr_core::DeviceSpec::Cpu) {
        return Err(cx.invalid(
            "device",
            format!(
                "global BatchNorm over {} ranks runs on the CPU kernels; device `{}` is not supported with several ranks yet",
                world.size(),
                cx.device
            ),
            "train on `device: cpu`, or set `distributed: { batch_norm: local }`",
        ));
    }
    crate::kernels::batch_norm::set_sync(
        (world.size() > 1 && global_bn).then(|| world.comm.clone()),
    );
    crate::kernels::batch_norm::set_groups(if global_bn {
        1
    } else {
        cx.distributed.local_groups
    });
    let comm = (world.size() > 1).then(|| world.comm.clone());
    let check_every = cx.distributed.check_every;
    let stage = cx.stage_id.to_owned();
    let run_dir = cx.run_dir.to_owned();
    let seed = cx.seed;
    let resume = cx.resume.cloned();
    let batch_size = cx.upstream.batch_size;
    Ok(StageFactory::stage(move |_| Trainer {
        stage: stage.clone(),
        params: params.clone(),
        total,
        max_steps,
        max_seconds,
        training_seconds: 0.0,
        batch_size,
        seed,
        comm: comm.clone(),
        check_every,
        vars: Vec::new(),
        global_bn,
        checked: Vec::new(),
        comm_step: [0.0; 3],
        run_dir: run_dir.clone(),
        resume: resume.clone(),
        next_step: resume.as_ref().map_or(0, |r| r.step),
        epoch: resume.as_ref().map_or(0, |r| r.epoch),
        position: resume.as_ref().map_or(0, |r| r.position),
        optimizer: None,
        groups: Vec::new(),
        schedule: None,
        log: StepLog::default(),
        started: Instant::now(),
        last_step_end: None,
        first_step: None,
    }))
}

struct Trainer {
    stage: String,
    params: TrainParams,
    total: u64,
    max_steps: Option<u64>,
    /// Stop once `training_seconds` reaches it.
    max_seconds: Option<f64>,
    /// Seconds of the steps this run took (as `steps.jsonl` counts them).
    training_seconds: f64,
    batch_size: Option<usize>,
    seed: u64,
    /// The ranks, when there are several.
    comm: Option<simclr_dist::Comm>,
    /// Compare weight checksums every this many steps (0: never).
    check_every: u64,
    /// The trainable variables in the optimizer's order: the gradient buffer's layout.
    vars: Vec<candle_core::Var>,
    /// Whether BatchNorm statistics are global: the running averages are then the same on
    /// every rank too, and the weight checksum covers them.
    global_bn: bool,
    /// What the checksum covers: every variable with global BatchNorm, else the trainable ones.
    checked: Vec<candle_core::Var>,
    /// Seconds of the current step's gather, gradient reduce and BatchNorm collectives.
    comm_step: [f64; 3],
    run_dir: PathBuf,
    resume: Option<simclr_core::ResumePoint>,
    next_step: u64,
    epoch: u32,
    position: u64,
    optimizer: Option<Box<dyn Optimizer>>,
    groups: Vec<Arc<ParamGroup>>,
    schedule: Option<WarmupCosine>,
    /// Opened when the stage starts.
    log: StepLog,
    started: Instant,
    last_step_end: Option<Instant>,
    first_step: Option<u64>,
}

impl Trainer {
    /// Build the optimizer over the groups the first batch went through.
    fn init(&mut self, fwd: &Forward, samples: usize) -> Result<(), StageError> {
        self.groups = fwd.groups.iter().map(|(g, _)| g.clone()).collect();
        let params = group_params(&self.groups).map_err(candle_err("parameters"))?;
        self.vars = params.iter().map(|p| p.var.clone()).collect();
        self.checked = if self.global_bn {
            let mut all = Vec::new();
            for g in &self.groups {
                let data = g
                    .vars
                    .data()
                    .lock()
                    .map_err(|_| StageError::msg("variable map poisoned"))?;
                let mut named: Vec<(&String, &candle_core::Var)> = data.iter().collect();
                named.sort_by(|a, b| a.0.cmp(b.0));
                all.extend(named.into_iter().map(|(_, v)| v.clone()));
            }
            all
        } else {
            self.vars.clone()
        };
        let mut optimizer = self.params.optimizer(params);
        if let Some(resume) = &self.resume {
            let file = resume.checkpoint.join(crate::run_dir::OPTIMIZER);
            let state: NamedState = candle_core::safetensors::load(&file, fwd.tensor.device())
                .map_err(|e| {
                    StageError::caused(
                        format!("cannot resume the optimizer from {}", file.display()),
                        e,
                    )
                })?
                .into_iter()
                .collect();
            optimizer.set_state(state).map_err(|e| {
                StageError::caused(
                    format!("cannot resume the optimizer from {}", file.display()),
                    e,
                )
            })?;
        }
        self.optimizer = Some(optimizer);
        self.schedule = Some(
            self.params
                .schedule(self.total, self.batch_size.unwrap_or(samples)),
        );
        Ok(())
    }

    /// One training step on the batch `act`: check it, update the weights, record the step,
    /// and give out the state after the update.
    fn step(&mut self, act: &Activations, cx: &StageContext) -> Result<TrainState, StageError> {
        let fwd = self.check(act)?;
        super::bind(fwd.tensor.device())?;
        if self.optimizer.is_none() {
            self.init(fwd, act.ids.len())?;
        }
        let update = self.update(fwd, act.step)?;
        if act.epoch != self.epoch {
            self.epoch = act.epoch;
            self.position = 0;
        }
        // A global position (every rank holds the same number of samples), so a run resumes at
        // any number of ranks.
        let ranks = self.ranks();
        self.position += (act.ids.len() * ranks) as u64;
        self.next_step = act.step + 1;
        let state = self.state(update.loss, update.lr)?;
        self.record(act, fwd, &update, cx)?;
        Ok(state)
    }

    /// The batch's forward pass, if it is the next one and was computed with the current
    /// weights.
    fn check<'a>(&self, act: &'a Activations) -> Result<&'a Forward, StageError> {
        let Some(fwd) = act.payload::<Forward>() else {
            return Err(StageError::msg("projections without a model payload"));
        };
        if act.step != self.next_step {
            return Err(StageError::msg(format!(
                "expected batch {} but got batch {}: batches must arrive in order",
                self.next_step, act.step
            )));
        }
        for (group, used) in &fwd.groups {
            let now = group.version();
            if *used != now {
                return Err(StageError::msg(format!(
                    "step {}: stage `{}` computed this batch with weights from before the previous update (synchronous SGD needs the encoder paced by this stage: add `credit: {{ from: {} }}` to the encoder)",
                    act.step, group.stage, self.stage
                )));
            }
        }
        Ok(fwd)
    }

    /// The loss of the batch, its backward pass and the optimizer's step at the scheduled
    /// learning rate; every group's version moves on.
    fn update(&mut self, fwd: &Forward, step: u64) -> Result<Update, StageError> {
        let t0 = Instant::now();
        let spent = self.comm_spent();
        let z = self.global_projections(&fwd.tensor, step)?;
        let loss = nt_xent(&z, self.params.temperature).map_err(candle_err("nt_xent"))?;
        let value = f64::from(loss.to_scalar::<f32>().map_err(candle_err("nt_xent"))?);
        let lr = self.schedule.map_or(0.0, |s| s.lr(step));
        if !value.is_finite() {
            return Err(StageError::msg(format!(
                "the loss is {value} at step {step} (lr {lr:.4}): training diverged; lower `lr` or raise `warmup_steps`"
            )));
        }
        let t1 = Instant::now();
        let mut grads = loss.backward().map_err(candle_err("backward"))?;
        self.reduce_gradients(&mut grads, step)?;
        let t2 = Instant::now();
        let Some(optimizer) = self.optimizer.as_mut() else {
            return Err(StageError::msg("optimizer not built"));
        };
        optimizer
            .step(&grads, lr)
            .map_err(candle_err("optimizer step"))?;
        drop(grads);
        for g in &self.groups {
            g.version.fetch_add(1, Ordering::SeqCst);
        }
        self.check_weights(step)?;
        let now = self.comm_spent();
        for (s, (a, b)) in self.comm_step.iter_mut().zip(now.iter().zip(spent)) {
            *s = a - b;
        }
        Ok(Update {
            loss: value,
            lr,
            started: t0,
            seconds: [
                ("loss", (t1 - t0).as_secs_f64()),
                ("backward", (t2 - t1).as_secs_f64()),
                ("optimizer", t2.elapsed().as_secs_f64()),
            ],
        })
    }

    /// The number of ranks (1 in one process).
    fn ranks(&self) -> usize {
        self.comm.as_ref().map_or(1, simclr_dist::Comm::size)
    }

    /// Seconds spent so far in gathers, gradient reduces and BatchNorm collectives.
    fn comm_spent(&self) -> [f64; 3] {
        use simclr_dist::Purpose;
        self.comm.as_ref().map_or([0.0; 3], |c| {
            let s = c.stats();
            [
                s.spent(Purpose::Gather).seconds,
                s.spent(Purpose::Reduce).seconds,
                s.spent(Purpose::BatchNorm).seconds,
            ]
        })
    }

    /// Every rank's projections `[2N, d]` in rank order, this rank's rows (`z`, still on the
    /// graph) among constants: the loss's gradient reaches only this rank's rows.
    fn global_projections(
        &self,
        z: &candle_core::Tensor,
        step: u64,
    ) -> Result<candle_core::Tensor, StageError> {
        let Some(comm) = &self.comm else {
            return Ok(z.clone());
        };
        let (_, d) = z.dims2().map_err(candle_err("projections"))?;
        let local = host_f32(z, "projections")?;
        let all = comm
            .all_gather(
                simclr_dist::Purpose::Gather,
                &format!("projection gather, step {step}"),
                bytemuck::cast_slice(&local),
            )
            .map_err(|e| StageError::msg(e.to_string()))?;
        let parts = all
            .iter()
            .enumerate()
            .map(|(r, bytes)| {
                if r == comm.rank() {
                    return Ok(z.clone());
                }
                let v: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
                let rows = v.len() / d.max(1);
                candle_core::Tensor::from_vec(v, (rows, d), z.device())?.to_dtype(z.dtype())
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(candle_err("projections"))?;
        candle_core::Tensor::cat(&parts, 0).map_err(candle_err("projections"))
    }

    /// Sum the parameter gradients over the ranks, in one buffer (the optimizer's order).
    fn reduce_gradients(
        &self,
        grads: &mut candle_core::backprop::GradStore,
        step: u64,
    ) -> Result<(), StageError> {
        let Some(comm) = &self.comm else {
            return Ok(());
        };
        let mut present = Vec::with_capacity(self.vars.len());
        let mut flat: Vec<f32> = Vec::new();
        for var in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let values = host_f32(g, "gradients")?;
                present.push((var, values.len()));
                flat.extend(values);
            }
        }
        comm.all_reduce_sum(
            simclr_dist::Purpose::Reduce,
            &format!("gradient all-reduce, step {step}"),
            &mut flat,
        )
        .map_err(|e| StageError::msg(e.to_string()))?;
        let mut offset = 0;
        for (var, n) in present {
            let g = candle_core::Tensor::from_slice(
                &flat[offset..offset + n],
                var.shape(),
                var.device(),
            )
            .and_then(|t| t.to_dtype(var.dtype()))
            .map_err(candle_err("gradients"))?;
            grads.insert(var.as_tensor(), g);
            offset += n;
        }
        Ok(())
    }

    /// Every `check_every` steps, compare the ranks' weight checksums (BatchNorm's running
    /// averages included when the statistics are global); a rank whose weights differ from
    /// rank 0's stops the run.
    fn check_weights(&self, step: u64) -> Result<(), StageError> {
        let Some(comm) = &self.comm else {
            return Ok(());
        };
        if self.check_every == 0 || !(step + 1).is_multiple_of(self.check_every) {
            return Ok(());
        }
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for var in &self.checked {
            for v in host_f32(var.as_tensor(), "weights")? {
                hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let all = comm
            .all_gather_equal(
                simclr_dist::Purpose::Control,
                &format!("weight checksum, step {step}"),
                &[hash],
            )
            .map_err(|e| StageError::msg(e.to_string()))?;
        let differ: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|&(_, &h)| h != all[0])
            .map(|(r, _)| r.to_string())
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(StageError::msg(format!(
            "after step {step} the weights of rank {} differ from rank 0's (checksums {all:x?}): the ranks diverged",
            differ.join(", ")
        )))
    }

    /// The state after the update (`next_step` moved on): the weights copied, the optimizer's
    /// state by name.
    fn state(&self, loss: f64, lr: f64) -> Result<TrainState, StageError> {
        let groups = self
            .groups
            .iter()
            .map(|g| snapshot(g))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(candle_err("snapshot"))?;
        let mut optimizer_state: Vec<(String, candle_core::Tensor)> = self
            .optimizer
            .as_ref()
            .map(|o| o.state().into_iter().collect())
            .unwrap_or_default();
        optimizer_state.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(TrainState {
            steps: self.next_step,
            epoch: self.epoch,
            position: self.position,
            loss,
            lr,
            total_steps: self.total,
            seed: self.seed,
            groups,
            optimizer: self.params.optimizer.name().to_owned(),
            optimizer_state,
        })
    }

    /// The step's line in `steps.jsonl` and the status next to the progress bar. The step's
    /// wall time is measured between step ends, so it includes any wait for data (images/s is
    /// the pipeline's training throughput).
    fn record(
        &mut self,
        act: &Activations,
        fwd: &Forward,
        update: &Update,
        cx: &StageContext,
    ) -> Result<(), StageError> {
        let now = Instant::now();
        let wall = self.last_step_end.map_or_else(
            || (now - update.started).as_secs_f64() + fwd_secs(fwd),
            |t| (now - t).as_secs_f64(),
        );
        self.last_step_end = Some(now);
        self.training_seconds += wall;
        self.first_step.get_or_insert(act.step);
        // The global batch's images (each rank holds its share).
        let ranks = self.ranks();
        let images_per_s = (act.ids.len() * ranks) as f64 / wall.max(1e-9);
        let (value, lr) = (update.loss, update.lr);
        self.log.record(act.step, value, || {
            let mut stages = serde_json::Map::new();
            for (id, secs) in &fwd.timings {
                stages.insert(id.clone(), (*secs).into());
            }
            for (what, secs) in update.seconds {
                stages.insert(what.into(), secs.into());
            }
            if self.comm.is_some() {
                for (what, secs) in ["comm_gather", "comm_reduce", "comm_batch_norm"]
                    .into_iter()
                    .zip(self.comm_step)
                {
                    stages.insert(what.into(), secs.into());
                }
            }
            serde_json::json!({
                "step": act.step,
                "epoch": act.epoch,
                "loss": value,
                "lr": lr,
                "images_per_s": images_per_s,
                "step_seconds": wall,
                "elapsed_seconds": self.started.elapsed().as_secs_f64(),
                "stage_seconds": stages,
            })
        })?;
        let end = self.max_steps.map_or(self.total, |m| m.min(self.total));
        let done_here = self.next_step - self.first_step.unwrap_or(0);
        let left = end.saturating_sub(self.next_step);
        let per_step = self.started.elapsed().as_secs_f64() / done_here.max(1) as f64;
        cx.set_status(format!(
            "step {}/{end}  loss {value:.4}  lr {lr:.4}  {images_per_s:.0} img/s  eta {}",
            self.next_step,
            human_secs(per_step * left as f64)
        ));
        Ok(())
    }
}

/// A tensor's values as float32 on the host, in row-major order (`what` names it in errors).
fn host_f32(t: &candle_core::Tensor, what: &'static str) -> Result<Vec<f32>, StageError> {
    t.to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(candle_err(what))
}

/// What one update did: the loss, the learning rate, when it started and how long its
/// parts took.
struct Update {
    loss: f64,
    lr: f64,
    started: Instant,
    seconds: [(&'static str, f64); 3],
}

/// `steps.jsonl` (a line per step) and, at the end, `loss.png`; off without `metrics`.
#[derive(Default)]
struct StepLog {
    file: Option<BufWriter<File>>,
    /// (step, loss) of every step of the run, earlier segments of a resumed run included.
    history: Vec<(u64, f64)>,
    plot: Option<PathBuf>,
}

impl StepLog {
    /// Open `steps.jsonl` in `run_dir`: fresh, or (resuming) keeping the lines before the
    /// resume step.
    fn open(
        run_dir: &std::path::Path,
        metrics: bool,
        resume: Option<&simclr_core::ResumePoint>,
    ) -> Result<Self, StageError> {
        if !metrics {
            return Ok(Self::default());
        }
        let names = crate::run_dir::RunDir::new(run_dir);
        let path = names.steps();
        std::fs::create_dir_all(run_dir).map_err(|e| {
            StageError::caused(
                format!("cannot create the run folder {}", run_dir.display()),
                e,
            )
        })?;
        let mut history = Vec::new();
        let mut kept = Vec::new();
        if let Some(resume) = resume
            && let Ok(file) = File::open(&path)
        {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let step = v.get("step").and_then(serde_json::Value::as_u64);
                let loss = v.get("loss").and_then(serde_json::Value::as_f64);
                if let (Some(step), Some(loss)) = (step, loss)
                    && step < resume.step
                {
                    history.push((step, loss));
                    kept.push(line);
                }
            }
        }
        let file = File::create(&path)
            .map_err(|e| StageError::caused(format!("cannot write {}", path.display()), e))?;
        let mut w = BufWriter::new(file);
        for line in kept {
            writeln!(w, "{line}").map_err(|e| StageError::caused(path.display().to_string(), e))?;
        }
        Ok(Self {
            file: Some(w),
            history,
            plot: Some(names.loss_plot()),
        })
    }

    /// Remember the step's loss and, when the log is on, append `line()`.
    fn record(
        &mut self,
        step: u64,
        loss: f64,
        line: impl FnOnce() -> serde_json::Value,
    ) -> Result<(), StageError> {
        self.history.push((step, loss));
        if let Some(log) = self.file.as_mut() {
            writeln!(log, "{}", line())
                .and_then(|()| log.flush())
                .map_err(|e| StageError::caused("cannot append to steps.jsonl", e))?;
        }
        Ok(())
    }

    /// Flush the log, note the loss's course and draw `loss.png`.
    fn finish(&mut self, cx: &mut StageContext) -> Result<(), StageError> {
        if let Some(log) = self.file.as_mut() {
            log.flush()
                .map_err(|e| StageError::caused("cannot write steps.jsonl", e))?;
        }
        let (Some(first), Some(last)) = (self.history.first(), self.history.last()) else {
            cx.note("no training step was taken");
            return Ok(());
        };
        cx.note(format!(
            "steps {}..{}: loss {:.4} -> {:.4}",
            first.0,
            last.0 + 1,
            first.1,
            last.1
        ));
        if let Some(path) = &self.plot {
            crate::plot::loss_curve(&self.history, path)
                .map_err(|e| StageError::caused(format!("cannot draw {}", path.display()), e))?;
            cx.note(format!("loss curve: {}", path.display()));
        }
        Ok(())
    }
}

fn fwd_secs(fwd: &Forward) -> f64 {
    fwd.timings.iter().map(|(_, s)| s).sum()
}

/// `93s` → `1m33s`.
fn human_secs(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Stage for Trainer {
    fn on_start(&mut self, _cx: &mut StageContext) -> Result<(), StageError> {
        self.started = Instant::now();
        let leader = self.comm.as_ref().is_none_or(|c| c.rank() == 0);
        self.log = StepLog::open(
            &self.run_dir,
            self.params.metrics && leader,
            self.resume.as_ref(),
        )?;
        Ok(())
    }

    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let act = match msg {
            Message::Projections(a) | Message::Features(a) => a,
            other => {
                return Err(StageError::UnexpectedMessage {
                    expected: "projections",
                    got: other.port_type().name(),
                });
            }
        };
        if let Some(fwd) = act.payload::<Forward>() {
            super::bind(fwd.tensor.device())?;
        }
        let end = self.max_steps.map_or(self.total, |m| m.min(self.total));
        let out_of_time = self.max_seconds.is_some_and(|s| self.training_seconds >= s);
        if self.next_step >= end || out_of_time {
            // Batches already in flight when the last step was taken.
            cx.finish_run();
            return Ok(());
        }
        let state = self.step(&act, cx)?;
        if state.steps >= end || self.max_seconds.is_some_and(|s| self.training_seconds >= s) {
            cx.finish_run();
        }
        out.push(Message::TrainState(Activations {
            step: act.step,
            epoch: act.epoch,
            ids: act.ids.clone(),
            shape: Vec::new(),
            payload: Arc::new(state),
        }))
    }

    fn on_finish(
        &mut self,
        _out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        self.note_communication(cx)?;
        self.log.finish(cx)
    }
}

impl Trainer {
    /// On several ranks: every rank's time in collectives and its share of the training time,
    /// gathered to the run's notes (after the last step: nothing else uses the communicator).
    fn note_communication(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let Some(comm) = &self.comm else {
            return Ok(());
        };
        use simclr_dist::Purpose;
        let [gather, reduce, batch_norm] = self.comm_spent();
        let bytes: u64 = [Purpose::Gather, Purpose::Reduce, Purpose::BatchNorm]
            .iter()
            .map(|&p| comm.stats().spent(p).bytes)
            .sum();
        let mine = [
            gather,
            reduce,
            batch_norm,
            self.started.elapsed().as_secs_f64(),
            bytes as f64,
        ];
        let all = comm
            .all_gather_equal(Purpose::Control, "communication summary", &mine)
            .map_err(|e| StageError::msg(e.to_string()))?;
        let steps = (self.next_step - self.first_step.unwrap_or(self.next_step)).max(1) as f64;
        for (r, v) in all.chunks(5).enumerate() {
            let ms = |secs: f64| secs * 1e3 / steps;
            let total = v[0] + v[1] + v[2];
            cx.note(format!(
                "rank {r}: {:.1} ms of {:.1} ms per step in collectives ({:.1}%): gather {:.1} ms, gradient reduce {:.1} ms, BatchNorm {:.1} ms; {:.2} MB sent per step",
                ms(total),
                ms(v[3]),
                100.0 * total / v[3].max(1e-9),
                ms(v[0]),
                ms(v[1]),
                ms(v[2]),
                v[4] / steps / 1e6
            ));
        }
        Ok(())
    }
}
