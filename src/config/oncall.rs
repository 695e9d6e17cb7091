//! `[oncall]` in the configuration file: incident channels, policies and on-call sources,
//! read into validated, typed settings. Problems are reported like the rest of the file:
//! the key, what is wrong, and what to write instead.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde::Deserialize;
use url::Url;

use crate::config::Resource;
use crate::duration::HumanDuration;
use crate::ids::{is_name, is_slack_id};
use crate::rotation::{resolve_local, Rotation, RotationOverride};

/// PagerDuty's REST API, unless overridden.
pub const DEFAULT_PAGERDUTY_URL: &str = "https://api.pagerduty.com";
/// Opsgenie's API in its US region, unless overridden (EU: https://api.eu.opsgenie.com).
pub const DEFAULT_OPSGENIE_URL: &str = "https://api.opsgenie.com";

/// `[oncall]`, validated.
#[derive(Debug, Clone)]
pub struct OnCallConfig {
    /// How long an answer from PagerDuty or Opsgenie (who is on call) is reused.
    pub cache_ttl: Duration,
    /// Longest wait for one source to answer (all pages of it), and for one Slack lookup.
    pub source_timeout: Duration,
    /// How long channel names and Slack e-mail addresses are reused.
    pub slack_cache_ttl: Duration,
    /// Channels that are incident channels by ID.
    pub incident_channels: Vec<String>,
    /// Channels whose name starts with one of these are incident channels.
    pub incident_channel_prefixes: Vec<String>,
    /// Checked in order; the first that approves wins.
    pub policies: Vec<Policy>,
    pub sources: BTreeMap<String, SourceConfig>,
}

/// One `[[oncall.policies]]` entry.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// What may be auto-approved; everything else goes to the approvers.
    pub allow: Vec<Allowed>,
    /// Names of `[oncall.sources.*]`; being on call in any one of them is enough.
    pub sources: Vec<String>,
    /// Longer requests go to the approvers.
    pub max_duration: HumanDuration,
    /// At most this many auto-approvals by this policy per requester in `rate_window`.
    pub rate_limit: u32,
    pub rate_window: HumanDuration,
    /// When set, the requester must also be assigned to an open incident in this
    /// PagerDuty source.
    pub require_open_incident: Option<String>,
}

impl Policy {
    /// The approver ID recorded for this policy's decisions: never a Slack user ID.
    pub fn approver_id(&self) -> String {
        format!("{APPROVER_PREFIX}{}", self.name)
    }

    /// Whether `resource:role` is on this policy's allowlist.
    pub fn allows(&self, resource: &str, role: &str) -> bool {
        self.allow
            .iter()
            .any(|a| a.resource == resource && a.role.as_deref().is_none_or(|r| r == role))
    }
}

/// Approver IDs of policy decisions start with this (Slack IDs never contain a colon).
pub const APPROVER_PREFIX: &str = "oncall:";

/// One allowlist entry: `resource:role` or `resource:*` (`role` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub resource: String,
    pub role: Option<String>,
}

/// One `[oncall.sources.NAME]` table.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Static(Rotation),
    PagerDuty(PagerDutyConfig),
    Opsgenie(OpsgenieConfig),
}

impl SourceConfig {
    /// The `type` as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Static(_) => "static",
            SourceConfig::PagerDuty(_) => "pagerduty",
            SourceConfig::Opsgenie(_) => "opsgenie",
        }
    }

    /// The environment variable holding this source's credential, if it has one.
    pub fn credential_env(&self) -> Option<&str> {
        match self {
            SourceConfig::Static(_) => None,
            SourceConfig::PagerDuty(p) => Some(&p.token_env),
            SourceConfig::Opsgenie(o) => Some(&o.key_env),
        }
    }
}

