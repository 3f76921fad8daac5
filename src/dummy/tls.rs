//! TLS for the dummy client: what to trust, the rustls client configuration, and the
//! handshake bookkeeping of each session.
//!
//! The library calls no session callback when a TLS handshake fails (the session never
//! connected, and it did not fail to connect either); it counts the failure in its
//! `ServiceStats` and logs the reason at debug level. So that the report can say why, the
//! certificate verifier below records its refusals (the usual failure: wrong CA, wrong
//! name).

use super::stats::LoadStats;
use servercore::tls::rustls;
use servercore::tls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use servercore::tls::rustls::client::WebPkiServerVerifier;
use servercore::tls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use servercore::tls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use servercore::tls::rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Which server certificates the client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates chaining to one of these (a private CA, or the self-signed server
    /// certificate itself), valid for the server name.
    Roots(Vec<CertificateDer<'static>>),
    /// Any certificate (`--tls-insecure`): for load tests against a test server only. The
    /// handshake signatures are still checked, so the peer must hold the certificate's key.
    Insecure,
}

/// How a load run speaks TLS.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub trust: Trust,
    /// The name the certificate must be valid for (and the SNI sent).
    pub server_name: ServerName<'static>,
}

/// The client configuration of a run: *ring*, TLS 1.3 and 1.2, the plan's trust. Refusals
/// of the server's certificate are recorded in `stats` (the library reports a failed
/// handshake to no session callback).
pub fn client_config(plan: &TlsPlan, stats: Arc<LoadStats>) -> Result<Arc<ClientConfig>, String> {
    let provider = servercore::tls::provider();
    let algorithms = provider.signature_verification_algorithms;
    let check = match &plan.trust {
        Trust::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("cannot trust a --tls-ca certificate: {e}"))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
            Check::WebPki(webpki)
        }
        Trust::Insecure => Check::SignaturesOnly,
    };
    let verifier = Arc::new(RecordingVerifier { check, algorithms, stats });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How [`RecordingVerifier`] judges the certificate itself.
enum Check {
    /// The standard WebPKI checks against the trusted roots.
    WebPki(Arc<WebPkiServerVerifier>),
    /// None (`--tls-insecure`).
    SignaturesOnly,
}

/// A [`ServerCertVerifier`] that either delegates to WebPKI or accepts any certificate,
/// and in both cases checks the handshake signatures with the provider's algorithms, so a
/// peer cannot present a certificate whose key it does not hold. It exists for two reasons:
/// `--tls-insecure` needs a verifier that accepts any certificate, and with `--tls-ca` a
/// refusal must reach the report, which the library's callbacks would not carry.
struct RecordingVerifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
    stats: Arc<LoadStats>,
}

impl fmt::Debug for RecordingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let check = match self.check {
            Check::WebPki(_) => "webpki",
            Check::SignaturesOnly => "insecure (signatures only)",
        };
        f.debug_struct("RecordingVerifier").field("check", &check).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Check::WebPki(webpki) = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                self.stats.error(format!(
                    "TLS: the server's certificate was refused for name {}: {e} \
                     (check --tls-ca and --tls-server-name)",
                    server_name.to_str()
                ));
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Times one session's handshake: the session is made when its connect starts, and
/// `on_connected` comes once the handshake is done.
pub struct HandshakeWatch {
    stats: Arc<LoadStats>,
    started: Instant,
    /// Record anything (TLS runs only).
    tls: bool,
}

impl HandshakeWatch {
    pub fn new(stats: Arc<LoadStats>, tls: bool) -> Self {
        HandshakeWatch { stats, started: Instant::now(), tls }
    }

    /// From `on_connected`: records the time since the connect started.
    pub fn connected(&self) {
        if self.tls {
            self.stats.handshakes.record(self.started, Instant::now());
        }
    }
}
