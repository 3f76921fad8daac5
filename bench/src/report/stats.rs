//! What a round measured, and the medians over a workload's rounds.

use super::cells::{cpu_cell, group, kib, num, rate_unit};
use crate::workloads::{Load, Server, Workload};
use std::fmt::Write as _;

/// What one round measured.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Messages (echo), deliveries (chat) or connect+echo+close cycles (churn) per second,
    /// as the load client counted them.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// NaN while the load client does not report it.
    pub p999_us: f64,
    /// Server CPU time (user + system, all threads) per message / delivery / cycle, in us.
    pub cpu_per_unit_us: f64,
    /// Server CPU seconds per wall second during the measurement.
    pub server_cpu_util: f64,
    /// The same per server process, when there are several (the cluster: node a, node b,
    /// nats-server); empty otherwise.
    pub server_cpu_parts: Vec<f64>,
    /// Load client CPU seconds per wall second.
    pub load_cpu_util: f64,
    /// Server `VmHWM` at the end of the round.
    pub peak_rss_kib: u64,
    /// Memory workload: (VmRSS under load - VmRSS before connecting) / sessions.
    pub rss_per_session_kib: Option<f64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub client_backend: Option<String>,
    /// CPU used during the measurement besides the server's.
    pub besides: Besides,
    /// The cluster workload's latency probe.
    pub probe: Option<ProbeLatency>,
}

/// Delivery latency measured by the cluster workload's probe, in us (NaN when there was no
/// such delivery: no cross-node one with a single server).
#[derive(Debug, Clone, Copy)]
pub struct ProbeLatency {
    /// To sessions on the sender's node.
    pub local_p50_us: f64,
    pub local_p99_us: f64,
    /// To sessions on another node.
    pub cross_p50_us: f64,
    pub cross_p99_us: f64,
}

/// CPU (in cores) used over a measurement window besides the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Besides {
    /// Processes other than the server, the load client and the driver.
    pub foreign: f64,
    /// Kernel threads (ksoftirqd running deferred network work, rcu, kworkers).
    pub kernel: f64,
    /// Hypervisor steal.
    pub steal: f64,
}

