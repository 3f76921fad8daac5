//! The report's header: date, machine, command and method.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Date, machine, command and method: printed above the table.
pub struct Header {
    pub date: String,
    pub finished: String,
    pub machine: String,
    pub command: String,
    pub servercore: String,
    pub rounds: u32,
    pub secs: f64,
    pub cores: usize,
    pub busy_cores: f64,
    /// The ratio chart's link (`chart::write`), shown below the header.
    pub chart: Option<String>,
}

impl Header {
    pub fn collect(
        root: &Path,
        bin: &Path,
        rounds: u32,
        secs: f64,
        cores: usize,
        busy_cores: f64,
    ) -> Header {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
        let command = if args.is_empty() {
            "cargo run --release -p servercore-bench".to_string()
        } else {
            format!("cargo run --release -p servercore-bench -- {}", args.join(" "))
        };
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let built = std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| format!(" built {}", format_utc(d.as_secs())))
            .unwrap_or_default();
        let servercore = match git(&["rev-parse", "--short", "HEAD"]) {
            Some(commit) => {
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                format!(
                    "commit {commit}{}, binary `{}`{built}",
                    if dirty { " + uncommitted changes" } else { "" },
                    bin.strip_prefix(root).unwrap_or(bin).display()
                )
            }
            None => format!("binary `{}`{built}", bin.display()),
        };
        Header {
            date: utc_now(),
            finished: String::new(),
            machine: format!("{cores} cores (nproc), kernel {kernel}, CPU {cpu}"),
            command,
            servercore,
            rounds,
            secs,
            cores,
            busy_cores,
            chart: None,
        }
    }

    pub fn render(&self) -> String {
        let (srv, load) = if self.cores >= 2 {
            ("core 0", "core 1")
        } else {
            ("core 0", "core 0 (only one core!)")
        };
        format!(
            "- date: {}{}\n- machine: {}\n- command: `{}`\n- servercore: {}\n- method: server pinned to {srv}, \
             load generator pinned to {load} (sched_setaffinity); {} round(s) per server and workload, \
             servers alternating (A B C A B C ..), {} s of load per round; figures are medians over rounds; each round waits for the machine to be idle, and is \
             re-run (twice at most) when other processes used more than {:.2} cores during it",
            self.date,
            if self.finished.is_empty() { String::new() } else { format!(" to {}", self.finished) },
            self.machine, self.command, self.servercore, self.rounds, self.secs, self.busy_cores
        ) + if self.cores < 3 {
            "; rows with 2 workers: server on cores 0 and 1, load on core 1 (shared: this machine has fewer than 3 cores)"
        } else {
            "; rows with 2 workers: server on cores 0 and 1, load on core 2"
        }
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,/:".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// "YYYY-MM-DD HH:MM UTC" from the system clock.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31 23:59 UTC");
    }
}
