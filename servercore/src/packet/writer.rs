//! Pooled packet construction: the seed's `SendBufferManager`, on [`bytes::BytesMut`].
//!
//! Each thread keeps one large chunk ([`WRITER_CHUNK_SIZE`] bytes). A [`PacketWriter`]
//! writes its packet into the free tail of that chunk and [`finish`](PacketWriter::finish)
//! carves the packet off as a frozen [`SendBuffer`], so many small packets share one
//! allocation and one reference count instead of each allocating.
//!
//! How the memory comes back (checked against `bytes` 1.x, `BytesMut::reserve` /
//! `reserve_inner` in `bytes_mut.rs`): after the first `split`, the chunk and every buffer
//! carved from it point at one shared, reference-counted `Vec`. When the chunk's tail is too
//! small for the next packet, `reserve` checks whether the chunk is the *unique* owner of
//! that `Vec` (every packet carved from it has been dropped); if so it rewinds to the start
//! of the same allocation without allocating or copying (the chunk holds no bytes). Only if
//! some packet is still alive (queued on a slow session, say) does it allocate a new chunk
//! of the original capacity; the old one is freed when its last packet is dropped. So in
//! steady state, building, sending and dropping packets allocates nothing, and cloning a
//! finished packet for a broadcast is a reference-count increment.
//!
//! The cost of this design: one long-lived packet keeps its whole chunk alive.

use crate::buffer::SendBuffer;
use crate::packet::frame::{packet_size, FrameError, HEADER_LEN, MAX_PACKET_SIZE_LIMIT};
use bytes::{BufMut, BytesMut};
use std::cell::RefCell;
use std::fmt;

/// Size of each thread's packet chunk: large enough that reclaiming or replacing it is rare
/// (about a thousand small packets per chunk), small enough that a pinned chunk is cheap.
pub const WRITER_CHUNK_SIZE: usize = 64 * 1024;

/// Payload bytes [`PacketWriter::new`] makes room for up front; more can still be written.
const DEFAULT_PAYLOAD_HINT: usize = 128;

thread_local! {
    /// This thread's chunk; `None` until first use and while a writer has it out.
    static CHUNK: RefCell<Option<BytesMut>> = const { RefCell::new(None) };
}

/// Takes this thread's chunk (or makes one) with room for at least `need` bytes.
fn acquire(need: usize) -> BytesMut {
    let taken =
        CHUNK.try_with(|slot| slot.try_borrow_mut().ok().and_then(|mut s| s.take())).ok().flatten();
    match taken {
        Some(mut chunk) => {
            // Reclaims the whole allocation if every packet carved from it is gone;
            // allocates a fresh chunk of the original capacity otherwise.
            chunk.reserve(need);
            chunk
        }
        // First use on this thread, or a second writer alive at the same time.
        None => BytesMut::with_capacity(need.max(WRITER_CHUNK_SIZE)),
    }
}

/// Copies `data` into this thread's chunk: a shared buffer without an allocation per call
/// in the steady state (what [`SendBuffer::copy_from_slice`] uses).
pub(crate) fn pooled_copy(data: &[u8]) -> bytes::Bytes {
    let mut chunk = acquire(data.len());
    chunk.extend_from_slice(data);
    let copy = chunk.split().freeze();
    release(chunk);
    copy
}

/// Joins `parts` (`total` bytes in all) into one buffer carved from this thread's chunk.
pub(crate) fn pooled_concat<'a>(
    total: usize,
    parts: impl Iterator<Item = &'a [u8]>,
) -> bytes::Bytes {
    let mut chunk = acquire(total);
    for p in parts {
        chunk.extend_from_slice(p);
    }
    let joined = chunk.split().freeze();
    release(chunk);
    joined
}

/// Gives an (empty) chunk back to this thread, keeping whichever chunk has more room.
fn release(chunk: BytesMut) {
    if chunk.capacity() == 0 {
        return;
    }
    // During thread teardown the slot may be gone; then the chunk is simply dropped.
    let _ = CHUNK.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            let keep_old = slot.as_ref().is_some_and(|old| old.capacity() >= chunk.capacity());
            if !keep_old {
                *slot = Some(chunk);
            }
        }
    });
}

