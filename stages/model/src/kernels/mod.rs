//! Our own CPU kernels, wrapped as candle custom ops so candle's autograd drives them:
//! convolution ([`conv`]), training-mode BatchNorm + ReLU ([`batch_norm`]), the residual
//! `relu(a + b)` ([`residual`]) and the ImageNet stem's max-pool ([`pool`]). With the `cudnn`
//! feature the convolution op runs on CUDA through cuDNN (forward and both gradients). Other devices and dtypes use candle's
//! operations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use candle_core::{CpuStorage, Layout, Result};

pub mod batch_norm;
pub mod conv;
#[cfg(feature = "cudnn")]
mod cudnn;
pub mod gemm;
pub mod pool;
pub mod residual;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Use (true, the default) or bypass our kernels, e.g. to compare against candle's. Affects
/// models built and run afterwards, in every thread.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether our kernels are in use.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

static TF32: AtomicBool = AtomicBool::new(false);

/// Allow TensorFloat-32 (10-bit mantissa products, float32 accumulation) in CUDA matrix
/// products (cuBLAS) and convolutions (cuDNN), as PyTorch's `allow_tf32`. Off by default: strict
/// float32. Process-wide; no effect on the CPU.
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::SeqCst);
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
}

/// Whether TensorFloat-32 is allowed (see [`set_tf32`]).
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

static CONV_FLOPS: AtomicU64 = AtomicU64::new(0);
static CONV_NANOS: AtomicU64 = AtomicU64::new(0);

/// Per-layer totals: label → (calls, flops, nanoseconds).
type LayerTotals = std::collections::BTreeMap<String, (u64, u64, u64)>;

/// The per-layer totals while [`set_layer_profile`] is on.
static LAYERS: std::sync::Mutex<Option<LayerTotals>> = std::sync::Mutex::new(None);

/// Count one convolution kernel call (forward or either gradient): its floating-point
/// operations (2 per multiply-add) and wall time; `label` names the pass and shape for the
/// per-layer profile (called only while it is on).
pub(crate) fn record_conv(flops: u64, took: Duration, label: impl FnOnce() -> String) {
    let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    CONV_FLOPS.fetch_add(flops, Ordering::Relaxed);
    CONV_NANOS.fetch_add(nanos, Ordering::Relaxed);
    add_to_profile(label, flops, nanos);
}

/// Add one kernel call to the per-layer profile, if it is on (`label` is formed only then).
fn add_to_profile(label: impl FnOnce() -> String, flops: u64, nanos: u64) {
    if let Ok(mut guard) = LAYERS.lock()
        && let Some(map) = guard.as_mut()
    {
        let e = map.entry(label()).or_insert((0, 0, 0));
        *e = (e.0 + 1, e.1 + flops, e.2 + nanos);
    }
}

/// Times one call of another kernel (BatchNorm, residual) for the per-layer profile when
/// dropped.
pub(crate) struct OpTimer {
    start: std::time::Instant,
    what: &'static str,
    /// Channels, height, width of the input.
    chw: (usize, usize, usize),
}

impl OpTimer {
    /// Start timing `what` on an input of shape `dims` (`[N, C, H, W]` or `[N, C]`).
    pub(crate) fn new(what: &'static str, dims: &[usize]) -> Self {
        let chw = match *dims {
            [_, c, h, w] => (c, h, w),
            [_, c] => (c, 1, 1),
            _ => (0, 0, 0),
        };
        Self {
            start: std::time::Instant::now(),
            what,
            chw,
        }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let (c, h, w) = self.chw;
        add_to_profile(
            || format!("{:<15} {c:>4}        {h:>3}×{w:<3}", self.what),
            0,
            nanos,
        );
    }
}

/// Start (true: from empty) or stop collecting per-layer kernel times (convolutions with
/// their floating-point operations, BatchNorm and the residual sum with time only).
pub fn set_layer_profile(on: bool) {
    if let Ok(mut guard) = LAYERS.lock() {
        *guard = on.then(std::collections::BTreeMap::new);
    }
}

/// One line of the per-layer kernel profile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerTime {
    /// Pass and shape, e.g. `forward 16→32 3×3/2 32×32`.
    pub label: String,
    /// Kernel calls.
    pub calls: u64,
    /// Floating-point operations (2 per multiply-add).
    pub flops: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The per-layer kernel times collected since [`set_layer_profile`]`(true)` (or the last
/// call), and starts again from empty; empty when the profile is off.
pub fn take_layer_profile() -> Vec<LayerTime> {
    let Ok(mut guard) = LAYERS.lock() else {
        return Vec::new();
    };
    let Some(map) = guard.as_mut() else {
        return Vec::new();
    };
    std::mem::take(map)
        .into_iter()
        .map(|(label, (calls, flops, nanos))| LayerTime {
            label,
            calls,
            flops,
            seconds: nanos as f64 * 1e-9,
        })
        .collect()
}

/// Floating-point operations and seconds spent in our convolution kernels since the last call
/// (process-wide); resets both. For benchmarks: achieved GFLOP/s = flops / seconds / 1e9.
pub fn take_conv_counters() -> (u64, f64) {
    let flops = CONV_FLOPS.swap(0, Ordering::Relaxed);
    let nanos = CONV_NANOS.swap(0, Ordering::Relaxed);
    (flops, nanos as f64 * 1e-9)
}

/// A zeroed buffer for a kernel's output, zeroed by the rayon pool: `vec![0.0; len]` zeroes on
/// the calling thread (glibc's `calloc` writes reused memory), a serial pass that left the
/// other cores idle before every kernel — about a tenth of a width-16 training step.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if len < 1 << 16 {
        return vec![0.0; len];
    }
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0.0f32, len));
    v
}

/// The f32 elements of a contiguous CPU tensor, for a kernel; `op` and `what` name it in errors.
pub(crate) fn f32_slice<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: {what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}
