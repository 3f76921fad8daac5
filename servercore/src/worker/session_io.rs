//! A session's life on its worker: receive, send, the close sequence, and freeing the slot.

use super::*;
use crate::reason::TlsError;

impl<S: Session> Worker<S> {
    /// A new connection: the transport's handshakes first (TLS, WebSocket), or at once
    /// [`Self::connected`]. `websocket`: it speaks WebSocket.
    pub(super) fn open_session(&mut self, key: u64, websocket: bool) {
        if !self.start_transport(key, websocket) {
            self.connected(key);
        }
    }

    /// `on_connected`, then the first receive.
    pub(super) fn connected(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        conn.core.last_recv = local.now;
        if let Some(idle) = local.config.idle_timeout {
            local.timers.add(local.now + idle, TimerAction::Idle(key));
        }
        call(conn, local, |s, ctx| s.on_connected(ctx));
        self.arm_recv(key);
    }

    /// Arms the standing receive of an open session (not while paused).
    pub(super) fn arm_recv(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let core = &mut conn.core;
        if !core.receives() || core.recv_op.is_some() || core.recv_paused || core.peer_eof {
            return;
        }
        core.recv_op = Some(self.driver.recv(core.sock, key));
        core.recv_cancelled = false;
        core.in_flight += 1;
    }

