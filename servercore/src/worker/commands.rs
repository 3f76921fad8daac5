//! The worker's inbox: messages from other threads and workers, taken in order.

use super::*;

impl<S: Session> Worker<S> {
    pub(super) fn drain_inbox(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if self.shutdown.is_none() {
                        self.begin_shutdown(Instant::now());
                    }
                    break;
                }
            }
        }
    }

    /// At exit: commands still in the inbox will never be taken; their reservations (the
    /// worker's inbox budget, a session's posted bytes) are given back, so that a room still
    /// bound to this worker does not see it as full.
    pub(super) fn release_unread_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Send { key, buf, .. } => {
                    let cost = buf.len() + INBOX_ENTRY;
                    self.local.remote.release(cost);
                    if let Some(f) = conn_of(&mut self.slots, key).and_then(|c| c.core.flags.get())
                    {
                        f.posted.fetch_sub(cost, Ordering::AcqRel);
                    }
                }
                Command::Broadcast(buf) | Command::RoomBroadcast { buf, .. } => {
                    self.local.remote.release(buf.len() + INBOX_ENTRY);
                }
                _ => {}
            }
        }
    }

    pub(super) fn command(&mut self, cmd: Command) {
        // Room work waiting in the log is carried out before a command that queues to
        // sessions or closes them, so that every session sees work in the order it reached
        // this worker (room work itself is logged, in order: see `session::fanout`).
        let touches_sessions = matches!(
            cmd,
            Command::Send { .. }
                | Command::Disconnect { .. }
                | Command::Broadcast(_)
                | Command::SessionJob { .. }
                | Command::Shutdown { .. }
        );
        if touches_sessions && self.local.fanout.pending() {
            self.replay_room_work();
        }
        match cmd {
            Command::Send { key, buf, admitted } => {
                let local = &mut self.local;
                let cost = buf.len() + INBOX_ENTRY;
                local.remote.release(cost);
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    if let Some(f) = conn.core.flags.get() {
                        f.posted.fetch_sub(cost, Ordering::AcqRel);
                    }
                    let _ = local.queue_send(&mut conn.core, buf, admitted);
                }
            }
            Command::Congested { key } => {
                let local = &mut self.local;
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    local.congest(&mut conn.core);
                }
            }
            Command::Disconnect { key, reason } => {
                let local = &mut self.local;
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    local.request_close(&mut conn.core, reason);
                }
            }
            Command::Broadcast(buf) => {
                let local = &mut self.local;
                local.remote.release(buf.len() + INBOX_ENTRY);
                for slot in &mut self.slots {
                    if let Some(conn) = &mut slot.conn {
                        if conn.core.is_open() {
                            let _ = local.queue_send(&mut conn.core, buf.clone(), false);
                        }
                    }
                }
            }
            Command::Connect { count } => {
                for _ in 0..count {
                    self.start_connect();
                }
            }
            Command::Adopt(stream, websocket) => self.open_accepted(stream, websocket),
            Command::Shutdown { deadline } => self.begin_shutdown(deadline),
            Command::Job(job) => run_job(job),
            Command::TimedJob { delay, period, cancelled, job } => {
                let at = Instant::now() + delay;
                self.local.timers.add(at, TimerAction::Job { period, cancelled, job });
            }
            Command::SessionJob { key, job } => {
                let local = &mut self.local;
                // Only the session layer posts these, always as a `SessionJob`.
                let Ok(job) = job.downcast::<SessionJob>() else { return };
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    if conn.core.is_open() {
                        call(conn, local, |s, ctx| job(s as &mut dyn Any, ctx));
                    }
                }
            }
            Command::RoomEnter { room, key } => self.local.fanout.posted_enter(room, key),
            Command::RoomLeave { room, key } => self.local.fanout.posted_leave(room, key),
            Command::RoomBroadcast { room, buf } => {
                self.local.remote.release(buf.len() + INBOX_ENTRY);
                self.local.fanout.posted_broadcast(room, buf);
            }
        }
    }
}

/// Runs a job posted to this worker; a panic in it is logged and the worker carries on.
fn run_job(job: Box<dyn FnOnce() + Send>) {
    if let Err(p) = panic::catch_unwind(AssertUnwindSafe(job)) {
        tracing::error!("a job panicked: {}", panic_message(&*p));
    }
}
