//! servercore: a network core for game servers.
//!
//! The session/service model of the classic C++ IOCP "ServerCore", on Linux io_uring with a
//! readiness (poll) fallback. You implement [`Session`] (or [`packet::PacketSession`]); a
//! [`ServerService`] accepts connections and gives each one a session object made by your
//! factory; a [`ClientService`] opens connections. Every session lives on one worker thread:
//! its callbacks run there, in order, so they take `&mut self` and need no lock.
//!
//! # Guide
//!
//! ## 1. A custom session
//!
//! `on_recv` returns how many bytes it consumed; the rest is kept and shown again, prefixed
//! to the next bytes, so a session can wait for whole messages.
//!
//! ```
//! use servercore::{Ctx, DisconnectReason, ServerService, Session};
//! use std::io::{BufRead, BufReader, Write};
//! use std::sync::mpsc;
//! use std::time::Duration;
//!
//! /// Answers each whole line, upper-cased; reports why its connection ended.
//! struct Shout(mpsc::Sender<DisconnectReason>);
//!
//! impl Session for Shout {
//!     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
//!         let Some(end) = data.iter().rposition(|&b| b == b'\n') else { return 0 };
//!         let _ = ctx.send(data[..=end].to_ascii_uppercase());
//!         end + 1
//!     }
//!     fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
//!         let _ = self.0.send(reason.clone()); // checked below: a panic here is caught
//!     }
//! }
//!
//! let (tx, ended) = mpsc::channel();
//! let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
//!     .workers(2)
//!     .start(move || Shout(tx.clone()))?;
//! let mut conn = std::net::TcpStream::connect(server.local_addr())?;
//! conn.write_all(b"hel")?;            // half a line: kept until the rest arrives
//! conn.write_all(b"lo\n")?;
//! let mut line = String::new();
//! BufReader::new(&conn).read_line(&mut line)?;
//! assert_eq!(line, "HELLO\n");
//! drop(conn);
//! let reason = ended.recv_timeout(Duration::from_secs(10)).unwrap();
//! assert_eq!(reason, DisconnectReason::PeerClosed);
//! server.shutdown(Duration::from_secs(1))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## 2. Packets and handlers
//!
//! [`packet::Framed`] splits the stream into packets (`u16 size` with the header included,
//! `u16 id`, little-endian; sizes checked, a bad one disconnects that session only).
//! [`packet::Handlers`] dispatches by id; [`packet::PacketWriter`] builds packets in pooled
//! buffers.
//!
//! ```
//! use servercore::packet::{self, Framed, Handlers, Packet, PacketSession, PacketWriter};
//! use servercore::{Ctx, ServerService};
//! use std::io::{Read, Write};
//! use std::sync::OnceLock;
//!
//! const C_ADD: u16 = 10; // payload: two u32
//! const S_SUM: u16 = 11; // payload: one u32
//!
//! struct Calc { handlers: &'static Handlers<Calc> }
//!
//! /// One table per process, indexed by id; sessions hold a plain reference to it.
//! fn handlers() -> &'static Handlers<Calc> {
//!     static TABLE: OnceLock<Handlers<Calc>> = OnceLock::new();
//!     TABLE.get_or_init(|| Handlers::new().on(C_ADD, add))
//! }
//!
//! fn add(_me: &mut Calc, ctx: &mut Ctx<'_>, p: &[u8]) -> Result<(), String> {
//!     let [a0, a1, a2, a3, b0, b1, b2, b3] = *p else { return Err("need 8 bytes".into()) };
//!     let sum = u32::from_le_bytes([a0, a1, a2, a3]).wrapping_add(u32::from_le_bytes([b0, b1, b2, b3]));
//!     let mut w = PacketWriter::new(S_SUM);
//!     w.put_u32_le(sum);
//!     ctx.send(w.finish().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
//! }
//!
//! impl PacketSession for Calc {
//!     fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
//!         let h = self.handlers; // `Copy`: lends `self` to the handler, no reference count
//!         h.dispatch(self, ctx, packet); // unknown ids disconnect with a protocol error
//!     }
//! }
//!
//! let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
//!     .start(|| Framed::new(Calc { handlers: handlers() }))?;
//! let mut conn = std::net::TcpStream::connect(server.local_addr())?;
//! let mut req = 2u32.to_le_bytes().to_vec();
//! req.extend_from_slice(&40u32.to_le_bytes());
//! conn.write_all(&packet::encode(C_ADD, &req).unwrap())?;
//! let mut reply = [0u8; 8];
//! conn.read_exact(&mut reply)?;
//! assert_eq!(reply, [8, 0, 11, 0, 42, 0, 0, 0]); // size 8, id 11, 42
//! # server.shutdown(std::time::Duration::from_secs(1))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## 3. A room broadcast
//!
//! A [`Room`] is a set of sessions that may live on different workers. A broadcast posts
//! the buffer once per worker that has members; no payload is copied per receiver. Each
//! worker joins the small broadcasts a room relays in one loop turn into one buffer, so
//! a member typically gets one queue entry per turn rather than one per message; after
//! such a fan-out the worker gathers input a little longer (see
//! [`SessionConfig::broadcast_gather_max`]) so that the next sends carry more.
//!
//! ```
//! use servercore::{Ctx, Room, ServerService, Session};
//! use std::io::{Read, Write};
//!
//! struct Member { room: Room }
//! impl Session for Member {
//!     fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
//!         ctx.enter_room(&self.room);
//!         let _ = ctx.send(&b"+"[..]); // "you are in"
//!     }
//!     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
//!         // Refused only when another worker is far behind (`SendError::InboxFull`).
//!         if ctx.broadcast_room(&self.room, data.to_vec()).is_err() {
//!             let _ = ctx.send(&b"!"[..]); // "not relayed"
//!         }
//!         data.len()
//!     }
//! }
//!
//! let room = Room::new();
//! let r = room.clone();
//! let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
//!     .workers(2)
//!     .start(move || Member { room: r.clone() })?;
//! let mut a = std::net::TcpStream::connect(server.local_addr())?;
//! let mut b = std::net::TcpStream::connect(server.local_addr())?;
//! let mut one = [0u8; 1];
//! a.read_exact(&mut one)?;
//! b.read_exact(&mut one)?;
//! while room.len() < 2 { std::thread::yield_now(); } // both entered
//! a.write_all(b"hi")?;
//! let mut got = [0u8; 2];
//! b.read_exact(&mut got)?;
//! assert_eq!(&got, b"hi");
//! a.read_exact(&mut got)?; // the sender is a member too
//! assert_eq!(&got, b"hi");
//! # server.shutdown(std::time::Duration::from_secs(1))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## 4. A server-to-server link
//!
//! [`ClientService`] opens sessions to another server; a failed connect is reported to
//! [`Session::on_connect_failed`], never as `on_connected`. With
//! [`Reconnect`] it reconnects with backoff.
//!
//! ```
//! use servercore::{ClientService, Ctx, Reconnect, ServerService, Session};
//! use std::sync::mpsc;
//! use std::time::Duration;
//!
//! struct Echo;
//! impl Session for Echo {
//!     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
//!         let _ = ctx.send(data.to_vec());
//!         data.len()
//!     }
//! }
//!
//! struct Link(mpsc::Sender<String>);
//! impl Session for Link {
//!     fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
//!         let _ = ctx.send(&b"sync"[..]);
//!     }
//!     fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
//!         if data.len() < 4 { return 0 }
//!         let _ = self.0.send(String::from_utf8_lossy(data).into_owned());
//!         data.len()
//!     }
//! }
//!
//! let game_db = ServerService::builder("127.0.0.1:0".parse().unwrap()).workers(1).start(|| Echo)?;
//! let (tx, rx) = mpsc::channel();
//! let link = ClientService::builder(game_db.local_addr())
//!     .sessions(2)
//!     .workers(1)
//!     .reconnect(Reconnect::default())
//!     .start(move || Link(tx.clone()))?;
//! for _ in 0..2 {
//!     assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "sync");
//! }
//! link.shutdown(Duration::from_secs(1))?;
//! game_db.shutdown(Duration::from_secs(1))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Threads and safety
//!
//! Services, [`SessionHandle`], [`Room`], [`JobQueue`] and [`SendBuffer`] are `Send + Sync`;
//! calls from other threads become messages to the owning worker. [`Ctx`] exists only inside
//! a callback. `unsafe` code lives in the driver backends and the `sys` module only; each
//! block names the invariant that makes it sound (memory the kernel may touch stays alive
//! until its completion is reaped).
//!
//! # Backends
//!
//! `SERVERCORE_BACKEND=io_uring|poll` forces a backend; unset, io_uring is probed and poll
//! is the fallback ([`BackendChoice`]).
#![deny(missing_docs)]

pub mod buffer;
pub mod cluster;
mod config;
pub(crate) mod driver;
mod error;
mod job;
mod mailbox;
pub mod packet;
mod reason;
mod registry;
mod room;
pub mod service;
mod session;
pub mod sys;
pub mod telemetry;
mod timer;
pub mod tls;
mod transport;
mod worker;
pub mod ws;

pub use buffer::SendBuffer;
#[doc(hidden)]
pub use config::Diagnostics;
pub use config::SendQueuePolicy;
pub use config::SessionConfig;
pub use driver::{Backend, BackendChoice};
pub use error::SendError;
pub use job::{JobQueue, JobTimer, WorkerGone};
pub use reason::{DisconnectReason, TlsError};
pub use room::Room;
pub use service::{ClientService, Reconnect, ServerService, ServiceRef, ServiceStats};
pub use session::{Ctx, Session, SessionHandle, SessionId};
pub use timer::TimerId;
