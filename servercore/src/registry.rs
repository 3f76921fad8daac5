//! The state a service shares with its workers and (weakly) its sessions: configuration,
//! the worker set, session and connection counts, per-IP caps, the reconnect policy.
//!
//! It sits below the worker and the session layers, which both read it; the service
//! layer above builds it and hands it out.

use crate::buffer::SendBuffer;
use crate::config::SessionConfig;
use crate::driver::Backend;
use crate::error::SendError;
use crate::mailbox::{Command, WorkerRemote, INBOX_ENTRY};
use crate::reason::DisconnectReason;
use crate::tls::TlsSetup;
use crate::ws::WsSetup;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Identities of services (a room is bound to one), unique in the process.
static NEXT_SERVICE: AtomicU64 = AtomicU64::new(1);

/// State shared by a service, its workers and (weakly) its sessions.
pub(crate) struct ServiceShared {
    /// "server" or "client": the `service` label of metrics.
    pub(crate) name: &'static str,
    /// This service's identity (rooms bind to it).
    pub(crate) id: u64,
    pub(crate) config: Arc<SessionConfig>,
    pub(crate) backend: Backend,
    pub(crate) max_sessions: usize,
    pub(crate) single_acceptor: bool,
    pub(crate) workers: OnceLock<Vec<Arc<WorkerRemote>>>,
    /// Sessions holding a slot (connecting, open or closing).
    pub(crate) sessions: AtomicUsize,
    pub(crate) next_id: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) disconnected: AtomicU64,
    pub(crate) disconnected_with_error: AtomicU64,
    pub(crate) aborted: AtomicU64,
    /// TLS handshakes finished, and TLS sessions that ended before finishing theirs.
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    /// WebSocket upgrades finished, and WebSocket connections that ended before theirs.
    pub(crate) ws_upgrades: AtomicU64,
    pub(crate) ws_upgrade_failures: AtomicU64,
    /// Workers that stopped because their driver failed, each with what it said.
    pub(crate) worker_failures: Mutex<Vec<String>>,
    /// Optional cap of sessions per peer IP address, with the current counts.
    pub(crate) per_ip_limit: Option<usize>,
    pub(crate) per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Optional accepted connections per second (service-wide).
    pub(crate) accept_rate: Option<u32>,
    /// Client services: reconnect lost or failed sessions.
    pub(crate) reconnect: Option<Reconnect>,
    /// Every session of the service speaks TLS (this side of it).
    pub(crate) tls: Option<TlsSetup>,
    /// Sessions of the WebSocket listener (server), or every session (client), speak
    /// WebSocket.
    pub(crate) ws: Option<WsSetup>,
}

impl ServiceShared {
    pub(crate) fn new(
        name: &'static str,
        config: SessionConfig,
        backend: Backend,
        max_sessions: usize,
    ) -> Self {
        ServiceShared {
            name,
            id: NEXT_SERVICE.fetch_add(1, Ordering::Relaxed),
            config: Arc::new(config.sanitized()),
            backend,
            max_sessions,
            single_acceptor: false,
            workers: OnceLock::new(),
            sessions: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            disconnected_with_error: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            ws_upgrades: AtomicU64::new(0),
            ws_upgrade_failures: AtomicU64::new(0),
            worker_failures: Mutex::new(Vec::new()),
            per_ip_limit: None,
            per_ip: Mutex::new(HashMap::new()),
            accept_rate: None,
            reconnect: None,
            tls: None,
            ws: None,
        }
    }

    /// Counts a session against the per-IP cap; false (and a rejection) when over it.
    pub(crate) fn reserve_ip(&self, ip: IpAddr) -> bool {
        let Some(limit) = self.per_ip_limit else { return true };
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *n += 1;
        true
    }

