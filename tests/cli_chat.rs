//! End-to-end tests of the chat workload of the `servercore` binary (PROTOCOL.md sections
//! 2, 3 and 4): `chat-server` driven by a client written from PROTOCOL.md alone (std
//! `TcpStream`, no servercore code), bad packets, `dummy-client --mode chat` and the demo.
//!
//! Every child process is owned by a [`Proc`] guard that kills it on drop, every socket has
//! read and write timeouts and every wait is bounded, so a hung binary fails a test instead
//! of hanging it. `SERVERCORE_BACKEND` is inherited from the test run:
//! `SERVERCORE_BACKEND=poll cargo test -p servercore-cli --test cli_chat` runs all on poll.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Socket read/write timeout of the test clients.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the server to close a session that broke the protocol.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// PROTOCOL.md section 3.
const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;

// ----- child processes ---------------------------------------------------------------

/// Starts `chat-server --addr 127.0.0.1:0 --workers 2` and waits for its readiness line.
fn start_chat_server() -> (Proc, SocketAddr) {
    let mut server = Proc::spawn(&["chat-server", "--addr", "127.0.0.1:0", "--workers", "2"]);
    let line = server.next_line(LINE_TIMEOUT);
    let (addr, backend) = parse_ready(&line, 2);
    if let Some(forced) = forced_backend() {
        assert_eq!(backend, forced, "readiness line {line:?} ignores SERVERCORE_BACKEND");
    }
    (server, addr)
}

/// SIGTERM, then exit status 0 with no panic.
fn stop(server: Proc) -> Finished {
    server.signal(libc::SIGTERM);
    let f = server.finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(0), "expected exit status 0 after SIGTERM:\n{}", f.describe());
    assert_no_panic(&f);
    assert!(f.stderr.contains("SIGTERM received"), "no `SIGTERM received`:\n{}", f.describe());
    f
}

// ----- a chat client from PROTOCOL.md alone ------------------------------------------

/// One packet of PROTOCOL.md section 2: u16 size (header included), u16 id, payload; all
/// little-endian.
fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    let size = u16::try_from(4 + payload.len()).expect("payload fits one packet");
    let mut out = Vec::with_capacity(usize::from(size));
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// How a read ended when the peer went away.
fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// A chat session over a plain `TcpStream`.
struct Chat {
    name: &'static str,
    stream: TcpStream,
}

impl Chat {
    fn connect(name: &'static str, addr: SocketAddr) -> Chat {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name}: connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Chat { name, stream }
    }

    fn send(&mut self, payload: &[u8]) {
        let name = self.name;
        self.stream
            .write_all(&frame(C_CHAT, payload))
            .unwrap_or_else(|e| panic!("{name}: sending a C_CHAT: {e}"));
    }

    /// The next packet: (id, payload). Panics on a timeout or a closed connection.
    fn recv(&mut self) -> (u16, Vec<u8>) {
        let name = self.name;
        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .unwrap_or_else(|e| panic!("{name}: reading a packet header: {e}"));
        let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
        let id = u16::from_le_bytes([header[2], header[3]]);
        assert!(size >= 4, "{name}: the server sent a packet of size {size}");
        let mut payload = vec![0u8; size - 4];
        self.stream
            .read_exact(&mut payload)
            .unwrap_or_else(|e| panic!("{name}: reading a {size}-byte packet: {e}"));
        (id, payload)
    }

    /// The next S_CHAT that is not a join greeting (see [`join`](Self::join)).
    fn recv_chat(&mut self) -> Vec<u8> {
        loop {
            let (id, payload) = self.recv();
            assert_eq!(id, S_CHAT, "{}: expected S_CHAT (2), got packet id {id}", self.name);
            if !payload.starts_with(b"hello ") {
                return payload;
            }
        }
    }

    /// Sends a greeting and waits for it to come back: from then on this session is in the
    /// room, so it gets every message sent after this returns.
    fn join(&mut self) {
        let hello = format!("hello {} {:?}", self.name, Instant::now());
        self.send(hello.as_bytes());
        loop {
            let (id, payload) = self.recv();
            assert_eq!(id, S_CHAT, "{}: expected S_CHAT (2), got packet id {id}", self.name);
            if payload == hello.as_bytes() {
                return;
            }
        }
    }

    /// Reads (and drops) whatever comes until the server closes the connection; panics if
    /// it stays open for [`CLOSE_TIMEOUT`].
    fn expect_closed(&mut self, why: &str) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        self.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if is_closed(&e) => return,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{}: unexpected error waiting for the close: {e}", self.name),
            }
            assert!(
                Instant::now() < deadline,
                "{}: the server did not close the session within {CLOSE_TIMEOUT:?} after {why}",
                self.name
            );
        }
    }
}

