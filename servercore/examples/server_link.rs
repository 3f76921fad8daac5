//! A server-to-server link with `ClientService`: a "game" server keeps two sessions to a
//! "database" server, reconnecting with backoff if they drop.
//! Run: `cargo run -p servercore --example server_link`.

use servercore::{ClientService, Ctx, DisconnectReason, Reconnect, ServerService, Session};
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

/// The database side: answers "get" with a value.
struct Db;
impl Session for Db {
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let _ = ctx.send(format!("value-of-{}", String::from_utf8_lossy(data)));
        data.len()
    }
}

/// The game side of the link.
struct Link(mpsc::Sender<String>);
impl Session for Link {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx.send(&b"player42"[..]);
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let _ = self.0.send(String::from_utf8_lossy(data).into_owned());
        data.len()
    }
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        println!("link {} ended: {reason}", ctx.id());
    }
    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        println!("link to {addr} failed: {error}");
    }
}

fn main() -> io::Result<()> {
    let db = ServerService::builder("127.0.0.1:0".parse().unwrap()).workers(1).start(|| Db)?;
    let (tx, rx) = mpsc::channel();
    let link = ClientService::builder(db.local_addr())
        .sessions(2)
        .workers(1)
        .connect_timeout(Duration::from_secs(3))
        .reconnect(Reconnect::default())
        .start(move || Link(tx.clone()))?;
    for _ in 0..2 {
        let answer = rx.recv_timeout(Duration::from_secs(10)).expect("an answer");
        println!("game: db answered {answer:?}");
    }
    println!("links: {:?}", link.stats());
    link.shutdown(Duration::from_secs(2))?;
    db.shutdown(Duration::from_secs(2))
}
