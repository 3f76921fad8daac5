//! The inbox is bounded (issue 11, point 8): a thread that sends or broadcasts faster than
//! a worker drains cannot grow memory past the limits. A worker is held still by a job
//! that blocks it, so that nothing it is sent is taken meanwhile.

mod common;

use common::*;
use servercore::{
    DisconnectReason, Room, SendError, SendQueuePolicy, ServerService, ServiceRef, SessionConfig,
};
use std::sync::mpsc;
use std::time::Duration;

const LIMIT: usize = 256 << 10;

/// Blocks worker `w` until the returned sender is dropped or sent to; returns once the
/// worker is inside the job.
fn hold_worker(service: &ServiceRef, w: usize) -> mpsc::Sender<()> {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (inside_tx, inside_rx) = mpsc::channel();
    service
        .run_on_worker(w, move || {
            inside_tx.send(()).unwrap();
            let _ = release_rx.recv();
        })
        .unwrap();
    inside_rx.recv_timeout(TIMEOUT).expect("the worker runs the job");
    release_tx
}

fn server(cfg: SessionConfig) -> (ServerService, EventLog) {
    let (factory, log) = recorder(Hooks::echo());
    let server =
        ServerService::builder(any_port()).workers(1).session_config(cfg).start(factory).unwrap();
    (server, log)
}

