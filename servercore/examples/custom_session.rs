//! A custom `Session`: answers each whole line upper-cased; a client in the same program
//! talks to it. Run: `cargo run -p servercore --example custom_session`.

use servercore::{Ctx, DisconnectReason, ServerService, Session};
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

/// Waits for whole lines (bytes it does not consume are shown again with the next ones).
struct Shout;

impl Session for Shout {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        println!("server: {} connected from {}", ctx.id(), ctx.peer_addr());
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let Some(end) = data.iter().rposition(|&b| b == b'\n') else { return 0 };
        let _ = ctx.send(data[..=end].to_ascii_uppercase());
        end + 1
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        println!("server: {} left: {reason}", ctx.id());
    }
}

fn main() -> std::io::Result<()> {
    let server =
        ServerService::builder("127.0.0.1:0".parse().unwrap()).workers(2).start(|| Shout)?;
    println!("server: listening on {} (backend: {})", server.local_addr(), server.backend());

    let conn = std::net::TcpStream::connect(server.local_addr())?;
    let mut reader = BufReader::new(conn.try_clone()?);
    for line in ["hello\n", "game servers\n"] {
        (&conn).write_all(line.as_bytes())?;
        let mut answer = String::new();
        reader.read_line(&mut answer)?;
        print!("client: sent {line:?}, got {answer}");
    }
    drop((conn, reader));
    server.shutdown(Duration::from_secs(2))
}
