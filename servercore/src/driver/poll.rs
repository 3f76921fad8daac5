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
//! Accepting is capped per pass ([`ACCEPT_BATCH`]) so a flood of connections cannot starve
//! the other sockets; a capped listener stays dirty, which makes the next `wait` poll
//! without blocking.
//!
//! # Cancellation
//!
//! [`PollDriver::cancel`] marks the operation doomed and queues it; the next `wait` takes
//! it off its socket and completes it with `ECANCELED` (on non-Unix: `Interrupted`) before
//! any I/O is attempted, returning its buffers. Operations started on an unknown socket
//! (or a second operation of a kind already pending) are failed the same way, with their
//! own error.
//!
//! # Memory
//!
//! No system call keeps a pointer into an operation's memory beyond the call itself, so
//! invariant 1 of DESIGN.md holds trivially: buffers live in the operation table until the
//! completion hands them back.

use super::{Completion, CompletionKind, OpId, SockId, Waker, WakerInner};
use bytes::Bytes;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{SockAddr, SockRef};
use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The token of the waker; socket tokens are slab keys, far below it.
const WAKE_TOKEN: Token = Token(usize::MAX - 1);
/// Most connections accepted from one listener per pass, for fairness.
const ACCEPT_BATCH: usize = 64;
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
    /// On the dirty list already.
    queued: bool,
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
    sock: usize,
    /// Queued on `doomed` to complete with an error at the next `wait`.
    doomed: bool,
    state: OpState,
}

enum OpState {
    Accept,
    Recv(Vec<u8>),
    Send(Vec<Bytes>),
    Connect { addr: SocketAddr, started: bool },
}

impl OpState {
    fn kind(&self) -> Kind {
        match self {
            OpState::Accept => Kind::Accept,
            OpState::Recv(_) => Kind::Recv,
            OpState::Send(_) => Kind::Send,
            OpState::Connect { .. } => Kind::Connect,
        }
    }

    /// The completion of this operation with `err`, returning its memory.
    fn fail(self, err: io::Error) -> CompletionKind {
        match self {
            OpState::Accept => CompletionKind::Accept { result: Err(err), more: false },
            OpState::Recv(buf) => CompletionKind::Recv { result: Err(err), buf },
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

/// The readiness driver of one worker.
pub(crate) struct PollDriver {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    socks: Slab<Sock>,
    ops: Slab<Op>,
    /// Sockets whose pending operations may be able to progress.
    dirty: Vec<usize>,
    /// Operations to complete with the given error at the next `wait`.
    doomed: Vec<(usize, io::Error)>,
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
            doomed: Vec::new(),
        })
    }

    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
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
        let key = self.ops.insert(Op { owner, sock: sock.0, doomed: false, state });
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
        OpId(key)
    }

    /// Stays armed until cancelled or an error (`more == false`). Accepted streams come
    /// back non-blocking (as `mio` accepts them); `add_stream` of either backend sets the
    /// mode it needs.
    pub(crate) fn accept(&mut self, sock: SockId, owner: u64) -> OpId {
        self.start(sock, owner, OpState::Accept)
    }

    pub(crate) fn recv(&mut self, sock: SockId, owner: u64, buf: Vec<u8>) -> OpId {
        self.start(sock, owner, OpState::Recv(buf))
    }

    pub(crate) fn send(&mut self, sock: SockId, owner: u64, bufs: Vec<Bytes>) -> OpId {
        self.start(sock, owner, OpState::Send(bufs))
    }

    pub(crate) fn connect(&mut self, sock: SockId, owner: u64, addr: SocketAddr) -> OpId {
        self.start(sock, owner, OpState::Connect { addr, started: false })
    }

    pub(crate) fn cancel(&mut self, op: OpId) {
        if let Some(o) = self.ops.get_mut(op.0) {
            if !o.doomed {
                o.doomed = true;
                self.doomed.push((op.0, cancelled()));
            }
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
            self.cancel(OpId(key));
        }
        // Dropping the mio socket closes it.
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        self.process(out);
        // Completions in hand, or work left over (a capped accept): only look for events.
        let timeout =
            if out.is_empty() && self.dirty.is_empty() { timeout } else { Some(Duration::ZERO) };
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

    /// Completes doomed operations, then drives every dirty socket once.
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
        for &key in &list {
            let Some(sock) = self.socks.get_mut(key) else {
                continue;
            };
            sock.queued = false;
            if drive(sock, &mut self.ops, out) {
                // Capped: more to do without waiting for another edge.
                sock.queued = true;
                self.dirty.push(key);
            }
        }
        list.clear();
        list.append(&mut self.dirty);
        self.dirty = list;
    }
}

