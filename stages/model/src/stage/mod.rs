//! The model stages: encoders (`resnet`, `small_cnn`), the projection head (`projector`), the
//! loss and optimizer (`nt_xent`) and the checkpoint sink (`checkpoint`).
//!
//! A batch's tensors travel between them as [`Forward`] payloads: the output tensor, still
//! attached to candle's autograd graph, and the parameter groups of every stage it went
//! through. The trainer at the end of the chain computes the loss, runs one backward pass
//! through all of them and updates every group. A credit edge from the trainer back to the
//! encoder keeps SGD synchronous: the encoder starts step k+1 only after step k's update. Each
//! group counts its updates, and the trainer refuses a batch computed with stale weights (a
//! definition without the credit edge), naming the fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use simclr_core::{
    Activations, BuildContext, DeviceSpec, ParamError, Precision, SampleId, StageError,
};

use crate::ModelError;
use crate::encoder::Architecture;

pub mod checkpoint;
pub mod encoder;
pub mod head;
pub mod train;

/// On a rank other than 0 of a distributed run, the stage that stands in for one whose work is
/// rank 0's alone (checkpoints, monitors, files): it takes its messages and does nothing. `None`
/// on rank 0 and in a one-process run.
pub fn follower(cx: &BuildContext<'_>) -> Option<simclr_core::StageFactory> {
    let world = cx.extension::<simclr_dist::World>()?;
    (!world.is_leader()).then(|| simclr_core::StageFactory::stage(|_| Follower))
}

/// See [`follower`].
struct Follower;

impl simclr_core::Stage for Follower {
    fn process(
        &mut self,
        _msg: simclr_core::Message,
        _out: &mut simclr_core::Outputs<'_>,
        _cx: &mut simclr_core::StageContext,
    ) -> Result<(), StageError> {
        Ok(())
    }
}

/// What a parameter group is to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The encoder f: kept after training.
    Encoder,
    /// The projection head g: thrown away after training.
    Projector,
}

/// The parameters of one model stage, shared with the trainer that updates them.
pub struct ParamGroup {
    /// The stage id; checkpoints store the group as `<stage>.safetensors`.
    pub stage: String,
    /// Encoder or projector.
    pub role: Role,
    /// The stage kind (`resnet`, `small_cnn`, `projector`).
    pub kind: String,
    /// The architecture, as the stage's resolved parameters (written into checkpoints).
    pub spec: serde_json::Value,
    /// The encoder's architecture (for an encoder's group): what builds the network again
    /// from a snapshot of its variables.
    pub arch: Option<Architecture>,
    /// Every variable (trainable parameters and BatchNorm running statistics), named as in
    /// torchvision's state dicts.
    pub vars: VarMap,
    /// Optimizer updates applied so far.
    pub version: AtomicU64,
}

impl std::fmt::Debug for ParamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamGroup")
            .field("stage", &self.stage)
            .field("role", &self.role)
            .field("kind", &self.kind)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl ParamGroup {
    /// Updates applied so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

/// A batch's tensor on its way through the model stages.
#[derive(Debug)]
pub struct Forward {
    /// h or z: `[2N, d]`.
    pub tensor: Tensor,
    /// Every group the tensor depends on, with the group's version when it was used.
    pub groups: Vec<(Arc<ParamGroup>, u64)>,
    /// Seconds each stage spent on this batch's forward pass, in order.
    pub timings: Vec<(String, f64)>,
    /// The batch's input views (2N).
    pub views: usize,
}

impl Forward {
    /// Wrap as a message payload, keeping the batch's identity.
    pub fn into_activations(self, step: u64, epoch: u32, ids: Arc<[SampleId]>) -> Activations {
        let shape = self.tensor.dims().to_vec();
        Activations {
            step,
            epoch,
            ids,
            shape,
            payload: Arc::new(self),
        }
    }
}

/// One group's tensors copied at the end of a step.
#[derive(Debug, Clone)]
pub struct GroupSnapshot {
    /// Stage id.
    pub stage: String,
    /// Encoder or projector.
    pub role: Role,
    /// Stage kind.
    pub kind: String,
    /// Architecture.
    pub spec: serde_json::Value,
    /// The encoder's architecture, for an encoder's group.
    pub arch: Option<Architecture>,
    /// Every variable, by name.
    pub tensors: Vec<(String, Tensor)>,
}

/// The state after one optimizer step: everything a checkpoint holds.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Steps completed (this state is after step `steps - 1`).
    pub steps: u64,
    /// Epoch of the next sample.
    pub epoch: u32,
    /// Samples of `epoch` consumed.
    pub position: u64,
    /// The step's loss.
    pub loss: f64,
    /// The step's learning rate.
    pub lr: f64,
    /// Steps in the schedule.
    pub total_steps: u64,
    /// The definition's seed.
    pub seed: u64,
    /// Weights and BatchNorm statistics, per group.
    pub groups: Vec<GroupSnapshot>,
    /// The optimizer's name (`lars`, `sgd`, `adamw`).
    pub optimizer: String,
    /// Its state, named `<stage>.<param>.<buffer>`.
    pub optimizer_state: Vec<(String, Tensor)>,
}

