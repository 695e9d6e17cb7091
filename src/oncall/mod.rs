//! On-call auto-approval: a request made in an incident channel by someone on call right
//! now is approved by a policy instead of a person.
//!
//! Nothing here runs in the slash command's request path except [`could_auto_approve`],
//! a check of the configuration alone. The command then stores the request with an
//! `auto_approve` job due at once; the job ([`crate::approvals::oncall::run`]) asks Slack and the on-call
//! services, and either approves in one transaction or sends the request to the approvers.
//! Every failure — a timeout, an HTTP error, an answer that cannot be read, a person who
//! cannot be matched — means normal approval, never an automatic one.

pub mod http;
pub mod opsgenie;
pub mod pagerduty;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::duration::HumanDuration;
use crate::slack::client::SlackApi;
use crate::text::escape;

use self::http::{HttpClient, Secret, SourceError};
use self::pagerduty::OpenIncident;
pub use crate::config::oncall::{OnCallConfig, Policy, SourceConfig, APPROVER_PREFIX};

/// Whether a request could be auto-approved, judged from the configuration alone (no
/// network): some policy allows `resource:role` for `duration`, and the channel is an
/// incident channel by ID or might be one by name. Cheap enough for the slash command.
pub fn could_auto_approve(config: &Config, resource: &str, role: &str, duration: HumanDuration, channel: &str) -> bool {
    crate::policy::channel_may_be_incident(config, channel)
        && matches!(
            crate::policy::oncall_candidates(config, resource, role, duration),
            crate::policy::OnCallPrecheck::Candidates(_)
        )
}

/// The longest duration on-call auto-approval would cover, when that is the only thing
/// that kept this request from being checked (so the reply can say what to ask for).
pub fn cap_exceeded(
    config: &Config,
    resource: &str,
    role: &str,
    duration: HumanDuration,
    channel: &str,
) -> Option<HumanDuration> {
    let cap = config
        .oncall
        .as_ref()?
        .policies
        .iter()
        .filter(|p| p.allows(resource, role))
        .map(|p| p.max_duration)
        .max()?;
    let shorter = HumanDuration::from_secs(cap.as_secs().min(duration.as_secs()));
    (duration > cap && could_auto_approve(config, resource, role, shorter, channel)).then_some(cap)
}

/// Someone on call as a provider names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUser {
    /// The provider's user ID (PagerDuty `P…`), when it gives one.
    pub id: Option<String>,
    pub email: Option<String>,
}

/// One person on call in a source at the time asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    pub user: ProviderUser,
    /// The schedule's name, for people to read.
    pub schedule: String,
    pub schedule_id: Option<String>,
    pub escalation_policy: Option<String>,
    pub level: Option<u32>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

/// Why a policy approved: stored as the decision's reason and in the audit log, and shown
/// on the card. Text from the on-call services (schedule names, incident titles) is kept
/// as given and escaped when shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub policy: String,
    /// The `[oncall.sources.NAME]` that said so.
    pub source: String,
    /// `pagerduty`, `opsgenie` or `static`.
    pub source_type: String,
    pub schedule: String,
    #[serde(default)]
    pub schedule_id: Option<String>,
    #[serde(default)]
    pub escalation_policy: Option<String>,
    #[serde(default)]
    pub level: Option<u32>,
    /// The on-call shift, unix milliseconds, when the source gives it.
    #[serde(default)]
    pub shift_start: Option<i64>,
    #[serde(default)]
    pub shift_end: Option<i64>,
    /// How the Slack user was matched: `slack_id`, `mapping` or `email`.
    pub matched_by: String,
    #[serde(default)]
    pub incident: Option<OpenIncident>,
    pub channel: String,
    #[serde(default)]
    pub channel_name: Option<String>,
    /// When the check ran, unix milliseconds.
    pub checked_at: i64,
}

impl Evidence {
    /// "on call in PagerDuty schedule Primary DB (level 1) …", escaped for Slack mrkdwn.
    pub fn summary(&self) -> String {
        let provider = match self.source_type.as_str() {
            "pagerduty" => "PagerDuty schedule",
            "opsgenie" => "Opsgenie schedule",
            _ => "rotation",
        };
        let mut s = format!(
            "on call in {provider} *{}*",
            escape(&crate::text::truncate(&self.schedule, 100))
        );
        let mut extra = Vec::new();
        if let Some(level) = self.level {
            extra.push(format!("level {level}"));
        }
        if let Some(ep) = &self.escalation_policy {
            extra.push(format!("escalation policy {}", escape(&crate::text::truncate(ep, 100))));
        }
        if !extra.is_empty() {
            s.push_str(&format!(" ({})", extra.join(", ")));
        }
        if let Some(i) = &self.incident {
            let number = i.number.map(|n| format!("#{n}")).unwrap_or_else(|| i.id.clone());
            s.push_str(&format!(", assigned to incident {}", escape(&number)));
            if let Some(title) = &i.title {
                s.push_str(&format!(" “{}”", escape(&crate::text::truncate(title, 150))));
            }
        }
        s
    }