/// Tries the pending operations of one socket while its readiness allows. Returns whether
/// the socket has work left that needs no new edge (a capped accept).
fn drive(sock: &mut Sock, ops: &mut Slab<Op>, out: &mut Vec<Completion>) -> bool {
    match &sock.io {
        Io::Listener(l) => {
            let Some(key) = sock.accept else {
                return false;
            };
            let mut accepted = 0;
            while sock.readable {
                if accepted == ACCEPT_BATCH {
                    return true;
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
            false
        }
        Io::Stream(stream) => {
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
                let OpState::Recv(buf) = &mut ops[key].state else {
                    unreachable!("the recv slot holds a recv")
                };
                if let Some(result) = try_recv(stream, buf, &mut sock.readable) {
                    sock.recv = None;
                    let op = ops.remove(key);
                    let OpState::Recv(buf) = op.state else { unreachable!("checked above") };
                    out.push(Completion {
                        owner: op.owner,
                        kind: CompletionKind::Recv { result, buf },
                    });
                }
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
            false
        }
    }
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

/// One receive into the spare capacity of `buf`. `None`: not ready, wait for an edge.
fn try_recv(
    stream: &mio::net::TcpStream,
    buf: &mut Vec<u8>,
    readable: &mut bool,
) -> Option<io::Result<usize>> {
    loop {
        match stream.try_io(|| SockRef::from(stream).recv(buf.spare_capacity_mut())) {
            Ok(n) => {
                let len = buf.len() + n;
                debug_assert!(len <= buf.capacity());
                // SAFETY: `recv` wrote (initialised) the first `n` bytes of the spare
                // capacity it was given and `n` is at most that capacity, so the first
                // `len` bytes are initialised and `len <= capacity`.
                unsafe { buf.set_len(len) };
                return Some(Ok(n));
            }
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
    bufs: &[Bytes],
    writable: &mut bool,
) -> Option<io::Result<usize>> {
    let slices: Vec<IoSlice<'_>> =
        bufs.iter().take(super::MAX_IOVECS).map(|b| IoSlice::new(b)).collect();
    loop {
        match stream.try_io(|| gather_write(stream, &slices)) {
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

#[cfg(test)]
mod tests {
    use super::*;
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
                self.d.wait(Some(Duration::from_millis(100)), &mut out).expect("wait");
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

        fn recv(&mut self, s: SockId, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
            self.d.recv(s, 3, buf);
            let c = self.next();
            assert_eq!(c.owner, 3);
            match c.kind {
                CompletionKind::Recv { result, buf } => (result, buf),
                other => panic!("{other:?}"),
            }
        }

        fn send(&mut self, s: SockId, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
            self.d.send(s, 4, bufs);
            let c = self.next();
            assert_eq!(c.owner, 4);
            match c.kind {
                CompletionKind::Send { result, bufs } => (result, bufs),
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
    fn accept_and_recv_into_spare_capacity() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        client.write_all(b"hello world").expect("write");
        let mut buf = Vec::with_capacity(8);
        buf.extend_from_slice(b"ab");
        let (cap, ptr) = (buf.capacity(), buf.as_ptr());
        let (result, buf) = h.recv(s, buf);
        let n = result.expect("recv");
        assert!(n > 0 && n <= cap - 2);
        assert_eq!(buf.capacity(), cap, "never grows the buffer");
        assert_eq!(buf.as_ptr(), ptr, "the same buffer comes back");
        assert_eq!(&buf[..2], b"ab");
        let mut got = buf[2..].to_vec();
        while got.len() < 11 {
            let (result, buf) = h.recv(s, Vec::with_capacity(64));
            result.expect("recv");
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, b"hello world");
        assert_eq!(h.d.in_flight(), 0);
        h.d.close(s);
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
        let (result, buf) = h.recv(s, Vec::with_capacity(16));
        assert_eq!(result.expect("recv"), 4);
        assert_eq!(buf, b"pong");
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
    fn peer_close_reads_zero() {
        let mut h = Harness::new();
        let (s, client) = h.pair();
        drop(client);
        let (result, buf) = h.recv(s, Vec::with_capacity(16));
        assert_eq!(result.expect("recv"), 0);
        assert!(buf.is_empty());
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
    fn cancel_returns_the_buffer() {
        let mut h = Harness::new();
        let (s, _client) = h.pair();
        let mut buf = Vec::with_capacity(16);
        buf.extend_from_slice(b"xy");
        let op = h.d.recv(s, 9, buf);
        assert_eq!(h.d.in_flight(), 1);
        // Let the recv find nothing to read first, so it really is pending.
        let mut out = Vec::new();
        h.d.wait(Some(Duration::ZERO), &mut out).expect("wait");
        assert!(out.is_empty());
        h.d.cancel(op);
        h.d.cancel(op);
        let c = h.next();
        assert_eq!(c.owner, 9);
        let CompletionKind::Recv { result: Err(e), buf } = c.kind else { panic!("{c:?}") };
        assert!(is_cancelled(&e), "{e}");
        assert_eq!(buf, b"xy");
        assert_eq!(buf.capacity(), 16);
        assert_eq!(h.d.in_flight(), 0);
        // Cancelling a finished operation does nothing.
        h.d.cancel(op);
        h.d.wait(Some(Duration::ZERO), &mut out).expect("wait");
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_socket_fails_the_operation() {
        let mut h = Harness::new();
        let (result, buf) = h.recv(SockId(12345), vec![1, 2]);
        assert!(result.is_err());
        assert_eq!(buf, [1, 2]);
        assert_eq!(h.d.in_flight(), 0);
    }

    #[test]
    fn ready_socket_without_an_op_does_not_spin() {
        let mut h = Harness::new();
        let (_s, mut client) = h.pair();
        client.write_all(b"unread").expect("write");
        let mut out = Vec::new();
        // Let the readable edge be seen with no recv pending.
        h.d.wait(Some(Duration::from_millis(10)), &mut out).expect("wait");
        let start = Instant::now();
        h.d.wait(Some(Duration::from_millis(60)), &mut out).expect("wait");
        assert!(out.is_empty());
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
            h.d.wait(None, &mut out).expect("wait");
            assert!(out.is_empty());
            t.join().expect("waker thread");
        }
        assert_eq!(h.d.in_flight(), 0);
    }
}
