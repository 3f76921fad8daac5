//! Waking a worker from other threads: the "already woken" flag and the signal behind it.
//!
//! # The protocol, and why no wake-up is lost
//!
//! Producers (any thread): put the message in the worker's inbox, then [`Waker::wake`]:
//! `raise` the flag (`swap(true, AcqRel)`) and, only if it was down, signal (write the
//! eventfd / mio waker). The consumer (the worker thread): each turn drains its inbox, then
//! sleeps in the driver's `wait` until a signal arrives; when it takes a signal it first
//! consumes it (drains the eventfd counter; epoll hands each edge out once), *then*
//! [`Waker::reset`]s the flag (`swap(false, AcqRel)`), and drains the inbox again at the
//! top of the next turn.
//!
//! * A producer that finds the flag down signals; the signal is consumed only by a
//!   consumer that then resets and drains the inbox: the message is seen at that drain (the
//!   signal goes through the kernel, which orders the producer's push before the
//!   consumer's read of the signal).
//! * A producer that finds the flag up does not signal. Its swap comes before the
//!   consumer's next reset in the flag's modification order (else it would have found the
//!   flag down), and the reset is a read-modify-write, so it reads this producer's value
//!   (or a later one of the same release sequence) with Acquire: the producer's push
//!   happens-before the reset, which comes before the consumer's next drain of the inbox.
//!   A plain `store(false)` would not give this: a store followed by the inbox's loads is
//!   the store-buffering pattern, and the consumer could miss the message while the
//!   producer misses the reset (the inbox would then have to fence, as std's channel
//!   happens to).
//! * Resetting *after* consuming the signal matters: a reset before it could let a
//!   producer raise the flag and signal in between, and that signal would be consumed with
//!   the flag left up, so no producer would ever signal again.
//!
//! The `servercore_loom` cfg swaps the atomics for loom's, whose model test below checks
//! the handshake (`RUSTFLAGS="--cfg servercore_loom" cargo test -p servercore --lib
//! --release wake`).

#[cfg(servercore_loom)]
use loom::sync::atomic::AtomicBool;
#[cfg(not(servercore_loom))]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

/// The "a wake-up is already pending" flag of a [`Waker`].
pub(crate) struct WakeFlag {
    pending: AtomicBool,
}

impl WakeFlag {
    pub(crate) fn new() -> Self {
        WakeFlag { pending: AtomicBool::new(false) }
    }

    /// Producer side, after posting: true when the caller must signal (the flag was down).
    pub(crate) fn raise(&self) -> bool {
        !self.pending.swap(true, Ordering::AcqRel)
    }

    /// Consumer side, after consuming the signal and before draining the inbox: later
    /// raises must signal again. A swap, not a store: see the module doc.
    pub(crate) fn reset(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }

