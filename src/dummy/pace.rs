//! Open-loop pacing (`--rate`): a session sends on a timer, whatever the replies do.

use std::time::Duration;

/// Timer token of the pacing interval (0 is the chat lag-retry timer).
pub const RATE_TOKEN: u64 = 1;

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
}
