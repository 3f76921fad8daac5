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
    Accept {
        fd: i32,
        multishot: bool,
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
    /// Testing hook: every `io_uring_enter` that submits fails with this errno.
    #[cfg(test)]
    pub(crate) fail_submit: Option<i32>,
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
            next_gen: 0,
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
        self.next_gen = gen.wrapping_add(1);
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
            // SAFETY: invariant 1, as above: the caller keeps the entry's memory alive.
            if self.submit_now() && unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.overflow.push_back(entry);
    }

    /// Hands the submission queue to the kernel; false when it took none (EBUSY, EAGAIN,
    /// or an error, which is kept for the next `wait`/`submit`).
    fn submit_now(&mut self) -> bool {
        for _ in 0..3 {
            #[cfg(test)]
            if let Some(errno) = self.fail_submit {
                self.submit_error.get_or_insert(io::Error::from_raw_os_error(errno));
                return false;
            }
            match self.ring.submit() {
                Ok(_) => return true,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => return false,
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

    fn push_accept(&mut self, key: usize, fd: i32, multishot: bool) {
        let entry = if multishot {
            opcode::AcceptMulti::new(types::Fd(fd)).flags(libc::SOCK_CLOEXEC).build()
        } else {
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        let ud = self.ud(key);
        // SAFETY: an accept without an address buffer points at no user memory.
        unsafe { self.push(entry.user_data(ud)) };
    }

    pub(crate) fn accept(&mut self, sock: SockId, owner: u64) -> OpId {
        let fd = self.fd(sock);
        let multishot = self.multishot_accept;
        let id = self.insert_op(owner, OpState::Accept { fd, multishot });
        self.push_accept(id.slot(), fd, multishot);
        id
    }

    pub(crate) fn recv(&mut self, sock: SockId, owner: u64) -> OpId {
        let fd = self.fd(sock);
        let multishot = self.multishot_recv;
        let state = OpState::Recv { fd, multishot, buf: None, cancelled: false };
        let id = self.insert_op(owner, state);
        self.push_recv(id.slot());
        id
    }

    /// Arms (or re-arms) the receive `key`.
    fn push_recv(&mut self, key: usize) {
        let OpState::Recv { fd, multishot, .. } = self.ops[key].state else { return };
        let ud = self.ud(key);
        if multishot {
            let bgid = self.bufring.as_ref().map_or(0, |b| b.bgid);
            let entry = opcode::RecvMulti::new(types::Fd(fd), bgid).build().user_data(ud);
            // SAFETY: the kernel writes only into buffer-ring buffers, which live until the
            // ring is closed (invariant 1); the entry points at no other memory.
            unsafe { self.push(entry) };
            return;
        }
        let index = match self.pool_free.pop() {
            Some(i) => i,
            None => {
                self.pool.push(vec![0u8; self.recv_size].into_boxed_slice());
                (self.pool.len() - 1) as u32
            }
        };
        let buf = &mut self.pool[index as usize];
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        if let OpState::Recv { buf, .. } = &mut self.ops[key].state {
            *buf = Some(index);
        }
        let entry = opcode::Recv::new(types::Fd(fd), ptr, len).build().user_data(ud);
        // SAFETY: invariant 1: pool buffer `index` is owned by this operation (off the free
        // list) until its completion is reaped; the pool's boxes never move or shrink.
        unsafe { self.push(entry) };
    }

    pub(crate) fn lease(&self, lease: &RecvLease) -> &[u8] {
        match &self.bufring {
            Some(ring) if lease.buf & POOL_BIT == 0 => {
                ring.data(lease.buf as u16, lease.len as usize)
            }
            _ => &self.pool[(lease.buf & !POOL_BIT) as usize][..lease.len as usize],
        }
    }

    pub(crate) fn release(&mut self, lease: RecvLease) {
        if lease.buf & POOL_BIT != 0 {
            self.pool_free.push(lease.buf & !POOL_BIT);
        } else if let Some(ring) = &mut self.bufring {
            ring.push(lease.buf as u16);
            self.bufring_dirty = true;
        }
    }

    pub(crate) fn send(&mut self, sock: SockId, owner: u64, bufs: SendBatch) -> OpId {
        let fd = self.fd(sock);
        let mut op = self.send_pool.pop().unwrap_or_else(|| {
            Box::new(SendOp {
                bufs: SendBatch::new(),
                iovs: Vec::new(),
                // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        op.bufs = bufs;
        op.iovs.clear();
        for b in &op.bufs {
            // Buffers carved one after another from a pooled chunk (PacketWriter,
            // SendBuffer::copy_from_slice) sit back to back in memory: one iovec covers them,
            // so the kernel imports fewer iovecs and copies larger runs.
            if let Some(last) = op.iovs.last_mut() {
                if (last.iov_base as usize).wrapping_add(last.iov_len) == b.as_ptr() as usize {
                    last.iov_len += b.len();
                    continue;
                }
            }
            op.iovs
                .push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
        }
        op.msg.msg_iov = op.iovs.as_mut_ptr();
        op.msg.msg_iovlen = op.iovs.len() as _;
        let msg: *const libc::msghdr = &op.msg;
        // One buffer: a plain send, which spares the kernel the msghdr and iovec import.
        let single = match op.iovs.as_slice() {
            [one] if one.iov_len <= u32::MAX as usize => {
                Some((one.iov_base as *const u8, one.iov_len as u32))
            }
            _ => None,
        };
        let id = self.insert_op(owner, OpState::Send(op));
        let entry = match single {
            Some((ptr, len)) => {
                opcode::Send::new(types::Fd(fd), ptr, len).flags(libc::MSG_NOSIGNAL).build()
            }
            None => {
                opcode::SendMsg::new(types::Fd(fd), msg).flags(libc::MSG_NOSIGNAL as u32).build()
            }
        };
        // SAFETY: invariant 1: the boxed SendOp (msghdr, iovecs) and the Bytes the iovecs
        // and the single-buffer pointer point into stay in `ops[key]` until reaped. A merged
        // iovec spans only bytes of those buffers (adjacent ranges, each valid to read).
        unsafe { self.push(entry.user_data(id.to_u64())) };
        id
    }

    pub(crate) fn connect(&mut self, sock: SockId, owner: u64, addr: SocketAddr) -> OpId {
        let fd = self.fd(sock);
        let addr = Box::new(SockAddr::from(addr));
        let (ptr, len) = (addr.as_ptr().cast::<libc::sockaddr>(), addr.len());
        let id = self.insert_op(owner, OpState::Connect(addr));
        let entry = opcode::Connect::new(types::Fd(fd), ptr, len).build().user_data(id.to_u64());
        // SAFETY: invariant 1: the boxed address stays in `ops[key]` until reaped.
        unsafe { self.push(entry) };
        id
    }

    /// Cancels `op` if it is still in flight; an id whose operation has finished (its
    /// slot perhaps reused since) is ignored.
    pub(crate) fn cancel(&mut self, op: OpId) {
        let key = op.slot();
        match self.ops.get_mut(key) {
            Some(o) if o.gen == op.gen() => {
                if let OpState::Recv { cancelled, .. } = &mut o.state {
                    *cancelled = true; // not re-armed after its next chunk
                }
            }
            _ => {
                tracing::debug!("cancel of a finished io_uring operation {op:?}: ignored");
                return;
            }
        }
        if let Some(i) = self.starved.iter().position(|&k| k == key) {
            // Not armed in the kernel (waiting for buffers): complete it here, for the next
            // `wait` to hand out.
            self.starved.swap_remove(i);
            let owner = self.ops.remove(key).owner;
            let result = Err(io::Error::from_raw_os_error(libc::ECANCELED));
            self.backlog
                .push(Completion { owner, kind: CompletionKind::Recv { result, armed: false } });
            return;
        }
        self.cancel_ud(op.to_u64());
    }

    /// Asks the kernel to cancel the entry with this `user_data`.
    fn cancel_ud(&mut self, ud: u64) {
        let entry = opcode::AsyncCancel::new(ud).build().user_data(CANCEL_UD);
        // SAFETY: a cancel request points at no user memory.
        unsafe { self.push(entry) };
    }

    pub(crate) fn close(&mut self, sock: SockId) {
        // Dropping the OwnedFd closes it; the caller guarantees no operation uses it.
        drop(self.socks.remove(sock.0));
    }

    pub(crate) fn unsent(&self, sock: SockId) -> usize {
        self.socks.get(sock.0).map_or(0, crate::sys::unsent_bytes)
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

    /// Arms the poll on the wake-up eventfd: POLL_ADD rather than a read, since a read of a
    /// non-blocking eventfd may complete at once with EAGAIN (a spin). Multishot where the
    /// kernel has it; the counter is drained when it fires (`complete_wake`).
    fn arm_wake(&mut self) {
        let poll = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32);
        let entry = poll.multi(self.multishot_poll).build().user_data(WAKE_UD);
        // SAFETY: a poll points at no user memory; the eventfd stays open while the ring
        // lives (the driver's `waker` holds it).
        unsafe { self.push(entry) };
        self.wake_armed = true;
    }

    /// The wake-up poll fired (or ended).
    fn complete_wake(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.wake_armed = false; // re-armed by the next `wait`
        }
        if res < 0 {
            if res == -libc::EINVAL && self.multishot_poll {
                tracing::info!("multishot poll unsupported; re-arming the wake-up poll");
                self.multishot_poll = false;
            } else if res != -libc::ECANCELED {
                tracing::warn!("wake-up poll failed: {}", io::Error::from_raw_os_error(-res));
            }
            return;
        }
        // Consume the signal first, then reset the flag (the order matters: wake.rs).
        if let WakerInner::EventFd(fd) = &self.waker.inner {
            if let Err(e) = fd.drain() {
                tracing::error!("draining the wake-up eventfd failed: {e}");
            }
        }
        self.waker.reset();
    }

    /// Hands the queued submissions to the kernel now (sends run inline, so this is
    /// where most of a busy turn's work happens).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.flush_overflow() {
            self.submit_now();
        }
        match self.submit_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        gather: Option<Gather>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        out.append(&mut self.backlog);
        let flushed = self.prepare_wait()?;
        // Completions already in hand, or entries the kernel did not take (reap first):
        // only submit and collect what else is ready.
        let timeout = if out.is_empty() && flushed { timeout } else { Some(Duration::ZERO) };
        let (timeout, want, gathering) = self.plan_wait(timeout, gather);
        self.enter(timeout, want)?;
        let before = out.len();
        self.reap(out);
        if let Some(key) = self.timer.take() {
            // The wait ended for another reason: the timer must not end a later one.
            self.cancel_ud(timer_ud(key));
        }
        // A busy fan-out turn that did not gather (see `reap_all_deferred`).
        if gather.is_some() && !gathering && out.len() - before >= BUSY_TURN {
            self.reap_all_deferred(out)?;
        }
        self.check_stalled(out.len() > before)
    }

    /// What a wait does before entering the kernel: re-arms the wake-up poll and starved
    /// receives, publishes returned ring buffers, and hands queued entries to the kernel.
    /// Returns whether every queued entry went in.
    fn prepare_wait(&mut self) -> io::Result<bool> {
        if let Some(e) = self.submit_error.take() {
            return Err(e);
        }
        if !self.wake_armed && !self.dropping {
            self.arm_wake();
        }
        if self.bufring_dirty {
            self.bufring_dirty = false;
            if let Some(ring) = &self.bufring {
                ring.publish();
            }
        }
        if !self.dropping {
            for key in std::mem::take(&mut self.starved) {
                if self.ops.contains(key) {
                    self.push_recv(key);
                }
            }
        }
        let flushed = self.flush_overflow();
        match self.submit_error.take() {
            Some(e) => Err(e),
            None => Ok(flushed),
        }
    }

    /// The timeout and the number of completions to wait for, and whether this wait
    /// gathers. Without EXT_ARG the timeout becomes a TIMEOUT entry (armed here).
    fn plan_wait(
        &mut self,
        mut timeout: Option<Duration>,
        gather: Option<Gather>,
    ) -> (Option<Duration>, usize, bool) {
        let mut want = 1;
        // Without EXT_ARG (before 5.11) the timeout is a TIMEOUT operation, whose one
        // completion would not end a wait for many: such kernels do not gather.
        let gathering = gather.filter(|g| !g.window.is_zero() && self.ext_arg);
        if let Some(g) = gathering {
            // Sleep through the window unless much is ready: those ready now plus a
            // submission queue's worth more (the work of a saturated turn).
            timeout = Some(timeout.map_or(g.window, |t| t.min(g.window)));
            // Also stop before receives could take half the buffer ring (ENOBUFS would
            // end multishot receives, to be re-armed).
            let cq = self.ring.params().cq_entries() as usize;
            let headroom =
                self.bufring.as_ref().map_or(self.sq_entries as usize, |b| b.count() / 2);
            want = (self.ring.completion().len() + headroom.max(1)).min(cq);
        }
        if !self.ext_arg {
            if let Some(d) = timeout.filter(|d| !d.is_zero()) {
                self.arm_timer(d);
                if !self.overflow.is_empty() {
                    timeout = Some(Duration::ZERO); // the timer is not in the kernel
                }
            }
        }
        (timeout, want, gathering.is_some())
    }

    /// Submits and waits for `want` completions or the timeout (`None`: no timeout; zero:
    /// do not wait). A wait cut short (timeout, signal, busy completion queue) is no error.
    fn enter(&mut self, timeout: Option<Duration>, want: usize) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = self.fail_submit {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let result = match timeout {
            None => self.ring.submit_and_wait(want),
            Some(d) if self.ext_arg => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            Some(d) if d.is_zero() => self.ring.submit(),
            Some(_) => self.ring.submit_and_wait(want),
        };
        match result.map_err(|e| (e.raw_os_error(), e)) {
            Ok(_) => Ok(()),
            Err((Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN), _)) => Ok(()),
            Err((_, e)) => Err(e),
        }
    }

    /// With DEFER_TASKRUN, one enter runs only a bounded batch of deferred completions
    /// (20 on recent kernels, unless more are asked for; a gathering wait asks for more).
    /// After a busy fan-out turn that did not gather, this asks once more, without waiting,
    /// for everything that is ready, so that the fan-out sees all ready sockets rather than
    /// 20. Other turns do not: for echo-like work, smaller turns cost less (BENCHMARKS.md).
    fn reap_all_deferred(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.deferred_in_batches {
            return Ok(());
        }
        let ts = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&ts);
        let want = self.ring.params().cq_entries() as usize;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => return Err(e),
            },
        }
        self.reap(out);
        Ok(())
    }

    /// Entries the kernel keeps refusing while nothing completes: a broken ring, not a
    /// busy one (a backed-up completion queue drains as it is reaped).
    fn check_stalled(&mut self, reaped: bool) -> io::Result<()> {
        if self.overflow.is_empty() || reaped {
            self.stalled = 0;
            return Ok(());
        }
        self.stalled += 1;
        if self.stalled >= STALL_LIMIT {
            return Err(io::Error::other(format!(
                "io_uring: the kernel took none of {} queued submissions in {STALL_LIMIT} waits",
                self.overflow.len()
            )));
        }
        Ok(())
    }

    /// A wait timer (kernels without EXT_ARG): a TIMEOUT that also ends once one other
    /// completion arrives, so it rarely outlives its wait.
    fn arm_timer(&mut self, d: Duration) {
        let ts = types::Timespec::from(d);
        let boxed = match self.spare_timers.pop() {
            Some(mut b) => {
                *b = ts;
                b
            }
            None => Box::new(ts),
        };
        let key = self.timers.insert(boxed);
        let ptr: *const types::Timespec = &*self.timers[key];
        let entry = opcode::Timeout::new(ptr).count(1).build().user_data(timer_ud(key));
        // SAFETY: invariant 1: the boxed timespec stays in `timers` until this entry's
        // completion is reaped (or is leaked at teardown).
        unsafe { self.push(entry) };
        self.timer = Some(key);
    }

    /// Moves every ready completion out of the ring and turns it into a [`Completion`].
    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion());
        for cqe in cqes.drain(..) {
            self.complete(cqe.user_data(), cqe.result(), cqe.flags(), out);
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32, out: &mut Vec<Completion>) {
        let id = OpId::from_u64(user_data);
        match user_data as u32 {
            CANCEL_SLOT => return,
            WAKE_SLOT => return self.complete_wake(res, flags),
            TIMER_SLOT => {
                let key = id.gen() as usize;
                if let Some(b) = self.timers.try_remove(key) {
                    self.spare_timers.push(b);
                }
                if self.timer == Some(key) {
                    self.timer = None;
                }
                return;
            }
            _ => {}
        }
        let key = id.slot();
        if !self.ops.get(key).is_some_and(|op| op.gen == id.gen()) {
            // Every operation completes once; this would be a kernel or driver error.
            tracing::debug!("io_uring completion of no current operation ({id:?}): ignored");
            return;
        }
        // The kernel keeps a multishot operation armed after this completion.
        let kernel_armed = cqueue::more(flags);
        let owner = self.ops[key].owner;
        let err = || io::Error::from_raw_os_error(-res);
        if let OpState::Accept { fd, multishot } = self.ops[key].state {
            if multishot && res == -libc::EINVAL && !kernel_armed {
                // Kernel without multishot accept (before 5.19): single-shot from now on.
                tracing::info!("multishot accept unsupported; using single-shot accept");
                self.multishot_accept = false;
                self.ops[key].state = OpState::Accept { fd, multishot: false };
                if !self.dropping {
                    self.push_accept(key, fd, false);
                    return;
                }
            }
            let armed = multishot && kernel_armed;
            let result = if res >= 0 {
                // SAFETY: a successful accept's result is a new fd that nobody else owns.
                Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) }))
            } else {
                Err(err())
            };
            if !armed {
                self.ops.remove(key);
            }
            out.push(Completion { owner, kind: CompletionKind::Accept { result, armed } });
            return;
        }
        if let OpState::Recv { .. } = self.ops[key].state {
            return self.complete_recv(key, res, flags, out);
        }
        let op = self.ops.remove(key);
        let kind = match op.state {
            OpState::Accept { .. } => unreachable!("handled above"),
            OpState::Recv { .. } => unreachable!("handled above"),
            OpState::Send(mut send) => {
                let bufs = std::mem::take(&mut send.bufs);
                send.iovs.clear();
                self.send_pool.push(send);
                let result = if res >= 0 { Ok(res as usize) } else { Err(err()) };
                CompletionKind::Send { result, bufs }
            }
            OpState::Connect(_addr) => {
                let result = if res >= 0 { Ok(()) } else { Err(err()) };
                CompletionKind::Connect { result }
            }
        };
        out.push(Completion { owner, kind });
    }
}

