//! The io_uring backend: one ring per worker thread.
//!
//! Every operation's memory (receive buffer, send iovecs and `msghdr`, connect address)
//! lives in the driver's operation table from the moment its entry is pushed until its
//! completion is reaped (DESIGN.md invariant 1). Entries are batched: nothing is submitted
//! until [`UringDriver::wait`], which submits and waits in one `io_uring_enter`.
//!
//! * **Ids.** An operation's `user_data` is its [`OpId`]: table slot and generation, so a
//!   cancel aimed at a finished operation, or a completion of one, never reaches a newer
//!   operation in the same slot; such stale ids are ignored.
//! * **One place reaps**: [`UringDriver::wait`]. When the submission queue is full and the
//!   kernel takes no more (its completion queue is backed up: EBUSY), entries wait in the
//!   driver's `overflow` queue, in order, and `wait`/`submit` hand them over first. A
//!   submission error that persists becomes the error of `wait`/`submit`.
//! * **Internal entries** (the wake-up poll, wait timers) are not operations: they carry
//!   reserved `user_data`, do not count in [`UringDriver::in_flight`], and teardown does
//!   not wait for them.

mod complete;
mod ops;
mod wait;

use super::bufring::BufRing;
use super::{
    Completion, CompletionKind, DriverConfig, Gather, OpId, RecvLease, SendBatch, SockId, Waker,
    WakerInner,
};
use crate::sys::EventFd;
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use slab::Slab;
use socket2::SockAddr;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `user_data` slots at the top of the u32 range name the driver's own entries (the
/// operation table never grows near them).
const CANCEL_SLOT: u32 = u32::MAX;
const WAKE_SLOT: u32 = u32::MAX - 1;
const TIMER_SLOT: u32 = u32::MAX - 2;
/// `user_data` of cancel requests, whose own completions carry nothing to report.
const CANCEL_UD: u64 = u64::MAX;
/// `user_data` of the wake-up poll on the eventfd.
const WAKE_UD: u64 = WAKE_SLOT as u64;
/// Waits in a row in which queued entries could not be handed to the kernel and nothing
/// completed, after which the ring counts as broken (the error ends the worker).
const STALL_LIMIT: u32 = 1000;
/// Completions in one fan-out turn from which the driver asks the kernel for the rest at
/// once (`reap_all_deferred`).
const BUSY_TURN: usize = 16;
/// Lease ids with this bit name a pool buffer; others a buffer-ring buffer id.
const POOL_BIT: u32 = 1 << 31;

/// Checks that io_uring can be used here: a ring can be created and every opcode this
/// backend needs is supported.
pub(crate) fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed (kernel older than 5.6?): {e}"))?;
    let needed = [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::Timeout::CODE, "TIMEOUT"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks IORING_OP_{name}"));
        }
    }
    Ok(())
}

/// The `user_data` of wait timer `key` (an index into the driver's timers).
fn timer_ud(key: usize) -> u64 {
    (key as u64) << 32 | u64::from(TIMER_SLOT)
}

