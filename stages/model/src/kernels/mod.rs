//! Our own CPU kernels, wrapped as candle custom ops so candle's autograd drives them:
//! convolution ([`conv`]) and training-mode BatchNorm + ReLU ([`batch_norm`]). Other devices and
//! dtypes use candle's operations.

use std::sync::atomic::{AtomicBool, Ordering};

pub mod batch_norm;
pub mod conv;
pub mod gemm;

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
