//! RFC 6455 frames: the header, masking, and the decoder of a peer's frame stream (section
//! 5), with every check the RFC asks of an endpoint. No I/O: bytes in, events out.

use super::WsError;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// The longest header: 2 bytes, 8 of extended length, 4 of mask.
pub(crate) const MAX_HEADER: usize = 14;
/// Control frames carry at most this many payload bytes (RFC 6455 5.5).
pub(crate) const MAX_CONTROL: usize = 125;

/// Writes the header of one frame into `out` and returns its length.
pub(crate) fn encode_header(
    out: &mut [u8; MAX_HEADER],
    fin: bool,
    opcode: u8,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= 0xffff {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    n
}

/// XORs `data` with `mask`, `offset` bytes into the masked payload.
pub(crate) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// A frame header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) len: u64,
    /// Bytes of the header itself.
    pub(crate) size: usize,
}

/// Parses a header from the front of `buf`: `Ok(None)` until all of it is there.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits); // no extension was negotiated
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let (len, mut size) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(WsError::BadLength);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if buf.len() < size + 4 {
            return Ok(None);
        }
        let m = [buf[size], buf[size + 1], buf[size + 2], buf[size + 3]];
        size += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header { fin, opcode, mask, len, size }))
}

/// What the decoder found in the peer's bytes, besides message data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Ping(Vec<u8>),
    Pong,
    /// The peer's close frame: its status code (none: 1005) and reason.
    Close(Option<u16>, String),
}

/// Decodes a peer's frames: binary message data goes to the caller's buffer (unmasked),
/// control frames come out as [`Control`]s, and anything the RFC forbids is an error that
/// names the close code to answer with.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Peer frames must be masked (the server side) or must not be (the client side).
    expect_masked: bool,
    max_message: usize,
    /// Header bytes collected so far (a header may arrive split).
    head: [u8; MAX_HEADER],
    head_len: usize,
    /// The frame whose payload is arriving, and how much of it is left.
    frame: Option<Header>,
    left: u64,
    offset: usize,
    /// A control frame's payload, collected.
    control: Vec<u8>,
    /// Inside a fragmented binary message: its bytes so far.
    in_message: bool,
    message_len: usize,
    closed: bool,
}

impl Decoder {
    pub(crate) fn new(expect_masked: bool, max_message: usize) -> Self {
        Decoder {
            expect_masked,
            max_message,
            head: [0; MAX_HEADER],
            head_len: 0,
            frame: None,
            left: 0,
            offset: 0,
            control: Vec::new(),
            in_message: false,
            message_len: 0,
            closed: false,
        }
    }

    /// Feeds `data`; message bytes are appended to `out`, control frames to `controls`.
    /// After the peer's close frame, any byte is an error.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        out: &mut Vec<u8>,
        controls: &mut Vec<Control>,
    ) -> Result<(), WsError> {
        while !data.is_empty() {
            if self.closed {
                return Err(WsError::DataAfterClose);
            }
            let Some(h) = self.frame else {
                // Collect the header (at most MAX_HEADER bytes).
                let take = (MAX_HEADER - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
                let have = self.head_len + take;
                match parse_header(&self.head[..have])? {
                    None => {
                        self.head_len = have;
                        data = &data[take..];
                        continue;
                    }
                    Some(h) => {
                        let used = h.size - self.head_len; // bytes of `data` in the header
                        data = &data[used..];
                        self.head_len = 0;
                        self.start_frame(h)?;
                        if h.len == 0 {
                            self.end_frame(controls)?;
                        }
                        continue;
                    }
                }
            };
            let n = (self.left.min(data.len() as u64)) as usize;
            let (chunk, rest) = data.split_at(n);
            data = rest;
            let target = if is_control(h.opcode) { &mut self.control } else { &mut *out };
            let start = target.len();
            target.extend_from_slice(chunk);
            if let Some(mask) = h.mask {
                apply_mask(&mut target[start..], mask, self.offset);
            }
            self.offset += n;
            self.left -= n as u64;
            if self.left == 0 {
                self.end_frame(controls)?;
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, h: Header) -> Result<(), WsError> {
        if h.mask.is_some() != self.expect_masked {
            return Err(if self.expect_masked { WsError::Unmasked } else { WsError::Masked });
        }
        match h.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if h.len > MAX_CONTROL as u64 {
                    return Err(WsError::ControlTooLong(h.len));
                }
                if !h.fin {
                    return Err(WsError::FragmentedControl);
                }
                self.control.clear();
            }
            OP_TEXT => return Err(WsError::TextFrame),
            OP_BINARY => {
                if self.in_message {
                    return Err(WsError::ExpectedContinuation);
                }
                self.in_message = !h.fin;
                self.message_len = 0;
            }
            OP_CONTINUATION => {
                if !self.in_message {
                    return Err(WsError::UnexpectedContinuation);
                }
                self.in_message = !h.fin;
            }
            op => return Err(WsError::UnknownOpcode(op)),
        }
        if !is_control(h.opcode) {
            let total = self.message_len as u64 + h.len;
            if total > self.max_message as u64 {
                return Err(WsError::MessageTooBig { limit: self.max_message });
            }
            self.message_len = total as usize;
        }
        self.frame = Some(h);
        self.left = h.len;
        self.offset = 0;
        Ok(())
    }

    fn end_frame(&mut self, controls: &mut Vec<Control>) -> Result<(), WsError> {
        let h = self.frame.take().expect("a frame was open");
        match h.opcode {
            OP_PING => controls.push(Control::Ping(std::mem::take(&mut self.control))),
            OP_PONG => controls.push(Control::Pong),
            OP_CLOSE => {
                let (code, reason) = parse_close(&self.control)?;
                self.closed = true;
                controls.push(Control::Close(code, reason));
            }
            _ => {}
        }
        Ok(())
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

/// A close frame's payload: nothing, or a valid status code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, String), WsError> {
    match payload.len() {
        0 => Ok((None, String::new())),
        1 => Err(WsError::BadClose("a 1-byte close payload".into())),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(WsError::BadClose(format!("status code {code} may not be sent")));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| WsError::InvalidUtf8)?.to_string();
            Ok((Some(code), reason))
        }
    }
}

