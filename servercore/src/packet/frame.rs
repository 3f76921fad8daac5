//! The packet frame: a 4-byte little-endian header (`size`, `id`) followed by the payload.
//!
//! ```text
//! offset 0  u16  size   whole packet length, header included (4 ..= max_packet_size)
//! offset 2  u16  id     packet id
//! offset 4  ...  payload (size - 4 bytes)
//! ```
//!
//! The decoder never reads past the packet it reports, never panics on any input, and
//! reports a bad `size` as soon as its two bytes have arrived, so a peer cannot make a
//! session buffer bytes for a packet that will be rejected anyway.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Length of the packet header (`size` + `id`), which `size` counts.
pub const HEADER_LEN: usize = 4;

/// The largest packet a decoder accepts unless configured otherwise; it bounds how much a
/// session buffers for one packet.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 4096;

/// The largest packet the 16-bit `size` field can describe; no configuration goes above it.
pub const MAX_PACKET_SIZE_LIMIT: usize = u16::MAX as usize;

/// One decoded packet, borrowing its payload from the receive buffer (no copy).
///
/// ```
/// use servercore::packet::{decode, Packet};
/// let wire = [6, 0, 7, 0, b'h', b'i'];
/// let (packet, used) = decode(&wire, 4096).unwrap().unwrap();
/// assert_eq!(packet, Packet { id: 7, payload: b"hi" });
/// assert_eq!(used, 6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Packet id: tells the handler how to read the payload.
    pub id: u16,
    /// The bytes after the header.
    pub payload: &'a [u8],
}

impl Packet<'_> {
    /// Bytes this packet takes on the wire (the value of its `size` field).
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// A protocol violation in a packet header; the session that sent it should be closed.
///
/// ```
/// use servercore::packet::{decode, FrameError};
/// assert_eq!(decode(&[2, 0], 4096), Err(FrameError::TooSmall { size: 2 }));
/// let err = decode(&[0x28, 0x23], 4096).unwrap_err(); // size 9000
/// assert_eq!(err.to_string(), "packet size 9000 exceeds the maximum 4096");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// `size` is smaller than the header it must include.
    TooSmall {
        /// The `size` field as found on the wire.
        size: u16,
    },
    /// `size` is above the configured maximum.
    ///
    /// When encoding a payload that does not fit the 16-bit field at all, `size` saturates
    /// at `u16::MAX` and `max` is [`MAX_PACKET_SIZE_LIMIT`].
    TooLarge {
        /// The `size` field as found on the wire (saturated at `u16::MAX` when encoding).
        size: u16,
        /// The maximum in force.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::TooSmall { size } => {
                write!(f, "packet size {size} is below the {HEADER_LEN}-byte header")
            }
            FrameError::TooLarge { size, max } if usize::from(size) > max => {
                write!(f, "packet size {size} exceeds the maximum {max}")
            }
            // Only reachable through encoding, where the real size did not fit in a u16.
            FrameError::TooLarge { max, .. } => {
                write!(f, "packet size above {MAX_PACKET_SIZE_LIMIT} exceeds the maximum {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Brings a configured maximum into `HEADER_LEN..=MAX_PACKET_SIZE_LIMIT`.
fn clamp_max(max_packet_size: usize) -> usize {
    max_packet_size.clamp(HEADER_LEN, MAX_PACKET_SIZE_LIMIT)
}

/// Decodes the packet at the front of `buf`, if it has fully arrived.
///
/// Returns `Ok(None)` when more bytes are needed, or `Ok(Some((packet, consumed)))` where
/// `consumed` is the packet's `size`: drop that many bytes from the front of `buf` before
/// the next call. A `size` outside `4..=max_packet_size` is an error as soon as its two
/// bytes are in `buf`. `max_packet_size` is clamped into `4..=65535`, like
/// [`FrameDecoder::new`].
///
/// ```
/// use servercore::packet::decode;
/// let wire = [5, 0, 1, 0, 42, /* next packet: */ 4, 0];
/// let (packet, used) = decode(&wire, 4096).unwrap().unwrap();
/// assert_eq!((packet.id, packet.payload, used), (1, &[42][..], 5));
/// assert_eq!(decode(&wire[used..], 4096), Ok(None)); // only half a header so far
/// ```
pub fn decode(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<(Packet<'_>, usize)>, FrameError> {
    let max = clamp_max(max_packet_size);
    let Some(&size_bytes) = buf.first_chunk::<2>() else {
        return Ok(None);
    };
    let size = u16::from_le_bytes(size_bytes);
    let len = usize::from(size);
    if len < HEADER_LEN {
        return Err(FrameError::TooSmall { size });
    }
    if len > max {
        return Err(FrameError::TooLarge { size, max });
    }
    let Some((whole, _rest)) = buf.split_at_checked(len) else {
        return Ok(None);
    };
    let Some((header, payload)) = whole.split_first_chunk::<HEADER_LEN>() else {
        // Unreachable: `len >= HEADER_LEN` was checked above. Kept panic-free anyway.
        return Ok(None);
    };
    let id = u16::from_le_bytes([header[2], header[3]]);
    Ok(Some((Packet { id, payload }, len)))
}

/// Splits a session's receive buffer into packets, with the session's maximum size.
///
/// It holds no bytes itself: the caller keeps the receive buffer, hands its filled part to
/// [`decode_all`](Self::decode_all), and drops the consumed prefix. That keeps it I/O-free
/// and lets packets borrow straight from the buffer.
///
/// ```
/// use servercore::packet::{encode, FrameDecoder};
/// let decoder = FrameDecoder::new(256);
/// let mut rx = Vec::new();
/// rx.extend_from_slice(&encode(1, b"hello").unwrap());
/// rx.extend_from_slice(&encode(2, b"").unwrap()[..3]); // second packet still arriving
///
/// let mut seen = Vec::new();
/// let used = decoder
///     .decode_all(&rx, |p| {
///         seen.push((p.id, p.payload.to_vec()));
///         true
///     })
///     .unwrap();
/// assert_eq!(seen, vec![(1, b"hello".to_vec())]);
/// assert_eq!(used, 9);
/// rx.drain(..used); // keep the partial packet for the next read
/// assert_eq!(rx.len(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_packet_size: usize,
}

impl FrameDecoder {
    /// A decoder that rejects packets larger than `max_packet_size`.
    ///
    /// Never panics: `max_packet_size` is clamped into `4..=65535` (a packet is at least its
    /// header, and `size` is 16 bits), so a bad configuration value cannot take a server down.
    pub fn new(max_packet_size: usize) -> Self {
        FrameDecoder { max_packet_size: clamp_max(max_packet_size) }
    }

    /// The maximum in force, after clamping.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// [`decode`] with this decoder's maximum.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<(Packet<'a>, usize)>, FrameError> {
        decode(buf, self.max_packet_size)
    }

    /// Calls `f` for each whole packet at the front of `buf`, in order, and returns how many
    /// bytes those packets took (a trailing partial packet is left for the next read).
    ///
    /// If `f` returns `false`, decoding stops after that packet; the count includes it.
    ///
    /// On a bad header it returns the error; the packets before it **have already been
    /// delivered** to `f`. The error means the stream cannot be resynchronised, so the
    /// session should be closed and the consumed count no longer matters.
    pub fn decode_all<'a>(
        &self,
        buf: &'a [u8],
        mut f: impl FnMut(Packet<'a>) -> bool,
    ) -> Result<usize, FrameError> {
        let mut consumed = 0;
        let mut rest = buf;
        while let Some((packet, used)) = decode(rest, self.max_packet_size)? {
            consumed += used;
            rest = rest.get(used..).unwrap_or_default();
            if !f(packet) {
                break;
            }
        }
        Ok(consumed)
    }
}

impl Default for FrameDecoder {
    /// A decoder with [`DEFAULT_MAX_PACKET_SIZE`].
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PACKET_SIZE)
    }
}

