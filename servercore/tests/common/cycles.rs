//! What the `*_cycles` tests share: a session that echoes and counts its lifecycle, the
//! run's sizes, and how to read the process' fds and RSS.

use super::open_fd_count;
use servercore::{Ctx, DisconnectReason, Session};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const CYCLES: usize = 2_000;
pub const THREADS: usize = 4;
pub const WARM_UP: usize = 100;
pub const RSS_SLACK: usize = 16 * 1024 * 1024;
pub const WORKERS: usize = 2;

/// The tests of this binary one at a time (fd count and RSS are process-wide).
pub static EXCLUSIVE: Mutex<()> = Mutex::new(());

#[derive(Default)]
pub struct Counters {
    pub connected: AtomicUsize,
    pub disconnected: AtomicUsize,
    pub reasons: Mutex<HashMap<&'static str, usize>>,
    pub double_disconnects: AtomicUsize,
    pub flooded: AtomicUsize,
}

/// Bytes a session queues on "flood" (the shutdown test).
pub const FLOOD: usize = 200 * 1024;

/// Echoes; "?" asks which worker serves it; "flood" queues `FLOOD` bytes; "bye" is
/// answered and disconnected. Counts its lifecycle.
pub struct Cycle {
    pub counters: Arc<Counters>,
    pub done: bool,
}

impl Session for Cycle {
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
        self.counters.connected.fetch_add(1, Ordering::SeqCst);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if data == b"?" {
            let _ = ctx.send(vec![ctx.worker_index() as u8]);
        } else if data == b"flood" {
            for i in 0..FLOOD / 1024 {
                let _ = ctx.send(vec![i as u8; 1024]);
            }
            self.counters.flooded.fetch_add(1, Ordering::SeqCst);
        } else if data == b"bye" {
            let _ = ctx.send(&b"bye"[..]);
            ctx.disconnect("bye");
        } else {
            let _ = ctx.send(data.to_vec());
        }
        data.len()
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if std::mem::replace(&mut self.done, true) {
            self.counters.double_disconnects.fetch_add(1, Ordering::SeqCst);
        }
        self.counters.disconnected.fetch_add(1, Ordering::SeqCst);
        *self.counters.reasons.lock().unwrap().entry(reason.label()).or_default() += 1;
    }
}

pub fn fds() -> usize {
    open_fd_count().expect("open_fd_count is known on Linux")
}

pub fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// The cycles' indices: a warm-up, then `THREADS` interleaved runs.
pub fn cycle_indices() -> impl Iterator<Item = usize> {
    (0..WARM_UP).chain((0..THREADS).flat_map(|t| (0..CYCLES / THREADS).map(move |i| t + i)))
}

/// How many cycles end in way `ending` of `endings`.
pub fn cycles_ending(ending: usize, endings: usize) -> usize {
    cycle_indices().filter(|i| i % endings == ending).count()
}