    pub(super) fn on_recv(&mut self, key: u64, result: io::Result<Option<RecvLease>>, armed: bool) {
        let local = &mut self.local;
        let driver = &mut self.driver;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            if let Ok(Some(lease)) = result {
                driver.release(lease);
            }
            return;
        };
        if !armed {
            conn.core.in_flight -= 1;
            conn.core.recv_op = None;
        }
        let lease = match result {
            Ok(Some(lease)) => lease,
            Ok(None) if conn.core.recv_paused && conn.core.receives() => {
                // The end of stream raced the pause's cancel: kept for `resume_recv`.
                conn.core.peer_eof = true;
                return;
            }
            Ok(None) => {
                let reason = transport_io::eof_reason(&conn.core);
                local.request_close(&mut conn.core, reason);
                self.try_finalize(key);
                return;
            }
            Err(e) => {
                // The receive cancelled for a pause is no error; should the session have
                // resumed before this completion came, it receives again now.
                let cancelled = conn.core.recv_cancelled && e.raw_os_error() == Some(ECANCELED);
                if cancelled && !conn.core.recv_paused {
                    self.resume_recv(key); // kept bytes first, then a new receive
                } else if conn.core.receives() && !cancelled {
                    local.request_close(&mut conn.core, DisconnectReason::from_io(&e));
                }
                self.try_finalize(key);
                return;
            }
        };
        if !conn.core.receives() {
            driver.release(lease);
            self.try_finalize(key);
            return;
        }
        if conn.core.transport.is_some() {
            self.on_transport_recv(key, lease, armed);
            return;
        }
        local.metrics.bytes_in += u64::from(lease.len);
        conn.core.last_recv = local.now;
        let data = driver.lease(&lease);
        let limit = local.config.max_recv_buffer;
        if conn.core.rbuf.len() + data.len() > limit {
            driver.release(lease);
            local.request_close(&mut conn.core, DisconnectReason::RecvBufferFull { limit });
            return;
        }
        if conn.core.recv_paused {
            // Arrived before the pause took effect: kept for `resume_recv`.
            conn.core.rbuf.extend_from_slice(data);
        } else if conn.core.rbuf.is_empty() {
            // The common case: the user reads straight from the driver's buffer, and only
            // what it leaves unconsumed is copied out.
            if let Some(n) = call(conn, local, |s, ctx| s.on_recv(ctx, data)) {
                conn.core.rbuf.extend_from_slice(&data[n.min(data.len())..]);
            }
        } else {
            let mut pending = std::mem::take(&mut conn.core.rbuf);
            pending.extend_from_slice(data);
            if let Some(n) = call(conn, local, |s, ctx| s.on_recv(ctx, &pending)) {
                pending.drain(..n.min(pending.len()));
            }
            conn.core.rbuf = pending;
        }
        driver.release(lease);
        let rbuf = &mut conn.core.rbuf;
        if rbuf.is_empty() && rbuf.capacity() > local.config.recv_buffer_size {
            *rbuf = Vec::new(); // an idle session holds no receive memory
        }
        if !armed {
            self.arm_recv(key);
        }
    }

    /// After `resume_recv`: presents bytes kept during the pause, then receives again.
    pub(super) fn resume_recv(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        if !conn.core.receives() || conn.core.recv_paused {
            return;
        }
        if conn.core.recv_op.is_none() {
            self.present_rbuf(key);
        }
        self.arm_recv(key);
    }

    /// Presents the bytes the session holds unconsumed (kept during a pause, decrypted by
    /// TLS) to an open, unpaused session; after the peer's end of stream, closes.
    pub(super) fn present_rbuf(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        if !conn.core.is_open() || conn.core.recv_paused {
            return;
        }
        if !conn.core.rbuf.is_empty() {
            let mut pending = std::mem::take(&mut conn.core.rbuf);
            if let Some(n) = call(conn, local, |s, ctx| s.on_recv(ctx, &pending)) {
                pending.drain(..n.min(pending.len()));
            }
            if pending.is_empty() && pending.capacity() > local.config.recv_buffer_size {
                pending = Vec::new(); // an idle session holds no receive memory
            }
            conn.core.rbuf = pending;
        }
        // (Paused again inside that `on_recv`: the close waits for the next resume.)
        if conn.core.peer_eof && conn.core.is_open() && !conn.core.recv_paused {
            let reason = transport_io::eof_reason(&conn.core);
            local.request_close(&mut conn.core, reason);
        }
    }

    /// Starts the gather write of a session's queue if none is in flight.
    pub(super) fn start_send(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        let may_send = matches!(core.state, Phase::Open | Phase::Handshaking) || core.flushing;
        if !may_send || core.send_op.is_some() {
            return;
        }
        if core.transport.is_some() {
            self.start_transport_send(key);
            return;
        }
        if core.queue.is_empty() {
            return;
        }
        // The queue itself goes to the driver (no copy per buffer); new sends go into a
        // spare of the worker's (`push_queued`). Past one gather write's limit, the rest
        // stays queued.
        let mut batch = std::mem::take(&mut core.queue);
        if batch.len() > MAX_IOVECS {
            core.queue = batch.split_off(MAX_IOVECS);
        }
        core.send_op = Some(self.driver.send(core.sock, key, batch));
        core.in_flight += 1;
    }

    pub(super) fn on_send(&mut self, key: u64, result: io::Result<usize>, mut bufs: SendBatch) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        core.in_flight -= 1;
        core.send_op = None;
        match result {
            Ok(n) => {
                local.metrics.bytes_out += n as u64;
                // Saturating: an abandoned flush zeroes the count while a send is in flight.
                core.set_queued(core.queued.saturating_sub(n));
                // Drop what went out; a short write's rest goes back in front, in order.
                let mut left = n;
                while let Some(front) = bufs.front_mut() {
                    if left < front.len() {
                        front.advance(left);
                        break;
                    }
                    left -= front.len();
                    bufs.pop_front();
                }
                let mut reported = n;
                if let Some(t) = core.transport.as_mut() {
                    // Bytes not written yet go back in front of the next ones.
                    reported = t.written(n);
                    if !bufs.is_empty() {
                        bufs.append(&mut t.out);
                        t.out = bufs;
                    }
                    if core.state == Phase::Closing && core.flushing {
                        transport_io::pump(core); // the rest of the queue, then the end
                    }
                    let t = core.transport.as_ref().expect("checked above");
                    if !t.out.is_empty() || !core.queue.is_empty() {
                        local.mark_dirty(core);
                    }
                } else if bufs.is_empty() {
                    local.recycle_queue(bufs);
                } else {
                    bufs.append(&mut core.queue);
                    let emptied = std::mem::replace(&mut core.queue, bufs);
                    local.recycle_queue(emptied);
                }
                if !core.queue.is_empty() {
                    local.mark_dirty(core);
                }
                if core.is_open() {
                    if reported > 0 || core.transport.is_none() {
                        call(conn, local, |s, ctx| s.on_send(ctx, reported));
                    }
                    check_writable(conn, local);
                } else {
                    self.try_finalize(key);
                }
            }
            Err(e) => {
                // Those bytes will not go: they leave the count (and the Notify mirror).
                let lost: usize = bufs.iter().map(|b| b.len()).sum();
                core.set_queued(core.queued.saturating_sub(lost));
                drop(bufs);
                if core.state == Phase::Closing {
                    self.stop_flushing(key);
                } else {
                    local.request_close(core, DisconnectReason::from_io(&e));
                }
            }
        }
    }

    /// Carries out disconnect requests and starts sends for every session touched this
    /// turn.
    pub(super) fn flush_dirty(&mut self) {
        self.replay_room_work();
        while !self.local.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.local.dirty);
            for &key in &dirty {
                let Some(conn) = conn_of(&mut self.slots, key) else { continue };
                conn.core.dirty = false;
                // Only an open session hears of a full queue: nothing follows
                // `on_disconnected` (invariant 5), and a session whose close is pending is
                // about to get it.
                if conn.core.notify_full && conn.core.is_open() {
                    conn.core.notify_full = false;
                    call(conn, &mut self.local, |s, ctx| s.on_send_queue_full(ctx));
                    // Already drained (e.g. the refused send was a handle's): writable now.
                    if conn.core.send_op.is_none() {
                        check_writable(conn, &mut self.local);
                    }
                }
                let Some(conn) = conn_of(&mut self.slots, key) else { continue };
                if let Some(reason) = conn.core.take_close_request() {
                    self.close(key, reason);
                } else if conn.core.recv_paused {
                    // Paused: stop the standing receive (its completion is not an error).
                    if let (Some(op), false) = (conn.core.recv_op, conn.core.recv_cancelled) {
                        conn.core.recv_cancelled = true;
                        self.driver.cancel(op);
                    }
                } else if conn.core.recv_op.is_none() {
                    self.resume_recv(key);
                }
                self.start_send(key);
            }
            // Closing may have queued more (sends or room work from on_disconnected).
            self.replay_room_work();
            let mut dirty = dirty;
            dirty.clear();
            if self.local.dirty.is_empty() {
                self.local.dirty = dirty;
            }
        }
    }

    /// Begins the close: `on_disconnected` once, cancel the receive, flush or drop the
    /// queue, then [`Self::try_finalize`].
    pub(super) fn close(&mut self, key: u64, reason: DisconnectReason) {
        let flush_timeout = self.local.config.close_flush_timeout;
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        let was = core.state;
        if was == Phase::Closing {
            return;
        }
        core.state = Phase::Closing;
        core.set_alive(false);
        core.graceful = matches!(reason, DisconnectReason::Local(_) | DisconnectReason::Shutdown);
        let lost = !core.graceful && self.connect_to.is_some();
        if was == Phase::Open {
            tracing::debug!("{} disconnected: {reason}", core.id);
            self.shared.count_disconnect(&reason);
            local.metrics.disconnect(&reason);
            call(conn, local, |s, ctx| s.on_disconnected(ctx, &reason));
        } else if was == Phase::Handshaking {
            // Never connected, so no callback: counted and logged only.
            tracing::debug!("{} handshake ended: {reason}", core.id);
            if let Some(t) = core.transport.as_ref() {
                if t.tls_handshaking() {
                    self.shared.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                } else if !matches!(reason, DisconnectReason::Local(_)) {
                    self.shared.ws_upgrade_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            local.metrics.disconnect(&reason);
        }
        let core = &mut conn.core;
        if let Some(t) = core.transport.as_mut() {
            let answers = matches!(
                reason,
                DisconnectReason::Tls(TlsError::Protocol(_))
                    | DisconnectReason::WebSocket(_)
                    | DisconnectReason::Local(_)
                    | DisconnectReason::PeerClosed
            );
            if answers && (!t.out.is_empty() || reason == DisconnectReason::PeerClosed) {
                // A layer refused the peer's bytes (or answered an HTTP request): its answer
                // (a TLS alert, a close frame with its status, an HTTP response) is sent,
                // and the close is orderly so that it arrives. A peer that ended its stream
                // in order gets this side's end too (`close_notify`: RFC 8446 6.1).
                core.graceful = true;
            }
            if reason == DisconnectReason::Shutdown {
                t.close_status = (1001, "going away");
            }
        }
        if core.graceful && core.transport.is_some() {
            // The rest of the queue is framed and encrypted as it goes; the end follows it.
            transport_io::pump(core);
        }
        core.take_close_request();
        core.notify_full = false;
        // Bytes accepted and not yet written are dropped unless the close flushes them: the
        // peer is reset then, and always when the server gives up on it (the reason says).
        let unsent = core.queued > 0 || core.send_op.is_some();
        core.abort = !core.graceful && (reason.is_abortive() || unsent);
        local.leave_rooms_on_close(core);
        core.flushing = core.graceful && (core.queued > 0 || core.send_op.is_some());
        for op in [core.recv_op, core.connect_op()].into_iter().flatten() {
            self.driver.cancel(op);
        }
        let deadline = match self.shutdown {
            Some(d) => d.min(Instant::now() + flush_timeout),
            None => Instant::now() + flush_timeout,
        };
        core.rare().close_deadline = Some(deadline);
        core.rare().close_label = reason.label();
        if core.flushing {
            if let Some(t) = core.take_timer() {
                local.timers.cancel(t);
            }
            core.rare().timer = Some(local.timers.add(deadline, TimerAction::FlushDeadline(key)));
            local.mark_dirty(core);
        } else {
            self.stop_flushing(key);
        }
        self.try_finalize(key);
        if lost && matches!(was, Phase::Open | Phase::Handshaking) {
            self.schedule_reconnect();
        }
    }

    /// Gives up on queued data (error or deadline): drop the queue, cancel the send.
    pub(super) fn stop_flushing(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        if core.state != Phase::Closing {
            return;
        }
        core.flushing = false;
        if core.queued > 0 || core.send_op.is_some() {
            // A flush given up (deadline or error): those bytes will never go, and the
            // kernel must not keep what it holds for this peer either.
            tracing::debug!("{}: abandoning {} queued bytes; resetting", core.id, core.queued);
            core.abort = true;
        }
        core.queue.clear();
        if let Some(t) = core.transport.as_mut() {
            t.clear();
        }
        core.set_queued(0);
        if let Some(op) = core.send_op {
            self.driver.cancel(op);
        }
        self.try_finalize(key);
    }

    /// Frees the slot once the session is closing, flushed, and has nothing in flight.
    pub(super) fn try_finalize(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        if core.state != Phase::Closing {
            return;
        }
        if core.flushing {
            if core.queued > 0 || core.send_op.is_some() {
                return;
            }
            core.flushing = false;
        }
        if core.in_flight > 0 {
            // Everything in flight was cancelled; its completions are on their way.
            return;
        }
        if !core.abort && lingers(core, &self.driver, &mut self.local) {
            return;
        }
        if let Some(t) = core.take_timer() {
            self.local.timers.cancel(t);
        }
        if let Some(t) = core.transport.as_mut().and_then(|t| t.timer.take()) {
            self.local.timers.cancel(t); // a handshake that never finished
        }
        if core.abort {
            self.driver.abort(core.sock);
            self.shared.aborted.fetch_add(1, Ordering::Relaxed);
            let label = core.rare.as_ref().map(|r| r.close_label).filter(|l| !l.is_empty());
            let label = label.unwrap_or("unknown");
            tracing::debug!("{} reset (closed with reason {label})", core.id);
            self.local.metrics.abort(label);
        } else {
            self.driver.close(core.sock);
        }
        if core.ip_counted {
            self.shared.release_ip(core.peer.get().ip());
        }
        let index = (key & 0xffff_ffff) as u32;
        let slot = &mut self.slots[index as usize];
        slot.conn = None;
        // Generations stay below bit 31 so a key never has the listener tag.
        slot.generation = if slot.generation >= 0x7fff_ffff { 1 } else { slot.generation + 1 };
        self.free.push(index);
        self.live -= 1;
        self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An orderly close waits until the peer has acknowledged what the kernel still holds for
/// it: a FIN now would leave those bytes (megabytes for a peer that does not read) in the
/// kernel for minutes. True while the session should wait (a `Linger` timer looks again);
/// past its deadline the bytes are abandoned and the close turns abortive.
fn lingers(core: &mut SessionState, driver: &Driver, local: &mut WorkerState) -> bool {
    let unsent = driver.unsent(core.sock);
    if unsent == 0 {
        return false;
    }
    let now = Instant::now();
    let key = core.key;
    match core.close_deadline() {
        Some(deadline) if now < deadline => {
            let rare = core.rare();
            if rare.linger_polls == 0 {
                if let Some(t) = rare.timer.take() {
                    local.timers.cancel(t); // the flush deadline: the flush is done
                }
            }
            if rare.timer.is_none() {
                // A peer that reads takes the bytes within a round trip; one that does not
                // is looked at less and less often (a kick storm of such peers must not
                // turn into a storm of system calls).
                let wait = LINGER_POLL.saturating_mul(1 << rare.linger_polls.min(5));
                rare.linger_polls = rare.linger_polls.saturating_add(1);
                let at = (now + wait.min(LINGER_POLL_MAX)).min(deadline);
                rare.timer = Some(local.timers.add(at, TimerAction::Linger(key)));
            }
            true
        }
        None => false, // never opened (a failed connect): nothing to wait for
        Some(_) => {
            tracing::debug!("{}: the peer did not take {unsent} bytes in time; resetting", core.id);
            core.abort = true;
            false
        }
    }
}
