//! Why a send was refused.

use std::fmt;

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session is disconnected (or disconnecting); nothing was queued.
    Disconnected,
    /// The send queue is at its limit: the session is being disconnected with
    /// [`DisconnectReason::SendQueueOverflow`](crate::DisconnectReason::SendQueueOverflow),
    /// or (policy `Notify`) this buffer was not queued.
    QueueFull {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The worker's inbox holds more sends and broadcasts posted from other threads (and
    /// not yet taken) than [`max_worker_inbox`](crate::SessionConfig::max_worker_inbox):
    /// the worker is not keeping up. Nothing was queued; the sessions are not at fault
    /// and stay connected.
    InboxFull {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// [`SessionHandle::run`](crate::SessionHandle::run) was given a session type other than
    /// the one the service serves; nothing was posted.
    WrongSessionType {
        /// The service's session type.
        expected: &'static str,
        /// The type `run` was called with.
        given: &'static str,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected => f.write_str("session is disconnected"),
            SendError::QueueFull { limit } => {
                write!(f, "send queue at its limit of {limit} bytes")
            }
            SendError::InboxFull { limit } => {
                write!(f, "worker inbox over {limit} bytes: the worker is not keeping up")
            }
            SendError::WrongSessionType { expected, given } => {
                write!(f, "the service's sessions are {expected}, not {given}")
            }
        }
    }
}

impl std::error::Error for SendError {}
