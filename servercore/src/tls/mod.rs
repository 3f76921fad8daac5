//! TLS for sessions, with [rustls] driven sans-IO by the worker that owns each session.
//!
//! A service built with [`ServerBuilder::tls`](crate::service::ServerBuilder::tls) (or
//! [`ClientBuilder::tls`](crate::service::ClientBuilder::tls)) speaks TLS on every session;
//! the [`Session`](crate::Session) code does not change. The worker feeds the bytes it
//! receives to rustls, hands the decrypted bytes to `on_recv`, and encrypts what the session
//! queued when it starts the next send, so all messages queued in one loop turn (a room
//! broadcast gathered for many members, say) become one record per member, not one per
//! message. No thread and no runtime is added: the handshake runs in the same loop.
//!
//! What a session sees:
//! - `on_connected` runs once the handshake is done (a failed handshake calls nothing:
//!   the session never connected), and `on_disconnected` as usual after it.
//! - A peer that closes without `close_notify` ends the session with
//!   [`TlsError::Truncated`](crate::TlsError::Truncated); with it, with
//!   [`PeerClosed`](crate::DisconnectReason::PeerClosed).
//! - A local `disconnect` (and a shutdown) sends every queued byte, then `close_notify`,
//!   then the FIN.
//! - Bytes that are not TLS, a handshake slower than
//!   [`tls_handshake_timeout`](crate::SessionConfig::tls_handshake_timeout) (default 10 s),
//!   and anything rustls refuses end that session alone with
//!   [`DisconnectReason::Tls`](crate::DisconnectReason::Tls).
//!
//! Memory: the send-queue limit counts the plaintext queued and the ciphertext waiting to be
//! written; rustls never holds outgoing bytes past a loop turn (the worker takes them at
//! once). On the receiving side rustls holds at most one partial record (up to ~16 KiB,
//! 64 KiB for a handshake message), and the decrypted bytes a session leaves unconsumed
//! count against `max_recv_buffer` as on a plain session.
//!
//! The helpers here build configurations with the *ring* crypto provider, TLS 1.3 and 1.2.
//!
//! ```
//! use servercore::{tls, Ctx, ServerService, Session};
//! # fn main() -> std::io::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("sc-tls-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! # std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
//! # std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
//! struct Echo;
//! impl Session for Echo {
//!     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
//!         let _ = ctx.send(data.to_vec());
//!         data.len()
//!     }
//! }
//! let config = tls::server_config_from_pem(dir.join("cert.pem"), dir.join("key.pem"))?;
//! let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
//!     .workers(1)
//!     .tls(config)
//!     .start(|| Echo)?;
//! server.shutdown(std::time::Duration::from_secs(1))?;
//! # Ok(())
//! # }
//! ```

mod layer;

pub(crate) use layer::{RecvFailure, TlsLayer};

pub use rustls;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// How a service's sessions speak TLS: the server or the client side.
#[derive(Debug, Clone)]
pub(crate) enum TlsSetup {
    Server(Arc<ServerConfig>),
    Client(Arc<ClientConfig>, ServerName<'static>),
}

/// The crypto provider of this module's helpers (*ring*), for configurations built by hand.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a chain: the leaf first).
pub fn load_certs(path: impl AsRef<Path>) -> io::Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: impl AsRef<Path>) -> io::Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// A server configuration from a certificate chain and its key: TLS 1.3 and 1.2, no client
/// authentication.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// [`server_config`] from two PEM files: the certificate chain and the private key. Errors
/// name the file and what is wrong with it.
pub fn server_config_from_pem(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> io::Result<Arc<ServerConfig>> {
    let certs = load_certs(cert_path.as_ref())?;
    let key = load_private_key(key_path.as_ref())?;
    server_config(certs, key).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} / {}: {e}", cert_path.as_ref().display(), key_path.as_ref().display()),
        )
    })
}

/// A client configuration that trusts the given roots (no client certificate).
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// [`client_config`] trusting every certificate of a PEM file (a private CA, or a
/// self-signed server certificate).
pub fn client_config_from_ca_pem(ca_path: impl AsRef<Path>) -> io::Result<Arc<ClientConfig>> {
    let path = ca_path.as_ref();
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
        })?;
    }
    Ok(client_config(roots))
}

/// A server name for [`ClientBuilder::tls`](crate::service::ClientBuilder::tls) from a
/// DNS name or an IP address.
pub fn server_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?}: {e}")))
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> io::Error {
    let kind = match e {
        rustls::pki_types::pem::Error::Io(ref io) => io.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("{}: {e}", path.display()))
}
