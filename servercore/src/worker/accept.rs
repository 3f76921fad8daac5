//! Accepting: multishot accept per listener, the session cap, per-IP and rate limits,
//! and handing connections to other workers when one acceptor serves them all.

use super::*;

impl<S: Session> Worker<S> {
    pub(super) fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listeners[i];
        if self.shutdown.is_some() || l.op.is_some() || l.closed {
            return;
        }
        l.op = Some(self.driver.accept(l.sock, LISTENER_TAG | i as u64));
    }

    pub(super) fn on_accept(&mut self, i: usize, result: io::Result<TcpStream>, armed: bool) {
        if !armed {
            self.listeners[i].op = None;
        }
        match result {
            Ok(stream) => {
                self.accept_error_logged = false;
                let websocket = self.listeners[i].websocket;
                self.route_accepted(stream, websocket);
            }
            Err(e) => {
                if self.shutdown.is_none() && !armed {
                    if !self.accept_error_logged {
                        tracing::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                        self.accept_error_logged = true;
                    }
                    let at = Instant::now() + ACCEPT_BACKOFF;
                    self.listeners[i].rearm =
                        Some(self.local.timers.add(at, TimerAction::RearmAccept(i)));
                }
            }
        }
        let l = &mut self.listeners[i];
        if l.op.is_none() {
            if self.shutdown.is_some() {
                if !l.closed {
                    l.closed = true;
                    self.driver.close(l.sock);
                }
            } else if l.rearm.is_none() {
                self.arm_accept(i);
            }
        }
    }

    /// With one shared listener, spread accepted connections over the workers.
    /// `websocket`: the connection came in on the WebSocket listener.
    pub(super) fn route_accepted(&mut self, stream: TcpStream, websocket: bool) {
        if self.shared.single_acceptor {
            if let Some(workers) = self.shared.workers.get() {
                let target = self.next_adopt % workers.len();
                self.next_adopt = self.next_adopt.wrapping_add(1);
                if target != self.local.remote.index {
                    if workers[target].post(Command::Adopt(stream, websocket)).is_err() {
                        tracing::warn!("worker {target} has ended; dropped a connection");
                    }
                    return;
                }
            }
        }
        self.open_accepted(stream, websocket);
    }

    pub(super) fn open_accepted(&mut self, stream: TcpStream, websocket: bool) {
        if self.shutdown.is_some() {
            return;
        }
        let shared = self.shared.clone();
        if !self.take_accept_token() {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            return; // over the accept rate: dropping the stream closes it at once
        }
        if !shared.reserve_session() {
            return; // over the cap: closed at once, the cap is real
        }
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(e) => {
                // Typically the peer already reset the connection.
                tracing::debug!("dropping an accepted connection: {e}");
                shared.sessions.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        if !shared.reserve_ip(peer.ip()) {
            shared.sessions.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let release = |shared: &ServiceShared| {
            shared.sessions.fetch_sub(1, Ordering::AcqRel);
            if shared.per_ip_limit.is_some() {
                shared.release_ip(peer.ip());
            }
        };
        let Some(user) = self.make_user() else {
            release(&shared);
            return;
        };
        let setup = sys::configure_accepted(&stream, shared.config.nodelay)
            .and_then(|()| self.driver.add_stream(stream));
        let sock = match setup {
            Ok(sock) => sock,
            Err(e) => {
                tracing::debug!("dropping an accepted connection: {e}");
                release(&shared);
                return;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let key = self.install(user, peer, sock, Phase::Open);
        if let Some(conn) = self.conn(key) {
            conn.core.ip_counted = shared.per_ip_limit.is_some();
        }
        self.open_session(key, websocket);
    }

    /// Token bucket for the accept-rate limit (this worker's share of the service rate).
    pub(super) fn take_accept_token(&mut self) -> bool {
        let Some(rate) = self.shared.accept_rate else { return true };
        let workers = self.shared.workers.get().map_or(1, Vec::len).max(1) as f64;
        let per_worker = (f64::from(rate) / workers).max(1.0);
        let now = Instant::now();
        let elapsed = now.duration_since(self.accept_bucket.1).as_secs_f64();
        self.accept_bucket = ((self.accept_bucket.0 + elapsed * per_worker).min(per_worker), now);
        if self.accept_bucket.0 >= 1.0 {
            self.accept_bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }
}
