//! Counters shared by the load sessions, and their latency histograms.
//!
//! Latency samples go into a histogram per worker thread (not per session: an HDR
//! histogram of this range is about 140 KB, too much times thousands of sessions). Each
//! thread folds its samples into [`LoadStats::recent`] every [`RECENT_FLUSH`] (read and
//! reset by the live progress line) and into [`LoadStats::latency`] whenever one of its
//! sessions ends; the last session of a thread to end therefore flushes everything.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest latency recorded, in microseconds; larger samples are clamped to it.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// How often a worker thread folds its recent samples into [`LoadStats::recent`].
pub const RECENT_FLUSH: Duration = Duration::from_millis(100);

/// Live counters of a load run; sessions add to them lock-free.
pub struct LoadStats {
    /// Echo: messages that came back whole. Chat: S_CHAT packets received (deliveries,
    /// from every sender).
    pub messages: AtomicU64,
    /// Bytes received (chat: whole packets, header included).
    pub bytes: AtomicU64,
    /// Own messages sent (chat: C_CHAT packets).
    pub sends: AtomicU64,
    /// Chat: a sender's sequence number jumped forward (messages missing).
    pub gaps: AtomicU64,
    /// Chat: a sender's sequence number repeated or went back.
    pub duplicates: AtomicU64,
    /// Wrong bytes, wrong packet id or length, a message that was never sent.
    pub corrupt: AtomicU64,
    pub unexpected_disconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Chat: own messages sent and not yet back (summed over the sessions).
    pub in_flight: AtomicI64,
    /// Chat: receivers now too far behind; nobody sends while it is above 0.
    pub lagging: AtomicUsize,
    /// Chat: how many times a receiver fell too far behind (and sending paused).
    pub lag_pauses: AtomicU64,
    /// Chat: S_CHAT messages of other clients in the room (text, such as the browser
    /// page's): received, not checked, not counted as deliveries.
    pub foreign: AtomicU64,
    /// Set when the run is over: no new messages, and disconnects from then on are
    /// expected.
    pub stopping: AtomicBool,
    /// Every latency sample of the run (complete once every session has ended).
    pub latency: Mutex<Histogram<u64>>,
    /// Samples since the progress line last read (and reset) it.
    pub recent: Mutex<Histogram<u64>>,
    /// TLS runs: how long the handshakes took.
    pub handshakes: HandshakeStats,
    /// Chat runs over several servers: sessions leave what they saw in `finals` when they
    /// end, for [`check_complete`](super::chat::check_complete).
    pub keep_finals: AtomicBool,
    pub finals: Mutex<Vec<super::chat::Final>>,
    first_error: Mutex<Option<String>>,
}

/// How long the TLS handshakes of a run took (the client service counts them, and the
/// failures). A handshake is timed from the start of its session's connect to
/// `on_connected`, so TCP connect and TLS handshake together: the library opens the session
/// only once both are done, and that is the wait a player would see.
pub struct HandshakeStats {
    /// Latency in microseconds, and when the last handshake finished.
    times: Mutex<(Histogram<u64>, Option<Instant>)>,
}

impl Default for HandshakeStats {
    fn default() -> Self {
        HandshakeStats { times: Mutex::new((new_histogram(), None)) }
    }
}

impl HandshakeStats {
    /// One handshake, from the connect start `started` to `on_connected` at `now`. Once per
    /// session, so a lock is cheap enough here (unlike the per-message latency samples).
    pub fn record(&self, started: Instant, now: Instant) {
        let us = now.saturating_duration_since(started).as_micros() as u64;
        let mut t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        let _ = t.0.record(us.clamp(1, MAX_LATENCY_US));
        t.1 = Some(t.1.map_or(now, |last| last.max(now)));
    }

    /// A copy of the latency histogram and the instant of the last handshake.
    pub fn times(&self) -> (Histogram<u64>, Option<Instant>) {
        self.times.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for LoadStats {
    fn default() -> Self {
        LoadStats {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            unexpected_disconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            lagging: AtomicUsize::new(0),
            lag_pauses: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            latency: Mutex::new(new_histogram()),
            recent: Mutex::new(new_histogram()),
            handshakes: HandshakeStats::default(),
            keep_finals: AtomicBool::new(false),
            finals: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
        }
    }
}

/// Latency in microseconds, 1 us .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl LoadStats {
    /// Keeps the first error message of the run.
    pub fn error(&self, msg: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(msg);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// p99 of the samples since the last call (None if there were none), and a reset.
    pub fn take_recent_p99(&self) -> Option<u64> {
        let mut h = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let p99 = (!h.is_empty()).then(|| h.value_at_quantile(0.99));
        h.reset();
        p99
    }
}

/// One worker thread's samples, for the run `stats`.
struct ThreadLatency {
    stats: Arc<LoadStats>,
    all: Histogram<u64>,
    recent: Histogram<u64>,
    last_recent_flush: Instant,
}

impl ThreadLatency {
    fn flush_recent(&mut self, now: Instant) {
        self.last_recent_flush = now;
        if !self.recent.is_empty() {
            let mut r = self.stats.recent.lock().unwrap_or_else(|p| p.into_inner());
            let _ = r.add(&self.recent);
            drop(r);
            self.recent.reset();
        }
    }

    fn flush_all(&mut self) {
        self.flush_recent(Instant::now());
        if !self.all.is_empty() {
            let mut a = self.stats.latency.lock().unwrap_or_else(|p| p.into_inner());
            let _ = a.add(&self.all);
            drop(a);
            self.all.reset();
        }
    }
}

impl Drop for ThreadLatency {
    /// A safety net: sessions flush when they end, so this normally has nothing to do.
    fn drop(&mut self) {
        self.flush_all();
    }
}

thread_local! {
    static LATENCY: RefCell<Option<ThreadLatency>> = const { RefCell::new(None) };
}

/// Records one latency sample (microseconds) of the run `stats` on this thread.
pub fn record_latency(stats: &Arc<LoadStats>, us: u64, now: Instant) {
    let _ = LATENCY.try_with(|slot| {
        let Ok(mut slot) = slot.try_borrow_mut() else { return };
        if !matches!(&*slot, Some(t) if Arc::ptr_eq(&t.stats, stats)) {
            // First sample on this thread, or a thread reused for another run: the old
            // run's samples are flushed by the drop.
            *slot = Some(ThreadLatency {
                stats: stats.clone(),
                all: new_histogram(),
                recent: new_histogram(),
                last_recent_flush: now,
            });
        }
        let Some(t) = slot.as_mut() else { return };
        let v = us.clamp(1, MAX_LATENCY_US);
        let _ = t.all.record(v);
        let _ = t.recent.record(v);
        if now.saturating_duration_since(t.last_recent_flush) >= RECENT_FLUSH {
            t.flush_recent(now);
        }
    });
}

/// Folds this thread's samples of the run `stats` into its histograms; called when a
/// session ends.
pub fn flush_latency(stats: &Arc<LoadStats>) {
    let _ = LATENCY.try_with(|slot| {
        let Ok(mut slot) = slot.try_borrow_mut() else { return };
        if let Some(t) = slot.as_mut().filter(|t| Arc::ptr_eq(&t.stats, stats)) {
            t.flush_all();
        }
    });
}
