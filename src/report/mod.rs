//! `jitgate report`: what an auditor hands on. One row per access request — who asked for
//! what and why, who approved it (people, an on-call policy, or break-glass), when it was
//! requested, decided, granted and ended, how long it was used, how it ended — plus a
//! summary, as CSV, JSON or a self-contained HTML page with charts (`html`).
//!
//! Everything here is a plain function of the stored records and the time the report is
//! made; the only I/O is the one read in [`load`].

pub mod html;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::duration::HumanDuration;
use crate::oncall::APPROVER_PREFIX;
use crate::store::report::{access_records, AccessRecord};
use crate::text::rfc3339_ms;

/// The report's time range, `[since, until)` in unix milliseconds, and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub since: i64,
    pub until: i64,
    pub generated_at: i64,
}

/// Reads `--since` / `--until`: a duration back from now (`30d`, `12h`), a date
/// (`2025-03-01`, midnight UTC) or an RFC 3339 time. The error says what to write.
pub fn parse_bound(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(d) = t.parse::<HumanDuration>() {
        return Ok(now_ms - d.as_secs() as i64 * 1000);
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = date.and_hms_opt(0, 0, 0) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc).timestamp_millis());
    }
    Err(format!(
        "`{t}` is not a time; write a duration back from now (30d, 12h), a date (2025-03-01) \
         or an RFC 3339 time (2025-03-01T09:00:00Z)"
    ))
}

/// One access, as the CSV and JSON reports show it. Times are RFC 3339 (UTC), `None`
/// (empty in CSV) when not reached; durations are whole seconds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub requester: String,
    pub resource: String,
    pub role: String,
    pub reason: String,
    /// Who approved: Slack user IDs, `on-call policy NAME`, or `break-glass (…)` with the
    /// state of its review.
    pub approvers: String,
    pub requested_at: String,
    pub decided_at: Option<String>,
    pub granted_at: Option<String>,
    pub ended_at: Option<String>,
    /// Seconds from the request to the decision.
    pub time_to_decision: Option<i64>,
    /// Seconds the access was in force (until now for access still in force).
    pub time_used: Option<i64>,
    /// One of [`OUTCOMES`].
    pub outcome: String,
    /// Approved extensions.
    pub extensions: i64,
}

/// The CSV header, in order; the JSON rows have the same fields.
pub const COLUMNS: [&str; 13] = [
    "requester",
    "resource",
    "role",
    "reason",
    "approvers",
    "requested_at",
    "decided_at",
    "granted_at",
    "ended_at",
    "time_to_decision",
    "time_used",
    "outcome",
    "extensions",
];

/// How an access ended (or where it stands), as the `outcome` column writes it.
pub const OUTCOMES: [&str; 11] = [
    "pending",
    "denied",
    "timed_out",
    "withdrawn",
    "approved",
    "granting",
    "active",
    "expired",
    "revoked_early",
    "superseded",
    "grant_failed",
];

/// What a record's outcome is, from its request and grant state.
pub fn outcome(r: &AccessRecord) -> &'static str {
    match r.state.as_str() {
        "pending" => "pending",
        "denied" => "denied",
        "expired" => "timed_out",
        "cancelled" => "withdrawn",
        _ => match r.grant_state.as_deref() {
            None => "approved",
            Some("granting") => "granting",
            Some("active") => "active",
            Some("failed") => "grant_failed",
            Some("superseded") => "superseded",
            Some(_) if r.revoked_by.as_deref() == Some("expiry") => "expired",
            Some(_) => "revoked_early",
        },
    }
}

/// Whether an on-call policy approved the record.
pub fn auto_approved(r: &AccessRecord) -> bool {
    r.approved_by
        .as_deref()
        .is_some_and(|a| a.split(' ').any(|x| x.starts_with(APPROVER_PREFIX)))
}

