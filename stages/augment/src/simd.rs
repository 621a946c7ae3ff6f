//! Runtime CPU dispatch for the hot pixel loops.
//!
//! The loops are written once, as plain Rust the compiler vectorises; on x86-64 machines with
//! AVX2 and FMA they are additionally compiled for those instructions and picked at run time
//! (the baseline x86-64 target only has SSE2), and a few also for AVX-512. This is the one
//! place in the crate with `unsafe`: calling a `#[target_feature]` function is unsafe because
//! it would be undefined on a CPU without the feature, and every call below is guarded by the
//! feature check. No floating-point operation is reordered or fused by this (Rust never
//! contracts a multiply and an add into an FMA by itself), so every path gives bit-identical
//! results (determinism across machines is kept).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

/// The widest instruction set the dispatched loops may use (tests lower it).
static LEVEL: AtomicU8 = AtomicU8::new(Level::Avx512 as u8);

/// Instruction-set levels (tests lower the cap to check every path gives the same bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Level {
    /// The baseline target only.
    #[cfg_attr(not(test), allow(dead_code))]
    Baseline = 0,
    /// AVX2 + FMA at most.
    Avx2 = 1,
    /// AVX-512 where a loop has that version.
    Avx512 = 2,
}

/// Cap the instruction set the dispatched loops may use (restore with `Level::Avx512`).
#[cfg(test)]
pub(crate) fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether the AVX2 + FMA versions can run here (the CPU check is done once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    LEVEL.load(Ordering::Relaxed) >= Level::Avx2 as u8
        && *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
}

/// Whether the AVX-512 (F, VL, DQ, BW) versions can run here.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    LEVEL.load(Ordering::Relaxed) >= Level::Avx512 as u8
        && has_avx2()
        && *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512bw")
        })
}

/// Defines `fn $name(args)` (with the visibility given) that runs `$body` compiled for AVX2 + FMA when the CPU
/// has them, and for the baseline otherwise.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $crate::simd::dispatch!(@versions false $(#[$meta])* $vis fn $name($($arg: $ty),*) $body);
    };
    // `$wide`: also pick an AVX-512 version where the CPU has it (see [`dispatch_wide!`]).
    (@versions $wide:literal $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $body:block) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
            fn avx512($($arg: $ty),*) {
                generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) {
                generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if $wide && $crate::simd::has_avx512() {
                // SAFETY: the CPU supports these AVX-512 subsets, checked just above.
                return unsafe { avx512($($arg),*) };
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

/// [`dispatch!`] with a third version compiled for AVX-512, picked first where the CPU has
/// it. Only for loops measured faster with it: mask registers make the select-heavy hue
/// rotation 1.25× faster on AMD Zen 4 and the byte shuffles of a mirrored RGB row 1.3×, where
/// plain arithmetic (the blur) gains nothing over AVX2.
macro_rules! dispatch_wide {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $crate::simd::dispatch!(@versions true $(#[$meta])* $vis fn $name($($arg: $ty),*) $body);
    };
}

pub(crate) use {dispatch, dispatch_wide};
