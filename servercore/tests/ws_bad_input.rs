//! Bad WebSocket clients against a good one (issue 14): requests that are not upgrades,
//! oversized and slow-loris request heads, and after the upgrade every frame RFC 6455
//! forbids each cost only their own session, with the right HTTP status or close code and
//! the right reason, while a healthy WebSocket session on the same server keeps echoing.
//!
//! Frames are written by hand over a `TcpStream` after a hand-made upgrade
//! (`common::ws`), and over TLS (wss) for some cases. A refused upgrade calls no session
//! callback: it is observed through `stats()` (`ws_upgrade_failures`), through the
//! `servercore_disconnects_total` metric (counted under its `ws_*` reason: the recorder of
//! `common::tls::reason_counts`) and through what the peer reads. Failures after the
//! upgrade are seen by the session's `on_disconnected` (the event log of
//! `common::Recorder`) and by the close frame the peer reads.
//!
//! The metric is process-wide, so the tests of this binary take a lock and run one at a
//! time. Nothing here forces a backend: `SERVERCORE_BACKEND=io_uring|poll` picks it.

mod common;

use common::bad_input::BadInput;
use common::tls::pki;
use common::ws::{
    binary, client_frame, client_stream, close_frame, frame, http_status, read_until_end, tcp,
    tls_stream, upgrade_request, ws_client, ws_roundtrip, Frame, RawWs, Stream, WireEnd, OP_BINARY,
    OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT,
};
use common::{any_port, Ev};
use servercore::ws::{WsConfig, WsError};
use servercore::{DisconnectReason, ServerService, SessionConfig, SessionId};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests of this binary one at a time: the reason counts are process-wide.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// "At once": far below the default 10 s handshake timeout.
const QUICK: Duration = Duration::from_secs(5);

/// The message limit of the benches (small, so that going over it is cheap).
const MAX_MESSAGE: usize = 64 << 10;

const PAGE: &[u8] = b"<p>the game</p>";

/// A WebSocket echo server (and its plain TCP listener, unused but for one case) with one
/// healthy tungstenite client connected over ws, or over wss when the server has TLS.
struct Bench {
    base: BadInput,
    ws_addr: SocketAddr,
    tls: bool,
    healthy: tungstenite::WebSocket<Box<dyn Stream>>,
    round: usize,
}

crate::deref_to_bad_input!(Bench);

impl Bench {
    fn new(handshake_timeout: Duration, tls: bool) -> Self {
        let config =
            WsConfig { handshake_timeout, max_message: MAX_MESSAGE, ..WsConfig::default() }.page(
                "/",
                "text/html",
                PAGE,
            );
        let mut builder = ServerService::builder(any_port())
            .workers(2)
            .session_config(SessionConfig::default())
            .websocket(any_port(), config);
        if tls {
            builder = builder.tls(pki().server.clone());
        }
        let (base, healthy) = BadInput::start(
            &EXCLUSIVE,
            builder,
            |server| ws_client(server.websocket_addr().expect("a WebSocket listener"), tls),
            |healthy| ws_roundtrip(healthy, b"healthy hello"),
        );
        let ws_addr = base.server.websocket_addr().expect("a WebSocket listener");
        Bench { base, ws_addr, tls, healthy, round: 0 }
    }

    /// The healthy session still echoes (messages of varied sizes, up to the 16-bit
    /// length form).
    fn healthy_echoes(&mut self) {
        self.round += 1;
        let n = if self.round % 5 == 0 { 60_000 } else { self.round % 64 * 100 };
        let msg = format!("healthy round {} {}", self.round, "x".repeat(n));
        ws_roundtrip(&mut self.healthy, msg.as_bytes());
    }

    /// A new client stream to the WebSocket listener (TLS done, when the server has TLS).
    fn stream(&self) -> Box<dyn Stream> {
        client_stream(self.ws_addr, self.tls)
    }

    /// A client upgraded by hand whose session is open (and has echoed once); its id.
    fn upgraded(&mut self) -> (RawWs<Box<dyn Stream>>, SessionId) {
        let mut c = RawWs::upgrade(self.stream());
        let (id, _) = self.log.next_connected();
        c.roundtrip(b"before the bad input");
        (c, id)
    }

