//! The `auto_approve` job: decides an incident-channel request against the on-call
//! policies, then approves it in one transaction or hands it to the approvers.
//!
//! The network calls (Slack, PagerDuty, Opsgenie) happen first, outside any transaction;
//! the rate limit is checked again inside the approving transaction, so two requests
//! racing cannot both slip under it.

use serde_json::json;

use chrono::{DateTime, Utc};

use crate::app::AppState;
use crate::config::oncall::Policy;
use crate::config::Config;
use crate::duration::HumanDuration;
use crate::ids::label;
use crate::oncall::http::SourceError;
use crate::oncall::{ChannelCheck, Evidence, OnCall, OnCallConfig, SourceAnswer};
use crate::policy::{self, OnCallPrecheck};
use crate::slack::client::SlackApi;
use crate::store::{self, JobRow, Outgoing, RequestRow, RequestState, Verdict};
use crate::text::escape;
use crate::{approvals, audit};

/// After this many internal failures (database trouble, not on-call answers) the request
/// goes to the approvers without another check.
const MAX_ATTEMPTS: i64 = 3;

/// Why a request was not auto-approved. Shown to the requester and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declined {
    NotConfigured,
    NotAllowlisted,
    TooLong {
        cap: HumanDuration,
    },
    NotIncidentChannel {
        name: Option<String>,
    },
    ChannelCheckFailed(String),
    RateLimited {
        policy: String,
        limit: u32,
        window: HumanDuration,
    },
    NotOnCall {
        policy: String,
        schedules: Vec<String>,
    },
    UnknownUser {
        policy: String,
        why: String,
    },
    SourceFailed {
        policy: String,
        source: String,
        error: String,
    },
    NoOpenIncident {
        policy: String,
    },
    InternalError,
}

impl Declined {
    /// A short code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Declined::NotConfigured => "not_configured",
            Declined::NotAllowlisted => "not_allowlisted",
            Declined::TooLong { .. } => "too_long",
            Declined::NotIncidentChannel { .. } => "not_incident_channel",
            Declined::ChannelCheckFailed(_) => "channel_check_failed",
            Declined::RateLimited { .. } => "rate_limited",
            Declined::NotOnCall { .. } => "not_on_call",
            Declined::UnknownUser { .. } => "unknown_user",
            Declined::SourceFailed { .. } => "source_failed",
            Declined::NoOpenIncident { .. } => "no_open_incident",
            Declined::InternalError => "internal_error",
        }
    }

    /// The explanation, in Slack mrkdwn.
    pub fn message(&self) -> String {
        match self {
            Declined::NotConfigured => "on-call auto-approval is not configured".into(),
            Declined::NotAllowlisted => "this resource and role are not on any on-call policy's allowlist".into(),
            Declined::TooLong { cap } => {
                format!("on-call auto-approval covers at most {cap}; ask for {cap} or less to be approved on call")
            }
            Declined::NotIncidentChannel { name } => match name {
                Some(n) => format!("#{} is not an incident channel", escape(n)),
                None => "this conversation is not an incident channel".into(),
            },
            Declined::ChannelCheckFailed(e) => format!(
                "jitgate could not tell whether this is an incident channel ({})",
                escape(e)
            ),
            Declined::RateLimited { policy, limit, window } => format!(
                "you have had {limit} auto-approval{} from policy `{policy}` in the last {window}",
                if *limit == 1 { "" } else { "s" }
            ),
            Declined::NotOnCall { policy, schedules } => {
                if schedules.is_empty() {
                    format!("you are not on call for policy `{policy}` right now")
                } else {
                    format!(
                        "you are not on call right now in {} (policy `{policy}`)",
                        schedules.iter().map(|s| escape(s)).collect::<Vec<_>>().join(", ")
                    )
                }
            }
            Declined::UnknownUser { why, .. } => why.clone(),
            Declined::SourceFailed { source, error, .. } => {
                format!("the on-call source `{source}` {}", escape(error))
            }
            Declined::NoOpenIncident { policy } => format!(
                "policy `{policy}` also needs you assigned to an open (triggered or acknowledged) PagerDuty incident, \
                 and you are not"
            ),
            Declined::InternalError => "jitgate could not complete the on-call check".into(),
        }
    }
}