/// Builds one packet in pooled memory: header space is reserved, the caller writes the
/// payload, and [`finish`](Self::finish) fills in the header and returns a [`SendBuffer`].
///
/// The payload buffer is separate from the header, so nothing written through
/// [`buf`](Self::buf) can damage the header. Dropping an unfinished writer discards the
/// payload and returns the memory to the pool.
///
/// A writer is meant to be short-lived: create, write, finish. (Holding several at once on
/// one thread is correct, just not pooled.)
///
/// ```
/// use bytes::BufMut;
/// use servercore::packet::{decode, PacketWriter};
///
/// let mut w = PacketWriter::new(42);
/// w.put_u32_le(7).put_slice(b"hi");
/// w.buf().put_f32_le(1.5); // the whole `BufMut` API via the payload buffer
/// let packet = w.finish().unwrap();
///
/// let (p, used) = decode(&packet, 4096).unwrap().unwrap();
/// assert_eq!((p.id, used), (42, packet.len()));
/// assert_eq!(&p.payload[..6], &[7, 0, 0, 0, b'h', b'i']);
///
/// let for_everyone = packet.clone(); // a broadcast copy: no allocation, no copy
/// assert_eq!(for_everyone.as_ptr(), packet.as_ptr());
/// ```
pub struct PacketWriter {
    id: u16,
    /// The 4 header bytes, carved from the chunk just before `payload`.
    header: BytesMut,
    /// The rest of the chunk: written bytes are the payload, spare capacity the pool.
    payload: BytesMut,
}

impl PacketWriter {
    /// Starts packet `id` with room for a small payload (it grows as needed).
    pub fn new(id: u16) -> Self {
        Self::with_capacity(id, DEFAULT_PAYLOAD_HINT)
    }

    /// Starts packet `id` with room for `payload_hint` payload bytes, so a payload of known
    /// size is written without the chunk having to grow midway. Hints above the largest
    /// possible payload (65531 bytes) are treated as that.
    pub fn with_capacity(id: u16, payload_hint: usize) -> Self {
        let hint = payload_hint.min(MAX_PACKET_SIZE_LIMIT - HEADER_LEN);
        let mut chunk = acquire(HEADER_LEN + hint);
        // The chunk is always empty here: `finish` splits off everything written, and
        // `Drop` clears it.
        chunk.clear();
        chunk.put_bytes(0, HEADER_LEN);
        let header = chunk.split();
        PacketWriter { id, header, payload: chunk }
    }

    /// The packet id this writer will stamp.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The payload written so far.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Payload bytes written so far.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// Whether no payload has been written yet.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// The payload buffer, for the full [`BufMut`] API or in-place edits. Only the payload
    /// is in it; the header is filled in by [`finish`](Self::finish).
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.payload
    }

    /// Appends bytes to the payload.
    pub fn put_slice(&mut self, src: &[u8]) -> &mut Self {
        self.payload.put_slice(src);
        self
    }

    /// Appends a `u8`.
    pub fn put_u8(&mut self, n: u8) -> &mut Self {
        self.payload.put_u8(n);
        self
    }

    /// Appends an `i8`.
    pub fn put_i8(&mut self, n: i8) -> &mut Self {
        self.payload.put_i8(n);
        self
    }

    /// Appends a little-endian `u16`.
    pub fn put_u16_le(&mut self, n: u16) -> &mut Self {
        self.payload.put_u16_le(n);
        self
    }

    /// Appends a little-endian `i16`.
    pub fn put_i16_le(&mut self, n: i16) -> &mut Self {
        self.payload.put_i16_le(n);
        self
    }

    /// Appends a little-endian `u32`.
    pub fn put_u32_le(&mut self, n: u32) -> &mut Self {
        self.payload.put_u32_le(n);
        self
    }

    /// Appends a little-endian `i32`.
    pub fn put_i32_le(&mut self, n: i32) -> &mut Self {
        self.payload.put_i32_le(n);
        self
    }

    /// Appends a little-endian `u64`.
    pub fn put_u64_le(&mut self, n: u64) -> &mut Self {
        self.payload.put_u64_le(n);
        self
    }

    /// Appends a little-endian `i64`.
    pub fn put_i64_le(&mut self, n: i64) -> &mut Self {
        self.payload.put_i64_le(n);
        self
    }

    /// Appends a little-endian `f32`.
    pub fn put_f32_le(&mut self, n: f32) -> &mut Self {
        self.payload.put_f32_le(n);
        self
    }

    /// Appends a little-endian `f64`.
    pub fn put_f64_le(&mut self, n: f64) -> &mut Self {
        self.payload.put_f64_le(n);
        self
    }

    /// Fills in the header and returns the packet, ready to send to one or many sessions.
    ///
    /// Fails with [`FrameError::TooLarge`] if header plus payload exceed 65535 bytes (the
    /// memory still goes back to the pool).
    pub fn finish(mut self) -> Result<SendBuffer, FrameError> {
        let size = packet_size(self.payload.len())?;
        let payload = self.payload.split();
        let mut header = std::mem::take(&mut self.header);
        header.clear();
        header.put_u16_le(size);
        header.put_u16_le(self.id);
        // `self` (now holding only the empty rest of the chunk) goes back to the pool in Drop.
        let contiguous = header.as_ptr().wrapping_add(header.len()) == payload.as_ptr();
        let packet = if contiguous || payload.is_empty() {
            // Usual case: header and payload are adjacent in the chunk, and `unsplit`
            // joins them in O(1) without copying.
            header.unsplit(payload);
            header
        } else {
            // The payload outgrew the chunk and moved: copy once into an exact buffer.
            let mut packet = BytesMut::with_capacity(HEADER_LEN + payload.len());
            packet.put_slice(&header);
            packet.put_slice(&payload);
            packet
        };
        Ok(SendBuffer::from(packet.freeze()))
    }
}

