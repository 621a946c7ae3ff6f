//! The allocator settings of the `simclr` process.
//!
//! A training step allocates and frees hundreds of activation-sized buffers (0.1-30 MB). glibc
//! serves blocks above its mmap threshold with fresh `mmap`s and gives freed heap tops back to
//! the system, so each step pays page faults and the kernel's zeroing for memory it just
//! returned (4-5 % of a width-16 step's profile; the step got ~2 % faster without them), and
//! candle's `embed` spent 0.9 of 2.8 s in system time (0.2 s with these settings, +8-16 %
//! images/s). Raising both thresholds keeps that memory in the process for reuse. Peak memory
//! is the same (the largest step's working set either way); memory is not returned to the
//! system between steps. `SIMCLR_SYSTEM_MALLOC=1` keeps glibc's defaults.
#![allow(unsafe_code)]

/// Apply the settings (glibc on Linux; nothing elsewhere). Call at the start of `main`,
/// before other threads start.
pub fn tune() {
    if std::env::var_os("SIMCLR_SYSTEM_MALLOC").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ONE_GIB: libc::c_int = 1 << 30;
        // SAFETY: `mallopt` only sets glibc allocator parameters (its documented use); it is
        // called from `main` before any other thread exists, and a refused setting (return
        // value 0) leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ONE_GIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, ONE_GIB);
        }
    }
}
