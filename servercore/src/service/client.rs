//! [`ClientService`]: outgoing sessions (the seed's `ClientService`): load tests and
//! server-to-server links.

use super::{default_workers, ServiceShared, ServiceStats, Workers};
use crate::buffer::SendBuffer;
use crate::config::SessionConfig;
use crate::driver::{Backend, BackendChoice};
use crate::mailbox::Command;
use crate::session::Session;
use crate::worker::Role;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Configures and starts a [`ClientService`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: SocketAddr,
    sessions: usize,
    workers: usize,
    backend: BackendChoice,
    config: SessionConfig,
    reconnect: Option<super::Reconnect>,
}

impl ClientBuilder {
    /// Sessions to open at start, spread over the workers (default 1).
    pub fn sessions(mut self, n: usize) -> Self {
        self.sessions = n;
        self
    }

    /// Worker threads (default: the available cores, at most the session count).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// The driver backend (default: [`BackendChoice::Auto`]).
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.backend = choice;
        self
    }

    /// How long a connect may take before it fails with `TimedOut` (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Reconnect failed or lost sessions with backoff (default: off).
    pub fn reconnect(mut self, policy: super::Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// `TCP_NODELAY` on the sockets (default on).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.config.nodelay = on;
        self
    }

    /// All per-session options at once.
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the workers and the connects. A failed connect is reported to that session's
    /// [`on_connect_failed`](Session::on_connect_failed), never as `on_connected`.
    pub fn start<S, F>(self, factory: F) -> io::Result<ClientService>
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let backend = self.backend.resolve()?;
        let roles = (0..self.workers)
            .map(|_| Role { listeners: Vec::new(), connect_to: Some(self.addr) })
            .collect();
        let mut shared = ServiceShared::new("client", self.config, backend, usize::MAX);
        shared.reconnect = self.reconnect;
        let workers = Workers::spawn(shared, roles, factory, "sc-client")?;
        let client = ClientService {
            workers,
            addr: self.addr,
            backend,
            worker_count: self.workers,
            next: AtomicUsize::new(0),
        };
        client.connect(self.sessions);
        Ok(client)
    }
}

/// Outgoing sessions to one address, spread round-robin over the workers.
///
/// Thread safety: `Send + Sync`; every method may be called from any thread.
///
/// ```
/// use servercore::{ClientService, Ctx, ServerService, Session};
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// struct Echo;
/// impl Session for Echo {
///     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
///         let _ = ctx.send(data.to_vec());
///         data.len()
///     }
/// }
///
/// /// Sends one greeting and reports the answer.
/// struct Link(mpsc::Sender<Vec<u8>>);
/// impl Session for Link {
///     fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
///         let _ = ctx.send(&b"hello"[..]);
///     }
///     fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
///         if data.len() < 5 { return 0; } // wait for the whole answer
///         self.0.send(data.to_vec()).unwrap();
///         data.len()
///     }
/// }
///
/// let server = ServerService::builder("127.0.0.1:0".parse().unwrap()).workers(1).start(|| Echo).unwrap();
/// let (tx, rx) = mpsc::channel();
/// let link = ClientService::builder(server.local_addr())
///     .sessions(1)
///     .workers(1)
///     .start(move || Link(tx.clone()))
///     .unwrap();
/// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"hello");
/// link.shutdown(Duration::from_secs(1)).unwrap();
/// server.shutdown(Duration::from_secs(1)).unwrap();
/// ```
pub struct ClientService {
    workers: Workers,
    addr: SocketAddr,
    backend: Backend,
    worker_count: usize,
    next: AtomicUsize,
}

impl ClientService {
    /// A builder for sessions to `addr`.
    pub fn builder(addr: SocketAddr) -> ClientBuilder {
        ClientBuilder {
            addr,
            sessions: 1,
            workers: default_workers(),
            backend: BackendChoice::Auto,
            config: SessionConfig::default(),
            reconnect: None,
        }
    }

    /// Opens `n` more sessions, spread over the workers.
    pub fn connect(&self, n: usize) {
        let w = self.worker_count;
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        let mut counts = vec![0usize; w];
        for i in 0..n {
            counts[(start + i) % w] += 1;
        }
        let remotes = self.workers.shared().workers.get().cloned().unwrap_or_default();
        for (remote, count) in remotes.iter().zip(counts) {
            if count > 0 {
                let _ = remote.post(Command::Connect { count });
            }
        }
    }

    /// The address sessions connect to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sessions holding a slot now (connecting, open or closing).
    pub fn session_count(&self) -> usize {
        self.stats().sessions
    }

    /// A shareable reference to this service (broadcast, jobs, counters).
    pub fn service(&self) -> crate::ServiceRef {
        crate::ServiceRef(self.workers.shared().clone())
    }

    /// The service's counters.
    pub fn stats(&self) -> ServiceStats {
        self.workers.shared().stats()
    }

    /// Queues `buf` on every open session. All or nothing:
    /// [`SendError::InboxFull`](crate::SendError::InboxFull) when a worker is not keeping up.
    pub fn broadcast(&self, buf: impl Into<SendBuffer>) -> Result<(), crate::SendError> {
        self.workers.shared().broadcast(buf.into())
    }

    /// Flushes for up to `timeout`, disconnects every session with
    /// [`Shutdown`](crate::DisconnectReason::Shutdown), and joins the workers.
    pub fn shutdown(mut self, timeout: Duration) -> io::Result<()> {
        self.workers.shutdown(timeout)
    }
}
