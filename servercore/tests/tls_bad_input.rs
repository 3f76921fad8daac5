//! Bad TLS clients against a good one (issue 13): bytes that are not TLS, slow-loris
//! handshakes, records rustls refuses (during and after the handshake) and truncated closes
//! each cost only their own session, with the right reason, while a healthy TLS session on
//! the same server keeps echoing.
//!
//! A failed handshake calls no session callback, so those cases are observed through the
//! server's `stats()` (a session that never connected: `accepted` and
//! `tls_handshake_failures` go up, `disconnected` does not, the session count comes back;
//! `aborted` counts the resets), through the `servercore_disconnects_total` metric (which
//! counts each failed handshake under its `tls_*` reason: a recorder installed by
//! `common::tls::reason_counts`), and through what the peer sees: a reset (not TLS,
//! handshake timeout), a TLS alert then an orderly close (rustls refused a record), and
//! when it comes. Failures after the handshake are seen by the session's `on_disconnected`
//! (the event log of `common::Recorder`).
//!
//! The metric is process-wide, so the tests of this binary take a lock and run one at a
//! time. Nothing here forces a backend: `SERVERCORE_BACKEND=io_uring|poll` picks it.

mod common;

use common::bad_input::BadInput;
use common::tls::{
    client_connection, client_hello, feed_client, pki, raw_read_to_end, tls_connect,
    tls_read_to_end, tls_roundtrip, RawEnd, TlsClient, TlsEnd,
};
use common::{any_port, connect, Ev};
use servercore::tls::rustls;
use servercore::{DisconnectReason, ServerService, SessionConfig, SessionId, TlsError};
use std::io::Write;
use std::net::Shutdown;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests of this binary one at a time: the reason counts are process-wide.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// "At once": far below the default 10 s handshake timeout, so a close seen within it is
/// not the timeout's.
const QUICK: Duration = Duration::from_secs(5);

/// A TLS echo server with one healthy TLS client connected.
struct Bench {
    base: BadInput,
    healthy: TlsClient,
    round: usize,
}

crate::deref_to_bad_input!(Bench);

impl Bench {
    fn new(config: SessionConfig) -> Self {
        let builder = ServerService::builder(any_port())
            .workers(2)
            .session_config(config)
            .tls(pki().server.clone());
        let (base, healthy) = BadInput::start(
            &EXCLUSIVE,
            builder,
            |server| tls_connect(server.local_addr()),
            |healthy| tls_roundtrip(healthy, b"healthy hello"),
        );
        Bench { base, healthy, round: 0 }
    }

    /// The healthy session still echoes.
    fn healthy_echoes(&mut self) {
        self.round += 1;
        let msg = format!("healthy round {} {}", self.round, "x".repeat(self.round % 64 * 100));
        tls_roundtrip(&mut self.healthy, msg.as_bytes());
    }

    /// Ends the healthy session in order, shuts down, and checks that the only sessions
    /// that got callbacks are the healthy one and `connected` (each with one clean
    /// lifecycle).
    fn finish(mut self, connected: &[SessionId]) {
        self.healthy_echoes();
        common::tls::send_close_notify(&mut self.healthy);
        self.healthy.sock.shutdown(Shutdown::Write).unwrap();
        self.base.finish(connected);
    }
}

/// A raw client sends `bytes` (if any); returns what it read until the end, how the
/// stream ended, and when (from the connect).
fn raw_client(bench: &Bench, bytes: &[u8]) -> (Vec<u8>, RawEnd, Duration) {
    let mut s = connect(bench.server.local_addr());
    let t0 = Instant::now();
    if !bytes.is_empty() {
        s.write_all(bytes).unwrap();
    }
    raw_read_to_end(&mut s, t0)
}

/// The first record of `bytes`, if it is a whole alert record: (level, description).
fn alert_record(bytes: &[u8]) -> Option<(u8, u8)> {
    match bytes {
        [0x15, 0x03, _, 0x00, 0x02, level, desc, ..] => Some((*level, *desc)),
        _ => None,
    }
}

#[test]
fn bytes_that_are_not_tls_are_reset_at_once() {
    let mut bench = Bench::new(SessionConfig::default());
    let inputs: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        &[0x00; 64],
        // An application-data record header cannot start a TLS stream.
        &[0x17, 0x03, 0x03, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
    ];
    for input in inputs {
        let what = String::from_utf8_lossy(&input[..input.len().min(16)]).into_owned();
        let before = bench.stats();
        let (got, end, took) = raw_client(&bench, input);
        assert!(got.is_empty(), "{what:?}: no reply expected, got {got:?}");
        assert_eq!(end, RawEnd::Reset, "{what:?}: the peer is reset");
        assert!(took < QUICK, "{what:?}: reset after {took:?}, not at once");
        bench.wait_stats(&format!("{what:?}: its session gone, aborted counted"), |s| {
            s.sessions == 1 && s.aborted == before.aborted + 1
        });
        let after = bench.stats();
        assert_eq!(after.accepted, before.accepted + 1, "{what:?}: {after:?}");
        assert_eq!(after.disconnected, before.disconnected, "{what:?}: no on_disconnected");
        assert_eq!(after.tls_handshakes, before.tls_handshakes, "{what:?}: {after:?}");
        assert_eq!(
            after.tls_handshake_failures,
            before.tls_handshake_failures + 1,
            "{what:?}: {after:?}"
        );
        bench.assert_reasons(&format!("{what:?}"), &[("tls_not_tls", 1)]);
        bench.healthy_echoes();
    }
    bench.finish(&[]);
}

