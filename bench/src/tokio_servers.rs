//! The tokio reference servers of issue 5, written the conventional way:
//! - echo: one task per connection, a 64 KiB buffer, `read` then `write_all`;
//! - chat (PROTOCOL.md section 3): a reader task per session parsing frames, a writer task per
//!   session fed by an unbounded mpsc of shared `Bytes`, draining its queue into one vectored
//!   write; the room is a `Mutex<HashMap<id, Sender>>` (with `--rooms N`, N such rooms, the
//!   n-th session accepted joining room n mod N, as `chat-server --rooms N` does).
//!
//! Both run on a current_thread runtime (the server is pinned to one core), listen with the
//! same backlog as servercore (4096) and set `TCP_NODELAY` on accepted sockets as servercore
//! does, print the readiness line of PROTOCOL.md section 4, and exit 0 on SIGINT/SIGTERM.
//!
//! The TLS variants (issue 13) are the same servers over tokio-rustls: the handshake runs in
//! the session's task (`TlsAcceptor::accept`), then the echo loop or the chat reader/writer
//! pair (the stream split with `tokio::io::split`) as above, each write followed by a flush
//! so that no ciphertext stays in rustls. Their `rustls::ServerConfig` is built like
//! servercore's `tls::server_config`: the *ring* provider, TLS 1.3 and 1.2, no client
//! authentication, one certificate, rustls' defaults otherwise (two TLS 1.3 session tickets
//! per connection, an in-memory session cache).
//!
//! The WebSocket variants (issue 14) are the same servers over tokio-tungstenite with its
//! default configuration (`accept_async`): echo sends each binary message back as a binary
//! message (`send`: one write each); chat reads the messages' bytes as one stream of
//! packets (PROTOCOL.md section 6) and relays each C_CHAT as above, the session's writer
//! task feeding every queued S_CHAT to the sink as its own binary message and flushing once
//! per batch (tungstenite gathers the frames of a batch into one write). A text message is
//! refused (close 1003); pings are answered by tungstenite. (The defaults include a 128 KiB
//! read buffer per connection, which tungstenite zero-fills before reading: it is resident.)

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Same backlog as servercore's listeners.
const BACKLOG: u32 = 4096;
/// Echo read buffer per connection.
const ECHO_BUF: usize = 64 * 1024;
/// Chat frame header: u16 size (header included) + u16 id, little-endian.
const HEADER: usize = 4;
const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
/// Most buffers gathered into one vectored write (below IOV_MAX).
const MAX_GATHER: usize = 512;

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// `extra`: appended inside the parentheses (`", tls"` for the TLS servers).
fn print_ready(listener: &TcpListener, extra: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {} (backend: tokio, workers: 1{extra})", listener.local_addr()?)?;
    out.flush()
}

/// Runs `serve` until SIGINT or SIGTERM, then exits 0.
fn run_until_signal<F>(
    addr: SocketAddr,
    extra: &str,
    serve: impl FnOnce(TcpListener) -> F,
) -> io::Result<()>
where
    F: std::future::Future<Output = io::Result<()>>,
{
    runtime()?.block_on(async move {
        let listener = bind(addr)?;
        print_ready(&listener, extra)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve(listener) => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

pub fn run_echo(addr: SocketAddr) -> io::Result<()> {
    run_until_signal(addr, "", |listener| async move {
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(echo_session(stream));
        }
    })
}

async fn echo_session(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The room: every connected session's queue.
type Room = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Bytes>>>>;

/// `rooms` (at least 1; `tokio-chat --rooms N`, as `chat-server --rooms N`): the n-th
/// session accepted (from 0) joins room n mod `rooms`, and a C_CHAT reaches the sender's
/// room only.
pub fn run_chat(addr: SocketAddr, max_packet: usize, rooms: usize) -> io::Result<()> {
    let max_packet = max_packet.clamp(HEADER, u16::MAX as usize);
    let rooms = rooms.max(1);
    run_until_signal(addr, "", move |listener| async move {
        let rooms: Vec<Room> = (0..rooms).map(|_| Room::default()).collect();
        let mut next_id = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let room = &rooms[(next_id % rooms.len() as u64) as usize];
            next_id += 1;
            let (tx, rx) = mpsc::unbounded_channel();
            room.lock().unwrap_or_else(|p| p.into_inner()).insert(next_id, tx);
            let (reader, writer) = stream.into_split();
            tokio::spawn(chat_writer(writer, rx));
            tokio::spawn(chat_reader(reader, next_id, room.clone(), max_packet));
        }
    })
}

async fn chat_reader<R: AsyncRead + Unpin>(mut reader: R, id: u64, room: Room, max_packet: usize) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if relay_packets(&mut buf, &room, max_packet).is_err() {
            break;
        }
    }
    // Dropping the sender ends the writer once it has flushed what is queued.
    room.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}

