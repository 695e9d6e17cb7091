//! `type = "opsgenie"`: who is on call, from Opsgenie's Schedule API.
//!
//! `GET /v2/schedules/{id}/on-calls?flat=true&date=…` with `Authorization: GenieKey …`
//! answers `{"data": {"_parent": {"id", "name", …}, "onCallRecipients": ["user@…"]}}`:
//! with `flat=true` the recipients are usernames, which in Opsgenie are e-mail addresses.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::http::{HttpClient, Secret, SourceError};
use super::{ProviderUser, RosterEntry};
use crate::config::oncall::OpsgenieConfig;

#[derive(Deserialize)]
struct Answer {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "_parent", default)]
    parent: Option<Parent>,
    #[serde(rename = "onCallRecipients", default)]
    on_call_recipients: Vec<String>,
}

#[derive(Deserialize)]
struct Parent {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// Everyone on call at `now` in the configured schedules.
pub async fn on_calls(
    http: &HttpClient,
    cfg: &OpsgenieConfig,
    key: &Secret,
    now: DateTime<Utc>,
) -> Result<Vec<RosterEntry>, SourceError> {
    let date = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let authorization = format!("GenieKey {}", key.expose());
    let mut entries = Vec::new();
    for schedule_id in &cfg.schedule_ids {
        let mut url = cfg.base_url.clone();
        url.path_segments_mut()
            .map_err(|_| SourceError::Unreachable("base_url cannot take a path".into()))?
            .pop_if_empty()
            .extend(["v2", "schedules", schedule_id.as_str(), "on-calls"]);
        url.query_pairs_mut()
            .append_pair("scheduleIdentifierType", "id")
            .append_pair("flat", "true")
            .append_pair("date", &date);
        let answer: Answer = http.get_json(&url, &authorization, "application/json").await?;
        let parent = answer.data.parent;
        if parent.as_ref().and_then(|p| p.enabled) == Some(false) {
            // A disabled schedule puts nobody on call.
            continue;
        }
        let name = parent
            .as_ref()
            .and_then(|p| p.name.clone())
            .unwrap_or_else(|| schedule_id.clone());
        let id = parent.and_then(|p| p.id).unwrap_or_else(|| schedule_id.clone());
        for recipient in answer.data.on_call_recipients {
            entries.push(RosterEntry {
                user: ProviderUser {
                    id: None,
                    email: Some(recipient),
                },
                schedule: name.clone(),
                schedule_id: Some(id.clone()),
                escalation_policy: None,
                level: None,
                start: None,
                end: None,
            });
        }
    }
    Ok(entries)
}