    /// Ends the healthy session with a close frame, shuts down, and checks that the only
    /// sessions that got callbacks are the healthy one and `connected` (each with one
    /// clean lifecycle).
    fn finish(mut self, connected: &[SessionId]) {
        self.healthy_echoes();
        self.healthy.close(None).expect("the healthy client's close");
        loop {
            match self.healthy.read() {
                Ok(tungstenite::Message::Close(_)) => {}
                Ok(m) => panic!("after the close: {m:?}"),
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("the healthy client's close: {e}"),
            }
        }
        self.base.finish(connected);
    }
}

/// A raw client sends `bytes` to the WebSocket listener before any upgrade; returns what
/// it read until the end, how the stream ended, and when (from the connect).
fn before_upgrade(bench: &Bench, bytes: &[u8]) -> (Vec<u8>, WireEnd, Duration) {
    let mut s = bench.stream();
    let t0 = Instant::now();
    if !bytes.is_empty() {
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }
    let (got, end) = read_until_end(&mut s);
    (got, end, t0.elapsed())
}

/// The close frame that ends `frames`: every frame before it is a binary one (echoes of
/// what was accepted before the bad input), and nothing follows it.
#[track_caller]
fn final_close(what: &str, frames: &[Frame]) -> Frame {
    let Some((last, before)) = frames.split_last() else {
        panic!("{what}: no frame at all, a close frame expected");
    };
    assert_eq!(last.opcode, OP_CLOSE, "{what}: the last frame is a close frame: {frames:?}");
    assert!(!last.masked && last.fin, "{what}: a server frame, whole: {last:?}");
    for f in before {
        assert_eq!(f.opcode, OP_BINARY, "{what}: before the close: {f:?}");
    }
    last.clone()
}

/// The RFC 6455 section 7.4 requests that are not upgrades, or not acceptable ones: each
/// gets its HTTP status, then an orderly close; no callback runs; counted as a failed
/// upgrade. A plain GET of the page's path gets the page (not a failure).
#[test]
fn requests_that_are_not_upgrades_get_an_http_error_then_close() {
    let mut bench = Bench::new(Duration::from_secs(10), false);
    let upgrade = upgrade_request("/");
    let cases: Vec<(&str, String, u16)> = vec![
        ("a plain GET of another path", "GET /other HTTP/1.1\r\nHost: x\r\n\r\n".into(), 426),
        ("a POST", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(), 405),
        ("a POST that asks to upgrade", upgrade.replace("GET", "POST"), 405),
        ("HTTP/1.0", upgrade.replace("HTTP/1.1", "HTTP/1.0"), 400),
        ("version 8", upgrade.replace("Version: 13", "Version: 8"), 426),
        ("no Sec-WebSocket-Key", upgrade.replace("Sec-WebSocket-Key", "X-Key"), 400),
        ("a short key", upgrade.replace(common::ws::KEY, "c2hvcnQ="), 400),
        // (Not at the page's path: a GET of it that is not an upgrade gets the page.)
        (
            "Upgrade without Connection",
            upgrade_request("/play").replace("Connection: Upgrade\r\n", ""),
            426,
        ),
        ("not HTTP", "\x16\x03\x01\x00\x05hello\r\n\r\n".into(), 400),
    ];
    for (what, request, status) in cases {
        let before = bench.stats();
        let (got, end, took) = before_upgrade(&bench, request.as_bytes());
        let text = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(http_status(&got), Some(status), "{what}: the answer {text:?}");
        assert!(text.ends_with("\r\n\r\n"), "{what}: a head and no body: {text:?}");
        assert!(text.contains("Connection: close\r\n"), "{what}: {text:?}");
        if what == "version 8" {
            assert!(text.contains("Sec-WebSocket-Version: 13\r\n"), "{what}: {text:?}");
        }
        assert_eq!(end, WireEnd::Eof, "{what}: an orderly close after the answer");
        assert!(took < QUICK, "{what}: closed after {took:?}");
        bench.wait_stats(&format!("{what}: its session gone"), |s| s.sessions == 1);
        let after = bench.stats();
        assert_eq!(after.accepted, before.accepted + 1, "{what}: {after:?}");
        assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures + 1, "{what}");
        assert_eq!(after.disconnected, before.disconnected, "{what}: no on_disconnected");
        assert_eq!(after.aborted, before.aborted, "{what}: not reset: {after:?}");
        bench.assert_reasons(what, &[("ws_bad_upgrade", 1)]);
        bench.healthy_echoes();
    }

    // The page: 200 with the body, then an orderly close; not a failed upgrade.
    let before = bench.stats();
    let (got, end, _) = before_upgrade(&bench, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(http_status(&got), Some(200), "the page: {text:?}");
    assert!(got.ends_with(PAGE), "the page's body: {text:?}");
    assert!(text.contains(&format!("Content-Length: {}\r\n", PAGE.len())), "{text:?}");
    assert_eq!(end, WireEnd::Eof, "the page, then an orderly close");
    bench.wait_stats("the page's session gone", |s| s.sessions == 1);
    let after = bench.stats();
    assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures, "the page: {after:?}");
    assert_eq!(after.ws_upgrades, before.ws_upgrades, "the page: {after:?}");
    bench.assert_reasons("the page", &[("local", 1)]);
    bench.healthy_echoes();

    // The plain TCP listener is not WebSocket: an upgrade request there is bytes to echo.
    let mut plain = tcp(bench.server.local_addr());
    plain.write_all(upgrade.as_bytes()).unwrap();
    let mut back = vec![0u8; upgrade.len()];
    plain.read_exact(&mut back).unwrap();
    assert_eq!(back, upgrade.as_bytes(), "the TCP listener echoes the request as bytes");
    let (tcp_id, _) = bench.log.next_connected();
    drop(plain);
    assert_eq!(bench.log.disconnected(tcp_id), DisconnectReason::PeerClosed);
    bench.assert_reasons("the TCP session", &[("peer_closed", 1)]);
    bench.finish(&[tcp_id]);
}

