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
//! Accepting and receiving are capped per `wait` ([`ACCEPT_BATCH`] connections per
//! listener, [`RECV_BATCH`] chunks per stream) so that a flood on one socket cannot starve
//! the others. A capped socket keeps its flag set and goes on the `again` list, which the
//! next `wait` drives first (without blocking in the poll) behind the sockets queued since.
//!
//! # Receiving
//!
//! A recv is a standing operation: while it is pending and the socket is readable, the
//! driver reads into a free buffer of its pool ([`RECV_BUF`] bytes each) and completes a
//! chunk with a [`RecvLease`] on it, `more == true`; end of stream (`Ok(None)`), an error
//! or a cancel completes it with `more == false`. A buffer is taken from the pool only for
//! a read and kept only if the read brought bytes, so an idle session holds none. The
//! caller gives it back with [`PollDriver::release`].
//!
//! The pool grows on demand up to [`POOL_MAX`] buffers and never shrinks. Should it run
//! dry (leases held too long, or very many sockets receiving at once), the sockets that
//! wanted a buffer go on the `starved` list with their readable flag still set: receiving
//! pauses without spinning (they are not dirty) and no byte is lost (it stays in the
//! kernel). The next [`PollDriver::release`] queues them again ahead of everything else; a
//! socket that got some chunks before the pool ran dry goes behind those that got none.
//!
//! # Cancellation
//!
//! [`PollDriver::cancel`] marks the operation doomed and queues it; the next `wait` takes
//! it off its socket and completes it with `ECANCELED` (on non-Unix: `Interrupted`) before
//! any I/O is attempted, returning its buffers (a recv: `more == false`; its chunks leased
//! so far are the caller's until released). Operations started on an unknown socket
//! (or a second operation of a kind already pending) are failed the same way, with their
//! own error.
//!
//! # Memory
//!
//! No system call keeps a pointer into an operation's memory beyond the call itself, so
//! invariant 1 of DESIGN.md holds trivially: send buffers live in the operation table until
//! the completion hands them back, and receive buffers live in the pool, lent out by index.

use super::{
    Completion, CompletionKind, Gather, OpId, RecvLease, SendBatch, SockId, Waker, WakerInner,
};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{SockAddr, SockRef};
use std::io::{self, IoSlice, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The token of the waker; socket tokens are slab keys, far below it.
const WAKE_TOKEN: Token = Token(usize::MAX - 1);
/// Most connections accepted from one listener per pass, for fairness.
const ACCEPT_BATCH: usize = 64;
/// Most chunks read from one stream per `wait`, for fairness.
const RECV_BATCH: usize = 4;
/// Size of a receive buffer: the most bytes one chunk carries.
const RECV_BUF: usize = 16 << 10;
/// Most receive buffers the pool allocates (16 MiB): beyond it receiving pauses until
/// leases come back.
const POOL_MAX: usize = 1024;
/// Buffers per gather write here (a stack array); one send takes up to `MAX_IOVECS` in
/// several writes.
const SEND_SLICES: usize = 64;
/// Capacity of the event buffer handed to `mio::Poll::poll`.
const EVENTS_CAPACITY: usize = 1024;

/// A socket owned by the driver.
enum Io {
    Listener(mio::net::TcpListener),
    Stream(mio::net::TcpStream),
}

impl Io {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Io::Listener(l) => l,
            Io::Stream(s) => s,
        }
    }
}

/// A socket and its readiness state and pending operations (keys into `ops`).
struct Sock {
    io: Io,
    /// No read-side attempt has seen `WouldBlock` since the last readable edge.
    readable: bool,
    /// No write-side attempt has seen `WouldBlock` since the last writable edge.
    writable: bool,
    /// On the dirty or the `again` list already.
    queued: bool,
    /// On the `starved` list: a recv wanted a buffer when the pool had none.
    starved: bool,
    accept: Option<usize>,
    recv: Option<usize>,
    send: Option<usize>,
    connect: Option<usize>,
}

impl Sock {
    fn new(io: Io) -> Self {
        Sock {
            io,
            readable: true,
            writable: true,
            queued: false,
            starved: false,
            accept: None,
            recv: None,
            send: None,
            connect: None,
        }
    }

