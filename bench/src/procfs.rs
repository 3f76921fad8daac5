//! Reading another process's CPU time and memory from `/proc`, and counting established
//! TCP connections on a port from `/proc/net/tcp`.

use std::fs;
use std::io;

/// CPU time of a process (all its threads), in clock ticks: utime + stime, fields 14 and 15
/// of `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat: {text:?}"))
    })
}

/// utime + stime from the text of `/proc/PID/stat`.
///
/// Field 2 (`comm`) is in parentheses and may itself hold spaces and parentheses, so the
/// fields are counted from after the *last* `)`: the first one after it is field 3 (state).
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // Field 3 is at index 0, so field 14 (utime) is at index 11 and field 15 (stime) at 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of the whole machine, all cores, in clock ticks, from the first line of
/// `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// user + nice + system + irq + softirq: CPU some task (or interrupt) used.
    pub busy: u64,
    /// Time the hypervisor ran something else while this machine's CPUs wanted to run.
    pub steal: u64,
}

pub fn machine_ticks() -> io::Result<MachineTicks> {
    let text = fs::read_to_string("/proc/stat")?;
    parse_machine_ticks(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/stat"))
}

pub fn parse_machine_ticks(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_ascii_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    if v.len() < 8 {
        return None;
    }
    Some(MachineTicks { busy: v[0] + v[1] + v[2] + v[5] + v[6], steal: v[7] })
}

/// `PF_KTHREAD` in the flags field (9) of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// CPU time of all kernel threads (ksoftirqd, rcu, kworkers, ..), in clock ticks. Network
/// work the kernel defers to ksoftirqd shows up here, charged to no user process.
pub fn kernel_threads_ticks() -> u64 {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    let mut sum = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(text) = fs::read_to_string(format!("/proc/{name}/stat")) {
            if let Some((flags, ticks)) = parse_stat_flags_and_ticks(&text) {
                if flags & PF_KTHREAD != 0 {
                    sum += ticks;
                }
            }
        }
    }
    sum
}

/// The flags (field 9) and utime + stime of `/proc/PID/stat`.
pub fn parse_stat_flags_and_ticks(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let flags = rest.split_ascii_whitespace().nth(6)?.parse().ok()?;
    Some((flags, parse_stat_cpu_ticks(text)?))
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of [`cpu_ticks`].
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident memory figures of a process, in KiB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Current resident set (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set (`VmHWM`).
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> io::Result<Memory> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_memory(&text).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("no VmRSS/VmHWM in /proc/{pid}/status"))
    })
}

/// `VmRSS` and `VmHWM` from the text of `/proc/PID/status` (values in kB).
pub fn parse_status_memory(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_ascii_whitespace().next()?.parse().ok()
    };
    Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// How many IPv4 TCP sockets in state ESTABLISHED have local port `port`: the server side
/// of every connection to a server listening on that port (accepted or still queued).
///
/// Asks the kernel through `NETLINK_SOCK_DIAG` for established sockets only; `/proc/net/tcp`
/// lists every socket, TIME_WAIT included, and is slow to read when other programs on the
/// machine leave tens of thousands of those behind. Falls back to it when netlink fails.
pub fn established_on_port(port: u16) -> io::Result<usize> {
    match sock_diag_established(port) {
        Ok(n) => Ok(n),
        Err(_) => {
            let text = fs::read_to_string("/proc/net/tcp")?;
            Ok(count_established(&text, port))
        }
    }
}

/// An owned file descriptor, closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened by this module and is closed exactly once.
        unsafe { libc::close(self.0) };
    }
}

fn sock_diag_established(port: u16) -> io::Result<usize> {
    let mut count = 0;
    sock_diag_dump(port, false, |_| count += 1)?;
    Ok(count)
}

/// Offset and size of `tcpi_data_segs_in` (u32) in `struct tcp_info` (Linux 4.6 and later).
const TCPI_DATA_SEGS_IN: usize = 152;
/// `INET_DIAG_INFO`: the attribute carrying a `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;

/// Of the established TCP sockets with local port `port` (the server side of every
/// connection to a server on that port), how many there are, and how many have received at
/// least `min_segs` segments carrying data (`tcpi_data_segs_in`).
///
/// A TLS session has received at least three once it is past its handshake: the client
/// sends its ClientHello, then its Finished (after the server's first flight), then
/// application data, which the load clients only send once the handshake is done (the
/// Finished and the first message may share a segment: then the second message, sent after
/// the first echo, makes the third). Counting those tells, without the load client's help,
/// when every session is connected *and* done with its handshake.
pub fn established_and_past_segs_on_port(port: u16, min_segs: u32) -> io::Result<(usize, usize)> {
    let (mut all, mut past) = (0, 0);
    sock_diag_dump(port, true, |info| {
        all += 1;
        let segs = info
            .and_then(|i| i.get(TCPI_DATA_SEGS_IN..TCPI_DATA_SEGS_IN + 4))
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
        if segs.is_some_and(|n| n >= min_segs) {
            past += 1;
        }
    })?;
    Ok((all, past))
}

