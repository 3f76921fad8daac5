//! The sockets a driver owns: each with its readiness flags and its pending operations,
//! registered with the poll once for all the readiness it can ever need.

use super::op::Kind;
use super::PollDriver;
use crate::driver::SockId;
use mio::{Interest, Token};
use std::io;
use std::net::{TcpListener, TcpStream};

/// A socket owned by the driver.
pub(super) enum Io {
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
pub(super) struct Sock {
    pub(super) io: Io,
    /// No read-side attempt has seen `WouldBlock` since the last readable edge.
    pub(super) readable: bool,
    /// No write-side attempt has seen `WouldBlock` since the last writable edge.
    pub(super) writable: bool,
    /// On the dirty or the `again` list already.
    pub(super) queued: bool,
    /// On the `starved` list: a recv wanted a buffer when the pool had none.
    pub(super) starved: bool,
    pub(super) accept: Option<usize>,
    pub(super) recv: Option<usize>,
    pub(super) send: Option<usize>,
    pub(super) connect: Option<usize>,
}

impl Sock {
    pub(super) fn new(io: Io) -> Self {
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
    pub(super) fn slot(&mut self, kind: Kind) -> &mut Option<usize> {
        match kind {
            Kind::Accept => &mut self.accept,
            Kind::Recv => &mut self.recv,
            Kind::Send => &mut self.send,
            Kind::Connect => &mut self.connect,
        }
    }

    /// Whether an operation of this kind applies to this kind of socket.
    pub(super) fn takes(&self, kind: Kind) -> bool {
        matches!(
            (&self.io, kind),
            (Io::Listener(_), Kind::Accept)
                | (Io::Stream(_), Kind::Recv | Kind::Send | Kind::Connect)
        )
    }
}

impl PollDriver {
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
        socket2::SockRef::from(&s).set_nosigpipe(true)?;
        let s = mio::net::TcpStream::from_std(s);
        // Registered for both directions at once, even before a connect: an unconnected
        // socket may report a spurious edge, which the connect check tells apart.
        self.insert(Io::Stream(s), Interest::READABLE | Interest::WRITABLE)
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

    /// Makes a later close of `sock` abortive (SO_LINGER 0), without closing it now.
    pub(crate) fn make_abortive(&mut self, sock: SockId) {
        if let Some(s) = self.socks.get(sock.0) {
            let r = match &s.io {
                Io::Listener(l) => crate::sys::set_linger_zero(l),
                Io::Stream(st) => crate::sys::set_linger_zero(st),
            };
            if let Err(e) = r {
                tracing::debug!("SO_LINGER 0 on socket {} failed: {e}", sock.0);
            }
        }
    }

    /// Closes abortively: the kernel resets the connection and frees its buffers at once.
    pub(crate) fn abort(&mut self, sock: SockId) {
        self.make_abortive(sock);
        self.close(sock);
    }
}