    /// The evidence stored with a policy's decision, if `reason` holds one.
    pub fn from_reason(reason: Option<&str>) -> Option<Self> {
        serde_json::from_str(reason?).ok()
    }
}

/// What a source said about the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAnswer {
    /// On call now, as `entry`, matched `matched_by`.
    OnCall {
        entry: RosterEntry,
        matched_by: &'static str,
    },
    NotOnCall,
    /// The requester could not be matched to anyone at this source; the text says why.
    UnknownUser(String),
}

/// Whether the origin channel is an incident channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelCheck {
    Incident {
        name: Option<String>,
    },
    NotIncident {
        name: Option<String>,
    },
    /// Slack could not tell us the name; never treated as an incident channel.
    Failed(String),
}

/// Whether `channel` is an incident channel without asking Slack: `Some` when the ID list
/// or the kind of conversation decides, `None` when only the name can.
pub fn channel_by_id(cfg: &OnCallConfig, channel: &str) -> Option<bool> {
    if cfg.incident_channels.iter().any(|c| c == channel) {
        return Some(true);
    }
    if cfg.incident_channel_prefixes.is_empty() || !channel.starts_with(['C', 'G']) {
        return Some(false);
    }
    None
}

/// Whether a channel called `name` is an incident channel.
pub fn name_is_incident(cfg: &OnCallConfig, name: &str) -> bool {
    let name = name.trim_start_matches('#').to_lowercase();
    cfg.incident_channel_prefixes
        .iter()
        .any(|p| name.starts_with(p.as_str()))
}

/// A small map whose entries are forgotten `ttl` after they were stored.
struct TtlCache<K, V> {
    ttl_ms: i64,
    entries: Mutex<HashMap<K, (i64, V)>>,
}

/// Entries kept before expired ones are swept out.
const CACHE_SWEEP_AT: usize = 4096;

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: ttl.as_millis() as i64,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K, now_ms: i64) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| now_ms >= *at && now_ms - *at < self.ttl_ms)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: K, value: V, now_ms: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_SWEEP_AT {
            let ttl = self.ttl_ms;
            entries.retain(|_, (at, _)| now_ms - *at < ttl);
            if entries.len() >= CACHE_SWEEP_AT {
                entries.clear();
            }
        }
        entries.insert(key, (now_ms, value));
    }
}

/// The on-call machinery: an HTTP client, the sources' credentials, and short-lived
/// caches of what Slack and the on-call services said.
pub struct OnCall {
    http: HttpClient,
    credentials: BTreeMap<String, Secret>,
    rosters: TtlCache<String, Arc<Vec<RosterEntry>>>,
    channel_names: TtlCache<String, Option<String>>,
    emails: TtlCache<String, Option<String>>,
    pd_user_ids: TtlCache<(String, String), Option<String>>,
}

