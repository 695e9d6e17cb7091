//! `policy explain` and `/jit explain`: who may ask for a resource and for how long, who
//! may approve it and how many must, whether on-call auto-approval would apply from a
//! channel (and which condition fails if not), and whether break-glass is available.
//!
//! The answer comes from the functions the live paths use: [`crate::requests::validate`]
//! for a request, [`crate::policy::approver_eligibility`] (through `may_decide`) for a
//! click, [`crate::oncall::could_auto_approve`] and [`super::oncall::decide`] for the
//! on-call job, [`crate::policy::break_glass`] for `/jit breakglass`. [`assess`] is the
//! part without I/O; [`explain`] adds what Slack, the on-call sources and the database say.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::oncall::{decide, Ask, Decision, Declined};
use crate::config::Config;
use crate::duration::HumanDuration;
use crate::oncall::OnCall;
use crate::policy::{self, BreakGlassRefusal, Ineligible, OnCallPrecheck};
use crate::requests::{validate, RequestInput};
use crate::slack::client::SlackApi;

/// The question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Slack user ID of the person asking for access.
    pub user: String,
    pub resource: String,
    pub role: Option<String>,
    /// The channel the request would be made in (on-call auto-approval depends on it).
    pub channel: Option<String>,
    pub duration: Option<HumanDuration>,
}

/// A user group's members, as far as they are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    Known(Vec<String>),
    /// Not asked (no Slack token) or Slack could not say; the text says why.
    Unknown(String),
}

impl Members {
    /// Whether `user` is a member: `None` when unknown.
    pub fn contains(&self, user: &str) -> Option<bool> {
        match self {
            Members::Known(m) => Some(m.iter().any(|u| u == user)),
            Members::Unknown(_) => None,
        }
    }
}

/// Whether `user` is in any of `groups`: `Some(true)` if a known group has them,
/// `Some(false)` if every group is known and none has them, `None` otherwise.
pub fn in_any(groups: &[String], members: &BTreeMap<String, Members>, user: &str) -> Option<bool> {
    let mut unknown = false;
    for g in groups {
        match members.get(g).map(|m| m.contains(user)) {
            Some(Some(true)) => return Some(true),
            Some(Some(false)) => {}
            _ => unknown = true,
        }
    }
    (!unknown).then_some(false)
}

/// On-call auto-approval as judged from the configuration and the channel alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnCallOutlook {
    /// The request could not be made at all.
    NotRequestable,
    /// Refused before any lookup: not configured, not allowlisted, over the cap, or the
    /// channel cannot be an incident channel.
    Declined(Declined),
    /// No channel given: these policies could approve it from an incident channel.
    NoChannel { policies: Vec<String> },
    /// The live path would run the on-call check for these policies.
    WouldCheck { policies: Vec<String> },
}

/// Everything that can be said without I/O (group members and usage passed in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub resource: String,
    /// The role and duration the request resolves to, or the reply a request would get.
    pub request: Result<(String, HumanDuration), String>,
    pub max_duration: HumanDuration,
    pub default_duration: HumanDuration,
    pub approvers: Vec<String>,
    pub groups: BTreeMap<String, Members>,
    pub approvals_required: u32,
    /// The asker as a would-be approver of their own request: always refused.
    pub own_request: Result<(), Ineligible>,
    /// Whether the asker is an approver of the resource (for others' requests).
    pub is_approver: Option<bool>,
    pub oncall: OnCallOutlook,
    /// Break-glass: the duration it would grant, or why not; `None` when it depends on
    /// group membership nobody could resolve.
    pub break_glass: Option<Result<HumanDuration, BreakGlassRefusal>>,
    /// Break-glass uses of the asker within the window.
    pub break_glass_used: i64,
}