/// Slow-loris handshakes (nothing, half a `ClientHello`, a whole `ClientHello` and no
/// answer to the server's flight), all at once: each is reset once
/// `tls_handshake_timeout` has passed, not before; the healthy session, established
/// before them, echoes meanwhile and outlives the timeout.
#[test]
fn slow_loris_handshakes_time_out() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
    let mut bench = Bench::new(SessionConfig {
        tls_handshake_timeout: HANDSHAKE_TIMEOUT,
        ..SessionConfig::default()
    });
    let hello = client_hello();
    let before = bench.stats();
    let addr = bench.server.local_addr();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", Vec::new()),
        ("half a ClientHello", hello[..hello.len() / 2].to_vec()),
        ("a ClientHello, then nothing", hello.clone()),
    ];
    let lorises: Vec<_> = variants
        .into_iter()
        .map(|(what, bytes)| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let t0 = Instant::now();
                if !bytes.is_empty() {
                    s.write_all(&bytes).unwrap();
                }
                let (got, end, took) = raw_read_to_end(&mut s, t0);
                (what, got, end, took)
            })
        })
        .collect();
    // Meanwhile: the slow ones hold sessions, the healthy one echoes.
    bench.wait_stats("the slow-loris sessions to be accepted", |s| {
        s.accepted == before.accepted + 3
    });
    bench.healthy_echoes();
    for t in lorises {
        let (what, got, end, took) = t.join().expect("slow-loris thread");
        assert_eq!(end, RawEnd::Reset, "{what}: reset at the timeout (read {} bytes)", got.len());
        assert!(
            took >= HANDSHAKE_TIMEOUT.mul_f32(0.9),
            "{what}: ended after {took:?}, before the {HANDSHAKE_TIMEOUT:?} handshake timeout"
        );
        assert!(took < HANDSHAKE_TIMEOUT + QUICK, "{what}: ended only after {took:?}");
        if what == "a ClientHello, then nothing" {
            // The server answered the hello (its first flight) before giving up.
            assert_eq!(got.first(), Some(&0x16), "{what}: the server's flight, got {got:?}");
        } else {
            assert!(got.is_empty(), "{what}: nothing to read, got {got:?}");
        }
    }
    bench.wait_stats("the slow-loris sessions gone, three resets counted", |s| {
        s.sessions == 1 && s.aborted == before.aborted + 3
    });
    let after = bench.stats();
    assert_eq!(after.disconnected, before.disconnected, "no on_disconnected: {after:?}");
    assert_eq!(after.tls_handshake_failures, before.tls_handshake_failures + 3, "{after:?}");
    assert_eq!(after.tls_handshakes, before.tls_handshakes, "{after:?}");
    bench.assert_reasons("slow-loris handshakes", &[("tls_handshake_timeout", 3)]);
    // The healthy session lived past the handshake timeout.
    bench.healthy_echoes();
    bench.finish(&[]);
}

