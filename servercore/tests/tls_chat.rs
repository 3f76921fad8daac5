//! A chat room of TLS sessions (issue 13): the room server of the `rooms_*` tests
//! (`common::rooms::RoomServer`, packet framing) behind `.tls(..)`, members from a TLS
//! `ClientService` and from blocking rustls clients, several senders of both kinds at once;
//! every member gets every sender's messages in that sender's order, with no gap and no
//! duplicate.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! with `common::TIMEOUT` as the safety net.

mod common;

use common::any_port;
use common::rooms::{
    chat_payload, packet, room_server, send_chats_interleaved, wait_room_len, ChatMember,
    ChatShared, SenderOrder, C_CHAT, S_CHAT, S_JOINED,
};
use common::tls::{pki, send_close_notify, server_name, tls_connect, TlsClient};
use common::workers::recv;
use servercore::packet::Framed;
use servercore::{ClientService, Room, ServerService, SessionHandle};
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Members from the `ClientService`.
const SESSIONS: usize = 100;
/// Of those, how many speak.
const SERVICE_SENDERS: usize = 4;
/// Blocking rustls clients that speak (and listen).
const BLOCKING_SENDERS: usize = 2;
/// Blocking rustls clients that only listen.
const BLOCKING_LISTENERS: usize = 1;
const SENDERS: usize = SERVICE_SENDERS + BLOCKING_SENDERS;
const MESSAGES: u32 = 500;
const MEMBERS: usize = SESSIONS + BLOCKING_SENDERS + BLOCKING_LISTENERS;

/// Each sender's messages in order, each once.
fn order() -> SenderOrder {
    SenderOrder::new(SENDERS, MESSAGES)
}

/// Reads one packet from a blocking TLS client: (id, payload).
fn read_packet(s: &mut TlsClient) -> (u16, Vec<u8>) {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).expect("a packet header");
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let id = u16::from_le_bytes([header[2], header[3]]);
    assert!(size >= 4, "packet size {size}");
    let mut payload = vec![0u8; size - 4];
    s.read_exact(&mut payload).expect("a packet payload");
    (id, payload)
}

/// A blocking member: connects, waits until it is in the room.
fn blocking_member(addr: std::net::SocketAddr) -> TlsClient {
    let mut s = tls_connect(addr);
    let (id, _) = read_packet(&mut s);
    assert_eq!(id, S_JOINED, "the first packet says the client is in the room");
    s
}

/// A blocking member reads until it has every sender's messages; returns the violations.
fn blocking_listen(s: &mut TlsClient, who: &str) -> Vec<String> {
    let mut order = order();
    let mut violations = Vec::new();
    while !order.complete() {
        let (id, payload) = read_packet(s);
        if id != S_CHAT {
            violations.push(format!("{who}: unexpected packet id {id}"));
            continue;
        }
        if let Err(e) = order.take(&payload) {
            violations.push(format!("{who}: {e}"));
        }
    }
    violations
}

#[test]
fn every_tls_member_gets_every_senders_messages_in_order() {
    let room = Room::new();
    let (server, checks) =
        room_server(&room, ServerService::builder(any_port()).workers(2).tls(pki().server.clone()));
    let addr = server.local_addr();
    let (shared, joined_rx, done_rx) = ChatShared::new();
    let sh = shared.clone();
    let client = ClientService::builder(addr)
        .sessions(SESSIONS)
        .workers(2)
        .tls(pki().client.clone(), server_name())
        .start(move || Framed::new(ChatMember { shared: sh.clone(), order: order() }))
        .unwrap();
    let handles: Vec<SessionHandle> =
        (0..SESSIONS).map(|i| recv(&joined_rx, &format!("S_JOINED number {i}"))).collect();
    let mut blocking: Vec<TlsClient> =
        (0..BLOCKING_SENDERS + BLOCKING_LISTENERS).map(|_| blocking_member(addr)).collect();
    wait_room_len(&room, MEMBERS);

    let started = Instant::now();
    // Blocking senders: sender ids after the service's; they write in bursts of packets
    // (many per record), then listen.
    let mut threads = Vec::new();
    for (k, mut s) in blocking.drain(..).enumerate() {
        threads.push(std::thread::spawn(move || {
            if k < BLOCKING_SENDERS {
                let sender = SERVICE_SENDERS + k;
                let mut burst = Vec::new();
                for seq in 0..MESSAGES {
                    burst.extend_from_slice(&packet(C_CHAT, &chat_payload(sender, seq)));
                    if burst.len() >= 12 * (1 + seq as usize % 17) {
                        s.write_all(&burst).unwrap();
                        s.flush().unwrap();
                        burst.clear();
                    }
                }
                s.write_all(&burst).unwrap();
                s.flush().unwrap();
            }
            let violations = blocking_listen(&mut s, &format!("blocking member {k}"));
            (s, violations)
        }));
    }
    // The service's senders, through their handles, interleaved.
    send_chats_interleaved(&handles[..SERVICE_SENDERS], MESSAGES, |k| k);
    shared.wait_done(&done_rx, SESSIONS, "members", SENDERS * MESSAGES as usize);
    let mut violations = Vec::new();
    let mut blocking = Vec::new();
    for t in threads {
        let (s, v) = t.join().expect("blocking member thread");
        violations.extend(v);
        blocking.push(s);
    }
    eprintln!(
        "{} deliveries to {MEMBERS} TLS members in {:?} ({} backend)",
        shared.deliveries.load(Ordering::Relaxed) + blocking.len() * SENDERS * MESSAGES as usize,
        started.elapsed(),
        server.backend()
    );
    assert!(violations.is_empty(), "blocking members: {violations:#?}");
    assert_eq!(shared.deliveries.load(Ordering::Relaxed), SESSIONS * SENDERS * MESSAGES as usize);
    for s in &mut blocking {
        send_close_notify(s);
    }
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
    let violations = shared.violations.lock().unwrap();
    assert!(violations.is_empty(), "violations: {violations:#?}");
}
