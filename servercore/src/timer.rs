//! A worker's timers: a min-heap of deadlines with lazy cancellation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Identifies a scheduled timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TimerId(u64);

/// Timers of one worker thread. `T` is what a timer does when it fires.
pub(crate) struct Timers<T> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    actions: HashMap<u64, T>,
    next: u64,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Self {
        Timers { heap: BinaryHeap::new(), actions: HashMap::new(), next: 0 }
    }

    pub(crate) fn add(&mut self, at: Instant, action: T) -> TimerId {
        self.next += 1;
        self.heap.push(Reverse((at, self.next)));
        self.actions.insert(self.next, action);
        TimerId(self.next)
    }

    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<T> {
        self.actions.remove(&id.0)
    }

    /// Time until the earliest live timer, `None` when there is none.
    pub(crate) fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.actions.contains_key(&id) {
                return Some(at.saturating_duration_since(now));
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if !self.actions.contains_key(&id) {
                self.heap.pop();
                continue;
            }
            if at > now {
                return None;
            }
            self.heap.pop();
            return self.actions.remove(&id);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_skips_cancelled() {
        let mut t = Timers::new();
        let now = Instant::now();
        t.add(now + Duration::from_millis(20), 2);
        let c = t.add(now + Duration::from_millis(5), 99);
        t.add(now + Duration::from_millis(10), 1);
        assert_eq!(t.cancel(c), Some(99));
        assert_eq!(t.next_timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_millis(30);
        assert_eq!(t.pop_due(later), Some(1));
        assert_eq!(t.pop_due(later), Some(2));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.next_timeout(later), None);
    }
}
