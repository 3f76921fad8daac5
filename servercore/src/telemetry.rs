//! Metrics through the `metrics` facade.
//!
//! Workers count locally (plain integers on the hot path) and publish every
//! [`FLUSH_EVERY`] and when they end. Install a recorder (e.g.
//! `metrics-exporter-prometheus`) *before* starting a service: handles are taken when its
//! workers start.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `servercore_sessions` | gauge | `service` |
//! | `servercore_sessions_accepted_total` | counter | `service` |
//! | `servercore_sessions_rejected_total` | counter | `service` |
//! | `servercore_connect_failures_total` | counter | `service` |
//! | `servercore_disconnects_total` | counter | `service`, `reason` (see [`DisconnectReason::label`](crate::DisconnectReason::label); a failed TLS handshake counts here too, with a `tls_*` reason) |
//! | `servercore_aborted_total` | counter | `service`, `reason` (abortive closes, TCP reset, by the reason the session closed with: `local`, `shutdown` or `peer_closed` there means its queued bytes missed the deadline) |
//! | `servercore_tls_handshakes_total` | counter | `service` (TLS services: handshakes finished) |
//! | `servercore_bytes_in_total`, `servercore_bytes_out_total` | counter | `service` |
//! | `servercore_packets_in_total` | counter | `service` (packets decoded by [`Framed`](crate::packet::Framed)) |
//! | `servercore_buffers_out_total` | counter | `service` (buffers queued on sessions: packets out, for packet sessions) |
//! | `servercore_send_queue_bytes` | gauge | `service`, `worker` |
//! | `servercore_backend` | gauge (1) | `service`, `backend` |

use crate::reason::DisconnectReason;
use metrics::{Counter, Gauge};
use std::time::{Duration, Instant};

/// How often a worker publishes its counts.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The service-wide counts a worker publishes, read at one moment.
pub(crate) struct ServiceCounts {
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    pub(crate) connect_failures: u64,
    pub(crate) sessions: usize,
    pub(crate) tls_handshakes: u64,
}

/// A worker's local counts and its metric handles.
pub(crate) struct WorkerMetrics {
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) buffers_out: u64,
    pub(crate) packets_in: u64,
    last_flush: Instant,
    service: &'static str,
    h: Handles,
}

struct Handles {
    bytes_in: Counter,
    bytes_out: Counter,
    buffers_out: Counter,
    packets_in: Counter,
    accepted: Counter,
    rejected: Counter,
    connect_failures: Counter,
    tls_handshakes: Counter,
    sessions: Gauge,
    send_queue: Gauge,
}

impl WorkerMetrics {
    /// The handles of worker `worker` of the service named `service` (the `service` label)
    /// running on `backend`.
    pub(crate) fn new(service: &'static str, backend: &'static str, worker: usize) -> Self {
        let h = Handles {
            bytes_in: metrics::counter!("servercore_bytes_in_total", "service" => service),
            bytes_out: metrics::counter!("servercore_bytes_out_total", "service" => service),
            buffers_out: metrics::counter!("servercore_buffers_out_total", "service" => service),
            packets_in: metrics::counter!("servercore_packets_in_total", "service" => service),
            accepted: metrics::counter!("servercore_sessions_accepted_total", "service" => service),
            rejected: metrics::counter!("servercore_sessions_rejected_total", "service" => service),
            connect_failures: metrics::counter!("servercore_connect_failures_total", "service" => service),
            tls_handshakes: metrics::counter!("servercore_tls_handshakes_total", "service" => service),
            sessions: metrics::gauge!("servercore_sessions", "service" => service),
            send_queue: metrics::gauge!(
                "servercore_send_queue_bytes", "service" => service, "worker" => worker.to_string()
            ),
        };
        metrics::gauge!("servercore_backend", "service" => service, "backend" => backend).set(1.0);
        WorkerMetrics {
            bytes_in: 0,
            bytes_out: 0,
            buffers_out: 0,
            packets_in: 0,
            last_flush: Instant::now(),
            service,
            h,
        }
    }

    /// Whether it is time to publish.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now.duration_since(self.last_flush) >= FLUSH_EVERY
    }

    /// Publishes local counts and the service's shared counters.
    pub(crate) fn flush(&mut self, shared: ServiceCounts, queued_bytes: usize, now: Instant) {
        self.last_flush = now;
        self.h.bytes_in.increment(std::mem::take(&mut self.bytes_in));
        self.h.bytes_out.increment(std::mem::take(&mut self.bytes_out));
        self.h.buffers_out.increment(std::mem::take(&mut self.buffers_out));
        self.h.packets_in.increment(std::mem::take(&mut self.packets_in));
        self.h.accepted.absolute(shared.accepted);
        self.h.rejected.absolute(shared.rejected);
        self.h.connect_failures.absolute(shared.connect_failures);
        self.h.tls_handshakes.absolute(shared.tls_handshakes);
        self.h.sessions.set(shared.sessions as f64);
        self.h.send_queue.set(queued_bytes as f64);
    }

    /// Counts one disconnect (rare enough to publish at once).
    pub(crate) fn disconnect(&self, reason: &DisconnectReason) {
        metrics::counter!(
            "servercore_disconnects_total", "service" => self.service, "reason" => reason.label()
        )
        .increment(1);
    }

    /// A session closed abortively (TCP reset), by the label of the reason it closed
    /// with: an orderly reason (`local`, `shutdown`, `peer_closed`) here means its queued
    /// bytes could not be delivered in time and were dropped.
    pub(crate) fn abort(&self, reason_label: &'static str) {
        metrics::counter!(
            "servercore_aborted_total", "service" => self.service, "reason" => reason_label
        )
        .increment(1);
    }
}