/// The training state a `train_states` message carries, with its device made current on this
/// thread (dropping a previous state frees device memory, which needs the context too). For
/// the sinks that read the trainer's states.
///
/// # Errors
/// Another message type, or a state without a model payload.
pub fn receive_state(msg: simclr_core::Message) -> Result<Arc<TrainState>, StageError> {
    let simclr_core::Message::TrainState(act) = msg else {
        return Err(StageError::UnexpectedMessage {
            expected: "train_states",
            got: msg.port_type().name(),
        });
    };
    let Ok(state) = act.payload.downcast::<TrainState>() else {
        return Err(StageError::msg("train state without a model payload"));
    };
    bind_state(&state)?;
    Ok(state)
}

/// Make the device of a state's tensors current on this thread.
pub(crate) fn bind_state(state: &TrainState) -> Result<(), StageError> {
    match state.groups.first().and_then(|g| g.tensors.first()) {
        Some((_, t)) => bind(t.device()),
        None => Ok(()),
    }
}

/// The candle device a definition's `device:` names.
///
/// # Errors
/// CUDA asked of a build without the `cuda` feature, or a device that cannot be opened.
pub fn device(spec: DeviceSpec) -> Result<Device, ModelError> {
    let cuda_index = match spec {
        DeviceSpec::Cpu => return Ok(Device::Cpu),
        DeviceSpec::Auto => {
            return Ok(
                if cfg!(feature = "cuda")
                    && without_panic(candle_core::utils::cuda_is_available).unwrap_or(false)
                {
                    open_cuda(0).unwrap_or(Device::Cpu)
                } else {
                    Device::Cpu
                },
            );
        }
        DeviceSpec::Cuda(n) => n.unwrap_or(0),
    };
    if !cfg!(feature = "cuda") {
        return Err(ModelError::Device {
            spec,
            message: "this build has no CUDA support; rebuild with `cargo build --release --features cuda`, or use `device: cpu`".into(),
        });
    }
    // One stream for every thread. `Device::new_cuda` would give each calling thread its own
    // per-thread default stream, and the pipeline's stages are threads handing tensors to each
    // other: the trainer's backward pass would race the encoder's forward kernels (measured:
    // the loss climbing from the first update, then a crash). On one stream, the order in which
    // the stages enqueue work — which the channels and the step credit already fix — is the
    // order the GPU runs it.
    open_cuda(cuda_index).map_err(|e| ModelError::Device {
        spec,
        message: format!("cannot open it: {e}"),
    })
}

/// `Device::new_cuda_with_stream`, with a missing driver library as an error: a build that
/// loads the CUDA libraries at run time (cudarc's `dynamic-loading`) panics inside cudarc when
/// `libcuda.so` is not there. The text is the driver's (or the panic's) message.
fn open_cuda(index: usize) -> Result<Device, String> {
    without_panic(|| Device::new_cuda_with_stream(index))
        .map_err(|e| format!("{e} (is an NVIDIA driver installed?)"))?
        .map_err(|e| e.to_string())
}

/// Run `f`, turning a panic into an error carrying its message (printed by no panic hook).
fn without_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the CUDA driver could not be loaded");
        text.split(" - searched for")
            .next()
            .unwrap_or(text)
            .to_owned()
    })
}

