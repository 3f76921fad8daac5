//! Shared helpers of the `tls_*` tests: a certificate made at run time (rcgen, nothing
//! committed), the server and client configurations built on it, and a blocking rustls
//! client (`ClientConnection` + `StreamOwned` over a std `TcpStream` with the `TIMEOUT`
//! safety net on every read and write).

use super::TIMEOUT;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};
use servercore::tls::{self, rustls};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The name the test certificate is made for.
pub const NAME: &str = "localhost";

/// A self-signed certificate for [`NAME`] and `127.0.0.1`, and configurations using it.
pub struct Pki {
    /// A server configuration with the certificate and its key (`tls::server_config`).
    pub server: Arc<ServerConfig>,
    /// A client configuration that trusts the certificate (`tls::client_config`).
    pub client: Arc<ClientConfig>,
    /// The same without session resumption: every handshake is a full one.
    pub client_no_resumption: Arc<ClientConfig>,
}

/// The process's test PKI, made once.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let made = rcgen::generate_simple_self_signed(vec![NAME.to_string(), "127.0.0.1".into()])
            .expect("rcgen makes a self-signed certificate");
        let der = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let server = tls::server_config(vec![der.clone()], key).expect("a server configuration");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("the certificate is a valid root");
        let client = tls::client_config(roots);
        let mut no_resumption = (*client).clone();
        no_resumption.resumption = rustls::client::Resumption::disabled();
        Pki { server, client, client_no_resumption: Arc::new(no_resumption) }
    })
}

/// A server configuration and a client configuration trusting it, on a certificate of
/// its own (for [`NAME`] only), unlike the shared [`pki`].
pub struct Certs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

/// A new self-signed certificate for [`NAME`], and configurations using it.
pub fn fresh_certs() -> Certs {
    let cert = rcgen::generate_simple_self_signed(vec![NAME.into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    Certs { server: tls::server_config(vec![der], key).unwrap(), client: tls::client_config(roots) }
}

/// A TLS client to `addr` over a plain `TcpStream` with only the read safety net; the
/// handshake is left to its first read or write.
pub fn tls_client(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsClient {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let name = tls::server_name(NAME).unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    StreamOwned::new(conn, tcp)
}

/// The server name of the test certificate.
pub fn server_name() -> ServerName<'static> {
    tls::server_name(NAME).expect("a valid DNS name")
}

/// A blocking TLS client.
pub type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A new client connection (nothing sent yet: its `ClientHello` waits in its output).
pub fn client_connection(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config.clone(), server_name()).expect("a client connection")
}

/// Connects and completes the handshake (client side: the server's `on_connected` follows
/// the client's `Finished`, it may not have run yet when this returns).
pub fn tls_connect(addr: SocketAddr) -> TlsClient {
    tls_connect_with(addr, &pki().client)
}

/// [`tls_connect`] with a given client configuration.
pub fn tls_connect_with(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsClient {
    let sock = super::connect(addr);
    let mut s = StreamOwned::new(client_connection(config), sock);
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            panic!("TLS handshake with {addr}: {e}");
        }
    }
    s
}

/// Writes `msg` and reads back exactly as many bytes, which must equal it.
pub fn tls_roundtrip(s: &mut TlsClient, msg: &[u8]) {
    s.write_all(msg).expect("TLS write to server");
    s.flush().expect("TLS flush");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("reading the echo of {} bytes: {e}", msg.len()));
    if back != msg {
        let at = back.iter().zip(msg).position(|(a, b)| a != b).unwrap_or(0);
        panic!("echo of {} bytes differs from what was sent at byte {at}", msg.len());
    }
}

/// Sends `close_notify` (and whatever rustls had queued before it).
pub fn send_close_notify(s: &mut TlsClient) {
    s.conn.send_close_notify();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut s.sock).expect("writing close_notify");
    }
    s.sock.flush().unwrap();
}

/// How a TLS stream ended, as the client saw it.
#[derive(Debug)]
pub enum TlsEnd {
    /// `close_notify`, then the end of the stream: `read` returned `Ok(0)`.
    CloseNotify,
    /// The TCP stream ended without `close_notify` (rustls: `UnexpectedEof`).
    Truncated,
    /// Another error: a reset, or a TLS alert or error (the text says which).
    Error(io::ErrorKind, String),
}

/// Reads until the TLS stream ends; returns the plaintext and how it ended. A read timeout
/// (the safety net) panics.
pub fn tls_read_to_end(s: &mut TlsClient) -> (Vec<u8>, TlsEnd) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, TlsEnd::CloseNotify),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("no end of the TLS stream within {TIMEOUT:?} ({} bytes read)", out.len())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (out, TlsEnd::Truncated),
            Err(e) => return (out, TlsEnd::Error(e.kind(), e.to_string())),
        }
    }
}

