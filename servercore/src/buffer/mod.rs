//! Send buffers: immutable, reference-counted, cheap to clone.
//!
//! The seed's `SendBuffer` / `SendBufferChunk` let one encoded packet be queued to many
//! sessions without a copy per receiver. Here that is [`bytes::Bytes`]: cloning a
//! [`SendBuffer`] bumps a reference count, and the payload is freed when the last session
//! has written it. Pooled construction (many buffers carved from one chunk) lives in
//! [`crate::packet::PacketWriter`].
//!
//! A pooled buffer keeps its whole chunk alive, so a buffer of `n` bytes is carved only
//! from a chunk of at most [`PIN_FACTOR`](crate::buffer::pool::PIN_FACTOR)` * max(n, 8)` bytes:
//! bytes queued to a peer that does not read keep at most that multiple of themselves
//! alive, and a send queue limit in bytes is a limit on memory (`PIN_FACTOR` states the
//! whole bound).

pub(crate) mod pool;

use bytes::Bytes;
use std::fmt;
use std::ops::Deref;

/// An immutable, shareable byte buffer to send on one or many sessions.
///
/// Thread safety: `Send + Sync`; clone it freely across threads. Cloning never copies the
/// payload.
///
/// ```
/// use servercore::SendBuffer;
/// let buf = SendBuffer::from(b"hello".to_vec());
/// let again = buf.clone(); // shares the same bytes
/// assert_eq!(&*again, b"hello");
/// assert_eq!(buf.as_ptr(), again.as_ptr());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SendBuffer(Bytes);

impl SendBuffer {
    /// A buffer that refers to static bytes (no allocation).
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        SendBuffer(Bytes::from_static(bytes))
    }

    /// Copies `data` into a new buffer. The copy is carved from a per-thread pooled chunk
    /// (as [`PacketWriter`](crate::packet::PacketWriter) does), so steady sending allocates
    /// nothing per buffer. A buffer keeps its chunk alive until it is dropped, so the chunk
    /// is sized to the copy: at most [`PIN_FACTOR`](crate::buffer::pool::PIN_FACTOR) times its
    /// length (counted as at least 8 bytes); over 64 KiB, the copy is an allocation of its
    /// own, and an empty copy allocates nothing.
    pub fn copy_from_slice(data: &[u8]) -> Self {
        SendBuffer(pool::pooled_copy(data))
    }

    /// The underlying [`Bytes`].
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Converts into the underlying [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for SendBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SendBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for SendBuffer {
    fn from(b: Bytes) -> Self {
        SendBuffer(b)
    }
}

impl From<bytes::BytesMut> for SendBuffer {
    fn from(b: bytes::BytesMut) -> Self {
        SendBuffer(b.freeze())
    }
}

impl From<Vec<u8>> for SendBuffer {
    fn from(v: Vec<u8>) -> Self {
        SendBuffer(Bytes::from(v))
    }
}

impl From<&'static [u8]> for SendBuffer {
    fn from(s: &'static [u8]) -> Self {
        SendBuffer(Bytes::from_static(s))
    }
}

impl From<&'static str> for SendBuffer {
    fn from(s: &'static str) -> Self {
        SendBuffer(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for SendBuffer {
    fn from(s: String) -> Self {
        SendBuffer(Bytes::from(s))
    }
}

impl From<SendBuffer> for Bytes {
    fn from(b: SendBuffer) -> Self {
        b.0
    }
}

impl fmt::Debug for SendBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendBuffer({} bytes)", self.0.len())
    }
}

/// Buffers up to this length are joined with their neighbours when a room batch is
/// coalesced; longer ones are queued as they are (copying them would cost more than the
/// queue entries it saves).
pub(crate) const COALESCE_MAX_PART: usize = 2048;

/// The largest buffer coalescing makes.
pub(crate) const COALESCE_MAX: usize = 64 * 1024;

/// Appends `parts` to `out` in order, joining each run of small parts into one buffer.
///
/// A room's broadcasts of one loop turn go to every member in the same order, so they are
/// joined once here and each member queues one buffer instead of one per message: the cost
/// per receiver stops growing with the number of messages. Bytes and their order are kept
/// exactly; only the buffer boundaries change (TCP has none).
pub(crate) fn coalesce(parts: &[Bytes], out: &mut Vec<Bytes>) {
    let mut i = 0;
    while i < parts.len() {
        if parts[i].len() > COALESCE_MAX_PART {
            out.push(parts[i].clone());
            i += 1;
            continue;
        }
        let (mut j, mut total) = (i, 0);
        while j < parts.len()
            && parts[j].len() <= COALESCE_MAX_PART
            && total + parts[j].len() <= COALESCE_MAX
        {
            total += parts[j].len();
            j += 1;
        }
        if j - i == 1 {
            out.push(parts[i].clone());
        } else if total > 0 {
            out.push(pool::pooled_concat(total, parts[i..j].iter().map(|b| &b[..])));
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn joined(bufs: &[Bytes]) -> Vec<u8> {
        bufs.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn small_runs_join_large_parts_stay_shared() {
        let big = Bytes::from(vec![7u8; COALESCE_MAX_PART + 1]);
        let parts = vec![
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"cd"),
            big.clone(),
            Bytes::from_static(b"e"),
        ];
        let mut out = Vec::new();
        coalesce(&parts, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"abcd");
        assert_eq!(out[1].as_ptr(), big.as_ptr(), "a large part is shared, not copied");
        assert_eq!(&out[2][..], b"e");
    }

    #[test]
    fn a_lone_small_part_is_not_copied() {
        let one = Bytes::from(vec![1u8; 10]);
        let mut out = Vec::new();
        coalesce(std::slice::from_ref(&one), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ptr(), one.as_ptr());
    }

    proptest! {
        #[test]
        fn keeps_every_byte_in_order_and_bounds_each_buffer(
            lens in proptest::collection::vec(0usize..5000, 0..60),
        ) {
            let parts: Vec<Bytes> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| Bytes::from((0..n).map(|k| (i * 31 + k) as u8).collect::<Vec<_>>()))
                .collect();
            let mut out = Vec::new();
            coalesce(&parts, &mut out);
            prop_assert_eq!(joined(&out), joined(&parts));
            prop_assert!(out.len() <= parts.len());
            for b in &out {
                let shared = parts.iter().any(|p| p.as_ptr() == b.as_ptr() && p.len() == b.len());
                prop_assert!(shared || b.len() <= COALESCE_MAX, "a joined buffer stays bounded");
            }
        }
    }
}
