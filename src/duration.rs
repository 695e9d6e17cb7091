//! Human durations as users and operators write them: `45s`, `15m`, `2h`, `1h30m`, `1d`.
//!
//! The configuration takes the compact form only ([`HumanDuration::from_str`]). What people
//! type after `/jit request` or `/jit extend` is read by [`read_typed`], which also takes
//! the forms people use — `90min`, `1.5h`, `1h 30m`, `2 hours`, `45 minutes` — and either
//! reads a duration exactly or refuses it quoting what was typed; it never guesses.

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
    /// Typed text (a command, a form) that looks like a duration but is not one.
    #[error("`{0}` is not a duration; write it like `45m`, `90min`, `2h`, `1.5h`, `1h 30m` or `2 hours`")]
    NotTyped(String),
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

/// Seconds in one of the unit words people type (lower case).
fn unit_secs(word: &str) -> Option<u64> {
    Some(match word {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    })
}

/// A number as typed: whole part and decimal digits (`1.5` → 1, "5").
struct Number<'a> {
    whole: &'a str,
    fraction: &'a str,
}

/// Splits a leading number (`90`, `1.5`, `.5`) off `text`.
fn leading_number(text: &str) -> Option<(Number<'_>, &str)> {
    let whole_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (whole, rest) = text.split_at(whole_end);
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
            after.split_at(end)
        }
        None => ("", rest),
    };
    (!whole.is_empty() || !fraction.is_empty()).then_some((Number { whole, fraction }, rest))
}

/// `number × unit` in whole seconds, or `None` when it is not whole or too big.
fn term_secs(n: &Number<'_>, unit: u64) -> Option<u64> {
    if n.whole.len() > 9 || n.fraction.len() > 6 {
        return None;
    }
    let whole: u64 = if n.whole.is_empty() { 0 } else { n.whole.parse().ok()? };
    let mut secs = whole.checked_mul(unit)?;
    if !n.fraction.is_empty() {
        let scale = 10u64.pow(n.fraction.len() as u32);
        let part = n.fraction.parse::<u64>().ok()?.checked_mul(unit)?;
        if part % scale != 0 {
            return None;
        }
        secs = secs.checked_add(part / scale)?;
    }
    Some(secs)
}

/// How one word in the duration position reads.
enum Word {
    /// Terms like `2h`, `1h30m`, `1.5h`, `90min`: (seconds, unit rank) each.
    Terms(Vec<(u64, u64)>),
    /// A number alone (`2`, `1.5`): a duration only with a unit word after it.
    Number,
    /// Not meant as a duration (`fixing`, `2fa`, `24x7`): the reason starts here.
    NotDuration,
    /// Meant as a duration, but not one (`1.5x`, `90mins?`, `2h30`).
    Malformed,
}

fn read_word(word: &str) -> Word {
    let lower = word.to_ascii_lowercase();
    let Some((first, rest)) = leading_number(&lower) else {
        return Word::NotDuration;
    };
    if rest.is_empty() {
        return Word::Number;
    }
    let alpha = |t: &str| t.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(t.len());
    // A decimal number, or a number followed by a unit word, was meant as a duration.
    let unit_like = unit_secs(&rest[..alpha(rest)]).is_some();
    if !first.fraction.is_empty() || lower.starts_with('.') {
        if !unit_like {
            return Word::Malformed;
        }
    } else if !unit_like {
        return Word::NotDuration;
    }
    let mut terms = Vec::new();
    let (mut number, mut rest) = (first, rest);
    loop {
        let end = alpha(rest);
        let Some(unit) = unit_secs(&rest[..end]) else {
            return Word::Malformed;
        };
        let Some(secs) = term_secs(&number, unit) else {
            return Word::Malformed;
        };
        terms.push((secs, unit));
        rest = &rest[end..];
        if rest.is_empty() {
            return Word::Terms(terms);
        }
        match leading_number(rest) {
            Some((n, after)) if !after.is_empty() => (number, rest) = (n, after),
            _ => return Word::Malformed,
        }
    }
}