/// `type = "pagerduty"`
#[derive(Debug, Clone)]
pub struct PagerDutyConfig {
    pub base_url: Url,
    /// Name of the environment variable holding the REST API token.
    pub token_env: String,
    pub schedule_ids: Vec<String>,
    pub escalation_policy_ids: Vec<String>,
    /// Only on-calls at this escalation level or lower count.
    pub max_escalation_level: Option<u32>,
    /// Slack user ID → PagerDuty user ID (`P…`) or e-mail, instead of the Slack e-mail.
    pub users: BTreeMap<String, String>,
}

/// `type = "opsgenie"`
#[derive(Debug, Clone)]
pub struct OpsgenieConfig {
    pub base_url: Url,
    /// Name of the environment variable holding the API key.
    pub key_env: String,
    pub schedule_ids: Vec<String>,
    /// Slack user ID → Opsgenie username (an e-mail), instead of the Slack e-mail.
    pub users: BTreeMap<String, String>,
}

// ---- the file as written -------------------------------------------------------------

/// `[oncall]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOnCall {
    cache_ttl: Option<HumanDuration>,
    source_timeout: Option<HumanDuration>,
    slack_cache_ttl: Option<HumanDuration>,
    #[serde(default)]
    incident_channels: Vec<String>,
    #[serde(default)]
    incident_channel_prefixes: Vec<String>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
    #[serde(default)]
    sources: BTreeMap<String, toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    sources: Vec<String>,
    max_duration: Option<HumanDuration>,
    rate_limit: Option<u32>,
    rate_window: Option<HumanDuration>,
    #[serde(default)]
    require_open_incident: bool,
    incident_source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagerDuty {
    base_url: Option<String>,
    token_env: String,
    #[serde(default)]
    schedule_ids: Vec<String>,
    #[serde(default)]
    escalation_policy_ids: Vec<String>,
    max_escalation_level: Option<u32>,
    #[serde(default)]
    users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpsgenie {
    base_url: Option<String>,
    key_env: String,
    #[serde(default)]
    schedule_ids: Vec<String>,
    #[serde(default)]
    users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    schedule_name: Option<String>,
    members: Vec<String>,
    time_zone: String,
    start: String,
    handoff_time: Option<String>,
    handoff_weekday: Option<String>,
    rotation_length: Option<HumanDuration>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    user: String,
    start: String,
    end: String,
}

// ---- validation ----------------------------------------------------------------------

/// Validates `[oncall]` against the resources, adding every problem found to `problems`.
pub fn validate(raw: RawOnCall, resources: &[Resource], problems: &mut Vec<String>) -> Option<OnCallConfig> {
    let before = problems.len();
    let cache_ttl = raw.cache_ttl.unwrap_or(HumanDuration::from_secs(60));
    if cache_ttl.as_secs() > 3600 {
        problems.push(format!(
            "oncall.cache_ttl: {cache_ttl} is too long to trust an on-call answer; use 1h or less (default 60s)"
        ));
    }
    let source_timeout = raw.source_timeout.unwrap_or(HumanDuration::from_secs(2));
    if source_timeout.as_secs() > 30 {
        problems.push(format!(
            "oncall.source_timeout: {source_timeout} is too long; use 30s or less (default 2s)"
        ));
    }
    let slack_cache_ttl = raw.slack_cache_ttl.unwrap_or(HumanDuration::from_secs(600));
    if slack_cache_ttl.as_secs() > 86_400 {
        problems.push(format!(
            "oncall.slack_cache_ttl: {slack_cache_ttl} is too long; use 1d or less (default 10m)"
        ));
    }

    for c in &raw.incident_channels {
        if !is_slack_id(c, &['C', 'G']) {
            problems.push(format!(
                "oncall.incident_channels: `{c}` is not a Slack channel ID; use the ID like \"C0123ABCD\" \
                 (channel details → About, at the bottom), or put a name prefix in incident_channel_prefixes"
            ));
        }
    }
    for p in &raw.incident_channel_prefixes {
        let ok = !p.is_empty()
            && p.len() <= 80
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            problems.push(format!(
                "oncall.incident_channel_prefixes: `{p}` is not the start of a Slack channel name; \
                 write it in lowercase without the #, like \"inc-\""
            ));
        }
    }
    if raw.incident_channels.is_empty() && raw.incident_channel_prefixes.is_empty() {
        problems.push(
            "oncall: no incident channels, so nothing can be auto-approved; set incident_channels = [\"C…\"] \
             and/or incident_channel_prefixes = [\"inc-\"], or remove [oncall]"
                .into(),
        );
    }

    let mut sources = BTreeMap::new();
    for (name, table) in raw.sources {
        let key = format!("oncall.sources.{name}");
        if !is_name(&name) {
            problems.push(format!(
                "{key}: source names use lowercase letters, digits, - and _ (like \"pd-primary\")"
            ));
        }
        match source_from_table(&key, table) {
            Ok(s) => {
                sources.insert(name, s);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }

    if raw.policies.is_empty() {
        problems.push(
            "oncall.policies: none configured, so nothing can be auto-approved; add an [[oncall.policies]] table \
             or remove [oncall]"
                .into(),
        );
    }
    let mut policies = Vec::new();
    let mut seen = HashSet::new();
    for (i, p) in raw.policies.into_iter().enumerate() {
        let key = format!("oncall.policies[{i}] ({})", p.name);
        if !is_name(&p.name) {
            problems.push(format!(
                "oncall.policies[{i}].name: `{}` must use lowercase letters, digits, - and _ (like \"db-on-call\")",
                p.name
            ));
        }
        if !seen.insert(p.name.clone()) {
            problems.push(format!(
                "{key}.name: duplicate policy `{}`; names must be unique",
                p.name
            ));
        }
        let mut allow = Vec::new();
        if p.allow.is_empty() {
            problems.push(format!(
                "{key}.allow: empty; list what may be auto-approved, like allow = [\"prod-db:read\", \"k8s:*\"]"
            ));
        }
        for entry in &p.allow {
            match parse_allowed(entry, resources) {
                Ok(a) => allow.push(a),
                Err(why) => problems.push(format!("{key}.allow: {why}")),
            }
        }
        if p.sources.is_empty() {
            problems.push(format!(
                "{key}.sources: empty; name at least one [oncall.sources.NAME], like sources = [\"pd-primary\"]"
            ));
        }
        for s in &p.sources {
            if !sources.contains_key(s) {
                problems.push(format!(
                    "{key}.sources: unknown source `{s}`; define [oncall.sources.{s}] or use one of: {}",
                    known(&sources)
                ));
            }
        }
        let max_duration = p.max_duration.unwrap_or(HumanDuration::from_secs(3600));
        let rate_limit = p.rate_limit.unwrap_or(3);
        if rate_limit == 0 {
            problems.push(format!(
                "{key}.rate_limit: must be at least 1 (auto-approvals per person per rate_window); \
                 to turn the policy off, remove it"
            ));
        }
        let rate_window = p.rate_window.unwrap_or(HumanDuration::from_secs(86_400));
        if rate_window.as_secs() < 60 {
            problems.push(format!("{key}.rate_window: must be at least 1m"));
        }
        let require_open_incident = if p.require_open_incident {
            let pd_sources: Vec<&String> = p
                .sources
                .iter()
                .filter(|s| matches!(sources.get(*s), Some(SourceConfig::PagerDuty(_))))
                .collect();
            match (&p.incident_source, pd_sources.as_slice()) {
                (Some(s), _) => {
                    if !matches!(sources.get(s), Some(SourceConfig::PagerDuty(_))) {
                        problems.push(format!(
                            "{key}.incident_source: `{s}` is not a [oncall.sources.{s}] table with type = \"pagerduty\""
                        ));
                    }
                    Some(s.clone())
                }
                (None, [only]) => Some((*only).clone()),
                (None, []) => {
                    problems.push(format!(
                        "{key}.require_open_incident: incidents are read from PagerDuty, but none of this policy's \
                         sources is a pagerduty source; set incident_source = \"NAME\" of one"
                    ));
                    None
                }
                (None, _) => {
                    problems.push(format!(
                        "{key}.require_open_incident: more than one pagerduty source; say which one has the \
                         incidents with incident_source = \"NAME\""
                    ));
                    None
                }
            }
        } else {
            if p.incident_source.is_some() {
                problems.push(format!(
                    "{key}.incident_source: only used with require_open_incident = true; add that or remove it"
                ));
            }
            None
        };
        policies.push(Policy {
            name: p.name,
            allow,
            sources: p.sources,
            max_duration,
            rate_limit,
            rate_window,
            require_open_incident,
        });
    }

    if problems.len() > before {
        return None;
    }
    Some(OnCallConfig {
        cache_ttl: cache_ttl.to_std(),
        source_timeout: source_timeout.to_std(),
        slack_cache_ttl: slack_cache_ttl.to_std(),
        incident_channels: raw.incident_channels,
        incident_channel_prefixes: raw.incident_channel_prefixes,
        policies,
        sources,
    })
}

fn known<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        "(none defined)".into()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn parse_allowed(entry: &str, resources: &[Resource]) -> Result<Allowed, String> {
    let Some((resource, role)) = entry.split_once(':') else {
        return Err(format!(
            "`{entry}` names no role; write `{entry}:ROLE` for one role or `{entry}:*` for all of them"
        ));
    };
    let Some(r) = resources.iter().find(|r| r.name == resource) else {
        let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "`{entry}`: there is no resource `{resource}`; configured resources: {}",
            names.join(", ")
        ));
    };
    if role == "*" {
        return Ok(Allowed {
            resource: resource.into(),
            role: None,
        });
    }
    if !r.roles.iter().any(|x| x == role) {
        return Err(format!(
            "`{entry}`: `{resource}` has no role `{role}`; its roles are {} (or write `{resource}:*`)",
            r.roles.join(", ")
        ));
    }
    Ok(Allowed {
        resource: resource.into(),
        role: Some(role.into()),
    })
}

