//! The driver: the completion core (the seed's `IocpCore`), one per worker thread.
//!
//! # Backend contract
//!
//! Every backend (`uring`: io_uring, the default on Linux; `poll`: readiness via `mio`,
//! emulating completions) offers the same operations with the same meaning, so that the
//! worker, session and service code above never asks which backend runs.
//!
//! * **Thread.** A driver is created on its worker's thread and used only there
//!   (io_uring's SINGLE_ISSUER). Only its [`Waker`] crosses threads.
//! * **Sockets.** [`add_stream`](Driver::add_stream) / [`add_listener`](Driver::add_listener)
//!   hand a std socket to the driver, which owns it from then on and names it by a
//!   [`SockId`]. [`close`](Driver::close) closes it; the caller guarantees that no operation
//!   of that socket is still in flight (DESIGN.md invariant 2).
//!   [`abort`](Driver::abort) closes it abortively (RST): for a peer the server gives up on.
//! * **Operations** ([`accept`](Driver::accept), [`recv`](Driver::recv),
//!   [`send`](Driver::send), [`connect`](Driver::connect)) are started at once or queued for
//!   the next [`wait`](Driver::wait); each returns an [`OpId`] and produces exactly one
//!   [`Completion`] carrying the caller's `owner` tag, except `accept`, which produces
//!   completions until one has `armed == false`.
//! * **Owned memory** (DESIGN.md invariant 1). An operation's memory moves into the driver
//!   with the call (the receive `Vec`, the send buffers) and comes back in its completion.
//!   Until that completion is produced the driver keeps it alive and unmoved, whatever
//!   happens to the session or the socket. A driver dropped with operations in flight
//!   cancels them, waits briefly, and leaks what the kernel may still touch rather than
//!   free it.
//! * **recv** arms a standing receive on a socket: it produces one completion per chunk
//!   of bytes, in order, each carrying a [`RecvLease`] on a buffer the *driver* owns (a
//!   provided-buffer ring on io_uring, a small pool on poll), until a completion with
//!   `armed == false` (peer close `Ok(None)`, error, or cancel). Buffers are taken only when
//!   bytes arrive, so an idle session holds none. The caller reads the bytes with
//!   [`lease`](Driver::lease) and gives the buffer back with [`release`](Driver::release)
//!   before its next `wait`; a backend whose buffers run out pauses receiving and resumes
//!   by itself once buffers come back (never dropping bytes).
//! * **send** writes the buffers in order as one gather write (at most [`MAX_IOVECS`]
//!   buffers) and may be short: `Ok(n)` says how many bytes went out; the caller resumes.
//!   At most one send per socket is in flight (the caller guarantees it).
//! * **connect** completes with `Ok(())` only when the connection is established.
//! * **cancel** asks an operation to finish early; it still produces its completion
//!   (usually `ECANCELED`, or its result if it finished first). The id of an operation
//!   that has produced its final completion is ignored, even once its slot is reused:
//!   [`OpId`]s carry a generation.
//! * **wait** submits everything queued, blocks until at least one completion is ready, the
//!   timeout passes, or the [`Waker`] is woken, and appends the ready completions to `out`.
//!   With a [`Gather`] it instead blocks until the gather window (or the timeout) ends,
//!   neither woken nor ended by single completions, unless so many are ready that its
//!   queues would overflow. [`submit`](Driver::submit) starts what is queued without
//!   waiting.
//! * Errors arrive as `io::Error` with the OS error code.

use bytes::Bytes;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

#[cfg(target_os = "linux")]
mod bufring;
mod poll;
#[cfg(target_os = "linux")]
mod uring;

mod diagnostics;
pub use diagnostics::Diagnostics;
mod select;
pub use select::{Backend, BackendChoice};
mod wake;
pub(crate) use wake::{Waker, WakerInner};
#[cfg(all(test, not(servercore_loom)))]
mod conformance;

/// The buffers of one gather write, in order: a session's queue handed over whole, so no
/// buffer is copied between queue and operation.
pub(crate) type SendBatch = std::collections::VecDeque<Bytes>;

/// Most buffers one gather write takes (Linux `IOV_MAX`).
pub(crate) const MAX_IOVECS: usize = 1024;

/// Sizes a driver is built with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DriverConfig {
    /// Receive buffers shared by the worker's sessions (a power of two; 0: none).
    pub recv_buffers: u16,
    /// Bytes per receive buffer.
    pub recv_buffer_size: usize,
    /// io_uring submission queue entries (the completion queue has four times as many).
    /// Tests make it tiny to exercise a full submission and completion queue.
    pub sq_entries: u32,
    /// io_uring techniques switched off, so that the paths of older kernels can be taken
    /// (and tested) on this one.
    pub uring_off: UringSwitches,
}

