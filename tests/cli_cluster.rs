//! `chat-server --cluster` (issue 15) in the `servercore` binary, with a real `nats-server`
//! on an ephemeral port: two chat servers share the room and one `dummy-client` with two
//! `--addr` verifies delivery across them (also over WebSocket and TLS); a chat server whose
//! NATS is unreachable still starts, prints its readiness line and serves locally, and its
//! `/ready` probe says 503 until NATS comes up, while `/health` says 200 throughout.
//!
//! The backend of every child is set explicitly, and each scenario runs on both. Every
//! child is killed on drop, every wait is bounded, and the tests wait for events (readiness
//! lines, probe answers, exits), never for a fixed time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::certs::Certs;
use common::nats::Nats;
use common::*;

/// Longest wait for a probe to give the expected answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A chat server child with its listeners and its metrics address.
struct Node {
    proc: Proc,
    tcp: SocketAddr,
    ws: Option<SocketAddr>,
    metrics: String,
}

/// Starts `chat-server --cluster URL --node NAME --metrics 127.0.0.1:0` on `backend`, with
/// `extra` arguments, and checks its readiness line(s) exactly. `None` when io_uring was
/// asked for and the kernel refuses it (nothing to check on this machine).
fn start_node(
    backend: &str,
    url: &str,
    name: &str,
    ws: bool,
    certs: Option<&Certs>,
) -> Option<Node> {
    let mut args: Vec<String> = [
        "chat-server",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--metrics",
        "127.0.0.1:0",
        "--cluster",
        url,
        "--node",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if ws {
        args.extend(["--ws-addr".to_string(), "127.0.0.1:0".to_string()]);
    }
    if let Some(c) = certs {
        args.extend([
            "--tls-cert".into(),
            c.cert().to_string(),
            "--tls-key".into(),
            c.key().to_string(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = Proc::spawn_env(&args, &[("SERVERCORE_BACKEND", backend)]);
    let (mut proc, first) = first_line_or_skip(proc, backend)?;
    // The readiness line is the one of PROTOCOL.md section 4, --cluster or not.
    let tls = certs.is_some();
    let tcp_line = if tls {
        let plain = first
            .strip_suffix(", tls)")
            .unwrap_or_else(|| panic!("readiness line {first:?} does not end in `, tls)`"));
        format!("{plain})")
    } else {
        first
    };
    let (tcp, named) = parse_ready(&tcp_line, 2);
    assert_eq!(named, backend, "readiness line ignores SERVERCORE_BACKEND={backend}");
    let ws = ws.then(|| {
        let second = proc.next_line(LINE_TIMEOUT);
        parse_ready_ws(&second, 2, tls).0
    });
    let metrics = wait_stderr(&proc, "metrics on http://");
    let metrics = metrics
        .split("http://")
        .nth(1)
        .and_then(|r| r.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics address in {metrics:?}"))
        .to_string();
    Some(Node { proc, tcp, ws, metrics })
}

/// The first line of the child's stderr containing `needle`, waiting for it.
fn wait_stderr(proc: &Proc, needle: &str) -> String {
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        if let Some(line) = proc.stderr_so_far().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "`servercore {}` never printed {needle:?} on stderr:\n{}",
            proc.what,
            proc.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` on `addr`: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response to GET {path}: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// Polls `GET path` until it answers `code` (or panics at the deadline).
fn wait_status(node: &Node, path: &str, code: u16) -> String {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        let (got, body) = http_get(&node.metrics, path);
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {got} {body:?}, expected {code}; server stderr:\n{}",
            node.proc.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The value of a series in a Prometheus exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Runs `dummy-client --mode chat --json` on `backend` with `args` to completion, and
/// checks a clean run: exit 0, every session connected, deliveries, no error of any kind.
fn chat_run(backend: &str, sessions: u32, args: &[&str]) -> String {
    let sessions_arg = sessions.to_string();
    let mut all = vec![
        "dummy-client",
        "--mode",
        "chat",
        "--json",
        "--workers",
        "2",
        "--secs",
        "1.5",
        "--sessions",
        &sessions_arg,
    ];
    all.extend_from_slice(args);
    let f = Proc::spawn_env(&all, &[("SERVERCORE_BACKEND", backend)]).finish(RUN_TIMEOUT);
    assert!(!f.stderr.contains("panicked"), "dummy-client panicked:\n{}", f.describe());
    assert_eq!(f.status.code(), Some(0), "dummy-client failed:\n{}", f.describe());
    let json = f.stdout.trim().to_string();
    assert_eq!(json_u64(&json, "errors"), Some(0), "{json}");
    assert_eq!(json_u64(&json, "gaps"), Some(0), "{json}");
    assert_eq!(json_u64(&json, "duplicates"), Some(0), "{json}");
    assert_eq!(json_u64(&json, "connected"), Some(u64::from(sessions)), "{json}");
    assert!(json_u64(&json, "deliveries") > Some(0), "{json}");
    json
}

/// SIGTERM, then a clean exit, the cluster shut down after the server (its counters
/// printed).
fn stop(node: Node, name: &str) -> Finished {
    node.proc.signal(libc::SIGTERM);
    let f = node.proc.finish(EXIT_TIMEOUT);
    assert!(!f.stderr.contains("panicked"), "the server panicked:\n{}", f.describe());
    assert_eq!(f.status.code(), Some(0), "server did not exit cleanly:\n{}", f.describe());
    assert!(
        f.stderr.contains(&format!("cluster node {name}: published ")),
        "no cluster summary at exit:\n{}",
        f.describe()
    );
    f
}

/// Messages node `name` received from NATS, from its metrics.
fn received(node: &Node, name: &str) -> f64 {
    let (code, text) = http_get(&node.metrics, "/metrics");
    assert_eq!(code, 200);
    metric(&text, &format!("servercore_cluster_received_total{{node=\"{name}\"}}"))
        .unwrap_or_else(|| panic!("no received counter for node {name}:\n{text}"))
}

/// Two chat servers on one NATS, each ready (link up), and one dummy-client over both.
fn two_nodes_share_the_room(backend: &str) {
    let nats = Nats::start(None);
    let url = nats.url();
    let Some(a) = start_node(backend, &url, "node-a", false, None) else { return };
    let Some(b) = start_node(backend, &url, "node-b", false, None) else { return };
    // Ready = listening and the link up (subscribed): only then does the room span both.
    for n in [&a, &b] {
        assert_eq!(wait_status(n, "/ready", 200), "ready\n");
        assert_eq!(http_get(&n.metrics, "/health"), (200, "ok\n".to_string()));
    }
    let (addr_a, addr_b) = (a.tcp.to_string(), b.tcp.to_string());
    chat_run(backend, 8, &["--addr", &addr_a, "--addr", &addr_b]);
    // Both directions crossed NATS.
    assert!(received(&a, "node-a") > 0.0 && received(&b, "node-b") > 0.0);
    for (n, name) in [(a, "node-a"), (b, "node-b")] {
        let f = stop(n, name);
        assert!(f.stderr.contains("dropped 0"), "{}", f.describe());
    }
}

#[test]
fn two_nodes_share_the_room_io_uring() {
    two_nodes_share_the_room("io_uring");
}

#[test]
fn two_nodes_share_the_room_poll() {
    two_nodes_share_the_room("poll");
}

/// Two nodes with TLS and WebSocket listeners: dummy-client over TLS to both TCP
/// listeners, then over wss to both WebSocket listeners.
fn two_nodes_over_tls_and_websocket(backend: &str) {
    let certs = Certs::new();
    let nats = Nats::start(None);
    let url = nats.url();
    let Some(a) = start_node(backend, &url, "a", true, Some(&certs)) else { return };
    let Some(b) = start_node(backend, &url, "b", true, Some(&certs)) else { return };
    wait_status(&a, "/ready", 200);
    wait_status(&b, "/ready", 200);
    let ca = certs.cert();
    let (tcp_a, tcp_b) = (a.tcp.to_string(), b.tcp.to_string());
    let json = chat_run(backend, 6, &["--tls", "--tls-ca", ca, "--addr", &tcp_a, "--addr", &tcp_b]);
    assert_eq!(json_u64(&json, "handshakes"), Some(6), "{json}");
    let (ws_a, ws_b) = (a.ws.unwrap().to_string(), b.ws.unwrap().to_string());
    let json =
        chat_run(backend, 6, &["--ws", "--tls", "--tls-ca", ca, "--addr", &ws_a, "--addr", &ws_b]);
    assert_eq!(json_u64(&json, "upgrades"), Some(6), "{json}");
    stop(a, "a");
    stop(b, "b");
}

#[test]
fn two_nodes_over_tls_and_websocket_io_uring() {
    two_nodes_over_tls_and_websocket("io_uring");
}

#[test]
fn two_nodes_over_tls_and_websocket_poll() {
    two_nodes_over_tls_and_websocket("poll");
}

/// NATS unreachable: the server still starts and serves locally, `/ready` says 503 (and
/// why) while `/health` says 200; once NATS is up on that port, `/ready` turns 200.
fn unreachable_nats_serves_locally(backend: &str) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let url = format!("nats://127.0.0.1:{port}");
    let Some(node) = start_node(backend, &url, "solo", false, None) else { return };
    // The library's warning shows at the CLI's default log level.
    wait_stderr(&node.proc, "unreachable");
    assert_eq!(http_get(&node.metrics, "/health"), (200, "ok\n".to_string()));
    let (code, why) = http_get(&node.metrics, "/ready");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("link to NATS") && why.contains(&url), "{why}");
    let (code, _) = http_get(&node.metrics, "/nope");
    assert_eq!(code, 404);
    let (code, text) = http_get(&node.metrics, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "servercore_cluster_link_up{node=\"solo\"}"), Some(0.0), "{text}");

    // The chat room works locally meanwhile.
    let addr = node.tcp.to_string();
    chat_run(backend, 4, &["--addr", &addr]);
    assert_eq!(http_get(&node.metrics, "/ready").0, 503);

    // NATS comes up on that port: the link connects (backoff at most 2 s) and ready turns.
    let nats = Nats::start(Some(port));
    assert_eq!(wait_status(&node, "/ready", 200), "ready\n");
    let (_, text) = http_get(&node.metrics, "/metrics");
    assert_eq!(metric(&text, "servercore_cluster_link_up{node=\"solo\"}"), Some(1.0), "{text}");
    assert_eq!(http_get(&node.metrics, "/health").0, 200);
    assert_eq!(http_get(&node.metrics, "/unknown/path?x=1").0, 404);
    stop(node, "solo");
    drop(nats);
}

#[test]
fn unreachable_nats_serves_locally_io_uring() {
    unreachable_nats_serves_locally("io_uring");
}

#[test]
fn unreachable_nats_serves_locally_poll() {
    unreachable_nats_serves_locally("poll");
}

/// Bad cluster options stop the server at once, with a message naming them.
#[test]
fn cluster_options_are_checked() {
    let f =
        Proc::spawn(&["chat-server", "--addr", "127.0.0.1:0", "--cluster", "nats://127.0.0.1:1"])
            .finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(2), "{}", f.describe());
    assert!(f.stderr.contains("--node"), "{}", f.describe());
    let f =
        Proc::spawn(&["chat-server", "--addr", "127.0.0.1:0", "--node", "a"]).finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(2), "{}", f.describe());
    assert!(f.stderr.contains("--cluster"), "{}", f.describe());
    let f = Proc::spawn(&[
        "chat-server",
        "--addr",
        "127.0.0.1:0",
        "--cluster",
        "nats://127.0.0.1:1",
        "--node",
        "a.b",
    ])
    .finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(1), "{}", f.describe());
    assert!(f.stderr.contains("\"a.b\"") && f.stdout.is_empty(), "{}", f.describe());
    // dummy-client: each address needs a session.
    let f = Proc::spawn(&[
        "dummy-client",
        "--addr",
        "127.0.0.1:1",
        "--addr",
        "127.0.0.1:2",
        "--sessions",
        "1",
    ])
    .finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(1), "{}", f.describe());
    assert!(f.stderr.contains("--sessions 1"), "{}", f.describe());
}

/// The check has teeth: two chat servers that do not share a room (no `--cluster`), one
/// dummy-client over both. Every session misses the other server's senders: a failed run.
#[test]
fn dummy_client_detects_a_room_not_shared() {
    let mut servers = Vec::new();
    for _ in 0..2 {
        let mut p = Proc::spawn_env(
            &["chat-server", "--addr", "127.0.0.1:0", "--workers", "1"],
            &[("SERVERCORE_BACKEND", "poll")],
        );
        let (addr, _) = parse_ready(&p.next_line(LINE_TIMEOUT), 1);
        servers.push((p, addr.to_string()));
    }
    let f = Proc::spawn_env(
        &[
            "dummy-client",
            "--mode",
            "chat",
            "--json",
            "--workers",
            "1",
            "--secs",
            "1",
            "--sessions",
            "4",
            "--addr",
            &servers[0].1,
            "--addr",
            &servers[1].1,
        ],
        &[("SERVERCORE_BACKEND", "poll")],
    )
    .finish(RUN_TIMEOUT);
    assert_eq!(f.status.code(), Some(1), "{}", f.describe());
    let json = f.stdout.trim();
    // 4 sessions, 2 per server: each misses the 2 senders of the other server.
    assert_eq!(json_u64(json, "gaps"), Some(8), "{json}");
    assert!(json.contains("ever reached"), "{json}");
    for (p, _) in servers {
        p.signal(libc::SIGTERM);
        assert_eq!(p.finish(EXIT_TIMEOUT).status.code(), Some(0));
    }
}
