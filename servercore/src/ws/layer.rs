//! One session's WebSocket state: the upgrade, then frames in and out. No I/O: the worker
//! passes it bytes (plaintext, after TLS if any) and takes what it has to send.

use super::frame::{self, Control, Decoder, MAX_HEADER, OP_BINARY, OP_CLOSE, OP_PONG};
use super::handshake::{self, Request};
use super::{WsError, WsSetup};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the upgrade request (server) or response (client).
    Upgrading,
    Open,
    /// No more data either way: a close frame was sent or received, or the layer failed.
    Closed,
}

/// What a call to [`WsLayer::receive`] brought.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WsReceived {
    /// The upgrade finished with these bytes.
    pub(crate) handshake_done: bool,
    /// The peer's close frame arrived (its status code, if it gave one, and reason); the
    /// answering close frame is in the output.
    pub(crate) peer_closed: Option<(Option<u16>, String)>,
    /// A plain HTTP request was answered (a page); the connection should close once that
    /// answer is out.
    pub(crate) answered: bool,
}

/// A session's WebSocket connection.
pub(crate) struct WsLayer {
    setup: WsSetup,
    state: State,
    /// The upgrade head received so far.
    head: Vec<u8>,
    /// Client side: the `Sec-WebSocket-Accept` the server must answer with.
    accept: String,
    decoder: Decoder,
    controls: Vec<Control>,
    /// Client side: the masking keys' source (xorshift: masks need not be secret here,
    /// only unpredictable to the page's script, which this side does not run).
    rng: u64,
}

