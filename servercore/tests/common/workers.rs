//! Shared helpers of the tests of work on workers (rooms, jobs, timers): waiting on a
//! channel, the current worker's name, a session that ignores its input, and a job-timer
//! synchronisation point.

use super::TIMEOUT;
use servercore::{Ctx, JobQueue, Session};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// Receives one value; fails the test after `TIMEOUT`, naming what it waited for.
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// The current thread's name (worker threads are `sc-server-N` / `sc-client-N`).
pub fn thread_name() -> String {
    std::thread::current().name().unwrap_or("<unnamed>").to_string()
}

/// A session that ignores what it receives.
pub struct Nop;

impl Session for Nop {
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

/// Waits for one job of `service`'s worker `worker` to run after `delay`: the
/// synchronisation point after which a timer that should not fire has had its chance.
pub fn sync_after(service: &servercore::ServiceRef, worker: usize, delay: Duration) {
    let (tx, rx) = mpsc::channel();
    let q = JobQueue::new(service, worker, ());
    q.post_after(delay, move |_| {
        let _ = tx.send(());
    })
    .expect("worker running");
    recv(&rx, &format!("the sync timer of worker {worker}"));
}
