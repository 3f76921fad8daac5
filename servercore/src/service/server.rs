//! [`ServerService`]: listen, accept, serve (the seed's `ServerService` + `Listener`).

use super::{default_workers, ServiceShared, ServiceStats, Workers};
use crate::buffer::SendBuffer;
use crate::config::SessionConfig;
use crate::driver::{Backend, BackendChoice};
use crate::session::Session;
use crate::sys;
use crate::worker::Role;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Configures and starts a [`ServerService`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    addr: SocketAddr,
    workers: usize,
    max_sessions: usize,
    reuse_port: bool,
    backend: BackendChoice,
    config: SessionConfig,
    per_ip: Option<usize>,
    accept_rate: Option<u32>,
}

impl ServerBuilder {
    /// Worker threads (default: the available cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Most sessions at once (default 10,000). A connection over the cap is closed at once
    /// and counted in [`ServiceStats::rejected`].
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Most sessions from one IP address at once (default: no limit). Connections over it
    /// are closed at once and counted in [`ServiceStats::rejected`].
    pub fn max_sessions_per_ip(mut self, n: usize) -> Self {
        self.per_ip = Some(n);
        self
    }

    /// Most connections accepted per second, service-wide (default: no limit). Connections
    /// over the rate are closed at once and counted in [`ServiceStats::rejected`].
    pub fn max_accept_rate(mut self, per_second: u32) -> Self {
        self.accept_rate = Some(per_second.max(1));
        self
    }

    /// One listener per worker with `SO_REUSEPORT` (default, where the OS balances it), or
    /// one acceptor that hands connections to the workers in turn.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// The driver backend (default: [`BackendChoice::Auto`]).
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.backend = choice;
        self
    }

    /// `TCP_NODELAY` on accepted sockets (default on).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.config.nodelay = on;
        self
    }

    /// All per-session options at once.
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds, starts the workers, and starts accepting; `factory` makes one session object
    /// per connection, on the worker that will own it.
    pub fn start<S, F>(self, factory: F) -> io::Result<ServerService>
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let backend = self.backend.resolve()?;
        let per_worker = self.reuse_port && sys::REUSE_PORT_BALANCES && self.workers > 1;
        let listeners = sys::listen_group(self.addr, if per_worker { self.workers } else { 1 })?;
        let local_addr = listeners[0].local_addr()?;
        for l in &listeners {
            sys::configure_listener(l, self.config.nodelay)?;
        }
        let mut listeners = listeners.into_iter();
        let roles = (0..self.workers)
            .map(|_| Role { listeners: listeners.next().into_iter().collect(), connect_to: None })
            .collect();
        let mut shared = ServiceShared::new("server", self.config, backend, self.max_sessions);
        shared.single_acceptor = !per_worker && self.workers > 1;
        shared.per_ip_limit = self.per_ip;
        shared.accept_rate = self.accept_rate;
        let workers = Workers::spawn(shared, roles, factory, "sc-server")?;
        tracing::info!("listening on {local_addr} (backend: {backend}, workers: {})", self.workers);
        Ok(ServerService { workers, local_addr, backend, worker_count: self.workers })
    }
}

/// A running server: accepts connections and serves them with sessions made by the
/// factory.
///
/// Thread safety: `Send + Sync`; every method may be called from any thread. Dropping it
/// shuts it down with [`DEFAULT_DROP_SHUTDOWN`](super::DEFAULT_DROP_SHUTDOWN).
///
/// ```
/// use servercore::{Ctx, ServerService, Session};
/// use std::io::{Read, Write};
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
/// let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
///     .workers(2)
///     .start(|| Echo)
///     .unwrap();
/// let mut client = std::net::TcpStream::connect(server.local_addr()).unwrap();
/// client.write_all(b"ping").unwrap();
/// let mut back = [0u8; 4];
/// client.read_exact(&mut back).unwrap();
/// assert_eq!(&back, b"ping");
/// server.shutdown(Duration::from_secs(1)).unwrap();
/// ```
pub struct ServerService {
    workers: Workers,
    local_addr: SocketAddr,
    backend: Backend,
    worker_count: usize,
}

impl ServerService {
    /// A builder for a server listening on `addr` (port 0 picks a free port).
    pub fn builder(addr: SocketAddr) -> ServerBuilder {
        ServerBuilder {
            addr,
            workers: default_workers(),
            max_sessions: 10_000,
            reuse_port: true,
            backend: BackendChoice::Auto,
            config: SessionConfig::default(),
            per_ip: None,
            accept_rate: None,
        }
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.worker_count
    }

    /// Sessions holding a slot now.
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

    /// Queues `buf` on every open session: one message per worker, no payload copy per
    /// session. All or nothing: [`SendError::InboxFull`](crate::SendError::InboxFull) when
    /// a worker is not keeping up.
    pub fn broadcast(&self, buf: impl Into<SendBuffer>) -> Result<(), crate::SendError> {
        self.workers.shared().broadcast(buf.into())
    }

    /// Stops accepting, lets queued sends drain for up to `timeout`, disconnects every
    /// session with [`Shutdown`](crate::DisconnectReason::Shutdown), and joins the workers.
    pub fn shutdown(mut self, timeout: Duration) -> io::Result<()> {
        self.workers.shutdown(timeout)
    }
}
