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
    /// The WebSocket layer ended the session (WebSocket sessions only).
    WebSocket(WsError),
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
                | DisconnectReason::WebSocket(WsError::HandshakeTimeout)
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
            DisconnectReason::WebSocket(WsError::PeerClosed { .. }) => "ws_peer_closed",
            DisconnectReason::WebSocket(WsError::HandshakeTimeout) => "ws_handshake_timeout",
            DisconnectReason::WebSocket(
                WsError::NotAnUpgrade(_) | WsError::BadRequest(_) | WsError::RequestTooLarge,
            ) => "ws_bad_upgrade",
            DisconnectReason::WebSocket(_) => "ws_protocol_error",
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
            DisconnectReason::WebSocket(e) => write!(f, "WebSocket: {e}"),
        }
    }
}

/// What went wrong in a WebSocket session's layer (see
/// [`DisconnectReason::WebSocket`](crate::DisconnectReason::WebSocket)); each names the
/// status code the layer closed with ([`close_code`](Self::close_code)).
///
/// ```
/// use servercore::ws::WsError;
/// assert_eq!(WsError::TextFrame.close_code(), Some(1003));
/// assert_eq!(WsError::MessageTooBig { limit: 10 }.to_string(), "message over the 10-byte limit");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsError {
    /// The request was not a WebSocket upgrade; the HTTP status it got.
    NotAnUpgrade(u16),
    /// A malformed or unacceptable upgrade request (or, client side, response).
    BadRequest(String),
    /// The request head passed [`WsConfig::max_request_head`](crate::ws::WsConfig::max_request_head) (HTTP 431).
    RequestTooLarge,
    /// The upgrade did not finish within [`WsConfig::handshake_timeout`](crate::ws::WsConfig::handshake_timeout).
    HandshakeTimeout,
    /// A client frame without a mask (1002).
    Unmasked,
    /// A server frame with a mask (1002).
    Masked,
    /// An opcode RFC 6455 does not define (1002).
    UnknownOpcode(u8),
    /// Reserved bits set with no extension agreed (1002).
    ReservedBits,
    /// A 64-bit length with its top bit set (1002).
    BadLength,
    /// A control frame with more than 125 bytes (1002).
    ControlTooLong(u64),
    /// A fragmented control frame (1002).
    FragmentedControl,
    /// A continuation frame with no message to continue (1002).
    UnexpectedContinuation,
    /// A new message inside a fragmented one (1002).
    ExpectedContinuation,
    /// A text frame: the protocol is binary (1003).
    TextFrame,
    /// A message over [`WsConfig::max_message`](crate::ws::WsConfig::max_message) (1009).
    MessageTooBig {
        /// The configured limit.
        limit: usize,
    },
    /// A close frame whose reason is not UTF-8 (1007).
    InvalidUtf8,
    /// A malformed close frame (1002).
    BadClose(String),
    /// Bytes after the peer's close frame (1002).
    DataAfterClose,
    /// The peer closed with a status other than 1000 (normal) or 1001 (going away).
    PeerClosed {
        /// The peer's status code.
        code: u16,
        /// The peer's reason text.
        reason: String,
    },
}

impl WsError {
    /// The status code this side's close frame carries for it (`None`: no close frame, the
    /// connection was not upgraded or is already closed).
    pub fn close_code(&self) -> Option<u16> {
        Some(match self {
            WsError::NotAnUpgrade(_)
            | WsError::BadRequest(_)
            | WsError::RequestTooLarge
            | WsError::HandshakeTimeout
            | WsError::PeerClosed { .. } => return None,
            WsError::TextFrame => 1003,
            WsError::MessageTooBig { .. } => 1009,
            WsError::InvalidUtf8 => 1007,
            _ => 1002,
        })
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::NotAnUpgrade(status) => write!(f, "not a WebSocket upgrade (HTTP {status})"),
            WsError::BadRequest(why) => write!(f, "bad upgrade: {why}"),
            WsError::RequestTooLarge => f.write_str("upgrade request head too large"),
            WsError::HandshakeTimeout => f.write_str("the upgrade did not finish in time"),
            WsError::Unmasked => f.write_str("unmasked client frame"),
            WsError::Masked => f.write_str("masked server frame"),
            WsError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            WsError::ReservedBits => f.write_str("reserved bits set"),
            WsError::BadLength => f.write_str("frame length over 2^63"),
            WsError::ControlTooLong(n) => write!(f, "control frame of {n} bytes (max 125)"),
            WsError::FragmentedControl => f.write_str("fragmented control frame"),
            WsError::UnexpectedContinuation => f.write_str("continuation frame with no message"),
            WsError::ExpectedContinuation => f.write_str("new message inside a fragmented one"),
            WsError::TextFrame => f.write_str("text frame (the protocol is binary)"),
            WsError::MessageTooBig { limit } => write!(f, "message over the {limit}-byte limit"),
            WsError::InvalidUtf8 => f.write_str("close reason is not UTF-8"),
            WsError::BadClose(why) => write!(f, "bad close frame: {why}"),
            WsError::DataAfterClose => f.write_str("data after the close frame"),
            WsError::PeerClosed { code, reason } => {
                write!(f, "peer closed with status {code}: {reason:?}")
            }
        }
    }
}