/// Reads the duration at the start of `words` (the words after the resource, or after the
/// request id of `extend`). Returns the duration, if the first word starts one, and how
/// many words it took; the reason starts after them.
///
/// The duration is the run of words that form one: terms like `2h`, `1h30m`, `1.5h`,
/// `90min`, or a number followed by a unit word (`2 hours`, `45 minutes`), each unit at
/// most once and from the largest unit down (`1h 30m`, not `30m 1h`). It ends at the first
/// word that does not start with a number (`2fa` and `24x7` do not count: they are not a
/// number and a unit). A word that starts like a duration but is not one (`1.5x`,
/// `90mins?`, a number without unit) is refused, quoting what was typed.
pub fn read_typed(words: &[&str]) -> Result<(Option<HumanDuration>, usize), DurationError> {
    let mut total: u64 = 0;
    let mut last_unit = u64::MAX;
    let mut i = 0;
    let quoted = |end: usize| words[..end.min(words.len())].join(" ");
    while i < words.len() {
        let (terms, used) = match read_word(words[i]) {
            Word::NotDuration => break,
            Word::Malformed => return Err(DurationError::NotTyped(quoted(i + 1))),
            Word::Terms(t) => (t, 1),
            Word::Number => {
                let next = words.get(i + 1).map(|w| w.to_ascii_lowercase());
                let Some(unit) = next.as_deref().and_then(unit_secs) else {
                    // `90 mins?`: the unit word is there but spoilt; quote both.
                    let spoilt = next.as_deref().is_some_and(|n| {
                        let end = n.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(n.len());
                        end > 0 && unit_secs(&n[..end]).is_some()
                    });
                    return Err(DurationError::NotTyped(quoted(i + 1 + usize::from(spoilt))));
                };
                let Some((n, _)) = leading_number(words[i]) else {
                    return Err(DurationError::NotTyped(quoted(i + 1)));
                };
                match term_secs(&n, unit) {
                    Some(secs) => (vec![(secs, unit)], 2),
                    None => return Err(DurationError::NotTyped(quoted(i + 2))),
                }
            }
        };
        for (secs, unit) in terms {
            if unit >= last_unit {
                return Err(DurationError::NotTyped(quoted(i + used)));
            }
            last_unit = unit;
            total = total.saturating_add(secs);
        }
        i += used;
    }
    if i == 0 {
        return Ok((None, 0));
    }
    if total == 0 {
        return Err(DurationError::Zero(quoted(i)));
    }
    if total > MAX_SECONDS {
        return Err(DurationError::TooLong(quoted(i)));
    }
    Ok((Some(HumanDuration(total)), i))
}

/// Reads a whole text as one duration in any form [`read_typed`] takes (a form field).
pub fn parse_typed(text: &str) -> Result<HumanDuration, DurationError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match read_typed(&words)? {
        (Some(d), used) if used == words.len() => Ok(d),
        (None, _) if words.is_empty() => Err(DurationError::Empty),
        _ => Err(DurationError::NotTyped(text.trim().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn typed(text: &str) -> Result<(Option<u64>, usize), DurationError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        read_typed(&words).map(|(d, n)| (d.map(HumanDuration::as_secs), n))
    }

    #[test]
    fn reads_the_forms_people_type() {
        let cases = [
            ("90m fix", 5400, 1),
            ("90min fix", 5400, 1),
            ("90mins fix", 5400, 1),
            ("1.5h fix", 5400, 1),
            ("1h 30m fix", 5400, 2),
            ("1h30m fix", 5400, 1),
            ("2 hours fix", 7200, 2),
            ("2 Hours", 7200, 2),
            ("45 minutes fixing prod", 2700, 2),
            ("1 hour 30 minutes x", 5400, 4),
            ("2hrs x", 7200, 1),
            ("1d", 86_400, 1),
            (".5h x", 1800, 1),
        ];
        for (text, secs, used) in cases {
            assert_eq!(typed(text).unwrap(), (Some(secs), used), "{text}");
        }
    }

    #[test]
    fn the_reason_starts_at_the_first_word_that_is_not_a_duration() {
        assert_eq!(typed("2fa reset").unwrap(), (None, 0));
        assert_eq!(typed("24x7 support").unwrap(), (None, 0));
        assert_eq!(typed("fixing 2h").unwrap(), (None, 0));
        assert_eq!(typed("2h 3rd attempt").unwrap(), (Some(7200), 1));
        assert_eq!(typed("").unwrap(), (None, 0));
    }

    #[test]
    fn what_looks_like_a_duration_but_is_not_is_refused_as_typed() {
        for (text, quoted) in [
            ("1.5x fix", "1.5x"),
            ("90 mins? fix", "90 mins?"),
            ("90mins? fix", "90mins?"),
            ("2 fix it", "2"),
            ("2h30 fix", "2h30"),
            ("30m 1h fix", "30m 1h"),
            ("1h 1h fix", "1h 1h"),
            ("1h 2 servers", "1h 2"),
            ("0.0001h x", "0.0001h"),
            ("0m x", "0m"),
            ("400d x", "400d"),
        ] {
            let e = typed(text).unwrap_err();
            assert!(e.to_string().contains(&format!("`{quoted}`")), "{text}: {e}");
        }
    }

    #[test]
    fn a_whole_field_is_one_duration() {
        assert_eq!(parse_typed(" 1h 30m ").unwrap().as_secs(), 5400);
        assert!(parse_typed("1h fixing").is_err());
        assert!(parse_typed("  ").is_err());
    }

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
            let _ = parse_typed(&text);
        }

        #[test]
        fn a_typed_duration_is_read_exactly_or_refused(n in 1u64..500, unit in 0usize..8, rest in "[a-z ]{0,12}") {
            let (word, secs) = [("m", 60), ("min", 60), ("minutes", 60), ("h", 3600), ("hours", 3600),
                                ("hrs", 3600), ("d", 86_400), ("s", 1)][unit];
            for text in [format!("{n}{word} {rest}"), format!("{n} {word} {rest}")] {
                let words: Vec<&str> = text.split_whitespace().collect();
                match read_typed(&words) {
                    Ok((Some(d), _)) => prop_assert_eq!(d.as_secs(), n * secs),
                    Ok((None, _)) => prop_assert!(false, "{} was dropped", text),
                    Err(e) => prop_assert!(e.to_string().contains(&n.to_string()), "{}: {}", text, e),
                }
            }
        }
    }
}
