//! The TLS handshake load (issue 13): waves of connections that each connect, run a full
//! TLS 1.3 handshake, exchange one byte with the echo server through it, send `close_notify`
//! and close. The churn load of `churn.rs` with rustls on top.
//!
//! Every handshake is a full one: the client keeps no session (resumption is off), offers
//! TLS 1.3 only and its default key exchange first (X25519). It does not verify the server's
//! certificate unless given `--tls-ca`: the load is then as light as it can be, and the
//! server's side of the handshake (key exchange, ECDSA signature, key schedule, session
//! tickets) is the same either way.
//!
//! One thread, nonblocking sockets, `poll`, each connection a rustls `ClientConnection`
//! driven by hand; connections to a loopback server are spread over source addresses as in
//! `churn.rs`.

use crate::churn::{self, ChurnReport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts any certificate and signature: the load measures the server, not the client.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration: *ring*, TLS 1.3 only, no resumption; `ca`: verify the server
/// against the certificates of this PEM file, else accept any.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let mut config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

enum State {
    Connecting,
    /// Handshaking, then waiting for the echo of the byte (`sent`: it was written).
    Tls {
        sent: bool,
    },
}

struct Conn {
    sock: TcpStream,
    tls: ClientConnection,
    state: State,
    started: Instant,
}

/// What one step of a connection came to.
enum Step {
    Pending,
    Done,
    Failed(String),
}

/// Writes what rustls has to send until the socket would block.
fn flush(c: &mut Conn) -> io::Result<()> {
    while c.tls.wants_write() {
        match c.tls.write_tls(&mut c.sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves a connection on after `poll` reported `revents` for it.
fn step(c: &mut Conn, revents: libc::c_short) -> Step {
    if let State::Connecting = c.state {
        if let Some(e) = churn::socket_error(raw_fd(&c.sock)) {
            return Step::Failed(format!("connect: {e}"));
        }
        c.state = State::Tls { sent: false };
    }
    let mut eof = false;
    if revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
        loop {
            match c.tls.read_tls(&mut c.sock) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {
                    if let Err(e) = c.tls.process_new_packets() {
                        // Send the alert rustls queued, then give up.
                        let _ = flush(c);
                        return Step::Failed(format!("TLS: {e}"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Step::Failed(format!("recv: {e}")),
            }
        }
    }
    let State::Tls { sent } = &mut c.state else { unreachable!() };
    if !*sent && !c.tls.is_handshaking() {
        if let Err(e) = c.tls.writer().write_all(b"x") {
            return Step::Failed(format!("TLS write: {e}"));
        }
        *sent = true;
    }
    if *sent {
        let mut byte = [0u8; 1];
        match c.tls.reader().read(&mut byte) {
            Ok(1) if byte[0] == b'x' => {
                c.tls.send_close_notify();
                let _ = flush(c);
                return Step::Done;
            }
            Ok(1) => return Step::Failed("wrong byte echoed".into()),
            Ok(_) => return Step::Failed("server closed (close_notify) before echoing".into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Step::Failed(format!("TLS read: {e}")),
        }
    }
    if let Err(e) = flush(c) {
        return Step::Failed(format!("send: {e}"));
    }
    if eof {
        let what = if c.tls.is_handshaking() { "during the handshake" } else { "before echoing" };
        return Step::Failed(format!("server closed the connection {what}"));
    }
    Step::Pending
}

fn raw_fd(sock: &TcpStream) -> libc::c_int {
    use std::os::fd::AsRawFd;
    sock.as_raw_fd()
}

/// Runs waves of `wave` connections, each a full TLS handshake and a one-byte echo, until
/// `secs` have passed (the last wave is finished).
pub fn run(
    addr: SocketAddr,
    wave: usize,
    secs: f64,
    ca: Option<&Path>,
    server_name: &str,
) -> Result<ChurnReport, String> {
    let SocketAddr::V4(addr) = addr else {
        return Err(format!("tls-churn-client supports IPv4 only, got {addr}"));
    };
    let config = client_config(ca)?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let to = churn::sockaddr_in(addr);
    let spread = addr.ip().is_loopback();
    let mut hist = churn::latency_histogram()?;
    let mut report = ChurnReport { mode: "tls-churn", ..ChurnReport::default() };
    let mut source = 0u32;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut conns: Vec<Conn> = Vec::with_capacity(wave);
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(wave);
    while Instant::now() < deadline {
        for _ in 0..wave {
            let from = churn::next_source(spread, &mut source);
            let started = Instant::now();
            let fd = match churn::start_connect(&to, from) {
                Ok(fd) => fd,
                Err(e) => {
                    churn::fail(&mut report, e);
                    continue;
                }
            };
            // SAFETY: `fd` is a socket start_connect just opened; the TcpStream owns it from
            // here and closes it once.
            let sock = unsafe { TcpStream::from_raw_fd(fd) };
            match ClientConnection::new(config.clone(), name.clone()) {
                Ok(tls) => conns.push(Conn { sock, tls, state: State::Connecting, started }),
                Err(e) => churn::fail(&mut report, format!("TLS: {e}")),
            }
        }
        let wave_deadline = Instant::now() + Duration::from_secs(10);
        while !conns.is_empty() {
            if Instant::now() > wave_deadline {
                for _ in conns.drain(..) {
                    churn::fail(&mut report, "wave timed out after 10 s".into());
                }
                break;
            }
            let interest = |c: &Conn| {
                let events = match c.state {
                    State::Connecting => libc::POLLOUT,
                    State::Tls { .. } if c.tls.wants_write() => libc::POLLIN | libc::POLLOUT,
                    State::Tls { .. } => libc::POLLIN,
                };
                (raw_fd(&c.sock), events)
            };
            // Finished connections are dropped (closed).
            churn::poll_round(&mut conns, &mut pfds, interest, |c, revents| {
                match step(c, revents) {
                    Step::Pending => true,
                    Step::Done => {
                        churn::record_cycle(&mut report, &mut hist, c.started);
                        false
                    }
                    Step::Failed(e) => {
                        churn::fail(&mut report, e);
                        false
                    }
                }
            })?;
        }
    }
    Ok(churn::finish(report, &hist, start))
}
