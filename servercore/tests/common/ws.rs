//! Shared helpers of the `ws_*` tests: RFC 6455 by hand on the client side (the upgrade
//! request, frames written byte by byte, masked or not, and a reader of the server's frames
//! that reports how the stream ended), the server's HTTP answer, and third-party
//! (tungstenite) clients over TCP and over the TLS helpers of `common::tls` (wss).
//!
//! Nothing here uses the library's own codec: what the server sends is checked against
//! the RFC as written here and as tungstenite reads it.

use super::tls::{pki, server_name};
use super::TIMEOUT;
use servercore::tls::rustls::{ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The key of every hand-made upgrade (RFC 6455 section 1.3's example).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A complete upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One frame as a client or server writes it: `mask` set for a client frame. The length
/// takes the shortest form (7 bits, 16, 64).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        v.push(mask_bit | len as u8);
    } else if len <= 0xffff {
        v.push(mask_bit | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(mask_bit | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            v.extend_from_slice(&m);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// The mask of the hand-made client frames.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame (masked, as the RFC asks).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some(MASK))
}

/// A whole binary message in one client frame.
pub fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(true, OP_BINARY, payload)
}

/// A client close frame with `code` and `reason` bytes (not necessarily UTF-8).
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    client_frame(true, OP_CLOSE, &p)
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's status code (`None`: no payload, or not a close frame).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// A close frame's reason text.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Parses the frame at the front of `buf`: the frame and its size, `None` if incomplete.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at + usize::try_from(len).ok()?;
    let mut payload = buf.get(at..end)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i & 3];
        }
    }
    Some((Frame { fin, opcode, masked, payload }, end))
}

/// How a raw stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEnd {
    /// FIN.
    Eof,
    /// RST.
    Reset,
    /// Another error.
    Error(io::ErrorKind),
}

/// Reads `s` until it ends; the raw bytes and how it ended. A read timeout (the safety
/// net) panics.
pub fn read_until_end<S: Read>(s: &mut S) -> (Vec<u8>, WireEnd) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, WireEnd::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("no end of stream within {TIMEOUT:?} ({} bytes read)", out.len())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (out, WireEnd::Reset),
            Err(e) => return (out, WireEnd::Error(e.kind())),
        }
    }
}

/// Every whole frame in `bytes`; panics on a partial frame at the end (naming it).
pub fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some((f, n)) = parse_frame(&bytes[at..]) else {
            panic!("a partial frame at byte {at} of {}: {:?}", bytes.len(), &bytes[at..]);
        };
        frames.push(f);
        at += n;
    }
    frames
}

