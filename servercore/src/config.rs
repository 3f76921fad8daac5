//! Per-session limits and options shared by both service kinds.

pub use crate::driver::Diagnostics;
use std::time::Duration;

/// Options every session of a service gets. Every limit bounds what a remote peer can make
/// the server hold.
///
/// | field | default | what it bounds |
/// |---|---|---|
/// | `nodelay` | `true` | Nagle off: game traffic wants low latency |
/// | `recv_buffer_size` | 4 KiB | one receive chunk: the size of the worker's shared receive buffers |
/// | `recv_buffers_per_worker` | 1024 | shared receive buffers per worker (io_uring buffer ring); idle sessions hold none |
/// | `max_recv_buffer` | 1 MiB | bytes a session may leave unconsumed; beyond: [`RecvBufferFull`](crate::DisconnectReason::RecvBufferFull) |
/// | `max_send_queue` | 16 MiB | bytes queued to a peer that does not read (high watermark); beyond: the `send_queue_policy` |
/// | `send_queue_low_watermark` | 4 MiB | with [`SendQueuePolicy::Notify`]: `on_writable` once the queue drains to this |
/// | `send_queue_policy` | `Disconnect` | [`SendQueueOverflow`](crate::DisconnectReason::SendQueueOverflow) disconnect, or refuse the send and notify |
/// | `idle_timeout` | none | no bytes received for this long: [`IdleTimeout`](crate::DisconnectReason::IdleTimeout) |
/// | `close_flush_timeout` | 5 s | how long an orderly close waits for queued sends to go out and the peer to acknowledge them; past it, the close is a reset |
/// | `connect_timeout` | 10 s | outgoing connects (client services) |
/// | `tls_handshake_timeout` | 10 s | services with TLS: a handshake not done by then ends with [`TlsError::HandshakeTimeout`](crate::TlsError::HandshakeTimeout) (a slow-loris handshake) |
/// | `max_worker_inbox` | 64 MiB | bytes of sends and broadcasts posted to one worker from other threads and not yet taken; beyond: [`SendError::InboxFull`](crate::SendError::InboxFull) |
/// | `broadcast_gather_max` | 10 ms | the longest a worker gathers input after a room broadcast fan-out (see the field) |
///
/// ```
/// let cfg = servercore::SessionConfig::default();
/// assert!(cfg.nodelay);
/// assert_eq!(cfg.max_recv_buffer, 1 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Disable Nagle's algorithm (`TCP_NODELAY`).
    pub nodelay: bool,
    /// Bytes per receive chunk: the size of each of the worker's shared receive buffers.
    /// Bytes a session leaves unconsumed are copied into a buffer of its own.
    pub recv_buffer_size: usize,
    /// Shared receive buffers per worker (rounded to a power of two, 64..=32768): the
    /// io_uring backend's provided-buffer ring. When all are in use, receiving pauses until
    /// buffers come back; no byte is dropped.
    pub recv_buffers_per_worker: u16,
    /// Maximum unconsumed bytes a session may hold.
    pub max_recv_buffer: usize,
    /// Maximum bytes queued for sending on one session (the high watermark), counting the
    /// bytes of [`SessionHandle`](crate::SessionHandle) sends still in the worker's inbox.
    /// The queue also holds at most one buffer per 64 bytes of this (so that a flood of
    /// tiny buffers is bounded in entries too).
    pub max_send_queue: usize,
    /// With [`SendQueuePolicy::Notify`], `on_writable` fires once the queue is back at or
    /// below this many bytes.
    pub send_queue_low_watermark: usize,
    /// What happens when a send would take the queue past `max_send_queue`.
    pub send_queue_policy: SendQueuePolicy,
    /// Disconnect a session that received nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Time an orderly close (a local disconnect, a shutdown, the peer's close) gives queued
    /// sends to go out and the peer to acknowledge them; past it the close is abortive
    /// (a reset, so the kernel frees what it held). The session keeps its slot meanwhile.
    pub close_flush_timeout: Duration,
    /// Time an outgoing connect may take.
    pub connect_timeout: Duration,
    /// Services with TLS: time from the connection (accepted or connected) to the end of
    /// the TLS handshake. Past it the session is reset with
    /// [`TlsError::HandshakeTimeout`](crate::TlsError::HandshakeTimeout).
    pub tls_handshake_timeout: Duration,
    /// Most bytes of sends and broadcasts that other threads may have posted to one
    /// worker and it has not taken yet (each counted with a few dozen bytes of overhead).
    /// A worker that falls that far behind refuses more with
    /// [`SendError::InboxFull`](crate::SendError::InboxFull) rather than grow without
    /// bound. (Handle sends also count against their session's `max_send_queue`.)
    pub max_worker_inbox: usize,
    /// Upper bound of the fan-out gathering window (`Duration::ZERO`: never gather).
    ///
    /// A room broadcast costs one send per member, whatever the number of messages in it,
    /// so a worker that relays many small messages to many members spends almost all its
    /// time on per-send kernel work. After a loop turn that fanned a room broadcast out to
    /// two or more members, the worker therefore waits before its next turn so that more
    /// messages share each member's next send: as long as that turn took (its sends
    /// included), never more than this. A quiet room's turn takes microseconds, so its
    /// messages wait microseconds; a turn that sent to thousands of members took
    /// milliseconds, and the next one gathers for as long. Receives and work posted to
    /// that worker wait with it (its timers still fire on time); other workers are not
    /// affected, and the order of everything is kept. Kernels without IORING_FEAT_EXT_ARG
    /// (before 5.11) do not gather. Set it to zero to favour latency over CPU.
    pub broadcast_gather_max: Duration,
    /// Techniques switched off for diagnosis and benchmarking (not part of the documented
    /// API): see [`Diagnostics`].
    #[doc(hidden)]
    pub diagnostics: Diagnostics,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            nodelay: true,
            recv_buffer_size: 4096,
            recv_buffers_per_worker: 1024,
            max_recv_buffer: 1 << 20,
            max_send_queue: 16 << 20,
            send_queue_low_watermark: 4 << 20,
            send_queue_policy: SendQueuePolicy::Disconnect,
            idle_timeout: None,
            close_flush_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            broadcast_gather_max: Duration::from_millis(10),
            max_worker_inbox: 64 << 20,
            diagnostics: Diagnostics::default(),
        }
    }
}

impl SessionConfig {
    /// Clamps values that would make the engine misbehave (a zero-sized buffer).
    pub(crate) fn sanitized(mut self) -> Self {
        self.recv_buffer_size = self.recv_buffer_size.clamp(64, 1 << 20);
        self.recv_buffers_per_worker =
            self.recv_buffers_per_worker.clamp(64, 32768).next_power_of_two();
        self.max_recv_buffer = self.max_recv_buffer.max(self.recv_buffer_size);
        self.send_queue_low_watermark = self.send_queue_low_watermark.min(self.max_send_queue);
        self
    }
}

/// What to do with a send that would take a session's queue past
/// [`SessionConfig::max_send_queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendQueuePolicy {
    /// Disconnect the session with
    /// [`SendQueueOverflow`](crate::DisconnectReason::SendQueueOverflow): a client that does
    /// not read is dropped (the default).
    #[default]
    Disconnect,
    /// Refuse that send with [`SendError::QueueFull`](crate::SendError::QueueFull), call
    /// [`Session::on_send_queue_full`](crate::Session::on_send_queue_full) once, and
    /// [`Session::on_writable`](crate::Session::on_writable) when the queue has drained to
    /// the low watermark: the game decides what to drop or coalesce.
    Notify,
}
