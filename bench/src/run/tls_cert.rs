//! The TLS workloads' certificate.

use std::fs;
use std::path::PathBuf;

/// A self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1, made at bench
/// start (rcgen) into a temporary directory, removed when the run ends; every TLS server
/// uses it, and the dummy-client trusts it (`--tls-ca`).
pub struct TlsCert {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsCert {
    /// The server name the certificate is for.
    pub const NAME: &'static str = "localhost";

    pub(super) fn generate() -> Result<TlsCert, String> {
        let dir = std::env::temp_dir().join(format!("servercore-bench-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cert = TlsCert { cert: dir.join("cert.pem"), key: dir.join("key.pem"), dir };
        // rcgen's default key: ECDSA P-256 (SHA-256), made with ring.
        let made =
            rcgen::generate_simple_self_signed(vec![Self::NAME.to_string(), "127.0.0.1".into()])
                .map_err(|e| format!("cannot generate a TLS certificate: {e}"))?;
        fs::write(&cert.cert, made.cert.pem())
            .and_then(|()| fs::write(&cert.key, made.signing_key.serialize_pem()))
            .map_err(|e| format!("cannot write the TLS certificate: {e}"))?;
        Ok(cert)
    }
}

impl Drop for TlsCert {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
