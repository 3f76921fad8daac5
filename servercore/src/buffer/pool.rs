//! The pool of send-buffer memory: chunks per thread, in size classes, that pooled
//! buffers ([`SendBuffer::copy_from_slice`](crate::SendBuffer::copy_from_slice), a room's
//! joined broadcasts, [`PacketWriter`](crate::packet::PacketWriter) packets) are carved
//! from, so that steady sending allocates nothing.
//!
//! Each thread keeps chunks in size classes (powers of two, 256 bytes to
//! [`WRITER_CHUNK_SIZE`]). A buffer is carved off the free tail of a chunk as a frozen
//! `Bytes`, so many small buffers share one allocation and one reference count instead of
//! each allocating.
//!
//! # The memory bound
//!
//! A carved buffer keeps its whole chunk alive until it is dropped, and a buffer can
//! outlive the traffic around it (queued behind a peer that does not read, say). So a
//! buffer of `n` bytes is only ever carved from a chunk of at most
//! [`PIN_FACTOR`]` * max(n, `[`PIN_MIN_LEN`]`)` bytes: an 8-byte buffer from a 256-byte
//! chunk, a 100-byte one from a 2 KiB chunk, one of 2 KiB or more from a 64 KiB chunk.
//! Hence live pooled buffers keep at most `PIN_FACTOR` times their bytes (each counted as at
//! least `PIN_MIN_LEN`) of chunk memory alive, plus each chunk's bookkeeping (about 40
//! bytes, under a sixth of the smallest chunk), plus the pool itself (at most three chunks
//! per class and thread, under 384 KiB). That is what makes a send queue limit in logical
//! bytes (`SessionConfig::max_send_queue`) a limit on memory: 16 MiB queued in buffers of
//! 8 bytes or more keep at most about 600 MiB of chunks alive in the worst case, where
//! 8-byte buffers that each pinned their own 64 KiB chunk kept 8192 times the queue. (The
//! queue counts a shorter buffer by its length, not as 8 bytes.)
//!
//! # How the memory comes back
//!
//! Checked against `bytes` 1.x (`BytesMut::try_reclaim` / `reserve_inner` in
//! `bytes_mut.rs`): after the first `split`, the chunk and every buffer carved from it point
//! at one shared, reference-counted `Vec`. When a chunk's tail is too small for the next
//! buffer, `try_reclaim` checks whether the chunk is the *unique* owner of that `Vec` (every
//! buffer carved from it has been dropped); if so it rewinds to the start of the same
//! allocation without allocating or copying. A chunk still pinned by a live buffer is set
//! aside (up to two per class) and retried the next time, so a window of buffers in flight
//! (a send queue) does not make every chunk change allocate. Only when neither the current
//! chunk nor a set-aside one is free is a new chunk allocated; an old one is freed when its
//! last buffer is dropped. So in steady state, building, sending and dropping buffers
//! allocates nothing, and cloning a finished packet for a broadcast is a reference-count
//! increment.

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;

/// Size of the largest pooled chunk (the one a
/// [`PacketWriter`](crate::packet::PacketWriter) writes in): large enough that replacing it
/// is rare, small enough that a pinned chunk is cheap. Buffers larger than this are not
/// pooled.
pub const WRITER_CHUNK_SIZE: usize = 64 * 1024;

/// A live pooled buffer of `n` bytes keeps at most `PIN_FACTOR * max(n, PIN_MIN_LEN)` bytes
/// of chunk memory alive.
///
/// Pooled buffers ([`PacketWriter`](crate::packet::PacketWriter) packets,
/// [`SendBuffer::copy_from_slice`](crate::SendBuffer::copy_from_slice), a room's
/// joined broadcasts) share chunks, and one live buffer keeps its whole chunk alive, for
/// instance while it waits behind a peer that does not read. Each buffer is therefore
/// carved from a chunk sized to it (256 bytes to 64 KiB). So the memory that live pooled
/// buffers keep alive is at most `PIN_FACTOR` times their bytes (each counted as at least
/// [`PIN_MIN_LEN`]), plus about 40 bytes of bookkeeping per chunk and the pool's own
/// chunks (at most three per size class and thread, under 384 KiB): a send queue limit in
/// bytes (`SessionConfig::max_send_queue`) bounds memory too.
pub const PIN_FACTOR: usize = 32;

/// Pooled buffers shorter than this are counted as this long in the [`PIN_FACTOR`] bound:
/// the smallest chunk is `PIN_FACTOR * PIN_MIN_LEN` (256) bytes.
pub const PIN_MIN_LEN: usize = 8;

/// The smallest chunk; the classes are its doublings up to [`WRITER_CHUNK_SIZE`].
const SMALLEST_CHUNK: usize = PIN_FACTOR * PIN_MIN_LEN;

/// Number of size classes: 256 B, 512 B, .., 64 KiB.
const CLASSES: usize =
    (WRITER_CHUNK_SIZE.trailing_zeros() - SMALLEST_CHUNK.trailing_zeros()) as usize + 1;