/// Payload of message `seq` of sender `tag`: `M`, the tag, seq (u32 LE), then filler of a
/// length that varies with `seq` (0..=299 bytes).
fn message(tag: u8, seq: u32) -> Vec<u8> {
    let mut p = vec![b'M', tag];
    p.extend_from_slice(&seq.to_le_bytes());
    let filler = (seq as usize * 37) % 300;
    p.extend((0..filler).map(|k| (k as u32 ^ seq.wrapping_mul(31) ^ u32::from(tag)) as u8));
    p
}

/// Reads until `count` messages of each of `tags` have arrived; checks that each sender's
/// come in order, whole, none missing, none twice.
fn receive_all(chat: &mut Chat, tags: &[u8], count: u32) {
    let mut next: HashMap<u8, u32> = tags.iter().map(|&t| (t, 0)).collect();
    while next.values().any(|&n| n < count) {
        let payload = chat.recv_chat();
        assert!(
            payload.len() >= 6 && payload[0] == b'M',
            "{}: unexpected payload {payload:?}",
            chat.name
        );
        let tag = payload[1];
        let seq = u32::from_le_bytes(payload[2..6].try_into().unwrap());
        let Some(want) = next.get_mut(&tag) else {
            panic!("{}: message from unknown sender {:?}", chat.name, tag as char)
        };
        assert_eq!(
            seq, *want,
            "{}: from sender {}: expected seq {want}, got {seq} (lost, reordered or duplicated)",
            chat.name, tag as char
        );
        assert!(
            payload == message(tag, seq),
            "{}: message {seq} of sender {} arrived altered",
            chat.name,
            tag as char
        );
        *want += 1;
    }
}