    /// The pending-operation slot of the given kind.
    fn slot(&mut self, kind: Kind) -> &mut Option<usize> {
        match kind {
            Kind::Accept => &mut self.accept,
            Kind::Recv => &mut self.recv,
            Kind::Send => &mut self.send,
            Kind::Connect => &mut self.connect,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Accept,
    Recv,
    Send,
    Connect,
}

/// One operation started and not yet completed.
struct Op {
    owner: u64,
    /// The generation of this use of the slot: an [`OpId`] of a finished operation never
    /// reaches a newer one in the same slot.
    gen: u32,
    sock: usize,
    /// Queued on `doomed` to complete with an error at the next `wait`.
    doomed: bool,
    state: OpState,
}

/// What an operation is, with its memory. `Accept` and `Recv` are standing: they complete
/// once per connection or chunk until a completion with `more == false`.
enum OpState {
    Accept,
    Recv,
    Send(SendBatch),
    Connect { addr: SocketAddr, started: bool },
}

impl OpState {
    fn kind(&self) -> Kind {
        match self {
            OpState::Accept => Kind::Accept,
            OpState::Recv => Kind::Recv,
            OpState::Send(_) => Kind::Send,
            OpState::Connect { .. } => Kind::Connect,
        }
    }

    /// The completion of this operation with `err`, returning its memory.
    fn fail(self, err: io::Error) -> CompletionKind {
        match self {
            OpState::Accept => CompletionKind::Accept { result: Err(err), more: false },
            OpState::Recv => CompletionKind::Recv { result: Err(err), more: false },
            OpState::Send(bufs) => CompletionKind::Send { result: Err(err), bufs },
            OpState::Connect { .. } => CompletionKind::Connect { result: Err(err) },
        }
    }
}

/// The error of a cancelled operation.
fn cancelled() -> io::Error {
    #[cfg(unix)]
    {
        io::Error::from_raw_os_error(libc::ECANCELED)
    }
    #[cfg(not(unix))]
    {
        io::Error::new(io::ErrorKind::Interrupted, "operation cancelled")
    }
}

/// Whether a non-blocking `connect` is under way rather than failed.
fn connect_in_progress(e: &io::Error) -> bool {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
        return true;
    }
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EINPROGRESS)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// The receive buffers of a driver, lent out chunk by chunk.
struct Pool {
    bufs: Vec<Box<[u8]>>,
    /// Buffers not lent out, the most recently returned last (taken first: cache-warm).
    free: Vec<u32>,
    /// Which buffers are lent out (guards against a double release).
    lent: Vec<bool>,
    /// Most buffers to allocate ([`POOL_MAX`]; smaller in tests).
    max: usize,
}

impl Pool {
    fn new() -> Self {
        Pool { bufs: Vec::new(), free: Vec::new(), lent: Vec::new(), max: POOL_MAX }
    }