/// A protocol error (PROTOCOL.md section 2 or 3): the session ends.
struct ProtocolError;

/// Relays every whole C_CHAT packet at the front of `buf` to the room as an S_CHAT, leaving
/// a partial packet in `buf` (with room reserved for the rest of it).
fn relay_packets(buf: &mut BytesMut, room: &Room, max_packet: usize) -> Result<(), ProtocolError> {
    while buf.len() >= HEADER {
        let size = u16::from_le_bytes([buf[0], buf[1]]) as usize;
        if !(HEADER..=max_packet).contains(&size) {
            return Err(ProtocolError); // bad size
        }
        if buf.len() < size {
            buf.reserve(size - buf.len());
            break;
        }
        let packet = buf.split_to(size);
        let packet_id = u16::from_le_bytes([packet[2], packet[3]]);
        if packet_id != C_CHAT {
            return Err(ProtocolError); // unknown id
        }
        // Encode the S_CHAT once; every receiver gets a clone of the same `Bytes`.
        let mut out = BytesMut::with_capacity(size);
        out.put_u16_le(size as u16);
        out.put_u16_le(S_CHAT);
        out.put_slice(&packet[HEADER..]);
        let out = out.freeze();
        let sessions = room.lock().unwrap_or_else(|p| p.into_inner());
        for tx in sessions.values() {
            let _ = tx.send(out.clone());
        }
    }
    Ok(())
}

async fn chat_writer(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        if write_all_vectored(&mut writer, &mut batch).await.is_err() {
            return;
        }
    }
}

/// Writes every buffer of `batch` with vectored writes, resuming short writes; leaves
/// `batch` empty.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &mut Vec<Bytes>,
) -> io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..].iter().map(|b| IoSlice::new(b)).collect();
        let mut n = writer.write_vectored(&slices).await?;
        drop(slices);
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut batch[first];
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}

/// The TLS acceptor of the tokio-rustls servers, from PEM files: the certificate chain (leaf
/// first) and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("TLS configuration: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub fn run_tls_echo(addr: SocketAddr, acceptor: TlsAcceptor) -> io::Result<()> {
    run_until_signal(addr, ", tls", |listener| async move {
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(tls_echo_session(acceptor.clone(), stream));
        }
    })
}

async fn tls_echo_session(acceptor: TlsAcceptor, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut stream) = acceptor.accept(stream).await else { return };
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

pub fn run_tls_chat(addr: SocketAddr, max_packet: usize, acceptor: TlsAcceptor) -> io::Result<()> {
    let max_packet = max_packet.clamp(HEADER, u16::MAX as usize);
    run_until_signal(addr, ", tls", move |listener| async move {
        let room: Room = Arc::default();
        let mut next_id = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            next_id += 1;
            tokio::spawn(tls_chat_session(
                acceptor.clone(),
                stream,
                next_id,
                room.clone(),
                max_packet,
            ));
        }
    })
}

