//! Rooms that span servers, over NATS (core NATS: at-most-once, ordered per publisher).
//!
//! A [`Cluster`] is one NATS link per process: a [`ClientService`]
//! session on a worker of its own (servercore's event loop, no other runtime) speaking the
//! NATS client protocol, with the reconnect policy of any client service and a PING
//! keep-alive. [`Cluster::room`] gives a [`Room`] whose broadcasts also go to NATS, once,
//! on the subject `<prefix>.room.<name>`; what other nodes publish there is delivered to
//! this node's members as one shared buffer, like a local broadcast. A node's own messages
//! are not echoed back to it (`"echo": false`), so none is delivered twice.
//!
//! Room messages bound for NATS are gathered per room until the end of the sending
//! worker's loop turn (and while a flush is on its way to the link's worker), and go out as
//! one NATS message (their bytes back to back, as a room's members receive consecutive
//! broadcasts anyway): NATS, the link and the receiving nodes handle one message per
//! gathered batch, not one per broadcast.
//!
//! What it guarantees, and what it does not:
//! - **Order per sender.** A session's broadcasts reach every member on every node in the
//!   order it made them: locally as for any room, and across nodes because one node
//!   publishes over one connection, which NATS keeps in order, and delivers what it
//!   receives in that order. There is no order *between* senders on different nodes: two
//!   members may see two nodes' messages interleaved differently.
//! - **At most once.** While the link is down (NATS restarting, unreachable), broadcasts
//!   still reach local members but are not published: they are counted as dropped
//!   ([`ClusterStats::dropped`], `servercore_cluster_dropped_total`), never queued without
//!   bound. The same holds for a NATS link too slow to take them (its send queue is bounded
//!   by [`ClusterConfig::max_pending`]); a worker never waits for NATS.
//! - The link reconnects with backoff and subscribes again; the state is logged and shown
//!   as `servercore_cluster_link_up`.
//!
//! Direct sends across nodes: [`Cluster::address`] names a session (node + session id),
//! and [`Cluster::send_to`] reaches it wherever it is.

mod link;
mod proto;

