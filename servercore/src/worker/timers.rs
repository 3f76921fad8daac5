//! What a worker's due timers do.

use super::*;

impl<S: Session> Worker<S> {
    pub(super) fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some((id, action)) = self.local.timers.pop_due(now) {
            self.fire(id, action, now);
        }
    }

    /// Carries out one due timer.
    pub(super) fn fire(&mut self, id: TimerId, action: TimerAction, now: Instant) {
        match action {
            TimerAction::Session { key, token, period } => {
                let local = &mut self.local;
                let Some(conn) = conn_of(&mut self.slots, key) else { return };
                if !conn.core.is_open() {
                    return; // a session's timers die with it
                }
                if let Some(p) = period {
                    let next = TimerAction::Session { key, token, period };
                    local.timers.reschedule(id, now + p, next);
                }
                call(conn, local, |s, ctx| s.on_timer(ctx, token));
            }
            TimerAction::Idle(key) => {
                let local = &mut self.local;
                let Some(idle) = local.config.idle_timeout else { return };
                let Some(conn) = conn_of(&mut self.slots, key) else { return };
                if !conn.core.is_open() {
                    return;
                }
                let due = conn.core.last_recv + idle;
                if due <= now {
                    local.request_close(&mut conn.core, DisconnectReason::IdleTimeout);
                } else {
                    local.timers.reschedule(id, due, TimerAction::Idle(key));
                }
            }
            TimerAction::Handshake(key) => self.handshake_timeout(key),
            TimerAction::Reconnect => self.start_connect(),
            TimerAction::Job { period, cancelled, mut job } => {
                if cancelled.load(Ordering::Acquire) {
                    return;
                }
                let ok = panic::catch_unwind(AssertUnwindSafe(&mut job)).is_ok();
                if !ok {
                    tracing::error!("a timed job panicked; it will not run again");
                } else if let Some(p) = period {
                    let next = TimerAction::Job { period, cancelled, job };
                    self.local.timers.reschedule(id, now + p, next);
                }
            }
            TimerAction::ConnectTimeout(key) => {
                let timeout = self.shared.config.connect_timeout;
                if let Some(conn) = self.conn(key) {
                    let rare = conn.core.rare();
                    rare.timer = None;
                    if let Some(op) = rare.connect_op {
                        rare.connect_error = Some(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connect timed out after {timeout:?}"),
                        ));
                        self.driver.cancel(op);
                    }
                }
            }
            TimerAction::Linger(key) => {
                if let Some(conn) = self.conn(key) {
                    conn.core.take_timer();
                }
                self.try_finalize(key);
            }
            TimerAction::FlushDeadline(key) => {
                if let Some(conn) = self.conn(key) {
                    conn.core.take_timer();
                }
                self.stop_flushing(key);
            }
            TimerAction::RearmAccept(i) => {
                self.listeners[i].rearm = None;
                self.arm_accept(i);
            }
            TimerAction::ShutdownDeadline => {
                let keys: Vec<u64> = self.live_keys();
                for key in keys {
                    self.stop_flushing(key);
                }
            }
        }
    }
}
