//! A provided-buffer ring (io_uring 5.19+): receive buffers shared by every session of a
//! worker, taken by the kernel only when bytes arrive.
//!
//! Memory: one page-aligned array of ring entries and one block of `count × size` bytes.
//! The kernel reads the entries and writes into the buffers until the ring is unregistered
//! or the io_uring is closed, so both live until then (DESIGN.md invariant 1); the driver
//! drops the ring before this (field order) and leaks this when operations could not be
//! reaped.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// The provided-buffer ring of one worker's io_uring.
pub(crate) struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    count: u16,
    /// Our copy of the ring tail (the kernel owns the head).
    tail: u16,
    size: usize,
    /// `count × size` bytes the kernel writes into; raw, because the kernel writes buffers
    /// it owns while we read the ones it handed back.
    bufs: *mut u8,
    bufs_layout: Layout,
    pub(crate) bgid: u16,
}

impl BufRing {
    /// Allocates `count` (a power of two, at most 32768) buffers of `size` bytes, registers
    /// them with `ring` as group `bgid`, and hands all of them to the kernel.
    /// How many buffers the ring has.
    pub(crate) fn count(&self) -> usize {
        usize::from(self.count)
    }

    pub(crate) fn new(ring: &IoUring, count: u16, size: usize, bgid: u16) -> io::Result<Self> {
        assert!(count.is_power_of_two() && count <= 32768 && size > 0 && size <= u32::MAX as usize);
        let entries_layout = Layout::array::<BufRingEntry>(usize::from(count))
            .and_then(|l| l.align_to(4096))
            .map_err(|e| io::Error::other(format!("buffer ring layout: {e}")))?;
        // SAFETY: the layout has a non-zero size (count >= 1 entries of 16 bytes).
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            alloc::handle_alloc_error(entries_layout);
        }
        let bufs_layout = Layout::array::<u8>(buffers_bytes(usize::from(count), size)?)
            .and_then(|l| l.align_to(4096))
            .map_err(|e| io::Error::other(format!("buffer ring layout: {e}")))?;
        // SAFETY: non-zero size (count >= 1, size >= 1).
        let bufs = unsafe { alloc::alloc_zeroed(bufs_layout) };
        if bufs.is_null() {
            alloc::handle_alloc_error(bufs_layout);
        }
        let mut me =
            BufRing { entries, entries_layout, count, tail: 0, size, bufs, bufs_layout, bgid };
        // SAFETY: invariant 1: `entries` is a zeroed, page-aligned array of `count` entries
        // that lives until this BufRing is dropped, which happens only after the io_uring
        // is closed (or never, when operations could not be reaped).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(entries as u64, count, bgid, 0)?;
        }
        for bid in 0..count {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    /// Queues buffer `bid` for the kernel (visible after [`publish`](Self::publish)).
    pub(crate) fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs as u64 + (usize::from(bid) * self.size) as u64;
        // SAFETY: `index < count`, so the entry is inside the allocation; the kernel only
        // reads entries between its head and the published tail, and this one is past the
        // tail until `publish`.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed buffers visible to the kernel.
    pub(crate) fn publish(&self) {
        // SAFETY: `entries` is the ring's base; the tail field overlays the first entry's
        // reserved field, an aligned u16 that the kernel reads atomically.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and handed back.
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count);
        let start = usize::from(bid) * self.size;
        // SAFETY: inside the allocation (bid < count, len clamped to size); the kernel
        // handed buffer `bid` back in a reaped completion and gets it again only through
        // `push`, which needs `&mut self`, so it does not write it while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.bufs.add(start), len.min(self.size)) }
    }
}

/// `count × size`, the bytes of the buffers, or an error when that does not fit in the
/// address space (on 32-bit a legal configuration can: a wrapped product would allocate
/// far less than the kernel is told it may write).
fn buffers_bytes(count: usize, size: usize) -> io::Result<usize> {
    count.checked_mul(size).filter(|&n| n <= isize::MAX as usize).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("buffer ring of {count} buffers of {size} bytes exceeds the address space"),
        )
    })
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both allocated in `new` with these layouts; the io_uring that could touch
        // them is closed by now (the driver drops its ring first, or leaks this instead).
        unsafe {
            alloc::dealloc(self.entries.cast(), self.entries_layout);
            alloc::dealloc(self.bufs, self.bufs_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::buffers_bytes;

    #[test]
    fn buffer_bytes_are_the_product() {
        assert_eq!(buffers_bytes(1024, 4096).unwrap(), 4 << 20);
        assert_eq!(buffers_bytes(32768, 1 << 20).unwrap(), 32 << 30);
    }

    /// The 32-bit case (32768 buffers of 128 KiB is 4 GiB), shown at this width: a
    /// product past the address space is an error, not a wrapped small number.
    #[test]
    fn buffer_bytes_overflow_is_an_error() {
        let e = buffers_bytes(32768, usize::MAX / 16384).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(buffers_bytes(2, usize::MAX / 2 + 1).is_err());
        // Fits usize but not a Rust allocation (isize::MAX).
        assert!(buffers_bytes(2, isize::MAX as usize / 2 + 1).is_err());
        assert!(buffers_bytes(usize::from(u16::MAX), usize::MAX).is_err());
    }
}
