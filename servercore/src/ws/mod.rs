//! WebSocket (RFC 6455) for sessions: browser players in the same rooms as native clients.
//!
//! A WebSocket listener ([`ServerBuilder::websocket`](crate::service::ServerBuilder::websocket))
//! or a WebSocket client service ([`ClientBuilder::websocket`](crate::service::ClientBuilder::websocket))
//! runs the HTTP/1.1 upgrade, then carries **binary messages**. The session sees the
//! messages' bytes as one stream, exactly as on TCP, and each buffer it sends becomes (part
//! of) one binary message: so a session whose every send buffer holds whole packets (as
//! [`PacketWriter`](crate::packet::PacketWriter) makes them) sends messages that each carry
//! whole packets, never a packet split over two (PROTOCOL.md section 6).
//!
//! The layer answers pings, runs the close handshake (status codes both ways), reassembles
//! fragmented messages up to [`WsConfig::max_message`], and refuses what the RFC forbids,
//! each with the status code it calls for. Server frames are not masked, so a room
//! broadcast's payload stays one shared buffer: each WebSocket member's next send gets a
//! frame header (2 to 10 bytes) in front of the same bytes. Over TLS (wss) it runs inside
//! the [`crate::tls`] layer.

mod frame;
mod handshake;
mod layer;

pub use handshake::Page;

/// For the fuzz target (`fuzz/fuzz_targets/ws_frames.rs`), not API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::frame::check_stream;
}
pub(crate) use layer::WsLayer;

pub use crate::reason::WsError;
use std::sync::Arc;
use std::time::Duration;

/// Options of a WebSocket listener or client service.
///
/// | field | default | what it bounds |
/// |---|---|---|
/// | `max_request_head` | 8 KiB | the HTTP upgrade request's head; beyond: `431` and close |
/// | `handshake_timeout` | 10 s | connection to upgrade done (after TLS, if any); beyond: reset |
/// | `max_message` | 1 MiB | one message, all its fragments; beyond: close 1009 |
///
/// ```
/// let cfg = servercore::ws::WsConfig::default();
/// assert_eq!(cfg.max_message, 1 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Most bytes of the HTTP request (or, client side, response) head.
    pub max_request_head: usize,
    /// Time for the upgrade to finish.
    pub handshake_timeout: Duration,
    /// Most bytes of one message (reassembled).
    pub max_message: usize,
    /// Pages served to a plain `GET` of their path (no upgrade), then the connection closes.
    pub pages: Vec<Page>,
    /// Client side: the `Host` header and the request path.
    pub host: String,
    /// Client side: the request path (default `/`).
    pub path: String,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_request_head: 8 << 10,
            handshake_timeout: Duration::from_secs(10),
            max_message: 1 << 20,
            pages: Vec::new(),
            host: "localhost".into(),
            path: "/".into(),
        }
    }
}

impl WsConfig {
    /// Adds a page served at `path` (e.g. a browser client for the game).
    pub fn page(mut self, path: &str, content_type: &str, body: impl Into<bytes::Bytes>) -> Self {
        self.pages.push(Page {
            path: path.to_string(),
            content_type: content_type.to_string(),
            body: body.into(),
        });
        self
    }
}

/// A listener's or client's WebSocket setup, shared by its sessions.
#[derive(Debug, Clone)]
pub(crate) struct WsSetup {
    pub(crate) config: Arc<WsConfig>,
    pub(crate) server: bool,
}