/// The `approvers` column.
pub fn approvers(r: &AccessRecord) -> String {
    if r.break_glass_at.is_some() {
        return match (&r.reviewed_by, r.review.as_deref()) {
            (Some(by), Some("revoked")) => format!("break-glass (reviewed by {by}: revoked)"),
            (Some(by), _) => format!("break-glass (reviewed by {by}: ok)"),
            _ => "break-glass (review pending)".to_string(),
        };
    }
    let mut names: Vec<String> = r
        .approved_by
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(|a| match a.strip_prefix(APPROVER_PREFIX) {
            Some(policy) => format!("on-call policy {policy}"),
            None => a.to_string(),
        })
        .collect();
    if let Some(d) = &r.denied_by {
        names.push(format!("denied by {d}"));
    }
    names.join(", ")
}

/// A stored record as a report row, at `now`.
pub fn row(r: &AccessRecord, now: i64) -> Row {
    let decided = match r.state.as_str() {
        "approved" | "denied" => r.decided_at,
        _ => None,
    };
    let ended = match r.grant_state.as_deref() {
        Some("revoked") | Some("superseded") => r.revoked_at,
        _ => None,
    };
    let used = match (r.granted_at, ended, r.grant_state.as_deref()) {
        (Some(g), Some(e), _) => Some(e - g),
        (Some(g), None, Some("active")) => Some(now - g),
        _ => None,
    };
    Row {
        requester: r.requester_id.clone(),
        resource: r.resource.clone(),
        role: r.role.clone(),
        reason: r.reason.clone(),
        approvers: approvers(r),
        requested_at: rfc3339_ms(r.created_at),
        decided_at: decided.map(rfc3339_ms),
        granted_at: r.granted_at.map(rfc3339_ms),
        ended_at: ended.map(rfc3339_ms),
        time_to_decision: decided.map(|d| (d - r.created_at).max(0) / 1000),
        time_used: used.map(|u| u.max(0) / 1000),
        outcome: outcome(r).to_string(),
        extensions: r.extensions,
    }
}

/// A name and how many requests it had.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Count {
    pub name: String,
    pub requests: usize,
}

/// The totals under the rows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub since: String,
    pub until: String,
    pub generated_at: String,
    pub requests: usize,
    /// Requests whose access was granted at some point (in force, ended or superseded).
    pub granted: usize,
    /// Requests approved by an on-call policy rather than a person.
    pub auto_approved: usize,
    /// Break-glass uses, and how many of them nobody has reviewed yet.
    pub break_glass: usize,
    pub break_glass_unreviewed: usize,
    /// Count per outcome (every outcome present, zeros included).
    pub outcomes: BTreeMap<String, usize>,
    /// Median and 90th percentile of `time_to_decision`, in seconds (people and policies).
    pub median_time_to_decision: Option<i64>,
    pub p90_time_to_decision: Option<i64>,
    /// Sum of `time_used`, in seconds.
    pub total_time_used: i64,
    pub top_resources: Vec<Count>,
    pub top_requesters: Vec<Count>,
}

/// The whole report: rows and summary, plus what the charts need.
#[derive(Debug, Clone)]
pub struct Report {
    pub period: Period,
    pub records: Vec<AccessRecord>,
    pub rows: Vec<Row>,
    pub summary: Summary,
}

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Counts per name, most first (ties by name), at most `n`.
pub fn top<'a>(names: impl Iterator<Item = &'a str>, n: usize) -> Vec<Count> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    let mut v: Vec<Count> = counts
        .into_iter()
        .map(|(name, requests)| Count {
            name: name.to_string(),
            requests,
        })
        .collect();
    v.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.name.cmp(&b.name)));
    v.truncate(n);
    v
}

