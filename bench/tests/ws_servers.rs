//! The WebSocket reference servers and the cluster row's latency probe, end to end: each
//! started as the driver starts it, reached with a tungstenite client (the probe: against
//! the plain tokio chat server, the same address given twice).

mod common;

use common::{Server, BIN};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// Starts `servercore-bench <sub> --addr 127.0.0.1:0` and reads its readiness line, which
/// must end with `tail`.
fn start(sub: &str, tail: &str) -> (Server, SocketAddr) {
    common::start([sub, "--addr", "127.0.0.1:0"], tail)
}

fn client(addr: SocketAddr) -> WebSocket<TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, response) = tungstenite::client(format!("ws://{addr}/any/path"), sock).unwrap();
    assert_eq!(response.status(), 101);
    ws
}

/// The next data message (tungstenite answers pings by itself).
fn next_binary(ws: &mut WebSocket<TcpStream>) -> Vec<u8> {
    loop {
        match ws.read().unwrap() {
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn chat_packet(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = ((4 + payload.len()) as u16).to_le_bytes().to_vec();
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(payload);
    p
}

#[test]
fn ws_echo_sends_each_message_back() {
    let (_server, addr) = start("tokio-ws-echo", "(backend: tokio, workers: 1, websocket)");
    let mut ws = client(addr);
    for msg in [&b"hello over websocket"[..], &[7u8; 64][..], &vec![1u8; 70_000][..]] {
        ws.send(Message::binary(msg.to_vec())).unwrap();
        assert_eq!(next_binary(&mut ws), msg);
    }
    // A text message is refused with 1003.
    ws.send(Message::text("not binary")).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Unsupported),
        other => panic!("expected close 1003, got {other:?}"),
    }
}

#[test]
fn ws_chat_relays_packets_inside_messages() {
    let (_server, addr) = start("tokio-ws-chat", "(backend: tokio, workers: 1, websocket)");
    let mut a = client(addr);
    let mut b = client(addr);
    // Both joined once their upgrades are done; give the server a moment to add b.
    std::thread::sleep(Duration::from_millis(100));
    let one = chat_packet(1, b"0123456789");
    let two = chat_packet(1, b"second");
    // Two packets in one message, and a packet split over two messages (tolerated).
    let mut both = one.clone();
    both.extend_from_slice(&two);
    a.send(Message::binary(both)).unwrap();
    b.send(Message::binary(one[..3].to_vec())).unwrap();
    b.send(Message::binary(one[3..].to_vec())).unwrap();
    for ws in [&mut a, &mut b] {
        let mut got = Vec::new();
        // Each S_CHAT is its own message: three of them, a's two in order.
        for _ in 0..3 {
            let m = next_binary(ws);
            assert_eq!(u16::from_le_bytes([m[0], m[1]]) as usize, m.len());
            assert_eq!(&m[2..4], &2u16.to_le_bytes()); // S_CHAT
            got.push(m[4..].to_vec());
        }
        let a_first = got.iter().position(|p| p == b"0123456789").unwrap();
        let a_second = got.iter().position(|p| p == b"second").unwrap();
        assert!(a_first < a_second, "{got:?}");
    }
    // An unknown packet id ends the session.
    b.send(Message::binary(chat_packet(9, b"x"))).unwrap();
    loop {
        match b.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

#[test]
fn probe_times_its_messages_through_a_chat_room() {
    let (_server, addr) = start("tokio-chat", "(backend: tokio, workers: 1)");
    let out = Command::new(BIN)
        .args(["cluster-probe", "--addr", &addr.to_string(), "--addr", &addr.to_string()])
        .args(["--rate", "200", "--secs", "0.5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.contains("\"mode\":\"cluster-probe\""), "{json}");
    assert!(json.contains("\"errors\":0,"), "{json}");
    // One server: every delivery is local; each of ~100 messages reaches both sessions.
    assert!(json.contains("\"cross\":{\"samples\":0,"), "{json}");
    let local = &json[json.find("\"local\":{\"samples\":").unwrap() + 19..];
    let samples: u64 = local[..local.find(',').unwrap()].parse().unwrap();
    assert!((150..=210).contains(&samples), "{json}");
}