/// What the job decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve { policy: String, evidence: Box<Evidence> },
    Decline(Vec<Declined>),
}

/// The reason a policy did not approve, from each of its sources' answers (none of which
/// was "on call"). An error outranks "not on call": the person may well be on call in the
/// source that failed, and should hear that the check, not their rota, was the problem.
pub fn policy_declined(policy: &Policy, answers: &[(String, Result<SourceAnswer, SourceError>)]) -> Declined {
    if let Some((source, Err(e))) = answers.iter().find(|(_, a)| a.is_err()) {
        return Declined::SourceFailed {
            policy: policy.name.clone(),
            source: source.clone(),
            error: e.to_string(),
        };
    }
    let unknown: Vec<&String> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Ok(SourceAnswer::UnknownUser(why)) => Some(why),
            _ => None,
        })
        .collect();
    if !unknown.is_empty() && unknown.len() == answers.len() {
        return Declined::UnknownUser {
            policy: policy.name.clone(),
            why: unknown[0].clone(),
        };
    }
    Declined::NotOnCall {
        policy: policy.name.clone(),
        schedules: answers.iter().map(|(s, _)| s.clone()).collect(),
    }
}

/// Runs one `auto_approve` job.
pub async fn run(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let request = {
        let mut conn = app.db.read.acquire().await?;
        store::get_request(&mut conn, job.request_id).await?
    };
    let Some(request) = request.filter(|r| r.state == RequestState::Pending) else {
        let mut tx = app.db.begin().await?;
        store::finish_job(&mut tx, job.id, false, app.now_ms()).await?;
        tx.commit().await?;
        return Ok(());
    };
    let decision = match (app.config.oncall.as_ref(), job.attempts >= MAX_ATTEMPTS) {
        (_, true) => Decision::Decline(vec![Declined::InternalError]),
        (None, _) => Decision::Decline(vec![Declined::NotConfigured]),
        (Some(cfg), false) => evaluate(app, cfg, &request).await?,
    };
    match decision {
        Decision::Approve { policy, evidence } => {
            let policy = app
                .config
                .oncall
                .as_ref()
                .and_then(|c| c.policies.iter().find(|p| p.name == policy))
                .cloned();
            match policy {
                Some(p) => approve(app, &job, &request, &p, *evidence).await,
                None => decline(app, &job, &request, vec![Declined::NotConfigured]).await,
            }
        }
        Decision::Decline(reasons) => decline(app, &job, &request, reasons).await,
    }
}

/// Asks Slack and the on-call sources. Never approves on an error.
pub async fn evaluate(app: &AppState, _cfg: &OnCallConfig, request: &RequestRow) -> anyhow::Result<Decision> {
    let ask = Ask {
        requester: &request.requester_id,
        resource: &request.resource,
        role: &request.role,
        duration: HumanDuration::from_secs(request.duration_secs.max(0) as u64),
        channel: &request.origin_channel,
        request_id: Some(request.id),
        metrics: Some(&app.metrics),
    };
    decide(
        &app.config,
        &app.oncall,
        &app.slack,
        &app.db.read,
        &ask,
        app.clock.now(),
    )
    .await
}

/// What the on-call decision looks at: who asks for what, for how long, from where.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub requester: &'a str,
    pub resource: &'a str,
    pub role: &'a str,
    pub duration: HumanDuration,
    pub channel: &'a str,
    /// The stored request, for the logs (none when `policy explain` asks).
    pub request_id: Option<i64>,
    /// Where to count on-call lookups (none when `policy explain` asks).
    pub metrics: Option<&'a crate::metrics::Metrics>,
}

