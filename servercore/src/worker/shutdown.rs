//! A graceful stop: stop accepting, flush and close every session, then end.

use super::*;

impl<S: Session> Worker<S> {
    pub(super) fn live_keys(&self) -> Vec<u64> {
        self.slots.iter().filter_map(|s| s.conn.as_ref().map(|c| c.core.key)).collect()
    }

    pub(super) fn begin_shutdown(&mut self, deadline: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(deadline);
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if let Some(t) = l.rearm.take() {
                self.local.timers.cancel(t);
            }
            match l.op {
                Some(op) => self.driver.cancel(op),
                None if !l.closed => {
                    l.closed = true;
                    self.driver.close(l.sock);
                }
                None => {}
            }
        }
        for key in self.live_keys() {
            let Some(conn) = self.conn(key) else { continue };
            if conn.core.state == Phase::Connecting {
                conn.core.state = Phase::Closing;
                if let Some(op) = conn.core.connect_op() {
                    self.driver.cancel(op);
                }
            } else if conn.core.state == Phase::Closing {
                // Already closing (flushing, or waiting for the peer to take the kernel's
                // queue): the shutdown deadline is its deadline too.
                let d = conn.core.close_deadline().map_or(deadline, |d| d.min(deadline));
                conn.core.rare().close_deadline = Some(d);
            } else {
                self.close(key, DisconnectReason::Shutdown);
            }
        }
        self.local.timers.add(deadline, TimerAction::ShutdownDeadline);
    }

    /// Leaving with sessions unfinished (their operations did not complete within the
    /// grace period): their sockets are made abortive, so that the driver's teardown
    /// resets them rather than leave queued bytes in the kernel.
    pub(super) fn abandon_leftovers(&mut self) {
        for slot in &self.slots {
            if let Some(conn) = &slot.conn {
                self.driver.make_abortive(conn.core.sock);
            }
        }
    }
}
