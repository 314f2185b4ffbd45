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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
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
        // SELFSUP_NO_HUGEPAGES=1 keeps [`HugePageAlloc`] from asking (before/after benchmarks).
        if std::env::var_os("SELFSUP_NO_HUGEPAGES").is_none() {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: sbrk(0) only reads the current end of the heap.
            ADVISED_BRK.store(unsafe { libc::sbrk(0) } as usize, Relaxed);
            HUGE_PAGES.store(true, Relaxed);
        }
    });
}

/// Whether [`HugePageAlloc`] asks for huge pages: off until [`keep_freed_memory`] runs (the
/// allocator itself cannot read the environment: that allocates).
static HUGE_PAGES: AtomicBool = AtomicBool::new(false);

/// Allocations at least this large ask for transparent huge pages.
const HUGE_PAGE_MIN: usize = 4 << 20;

/// 2 MiB, the x86-64 huge page.
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, asking the kernel to back the heap and large blocks with transparent
/// huge pages (`madvise(MADV_HUGEPAGE)` before their first touch). Where THP is in `madvise` mode
/// (Debian's default) glibc never asks, so activations and im2col buffers lived on 4 KiB pages:
/// about 55 of a SimCLR step's 280 MiB were on huge pages with large blocks alone, 200 with the
/// heap's growth too. A binary opts in with `#[global_allocator]`; it takes effect once
/// [`keep_freed_memory`] ran. Elsewhere (or with THP off) it is `System`.
///
/// `bench/ab_env.sh CASE ROUNDS BIN SELFSUP_NO_HUGEPAGES=1` (one `train_step` binary with and
/// without, 4–6 rounds alternated), median ms/step without → with: SimCLR A 202.3 → 193.3,
/// SimCLR B 216.1 → 209.1, GPT 236.8 → 235.9 (noise); peak RSS unchanged (twelfth session).
pub struct HugePageAlloc;

// SAFETY: every call is forwarded to `System` unchanged; the madvise only changes how the kernel
// backs pages of a block the caller now owns.
unsafe impl std::alloc::GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        advise_huge(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        advise_huge(p, new_size);
        p
    }
}

/// The main heap's end up to which [`advise_huge`] has asked for huge pages.
static ADVISED_BRK: AtomicUsize = AtomicUsize::new(0);

/// Asks for huge pages where new memory appeared: the main heap's growth since the last call
/// (as glibc's `hugetlb` tunable does; malloc has not handed it out yet, beyond the block just
/// returned), and the whole 2 MiB pages inside a large block (those from the threads' arenas).
fn advise_huge(p: *mut u8, len: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !p.is_null() && HUGE_PAGES.load(Relaxed) {
        // SAFETY: sbrk(0) only reads the current end of the heap.
        let brk = unsafe { libc::sbrk(0) } as usize;
        let done = ADVISED_BRK.load(Relaxed);
        // The heap grows in place, so [done, brk) is exactly its new part.
        if brk > done
            && ADVISED_BRK
                .compare_exchange(done, brk, Relaxed, Relaxed)
                .is_ok()
        {
            madvise_huge(done, brk);
        }
        if len >= HUGE_PAGE_MIN {
            madvise_huge(p as usize, p as usize + len);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (p, len);
}

/// `madvise(MADV_HUGEPAGE)` on the whole 2 MiB pages of `[from, to)`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn madvise_huge(from: usize, to: usize) {
    let start = from.next_multiple_of(HUGE_PAGE);
    let end = to / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: the range is mapped memory of this process (heap or a live block); the advice
        // only changes how the kernel backs it, and a failure (THP off) leaves the default pages.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}