use crate::buffer::SendBuffer;
use crate::error::SendError;
use crate::registry::Reconnect;
use crate::room::Room;
use crate::service::ClientService;
use crate::session::{SessionHandle, SessionId};
use bytes::Bytes;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to reach NATS and who this node is.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT` (or `HOST:PORT`); resolved at start.
    pub url: String,
    /// This node's name: unique in the cluster, a NATS subject token (no `.`, `*`, `>`,
    /// spaces).
    pub node: String,
    /// Subject prefix (default `sc`): rooms are `<prefix>.room.<name>`.
    pub prefix: String,
    /// Backoff between connection attempts.
    pub reconnect: Reconnect,
    /// How often the link sends PING; two unanswered PINGs drop the link (default 5 s).
    pub ping_interval: Duration,
    /// Most bytes waiting to go to NATS; beyond, publications are dropped and counted
    /// (default 8 MiB).
    pub max_pending: usize,
}

impl ClusterConfig {
    /// A config for `url` and node `node`, with defaults for the rest.
    pub fn new(url: &str, node: &str) -> Self {
        ClusterConfig {
            url: url.to_string(),
            node: node.to_string(),
            prefix: "sc".into(),
            reconnect: Reconnect {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
                jitter: true,
            },
            ping_interval: Duration::from_secs(5),
            max_pending: 8 << 20,
        }
    }
}

/// A session's address anywhere in the cluster: its node and its id there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterAddr {
    /// The node's name.
    pub node: String,
    /// The session's id on that node.
    pub session: SessionId,
}

/// The cluster's counters (also published as `servercore_cluster_*` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// The link is connected and NATS answered.
    pub link_up: bool,
    /// Room messages (broadcasts) and direct sends handed to NATS.
    pub published: u64,
    /// NATS messages received and delivered locally (a room's may carry several
    /// broadcasts of another node).
    pub received: u64,
    /// Messages dropped (at most once): publications while the link was down or too slow
    /// to take them, and messages from NATS a local worker was too far behind to take.
    pub dropped: u64,
    /// Times the link came up (1 after the first connect).
    pub connects: u64,
}

pub(crate) struct Inner {
    pub(crate) node: String,
    pub(crate) prefix: String,
    pub(crate) ping_interval: Duration,
    rooms: Mutex<HashMap<String, Room>>,
    /// The link session, while connected.
    link: Mutex<Option<SessionHandle>>,
    /// Sessions named by [`Cluster::address`], by id.
    directs: Mutex<Directs>,
    /// Room messages gathered for the link.
    outbox: Mutex<Outbox>,
    max_pending: usize,
    /// The server's `max_payload` (its INFO; 1 MiB until known): a bigger publication would
    /// make NATS close the link, so it is dropped and counted instead.
    pub(crate) max_payload: AtomicUsize,
    pub(crate) up: AtomicBool,
    published: AtomicU64,
    pub(crate) received: AtomicU64,
    dropped: AtomicU64,
    pub(crate) connects: AtomicU64,
    /// Connect failures since the link was last up.
    pub(crate) failures: AtomicU64,
    pub(crate) metrics: Metrics,
}

/// Room messages waiting for the link's next flush.
#[derive(Default)]
struct Outbox {
    /// Per room subject, the gathered messages' bytes, in order (a room may have several
    /// entries: one holds at most `BATCH_MAX` bytes).
    rooms: Batches,
    bytes: usize,
    /// Room messages in `rooms`.
    count: u64,
    /// A flush is posted to the link and has not run yet.
    scheduled: bool,
}

/// Gathered room messages: per room subject, their bytes back to back.
pub(crate) type Batches = Vec<(Arc<str>, Vec<u8>)>;

/// Most bytes of one gathered NATS message (well under NATS' default 1 MiB `max_payload`).
const BATCH_MAX: usize = 64 << 10;

#[derive(Default)]
struct Directs {
    map: HashMap<u64, SessionHandle>,
    /// Size after the last sweep of gone sessions.
    swept: usize,
}

pub(crate) struct Metrics {
    pub(crate) up: metrics::Gauge,
    published: metrics::Counter,
    pub(crate) received: metrics::Counter,
    dropped: metrics::Counter,
    pub(crate) connects: metrics::Counter,
}

/// A node's link to the cluster. Thread safety: `Send + Sync`; every method may be called
/// from any thread (also from session callbacks).
///
/// ```
/// use servercore::cluster::{Cluster, ClusterConfig};
/// use servercore::{Ctx, ServerService, Session};
/// # let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// # let url = format!("nats://{}", nobody.local_addr().unwrap());
/// # drop(nobody);
/// struct Player(servercore::Room);
/// impl Session for Player {
///     fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
///         ctx.enter_room(&self.0);
///     }
///     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
///         let _ = ctx.broadcast_room(&self.0, data.to_vec()); // every node's members
///         data.len()
///     }
/// }
/// // Starts even when NATS is not there (here: nobody listens): it keeps trying.
/// let cluster = Cluster::start(ClusterConfig::new(&url, "node-a")).unwrap();
/// let lobby = cluster.room("lobby").unwrap();
/// let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
///     .workers(1)
///     .start(move || Player(lobby.clone()))
///     .unwrap();
/// assert!(!cluster.is_up());
/// server.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// cluster.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// ```
pub struct Cluster {
    inner: Arc<Inner>,
    service: ClientService,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cluster({} {:?})", self.inner.node, self.stats())
    }
}