/// Builds a ring with the best setup flags the kernel accepts; true when it has
/// DEFER_TASKRUN.
fn build_ring(sq_entries: u32, no_defer_taskrun: bool) -> io::Result<(IoUring, bool)> {
    // Without DEFER_TASKRUN: start at COOP_TASKRUN, as on kernels before 6.1.
    let first = if no_defer_taskrun { 1 } else { 0 };
    let attempts: [fn(&mut io_uring::Builder); 3] = [
        |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        },
        |b| {
            b.setup_coop_taskrun();
        },
        |_| {},
    ];
    let mut last = None;
    for (i, setup) in attempts.into_iter().enumerate().skip(first) {
        let mut b = IoUring::builder();
        b.setup_cqsize(sq_entries.saturating_mul(4));
        setup(&mut b);
        match b.build(sq_entries) {
            Ok(ring) => return Ok((ring, i == 0)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring_setup failed")))
}

/// Memory and bookkeeping of one operation in flight.
struct Op {
    owner: u64,
    /// The generation of this use of the slot (the high half of its `user_data`).
    gen: u32,
    state: OpState,
}

// The boxed fields are never read: they exist to keep memory the kernel writes or reads
// alive until the completion (invariant 1).
#[allow(dead_code)]
enum OpState {
    /// `cancelled`: a multishot accept the kernel refuses (before 5.19) is not retried
    /// single-shot.
    Accept {
        fd: i32,
        multishot: bool,
        cancelled: bool,
    },
    /// A standing receive: multishot from the buffer ring, or single-shot into the pool
    /// buffer `buf`, re-armed after each chunk.
    /// `cancelled`: ends at its next completion instead of being re-armed.
    Recv {
        fd: i32,
        multishot: bool,
        buf: Option<u32>,
        cancelled: bool,
    },
    Send(Box<SendOp>),
    Connect(Box<SockAddr>),
}

/// A gather write: the buffers, their iovecs and the `msghdr` pointing at them. Boxed so
/// that the `msghdr` does not move when the operation table grows.
struct SendOp {
    bufs: SendBatch,
    iovs: Vec<libc::iovec>,
    msg: libc::msghdr,
}

/// The io_uring driver of one worker.
pub(crate) struct UringDriver {
    ring: IoUring,
    /// Declared after `ring`: dropped after the ring is closed (invariant 1).
    bufring: Option<BufRing>,
    /// Buffer ring entries were returned and not yet published to the kernel.
    bufring_dirty: bool,
    /// Receives are multishot from the buffer ring (false: single-shot into the pool).
    multishot_recv: bool,
    /// Multishot receives that ended with ENOBUFS, re-armed at the next `wait`.
    starved: Vec<usize>,
    /// Receive buffers of the single-shot path (kernels without buffer rings), and the free
    /// ones among them.
    pool: Vec<Box<[u8]>>,
    pool_free: Vec<u32>,
    recv_size: usize,
    ops: Slab<Op>,
    /// The generation the next operation gets.
    next_gen: u32,
    socks: Slab<OwnedFd>,
    waker: Arc<Waker>,
    wake_fd: i32,
    /// The poll on the eventfd is in the kernel (or queued).
    wake_armed: bool,
    /// The wake-up poll is multishot (5.13+); else re-armed after each wake-up.
    multishot_poll: bool,
    ext_arg: bool,
    /// Timespecs of wait timers (kernels without EXT_ARG) not yet reaped (invariant 1).
    timers: Slab<Box<types::Timespec>>,
    /// Timespec boxes of reaped timers, reused so that a timed wait allocates nothing.
    #[allow(clippy::vec_box)]
    spare_timers: Vec<Box<types::Timespec>>,
    /// The timer of the last wait, while not reaped.
    timer: Option<usize>,
    /// Entries the submission queue had no room for while the kernel took no more,
    /// handed over first by the next `wait`/`submit`. Their memory is held by their
    /// operations like that of any pushed entry.
    overflow: VecDeque<squeue::Entry>,
    /// A submission error to report from the next `wait`/`submit`.
    submit_error: Option<io::Error>,
    /// Waits in a row that could hand no queued entry over and reaped nothing.
    stalled: u32,
    sq_entries: u32,
    /// Testing hook: every `io_uring_enter` fails with this errno (and is not made), which
    /// takes the path the kernel's errno would: EBUSY, a kernel that takes no more for now;
    /// others, a broken ring.
    #[cfg(test)]
    pub(crate) fail_submit: Option<i32>,
    /// Testing aid: tallies of rarely taken paths.
    #[cfg(test)]
    counters: super::DriverCounters,
    multishot_accept: bool,
    /// The kernel hands deferred completions out in bounded batches (DEFER_TASKRUN) and an
    /// enter can ask for all of them without waiting (EXT_ARG): see `reap_all_deferred`.
    deferred_in_batches: bool,
    dropping: bool,
    /// Completions produced outside `wait` (a cancelled receive that was not armed),
    /// handed out by the next `wait`.
    backlog: Vec<Completion>,
    cqes: Vec<cqueue::Entry>,
    /// Boxed on purpose: a SendOp's msghdr must not move once pushed, and the box moves
    /// in and out of the operation table as a whole.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendOp>>,
}

impl UringDriver {
    pub(crate) fn new(config: &DriverConfig) -> io::Result<Self> {
        // Switched-off techniques take the path of kernels without them, so that tests
        // cover those paths here too. Kernels without EXT_ARG (before 5.11) also lack
        // DEFER_TASKRUN (6.1).
        let off = config.uring_off;
        if off.bufring || off.defer_taskrun || off.ext_arg || off.multishot_poll {
            tracing::info!("io_uring techniques switched off: {off:?}");
        }
        let sq_entries = config.sq_entries.clamp(2, 32768).next_power_of_two();
        let (ring, defer_taskrun) = build_ring(sq_entries, off.defer_taskrun || off.ext_arg)?;
        let ext_arg = ring.params().is_feature_ext_arg() && !off.ext_arg;
        let bufring = if config.recv_buffers > 0 && !off.bufring {
            match BufRing::new(&ring, config.recv_buffers, config.recv_buffer_size, 0) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::info!("no provided-buffer ring ({e}); single-shot receives");
                    None
                }
            }
        } else {
            None
        };
        let eventfd = EventFd::new()?;
        let wake_fd = eventfd.as_raw_fd();
        let waker = Arc::new(Waker::new(WakerInner::EventFd(eventfd)));
        Ok(UringDriver {
            ring,
            multishot_recv: bufring.is_some(),
            bufring,
            bufring_dirty: false,
            starved: Vec::new(),
            pool: Vec::new(),
            pool_free: Vec::new(),
            recv_size: config.recv_buffer_size,
            ops: Slab::with_capacity(256),
            next_gen: 1,
            socks: Slab::with_capacity(256),
            waker,
            wake_fd,
            wake_armed: false,
            multishot_poll: !off.multishot_poll,
            ext_arg,
            timers: Slab::new(),
            spare_timers: Vec::new(),
            timer: None,
            overflow: VecDeque::new(),
            submit_error: None,
            stalled: 0,
            sq_entries,
            #[cfg(test)]
            fail_submit: None,
            #[cfg(test)]
            counters: super::DriverCounters::default(),
            multishot_accept: true,
            deferred_in_batches: defer_taskrun && ext_arg,
            dropping: false,
            backlog: Vec::new(),
            cqes: Vec::with_capacity(256),
            send_pool: Vec::new(),
        })
    }

    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub(crate) fn add_listener(&mut self, l: TcpListener) -> io::Result<SockId> {
        l.set_nonblocking(false)?;
        Ok(SockId(self.socks.insert(OwnedFd::from(l))))
    }

    /// Takes a *blocking* socket (as this backend's accepts and `socket2` make them):
    /// io_uring waits for readiness itself, and a blocking socket keeps every kernel on
    /// the same path (old kernels returned EAGAIN for O_NONBLOCK files). Not switching
    /// modes here saves a system call per connection.
    pub(crate) fn add_stream(&mut self, s: TcpStream) -> io::Result<SockId> {
        Ok(SockId(self.socks.insert(OwnedFd::from(s))))
    }

    fn fd(&self, sock: SockId) -> i32 {
        self.socks[sock.0].as_raw_fd()
    }

    /// Records a new operation under a fresh generation.
    fn insert_op(&mut self, owner: u64, state: OpState) -> OpId {
        let gen = self.next_gen;
        self.next_gen = crate::driver::next_gen(gen);
        OpId::new(self.ops.insert(Op { owner, gen, state }), gen)
    }

    /// The `user_data` of operation `key` (slot and generation).
    fn ud(&self, key: usize) -> u64 {
        OpId::new(key, self.ops[key].gen).to_u64()
    }

    /// Queues one entry for the kernel: into the submission queue, submitting first when
    /// it is full, else (the kernel takes no more for now) into `overflow`. Never reaps:
    /// completions surface only in `wait`.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid and unmoved until its completion is reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.overflow.is_empty() {
            // SAFETY: the caller guarantees the entry's memory outlives its completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            #[cfg(test)]
            {
                self.counters.sq_full += 1;
            }
            // SAFETY: invariant 1, as above: the caller keeps the entry's memory alive.
            if self.submit_now() && unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        #[cfg(test)]
        {
            self.counters.overflowed += 1;
        }
        self.overflow.push_back(entry);
    }

    /// Hands the submission queue to the kernel; false when it took none (EBUSY, EAGAIN,
    /// or an error, which is kept for the next `wait`/`submit`).
    fn submit_now(&mut self) -> bool {
        for _ in 0..3 {
            // The testing hook's errno takes the path the kernel's would.
            #[cfg(test)]
            let result = match self.fail_submit {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => self.ring.submit(),
            };
            #[cfg(not(test))]
            let result = self.ring.submit();
            match result {
                Ok(_) => return true,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                        #[cfg(test)]
                        {
                            self.counters.busy += 1;
                        }
                        return false;
                    }
                    _ => {
                        tracing::error!("io_uring submit failed: {e}");
                        self.submit_error.get_or_insert(e);
                        return false;
                    }
                },
            }
        }
        false
    }

    /// Moves the overflow queue into the submission queue, submitting as it fills; true
    /// when it is empty.
    fn flush_overflow(&mut self) -> bool {
        while let Some(entry) = self.overflow.front() {
            // SAFETY: invariant 1: an entry waits in `overflow` with its memory held
            // exactly as when it was given to `push` (by its operation in `ops`, or by
            // `timers`), until its completion is reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.overflow.pop_front();
                continue;
            }
            if !self.submit_now() || self.ring.submission().is_full() {
                return false;
            }
        }
        true
    }

    pub(crate) fn close(&mut self, sock: SockId) {
        // Dropping the OwnedFd closes it; the caller guarantees no operation uses it.
        drop(self.socks.remove(sock.0));
    }

    pub(crate) fn unsent(&self, sock: SockId) -> usize {
        self.socks.get(sock.0).map_or(0, crate::sys::unsent_bytes)
    }

    pub(crate) fn make_abortive(&mut self, sock: SockId) {
        if let Some(fd) = self.socks.get(sock.0) {
            if let Err(e) = crate::sys::set_linger_zero(fd) {
                tracing::debug!("SO_LINGER 0 on socket {} failed: {e}", sock.0);
            }
        }
    }

    /// Closes abortively: the kernel resets the connection and frees its buffers at once.
    pub(crate) fn abort(&mut self, sock: SockId) {
        let fd = self.socks.remove(sock.0);
        if let Err(e) = crate::sys::set_linger_zero(&fd) {
            tracing::debug!("SO_LINGER 0 on socket {} failed: {e}", sock.0);
        }
        drop(fd);
    }

    /// Operations started and not completed; the driver's own entries (wake-up poll,
    /// timers) are not counted.
    pub(crate) fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Testing aid: the tallies of rarely taken paths so far.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> super::DriverCounters {
        super::DriverCounters { parked: self.starved.len(), ..self.counters }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Invariant 1 at teardown: cancel what is in flight and reap it before its memory
        // goes; whatever the kernel has not released in time is leaked, never freed. The
        // driver's own entries (wake-up poll, timers) are cancelled but not waited for.
        self.dropping = true;
        let ids: Vec<OpId> = self.ops.iter().map(|(k, op)| OpId::new(k, op.gen)).collect();
        for id in ids {
            self.cancel(id);
        }
        if self.wake_armed {
            self.cancel_ud(WAKE_UD);
        }
        let timers: Vec<usize> = self.timers.iter().map(|(k, _)| k).collect();
        for key in timers {
            self.cancel_ud(timer_ud(key));
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut sink = Vec::new();
        // One round even with no operation: it submits the cancels and reaps what is ready.
        let mut first = true;
        while (first || !self.ops.is_empty()) && Instant::now() < deadline {
            let timeout = if first { Duration::ZERO } else { Duration::from_millis(10) };
            first = false;
            if self.wait(Some(timeout), None, &mut sink).is_err() {
                break;
            }
            sink.clear();
        }
        if !self.timers.is_empty() {
            // A few bytes each; the kernel copied them when it took the entry, but the
            // rule is the rule.
            std::mem::forget(std::mem::take(&mut self.timers));
        }
        if !self.ops.is_empty() {
            tracing::warn!(
                "{} io_uring operations still in flight at teardown; leaking their buffers",
                self.ops.len()
            );
            std::mem::forget(std::mem::take(&mut self.ops));
            std::mem::forget(self.bufring.take());
            std::mem::forget(std::mem::take(&mut self.pool));
            std::mem::forget(std::mem::take(&mut self.overflow));
        }
    }
}

