//! 2,000 TLS connect/handshake/close cycles ending in every way (issue 13): afterwards the
//! server holds no session, the process's fd count is exactly back at its start and its
//! RSS is back near its start (as `reliability_cycles.rs` checks for plain TCP); and a
//! shutdown with TLS sessions open, handshaking and established, ends within its deadline,
//! the established ones getting their queued bytes, then `close_notify`.
//!
//! fd count and RSS are process-wide: the two tests of this binary take a lock so that
//! they never run at the same time.

mod common;

use common::cycles::*;

use common::tls::{
    client_hello, pki, raw_read_to_end, send_close_notify, tls_connect, tls_connect_with,
    tls_read_to_end, tls_roundtrip, TlsEnd,
};
use common::{any_port, connect, open_fd_count, set_linger_zero};
use servercore::ServerService;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tls_server(counters: &Arc<Counters>) -> ServerService {
    let c = counters.clone();
    ServerService::builder(any_port())
        .workers(WORKERS)
        .tls(pki().server.clone())
        .start(move || Cycle { counters: c.clone(), done: false })
        .unwrap()
}

/// Ways a cycle ends.
const ENDINGS: usize = 6;

/// How many cycles end in way `ending`.
fn cycles_ending_of(ending: usize) -> usize {
    cycles_ending(ending, ENDINGS)
}
/// Of those, the ones whose client finishes its handshake.
const HANDSHAKING_ENDINGS: [usize; 4] = [0, 1, 2, 5];

/// One cycle, ending one of six ways: a round trip and an orderly TLS close
/// (`close_notify`, FIN); a round trip and a close without `close_notify` (with a resumed
/// handshake once the client has a ticket); the handshake and a reset at once; a TCP
/// connect closed before any byte; half a `ClientHello`, then a reset; the server's
/// disconnect (its answer, `close_notify`, FIN).
fn cycle(addr: SocketAddr, i: usize, hello: &[u8]) {
    match i % ENDINGS {
        0 => {
            let mut s = tls_connect_with(addr, &pki().client_no_resumption);
            tls_roundtrip(&mut s, b"ping");
            send_close_notify(&mut s);
            s.sock.shutdown(Shutdown::Write).unwrap();
            let _ = tls_read_to_end(&mut s);
        }
        1 => {
            let mut s = tls_connect(addr);
            tls_roundtrip(&mut s, b"ping");
        }
        2 => {
            let s = tls_connect(addr);
            set_linger_zero(&s.sock).unwrap();
        }
        3 => drop(std::net::TcpStream::connect(addr).unwrap()),
        4 => {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&hello[..hello.len() / 2]).unwrap();
            set_linger_zero(&s).unwrap();
        }
        _ => {
            let mut s = tls_connect_with(addr, &pki().client_no_resumption);
            s.write_all(b"bye").unwrap();
            s.flush().unwrap();
            let (got, end) = tls_read_to_end(&mut s);
            assert_eq!(got, b"bye", "cycle {i}: the answer before the server's close");
            assert!(matches!(end, TlsEnd::CloseNotify), "cycle {i}: the server's close: {end:?}");
        }
    }
}

/// Settles (see `common::cycles::settle`) with TLS sentinels, each closed with
/// `close_notify`.
fn settle(addr: SocketAddr, workers: usize) -> usize {
    common::cycles::settle(workers, || {
        let mut s = tls_connect(addr);
        s.write_all(b"?").unwrap();
        s.flush().unwrap();
        let mut worker = [0u8; 1];
        s.read_exact(&mut worker).expect("a sentinel's answer");
        send_close_notify(&mut s);
        usize::from(worker[0])
    })
}