impl Sample {
    /// One line for the progress log.
    pub fn brief(&self, load: Load) -> String {
        let mut s = format!(
            "{} {}, p50 {} us, p99 {} us, {} ({:.0}% busy, load {:.0}%), peak {}",
            group(self.rate),
            rate_unit(load),
            self.p50_us,
            self.p99_us,
            cpu_cell(load, self.cpu_per_unit_us),
            self.server_cpu_util * 100.0,
            self.load_cpu_util * 100.0,
            kib(self.peak_rss_kib as f64)
        );
        if let Some(r) = self.rss_per_session_kib {
            let _ = write!(s, ", {r:.2} KiB/session");
        }
        if self.server_cpu_parts.len() > 1 {
            let parts: Vec<String> =
                self.server_cpu_parts.iter().map(|u| format!("{:.0}%", u * 100.0)).collect();
            let _ = write!(s, ", per process {}", parts.join(" + "));
        }
        if let Some(p) = self.probe {
            let _ = write!(
                s,
                ", probe local p50 {} / p99 {} us, cross-node p50 {} / p99 {} us",
                num(p.local_p50_us),
                num(p.local_p99_us),
                num(p.cross_p50_us),
                num(p.cross_p99_us)
            );
        }
        let b = self.besides;
        let _ = write!(
            s,
            "; besides: other processes {:.2}, kernel threads {:.2}, steal {:.2} cores",
            b.foreign, b.kernel, b.steal
        );
        if self.errors > 0 {
            let _ = write!(
                s,
                ", {} ERRORS: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        s
    }
}

/// The result of one workload.
pub struct Outcome {
    pub workload: Workload,
    pub rows: Result<Vec<(Server, Summary)>, String>,
}

/// Medians over the good rounds of one server on one workload.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub cpu_per_unit_us: f64,
    pub util: f64,
    pub load_util: f64,
    pub peak_rss_kib: f64,
    pub rss_per_session_kib: Option<f64>,
    pub good_rounds: usize,
    pub rounds: usize,
    /// Why rounds were left out, if any were.
    pub problem: Option<String>,
    pub client_backend: Option<String>,
    /// Most CPU (cores) other processes used during any used round.
    pub foreign_cores: f64,
    /// Median CPU (cores) of kernel threads and of hypervisor steal.
    pub kernel_cores: f64,
    pub steal_cores: f64,
    /// Median CPU (cores) of each server process, when there are several.
    pub cpu_parts: Vec<f64>,
    /// Medians of the probe's figures (cluster workload).
    pub probe: Option<ProbeLatency>,
}

impl Summary {
    pub fn valid(&self) -> bool {
        self.good_rounds > 0
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn summarize(samples: &[Result<Sample, String>]) -> Summary {
    let good: Vec<&Sample> =
        samples.iter().filter_map(|s| s.as_ref().ok()).filter(|s| s.errors == 0).collect();
    let med =
        |f: &dyn Fn(&Sample) -> f64| median(&mut good.iter().map(|s| f(s)).collect::<Vec<_>>());
    let problem = samples.iter().find_map(|s| match s {
        Err(e) => Some(e.clone()),
        Ok(s) if s.errors > 0 => Some(format!(
            "{} errors: {}",
            s.errors,
            s.first_error.as_deref().unwrap_or("(no message)")
        )),
        Ok(_) => None,
    });
    Summary {
        rate: med(&|s| s.rate),
        p50_us: med(&|s| s.p50_us),
        p99_us: med(&|s| s.p99_us),
        p999_us: med(&|s| s.p999_us),
        cpu_per_unit_us: med(&|s| s.cpu_per_unit_us),
        util: med(&|s| s.server_cpu_util),
        load_util: med(&|s| s.load_cpu_util),
        peak_rss_kib: med(&|s| s.peak_rss_kib as f64),
        rss_per_session_kib: (!good.is_empty()
            && good.iter().all(|s| s.rss_per_session_kib.is_some()))
        .then(|| med(&|s| s.rss_per_session_kib.unwrap_or(f64::NAN))),
        good_rounds: good.len(),
        rounds: samples.len(),
        problem,
        client_backend: good.iter().find_map(|s| s.client_backend.clone()),
        foreign_cores: good.iter().map(|s| s.besides.foreign).fold(0.0, f64::max),
        kernel_cores: med(&|s| s.besides.kernel),
        steal_cores: med(&|s| s.besides.steal),
        cpu_parts: (0..good.iter().map(|s| s.server_cpu_parts.len()).min().unwrap_or(0))
            .map(|i| med(&|s| s.server_cpu_parts[i]))
            .collect(),
        probe: (!good.is_empty() && good.iter().all(|s| s.probe.is_some())).then(|| {
            let p = |f: fn(&ProbeLatency) -> f64| med(&|s| s.probe.as_ref().map_or(f64::NAN, f));
            ProbeLatency {
                local_p50_us: p(|p| p.local_p50_us),
                local_p99_us: p(|p| p.local_p99_us),
                cross_p50_us: p(|p| p.cross_p50_us),
                cross_p99_us: p(|p| p.cross_p99_us),
            }
        }),
    }
}

impl Outcome {
    pub fn unavailable(workload: Workload, why: String) -> Outcome {
        Outcome { workload, rows: Err(why) }
    }

    pub fn measured(
        workload: Workload,
        servers: Vec<Server>,
        samples: Vec<Vec<Result<Sample, String>>>,
    ) -> Outcome {
        let rows = servers.into_iter().zip(samples.iter().map(|s| summarize(s))).collect();
        Outcome { workload, rows: Ok(rows) }
    }

    pub(crate) fn get(&self, server: Server) -> Option<&Summary> {
        self.rows
            .as_ref()
            .ok()?
            .iter()
            .find(|(s, _)| *s == server)
            .map(|(_, m)| m)
            .filter(|m| m.valid())
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// The figure a workload's ratio compares: RSS per session for memory, else CPU per unit.
pub(crate) fn compared(load: Load, m: &Summary) -> f64 {
    match load {
        Load::Memory { .. } => m.rss_per_session_kib.unwrap_or(f64::NAN),
        _ => m.cpu_per_unit_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
