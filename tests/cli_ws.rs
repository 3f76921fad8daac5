//! WebSocket in the `servercore` binary (issue 14; PROTOCOL.md sections 4 and 6):
//! `chat-server`/`echo-server --ws-addr` (readiness lines, with and without TLS),
//! `dummy-client --ws` (and `--ws --tls`) against them on both backends, the dummy client
//! against a third-party WebSocket server (tungstenite), a chat room shared with a plain
//! TCP client sending text, the page on `GET /`, and the failures a user meets.
//!
//! The backend of every child is set explicitly, so these tests mean the same whatever
//! `SERVERCORE_BACKEND` the outer run has. Every child is killed on drop, every wait is
//! bounded, and the tests wait for events (readiness lines, exits, bytes), never for a
//! fixed time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::certs::Certs;
use common::*;

/// A server started with `--ws-addr`.
struct WsServer {
    proc: Proc,
    tcp: SocketAddr,
    ws: SocketAddr,
}

/// Starts `kind` (`echo-server` or `chat-server`) on `backend` with a WebSocket listener
/// (TLS with `certs`) and checks both readiness lines exactly. `None` when io_uring was
/// asked for and the kernel refuses it (nothing to check on this machine).
fn start_ws_server(kind: &str, backend: &str, certs: Option<&Certs>) -> Option<WsServer> {
    let mut args =
        vec![kind, "--addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--workers", "2"];
    if let Some(c) = certs {
        args.extend_from_slice(&["--tls-cert", c.cert(), "--tls-key", c.key()]);
    }
    let proc = Proc::spawn_env(&args, &[("SERVERCORE_BACKEND", backend)]);
    // Peek for an early exit for want of io_uring before reading the lines.
    let (mut proc, first) = first_line_or_skip(proc, backend)?;
    let tls = certs.is_some();
    let tcp_line = if tls {
        let plain = first.strip_suffix(", tls)").unwrap_or_else(|| {
            panic!("readiness line {first:?} does not end in `, tls)`");
        });
        format!("{plain})")
    } else {
        first
    };
    let (tcp, named) = parse_ready(&tcp_line, 2);
    assert_eq!(named, backend, "readiness line ignores SERVERCORE_BACKEND={backend}");
    let second = proc.next_line(LINE_TIMEOUT);
    let (ws, ws_named) = parse_ready_ws(&second, 2, tls);
    assert_eq!(ws_named, backend, "WebSocket readiness line {second:?}");
    assert_ne!(tcp.port(), ws.port(), "one port for both listeners");
    Some(WsServer { proc, tcp, ws })
}

/// SIGTERM, then a clean exit.
fn stop(server: WsServer) {
    stop_cleanly(server.proc);
}

/// Checks a `--json` report of a clean WebSocket run of `sessions` sessions.
fn assert_clean_ws_json(f: &Finished, sessions: u64) {
    assert_no_panic(f);
    assert_eq!(f.status.code(), Some(0), "dummy-client --ws failed:\n{}", f.describe());
    let json = f.stdout.trim();
    assert_eq!(json_u64(json, "errors"), Some(0), "errors in {json}");
    assert_eq!(json_u64(json, "connected"), Some(sessions), "connected sessions in {json}");
    assert!(json_u64(json, "messages").is_some_and(|m| m > 0), "no messages in {json}");
    let ws = format!(
        "\"websocket\":{{\"sessions\":{sessions},\"upgrades\":{sessions},\"upgrade_failures\":0}}"
    );
    assert!(json.contains(&ws), "expected {ws} in {json}");
}

