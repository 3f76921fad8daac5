//! A session's transport layers between the socket and the session: TLS ([`crate::tls`]),
//! WebSocket ([`crate::ws`]), or both (wss: WebSocket inside TLS). No I/O: the worker hands
//! it received bytes and takes the bytes it has to write (`out`).
//!
//! Byte counts: the worker's `queued` holds the plaintext waiting in the session's queue
//! plus the bytes waiting in `out`, so the send-queue limit bounds both.

use crate::reason::{DisconnectReason, TlsError, WsError};
use crate::timer::TimerId;
use crate::tls::{RecvFailure, TlsLayer, TlsSetup};
use crate::ws::{WsLayer, WsSetup};
use bytes::Bytes;
use std::collections::VecDeque;

/// Most plaintext taken from the queue for one write: bounds what a session holds beyond
/// its queue (ciphertext, frame headers).
const BATCH_BYTES: usize = 256 << 10;

/// What [`Transport::receive`] brought.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Got {
    /// Every handshake is done now (with these bytes): the session is open.
    pub(crate) established: bool,
    /// The TLS handshake finished with these bytes (a WebSocket upgrade may follow).
    pub(crate) tls_done: bool,
    /// The peer ended the stream in order (TLS `close_notify`, or a WebSocket close frame
    /// whose reason is [`Transport::peer_close_reason`]).
    pub(crate) peer_closed: bool,
    /// A plain HTTP request got its answer (a page): close once it is out.
    pub(crate) answered: bool,
}

/// One session's layers and the bytes they have to write, in order.
pub(crate) struct Transport {
    /// Boxed: rustls' connection is over 1 KiB, which a WebSocket-only session should not
    /// carry.
    tls: Option<Box<TlsLayer>>,
    ws: Option<WsLayer>,
    /// Bytes for the socket, in order (records, frames, handshake answers).
    pub(crate) out: VecDeque<Bytes>,
    /// The handshake deadline.
    pub(crate) timer: Option<TimerId>,
    /// WebSocket output waiting for TLS (a wss client's upgrade request waits for the TLS
    /// handshake).
    ws_out: Vec<Bytes>,
    /// Bytes put in `out` and written, since the start, and per data batch where its bytes
    /// end and how much plaintext they carry: `on_send` reports plaintext.
    enqueued: u64,
    written: u64,
    marks: VecDeque<(u64, usize)>,
    /// The peer's WebSocket close frame arrived (the orderly end, over TLS too); its
    /// status, when it was not a normal one.
    ws_closed: bool,
    ws_close: Option<WsError>,
    /// The status of this side's WebSocket close when it ends gracefully (1000; 1001 for
    /// a shutdown).
    pub(crate) close_status: (u16, &'static str),
}

impl Transport {
    /// The layers of a new connection; their first output (a client's hello or upgrade
    /// request) is in `out`. `seed` feeds the WebSocket client's masks.
    pub(crate) fn new(
        tls: Option<&TlsSetup>,
        ws: Option<&WsSetup>,
        seed: u64,
    ) -> Result<Self, DisconnectReason> {
        let tls = tls
            .map(|setup| TlsLayer::new(setup).map(Box::new))
            .transpose()
            .map_err(DisconnectReason::Tls)?;
        let mut t = Transport {
            tls,
            ws: None,
            out: VecDeque::new(),
            timer: None,
            ws_out: Vec::new(),
            enqueued: 0,
            written: 0,
            marks: VecDeque::new(),
            ws_closed: false,
            ws_close: None,
            close_status: (1000, ""),
        };
        t.ws = ws.map(|setup| WsLayer::new(setup, seed, &mut t.ws_out));
        if let Some(tls) = &mut t.tls {
            t.enqueued += tls.take_output(&mut t.out) as u64;
        }
        t.flush_ws_out();
        Ok(t)
    }