/// The on-call decision for `ask` at `now`: the auto-approve job and `policy explain`
/// both come here. Asks Slack (the channel), the database (usage for the rate limits) and
/// the on-call sources; never approves on an error.
pub async fn decide(
    config: &Config,
    oncall: &OnCall,
    slack: &SlackApi,
    read: &crate::store::Pool,
    ask: &Ask<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<Decision> {
    let now_ms = now.timestamp_millis();
    let request_id = ask.request_id.unwrap_or_default();
    let Some(cfg) = config.oncall.as_ref() else {
        return Ok(Decision::Decline(vec![Declined::NotConfigured]));
    };
    let within = match policy::oncall_candidates(config, ask.resource, ask.role, ask.duration) {
        OnCallPrecheck::NotConfigured => return Ok(Decision::Decline(vec![Declined::NotConfigured])),
        OnCallPrecheck::NotAllowlisted => return Ok(Decision::Decline(vec![Declined::NotAllowlisted])),
        OnCallPrecheck::TooLong { cap } => return Ok(Decision::Decline(vec![Declined::TooLong { cap }])),
        OnCallPrecheck::Candidates(p) => p,
    };
    let channel_name = match oncall.check_channel(cfg, slack, ask.channel, now_ms).await {
        ChannelCheck::Incident { name } => name,
        ChannelCheck::NotIncident { name } => {
            return Ok(Decision::Decline(vec![Declined::NotIncidentChannel { name }]))
        }
        ChannelCheck::Failed(e) => {
            tracing::warn!(request = request_id, error = %e, "on-call: channel check failed; normal approval");
            return Ok(Decision::Decline(vec![Declined::ChannelCheckFailed(e)]));
        }
    };
    let mut reasons = Vec::new();
    for policy in within {
        let used = {
            let mut conn = read.acquire().await?;
            store::count_policy_approvals(
                &mut conn,
                ask.requester,
                &policy.approver_id(),
                now_ms - policy.rate_window.as_secs() as i64 * 1000,
            )
            .await?
        };
        if policy::oncall_rate_limited(policy, used) {
            reasons.push(Declined::RateLimited {
                policy: policy.name.clone(),
                limit: policy.rate_limit,
                window: policy.rate_window,
            });
            continue;
        }
        let mut answers = Vec::new();
        let mut found = None;
        for source in &policy.sources {
            let answer = oncall.check_source(cfg, source, slack, ask.requester, now).await;
            if let Some(m) = ask.metrics {
                let result = match &answer {
                    Ok(SourceAnswer::OnCall { .. }) => "on_call",
                    Ok(_) => "not_on_call",
                    Err(_) => "error",
                };
                m.oncall_lookup(source, result);
            }
            match answer {
                Ok(SourceAnswer::OnCall { entry, matched_by }) => {
                    found = Some((source.clone(), entry, matched_by));
                    break;
                }
                other => {
                    if let Err(e) = &other {
                        tracing::warn!(request = request_id, source = %source, error = %e, "on-call source failed");
                    }
                    answers.push((source.clone(), other));
                }
            }
        }
        let Some((source, entry, matched_by)) = found else {
            reasons.push(policy_declined(policy, &answers));
            continue;
        };
        let incident = match &policy.require_open_incident {
            None => None,
            Some(pd) => {
                let known = (*pd == source).then(|| entry.user.id.clone()).flatten();
                match oncall
                    .open_incident(cfg, pd, slack, ask.requester, known.as_deref(), now_ms)
                    .await
                {
                    Ok(Some(i)) => Some(i),
                    Ok(None) => {
                        reasons.push(Declined::NoOpenIncident {
                            policy: policy.name.clone(),
                        });
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(request = request_id, source = %pd, error = %e, "on-call incident check failed");
                        reasons.push(Declined::SourceFailed {
                            policy: policy.name.clone(),
                            source: pd.clone(),
                            error: e.to_string(),
                        });
                        continue;
                    }
                }
            }
        };
        let source_type = cfg.sources.get(&source).map(|s| s.type_name()).unwrap_or("static");
        let evidence = Evidence {
            policy: policy.name.clone(),
            source,
            source_type: source_type.into(),
            schedule: entry.schedule,
            schedule_id: entry.schedule_id,
            escalation_policy: entry.escalation_policy,
            level: entry.level,
            shift_start: entry.start.map(|t| t.timestamp_millis()),
            shift_end: entry.end.map(|t| t.timestamp_millis()),
            matched_by: matched_by.into(),
            incident,
            channel: ask.channel.to_string(),
            channel_name: channel_name.clone(),
            checked_at: now_ms,
        };
        return Ok(Decision::Approve {
            policy: policy.name.clone(),
            evidence: Box::new(evidence),
        });
    }
    Ok(Decision::Decline(reasons))
}

async fn finish_only(app: &AppState, job: &JobRow) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    store::finish_job(&mut tx, job.id, false, app.now_ms()).await?;
    tx.commit().await?;
    Ok(())
}