/// Checks that `payload` fits one packet and returns the packet's `size` field.
pub(crate) fn packet_size(payload_len: usize) -> Result<u16, FrameError> {
    HEADER_LEN
        .checked_add(payload_len)
        .and_then(|size| u16::try_from(size).ok())
        .ok_or(FrameError::TooLarge { size: u16::MAX, max: MAX_PACKET_SIZE_LIMIT })
}

/// Appends one packet (header and payload) to `buf`.
///
/// Fails with [`FrameError::TooLarge`] (and writes nothing) if the packet would exceed
/// 65535 bytes. The receiver's own maximum may be lower; this only checks what the wire
/// format can carry.
///
/// # Panics
///
/// Only if `buf` cannot grow to hold the packet (a fixed-size `BufMut` such as
/// `&mut [u8]`); `BytesMut` and `Vec<u8>` grow.
///
/// ```
/// use servercore::packet::encode_into;
/// let mut out = Vec::new();
/// encode_into(&mut out, 0x0102, b"ab").unwrap();
/// assert_eq!(out, [6, 0, 2, 1, b'a', b'b']);
/// ```
pub fn encode_into(buf: &mut impl BufMut, id: u16, payload: &[u8]) -> Result<(), FrameError> {
    let size = packet_size(payload.len())?;
    buf.put_u16_le(size);
    buf.put_u16_le(id);
    buf.put_slice(payload);
    Ok(())
}

/// Encodes one packet into a new buffer: a convenience for clients and tests (servers
/// building many packets should use [`PacketWriter`](crate::packet::PacketWriter)).
///
/// ```
/// use servercore::packet::{decode, encode};
/// let wire = encode(9, b"ping").unwrap();
/// let (packet, _) = decode(&wire, 4096).unwrap().unwrap();
/// assert_eq!((packet.id, packet.payload), (9, &b"ping"[..]));
/// ```
pub fn encode(id: u16, payload: &[u8]) -> Result<Bytes, FrameError> {
    let size = packet_size(payload.len())?;
    let mut buf = BytesMut::with_capacity(usize::from(size));
    encode_into(&mut buf, id, payload)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_header_only() {
        assert_eq!(decode(&[4, 0, 3, 0, 9], 4096), Ok(Some((Packet { id: 3, payload: &[] }, 4))));
    }

    #[test]
    fn clamps_max() {
        assert_eq!(FrameDecoder::new(0).max_packet_size(), HEADER_LEN);
        assert_eq!(FrameDecoder::new(1 << 20).max_packet_size(), 65535);
        assert_eq!(FrameDecoder::default().max_packet_size(), 4096);
    }

    #[test]
    fn encode_too_large() {
        let payload = vec![0u8; MAX_PACKET_SIZE_LIMIT - HEADER_LEN + 1];
        let err = encode(1, &payload).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { size: u16::MAX, max: 65535 });
        assert_eq!(err.to_string(), "packet size above 65535 exceeds the maximum 65535");
        let mut out = Vec::new();
        assert!(encode_into(&mut out, 1, &payload).is_err());
        assert!(out.is_empty());
        assert_eq!(encode(1, &payload[1..]).unwrap().len(), 65535);
    }

    #[test]
    fn display() {
        assert_eq!(
            FrameError::TooSmall { size: 2 }.to_string(),
            "packet size 2 is below the 4-byte header"
        );
        assert_eq!(
            FrameError::TooLarge { size: 9000, max: 4096 }.to_string(),
            "packet size 9000 exceeds the maximum 4096"
        );
    }
}