/// A request head over `max_request_head` (8 KiB): one huge header, too many headers, a
/// head that never ends. Each gets 431 (the peer may see a reset after it: the server
/// closes with the rest of an endless head unread), soon, and no callback.
#[test]
fn an_oversized_request_head_gets_431() {
    let mut bench = Bench::new(Duration::from_secs(10), false);
    let upgrade = upgrade_request("/");
    let huge_header =
        upgrade.replace("\r\n\r\n", &format!("\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)));
    let many: String = (0..40).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many_headers = upgrade.replace("\r\n\r\n", &format!("\r\n{many}\r\n"));
    let endless = format!("GET / HTTP/1.1\r\nX-Endless: {}", "b".repeat(8300));
    let before = bench.stats();
    for (what, request) in [
        ("a 9000-byte header", huge_header),
        ("40 headers", many_headers),
        ("an endless head", endless),
    ] {
        let (got, end, took) = before_upgrade(&bench, request.as_bytes());
        let text = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(http_status(&got), Some(431), "{what}: the answer {text:?} ({end:?})");
        assert!(matches!(end, WireEnd::Eof | WireEnd::Reset), "{what}: {end:?}");
        assert!(took < QUICK, "{what}: closed after {took:?}");
        eprintln!("{what}: 431, then {end:?}");
        bench.healthy_echoes();
    }
    bench.wait_stats("the refused sessions gone", |s| s.sessions == 1);
    let after = bench.stats();
    assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures + 3, "{after:?}");
    assert_eq!(after.disconnected, before.disconnected, "{after:?}");
    bench.assert_reasons("oversized heads", &[("ws_bad_upgrade", 3)]);
    bench.finish(&[]);
}

/// Slow-loris upgrades (nothing; half a request; a whole head but its last blank line;
/// a byte now and then), all at once: each is reset once `handshake_timeout` has passed,
/// not before, with nothing sent to it; the healthy session echoes meanwhile and outlives
/// the timeout.
#[test]
fn slow_loris_upgrades_are_reset_at_the_handshake_timeout() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
    let mut bench = Bench::new(HANDSHAKE_TIMEOUT, false);
    let addr = bench.ws_addr;
    let request = upgrade_request("/");
    let before = bench.stats();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", Vec::new()),
        ("half a request", request.as_bytes()[..request.len() / 2].to_vec()),
        ("all but the blank line", request.as_bytes()[..request.len() - 2].to_vec()),
    ];
    let mut lorises: Vec<_> = variants
        .into_iter()
        .map(|(what, bytes)| {
            std::thread::spawn(move || {
                let mut s = tcp(addr);
                let t0 = Instant::now();
                s.write_all(&bytes).unwrap();
                let (got, end) = read_until_end(&mut s);
                (what, got, end, t0.elapsed())
            })
        })
        .collect();
    // A byte every 50 ms: never enough to finish, always something new.
    lorises.push(std::thread::spawn(move || {
        let mut s = tcp(addr);
        let t0 = Instant::now();
        let mut writer = s.try_clone().unwrap();
        let request = request.clone();
        let drip = std::thread::spawn(move || {
            for b in request.as_bytes()[..request.len() - 2].iter() {
                if writer.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (got, end) = read_until_end(&mut s);
        let took = t0.elapsed();
        drip.join().unwrap();
        ("a byte every 50 ms", got, end, took)
    }));
    bench.wait_stats("the slow-loris sessions accepted", |s| s.accepted == before.accepted + 4);
    bench.healthy_echoes();
    for t in lorises {
        let (what, got, end, took) = t.join().expect("slow-loris thread");
        assert_eq!(end, WireEnd::Reset, "{what}: reset at the timeout (read {got:?})");
        assert!(got.is_empty(), "{what}: nothing sent to it, got {got:?}");
        assert!(
            took >= HANDSHAKE_TIMEOUT.mul_f32(0.9),
            "{what}: ended after {took:?}, before {HANDSHAKE_TIMEOUT:?}"
        );
        assert!(took < HANDSHAKE_TIMEOUT + QUICK, "{what}: ended only after {took:?}");
    }
    bench.wait_stats("the slow-loris sessions gone, four resets counted", |s| {
        s.sessions == 1 && s.aborted == before.aborted + 4
    });
    let after = bench.stats();
    assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures + 4, "{after:?}");
    assert_eq!(after.disconnected, before.disconnected, "no on_disconnected: {after:?}");
    bench.assert_reasons("slow-loris upgrades", &[("ws_handshake_timeout", 4)]);
    bench.healthy_echoes();
    bench.finish(&[]);
}

/// One bad input after the upgrade: the bytes, the close code the peer must read, and the
/// reason the session must get.
struct BadFrames {
    what: &'static str,
    bytes: Vec<u8>,
    code: u16,
    reason: WsError,
}

fn bad_frame_cases() -> Vec<BadFrames> {
    let limit = MAX_MESSAGE;
    let fragment = vec![7u8; 20_000];
    let mut fragmented_over = client_frame(false, OP_BINARY, &fragment);
    fragmented_over.extend(client_frame(false, OP_CONTINUATION, &fragment));
    fragmented_over.extend(client_frame(false, OP_CONTINUATION, &fragment));
    fragmented_over.extend(client_frame(true, OP_CONTINUATION, &fragment)); // 80,000 > 65,536
    let mut after_close = close_frame(1000, b"");
    after_close.extend(binary(b"late"));
    let mut new_message_inside = client_frame(false, OP_BINARY, b"first half");
    new_message_inside.extend(binary(b"another message"));
    let case = |what, bytes, code, reason| BadFrames { what, bytes, code, reason };
    vec![
        case("an unmasked frame", frame(true, OP_BINARY, b"hello", None), 1002, WsError::Unmasked),
        case("opcode 0x3", client_frame(true, 0x3, b"x"), 1002, WsError::UnknownOpcode(3)),
        case("opcode 0xb", client_frame(true, 0xb, b""), 1002, WsError::UnknownOpcode(0xb)),
        case(
            "a 126-byte ping",
            client_frame(true, OP_PING, &[1; 126]),
            1002,
            WsError::ControlTooLong(126),
        ),
        case(
            "a message one byte over the limit",
            binary(&vec![9u8; limit + 1]),
            1009,
            WsError::MessageTooBig { limit },
        ),
        case(
            "a message over the limit in four fragments",
            fragmented_over,
            1009,
            WsError::MessageTooBig { limit },
        ),
        case("a text frame", client_frame(true, OP_TEXT, b"hi"), 1003, WsError::TextFrame),
        case(
            "a close reason that is not UTF-8",
            close_frame(1000, &[b'o', 0xff, 0xfe]),
            1007,
            WsError::InvalidUtf8,
        ),
        case("data after the close frame", after_close, 1002, WsError::DataAfterClose),
        case(
            "a fragmented ping",
            client_frame(false, OP_PING, b"part"),
            1002,
            WsError::FragmentedControl,
        ),
        case(
            "reserved bits",
            {
                let mut f = binary(b"rsv");
                f[0] |= 0x40;
                f
            },
            1002,
            WsError::ReservedBits,
        ),
        case(
            "a continuation with no message",
            client_frame(true, OP_CONTINUATION, b"x"),
            1002,
            WsError::UnexpectedContinuation,
        ),
        case(
            "a new message inside a fragmented one",
            new_message_inside,
            1002,
            WsError::ExpectedContinuation,
        ),
        case(
            "a 1-byte close payload",
            client_frame(true, OP_CLOSE, &[3]),
            1002,
            WsError::BadClose("a 1-byte close payload".into()),
        ),
        case(
            "close status 1005 (may not be sent)",
            close_frame(1005, b""),
            1002,
            WsError::BadClose("status code 1005 may not be sent".into()),
        ),
    ]
}

/// Sends one case on a client upgraded by hand; checks the close frame the peer reads,
/// how the stream ends, and the session's reason. Returns the session's id.
fn check_bad_frames(bench: &mut Bench, case: &BadFrames) -> SessionId {
    let what = case.what;
    let (mut c, id) = bench.upgraded();
    // The server may stop reading (and reset) before the rest of an oversized message is
    // written: a failed write is not the test's business, what the peer reads is.
    let written = c.stream.write_all(&case.bytes).and_then(|()| c.stream.flush());
    if let Err(e) = written {
        assert_eq!(case.code, 1009, "{what}: writing the bad input: {e}");
    }
    let reason = bench.log.disconnected(id);
    assert_eq!(reason, DisconnectReason::WebSocket(case.reason.clone()), "{what}: the reason");
    assert_eq!(reason.label(), "ws_protocol_error", "{what}");
    let (frames, end) = c.read_to_end();
    let close = final_close(what, &frames);
    assert_eq!(close.close_code(), Some(case.code), "{what}: the close code ({close:?})");
    assert_eq!(case.reason.close_code(), Some(case.code), "{what}: WsError::close_code");
    eprintln!("{what}: close {} {:?}, then {end:?}", case.code, close.close_reason());
    // The close frame goes out in order (FIN after it); a peer whose bytes the server
    // left unread (the rest of an oversized message) may see a reset after it instead.
    let unread_left = case.code == 1009;
    assert!(
        end == WireEnd::Eof || (unread_left && end == WireEnd::Reset),
        "{what}: the end after the close frame: {end:?}"
    );
    id
}

/// Every frame RFC 6455 forbids, each on its own connection, one after the other.
#[test]
fn forbidden_frames_get_their_close_code_and_reason() {
    let mut bench = Bench::new(Duration::from_secs(10), false);
    let before = bench.stats();
    let cases = bad_frame_cases();
    let mut ended = Vec::new();
    for case in &cases {
        ended.push(check_bad_frames(&mut bench, case));
        bench.assert_reasons(case.what, &[("ws_protocol_error", 1)]);
        bench.healthy_echoes();
    }
    bench.wait_stats("the bad sessions gone", |s| s.sessions == 1);
    let after = bench.stats();
    let n = cases.len() as u64;
    assert_eq!(after.ws_upgrades, before.ws_upgrades + n, "{after:?}");
    assert_eq!(after.disconnected_with_error, before.disconnected_with_error + n, "{after:?}");
    assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures, "{after:?}");
    bench.finish(&ended);
}

