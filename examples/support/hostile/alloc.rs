//! A counting global allocator: live bytes over `std::alloc::System`, for measuring what a
//! structure really holds (the throttle's bytes per tracked key).
//!
//! Install it in the binary that measures:
//! `#[global_allocator] static A: alloc::CountingAlloc = alloc::CountingAlloc;`
//!
//! [`allocated_bytes`] counts every thread's allocations. [`thread_allocated_bytes`] counts the
//! calling thread's only (allocations made minus those freed on this thread), for a measurement
//! taken while other threads allocate too (tests running in parallel).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The counting allocator.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // `const` and no destructor: reading it never allocates, so the allocator may use it.
    static THREAD_LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    if delta >= 0 {
        LIVE.fetch_add(delta as usize, Relaxed);
    } else {
        LIVE.fetch_sub(delta.unsigned_abs(), Relaxed);
    }
    // During thread teardown the slot may be gone: the global count still holds.
    let _ = THREAD_LIVE.try_with(|c| c.set(c.get() + delta));
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every path above forwards).
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes allocated and not yet freed, by every thread.
#[allow(dead_code)]
pub fn allocated_bytes() -> usize {
    LIVE.load(Relaxed)
}

/// Bytes this thread allocated minus those it freed.
#[allow(dead_code)]
pub fn thread_allocated_bytes() -> isize {
    THREAD_LIVE.with(Cell::get)
}