/// Records rustls refuses during the handshake (an oversized record header, a malformed
/// `ClientHello`, garbage after a valid `ClientHello`): the peer gets rustls' alert, soon;
/// the session never connected.
#[test]
fn records_refused_during_the_handshake_get_an_alert() {
    let mut bench = Bench::new(SessionConfig::default());
    let before = bench.stats();

    // A handshake record announcing 0x4800 bytes: over the record size limit.
    let mut oversized = vec![0x16, 0x03, 0x01, 0x48, 0x00];
    oversized.extend_from_slice(&[0u8; 32]);
    // A handshake record holding a ClientHello that is cut short inside.
    let malformed = [0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0xff, 0xff];
    for (what, input) in [("oversized record", &oversized[..]), ("malformed hello", &malformed)] {
        let (got, end, took) = raw_client(&bench, input);
        let alert = alert_record(&got);
        assert!(
            matches!(alert, Some((2, _))),
            "{what}: a fatal alert first, got {got:?} then {end:?}"
        );
        assert!(took < QUICK, "{what}: the connection ended after {took:?}");
        assert_eq!(end, RawEnd::Eof, "{what}: an orderly close after the alert");
        eprintln!("{what}: alert {alert:?}, then {end:?}");
        bench.healthy_echoes();
    }

    // A valid ClientHello, then an application-data record that does not decrypt: rustls'
    // alert comes after the server's flight (encrypted: a client connection reads it).
    let mut conn = client_connection(&pki().client_no_resumption);
    let mut input = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut input).unwrap();
    }
    input.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x20]);
    input.extend_from_slice(&[0x5a; 32]);
    let (got, end, took) = raw_client(&bench, &input);
    let error = feed_client(&mut conn, &got);
    assert!(
        matches!(error, Some(rustls::Error::AlertReceived(_))),
        "garbage after a ClientHello: the server's alert expected, rustls saw {error:?} \
         ({} bytes, then {end:?})",
        got.len()
    );
    assert!(took < QUICK, "garbage after a ClientHello: ended after {took:?}");
    assert_eq!(end, RawEnd::Eof, "garbage after a ClientHello: an orderly close after the alert");
    eprintln!("garbage after a ClientHello: {error:?}, then {end:?}");

    bench.wait_stats("the refused sessions gone", |s| s.sessions == 1);
    let after = bench.stats();
    assert_eq!(after.accepted, before.accepted + 3, "{after:?}");
    assert_eq!(after.disconnected, before.disconnected, "no on_disconnected: {after:?}");
    assert_eq!(after.tls_handshake_failures, before.tls_handshake_failures + 3, "{after:?}");
    assert_eq!(after.aborted, before.aborted, "the alerts were not cut by a reset: {after:?}");
    bench.assert_reasons("records refused in the handshake", &[("tls_protocol_error", 3)]);
    bench.healthy_echoes();
    bench.finish(&[]);
}

/// Waits for the next session to connect and returns its id.
fn next_session(bench: &mut Bench) -> SessionId {
    bench.log.next_connected().0
}

/// After the handshake, a record that does not decrypt (one byte flipped) and an oversized
/// application-data record header end that session with `Tls(Protocol(..))`, reported to
/// its `on_disconnected`, and the peer reads rustls' alert.
#[test]
fn records_refused_after_the_handshake_end_the_session_with_protocol() {
    let mut bench = Bench::new(SessionConfig::default());
    let before = bench.stats();
    let mut ended = Vec::new();

    // One byte of an application-data record flipped: decryption fails.
    let mut c = tls_connect(bench.server.local_addr());
    let id = next_session(&mut bench);
    tls_roundtrip(&mut c, b"before the corruption");
    c.conn.writer().write_all(b"this record is corrupted on the way").unwrap();
    let mut record = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut record).unwrap();
    }
    let last = record.len() - 1;
    record[last - 20] ^= 0x40;
    c.sock.write_all(&record).unwrap();
    let reason = bench.log.disconnected(id);
    assert!(
        matches!(reason, DisconnectReason::Tls(TlsError::Protocol(_))),
        "corrupted record: {reason:?}"
    );
    let (rest, end) = tls_read_to_end(&mut c);
    assert!(rest.is_empty(), "corrupted record: {} plaintext bytes after it", rest.len());
    assert!(
        matches!(&end, TlsEnd::Error(std::io::ErrorKind::InvalidData, text) if text.contains("alert")),
        "corrupted record: the peer reads the server's alert, got {end:?}"
    );
    eprintln!("corrupted record: {reason}; the peer saw {end:?}");
    ended.push(id);
    bench.healthy_echoes();

    // An application-data record header announcing 0x4800 bytes.
    let mut c = tls_connect(bench.server.local_addr());
    let id = next_session(&mut bench);
    tls_roundtrip(&mut c, b"before the oversized record");
    let mut oversized = vec![0x17, 0x03, 0x03, 0x48, 0x00];
    oversized.extend_from_slice(&[0x33; 64]);
    c.sock.write_all(&oversized).unwrap();
    let reason = bench.log.disconnected(id);
    assert!(
        matches!(reason, DisconnectReason::Tls(TlsError::Protocol(_))),
        "oversized record: {reason:?}"
    );
    let (rest, end) = tls_read_to_end(&mut c);
    assert!(rest.is_empty(), "oversized record: {} plaintext bytes after it", rest.len());
    assert!(
        matches!(&end, TlsEnd::Error(std::io::ErrorKind::InvalidData, text) if text.contains("alert")),
        "oversized record: the peer reads the server's alert, got {end:?}"
    );
    eprintln!("oversized record: {reason}; the peer saw {end:?}");
    ended.push(id);
    bench.healthy_echoes();

    bench.wait_stats("the refused sessions gone", |s| s.sessions == 1);
    let after = bench.stats();
    assert_eq!(after.disconnected, before.disconnected + 2, "{after:?}");
    assert_eq!(after.disconnected_with_error, before.disconnected_with_error + 2, "{after:?}");
    assert_eq!(after.tls_handshakes, before.tls_handshakes + 2, "{after:?}");
    assert_eq!(after.tls_handshake_failures, before.tls_handshake_failures, "{after:?}");
    bench.assert_reasons("records refused after the handshake", &[("tls_protocol_error", 2)]);
    bench.finish(&ended);
}