/// Builds the report from stored records.
pub fn build(period: Period, records: Vec<AccessRecord>) -> Report {
    let rows: Vec<Row> = records.iter().map(|r| row(r, period.generated_at)).collect();
    let mut outcomes: BTreeMap<String, usize> = OUTCOMES.iter().map(|o| (o.to_string(), 0)).collect();
    for r in &rows {
        *outcomes.entry(r.outcome.clone()).or_default() += 1;
    }
    let mut decision_times: Vec<i64> = rows.iter().filter_map(|r| r.time_to_decision).collect();
    decision_times.sort_unstable();
    let summary = Summary {
        since: rfc3339_ms(period.since),
        until: rfc3339_ms(period.until),
        generated_at: rfc3339_ms(period.generated_at),
        requests: rows.len(),
        granted: records.iter().filter(|r| r.granted_at.is_some()).count(),
        auto_approved: records.iter().filter(|r| auto_approved(r)).count(),
        break_glass: records.iter().filter(|r| r.break_glass_at.is_some()).count(),
        break_glass_unreviewed: records
            .iter()
            .filter(|r| r.break_glass_at.is_some() && r.reviewed_at.is_none())
            .count(),
        outcomes,
        median_time_to_decision: percentile(&decision_times, 50),
        p90_time_to_decision: percentile(&decision_times, 90),
        total_time_used: rows.iter().filter_map(|r| r.time_used).sum(),
        top_resources: top(records.iter().map(|r| r.resource.as_str()), 10),
        top_requesters: top(records.iter().map(|r| r.requester_id.as_str()), 10),
    };
    Report {
        period,
        records,
        rows,
        summary,
    }
}

/// Reads the records of `period` and builds the report.
pub async fn load(conn: &mut crate::store::Conn, period: Period) -> sqlx::Result<Report> {
    let records = access_records(conn, period.since, period.until).await?;
    Ok(build(period, records))
}

/// The output formats of `jitgate report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "html" => Ok(Format::Html),
            other => Err(format!("`{other}` is not a report format; use csv, json or html")),
        }
    }
}