#[cfg(all(test, not(servercore_loom)))]
mod tests {
    use super::*;

    /// Prints the per-socket and per-operation sizes (`--ignored --nocapture`).
    #[test]
    #[ignore]
    fn print_driver_sizes() {
        use std::mem::size_of;
        println!("uring Op {}", size_of::<Op>());
        println!("uring OpState {}", size_of::<OpState>());
        println!("uring SendOp {}", size_of::<SendOp>());
        println!("OwnedFd {}", size_of::<OwnedFd>());
    }

    /// A submission error that persists becomes the error of `wait` and `submit` (the
    /// worker logs it and shuts down) instead of a loop inside `push`; entries the kernel
    /// did not take wait in order and go in once it takes them again, each completing once.
    #[test]
    fn persistent_submit_failure_is_an_error_not_a_loop() {
        if let Err(why) = probe() {
            eprintln!("skipped: io_uring is not usable here ({why})");
            return;
        }
        let config = DriverConfig { sq_entries: 2, ..DriverConfig::default() };
        let mut d = UringDriver::new(&config).expect("driver");
        d.fail_submit = Some(libc::EINVAL);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let l = d.add_listener(l).unwrap();
        // Eight entries for a queue of two.
        let ops: Vec<OpId> = (0..8).map(|owner| d.accept(l, owner)).collect();
        assert!(!d.overflow.is_empty());
        let mut out = Vec::new();
        let e = d.wait(Some(Duration::from_millis(10)), None, &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(d.submit().unwrap_err().raw_os_error(), Some(libc::EINVAL));
        d.fail_submit = None;
        d.submit().expect("submit");
        for op in ops {
            d.cancel(op);
        }
        let mut ended = [false; 8];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ended.iter().all(|&e| e) {
            assert!(Instant::now() < deadline, "not every accept ended: {ended:?}");
            out.clear();
            d.wait(Some(Duration::from_millis(100)), None, &mut out).expect("wait");
            for c in out.drain(..) {
                let CompletionKind::Accept { result: Err(_), armed: false } = c.kind else {
                    panic!("{c:?}")
                };
                assert!(!std::mem::replace(&mut ended[c.owner as usize], true), "two ends");
            }
        }
        assert_eq!(d.in_flight(), 0);
    }
}