/// Calls `each` for every established IPv4 TCP socket with local port `port`, with its
/// `struct tcp_info` (as the kernel sent it, maybe shorter than today's) when `info` asks
/// for it.
fn sock_diag_dump(port: u16, info: bool, mut each: impl FnMut(Option<&[u8]>)) -> io::Result<()> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const TCP_ESTABLISHED: u32 = 1;
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes), native endian except the socket id.
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    req[16] = libc::AF_INET as u8;
    req[17] = libc::IPPROTO_TCP as u8;
    if info {
        req[18] = 1 << (INET_DIAG_INFO - 1); // idiag_ext
    }
    req[20..24].copy_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes());
    // SAFETY: an all-zero sockaddr_nl (pid 0, groups 0) addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `req` and `kernel` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd.0,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent != req.len() as isize {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; if info { 256 * 1024 } else { 64 * 1024 }];
    loop {
        // SAFETY: `buf` is valid and writable for its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let data = &buf[..n as usize];
        let mut at = 0;
        while at + 16 <= data.len() {
            let len = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(data[at + 4..at + 6].try_into().unwrap());
            if len < 16 || at + len > data.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad netlink message"));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(data[at + 16..at + 20].try_into().unwrap());
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => {
                    // inet_diag_msg: family, state, timer, retrans, then the socket id,
                    // whose first field is the source port, big-endian.
                    let msg = &data[at + 16..at + len];
                    if msg.len() >= 8 && u16::from_be_bytes([msg[4], msg[5]]) == port {
                        each(if info { attribute(msg, INET_DIAG_INFO) } else { None });
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// The payload of the first attribute of type `kind` after the 72-byte `inet_diag_msg`.
fn attribute(msg: &[u8], kind: u16) -> Option<&[u8]> {
    let mut at = 72;
    while at + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if len < 4 || at + len > msg.len() {
            return None;
        }
        if ty == kind {
            return Some(&msg[at + 4..at + len]);
        }
        at += (len + 3) & !3;
    }
    None
}

/// Counts the `/proc/net/tcp` lines with local port `port` and state `01` (ESTABLISHED).
pub fn count_established(text: &str, port: u16) -> usize {
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_ascii_whitespace();
            let (_sl, local, _remote, state) = (f.next(), f.next(), f.next(), f.next());
            matches!((local, state), (Some(l), Some("01")) if l.ends_with(&want))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_plain_comm() {
        let s = "4242 (servercore) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 37 0 0 20 0 3 0 \
                 987654 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(s), Some(187));
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        // A comm of ") (x) 1 2 3 (" must not shift the fields.
        let s = "77 () (x) 1 2 3 () R 1 77 77 0 -1 0 0 0 0 0 9 1 0 0 20 0 1 0 5 6 7";
        assert_eq!(parse_stat_cpu_ticks(s), Some(10));
        let s = "78 (a b c) S 1 2 3 4 5 6 7 8 9 10 11 12 0 0";
        assert_eq!(parse_stat_cpu_ticks(s), Some(23));
    }

    #[test]
    fn stat_malformed() {
        assert_eq!(parse_stat_cpu_ticks(""), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2 3 4 5 6 7 8 9 ten 11"), None);
    }

    #[test]
    fn stat_of_this_process() {
        let ticks = cpu_ticks(std::process::id()).unwrap();
        assert!(ticks < u64::MAX / 2);
    }

    #[test]
    fn machine_ticks_and_kernel_threads() {
        let s = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\n";
        let want = MachineTicks { busy: 10 + 1 + 5 + 2 + 3, steal: 4 };
        assert_eq!(parse_machine_ticks(s), Some(want));
        assert_eq!(parse_machine_ticks("cpu  1 2 3\n"), None);
        assert!(machine_ticks().is_ok());
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 3 4 0 0 20 0 1 0 0 0";
        assert_eq!(parse_stat_flags_and_ticks(kthread), Some((2_129_984, 7)));
        assert_ne!(2_129_984 & PF_KTHREAD, 0);
        let _ = kernel_threads_ticks();
    }

    #[test]
    fn status_memory() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status_memory(s), Some(Memory { rss_kib: 1024, hwm_kib: 2048 }));
        assert_eq!(parse_status_memory("Name:\tx\n"), None);
        assert!(memory(std::process::id()).unwrap().hwm_kib > 0);
    }

    #[test]
    fn sock_diag_counts_a_live_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(established_on_port(port).unwrap(), 0);
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(sock_diag_established(port).unwrap(), 2);
    }

    #[test]
    fn sock_diag_counts_data_segments_in() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        a.set_nodelay(true).unwrap();
        let (_sa, _) = listener.accept().unwrap();
        for _ in 0..3 {
            a.write_all(b"x").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (all, past) = established_and_past_segs_on_port(port, 3).unwrap();
        assert_eq!((all, past), (2, 1));
    }

    #[test]
    fn net_tcp_counting() {
        let s = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1\n\
   1: 0100007F:1B58 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2 1\n\
   2: 0100007F:C350 0100007F:1B58 01 00000000:00000000 00:00000000 00000000  1000        0 3 1\n\
   3: 0100007F:1B58 0100007F:C351 06 00000000:00000000 00:00000000 00000000  1000        0 4 1\n\
   4: 0100007F:1B58 0100007F:C352 01 00000000:00000000 00:00000000 00000000  1000        0 5 1\n";
        assert_eq!(count_established(s, 7000), 2);
        assert_eq!(count_established(s, 50000), 1);
        assert_eq!(count_established(s, 1), 0);
    }
}
