//! `--metrics ADDR`: a scraper reads the Prometheus text exposition of a running server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines of `r` into a channel on a thread, so that waits can time out.
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no line starting {prefix:?}"));
        if line.contains(prefix) {
            return line;
        }
    }
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn scrape_metrics_of_a_running_echo_server() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_servercore"))
        .args(["echo-server", "--addr", "127.0.0.1:0", "--workers", "2"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echo-server");
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let _guard = Kill(child);
    let metrics_line = wait_line(&err, "metrics on http://");
    let metrics_addr =
        metrics_line.split("http://").nth(1).unwrap().trim_end_matches("/metrics").to_string();
    let ready = wait_line(&out, "listening on ");
    let addr = ready.split_whitespace().nth(2).unwrap().to_string();

    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(&[7u8; 1000]).unwrap();
    let mut back = [0u8; 1000];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, [7u8; 1000]);

    // Workers publish every 250 ms: poll until the counts show up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(&metrics_addr);
        let accepted = value(&text, "servercore_sessions_accepted_total{service=\"server\"}");
        let bytes_in = value(&text, "servercore_bytes_in_total{service=\"server\"}");
        let sessions = value(&text, "servercore_sessions{service=\"server\"}");
        if accepted == Some(1.0) && bytes_in >= Some(1000.0) && sessions == Some(1.0) {
            assert!(text.contains("servercore_backend{service=\"server\",backend="), "{text}");
            assert!(value(&text, "servercore_bytes_out_total{service=\"server\"}") >= Some(1000.0));
            break;
        }
        assert!(Instant::now() < deadline, "metrics never showed the session:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }

    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(&metrics_addr);
        let closed =
            value(&text, "servercore_disconnects_total{service=\"server\",reason=\"peer_closed\"}");
        if closed == Some(1.0)
            && value(&text, "servercore_sessions{service=\"server\"}") == Some(0.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the disconnect never showed:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