/// The peer's close frame: 1000, 1001 and none are an orderly close (`PeerClosed`); any
/// other status is reported with it; each is answered with a close frame carrying the same
/// status (none for none), then the server's FIN.
#[test]
fn the_peers_close_frame_is_answered_and_reported() {
    let mut bench = Bench::new(Duration::from_secs(10), false);
    let cases: Vec<(&str, Vec<u8>, Option<u16>, DisconnectReason)> = vec![
        ("1000", close_frame(1000, b"done"), Some(1000), DisconnectReason::PeerClosed),
        ("1001", close_frame(1001, b""), Some(1001), DisconnectReason::PeerClosed),
        ("no status", client_frame(true, OP_CLOSE, b""), None, DisconnectReason::PeerClosed),
        (
            "4000 with a reason",
            close_frame(4000, "fin de partie ✓".as_bytes()),
            Some(4000),
            DisconnectReason::WebSocket(WsError::PeerClosed {
                code: 4000,
                reason: "fin de partie ✓".into(),
            }),
        ),
        (
            "1011",
            close_frame(1011, b""),
            Some(1011),
            DisconnectReason::WebSocket(WsError::PeerClosed { code: 1011, reason: "".into() }),
        ),
    ];
    let mut ended = Vec::new();
    for (what, bytes, code, want) in cases {
        let (mut c, id) = bench.upgraded();
        c.send(&bytes);
        let (frames, end) = c.read_to_end();
        let close = final_close(what, &frames);
        assert_eq!(close.close_code(), code, "{what}: the answer carries the same status");
        assert_eq!(end, WireEnd::Eof, "{what}: then the server's FIN");
        let reason = bench.log.disconnected(id);
        assert_eq!(reason, want, "{what}: the reason");
        let label =
            if want == DisconnectReason::PeerClosed { "peer_closed" } else { "ws_peer_closed" };
        bench.assert_reasons(what, &[(label, 1)]);
        ended.push(id);
        bench.healthy_echoes();
    }
    // Data after a finished close handshake: the session already ended in order, and
    // nothing more happens to it (no second reason, no callback).
    let (mut c, id) = bench.upgraded();
    c.send(&close_frame(1000, b""));
    let f = c.read_frame().expect("the answer to the close");
    assert_eq!(f.close_code(), Some(1000), "the answer to the close: {f:?}");
    assert_eq!(bench.log.disconnected(id), DisconnectReason::PeerClosed);
    let late = c.stream.write_all(&binary(b"too late")).and_then(|()| c.stream.flush());
    let (frames, end) = c.read_to_end();
    assert!(frames.is_empty(), "after the close handshake: {frames:?}");
    eprintln!("data after the close handshake: written {late:?}, then {end:?}");
    ended.push(id);
    bench.assert_reasons("data after the close handshake", &[("peer_closed", 1)]);
    bench.healthy_echoes();

    // A FIN with no close frame is the end of the stream as on TCP.
    let mut c = RawWs::upgrade(tcp(bench.ws_addr));
    let (id, _) = bench.log.next_connected();
    c.roundtrip(b"before the FIN");
    c.stream.shutdown(Shutdown::Write).unwrap();
    let (frames, end) = c.read_to_end();
    // The server may start the close handshake itself (a close frame before its FIN).
    assert!(
        frames.is_empty() || final_close("a FIN alone", &frames).opcode == OP_CLOSE,
        "a FIN alone: {frames:?}"
    );
    eprintln!("a FIN alone: the server sent {frames:?}, then {end:?}");
    assert_eq!(end, WireEnd::Eof, "a FIN alone: the server's FIN");
    assert_eq!(bench.log.disconnected(id), DisconnectReason::PeerClosed, "a FIN alone");
    ended.push(id);
    bench.assert_reasons("a FIN alone", &[("peer_closed", 1)]);
    bench.finish(&ended);
}

