//! `type = "static"`: an on-call rotation written in the configuration.
//!
//! Shifts hand off at a local wall-clock time in the rotation's IANA time zone and last a
//! whole number of calendar days, so a weekly Monday 09:00 handoff stays at 09:00 local
//! across daylight-saving changes (that week is then 167 or 169 hours long). Local times
//! that do not exist or exist twice are resolved the way calendar software does: a time
//! in a spring-forward gap moves later by the length of the gap, and a time repeated at a
//! fall-back takes its first occurrence.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// A validated static rotation.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Shown in evidence and notices.
    pub schedule_name: String,
    /// Slack user IDs in rotation order; `members[0]` has the shift starting on `start`.
    pub members: Vec<String>,
    pub tz: Tz,
    /// The local date of the first handoff.
    pub start: NaiveDate,
    pub handoff_time: NaiveTime,
    /// Length of one shift in calendar days (≥ 1).
    pub rotation_days: i64,
    /// Dated replacements: during `[start, end)` `user` is on call instead.
    pub overrides: Vec<RotationOverride>,
}

/// Someone covering a stretch of the rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationOverride {
    pub user: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Who is on call at an instant, and for which stretch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    pub user: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// True when an override, not the rotation, put `user` here.
    pub overridden: bool,
}

/// The instant a local wall-clock time in `tz` stands for (see the module comment for
/// times that do not exist or exist twice).
pub fn resolve_local(tz: &Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: read the wall time with the offset in force before the gap, which
            // lands after the transition, later by the gap's length. No zone changes its
            // offset twice within a day, so the offset a day earlier is the one before.
            let day_before = local - Duration::days(1);
            let offset = tz.offset_from_utc_datetime(&day_before).fix();
            DateTime::from_naive_utc_and_offset(local - offset, Utc)
        }
    }
}

impl Rotation {
    /// When shift `k` begins (shift 0 begins at `start` + `handoff_time`, local).
    pub fn handoff(&self, k: i64) -> DateTime<Utc> {
        let day = self.start + Duration::days(k * self.rotation_days);
        resolve_local(&self.tz, day.and_time(self.handoff_time))
    }

    /// The index of the shift running at `t` (negative before the rotation began).
    pub fn shift_index(&self, t: DateTime<Utc>) -> i64 {
        let local = t.with_timezone(&self.tz).naive_local();
        let mut days = (local.date() - self.start).num_days();
        if local.time() < self.handoff_time {
            days -= 1;
        }
        let mut k = days.div_euclid(self.rotation_days);
        // The estimate is off by at most one around a handoff that a DST change moved;
        // settle it on the instants themselves. Handoffs never go backwards in time.
        for _ in 0..4 {
            if t < self.handoff(k) {
                k -= 1;
            } else if t >= self.handoff(k + 1) {
                k += 1;
            } else {
                break;
            }
        }
        k
    }