#[test]
fn handle_sends_to_a_stalled_worker_count_against_the_session_limit() {
    let cfg = SessionConfig { max_send_queue: LIMIT, ..SessionConfig::default() };
    let (server, mut log) = server(cfg);
    let _client = connect(server.local_addr());
    let (id, handle) = log.next_connected();
    let release = hold_worker(&server.service(), 0);
    let chunk = vec![5u8; 1024];
    let mut accepted = 0usize;
    let refusal = loop {
        match handle.send(chunk.clone()) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(
            accepted <= 100 * LIMIT / 1024,
            "{accepted} KiB accepted while the worker is stalled"
        );
    };
    assert_eq!(refusal, SendError::QueueFull { limit: LIMIT });
    assert!(accepted * 1024 <= LIMIT, "{accepted} KiB accepted over a {LIMIT}-byte limit");
    assert!(accepted * 1024 >= LIMIT / 2, "only {accepted} KiB accepted");
    drop(release);
    // The default policy: the session that went over is disconnected, with that reason.
    assert_eq!(log.disconnected(id), DisconnectReason::SendQueueOverflow { limit: LIMIT });
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn under_disconnect_handle_sends_count_what_the_worker_has_queued() {
    // The queue and the inbox together stay within the limit: a handle send sees the
    // worker's queue (its mirror), not only the bytes still in the inbox.
    let cfg = SessionConfig { max_send_queue: LIMIT, ..SessionConfig::default() };
    let (server, mut log) = server(cfg);
    let _client = connect(server.local_addr());
    let (id, handle) = log.next_connected();
    let queued = LIMIT * 3 / 4;
    let (inside_tx, inside_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // One job queues three quarters of the limit and holds the worker before the turn
    // ends, so none of it has reached the socket yet.
    handle
        .run::<Recorder>(move |_, ctx| {
            let sent = ctx.send(vec![3u8; queued]);
            inside_tx.send((sent, ctx.send_queue_bytes())).unwrap();
            let _ = release_rx.recv();
        })
        .unwrap();
    let (sent, in_queue) = inside_rx.recv_timeout(TIMEOUT).expect("the job runs");
    assert_eq!(sent, Ok(()));
    assert_eq!(in_queue, queued);
    let mut accepted = 0usize;
    let refusal = loop {
        match handle.send(vec![5u8; 1024]) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= LIMIT / 1024, "{accepted} KiB accepted while the worker is stalled");
    };
    assert_eq!(refusal, SendError::QueueFull { limit: LIMIT });
    assert!(
        queued + accepted * 1024 <= LIMIT,
        "{queued} bytes queued and {accepted} KiB more accepted over a {LIMIT}-byte limit"
    );
    drop(release_tx);
    assert_eq!(log.disconnected(id), DisconnectReason::SendQueueOverflow { limit: LIMIT });
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn tiny_handle_sends_are_bounded_too() {
    // One-byte sends still cost their command: the count is bounded as well as the bytes.
    let cfg = SessionConfig { max_send_queue: LIMIT, ..SessionConfig::default() };
    let (server, mut log) = server(cfg);
    let _client = connect(server.local_addr());
    let (_, handle) = log.next_connected();
    let release = hold_worker(&server.service(), 0);
    let mut accepted = 0usize;
    while handle.send(vec![1u8]).is_ok() {
        accepted += 1;
        assert!(accepted <= LIMIT, "{accepted} one-byte sends accepted");
    }
    assert!(accepted < LIMIT / 16, "{accepted} one-byte sends accepted");
    drop(release);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn under_notify_a_stalled_worker_refuses_and_the_session_stays() {
    let cfg = SessionConfig {
        max_send_queue: LIMIT,
        send_queue_low_watermark: LIMIT / 4,
        send_queue_policy: SendQueuePolicy::Notify,
        ..SessionConfig::default()
    };
    let (server, mut log) = server(cfg);
    let mut client = connect(server.local_addr());
    let (id, handle) = log.next_connected();
    let release = hold_worker(&server.service(), 0);
    let mut accepted = 0usize;
    while handle.send(vec![6u8; 1024]).is_ok() {
        accepted += 1;
        assert!(accepted <= 100 * LIMIT / 1024, "{accepted} KiB accepted");
    }
    assert!(accepted * 1024 <= LIMIT);
    drop(release);
    // Everything accepted arrives; the session is still there.
    let mut got = vec![0u8; accepted * 1024];
    std::io::Read::read_exact(&mut client, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 6));
    roundtrip(&mut client, b"still here");
    assert_eq!(log.count(|e| e.id == id && matches!(e.ev, Ev::Disconnected(_))), 0);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn broadcasts_to_a_stalled_worker_stop_at_the_worker_inbox_limit() {
    const INBOX: usize = 1 << 20;
    let cfg = SessionConfig { max_worker_inbox: INBOX, ..SessionConfig::default() };
    let room = Room::new();
    let r2 = room.clone();
    let (factory, mut log) = recorder(Hooks::echo().with_connected(move |ctx| {
        ctx.enter_room(&r2);
    }));
    let server =
        ServerService::builder(any_port()).workers(1).session_config(cfg).start(factory).unwrap();
    let mut client = connect(server.local_addr());
    let (id, _) = log.next_connected();
    wait_until("the member in the room", || {
        if room.len() == 1 {
            Ok(())
        } else {
            Err(format!("{} members", room.len()))
        }
    });
    let release = hold_worker(&server.service(), 0);
    let mut room_sent = 0usize;
    let room_refusal = loop {
        match room.broadcast(vec![7u8; 1024]) {
            Ok(()) => room_sent += 1,
            Err(e) => break e,
        }
        assert!(room_sent <= 100 * INBOX / 1024, "{room_sent} KiB posted to a stalled worker");
    };
    assert_eq!(room_refusal, SendError::InboxFull { limit: INBOX });
    assert!(room_sent * 1024 <= INBOX && room_sent * 1024 >= INBOX / 2, "{room_sent} KiB");
    // The service-wide broadcast meets the same full inbox.
    assert_eq!(server.broadcast(vec![8u8; 1024]), Err(SendError::InboxFull { limit: INBOX }));
    drop(release);
    // What was accepted arrives whole; nothing refused does; the member stays.
    let mut got = vec![0u8; room_sent * 1024];
    std::io::Read::read_exact(&mut client, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 7));
    roundtrip(&mut client, b"still here");
    assert_eq!(log.count(|e| e.id == id && matches!(e.ev, Ev::Disconnected(_))), 0);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn one_byte_sends_are_bounded_by_count() {
    // The number of queued buffers is bounded too (one per 64 bytes of the limit), so a
    // queue of one-byte buffers stops long before it holds `max_send_queue` entries.
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let (factory, mut log) = recorder(Hooks::on_recv(move |ctx, data| {
        let mut accepted = 0usize;
        let refusal = loop {
            match ctx.send(vec![9u8]) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            if accepted > LIMIT {
                break SendError::Disconnected; // reported below as a failure
            }
        };
        let _ = tx.lock().unwrap().send((accepted, refusal));
        data.len()
    }));
    let cfg = SessionConfig {
        max_send_queue: LIMIT,
        send_queue_low_watermark: LIMIT / 4,
        send_queue_policy: SendQueuePolicy::Notify,
        ..SessionConfig::default()
    };
    let server =
        ServerService::builder(any_port()).workers(1).session_config(cfg).start(factory).unwrap();
    let mut client = connect(server.local_addr());
    let _ = log.next_connected();
    std::io::Write::write_all(&mut client, b"go").unwrap();
    let (accepted, refusal) = rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(refusal, SendError::QueueFull { limit: LIMIT });
    assert!(
        accepted <= LIMIT / 16,
        "{accepted} one-byte buffers queued under a {LIMIT}-byte limit"
    );
    assert!(accepted >= LIMIT / 64, "only {accepted} one-byte buffers queued");
    server.shutdown(Duration::from_secs(5)).unwrap();
}