/// The class of the 64 KiB chunks, where writers write.
pub(crate) const LARGEST: usize = CLASSES - 1;

/// Chunks per class set aside while still pinned, to be reused once free.
const SET_ASIDE: usize = 2;

/// The class a buffer of `len` bytes (`len <= WRITER_CHUNK_SIZE`) is carved from: the
/// largest chunk within `PIN_FACTOR * max(len, PIN_MIN_LEN)`, which always holds `len`.
pub(crate) fn class_of(len: usize) -> usize {
    let budget = PIN_FACTOR.saturating_mul(len.max(PIN_MIN_LEN)).min(WRITER_CHUNK_SIZE);
    (budget.ilog2() - SMALLEST_CHUNK.ilog2()) as usize
}

pub(crate) fn chunk_size(class: usize) -> usize {
    SMALLEST_CHUNK << class
}

/// One size class of this thread's pool.
struct Class {
    /// The chunk buffers are carved from; `None` until first use and while a writer has it.
    current: Option<BytesMut>,
    /// Former chunks still pinned by live buffers when they were replaced.
    set_aside: [Option<BytesMut>; SET_ASIDE],
    /// The slot of `set_aside` to overwrite next.
    next: usize,
}

impl Class {
    const fn new() -> Self {
        Class { current: None, set_aside: [const { None }; SET_ASIDE], next: 0 }
    }

    /// A chunk with room for `need` bytes, without allocating; `None` if every chunk this
    /// class holds is still pinned (the caller allocates).
    fn take(&mut self, need: usize) -> Option<BytesMut> {
        if let Some(chunk) = self.current.as_mut() {
            // Room in the tail, or every buffer carved from it is gone (it rewinds).
            if chunk.try_reclaim(need) {
                return self.current.take();
            }
        }
        let free =
            self.set_aside.iter_mut().position(|c| c.as_mut().is_some_and(|c| c.try_reclaim(need)));
        match (free, self.current.take()) {
            (Some(i), pinned) => {
                let reused = self.set_aside[i].take();
                self.set_aside[i] = pinned;
                reused
            }
            (None, pinned) => {
                if pinned.is_some() {
                    self.set_aside(pinned);
                }
                None
            }
        }
    }

    /// Keeps `chunk` to retry later, letting go of the oldest set-aside one (which is then
    /// freed by its last buffer).
    fn set_aside(&mut self, chunk: Option<BytesMut>) {
        self.set_aside[self.next] = chunk;
        self.next = (self.next + 1) % SET_ASIDE;
    }

    /// Takes back a chunk: it becomes the current one; a second one (two writers were
    /// alive at once) is set aside.
    fn give_back(&mut self, chunk: BytesMut) {
        match self.current.take() {
            None => self.current = Some(chunk),
            Some(old) => {
                let (keep, other) =
                    if old.capacity() >= chunk.capacity() { (old, chunk) } else { (chunk, old) };
                self.current = Some(keep);
                self.set_aside(Some(other));
            }
        }
    }
}

thread_local! {
    /// This thread's chunks, by class.
    static POOL: RefCell<[Class; CLASSES]> = const { RefCell::new([const { Class::new() }; CLASSES]) };
}

/// Takes a chunk of `class` with room for `need` (at most its size) bytes: a pooled one if
/// one is free, else a new one.
pub(crate) fn acquire(class: usize, need: usize) -> BytesMut {
    debug_assert!(need <= chunk_size(class));
    let taken = POOL
        .try_with(|pool| pool.try_borrow_mut().ok().and_then(|mut p| p[class].take(need)))
        .ok()
        .flatten();
    // A new chunk: first use, every chunk of the class pinned, or thread teardown.
    taken.unwrap_or_else(|| BytesMut::with_capacity(chunk_size(class)))
}

/// Gives an (empty) chunk of `class` back to this thread's pool.
pub(crate) fn release(class: usize, chunk: BytesMut) {
    // During thread teardown the pool may be gone; then the chunk is simply dropped.
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            pool[class].give_back(chunk);
        }
    });
}

/// Copies `data` into this thread's pool: a shared buffer without an allocation per call
/// in the steady state (what [`SendBuffer::copy_from_slice`] uses).
pub(crate) fn pooled_copy(data: &[u8]) -> Bytes {
    pooled_concat(data.len(), std::iter::once(data))
}

/// Joins `parts` (`total` bytes in all) into one buffer carved from a chunk of its class.
pub(crate) fn pooled_concat<'a>(total: usize, parts: impl Iterator<Item = &'a [u8]>) -> Bytes {
    if total == 0 {
        return Bytes::new(); // static: pins nothing
    }
    if total > WRITER_CHUNK_SIZE {
        let mut own = Vec::with_capacity(total);
        parts.for_each(|p| own.extend_from_slice(p));
        return Bytes::from(own);
    }
    let class = class_of(total);
    let mut chunk = acquire(class, total);
    for p in parts {
        chunk.extend_from_slice(p);
    }
    debug_assert_eq!(chunk.len(), total);
    let joined = chunk.split().freeze();
    release(class, chunk);
    joined
}
