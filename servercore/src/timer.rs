//! A worker's timers: a min-heap of deadlines with lazy cancellation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Identifies a timer set with [`Ctx::set_timer`](crate::Ctx::set_timer) or
/// [`Ctx::set_interval`](crate::Ctx::set_interval), for cancelling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

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

    /// Schedules `action` again under the same id (repeating timers keep their id, so a
    /// cancel by that id keeps working).
    pub(crate) fn reschedule(&mut self, id: TimerId, at: Instant, action: T) {
        self.heap.push(Reverse((at, id.0)));
        self.actions.insert(id.0, action);
    }

    /// Puts back an action taken by `cancel` (its heap entry is still there).
    pub(crate) fn restore(&mut self, id: TimerId, action: T) {
        self.actions.insert(id.0, action);
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

    /// Removes and returns one timer due at `now`, with its id.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerId, T)> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if !self.actions.contains_key(&id) {
                self.heap.pop();
                continue;
            }
            if at > now {
                return None;
            }
            self.heap.pop();
            return self.actions.remove(&id).map(|a| (TimerId(id), a));
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
        assert_eq!(t.pop_due(later).map(|x| x.1), Some(1));
        let (id, two) = t.pop_due(later).unwrap();
        assert_eq!(two, 2);
        t.reschedule(id, later + Duration::from_millis(5), 3);
        assert_eq!(t.next_timeout(later), Some(Duration::from_millis(5)));
        assert_eq!(t.cancel(id), Some(3));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.next_timeout(later), None);
    }
}