#[test]
fn two_thousand_tls_cycles_leave_no_session_fd_or_memory_behind() {
    let _exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
    if fd_count_unknown() {
        return;
    }
    let counters = Arc::new(Counters::default());
    let server = tls_server(&counters);
    let addr = server.local_addr();
    let hello = Arc::new(client_hello());

    // Warm up (pools, slots, rustls and the client's session cache), then take the start.
    let run = run_cycles(&server, SIZES, move |i| cycle(addr, i, &hello), || settle(addr, WORKERS));
    let sentinels = run.sentinels;
    let stats = server.stats();
    let reasons = counters.reasons();
    eprintln!(
        "{CYCLES} TLS cycles in {:?} ({} backend); {stats:?}; reasons {reasons:?}; \
         RSS {} -> {} KiB",
        run.took,
        server.backend(),
        run.rss_start / 1024,
        run.rss_end / 1024
    );

    let connected = counters.assert_each_disconnected_once(&stats);
    // A session connects once its handshake is done: the endings that never finish a
    // handshake never connect, the others connect (but a reset right after the client's
    // Finished may beat it).
    let connections = CYCLES + WARM_UP + sentinels;
    let handshakes = HANDSHAKING_ENDINGS.map(cycles_ending_of).iter().sum::<usize>() + sentinels;
    assert!(
        connected > handshakes * 2 / 3 && connected <= handshakes,
        "{connected} sessions connected for {handshakes} completed client handshakes"
    );
    assert!(stats.accepted as usize <= connections, "{stats:?}");
    // Every accepted connection either finished its handshake (and connected) or failed it.
    assert_eq!(stats.tls_handshakes as usize, connected, "{stats:?}");
    assert_eq!(stats.tls_handshakes + stats.tls_handshake_failures, stats.accepted, "{stats:?}");
    // Every orderly TLS close is seen as one, from either side.
    let peer_closed = reasons.get("peer_closed").copied().unwrap_or(0);
    let orderly = cycles_ending_of(0) + sentinels;
    assert!(
        peer_closed >= orderly,
        "{peer_closed} peer_closed for {orderly} orderly TLS closes: {reasons:?}"
    );
    let local = reasons.get("local").copied().unwrap_or(0);
    assert_eq!(local, cycles_ending_of(5), "server-side closes: {reasons:?}");
    assert_only_reasons(&reasons, &["peer_closed", "local", "reset", "tls_truncated", "os_error"]);
    assert_rss_back(&run, CYCLES);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A shutdown with TLS sessions established (each with bytes queued) and others in the
/// middle of their handshake (silent, half a `ClientHello`, a `ClientHello` and no answer):
/// it ends well within its deadline (the handshakes do not hold it for their 10 s
/// timeout); each established client reads every queued byte, then `close_notify`, then
/// the FIN; the handshaking ones never connected.
#[test]
fn shutdown_with_tls_sessions_handshaking_and_established_ends_in_time() {
    const ESTABLISHED: usize = 4;
    const DEADLINE: Duration = Duration::from_secs(5);
    let _exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
    let fd_start = open_fd_count();
    let counters = Arc::new(Counters::default());
    let server = tls_server(&counters);
    let addr = server.local_addr();

    let mut readers = Vec::new();
    for _ in 0..ESTABLISHED {
        let mut s = tls_connect(addr);
        tls_roundtrip(&mut s, b"ping");
        s.write_all(b"flood").unwrap();
        s.flush().unwrap();
        readers.push(std::thread::spawn(move || {
            let (got, end) = tls_read_to_end(&mut s);
            let (rest, raw_end, _) = raw_read_to_end(&mut s.sock, Instant::now());
            (got, end, rest.len(), raw_end)
        }));
    }
    let hello = client_hello();
    let mut handshaking = Vec::new();
    for bytes in [&[][..], &hello[..hello.len() / 2], &hello[..]] {
        let mut s = connect(addr);
        s.write_all(bytes).unwrap();
        handshaking.push(s);
    }
    wait_sessions_and_floods(&server, &counters, ESTABLISHED + handshaking.len(), ESTABLISHED);

    let started = Instant::now();
    server.shutdown(DEADLINE).expect("a clean shutdown");
    let took = started.elapsed();
    eprintln!("shutdown with TLS sessions open took {took:?}");
    assert!(took < DEADLINE, "the shutdown took {took:?}, its deadline is {DEADLINE:?}");

    let expected = flood_bytes();
    for (k, r) in readers.into_iter().enumerate() {
        let (got, end, raw_rest, raw_end) = r.join().expect("reader thread");
        // The round trip's echo was read; what follows is the flood.
        assert_eq!(got.len(), FLOOD, "established client {k}: every queued byte ({end:?})");
        assert!(got == expected, "established client {k}: the queued bytes intact, in order");
        assert!(matches!(end, TlsEnd::CloseNotify), "established client {k}: {end:?}");
        assert_eq!((raw_rest, raw_end), (0, common::tls::RawEnd::Eof), "client {k}: the FIN");
    }
    for (k, mut s) in handshaking.into_iter().enumerate() {
        let (_, end, took) = raw_read_to_end(&mut s, started);
        eprintln!("handshaking client {k}: {end:?} {took:?} after the shutdown began");
        assert!(took < DEADLINE, "handshaking client {k}: its end came after {took:?}");
    }
    assert_eq!(counters.connected.load(Ordering::SeqCst), ESTABLISHED, "no handshake finished");
    assert_eq!(counters.disconnected.load(Ordering::SeqCst), ESTABLISHED);
    let reasons = counters.reasons();
    assert_eq!(reasons, HashMap::from([("shutdown", ESTABLISHED)]), "{reasons:?}");
    if let Some(start) = fd_start {
        wait_fds_back(start);
    }
}
