//! The readiness backend: `mio` (epoll, kqueue, IOCP/AFD) emulating the completion
//! contract of [`super`].
//!
//! # How completions are emulated
//!
//! Every socket is registered once, when it is added, for the readiness it can ever need
//! (listeners: readable; streams: readable and writable), edge-triggered. The driver keeps
//! two flags per socket, `readable` and `writable`: "the last attempt did not end in
//! `WouldBlock`, or an edge arrived since". They start `true` (an attempt on a socket that
//! is not ready costs one system call and nothing else), an event sets them, and only a
//! `WouldBlock` clears them. An edge can therefore never be lost: either the flag is still
//! set, or the `WouldBlock` that cleared it came before the edge that sets it again.
//!
//! Each socket holds at most one pending operation of each kind (accept, recv, send,
//! connect). Starting an operation performs no system call: it records the operation and
//! queues the socket on the dirty list. [`PollDriver::wait`] first drives every dirty
//! socket (tries its pending operations while its flags allow), then polls (with a zero
//! timeout if completions are already in hand), marks the sockets named by the events as
//! dirty and drives them again. A socket that is ready but has nothing pending costs no
//! work and never makes `wait` return early: its flag is merely recorded.
//!
//! Accepting and receiving are capped per `wait` ([`ACCEPT_BATCH`](drive::ACCEPT_BATCH) connections
//! per listener, [`RECV_BATCH`](drive::RECV_BATCH) chunks per stream) so that a flood on one socket
//! cannot starve the others. A capped socket keeps its flag set and goes on the `again` list, which
//! the next `wait` drives first (without blocking in the poll) behind the sockets queued since.
//!
//! # Receiving
//!
//! A recv is a standing operation: while it is pending and the socket is readable, the
//! driver reads into a free buffer of its pool ([`RECV_BUF`](pool::RECV_BUF) bytes each) and
//! completes a chunk with a [`RecvLease`] on it, `armed == true`; end of stream
//! (`Ok(None)`), an error or a cancel completes it with `armed == false`. A buffer is taken
//! from the pool only for a read and kept only if the read brought bytes, so an idle session
//! holds none. The caller gives it back with [`PollDriver::release`].
//!
//! The pool grows on demand up to [`POOL_MAX`](pool::POOL_MAX) buffers and never shrinks. Should it
//! run dry (leases held too long, or very many sockets receiving at once), the sockets that wanted
//! a buffer go on the `starved` list with their readable flag still set: receiving pauses without
//! spinning (they are not dirty) and no byte is lost (it stays in the kernel). The next
//! [`PollDriver::release`] queues them again ahead of everything else; a socket that got some
//! chunks before the pool ran dry goes behind those that got none.
//!
//! # Cancellation
//!
//! [`PollDriver::cancel`] marks the operation doomed and queues it; the next `wait` takes
//! it off its socket and completes it with `ECANCELED` (on non-Unix: `Interrupted`) before
//! any I/O is attempted, returning its buffers (a recv: `armed == false`; its chunks leased
//! so far are the caller's until released). Operations started on an unknown socket
//! (or a second operation of a kind already pending) are failed the same way, with their
//! own error.
//!
//! # Memory
//!
//! No system call keeps a pointer into an operation's memory beyond the call itself, so
//! invariant 1 of DESIGN.md holds trivially: send buffers live in the operation table until
//! the completion hands them back, and receive buffers live in the pool, lent out by index.
//!
//! # Layout
//!
//! This file holds the driver and its wait loop; `sock` the sockets and their readiness
//! flags, `op` the operations (starting, cancelling, failing), `drive` what one pass over a
//! socket does, `attempt` a single non-blocking read or write, `pool` the receive buffers.
//! The backend contract itself is tested by `driver::conformance`, on every backend.

mod attempt;
mod drive;
#[cfg(all(test, not(servercore_loom)))]
mod harness;
mod op;
mod pool;
mod sock;

use super::{Completion, Gather, RecvLease, Waker, WakerInner};
use drive::{drive, Outcome};
use mio::{Events, Poll, Token};
use op::Op;
use pool::Pool;
use slab::Slab;
use sock::Sock;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// The token of the waker; socket tokens are slab keys, far below it.
const WAKE_TOKEN: Token = Token(usize::MAX - 1);
/// Capacity of the event buffer handed to `mio::Poll::poll`.
const EVENTS_CAPACITY: usize = 1024;

/// The readiness driver of one worker.
pub(crate) struct PollDriver {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    socks: Slab<Sock>,
    ops: Slab<Op>,
    /// Sockets whose pending operations may be able to progress.
    dirty: Vec<usize>,
    /// Sockets capped in this `wait`, to drive at the start of the next.
    again: Vec<usize>,
    /// Sockets whose recv waits for a buffer to come back, first served first.
    starved: Vec<usize>,
    pool: Pool,
    /// Operations to complete with the given error at the next `wait`.
    doomed: Vec<(usize, io::Error)>,
    /// Completions produced by `submit`, handed out by the next `wait`.
    submitted: Vec<Completion>,
    /// The generation the next operation gets.
    next_gen: u32,
    /// Testing aid: recvs that went on the `starved` list.
    #[cfg(test)]
    starved_count: u64,
}