fn source_from_table(key: &str, mut table: toml::Table) -> Result<SourceConfig, Vec<String>> {
    let Some(kind) = table.remove("type") else {
        return Err(vec![format!(
            "{key}.type: missing; write type = \"pagerduty\", \"opsgenie\" or \"static\""
        )]);
    };
    let kind = kind.as_str().unwrap_or_default().to_string();
    let value = toml::Value::Table(table);
    let mut problems = Vec::new();
    let source = match kind.as_str() {
        "pagerduty" => {
            let raw: RawPagerDuty = crate::config::de::from_value(key, value)?;
            let base_url = base_url(key, raw.base_url.as_deref(), DEFAULT_PAGERDUTY_URL, &mut problems);
            env_name(&format!("{key}.token_env"), &raw.token_env, &mut problems);
            if raw.schedule_ids.is_empty() {
                problems.push(format!(
                    "{key}.schedule_ids: empty; list the schedules whose on-call people may be auto-approved, \
                     like [\"PABC123\"] (the ID is in the schedule's URL)"
                ));
            }
            for id in raw.schedule_ids.iter().chain(&raw.escalation_policy_ids) {
                if !is_provider_id(id) {
                    problems.push(format!(
                        "{key}: `{id}` is not a PagerDuty ID; use the ID from the URL, like \"PABC123\""
                    ));
                }
            }
            if raw.max_escalation_level == Some(0) {
                problems.push(format!(
                    "{key}.max_escalation_level: levels start at 1; use 1 for first responders only"
                ));
            }
            for (slack, pd) in &raw.users {
                user_key(key, slack, &mut problems);
                if !(pd.contains('@') || is_provider_id(pd)) {
                    problems.push(format!(
                        "{key}.users.{slack}: `{pd}` is neither a PagerDuty user ID (like \"PUSER12\") nor an e-mail"
                    ));
                }
            }
            base_url.map(|base_url| {
                SourceConfig::PagerDuty(PagerDutyConfig {
                    base_url,
                    token_env: raw.token_env,
                    schedule_ids: raw.schedule_ids,
                    escalation_policy_ids: raw.escalation_policy_ids,
                    max_escalation_level: raw.max_escalation_level,
                    users: raw.users,
                })
            })
        }
        "opsgenie" => {
            let raw: RawOpsgenie = crate::config::de::from_value(key, value)?;
            let base_url = base_url(key, raw.base_url.as_deref(), DEFAULT_OPSGENIE_URL, &mut problems);
            env_name(&format!("{key}.key_env"), &raw.key_env, &mut problems);
            if raw.schedule_ids.is_empty() {
                problems.push(format!(
                    "{key}.schedule_ids: empty; list the schedule IDs (Opsgenie → Teams → On-call → schedule \
                     → the ID in the URL)"
                ));
            }
            for id in &raw.schedule_ids {
                if id.trim().is_empty() || id.len() > 100 {
                    problems.push(format!("{key}.schedule_ids: `{id}` is not a schedule ID"));
                }
            }
            for (slack, og) in &raw.users {
                user_key(key, slack, &mut problems);
                if !og.contains('@') {
                    problems.push(format!(
                        "{key}.users.{slack}: `{og}` is not an Opsgenie username; usernames are e-mail addresses"
                    ));
                }
            }
            base_url.map(|base_url| {
                SourceConfig::Opsgenie(OpsgenieConfig {
                    base_url,
                    key_env: raw.key_env,
                    schedule_ids: raw.schedule_ids,
                    users: raw.users,
                })
            })
        }
        "static" => {
            let raw: RawStatic = crate::config::de::from_value(key, value)?;
            static_rotation(key, raw, &mut problems).map(SourceConfig::Static)
        }
        other => {
            return Err(vec![format!(
                "{key}.type: unknown source type `{other}`; use \"pagerduty\", \"opsgenie\" or \"static\""
            )])
        }
    };
    match source {
        Some(s) if problems.is_empty() => Ok(s),
        _ => Err(problems),
    }
}