    pub(crate) fn release_ip(&self, ip: IpAddr) {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Takes one place under `max_sessions`, or counts a rejection.
    pub(crate) fn reserve_session(&self) -> bool {
        let prev = self.sessions.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_sessions {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn count_disconnect(&self, reason: &DisconnectReason) {
        self.disconnected.fetch_add(1, Ordering::Relaxed);
        if reason.is_error() {
            self.disconnected_with_error.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Posts the buffer to every worker, all or none (see `WorkerRemote::post_all`).
    pub(crate) fn broadcast(&self, buf: SendBuffer) -> Result<(), SendError> {
        let bytes = buf.into_bytes();
        let workers = self.workers.get().map_or(&[][..], Vec::as_slice);
        let cost = bytes.len() + INBOX_ENTRY;
        WorkerRemote::post_all(workers.iter().map(|w| &**w), cost, || {
            Command::Broadcast(bytes.clone())
        })
    }

    /// The counts a worker publishes as metrics.
    pub(crate) fn counts(&self) -> crate::telemetry::ServiceCounts {
        crate::telemetry::ServiceCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            tls_handshakes: self.tls_handshakes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn stats(&self) -> ServiceStats {
        ServiceStats {
            sessions: self.sessions.load(Ordering::Acquire),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            disconnected: self.disconnected.load(Ordering::Relaxed),
            disconnected_with_error: self.disconnected_with_error.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            tls_handshakes: self.tls_handshakes.load(Ordering::Relaxed),
            tls_handshake_failures: self.tls_handshake_failures.load(Ordering::Relaxed),
            ws_upgrades: self.ws_upgrades.load(Ordering::Relaxed),
            ws_upgrade_failures: self.ws_upgrade_failures.load(Ordering::Relaxed),
            failed_workers: self.worker_failures.lock().map_or(0, |f| f.len()),
        }
    }

    /// A worker's driver failed and the worker stopped: kept for [`ServiceStats`] and for
    /// the service's `shutdown`, which reports it.
    pub(crate) fn worker_failed(&self, what: String) {
        if let Ok(mut f) = self.worker_failures.lock() {
            f.push(what);
        }
    }
}

/// Automatic reconnection of a [`ClientService`](crate::ClientService)'s sessions
/// (server-to-server links): a session that fails to connect or is lost (anything but a
/// local disconnect or shutdown) is replaced by a new connect after an exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay; each consecutive failure doubles the delay up to this.
    pub max: Duration,
    /// Randomise each delay to 50-100 % of its value, so that many clients do not
    /// reconnect in step.
    pub jitter: bool,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: true,
        }
    }
}

impl Reconnect {
    /// The delay before attempt number `failures + 1`; `random` is in `0..=u32::MAX`.
    pub(crate) fn delay(&self, failures: u32, random: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << failures.min(20));
        let d = exp.min(self.max);
        if self.jitter {
            d.mul_f64(0.5 + 0.5 * (f64::from(random) / f64::from(u32::MAX)))
        } else {
            d
        }
    }
}

/// Counters of a service, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Sessions holding a slot now (connecting, open, or closing).
    pub sessions: usize,
    /// Connections accepted (server).
    pub accepted: u64,
    /// Connections closed at once because `max_sessions` was reached (server).
    pub rejected: u64,
    /// Outgoing connects that succeeded (client).
    pub connected: u64,
    /// Outgoing connects that failed or timed out (client).
    pub connect_failures: u64,
    /// Sessions that got `on_disconnected`.
    pub disconnected: u64,
    /// Of those, the ones whose reason [is an error](DisconnectReason::is_error).
    pub disconnected_with_error: u64,
    /// Sessions closed abortively (TCP reset): the server gave up on the peer or dropped
    /// bytes it had accepted to send (see [`DisconnectReason::is_abortive`]).
    pub aborted: u64,
    /// TLS services: handshakes finished (each session's `on_connected` follows one).
    pub tls_handshakes: u64,
    /// TLS services: sessions that ended before their handshake finished (not TLS, too
    /// slow, refused by either side, closed by the peer, or the service shut down). They
    /// never got a callback; the reason is logged at debug level.
    pub tls_handshake_failures: u64,
    /// WebSocket sessions: upgrades finished (each session's `on_connected` follows one).
    pub ws_upgrades: u64,
    /// WebSocket connections that ended before their upgrade finished (a bad or slow
    /// request, a refused one). Plain HTTP requests answered with a page are not counted.
    pub ws_upgrade_failures: u64,
    /// Workers that stopped because their driver failed (a persistent submission error,
    /// say): their sessions were reset, the other workers go on, and the service's
    /// `shutdown` returns an error that says what failed. Logged at error level too.
    pub failed_workers: usize,
}

#[cfg(test)]
mod tests {
    use super::Reconnect;
    use std::time::Duration;

    #[test]
    fn reconnect_backoff_doubles_up_to_max_with_jitter_in_range() {
        let r = Reconnect {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: false,
        };
        assert_eq!(r.delay(0, 0), Duration::from_millis(100));
        assert_eq!(r.delay(2, 0), Duration::from_millis(400));
        assert_eq!(r.delay(10, 0), Duration::from_secs(1));
        let j = Reconnect { jitter: true, ..r };
        assert_eq!(j.delay(1, 0), Duration::from_millis(100));
        assert_eq!(j.delay(1, u32::MAX), Duration::from_millis(200));
    }
}
