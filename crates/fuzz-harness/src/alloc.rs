//! A global allocator that remembers, per thread, the largest single allocation since the last
//! [`reset`], so a target can check that a decoder's memory is bounded by what the protocol
//! allows rather than by what a hostile length field claims.
//!
//! Install it in the binary (`#[global_allocator] static A: PeakAlloc = PeakAlloc;`): the fuzz
//! targets and the replay test do. Without it, [`installed`] is false and the allocation checks
//! are skipped (the other properties still run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The system allocator, plus a per-thread high-water mark of single allocation sizes.
pub struct PeakAlloc;

static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // `const` and without a destructor: reading it never allocates and never fails, which an
    // allocator needs (it runs inside every allocation, including the thread's own set-up).
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    INSTALLED.store(true, Ordering::Relaxed);
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

/// Forget the largest allocation seen so far on this thread.
pub fn reset() {
    let _ = LARGEST.try_with(|l| l.set(0));
}

/// The largest single allocation (or reallocation's new size) on this thread since [`reset`].
pub fn largest() -> usize {
    LARGEST.try_with(Cell::get).unwrap_or(0)
}

/// True once [`PeakAlloc`] has served an allocation, i.e. it is the global allocator.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract (valid layouts in, blocks that fit them out, frees of blocks this
// allocator returned) is `System`'s; the bookkeeping only touches a thread-local `Cell` and an
// atomic, never the memory handed out, and never allocates.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller guarantees `layout` has a non-zero size, as `System.alloc` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as in `alloc`: the caller's non-zero-size layout is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator (hence from `System`)
        // with this same `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller guarantees `ptr` was allocated here (so by `System`) with
        // `layout`, and that `new_size` is non-zero and does not overflow when rounded up to
        // `layout.align()`; these are exactly `System.realloc`'s requirements.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