/// Status codes a peer may put in a close frame (RFC 6455 7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's payload: the code and a reason cut to fit a control frame.
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// Decodes `stream` at once and in reads of varying size (from `seed`) and checks that
/// both agree: the same bytes, the same control frames, the same error, and never a panic.
/// Returns the message bytes, or the error.
pub fn check_stream(
    stream: &[u8],
    expect_masked: bool,
    max_message: usize,
    seed: u8,
) -> Result<Vec<u8>, WsError> {
    let run = |step_of: &mut dyn FnMut() -> usize| {
        let mut d = Decoder::new(expect_masked, max_message);
        let (mut out, mut controls) = (Vec::new(), Vec::new());
        let mut rest = stream;
        while !rest.is_empty() {
            let n = step_of().clamp(1, rest.len());
            let r = d.feed(&rest[..n], &mut out, &mut controls);
            rest = &rest[n..];
            if let Err(e) = r {
                return (out, controls, Err(e));
            }
        }
        (out, controls, Ok(()))
    };
    let whole = run(&mut || usize::MAX);
    let mut step = usize::from(seed) + 1;
    let split = run(&mut || {
        step = step * 7 % 251 + 1;
        step
    });
    assert_eq!(whole.2, split.2, "the same outcome whatever the reads");
    if whole.2.is_ok() {
        assert_eq!(whole.0, split.0);
        assert_eq!(whole.1, split.1);
    }
    whole.2.map(|()| whole.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(&mut h, fin, op, payload.len(), mask);
        let mut v = h[..n].to_vec();
        let start = v.len();
        v.extend_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(&mut v[start..], m, 0);
        }
        v
    }

    const M: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    fn decode(bytes: &[u8], masked: bool) -> Result<(Vec<u8>, Vec<Control>), WsError> {
        let mut d = Decoder::new(masked, 1 << 16);
        let (mut out, mut c) = (Vec::new(), Vec::new());
        d.feed(bytes, &mut out, &mut c)?;
        Ok((out, c))
    }

    #[test]
    fn rfc_examples() {
        // RFC 6455 5.7: a single-frame masked text message "Hello"; text is refused here,
        // so check the header and unmasking on the same bytes sent as binary.
        let masked_hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(decode(&masked_hello, true), Err(WsError::TextFrame));
        let mut bin = masked_hello;
        bin[0] = 0x82;
        assert_eq!(decode(&bin, true).unwrap().0, b"Hello");
        // Unmasked "Hello" from a server, and a fragmented one ("Hel" + "lo").
        let mut unmasked = [0x82, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(decode(&unmasked, false).unwrap().0, b"Hello");
        let frags = [0x02, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(decode(&frags, false).unwrap().0, b"Hello");
        // Unmasked ping "Hello" from the server side and its pong.
        unmasked[0] = 0x89;
        assert_eq!(decode(&unmasked, false).unwrap().1, vec![Control::Ping(b"Hello".to_vec())]);
        // 256 bytes and 64 KiB binary messages: 16- and 64-bit lengths.
        for len in [256usize, 65536] {
            let payload = vec![9u8; len];
            let f = frame(true, OP_BINARY, &payload, None);
            assert_eq!(&f[..2], if len == 256 { &[0x82, 0x7e][..] } else { &[0x82, 0x7f][..] });
            assert_eq!(decode(&f, false).unwrap().0, payload);
        }
    }

    #[test]
    fn every_split_of_a_stream_decodes_the_same() {
        let mut stream = frame(false, OP_BINARY, b"abc", M);
        stream.extend(frame(true, OP_PING, b"p", M));
        stream.extend(frame(true, OP_CONTINUATION, &[7u8; 300], M));
        stream.extend(frame(true, OP_PONG, b"", M));
        stream.extend(frame(true, OP_CLOSE, &close_payload(1000, "bye"), M));
        let want = decode(&stream, true).unwrap();
        assert_eq!(want.0.len(), 303);
        assert_eq!(
            want.1,
            vec![
                Control::Ping(b"p".to_vec()),
                Control::Pong,
                Control::Close(Some(1000), "bye".into())
            ]
        );
        for split in 1..stream.len() {
            let mut d = Decoder::new(true, 1 << 16);
            let (mut out, mut c) = (Vec::new(), Vec::new());
            for chunk in stream.chunks(split) {
                d.feed(chunk, &mut out, &mut c).unwrap();
            }
            assert_eq!((out, c), want, "chunks of {split}");
        }
    }

    #[test]
    fn bad_frames_are_refused_with_their_reason() {
        let cases: Vec<(Vec<u8>, WsError)> = vec![
            (frame(true, OP_BINARY, b"x", None), WsError::Unmasked),
            (frame(true, 0x3, b"x", M), WsError::UnknownOpcode(3)),
            (frame(true, 0xB, b"x", M), WsError::UnknownOpcode(0xB)),
            (frame(true, OP_PING, &[0; 126], M), WsError::ControlTooLong(126)),
            (frame(false, OP_PING, b"x", M), WsError::FragmentedControl),
            (frame(true, OP_TEXT, b"hi", M), WsError::TextFrame),
            (frame(true, OP_CONTINUATION, b"x", M), WsError::UnexpectedContinuation),
            (
                [frame(false, OP_BINARY, b"a", M), frame(true, OP_BINARY, b"b", M)].concat(),
                WsError::ExpectedContinuation,
            ),
            (frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff, 0xfe], M), WsError::InvalidUtf8),
            (frame(true, OP_CLOSE, &[0x03], M), WsError::BadClose("a 1-byte close payload".into())),
            (
                frame(true, OP_CLOSE, &1005u16.to_be_bytes(), M),
                WsError::BadClose("status code 1005 may not be sent".into()),
            ),
            (
                [frame(true, OP_CLOSE, b"", M), frame(true, OP_BINARY, b"late", M)].concat(),
                WsError::DataAfterClose,
            ),
            (vec![0xc2, 0x80, 0, 0, 0, 0], WsError::ReservedBits),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(&bytes, true).map(|_| ()), Err(want.clone()), "{want:?}");
        }
        // A server's frames must not be masked.
        assert_eq!(
            decode(&frame(true, OP_BINARY, b"x", M), false).map(|_| ()),
            Err(WsError::Masked)
        );
    }

    #[test]
    fn the_message_limit_counts_all_fragments() {
        let mut d = Decoder::new(true, 10);
        let (mut out, mut c) = (Vec::new(), Vec::new());
        d.feed(&frame(false, OP_BINARY, &[1; 6], M), &mut out, &mut c).unwrap();
        let r = d.feed(&frame(true, OP_CONTINUATION, &[1; 5], M), &mut out, &mut c);
        assert_eq!(r, Err(WsError::MessageTooBig { limit: 10 }));
        // Refused from the header alone: the payload never has to arrive.
        let mut d = Decoder::new(true, 10);
        let header = &frame(true, OP_BINARY, &[0; 11], M)[..6];
        assert_eq!(d.feed(header, &mut out, &mut c), Err(WsError::MessageTooBig { limit: 10 }));
    }

    proptest::proptest! {
        /// Random frame streams (well-formed frames of every kind, then a few bytes
        /// flipped): decoding at once and in pieces agrees, and never panics. (The fuzz
        /// target `ws_frames` does the same from arbitrary bytes.)
        #[test]
        fn any_stream_decodes_the_same_in_any_pieces(
            frames in proptest::collection::vec(
                (proptest::bool::ANY, 0u8..16, proptest::collection::vec(proptest::num::u8::ANY, 0..300), proptest::bool::ANY),
                0..8,
            ),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..3),
            seed in proptest::num::u8::ANY,
            max in 0usize..2000,
        ) {
            let mut stream = Vec::new();
            for (fin, op, payload, masked) in &frames {
                stream.extend(frame(*fin, *op, payload, masked.then_some([1, 2, 3, 4])));
            }
            if !stream.is_empty() {
                for (at, x) in flips {
                    let i = at % stream.len();
                    stream[i] ^= x;
                }
            }
            let _ = check_stream(&stream, true, max, seed);
            let _ = check_stream(&stream, false, max, seed);
        }
    }
}