fn user_key(key: &str, slack: &str, problems: &mut Vec<String>) {
    if !is_slack_id(slack, &['U', 'W']) {
        problems.push(format!(
            "{key}.users: `{slack}` is not a Slack user ID; map member IDs like U0123ABCD = \"…\""
        ));
    }
}

/// PagerDuty-style IDs: upper-case letters and digits.
fn is_provider_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn env_name(key: &str, name: &str, problems: &mut Vec<String>) {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        // The value is not repeated: if it is a pasted secret, it must not reach a log.
        problems.push(format!(
            "{key}: not an environment variable name; write the NAME of the variable holding \
             the secret (like \"PAGERDUTY_TOKEN\"), never the secret itself"
        ));
    }
}

fn base_url(key: &str, given: Option<&str>, default: &str, problems: &mut Vec<String>) -> Option<Url> {
    let text = given.unwrap_or(default).trim_end_matches('/');
    let url = match Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            problems.push(format!(
                "{key}.base_url: `{text}` is not a URL ({e}); like \"{default}\""
            ));
            return None;
        }
    };
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            problems.push(format!(
                "{key}.base_url: `{text}` must use https (the credential travels with every call); \
                 plain http is only for a local test server"
            ));
            return None;
        }
    }
    if url.query().is_some() || url.cannot_be_a_base() {
        problems.push(format!(
            "{key}.base_url: `{text}` must be a base URL without a query, like \"{default}\""
        ));
        return None;
    }
    Some(url)
}