    /// Bytes waiting in `out` (what `queued` counts of this layer).
    pub(crate) fn pending(&self) -> u64 {
        self.enqueued - self.written
    }

    /// A handshake (TLS, or the WebSocket upgrade) is still running.
    pub(crate) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
            || self.ws.as_ref().is_some_and(WsLayer::is_upgrading)
    }

    /// The TLS handshake is still running.
    pub(crate) fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Which handshake a deadline interrupts.
    pub(crate) fn timeout_reason(&self) -> DisconnectReason {
        if self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            DisconnectReason::Tls(TlsError::HandshakeTimeout)
        } else {
            DisconnectReason::WebSocket(WsError::HandshakeTimeout)
        }
    }

    pub(crate) fn is_websocket(&self) -> bool {
        self.ws.is_some()
    }

    fn can_send(&self) -> bool {
        self.tls.as_ref().map_or(true, |t| t.can_send())
            && self.ws.as_ref().map_or(true, WsLayer::can_send)
    }

    /// Moves WebSocket output to `out`, through TLS when there is TLS (once it can send).
    fn flush_ws_out(&mut self) -> usize {
        if self.ws_out.is_empty() {
            return 0;
        }
        let n = match &mut self.tls {
            Some(tls) if tls.can_send() => tls.encrypt(&self.ws_out, &mut self.out),
            Some(_) => return 0,
            None => {
                let n = self.ws_out.iter().map(Bytes::len).sum();
                self.out.extend(self.ws_out.iter().cloned());
                n
            }
        };
        self.ws_out.clear();
        self.enqueued += n as u64;
        n
    }

    /// Feeds received bytes: the session's plaintext is appended to `rbuf` (at most
    /// `limit` bytes in all), answers go to `out`; `scratch` carries TLS plaintext to the
    /// WebSocket layer. Returns what happened and how many bytes `out` grew by.
    pub(crate) fn receive(
        &mut self,
        data: &[u8],
        rbuf: &mut Vec<u8>,
        limit: usize,
        scratch: &mut Vec<u8>,
    ) -> (Result<Got, DisconnectReason>, usize) {
        let before = (self.handshaking(), self.tls.as_ref().is_some_and(|t| t.is_handshaking()));
        let start = self.enqueued;
        let r = self.receive_inner(data, rbuf, limit, scratch);
        // Whatever happened, the answers go out (an alert, a close frame, an HTTP error).
        if let Some(tls) = &mut self.tls {
            self.enqueued += tls.take_output(&mut self.out) as u64;
        }
        self.flush_ws_out();
        let r = r.map(|mut got| {
            got.established = before.0 && !self.handshaking();
            got.tls_done = before.1 && !self.tls.as_ref().is_some_and(|t| t.is_handshaking());
            got
        });
        (r, (self.enqueued - start) as usize)
    }

    fn receive_inner(
        &mut self,
        data: &[u8],
        rbuf: &mut Vec<u8>,
        limit: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<Got, DisconnectReason> {
        let mut got = Got::default();
        let plain: &[u8] = match &mut self.tls {
            Some(tls) => {
                let target = if self.ws.is_some() {
                    scratch.clear();
                    &mut *scratch
                } else {
                    &mut *rbuf
                };
                let r = tls.receive(data, target, limit).map_err(|e| match e {
                    RecvFailure::Full => DisconnectReason::RecvBufferFull { limit },
                    RecvFailure::Tls(e) => DisconnectReason::Tls(e),
                })?;
                if r.handshake_done {
                    // A wss client's upgrade request was waiting for this.
                    self.flush_ws_out();
                }
                got.peer_closed = r.peer_closed;
                if self.ws.is_none() {
                    return Ok(got);
                }
                scratch
            }
            None => data,
        };
        if let Some(ws) = &mut self.ws {
            let r = ws
                .receive(plain, rbuf, limit, &mut self.ws_out)
                .map_err(DisconnectReason::WebSocket)?;
            got.answered = r.answered;
            if let Some((code, reason)) = r.peer_closed {
                got.peer_closed = true;
                self.ws_closed = true;
                if let Some(code) = code.filter(|c| !matches!(c, 1000 | 1001)) {
                    self.ws_close = Some(WsError::PeerClosed { code, reason });
                }
            }
        }
        Ok(got)
    }

    /// The reason for the peer's end: a WebSocket close with an unusual status, a TLS
    /// stream cut without `close_notify`, or an orderly close.
    pub(crate) fn peer_close_reason(&self) -> DisconnectReason {
        if let Some(e) = &self.ws_close {
            return DisconnectReason::WebSocket(e.clone());
        }
        if self.ws_closed {
            return DisconnectReason::PeerClosed;
        }
        match &self.tls {
            Some(tls) if !tls.peer_closed() => DisconnectReason::Tls(TlsError::Truncated),
            _ => DisconnectReason::PeerClosed,
        }
    }

    /// Makes the next bytes to write ready, if `out` is empty: the front of `queue` (up to
    /// `max_bufs` buffers or 256 KiB) framed and encrypted, in as few frames and records as
    /// that takes. Plaintext that can no longer go (a layer failed or closed, or a close
    /// before the handshake) is dropped. `end`: the session closes gracefully and may end
    /// its stream once everything is out (a WebSocket close with `close_status`, then
    /// `close_notify`). Returns the new value of `queued`.
    pub(crate) fn pump(
        &mut self,
        queue: &mut VecDeque<Bytes>,
        mut queued: usize,
        may_send: bool,
        max_bufs: usize,
        end: bool,
    ) -> usize {
        if !self.out.is_empty() {
            return queued; // one batch at a time: the rest is made when it may go
        }
        if !queue.is_empty() && self.can_send() && may_send {
            let (mut take, mut plain) = (0, 0);
            while take < queue.len() && take < max_bufs && plain < BATCH_BYTES {
                plain += queue[take].len();
                take += 1;
            }
            let batch = &queue.make_contiguous()[..take];
            let start = self.enqueued;
            match &mut self.ws {
                Some(ws) => {
                    ws.frame_message(batch, &mut self.ws_out);
                    self.flush_ws_out();
                }
                None => {
                    let tls = self.tls.as_mut().expect("a transport has a layer");
                    self.enqueued += tls.encrypt(batch, &mut self.out) as u64;
                }
            }
            queue.drain(..take);
            self.marks.push_back((self.enqueued, plain));
            queued = queued.saturating_sub(plain) + (self.enqueued - start) as usize;
        } else if !queue.is_empty() && !self.can_send() && (!self.handshaking() || end) {
            let plain: usize = queue.iter().map(Bytes::len).sum();
            queue.clear();
            queued = queued.saturating_sub(plain);
        }
        if end && self.out.is_empty() && queue.is_empty() {
            let start = self.enqueued;
            if let Some(ws) = &mut self.ws {
                let (code, why) = self.close_status;
                ws.close(code, why, &mut self.ws_out);
                self.flush_ws_out();
            }
            if let Some(tls) = &mut self.tls {
                self.enqueued += tls.close_notify(&mut self.out) as u64;
            }
            queued += (self.enqueued - start) as usize;
        }
        queued
    }

    /// After `n` bytes of `out` were written: the plaintext bytes whose every byte is now
    /// written (what `on_send` reports).
    pub(crate) fn written(&mut self, n: usize) -> usize {
        self.written += n as u64;
        let mut plain = 0;
        while let Some(&(end, p)) = self.marks.front() {
            if end > self.written {
                break;
            }
            plain += p;
            self.marks.pop_front();
        }
        plain
    }

    /// Drops what waits to be written (a flush given up).
    pub(crate) fn clear(&mut self) {
        let dropped: usize = self.out.iter().map(Bytes::len).sum();
        self.out.clear();
        self.written += dropped as u64;
        self.marks.clear();
    }
}