impl WsLayer {
    /// A server side waits for the request; a client side's request is pushed to `out`.
    pub(crate) fn new(setup: &WsSetup, seed: u64, out: &mut Vec<Bytes>) -> Self {
        let cfg = Arc::clone(&setup.config);
        let mut layer = WsLayer {
            setup: setup.clone(),
            state: State::Upgrading,
            head: Vec::new(),
            accept: String::new(),
            decoder: Decoder::new(setup.server, cfg.max_message),
            controls: Vec::new(),
            rng: seed | 1,
        };
        if !setup.server {
            let nonce = [layer.next_u64().to_le_bytes(), layer.next_u64().to_le_bytes()].concat();
            let (req, accept) = handshake::client_request(
                &cfg.host,
                &cfg.path,
                nonce.try_into().expect("16 bytes"),
            );
            layer.accept = accept;
            out.push(Bytes::from(req));
        }
        layer
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    pub(crate) fn is_upgrading(&self) -> bool {
        self.state == State::Upgrading
    }

    /// Whether messages can be sent now.
    pub(crate) fn can_send(&self) -> bool {
        self.state == State::Open
    }

    /// Feeds received bytes; message bytes are appended to `plain` (up to `limit` bytes in
    /// all: beyond, the message-size error), and what the layer has to send (the upgrade
    /// answer, pongs, close frames, HTTP errors) is pushed to `out`.
    pub(crate) fn receive(
        &mut self,
        input: &[u8],
        plain: &mut Vec<u8>,
        limit: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<WsReceived, WsError> {
        let mut got = WsReceived::default();
        let owned: Vec<u8>;
        let mut data = input;
        if self.state == State::Upgrading {
            self.head.extend_from_slice(data);
            let cfg = &self.setup.config;
            if self.setup.server {
                match handshake::server_read(&self.head, cfg.max_request_head, &cfg.pages) {
                    Request::Partial => return Ok(got),
                    Request::Upgrade { response, used } => {
                        out.push(Bytes::from(response));
                        owned = self.head.split_off(used);
                    }
                    Request::Refuse { response, error } => {
                        out.push(Bytes::from(response));
                        self.state = State::Closed;
                        return match error {
                            Some(e) => Err(e),
                            None => {
                                got.answered = true;
                                Ok(got)
                            }
                        };
                    }
                }
            } else {
                match handshake::client_read(&self.head, cfg.max_request_head, &self.accept) {
                    Ok(None) => return Ok(got),
                    Ok(Some(used)) => owned = self.head.split_off(used),
                    Err(e) => {
                        self.state = State::Closed;
                        return Err(e);
                    }
                }
            }
            self.head = Vec::new();
            self.state = State::Open;
            got.handshake_done = true;
            data = &owned;
        }
        if self.state != State::Open {
            return if data.is_empty() { Ok(got) } else { Err(WsError::DataAfterClose) };
        }
        let result = self.decoder.feed(data, plain, &mut self.controls);
        if let Err(e) = result {
            self.fail(&e, out);
            return Err(e);
        }
        if plain.len() > limit {
            let e = WsError::MessageTooBig { limit };
            self.fail(&e, out);
            return Err(e);
        }
        // Several pings in one read get one pong, the last one's (RFC 6455 5.5.3 allows
        // it): a ping flood cannot make more answers than reads.
        let last_ping = self.controls.iter().rposition(|c| matches!(c, Control::Ping(_)));
        for (i, c) in std::mem::take(&mut self.controls).into_iter().enumerate() {
            match c {
                Control::Ping(payload) => {
                    if self.state == State::Open && Some(i) == last_ping {
                        out.push(self.control_frame(OP_PONG, &payload));
                    }
                }
                Control::Pong => {}
                Control::Close(code, reason) => {
                    // Answer with the same status (RFC 6455 5.5.1), then nothing more.
                    let payload = code.map(|c| frame::close_payload(c, "")).unwrap_or_default();
                    out.push(self.control_frame(OP_CLOSE, &payload));
                    self.state = State::Closed;
                    got.peer_closed = Some((code, reason));
                }
            }
        }
        Ok(got)
    }

    /// After a protocol error: the close frame with its status code, and no more.
    fn fail(&mut self, e: &WsError, out: &mut Vec<Bytes>) {
        if let (Some(code), State::Open) = (e.close_code(), self.state) {
            out.push(self.control_frame(OP_CLOSE, &frame::close_payload(code, &e.to_string())));
        }
        self.state = State::Closed;
    }

    /// Our close frame (once; only while open): `code` 1000 for a local disconnect, 1001
    /// for a shutdown.
    pub(crate) fn close(&mut self, code: u16, reason: &str, out: &mut Vec<Bytes>) {
        if self.state == State::Open {
            out.push(self.control_frame(OP_CLOSE, &frame::close_payload(code, reason)));
            self.state = State::Closed;
        }
    }

    fn control_frame(&mut self, opcode: u8, payload: &[u8]) -> Bytes {
        debug_assert!(payload.len() <= frame::MAX_CONTROL);
        self.frame_bytes(opcode, &[payload])
    }

    /// One frame holding `parts` in order, as one buffer (masked on the client side).
    fn frame_bytes(&mut self, opcode: u8, parts: &[&[u8]]) -> Bytes {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mask = (!self.setup.server).then(|| (self.next_u64() as u32).to_le_bytes());
        let mut h = [0u8; MAX_HEADER];
        let n = frame::encode_header(&mut h, true, opcode, len, mask);
        let mut v = Vec::with_capacity(n + len);
        v.extend_from_slice(&h[..n]);
        for p in parts {
            v.extend_from_slice(p);
        }
        if let Some(m) = mask {
            frame::apply_mask(&mut v[n..], m, 0);
        }
        Bytes::from(v)
    }

    /// Frames `bufs` as one binary message into `out`. Server side: a header in front of
    /// the same buffers (no copy, so shared room buffers stay shared); client side: one
    /// masked copy (the RFC makes a client mask every frame).
    pub(crate) fn frame_message(&mut self, bufs: &[Bytes], out: &mut Vec<Bytes>) {
        debug_assert!(self.can_send());
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return;
        }
        if self.setup.server {
            out.push(server_header(len));
            out.extend(bufs.iter().cloned());
        } else {
            let parts: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
            let f = self.frame_bytes(OP_BINARY, &parts);
            out.push(f);
        }
    }
}

thread_local! {
    /// The last server header made on this thread: a room batch fanned out to many
    /// members has the same length for each, so they share one header buffer too.
    static LAST_HEADER: std::cell::RefCell<(usize, Bytes)> =
        const { std::cell::RefCell::new((usize::MAX, Bytes::new())) };
}

/// The header of an unmasked binary message of `len` bytes.
fn server_header(len: usize) -> Bytes {
    LAST_HEADER.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != len {
            let mut h = [0u8; MAX_HEADER];
            let n = frame::encode_header(&mut h, true, OP_BINARY, len, None);
            *last = (len, Bytes::copy_from_slice(&h[..n]));
        }
        last.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::super::WsConfig;
    use super::*;

    fn pair() -> (WsLayer, WsLayer, Vec<Bytes>) {
        let config = Arc::new(WsConfig::default());
        let mut out = Vec::new();
        let server = WsLayer::new(&WsSetup { config: config.clone(), server: true }, 1, &mut out);
        assert!(out.is_empty());
        let client = WsLayer::new(&WsSetup { config, server: false }, 2, &mut out);
        (server, client, out)
    }

    fn join(out: &mut Vec<Bytes>) -> Vec<u8> {
        out.drain(..).flat_map(|b| b.to_vec()).collect()
    }

    fn open() -> (WsLayer, WsLayer) {
        let (mut server, mut client, mut out) = pair();
        let req = join(&mut out);
        let mut plain = Vec::new();
        let got = server.receive(&req, &mut plain, 1 << 20, &mut out).unwrap();
        assert!(got.handshake_done);
        let resp = join(&mut out);
        let got = client.receive(&resp, &mut plain, 1 << 20, &mut out).unwrap();
        assert!(got.handshake_done && out.is_empty() && plain.is_empty());
        (server, client)
    }

    #[test]
    fn messages_both_ways_and_a_shared_payload() {
        let (mut server, mut client) = open();
        let payload = Bytes::from(vec![5u8; 300]);
        let mut out = Vec::new();
        server.frame_message(&[payload.clone(), Bytes::from_static(b"xy")], &mut out);
        assert_eq!(out.len(), 3, "a header, then the same buffers");
        assert_eq!(out[1].as_ptr(), payload.as_ptr(), "no copy of the payload");
        let mut again = Vec::new();
        server.frame_message(&[payload.clone(), Bytes::from_static(b"xy")], &mut again);
        assert_eq!(again[0].as_ptr(), out[0].as_ptr(), "members share the header too");
        let bytes = join(&mut out);
        let mut plain = Vec::new();
        client.receive(&bytes, &mut plain, 1 << 20, &mut out).unwrap();
        assert_eq!(plain.len(), 302);
        client.frame_message(&[Bytes::from_static(b"hello")], &mut out);
        let bytes = join(&mut out);
        assert_ne!(&bytes[bytes.len() - 5..], b"hello", "masked on the wire");
        let mut plain = Vec::new();
        server.receive(&bytes, &mut plain, 1 << 20, &mut out).unwrap();
        assert_eq!(plain, b"hello");
    }

    #[test]
    fn ping_is_answered_and_close_is_echoed() {
        let (mut server, mut client) = open();
        let mut out = Vec::new();
        let ping = client.frame_bytes(frame::OP_PING, &[b"t1"]);
        let mut plain = Vec::new();
        server.receive(&ping, &mut plain, 1 << 20, &mut out).unwrap();
        let pong = join(&mut out);
        assert_eq!(pong, [0x8a, 0x02, b't', b'1']);
        client.close(1000, "bye", &mut out);
        let close = join(&mut out);
        let got = server.receive(&close, &mut plain, 1 << 20, &mut out).unwrap();
        assert_eq!(got.peer_closed, Some((Some(1000), "bye".into())));
        assert_eq!(join(&mut out), [0x88, 0x02, 0x03, 0xe8], "the same status back");
        assert!(!server.can_send());
    }

    #[test]
    fn pings_in_one_read_get_one_pong_the_last() {
        let (mut server, mut client) = open();
        let mut pings = Vec::new();
        for p in [&b"1"[..], b"2", b"3"] {
            pings.extend_from_slice(&client.frame_bytes(frame::OP_PING, &[p]));
        }
        let (mut out, mut plain) = (Vec::new(), Vec::new());
        server.receive(&pings, &mut plain, 1 << 20, &mut out).unwrap();
        assert_eq!(join(&mut out), [0x8a, 0x01, b'3']);
    }

    #[test]
    fn a_bad_frame_gets_its_close_code() {
        let (mut server, _) = open();
        let mut out = Vec::new();
        let mut plain = Vec::new();
        // An unmasked binary frame from a client.
        let r = server.receive(&[0x82, 0x01, b'x'], &mut plain, 1 << 20, &mut out);
        assert_eq!(r, Err(WsError::Unmasked));
        let close = join(&mut out);
        assert_eq!(&close[..4], &[0x88, close[1], 0x03, 0xea], "close 1002");
        // Nothing more is sent after it.
        server.close(1000, "", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_plain_get_gets_the_page_or_426() {
        let config = Arc::new(WsConfig::default().page("/", "text/html", &b"<b>page</b>"[..]));
        let mut out = Vec::new();
        let setup = WsSetup { config, server: true };
        let mut s = WsLayer::new(&setup, 1, &mut out);
        let mut plain = Vec::new();
        let got = s.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain, 1 << 20, &mut out);
        assert!(got.unwrap().answered);
        assert!(join(&mut out).ends_with(b"<b>page</b>"));
        let mut s = WsLayer::new(&setup, 1, &mut out);
        let got = s.receive(b"GET /x HTTP/1.1\r\n\r\n", &mut plain, 1 << 20, &mut out);
        assert_eq!(got, Err(WsError::NotAnUpgrade(426)));
    }
}
