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
                if let Some(op) = conn.core.connect_op {
                    self.driver.cancel(op);
                }
            } else {
                self.close(key, DisconnectReason::Shutdown);
            }
        }
        self.local.timers.add(deadline, TimerAction::ShutdownDeadline);
    }
}