/// Over TLS (wss): a request that is not an upgrade gets its HTTP error inside TLS, then
/// `close_notify`; the upgrade's deadline runs after the TLS handshake (a client that
/// finishes TLS and says nothing is reset at `handshake_timeout`, as a failed upgrade, not
/// a failed TLS handshake); bad frames get their close code inside TLS.
#[test]
fn over_tls_the_same_answers_come_inside_tls() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
    let mut bench = Bench::new(HANDSHAKE_TIMEOUT, true);
    let before = bench.stats();

    let (got, end, _) = before_upgrade(&bench, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(http_status(&got), Some(426), "wss GET: {:?}", String::from_utf8_lossy(&got));
    assert_eq!(end, WireEnd::Eof, "wss GET: close_notify after the answer");
    bench.assert_reasons("wss GET", &[("ws_bad_upgrade", 1)]);
    bench.healthy_echoes();

    // TLS done, then silence: the upgrade's own deadline.
    let mut s = tls_stream(bench.ws_addr);
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let end = match s.read_to_end(&mut rest) {
        Ok(_) => WireEnd::Eof,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => WireEnd::Reset,
        Err(e) => panic!("wss silent client: {e}"),
    };
    let took = t0.elapsed();
    assert_eq!(end, WireEnd::Reset, "wss silent client: reset at the upgrade's deadline");
    assert!(
        took >= HANDSHAKE_TIMEOUT.mul_f32(0.9) && took < HANDSHAKE_TIMEOUT + QUICK,
        "after {took:?}"
    );
    bench.wait_stats("the silent wss client gone", |s| s.sessions == 1);
    bench.assert_reasons("wss silent client", &[("ws_handshake_timeout", 1)]);
    bench.healthy_echoes();

    let mut ended = Vec::new();
    for case in bad_frame_cases()
        .iter()
        .filter(|c| matches!(c.code, 1003 | 1007 | 1009) || matches!(c.reason, WsError::Unmasked))
    {
        ended.push(check_bad_frames(&mut bench, case));
        bench.assert_reasons(case.what, &[("ws_protocol_error", 1)]);
        bench.healthy_echoes();
    }
    bench.wait_stats("the bad wss sessions gone", |s| s.sessions == 1);
    let after = bench.stats();
    assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures + 2, "{after:?}");
    assert_eq!(after.tls_handshake_failures, before.tls_handshake_failures, "{after:?}");
    assert_eq!(after.ws_upgrades, before.ws_upgrades + ended.len() as u64, "{after:?}");
    // The healthy client ends its TLS stream properly too.
    bench.finish(&ended);
}