impl Default for DriverConfig {
    /// The worker's sizes, every technique on.
    fn default() -> Self {
        DriverConfig {
            recv_buffers: 1024,
            recv_buffer_size: 4096,
            sq_entries: 1024,
            uring_off: UringSwitches::default(),
        }
    }
}

/// io_uring techniques to do without (`true`: off), as on kernels that lack them; set from
/// a service's [`Diagnostics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UringSwitches {
    /// No provided-buffer ring: single-shot receives into a pool (before 5.19).
    pub bufring: bool,
    /// No DEFER_TASKRUN setup (before 6.1).
    pub defer_taskrun: bool,
    /// No timeout argument to `io_uring_enter` (before 5.11): timed waits use TIMEOUT ops.
    pub ext_arg: bool,
    /// No multishot POLL_ADD for the wake-up eventfd (before 5.13): re-armed each time.
    pub multishot_poll: bool,
}

/// A request to `wait` to gather: return at the end of `window` (or the timeout, if
/// sooner) with everything that completed meanwhile, rather than at the first completion.
/// A backend may return earlier when so much is ready that waiting longer would overflow
/// its queues. A zero window waits as usual but returns with everything that is ready,
/// not just a first batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gather {
    pub window: Duration,
}

/// Test-only tallies of rarely taken paths, so that a test can confirm that it took the
/// path it means to exercise. Plain integers, compiled only into tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DriverCounters {
    /// io_uring: entries that went to the overflow queue (the submission queue was full
    /// and the kernel took no more).
    pub overflowed: u64,
    /// io_uring: submissions the kernel refused for now (EBUSY, EAGAIN).
    pub busy: u64,
    /// io_uring: entries pushed while the submission queue was full (submitted first to
    /// make room).
    pub sq_full: u64,
    /// io_uring: reaps that found completions waiting in the kernel's overflow list (the
    /// completion queue was full).
    pub cq_overflow: u64,
    /// Receives parked for want of a buffer (io_uring: a multishot receive ended by
    /// ENOBUFS; poll: a recv that found the pool dry).
    pub starved: u64,
    /// Receives parked now (not armed, waiting for buffers to come back).
    pub parked: usize,
    /// io_uring: parked receives cancelled, completed by the driver itself.
    pub parked_cancels: u64,
}

/// A socket owned by a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SockId(pub(crate) usize);

/// An operation in flight in a driver: its slot in the driver's table and the generation
/// the slot had when the operation started, so that a stale id (an operation that has
/// finished, its slot since reused) never reaches a newer operation (DESIGN.md
/// invariant 2, for operations). Generations are never 0 ([`next_gen`]), so an id is never
/// 0 and an `Option<OpId>` takes 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct OpId(std::num::NonZeroU64);

/// The generation after `gen`: wraps, skipping 0.
pub(crate) fn next_gen(gen: u32) -> u32 {
    gen.wrapping_add(1).max(1)
}

impl OpId {
    /// `gen` is never 0 (see [`next_gen`]).
    pub(crate) fn new(slot: usize, gen: u32) -> Self {
        let slot = u32::try_from(slot).expect("more than 2^32 operations in flight");
        let v = u64::from(gen) << 32 | u64::from(slot);
        OpId(std::num::NonZeroU64::new(v).expect("operation generation 0"))
    }

    pub(crate) fn slot(self) -> usize {
        self.0.get() as u32 as usize
    }

    pub(crate) fn gen(self) -> u32 {
        (self.0.get() >> 32) as u32
    }

    /// Both halves in one word (io_uring's `user_data`).
    pub(crate) fn to_u64(self) -> u64 {
        self.0.get()
    }

    /// The id in a `user_data` word; `None` for 0, which names no operation.
    pub(crate) fn from_u64(v: u64) -> Option<Self> {
        std::num::NonZeroU64::new(v).map(OpId)
    }
}

/// A chunk of received bytes in a buffer the driver owns, until
/// [`Driver::release`].
#[derive(Debug)]
#[must_use = "a lease must be released, or the driver runs out of receive buffers"]
pub(crate) struct RecvLease {
    /// Which driver buffer.
    pub(crate) buf: u32,
    /// Bytes in it (never 0).
    pub(crate) len: u32,
}

/// One finished operation.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The tag the caller gave when starting the operation.
    pub owner: u64,
    /// What finished.
    pub kind: CompletionKind,
}