impl PollDriver {
    pub(crate) fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let mio_waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        Ok(PollDriver {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            waker: Arc::new(Waker::new(WakerInner::Mio(mio_waker))),
            socks: Slab::with_capacity(256),
            ops: Slab::with_capacity(256),
            dirty: Vec::with_capacity(256),
            again: Vec::with_capacity(256),
            starved: Vec::new(),
            pool: Pool::new(),
            doomed: Vec::new(),
            submitted: Vec::new(),
            next_gen: 1,
            #[cfg(test)]
            starved_count: 0,
        })
    }

    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Testing aid: caps the receive pool, so that a test can run it dry.
    #[cfg(test)]
    pub(crate) fn set_pool_max(&mut self, n: usize) {
        self.pool.max = n;
    }

    /// Testing aid: the tallies of rarely taken paths so far (poll has no submission
    /// queue: only the starvation tallies apply).
    #[cfg(test)]
    pub(crate) fn counters(&self) -> super::DriverCounters {
        super::DriverCounters {
            starved: self.starved_count,
            parked: self.socks.iter().filter(|(_, s)| s.starved && s.recv.is_some()).count(),
            ..Default::default()
        }
    }

    /// Testing aid: whether every receive buffer is back in the pool.
    #[cfg(test)]
    pub(crate) fn pool_all_free(&self) -> bool {
        self.pool.all_free()
    }

    /// The bytes of a chunk. Panics on a lease this driver did not give.
    pub(crate) fn lease(&self, lease: &RecvLease) -> &[u8] {
        self.pool.bytes(lease)
    }

    /// Gives a chunk's buffer back, resuming receives paused for want of one.
    pub(crate) fn release(&mut self, lease: RecvLease) {
        if self.pool.give_back(lease.buf) && !self.starved.is_empty() {
            self.resume_starved();
        }
    }

    /// Queues the starved sockets ahead of the dirty ones, in the order they starved.
    fn resume_starved(&mut self) {
        let mut list = std::mem::take(&mut self.starved);
        let socks = &mut self.socks;
        // Keys of closed sockets (or reused for sockets that never starved) drop out, as do
        // sockets queued already.
        list.retain(|&key| match socks.get_mut(key) {
            Some(s) if s.starved => {
                s.starved = false;
                !std::mem::replace(&mut s.queued, true)
            }
            _ => false,
        });
        list.append(&mut self.dirty);
        // The old dirty list, now empty, keeps its capacity for the next starvation.
        self.starved = std::mem::replace(&mut self.dirty, list);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Drives what was started since the last `wait` now (this turn's writes), keeping
    /// the completions for the next `wait`.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        let mut done = std::mem::take(&mut self.submitted);
        self.process(&mut done);
        self.submitted = done;
        Ok(())
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        gather: Option<Gather>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        out.append(&mut self.submitted);
        let mut timeout = timeout;
        if let Some(g) = gather.filter(|g| !g.window.is_zero()) {
            // epoll has no "at least this many" wait: sleep through the window, which
            // leaves exactly the readiness that gathered meanwhile for the wait below.
            let window = timeout.map_or(g.window, |t| t.min(g.window));
            std::thread::sleep(window);
            timeout = timeout.map(|t| t.saturating_sub(window));
        }
        // Sockets capped in the last `wait` continue, behind those queued since.
        self.dirty.append(&mut self.again);
        self.process(out);
        // Completions in hand, or work left over (a capped socket): only look for events.
        let timeout = if out.is_empty() && self.dirty.is_empty() && self.again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.take_events();
        self.process(out);
        Ok(())
    }

    /// Records the readiness the last poll reported and queues the sockets it names.
    fn take_events(&mut self) {
        for event in self.events.iter() {
            if event.token() == WAKE_TOKEN {
                self.waker.reset();
                continue;
            }
            let Some(sock) = self.socks.get_mut(event.token().0) else {
                continue;
            };
            // Errors and hang-ups are reported by the next attempt in either direction.
            let failed = event.is_error() || event.is_read_closed() || event.is_write_closed();
            if event.is_readable() || failed {
                sock.readable = true;
            }
            if event.is_writable() || failed {
                sock.writable = true;
            }
            if !sock.queued {
                sock.queued = true;
                self.dirty.push(event.token().0);
            }
        }
    }

    /// Completes doomed operations, then drives every dirty socket once. Capped sockets go
    /// on the `again` list (not driven again in this `wait`), starved ones on `starved`.
    fn process(&mut self, out: &mut Vec<Completion>) {
        self.complete_doomed(out);
        let mut list = std::mem::take(&mut self.dirty);
        // At most one socket per pass is served before the pool runs dry: it goes behind
        // the sockets that got nothing.
        let mut served = None;
        for &key in &list {
            let Some(sock) = self.socks.get_mut(key) else {
                continue;
            };
            if !sock.queued {
                // A stale entry: listed twice, or the key of a closed socket reused.
                continue;
            }
            sock.queued = false;
            let outcome = drive(sock, &mut self.ops, &mut self.pool, out);
            #[cfg(test)]
            if matches!(outcome, Outcome::Starved { .. }) && !sock.starved {
                self.starved_count += 1;
            }
            match outcome {
                Outcome::Idle => {}
                Outcome::Again => {
                    sock.queued = true;
                    self.again.push(key);
                }
                Outcome::Starved { .. } if sock.starved => {}
                Outcome::Starved { served: false } => {
                    sock.starved = true;
                    self.starved.push(key);
                }
                Outcome::Starved { served: true } => {
                    sock.starved = true;
                    if let Some(earlier) = served.replace(key) {
                        self.starved.push(earlier);
                    }
                }
            }
        }
        self.starved.extend(served);
        list.clear();
        list.append(&mut self.dirty);
        self.dirty = list;
    }
}