impl std::fmt::Debug for OnCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnCall")
            .field("sources_with_credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl OnCall {
    /// Reads each source's credential through `env` (the process environment in
    /// production). A missing one stops start-up, naming the key and the variable.
    pub fn new(config: Option<&OnCallConfig>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut credentials = BTreeMap::new();
        let mut missing = Vec::new();
        let (cache_ttl, slack_ttl) = config
            .map(|c| (c.cache_ttl, c.slack_cache_ttl))
            .unwrap_or((Duration::from_secs(60), Duration::from_secs(600)));
        for (name, source) in config.map(|c| &c.sources).into_iter().flatten() {
            let Some(var) = source.credential_env() else { continue };
            match env(var).filter(|v| !v.trim().is_empty()) {
                Some(value) => {
                    credentials.insert(name.clone(), Secret::new(&value));
                }
                None => {
                    let (key, what) = match source {
                        SourceConfig::PagerDuty(_) => ("token_env", "a PagerDuty REST API key (read-only is enough)"),
                        _ => ("key_env", "an Opsgenie API key with read access"),
                    };
                    missing.push(format!(
                        "oncall.sources.{name}.{key}: the environment variable {var} is not set; set it to {what}"
                    ));
                }
            }
        }
        if !missing.is_empty() {
            anyhow::bail!("{}", missing.join("; "));
        }
        Ok(Self {
            http: HttpClient::new(),
            credentials,
            rosters: TtlCache::new(cache_ttl),
            channel_names: TtlCache::new(slack_ttl),
            emails: TtlCache::new(slack_ttl),
            pd_user_ids: TtlCache::new(slack_ttl),
        })
    }

    fn credential(&self, source: &str) -> Result<&Secret, SourceError> {
        self.credentials
            .get(source)
            .ok_or_else(|| SourceError::Unreachable("no credential loaded for this source".into()))
    }

    /// Is `channel` an incident channel? Asks Slack (`conversations.info`, cached) only
    /// when a name prefix has to decide.
    pub async fn check_channel(
        &self,
        cfg: &OnCallConfig,
        slack: &SlackApi,
        channel: &str,
        now_ms: i64,
    ) -> ChannelCheck {
        match channel_by_id(cfg, channel) {
            Some(true) => return ChannelCheck::Incident { name: None },
            Some(false) => return ChannelCheck::NotIncident { name: None },
            None => {}
        }
        let key = channel.to_string();
        let name = match self.channel_names.get(&key, now_ms) {
            Some(name) => name,
            None => match tokio::time::timeout(cfg.source_timeout, slack.conversations_info(channel)).await {
                Ok(Ok(info)) => {
                    self.channel_names.put(key, info.name.clone(), now_ms);
                    info.name
                }
                Ok(Err(e)) => return ChannelCheck::Failed(format!("Slack's conversations.info failed: {e}")),
                Err(_) => {
                    return ChannelCheck::Failed(format!(
                        "Slack's conversations.info did not answer within {:?}",
                        cfg.source_timeout
                    ))
                }
            },
        };
        match name {
            Some(n) if name_is_incident(cfg, &n) => ChannelCheck::Incident { name: Some(n) },
            other => ChannelCheck::NotIncident { name: other },
        }
    }

    async fn slack_email(&self, slack: &SlackApi, user: &str, now_ms: i64) -> Result<Option<String>, SourceError> {
        let key = user.to_string();
        if let Some(e) = self.emails.get(&key, now_ms) {
            return Ok(e);
        }
        let email = slack
            .users_info_email(user)
            .await
            .map_err(|e| SourceError::Slack(format!("users.info: {e}")))?;
        self.emails.put(key, email.clone(), now_ms);
        Ok(email)
    }

    async fn roster(
        &self,
        name: &str,
        source: &SourceConfig,
        now: DateTime<Utc>,
    ) -> Result<Arc<Vec<RosterEntry>>, SourceError> {
        let now_ms = now.timestamp_millis();
        let key = name.to_string();
        if let Some(r) = self.rosters.get(&key, now_ms) {
            return Ok(r);
        }
        let fetched = match source {
            SourceConfig::PagerDuty(pd) => pagerduty::on_calls(&self.http, pd, self.credential(name)?, now).await?,
            SourceConfig::Opsgenie(og) => opsgenie::on_calls(&self.http, og, self.credential(name)?, now).await?,
            SourceConfig::Static(_) => Vec::new(),
        };
        let roster = Arc::new(fetched);
        self.rosters.put(key, roster.clone(), now_ms);
        Ok(roster)
    }

    /// Is `user` (a Slack user ID) on call at `now` according to source `name`? Bounded
    /// by the configured source timeout, Slack lookups included.
    pub async fn check_source(
        &self,
        cfg: &OnCallConfig,
        name: &str,
        slack: &SlackApi,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<SourceAnswer, SourceError> {
        let Some(source) = cfg.sources.get(name) else {
            return Err(SourceError::Unreachable("not in the configuration any more".into()));
        };
        tokio::time::timeout(
            cfg.source_timeout,
            self.check_source_unbounded(name, source, slack, user, now),
        )
        .await
        .unwrap_or(Err(SourceError::Timeout(cfg.source_timeout)))
    }

    async fn check_source_unbounded(
        &self,
        name: &str,
        source: &SourceConfig,
        slack: &SlackApi,
        user: &str,
        now: DateTime<Utc>,
    ) -> Result<SourceAnswer, SourceError> {
        let (mapping, type_name) = match source {
            SourceConfig::Static(rotation) => {
                return Ok(match rotation.on_call_at(now) {
                    Some(shift) if shift.user == user => SourceAnswer::OnCall {
                        entry: RosterEntry {
                            user: ProviderUser {
                                id: Some(shift.user),
                                email: None,
                            },
                            schedule: rotation.schedule_name.clone(),
                            schedule_id: None,
                            escalation_policy: None,
                            level: None,
                            start: Some(shift.start),
                            end: Some(shift.end),
                        },
                        matched_by: if shift.overridden {
                            "slack_id_override"
                        } else {
                            "slack_id"
                        },
                    },
                    _ => SourceAnswer::NotOnCall,
                });
            }
            SourceConfig::PagerDuty(pd) => (pd.users.get(user), "PagerDuty"),
            SourceConfig::Opsgenie(og) => (og.users.get(user), "Opsgenie"),
        };
        let (wanted, matched_by) = match mapping {
            Some(m) => (m.clone(), "mapping"),
            None => match self.slack_email(slack, user, now.timestamp_millis()).await? {
                Some(email) => (email, "email"),
                None => {
                    return Ok(SourceAnswer::UnknownUser(format!(
                        "Slack shows no e-mail address for <@{user}>, so jitgate cannot find you in {type_name}; \
                         an operator can map you in oncall.sources.{name}.users"
                    )))
                }
            },
        };
        let roster = self.roster(name, source, now).await?;
        let found = roster.iter().find(|e| {
            let by_id = e.user.id.as_deref().is_some_and(|id| id == wanted);
            let by_email = e.user.email.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&wanted));
            by_id || by_email
        });
        Ok(match found {
            Some(entry) => SourceAnswer::OnCall {
                entry: entry.clone(),
                matched_by,
            },
            None => SourceAnswer::NotOnCall,
        })
    }

    /// The open PagerDuty incident `user` is assigned to, in source `name`. `known_id` is
    /// the PagerDuty user ID when the on-call answer already named it.
    pub async fn open_incident(
        &self,
        cfg: &OnCallConfig,
        name: &str,
        slack: &SlackApi,
        user: &str,
        known_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<OpenIncident>, SourceError> {
        let Some(SourceConfig::PagerDuty(pd)) = cfg.sources.get(name) else {
            return Err(SourceError::Unreachable("not a pagerduty source".into()));
        };
        let work = async {
            let token = self.credential(name)?;
            let pd_id = match (known_id, pd.users.get(user)) {
                (Some(id), _) => Some(id.to_string()),
                (None, Some(m)) if !m.contains('@') => Some(m.clone()),
                (None, mapped_email) => {
                    let email = match mapped_email {
                        Some(e) => Some(e.clone()),
                        None => self.slack_email(slack, user, now_ms).await?,
                    };
                    match email {
                        None => None,
                        Some(email) => {
                            let key = (name.to_string(), email.to_lowercase());
                            match self.pd_user_ids.get(&key, now_ms) {
                                Some(id) => id,
                                None => {
                                    let id = pagerduty::user_id_by_email(&self.http, pd, token, &email).await?;
                                    self.pd_user_ids.put(key, id.clone(), now_ms);
                                    id
                                }
                            }
                        }
                    }
                }
            };
            match pd_id {
                Some(id) => pagerduty::open_incident(&self.http, pd, token, &id).await,
                None => Ok(None),
            }
        };
        tokio::time::timeout(cfg.source_timeout, work)
            .await
            .unwrap_or(Err(SourceError::Timeout(cfg.source_timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn config(oncall: &str) -> Config {
        crate::config::parse(
            Path::new("t.toml"),
            &format!(
                r#"
[[resources]]
name = "prod-db"
roles = ["read", "write", "admin"]
max_duration = "8h"
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[adapters.demo]
type = "noop"

{oncall}
"#
            ),
        )
        .unwrap()
    }

    const ONCALL: &str = r#"
[oncall]
incident_channels = ["C0INCIDENT"]
incident_channel_prefixes = ["inc-"]

[[oncall.policies]]
name = "db"
allow = ["prod-db:read", "prod-db:write"]
sources = ["rota"]
max_duration = "2h"

[oncall.sources.rota]
type = "static"
members = ["U0ALICE"]
time_zone = "UTC"
start = "2020-01-01"
"#;

    fn h(text: &str) -> HumanDuration {
        text.parse().unwrap()
    }

    #[test]
    fn only_allowlisted_short_requests_from_possible_incident_channels_are_checked() {
        let c = config(ONCALL);
        assert!(could_auto_approve(&c, "prod-db", "write", h("1h"), "C0INCIDENT"));
        assert!(could_auto_approve(&c, "prod-db", "write", h("2h"), "C0ANYOTHER"));
        assert!(!could_auto_approve(&c, "prod-db", "admin", h("1h"), "C0INCIDENT"));
        assert!(!could_auto_approve(&c, "prod-db", "write", h("3h"), "C0INCIDENT"));
        // Direct messages can never be incident channels.
        assert!(!could_auto_approve(&c, "prod-db", "write", h("1h"), "D0DM"));
    }

    #[test]
    fn without_prefixes_only_listed_channels_are_checked() {
        let c = config(&ONCALL.replace("incident_channel_prefixes = [\"inc-\"]\n", ""));
        assert!(could_auto_approve(&c, "prod-db", "read", h("1h"), "C0INCIDENT"));
        assert!(!could_auto_approve(&c, "prod-db", "read", h("1h"), "C0GENERAL"));
    }

    #[test]
    fn the_cap_is_named_only_when_it_alone_stood_in_the_way() {
        let c = config(ONCALL);
        assert_eq!(
            cap_exceeded(&c, "prod-db", "write", h("3h"), "C0INCIDENT"),
            Some(h("2h"))
        );
        assert_eq!(cap_exceeded(&c, "prod-db", "write", h("1h"), "C0INCIDENT"), None);
        assert_eq!(cap_exceeded(&c, "prod-db", "admin", h("3h"), "C0INCIDENT"), None);
        assert_eq!(cap_exceeded(&c, "prod-db", "write", h("3h"), "D0DM"), None);
    }

    #[test]
    fn without_oncall_nothing_is_checked() {
        assert!(!could_auto_approve(
            &config(""),
            "prod-db",
            "read",
            h("1h"),
            "C0INCIDENT"
        ));
    }

    #[test]
    fn channel_names_match_prefixes_case_insensitively() {
        let c = config(ONCALL);
        let o = c.oncall.as_ref().unwrap();
        assert!(name_is_incident(o, "inc-2024-db-down"));
        assert!(name_is_incident(o, "#INC-42"));
        assert!(!name_is_incident(o, "general-inc-"));
        assert_eq!(channel_by_id(o, "C0INCIDENT"), Some(true));
        assert_eq!(channel_by_id(o, "D0DM"), Some(false));
        assert_eq!(channel_by_id(o, "C0OTHER"), None);
    }

    #[test]
    fn evidence_round_trips_and_summarises_escaped() {
        let e = Evidence {
            policy: "db".into(),
            source: "pd".into(),
            source_type: "pagerduty".into(),
            schedule: "Primary <!channel>".into(),
            schedule_id: Some("P1".into()),
            escalation_policy: Some("DB".into()),
            level: Some(1),
            shift_start: None,
            shift_end: None,
            matched_by: "email".into(),
            incident: Some(OpenIncident {
                id: "Q1".into(),
                number: Some(42),
                title: Some("db & down".into()),
                status: "triggered".into(),
                url: None,
            }),
            channel: "C1".into(),
            channel_name: Some("inc-42".into()),
            checked_at: 1,
        };
        let stored = serde_json::to_string(&e).unwrap();
        assert_eq!(Evidence::from_reason(Some(&stored)), Some(e.clone()));
        assert_eq!(Evidence::from_reason(Some("not json")), None);
        let s = e.summary();
        assert_eq!(
            s,
            "on call in PagerDuty schedule *Primary &lt;!channel&gt;* (level 1, escalation policy DB), \
             assigned to incident #42 “db &amp; down”"
        );
    }

    #[test]
    fn cache_entries_expire_after_their_ttl() {
        let c: TtlCache<String, u32> = TtlCache::new(Duration::from_secs(60));
        c.put("a".into(), 1, 1_000);
        assert_eq!(c.get(&"a".into(), 60_999), Some(1));
        assert_eq!(c.get(&"a".into(), 61_000), None);
        // A clock that went backwards does not make an entry live forever.
        assert_eq!(c.get(&"a".into(), 0), None);
    }

    proptest! {
        #[test]
        fn auto_approval_is_considered_only_for_allowlisted_roles_within_the_cap(
            role in prop_oneof![Just("read"), Just("write"), Just("admin")],
            secs in 1u64..(8 * 3600),
            channel in prop_oneof![Just("C0INCIDENT".to_string()), "[CDG][0-9A-Z]{8}"],
        ) {
            let c = config(ONCALL);
            let got = could_auto_approve(&c, "prod-db", role, HumanDuration::from_secs(secs), &channel);
            let expected = role != "admin" && secs <= 7200 && !channel.starts_with('D');
            prop_assert_eq!(got, expected);
        }
    }
}
