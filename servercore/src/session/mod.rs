//! The user's side of a connection: the [`Session`] trait, the [`Ctx`] its callbacks get,
//! and the [`SessionHandle`] that reaches a session from any thread.

mod fanout;
mod state;

pub(crate) use fanout::{Fanout, Members};
pub(crate) use state::{PeerAddr, Phase, SessionState, TimerAction, WorkerState, MIN_COUNTED};

use crate::buffer::SendBuffer;
use crate::error::SendError;
use crate::mailbox::{Command, WorkerRemote, INBOX_ENTRY};
use crate::reason::DisconnectReason;
use crate::timer::TimerId;
use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    /// With [`SendQueuePolicy::Notify`](crate::SendQueuePolicy::Notify): a send was refused
    /// because the queue is at `max_send_queue`. Called once per congestion episode.
    fn on_send_queue_full(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// After [`on_send_queue_full`](Session::on_send_queue_full): the queue drained to the
    /// low watermark; sends are accepted again.
    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// A timer set with [`Ctx::set_timer`] or [`Ctx::set_interval`] fired; `token` is the
    /// value given when it was set. Never called after `on_disconnected`.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let _ = (ctx, token);
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

/// What a callback can do to its own session, and reach of its worker and service.
///
/// Thread safety: a `Ctx` exists only during a callback, on the owning worker thread.
pub struct Ctx<'a> {
    pub(crate) core: &'a mut SessionState,
    pub(crate) local: &'a mut WorkerState,
}

impl Ctx<'_> {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.core.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.peer.get()
    }

    /// Queues `buf` for sending; everything queued during one loop turn goes out in one
    /// gather write, in order. Cheap: a [`SendBuffer`] is reference-counted.
    pub fn send(&mut self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        self.local.send_own(self.core, buf.into().into_bytes())
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

    /// Stops receiving after the current callback (flow control towards a slow consumer);
    /// bytes keep arriving in the kernel's buffer, then TCP slows the peer down. A peer's
    /// close is noticed only after [`resume_recv`](Ctx::resume_recv).
    pub fn pause_recv(&mut self) {
        if !self.core.recv_paused {
            self.core.recv_paused = true;
            self.local.mark_dirty(self.core);
        }
    }

    /// Starts receiving again after [`pause_recv`](Ctx::pause_recv).
    pub fn resume_recv(&mut self) {
        if self.core.recv_paused {
            self.core.recv_paused = false;
            self.local.mark_dirty(self.core);
        }
    }

    /// A handle to this session, usable from any thread.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            id: self.core.id,
            peer: self.core.peer.get(),
            key: self.core.key,
            flags: self.core.shared_flags().clone(),
            worker: self.local.remote.clone(),
        }
    }

    /// Index of the worker thread this session lives on.
    pub fn worker_index(&self) -> usize {
        self.local.remote.index
    }

    /// Calls [`Session::on_timer`] with `token` once, after `delay` (millisecond
    /// resolution). The timer dies with the session.
    pub fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        self.local.set_session_timer(self.core, delay, None, token)
    }

    /// Calls [`Session::on_timer`] with `token` every `period` (first after one period)
    /// until cancelled or the session ends.
    pub fn set_interval(&mut self, period: Duration, token: u64) -> TimerId {
        let period = period.max(Duration::from_millis(1));
        self.local.set_session_timer(self.core, period, Some(period), token)
    }

    /// Cancels one of this session's timers; false if it already fired (once) or is not
    /// this session's.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.local.cancel_session_timer(self.core, id)
    }
}

/// A closure run on a session's worker with the session object (as `Any`) and its context
/// (posted boxed once more, as `Any`, through the mailbox).
pub(crate) type SessionJob = Box<dyn FnOnce(&mut dyn Any, &mut Ctx<'_>) + Send>;

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
    pub(crate) flags: Arc<SessionFlags>,
    pub(crate) worker: Arc<WorkerRemote>,
}

