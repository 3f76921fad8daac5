//! Services: a set of sessions served by a set of workers (the seed's `Service`).
//!
//! [`ServerService`] accepts connections; [`ClientService`] opens them. Both own their
//! worker threads, count their sessions, broadcast, and shut down gracefully.

mod client;
mod running;
mod server;

pub use client::{ClientBuilder, ClientService};
pub use server::{ServerBuilder, ServerService};

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

use crate::buffer::SendBuffer;
use crate::config::SessionConfig;
use crate::driver::{Backend, Driver, DriverConfig};
use crate::reason::DisconnectReason;
use crate::session::SendError;
use crate::session::Session;
use crate::worker::{self, Command, Role, Worker, WorkerInit, WorkerRemote, INBOX_ENTRY};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long dropping a service without calling `shutdown` lets queued sends drain.
pub const DEFAULT_DROP_SHUTDOWN: Duration = Duration::from_secs(1);

/// State shared by a service, its workers and (weakly) its sessions.
pub(crate) struct ServiceShared {
    /// "server" or "client": the `service` label of metrics.
    pub(crate) name: &'static str,
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
    /// Optional cap of sessions per peer IP address, with the current counts.
    pub(crate) per_ip_limit: Option<usize>,
    pub(crate) per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Optional accepted connections per second (service-wide).
    pub(crate) accept_rate: Option<u32>,
    /// Client services: reconnect lost or failed sessions.
    pub(crate) reconnect: Option<Reconnect>,
}

impl ServiceShared {
    fn new(
        name: &'static str,
        config: SessionConfig,
        backend: Backend,
        max_sessions: usize,
    ) -> Self {
        ServiceShared {
            name,
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
            per_ip_limit: None,
            per_ip: Mutex::new(HashMap::new()),
            accept_rate: None,
            reconnect: None,
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
    fn broadcast(&self, buf: SendBuffer) -> Result<(), SendError> {
        let bytes = buf.into_bytes();
        let workers = self.workers.get().map_or(&[][..], Vec::as_slice);
        let cost = bytes.len() + INBOX_ENTRY;
        WorkerRemote::post_all(workers.iter().map(|w| &**w), cost, || {
            Command::Broadcast(bytes.clone())
        })
    }

    fn stats(&self) -> ServiceStats {
        ServiceStats {
            sessions: self.sessions.load(Ordering::Acquire),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            disconnected: self.disconnected.load(Ordering::Relaxed),
            disconnected_with_error: self.disconnected_with_error.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
        }
    }
}

/// Automatic reconnection of a [`ClientService`]'s sessions (server-to-server links): a
/// session that fails to connect or is lost (anything but a local disconnect or shutdown)
/// is replaced by a new connect after an exponential backoff.
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
}

/// A session's weak view of its service: broadcast and counts, from inside callbacks.
///
/// Thread safety: `Send + Sync`; calls post messages to the workers.
#[derive(Clone)]
pub struct ServiceRef(pub(crate) Arc<ServiceShared>);

impl ServiceRef {
    /// Queues `buf` on every open session of the service (one message per worker, no copy
    /// of the payload per session). All or nothing: [`SendError::InboxFull`] when a worker
    /// is not keeping up.
    pub fn broadcast(&self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        self.0.broadcast(buf.into())
    }

    /// The service's counters.
    pub fn stats(&self) -> ServiceStats {
        self.0.stats()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.0.workers.get().map_or(0, Vec::len)
    }

    /// Runs `job` on worker `worker` (modulo the worker count), in order with the other
    /// messages to it.
    pub fn run_on_worker(
        &self,
        worker: usize,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), crate::WorkerGone> {
        let workers = self.0.workers.get().ok_or(crate::WorkerGone)?;
        workers[worker % workers.len()]
            .post(Command::Job(Box::new(job)))
            .map_err(|_| crate::WorkerGone)
    }
}

/// The workers of a running service.
pub(crate) struct Workers {
    shared: Arc<ServiceShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread per role; each builds its driver and worker on its own thread
    /// (io_uring's single issuer) and reports back. Only once every worker is built is the
    /// worker set published and are the workers let run: no worker accepts, and no user
    /// code runs, before a session could see the whole service (a room bound then keeps
    /// its worker list for good).
    pub(crate) fn spawn<S, F>(
        shared: ServiceShared,
        roles: Vec<Role>,
        factory: F,
        name: &str,
    ) -> io::Result<Workers>
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let shared = Arc::new(shared);
        let factory: Arc<dyn Fn() -> S + Send + Sync> = Arc::new(factory);
        let mut threads = Vec::new();
        let mut remotes = Vec::new();
        let mut gates = Vec::new();
        let mut failure = None;
        for (index, role) in roles.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            // `true`: run; `false` (or the sender gone): another worker failed, end.
            let (go_tx, go_rx) = mpsc::sync_channel::<bool>(1);
            let shared2 = shared.clone();
            let factory = factory.clone();
            let backend = shared.backend;
            let spawned =
                std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
                    let dc = DriverConfig {
                        recv_buffers: shared2.config.recv_buffers_per_worker,
                        recv_buffer_size: shared2.config.recv_buffer_size,
                        uring_off: shared2.config.diagnostics.uring_switches(),
                        ..DriverConfig::default()
                    };
                    let driver = match Driver::new(backend, &dc) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let remote =
                        Arc::new(worker::remote(index, shared2.config.clone(), tx, driver.waker()));
                    let init = WorkerInit {
                        driver,
                        rx,
                        remote: remote.clone(),
                        shared: shared2,
                        factory,
                        role,
                    };
                    match Worker::new(init) {
                        Ok(w) => {
                            let _ = ready_tx.send(Ok(remote));
                            if go_rx.recv() == Ok(true) {
                                w.run();
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            match spawned {
                Ok(t) => {
                    threads.push(t);
                    gates.push(go_tx);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            match ready_rx.recv() {
                Ok(Ok(remote)) => remotes.push(remote),
                Ok(Err(e)) => {
                    failure = Some(io::Error::new(
                        e.kind(),
                        format!("starting a {} worker failed: {e}", backend),
                    ));
                    break;
                }
                Err(_) => {
                    failure = Some(io::Error::other("a worker thread died while starting"));
                    break;
                }
            }
        }
        let _ = shared.workers.set(remotes);
        for gate in gates {
            let _ = gate.send(failure.is_none());
        }
        let workers = Workers { shared, threads };
        match failure {
            Some(e) => {
                drop(workers); // shuts down the ones that started
                Err(e)
            }
            None => Ok(workers),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<ServiceShared> {
        &self.shared
    }

    pub(crate) fn post_all(&self, mut cmd: impl FnMut() -> Command) {
        for w in self.shared.workers.get().into_iter().flatten() {
            let _ = w.post(cmd());
        }
    }

    /// Graceful stop: every worker stops accepting, flushes up to `timeout`, disconnects
    /// its sessions with [`DisconnectReason::Shutdown`], and ends; then the threads are
    /// joined.
    pub(crate) fn shutdown(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.post_all(|| Command::Shutdown { deadline });
        let mut panicked = 0;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                panicked += 1;
            }
        }
        if panicked > 0 {
            return Err(io::Error::other(format!("{panicked} worker threads panicked")));
        }
        Ok(())
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.threads.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.shutdown(DEFAULT_DROP_SHUTDOWN);
        }
    }
}

/// The default number of workers: the available cores.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
