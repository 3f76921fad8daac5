//! TLS through the engine, end to end with a blocking rustls client: the handshake, echo in
//! both directions, a local disconnect's close_notify, and a truncated close. (The TLS
//! suite proper is in the `tls_*` tests.)

mod common;

use common::tls::{fresh_certs, tls_client, Certs};
use common::{any_port, wait_no_sessions, ByeEcho, Greeter, LifeEv, TIMEOUT};
use servercore::tls;
use servercore::{DisconnectReason, ServerService, TlsError};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

fn server(c: &Certs) -> (ServerService, mpsc::Receiver<LifeEv>) {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .tls(c.server.clone())
        .start(move || ByeEcho(tx.clone()))
        .unwrap();
    (server, rx)
}

#[test]
fn tls_echo_close_notify_and_truncation() {
    let c = fresh_certs();
    let (server, rx) = server(&c);
    let mut cl = tls_client(server.local_addr(), &c.client);
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    cl.write_all(&msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    cl.read_exact(&mut back).unwrap();
    assert!(back == msg);
    assert!(matches!(rx.recv_timeout(TIMEOUT).unwrap(), LifeEv::Connected));

    // A local disconnect: the queued bytes, then close_notify (a clean end: Ok(0)).
    cl.write_all(b"bye").unwrap();
    let mut rest = Vec::new();
    cl.read_to_end(&mut rest).expect("a clean close_notify, not a truncation");
    assert_eq!(rest, b"last words");
    match rx.recv_timeout(TIMEOUT).unwrap() {
        LifeEv::Disconnected(DisconnectReason::Local(_)) => {}
        e => panic!("{e:?}"),
    }

    // A peer that closes without close_notify: truncated.
    let mut cl = tls_client(server.local_addr(), &c.client);
    cl.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    cl.read_exact(&mut one).unwrap();
    assert!(matches!(rx.recv_timeout(TIMEOUT).unwrap(), LifeEv::Connected));
    drop(cl);
    match rx.recv_timeout(TIMEOUT).unwrap() {
        LifeEv::Disconnected(DisconnectReason::Tls(TlsError::Truncated)) => {}
        e => panic!("{e:?}"),
    }

    // With close_notify: an orderly close.
    let mut cl = tls_client(server.local_addr(), &c.client);
    cl.write_all(b"y").unwrap();
    cl.read_exact(&mut one).unwrap();
    assert!(matches!(rx.recv_timeout(TIMEOUT).unwrap(), LifeEv::Connected));
    cl.conn.send_close_notify();
    cl.flush().unwrap();
    match rx.recv_timeout(TIMEOUT).unwrap() {
        LifeEv::Disconnected(DisconnectReason::PeerClosed) => {}
        e => panic!("{e:?}"),
    }
    wait_no_sessions(&server);
    assert_eq!(server.stats().tls_handshakes, 3);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn plain_bytes_to_a_tls_server_cost_only_that_connection() {
    let c = fresh_certs();
    let (server, rx) = server(&c);
    let mut good = tls_client(server.local_addr(), &c.client);
    good.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    good.read_exact(&mut back).unwrap();
    let mut plain = TcpStream::connect(server.local_addr()).unwrap();
    plain.set_read_timeout(Some(TIMEOUT)).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    let r = plain.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a reset, got {r:?}"
    );
    common::wait_until("the failure counted", || {
        let s = server.stats();
        if s.tls_handshake_failures == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    good.write_all(b"still").unwrap();
    good.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still");
    assert!(matches!(rx.recv_timeout(TIMEOUT).unwrap(), LifeEv::Connected));
    assert!(rx.try_recv().is_err(), "no callback for the failed connection");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_client_service_speaks_tls_to_a_server_service() {
    let c = fresh_certs();
    let (server, _rx) = server(&c);
    let (tx, rx) = mpsc::channel();
    let link = servercore::ClientService::builder(server.local_addr())
        .workers(1)
        .sessions(3)
        .tls(c.client.clone(), tls::server_name("localhost").unwrap())
        .start(move || Greeter { greeting: b"over tls", answers: tx.clone() })
        .unwrap();
    for _ in 0..3 {
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), b"over tls");
    }
    assert_eq!(link.stats().tls_handshakes, 3);
    link.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}
