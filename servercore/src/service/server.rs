//! [`ServerService`]: listen, accept, serve (the seed's `ServerService` + `Listener`).

use super::running::{running_methods, Running};
use super::settings::{builder_setting, BuilderSettings};
use super::{ServiceShared, Workers};
use crate::config::SessionConfig;
use crate::driver::{BackendChoice, Diagnostics};
use crate::session::Session;
use crate::sys;
use crate::tls::{rustls, TlsSetup};
use crate::worker::WorkerDuties;
use crate::ws::{WsConfig, WsSetup};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// Configures and starts a [`ServerService`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    addr: SocketAddr,
    max_sessions: usize,
    reuse_port: bool,
    settings: BuilderSettings,
    per_ip: Option<usize>,
    accept_rate: Option<u32>,
    tls: Option<Arc<rustls::ServerConfig>>,
    websocket: Option<(SocketAddr, WsConfig)>,
}

impl ServerBuilder {
    builder_setting!(
        /// Worker threads (default: the available cores).
        workers
    );

    /// Most sessions at once (default 10,000). A connection over the cap is closed at once
    /// and counted in [`ServiceStats::rejected`](super::ServiceStats::rejected).
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Most sessions from one IP address at once (default: no limit). Connections over it
    /// are closed at once and counted in [`ServiceStats::rejected`](super::ServiceStats::rejected).
    pub fn max_sessions_per_ip(mut self, n: usize) -> Self {
        self.per_ip = Some(n);
        self
    }

    /// Most connections accepted per second, service-wide (default: no limit). Connections
    /// over the rate are closed at once and counted in
    /// [`ServiceStats::rejected`](super::ServiceStats::rejected).
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

    builder_setting!(backend);

    builder_setting!(
        /// `TCP_NODELAY` on accepted sockets (default on). Wins over the `nodelay` of a
        /// [`session_config`](Self::session_config), whichever is called first.
        nodelay
    );

    builder_setting!(
        /// All per-session options at once. Settings made with the builder's own methods
        /// (`nodelay`) apply over it, before or after.
        ///
        /// ```
        /// use servercore::{ServerService, SessionConfig, Session, Ctx};
        /// struct Quiet;
        /// impl Session for Quiet {
        ///     fn on_recv(&mut self, _: &mut Ctx<'_>, data: &[u8]) -> usize { data.len() }
        /// }
        /// let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
        ///     .workers(1)
        ///     .nodelay(false)
        ///     .session_config(SessionConfig { max_recv_buffer: 64 << 10, ..Default::default() })
        ///     .start(|| Quiet)
        ///     .unwrap(); // Nagle stays on: `nodelay(false)` is kept
        /// server.shutdown(std::time::Duration::from_secs(1)).unwrap();
        /// ```
        session_config
    );

    /// Accept only TLS: every session runs a TLS handshake with this configuration first
    /// and sees plaintext after it (see [`crate::tls`], which also loads PEM files).
    /// `on_connected` runs once the handshake is done.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// A second listener, on `addr`, whose connections speak WebSocket (RFC 6455, binary
    /// messages; see [`crate::ws`]): the same workers, session factory and rooms serve both,
    /// so native and browser clients meet in one room. With [`tls`](Self::tls) it is wss.
    /// Plain `GET`s of a [page](WsConfig::page)'s path get that page.
    pub fn websocket(mut self, addr: SocketAddr, config: WsConfig) -> Self {
        self.websocket = Some((addr, config));
        self
    }

    builder_setting!(diagnostics);

