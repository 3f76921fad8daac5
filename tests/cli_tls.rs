//! TLS in the `servercore` binary (issue 13; PROTOCOL.md sections 4 and 5): `echo-server`
//! and `chat-server` with `--tls-cert`/`--tls-key`, `dummy-client --tls` against them on both
//! backends, the failures a user meets (bad files, the wrong CA or name, a plain client on a
//! TLS port) and `demo --tls`.
//!
//! Certificates are made by each test with rcgen in its own temporary directory (removed on
//! drop); nothing secret is in the repository. The backend of every child is set explicitly,
//! so these tests mean the same whatever `SERVERCORE_BACKEND` the outer run has. Every child
//! is killed on drop, every wait is bounded, and the tests wait for events (readiness lines,
//! exits), never for a fixed time.

mod common;
use common::certs::{path_str, Certs};
use common::*;

/// Starts `kind` (`echo-server` or `chat-server`) with TLS on `backend` and checks its
/// readiness line exactly (`..., workers: 2, tls)`). `None` when io_uring was asked for and
/// the kernel refuses it (the test then has nothing to check on this machine).
fn start_tls_server(kind: &str, backend: &str, certs: &Certs) -> Option<(Proc, u16)> {
    let args = [
        kind,
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--tls-cert",
        certs.cert(),
        "--tls-key",
        certs.key(),
    ];
    let server = Proc::spawn_env(&args, &[("SERVERCORE_BACKEND", backend)]);
    let (server, line) = first_line_or_skip(server, backend)?;
    let Some(plain) = line.strip_suffix(", tls)") else {
        panic!("readiness line {line:?} does not end in `, tls)`")
    };
    let (addr, named) = parse_ready(&format!("{plain})"), 2);
    assert_eq!(named, backend, "readiness line {line:?} ignores SERVERCORE_BACKEND={backend}");
    Some((server, addr.port()))
}

/// SIGTERM, then a clean exit.
fn stop(server: Proc) {
    stop_cleanly(server);
}

/// `dummy-client --tls --tls-ca` against a TLS `echo-server`: verified echo traffic, and the
/// TLS part of the JSON report.
fn echo_over_tls(backend: &str) {
    let certs = Certs::new();
    let Some((server, port)) = start_tls_server("echo-server", backend, &certs) else { return };
    let addr = format!("127.0.0.1:{port}");
    let f = dummy_on(
        backend,
        &[
            "--addr",
            &addr,
            "--mode",
            "echo",
            "--sessions",
            "8",
            "--size",
            "512",
            "--depth",
            "2",
            "--secs",
            "1",
            "--json",
            "--tls",
            "--tls-ca",
            certs.cert(),
        ],
    );
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(0), "dummy-client over TLS failed:\n{}", f.describe());
    let json = f.stdout.trim();
    assert_eq!(json_u64(json, "errors"), Some(0), "errors in {json}");
    assert_eq!(json_u64(json, "connected"), Some(8), "connected sessions in {json}");
    assert!(json_u64(json, "messages").is_some_and(|m| m > 0), "no echoes in {json}");
    assert!(json.contains(&format!("\"backend\":\"{backend}\"")), "backend in {json}");
    assert_eq!(json_u64(json, "handshakes"), Some(8), "handshakes in {json}");
    assert_eq!(json_u64(json, "handshake_failures"), Some(0), "handshake failures in {json}");
    assert!(json.contains("\"handshakes_per_s\":"), "no handshakes_per_s in {json}");
    assert!(json_u64(json, "p50").is_some_and(|us| us > 0), "no handshake p50 in {json}");
    stop(server);
}

/// `dummy-client --mode chat --tls` against a TLS `chat-server`: every message checked for
/// order and integrity, and the TLS lines of the text report. The certificate is also
/// valid for `localhost`, named here with `--tls-server-name`.
fn chat_over_tls(backend: &str) {
    let certs = Certs::new();
    let Some((server, port)) = start_tls_server("chat-server", backend, &certs) else { return };
    let addr = format!("127.0.0.1:{port}");
    let f = dummy_on(
        backend,
        &[
            "--addr",
            &addr,
            "--mode",
            "chat",
            "--sessions",
            "6",
            "--size",
            "64",
            "--secs",
            "1",
            "--tls",
            "--tls-ca",
            certs.cert(),
            "--tls-server-name",
            "localhost",
        ],
    );
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(0), "chat dummy-client over TLS failed:\n{}", f.describe());
    for want in [
        "6 sessions (6 connected)",
        "tls       6 handshakes (",
        ", 0 failed",
        "handshake p50 ",
        "(TCP connect + TLS handshake",
        "gaps 0, duplicates 0",
        "errors    0 (",
        "TLS handshake failures 0)",
    ] {
        assert!(f.stdout.contains(want), "report lacks {want:?}:\n{}", f.describe());
    }
    stop(server);
}

#[test]
fn echo_server_tls_with_dummy_client_on_io_uring() {
    echo_over_tls("io_uring");
}

#[test]
fn echo_server_tls_with_dummy_client_on_poll() {
    echo_over_tls("poll");
}

#[test]
fn chat_server_tls_with_dummy_client_on_io_uring() {
    chat_over_tls("io_uring");
}

#[test]
fn chat_server_tls_with_dummy_client_on_poll() {
    chat_over_tls("poll");
}