fn static_rotation(key: &str, raw: RawStatic, problems: &mut Vec<String>) -> Option<Rotation> {
    let before = problems.len();
    if raw.members.is_empty() {
        problems.push(format!(
            "{key}.members: empty; list the Slack user IDs in rotation order, like [\"U0ALICE\", \"U0BOB\"]"
        ));
    }
    for m in &raw.members {
        if !is_slack_id(m, &['U', 'W']) {
            problems.push(format!(
                "{key}.members: `{m}` is not a Slack user ID; use the member ID like \"U0123ABCD\" \
                 (profile → ⋮ → Copy member ID)"
            ));
        }
    }
    let tz: Option<Tz> = match raw.time_zone.parse() {
        Ok(tz) => Some(tz),
        Err(_) => {
            problems.push(format!(
                "{key}.time_zone: `{}` is not an IANA time zone; write it like \"Europe/Berlin\" or \
                 \"America/New_York\" (not an abbreviation like CET or EST)",
                raw.time_zone
            ));
            None
        }
    };
    let start = match NaiveDate::parse_from_str(&raw.start, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(_) => {
            problems.push(format!(
                "{key}.start: `{}` is not a date; write the day the first member's first shift began, \
                 like \"2025-01-06\"",
                raw.start
            ));
            None
        }
    };
    let handoff_text = raw.handoff_time.as_deref().unwrap_or("09:00");
    let handoff_time = match NaiveTime::parse_from_str(handoff_text, "%H:%M") {
        Ok(t) => Some(t),
        Err(_) => {
            problems.push(format!(
                "{key}.handoff_time: `{handoff_text}` is not a time of day; write it like \"09:00\" (24-hour, local)"
            ));
            None
        }
    };
    let rotation_length = raw.rotation_length.unwrap_or(HumanDuration::from_secs(7 * 86_400));
    let rotation_days = rotation_length.as_secs() / 86_400;
    if rotation_length.as_secs() % 86_400 != 0 {
        problems.push(format!(
            "{key}.rotation_length: `{rotation_length}` is not a whole number of days; shifts hand off at \
             handoff_time, so write \"1d\", \"7d\" or \"14d\""
        ));
    }
    if let Some(text) = &raw.handoff_weekday {
        match text.parse::<Weekday>() {
            Ok(day) => {
                if rotation_length.as_secs() % (7 * 86_400) != 0 {
                    problems.push(format!(
                        "{key}.handoff_weekday: a handoff on {day} needs whole weeks in rotation_length \
                         (\"7d\", \"14d\"), not `{rotation_length}`"
                    ));
                }
                if let Some(s) = start {
                    if s.weekday() != day {
                        problems.push(format!(
                            "{key}.start: {s} is a {}, but handoff_weekday is {day}; use the date of a {day}",
                            s.weekday()
                        ));
                    }
                }
            }
            Err(_) => problems.push(format!(
                "{key}.handoff_weekday: `{text}` is not a weekday; write it like \"monday\""
            )),
        }
    }
    let mut overrides = Vec::new();
    for (i, o) in raw.overrides.iter().enumerate() {
        let okey = format!("{key}.overrides[{i}]");
        if !is_slack_id(&o.user, &['U', 'W']) {
            problems.push(format!(
                "{okey}.user: `{}` is not a Slack user ID like \"U0123ABCD\"",
                o.user
            ));
        }
        let Some(tz) = tz else { continue };
        let from = instant(&okey, "start", &o.start, tz, problems);
        let until = instant(&okey, "end", &o.end, tz, problems);
        if let (Some(from), Some(until)) = (from, until) {
            if from >= until {
                problems.push(format!("{okey}: end ({}) is not after start ({})", o.end, o.start));
            }
            overrides.push(RotationOverride {
                user: o.user.clone(),
                start: from,
                end: until,
            });
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Rotation {
        schedule_name: raw
            .schedule_name
            .unwrap_or_else(|| key.rsplit('.').next().unwrap_or(key).to_string()),
        members: raw.members,
        tz: tz?,
        start: start?,
        handoff_time: handoff_time?,
        rotation_days: rotation_days.max(1) as i64,
        overrides,
    })
}

/// An override bound: local time in the rotation's zone (`2025-12-24T09:00`), or RFC 3339
/// with an offset.
fn instant(key: &str, field: &str, text: &str, tz: Tz, problems: &mut Vec<String>) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(local) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(resolve_local(&tz, local));
        }
    }
    problems.push(format!(
        "{key}.{field}: `{text}` is not a date and time; write it like \"2025-12-24T09:00\" \
         (in the rotation's time_zone)"
    ));
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[adapters.demo]
type = "noop"
"#;

    const ONCALL: &str = r#"
