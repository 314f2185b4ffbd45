//! Keeps freed tensor memory in the process instead of returning it to the kernel.
//!
//! A training step allocates and frees the same large activation buffers every step. glibc's
//! malloc serves blocks above its mmap threshold with fresh `mmap`s and gives freed memory at the
//! top of the heap back with `trim`, so each step pays page faults and the kernel's zeroing of
//! every page again (`clear_page_erms` + `exc_page_fault` were ~12% of the CPU profile). Raising
//! both thresholds keeps the pages mapped: measured with `bench/` (median CPU ms per step, 2
//! threads, same binary with and without this call): SimCLR B 1072 → 785 ms (−27%), GPT 957 →
//! 845 ms (−12%), identical losses; peak RSS 302 → 302 MiB (SimCLR), 299 → 320 MiB (GPT).
//!
//! Blocks of 32 MiB and more (one 256-image batch of 32×32×32 activations) still came from mmap
//! with the threshold at its maximum, so they were faulted in and zeroed again every step, and
//! their munmap cost TLB shootdowns on every core. `M_MMAP_MAX = 0` serves them from the heap too
//! (glibc still falls back to mmap when the heap cannot grow, and threads' arenas mmap what does
//! not fit a heap): SimCLR B 326 → 229–252 ms/step wall (−25%), GPT unchanged, peak RSS 231 →
//! 261–278 MiB (`train_step`, same binary, alternated, fused kernels on).

use std::sync::Once;

/// Largest mmap threshold glibc accepts on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB); with
/// `M_MMAP_MAX = 0` it matters only where mmap is used as the fallback.
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Applies the allocator settings once per process (glibc on Linux; a no-op elsewhere). Called by
/// [`crate::train::fit`], so every training run gets it; callable earlier by a binary.
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            // SELFSUP_MMAP_MAX_DEFAULT=1 keeps glibc's mmap use (for before/after benchmarks).
            if std::env::var_os("SELFSUP_MMAP_MAX_DEFAULT").is_none() {
                libc::mallopt(libc::M_MMAP_MAX, 0);
            }
        }
    });
}