impl UringDriver {
    /// One completion of the standing receive in slot `key`.
    ///
    /// A standing receive is re-armed after each chunk the kernel ends it with, unless it
    /// was cancelled (or the driver is going away): then that chunk is its final
    /// completion (`armed == false`), so a cancel always ends it even while bytes keep
    /// arriving.
    fn complete_recv(&mut self, key: usize, res: i32, flags: u32, out: &mut Vec<Completion>) {
        let owner = self.ops[key].owner;
        let OpState::Recv { multishot, buf, cancelled, .. } = self.ops[key].state else {
            unreachable!("complete_recv of a receive")
        };
        let stop = cancelled || self.dropping;
        // The kernel keeps this multishot receive armed after this completion.
        let kernel_armed = multishot && cqueue::more(flags);
        if res > 0 {
            let Some(lease) = recv_lease(multishot, buf, res, flags) else { return };
            let armed = kernel_armed || self.rearm_recv(key, stop);
            out.push(Completion {
                owner,
                kind: CompletionKind::Recv { result: Ok(Some(lease)), armed },
            });
            return;
        }
        if let Some(index) = buf {
            self.pool_free.push(index);
        }
        if kernel_armed {
            return; // an empty, non-final completion carries nothing
        }
        if multishot && !stop && self.retry_multishot_recv(key, res) {
            return;
        }
        self.ops.remove(key);
        let result = match res {
            0 => Ok(None),
            e if e == -libc::ENOBUFS || e == -libc::EINVAL => {
                Err(io::Error::from_raw_os_error(libc::ECANCELED))
            }
            e => Err(io::Error::from_raw_os_error(-e)),
        };
        out.push(Completion { owner, kind: CompletionKind::Recv { result, armed: false } });
    }