    /// Binds, starts the workers, and starts accepting; `factory` makes one session object
    /// per connection, on the worker that will own it.
    pub fn start<S, F>(self, factory: F) -> io::Result<ServerService>
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let (config, backend) =
            self.settings.overrides.resolve(self.settings.config, self.settings.backend)?;
        let per_worker = self.reuse_port && sys::REUSE_PORT_BALANCES && self.settings.workers > 1;
        let group = if per_worker { self.settings.workers } else { 1 };
        let listeners = sys::listen_group(self.addr, group)?;
        let local_addr = listeners[0].local_addr()?;
        let ws_listeners = match &self.websocket {
            Some((addr, _)) => sys::listen_group(*addr, group)?,
            None => Vec::new(),
        };
        let ws_addr = ws_listeners.first().map(TcpListener::local_addr).transpose()?;
        for l in listeners.iter().chain(&ws_listeners) {
            sys::configure_listener(l, config.nodelay)?;
        }
        let mut listeners = listeners.into_iter();
        let mut ws_listeners = ws_listeners.into_iter();
        let roles = (0..self.settings.workers)
            .map(|_| WorkerDuties {
                listeners: listeners
                    .next()
                    .map(|l| (l, false))
                    .into_iter()
                    .chain(ws_listeners.next().map(|l| (l, true)))
                    .collect(),
                connect_to: None,
            })
            .collect();
        let mut shared = ServiceShared::new("server", config, backend, self.max_sessions);
        shared.single_acceptor = !per_worker && self.settings.workers > 1;
        shared.per_ip_limit = self.per_ip;
        shared.accept_rate = self.accept_rate;
        let tls = self.tls.is_some();
        shared.tls = self.tls.map(TlsSetup::Server);
        shared.ws =
            self.websocket.map(|(_, config)| WsSetup { config: Arc::new(config), server: true });
        let workers = Workers::spawn(shared, roles, factory, "sc-server")?;
        let tls = if tls { ", tls" } else { "" };
        tracing::info!(
            "listening on {local_addr} (backend: {backend}, workers: {}{tls})",
            self.settings.workers
        );
        if let Some(addr) = ws_addr {
            tracing::info!(
                "listening on {addr} (backend: {backend}, workers: {}{tls}, websocket)",
                self.settings.workers
            );
        }
        let running = Running { workers, backend, worker_count: self.settings.workers };
        Ok(ServerService { running, local_addr, ws_addr })
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
    running: Running,
    local_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
}

impl ServerService {
    /// A builder for a server listening on `addr` (port 0 picks a free port).
    pub fn builder(addr: SocketAddr) -> ServerBuilder {
        ServerBuilder {
            addr,
            settings: BuilderSettings::new(),
            max_sessions: 10_000,
            reuse_port: true,
            per_ip: None,
            accept_rate: None,
            tls: None,
            websocket: None,
        }
    }

    /// The address the server listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket listener's address, when the server has one
    /// ([`ServerBuilder::websocket`]).
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    running_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config a builder would start with.
    fn resolved(b: ServerBuilder) -> SessionConfig {
        b.settings.overrides.resolve(b.settings.config, BackendChoice::Poll).unwrap().0
    }

    #[test]
    fn nodelay_is_kept_whether_set_before_or_after_session_config() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cfg = SessionConfig { max_recv_buffer: 1 << 16, ..Default::default() };
        let before = ServerService::builder(addr).nodelay(false).session_config(cfg.clone());
        let after = ServerService::builder(addr).session_config(cfg).nodelay(false);
        for b in [before, after] {
            let c = resolved(b);
            assert_eq!((c.nodelay, c.max_recv_buffer), (false, 1 << 16));
        }
        // Without the builder's setting, the session config's own value counts.
        let own = SessionConfig { nodelay: false, ..Default::default() };
        assert!(!resolved(ServerService::builder(addr).session_config(own)).nodelay);
        // Diagnostics of the builder and of the config add up, in either order.
        let d = Diagnostics { no_room_coalesce: true, ..Default::default() };
        let own = SessionConfig {
            diagnostics: Diagnostics { uring_no_bufring: true, ..Default::default() },
            ..Default::default()
        };
        let c = resolved(ServerService::builder(addr).diagnostics(d).session_config(own));
        assert!(c.diagnostics.no_room_coalesce && c.diagnostics.uring_no_bufring);
    }
}