/// The first flight of a fresh client (its `ClientHello` record).
pub fn client_hello() -> Vec<u8> {
    let mut conn = client_connection(&pki().client_no_resumption);
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

/// How the raw TCP stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    Eof,
    Reset,
    Error(io::ErrorKind),
}

/// Reads a raw socket until it ends; returns the bytes, how it ended, and how long after
/// `since` it ended. A read timeout (the safety net) panics.
pub fn raw_read_to_end(s: &mut TcpStream, since: Instant) -> (Vec<u8>, RawEnd, Duration) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, RawEnd::Eof, since.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("no end of stream within {TIMEOUT:?} ({} bytes read)", out.len())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return (out, RawEnd::Reset, since.elapsed())
            }
            Err(e) => return (out, RawEnd::Error(e.kind()), since.elapsed()),
        }
    }
}

/// Feeds what the server sent to a client connection and returns the error rustls found in
/// it (an alert from the server shows as `AlertReceived`), or `None` if the bytes were
/// accepted.
pub fn feed_client(conn: &mut ClientConnection, mut bytes: &[u8]) -> Option<rustls::Error> {
    while !bytes.is_empty() {
        match conn.read_tls(&mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("read_tls: {e}"),
        }
        if let Err(e) = conn.process_new_packets() {
            return Some(e);
        }
    }
    None
}

// ----- disconnect reasons of failed handshakes, from the metrics ---------------------------

/// Counts of `servercore_disconnects_total` by `reason` label, process-wide (every service
/// of the process adds to them), read from a `metrics` recorder that this installs.
///
/// A failed handshake calls no session callback; the library counts it under its `tls_*`
/// reason in that metric, which is how a test sees *which* failure it was. Counts are
/// process-wide: a test that compares them must not run beside another test that
/// disconnects sessions (take a lock).
pub struct ReasonCounts(std::sync::Mutex<std::collections::HashMap<String, u64>>);

struct ReasonCounter {
    counts: &'static ReasonCounts,
    reason: String,
}

impl metrics::CounterFn for ReasonCounter {
    fn increment(&self, value: u64) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(self.reason.clone()).or_default() += value;
    }

    fn absolute(&self, value: u64) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(self.reason.clone()).or_default();
        *n = (*n).max(value);
    }
}

struct ReasonRecorder;

impl metrics::Recorder for ReasonRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let counts = match key.name() {
            "servercore_disconnects_total" => &DISCONNECTS,
            "servercore_aborted_total" => &ABORTED,
            _ => return metrics::Counter::noop(),
        };
        let reason = key.labels().find(|l| l.key() == "reason").map(|l| l.value().to_string());
        metrics::Counter::from_arc(Arc::new(ReasonCounter {
            counts: counts.get_or_init(|| ReasonCounts(Default::default())),
            reason: reason.unwrap_or_else(|| "<no reason label>".into()),
        }))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

static DISCONNECTS: OnceLock<ReasonCounts> = OnceLock::new();
static ABORTED: OnceLock<ReasonCounts> = OnceLock::new();

/// Installs the recorder, once, and returns `counts`.
fn installed(counts: &'static OnceLock<ReasonCounts>) -> &'static ReasonCounts {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        metrics::set_global_recorder(ReasonRecorder).expect("no other metrics recorder");
    });
    counts.get_or_init(|| ReasonCounts(Default::default()))
}

/// The process's reason counts; the first call installs the recorder (before any service
/// of the test starts: call it first).
pub fn reason_counts() -> &'static ReasonCounts {
    installed(&DISCONNECTS)
}

/// Counts of `servercore_aborted_total` (abortive closes, by the reason the session closed
/// with), from the same recorder; the first call installs it.
pub fn aborted_counts() -> &'static ReasonCounts {
    installed(&ABORTED)
}

impl ReasonCounts {
    /// A copy of the counts now.
    pub fn snapshot(&self) -> std::collections::HashMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What each reason gained since `before` (reasons that did not change are left out).
    pub fn since(
        &self,
        before: &std::collections::HashMap<String, u64>,
    ) -> std::collections::BTreeMap<String, u64> {
        self.snapshot()
            .into_iter()
            .filter_map(|(k, v)| {
                let d = v - before.get(&k).copied().unwrap_or(0);
                (d > 0).then_some((k, d))
            })
            .collect()
    }
}