/// The result of a finished operation, with the memory it borrowed.
#[derive(Debug)]
pub(crate) enum CompletionKind {
    /// A connection was accepted (or accepting failed). `armed == false`: the accept is no
    /// longer armed.
    Accept { result: io::Result<TcpStream>, armed: bool },
    /// Bytes arrived (`Ok(Some(lease))`), or the peer closed (`Ok(None)`), or the receive
    /// failed. `armed == false`: the receive is no longer armed.
    Recv { result: io::Result<Option<RecvLease>>, armed: bool },
    /// A gather write finished; `bufs` are the buffers given, unchanged.
    Send { result: io::Result<usize>, bufs: SendBatch },
    /// A connect finished.
    Connect { result: io::Result<()> },
}

/// The driver of one worker: one backend, chosen at start. One per worker thread, never
/// moved after start, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driver {
    #[cfg(target_os = "linux")]
    Uring(uring::UringDriver),
    Poll(poll::PollDriver),
}

macro_rules! each_backend {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            #[cfg(target_os = "linux")]
            Driver::Uring($d) => $e,
            Driver::Poll($d) => $e,
        }
    };
}

impl Driver {
    /// Creates a driver of the given backend on the calling thread.
    pub(crate) fn new(backend: Backend, config: &DriverConfig) -> io::Result<Driver> {
        match backend {
            #[cfg(target_os = "linux")]
            Backend::IoUring => uring::UringDriver::new(config).map(Driver::Uring),
            #[cfg(not(target_os = "linux"))]
            Backend::IoUring => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring is only available on Linux",
            )),
            Backend::Poll => poll::PollDriver::new().map(Driver::Poll),
        }
    }

    pub(crate) fn waker(&self) -> Arc<Waker> {
        each_backend!(self, d => d.waker())
    }

    pub(crate) fn add_listener(&mut self, l: TcpListener) -> io::Result<SockId> {
        each_backend!(self, d => d.add_listener(l))
    }

    pub(crate) fn add_stream(&mut self, s: TcpStream) -> io::Result<SockId> {
        each_backend!(self, d => d.add_stream(s))
    }

    pub(crate) fn accept(&mut self, sock: SockId, owner: u64) -> OpId {
        each_backend!(self, d => d.accept(sock, owner))
    }

    pub(crate) fn recv(&mut self, sock: SockId, owner: u64) -> OpId {
        each_backend!(self, d => d.recv(sock, owner))
    }

    /// The bytes of a received chunk.
    pub(crate) fn lease(&self, lease: &RecvLease) -> &[u8] {
        each_backend!(self, d => d.lease(lease))
    }

    /// Gives a received chunk's buffer back to the driver.
    pub(crate) fn release(&mut self, lease: RecvLease) {
        each_backend!(self, d => d.release(lease))
    }

    pub(crate) fn send(&mut self, sock: SockId, owner: u64, bufs: SendBatch) -> OpId {
        debug_assert!(!bufs.is_empty() && bufs.len() <= MAX_IOVECS);
        each_backend!(self, d => d.send(sock, owner, bufs))
    }

    pub(crate) fn connect(&mut self, sock: SockId, owner: u64, addr: SocketAddr) -> OpId {
        each_backend!(self, d => d.connect(sock, owner, addr))
    }

    pub(crate) fn cancel(&mut self, op: OpId) {
        each_backend!(self, d => d.cancel(op))
    }

    pub(crate) fn close(&mut self, sock: SockId) {
        each_backend!(self, d => d.close(sock))
    }

    /// Bytes written to the socket that the peer has not acknowledged yet (the kernel's
    /// send queue).
    pub(crate) fn unsent(&self, sock: SockId) -> usize {
        each_backend!(self, d => d.unsent(sock))
    }

    /// Makes a later close of `sock` (by [`close`](Driver::close) or the driver's
    /// teardown) abortive, without closing it now (operations may still be in flight).
    pub(crate) fn make_abortive(&mut self, sock: SockId) {
        each_backend!(self, d => d.make_abortive(sock))
    }

    /// Like [`close`](Driver::close), but abortive (`SO_LINGER` 0): the peer gets a reset
    /// and the kernel frees whatever it still held for the socket (unsent bytes) at once.
    pub(crate) fn abort(&mut self, sock: SockId) {
        each_backend!(self, d => d.abort(sock))
    }

    /// Starts the operations queued so far now instead of in the next `wait`.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        each_backend!(self, d => d.submit())
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        gather: Option<Gather>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        each_backend!(self, d => d.wait(timeout, gather, out))
    }

    /// Operations started and not yet completed (the driver's own entries, such as a
    /// wake-up poll or a wait timer, are not counted).
    pub(crate) fn in_flight(&self) -> usize {
        each_backend!(self, d => d.in_flight())
    }

    /// Testing aid: the tallies of rarely taken paths so far.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> DriverCounters {
        each_backend!(self, d => d.counters())
    }
}
