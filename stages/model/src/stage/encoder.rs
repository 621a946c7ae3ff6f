//! The encoder stage: every kind of [`crate::encoder::ENCODERS`] (`resnet`, `small_cnn`, ...)
//! runs as this stage.
//!
//! It takes batches of 2N views and emits h = f(x) `[2N, d]` with BatchNorm in training mode
//! (batch statistics; running statistics updated). Weights start from the definition's seed
//! (see [`crate::init`]) or, in a resumed run, from the checkpoint.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use candle_core::{Device, Tensor};
use simclr_core::{
    Batch, BuildContext, Message, Outputs, ParamError, Stage, StageContext, StageError,
    StageFactory,
};

use super::{Forward, ParamGroup, Role, candle_err, check_device, device, load_group};
use crate::encoder::{Architecture, Encoder, EncoderNet};

/// The `build` of encoder `E`'s stage kind ([`crate::encoder::EncoderKind::of`]): parse and
/// check the parameters and the device, then make the stage.
pub(crate) fn build<E: Encoder>(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: E::Config = cx.parse()?;
    E::check(&config).map_err(|p| cx.invalid(p.field, p.message, p.help))?;
    check_device(cx)?;
    let arch = Architecture::new::<E>(config);
    let stage = cx.stage_id.to_owned();
    let (device, precision) = (cx.device, cx.precision);
    let seed = cx.seed;
    let resume = cx.resume.map(|r| r.checkpoint.clone());
    Ok(StageFactory::stage(move |_| EncoderStage {
        stage: stage.clone(),
        arch: arch.clone(),
        device_spec: device,
        precision,
        seed,
        resume: resume.clone(),
        model: None,
    }))
}

struct EncoderStage {
    stage: String,
    arch: Architecture,
    device_spec: simclr_core::DeviceSpec,
    /// Applied when the stage starts (not when it is built: `simclr validate` changes no
    /// math mode).
    precision: simclr_core::Precision,
    seed: u64,
    resume: Option<std::path::PathBuf>,
    model: Option<(Box<dyn EncoderNet>, Arc<ParamGroup>, Device)>,
}

impl Stage for EncoderStage {
    fn on_start(&mut self, _cx: &mut StageContext) -> Result<(), StageError> {
        let device = device(self.device_spec)?;
        super::bind(&device)?;
        // cuBLAS's and cuDNN's float32 math mode is process-wide in candle; the definition's
        // `precision` sets it when its encoder starts (strict fp32 on the CPU, where `tf32` is
        // refused at build time).
        crate::kernels::set_tf32(self.precision == simclr_core::Precision::Tf32);
        let built = self
            .arch
            .build_seeded(&device, self.seed, &self.stage)
            .map_err(candle_err("cannot build the encoder"))?;
        if let Some(checkpoint) = &self.resume {
            load_group(&built.vars, checkpoint, &self.stage)?;
        }
        let group = Arc::new(ParamGroup {
            stage: self.stage.clone(),
            role: Role::Encoder,
            kind: self.arch.kind().to_owned(),
            spec: self.arch.spec(),
            arch: Some(self.arch.clone()),
            vars: built.vars,
            version: AtomicU64::new(0),
        });
        self.model = Some((built.net, group, device));
        Ok(())
    }

    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        cx: &mut StageContext,
    ) -> Result<(), StageError> {
        let Message::Batch(batch) = msg else {
            return Err(StageError::UnexpectedMessage {
                expected: "batches",
                got: msg.port_type().name(),
            });
        };
        // After a stop request or the last step, queued batches are dropped, not computed.
        if cx.should_stop() {
            return Ok(());
        }
        let Some((net, group, device)) = &self.model else {
            return Err(StageError::msg("encoder not built (on_start did not run)"));
        };
        let Batch {
            step,
            epoch,
            ids,
            shape,
            data,
        } = batch;
        if shape[1] != self.arch.in_channels() {
            return Err(StageError::msg(format!(
                "batch {step} has {}-channel views but the encoder takes {} (set `in_channels: {}`)",
                shape[1],
                self.arch.in_channels(),
                shape[1]
            )));
        }
        super::bind(device)?;
        let t0 = Instant::now();
        // The batch's own buffer when no other stage holds it (no copy on the CPU).
        let data = Arc::try_unwrap(data).unwrap_or_else(|shared| shared.as_ref().clone());
        let x = Tensor::from_vec(data, (shape[0], shape[1], shape[2], shape[3]), device)
            .map_err(candle_err("input batch"))?;
        let version = group.version();
        let h = net
            .forward_t(&x, true)
            .map_err(candle_err("encoder forward"))?;
        let forward = Forward {
            tensor: h,
            groups: vec![(group.clone(), version)],
            timings: vec![(self.stage.clone(), t0.elapsed().as_secs_f64())],
            views: shape[0],
        };
        out.push(Message::Features(forward.into_activations(
            step,
            epoch,
            Arc::from(ids),
        )))
    }
}