[oncall]
incident_channels = ["C0INC"]
incident_channel_prefixes = ["inc-"]

[[oncall.policies]]
name = "db"
allow = ["prod-db:read", "prod-db:write"]
sources = ["pd", "og", "rota"]
max_duration = "2h"
rate_limit = 2
rate_window = "12h"
require_open_incident = true

[oncall.sources.pd]
type = "pagerduty"
token_env = "PD_TOKEN"
schedule_ids = ["PSCHED1"]
escalation_policy_ids = ["PEP1"]
max_escalation_level = 1
users = { U0ALICE = "PALICE1" }

[oncall.sources.og]
type = "opsgenie"
key_env = "OG_KEY"
base_url = "https://api.eu.opsgenie.com"
schedule_ids = ["a1b2c3"]

[oncall.sources.rota]
type = "static"
members = ["U0ALICE", "U0BOB"]
time_zone = "Europe/Berlin"
start = "2025-01-06"
handoff_weekday = "monday"
handoff_time = "09:00"
rotation_length = "7d"

[[oncall.sources.rota.overrides]]
user = "U0CAROL"
start = "2025-12-24T09:00"
end = "2025-12-27T09:00"
"#;

    fn parse(extra: &str) -> Result<crate::config::Config, Vec<String>> {
        crate::config::parse(Path::new("t.toml"), &format!("{BASE}{extra}")).map_err(|e| e.problems)
    }

    fn problems(extra: &str) -> Vec<String> {
        parse(extra).unwrap_err()
    }

    #[test]
    fn a_full_oncall_section_loads() {
        let c = parse(ONCALL).unwrap();
        let o = c.oncall.unwrap();
        let p = &o.policies[0];
        assert!(p.allows("prod-db", "write"));
        assert_eq!(p.require_open_incident.as_deref(), Some("pd"));
        assert_eq!((p.rate_limit, p.rate_window.as_secs()), (2, 43_200));
        assert_eq!(o.cache_ttl.as_secs(), 60);
        assert_eq!(o.source_timeout.as_secs(), 2);
        assert_eq!(o.sources.len(), 3);
    }

    #[test]
    fn no_oncall_section_means_no_auto_approval() {
        assert!(parse("").unwrap().oncall.is_none());
    }

    #[test]
    fn allowlist_entries_must_name_existing_resources_and_roles() {
        let p = problems(&ONCALL.replace(
            "allow = [\"prod-db:read\", \"prod-db:write\"]",
            "allow = [\"prod-db\", \"prod-db:admin\", \"nope:*\"]",
        ));
        assert!(
            p.iter()
                .any(|m| m.contains("`prod-db` names no role; write `prod-db:ROLE`")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("has no role `admin`")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("there is no resource `nope`")), "{p:?}");
    }

    #[test]
    fn unknown_sources_and_keys_are_named() {
        let p = problems(&ONCALL.replace("sources = [\"pd\", \"og\", \"rota\"]", "sources = [\"pd\", \"pager\"]"));
        assert!(
            p.iter()
                .any(|m| m.contains("unknown source `pager`; define [oncall.sources.pager]")),
            "{p:?}"
        );
        let p = problems(&ONCALL.replace("token_env = \"PD_TOKEN\"", "token_env = \"PD_TOKEN\"\ntoken = \"x\""));
        assert!(
            p.iter()
                .any(|m| m.contains("oncall.sources.pd.token: unknown key; did you mean `token_env`?")),
            "{p:?}"
        );
    }

    #[test]
    fn secrets_are_named_by_variable_not_written_inline() {
        let p = problems(&ONCALL.replace("token_env = \"PD_TOKEN\"", "token_env = \"u+abc123secret\""));
        assert!(
            p.iter()
                .any(|m| m.contains("token_env: not an environment variable name")),
            "{p:?}"
        );
        assert!(p.iter().all(|m| !m.contains("abc123secret")), "{p:?}");
    }

    #[test]
    fn plain_http_is_refused_except_for_loopback() {
        let p = problems(&ONCALL.replace(
            "base_url = \"https://api.eu.opsgenie.com\"",
            "base_url = \"http://api.eu.opsgenie.com\"",
        ));
        assert!(p.iter().any(|m| m.contains("must use https")), "{p:?}");
        assert!(parse(&ONCALL.replace(
            "base_url = \"https://api.eu.opsgenie.com\"",
            "base_url = \"http://127.0.0.1:9999\"",
        ))
        .is_ok());
    }

    #[test]
    fn static_rotations_are_checked_for_zone_weekday_and_length() {
        let p = problems(
            &ONCALL
                .replace("Europe/Berlin", "CET-ish")
                .replace("start = \"2025-01-06\"", "start = \"2025-01-07\"")
                .replace("rotation_length = \"7d\"", "rotation_length = \"36h\""),
        );
        assert!(p.iter().any(|m| m.contains("is not an IANA time zone")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("not a whole number of days")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needs whole weeks")), "{p:?}");
        let p = problems(&ONCALL.replace("start = \"2025-01-06\"", "start = \"2025-01-07\""));
        assert!(
            p.iter()
                .any(|m| m.contains("2025-01-07 is a Tue, but handoff_weekday is Mon")),
            "{p:?}"
        );
    }

    #[test]
    fn require_open_incident_needs_one_pagerduty_source() {
        let p = problems(&ONCALL.replace("sources = [\"pd\", \"og\", \"rota\"]", "sources = [\"og\"]"));
        assert!(
            p.iter()
                .any(|m| m.contains("none of this policy's sources is a pagerduty source")),
            "{p:?}"
        );
    }

    #[test]
    fn incident_channels_are_required() {
        let p = problems(
            &ONCALL
                .replace("incident_channels = [\"C0INC\"]\n", "")
                .replace("incident_channel_prefixes = [\"inc-\"]\n", ""),
        );
        assert!(p.iter().any(|m| m.contains("no incident channels")), "{p:?}");
        let p = problems(&ONCALL.replace("[\"inc-\"]", "[\"#INC-\"]"));
        assert!(
            p.iter().any(|m| m.contains("write it in lowercase without the #")),
            "{p:?}"
        );
    }

    /// The README's on-call examples, each a complete `[oncall]` setup once it has an
    /// incident channel setting.
    #[test]
    fn the_readme_examples_are_valid() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## On-call auto-approval")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has the on-call section");
        let base = BASE.replace(
            "[adapters.demo]",
            "[[resources]]\nname = \"k8s-prod\"\nroles = [\"view\", \"admin\"]\napproval_channel = \"C0APPROVALS\"\n\
             approvers = [\"U0APPROVER1\"]\nadapter = \"demo\"\n\n[adapters.demo]",
        );
        let mut examples = 0;
        for block in section.split("```toml").skip(1) {
            let toml = block.split("```").next().unwrap();
            let toml = if toml.trim_start().starts_with("[oncall]") {
                toml.to_string()
            } else {
                format!("[oncall]\nincident_channels = [\"C0INCIDENT\"]\n{toml}")
            };
            let parsed = crate::config::parse(Path::new("README.md"), &format!("{base}{toml}"));
            assert!(
                parsed.is_ok(),
                "README example does not load:\n{toml}\n{}",
                parsed.unwrap_err()
            );
            examples += 1;
        }
        assert_eq!(examples, 3, "one example per source type");
        let json = section.split("```json").nth(1).unwrap().split("```").next().unwrap();
        let evidence: crate::oncall::Evidence = serde_json::from_str(json).unwrap();
        assert_eq!(evidence.schedule, "Primary DB");
    }

    #[test]
    fn rate_limit_zero_is_refused() {
        let p = problems(&ONCALL.replace("rate_limit = 2", "rate_limit = 0"));
        assert!(p.iter().any(|m| m.contains("rate_limit: must be at least 1")), "{p:?}");
    }
}