    /// A buffer for one read, allocating one if none is free; `None` at the limit. The
    /// buffer must be lent out or put back.
    fn take(&mut self) -> Option<u32> {
        if let Some(buf) = self.free.pop() {
            return Some(buf);
        }
        if self.bufs.len() >= self.max {
            return None;
        }
        let buf = u32::try_from(self.bufs.len()).ok()?;
        self.bufs.push(vec![0u8; RECV_BUF].into_boxed_slice());
        self.lent.push(false);
        Some(buf)
    }
}

/// What driving a socket left to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// Nothing that needs no new edge.
    Idle,
    /// Capped: more to do at the next `wait` without a new edge.
    Again,
    /// A recv wanted a buffer and the pool had none; `served`: it got chunks first.
    Starved { served: bool },
}

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
            next_gen: 0,
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

    /// Registers a socket under its slab key and stores it.
    fn insert(&mut self, io: Io, interest: Interest) -> io::Result<SockId> {
        let entry = self.socks.vacant_entry();
        let key = entry.key();
        let mut sock = Sock::new(io);
        self.poll.registry().register(sock.io.source(), Token(key), interest)?;
        entry.insert(sock);
        Ok(SockId(key))
    }

    pub(crate) fn add_listener(&mut self, l: TcpListener) -> io::Result<SockId> {
        l.set_nonblocking(true)?;
        let l = mio::net::TcpListener::from_std(l);
        self.insert(Io::Listener(l), Interest::READABLE)
    }

    pub(crate) fn add_stream(&mut self, s: TcpStream) -> io::Result<SockId> {
        s.set_nonblocking(true)?;
        // Where sends cannot say MSG_NOSIGNAL, the socket says it once.
        #[cfg(any(
            target_os = "macos",
            target_os = "ios",
            target_os = "tvos",
            target_os = "watchos",
            target_os = "visionos"
        ))]
        SockRef::from(&s).set_nosigpipe(true)?;
        let s = mio::net::TcpStream::from_std(s);
        // Registered for both directions at once, even before a connect: an unconnected
        // socket may report a spurious edge, which the connect check tells apart.
        self.insert(Io::Stream(s), Interest::READABLE | Interest::WRITABLE)
    }

    /// Records a new operation on `sock` and queues the socket for the next `wait`.
    fn start(&mut self, sock: SockId, owner: u64, state: OpState) -> OpId {
        let kind = state.kind();
        let gen = self.next_gen;
        self.next_gen = gen.wrapping_add(1);
        let key = self.ops.insert(Op { owner, gen, sock: sock.0, doomed: false, state });
        let problem = match self.socks.get_mut(sock.0) {
            None => Some(io::Error::new(io::ErrorKind::NotFound, "unknown socket")),
            Some(s) => {
                let fits = matches!(
                    (&s.io, kind),
                    (Io::Listener(_), Kind::Accept)
                        | (Io::Stream(_), Kind::Recv | Kind::Send | Kind::Connect)
                );
                let slot = s.slot(kind);
                if !fits {
                    Some(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "operation does not apply to this kind of socket",
                    ))
                } else if slot.is_some() {
                    tracing::warn!("a {kind:?} is already pending on socket {}", sock.0);
                    Some(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "an operation of this kind is already pending on the socket",
                    ))
                } else {
                    *slot = Some(key);
                    if !s.queued {
                        s.queued = true;
                        self.dirty.push(sock.0);
                    }
                    None
                }
            }
        };
        if let Some(err) = problem {
            self.ops[key].doomed = true;
            self.doomed.push((key, err));
        }
        OpId::new(key, gen)
    }

    /// Stays armed until cancelled or an error (`more == false`). Accepted streams come
    /// back non-blocking (as `mio` accepts them); `add_stream` of either backend sets the
    /// mode it needs.
    pub(crate) fn accept(&mut self, sock: SockId, owner: u64) -> OpId {
        self.start(sock, owner, OpState::Accept)
    }

    /// Stays armed, one completion per chunk, until end of stream, an error or a cancel
    /// (`more == false`).
    pub(crate) fn recv(&mut self, sock: SockId, owner: u64) -> OpId {
        self.start(sock, owner, OpState::Recv)
    }

    /// The bytes of a chunk. Panics on a lease this driver did not give.
    pub(crate) fn lease(&self, lease: &RecvLease) -> &[u8] {
        debug_assert!(self.pool.lent[lease.buf as usize], "lease of a buffer not lent out");
        &self.pool.bufs[lease.buf as usize][..lease.len as usize]
    }

    /// Gives a chunk's buffer back, resuming receives paused for want of one.
    pub(crate) fn release(&mut self, lease: RecvLease) {
        let buf = lease.buf as usize;
        let lent = self.pool.lent.get(buf).copied().unwrap_or(false);
        debug_assert!(lent, "release of buffer {buf}, which is not lent out");
        if !lent {
            tracing::error!("release of receive buffer {buf}, which is not lent out: ignored");
            return;
        }
        self.pool.lent[buf] = false;
        self.pool.free.push(lease.buf);
        if !self.starved.is_empty() {
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

    pub(crate) fn send(&mut self, sock: SockId, owner: u64, bufs: SendBatch) -> OpId {
        self.start(sock, owner, OpState::Send(bufs))
    }

    pub(crate) fn connect(&mut self, sock: SockId, owner: u64, addr: SocketAddr) -> OpId {
        self.start(sock, owner, OpState::Connect { addr, started: false })
    }

    /// Cancels `op` if it is still in flight; an id whose operation has finished (its slot
    /// perhaps reused since) is ignored.
    pub(crate) fn cancel(&mut self, op: OpId) {
        if let Some(o) = self.ops.get_mut(op.slot()) {
            if o.gen == op.gen() && !o.doomed {
                o.doomed = true;
                self.doomed.push((op.slot(), cancelled()));
            }
        }
    }

    /// Cancels the operation in slot `key`, whatever its generation.
    fn cancel_slot(&mut self, key: usize) {
        if let Some(o) = self.ops.get(key) {
            self.cancel(OpId::new(key, o.gen));
        }
    }

    pub(crate) fn close(&mut self, sock: SockId) {
        let Some(mut s) = self.socks.try_remove(sock.0) else {
            return;
        };
        if let Err(e) = self.poll.registry().deregister(s.io.source()) {
            tracing::debug!("deregistering socket {} failed: {e}", sock.0);
        }
        // The caller guarantees nothing is pending; should something be, it still gets
        // its completion (with its memory) rather than vanish.
        for key in [s.accept, s.recv, s.send, s.connect].into_iter().flatten() {
            self.cancel_slot(key);
        }
        // Dropping the mio socket closes it.
    }

    pub(crate) fn unsent(&self, sock: SockId) -> usize {
        match self.socks.get(sock.0).map(|s| &s.io) {
            Some(Io::Stream(st)) => crate::sys::unsent_bytes(st),
            _ => 0,
        }
    }

    /// Closes abortively: the kernel resets the connection and frees its buffers at once.
    pub(crate) fn abort(&mut self, sock: SockId) {
        if let Some(s) = self.socks.get(sock.0) {
            let r = match &s.io {
                Io::Listener(l) => crate::sys::set_linger_zero(l),
                Io::Stream(st) => crate::sys::set_linger_zero(st),
            };
            if let Err(e) = r {
                tracing::debug!("SO_LINGER 0 on socket {} failed: {e}", sock.0);
            }
        }
        self.close(sock);
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
        self.process(out);
        Ok(())
    }

    /// Completes doomed operations, then drives every dirty socket once. Capped sockets go
    /// on the `again` list (not driven again in this `wait`), starved ones on `starved`.
    fn process(&mut self, out: &mut Vec<Completion>) {
        for (key, err) in std::mem::take(&mut self.doomed) {
            let op = self.ops.remove(key);
            let kind = op.state.kind();
            if let Some(s) = self.socks.get_mut(op.sock) {
                let slot = s.slot(kind);
                if *slot == Some(key) {
                    *slot = None;
                }
            }
            out.push(Completion { owner: op.owner, kind: op.state.fail(err) });
        }
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
            match drive(sock, &mut self.ops, &mut self.pool, out) {
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

/// Tries the pending operations of one socket while its readiness allows, up to the caps.
fn drive(
    sock: &mut Sock,
    ops: &mut Slab<Op>,
    pool: &mut Pool,
    out: &mut Vec<Completion>,
) -> Outcome {
    match &sock.io {
        Io::Listener(l) => {
            let Some(key) = sock.accept else {
                return Outcome::Idle;
            };
            let mut accepted = 0;
            while sock.readable {
                if accepted == ACCEPT_BATCH {
                    return Outcome::Again;
                }
                match l.accept() {
                    Ok((s, _)) => {
                        accepted += 1;
                        let result = Ok(TcpStream::from(s));
                        let kind = CompletionKind::Accept { result, more: true };
                        out.push(Completion { owner: ops[key].owner, kind });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        sock.accept = None;
                        let op = ops.remove(key);
                        out.push(Completion { owner: op.owner, kind: op.state.fail(e) });
                        break;
                    }
                }
            }
            Outcome::Idle
        }
        Io::Stream(stream) => {
            let mut outcome = Outcome::Idle;
            if let Some(key) = sock.connect {
                if let Some(result) = drive_connect(stream, &mut sock.writable, &mut ops[key]) {
                    sock.connect = None;
                    // Established: both directions may be ready.
                    sock.readable = true;
                    sock.writable = true;
                    let owner = ops.remove(key).owner;
                    out.push(Completion { owner, kind: CompletionKind::Connect { result } });
                }
            }
            if let (Some(key), true) = (sock.recv, sock.readable) {
                debug_assert!(matches!(ops[key].state, OpState::Recv));
                let (finished, o) =
                    drive_recv(stream, &mut sock.readable, pool, ops[key].owner, out);
                if finished {
                    sock.recv = None;
                    ops.remove(key);
                }
                outcome = o;
            }
            if let (Some(key), true) = (sock.send, sock.writable) {
                let OpState::Send(bufs) = &ops[key].state else {
                    unreachable!("the send slot holds a send")
                };
                if let Some(result) = try_send(stream, bufs, &mut sock.writable) {
                    sock.send = None;
                    let op = ops.remove(key);
                    let OpState::Send(bufs) = op.state else { unreachable!("checked above") };
                    out.push(Completion {
                        owner: op.owner,
                        kind: CompletionKind::Send { result, bufs },
                    });
                }
            }
            outcome
        }
    }
}

/// Reads up to [`RECV_BATCH`] chunks for a pending recv, completing each. Returns whether
/// the recv finished (`more == false` completed) and what is left to do.
fn drive_recv(
    stream: &mio::net::TcpStream,
    readable: &mut bool,
    pool: &mut Pool,
    owner: u64,
    out: &mut Vec<Completion>,
) -> (bool, Outcome) {
    for chunk in 0..RECV_BATCH {
        let Some(buf) = pool.take() else {
            return (false, Outcome::Starved { served: chunk > 0 });
        };
        let result = try_recv(stream, &mut pool.bufs[buf as usize], readable);
        let (result, more) = match result {
            None => {
                pool.free.push(buf);
                return (false, Outcome::Idle);
            }
            Some(Ok(0)) => (Ok(None), false),
            Some(Ok(n)) => {
                pool.lent[buf as usize] = true;
                let len = u32::try_from(n).expect("a read is at most one buffer");
                (Ok(Some(RecvLease { buf, len })), true)
            }
            Some(Err(e)) => (Err(e), false),
        };
        if !more {
            pool.free.push(buf);
        }
        out.push(Completion { owner, kind: CompletionKind::Recv { result, more } });
        if !more {
            return (true, Outcome::Idle);
        }
    }
    (false, Outcome::Again)
}

/// Starts or checks a connect. `None`: still under way.
fn drive_connect(
    stream: &mio::net::TcpStream,
    writable: &mut bool,
    op: &mut Op,
) -> Option<io::Result<()>> {
    let OpState::Connect { addr, started } = &mut op.state else {
        unreachable!("the connect slot holds a connect")
    };
    if !*started {
        let addr = SockAddr::from(*addr);
        return match stream.try_io(|| SockRef::from(stream).connect(&addr)) {
            Ok(()) => Some(Ok(())),
            Err(e) if connect_in_progress(&e) => {
                *started = true;
                // Whatever readiness was seen belongs to the unconnected socket.
                *writable = false;
                None
            }
            Err(e) => Some(Err(e)),
        };
    }
    if !*writable {
        return None;
    }
    // mio's recipe: a writable edge, then SO_ERROR, then the peer address.
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::NotConnected || connect_in_progress(&e) => {
            // A spurious edge: wait for the next one.
            *writable = false;
            None
        }
        Err(e) => Some(Err(e)),
    }
}

/// One read into `buf`; `Ok(0)` is end of stream. `None`: not ready, wait for an edge.
fn try_recv(
    stream: &mio::net::TcpStream,
    buf: &mut [u8],
    readable: &mut bool,
) -> Option<io::Result<usize>> {
    let mut reader = stream;
    loop {
        match reader.read(buf) {
            Ok(n) => return Some(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *readable = false;
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// One gather write of `bufs`. `None`: not ready, wait for an edge.
fn try_send(
    stream: &mio::net::TcpStream,
    bufs: &SendBatch,
    writable: &mut bool,
) -> Option<io::Result<usize>> {
    // Slices on the stack (no allocation per send), SEND_SLICES buffers per write; while
    // each write takes all it was given, the next buffers follow in the same call.
    let mut total = 0;
    let mut rest = bufs.iter().take(super::MAX_IOVECS).peekable();
    while rest.peek().is_some() {
        let mut array = [IoSlice::new(&[]); SEND_SLICES];
        let (mut n, mut len) = (0, 0);
        for slot in array.iter_mut() {
            let Some(b) = rest.next() else { break };
            *slot = IoSlice::new(b);
            n += 1;
            len += b.len();
        }
        match write_once(stream, &array[..n], writable) {
            Some(Ok(w)) => {
                total += w;
                if w < len {
                    break;
                }
            }
            // Full after some bytes went: report those.
            None if total > 0 => break,
            // Full at once, or an error: an error is reported even after some bytes went
            // (the connection is gone, and only this first error says why: a reset is
            // reported once, later writes see a plain broken pipe).
            other => return other,
        }
    }
    Some(Ok(total))
}

/// One gather write: `None` when the socket is full (and no longer writable).
fn write_once(
    stream: &mio::net::TcpStream,
    slices: &[IoSlice<'_>],
    writable: &mut bool,
) -> Option<io::Result<usize>> {
    loop {
        match stream.try_io(|| gather_write(stream, slices)) {
            Ok(n) => return Some(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *writable = false;
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// `sendmsg` without raising SIGPIPE where the flag exists (elsewhere the socket carries
/// `SO_NOSIGPIPE`, or there is no SIGPIPE).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn gather_write(stream: &mio::net::TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored_with_flags(slices, libc::MSG_NOSIGNAL)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn gather_write(stream: &mio::net::TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored(slices)
}

#[cfg(all(test, not(servercore_loom)))]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(20);

    /// A driver and the completions it produced that a test has not looked at yet.
    struct Harness {
        d: PollDriver,
        q: VecDeque<Completion>,
    }

    impl Harness {
        fn new() -> Self {
            Harness { d: PollDriver::new().expect("driver"), q: VecDeque::new() }
        }

        /// The next completion, waiting for it; fails the test after the deadline.
        fn next(&mut self) -> Completion {
            let start = Instant::now();
            let mut out = Vec::new();
            while self.q.is_empty() {
                assert!(start.elapsed() < DEADLINE, "no completion before the deadline");
                self.d.wait(Some(Duration::from_millis(100)), None, &mut out).expect("wait");
                self.q.extend(out.drain(..));
            }
            self.q.pop_front().expect("not empty")
        }

        fn listener(&mut self) -> (SockId, SocketAddr) {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("local addr");
            (self.d.add_listener(l).expect("add listener"), addr)
        }

        /// A connected pair: the driver's end and a blocking std client.
        fn pair(&mut self) -> (SockId, TcpStream) {
            let (l, addr) = self.listener();
            let op = self.d.accept(l, 7);
            let client = TcpStream::connect(addr).expect("connect");
            let c = self.next();
            assert_eq!(c.owner, 7);
            let CompletionKind::Accept { result, more } = c.kind else { panic!("{c:?}") };
            assert!(more);
            let s = result.expect("accepted");
            self.d.cancel(op);
            let c = self.next();
            assert!(matches!(c.kind, CompletionKind::Accept { result: Err(_), more: false }));
            self.d.close(l);
            (self.d.add_stream(s).expect("add stream"), client)
        }

        /// The next completion, which must be a recv's; a chunk's lease is read and
        /// released at once. Checks `more` against the result.
        fn next_recv(&mut self) -> (u64, Got) {
            let c = self.next();
            let CompletionKind::Recv { result, more } = c.kind else { panic!("{c:?}") };
            let got = match result {
                Ok(Some(lease)) => {
                    assert!(more, "a chunk keeps the recv armed");
                    assert!(lease.len > 0 && lease.len as usize <= RECV_BUF, "{lease:?}");
                    let bytes = self.d.lease(&lease).to_vec();
                    assert_eq!(bytes.len(), lease.len as usize);
                    self.d.release(lease);
                    Got::Bytes(bytes)
                }
                Ok(None) => Got::Closed,
                Err(e) => Got::Failed(e),
            };
            if !matches!(got, Got::Bytes(_)) {
                assert!(!more, "the end of a recv says so");
            }
            (c.owner, got)
        }

        /// Receives chunks of owner `owner` until `n` bytes arrived.
        fn recv_exactly(&mut self, owner: u64, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            while got.len() < n {
                match self.next_recv() {
                    (o, Got::Bytes(b)) if o == owner => got.extend_from_slice(&b),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got.len(), n, "no more than was sent");
            got
        }

        /// Cancels a standing recv and checks its cancelled end. Chunks of the same owner
        /// read before the cancel may come first: they are dropped.
        fn cancel_recv(&mut self, op: OpId, owner: u64) {
            self.d.cancel(op);
            loop {
                match self.next_recv() {
                    (o, Got::Bytes(_)) if o == owner => {}
                    (o, Got::Failed(e)) if o == owner => {
                        assert!(is_cancelled(&e), "{e}");
                        return;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }

        fn send(&mut self, s: SockId, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
            self.d.send(s, 4, bufs.into());
            let c = self.next();
            assert_eq!(c.owner, 4);
            match c.kind {
                CompletionKind::Send { result, bufs } => (result, bufs.into()),
                other => panic!("{other:?}"),
            }
        }

        fn connect(&mut self, addr: SocketAddr) -> (SockId, io::Result<()>) {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let s = self.d.add_stream(TcpStream::from(sock)).expect("add stream");
            self.d.connect(s, 5, addr);
            let c = self.next();
            assert_eq!(c.owner, 5);
            match c.kind {
                CompletionKind::Connect { result } => (s, result),
                other => panic!("{other:?}"),
            }
        }
    }

    /// What a recv completion brought.
    enum Got {
        Bytes(Vec<u8>),
        Closed,
        Failed(io::Error),
    }

    impl std::fmt::Debug for Got {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Got::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
                Got::Closed => write!(f, "Closed"),
                Got::Failed(e) => write!(f, "Failed({e})"),
            }
        }
    }

    /// Fills the pipe from `client` to the driver until the client's writes would block;
    /// the bytes written.
    fn fill(client: &mut TcpStream) -> usize {
        client.set_nonblocking(true).expect("nonblocking");
        let block = [0x5au8; 64 << 10];
        let mut written = 0;
        loop {
            match client.write(&block) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("client write: {e}"),
            }
        }
    }

    fn is_cancelled(e: &io::Error) -> bool {
        #[cfg(unix)]
        {
            e.raw_os_error() == Some(libc::ECANCELED)
        }
        #[cfg(not(unix))]
        {
            e.kind() == io::ErrorKind::Interrupted
        }
    }

    #[test]
    fn accept_and_recv_chunks() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let op = h.d.recv(s, 3);
        assert_eq!(h.d.in_flight(), 1);
        client.write_all(b"hello ").expect("write");
        let mut got = h.recv_exactly(3, 6);
        client.write_all(b"world").expect("write");
        got.extend(h.recv_exactly(3, 5));
        assert_eq!(got, b"hello world");
        // Still armed: one op however many chunks; leases are not ops.
        assert_eq!(h.d.in_flight(), 1);
        assert_eq!(h.d.pool.free.len(), h.d.pool.bufs.len(), "every lease came back");
        h.cancel_recv(op, 3);
        assert_eq!(h.d.in_flight(), 0);
        h.d.close(s);
    }

    #[test]
    fn leases_released_each_turn_reuse_the_pool() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let op = h.d.recv(s, 3);
        for turn in 0..200u32 {
            let msg = turn.to_le_bytes().repeat(100);
            client.write_all(&msg).expect("write");
            assert_eq!(h.recv_exactly(3, msg.len()), msg);
        }
        assert!(h.d.pool.bufs.len() <= 2, "the pool grew to {}", h.d.pool.bufs.len());
        assert_eq!(h.d.pool.free.len(), h.d.pool.bufs.len());
        h.cancel_recv(op, 3);
    }

    #[test]
    fn idle_recv_holds_no_buffer() {
        let mut h = Harness::new();
        let (s, _client) = h.pair();
        let op = h.d.recv(s, 3);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_millis(20)), None, &mut out).expect("wait");
        assert!(out.is_empty());
        assert!(h.d.pool.lent.iter().all(|&lent| !lent));
        assert_eq!(h.d.pool.free.len(), h.d.pool.bufs.len());
        h.cancel_recv(op, 3);
    }

    #[test]
    fn accept_stays_armed_beyond_one_batch() {
        let mut h = Harness::new();
        let (l, addr) = h.listener();
        let op = h.d.accept(l, 1);
        // More than one batch, fewer than the listen backlog (128).
        let n = ACCEPT_BATCH + 36;
        let clients: Vec<TcpStream> =
            (0..n).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        for _ in 0..n {
            let c = h.next();
            assert_eq!(c.owner, 1);
            let CompletionKind::Accept { result, more } = c.kind else { panic!("{c:?}") };
            assert!(more);
            result.expect("accepted");
        }
        assert_eq!(h.d.in_flight(), 1);
        h.d.cancel(op);
        let c = h.next();
        let CompletionKind::Accept { result: Err(e), more: false } = c.kind else {
            panic!("{c:?}")
        };
        assert!(is_cancelled(&e), "{e}");
        assert_eq!(h.d.in_flight(), 0);
        drop(clients);
    }

    #[test]
    fn gather_send_arrives_in_order() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let bufs = vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defg"),
            Bytes::from_static(b"hi"),
        ];
        let (result, back) = h.send(s, bufs.clone());
        assert_eq!(result.expect("send"), 9);
        assert_eq!(back, bufs);
        let mut got = [0u8; 9];
        client.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"abcdefghi");
    }

    #[test]
    fn large_send_resumes_after_short_writes() {
        const TOTAL: usize = 8 << 20;
        const CHUNK: usize = 64 << 10;
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let data: Bytes = (0..TOTAL).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::with_capacity(TOTAL);
            let mut chunk = vec![0u8; 1 << 16];
            while got.len() < TOTAL {
                match client.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("client read: {e}"),
                }
            }
            got
        });
        let mut sent = 0;
        let mut sends = 0;
        while sent < TOTAL {
            let bufs: Vec<Bytes> = (sent..TOTAL)
                .step_by(CHUNK)
                .take(16)
                .map(|at| data.slice(at..(at + CHUNK).min(TOTAL)))
                .collect();
            let (result, _) = h.send(s, bufs);
            let n = result.expect("send");
            assert!(n > 0);
            sent += n;
            sends += 1;
        }
        assert_eq!(sent, TOTAL);
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), TOTAL);
        assert!(got == data, "the bytes arrive intact and in order");
        assert!(sends > 1);
    }

    #[test]
    fn connect_to_a_listener() {
        let mut h = Harness::new();
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (s, result) = h.connect(addr);
        result.expect("connected");
        let (mut peer, _) = l.accept().expect("accept");
        let (result, _) = h.send(s, vec![Bytes::from_static(b"ping")]);
        assert_eq!(result.expect("send"), 4);
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong").expect("write");
        let op = h.d.recv(s, 3);
        assert_eq!(h.recv_exactly(3, 4), b"pong");
        h.cancel_recv(op, 3);
        h.d.close(s);
    }

    #[test]
    fn connect_refused() {
        let mut h = Harness::new();
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let (s, result) = h.connect(addr);
        let e = result.expect_err("nobody listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert_eq!(h.d.in_flight(), 0);
        h.d.close(s);
    }

    #[test]
    fn peer_close_ends_the_recv() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        client.write_all(b"bye").expect("write");
        drop(client);
        h.d.recv(s, 3);
        assert_eq!(h.recv_exactly(3, 3), b"bye");
        assert!(matches!(h.next_recv(), (3, Got::Closed)));
        assert_eq!(h.d.in_flight(), 0);
        assert_eq!(h.d.pool.free.len(), h.d.pool.bufs.len(), "the end holds no buffer");
        // Nothing more comes.
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_millis(20)), None, &mut out).expect("wait");
        assert!(out.is_empty(), "{out:?}");
        h.d.close(s);
    }

    #[test]
    fn large_transfer_arrives_intact_in_order() {
        const TOTAL: usize = 8 << 20;
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for part in sent.chunks(100_000) {
                client.write_all(part).expect("client write");
            }
            // Dropping the client ends the stream.
        });
        h.d.recv(s, 3);
        let mut got = Vec::with_capacity(TOTAL);
        let mut chunks = 0;
        loop {
            match h.next_recv() {
                (3, Got::Bytes(b)) => {
                    got.extend_from_slice(&b);
                    chunks += 1;
                }
                (3, Got::Closed) => break,
                other => panic!("{other:?}"),
            }
        }
        writer.join().expect("writer");
        assert_eq!(got.len(), TOTAL);
        assert!(got == data, "the bytes arrive intact and in order");
        assert!(chunks >= TOTAL / RECV_BUF, "{chunks} chunks");
        assert!(h.d.pool.bufs.len() <= 2 * RECV_BATCH, "the pool grew to {}", h.d.pool.bufs.len());
        assert_eq!(h.d.in_flight(), 0);
    }

    #[test]
    fn fairness_cap_lets_both_sockets_progress_in_one_wait() {
        let mut h = Harness::new();
        let (a, mut ca) = h.pair();
        let (b, mut cb) = h.pair();
        assert!(fill(&mut ca) > RECV_BATCH * RECV_BUF);
        assert!(fill(&mut cb) > RECV_BATCH * RECV_BUF);
        let op_a = h.d.recv(a, 1);
        let op_b = h.d.recv(b, 2);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        let count = |out: &[Completion], owner| {
            out.iter()
                .filter(|c| c.owner == owner)
                .inspect(|c| {
                    assert!(
                        matches!(c.kind, CompletionKind::Recv { result: Ok(Some(_)), more: true }),
                        "{c:?}"
                    )
                })
                .count()
        };
        let (na, nb) = (count(&out, 1), count(&out, 2));
        assert!((1..=RECV_BATCH).contains(&na), "socket a: {na} chunks in one wait");
        assert!((1..=RECV_BATCH).contains(&nb), "socket b: {nb} chunks in one wait");
        assert_eq!(out.len(), na + nb);
        release_all(&mut h.d, &mut out);
        // Capped, not drained: the next wait continues at once.
        let start = Instant::now();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert!(start.elapsed() < Duration::from_secs(2), "the capped sockets waited for an edge");
        assert!(count(&out, 1) > 0 && count(&out, 2) > 0, "{out:?}");
        release_all(&mut h.d, &mut out);
        // Both ends come in the next wait, before any further read.
        h.d.cancel(op_a);
        h.d.cancel(op_b);
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert_eq!(out.len(), 2, "{out:?}");
        for c in out.drain(..) {
            let CompletionKind::Recv { result: Err(e), more: false } = c.kind else {
                panic!("{c:?}")
            };
            assert!(is_cancelled(&e), "{e}");
        }
        assert_eq!(h.d.in_flight(), 0);
    }

    /// Releases the leases of `out` and clears it.
    fn release_all(d: &mut PollDriver, out: &mut Vec<Completion>) {
        for c in out.drain(..) {
            if let CompletionKind::Recv { result: Ok(Some(lease)), .. } = c.kind {
                d.release(lease);
            }
        }
    }

    /// Reads and releases the chunks of `out` into `got` by owner (1 or 2), records the
    /// ends in `closed`, and clears `out`.
    fn record(
        d: &mut PollDriver,
        out: &mut Vec<Completion>,
        got: &mut [Vec<u8>; 2],
        closed: &mut [bool; 2],
    ) {
        for c in out.drain(..) {
            let i = (c.owner - 1) as usize;
            match c.kind {
                CompletionKind::Recv { result: Ok(Some(lease)), more: true } => {
                    got[i].extend_from_slice(d.lease(&lease));
                    d.release(lease);
                }
                CompletionKind::Recv { result: Ok(None), more: false } => closed[i] = true,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn dry_pool_pauses_receiving_without_spinning_and_resumes() {
        const EACH: usize = 3 * RECV_BUF;
        let mut h = Harness::new();
        h.d.pool.max = 1;
        let (a, mut ca) = h.pair();
        let (b, mut cb) = h.pair();
        let da: Vec<u8> = (0..EACH).map(|i| (i % 241) as u8).collect();
        let db: Vec<u8> = (0..EACH).map(|i| (i % 239) as u8).collect();
        ca.write_all(&da).expect("write");
        cb.write_all(&db).expect("write");
        drop((ca, cb));
        // Let the bytes land before arming.
        std::thread::sleep(Duration::from_millis(50));
        h.d.recv(a, 1);
        h.d.recv(b, 2);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert_eq!(out.len(), 1, "one buffer, one chunk: {out:?}");
        let first = out[0].owner;
        // The lease is held: receiving pauses, and wait blocks rather than spins.
        let mut more = Vec::new();
        let start = Instant::now();
        h.d.wait(Some(Duration::from_millis(100)), None, &mut more).expect("wait");
        assert!(more.is_empty(), "{more:?}");
        assert!(start.elapsed() >= Duration::from_millis(80), "wait returned early");
        // The release resumes receiving, the socket that got nothing first.
        let mut got = [Vec::new(), Vec::new()];
        let mut closed = [false, false];
        let mut turns = 0;
        record(&mut h.d, &mut out, &mut got, &mut closed);
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_ne!(out[0].owner, first, "the starved socket goes first");
        let start = Instant::now();
        while !(closed[0] && closed[1]) {
            assert!(start.elapsed() < DEADLINE, "receiving never resumed");
            record(&mut h.d, &mut out, &mut got, &mut closed);
            h.d.wait(Some(Duration::from_millis(100)), None, &mut out).expect("wait");
            turns += 1;
        }
        record(&mut h.d, &mut out, &mut got, &mut closed);
        assert!(got[0] == da && got[1] == db, "no byte lost or reordered");
        assert!(turns >= 4, "{turns} turns");
        assert_eq!(h.d.pool.bufs.len(), 1);
        assert_eq!(h.d.in_flight(), 0);
    }

    #[test]
    fn send_to_a_closed_peer_fails() {
        let mut h = Harness::new();
        let (s, client) = h.pair();
        client.shutdown(std::net::Shutdown::Both).expect("shutdown");
        drop(client);
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "sending to a closed peer never failed");
            match h.send(s, vec![Bytes::from_static(&[0u8; 4096])]) {
                (Ok(_), _) => continue,
                (Err(e), bufs) => {
                    assert_eq!(bufs.len(), 1);
                    assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                        ),
                        "{e}"
                    );
                    break;
                }
            }
        }
    }

    #[test]
    fn cancel_ends_the_recv() {
        let mut h = Harness::new();
        let (s, _client) = h.pair();
        let op = h.d.recv(s, 9);
        assert_eq!(h.d.in_flight(), 1);
        // Let the recv find nothing to read first, so it really is pending.
        let mut out = Vec::new();
        h.d.wait(Some(Duration::ZERO), None, &mut out).expect("wait");
        assert!(out.is_empty());
        h.d.cancel(op);
        h.d.cancel(op);
        let c = h.next();
        assert_eq!(c.owner, 9);
        let CompletionKind::Recv { result: Err(e), more: false } = c.kind else { panic!("{c:?}") };
        assert!(is_cancelled(&e), "{e}");
        assert_eq!(h.d.in_flight(), 0);
        // Cancelling a finished operation does nothing.
        h.d.cancel(op);
        h.d.wait(Some(Duration::ZERO), None, &mut out).expect("wait");
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_socket_fails_the_operation() {
        let mut h = Harness::new();
        h.d.recv(SockId(12345), 3);
        match h.next_recv() {
            (3, Got::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.d.in_flight(), 0);
    }

    #[test]
    fn second_recv_on_a_socket_fails_alone() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let op = h.d.recv(s, 3);
        h.d.recv(s, 4);
        match h.next_recv() {
            (4, Got::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}"),
            other => panic!("{other:?}"),
        }
        client.write_all(b"still armed").expect("write");
        assert_eq!(h.recv_exactly(3, 11), b"still armed");
        h.cancel_recv(op, 3);
    }

    #[test]
    fn ready_socket_without_an_op_does_not_spin() {
        let mut h = Harness::new();
        let (_s, mut client) = h.pair();
        client.write_all(b"unread").expect("write");
        let mut out = Vec::new();
        // Let the readable edge be seen with no recv pending.
        h.d.wait(Some(Duration::from_millis(10)), None, &mut out).expect("wait");
        let start = Instant::now();
        h.d.wait(Some(Duration::from_millis(60)), None, &mut out).expect("wait");
        assert!(out.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(50), "wait returned early");
    }

    #[test]
    fn cancelled_recv_on_a_capped_socket_does_not_spin() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        fill(&mut client);
        let op = h.d.recv(s, 3);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert!(!out.is_empty());
        release_all(&mut h.d, &mut out);
        h.cancel_recv(op, 3);
        // Still readable, nothing pending: wait blocks.
        h.d.wait(Some(Duration::from_millis(10)), None, &mut out).expect("wait");
        assert!(out.is_empty(), "{out:?}");
        let start = Instant::now();
        h.d.wait(Some(Duration::from_millis(60)), None, &mut out).expect("wait");
        assert!(out.is_empty(), "{out:?}");
        assert!(start.elapsed() >= Duration::from_millis(50), "wait returned early");
    }

    #[test]
    fn waker_wakes_a_blocked_wait() {
        let mut h = Harness::new();
        for _ in 0..3 {
            let waker = h.d.waker();
            let t = std::thread::spawn(move || waker.wake());
            let mut out = Vec::new();
            // Returns whether the wake lands before or during the wait.
            h.d.wait(None, None, &mut out).expect("wait");
            assert!(out.is_empty());
            t.join().expect("waker thread");
        }
        assert_eq!(h.d.in_flight(), 0);
    }
}
