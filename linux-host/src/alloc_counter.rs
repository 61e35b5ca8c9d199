//! A global allocator that counts the Rust heap allocations of a run, for
//! benchmarks only: the `count-allocations` feature compiles it in, and
//! release builds leave it out.
//!
//! It wraps the system allocator and, when the [`ReportOnDrop`] guard that
//! `main` holds is dropped, prints one line to standard error:
//! `count-allocations: allocations=N bytes=N peak_bytes=N`. Mbed TLS
//! allocates with the C library's `calloc` directly, so its allocations are
//! not counted here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator with counters.
struct CountingAllocator;

/// Calls of `alloc`, `alloc_zeroed` and `realloc`.
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Bytes requested by those calls, a `realloc` counting its new size.
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not yet freed.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Maximum of `LIVE_BYTES`.
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

fn record_allocation(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size, Ordering::Relaxed);
    let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
}

fn record_free(size: usize) {
    LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and returns its result unchanged, so `System`'s guarantees hold.
// The bookkeeping only updates atomics and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) };
        record_free(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            record_free(layout.size());
            record_allocation(new_size);
        }
        new_pointer
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Prints the counters to standard error when dropped, so that `main`
/// reports them on every return path.
pub struct ReportOnDrop;

impl Drop for ReportOnDrop {
    fn drop(&mut self) {
        // A failed write to stderr has nowhere to be reported.
        let _ = writeln!(
            std::io::stderr().lock(),
            "count-allocations: allocations={} bytes={} peak_bytes={}",
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
            PEAK_BYTES.load(Ordering::Relaxed)
        );
    }
}