/// Check `device:` at build time, so `simclr validate` reports a CUDA device on a CPU build.
pub(crate) fn check_device(cx: &BuildContext<'_>) -> Result<(), ParamError> {
    if cx.device.is_cuda() && !cfg!(feature = "cuda") {
        return Err(ParamError {
            message: format!(
                "device `{}` needs a build with CUDA support, and this one has none",
                cx.device
            ),
            help: Some(
                "rebuild with `cargo build --release --features cuda`, or set `device: cpu`".into(),
            ),
            loc: None,
            path: "device".into(),
        });
    }
    if cx.precision == Precision::Tf32 && cx.device.is_cpu() {
        return Err(ParamError {
            message:
                "precision `tf32` applies to CUDA devices, and this definition runs on the CPU"
                    .into(),
            help: Some("set `device: cuda` (or `auto`), or `precision: fp32`".into()),
            loc: None,
            path: "precision".into(),
        });
    }
    Ok(())
}

/// A candle error in stage code, as a stage error (without the backtrace candle appends to
/// some errors: the message names the stage and the operation already).
pub(crate) fn candle_err(what: &str) -> impl FnOnce(candle_core::Error) -> StageError + '_ {
    move |e| StageError::caused(what, e)
}

/// Make `device` current on the calling thread. A CUDA context is bound per thread, and the
/// model stages use one device from several threads (encoder, head, trainer, checkpoint
/// sink); a no-op on the CPU.
///
/// # Errors
/// The driver refuses the context.
pub fn bind(device: &Device) -> Result<(), StageError> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        d.cuda_stream().context().bind_to_thread().map_err(|e| {
            StageError::caused("cannot make the CUDA context current on this thread", e)
        })?;
    }
    let _ = device;
    Ok(())
}

/// Serialise a stage's parameters for checkpoints.
pub(crate) fn spec_of<T: serde::Serialize>(config: &T) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or(serde_json::Value::Null)
}

/// Set every variable of `vars` from the safetensors file `file` (loaded on `device`): each
/// must be there with its shape; the message names the file and the tensor.
///
/// # Errors
/// An unreadable file, a missing tensor, one of another shape, or one holding NaN or infinite
/// values.
pub fn load_vars(
    vars: &VarMap,
    file: &std::path::Path,
    device: &candle_core::Device,
) -> Result<(), ModelError> {
    let saved =
        candle_core::safetensors::load(file, device).map_err(ModelError::unreadable(file, ""))?;
    let data = vars.data().lock().map_err(|_| ModelError::Poisoned)?;
    let checkpoint = |message: String| ModelError::Checkpoint {
        path: file.to_owned(),
        message,
    };
    for (name, var) in data.iter() {
        let t = saved
            .get(name)
            .ok_or_else(|| checkpoint(format!("no tensor `{name}` (a different architecture?)")))?;
        if t.dims() != var.dims() {
            return Err(checkpoint(format!(
                "`{name}` has shape {:?} there, {:?} here (a different architecture?)",
                t.dims(),
                var.dims()
            )));
        }
        // A NaN weight turns into zeros after the first ReLU: the model would run and score
        // at chance without a word.
        let finite = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(ModelError::unreadable(file, format!("`{name}`")))?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(checkpoint(format!(
                "`{name}` holds NaN or infinite values (a damaged file, or a run that diverged)"
            )));
        }
        var.set(t)
            .map_err(ModelError::unreadable(file, format!("`{name}`")))?;
    }
    Ok(())
}

/// Load a group's variables from `<checkpoint>/<stage>.safetensors`: every variable must be
/// there with its shape (a checkpoint of another architecture is refused, naming the tensor).
pub(crate) fn load_group(
    vars: &VarMap,
    checkpoint: &std::path::Path,
    stage: &str,
) -> Result<(), StageError> {
    let file = checkpoint.join(format!("{stage}.safetensors"));
    let device = {
        let data = vars
            .data()
            .lock()
            .map_err(|_| StageError::msg("variable map poisoned"))?;
        match data.values().next() {
            Some(v) => v.device().clone(),
            None => return Ok(()),
        }
    };
    load_vars(vars, &file, &device)
        .map_err(|e| StageError::caused(format!("cannot resume stage `{stage}`"), e))
}

/// Copy every variable of a group (a snapshot that later in-place updates do not touch).
pub(crate) fn snapshot(group: &ParamGroup) -> candle_core::Result<GroupSnapshot> {
    let data = group
        .vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map poisoned".into()))?;
    let mut tensors: Vec<(String, Tensor)> = data
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(GroupSnapshot {
        stage: group.stage.clone(),
        role: group.role,
        kind: group.kind.clone(),
        spec: group.spec.clone(),
        arch: group.arch.clone(),
        tensors,
    })
}
