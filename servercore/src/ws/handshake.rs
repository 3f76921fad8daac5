//! The HTTP/1.1 upgrade (RFC 6455 section 4): the server reads the request head and answers
//! `101 Switching Protocols`, a page, or an HTTP error; the client writes the request and
//! checks the answer. No I/O.

use super::WsError;
use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A page the WebSocket listener serves to a plain `GET` of its path.
#[derive(Debug, Clone)]
pub struct Page {
    /// The request path, e.g. `/`.
    pub path: String,
    /// The `Content-Type`, e.g. `text/html; charset=utf-8`.
    pub content_type: String,
    /// The body.
    pub body: bytes::Bytes,
}

/// What the server makes of a request head.
#[derive(Debug)]
pub(crate) enum Request {
    /// More bytes are needed.
    Partial,
    /// An upgrade: the `101` response to send, and how many bytes the head took (bytes after
    /// it are already frames).
    Upgrade { response: Vec<u8>, used: usize },
    /// Not an upgrade: the HTTP response to send before closing, and the reason to close
    /// with (`None` when a page was served).
    Refuse { response: Vec<u8>, error: Option<WsError> },
}

/// Reads a request head from `buf` (everything received so far), at most `max_head` bytes.
pub(crate) fn server_read(buf: &[u8], max_head: usize, pages: &[Page]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Request::Partial,
        Ok(_) => return refuse(431, "Request Header Fields Too Large", WsError::RequestTooLarge),
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "Request Header Fields Too Large", WsError::RequestTooLarge)
        }
        Err(e) => return refuse(400, "Bad Request", WsError::BadRequest(e.to_string())),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).any(|h| {
            std::str::from_utf8(h.value)
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if req.method != Some("GET") {
        return refuse(405, "Method Not Allowed", WsError::NotAnUpgrade(405));
    }
    if req.version != Some(1) {
        return refuse(400, "Bad Request", WsError::BadRequest("not HTTP/1.1".into()));
    }
    let upgrade = has_token("upgrade", "websocket") && has_token("connection", "upgrade");
    if !upgrade {
        // The page's path, whatever its query string (`/?name=x` is `/`).
        let path = req.path.unwrap_or("/");
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if let Some(page) = pages.iter().find(|p| p.path == path) {
            return Request::Refuse { response: page_response(page), error: None };
        }
        return refuse(426, "Upgrade Required", WsError::NotAnUpgrade(426));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        let mut response = status(426, "Upgrade Required");
        response.truncate(response.len() - 2);
        response.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n\r\n");
        return Request::Refuse {
            response,
            error: Some(WsError::BadRequest("Sec-WebSocket-Version is not 13".into())),
        };
    }
    let key = match header("sec-websocket-key") {
        Some(k)
            if base64::engine::general_purpose::STANDARD.decode(k.trim()).map(|d| d.len())
                == Ok(16) =>
        {
            k
        }
        _ => {
            return refuse(
                400,
                "Bad Request",
                WsError::BadRequest("no valid Sec-WebSocket-Key".into()),
            )
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes();
    Request::Upgrade { response, used }
}

fn status(code: u16, text: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} {text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

fn refuse(code: u16, text: &str, error: WsError) -> Request {
    Request::Refuse { response: status(code, text), error: Some(error) }
}

fn page_response(page: &Page) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n",
        page.content_type,
        page.body.len()
    )
    .into_bytes();
    r.extend_from_slice(&page.body);
    r
}

/// The client's request, for `host` and `path`, with a key made from `nonce`.
pub(crate) fn client_request(host: &str, path: &str, nonce: [u8; 16]) -> (Vec<u8>, String) {
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    (req.into_bytes(), accept_key(&key))
}

/// Reads the server's answer: `Ok(None)` until the head is complete, then how many bytes
/// it took.
pub(crate) fn client_read(
    buf: &[u8],
    max_head: usize,
    accept: &str,
) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let used = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(WsError::RequestTooLarge),
        Err(e) => return Err(WsError::BadRequest(e.to_string())),
    };
    if res.code != Some(101) {
        return Err(WsError::NotAnUpgrade(res.code.unwrap_or(0)));
    }
    let got = res
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    if got.map(str::trim) != Some(accept) {
        return Err(WsError::BadRequest("wrong Sec-WebSocket-Accept".into()));
    }
    Ok(Some(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_accept_key() {
        // RFC 6455 section 1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    const UPGRADE: &str =
        "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn an_upgrade_is_answered_with_101_byte_by_byte() {
        let bytes = UPGRADE.as_bytes();
        for cut in 0..bytes.len() {
            assert!(matches!(server_read(&bytes[..cut], 8192, &[]), Request::Partial));
        }
        let mut with_frame = bytes.to_vec();
        with_frame.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
        match server_read(&with_frame, 8192, &[]) {
            Request::Upgrade { response, used } => {
                assert_eq!(used, bytes.len());
                let text = String::from_utf8(response).unwrap();
                assert!(text.starts_with("HTTP/1.1 101 "));
                assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn other_requests_get_an_http_answer() {
        let page = Page {
            path: "/".into(),
            content_type: "text/html".into(),
            body: bytes::Bytes::from_static(b"<p>hi</p>"),
        };
        let pages = [page];
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        for path in ["/", "/?name=x&say=hi"] {
            match server_read(get(path).as_bytes(), 8192, &pages) {
                Request::Refuse { response, error: None } => {
                    let text = String::from_utf8(response).unwrap();
                    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("<p>hi</p>"));
                }
                r => panic!("{path}: {r:?}"),
            }
        }
        let cases = [
            (get("/other"), "426", WsError::NotAnUpgrade(426)),
            ("POST / HTTP/1.1\r\n\r\n".to_string(), "405", WsError::NotAnUpgrade(405)),
            (
                UPGRADE.replace("Version: 13", "Version: 8"),
                "426",
                WsError::BadRequest("Sec-WebSocket-Version is not 13".into()),
            ),
            (
                UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                "400",
                WsError::BadRequest("no valid Sec-WebSocket-Key".into()),
            ),
            (
                "\x16\x03\x01 garbage\r\n\r\n".to_string(),
                "400",
                WsError::BadRequest("invalid token".into()),
            ),
        ];
        for (req, code, want) in cases {
            match server_read(req.as_bytes(), 8192, &pages) {
                Request::Refuse { response, error } => {
                    let text = String::from_utf8(response).unwrap();
                    assert!(text.starts_with(&format!("HTTP/1.1 {code} ")), "{text}");
                    assert_eq!(error, Some(want));
                }
                r => panic!("{req:?}: {r:?}"),
            }
        }
        // A head that never ends is refused once it passes the limit.
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert!(matches!(
            server_read(long.as_bytes(), 8192, &pages),
            Request::Refuse { error: Some(WsError::RequestTooLarge), .. }
        ));
    }

    #[test]
    fn the_client_checks_the_servers_answer() {
        let (req, accept) = client_request("h", "/", [7; 16]);
        let Request::Upgrade { response, .. } = server_read(&req, 8192, &[]) else { panic!() };
        assert_eq!(client_read(&response[..10], 8192, &accept), Ok(None));
        assert_eq!(client_read(&response, 8192, &accept), Ok(Some(response.len())));
        assert!(client_read(&response, 8192, "other").is_err());
        let refused = status(426, "Upgrade Required");
        assert_eq!(client_read(&refused, 8192, &accept), Err(WsError::NotAnUpgrade(426)));
    }
}
