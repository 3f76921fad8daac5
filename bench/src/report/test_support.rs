//! Samples for the tables' tests.

use super::stats::{Besides, ProbeLatency, Sample};

pub(super) fn sample(
    rate: f64,
    cpu_us: f64,
    parts: Vec<f64>,
    probe: Option<ProbeLatency>,
) -> Sample {
    Sample {
        rate,
        p50_us: 900.0,
        p99_us: 1500.0,
        p999_us: f64::NAN,
        cpu_per_unit_us: cpu_us,
        server_cpu_util: parts.iter().sum::<f64>().max(0.5),
        server_cpu_parts: parts,
        load_cpu_util: 0.9,
        peak_rss_kib: 10_000,
        rss_per_session_kib: None,
        errors: 0,
        first_error: None,
        client_backend: Some("io_uring".into()),
        besides: Besides::default(),
        probe,
    }
}