/// Handshake, then join the room (a session is a member once it can be written to) and run
/// as the reader, with a writer task as in the plain server.
async fn tls_chat_session(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    id: u64,
    room: Room,
    max_packet: usize,
) {
    let Ok(stream) = acceptor.accept(stream).await else { return };
    let (tx, rx) = mpsc::unbounded_channel();
    room.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
    let (reader, writer) = tokio::io::split(stream);
    tokio::spawn(tls_chat_writer(writer, rx));
    chat_reader(reader, id, room, max_packet).await;
}

/// [`chat_writer`] over TLS: the same gathering, and a flush after each batch so that the
/// records rustls could not write at once go out before the writer waits for more.
async fn tls_chat_writer<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        if write_all_vectored(&mut writer, &mut batch).await.is_err()
            || writer.flush().await.is_err()
        {
            return;
        }
    }
}

/// The close code for a text message (PROTOCOL.md section 6: binary messages only).
fn unsupported_data() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Unsupported,
        reason: "binary messages only".into(),
    }))
}

/// Upgrades an accepted connection with tokio-tungstenite's defaults (any path, no
/// subprotocol, 64 MiB message limit).
async fn ws_accept(stream: TcpStream) -> Option<WebSocketStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    tokio_tungstenite::accept_async(stream).await.ok()
}

pub fn run_ws_echo(addr: SocketAddr) -> io::Result<()> {
    run_until_signal(addr, ", websocket", |listener| async move {
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(ws_echo_session(stream));
        }
    })
}

/// Each binary message back as a binary message of the same bytes; pings are answered by
/// tungstenite itself, a close is answered and ends the stream.
async fn ws_echo_session(stream: TcpStream) {
    let Some(mut ws) = ws_accept(stream).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Binary(bytes) => Message::Binary(bytes),
            Message::Text(_) => {
                let _ = ws.send(unsupported_data()).await;
                return;
            }
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

pub fn run_ws_chat(addr: SocketAddr, max_packet: usize) -> io::Result<()> {
    let max_packet = max_packet.clamp(HEADER, u16::MAX as usize);
    run_until_signal(addr, ", websocket", move |listener| async move {
        let room: Room = Arc::default();
        let mut next_id = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            next_id += 1;
            tokio::spawn(ws_chat_session(stream, next_id, room.clone(), max_packet));
        }
    })
}

/// Upgrade, then join the room and run as the reader (the stream split with
/// `StreamExt::split`), with a writer task as in the plain server. The messages' bytes are
/// read as one stream of packets (PROTOCOL.md section 6), each S_CHAT goes out as its own
/// binary message.
async fn ws_chat_session(stream: TcpStream, id: u64, room: Room, max_packet: usize) {
    let Some(ws) = ws_accept(stream).await else { return };
    let (tx, rx) = mpsc::unbounded_channel();
    room.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
    let (sink, mut messages) = ws.split();
    tokio::spawn(ws_chat_writer(sink, rx));
    let mut buf = BytesMut::with_capacity(8 * 1024);
    while let Some(Ok(msg)) = messages.next().await {
        match msg {
            Message::Binary(bytes) => {
                buf.extend_from_slice(&bytes);
                if relay_packets(&mut buf, &room, max_packet).is_err() {
                    break;
                }
            }
            Message::Text(_) => break,
            _ => {}
        }
    }
    // Dropping the sender ends the writer once it has flushed what is queued.
    room.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}

/// [`chat_writer`] over WebSocket: the same gathering, each queued S_CHAT fed to the sink
/// as a binary message (tungstenite buffers the frames) and one flush per batch, so that a
/// batch goes out in one write as on TCP.
async fn ws_chat_writer(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    while let Some(first) = rx.recv().await {
        if sink.feed(Message::Binary(first)).await.is_err() {
            return;
        }
        for _ in 1..MAX_GATHER {
            let Ok(b) = rx.try_recv() else { break };
            if sink.feed(Message::Binary(b)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
