//! The chat page in a real browser (issue 14): headless Chromium opens the page served by
//! `chat-server --ws-addr`, and a plain TCP client speaking PROTOCOL.md packets shares the
//! room with it. The page's message must reach the TCP client, and the TCP client's
//! messages (text, and a dummy client's binary payload) must appear in the page's DOM, read
//! through the DevTools protocol (a tungstenite client evaluating `document.body.innerText`
//! until the text is there, with a deadline). A screenshot of the page is taken as well;
//! with `SERVERCORE_SCREENSHOT=PATH` it is written there (the README's docs/chat-page.png).
//!
//! Chromium is `/usr/bin/chromium` (Debian's package; `.ci/run` installs it), or the
//! program named by `SERVERCORE_CHROMIUM`. Without it the test fails and says so.
//! The server runs on the backend `SERVERCORE_BACKEND` picks (CI runs both).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Longest wait for each step that involves the browser (start, page load, messages).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("SERVERCORE_CHROMIUM").map_or_else(
        || {
            common::provision::ensure("/usr/bin/chromium", "chromium");
            PathBuf::from("/usr/bin/chromium")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} not found: this test needs headless Chromium (Debian's `chromium`, installed by the test when missing), or SERVERCORE_CHROMIUM=/path/to/chromium",
        path.display()
    );
    path
}

