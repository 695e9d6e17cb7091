//! Human durations as users and operators write them: `45s`, `15m`, `2h`, `1h30m`, `1d`.

use std::fmt;
use std::str::FromStr;

/// A whole number of seconds, parsed from and shown as `1h30m`-style text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(u64);

/// Longest duration accepted anywhere: one year. Keeps arithmetic far from overflow.
const MAX_SECONDS: u64 = 366 * 86_400;

impl HumanDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// Length in seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// As a `std::time::Duration`.
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    /// As a `chrono::Duration`.
    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.0 as i64)
    }
}

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; write it like 45s, 15m, 2h, 1h30m or 1d")]
    Empty,
    #[error("`{0}` is not a duration; write it like 45s, 15m, 2h, 1h30m or 1d")]
    Malformed(String),
    #[error("`{0}` is zero; a duration must be at least 1s")]
    Zero(String),
    #[error("`{0}` is longer than a year")]
    TooLong(String),
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DurationError::Empty);
        }
        let malformed = || DurationError::Malformed(trimmed.to_string());
        let lower = trimmed.to_ascii_lowercase();
        let mut total: u64 = 0;
        let mut digits = String::new();
        // Units must appear in decreasing order, each at most once: `1h30m`, not `30m1h`.
        let mut last_unit_rank = u8::MAX;
        for ch in lower.chars() {
            if ch.is_ascii_digit() {
                if digits.len() >= 9 {
                    return Err(DurationError::TooLong(trimmed.to_string()));
                }
                digits.push(ch);
                continue;
            }
            let (rank, unit) = match ch {
                'd' => (3, 86_400),
                'h' => (2, 3_600),
                'm' => (1, 60),
                's' => (0, 1),
                _ => return Err(malformed()),
            };
            if digits.is_empty() || rank >= last_unit_rank {
                return Err(malformed());
            }
            last_unit_rank = rank;
            let n: u64 = digits.parse().map_err(|_| malformed())?;
            digits.clear();
            total = total.saturating_add(n.saturating_mul(unit));
        }
        if !digits.is_empty() {
            // A bare number has no unit; refuse rather than guess minutes or hours.
            return Err(malformed());
        }
        if total == 0 {
            return Err(DurationError::Zero(trimmed.to_string()));
        }
        if total > MAX_SECONDS {
            return Err(DurationError::TooLong(trimmed.to_string()));
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            let n = rest / secs;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize`, so that `max_duration = 4` is
        // answered with what a duration looks like rather than "expected a string".
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in quotes, like \"2h\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                text.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_documented_forms() {
        let cases = [
            ("45s", 45),
            ("15m", 900),
            ("2h", 7200),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("1D2H", 93_600),
        ];
        for (text, secs) in cases {
            assert_eq!(text.parse::<HumanDuration>().unwrap().as_secs(), secs, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for text in ["", "2", "h", "2x", "30m1h", "1h1h", "-1h", "1.5h", "2 h", "0s", "400d"] {
            assert!(text.parse::<HumanDuration>().is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn shows_the_compact_form() {
        assert_eq!(HumanDuration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(HumanDuration::from_secs(86_401).to_string(), "1d1s");
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(secs in 1u64..=MAX_SECONDS) {
            let d = HumanDuration::from_secs(secs);
            prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,20}") {
            let _ = text.parse::<HumanDuration>();
        }
    }
}
