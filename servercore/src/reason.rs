//! Why a session ended: every disconnect carries a reason a person can read.

use std::borrow::Cow;
use std::fmt;
use std::io;

/// The reason a session was disconnected, passed to
/// [`Session::on_disconnected`](crate::Session::on_disconnected).
///
/// ```
/// use servercore::DisconnectReason;
/// let r = DisconnectReason::Protocol("packet size 2 is below the 4-byte header".into());
/// assert_eq!(r.to_string(), "protocol error: packet size 2 is below the 4-byte header");
/// assert!(r.is_error());
/// assert!(!DisconnectReason::PeerClosed.is_error());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed its side in order (a 0-byte read).
    PeerClosed,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// This side called `disconnect` with the given text.
    Local(Cow<'static, str>),
    /// The peer broke the wire protocol; the text names the bad value.
    Protocol(String),
    /// The peer sent more than the session may leave unconsumed.
    RecvBufferFull {
        /// The configured maximum of unconsumed bytes.
        limit: usize,
    },
    /// The peer does not read fast enough: the send queue went past its limit.
    SendQueueOverflow {
        /// The configured send-queue limit in bytes.
        limit: usize,
    },
    /// Nothing was received for the configured idle time.
    IdleTimeout,
    /// The service shut down.
    Shutdown,
    /// An operating-system error on the socket.
    Os {
        /// The raw `errno`, when there is one.
        errno: Option<i32>,
        /// The error's text.
        message: String,
    },
    /// A user callback panicked; the text is the panic message.
    Panic(String),
    /// The TLS layer ended the session (sessions of a service with TLS only).
    Tls(TlsError),
}

/// What went wrong in a TLS session's layer (see [`DisconnectReason::Tls`]).
///
/// ```
/// use servercore::{DisconnectReason, TlsError};
/// let r = DisconnectReason::Tls(TlsError::Truncated);
/// assert_eq!(r.to_string(), "TLS: the peer closed without close_notify (truncated)");
/// assert!(r.is_error());
/// assert!(DisconnectReason::Tls(TlsError::NotTls).is_abortive());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The peer's first bytes are not a TLS handshake record (plain TCP, HTTP, a scanner).
    NotTls,
    /// The handshake did not finish within
    /// [`tls_handshake_timeout`](crate::SessionConfig::tls_handshake_timeout).
    HandshakeTimeout,
    /// The peer closed the TCP stream without a TLS `close_notify`: the data may have been
    /// cut short by a third party, so this is not reported as an orderly close.
    Truncated,
    /// rustls refused what the peer sent or said: a failed handshake (certificate, version,
    /// cipher), an oversized or malformed record, a decryption failure, an alert from the
    /// peer. The text is rustls' error. The session's alert to the peer, if any, is sent.
    Protocol(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::NotTls => f.write_str("the peer's bytes are not TLS"),
            TlsError::HandshakeTimeout => f.write_str("the handshake did not finish in time"),
            TlsError::Truncated => f.write_str("the peer closed without close_notify (truncated)"),
            TlsError::Protocol(why) => write!(f, "{why}"),
        }
    }
}

impl DisconnectReason {
    /// Maps a socket error to the reason a person would expect.
    pub fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => DisconnectReason::Reset,
            _ => DisconnectReason::Os { errno: e.raw_os_error(), message: e.to_string() },
        }
    }

    /// Whether the reason is a failure (anything but an orderly close, a local disconnect or
    /// shutdown).
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            DisconnectReason::PeerClosed | DisconnectReason::Local(_) | DisconnectReason::Shutdown
        )
    }

    /// Whether the server closes a session that ended for this reason abortively (TCP
    /// reset, `SO_LINGER` 0) whatever it had queued: it gave up on the peer (a peer that
    /// does not read, sends too much, breaks the protocol or goes idle, or a callback
    /// panic), so the kernel frees every byte it still held for that peer at once and the
    /// peer learns at once. Every other reason closes in order (FIN) once the queue is
    /// flushed; should bytes accepted for sending be dropped instead (a flush that misses
    /// [`close_flush_timeout`](crate::SessionConfig::close_flush_timeout) or the shutdown
    /// deadline, a peer gone with bytes queued), that close is abortive too, and counted in
    /// [`ServiceStats::aborted`](crate::ServiceStats::aborted).
    ///
    /// ```
    /// use servercore::DisconnectReason;
    /// assert!(DisconnectReason::SendQueueOverflow { limit: 1 << 20 }.is_abortive());
    /// assert!(!DisconnectReason::Local("bye".into()).is_abortive());
    /// ```
    pub fn is_abortive(&self) -> bool {
        matches!(
            self,
            DisconnectReason::Protocol(_)
                | DisconnectReason::RecvBufferFull { .. }
                | DisconnectReason::SendQueueOverflow { .. }
                | DisconnectReason::IdleTimeout
                | DisconnectReason::Panic(_)
                | DisconnectReason::Tls(TlsError::NotTls | TlsError::HandshakeTimeout)
        )
    }

    /// A short stable label, for metrics and logs ("peer_closed", "reset", ...).
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectReason::PeerClosed => "peer_closed",
            DisconnectReason::Reset => "reset",
            DisconnectReason::Local(_) => "local",
            DisconnectReason::Protocol(_) => "protocol_error",
            DisconnectReason::RecvBufferFull { .. } => "recv_buffer_full",
            DisconnectReason::SendQueueOverflow { .. } => "send_queue_overflow",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::Os { .. } => "os_error",
            DisconnectReason::Panic(_) => "panic",
            DisconnectReason::Tls(TlsError::NotTls) => "tls_not_tls",
            DisconnectReason::Tls(TlsError::HandshakeTimeout) => "tls_handshake_timeout",
            DisconnectReason::Tls(TlsError::Truncated) => "tls_truncated",
            DisconnectReason::Tls(TlsError::Protocol(_)) => "tls_protocol_error",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PeerClosed => f.write_str("peer closed the connection"),
            DisconnectReason::Reset => f.write_str("connection reset by peer"),
            DisconnectReason::Local(why) => write!(f, "disconnected locally: {why}"),
            DisconnectReason::Protocol(why) => write!(f, "protocol error: {why}"),
            DisconnectReason::RecvBufferFull { limit } => {
                write!(f, "receive buffer full: more than {limit} unconsumed bytes")
            }
            DisconnectReason::SendQueueOverflow { limit } => {
                write!(f, "send queue overflow: peer not reading, over {limit} bytes queued")
            }
            DisconnectReason::IdleTimeout => f.write_str("idle timeout"),
            DisconnectReason::Shutdown => f.write_str("service shut down"),
            DisconnectReason::Os { message, .. } => write!(f, "socket error: {message}"),
            DisconnectReason::Panic(msg) => write!(f, "session callback panicked: {msg}"),
            DisconnectReason::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}
