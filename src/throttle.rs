//! A per-key rate limit over a sliding minute: who may send how many commands. In memory
//! only: a restart forgets it, which costs an attacker nothing they could not get by
//! waiting a minute.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Counts events per key in the last 60 s.
#[derive(Debug, Default)]
pub struct RateLimiter {
    seen: Mutex<HashMap<String, VecDeque<i64>>>,
}

/// The window, in milliseconds.
const WINDOW_MS: i64 = 60_000;

impl RateLimiter {
    /// Records an event for `key` at `now_ms` unless `key` already had `per_minute` in the
    /// last minute. `Err` holds how many seconds until the next one is allowed.
    pub fn check(&self, key: &str, per_minute: u32, now_ms: i64) -> Result<(), u64> {
        let mut map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, times| times.back().is_some_and(|t| now_ms.saturating_sub(*t) < WINDOW_MS));
        }
        let times = map.entry(key.to_string()).or_default();
        while times.front().is_some_and(|t| now_ms.saturating_sub(*t) >= WINDOW_MS) {
            times.pop_front();
        }
        if times.len() >= per_minute as usize {
            let oldest = times.front().copied().unwrap_or(now_ms);
            let wait_ms = WINDOW_MS.saturating_sub(now_ms.saturating_sub(oldest)).max(1000);
            return Err((wait_ms as u64).div_ceil(1000));
        }
        times.push_back(now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_per_minute_then_refuses_until_the_window_moves() {
        let r = RateLimiter::default();
        for i in 0..3 {
            assert_eq!(r.check("U1", 3, 1_000 + i), Ok(()));
        }
        assert!(r.check("U1", 3, 2_000).is_err());
        assert_eq!(r.check("U2", 3, 2_000), Ok(()), "per key");
        assert_eq!(r.check("U1", 3, 61_001), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_clock(times in proptest::collection::vec(proptest::num::i64::ANY, 0..50), limit in 1u32..5) {
            let r = RateLimiter::default();
            for t in times {
                let _ = r.check("k", limit, t);
            }
        }
    }
}