impl Report {
    /// The rows as CSV with a header line.
    pub fn to_csv(&self) -> anyhow::Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        // An empty report still has its header.
        if self.rows.is_empty() {
            w.write_record(COLUMNS)?;
        }
        for r in &self.rows {
            w.serialize(r)?;
        }
        Ok(w.into_inner()?)
    }

    /// `{"rows": [...], "summary": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "rows": self.rows, "summary": self.summary })
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> anyhow::Result<Vec<u8>> {
        Ok(match format {
            Format::Csv => self.to_csv()?,
            Format::Json => {
                let mut v = serde_json::to_vec_pretty(&self.to_json())?;
                v.push(b'\n');
                v
            }
            Format::Html => html::render(self)?.into_bytes(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    /// A granted-and-expired record made at `at`.
    pub(crate) fn record(id: i64, at: i64) -> AccessRecord {
        AccessRecord {
            id,
            requester_id: "U0ALICE".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            reason: "INC-1, \"quoted\"".into(),
            duration_secs: 3600,
            state: "approved".into(),
            created_at: at,
            decided_at: Some(at + 60_000),
            approved_by: Some("U0BOB".into()),
            denied_by: None,
            grant_state: Some("revoked".into()),
            granted_at: Some(at + 65_000),
            expires_at: Some(at + 65_000 + H),
            revoked_at: Some(at + 65_000 + H),
            revoked_by: Some("expiry".into()),
            extensions: 1,
            break_glass_at: None,
            reviewed_by: None,
            reviewed_at: None,
            review: None,
        }
    }

    #[test]
    fn a_granted_and_expired_access_has_every_time_and_its_durations() {
        let r = row(&record(1, 1_735_689_600_000), 0);
        assert_eq!(r.requested_at, "2025-01-01T00:00:00.000Z");
        assert_eq!(r.decided_at.as_deref(), Some("2025-01-01T00:01:00.000Z"));
        assert_eq!(r.granted_at.as_deref(), Some("2025-01-01T00:01:05.000Z"));
        assert_eq!(r.ended_at.as_deref(), Some("2025-01-01T01:01:05.000Z"));
        assert_eq!(r.time_to_decision, Some(60));
        assert_eq!(r.time_used, Some(3600));
        assert_eq!(r.outcome, "expired");
        assert_eq!(r.approvers, "U0BOB");
        assert_eq!(r.extensions, 1);
    }

    #[test]
    fn outcomes_name_how_each_access_ended() {
        let base = record(1, 0);
        let with = |f: &dyn Fn(&mut AccessRecord)| {
            let mut r = base.clone();
            f(&mut r);
            outcome(&r)
        };
        assert_eq!(with(&|r| r.revoked_by = Some("U0BOB".into())), "revoked_early");
        assert_eq!(with(&|r| r.grant_state = Some("active".into())), "active");
        assert_eq!(with(&|r| r.grant_state = Some("failed".into())), "grant_failed");
        assert_eq!(with(&|r| r.state = "expired".into()), "timed_out");
        assert_eq!(with(&|r| r.state = "cancelled".into()), "withdrawn");
        assert_eq!(with(&|r| r.state = "denied".into()), "denied");
        for o in OUTCOMES {
            assert!(!o.is_empty());
        }
    }

    #[test]
    fn unreached_times_are_empty_in_csv_and_null_in_json() {
        let mut r = record(1, 0);
        r.state = "pending".into();
        r.decided_at = None;
        r.approved_by = None;
        r.grant_state = None;
        r.granted_at = None;
        r.revoked_at = None;
        r.revoked_by = None;
        let period = Period {
            since: 0,
            until: H,
            generated_at: H,
        };
        let report = build(period, vec![r]);
        let csv = String::from_utf8(report.to_csv().unwrap()).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        assert_eq!(
            lines.next().unwrap(),
            "U0ALICE,prod-db,read,\"INC-1, \"\"quoted\"\"\",,1970-01-01T00:00:00.000Z,,,,,,pending,1"
        );
        let json = report.to_json();
        assert_eq!(json["rows"][0]["granted_at"], serde_json::Value::Null);
        assert_eq!(json["summary"]["requests"], 1);
        assert_eq!(json["summary"]["outcomes"]["pending"], 1);
    }

    #[test]
    fn an_empty_report_still_has_its_header() {
        let report = build(
            Period {
                since: 0,
                until: 1,
                generated_at: 1,
            },
            vec![],
        );
        assert_eq!(
            String::from_utf8(report.to_csv().unwrap()).unwrap().trim_end(),
            COLUMNS.join(",")
        );
        assert_eq!(report.summary.median_time_to_decision, None);
    }

    #[test]
    fn policies_and_break_glass_are_named_as_approvers() {
        let mut r = record(1, 0);
        r.approved_by = Some("oncall:db-on-call".into());
        assert_eq!(approvers(&r), "on-call policy db-on-call");
        assert!(auto_approved(&r));
        r.break_glass_at = Some(0);
        assert_eq!(approvers(&r), "break-glass (review pending)");
        r.reviewed_by = Some("U0BOB".into());
        r.reviewed_at = Some(1);
        r.review = Some("ok".into());
        assert_eq!(approvers(&r), "break-glass (reviewed by U0BOB: ok)");
    }

    #[test]
    fn summary_counts_and_percentiles() {
        let mut recs: Vec<AccessRecord> = (0..10).map(|i| record(i, i * H)).collect();
        for (i, r) in recs.iter_mut().enumerate() {
            r.decided_at = Some(r.created_at + (i as i64 + 1) * 1000);
        }
        recs[0].resource = "k8s".into();
        let report = build(
            Period {
                since: 0,
                until: 20 * H,
                generated_at: 20 * H,
            },
            recs,
        );
        let s = &report.summary;
        assert_eq!(s.requests, 10);
        assert_eq!(s.granted, 10);
        assert_eq!(s.median_time_to_decision, Some(5));
        assert_eq!(s.p90_time_to_decision, Some(9));
        assert_eq!(
            s.top_resources[0],
            Count {
                name: "prod-db".into(),
                requests: 9
            }
        );
        assert_eq!(s.outcomes["expired"], 10);
        assert_eq!(s.total_time_used, 10 * 3600);
    }

    #[test]
    fn bounds_read_durations_dates_and_rfc3339() {
        let now = 1_735_689_600_000;
        assert_eq!(parse_bound("30d", now), Ok(now - 30 * 86_400_000));
        assert_eq!(parse_bound("2025-01-01", now), Ok(1_735_689_600_000));
        assert_eq!(parse_bound("2025-01-01T01:00:00+01:00", now), Ok(1_735_689_600_000));
        assert!(parse_bound("last tuesday", now).unwrap_err().contains("30d"));
    }
}