    /// After a chunk that ended a receive: arms it again, or (`stop`) lets it end.
    /// Returns whether the receive goes on.
    fn rearm_recv(&mut self, key: usize, stop: bool) -> bool {
        if stop {
            self.ops.remove(key);
            false
        } else {
            self.push_recv(key); // keep receiving
            true
        }
    }

    /// A multishot receive the kernel ended without bytes: whether it goes on, either
    /// re-armed at the next wait (ENOBUFS) or as single-shot receives (EINVAL).
    fn retry_multishot_recv(&mut self, key: usize, res: i32) -> bool {
        if res == -libc::ENOBUFS {
            // Every buffer is in use: re-armed at the next wait, after the worker has given
            // buffers back. The bytes wait in the socket meanwhile.
            self.starved.push(key);
            return true;
        }
        if res == -libc::EINVAL {
            // A kernel without multishot receive (before 6.0): single-shot from now on. The
            // ring stays registered (and alive) until the io_uring closes.
            tracing::info!("multishot receive unsupported; using single-shot receives");
            self.multishot_recv = false;
            if let OpState::Recv { multishot, buf, .. } = &mut self.ops[key].state {
                *multishot = false;
                *buf = None;
            }
            self.push_recv(key);
            return true;
        }
        false
    }
}

/// The lease of a receive completion with `res` bytes: a buffer-ring buffer (multishot) or
/// the pool buffer the receive was given.
fn recv_lease(multishot: bool, buf: Option<u32>, res: i32, flags: u32) -> Option<RecvLease> {
    if multishot {
        let Some(bid) = cqueue::buffer_select(flags) else {
            tracing::error!("multishot receive completed without a buffer id");
            return None;
        };
        Some(RecvLease { buf: u32::from(bid), len: res as u32 })
    } else {
        Some(RecvLease { buf: buf? | POOL_BIT, len: res as u32 })
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
