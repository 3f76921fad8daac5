//! Protobuf messages as packet payloads (cargo feature `prost`): a tiny server and one
//! client exchange `#[derive(prost::Message)]` messages over `Framed` packet sessions.
//!
//! ```text
//! cargo run -p servercore --example prost_packets --features prost
//! ```
//!
//! The client sends a `Say` (packet id 1); the server decodes it in a `Handlers` table and
//! answers with a `Heard` (packet id 2) that carries the `Say` back; the client prints it.

use servercore::packet::{prost as pb, Framed, Handlers, Packet, PacketSession};
use servercore::{ClientService, Ctx, DisconnectReason, ServerService};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A position.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Vec2 {
    #[prost(float, tag = "1")]
    pub x: f32,
    #[prost(float, tag = "2")]
    pub y: f32,
}

/// Client -> server: a chat line, where the player stands, and some tags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Say {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(message, optional, tag = "2")]
    pub at: Option<Vec2>,
    #[prost(string, repeated, tag = "3")]
    pub tags: Vec<String>,
}

/// Server -> client: who said it, on which server worker, and what.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heard {
    #[prost(uint64, tag = "1")]
    pub session: u64,
    #[prost(uint32, tag = "2")]
    pub worker: u32,
    #[prost(message, optional, tag = "3")]
    pub say: Option<Say>,
}

const C_SAY: u16 = 1;
const S_HEARD: u16 = 2;

/// The server's handler of `C_SAY`: a payload that does not decode is a protocol error.
fn on_say(_: &mut (), ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), String> {
    let say: Say = pb::decode(payload).map_err(|e| e.to_string())?;
    println!("server: {} says {:?}", ctx.id(), say.text);
    let heard =
        Heard { session: ctx.id().get(), worker: ctx.worker_index() as u32, say: Some(say) };
    let packet = pb::encode(S_HEARD, &heard).map_err(|e| e.to_string())?;
    ctx.send(packet).map_err(|e| e.to_string())
}

/// A server session: every packet goes through the shared handler table.
struct ServerSide {
    handlers: Arc<Handlers<()>>,
}

impl PacketSession for ServerSide {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        self.handlers.dispatch(&mut (), ctx, packet);
    }
}

/// The client session: says one thing on connect and hands the answer to `main`.
struct ClientSide {
    answers: mpsc::Sender<Heard>,
}

impl PacketSession for ClientSide {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let say = Say {
            text: "hello over protobuf".into(),
            at: Some(Vec2 { x: 1.5, y: -2.0 }),
            tags: vec!["greeting".into(), "example".into()],
        };
        match pb::encode(C_SAY, &say) {
            Ok(packet) => {
                let _ = ctx.send(packet);
            }
            Err(e) => ctx.disconnect(format!("cannot encode: {e}")),
        }
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        match (packet.id, pb::decode::<Heard>(packet.payload)) {
            (S_HEARD, Ok(heard)) => {
                let _ = self.answers.send(heard);
            }
            (id, result) => ctx.disconnect_with(DisconnectReason::Protocol(format!(
                "unexpected packet id {id}: {result:?}"
            ))),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let handlers = Arc::new(Handlers::new().on(C_SAY, on_say));
    let server = ServerService::builder("127.0.0.1:0".parse()?)
        .workers(1)
        .start(move || Framed::new(ServerSide { handlers: handlers.clone() }))?;
    println!("server: listening on {} (backend: {})", server.local_addr(), server.backend());

    let (tx, answers) = mpsc::channel();
    let client = ClientService::builder(server.local_addr())
        .sessions(1)
        .workers(1)
        .start(move || Framed::new(ClientSide { answers: tx.clone() }))?;
    let heard = answers.recv_timeout(Duration::from_secs(10))?;
    println!("client: got {heard:#?}");

    client.shutdown(Duration::from_secs(5))?;
    server.shutdown(Duration::from_secs(5))?;
    Ok(())
}