/// Approves as `policy` in one transaction: decision with evidence, request approved,
/// grant and its job, audit, card, DM and a notice in the incident channel.
async fn approve(
    app: &AppState,
    job: &JobRow,
    request: &RequestRow,
    policy: &Policy,
    evidence: Evidence,
) -> anyhow::Result<()> {
    let now = app.now_ms();
    let approver = policy.approver_id();
    let reason = serde_json::to_string(&evidence)?;
    let mut tx = app.db.begin().await?;
    let Some(current) = store::get_request(&mut tx, request.id)
        .await?
        .filter(|r| r.state == RequestState::Pending)
    else {
        drop(tx);
        return finish_only(app, job).await;
    };
    let since = now - policy.rate_window.as_secs() as i64 * 1000;
    let used = store::count_policy_approvals(&mut tx, &current.requester_id, &approver, since).await?;
    if used >= policy.rate_limit as i64 {
        drop(tx);
        let limited = Declined::RateLimited {
            policy: policy.name.clone(),
            limit: policy.rate_limit,
            window: policy.rate_window,
        };
        return decline(app, job, request, vec![limited]).await;
    }
    if !store::insert_decision_with_reason(&mut tx, current.id, &approver, Verdict::Approve, Some(&reason), now).await?
    {
        drop(tx);
        return finish_only(app, job).await;
    }
    let evidence_json = serde_json::to_value(&evidence)?;
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        &approver,
        "decision.approve",
        Some(current.id),
        json!({ "resource": current.resource, "role": current.role, "auto": true, "evidence": evidence_json }),
    )
    .await?;
    let what = format!("`{}:{}`", current.resource, current.role);
    let summary = evidence.summary();
    let duration = HumanDuration::from_secs(current.duration_secs.max(0) as u64);
    let dm = format!(
        ":white_check_mark: Your request {} for {what} ({duration}) was approved automatically: you are {summary}. \
         Granting access now…",
        label(current.id)
    );
    let applied = approvals::apply_approval(
        &mut tx,
        app,
        &current,
        &approver,
        json!({ "approvers": [approver], "auto": true, "evidence": evidence_json }),
        now,
    )
    .await?;
    match applied {
        approvals::Applied::Grant => {}
        approvals::Applied::NotPending => {
            drop(tx);
            return finish_only(app, job).await;
        }
        approvals::Applied::Extension { .. } => {
            // Only access requests get an auto_approve job; an extension goes to people.
            drop(tx);
            return decline(app, job, request, vec![Declined::NotAllowlisted]).await;
        }
    }
    store::enqueue(
        &mut tx,
        &Outgoing::message(&current.requester_id, dm, Some(current.id)),
        now,
    )
    .await?;
    store::enqueue(&mut tx, &Outgoing::post_card(current.id), now).await?;
    store::enqueue(
        &mut tx,
        &Outgoing::message(
            &current.origin_channel,
            format!(
                ":rotating_light: <@{}> got {what} for {duration} ({}) — {summary}. Auto-approved by on-call policy `{}`; \
                 approvers can see it in <#{}>.",
                current.requester_id,
                label(current.id),
                policy.name,
                current.approval_channel
            ),
            Some(current.id),
        ),
        now,
    )
    .await?;
    store::finish_job(&mut tx, job.id, false, now).await?;
    tx.commit().await?;
    app.metrics.decision("approve", "oncall_policy");
    super::note_decided(app, &current, &policy.approver_id(), "approved", now);
    app.outbox.wake();
    app.scheduler.wake();
    Ok(())
}