/// Closes without `close_notify`: after the handshake (right away, or in the middle of a
/// record) they end that session with `Tls(Truncated)`; in the middle of the handshake the
/// session never connected and goes away at once (not at the handshake timeout).
#[test]
fn truncated_closes_cost_only_their_session() {
    let mut bench = Bench::new(SessionConfig::default());
    let before = bench.stats();
    let mut ended = Vec::new();

    // A FIN after some traffic, no close_notify.
    let mut c = tls_connect(bench.server.local_addr());
    let id = next_session(&mut bench);
    tls_roundtrip(&mut c, b"hello");
    c.sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(bench.log.disconnected(id), DisconnectReason::Tls(TlsError::Truncated));
    raw_read_to_end(&mut c.sock, Instant::now());
    ended.push(id);
    bench.healthy_echoes();

    // A FIN in the middle of a record.
    let mut c = tls_connect(bench.server.local_addr());
    let id = next_session(&mut bench);
    tls_roundtrip(&mut c, b"hello");
    c.conn.writer().write_all(&[7u8; 1000]).unwrap();
    let mut record = Vec::new();
    while c.conn.wants_write() {
        c.conn.write_tls(&mut record).unwrap();
    }
    c.sock.write_all(&record[..record.len() / 2]).unwrap();
    c.sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(bench.log.disconnected(id), DisconnectReason::Tls(TlsError::Truncated));
    raw_read_to_end(&mut c.sock, Instant::now());
    ended.push(id);
    bench.healthy_echoes();

    // A FIN in the middle of the handshake: half a ClientHello.
    let hello = client_hello();
    let mut s = connect(bench.server.local_addr());
    let t0 = Instant::now();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, end, took) = raw_read_to_end(&mut s, t0);
    assert!(got.is_empty(), "half a ClientHello: no reply expected, got {got:?}");
    assert!(took < QUICK, "half a ClientHello then FIN: ended after {took:?} ({end:?})");
    bench.healthy_echoes();

    bench.wait_stats("the truncated sessions gone", |s| s.sessions == 1);
    let after = bench.stats();
    assert_eq!(after.accepted, before.accepted + 3, "{after:?}");
    assert_eq!(after.disconnected, before.disconnected + 2, "{after:?}");
    assert_eq!(after.tls_handshake_failures, before.tls_handshake_failures + 1, "{after:?}");
    // Two sessions that connected and one handshake, all ended without close_notify.
    bench.assert_reasons("truncated closes", &[("tls_truncated", 3)]);
    bench.finish(&ended);
}

/// The sessions of every bad client above, side by side on one server and at once, with
/// the healthy one echoing throughout: none costs another session anything.
#[test]
fn bad_clients_at_once_leave_the_healthy_session_alone() {
    let mut bench = Bench::new(SessionConfig {
        tls_handshake_timeout: Duration::from_millis(500),
        ..SessionConfig::default()
    });
    let addr = bench.server.local_addr();
    let hello = client_hello();
    let before = bench.stats();
    let inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        Vec::new(),
        hello[..hello.len() / 3].to_vec(),
        vec![0x16, 0x03, 0x01, 0x48, 0x00, 0, 0, 0, 0],
    ];
    let n = inputs.len();
    let bad: Vec<_> = inputs
        .into_iter()
        .map(|input| {
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let mut s = connect(addr);
                    if !input.is_empty() {
                        s.write_all(&input).unwrap();
                    }
                    raw_read_to_end(&mut s, Instant::now());
                }
            })
        })
        .collect();
    while !bad.iter().all(|t| t.is_finished()) {
        bench.healthy_echoes();
    }
    for t in bad {
        t.join().expect("bad client thread");
    }
    bench.wait_stats("every bad session gone", |s| {
        s.sessions == 1 && s.accepted == before.accepted + 5 * n as u64
    });
    let after = bench.stats();
    assert_eq!(after.disconnected, before.disconnected, "{after:?}");
    assert_eq!(after.tls_handshake_failures, before.tls_handshake_failures + 5 * n as u64);
    let connected = bench.log.count(|e| matches!(e.ev, Ev::Connected(_)));
    assert_eq!(connected, 1, "only the healthy session connected");
    bench.assert_reasons(
        "bad clients at once",
        &[("tls_not_tls", 5), ("tls_handshake_timeout", 10), ("tls_protocol_error", 5)],
    );
    bench.finish(&[]);
}