impl Drop for PacketWriter {
    fn drop(&mut self) {
        let mut rest = std::mem::take(&mut self.payload);
        rest.clear();
        release(rest);
    }
}

impl std::io::Write for PacketWriter {
    /// Appends to the payload; never fails (an oversized packet is reported by `finish`).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.payload.put_slice(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.payload.put_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for PacketWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketWriter")
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::decode;

    fn build(id: u16, payload: &[u8]) -> SendBuffer {
        let mut w = PacketWriter::new(id);
        w.put_slice(payload);
        w.finish().unwrap()
    }

    /// Runs `f` on a new thread, so it starts with an empty pool.
    fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn packets_share_one_chunk() {
        on_fresh_thread(|| {
            let a = build(1, &[1]);
            let b = build(2, &[2]);
            // Carved one after the other from the same chunk.
            assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
            assert_eq!(&a[..], &[5, 0, 1, 0, 1]);
            assert_eq!(&b[..], &[5, 0, 2, 0, 2]);
        });
    }

    #[test]
    fn chunk_is_reclaimed_once_its_packets_are_gone() {
        on_fresh_thread(|| {
            let first = build(1, b"x");
            let start = first.as_ptr();
            drop(first);
            // Enough packets to run through the chunk's tail several times.
            for i in 0..(3 * WRITER_CHUNK_SIZE / 100) {
                drop(build(i as u16, &[0; 96]));
            }
            let again = build(2, b"y");
            let base = start as usize;
            let at = again.as_ptr() as usize;
            assert!(at >= base && at < base + WRITER_CHUNK_SIZE, "same allocation reused");
        });
    }

    #[test]
    fn nested_writers_and_drop_unfinished() {
        let mut outer = PacketWriter::new(1);
        outer.put_slice(b"outer");
        let inner = build(2, b"inner");
        let mut discarded = PacketWriter::new(3);
        discarded.put_slice(b"discarded");
        drop(discarded);
        let outer = outer.finish().unwrap();
        let (p, _) = decode(&outer, 4096).unwrap().unwrap();
        assert_eq!((p.id, p.payload), (1, &b"outer"[..]));
        let (p, _) = decode(&inner, 4096).unwrap().unwrap();
        assert_eq!((p.id, p.payload), (2, &b"inner"[..]));
        let after = build(4, b"after");
        assert_eq!(&after[4..], b"after");
    }

    #[test]
    fn payload_outgrowing_the_chunk() {
        on_fresh_thread(|| {
            let _keep = build(0, b""); // the chunk is shared, so it cannot be reclaimed
            let mut w = PacketWriter::with_capacity(5, 0);
            let big = vec![0xAB; 65531]; // more than the chunk's tail
            w.put_slice(&big);
            let p = w.finish().unwrap();
            let (packet, used) = decode(&p, 65535).unwrap().unwrap();
            assert_eq!((packet.id, packet.payload, used), (5, &big[..], 65535));
        });
    }

    #[test]
    fn too_large() {
        let mut w = PacketWriter::new(1);
        w.buf().put_bytes(0, 65532);
        assert_eq!(w.finish().unwrap_err(), FrameError::TooLarge { size: u16::MAX, max: 65535 });
        let mut w = PacketWriter::new(1);
        w.buf().put_bytes(0, 65531);
        assert_eq!(w.finish().unwrap().len(), 65535);
    }

    #[test]
    fn absurd_hint() {
        let mut w = PacketWriter::with_capacity(1, usize::MAX);
        w.put_u8(1);
        assert_eq!(&w.finish().unwrap()[..], &[5, 0, 1, 0, 1]);
    }

    #[test]
    fn io_write() {
        use std::io::Write;
        let mut w = PacketWriter::new(8);
        write!(w, "n={}", 12).unwrap();
        assert_eq!(w.payload(), b"n=12");
        assert_eq!((w.len(), w.is_empty(), w.id()), (4, false, 8));
        assert_eq!(&w.finish().unwrap()[..], b"\x08\x00\x08\x00n=12");
    }
}