/// Sends the request to the approvers and tells the requester why it was not
/// auto-approved.
async fn decline(app: &AppState, job: &JobRow, request: &RequestRow, reasons: Vec<Declined>) -> anyhow::Result<()> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let Some(current) = store::get_request(&mut tx, request.id)
        .await?
        .filter(|r| r.state == RequestState::Pending)
    else {
        store::finish_job(&mut tx, job.id, false, now).await?;
        tx.commit().await?;
        return Ok(());
    };
    let recorded: Vec<_> = reasons
        .iter()
        .map(|r| json!({ "code": r.code(), "detail": r.message() }))
        .collect();
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        audit::SYSTEM_ACTOR,
        "auto_approval.declined",
        Some(current.id),
        json!({ "reasons": recorded }),
    )
    .await?;
    store::enqueue(&mut tx, &Outgoing::post_card(current.id), now).await?;
    let why = if reasons.is_empty() {
        Declined::InternalError.message()
    } else {
        reasons.iter().map(Declined::message).collect::<Vec<_>>().join("; ")
    };
    store::enqueue(
        &mut tx,
        &Outgoing::message(
            &current.requester_id,
            format!(
                ":information_source: Your request {} for `{}:{}` was not approved automatically: {why}. \
                 It is waiting for approval in <#{}>.",
                label(current.id),
                current.resource,
                current.role,
                current.approval_channel
            ),
            Some(current.id),
        ),
        now,
    )
    .await?;
    store::finish_job(&mut tx, job.id, false, now).await?;
    tx.commit().await?;
    tracing::info!(request = current.id, reasons = ?reasons.iter().map(Declined::code).collect::<Vec<_>>(), "not auto-approved; sent to approvers");
    app.outbox.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            name: "db".into(),
            allow: vec![],
            sources: vec!["a".into(), "b".into()],
            max_duration: HumanDuration::from_secs(3600),
            rate_limit: 3,
            rate_window: HumanDuration::from_secs(86_400),
            require_open_incident: None,
        }
    }

    fn answer(kind: u8) -> Result<SourceAnswer, SourceError> {
        match kind {
            0 => Ok(SourceAnswer::NotOnCall),
            1 => Ok(SourceAnswer::UnknownUser("no e-mail".into())),
            2 => Err(SourceError::Status(500)),
            _ => Err(SourceError::Timeout(std::time::Duration::from_secs(2))),
        }
    }

    #[test]
    fn a_failed_source_is_reported_rather_than_not_on_call() {
        let answers = vec![("a".to_string(), answer(0)), ("b".to_string(), answer(2))];
        let d = policy_declined(&policy(), &answers);
        assert_eq!(d.code(), "source_failed");
        assert_eq!(d.message(), "the on-call source `b` answered HTTP 500");
    }

    #[test]
    fn unknown_everywhere_says_how_to_get_mapped() {
        let answers = vec![("a".to_string(), answer(1)), ("b".to_string(), answer(1))];
        assert_eq!(policy_declined(&policy(), &answers).code(), "unknown_user");
        let answers = vec![("a".to_string(), answer(1)), ("b".to_string(), answer(0))];
        assert_eq!(policy_declined(&policy(), &answers).code(), "not_on_call");
    }

    proptest! {
        #[test]
        fn any_error_among_the_answers_is_what_the_requester_hears(kinds in proptest::collection::vec(0u8..4, 1..5)) {
            let answers: Vec<_> = kinds.iter().enumerate().map(|(i, k)| (format!("s{i}"), answer(*k))).collect();
            let d = policy_declined(&policy(), &answers);
            prop_assert_eq!(d.code() == "source_failed", kinds.iter().any(|k| *k >= 2));
        }
    }
}