/// The HTTP status of a response head at the front of `bytes`.
pub fn http_status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The length of the HTTP head at the front of `bytes` (through its blank line), if it
/// is all there.
pub fn head_len(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A client stream speaking WebSocket by hand: what it read beyond the frames taken so
/// far waits in `pending`.
pub struct RawWs<S: Read + Write> {
    pub stream: S,
    pub pending: Vec<u8>,
}

impl<S: Read + Write> RawWs<S> {
    /// Sends the upgrade request and checks the `101` answer (its accept key computed by
    /// tungstenite).
    pub fn upgrade(mut stream: S) -> Self {
        stream.write_all(upgrade_request("/").as_bytes()).expect("writing the upgrade request");
        stream.flush().unwrap();
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        let head = loop {
            if let Some(n) = head_len(&pending) {
                break n;
            }
            let n = match stream.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r.expect("reading the upgrade answer"),
            };
            assert!(n > 0, "the server closed during the upgrade: {pending:?}");
            pending.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8_lossy(&pending[..head]).into_owned();
        assert_eq!(http_status(&pending), Some(101), "the upgrade answer: {text}");
        let accept = tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        assert!(
            text.contains(&format!("Sec-WebSocket-Accept: {accept}\r\n")),
            "the accept key {accept} in: {text}"
        );
        pending.drain(..head);
        RawWs { stream, pending }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("writing frames");
        self.stream.flush().expect("flushing frames");
    }

    /// The next frame from the server. A read timeout (the safety net) panics.
    pub fn read_frame(&mut self) -> io::Result<Frame> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some((f, n)) = parse_frame(&self.pending) {
                self.pending.drain(..n);
                return Ok(f);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    panic!("no frame within {TIMEOUT:?}")
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a binary message and reads the echo back (as one or more binary messages).
    pub fn roundtrip(&mut self, msg: &[u8]) {
        self.send(&binary(msg));
        let mut back = Vec::new();
        while back.len() < msg.len() {
            let f = self.read_frame().expect("reading the echo");
            assert_eq!((f.opcode, f.fin, f.masked), (OP_BINARY, true, false), "{f:?}");
            back.extend_from_slice(&f.payload);
        }
        assert!(back == msg, "the echo differs from what was sent");
    }

    /// Reads until the stream ends: the frames (the bytes after the last whole frame must
    /// be none) and how it ended.
    pub fn read_to_end(&mut self) -> (Vec<Frame>, WireEnd) {
        let (rest, end) = read_until_end(&mut self.stream);
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(&rest);
        (frames_of(&bytes), end)
    }
}

/// A client socket whose reads and writes are retried when a blocking call returns EINTR
/// (`Interrupted`). A read with a timeout (`SO_RCVTIMEO`, the `TIMEOUT` safety net) is
/// not restarted by the kernel after an interruption, and tungstenite and rustls hand the
/// error up rather than retry: std's `read_exact` retries, these clients retry here.
#[derive(Debug)]
pub struct Retry<S>(pub S);

impl<S: Read> Read for Retry<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl<S: Write> Write for Retry<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<S> std::ops::Deref for Retry<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

/// A TCP connection to `addr` (`common::connect`), reads and writes retried on EINTR.
pub fn tcp(addr: SocketAddr) -> Retry<TcpStream> {
    Retry(super::connect(addr))
}

/// A stream a test client talks through: TCP or TLS.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A client stream to `addr`: TCP, or TLS with the handshake done.
pub fn client_stream(addr: SocketAddr, tls: bool) -> Box<dyn Stream> {
    if tls {
        Box::new(tls_stream(addr))
    } else {
        Box::new(tcp(addr))
    }
}

/// A third-party WebSocket client (tungstenite) over TCP or TLS, upgraded.
pub fn ws_client(addr: SocketAddr, tls: bool) -> tungstenite::WebSocket<Box<dyn Stream>> {
    let scheme = if tls { "wss" } else { "ws" };
    tungstenite::client::client(
        format!("{scheme}://localhost:{}/", addr.port()),
        client_stream(addr, tls),
    )
    .map(|(ws, _)| ws)
    .unwrap_or_else(|e| panic!("{scheme} upgrade with {addr}: {e}"))
}

/// A blocking TLS client stream over [`tcp`].
pub type TlsStream = StreamOwned<ClientConnection, Retry<TcpStream>>;

/// A TLS connection to `addr` with the handshake done.
pub fn tls_stream(addr: SocketAddr) -> TlsStream {
    let conn = ClientConnection::new(pki().client.clone(), server_name()).expect("a connection");
    let mut s = StreamOwned::new(conn, tcp(addr));
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            panic!("TLS handshake with {addr}: {e}");
        }
    }
    s
}

/// A third-party WebSocket client (tungstenite) over plain TCP, upgraded.
pub fn ws_connect(addr: SocketAddr) -> tungstenite::WebSocket<Retry<TcpStream>> {
    tungstenite::client::client(format!("ws://{addr}/"), tcp(addr))
        .map(|(ws, _)| ws)
        .unwrap_or_else(|e| panic!("ws upgrade with {addr}: {e}"))
}

/// The next binary message a tungstenite client reads (pings and pongs skipped).
pub fn next_binary<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) -> Vec<u8> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => return b.to_vec(),
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
            Ok(m) => panic!("expected a binary message, got {m:?}"),
            // A blocking read with a timeout may see EINTR; tungstenite leaves it to us.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading a binary message: {e}"),
        }
    }
}

/// Sends `msg` as one binary message and reads the echo back.
pub fn ws_roundtrip<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, msg: &[u8]) {
    let mut r = ws.send(tungstenite::Message::Binary(msg.to_vec().into()));
    while let Err(tungstenite::Error::Io(e)) = &r {
        if e.kind() != io::ErrorKind::Interrupted {
            break;
        }
        r = ws.flush(); // the message is queued: what is left is writing it
    }
    r.expect("sending a message");
    let mut back = Vec::new();
    while back.len() < msg.len() {
        back.extend(next_binary(ws));
    }
    assert!(back == msg, "the echo of {} bytes differs from what was sent", msg.len());
}
