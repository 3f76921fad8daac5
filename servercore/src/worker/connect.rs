//! Outgoing sessions (client services): connect, connect timeout, reconnect with backoff.

use super::*;

impl<S: Session> Worker<S> {
    /// Client services with a reconnect policy: one more connect after a backoff.
    pub(super) fn schedule_reconnect(&mut self) {
        let Some(policy) = self.shared.reconnect else { return };
        if self.shutdown.is_some() || self.connect_to.is_none() {
            return;
        }
        // xorshift32 for the jitter: no need for a real random source.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        let delay = policy.delay(self.reconnect_failures, x);
        self.reconnect_failures = self.reconnect_failures.saturating_add(1);
        self.local.timers.add(Instant::now() + delay, TimerAction::Reconnect);
    }

    pub(super) fn start_connect(&mut self) {
        let Some(addr) = self.connect_to else { return };
        if self.shutdown.is_some() {
            return;
        }
        let Some(mut user) = self.make_user() else {
            self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let nodelay = self.shared.config.nodelay;
        let sock = sys::stream_socket_for(addr)
            .and_then(|s| {
                s.set_tcp_nodelay(nodelay)?;
                Ok(TcpStream::from(s))
            })
            .and_then(|s| self.driver.add_stream(s));
        let sock = match sock {
            Ok(sock) => sock,
            Err(e) => {
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                let _ = panic::catch_unwind(AssertUnwindSafe(|| user.on_connect_failed(addr, &e)));
                self.schedule_reconnect();
                return;
            }
        };
        self.shared.sessions.fetch_add(1, Ordering::AcqRel);
        let key = self.install(user, addr, sock, Phase::Connecting);
        let op = self.driver.connect(sock, key, addr);
        let at = Instant::now() + self.shared.config.connect_timeout;
        let timer = self.local.timers.add(at, TimerAction::ConnectTimeout(key));
        let core = &mut self.conn(key).expect("just installed").core;
        core.in_flight = 1;
        let rare = core.rare();
        rare.connect_op = Some(op);
        rare.timer = Some(timer);
    }

    pub(super) fn on_connect(&mut self, key: u64, result: io::Result<()>) {
        let Some(conn) = self.conn(key) else { return };
        let core = &mut conn.core;
        core.in_flight -= 1;
        let rare = core.rare();
        rare.connect_op = None;
        let timer = rare.timer.take();
        let connect_error = rare.connect_error.take();
        if rare.close_request.is_none() && rare.close_deadline.is_none() {
            core.rare = None; // an open session holds none of it
        }
        let result = match (result, connect_error, core.state) {
            (_, Some(e), _) => Err(e),
            (Ok(()), None, Phase::Connecting) => Ok(()),
            (Ok(()), None, _) => Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "service shut down while connecting",
            )),
            (Err(e), None, _) => Err(e),
        };
        if let Some(t) = timer {
            self.local.timers.cancel(t);
        }
        match result {
            Ok(()) => {
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
                self.reconnect_failures = 0;
                let conn = self.conn(key).expect("checked above");
                conn.core.state = Phase::Open;
                conn.core.set_alive(true);
                let websocket = self.shared.ws.is_some();
                self.open_session(key, websocket);
            }
            Err(e) => {
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                let conn = self.conn(key).expect("checked above");
                let addr = conn.core.peer.get();
                let user = &mut conn.user;
                if let Err(p) =
                    panic::catch_unwind(AssertUnwindSafe(|| user.on_connect_failed(addr, &e)))
                {
                    tracing::error!("on_connect_failed panicked: {}", panic_message(&*p));
                }
                conn.core.state = Phase::Closing;
                self.try_finalize(key);
                self.schedule_reconnect();
            }
        }
    }
}