impl Cluster {
    /// Starts the link (on a worker of its own). Succeeds even when NATS is unreachable:
    /// the link keeps trying in the background (logged), and local rooms work meanwhile.
    /// Fails only on a bad config (an address that does not resolve, a node name that is
    /// not a subject token).
    pub fn start(config: ClusterConfig) -> io::Result<Cluster> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if !proto::valid_token(&config.node) {
            return Err(invalid(format!(
                "node name {:?} is not a NATS subject token",
                config.node
            )));
        }
        if !config.prefix.split('.').all(proto::valid_token) {
            return Err(invalid(format!("subject prefix {:?} is not valid", config.prefix)));
        }
        let addr = resolve(&config.url)?;
        let metrics = Metrics {
            up: metrics::gauge!("servercore_cluster_link_up", "node" => config.node.clone()),
            published: metrics::counter!("servercore_cluster_published_total", "node" => config.node.clone()),
            received: metrics::counter!("servercore_cluster_received_total", "node" => config.node.clone()),
            dropped: metrics::counter!("servercore_cluster_dropped_total", "node" => config.node.clone()),
            connects: metrics::counter!("servercore_cluster_connects_total", "node" => config.node.clone()),
        };
        let inner = Arc::new(Inner {
            node: config.node.clone(),
            prefix: config.prefix.clone(),
            ping_interval: config.ping_interval,
            rooms: Mutex::new(HashMap::new()),
            link: Mutex::new(None),
            directs: Mutex::new(Directs::default()),
            outbox: Mutex::new(Outbox::default()),
            max_pending: config.max_pending,
            max_payload: AtomicUsize::new(1 << 20),
            up: AtomicBool::new(false),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            metrics,
        });
        let session_config = crate::SessionConfig {
            max_send_queue: config.max_pending,
            send_queue_low_watermark: config.max_pending / 2,
            send_queue_policy: crate::SendQueuePolicy::Notify,
            max_recv_buffer: link::LINK_RECV_BUFFER,
            ..Default::default()
        };
        let link_inner = inner.clone();
        let service = ClientService::builder(addr)
            .workers(1)
            .sessions(1)
            .reconnect(config.reconnect)
            .connect_timeout(Duration::from_secs(5))
            .session_config(session_config)
            .start(move || link::Link::new(link_inner.clone()))?;
        tracing::info!("cluster node {} linking to NATS at {addr}", config.node);
        Ok(Cluster { inner, service })
    }

    /// The room `name` spanning the cluster (the same `Room` for the same name). Its
    /// broadcasts, from sessions ([`Ctx::broadcast_room`](crate::Ctx::broadcast_room)) or
    /// from anywhere ([`Room::broadcast`]), reach every member on every node.
    pub fn room(&self, name: &str) -> io::Result<Room> {
        if !proto::valid_token(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("room name {name:?} is not a NATS subject token"),
            ));
        }
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        let room = Room::new();
        let subject: Arc<str> = format!("{}.room.{name}", self.inner.prefix).into();
        let inner = Arc::downgrade(&self.inner);
        room.inner.set_relay(Box::new(move |payload: &Bytes| {
            if let Some(inner) = inner.upgrade() {
                inner.relay_room(&subject, payload);
            }
        }));
        rooms.insert(name.to_string(), room.clone());
        Ok(room)
    }

    /// This session's address in the cluster, for [`send_to`](Self::send_to) from any
    /// node. (The cluster remembers the session until it is gone.)
    pub fn address(&self, session: &SessionHandle) -> ClusterAddr {
        let mut d = self.inner.directs.lock().unwrap_or_else(|e| e.into_inner());
        d.map.insert(session.id().get(), session.clone());
        if d.map.len() >= 2 * d.swept.max(64) {
            d.map.retain(|_, h| h.is_connected());
            d.swept = d.map.len();
        }
        ClusterAddr { node: self.inner.node.clone(), session: session.id() }
    }

    /// Sends `buf` to the session `to` names, on whichever node. Local: as
    /// [`SessionHandle::send`]. Remote: published to that node (at most once, like room
    /// messages: `Ok` means handed to the link, not delivered).
    pub fn send_to(&self, to: &ClusterAddr, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        let bytes = buf.into().into_bytes();
        if to.node == self.inner.node {
            return self.inner.deliver_direct(to.session.get(), bytes);
        }
        if !proto::valid_token(&to.node)
            || bytes.len() + 8 > self.inner.max_payload.load(Ordering::Relaxed)
        {
            // No such node (a name that is not a subject token), or too big for NATS.
            self.inner.count_dropped(1);
            return Err(SendError::Disconnected);
        }
        let subject = format!("{}.node.{}.direct", self.inner.prefix, to.node);
        if self.inner.publish(&subject, &[&to.session.get().to_le_bytes(), &bytes]) {
            Ok(())
        } else {
            Err(SendError::Disconnected)
        }
    }

    /// The link's state and counters.
    pub fn stats(&self) -> ClusterStats {
        let i = &self.inner;
        ClusterStats {
            link_up: i.up.load(Ordering::Acquire),
            published: i.published.load(Ordering::Relaxed),
            received: i.received.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            connects: i.connects.load(Ordering::Relaxed),
        }
    }

    /// Whether the link is up (for a readiness probe).
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Closes the link (in order: what was handed to it is flushed, within `timeout`).
    pub fn shutdown(self, timeout: Duration) -> io::Result<()> {
        self.service.shutdown(timeout)
    }
}