/// The answer without I/O. `Err` names an unknown resource.
pub fn assess(
    config: &Config,
    q: &Question,
    groups: &BTreeMap<String, Members>,
    break_glass_used: i64,
) -> Result<Assessment, String> {
    let Some(resource) = config.resource(&q.resource) else {
        let known: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "unknown resource `{}`; configured resources: {}",
            q.resource,
            known.join(", ")
        ));
    };
    let input = RequestInput {
        resource: q.resource.clone(),
        role: q.role.clone(),
        duration: q.duration,
        // The reason is not part of the policy.
        reason: "policy explain".into(),
    };
    let request = validate(config, &input).map(|v| (v.role, v.duration));
    let in_approver_group = in_any(&resource.approver_groups, groups, &q.user);
    let listed = resource.approvers.iter().any(|a| a == &q.user);
    let is_approver = if listed { Some(true) } else { in_approver_group };
    let own_request = policy::approver_eligibility(resource, &q.user, &q.user, is_approver.unwrap_or(false));
    let oncall = match &request {
        Err(_) => OnCallOutlook::NotRequestable,
        Ok((role, duration)) => match policy::oncall_candidates(config, &resource.name, role, *duration) {
            OnCallPrecheck::NotConfigured => OnCallOutlook::Declined(Declined::NotConfigured),
            OnCallPrecheck::NotAllowlisted => OnCallOutlook::Declined(Declined::NotAllowlisted),
            OnCallPrecheck::TooLong { cap } => OnCallOutlook::Declined(Declined::TooLong { cap }),
            OnCallPrecheck::Candidates(ps) => {
                let policies = ps.iter().map(|p| p.name.clone()).collect();
                match &q.channel {
                    None => OnCallOutlook::NoChannel { policies },
                    Some(c) if crate::oncall::could_auto_approve(config, &resource.name, role, *duration, c) => {
                        OnCallOutlook::WouldCheck { policies }
                    }
                    Some(_) => OnCallOutlook::Declined(Declined::NotIncidentChannel { name: None }),
                }
            }
        },
    };
    let break_glass = match policy::break_glass_of(resource) {
        Err(e) => Some(Err(e)),
        Ok(bg) => {
            let listed = bg.users.iter().any(|u| u == &q.user);
            match (listed, in_any(&bg.groups, groups, &q.user)) {
                (false, None) => None,
                (_, in_group) => Some(policy::break_glass(
                    config,
                    resource,
                    &q.user,
                    in_group.unwrap_or(false),
                    q.duration,
                    break_glass_used,
                )),
            }
        }
    };
    Ok(Assessment {
        resource: resource.name.clone(),
        request,
        max_duration: resource.max_duration,
        default_duration: resource.default_duration,
        approvers: resource.approvers.clone(),
        groups: resource
            .approver_groups
            .iter()
            .map(|g| {
                let m = groups
                    .get(g)
                    .cloned()
                    .unwrap_or_else(|| Members::Unknown("not looked up".into()));
                (g.clone(), m)
            })
            .collect(),
        approvals_required: resource.approvals_required,
        own_request,
        is_approver,
        oncall,
        break_glass,
        break_glass_used,
    })
}

/// The full answer: the assessment plus, when the live path would run it, the on-call
/// check's own decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub question: Question,
    pub assessment: Assessment,
    /// What the on-call check decided, when it was run.
    pub oncall_decision: Option<Decision>,
}

/// What `explain` may ask: Slack (groups, channel names, e-mails; `None` without a token),
/// the on-call sources and the database (usage counts).
pub struct Lookups<'a> {
    pub config: &'a Config,
    pub slack: Option<&'a SlackApi>,
    /// Used for on-call checks that need Slack even without a token (they then fail and
    /// say so, like the live path would).
    pub slack_or_offline: &'a SlackApi,
    pub oncall: &'a OnCall,
    pub read: &'a crate::store::Pool,
    pub now: DateTime<Utc>,
}

/// Answers `q`. `Err` (outer) is trouble reading the database; `Err` (inner) names an
/// unknown resource.
pub async fn explain(l: &Lookups<'_>, q: &Question) -> anyhow::Result<Result<Explanation, String>> {
    let Some(resource) = l.config.resource(&q.resource) else {
        return Ok(Err(assess(l.config, q, &BTreeMap::new(), 0).unwrap_err()));
    };
    let mut wanted: Vec<&String> = resource.approver_groups.iter().collect();
    if let Some(bg) = &resource.break_glass {
        wanted.extend(bg.groups.iter());
    }
    let mut groups = BTreeMap::new();
    for g in wanted {
        let members = match l.slack {
            None => Members::Unknown("SLACK_BOT_TOKEN is not set, so members were not looked up".into()),
            Some(slack) => match slack.group_members(g).await {
                Ok(m) => Members::Known(m),
                Err(e) => Members::Unknown(format!("Slack could not list its members: {e}")),
            },
        };
        groups.insert(g.clone(), members);
    }
    let now_ms = l.now.timestamp_millis();
    let used = {
        let mut conn = l.read.acquire().await?;
        let window = l.config.break_glass.rate_window.as_secs() as i64 * 1000;
        crate::store::count_break_glass_uses(&mut conn, &q.user, now_ms - window).await?
    };
    let assessment = match assess(l.config, q, &groups, used) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let oncall_decision = match (&assessment.oncall, &assessment.request, &q.channel) {
        (OnCallOutlook::WouldCheck { .. }, Ok((role, duration)), Some(channel)) => {
            let ask = Ask {
                requester: &q.user,
                resource: &assessment.resource,
                role,
                duration: *duration,
                channel,
                request_id: None,
                metrics: None,
            };
            Some(decide(l.config, l.oncall, l.slack_or_offline, l.read, &ask, l.now).await?)
        }
        _ => None,
    };
    Ok(Ok(Explanation {
        question: q.clone(),
        assessment,
        oncall_decision,
    }))
}