    /// Who is on call at `t`, with the stretch; `None` before the rotation began.
    pub fn on_call_at(&self, t: DateTime<Utc>) -> Option<Shift> {
        if let Some(o) = self.overrides.iter().find(|o| o.start <= t && t < o.end) {
            return Some(Shift {
                user: o.user.clone(),
                start: o.start,
                end: o.end,
                overridden: true,
            });
        }
        let k = self.shift_index(t);
        if k < 0 || self.members.is_empty() {
            return None;
        }
        let n = self.members.len() as i64;
        Some(Shift {
            user: self.members[k.rem_euclid(n) as usize].clone(),
            start: self.handoff(k),
            end: self.handoff(k + 1),
            overridden: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};
    use proptest::prelude::*;

    fn rotation(tz: Tz, start: &str, handoff: &str, days: i64) -> Rotation {
        Rotation {
            schedule_name: "test".into(),
            members: vec!["U0A".into(), "U0B".into(), "U0C".into()],
            tz,
            start: NaiveDate::parse_from_str(start, "%Y-%m-%d").unwrap(),
            handoff_time: NaiveTime::parse_from_str(handoff, "%H:%M").unwrap(),
            rotation_days: days,
            overrides: vec![],
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekly_handoff_stays_at_nine_local_across_spring_forward() {
        // Europe/Berlin went from +01:00 to +02:00 on Sunday 2025-03-30.
        let r = rotation(chrono_tz::Europe::Berlin, "2025-03-24", "09:00", 7);
        assert_eq!(r.handoff(0), utc("2025-03-24T08:00:00Z"));
        assert_eq!(r.handoff(1), utc("2025-03-31T07:00:00Z"));
        assert_eq!(r.handoff(1) - r.handoff(0), Duration::hours(167));
        assert_eq!(r.on_call_at(utc("2025-03-31T06:59:59Z")).unwrap().user, "U0A");
        assert_eq!(r.on_call_at(utc("2025-03-31T07:00:00Z")).unwrap().user, "U0B");
    }

    #[test]
    fn weekly_handoff_stays_at_nine_local_across_fall_back() {
        // America/New_York went from -04:00 to -05:00 on Sunday 2025-11-02.
        let r = rotation(chrono_tz::America::New_York, "2025-10-27", "09:00", 7);
        assert_eq!(r.handoff(1) - r.handoff(0), Duration::hours(169));
        assert_eq!(r.on_call_at(utc("2025-11-03T13:59:59Z")).unwrap().user, "U0A");
        assert_eq!(r.on_call_at(utc("2025-11-03T14:00:00Z")).unwrap().user, "U0B");
    }

    #[test]
    fn a_handoff_inside_the_spring_gap_moves_later_by_the_gap() {
        // 02:30 does not exist in Berlin on 2025-03-30; the handoff happens at 03:30 CEST.
        let r = rotation(chrono_tz::Europe::Berlin, "2025-03-29", "02:30", 1);
        assert_eq!(r.handoff(1), utc("2025-03-30T01:30:00Z"));
        assert_eq!(r.on_call_at(utc("2025-03-30T01:29:59Z")).unwrap().user, "U0A");
        assert_eq!(r.on_call_at(utc("2025-03-30T01:30:00Z")).unwrap().user, "U0B");
    }

    #[test]
    fn a_handoff_at_a_repeated_time_happens_once_at_its_first_occurrence() {
        // 01:30 happens twice in New York on 2025-11-02; the handoff is the first (EDT).
        let r = rotation(chrono_tz::America::New_York, "2025-11-01", "01:30", 1);
        assert_eq!(r.handoff(1), utc("2025-11-02T05:30:00Z"));
        // During the second 01:30-02:00 the new shift continues: no flapping back.
        assert_eq!(r.on_call_at(utc("2025-11-02T06:45:00Z")).unwrap().user, "U0B");
    }

    #[test]
    fn nobody_is_on_call_before_the_rotation_starts() {
        let r = rotation(chrono_tz::UTC, "2025-01-06", "09:00", 7);
        assert_eq!(r.on_call_at(utc("2025-01-06T08:59:59Z")), None);
        assert_eq!(r.on_call_at(utc("2025-01-06T09:00:00Z")).unwrap().user, "U0A");
    }

    #[test]
    fn overrides_replace_the_rotation_for_their_stretch() {
        let mut r = rotation(chrono_tz::UTC, "2025-01-06", "09:00", 7);
        r.overrides.push(RotationOverride {
            user: "U0Z".into(),
            start: utc("2025-01-07T00:00:00Z"),
            end: utc("2025-01-08T00:00:00Z"),
        });
        let s = r.on_call_at(utc("2025-01-07T12:00:00Z")).unwrap();
        assert_eq!((s.user.as_str(), s.overridden), ("U0Z", true));
        assert_eq!(r.on_call_at(utc("2025-01-08T00:00:00Z")).unwrap().user, "U0A");
    }

    const ZONES: &[Tz] = &[
        chrono_tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::Europe::London,
        chrono_tz::America::New_York,
        chrono_tz::America::Sao_Paulo,
        chrono_tz::America::St_Johns,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::Asia::Kolkata,
        chrono_tz::Asia::Tehran,
        chrono_tz::Pacific::Chatham,
        chrono_tz::Pacific::Apia,
        chrono_tz::Africa::Casablanca,
        chrono_tz::Antarctica::Troll,
    ];

    fn any_rotation() -> impl Strategy<Value = Rotation> {
        (
            0..ZONES.len(),
            0i64..(365 * 30),
            0u32..24,
            0u32..60,
            prop_oneof![Just(1i64), Just(2), Just(7), Just(14)],
            1usize..5,
        )
            .prop_map(|(zone, day, h, m, days, n)| Rotation {
                schedule_name: "p".into(),
                members: (0..n).map(|i| format!("U0{i}")).collect(),
                tz: ZONES[zone],
                start: NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + Duration::days(day),
                handoff_time: NaiveTime::from_hms_opt(h, m, 0).unwrap(),
                rotation_days: days,
                overrides: vec![],
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_shift_found_contains_the_instant(r in any_rotation(), offset_secs in 0i64..(40 * 365 * 86_400)) {
            let t = utc("2000-01-01T00:00:00Z") + Duration::seconds(offset_secs);
            let k = r.shift_index(t);
            prop_assert!(r.handoff(k) <= t, "handoff({k}) = {} > {t}", r.handoff(k));
            prop_assert!(t < r.handoff(k + 1), "{t} >= handoff({}) = {}", k + 1, r.handoff(k + 1));
            match r.on_call_at(t) {
                None => prop_assert!(k < 0),
                Some(s) => {
                    prop_assert!(k >= 0);
                    prop_assert!(s.start <= t && t < s.end);
                    prop_assert_eq!(&s.user, &r.members[(k as usize) % r.members.len()]);
                }
            }
        }

        #[test]
        fn handoffs_fall_at_the_local_handoff_time_on_the_right_day(r in any_rotation(), k in 0i64..200) {
            let h = r.handoff(k);
            let local = h.with_timezone(&r.tz).naive_local();
            let day = r.start + Duration::days(k * r.rotation_days);
            let wall = day.and_time(r.handoff_time);
            if matches!(r.tz.from_local_datetime(&wall), LocalResult::None) {
                // Only inside a gap may the handoff move, and only later, by at most a day (Apia, 2011).
                prop_assert!(local > wall && local - wall <= Duration::days(1));
            } else {
                prop_assert_eq!(local, wall);
                prop_assert_eq!(local.weekday(), day.weekday());
            }
        }

        #[test]
        fn shifts_last_their_days_give_or_take_a_dst_change(r in any_rotation(), k in 0i64..200) {
            let len = r.handoff(k + 1) - r.handoff(k);
            let nominal = Duration::days(r.rotation_days);
            // The largest modern offset change in ZONES is Apia's day skip (2011) and
            // Troll's 2h; everything else is 30 min or 1 h.
            prop_assert!(len >= Duration::zero(), "negative shift {len}");
            prop_assert!((len - nominal).num_hours().abs() <= 24, "shift of {len} for {nominal}");
        }

        #[test]
        fn weekly_rotations_hand_off_on_the_start_weekday(r in any_rotation(), k in 0i64..200) {
            prop_assume!(r.rotation_days % 7 == 0);
            let wall = (r.start + Duration::days(k * r.rotation_days)).and_time(r.handoff_time);
            prop_assume!(!matches!(r.tz.from_local_datetime(&wall), LocalResult::None));
            let local = r.handoff(k).with_timezone(&r.tz);
            prop_assert_eq!(local.weekday(), r.start.weekday());
            prop_assert_eq!((local.hour(), local.minute()), (r.handoff_time.hour(), r.handoff_time.minute()));
        }

        #[test]
        fn the_person_on_call_changes_only_at_handoffs(r in any_rotation(), offset_secs in 0i64..(40 * 365 * 86_400)) {
            let t = utc("2000-01-01T00:00:00Z") + Duration::seconds(offset_secs);
            let a = r.on_call_at(t).map(|s| s.user);
            let b = r.on_call_at(t + Duration::seconds(1)).map(|s| s.user);
            if a != b {
                let k = r.shift_index(t + Duration::seconds(1));
                prop_assert_eq!(r.handoff(k), t + Duration::seconds(1));
            }
        }
    }

    #[test]
    fn weekday_type_is_what_config_parses() {
        assert_eq!("monday".parse::<Weekday>().unwrap(), Weekday::Mon);
    }
}
