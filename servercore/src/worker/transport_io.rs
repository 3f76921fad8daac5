//! The transport layers (TLS, WebSocket: [`crate::transport`]) in a session's life on its
//! worker: the handshakes and their deadline, received bytes through the layers, queued
//! plaintext framed and encrypted when the next write starts, and the end of the stream.

use super::*;
use crate::transport::Transport;

impl<S: Session> Worker<S> {
    /// A new connection of a service with TLS or WebSocket (`websocket`: it came in on the
    /// WebSocket listener, or the client service speaks it): the handshakes start, and no
    /// callback runs until they are done. False when the connection is plain TCP.
    pub(super) fn start_transport(&mut self, key: u64, websocket: bool) -> bool {
        let tls = self.shared.tls.as_ref();
        let ws = self.shared.ws.as_ref().filter(|_| websocket);
        if tls.is_none() && ws.is_none() {
            return false;
        }
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return true };
        let core = &mut conn.core;
        core.state = Phase::Handshaking;
        core.set_alive(false);
        let seed = key ^ (local.now.elapsed().as_nanos() as u64) ^ u64::from(self.rng);
        match Transport::new(tls, ws, seed) {
            Ok(mut t) => {
                let first = match (tls, ws) {
                    (Some(_), _) => local.config.tls_handshake_timeout,
                    (None, Some(ws)) => ws.config.handshake_timeout,
                    (None, None) => unreachable!("checked above"),
                };
                t.timer =
                    Some(local.timers.add(Instant::now() + first, TimerAction::Handshake(key)));
                let n = t.pending() as usize;
                core.transport = Some(Box::new(t));
                if n > 0 {
                    core.set_queued(core.queued + n);
                    local.mark_dirty(core);
                }
            }
            Err(reason) => local.request_close(core, reason),
        }
        self.arm_recv(key);
        true
    }

    /// Received bytes of a session with a transport: through its layers, answers queued,
    /// and the plaintext presented (after `on_connected` when these bytes finished the
    /// handshakes).
    pub(super) fn on_transport_recv(&mut self, key: u64, lease: RecvLease, armed: bool) {
        let local = &mut self.local;
        let driver = &mut self.driver;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            driver.release(lease);
            return;
        };
        local.metrics.bytes_in += u64::from(lease.len);
        let core = &mut conn.core;
        core.last_recv = local.now;
        let limit = local.config.max_recv_buffer;
        let t = core.transport.as_mut().expect("a session with a transport");
        let (result, n) = t.receive(driver.lease(&lease), &mut core.rbuf, limit, &mut self.scratch);
        let entries = t.out.len();
        driver.release(lease);
        if self.scratch.capacity() > 64 << 10 {
            self.scratch = Vec::new(); // a burst's plaintext is not kept
        }
        if n > 0 {
            core.set_queued(core.queued + n);
            local.mark_dirty(core);
            // What the layers answer (pongs, alerts) is bounded like the session's own
            // sends: a peer that pings and never reads must not grow its queue forever.
            let limit = local.send_limit;
            if core.queued > limit || entries > limit / MIN_COUNTED {
                local.request_close(core, DisconnectReason::SendQueueOverflow { limit });
                return;
            }
        }
        let got = match result {
            Ok(got) => got,
            Err(reason) => {
                local.request_close(core, reason);
                return;
            }
        };
        if got.answered {
            local.request_close(
                core,
                DisconnectReason::Local("answered a plain HTTP request".into()),
            );
            return;
        }
        if got.peer_closed {
            core.peer_eof = true; // nothing more will come
            if core.state == Phase::Handshaking {
                // (wss: `close_notify` during the WebSocket upgrade.) No session to tell.
                let reason = eof_reason(core);
                local.request_close(core, reason);
                return;
            }
        }
        if got.tls_done && !got.established {
            // TLS is done, the WebSocket upgrade follows with its own deadline.
            if let (Some(t), Some(ws)) = (core.transport.as_mut(), self.shared.ws.as_ref()) {
                if let Some(timer) = t.timer.take() {
                    local.timers.cancel(timer);
                }
                let at = Instant::now() + ws.config.handshake_timeout;
                t.timer = Some(local.timers.add(at, TimerAction::Handshake(key)));
            }
        }
        if got.established {
            self.established(key);
        }
        self.present_rbuf(key);
        if !armed {
            self.arm_recv(key);
        }
    }

    /// Every handshake is done: the session is open and hears `on_connected`.
    fn established(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let core = &mut conn.core;
        if core.state != Phase::Handshaking {
            return;
        }
        core.state = Phase::Open;
        core.set_alive(true);
        if let Some(t) = core.transport.as_mut() {
            if let Some(timer) = t.timer.take() {
                local.timers.cancel(timer);
            }
            if t.is_websocket() {
                self.shared.ws_upgrades.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.shared.tls.is_some() {
            self.shared.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        }
        self.connected(key);
    }

    /// The handshake deadline passed.
    pub(super) fn handshake_timeout(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let Some(t) = conn.core.transport.as_mut() else { return };
        t.timer = None;
        if conn.core.state == Phase::Handshaking {
            let reason = t.timeout_reason();
            local.request_close(&mut conn.core, reason);
        }
    }

    /// Starts the write of a session's next transport bytes, framing and encrypting queued
    /// plaintext first if none wait.
    pub(super) fn start_transport_send(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let core = &mut conn.core;
        pump(core);
        let Some(t) = core.transport.as_mut() else { return };
        if t.out.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut t.out);
        if batch.len() > MAX_IOVECS {
            t.out = batch.split_off(MAX_IOVECS);
        }
        core.send_op = Some(self.driver.send(core.sock, key, batch));
        core.in_flight += 1;
    }
}

/// The reason for the peer's end of stream (for a session with a transport: a TLS stream
/// cut without `close_notify` is truncated; a WebSocket close's status).
pub(super) fn eof_reason(core: &SessionState) -> DisconnectReason {
    core.transport.as_ref().map_or(DisconnectReason::PeerClosed, |t| t.peer_close_reason())
}

/// Makes sure a session's next transport bytes are ready (see [`Transport::pump`]); after
/// a graceful close has flushed everything, the stream's end (WebSocket close frame, TLS
/// `close_notify`) follows.
pub(super) fn pump(core: &mut SessionState) {
    let closing = core.state == Phase::Closing;
    let may_send = core.state == Phase::Open || (closing && core.flushing);
    let end = closing && core.graceful && core.logged_sends == 0;
    let Some(t) = core.transport.as_mut() else { return };
    // A frame header may join each batch: one entry less of the gather write.
    let queued = t.pump(&mut core.queue, core.queued, may_send, MAX_IOVECS - 1, end);
    core.set_queued(queued);
}