/// The failing condition's name, as `policy explain` words it.
pub fn condition(d: &Declined) -> String {
    match d {
        Declined::NotConfigured => "on-call auto-approval is not configured".into(),
        Declined::NotAllowlisted => "not allowlisted by any on-call policy".into(),
        Declined::TooLong { cap } => format!("over the on-call cap of {cap}"),
        Declined::NotIncidentChannel { .. } => "not an incident channel".into(),
        Declined::ChannelCheckFailed(_) => "the incident-channel check failed".into(),
        Declined::RateLimited { policy, .. } => format!("over the rate limit of policy {policy}"),
        Declined::NotOnCall { policy, .. } => format!("not on call (policy {policy})"),
        Declined::UnknownUser { policy, .. } => format!("not found in the on-call source (policy {policy})"),
        Declined::SourceFailed { policy, source, .. } => {
            format!("on-call source {source} failed (policy {policy})")
        }
        Declined::NoOpenIncident { policy } => format!("no open incident (policy {policy})"),
        Declined::InternalError => "the on-call check failed".into(),
    }
}

fn user(id: &str, slack: bool) -> String {
    if slack {
        format!("<@{id}>")
    } else {
        id.to_string()
    }
}

fn group(id: &str, slack: bool) -> String {
    if slack {
        format!("group <!subteam^{id}>")
    } else {
        format!("group {id}")
    }
}