/// `dummy-client --ws` (with `--tls`: wss) in echo and chat modes against servers with
/// `--ws-addr` on `backend`.
fn dummy_over_ws(backend: &str, tls: bool) {
    let certs = tls.then(Certs::new);
    let tls_args: Vec<&str> = match &certs {
        Some(c) => vec!["--tls", "--tls-ca", c.cert()],
        None => Vec::new(),
    };
    // Echo: every byte checked, each message one binary message.
    let Some(server) = start_ws_server("echo-server", backend, certs.as_ref()) else { return };
    let addr = server.ws.to_string();
    let mut args = vec![
        "--addr",
        &addr,
        "--ws",
        "--mode",
        "echo",
        "--sessions",
        "8",
        "--size",
        "300",
        "--depth",
        "3",
        "--secs",
        "1",
        "--json",
    ];
    args.extend_from_slice(&tls_args);
    let f = dummy_on(backend, &args);
    assert_clean_ws_json(&f, 8);
    assert!(f.stdout.contains(&format!("\"backend\":\"{backend}\"")), "backend:\n{}", f.stdout);
    if tls {
        assert_eq!(json_u64(&f.stdout, "handshakes"), Some(8), "TLS handshakes:\n{}", f.stdout);
    }
    stop(server);

    // Chat: order and integrity of every message from every sender.
    let Some(server) = start_ws_server("chat-server", backend, certs.as_ref()) else { return };
    let addr = server.ws.to_string();
    let mut args = vec![
        "--addr",
        &addr,
        "--ws",
        "--mode",
        "chat",
        "--sessions",
        "6",
        "--depth",
        "2",
        "--secs",
        "1",
    ];
    args.extend_from_slice(&tls_args);
    let f = dummy_on(backend, &args);
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(0), "chat dummy-client --ws failed:\n{}", f.describe());
    for want in [
        "6 sessions (6 connected)",
        "websocket 6 upgrades of 6 WebSocket sessions, 0 failed",
        "gaps 0, duplicates 0",
        "errors    0 (",
        "WebSocket upgrade failures 0)",
    ] {
        assert!(f.stdout.contains(want), "report lacks {want:?}:\n{}", f.describe());
    }
    if tls {
        assert!(f.stdout.contains("tls       6 handshakes ("), "TLS lines:\n{}", f.describe());
    }
    stop(server);
}

#[test]
fn dummy_client_ws_on_io_uring() {
    dummy_over_ws("io_uring", false);
}

#[test]
fn dummy_client_ws_on_poll() {
    dummy_over_ws("poll", false);
}

#[test]
fn dummy_client_wss_on_io_uring() {
    dummy_over_ws("io_uring", true);
}

#[test]
fn dummy_client_wss_on_poll() {
    dummy_over_ws("poll", true);
}

/// Writes one PROTOCOL.md section 2 packet.
fn write_packet(s: &mut TcpStream, id: u16, payload: &[u8]) -> std::io::Result<()> {
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(payload);
    s.write_all(&p)
}

