//! What the `*_cycles` tests share: a session that echoes and counts its lifecycle, the
//! run's sizes, and how to read the process' fds and RSS.

use super::{open_fd_count, wait_no_sessions, wait_until};
use servercore::{Ctx, DisconnectReason, ServerService, ServiceStats, Session};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The sizes of a cycles run: `warm_up` cycles first, then `cycles` spread over `threads`
/// client threads.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub warm_up: usize,
    pub cycles: usize,
    pub threads: usize,
}

/// The sizes of the TLS and WebSocket cycles tests.
pub const SIZES: Sizes = Sizes { warm_up: WARM_UP, cycles: CYCLES, threads: THREADS };

/// What [`run_cycles`] measured.
pub struct Run {
    /// Sentinels that `settle` connected, after the warm-up and after the cycles.
    pub sentinels: usize,
    /// How long the client threads' cycles took.
    pub took: Duration,
    pub rss_start: usize,
    pub rss_end: usize,
}

/// Runs the warm-up's cycles, settles (`settle` returns how many sentinels it connected),
/// waits for no session and takes the fd count and RSS; then runs the cycles in client
/// threads (thread `t` runs indices `t + i`), settles again, waits for no session and for
/// the fd count to be back exactly at its start, and takes the RSS again.
pub fn run_cycles<C>(
    server: &ServerService,
    sizes: Sizes,
    cycle: C,
    mut settle: impl FnMut() -> usize,
) -> Run
where
    C: Fn(usize) + Clone + Send + 'static,
{
    for i in 0..sizes.warm_up {
        cycle(i);
    }
    let mut sentinels = settle();
    wait_no_sessions(server);
    let fd_start = fds();
    let rss_start = rss();

    let started = Instant::now();
    let threads: Vec<_> = (0..sizes.threads)
        .map(|t| {
            let cycle = cycle.clone();
            std::thread::spawn(move || {
                for i in 0..sizes.cycles / sizes.threads {
                    cycle(t + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let took = started.elapsed();
    sentinels += settle();

    wait_no_sessions(server);
    wait_fds_back(fd_start);
    Run { sentinels, took, rss_start, rss_end: rss() }
}

/// Waits until the process' fd count is exactly `fd_start` again.
pub fn wait_fds_back(fd_start: usize) {
    wait_until("the fd count to return to its start", || {
        let now = fds();
        if now == fd_start {
            Ok(())
        } else {
            Err(format!("{now} open fds, started with {fd_start}"))
        }
    });
}

/// Waits until the server holds `sessions` sessions and `floods` of them queued their flood.
pub fn wait_sessions_and_floods(
    server: &ServerService,
    counters: &Counters,
    sessions: usize,
    floods: usize,
) {
    wait_until("every session open and every flood queued", || {
        let (n, flooded) = (server.session_count(), counters.flooded.load(Ordering::SeqCst));
        if n == sessions && flooded == floods {
            Ok(())
        } else {
            Err(format!("{n} sessions, {flooded} floods queued"))
        }
    });
}

/// The bytes a session queues on "flood", in order.
pub fn flood_bytes() -> Vec<u8> {
    (0..FLOOD / 1024).flat_map(|i| vec![i as u8; 1024]).collect()
}

impl Counters {
    /// Checks that no session is left, none got `on_disconnected` twice, every connected
    /// one got it once, and that the stats count the same disconnects; returns how many
    /// sessions connected.
    #[track_caller]
    pub fn assert_each_disconnected_once(&self, stats: &ServiceStats) -> usize {
        assert_eq!(stats.sessions, 0);
        let connected = self.connected.load(Ordering::SeqCst);
        let disconnected = self.disconnected.load(Ordering::SeqCst);
        assert_eq!(self.double_disconnects.load(Ordering::SeqCst), 0, "on_disconnected twice");
        assert_eq!(connected, disconnected, "every session got exactly one on_disconnected");
        assert_eq!(stats.disconnected as usize, disconnected, "{stats:?}");
        connected
    }

    /// The disconnect reasons counted so far.
    pub fn reasons(&self) -> HashMap<&'static str, usize> {
        self.reasons.lock().unwrap().clone()
    }
}

/// Checks that every reason counted is one of `allowed`.
#[track_caller]
pub fn assert_only_reasons(reasons: &HashMap<&'static str, usize>, allowed: &[&str]) {
    let unexpected: Vec<_> = reasons.iter().filter(|(l, _)| !allowed.contains(l)).collect();
    assert!(unexpected.is_empty(), "unexpected reasons: {unexpected:?}");
}

/// Checks that the RSS stayed within `RSS_SLACK` of its start over `cycles` cycles.
#[track_caller]
pub fn assert_rss_back(run: &Run, cycles: usize) {
    let (rss_start, rss_end) = (run.rss_start, run.rss_end);
    assert!(
        rss_end <= rss_start + RSS_SLACK,
        "RSS grew from {rss_start} B to {rss_end} B over {cycles} cycles (allowed +{RSS_SLACK} B)"
    );
}

/// Waits until the server has accepted every connection the clients made.
///
/// A connection that was closed or reset by its client may still wait in a listener's
/// accept queue when the client is done: the server then opens (and closes) its session
/// later. Each worker owns one listener (`SO_REUSEPORT`) whose queue is accepted in order,
/// and a session is opened right when it is accepted, so once a new connection has been
/// served by a worker, every earlier connection of that worker's listener has been
/// accepted. Sentinels (`sentinel` connects one and returns the index of the worker that
/// served it) are connected until every one of `workers` has served one; returns how many.
pub fn settle(workers: usize, mut sentinel: impl FnMut() -> usize) -> usize {
    let mut served = vec![false; workers];
    let mut sentinels = 0;
    while served.contains(&false) {
        sentinels += 1;
        assert!(sentinels <= 1000, "sentinels never reached every worker: {served:?}");
        served[sentinel()] = true;
    }
    sentinels
}

/// True (and says so) where the fd count is not known, so the test is skipped.
pub fn fd_count_unknown() -> bool {
    let unknown = open_fd_count().is_none();
    if unknown {
        eprintln!("skipped: open_fd_count() is not available on this OS");
    }
    unknown
}
