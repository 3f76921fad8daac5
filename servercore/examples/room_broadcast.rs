//! A room broadcast across workers: every line a client sends reaches every member.
//! Run: `cargo run -p servercore --example room_broadcast`.

use servercore::{Ctx, Room, ServerService, Session};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Member {
    lobby: Room,
}

impl Session for Member {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        ctx.enter_room(&self.lobby);
        let _ = ctx.send(format!("welcome {} (worker {})\n", ctx.id(), ctx.worker_index()));
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let Some(end) = data.iter().rposition(|&b| b == b'\n') else { return 0 };
        // One buffer, shared by every member's send queue: no copy per receiver.
        if let Err(e) = ctx.broadcast_room(&self.lobby, data[..=end].to_vec()) {
            // Another worker is far behind (`SendError::InboxFull`): tell the sender.
            let _ = ctx.send(format!("not relayed: {e}\n"));
        }
        end + 1
    }
}

fn main() -> std::io::Result<()> {
    let lobby = Room::new();
    let l = lobby.clone();
    let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
        .workers(2)
        .start(move || Member { lobby: l.clone() })?;

    let mut clients = Vec::new();
    for _ in 0..4 {
        let c = TcpStream::connect(server.local_addr())?;
        let mut r = BufReader::new(c.try_clone()?);
        let mut welcome = String::new();
        r.read_line(&mut welcome)?;
        print!("client: {welcome}");
        clients.push((c, r));
    }
    while lobby.len() < 4 {
        std::thread::yield_now(); // entering is asynchronous
    }
    (&clients[0].0).write_all(b"gg everyone\n")?;
    for (i, (_, r)) in clients.iter_mut().enumerate() {
        let mut line = String::new();
        r.read_line(&mut line)?;
        print!("client {i} got: {line}");
    }
    drop(clients);
    server.shutdown(Duration::from_secs(2))
}
