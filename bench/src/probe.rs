//! The latency probe of the cluster row (issue 15): one chat session per `--addr` (one per
//! node of a cluster; the same address twice for a single server), in the room next to the
//! dummy-client's sessions. The sessions take turns sending a C_CHAT at a low, fixed rate
//! and every session times every probe message it receives, in one process and on one clock:
//! a delivery to a session on the sender's own node is *local*, one to a session on another
//! node *cross-node*.
//!
//! The payload is ASCII text, `probe FROM SEQ T_NS` (sender index, sequence number, send
//! time in ns since the probe started): the dummy-client counts such text messages of other
//! clients as foreign and leaves them out of its figures and checks (the rule of the browser
//! page, PROTOCOL.md section 6). The probe reads everything the room sends it (all the
//! load's deliveries too), counts it, and checks the order of its own messages.
//!
//! Blocking sockets: a reader thread per session, the sender in the calling thread.

use hdrhistogram::Histogram;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEADER: usize = 4;
const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
const PREFIX: &[u8] = b"probe ";

/// What one reader saw.
struct Seen {
    local: Histogram<u64>,
    cross: Histogram<u64>,
    /// Every S_CHAT received (the load's deliveries and the probe's).
    received: u64,
    /// Probe messages out of order or repeated, per sender.
    disorder: u64,
    error: Option<String>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            local: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            cross: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            received: 0,
            disorder: 0,
            error: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct ProbeReport {
    pub secs: f64,
    pub sent: u64,
    pub received: u64,
    pub local: Percentiles,
    pub cross: Percentiles,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
        }
    }

    fn json(&self) -> String {
        if self.samples == 0 {
            return "{\"samples\":0,\"p50_us\":null,\"p99_us\":null}".to_string();
        }
        format!(
            "{{\"samples\":{},\"p50_us\":{},\"p99_us\":{}}}",
            self.samples, self.p50_us, self.p99_us
        )
    }
}

impl ProbeReport {
    pub fn to_json(&self) -> String {
        let err = match &self.first_error {
            Some(e) => format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\"")),
            None => "null".into(),
        };
        let secs = self.secs.max(1e-9);
        format!(
            "{{\"mode\":\"cluster-probe\",\"secs\":{:.3},\"sent\":{},\"sent_per_sec\":{:.1},\
             \"received\":{},\"received_per_sec\":{:.1},\"local\":{},\"cross\":{},\
             \"errors\":{},\"first_error\":{}}}",
            self.secs,
            self.sent,
            self.sent as f64 / secs,
            self.received,
            self.received as f64 / secs,
            self.local.json(),
            self.cross.json(),
            self.errors,
            err
        )
    }
}

/// The payload of probe message `seq` of sender `from`, sent `t_ns` after the start.
pub fn payload(from: usize, seq: u64, t_ns: u64) -> Vec<u8> {
    format!("probe {from} {seq} {t_ns}").into_bytes()
}

/// (from, seq, t_ns) of a probe payload; `None` for anything else.
pub fn parse_payload(p: &[u8]) -> Option<(usize, u64, u64)> {
    let text = std::str::from_utf8(p.strip_prefix(PREFIX)?).ok()?;
    let mut f = text.split(' ');
    let from = f.next()?.parse().ok()?;
    let seq = f.next()?.parse().ok()?;
    let t = f.next()?.parse().ok()?;
    f.next().is_none().then_some((from, seq, t))
}

