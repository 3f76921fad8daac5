//! A self-signed certificate for `localhost` and 127.0.0.1 (the default server name of
//! `--addr 127.0.0.1:PORT`), as PEM files in a fresh directory removed on drop: what the
//! TLS, WebSocket and cluster CLI tests give `--tls-cert`/`--tls-key`/`--tls-ca`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    pub fn new() -> Certs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "servercore-cli-certs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("rcgen makes a self-signed certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("write cert.pem");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key.pem");
        Certs { dir, cert, key }
    }

    /// The certificate's PEM file.
    pub fn cert(&self) -> &str {
        path_str(&self.cert)
    }

    /// The key's PEM file.
    pub fn key(&self) -> &str {
        path_str(&self.key)
    }

    /// A path in the directory (a file that need not exist).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Another file of the directory (for broken inputs).
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, contents).expect("write a test file");
        p
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