    /// The reset this crate had before (a plain store), kept for the model to show why it
    /// is not enough.
    #[cfg(all(test, servercore_loom))]
    fn reset_with_store(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

/// Wakes a driver's `wait` from any thread; `Send + Sync`.
///
/// Many wakes before the driver runs cost one system call: the [`WakeFlag`] records that a
/// wake-up is already pending. The ordering argument is in the module doc.
pub(crate) struct Waker {
    flag: WakeFlag,
    pub(crate) inner: WakerInner,
}

pub(crate) enum WakerInner {
    #[cfg(target_os = "linux")]
    EventFd(crate::sys::EventFd),
    Mio(mio::Waker),
}

impl Waker {
    pub(crate) fn new(inner: WakerInner) -> Self {
        Waker { flag: WakeFlag::new(), inner }
    }

    /// Wakes the driver's thread if it is not already due to wake. Call after posting.
    pub(crate) fn wake(&self) {
        if self.flag.raise() {
            let r = match &self.inner {
                #[cfg(target_os = "linux")]
                WakerInner::EventFd(fd) => fd.notify(),
                WakerInner::Mio(w) => w.wake(),
            };
            if let Err(e) = r {
                tracing::error!("waking a worker failed: {e}");
            }
        }
    }

    /// Called by the driver's thread once it has consumed the signal, before the worker
    /// looks at its inbox again: later wakes must signal again.
    pub(crate) fn reset(&self) {
        self.flag.reset();
    }
}

#[cfg(all(test, servercore_loom))]
mod loom_model {
    //! The inbox is modeled lock-free (a count of posted messages, Release/Acquire), the
    //! weakest inbox the protocol must work with; the eventfd as a counter under a mutex
    //! (the kernel orders it). The consumer "sleeps" by waiting for the counter; a sleep
    //! that no signal will ever end while a message waits in the inbox is a lost wake-up.
    use super::WakeFlag;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Mutex};
    use std::sync::atomic::{AtomicBool as StdBool, Ordering};

    struct Shared {
        inbox: AtomicUsize,
        flag: WakeFlag,
        signal: Mutex<u64>,
        /// Producers that have finished posting.
        done: AtomicUsize,
    }

    impl Shared {
        fn post(&self) {
            self.inbox.fetch_add(1, Ordering::Release);
            if self.flag.raise() {
                *self.signal.lock().unwrap() += 1;
            }
        }
    }

    /// How the consumer takes a signal.
    #[derive(Clone, Copy, PartialEq)]
    enum Take {
        /// Drain the counter, then `reset` (the driver's order).
        DrainThenReset,
        /// `reset`, then drain the counter.
        ResetThenDrain,
        /// Drain the counter, then a plain `store(false, Release)`.
        DrainThenStore,
    }

    /// Runs `producers` threads posting `posts` messages each against a consumer that
    /// takes signals as `take` says; true when some execution lost a wake-up.
    fn model(producers: usize, posts: usize, take: Take) -> bool {
        let lost = std::sync::Arc::new(StdBool::new(false));
        let lost2 = lost.clone();
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(move || {
            let s = Arc::new(Shared {
                inbox: AtomicUsize::new(0),
                flag: WakeFlag::new(),
                signal: Mutex::new(0),
                done: AtomicUsize::new(0),
            });
            let handles: Vec<_> = (0..producers)
                .map(|_| {
                    let s = s.clone();
                    loom::thread::spawn(move || {
                        (0..posts).for_each(|_| s.post());
                        s.done.fetch_add(1, Ordering::Release);
                    })
                })
                .collect();
            let total = producers * posts;
            'turns: loop {
                // Top of a worker turn: drain the inbox.
                if s.inbox.load(Ordering::Acquire) == total {
                    break;
                }
                // Nothing left: sleep until signalled (the driver's `wait`).
                loop {
                    if *s.signal.lock().unwrap() > 0 {
                        break;
                    }
                    if s.done.load(Ordering::Acquire) == producers && *s.signal.lock().unwrap() == 0
                    {
                        // Every producer is done and no signal is pending, yet this turn
                        // found messages missing: the sleep would last for ever with them
                        // in the inbox.
                        lost2.store(true, Ordering::Relaxed);
                        break 'turns;
                    }
                    loom::thread::yield_now();
                }
                // Take the signal.
                match take {
                    Take::DrainThenReset => {
                        *s.signal.lock().unwrap() = 0; // drain the eventfd counter
                        s.flag.reset();
                    }
                    Take::ResetThenDrain => {
                        s.flag.reset();
                        *s.signal.lock().unwrap() = 0;
                    }
                    Take::DrainThenStore => {
                        *s.signal.lock().unwrap() = 0;
                        s.flag.reset_with_store();
                    }
                }
            }
            for h in handles {
                h.join().unwrap();
            }
        });
        lost.load(Ordering::Relaxed)
    }

    #[test]
    fn wake_handshake_two_producers() {
        assert!(!model(2, 1, Take::DrainThenReset), "a wake-up was lost");
    }

    #[test]
    fn wake_handshake_one_producer_three_posts() {
        assert!(!model(1, 3, Take::DrainThenReset), "a wake-up was lost");
    }

    /// The model can find a lost wake-up: resetting before consuming the signal loses one.
    #[test]
    fn wake_reset_before_consuming_the_signal_is_caught() {
        assert!(model(1, 3, Take::ResetThenDrain), "the model did not find the lost wake-up");
    }

    /// The old reset, a plain store, loses a wake-up against a lock-free inbox.
    #[test]
    fn wake_reset_with_a_store_is_caught() {
        assert!(model(1, 2, Take::DrainThenStore), "the model did not find the lost wake-up");
    }
}
