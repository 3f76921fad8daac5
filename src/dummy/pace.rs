//! Open-loop pacing (`--rate`): a session sends on a timer, whatever the replies do.

use std::time::Duration;

/// Timer token of the pacing interval (0 is the chat lag-retry timer).
pub const RATE_TOKEN: u64 = 1;
/// Timer token of a session's first, phase-shifted tick (see [`Pace::phase`]).
pub const PHASE_TOKEN: u64 = 2;

/// A per-session sending rate, turned into a timer period and a count per tick.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    period: Duration,
    per_tick: f64,
    credit: f64,
}

impl Pace {
    /// `rate` messages per second (timers have millisecond resolution: above 1000/s a tick
    /// sends several).
    pub fn new(rate: f64) -> Pace {
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_millis(1));
        Pace { period, per_tick: rate * period.as_secs_f64(), credit: 0.0 }
    }

    /// The timer period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// When this session's pacing starts, within one period: sessions connect almost at
    /// once, and without a phase of their own they would all send in the same instant of
    /// every period, so the server would see bursts, not a steady rate. `seed` (the
    /// session id) spreads them evenly over the period.
    pub fn phase(&self, seed: u64) -> Duration {
        // Fibonacci hashing: consecutive ids land far apart in [0, 1).
        let frac = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) as f64 / 2f64.powi(64);
        self.period.mul_f64(frac)
    }

    /// Messages due at this tick (fractions carry over).
    pub fn tick(&mut self) -> u64 {
        self.credit += self.per_tick;
        let n = self.credit.floor();
        self.credit -= n;
        n as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn pace_sends_the_rate_over_time() {
        for rate in [0.5, 3.0, 250.0, 1000.0, 4500.0] {
            let mut p = Pace::new(rate);
            let ticks = (10.0 / p.period().as_secs_f64()).round() as u64; // 10 s
            let sent: u64 = (0..ticks).map(|_| p.tick()).sum();
            let want = rate * 10.0;
            assert!((sent as f64 - want).abs() <= 1.0, "rate {rate}: {sent} vs {want}");
        }
    }

    #[test]
    fn phases_spread_sessions_over_the_period() {
        let p = Pace::new(5.0); // 200 ms
        let mut buckets = [0u32; 10];
        for id in 1..=1000u64 {
            let ph = p.phase(id);
            assert!(ph < p.period(), "{ph:?}");
            buckets[(ph.as_secs_f64() / p.period().as_secs_f64() * 10.0) as usize] += 1;
        }
        // Every tenth of the period gets about a tenth of the sessions.
        assert!(buckets.iter().all(|&n| (80..=120).contains(&n)), "{buckets:?}");
    }
}
