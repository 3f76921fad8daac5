//! The engine's state of a session ([`SessionState`]) and the state of its worker that callbacks
//! reach ([`WorkerState`]): the send queue and its limits, disconnect requests, timers, and the
//! room work a callback asks for. The worker's event loop (`crate::worker`) drives them.

use super::fanout::Fanout;
use super::{SessionFlags, SessionId};
use crate::config::SessionConfig;
use crate::driver::{OpId, SendBatch, SockId};
use crate::error::SendError;
use crate::mailbox::WorkerRemote;
use crate::reason::DisconnectReason;
use crate::registry::ServiceShared;
use crate::telemetry::WorkerMetrics;
use crate::timer::{TimerId, Timers};
use crate::transport::Transport;
use bytes::Bytes;
use std::cell::OnceCell;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What a worker's timers do when they fire.
pub(crate) enum TimerAction {
    ConnectTimeout(u64),
    FlushDeadline(u64),
    /// A closing session looks again whether the peer has taken the kernel's send queue.
    Linger(u64),
    RearmAccept(usize),
    ShutdownDeadline,
    Session {
        key: u64,
        token: u64,
        period: Option<Duration>,
    },
    Idle(u64),
    /// A transport's handshake deadline (TLS, WebSocket upgrade).
    Handshake(u64),
    Reconnect,
    Job {
        period: Option<Duration>,
        cancelled: Arc<AtomicBool>,
        job: Box<dyn FnMut() + Send>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting,
    /// Connected, running the transport's handshakes (TLS, WebSocket upgrade): receives
    /// and sends, no callback yet.
    Handshaking,
    Open,
    Closing,
}

/// The engine's state of one session (what the seed's `Session` base class held).
pub(crate) struct SessionState {
    pub(crate) id: SessionId,
    pub(crate) key: u64,
    pub(crate) peer: PeerAddr,
    pub(crate) sock: SockId,
    pub(crate) state: Phase,
    /// Unconsumed received bytes (`len`) plus room for the next read (capacity).
    pub(crate) rbuf: Vec<u8>,
    pub(crate) recv_op: Option<OpId>,
    pub(crate) send_op: Option<OpId>,
    pub(crate) in_flight: u32,
    pub(crate) queue: VecDeque<Bytes>,
    pub(crate) queued: usize,
    pub(crate) dirty: bool,
    /// What only a connecting or closing session uses (see [`Rare`]); `None` until then.
    pub(crate) rare: Option<Box<Rare>>,
    /// Closing, and queued data still goes out (local disconnect or shutdown).
    pub(crate) flushing: bool,
    /// Set when a graceful close has begun, so `on_disconnected` may still queue sends.
    pub(crate) graceful: bool,
    /// The server abandons bytes it had accepted to send (or gave up on the peer): the
    /// socket is closed abortively (RST), so the kernel frees its buffers at once.
    pub(crate) abort: bool,
    /// Own sends waiting in the fan-out log (counted with the queue's buffers).
    pub(crate) logged_sends: usize,
    /// Rooms this session is in (ids), so it leaves them when it closes.
    pub(crate) rooms: Vec<u64>,
    /// The TLS and/or WebSocket layers (boxed: plain sessions pay 8 bytes).
    pub(crate) transport: Option<Box<Transport>>,
    pub(crate) recv_paused: bool,
    /// The peer's end of stream arrived while paused: reported after the kept bytes, at
    /// `resume_recv`, so the close never overtakes data (and never reaches a paused session).
    pub(crate) peer_eof: bool,
    /// The standing receive was cancelled for a pause.
    pub(crate) recv_cancelled: bool,
    /// Under the Notify policy: a send was refused; `on_writable` is due after draining.
    pub(crate) congested: bool,
    /// `on_send_queue_full` is due (called outside the callback that hit the limit).
    pub(crate) notify_full: bool,
    /// Loop-turn time of the last received bytes (idle timeout).
    pub(crate) last_recv: Instant,
    /// Counted against the per-IP cap under this address.
    pub(crate) ip_counted: bool,
    /// What the session's handles read, made with its first handle (see
    /// [`SessionState::shared_flags`]): a session that never hands one out holds none.
    pub(crate) flags: OnceCell<Arc<SessionFlags>>,
}

/// A peer's address in 16 bytes where a `SocketAddr` takes 32: IPv4 inline, IPv6 (28
/// bytes with its flow and scope) boxed.
pub(crate) enum PeerAddr {
    V4(SocketAddrV4),
    V6(Box<SocketAddrV6>),
}

impl PeerAddr {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => PeerAddr::V4(a),
            SocketAddr::V6(a) => PeerAddr::V6(Box::new(a)),
        }
    }

    pub(crate) fn get(&self) -> SocketAddr {
        match self {
            PeerAddr::V4(a) => SocketAddr::V4(*a),
            PeerAddr::V6(a) => SocketAddr::V6(**a),
        }
    }
}

