//! `type = "pagerduty"`: who is on call, from PagerDuty's REST API v2.
//!
//! - `GET /oncalls` with `schedule_ids[]` (and `escalation_policy_ids[]`), the time window
//!   `since`/`until`, `include[]=users` for e-mail addresses, paged with `offset`/`limit`
//!   until `more` is false.
//! - `GET /incidents` with `statuses[]=triggered&statuses[]=acknowledged&user_ids[]=…` for
//!   the stricter "assigned to an open incident" mode.
//! - `GET /users?query=…` to find a PagerDuty user by e-mail when the on-call answer did
//!   not already name them.
//!
//! Every call sends `Authorization: Token token=…` and
//! `Accept: application/vnd.pagerduty+json;version=2`.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::Deserialize;
use url::Url;

use super::http::{HttpClient, Secret, SourceError};
use super::{ProviderUser, RosterEntry};
use crate::config::oncall::PagerDutyConfig;

/// PagerDuty's media type for API v2.
pub const ACCEPT: &str = "application/vnd.pagerduty+json;version=2";
/// Entries per page (PagerDuty's maximum).
const PAGE: usize = 100;
/// A broken server answering `more: true` forever is cut off here.
const MAX_PAGES: usize = 50;

#[derive(Deserialize)]
struct OnCallsPage {
    oncalls: Vec<OnCall>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct OnCall {
    user: User,
    #[serde(default)]
    schedule: Option<Reference>,
    #[serde(default)]
    escalation_policy: Option<Reference>,
    #[serde(default)]
    escalation_level: Option<u32>,
    #[serde(default)]
    start: Option<DateTime<Utc>>,
    #[serde(default)]
    end: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct Reference {
    id: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl Reference {
    fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.summary.clone())
            .unwrap_or_else(|| self.id.clone())
    }
}

#[derive(Deserialize)]
struct IncidentsPage {
    incidents: Vec<Incident>,
}

#[derive(Deserialize)]
struct Incident {
    id: String,
    #[serde(default)]
    incident_number: Option<u64>,
    #[serde(default)]
    title: Option<String>,
    status: String,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    assignments: Option<Vec<Assignment>>,
}

#[derive(Deserialize)]
struct Assignment {
    assignee: User,
}

#[derive(Deserialize)]
struct UsersPage {
    users: Vec<User>,
}

/// An open incident the requester is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenIncident {
    pub id: String,
    pub number: Option<u64>,
    pub title: Option<String>,
    pub status: String,
    pub url: Option<String>,
}

fn endpoint(base: &Url, path: &str) -> Result<Url, SourceError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| SourceError::Unreachable("base_url cannot take a path".into()))?
        .pop_if_empty()
        .push(path);
    Ok(url)
}

fn authorization(token: &Secret) -> String {
    format!("Token token={}", token.expose())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Everyone on call at `now` in the configured schedules (and escalation policies, up to
/// the maximum level), with e-mail addresses.
pub async fn on_calls(
    http: &HttpClient,
    cfg: &PagerDutyConfig,
    token: &Secret,
    now: DateTime<Utc>,
) -> Result<Vec<RosterEntry>, SourceError> {
    let since = now;
    let until = now + Duration::seconds(1);
    let mut entries = Vec::new();
    let mut offset = 0usize;
    for _ in 0..MAX_PAGES {
        let mut url = endpoint(&cfg.base_url, "oncalls")?;
        {
            let mut q = url.query_pairs_mut();
            for id in &cfg.schedule_ids {
                q.append_pair("schedule_ids[]", id);
            }
            for id in &cfg.escalation_policy_ids {
                q.append_pair("escalation_policy_ids[]", id);
            }
            q.append_pair("since", &rfc3339(since))
                .append_pair("until", &rfc3339(until))
                .append_pair("include[]", "users")
                .append_pair("time_zone", "UTC")
                .append_pair("limit", &PAGE.to_string())
                .append_pair("offset", &offset.to_string());
        }
        let page: OnCallsPage = http.get_json(&url, &authorization(token), ACCEPT).await?;
        let got = page.oncalls.len();
        for o in page.oncalls {
            if o.start.is_some_and(|s| s > now) || o.end.is_some_and(|e| e <= now) {
                continue;
            }
            if let (Some(max), Some(level)) = (cfg.max_escalation_level, o.escalation_level) {
                if level > max {
                    continue;
                }
            }
            if cfg.max_escalation_level.is_some() && o.escalation_level.is_none() {
                continue;
            }
            // A schedule filter that PagerDuty ignored must not widen who counts.
            let schedule_ok = o.schedule.as_ref().is_some_and(|s| cfg.schedule_ids.contains(&s.id));
            if !schedule_ok {
                continue;
            }
            let schedule = o.schedule.as_ref();
            entries.push(RosterEntry {
                user: ProviderUser {
                    id: Some(o.user.id),
                    email: o.user.email,
                },
                schedule: schedule.map(Reference::label).unwrap_or_default(),
                schedule_id: schedule.map(|s| s.id.clone()),
                escalation_policy: o.escalation_policy.as_ref().map(Reference::label),
                level: o.escalation_level,
                start: o.start,
                end: o.end,
            });
        }
        if !page.more {
            return Ok(entries);
        }
        if got == 0 {
            return Err(SourceError::Malformed("`more` is true but the page is empty".into()));
        }
        offset += got;
    }
    Err(SourceError::Malformed(format!(
        "more than {} on-call entries; narrow schedule_ids",
        PAGE * MAX_PAGES
    )))
}

/// The first open (triggered or acknowledged) incident assigned to `user_id`, if any.
pub async fn open_incident(
    http: &HttpClient,
    cfg: &PagerDutyConfig,
    token: &Secret,
    user_id: &str,
) -> Result<Option<OpenIncident>, SourceError> {
    let mut url = endpoint(&cfg.base_url, "incidents")?;
    url.query_pairs_mut()
        .append_pair("statuses[]", "triggered")
        .append_pair("statuses[]", "acknowledged")
        .append_pair("user_ids[]", user_id)
        .append_pair("date_range", "all")
        .append_pair("limit", "25");
    let page: IncidentsPage = http.get_json(&url, &authorization(token), ACCEPT).await?;
    let found = page.incidents.into_iter().find(|i| {
        let open = i.status == "triggered" || i.status == "acknowledged";
        let assigned = i
            .assignments
            .as_ref()
            .is_none_or(|a| a.iter().any(|a| a.assignee.id == user_id));
        open && assigned
    });
    Ok(found.map(|i| OpenIncident {
        id: i.id,
        number: i.incident_number,
        title: i.title,
        status: i.status,
        url: i.html_url,
    }))
}

/// The PagerDuty user ID with e-mail `email` (compared without regard to case).
pub async fn user_id_by_email(
    http: &HttpClient,
    cfg: &PagerDutyConfig,
    token: &Secret,
    email: &str,
) -> Result<Option<String>, SourceError> {
    let mut url = endpoint(&cfg.base_url, "users")?;
    url.query_pairs_mut()
        .append_pair("query", email)
        .append_pair("limit", "25");
    let page: UsersPage = http.get_json(&url, &authorization(token), ACCEPT).await?;
    Ok(page
        .users
        .into_iter()
        .find(|u| u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email)))
        .map(|u| u.id))
}
