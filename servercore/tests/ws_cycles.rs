//! 2,000 WebSocket connect/upgrade/close cycles ending in every way (issue 14): afterwards
//! the server holds no session, the process's fd count is exactly back at its start and its
//! RSS is back near its start (as `reliability_cycles.rs` and `tls_cycles.rs` check for TCP
//! and TLS); every upgrade is counted once as done or failed; and a shutdown with
//! WebSocket sessions open, upgrading and established, ends within its deadline, the
//! established ones getting their queued messages, then a close frame with 1001 (going
//! away), then the end of the stream (over TLS too: `close_notify` then FIN).
//!
//! fd count and RSS are process-wide: the tests of this binary take a lock so that they
//! never run at the same time.

mod common;

use common::cycles::*;

use common::tls::pki;
use common::ws::{
    binary, client_frame, client_stream, close_frame, http_status, read_until_end, tcp, ws_connect,
    RawWs, WireEnd, OP_BINARY, OP_CLOSE, OP_TEXT,
};
use common::{any_port, open_fd_count, set_linger_zero};
use servercore::ws::WsConfig;
use servercore::ServerService;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: &[u8] = b"<p>page</p>";

fn ws_server(counters: &Arc<Counters>, tls: bool) -> ServerService {
    let c = counters.clone();
    let mut b = ServerService::builder(any_port())
        .workers(WORKERS)
        .websocket(any_port(), WsConfig::default().page("/", "text/html", PAGE));
    if tls {
        b = b.tls(pki().server.clone());
    }
    b.start(move || Cycle { counters: c.clone(), done: false }).unwrap()
}

/// Ways a cycle ends.
const ENDINGS: usize = 9;

/// How many cycles end in way `ending`.
fn cycles_ending_of(ending: usize) -> usize {
    cycles_ending(ending, ENDINGS)
}
/// Of those, the ones whose upgrade finishes (the session connects).
const UPGRADED_ENDINGS: [usize; 5] = [0, 1, 2, 6, 8];
/// The ones whose upgrade fails (refused, or the peer left before it).
const FAILED_ENDINGS: [usize; 3] = [3, 4, 5];
/// The page.
const PAGE_ENDING: usize = 7;

/// One cycle, ending one of nine ways: a third-party client's round trip and close
/// handshake; a round trip and a FIN with no close frame; the upgrade and a reset at once;
/// a refused upgrade (426); a TCP connect closed before any byte; half a request, then a
/// reset; the server's disconnect (its answer, its close frame 1000, FIN); the page; a text
/// frame (close 1003).
fn cycle(addr: SocketAddr, i: usize) {
    match i % ENDINGS {
        0 => {
            let mut ws = ws_connect(addr);
            common::ws::ws_roundtrip(&mut ws, b"ping");
            ws.close(None).expect("closing");
            loop {
                match ws.read() {
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("cycle {i}: the close handshake: {e}"),
                }
            }
        }
        1 => {
            let mut c = RawWs::upgrade(tcp(addr));
            c.roundtrip(b"ping");
        }
        2 => {
            let c = RawWs::upgrade(tcp(addr));
            set_linger_zero(&c.stream.0).unwrap();
        }
        3 => {
            let mut s = tcp(addr);
            s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (got, end) = read_until_end(&mut s);
            assert_eq!(http_status(&got), Some(426), "cycle {i}: refused ({end:?})");
        }
        4 => drop(std::net::TcpStream::connect(addr).unwrap()),
        5 => {
            let mut s = tcp(addr);
            s.write_all(b"GET / HTTP/1.1\r\nUpgrade: webs").unwrap();
            set_linger_zero(&s.0).unwrap();
        }
        6 => {
            let mut c = RawWs::upgrade(tcp(addr));
            c.send(&binary(b"bye"));
            let (frames, end) = c.read_to_end();
            assert_eq!(frames.len(), 2, "cycle {i}: the answer and the close: {frames:?}");
            assert_eq!((frames[0].opcode, &frames[0].payload[..]), (OP_BINARY, &b"bye"[..]));
            assert_eq!(frames[1].close_code(), Some(1000), "cycle {i}: {frames:?}");
            assert_eq!(end, WireEnd::Eof, "cycle {i}: the server's FIN");
        }
        7 => {
            let mut s = tcp(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (got, end) = read_until_end(&mut s);
            assert_eq!(http_status(&got), Some(200), "cycle {i}: the page ({end:?})");
            assert!(got.ends_with(PAGE), "cycle {i}: the page's body");
        }
        _ => {
            let mut c = RawWs::upgrade(tcp(addr));
            c.send(&client_frame(true, OP_TEXT, b"text"));
            let (frames, _) = c.read_to_end();
            let close = frames.last().expect("a close frame");
            assert_eq!(close.close_code(), Some(1003), "cycle {i}: {frames:?}");
        }
    }
}

/// Settles (see `common::cycles::settle`) with WebSocket sentinels, each ended with a
/// close handshake.
fn settle(addr: SocketAddr, workers: usize) -> usize {
    common::cycles::settle(workers, || {
        let mut c = RawWs::upgrade(tcp(addr));
        c.send(&binary(b"?"));
        let f = c.read_frame().expect("a sentinel's answer");
        assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 1), "{f:?}");
        let worker = usize::from(f.payload[0]);
        c.send(&close_frame(1000, b""));
        let (frames, end) = c.read_to_end();
        assert_eq!(frames.last().and_then(|f| f.close_code()), Some(1000), "{frames:?}");
        assert_eq!(end, WireEnd::Eof);
        worker
    })
}