/// The state of a session that only connecting and closing use, boxed so that an open
/// session pays 8 bytes for it (allocated by [`SessionState::rare`] when first needed).
#[derive(Default)]
pub(crate) struct Rare {
    /// A disconnect asked for, carried out at the end of the loop turn.
    pub(crate) close_request: Option<DisconnectReason>,
    /// Closing: until when the close may wait for queued bytes to reach the peer (the
    /// flush, then the kernel's send queue being acknowledged) before it resets instead.
    pub(crate) close_deadline: Option<Instant>,
    /// Closing, flushed, waiting for the peer to acknowledge the kernel's send queue: how
    /// many times it looked (each wait twice the last, from 10 ms up to 250 ms).
    pub(crate) linger_polls: u8,
    /// The connect timeout, flush deadline or linger timer.
    pub(crate) timer: Option<TimerId>,
    pub(crate) connect_op: Option<OpId>,
    pub(crate) connect_error: Option<io::Error>,
    /// Closing: the label of the reason it closes with (for the abortive-close metric).
    pub(crate) close_label: &'static str,
}

impl SessionState {
    /// The connecting and closing state, allocated on first use.
    pub(crate) fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Whether a disconnect was asked for and not carried out yet.
    pub(crate) fn close_requested(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.close_request.is_some())
    }

    pub(crate) fn take_close_request(&mut self) -> Option<DisconnectReason> {
        self.rare.as_mut().and_then(|r| r.close_request.take())
    }

    pub(crate) fn close_deadline(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.close_deadline)
    }

    pub(crate) fn connect_op(&self) -> Option<OpId> {
        self.rare.as_ref().and_then(|r| r.connect_op)
    }

    pub(crate) fn take_timer(&mut self) -> Option<TimerId> {
        self.rare.as_mut().and_then(|r| r.timer.take())
    }

    /// Sets the queued byte count, and its mirror that handles read to reserve places
    /// under either policy (a handle send counts the queue, so the queue and the inbox
    /// together stay within the limit). Only a session that handed out a handle has the
    /// mirror: one that never did (an echo, a room member) pays no atomic store per send.
    pub(crate) fn set_queued(&mut self, queued: usize) {
        self.queued = queued;
        if let Some(f) = self.flags.get() {
            f.queued.store(queued, Ordering::Relaxed);
        }
    }

    /// The flags handles share, made now if no handle was made before, from the state they
    /// mirror: `alive` is "open", `congested` and `queued` are the session's own; nothing
    /// was posted or overflowed without a handle.
    pub(crate) fn shared_flags(&self) -> &Arc<SessionFlags> {
        self.flags.get_or_init(|| {
            Arc::new(SessionFlags {
                alive: AtomicBool::new(self.state == Phase::Open),
                congested: AtomicBool::new(self.congested),
                queued: AtomicUsize::new(self.queued),
                ..SessionFlags::default()
            })
        })
    }

    /// Stores `alive` for the handles, if any.
    pub(crate) fn set_alive(&self, alive: bool) {
        if let Some(f) = self.flags.get() {
            f.alive.store(alive, Ordering::Release);
        }
    }

    /// Bytes of handle sends posted and not yet queued (none without a handle).
    pub(crate) fn posted(&self) -> usize {
        self.flags.get().map_or(0, |f| f.posted.load(Ordering::Acquire))
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state == Phase::Open && !self.close_requested()
    }

    /// Open or in its TLS handshake, and no close asked for: its standing receive runs.
    pub(crate) fn receives(&self) -> bool {
        matches!(self.state, Phase::Open | Phase::Handshaking) && !self.close_requested()
    }
}

/// Empty send queues with capacity a worker keeps for its sessions' next sends (see
/// [`WorkerState::push_queued`]): at most this many entries in all (1 MiB of `Bytes`), so
/// that thousands of small queues, or a few large ones, are kept.
const SPARE_ENTRIES: usize = (1 << 20) / std::mem::size_of::<Bytes>();

/// A send queue holds at most one buffer per this many bytes of its limit (so buffers
/// smaller than this fill it by count before bytes).
pub(crate) const MIN_COUNTED: usize = 64;

/// A worker's state that callbacks reach through [`Ctx`].
pub(crate) struct WorkerState {
    pub(crate) remote: Arc<WorkerRemote>,
    pub(crate) service: Weak<ServiceShared>,
    pub(crate) config: Arc<SessionConfig>,
    pub(crate) dirty: Vec<u64>,
    /// Room membership and fan-out on this worker, and the log of room work.
    pub(crate) fanout: Fanout,
    pub(crate) timers: Timers<TimerAction>,
    /// The time at the start of this loop turn (a cheap clock for idle tracking).
    pub(crate) now: Instant,
    /// `config.max_send_queue` and whether the policy is Notify, at hand for every send.
    pub(crate) send_limit: usize,
    pub(crate) notify_policy: bool,
    pub(crate) metrics: WorkerMetrics,
    /// Empty send queues with capacity, shared by the worker's sessions: a session's queue
    /// goes whole to its send and comes back here when the send is done, so steady sending
    /// allocates nothing, and a session with nothing to send holds no queue memory.
    pub(crate) spare_queues: Vec<SendBatch>,
    /// The capacity of those, in entries (at most `SPARE_ENTRIES`).
    pub(crate) spare_entries: usize,
}

