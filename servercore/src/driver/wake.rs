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
    //! with a condvar (the kernel orders it). A lost wake-up leaves the consumer blocked
    //! for ever, which loom reports as a deadlock.
    use super::WakeFlag;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Condvar, Mutex};
    use std::sync::atomic::Ordering;

    struct Shared {
        inbox: AtomicUsize,
        flag: WakeFlag,
        signal: Mutex<u64>,
        cv: Condvar,
    }

    impl Shared {
        fn post(&self) {
            self.inbox.fetch_add(1, Ordering::Release);
            if self.flag.raise() {
                *self.signal.lock().unwrap() += 1;
                self.cv.notify_one();
            }
        }
    }

    /// Runs `producers` threads posting `posts` messages each against a consumer that
    /// consumes the signal and resets the flag in the given order.
    fn model(producers: usize, posts: usize, reset_first: bool) {
        loom::model(move || {
            let s = Arc::new(Shared {
                inbox: AtomicUsize::new(0),
                flag: WakeFlag::new(),
                signal: Mutex::new(0),
                cv: Condvar::new(),
            });
            let handles: Vec<_> = (0..producers)
                .map(|_| {
                    let s = s.clone();
                    loom::thread::spawn(move || (0..posts).for_each(|_| s.post()))
                })
                .collect();
            let total = producers * posts;
            loop {
                // Top of a worker turn: drain the inbox.
                if s.inbox.load(Ordering::Acquire) == total {
                    break;
                }
                // Nothing left: sleep until signalled (the driver's `wait`), then take the
                // signal.
                let mut n = s.signal.lock().unwrap();
                while *n == 0 {
                    n = s.cv.wait(n).unwrap();
                }
                if reset_first {
                    drop(n);
                    s.flag.reset();
                    *s.signal.lock().unwrap() = 0;
                } else {
                    *n = 0; // drain the eventfd counter
                    drop(n);
                    s.flag.reset();
                }
            }
            for h in handles {
                h.join().unwrap();
            }
        });
    }

    #[test]
    fn wake_handshake_two_producers() {
        model(2, 1, false);
    }

    #[test]
    fn wake_handshake_one_producer_three_posts() {
        model(1, 3, false);
    }

    /// The model can find a lost wake-up: resetting before consuming the signal loses one
    /// (loom reports the consumer blocked for ever).
    #[test]
    #[should_panic]
    fn wake_reset_before_consuming_the_signal_loses_a_wake_up() {
        model(1, 3, true);
    }
}
