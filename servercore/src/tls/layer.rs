//! One session's TLS state: rustls fed with byte slices, no I/O (the worker does that), so
//! it can be tested with plain slices.

use super::TlsSetup;
use crate::buffer::pool::pooled_concat;
use crate::reason::TlsError;
use bytes::Bytes;
use rustls::Connection;
use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};

/// Record content types a TLS stream may begin with: handshake (a `ClientHello`, a
/// `ServerHello`) or an alert.
const FIRST_BYTES: [u8; 2] = [0x16, 0x15];

/// What a call to [`TlsLayer::receive`] brought.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// The handshake finished with these bytes.
    pub(crate) handshake_done: bool,
    /// The peer sent `close_notify`: nothing more will be decrypted.
    pub(crate) peer_closed: bool,
}

/// Why [`TlsLayer::receive`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecvFailure {
    /// The TLS layer refused the bytes (an alert for the peer may wait in the output).
    Tls(TlsError),
    /// The decrypted bytes would pass the session's unconsumed-bytes limit.
    Full,
}

/// Takes rustls' output into pooled buffers, one per `write_vectored` (rustls hands all
/// its pending records at once).
struct PoolSink<'a> {
    out: &'a mut VecDeque<Bytes>,
    n: usize,
}

impl Write for PoolSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > 0 {
            self.out.push_back(pooled_concat(total, bufs.iter().map(|b| &**b)));
            self.n += total;
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A session's TLS connection, driven sans-IO.
pub(crate) struct TlsLayer {
    conn: Connection,
    /// Some bytes were received (the first ones were checked for a TLS record).
    started: bool,
    peer_closed: bool,
    /// `close_notify` went into the output.
    closed: bool,
    failed: bool,
}

impl TlsLayer {
    /// A new connection for one session; a client's first flight waits in the output.
    pub(crate) fn new(setup: &TlsSetup) -> Result<Self, TlsError> {
        let conn: Connection = match setup {
            TlsSetup::Server(config) => rustls::ServerConnection::new(config.clone())
                .map_err(|e| TlsError::Protocol(e.to_string()))?
                .into(),
            TlsSetup::Client(config, name) => {
                rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| TlsError::Protocol(e.to_string()))?
                    .into()
            }
        };
        let mut layer =
            TlsLayer { conn, started: false, peer_closed: false, closed: false, failed: false };
        // The worker takes all output every turn and bounds the plaintext itself.
        layer.conn.set_buffer_limit(None);
        Ok(layer)
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The peer's `close_notify` arrived.
    pub(crate) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether application data can be encrypted now (handshake done, no error, not
    /// closed).
    pub(crate) fn can_send(&self) -> bool {
        !self.conn.is_handshaking() && !self.failed && !self.closed
    }

    /// Feeds received ciphertext; appends what it decrypts to `plain`, which may grow to
    /// `limit` bytes at most.
    pub(crate) fn receive(
        &mut self,
        mut data: &[u8],
        plain: &mut Vec<u8>,
        limit: usize,
    ) -> Result<Received, RecvFailure> {
        let mut got = Received::default();
        if self.failed {
            return Ok(got);
        }
        if !self.started && !data.is_empty() {
            self.started = true;
            if !FIRST_BYTES.contains(&data[0]) {
                self.failed = true;
                return Err(RecvFailure::Tls(TlsError::NotTls));
            }
        }
        let handshaking = self.conn.is_handshaking();
        while !data.is_empty() && !self.peer_closed {
            match self.conn.read_tls(&mut data as &mut dyn Read) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(self.fail(e.to_string())),
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => return Err(self.fail(e.to_string())),
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                if plain.len() + n > limit {
                    self.failed = true;
                    return Err(RecvFailure::Full);
                }
                let start = plain.len();
                plain.resize(start + n, 0);
                if let Err(e) = self.conn.reader().read_exact(&mut plain[start..]) {
                    plain.truncate(start);
                    return Err(self.fail(e.to_string()));
                }
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
                got.peer_closed = true;
            }
        }
        got.handshake_done = handshaking && !self.conn.is_handshaking();
        Ok(got)
    }

    fn fail(&mut self, why: String) -> RecvFailure {
        self.failed = true;
        RecvFailure::Tls(TlsError::Protocol(why))
    }

    /// Moves everything rustls has to send (handshake flights, alerts, records) to `out`;
    /// returns its length. The bytes are copied into the thread's send-buffer pool (see
    /// `buffer::pool`): steady sending allocates nothing here.
    pub(crate) fn take_output(&mut self, out: &mut VecDeque<Bytes>) -> usize {
        let mut sink = PoolSink { out, n: 0 };
        while self.conn.wants_write() {
            // Writing to the pool cannot fail.
            if self.conn.write_tls(&mut sink).is_err() {
                break;
            }
        }
        sink.n
    }

