//! The tokio reference servers of issue 5, written the conventional way:
//! - echo: one task per connection, a 64 KiB buffer, `read` then `write_all`;
//! - chat (PROTOCOL.md section 3): a reader task per session parsing frames, a writer task per
//!   session fed by an unbounded mpsc of shared `Bytes`, draining its queue into one vectored
//!   write; the room is a `Mutex<HashMap<id, Sender>>`.
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

use bytes::{Buf, BufMut, Bytes, BytesMut};
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

pub fn run_chat(addr: SocketAddr, max_packet: usize) -> io::Result<()> {
    let max_packet = max_packet.clamp(HEADER, u16::MAX as usize);
    run_until_signal(addr, "", move |listener| async move {
        let room: Room = Arc::default();
        let mut next_id = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
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
    'session: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while buf.len() >= HEADER {
            let size = u16::from_le_bytes([buf[0], buf[1]]) as usize;
            if !(HEADER..=max_packet).contains(&size) {
                break 'session; // protocol error: bad size
            }
            if buf.len() < size {
                buf.reserve(size - buf.len());
                break;
            }
            let packet = buf.split_to(size);
            let packet_id = u16::from_le_bytes([packet[2], packet[3]]);
            if packet_id != C_CHAT {
                break 'session; // protocol error: unknown id
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
    }
    // Dropping the sender ends the writer once it has flushed what is queued.
    room.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
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
