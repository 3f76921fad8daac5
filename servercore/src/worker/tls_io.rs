//! The TLS layer in a session's life on its worker: the handshake, decrypting what arrives,
//! encrypting what the session queued (one batch of records per send, however many messages
//! it holds), and `close_notify`. The layer itself ([`crate::tls`]) does no I/O.
//!
//! Byte counts: `queued` holds the plaintext waiting in the queue plus the ciphertext
//! waiting in `TlsSession::out`, so the send-queue limit bounds both.

use super::*;
use crate::reason::TlsError;
use crate::session::TlsSession;
use crate::tls::{RecvFailure, TlsLayer};

/// Most plaintext encrypted for one send: bounds the ciphertext a session holds at once
/// (beyond its queue, which the send-queue limit bounds).
const ENCRYPT_BATCH: usize = 256 << 10;

impl<S: Session> Worker<S> {
    /// A new connection of a TLS service: the handshake starts (a client's first flight is
    /// queued now). False for a plain service.
    pub(super) fn start_tls(&mut self, key: u64) -> bool {
        let Some(setup) = self.shared.tls.as_ref() else { return false };
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return true };
        let core = &mut conn.core;
        core.state = Phase::Handshaking;
        core.flags.alive.store(false, Ordering::Release);
        match TlsLayer::new(setup) {
            Ok(layer) => {
                let at = Instant::now() + local.config.tls_handshake_timeout;
                let timer = local.timers.add(at, TimerAction::TlsHandshake(key));
                let mut tls = Box::new(TlsSession::new(layer, timer));
                let n = tls.layer.take_output(&mut tls.out);
                tls.enqueued += n as u64;
                core.tls = Some(tls);
                if n > 0 {
                    core.set_queued(core.queued + n);
                    local.mark_dirty(core);
                }
            }
            Err(e) => local.request_close(core, DisconnectReason::Tls(e)),
        }
        self.arm_recv(key);
        true
    }

    /// Received ciphertext of a TLS session: decrypt, answer the handshake, and present
    /// the plaintext (after `on_connected` when these bytes finished the handshake).
    pub(super) fn on_tls_recv(&mut self, key: u64, lease: RecvLease, armed: bool) {
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
        let tls = core.tls.as_mut().expect("a TLS session");
        let result = tls.layer.receive(driver.lease(&lease), &mut core.rbuf, limit);
        driver.release(lease);
        // Handshake flights, alerts and key updates go out in order with the data.
        let n = tls.layer.take_output(&mut tls.out);
        tls.enqueued += n as u64;
        if n > 0 {
            core.set_queued(core.queued + n);
            local.mark_dirty(core);
        }
        let got = match result {
            Ok(got) => got,
            Err(RecvFailure::Full) => {
                local.request_close(core, DisconnectReason::RecvBufferFull { limit });
                return;
            }
            Err(RecvFailure::Tls(e)) => {
                local.request_close(core, DisconnectReason::Tls(e));
                return;
            }
        };
        if got.peer_closed {
            core.peer_eof = true; // nothing more will be decrypted
        }
        if got.handshake_done {
            self.tls_established(key);
        }
        self.present_rbuf(key);
        if !armed {
            self.arm_recv(key);
        }
    }

    /// The handshake is done: the session is open and hears `on_connected`.
    fn tls_established(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let core = &mut conn.core;
        if core.state != Phase::Handshaking {
            return;
        }
        core.state = Phase::Open;
        core.flags.alive.store(true, Ordering::Release);
        if let Some(t) = core.tls.as_mut().and_then(|tls| tls.timer.take()) {
            local.timers.cancel(t);
        }
        self.shared.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        self.connected(key);
    }

    /// The handshake deadline passed.
    pub(super) fn tls_handshake_timeout(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        if let Some(tls) = conn.core.tls.as_mut() {
            tls.timer = None;
        }
        if conn.core.state == Phase::Handshaking {
            let reason = DisconnectReason::Tls(TlsError::HandshakeTimeout);
            local.request_close(&mut conn.core, reason);
        }
    }

    /// Starts the write of a TLS session's next records, encrypting queued plaintext first
    /// if no records wait.
    pub(super) fn start_tls_send(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let core = &mut conn.core;
        pump(core);
        let Some(tls) = core.tls.as_mut() else { return };
        if tls.out.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut tls.out);
        core.send_op = Some(self.driver.send(core.sock, key, batch));
        core.in_flight += 1;
    }
}

/// The reason for the peer's end of stream: a TLS peer that did not send `close_notify`
/// first may have been cut off by someone else.
pub(super) fn eof_reason(core: &SessionState) -> DisconnectReason {
    match &core.tls {
        Some(tls) if !tls.layer.peer_closed() => DisconnectReason::Tls(TlsError::Truncated),
        _ => DisconnectReason::PeerClosed,
    }
}

/// Makes sure a TLS session's next records are ready (if any can be): encrypts the front
/// of the queue (up to `MAX_IOVECS` buffers or `ENCRYPT_BATCH` bytes, as few records as that
/// takes), drops plaintext that can no longer go (the layer failed or closed), and after a
/// graceful close has flushed everything, adds `close_notify`.
pub(super) fn pump(core: &mut SessionState) {
    let graceful_end = core.state == Phase::Closing && core.graceful;
    let may_encrypt = core.state == Phase::Open || (core.state == Phase::Closing && core.flushing);
    let Some(tls) = core.tls.as_mut() else { return };
    if !tls.out.is_empty() {
        return; // one batch at a time: the rest is encrypted when it may go
    }
    let mut queued = core.queued;
    if !core.queue.is_empty() && tls.layer.can_send() && may_encrypt {
        let (mut take, mut plain) = (0, 0);
        while take < core.queue.len() && take < MAX_IOVECS && plain < ENCRYPT_BATCH {
            plain += core.queue[take].len();
            take += 1;
        }
        let n = tls.layer.encrypt(&core.queue.make_contiguous()[..take], &mut tls.out);
        core.queue.drain(..take);
        tls.enqueued += n as u64;
        tls.marks.push_back((tls.enqueued, plain));
        queued = queued.saturating_sub(plain) + n;
    } else if !core.queue.is_empty()
        && !tls.layer.can_send()
        && (!tls.layer.is_handshaking() || core.state == Phase::Closing)
    {
        // The layer failed or closed, or closes before its handshake: these never go.
        let plain: usize = core.queue.iter().map(|b| b.len()).sum();
        core.queue.clear();
        queued = queued.saturating_sub(plain);
    }
    if graceful_end && tls.out.is_empty() && core.queue.is_empty() && core.logged_sends == 0 {
        let n = tls.layer.close_notify(&mut tls.out);
        tls.enqueued += n as u64;
        queued += n;
    }
    core.set_queued(queued);
}

/// After `n` ciphertext bytes went out: the plaintext bytes whose records are now all
/// written (what `on_send` reports).
pub(super) fn plaintext_written(tls: &mut TlsSession, n: usize) -> usize {
    tls.written += n as u64;
    let mut plain = 0;
    while let Some(&(end, p)) = tls.marks.front() {
        if end > tls.written {
            break;
        }
        plain += p;
        tls.marks.pop_front();
    }
    plain
}