impl WorkerState {
    pub(crate) fn set_session_timer(
        &mut self,
        core: &SessionState,
        delay: Duration,
        period: Option<Duration>,
        token: u64,
    ) -> TimerId {
        let at = Instant::now() + delay;
        self.timers.add(at, TimerAction::Session { key: core.key, token, period })
    }

    pub(crate) fn cancel_session_timer(&mut self, core: &SessionState, id: TimerId) -> bool {
        match self.timers.cancel(id) {
            Some(TimerAction::Session { key, .. }) if key == core.key => true,
            Some(other) => {
                // Not this session's timer: leave it alone.
                self.timers.restore(id, other);
                false
            }
            None => false,
        }
    }

    pub(crate) fn mark_dirty(&mut self, core: &mut SessionState) {
        if !core.dirty {
            core.dirty = true;
            self.dirty.push(core.key);
        }
    }

    /// Queues bytes on a session; the send starts at the end of the loop turn.
    ///
    /// `admitted`: a send that already reserved its place under the limit (a
    /// [`SessionHandle`](crate::SessionHandle) send under the Notify policy), so it is never
    /// refused for the limit here.
    pub(crate) fn queue_send(
        &mut self,
        core: &mut SessionState,
        buf: Bytes,
        admitted: bool,
    ) -> Result<(), SendError> {
        self.admit(core, buf.len(), !admitted)?;
        if buf.is_empty() {
            return Ok(());
        }
        core.set_queued(core.queued + buf.len());
        self.push_queued(core, buf);
        self.metrics.buffers_out += 1;
        self.mark_dirty(core);
        Ok(())
    }

    /// Appends to a session's send queue, giving a queue without memory a spare first.
    pub(crate) fn push_queued(&mut self, core: &mut SessionState, buf: Bytes) {
        if core.queue.capacity() == 0 {
            if let Some(spare) = self.spare_queues.pop() {
                self.spare_entries -= spare.capacity();
                core.queue = spare;
            }
        }
        core.queue.push_back(buf);
    }

    /// Keeps an emptied send queue for a later send (or frees it when enough are kept).
    pub(crate) fn recycle_queue(&mut self, mut queue: SendBatch) {
        queue.clear();
        let cap = queue.capacity();
        if cap > 0 && self.spare_entries + cap <= SPARE_ENTRIES {
            self.spare_entries += cap;
            self.spare_queues.push(queue);
        }
    }

    /// Whether `len` more bytes may be queued on the session now: it must be accepting sends
    /// and, when `check_limit`, stay under the limit (counting places already reserved).
    /// A refusal for the limit applies the policy (disconnect, or congestion and notify).
    pub(super) fn admit(
        &mut self,
        core: &mut SessionState,
        len: usize,
        check_limit: bool,
    ) -> Result<(), SendError> {
        let accepting = match core.state {
            // In the TLS handshake, bytes wait in the queue until it is done.
            Phase::Open | Phase::Handshaking => !core.close_requested(),
            // Closing gracefully: during `on_disconnected` (no deadline yet) or while the
            // queue is being flushed; after that nothing would send it.
            Phase::Closing => core.graceful && (core.flushing || core.close_deadline().is_none()),
            Phase::Connecting => false,
        };
        if !accepting {
            return Err(SendError::Disconnected);
        }
        if len == 0 || !check_limit {
            return Ok(());
        }
        let limit = self.send_limit;
        let notify = self.notify_policy;
        // Bytes of handle sends still in the inbox count too: they are the session's. The
        // number of buffers is bounded as well (one per `MIN_COUNTED` bytes of the limit):
        // a queue of one-byte buffers must not hold millions of entries, and the pooled
        // chunks they keep alive (see `buffer::pool`), under a limit counted in bytes.
        let reserved = core.posted();
        let too_many = core.queue.len() + core.logged_sends >= limit / MIN_COUNTED;
        if (notify && core.congested) || too_many || core.queued + reserved + len > limit {
            if notify {
                self.congest(core);
            } else {
                self.request_close(core, DisconnectReason::SendQueueOverflow { limit });
            }
            return Err(SendError::QueueFull { limit });
        }
        Ok(())
    }

    /// Notify policy: the queue is full; `on_send_queue_full` is due, sends are refused
    /// until `on_writable`.
    pub(crate) fn congest(&mut self, core: &mut SessionState) {
        if !core.congested {
            core.congested = true;
            core.notify_full = true;
            if let Some(f) = core.flags.get() {
                f.congested.store(true, Ordering::Release);
            }
            self.mark_dirty(core);
        }
    }

    /// Records a disconnect request; it is carried out at the end of the loop turn, outside
    /// any callback. The first reason wins.
    pub(crate) fn request_close(&mut self, core: &mut SessionState, reason: DisconnectReason) {
        if core.state != Phase::Closing && !core.close_requested() {
            core.rare().close_request = Some(reason);
            self.mark_dirty(core);
        }
    }
}
