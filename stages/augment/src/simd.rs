//! Runtime CPU dispatch for the hot pixel loops.
//!
//! The loops are written once, as plain Rust the compiler vectorises; on x86-64 machines with
//! AVX2 and FMA they are additionally compiled for those instructions and picked at run time
//! (the baseline x86-64 target only has SSE2). This is the one place in the workspace with
//! `unsafe`: calling a `#[target_feature]` function is unsafe because it would be undefined
//! on a CPU without the feature, and every call below is guarded by the feature check.
//! No floating-point operation is reordered or fused by this, so both paths give
//! bit-identical results (determinism across machines is kept).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turn the AVX2 paths off (or back on), to check that both give identical results.
#[cfg(test)]
pub(crate) fn set_enabled(enabled: bool) {
    DISABLED.store(!enabled, Ordering::Relaxed);
}

/// Whether the AVX2 + FMA versions can run here (the CPU check is done once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    !DISABLED.load(Ordering::Relaxed)
        && *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
}

/// Defines `fn $name(args)` (with the visibility given) that runs `$body` compiled for AVX2 + FMA when the CPU
/// has them, and for the baseline otherwise.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) {
                generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if $crate::simd::has_avx2() {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe { avx2($($arg),*) };
            }
            generic($($arg),*)
        }
    };
}

pub(crate) use dispatch;
