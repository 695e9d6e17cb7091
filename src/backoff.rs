//! How long to wait before trying again: shared by jobs (grants, revokes) and by delivery
//! to Slack.

use std::time::Duration;

/// How long to wait before attempt `attempt + 1` (attempt counts from 1): doubling from
/// `initial`, capped at `max`, with "equal jitter" (half fixed, half random) so that many
/// failing jobs do not retry in lockstep. `random` is in `[0, 1)`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32, random: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    let capped = initial.saturating_mul(factor).min(max);
    capped / 2 + capped.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(300), 1, 1.0), s(5));
        assert_eq!(backoff(s(5), s(300), 2, 1.0), s(10));
        assert_eq!(backoff(s(5), s(300), 3, 0.0), s(10));
        assert_eq!(backoff(s(5), s(300), 50, 1.0), s(300));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_and_full_of_the_capped_delay(attempt in 0u32..100, r in 0.0f64..1.0) {
            let d = backoff(Duration::from_secs(2), Duration::from_secs(600), attempt, r);
            prop_assert!(d >= Duration::from_secs(1));
            prop_assert!(d <= Duration::from_secs(600));
        }
    }
}
