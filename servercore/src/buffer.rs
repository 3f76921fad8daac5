//! Send buffers: immutable, reference-counted, cheap to clone.
//!
//! The seed's `SendBuffer` / `SendBufferChunk` let one encoded packet be queued to many
//! sessions without a copy per receiver. Here that is [`bytes::Bytes`]: cloning a
//! [`SendBuffer`] bumps a reference count, and the payload is freed when the last session
//! has written it. Pooled construction (many buffers carved from one chunk) lives in
//! [`crate::packet::PacketWriter`].

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
    /// nothing per buffer; a buffer keeps its chunk alive until it is dropped.
    pub fn copy_from_slice(data: &[u8]) -> Self {
        SendBuffer(crate::packet::pooled_copy(data))
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