/// The answer in plain words: for a terminal (`slack = false`) or as Slack mrkdwn.
pub fn render(e: &Explanation, slack: bool) -> String {
    let a = &e.assessment;
    let q = &e.question;
    let who = user(&q.user, slack);
    let mut out = Vec::new();
    let what = match &a.request {
        Ok((role, _)) => format!("{}:{role}", a.resource),
        Err(_) => match &q.role {
            Some(r) => format!("{}:{r}", a.resource),
            None => a.resource.clone(),
        },
    };
    let code = |s: &str| if slack { format!("`{s}`") } else { s.to_string() };
    out.push(format!("Policy for {} as asked by {who}:", code(&what)));
    match &a.request {
        Ok((_, duration)) => out.push(format!(
            "• Request: {who} may request {} for {duration} (up to {}; {} when no duration is given).",
            code(&what),
            a.max_duration,
            a.default_duration
        )),
        Err(reply) => out.push(format!(
            "• Request: {who} may not request it as asked: {}",
            if slack { reply.clone() } else { reply.replace('`', "") }
        )),
    }
    let mut approvers: Vec<String> = a.approvers.iter().map(|u| user(u, slack)).collect();
    for (g, m) in &a.groups {
        approvers.push(match m {
            Members::Known(list) if list.is_empty() => format!("{} (no members)", group(g, slack)),
            Members::Known(list) => format!(
                "{} ({})",
                group(g, slack),
                list.iter().map(|u| user(u, slack)).collect::<Vec<_>>().join(", ")
            ),
            Members::Unknown(why) => format!("{} (members not resolved: {why})", group(g, slack)),
        });
    }
    out.push(format!(
        "• Approvers: {}. {} needed. A requester cannot approve their own request{}.",
        approvers.join(", "),
        match a.approvals_required {
            1 => "One approval".to_string(),
            n => format!("{n} approvals from different approvers"),
        },
        match a.is_approver {
            Some(true) => format!(", so {who} (an approver) needs another approver"),
            _ => String::new(),
        }
    ));
    let oncall = match (&a.oncall, &e.oncall_decision) {
        (OnCallOutlook::NotRequestable, _) => "does not apply (the request itself is refused)".to_string(),
        (OnCallOutlook::Declined(d), _) => format!("would not be auto-approved: {}", condition(d)),
        (OnCallOutlook::NoChannel { policies }, _) => format!(
            "only from an incident channel (give --channel to check one); policies that allow it: {}",
            policies.join(", ")
        ),
        (_, Some(Decision::Approve { policy, evidence })) => format!(
            "would be auto-approved now by policy {policy}: {who} is {}",
            evidence.summary()
        ),
        (_, Some(Decision::Decline(reasons))) => format!(
            "would not be auto-approved now: {}",
            reasons
                .iter()
                .map(|d| format!("{} ({})", condition(d), d.message()))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        (OnCallOutlook::WouldCheck { policies }, None) => {
            format!("would be checked against policies {}", policies.join(", "))
        }
    };
    let channel = q.channel.as_deref().map(|c| format!(" from {c}")).unwrap_or_default();
    out.push(format!("• On-call auto-approval{channel}: {oncall}"));
    let bg = match &a.break_glass {
        Some(Ok(d)) => format!("available to {who} for up to {d}, announced and reviewed afterwards"),
        Some(Err(BreakGlassRefusal::NotEnabled)) => "not enabled for this resource".into(),
        Some(Err(BreakGlassRefusal::NotListed)) => format!("not available: {who} is not allowed to use it"),
        Some(Err(BreakGlassRefusal::TooLong { max })) => format!("available only for up to {max}"),
        Some(Err(BreakGlassRefusal::RateLimited { limit, window })) => format!(
            "not available now: {who} has used it {} time(s) in the last {window} (limit {limit})",
            a.break_glass_used
        ),
        None => format!("available only if {who} is in one of its groups (members not resolved)"),
    };
    out.push(format!("• Break-glass: {bg}"));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RequestKind, RequestRow, RequestState};
    use proptest::prelude::*;

    fn config(approvers: &[&str], groups: bool, required: u32, bg_users: &[&str]) -> Config {
        let list = |v: &[&str]| v.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
        let bg = if bg_users.is_empty() {
            String::new()
        } else {
            format!(
                "break_glass = true\nbreak_glass_max_duration = \"30m\"\nbreak_glass_users = [{}]\n",
                list(bg_users)
            )
        };
        let text = format!(
            r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "C0APPROVALS"
approvers = [{}]
approver_groups = [{}]
approvals_required = {required}
adapter = "demo"
{bg}
[adapters.demo]
type = "noop"

[oncall]
incident_channels = ["C0INC"]

[[oncall.policies]]
name = "db"
allow = ["prod-db:read"]
sources = ["rota"]
max_duration = "2h"

[oncall.sources.rota]
type = "static"
members = ["U0ON"]
time_zone = "UTC"
start = "2025-01-06"
"#,
            list(approvers),
            if groups { "\"S0DBAS\"" } else { "" },
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    fn pending(requester: &str) -> RequestRow {
        RequestRow {
            id: 1,
            requester_id: requester.into(),
            team_id: "T".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 60,
            reason: "x".into(),
            origin_channel: "C1".into(),
            approval_channel: "C0APPROVALS".into(),
            approvals_required: 1,
            state: RequestState::Pending,
            created_at: 0,
            decided_at: None,
            card_channel: None,
            card_ts: None,
            kind: RequestKind::Access,
            extends_request_id: None,
        }
    }

    const PEOPLE: [&str; 5] = ["U0A", "U0B", "U0C", "U0ON", "U0X"];

    #[test]
    fn the_answer_names_approvers_groups_and_the_failing_on_call_condition() {
        let c = config(&["U0A", "U0B"], true, 1, &["U0ON"]);
        let q = Question {
            user: "U0A".into(),
            resource: "prod-db".into(),
            role: Some("read".into()),
            channel: Some("C0GENERAL".into()),
            duration: Some(HumanDuration::from_secs(3600)),
        };
        let mut groups = BTreeMap::new();
        groups.insert("S0DBAS".into(), Members::Unknown("SLACK_BOT_TOKEN is not set".into()));
        let a = assess(&c, &q, &groups, 0).unwrap();
        let text = render(
            &Explanation {
                question: q.clone(),
                assessment: a,
                oncall_decision: None,
            },
            false,
        );
        assert!(text.contains("U0A may request prod-db:read for 1h"), "{text}");
        assert!(text.contains("U0A, U0B, group S0DBAS"), "{text}");
        assert!(text.contains("cannot approve their own request"), "{text}");
        assert!(text.contains("not an incident channel"), "{text}");
        assert!(text.contains("Break-glass: not available"), "{text}");

        let long = Question {
            duration: Some(HumanDuration::from_secs(3 * 3600)),
            channel: Some("C0INC".into()),
            ..q
        };
        let text = render(
            &Explanation {
                question: long.clone(),
                assessment: assess(&c, &long, &groups, 0).unwrap(),
                oncall_decision: None,
            },
            false,
        );
        assert!(text.contains("over the on-call cap of 2h"), "{text}");
    }

    #[test]
    fn an_unknown_resource_is_named() {
        let c = config(&["U0A"], false, 1, &[]);
        let q = Question {
            user: "U0A".into(),
            resource: "nope".into(),
            role: None,
            channel: None,
            duration: None,
        };
        assert!(assess(&c, &q, &BTreeMap::new(), 0).unwrap_err().contains("`nope`"));
    }

    proptest! {
        /// What explain says agrees with what the live paths decide, for any approvers,
        /// groups, asker, clicker, role, duration and channel.
        #[test]
        fn explain_agrees_with_the_live_decisions(
            approvers in proptest::sample::subsequence(PEOPLE.to_vec(), 1..4),
            with_group in any::<bool>(),
            group_members in proptest::sample::subsequence(PEOPLE.to_vec(), 0..3),
            bg_users in proptest::sample::subsequence(PEOPLE.to_vec(), 0..2),
            asker in proptest::sample::select(PEOPLE.to_vec()),
            clicker in proptest::sample::select(PEOPLE.to_vec()),
            role in proptest::option::of(proptest::sample::select(vec!["read", "write", "admin"])),
            minutes in proptest::option::of(1u64..400),
            channel in proptest::option::of(proptest::sample::select(vec!["C0INC", "C0GENERAL", "D0DM"])),
            used in 0i64..3,
        ) {
            let c = config(&approvers, with_group, 1, &bg_users);
            let mut groups = BTreeMap::new();
            groups.insert("S0DBAS".to_string(), Members::Known(group_members.iter().map(|s| s.to_string()).collect()));
            let q = Question {
                user: asker.into(),
                resource: "prod-db".into(),
                role: role.map(String::from),
                channel: channel.map(String::from),
                duration: minutes.map(|m| HumanDuration::from_secs(m * 60)),
            };
            let a = assess(&c, &q, &groups, used).unwrap();
            let resource = c.resource("prod-db").unwrap();

            // May request: exactly when a typed request with a reason would be accepted.
            let input = RequestInput { resource: "prod-db".into(), role: q.role.clone(), duration: q.duration, reason: "x".into() };
            let live = validate(&c, &input);
            prop_assert_eq!(a.request.is_ok(), live.is_ok());
            if let (Ok((role, d)), Ok(v)) = (&a.request, &live) {
                prop_assert_eq!((role, d), (&v.role, &v.duration));
            }

            // Who may approve: the listed approvers and group members, never the asker,
            // exactly as a click on the asker's pending request is judged.
            let in_group = with_group && group_members.contains(&clicker);
            let click = super::super::may_decide(resource, &pending(asker), &[], clicker, in_group);
            let said = clicker != asker
                && (a.approvers.iter().any(|u| u == clicker)
                    || a.groups.values().any(|m| m.contains(clicker) == Some(true)));
            prop_assert_eq!(click.is_ok(), said);
            prop_assert_eq!(a.own_request, Err(Ineligible::SelfApproval));

            // On-call: checked exactly when the live path would queue the on-call check.
            if let (Ok((role, d)), Some(ch)) = (&a.request, &q.channel) {
                let live = crate::oncall::could_auto_approve(&c, "prod-db", role, *d, ch);
                prop_assert_eq!(matches!(a.oncall, OnCallOutlook::WouldCheck { .. }), live);
            }

            // Break-glass: as `/jit breakglass` would decide.
            let bg_group = false;
            let live_bg = policy::break_glass(&c, resource, asker, bg_group, q.duration, used);
            prop_assert_eq!(a.break_glass.clone(), Some(live_bg));
        }
    }
}