/// A headless Chromium in its own process group with a fresh profile; closed (then the
/// group killed) and the profile removed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
    /// The DevTools HTTP/WebSocket port.
    port: u16,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let chromium = chromium_path();
        let profile = std::env::temp_dir().join(format!(
            "servercore-browser-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let mut child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=900,600",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0) // its helpers too end with it (see Drop)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" on stderr.
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let stderr = stderr.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                let mut sent = false;
                loop {
                    match err.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut all = stderr.lock().unwrap_or_else(|p| p.into_inner());
                            all.push_str(&String::from_utf8_lossy(&chunk[..n]));
                            if !sent {
                                if let Some(port) = devtools_port(&all) {
                                    sent = tx.send(port).is_ok();
                                }
                            }
                        }
                    }
                }
            });
        }
        let mut browser = Browser { child, profile, port: 0, stderr };
        match rx.recv_timeout(BROWSER_TIMEOUT) {
            Ok(port) => browser.port = port,
            Err(_) => panic!(
                "Chromium did not open its DevTools port within {BROWSER_TIMEOUT:?} (status {:?}); stderr:\n{}",
                browser.child.try_wait(),
                browser.stderr()
            ),
        }
        browser
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The DevTools WebSocket URL of the page whose URL starts with `url`.
    fn page_target(&self, url: &str, deadline: Instant) -> String {
        loop {
            if let Some(ws) = self.list().and_then(|list| page_ws_url(&list, url)) {
                return ws;
            }
            assert!(
                Instant::now() < deadline,
                "no DevTools page target for {url}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /json/list` of the DevTools HTTP endpoint.
    fn list(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        // Chromium may keep the connection open: read up to Content-Length.
        let mut body = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&body);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end].lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                });
                if length.is_some_and(|len| body.len() >= head_end + 4 + len) {
                    break;
                }
            }
        }
        Some(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SIGTERM to the group we made for it (Chromium and its helpers, nothing else),
        // then SIGKILL if it lingers.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group led by our own unreaped child.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the leader is reaped below, at most once.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The port in Chromium's "DevTools listening on ws://127.0.0.1:PORT/..." line.
fn devtools_port(stderr: &str) -> Option<u16> {
    let at = stderr.find("DevTools listening on ws://")? + "DevTools listening on ws://".len();
    let rest = &stderr[at..];
    let end = rest.find('/')?;
    rest[..end].rsplit_once(':')?.1.parse().ok()
}

/// The `webSocketDebuggerUrl` of the page target whose `url` starts with `url`, from the
/// JSON of `/json/list` (read by hand: the fields are plain strings).
fn page_ws_url(list: &str, url: &str) -> Option<String> {
    let body = &list[list.find("\r\n\r\n")? + 4..];
    body.split('}').find_map(|target| {
        let field = |name: &str| {
            let key = format!("\"{name}\": \"");
            let at = target.find(&key)? + key.len();
            Some(target[at..].split('"').next()?.to_string())
        };
        (field("type")? == "page" && field("url")?.starts_with(url))
            .then(|| field("webSocketDebuggerUrl"))
            .flatten()
    })
}

/// A DevTools protocol session with one page.
struct DevTools {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl DevTools {
    fn connect(url: &str) -> DevTools {
        let rest = url.strip_prefix("ws://").expect("a ws:// DevTools URL");
        let host = rest.split('/').next().expect("a host");
        let stream = TcpStream::connect(host).expect("connect to the DevTools port");
        stream.set_read_timeout(Some(Duration::from_secs(1))).expect("set a read timeout");
        let (ws, _) = tungstenite::client(url, stream).expect("DevTools WebSocket handshake");
        DevTools { ws, next_id: 1 }
    }

    /// Sends a command and returns the text of its answer (events before it skipped).
    fn call(&mut self, method: &str, params: &str, deadline: Instant) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let msg = format!("{{\"id\":{id},\"method\":\"{method}\",\"params\":{params}}}");
        self.ws.send(tungstenite::Message::text(msg)).expect("send a DevTools command");
        let want = format!("{{\"id\":{id},");
        loop {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(t)) if t.starts_with(&want) => {
                    return t.to_string();
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("DevTools connection failed during {method}: {e}"),
            }
            assert!(Instant::now() < deadline, "no answer to {method} in time");
        }
    }

    /// `document.body.innerText`, as the page shows it now.
    fn inner_text(&mut self, deadline: Instant) -> String {
        let answer = self.call(
            "Runtime.evaluate",
            // encodeURIComponent: the value comes back without any JSON escape in it.
            r#"{"expression":"encodeURIComponent(document.body ? document.body.innerText : '')","returnByValue":true}"#,
            deadline,
        );
        let value = string_field(&answer, "value")
            .unwrap_or_else(|| panic!("no string value in the answer {answer}"));
        percent_decode(&value)
    }

    /// A PNG of the page as the window shows it.
    fn screenshot(&mut self, deadline: Instant) -> Vec<u8> {
        let answer = self.call("Page.captureScreenshot", r#"{"format":"png"}"#, deadline);
        let data = string_field(&answer, "data").unwrap_or_else(|| {
            panic!("no screenshot data in {}", &answer[..answer.len().min(300)])
        });
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(data.replace("\\/", "/"))
            .expect("the screenshot is base64")
    }
}

/// The string after `"name":"` up to the next quote (values without escapes only).
fn string_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let at = json.find(&key)? + key.len();
    Some(json[at..].split('"').next()?.to_string())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The number in the page's "received N msg/s".
fn rate_shown(text: &str) -> Option<u64> {
    let at = text.find("received ")? + "received ".len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// One PROTOCOL.md section 2 packet.
fn packet(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&((4 + payload.len()) as u16).to_le_bytes());
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// A payload as `dummy-client --mode chat` makes it: sender, sequence number, send time,
/// filler (src/dummy/chat.rs).
fn dummy_payload(sender: u64, seq: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&sender.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&123_456_789u64.to_le_bytes());
    p.resize(64, 0xA5);
    p
}

/// A plain TCP client in the room: its S_CHAT payloads arrive on a channel.
fn tcp_member(addr: SocketAddr) -> (TcpStream, mpsc::Receiver<Vec<u8>>) {
    let stream = TcpStream::connect(addr).expect("connect to the chat server's TCP listener");
    let mut reader = stream.try_clone().expect("clone the stream");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 4 {
                let size = u16::from_le_bytes([buf[0], buf[1]]) as usize;
                let id = u16::from_le_bytes([buf[2], buf[3]]);
                assert!(size >= 4 && id == 2, "bad packet from the server: size {size}, id {id}");
                if buf.len() < size {
                    break;
                }
                if tx.send(buf[4..size].to_vec()).is_err() {
                    return;
                }
                buf.drain(..size);
            }
        }
    });
    (stream, rx)
}

