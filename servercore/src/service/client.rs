//! [`ClientService`]: outgoing sessions (the seed's `ClientService`): load tests and
//! server-to-server links.

use super::running::{running_methods, Running};
use super::settings::{builder_setting, BuilderSettings};
use super::{ServiceShared, Workers};
use crate::config::SessionConfig;
use crate::driver::{BackendChoice, Diagnostics};
use crate::mailbox::Command;
use crate::session::Session;
use crate::tls::{rustls, TlsSetup};
use crate::worker::WorkerDuties;
use crate::ws::{WsConfig, WsSetup};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Configures and starts a [`ClientService`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: SocketAddr,
    sessions: usize,
    settings: BuilderSettings,
    reconnect: Option<super::Reconnect>,
    tls: Option<TlsSetup>,
    websocket: Option<WsConfig>,
}

impl ClientBuilder {
    /// Sessions to open at start, spread over the workers (default 1).
    pub fn sessions(mut self, n: usize) -> Self {
        self.sessions = n;
        self
    }

    builder_setting!(
        /// Worker threads (default: the available cores, at most the session count).
        workers
    );

    builder_setting!(backend);

    /// How long a connect may take before it fails with `TimedOut` (default 10 s). Wins
    /// over the `connect_timeout` of a [`session_config`](Self::session_config), whichever
    /// is called first.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.settings.overrides.connect_timeout = Some(d);
        self
    }

    /// Reconnect failed or lost sessions with backoff (default: off).
    pub fn reconnect(mut self, policy: super::Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Speak TLS on every session: the handshake with this configuration, checking the
    /// server's certificate against `server_name` (see [`crate::tls`] for helpers that
    /// build both). `on_connected` runs once the handshake is done; a failed handshake ends
    /// the session with [`DisconnectReason::Tls`](crate::DisconnectReason::Tls) and no
    /// callback (it counts as a lost session for [`reconnect`](Self::reconnect)).
    pub fn tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        self.tls = Some(TlsSetup::Client(config, server_name));
        self
    }

    /// Speak WebSocket on every session (after TLS, if any: wss): the upgrade request with
    /// the config's `host` and `path`, then binary messages, each send buffer one message
    /// (see [`crate::ws`]). `on_connected` runs once the upgrade is done.
    pub fn websocket(mut self, config: WsConfig) -> Self {
        self.websocket = Some(config);
        self
    }

    builder_setting!(
        /// `TCP_NODELAY` on the sockets (default on). Wins over the `nodelay` of a
        /// [`session_config`](Self::session_config), whichever is called first.
        nodelay
    );

    builder_setting!(
        /// All per-session options at once. Settings made with the builder's own methods
        /// (`nodelay`, `connect_timeout`) apply over it, before or after.
        ///
        /// ```
        /// use servercore::{ClientService, SessionConfig, Session, Ctx};
        /// use std::time::Duration;
        /// struct Quiet;
        /// impl Session for Quiet {
        ///     fn on_recv(&mut self, _: &mut Ctx<'_>, data: &[u8]) -> usize { data.len() }
        /// }
        /// let clients = ClientService::builder("127.0.0.1:9".parse().unwrap())
        ///     .sessions(0)
        ///     .workers(1)
        ///     .connect_timeout(Duration::from_secs(2))
        ///     .session_config(SessionConfig { nodelay: false, ..Default::default() })
        ///     .start(|| Quiet)
        ///     .unwrap(); // connects time out after 2 s, and Nagle is on
        /// clients.shutdown(Duration::from_secs(1)).unwrap();
        /// ```
        session_config
    );

    builder_setting!(diagnostics);

    /// Starts the workers and the connects. A failed connect is reported to that session's
    /// [`on_connect_failed`](Session::on_connect_failed), never as `on_connected`.
    pub fn start<S, F>(self, factory: F) -> io::Result<ClientService>
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let (config, backend) =
            self.settings.overrides.resolve(self.settings.config, self.settings.backend)?;
        let roles = (0..self.settings.workers)
            .map(|_| WorkerDuties { listeners: Vec::new(), connect_to: Some(self.addr) })
            .collect();
        let mut shared = ServiceShared::new("client", config, backend, usize::MAX);
        shared.reconnect = self.reconnect;
        shared.tls = self.tls;
        shared.ws =
            self.websocket.map(|config| WsSetup { config: Arc::new(config), server: false });
        let workers = Workers::spawn(shared, roles, factory, "sc-client")?;
        let client = ClientService {
            running: Running { workers, backend, worker_count: self.settings.workers },
            addr: self.addr,
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
    running: Running,
    addr: SocketAddr,
    next: AtomicUsize,
}

impl ClientService {
    /// A builder for sessions to `addr`.
    pub fn builder(addr: SocketAddr) -> ClientBuilder {
        ClientBuilder {
            addr,
            sessions: 1,
            settings: BuilderSettings::new(),
            reconnect: None,
            tls: None,
            websocket: None,
        }
    }

    /// Opens `n` more sessions, spread over the workers.
    pub fn connect(&self, n: usize) {
        let w = self.running.worker_count;
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        let mut counts = vec![0usize; w];
        for i in 0..n {
            counts[(start + i) % w] += 1;
        }
        let remotes = self.running.workers.shared().workers.get().cloned().unwrap_or_default();
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

    running_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config a builder would start with.
    fn resolved(b: ClientBuilder) -> SessionConfig {
        b.settings.overrides.resolve(b.settings.config, BackendChoice::Poll).unwrap().0
    }

    #[test]
    fn nodelay_and_connect_timeout_are_kept_whether_set_before_or_after_session_config() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let cfg = SessionConfig { max_recv_buffer: 1 << 16, ..Default::default() };
        let t = Duration::from_millis(250);
        let before = ClientService::builder(addr)
            .nodelay(false)
            .connect_timeout(t)
            .session_config(cfg.clone());
        let after =
            ClientService::builder(addr).session_config(cfg).connect_timeout(t).nodelay(false);
        for b in [before, after] {
            let c = resolved(b);
            assert_eq!((c.nodelay, c.connect_timeout, c.max_recv_buffer), (false, t, 1 << 16));
        }
        let own = SessionConfig { nodelay: false, connect_timeout: t, ..Default::default() };
        let c = resolved(ClientService::builder(addr).session_config(own));
        assert_eq!((c.nodelay, c.connect_timeout), (false, t));
    }
}