    /// Encrypts `plain` (all of it, as few records as its size allows: one record carries
    /// up to 16 KiB of many messages) and moves the records to `out`; returns the number of
    /// ciphertext bytes. Only when [`can_send`](Self::can_send).
    pub(crate) fn encrypt(&mut self, plain: &[Bytes], out: &mut VecDeque<Bytes>) -> usize {
        debug_assert!(self.can_send());
        let slices: Vec<IoSlice<'_>> = plain.iter().map(|b| IoSlice::new(b)).collect();
        let mut writer = self.conn.writer();
        // With no buffer limit rustls takes everything at once; should it not, the rest
        // follows buffer by buffer (records then split at those buffers).
        let mut skip = writer.write_vectored(&slices).unwrap_or(0);
        for b in plain {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let _ = writer.write_all(&b[skip..]);
            skip = 0;
        }
        self.take_output(out)
    }

    /// Queues `close_notify` (once) and moves it to `out`.
    pub(crate) fn close_notify(&mut self, out: &mut VecDeque<Bytes>) -> usize {
        if self.closed || self.failed || self.conn.is_handshaking() {
            return 0;
        }
        self.closed = true;
        self.conn.send_close_notify();
        self.take_output(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    fn pair() -> (TlsLayer, TlsLayer) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = super::super::server_config(vec![der.clone()], key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = super::super::client_config(roots);
        let name = super::super::server_name("localhost").unwrap();
        (
            TlsLayer::new(&TlsSetup::Server(server)).unwrap(),
            TlsLayer::new(&TlsSetup::Client(client, name)).unwrap(),
        )
    }

    fn concat(out: &mut VecDeque<Bytes>) -> Vec<u8> {
        out.drain(..).flat_map(|b| b.to_vec()).collect()
    }

    /// Runs the handshake by passing each side's output to the other.
    fn handshake(server: &mut TlsLayer, client: &mut TlsLayer) {
        let mut out = VecDeque::new();
        let mut plain = Vec::new();
        for _ in 0..10 {
            client.take_output(&mut out);
            let bytes = concat(&mut out);
            server.receive(&bytes, &mut plain, 1 << 20).unwrap();
            server.take_output(&mut out);
            let bytes = concat(&mut out);
            client.receive(&bytes, &mut plain, 1 << 20).unwrap();
            if !server.is_handshaking() && !client.is_handshaking() {
                break;
            }
        }
        assert!(plain.is_empty());
        assert!(server.can_send() && client.can_send());
    }

    #[test]
    fn many_messages_become_one_record_and_arrive_in_order() {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        let msgs: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 64])).collect();
        let mut out = VecDeque::new();
        let n = server.encrypt(&msgs, &mut out);
        // 6,400 bytes fit one record: 5 bytes of header, 16 of tag, 1 of content type.
        assert_eq!(n, 6400 + 22, "one record for the whole batch");
        let bytes = concat(&mut out);
        let mut plain = Vec::new();
        client.receive(&bytes, &mut plain, 1 << 20).unwrap();
        let want: Vec<u8> = msgs.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(plain, want);
    }

    #[test]
    fn a_record_split_anywhere_decrypts_the_same() {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        let mut out = VecDeque::new();
        client.encrypt(&[Bytes::from(vec![7u8; 40_000])], &mut out);
        let bytes = concat(&mut out);
        let mut plain = Vec::new();
        for chunk in bytes.chunks(777) {
            server.receive(chunk, &mut plain, 1 << 20).unwrap();
        }
        assert_eq!(plain, vec![7u8; 40_000]);
    }

    #[test]
    fn bytes_that_are_not_tls_fail_at_once() {
        let (mut server, _) = pair();
        let mut plain = Vec::new();
        let r = server.receive(b"GET / HTTP/1.1\r\n\r\n", &mut plain, 1 << 20);
        assert_eq!(r, Err(RecvFailure::Tls(TlsError::NotTls)));
    }

    #[test]
    fn a_malformed_record_fails_with_rustls_reason_and_an_alert() {
        let (mut server, _) = pair();
        let mut plain = Vec::new();
        // A handshake record announcing 0x4800 bytes: over the 16 KiB + 2 KiB record limit.
        let r = server.receive(&[0x16, 0x03, 0x01, 0x48, 0x00, 1, 2, 3], &mut plain, 1 << 20);
        assert!(matches!(r, Err(RecvFailure::Tls(TlsError::Protocol(_)))), "{r:?}");
        let mut out = VecDeque::new();
        assert!(server.take_output(&mut out) > 0, "an alert for the peer");
    }

    #[test]
    fn decrypted_bytes_over_the_limit_fail() {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        let mut out = VecDeque::new();
        client.encrypt(&[Bytes::from(vec![1u8; 5000])], &mut out);
        let mut plain = Vec::new();
        let r = server.receive(&concat(&mut out), &mut plain, 4096);
        assert_eq!(r, Err(RecvFailure::Full));
    }

    #[test]
    fn close_notify_is_seen_as_an_orderly_close() {
        let (mut server, mut client) = pair();
        handshake(&mut server, &mut client);
        let mut out = VecDeque::new();
        client.encrypt(&[Bytes::from_static(b"bye")], &mut out);
        assert!(client.close_notify(&mut out) > 0);
        assert_eq!(client.close_notify(&mut out), 0, "once");
        assert!(!client.can_send());
        let mut plain = Vec::new();
        let r = server.receive(&concat(&mut out), &mut plain, 1 << 20).unwrap();
        assert!(r.peer_closed && server.peer_closed());
        assert_eq!(plain, b"bye");
    }
}
