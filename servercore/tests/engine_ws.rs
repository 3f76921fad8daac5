//! WebSocket through the engine, end to end with a third-party client (tungstenite): the
//! upgrade, binary messages both ways, ping, the close handshake, the page, wss, and a
//! client service speaking WebSocket. (The codec's own tests are in `ws/`.)

mod common;

use common::tls::{fresh_certs, tls_client};
use common::{any_port, wait_no_sessions, ByeEcho, Greeter, LifeEv, TIMEOUT};
use servercore::tls::rustls;
use servercore::ws::WsConfig;
use servercore::{ClientService, DisconnectReason, ServerService};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tungstenite::Message;

fn server(tls: Option<Arc<rustls::ServerConfig>>) -> (ServerService, mpsc::Receiver<LifeEv>) {
    let (tx, rx) = mpsc::channel();
    let mut b = ServerService::builder(any_port())
        .workers(1)
        .websocket(any_port(), WsConfig::default().page("/", "text/html", &b"<p>page</p>"[..]));
    if let Some(t) = tls {
        b = b.tls(t);
    }
    (b.start(move || ByeEcho(tx.clone())).unwrap(), rx)
}

fn ws_client<S: Read + Write>(stream: S, addr: SocketAddr) -> tungstenite::WebSocket<S> {
    let url = format!("ws://{addr}/");
    tungstenite::client::client(url, stream).map(|(ws, _)| ws).unwrap()
}

fn next_binary<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) -> Vec<u8> {
    loop {
        match ws.read().unwrap() {
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => {}
            m => panic!("{m:?}"),
        }
    }
}

fn echo_checks<S: Read + Write>(mut ws: tungstenite::WebSocket<S>, rx: &mpsc::Receiver<LifeEv>) {
    assert!(matches!(rx.recv_timeout(TIMEOUT).unwrap(), LifeEv::Connected));
    for len in [1usize, 125, 126, 65535, 65536, 300_000] {
        let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        ws.send(Message::Binary(msg.clone().into())).unwrap();
        let mut back = Vec::new();
        while back.len() < len {
            back.extend(next_binary(&mut ws));
        }
        assert!(back == msg, "{len} bytes back");
    }
    ws.send(Message::Ping(b"p".to_vec().into())).unwrap();
    ws.send(Message::Binary(b"after ping".to_vec().into())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"p"),
            Message::Binary(b) => {
                assert_eq!(&b[..], b"after ping");
                break;
            }
            m => panic!("{m:?}"),
        }
    }
    // The client closes: the server answers, the session sees an orderly close.
    ws.close(None).unwrap();
    match ws.read() {
        Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {}
        Ok(m) => panic!("{m:?}"),
        Err(e) => panic!("{e}"),
    }
    match rx.recv_timeout(TIMEOUT).unwrap() {
        LifeEv::Disconnected(DisconnectReason::PeerClosed) => {}
        e => panic!("{e:?}"),
    }
}

#[test]
fn ws_echo_ping_close_and_the_page() {
    let (server, rx) = server(None);
    let addr = server.websocket_addr().unwrap();
    echo_checks(ws_client(TcpStream::connect(addr).unwrap(), addr), &rx);

    // A local disconnect: the last message, then the server's close frame (1000).
    let mut ws = ws_client(TcpStream::connect(addr).unwrap(), addr);
    assert!(matches!(rx.recv_timeout(TIMEOUT).unwrap(), LifeEv::Connected));
    ws.send(Message::Binary(b"bye".to_vec().into())).unwrap();
    assert_eq!(next_binary(&mut ws), b"last words");
    match ws.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000),
        m => panic!("{m:?}"),
    }

    // A plain GET gets the page; the plain TCP listener still echoes raw bytes.
    let mut http = TcpStream::connect(addr).unwrap();
    http.set_read_timeout(Some(TIMEOUT)).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK") && page.ends_with("<p>page</p>"), "{page}");
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(b"raw").unwrap();
    let mut back = [0u8; 3];
    tcp.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"raw");
    drop(tcp);
    wait_no_sessions(&server);
    let stats = server.stats();
    assert_eq!((stats.ws_upgrades, stats.ws_upgrade_failures), (2, 0), "{stats:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn wss_goes_through_the_tls_layer() {
    let certs = fresh_certs();
    let (server, rx) = server(Some(certs.server));
    let addr = server.websocket_addr().unwrap();
    echo_checks(ws_client(tls_client(addr, &certs.client), addr), &rx);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_client_service_speaks_websocket_to_a_server_service() {
    let (server, _rx) = server(None);
    let (tx, rx) = mpsc::channel();
    let link = ClientService::builder(server.websocket_addr().unwrap())
        .workers(1)
        .sessions(3)
        .websocket(WsConfig::default())
        .start(move || Greeter { greeting: b"over websocket", answers: tx.clone() })
        .unwrap();
    for _ in 0..3 {
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), b"over websocket");
    }
    assert_eq!(link.stats().ws_upgrades, 3);
    link.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}