impl Inner {
    /// A room's broadcast, for the other nodes: gathered in the outbox, and a flush posted
    /// to the link unless one is on its way. Dropped (and counted) while the link is down
    /// or when the outbox holds `max_pending` bytes.
    fn relay_room(self: &Arc<Self>, subject: &Arc<str>, payload: &Bytes) {
        let max_payload = self.max_payload.load(Ordering::Relaxed);
        if !self.up.load(Ordering::Acquire) || payload.len() > max_payload {
            self.count_dropped(1);
            return;
        }
        let schedule = {
            let mut o = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
            if o.bytes + payload.len() > self.max_pending {
                drop(o);
                self.count_dropped(1);
                return;
            }
            // Only onto the last batch: a sender in two rooms keeps its order across them.
            let cap = BATCH_MAX.min(max_payload);
            match o.rooms.last_mut() {
                Some((s, bytes))
                    if Arc::ptr_eq(s, subject) && bytes.len() + payload.len() <= cap =>
                {
                    bytes.extend_from_slice(payload)
                }
                _ => o.rooms.push((subject.clone(), payload.to_vec())),
            }
            o.bytes += payload.len();
            o.count += 1;
            !std::mem::replace(&mut o.scheduled, true)
        };
        if schedule {
            // At the end of this worker's turn: everything the turn broadcast goes in one
            // flush (at once on a thread that is no worker).
            let inner = Arc::clone(self);
            crate::mailbox::at_turn_end(Box::new(move || inner.post_flush()));
        }
    }

    /// Posts the outbox's flush to the link (or drops the outbox when there is none).
    fn post_flush(&self) {
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let posted =
            link.is_some_and(|h| h.run::<link::Link>(|link, ctx| link.flush_outbox(ctx)).is_ok());
        if !posted {
            self.drop_outbox();
        }
    }

    /// What the outbox holds, emptied (a flush may be posted again), and how many room
    /// messages that is.
    pub(crate) fn take_outbox(&self) -> (Batches, u64) {
        let mut o = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        o.scheduled = false;
        o.bytes = 0;
        (std::mem::take(&mut o.rooms), std::mem::take(&mut o.count))
    }

    /// The link went away (or never took the flush): what was gathered is dropped.
    pub(crate) fn drop_outbox(&self) {
        let (_, n) = self.take_outbox();
        self.count_dropped(n);
    }

    pub(crate) fn count_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        self.metrics.published.increment(n);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.metrics.dropped.increment(n);
        }
    }

    /// Hands one publication to the link; false (and counted as dropped) when the link is
    /// down or its queue is full.
    fn publish(&self, subject: &str, parts: &[&[u8]]) -> bool {
        let sent = {
            let link = self.link.lock().unwrap_or_else(|e| e.into_inner());
            match link.as_ref() {
                Some(h) if self.up.load(Ordering::Acquire) => {
                    h.send(proto::publish(subject, parts)).is_ok()
                }
                _ => false,
            }
        };
        if sent {
            self.count_published(1);
        } else {
            self.count_dropped(1);
        }
        sent
    }

    pub(crate) fn set_link(&self, link: Option<SessionHandle>) {
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
    }

    /// A room message from another node: to this node's members, one shared buffer.
    pub(crate) fn deliver_room(&self, name: &str, payload: Bytes) {
        let room = self.rooms.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        if let Some(room) = room {
            if let Err(e) = room.inner.post_to_workers(None, &payload) {
                // A worker holding members is not keeping up: counted, like a publication
                // the link could not take (at most once).
                tracing::debug!("cluster room {name}: a message from NATS not delivered: {e}");
                self.count_dropped(1);
            }
        }
    }

    /// A direct message: to the named session on this node.
    pub(crate) fn deliver_direct(&self, id: u64, payload: Bytes) -> Result<(), SendError> {
        let handle = self.directs.lock().unwrap_or_else(|e| e.into_inner()).map.get(&id).cloned();
        match handle {
            Some(h) => h.send(payload),
            None => Err(SendError::Disconnected),
        }
    }
}

fn resolve(url: &str) -> io::Result<SocketAddr> {
    let hostport = url.strip_prefix("nats://").unwrap_or(url);
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h).trim_end_matches('/');
    let hostport =
        if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:4222") };
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: no address")))
}
