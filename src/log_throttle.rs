//! Rate-limited logging: during an outage the same warning would otherwise be written
//! for every failed call (a thousand lines a second when Slack refuses connections).
//! One line per interval, with the number of occurrences it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one log line through per `interval`; counts the rest.
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records one occurrence at `now`. Returns `Some(n)` when a line should be written
    /// now, `n` being the occurrences it stands for (this one and those held back since
    /// the last line); `None` to stay quiet.
    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => None,
            _ => {
                let n = state.1;
                *state = (Some(now), 0);
                Some(n)
            }
        }
    }

    /// [`LogThrottle::hit_at`] with the current time.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    /// Forgets the interval (the trouble is over): the next occurrence is logged at once.
    pub fn reset(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (None, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.hit_at(start), Some(1));
        for i in 1..1000 {
            assert_eq!(t.hit_at(start + Duration::from_millis(i)), None);
        }
        assert_eq!(t.hit_at(start + Duration::from_secs(10)), Some(1000));
        t.reset();
        assert_eq!(t.hit_at(start + Duration::from_secs(11)), Some(1));
    }
}
