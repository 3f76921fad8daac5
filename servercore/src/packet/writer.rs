//! Pooled packet construction: the seed's `SendBufferManager`, on [`bytes::BytesMut`].
//!
//! A [`PacketWriter`] writes in place in a 64 KiB chunk; [`finish`](PacketWriter::finish)
//! keeps a packet of 2 KiB or more there and copies a smaller one into a chunk of its own
//! class (one `memcpy` of under 2 KiB). Buffers over 64 KiB get an allocation of their own.
//!
//!
//! The chunks come from the send-buffer pool (`crate::buffer::pool`), whose module doc
//! states the memory bound ([`PIN_FACTOR`]) and how the memory comes back.

use crate::buffer::pool::{acquire, class_of, pooled_concat, pooled_copy, release, LARGEST};
pub use crate::buffer::pool::{PIN_FACTOR, PIN_MIN_LEN, WRITER_CHUNK_SIZE};
use crate::buffer::SendBuffer;
use crate::packet::frame::{packet_size, FrameError, HEADER_LEN, MAX_PACKET_SIZE_LIMIT};
use bytes::{BufMut, BytesMut};
use std::fmt;

/// Payload bytes [`PacketWriter::new`] makes room for up front; more can still be written.
const DEFAULT_PAYLOAD_HINT: usize = 128;

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
        let mut chunk = acquire(LARGEST, HEADER_LEN + hint);
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
        // From here on `self` holds nothing: the rest of the chunk is given back below.
        let mut header = std::mem::take(&mut self.header);
        let mut rest = std::mem::take(&mut self.payload);
        let in_chunk = adjacent(&header, &rest);
        let payload = rest.split();
        let written = payload.len();
        header.clear();
        header.put_u16_le(size);
        header.put_u16_le(self.id);
        if !in_chunk {
            // The payload outgrew the chunk's tail and moved: copy once, into its class.
            let total = HEADER_LEN + payload.len();
            let packet = pooled_concat(total, [&header[..], &payload[..]].into_iter());
            give_back_rest(rest, written);
            return Ok(SendBuffer::from(packet));
        }
        // Header and payload are adjacent in the chunk: `unsplit` joins them in O(1).
        header.unsplit(payload);
        if class_of(header.len()) == LARGEST {
            give_back_rest(rest, 0);
            return Ok(SendBuffer::from(header.freeze()));
        }
        // Too small to keep a 64 KiB chunk alive (the PIN_FACTOR bound): copied into a chunk
        // of its size, and the writer's chunk takes its bytes back for the next packet.
        let packet = pooled_copy(&header);
        header.unsplit(rest);
        give_back_rest(header, 0);
        Ok(SendBuffer::from(packet))
    }
}

/// Whether `payload` still starts where `header` ends, i.e. was not moved by growing.
fn adjacent(header: &BytesMut, payload: &BytesMut) -> bool {
    header.as_ptr().wrapping_add(header.len()) == payload.as_ptr()
}

/// Returns a writer's unused rest (whose storage held the `written` payload bytes just
/// before it) to the pool. A payload that outgrew its chunk moved to a new allocation
/// (64 KiB, `BytesMut`'s original capacity), which then takes the chunk's place; one
/// grown larger than a pool chunk is freed, so the PIN_FACTOR bound still holds.
fn give_back_rest(mut rest: BytesMut, written: usize) {
    if written.saturating_add(rest.capacity()) <= WRITER_CHUNK_SIZE {
        rest.clear();
        release(LARGEST, rest);
    }
}

impl Drop for PacketWriter {
    fn drop(&mut self) {
        if self.header.is_empty() {
            return; // finished: `finish` gave the chunk back
        }
        // Unfinished: header and payload are discarded and, if still in the chunk, taken back.
        let mut rest = std::mem::take(&mut self.payload);
        if adjacent(&self.header, &rest) {
            let mut header = std::mem::take(&mut self.header);
            header.unsplit(rest);
            rest = header;
        }
        give_back_rest(rest, 0);
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
    use crate::buffer::pool::chunk_size;
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
            // Enough packets of the same class to run through the chunk's tail many times.
            let size = chunk_size(class_of(5));
            for i in 0..(3 * size / 5) {
                drop(build(i as u16, b"z"));
            }
            let again = build(2, b"y");
            let base = start as usize;
            let at = again.as_ptr() as usize;
            assert!(at >= base && at < base + size, "same allocation reused");
        });
    }

    #[test]
    fn every_class_holds_its_buffers_within_the_pin_factor() {
        for len in 1..=WRITER_CHUNK_SIZE {
            let size = chunk_size(class_of(len));
            assert!(size >= len, "{len} bytes fit their {size}-byte chunk");
            assert!(size <= PIN_FACTOR * len.max(PIN_MIN_LEN), "{len} bytes in {size}");
        }
        assert_eq!(chunk_size(class_of(8)), 256);
        assert_eq!(chunk_size(class_of(2048)), WRITER_CHUNK_SIZE);
        assert_eq!(chunk_size(LARGEST), WRITER_CHUNK_SIZE);
    }

    #[test]
    fn large_packets_stay_in_place_small_ones_move_to_their_class() {
        on_fresh_thread(|| {
            let big = |id| {
                let mut w = PacketWriter::with_capacity(id, 3000);
                w.put_slice(&[id as u8; 3000]);
                w.finish().unwrap()
            };
            let (a, b) = (big(1), big(2));
            // Carved one after the other in the writer's 64 KiB chunk: no copy.
            assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
            // A small packet is copied out, so the writer's chunk does not advance for it.
            let small = build(3, b"s");
            let c = big(4);
            assert_eq!(b.as_ptr().wrapping_add(b.len()), c.as_ptr());
            assert_eq!(&small[..], &[5, 0, 3, 0, b's']);
            let (p, _) = decode(&c, 65535).unwrap().unwrap();
            assert_eq!((p.id, p.payload), (4, &[4u8; 3000][..]));
        });
    }

    #[test]
    fn empty_and_oversized_copies() {
        let empty = pooled_copy(b"");
        assert!(empty.is_empty());
        let big = vec![9u8; WRITER_CHUNK_SIZE + 1];
        let copy = pooled_copy(&big);
        assert_eq!(&copy[..], &big[..]);
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