/// Bad clients of every kind above, several of each, at once on one server, with the
/// healthy session echoing throughout: none costs another session anything.
#[test]
fn bad_clients_at_once_leave_the_healthy_session_alone() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
    const EACH: usize = 4;
    let mut bench = Bench::new(HANDSHAKE_TIMEOUT, false);
    let addr = bench.ws_addr;
    let before = bench.stats();
    let kinds: Vec<(&str, Vec<u8>, bool)> = vec![
        ("not an upgrade", b"GET /x HTTP/1.1\r\n\r\n".to_vec(), false),
        ("slow loris", upgrade_request("/").as_bytes()[..40].to_vec(), false),
        ("unmasked", frame(true, OP_BINARY, b"x", None), true),
        ("text", client_frame(true, OP_TEXT, b"x"), true),
        ("too big", binary(&vec![1u8; MAX_MESSAGE + 1]), true),
        ("bad close", close_frame(1000, &[0xc3, 0x28]), true),
    ];
    let upgraded_kinds = kinds.iter().filter(|k| k.2).count();
    let bad: Vec<_> = kinds
        .into_iter()
        .map(|(what, bytes, upgrade)| {
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    if upgrade {
                        let mut c = RawWs::upgrade(tcp(addr));
                        let _ = c.stream.write_all(&bytes); // "too big" may be cut short
                        let (frames, _) = c.read_to_end();
                        let close = final_close(what, &frames);
                        assert!(close.close_code().is_some(), "{what}: {close:?}");
                    } else {
                        let mut s = tcp(addr);
                        s.write_all(&bytes).unwrap();
                        read_until_end(&mut s);
                    }
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
    let n = (upgraded_kinds * EACH) as u64;
    bench.wait_stats("every bad session gone", |s| {
        s.sessions == 1 && s.disconnected == before.disconnected + n
    });
    let after = bench.stats();
    assert_eq!(after.ws_upgrade_failures, before.ws_upgrade_failures + 2 * EACH as u64);
    assert_eq!(after.ws_upgrades, before.ws_upgrades + n, "{after:?}");
    bench.log.drain();
    let connected: Vec<SessionId> = bench
        .log
        .seen
        .iter()
        .filter(|e| matches!(e.ev, Ev::Connected(_)) && e.id != bench.healthy_id)
        .map(|e| e.id)
        .collect();
    assert_eq!(connected.len() as u64, n, "the upgraded bad clients connected");
    bench.assert_reasons(
        "bad clients at once",
        &[
            ("ws_bad_upgrade", EACH as u64),
            ("ws_handshake_timeout", EACH as u64),
            ("ws_protocol_error", n),
        ],
    );
    bench.finish(&connected);
}
