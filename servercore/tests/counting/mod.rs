//! A global allocator that counts, per thread, every allocation (for the tests that prove
//! steady paths allocate nothing) and the bytes allocated minus the bytes freed (for the
//! tests that bound how much memory live buffers keep). A test binary installs it with
//! `#[global_allocator] static GLOBAL: counting::Counting = counting::Counting;` and reads
//! its own thread's count; other threads (the harness, clients) do not disturb it.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn note_bytes(delta: i64) {
    let _ = NET_BYTES.try_with(|c| c.set(c.get() + delta));
}

/// Bytes allocated minus bytes freed on the calling thread so far. Memory allocated here
/// and freed on another thread (or the reverse) skews it, so a test that reads it keeps
/// its buffers on one thread.
pub fn net_bytes_on_this_thread() -> i64 {
    NET_BYTES.with(Cell::get)
}

/// Allocations (including reallocations) made on the calling thread so far.
pub fn allocations_on_this_thread() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Allocations made on this thread while `f` runs.
pub fn allocations_during<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = allocations_on_this_thread();
    let result = f();
    (allocations_on_this_thread() - before, result)
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        note_bytes(layout.size() as i64);
        // SAFETY: the caller's contract for `alloc` is passed on to `System` unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        note_bytes(layout.size() as i64);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        note_bytes(new_size as i64 - layout.size() as i64);
        // SAFETY: `ptr` came from this allocator, i.e. from `System` (every call forwards).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_bytes(-(layout.size() as i64));
        // SAFETY: `ptr` came from this allocator, i.e. from `System` (every call forwards).
        unsafe { System.dealloc(ptr, layout) }
    }
}
