//! The TLS reference servers and the TLS churn client of the bench binary, end to end: each
//! server started as the driver starts it, reached with a verifying rustls client.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
mod common;

use common::{Server, BIN};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A certificate for `localhost` in a fresh temp dir: (dir, cert.pem, key.pem, DER cert).
fn certificate(tag: &str) -> (PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("sc-bench-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (dir, cert, key, made.cert.der().to_vec())
}

/// Starts `servercore-bench <sub> --addr 127.0.0.1:0 --tls-cert .. --tls-key ..` and reads
/// its readiness line.
fn start(sub: &str, cert: &Path, key: &Path) -> (Server, SocketAddr) {
    let tls =
        [OsStr::new("--tls-cert"), cert.as_os_str(), OsStr::new("--tls-key"), key.as_os_str()];
    let args = [sub, "--addr", "127.0.0.1:0"].map(OsStr::new).into_iter().chain(tls);
    common::start(args, "(backend: tokio, workers: 1, tls)")
}

fn client(addr: SocketAddr, der: &[u8]) -> StreamOwned<ClientConnection, TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(der.to_vec().into()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    StreamOwned::new(conn, sock)
}

fn churn(addr: SocketAddr, extra: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(BIN)
        .args(["tls-churn-client", "--addr", &addr.to_string(), "--secs", "0.3", "--wave", "20"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tls_echo_and_handshake_churn() {
    let (dir, cert, key, der) = certificate("echo");
    let (_server, addr) = start("tokio-tls-echo", &cert, &key);
    let mut c = client(addr, &der);
    c.write_all(b"hello over tls").unwrap();
    let mut back = [0u8; 14];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello over tls");
    assert_eq!(c.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

    for extra in [vec![], vec!["--tls-ca".as_ref(), cert.as_os_str()]] {
        let json = churn(addr, &extra);
        assert!(json.contains("\"mode\":\"tls-churn\""), "{json}");
        assert!(json.contains("\"failures\":0,"), "{json}");
        assert!(!json.contains("\"cycles\":0,"), "{json}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_chat_broadcasts_to_every_member() {
    let (dir, cert, key, der) = certificate("chat");
    let (_server, addr) = start("tokio-tls-chat", &cert, &key);
    let mut a = client(addr, &der);
    let mut b = client(addr, &der);
    // Finish both handshakes (and so both joins) before the broadcast.
    for c in [&mut a, &mut b] {
        while c.conn.is_handshaking() {
            c.conn.complete_io(&mut c.sock).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let payload = b"0123456789";
    let size = (4 + payload.len()) as u16;
    let mut packet = size.to_le_bytes().to_vec();
    packet.extend_from_slice(&1u16.to_le_bytes()); // C_CHAT
    packet.extend_from_slice(payload);
    a.write_all(&packet).unwrap();
    for c in [&mut a, &mut b] {
        let mut got = vec![0u8; packet.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got[..2], &size.to_le_bytes());
        assert_eq!(&got[2..4], &2u16.to_le_bytes()); // S_CHAT
        assert_eq!(&got[4..], payload);
    }
    let _ = std::fs::remove_dir_all(dir);
}