/// `--tls-insecure` connects to a server whose certificate it was not given.
#[test]
fn dummy_client_tls_insecure_accepts_an_unknown_certificate() {
    let certs = Certs::new();
    let (server, port) = start_tls_server("echo-server", "poll", &certs).expect("poll serves");
    let addr = format!("127.0.0.1:{port}");
    let f = dummy_on(
        "poll",
        &["--addr", &addr, "--sessions", "2", "--secs", "0.5", "--tls", "--tls-insecure"],
    );
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(0), "--tls-insecure failed:\n{}", f.describe());
    stop(server);
}

/// A certificate from another CA, or valid for another name, is refused, and the error says
/// why; the client exits promptly (no session ever connects) instead of hanging.
#[test]
fn dummy_client_refuses_a_wrong_ca_or_name_and_says_why() {
    let certs = Certs::new();
    let other = Certs::new();
    let (server, port) = start_tls_server("echo-server", "poll", &certs).expect("poll serves");
    let addr = format!("127.0.0.1:{port}");
    let cases: [(&[&str], &str); 2] = [
        // Both rcgen certificates have the same subject, so webpki finds the other one as
        // the issuer and fails on its signature (BadSignature) rather than UnknownIssuer.
        (&["--tls-ca", other.cert()], "invalid peer certificate"),
        (&["--tls-ca", certs.cert(), "--tls-server-name", "wrong.example"], "not valid for name"),
    ];
    for (extra, why) in cases {
        let mut args = vec!["--addr", &addr, "--sessions", "2", "--secs", "1", "--tls"];
        args.extend_from_slice(extra);
        let f = dummy_on("poll", &args);
        assert_no_panic(&f);
        assert_eq!(f.status.code(), Some(1), "{extra:?} should fail:\n{}", f.describe());
        assert!(
            f.stderr.contains("certificate was refused") && f.stderr.contains(why),
            "{extra:?}: expected the refusal ({why}) on stderr:\n{}",
            f.describe()
        );
    }
    stop(server);
}

/// A plain client on a TLS port fails verification within its own time limits: the server
/// drops it for not speaking TLS, and the client reports the dropped sessions.
#[test]
fn plain_dummy_client_against_tls_server_fails_without_hanging() {
    let certs = Certs::new();
    let (server, port) = start_tls_server("echo-server", "poll", &certs).expect("poll serves");
    let addr = format!("127.0.0.1:{port}");
    for mode in ["echo", "chat"] {
        let f =
            dummy_on("poll", &["--addr", &addr, "--mode", mode, "--sessions", "2", "--secs", "1"]);
        assert_no_panic(&f);
        assert_eq!(f.status.code(), Some(1), "plain {mode} client should fail:\n{}", f.describe());
        assert!(
            f.stdout.contains("unexpected disconnects 2"),
            "plain {mode} client: expected both sessions dropped:\n{}",
            f.describe()
        );
    }
    stop(server);
}

/// Unreadable or invalid PEM files, a key without its certificate, and `--tls` without a
/// trust choice are clear errors, before anything starts.
#[test]
fn bad_tls_files_and_flags_are_clear_errors() {
    let certs = Certs::new();
    let missing = certs.path("missing.pem");
    let garbage = certs.file("garbage.pem", "not a PEM file\n");
    let other = Certs::new();
    let (missing, garbage) = (path_str(&missing), path_str(&garbage));
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            vec!["echo-server", "--tls-cert", missing, "--tls-key", certs.key()],
            1,
            vec!["--tls-cert", missing],
        ),
        (
            vec!["chat-server", "--tls-cert", garbage, "--tls-key", certs.key()],
            1,
            vec!["--tls-cert", garbage, "no PEM certificate"],
        ),
        (
            vec!["echo-server", "--tls-cert", certs.cert(), "--tls-key", garbage],
            1,
            vec!["--tls-key", garbage],
        ),
        (
            vec!["echo-server", "--tls-cert", certs.cert(), "--tls-key", other.key()],
            1,
            vec![certs.cert(), other.key()],
        ),
        (vec!["echo-server", "--tls-key", certs.key()], 2, vec!["--tls-cert"]),
        (
            vec!["dummy-client", "--addr", "127.0.0.1:9", "--tls"],
            1,
            vec!["--tls-ca", "--tls-insecure"],
        ),
        (vec!["dummy-client", "--addr", "127.0.0.1:9", "--tls-insecure"], 2, vec!["--tls"]),
        (
            vec!["dummy-client", "--addr", "127.0.0.1:9", "--tls", "--tls-ca", missing],
            1,
            vec!["--tls-ca", missing],
        ),
    ];
    for (args, code, wants) in cases {
        // A port no server uses: should a bad case start anyway, it would not hang.
        let f = Proc::spawn(&args).finish(RUN_TIMEOUT);
        assert_no_panic(&f);
        assert_eq!(f.status.code(), Some(code), "{args:?}:\n{}", f.describe());
        assert!(!f.stdout.contains("listening on"), "{args:?} started a server:\n{}", f.describe());
        for want in wants {
            assert!(f.stderr.contains(want), "{args:?}: stderr lacks {want:?}:\n{}", f.describe());
        }
    }
}

/// `demo --tls`: the chat demo over TLS with a certificate made at start, trusted (not
/// skipped) by its clients.
#[test]
fn demo_tls_runs_and_reports_no_errors() {
    let f = Proc::spawn(&["demo", "--tls", "--secs", "1", "--sessions", "20"]).finish(RUN_TIMEOUT);
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(0), "demo --tls failed:\n{}", f.describe());
    for want in [
        ", tls); 20 client sessions",
        "20 sessions (20 connected)",
        "tls       20 handshakes (",
        "handshake p50 ",
        "result    ok",
    ] {
        assert!(f.stdout.contains(want), "demo --tls output lacks {want:?}:\n{}", f.describe());
    }
}