#[test]
fn chromium_chats_with_a_tcp_client() {
    let _ = chromium_path(); // fail first, clearly, without it
    let mut server = Proc::spawn(&[
        "chat-server",
        "--addr",
        "127.0.0.1:0",
        "--ws-addr",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]);
    let (tcp_addr, ws_addr, backend) = ready_tcp_and_ws(&mut server, 2, false);
    if let Some(forced) = forced_backend() {
        assert_eq!(backend, forced, "SERVERCORE_BACKEND={forced} not honoured");
    }
    let (mut tcp, from_room) = tcp_member(tcp_addr);

    // The page sends "browser-bot: hello from the browser" once connected.
    let base = format!("http://{ws_addr}/");
    let url = format!("{base}#name=browser-bot&say=hello%20from%20the%20browser");
    let browser = Browser::open(&url);
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let want = b"browser-bot: hello from the browser";
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match from_room.recv_timeout(left) {
            Ok(payload) if payload == want => break,
            Ok(_) => {}
            Err(_) => panic!(
                "the page's message did not reach the TCP client within {BROWSER_TIMEOUT:?}; \
                 Chromium's stderr:\n{}\nserver stderr:\n{}",
                browser.stderr(),
                server.stderr_so_far()
            ),
        }
    }

    // The TCP client answers: text lines, and binary payloads of a dummy client.
    let mut out = Vec::new();
    for text in ["tcp-bot: hello from tcp", "alice: ready when you are", "bob: gg"] {
        out.extend(packet(1, text.as_bytes()));
    }
    for seq in 40..=42 {
        out.extend(packet(1, &dummy_payload(7, seq)));
        out.extend(packet(1, &dummy_payload(9, seq + 100)));
    }
    tcp.write_all(&out).expect("send to the room");

    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let mut devtools = DevTools::connect(&browser.page_target(&base, deadline));
    let wants = [
        "connected",
        "browser-bot: hello from the browser",
        "tcp-bot: hello from tcp",
        "bob: gg",
        "dummy 7 #42",
        "dummy 9 #142",
    ];
    let text = loop {
        let text = devtools.inner_text(deadline);
        if wants.iter().all(|w| text.contains(w)) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the page does not show {:?} within {BROWSER_TIMEOUT:?}; it shows:\n{text}",
            wants.iter().filter(|w| !text.contains(**w)).collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(100));
    };
    // Its own message came back through the room: a round trip was measured.
    assert!(text.contains("round trip ") && text.contains(" ms (avg "), "no round trip:\n{text}");

    // Live traffic, as of a few dummy clients: the page's msg/s counter must show it.
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let mut tcp = tcp.try_clone().expect("clone the stream");
        let stop_load = stop_load.clone();
        thread::spawn(move || {
            let mut seq = 1000;
            while !stop_load.load(std::sync::atomic::Ordering::Relaxed) {
                let mut burst = Vec::new();
                for sender in [3, 7, 9, 12] {
                    burst.extend(packet(1, &dummy_payload(sender, seq)));
                }
                if tcp.write_all(&burst).is_err() {
                    return;
                }
                seq += 1;
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    loop {
        let text = devtools.inner_text(deadline);
        if rate_shown(&text).is_some_and(|r| r > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the page's msg/s counter stays at 0:\n{text}");
        thread::sleep(Duration::from_millis(50));
    }
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        r#"{"width":900,"height":560,"deviceScaleFactor":1,"mobile":false}"#,
        deadline,
    );
    let png = devtools.screenshot(deadline);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "not a PNG");
    if let Some(path) = std::env::var_os("SERVERCORE_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
        eprintln!("screenshot written to {}", PathBuf::from(path).display());
    }

    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("the load thread");
    drop(devtools);
    drop(browser);
    drop(tcp);
    server.signal(libc::SIGTERM);
    let f = server.finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(0), "server did not exit cleanly:\n{}", f.describe());
    assert!(!f.stderr.contains("panicked"), "the server panicked:\n{}", f.describe());
}
