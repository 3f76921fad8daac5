//! Counters shared by the load sessions, and their latency histogram.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters of a load run; sessions add to them lock-free and merge their latency
/// histogram once, when they end.
pub struct LoadStats {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub corrupt: AtomicU64,
    pub unexpected_disconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Set when the run is over: disconnects from then on are expected.
    pub stopping: AtomicBool,
    pub latency: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Default for LoadStats {
    fn default() -> Self {
        LoadStats {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            unexpected_disconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            latency: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        }
    }
}

/// Latency in microseconds, 1 us .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl LoadStats {
    pub fn error(&self, msg: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(msg);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn merge_latency(&self, h: &Histogram<u64>) {
        let mut all = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let _ = all.add(h);
    }

    pub fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