/// Writes `bytes` in irregular small pieces, so the server sees packets split anywhere.
fn write_in_pieces(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    let mut step = 1;
    while at < bytes.len() {
        let end = (at + step).min(bytes.len());
        stream.write_all(&bytes[at..end])?;
        stream.flush()?;
        at = end;
        step = step % 13 + 1;
        if at < 200 {
            // A few really separate reads at the start.
            thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

// ----- tests ---------------------------------------------------------------------------

/// PROTOCOL.md 3 with two hand-written clients: everyone gets every S_CHAT, the sender
/// included, with the C_CHAT's payload; per-sender order of 100 messages; SIGTERM with the
/// sessions open exits 0 and closes them.
#[test]
fn chat_server_relays_to_everyone_in_order() {
    let (server, addr) = start_chat_server();
    let mut a = Chat::connect("A", addr);
    let mut b = Chat::connect("B", addr);
    a.join();
    b.join();

    // One message: both get exactly its payload back as S_CHAT.
    let hi = b"hi from A, \x00\x01\xff binary too".to_vec();
    a.send(&hi);
    assert_eq!(a.recv_chat(), hi, "A (the sender) got another payload back");
    assert_eq!(b.recv_chat(), hi, "B got another payload");
    // An empty payload is a valid C_CHAT too.
    b.send(b"");
    assert_eq!(a.recv_chat(), b"", "A: the empty message");
    assert_eq!(b.recv_chat(), b"", "B: its own empty message");

    // 100 messages from each, at the same time: A in irregular pieces (packets split over
    // reads), B in one write (many packets per read).
    const N: u32 = 100;
    let a_bytes: Vec<u8> = (0..N).flat_map(|i| frame(C_CHAT, &message(b'A', i))).collect();
    let b_bytes: Vec<u8> = (0..N).flat_map(|i| frame(C_CHAT, &message(b'B', i))).collect();
    let mut a_writer = a.stream.try_clone().expect("clone A's socket");
    let mut b_writer = b.stream.try_clone().expect("clone B's socket");
    let wa = thread::spawn(move || write_in_pieces(&mut a_writer, &a_bytes));
    let wb = thread::spawn(move || b_writer.write_all(&b_bytes));
    let rb = thread::spawn(move || {
        receive_all(&mut b, b"AB", N);
        b
    });
    receive_all(&mut a, b"AB", N);
    let mut b = rb.join().expect("B's reader");
    wa.join().expect("A's writer").expect("A writing its messages");
    wb.join().expect("B's writer").expect("B writing its messages");

    // SIGTERM with both sessions open: exit 0, and the sessions are closed.
    stop(server);
    a.expect_closed("SIGTERM");
    b.expect_closed("SIGTERM");
}

/// Bad headers (size 0, 3, 65535 above the 4096 maximum) and an unknown id each cost only
/// the session that sent them; another session keeps chatting throughout.
#[test]
fn bad_packets_close_only_their_session() {
    let (server, addr) = start_chat_server();
    let mut h = Chat::connect("healthy", addr);
    h.join();
    let cases: [(&str, Vec<u8>); 4] = [
        ("size 0", vec![0, 0, 1, 0, 9, 9]),
        ("size 3", vec![3, 0, 1, 0, 9, 9]),
        ("size 65535", {
            let mut v = vec![0xff, 0xff, 1, 0];
            v.extend_from_slice(&[7u8; 100]);
            v
        }),
        ("unknown id 9", frame(9, b"nine")),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut bad = Chat::connect("bad", addr);
        bad.join();
        // The healthy session sees the newcomer's messages: prove both are in the room.
        let before = message(b'H', 2 * i as u32);
        h.send(&before);
        assert_eq!(h.recv_chat(), before, "healthy: own message before the bad packet ({what})");
        assert_eq!(bad.recv_chat(), before, "bad session: message before its bad packet ({what})");

        bad.stream.write_all(bytes).unwrap_or_else(|e| panic!("sending the {what} packet: {e}"));
        // Chatting goes on while (and after) the bad session is closed.
        let during = message(b'H', 2 * i as u32 + 1);
        h.send(&during);
        assert_eq!(h.recv_chat(), during, "healthy: own message right after the {what} packet");
        bad.expect_closed(what);

        let mut other = Chat::connect("other", addr);
        other.join();
        let after = format!("still chatting after {what}").into_bytes();
        h.send(&after);
        assert_eq!(h.recv_chat(), after, "healthy: own message after the {what} session closed");
        assert_eq!(other.recv_chat(), after, "a new session after the {what} session closed");
    }
    stop(server);
}

/// `chat-server --rooms 2`: the n-th session accepted joins room n mod 2, and a C_CHAT
/// reaches exactly the sessions of the sender's room, the sender included. Every step waits
/// for what the previous one sent to arrive (no sleeps): the sessions connect one at a time,
/// each greeting coming back before the next connects (so the accept order is the connect
/// order), and each session's next packet must be exactly the one its room was sent next,
/// so a message that leaked into the other room would show up ahead of it.
#[test]
fn chat_server_rooms_relay_within_the_senders_room() {
    let mut server =
        Proc::spawn(&["chat-server", "--addr", "127.0.0.1:0", "--workers", "2", "--rooms", "2"]);
    let line = server.next_line(LINE_TIMEOUT);
    let (addr, _) = parse_ready(&line, 2);
    const NAMES: [&str; 4] = ["client 0", "client 1", "client 2", "client 3"];
    /// The next packet of `c` is an S_CHAT of exactly `want`.
    fn expect_next(c: &mut Chat, want: &str, what: &str) {
        let (id, payload) = c.recv();
        assert_eq!(id, S_CHAT, "{}: expected S_CHAT (2), got packet id {id} ({what})", c.name);
        assert_eq!(
            String::from_utf8_lossy(&payload),
            want,
            "{}: wrong next message ({what})",
            c.name
        );
    }
    let mut clients: Vec<Chat> = Vec::new();
    for (i, name) in NAMES.into_iter().enumerate() {
        let mut c = Chat::connect(name, addr);
        let hello = format!("hello from {i}");
        c.send(hello.as_bytes());
        expect_next(&mut c, &hello, "its own greeting");
        // The earlier member of its room (i - 2) gets it too, as its next packet: nothing
        // from the other room came in between.
        if i >= 2 {
            expect_next(&mut clients[i - 2], &hello, "greeting of a newcomer to its room");
        }
        clients.push(c);
    }
    // Client 0's message reaches clients 0 and 2 (room 0) ...
    clients[0].send(b"from 0");
    expect_next(&mut clients[0], "from 0", "own message");
    expect_next(&mut clients[2], "from 0", "message from a member of its room");
    // ... and not clients 1 and 3 (room 1): their next packet is a follow-up sent in their
    // own room after "from 0" was delivered.
    clients[1].send(b"barrier 1");
    expect_next(&mut clients[1], "barrier 1", "own follow-up: \"from 0\" must not reach room 1");
    expect_next(&mut clients[3], "barrier 1", "follow-up: \"from 0\" must not reach room 1");
    // Room 1's follow-up did not reach room 0 either.
    clients[2].send(b"barrier 2");
    expect_next(&mut clients[0], "barrier 2", "follow-up: \"barrier 1\" must not reach room 0");
    expect_next(&mut clients[2], "barrier 2", "own follow-up: \"barrier 1\" must not reach room 0");
    stop(server);
}

/// `--rooms 0` is refused with an error saying why, and so is `--rooms 2` with `--cluster`
/// (the cluster shares one room; refused before any connection to NATS).
#[test]
fn chat_server_refuses_zero_rooms_and_rooms_with_a_cluster() {
    let f =
        Proc::spawn(&["chat-server", "--addr", "127.0.0.1:0", "--rooms", "0"]).finish(EXIT_TIMEOUT);
    assert_failed_cleanly(&f);
    assert!(
        f.stderr.contains("--rooms") && f.stderr.contains("at least 1 room"),
        "expected an error naming --rooms and the minimum:\n{}",
        f.describe()
    );
    assert!(!f.stdout.contains("listening on"), "the server started:\n{}", f.describe());

    let f = Proc::spawn(&[
        "chat-server",
        "--addr",
        "127.0.0.1:0",
        "--cluster",
        "nats://127.0.0.1:9",
        "--node",
        "a",
        "--rooms",
        "2",
    ])
    .finish(EXIT_TIMEOUT);
    assert_failed_cleanly(&f);
    assert!(
        f.stderr.contains("--rooms 2 cannot be used with --cluster"),
        "expected an error naming --rooms and --cluster:\n{}",
        f.describe()
    );
    assert!(!f.stdout.contains("listening on"), "the server started:\n{}", f.describe());
}

/// `dummy-client --mode chat` against a live chat server: exit 0, no gap, no error.
#[test]
fn dummy_client_chat_json_reports_no_gaps_or_errors() {
    let (server, addr) = start_chat_server();
    let a = addr.to_string();
    let f = Proc::spawn(&[
        "dummy-client",
        "--addr",
        &a,
        "--mode",
        "chat",
        "--sessions",
        "50",
        "--depth",
        "2",
        "--secs",
        "1",
        "--json",
    ])
    .finish(RUN_TIMEOUT);
    assert_eq!(f.status.code(), Some(0), "dummy-client failed:\n{}", f.describe());
    assert_no_panic(&f);
    let json = f
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object on stdout:\n{}", f.describe()))
        .trim();
    assert!(json.ends_with('}'), "JSON not one line: {json}");
    let field =
        |k: &str| json_u64(json, k).unwrap_or_else(|| panic!("no integer field {k:?} in {json}"));
    assert!(json.contains("\"mode\":\"chat\""), "{json}");
    assert_eq!(field("gaps"), 0, "{json}");
    assert_eq!(field("duplicates"), 0, "{json}");
    assert_eq!(field("errors"), 0, "{json}");
    assert_eq!(field("corrupt"), 0, "{json}");
    assert_eq!(field("connected"), 50, "{json}");
    assert!(field("sends") > 0, "{json}");
    // Every message goes to every session of the room.
    assert!(field("deliveries") >= field("sends"), "{json}");
    assert!(json.contains("\"first_error\":null"), "{json}");
    if let Some(forced) = forced_backend() {
        assert!(json.contains(&format!("\"backend\":\"{forced}\"")), "{json}");
    }
    let served = stop(server);
    assert!(
        served.stderr.contains("served 50 sessions"),
        "the server should have served the 50 sessions:\n{}",
        served.describe()
    );
}

/// A chat payload must hold its 24-byte header: a clear error before connecting.
#[test]
fn dummy_client_chat_rejects_a_too_small_size() {
    let f = Proc::spawn(&[
        "dummy-client",
        "--addr",
        "127.0.0.1:9",
        "--mode",
        "chat",
        "--size",
        "16",
        "--secs",
        "1",
    ])
    .finish(RUN_TIMEOUT);
    assert_failed_cleanly(&f);
    assert!(
        f.stderr.contains("--size") && f.stderr.contains("24") && f.stderr.contains("16"),
        "expected an error naming --size, the minimum and the value:\n{}",
        f.describe()
    );
}

/// The demo: chat server and clients in one process; plain output when stdout is a pipe.
#[test]
fn demo_chat_runs_and_reports_no_errors() {
    let f = Proc::spawn(&["demo", "--secs", "1", "--sessions", "20"]).finish(RUN_TIMEOUT);
    assert_eq!(f.status.code(), Some(0), "the demo failed:\n{}", f.describe());
    assert_no_panic(&f);
    for want in
        ["servercore demo: chat server on 127.0.0.1:", "20 sessions (20 connected)", "errors    0 "]
    {
        assert!(f.stdout.contains(want), "no {want:?} in the demo output:\n{}", f.describe());
    }
    assert!(
        !f.stdout.contains('\x1b'),
        "escape codes on a stdout that is not a terminal:\n{}",
        f.describe()
    );
    if let Some(forced) = forced_backend() {
        assert!(
            f.stdout.contains(&format!("(backend: {forced},")),
            "SERVERCORE_BACKEND={forced} not honoured by the demo:\n{}",
            f.describe()
        );
    }
}