fn packet(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER + payload.len());
    p.extend_from_slice(&((HEADER + payload.len()) as u16).to_le_bytes());
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// Runs the probe: `rate` probe messages per second in all, for `secs` seconds.
pub fn run(addrs: &[SocketAddr], rate: f64, secs: f64) -> Result<ProbeReport, String> {
    if addrs.is_empty() {
        return Err("no --addr".into());
    }
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("--rate must be positive, got {rate}"));
    }
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (me, &addr) in addrs.iter().enumerate() {
        let sock = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        let reader = sock.try_clone().map_err(|e| e.to_string())?;
        writers.push(sock);
        let node_of: Vec<SocketAddr> = addrs.to_vec();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || read_loop(reader, me, &node_of, start, &stop)));
    }
    // Let every session join before the first message.
    std::thread::sleep(Duration::from_millis(50));
    let period = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs.max(0.0));
    let mut sent = 0u64;
    let mut first_error = None;
    let mut next = t0;
    while next < end {
        let from = (sent % addrs.len() as u64) as usize;
        let seq = sent / addrs.len() as u64;
        let t_ns = start.elapsed().as_nanos() as u64;
        let p = packet(C_CHAT, &payload(from, seq, t_ns));
        if let Err(e) = writers[from].write_all(&p) {
            first_error = Some(format!("send to {}: {e}", addrs[from]));
            break;
        }
        sent += 1;
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    // The last messages' deliveries.
    std::thread::sleep(Duration::from_millis(100));
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut cross = local.clone();
    let mut received = 0;
    let mut errors = u64::from(first_error.is_some());
    for r in readers {
        let seen = r.join().map_err(|_| "a probe reader panicked".to_string())?;
        local.add(&seen.local).map_err(|e| e.to_string())?;
        cross.add(&seen.cross).map_err(|e| e.to_string())?;
        received += seen.received;
        errors += seen.disorder + u64::from(seen.error.is_some());
        if first_error.is_none() {
            first_error.clone_from(&seen.error);
            if seen.disorder > 0 && first_error.is_none() {
                first_error = Some(format!("{} probe messages out of order", seen.disorder));
            }
        }
    }
    // Every probe message reaches every probe session.
    let expected = sent * addrs.len() as u64;
    if local.len() + cross.len() < expected && first_error.is_none() {
        errors += expected - local.len() - cross.len();
        first_error = Some(format!(
            "{} of {expected} probe deliveries missing",
            expected - local.len() - cross.len()
        ));
    }
    Ok(ProbeReport {
        secs: elapsed,
        sent,
        received,
        local: Percentiles::of(&local),
        cross: Percentiles::of(&cross),
        errors,
        first_error,
    })
}

/// Reads session `me`'s stream until `stop` (or the end of the stream), timing the probe
/// messages.
fn read_loop(
    mut sock: TcpStream,
    me: usize,
    node_of: &[SocketAddr],
    start: Instant,
    stop: &AtomicBool,
) -> Seen {
    let mut seen = Seen::new();
    let mut next_seq = vec![0u64; node_of.len()];
    let mut buf = vec![0u8; 256 * 1024];
    let mut have = 0;
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.read(&mut buf[have..]) {
            Ok(0) => {
                seen.error = Some(format!("{} closed the probe session", node_of[me]));
                break;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                seen.error = Some(format!("read from {}: {e}", node_of[me]));
                break;
            }
        };
        let now_ns = start.elapsed().as_nanos() as u64;
        have += n;
        let mut at = 0;
        while have - at >= HEADER {
            let size = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
            let id = u16::from_le_bytes([buf[at + 2], buf[at + 3]]);
            if size < HEADER || id != S_CHAT {
                seen.error = Some(format!("bad packet from {}: size {size}, id {id}", node_of[me]));
                return seen;
            }
            if have - at < size {
                break;
            }
            seen.received += 1;
            if let Some((from, seq, t)) = parse_payload(&buf[at + HEADER..at + size]) {
                if let Some(want) = next_seq.get_mut(from) {
                    if seq != *want {
                        seen.disorder += 1;
                    }
                    *want = seq + 1;
                    let us = (now_ns.saturating_sub(t) / 1000).max(1);
                    let h = if node_of[from] == node_of[me] {
                        &mut seen.local
                    } else {
                        &mut seen.cross
                    };
                    h.saturating_record(us);
                }
            }
            at += size;
        }
        buf.copy_within(at..have, 0);
        have -= at;
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_are_plain_text() {
        let p = payload(1, 42, 123_456_789);
        assert_eq!(parse_payload(&p), Some((1, 42, 123_456_789)));
        assert!(std::str::from_utf8(&p).unwrap().bytes().all(|b| (b' '..0x7f).contains(&b)));
        assert_eq!(parse_payload(b"probe 1 2"), None);
        assert_eq!(parse_payload(b"probe 1 2 3 4"), None);
        assert_eq!(parse_payload(b"bot: hi"), None);
        assert_eq!(parse_payload(&[0u8; 64]), None);
    }
}
