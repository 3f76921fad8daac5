//! `--metrics ADDR`: the `metrics` facade's values in Prometheus text format over HTTP, and
//! the probes of an orchestrator (Kubernetes, Agones) next to them.
//!
//! A tiny blocking HTTP responder on its own thread, one request per connection:
//! - `GET /metrics`: the current exposition;
//! - `GET /health`: `200 ok` while the process serves (liveness);
//! - `GET /ready`: `200 ready` once the server listens and, with `--cluster`, its link to
//!   NATS is up; else `503` and the reason (readiness);
//! - any other path `404`, any other method than GET or HEAD `405`.
//!
//! Enough for a scraper and a probe; no dependency on an async runtime.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A readiness check: `Ok` when ready, else why not.
pub type Check = Box<dyn Fn() -> Result<(), String> + Send>;

/// The readiness of the process, shared by the server's code (which sets it) and the HTTP
/// thread (which asks it). Starts as "starting".
#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Default)]
enum State {
    #[default]
    Starting,
    /// Serving: ready when the check says so.
    Serving(Check),
    Stopping,
}

impl Health {
    /// The server listens: from now on readiness is what `check` says. (The check runs on
    /// the HTTP thread, under a lock: keep it quick.)
    pub fn serving(&self, check: impl Fn() -> Result<(), String> + Send + 'static) {
        *self.lock() = State::Serving(Box::new(check));
    }

    /// Shutting down: not ready any more. Drops the check (and what it holds).
    pub fn stopping(&self) {
        *self.lock() = State::Stopping;
    }

    /// `Ok` when ready, else the reason.
    pub fn ready(&self) -> Result<(), String> {
        match &*self.lock() {
            State::Starting => Err("starting".into()),
            State::Serving(check) => check(),
            State::Stopping => Err("shutting down".into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Installs the Prometheus recorder (before any service starts, so that workers register
/// their metrics with it) and serves it and the probes of `health` on `addr`. Returns the
/// bound address.
pub fn serve(addr: SocketAddr, health: Arc<Health>) -> Result<SocketAddr, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("cannot bind --metrics {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = respond(stream, &handle, &health) {
                    tracing::debug!("metrics request failed: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

/// A response: status line text, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

/// The answer to a request line (`METHOD TARGET VERSION`).
fn route(request_line: &str, handle: &PrometheusHandle, health: &Health) -> Response {
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Response::text("400 Bad Request", "bad request\n");
    };
    if method != "GET" && method != "HEAD" {
        return Response::text("405 Method Not Allowed", "only GET and HEAD\n");
    }
    // The path without query string or fragment.
    let path = target.split(['?', '#']).next().unwrap_or(target);
    match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body: handle.render(),
        },
        "/health" => Response::text("200 OK", "ok\n"),
        "/ready" => match health.ready() {
            Ok(()) => Response::text("200 OK", "ready\n"),
            Err(why) => Response::text("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        _ => Response::text("404 Not Found", "not found (try /metrics, /health, /ready)\n"),
    }
}

fn respond(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    health: &Health,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    // Read the request head (up to the blank line); only its first line matters.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let request_line = String::from_utf8_lossy(&head[..line_end]);
    let r = route(request_line.trim_end(), handle, health);
    let head_only = request_line.starts_with("HEAD ");
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    )?;
    if !head_only {
        stream.write_all(r.body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(line: &str, health: &Health) -> &'static str {
        // A handle of a recorder that is not installed: enough to render.
        let handle = PrometheusBuilder::new().build_recorder().handle();
        route(line, &handle, health).status
    }

    #[test]
    fn routes_and_readiness() {
        let health = Health::default();
        assert_eq!(status("GET /health HTTP/1.1", &health), "200 OK");
        assert_eq!(status("GET /ready HTTP/1.1", &health), "503 Service Unavailable");
        assert_eq!(status("GET /metrics HTTP/1.1", &health), "200 OK");
        assert_eq!(status("GET /metrics?x=1 HTTP/1.1", &health), "200 OK");
        assert_eq!(status("HEAD /health HTTP/1.1", &health), "200 OK");
        assert_eq!(status("GET / HTTP/1.1", &health), "404 Not Found");
        assert_eq!(status("GET /readyz HTTP/1.1", &health), "404 Not Found");
        assert_eq!(status("POST /ready HTTP/1.1", &health), "405 Method Not Allowed");
        assert_eq!(status("", &health), "400 Bad Request");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let u = up.clone();
        health.serving(move || {
            if u.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("link down".into())
            }
        });
        assert_eq!(status("GET /ready HTTP/1.1", &health), "503 Service Unavailable");
        up.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(status("GET /ready HTTP/1.1", &health), "200 OK");
        health.stopping();
        assert_eq!(status("GET /ready HTTP/1.1", &health), "503 Service Unavailable");
        assert_eq!(status("GET /health HTTP/1.1", &health), "200 OK");
    }
}