#[test]
fn two_thousand_websocket_cycles_leave_no_session_fd_or_memory_behind() {
    let _exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
    if fd_count_unknown() {
        return;
    }
    let counters = Arc::new(Counters::default());
    let server = ws_server(&counters, false);
    let addr = server.websocket_addr().unwrap();

    // Warm up (pools, slots), then take the start.
    let run = run_cycles(&server, SIZES, move |i| cycle(addr, i), || settle(addr, WORKERS));
    let sentinels = run.sentinels;
    let stats = server.stats();
    let reasons = counters.reasons();
    eprintln!(
        "{CYCLES} WebSocket cycles in {:?} ({} backend); {stats:?}; reasons \
         {reasons:?}; RSS {} -> {} KiB",
        run.took,
        server.backend(),
        run.rss_start / 1024,
        run.rss_end / 1024
    );

    let connected = counters.assert_each_disconnected_once(&stats);
    // Every upgrade that finished connected its session, and only those.
    let upgraded = UPGRADED_ENDINGS.map(cycles_ending_of).iter().sum::<usize>() + sentinels;
    assert_eq!(connected, upgraded, "sessions connected for {upgraded} upgrades");
    assert_eq!(stats.ws_upgrades as usize, connected, "{stats:?}");
    // Every accepted connection upgraded, failed to, or got the page. (A connection reset
    // before the server took it from the listener's queue is dropped uncounted: ending 5
    // may never be accepted, so `accepted` may fall short of the connections made.)
    let failed = FAILED_ENDINGS.map(cycles_ending_of).iter().sum::<usize>();
    let failures = stats.ws_upgrade_failures as usize;
    assert_eq!(stats.accepted as usize, upgraded + failures + cycles_ending_of(PAGE_ENDING));
    assert!(stats.accepted as usize <= CYCLES + WARM_UP + sentinels, "{stats:?}");
    assert!(
        (cycles_ending_of(3)..=failed).contains(&failures),
        "{failures} failed upgrades: at least the {} refused, at most {failed}: {stats:?}",
        cycles_ending_of(3)
    );
    // Every close handshake is seen as an orderly close, from either side.
    let count = |label: &str| reasons.get(label).copied().unwrap_or(0);
    assert_eq!(count("local"), cycles_ending_of(6), "server-side closes: {reasons:?}");
    assert_eq!(count("ws_protocol_error"), cycles_ending_of(8), "text frames: {reasons:?}");
    let orderly = cycles_ending_of(0) + cycles_ending_of(1) + sentinels;
    assert!(count("peer_closed") >= orderly, "{orderly} orderly closes: {reasons:?}");
    assert_only_reasons(
        &reasons,
        &["peer_closed", "local", "reset", "ws_protocol_error", "os_error"],
    );
    assert_rss_back(&run, CYCLES);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A shutdown with WebSocket sessions established (some with messages queued, some idle)
/// and others in the middle of their upgrade (silent; half a request): it ends well within
/// its deadline (the upgrades do not hold it for their 10 s timeout); each established
/// client reads every queued byte as binary messages, then a close frame with 1001, then
/// the end of the stream (`close_notify` and FIN over TLS); the upgrading ones never
/// connected and are closed too.
fn shutdown_with_websocket_sessions_open(tls: bool) {
    const FLOODED: usize = 3;
    const IDLE: usize = 2;
    const DEADLINE: Duration = Duration::from_secs(5);
    let _exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
    let fd_start = open_fd_count();
    let counters = Arc::new(Counters::default());
    let server = ws_server(&counters, tls);
    let addr = server.websocket_addr().unwrap();

    let mut readers = Vec::new();
    for k in 0..FLOODED + IDLE {
        let mut c = RawWs::upgrade(client_stream(addr, tls));
        c.roundtrip(b"ping");
        if k < FLOODED {
            c.send(&binary(b"flood"));
        }
        readers.push(std::thread::spawn(move || c.read_to_end()));
    }
    let mut upgrading = Vec::new();
    for bytes in [&b""[..], &b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n"[..]] {
        let mut s = client_stream(addr, tls);
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
        upgrading.push(s);
    }
    let sessions = FLOODED + IDLE + upgrading.len();
    wait_sessions_and_floods(&server, &counters, sessions, FLOODED);

    let started = Instant::now();
    server.shutdown(DEADLINE).expect("a clean shutdown");
    let took = started.elapsed();
    eprintln!("shutdown with WebSocket sessions open (tls: {tls}) took {took:?}");
    assert!(took < DEADLINE, "the shutdown took {took:?}, its deadline is {DEADLINE:?}");

    let expected = flood_bytes();
    for (k, r) in readers.into_iter().enumerate() {
        let (frames, end) = r.join().expect("reader thread");
        let (last, data) = frames.split_last().expect("frames");
        assert_eq!(last.opcode, OP_CLOSE, "client {k}: the last frame: {last:?}");
        assert_eq!(last.close_code(), Some(1001), "client {k}: going away: {last:?}");
        assert!(data.iter().all(|f| f.opcode == OP_BINARY && f.fin), "client {k}: {data:?}");
        let got: Vec<u8> = data.iter().flat_map(|f| f.payload.iter().copied()).collect();
        if k < FLOODED {
            assert_eq!(got.len(), FLOOD, "client {k}: every queued byte");
            assert!(got == expected, "client {k}: the queued bytes intact, in order");
        } else {
            assert!(got.is_empty(), "idle client {k}: {} bytes", got.len());
        }
        assert_eq!(end, WireEnd::Eof, "client {k}: the end of the stream after the close");
    }
    for (k, mut s) in upgrading.into_iter().enumerate() {
        let (got, end) = read_until_end(&mut s);
        eprintln!("upgrading client {k}: {got:?} then {end:?}");
        assert!(got.is_empty(), "upgrading client {k}: nothing before the end: {got:?}");
    }
    assert_eq!(counters.connected.load(Ordering::SeqCst), FLOODED + IDLE);
    assert_eq!(counters.disconnected.load(Ordering::SeqCst), FLOODED + IDLE);
    let reasons = counters.reasons();
    assert_eq!(reasons, HashMap::from([("shutdown", FLOODED + IDLE)]), "{reasons:?}");
    if let Some(start) = fd_start {
        wait_fds_back(start);
    }
}

#[test]
fn shutdown_with_ws_sessions_upgrading_and_established_ends_in_time() {
    shutdown_with_websocket_sessions_open(false);
}

#[test]
fn shutdown_with_wss_sessions_upgrading_and_established_ends_in_time() {
    shutdown_with_websocket_sessions_open(true);
}
