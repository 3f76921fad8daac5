//! The user's side of a connection: the [`Session`] trait, the [`Ctx`] its callbacks get,
//! and the [`SessionHandle`] that reaches a session from any thread.

use crate::buffer::SendBuffer;
use crate::reason::DisconnectReason;
use crate::service::ServiceRef;
use crate::worker::{Command, Core, Local, WorkerRemote};
use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A connection's behaviour: the seed's `OnConnected` / `OnRecv` / `OnSend` /
/// `OnDisconnected`.
///
/// Every callback of one session runs on the worker thread that owns it, in order, never
/// two at once, so `&mut self` needs no lock. Order: `on_connected` once, then any number
/// of `on_recv` / `on_send`, then `on_disconnected` exactly once, last. A panic in a
/// callback disconnects this session only, with [`DisconnectReason::Panic`].
///
/// ```
/// use servercore::{Ctx, Session};
///
/// /// Echoes every byte back.
/// struct Echo;
///
/// impl Session for Echo {
///     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
///         let _ = ctx.send(data.to_vec());
///         data.len() // consumed everything
///     }
/// }
/// ```
pub trait Session: Send + 'static {
    /// The connection is established (accepted, or an outgoing connect succeeded).
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// Bytes arrived. `data` starts with whatever the previous call left unconsumed.
    /// Returns how many bytes from the front were consumed; the rest is presented again,
    /// followed by the next bytes. Leaving more than
    /// [`max_recv_buffer`](crate::SessionConfig::max_recv_buffer) unconsumed disconnects
    /// with [`DisconnectReason::RecvBufferFull`].
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize;

    /// `bytes` more bytes of this session's queue were written to the socket.
    fn on_send(&mut self, ctx: &mut Ctx<'_>, bytes: usize) {
        let _ = (ctx, bytes);
    }

    /// The session ended for `reason`; the last callback. Sends from here are flushed only
    /// when the reason is a local disconnect or a shutdown.
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = (ctx, reason);
    }

    /// An outgoing connect (client services) failed or timed out; this session object is
    /// then dropped without any other callback.
    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        let _ = (addr, error);
    }
}

/// A session's identity, unique within its service for the service's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session#{}", self.0)
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session is disconnected (or disconnecting); nothing was queued.
    Disconnected,
    /// The send queue passed its limit; the session is being disconnected with
    /// [`DisconnectReason::SendQueueOverflow`].
    QueueFull {
        /// The configured limit in bytes.
        limit: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected => f.write_str("session is disconnected"),
            SendError::QueueFull { limit } => {
                write!(f, "send queue over its limit of {limit} bytes; session disconnecting")
            }
        }
    }
}

impl std::error::Error for SendError {}

/// What a callback can do to its own session, and reach of its worker and service.
///
/// Thread safety: a `Ctx` exists only during a callback, on the owning worker thread.
pub struct Ctx<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) local: &'a mut Local,
}

impl Ctx<'_> {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.core.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer
    }

    /// Queues `buf` for sending; everything queued during one loop turn goes out in one
    /// gather write, in order. Cheap: a [`SendBuffer`] is reference-counted.
    pub fn send(&mut self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        self.local.queue_send(self.core, buf.into().into_bytes())
    }

    /// Disconnects this session with [`DisconnectReason::Local`] once the callback returns.
    /// Queued sends are flushed first (up to
    /// [`close_flush_timeout`](crate::SessionConfig::close_flush_timeout)).
    pub fn disconnect(&mut self, why: impl Into<Cow<'static, str>>) {
        self.disconnect_with(DisconnectReason::Local(why.into()));
    }

    /// Disconnects this session with the given reason once the callback returns (e.g.
    /// [`DisconnectReason::Protocol`] for a peer that broke the protocol).
    pub fn disconnect_with(&mut self, reason: DisconnectReason) {
        self.local.request_close(self.core, reason);
    }

    /// Whether the session is open (connected and no disconnect requested).
    pub fn is_connected(&self) -> bool {
        self.core.is_open()
    }

    /// Bytes queued and not yet written to the socket.
    pub fn send_queue_bytes(&self) -> usize {
        self.core.queued
    }

    /// A handle to this session, usable from any thread.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            id: self.core.id,
            peer: self.core.peer,
            key: self.core.key,
            alive: self.core.alive.clone(),
            worker: self.local.remote.clone(),
        }
    }

    /// Index of the worker thread this session lives on.
    pub fn worker_index(&self) -> usize {
        self.local.remote.index
    }

    /// The service this session belongs to, while it exists (sessions hold it weakly).
    pub fn service(&self) -> Option<ServiceRef> {
        self.local.service.upgrade().map(ServiceRef)
    }
}

/// Reaches a session from any thread: `Send + Sync + Clone`.
///
/// Calls become messages to the session's worker (the gnet model): `send` and
/// `disconnect` return at once. Once the session is gone they return
/// [`SendError::Disconnected`].
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) id: SessionId,
    pub(crate) peer: SocketAddr,
    pub(crate) key: u64,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) worker: Arc<WorkerRemote>,
}

impl SessionHandle {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the session is still connected. A `true` can be stale by the time it is
    /// read; a `false` is final.
    pub fn is_connected(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues `buf` on the session (through its worker's inbox).
    ///
    /// `Ok` means the worker will queue it; if the session closes first, it is dropped
    /// with the rest of its unsent data and `on_disconnected` says why.
    pub fn send(&self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::Disconnected);
        }
        self.worker
            .post(Command::Send { key: self.key, buf: buf.into().into_bytes() })
            .map_err(|_| SendError::Disconnected)
    }

    /// Disconnects the session with [`DisconnectReason::Local`].
    pub fn disconnect(&self, why: impl Into<Cow<'static, str>>) -> Result<(), SendError> {
        self.disconnect_with(DisconnectReason::Local(why.into()))
    }

    /// Disconnects the session with the given reason.
    pub fn disconnect_with(&self, reason: DisconnectReason) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::Disconnected);
        }
        self.worker
            .post(Command::Disconnect { key: self.key, reason })
            .map_err(|_| SendError::Disconnected)
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("connected", &self.is_connected())
            .finish()
    }
}