/// A room shared by a plain TCP client sending text (as the browser page does) and
/// `dummy-client --ws` sessions: the dummy client counts the text messages as foreign and
/// still verifies its own traffic; the TCP client gets the dummy sessions' messages.
#[test]
fn mixed_room_tcp_text_and_ws_dummy_clients() {
    for backend in ["io_uring", "poll"] {
        let Some(server) = start_ws_server("chat-server", backend, None) else { continue };
        let tcp = TcpStream::connect(server.tcp).expect("connect to the TCP listener");
        tcp.set_read_timeout(Some(Duration::from_millis(200))).expect("set a read timeout");
        let stop_flag = Arc::new(AtomicBool::new(false));
        let sender = {
            let mut tcp = tcp.try_clone().expect("clone the TCP stream");
            let stop_flag = stop_flag.clone();
            thread::spawn(move || {
                // Keeps sending until the dummy client is done; reads are drained below.
                let mut n = 0u64;
                while !stop_flag.load(Ordering::Relaxed) {
                    let text = format!("tcp-bot: message {n}");
                    if write_packet(&mut tcp, 1, text.as_bytes()).is_err() {
                        break;
                    }
                    n += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                n
            })
        };
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let mut tcp = tcp.try_clone().expect("clone the TCP stream");
            let (stop_flag, received) = (stop_flag.clone(), received.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while !stop_flag.load(Ordering::Relaxed) {
                    match tcp.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        let addr = server.ws.to_string();
        let f = dummy_on(
            backend,
            &[
                "--addr",
                &addr,
                "--ws",
                "--mode",
                "chat",
                "--sessions",
                "4",
                "--secs",
                "1",
                "--json",
            ],
        );
        stop_flag.store(true, Ordering::Relaxed);
        let sent = sender.join().expect("sender thread");
        reader.join().expect("reader thread");
        assert_clean_ws_json(&f, 4);
        let json = f.stdout.trim();
        assert!(
            json_u64(json, "foreign").is_some_and(|n| n > 0),
            "the {sent} text messages of the TCP client were not counted as foreign: {json}"
        );
        assert!(
            received.load(Ordering::Relaxed) > 0,
            "the TCP client received nothing from the WebSocket sessions"
        );
        drop(tcp);
        stop(server);
    }
}

/// A third-party WebSocket echo server (tungstenite, one thread per connection): binary
/// messages back as they came.
fn tungstenite_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tungstenite server");
    let addr = listener.local_addr().expect("its address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tungstenite::accept(stream) else { return };
                loop {
                    match ws.read() {
                        Ok(tungstenite::Message::Binary(b)) => {
                            if ws.send(tungstenite::Message::Binary(b)).is_err() {
                                return;
                            }
                        }
                        Ok(tungstenite::Message::Close(_)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn dummy_client_ws_against_a_third_party_server() {
    let addr = tungstenite_echo_server().to_string();
    for backend in ["io_uring", "poll"] {
        let f = dummy_on(
            backend,
            &[
                "--addr",
                &addr,
                "--ws",
                "--mode",
                "echo",
                "--sessions",
                "4",
                "--size",
                "1000",
                "--depth",
                "2",
                "--secs",
                "1",
                "--json",
            ],
        );
        if backend == "io_uring" && f.status.code() == Some(1) && f.stderr.contains("io_uring") {
            eprintln!("skipped io_uring: not available here:\n{}", f.stderr);
            continue;
        }
        assert_clean_ws_json(&f, 4);
    }
}

/// `GET /` without an upgrade on the WebSocket listener returns the chat page; other
/// paths get an HTTP error; the TCP listener is unaffected.
#[test]
fn the_page_is_served_on_the_websocket_listener() {
    let server = start_ws_server("chat-server", "poll", None).expect("poll serves");
    let get = |path: &str| -> String {
        let mut s = TcpStream::connect(server.ws).expect("connect to the WebSocket listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", server.ws).expect("send a request");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("the server answers and closes");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let page = get("/");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "GET / answered:\n{page}");
    assert!(page.contains("Content-Type: text/html; charset=utf-8\r\n"), "type:\n{page}");
    for want in ["<title>servercore chat</title>", "binaryType = \"arraybuffer\"", "C_CHAT = 1"] {
        assert!(page.contains(want), "the page lacks {want:?}");
    }
    let other = get("/nothing-here");
    assert!(other.starts_with("HTTP/1.1 426 "), "GET /nothing-here answered:\n{other}");
    stop(server);
}

/// `dummy-client --ws` against a plain TCP port, and a plain client against a WebSocket
/// port: both fail promptly with a reason, nothing hangs.
#[test]
fn wrong_transport_fails_clearly() {
    let server = start_ws_server("chat-server", "poll", None).expect("poll serves");
    let tcp = server.tcp.to_string();
    let start = Instant::now();
    let f = dummy_on("poll", &["--addr", &tcp, "--ws", "--mode", "chat", "--sessions", "2"]);
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(1), "--ws against a TCP port:\n{}", f.describe());
    assert!(
        f.stderr.contains("no WebSocket session could be opened")
            && f.stderr.contains("WebSocket upgrades with"),
        "expected the failed upgrades on stderr:\n{}",
        f.describe()
    );
    let ws = server.ws.to_string();
    let f = dummy_on("poll", &["--addr", &ws, "--mode", "echo", "--sessions", "2", "--secs", "1"]);
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(1), "plain client against a ws port:\n{}", f.describe());
    // The server answers the bytes that are no HTTP request with `HTTP/1.1 400`, which the
    // echo check sees as wrong bytes from the start.
    assert!(
        f.stdout.contains("corrupt 2,") && f.stdout.contains("of message 0 (got 0x48)"),
        "expected both plain sessions to get the server's HTTP answer:\n{}",
        f.describe()
    );
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
    stop(server);
}