/// State of a session that its handles read from other threads.
#[derive(Debug, Default)]
pub(crate) struct SessionFlags {
    /// Connected and not closing.
    pub(crate) alive: AtomicBool,
    /// Send queue at its limit under [`SendQueuePolicy::Notify`](crate::SendQueuePolicy).
    pub(crate) congested: AtomicBool,
    /// Mirror of the session's queued bytes (written by its worker).
    pub(crate) queued: AtomicUsize,
    /// Bytes of handle sends posted and not yet queued, each with its inbox overhead.
    pub(crate) posted: AtomicUsize,
    /// A handle send went over the limit and asked for the overflow disconnect.
    pub(crate) overflowed: AtomicBool,
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
        self.flags.alive.load(Ordering::Acquire)
    }

    /// Queues `buf` on the session (through its worker's inbox).
    ///
    /// `Ok` means the worker will queue it; if the session closes first, it is dropped
    /// with the rest of its unsent data and `on_disconnected` says why.
    ///
    /// Bytes waiting in the inbox count against the session's
    /// [`max_send_queue`](crate::SessionConfig::max_send_queue) (with a few dozen bytes of
    /// overhead each), so a thread that sends faster than the worker drains cannot grow
    /// memory past it: over the limit the [`send_queue_policy`](crate::SendQueuePolicy)
    /// applies (the session is disconnected with
    /// [`SendQueueOverflow`](DisconnectReason::SendQueueOverflow), or under `Notify` it is
    /// congested), and this returns [`SendError::QueueFull`]. A worker whose whole inbox is
    /// over [`max_worker_inbox`](crate::SessionConfig::max_worker_inbox) refuses with
    /// [`SendError::InboxFull`] (the session is not at fault).
    pub fn send(&self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::Disconnected);
        }
        let buf = buf.into().into_bytes();
        let config = &self.worker.config;
        let cost = buf.len() + INBOX_ENTRY;
        let limit = config.max_send_queue;
        let notify = config.send_queue_policy == crate::SendQueuePolicy::Notify;
        // Reserve the place now: under Notify an Ok is then never refused by the worker;
        // under Disconnect the inbox's share of the session stays within its limit.
        let reserved = self.flags.posted.fetch_add(cost, Ordering::AcqRel) + cost;
        // What the worker has queued counts too (its mirror), under either policy: the
        // queue and the inbox together stay within the limit.
        let queued = self.flags.queued.load(Ordering::Acquire);
        let congested = notify && self.flags.congested.load(Ordering::Acquire);
        if congested || queued + reserved > limit {
            self.flags.posted.fetch_sub(cost, Ordering::AcqRel);
            if notify {
                if !self.flags.congested.swap(true, Ordering::AcqRel) {
                    let _ = self.worker.post(Command::Congested { key: self.key });
                }
            } else if !self.flags.overflowed.swap(true, Ordering::AcqRel) {
                let reason = DisconnectReason::SendQueueOverflow { limit };
                let _ = self.worker.post(Command::Disconnect { key: self.key, reason });
            }
            return Err(SendError::QueueFull { limit });
        }
        if let Err(e) = self.worker.reserve(cost) {
            self.flags.posted.fetch_sub(cost, Ordering::AcqRel);
            return Err(e);
        }
        self.worker
            .post_reserved(Command::Send { key: self.key, buf, admitted: notify }, cost)
            .inspect_err(|_| {
                self.flags.posted.fetch_sub(cost, Ordering::AcqRel);
            })
    }

    /// Runs `job` on the session's worker with the session object, in order with the other
    /// messages to it. Does nothing if the session is gone by then.
    ///
    /// `S` must be the service's session type (for a [`packet::Framed`](crate::packet::Framed)
    /// `<P>` session, `Framed<P>`: reach `P` with `inner_mut`), else
    /// [`SendError::WrongSessionType`].
    pub fn run<S: Session>(
        &self,
        job: impl FnOnce(&mut S, &mut Ctx<'_>) + Send + 'static,
    ) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::Disconnected);
        }
        let serves = self.worker.session_type;
        if serves.id != std::any::TypeId::of::<S>() {
            return Err(SendError::WrongSessionType {
                expected: serves.name,
                given: std::any::type_name::<S>(),
            });
        }
        let job: SessionJob = Box::new(move |any, ctx| {
            if let Some(s) = any.downcast_mut::<S>() {
                job(s, ctx)
            }
        });
        let job: Box<dyn Any + Send> = Box::new(job);
        self.worker
            .post(Command::SessionJob { key: self.key, job })
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
