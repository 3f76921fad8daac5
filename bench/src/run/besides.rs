//! CPU used besides the server's during a measurement: the machine's, kernel threads',
//! hypervisor steal, the load client's and the driver's own.

use crate::procfs;
use crate::report::Besides;

/// CPU used so far by the machine, by kernel threads, by the load client and by the driver
/// itself, at one instant: to tell how much CPU other processes took during a measurement.
pub(super) struct Others {
    machine: f64,
    steal: f64,
    kernel: f64,
    pub(super) client: f64,
    me: f64,
}

impl Others {
    /// `client_secs`: the load client's CPU seconds so far.
    pub(super) fn sample(client_secs: f64) -> Others {
        let tck = procfs::clock_ticks_per_sec();
        let m = procfs::machine_ticks().unwrap_or_default();
        Others {
            machine: m.busy as f64 / tck,
            steal: m.steal as f64 / tck,
            kernel: procfs::kernel_threads_ticks() as f64 / tck,
            client: client_secs,
            me: procfs::cpu_ticks(std::process::id()).unwrap_or(0) as f64 / tck,
        }
    }

    /// What was used since `before` by anything but the server (which used `server` CPU
    /// seconds), over `wall` seconds.
    pub(super) fn since(&self, before: &Others, server: f64, wall: f64) -> Besides {
        let wall = wall.max(1e-9);
        let total = self.machine - before.machine;
        let kernel = self.kernel - before.kernel;
        let ours = server + (self.client - before.client) + (self.me - before.me);
        Besides {
            foreign: ((total - ours - kernel) / wall).max(0.0),
            kernel: (kernel / wall).max(0.0),
            steal: ((self.steal - before.steal) / wall).max(0.0),
        }
    }
}

pub(super) fn process_cpu_secs(pid: u32) -> f64 {
    procfs::cpu_ticks(pid).unwrap_or(0) as f64 / procfs::clock_ticks_per_sec()
}
