//! Who may decide on a request, and what a click does.
//!
//! Every click is re-checked here, on the server: the button carries a request id and
//! nothing else that is trusted. The decision itself is one transaction whose conditional
//! statements make double clicks and simultaneous clicks harmless.

pub mod breakglass;
pub mod explain;
pub mod oncall;

use serde_json::json;

use crate::app::AppState;
use crate::audit;
use crate::cards::{APPROVE, DENY, REVIEWED, REVOKE};
use crate::config::Resource;
use crate::grants::{self, RevokeRefusal};
use crate::ids::label;
use crate::slack::client::SlackCallError;
use crate::store::{self, DecisionRow, JobKind, Outgoing, RequestKind, RequestRow, RequestState, Verdict};

/// Why a click was refused. Shown to the clicker only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotPending(RequestState),
    SelfApproval,
    NotApprover,
    AlreadyDecided(Verdict),
}

impl Refusal {
    /// A short code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotPending(_) => "not pending",
            Refusal::SelfApproval => "own request",
            Refusal::NotApprover => "not an approver",
            Refusal::AlreadyDecided(_) => "already decided",
        }
    }

    /// The explanation the clicker sees.
    pub fn message(&self, request: &RequestRow, resource: Option<&Resource>) -> String {
        let id = label(request.id);
        match self {
            Refusal::NotPending(state) => {
                let what = match state {
                    RequestState::Approved => "already approved",
                    RequestState::Denied => "already denied",
                    RequestState::Expired => "expired",
                    RequestState::Cancelled => "withdrawn",
                    RequestState::Pending => "still pending",
                };
                format!("{id} is {what}; nothing changed.")
            }
            Refusal::SelfApproval => {
                format!("You can't decide on your own request {id}; another approver has to.")
            }
            Refusal::NotApprover => {
                let who = resource
                    .map(|r| {
                        let mut names: Vec<String> = r.approvers.iter().map(|u| format!("<@{u}>")).collect();
                        names.extend(r.approver_groups.iter().map(|g| format!("<!subteam^{g}>")));
                        names.join(", ")
                    })
                    .unwrap_or_default();
                format!(
                    "You are not an approver for `{}`, so your click on {id} changed nothing. Approvers: {who}",
                    request.resource
                )
            }
            Refusal::AlreadyDecided(v) => format!(
                "You already {} {id}; it still needs another approver.",
                if *v == Verdict::Approve { "approved" } else { "denied" }
            ),
        }
    }
}

/// What a recorded decision led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// More approvals are needed.
    Waiting {
        approvals: usize,
        required: usize,
    },
    Approved,
    Denied,
}

/// May `clicker` decide on `request`? `in_listed_group` says whether they belong to one of
/// the resource's approver groups (looked up just before).
pub fn may_decide(
    resource: &Resource,
    request: &RequestRow,
    decisions: &[DecisionRow],
    clicker: &str,
    in_listed_group: bool,
) -> Result<(), Refusal> {
    if request.state != RequestState::Pending {
        return Err(Refusal::NotPending(request.state));
    }
    match crate::policy::approver_eligibility(resource, &request.requester_id, clicker, in_listed_group) {
        Ok(()) => {}
        Err(crate::policy::Ineligible::SelfApproval) => return Err(Refusal::SelfApproval),
        Err(crate::policy::Ineligible::NotApprover) => return Err(Refusal::NotApprover),
    }
    if let Some(d) = decisions.iter().find(|d| d.approver_id == clicker) {
        return Err(Refusal::AlreadyDecided(d.verdict));
    }
    Ok(())
}

/// The request's fate once `decisions` (including the new one) are recorded.
pub fn outcome(required: i64, decisions: &[DecisionRow]) -> Outcome {
    if decisions.iter().any(|d| d.verdict == Verdict::Deny) {
        return Outcome::Denied;
    }
    let approvals = decisions.iter().filter(|d| d.verdict == Verdict::Approve).count();
    if approvals as i64 >= required {
        Outcome::Approved
    } else {
        Outcome::Waiting {
            approvals,
            required: required as usize,
        }
    }
}

/// A button press, as far as jitgate trusts it. Stored (as JSON) between the
/// acknowledgement and the decision, so a crash in between loses nothing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Click {
    pub user_id: String,
    pub action_id: String,
    pub value: String,
    pub response_url: Option<String>,
}

/// Handles one click, after the HTTP request has been answered.
pub async fn handle_click(app: &AppState, click: Click) -> anyhow::Result<()> {
    let verdict = match click.action_id.as_str() {
        APPROVE => Verdict::Approve,
        DENY => Verdict::Deny,
        REVIEWED => {
            let text = match click.value.parse::<i64>() {
                Ok(id) => breakglass::review(app, id, &click.user_id).await?,
                Err(_) => "That button is not one of jitgate's; nothing changed.".into(),
            };
            return match &click.response_url {
                Some(url) => app.send_now(Outgoing::ephemeral(url, text)).await,
                // A click in the Home tab (or a DM without response_url): answer by DM.
                None => app.send_now(Outgoing::message(&click.user_id, text, None)).await,
            };
        }
        REVOKE => {
            let text = match click.value.parse::<i64>() {
                Ok(id) => revoke_as(app, id, &click.user_id, true).await?.unwrap_or_default(),
                Err(_) => "That button is not one of jitgate's; nothing changed.".into(),
            };
            return match &click.response_url {
                Some(url) => app.send_now(Outgoing::ephemeral(url, text)).await,
                // A click in the Home tab (or a DM without response_url): answer by DM.
                None => app.send_now(Outgoing::message(&click.user_id, text, None)).await,
            };
        }
        other => {
            tracing::debug!(action_id = other, "ignoring an action jitgate does not own");
            return Ok(());
        }
    };
    let reply = |text: String| {
        let url = click.response_url.clone();
        let user = click.user_id.clone();
        async move {
            if let Some(url) = url {
                app.send_now(Outgoing::ephemeral(&url, text)).await
            } else {
                // A Home tab click has no response_url: answer by DM.
                app.send_now(Outgoing::message(&user, text, None)).await
            }
        }
    };
    // A refused click is audited (who clicked what, and why it was refused), then
    // explained to the clicker only.
    let refuse = |request: &RequestRow, why: &'static str, text: String| {
        let (request_id, user, action) = (request.id, click.user_id.clone(), click.action_id.clone());
        let reply = reply(text);
        async move {
            app.audit_refusal(
                &user,
                "click.refused",
                Some(request_id),
                serde_json::json!({ "action_id": action, "why": why }),
            )
            .await;
            reply.await
        }
    };
    let Some(request_id) = click.value.parse::<i64>().ok() else {
        return reply("That button is not one of jitgate's; nothing changed.".into()).await;
    };
    let (request, decisions) = {
        let mut conn = app.db.read.acquire().await?;
        let Some(request) = store::get_request(&mut conn, request_id).await? else {
            return reply(format!("{} does not exist; nothing changed.", label(request_id))).await;
        };
        let decisions = store::decisions(&mut conn, request_id).await?;
        (request, decisions)
    };
    let Some(resource) = app.config.resource(&request.resource).cloned() else {
        return reply(format!(
            "`{}` is no longer configured, so {} cannot be decided here.",
            request.resource,
            label(request.id)
        ))
        .await;
    };
    // Cheap checks first, so a refused click costs no Slack call.
    if let Err(refusal) = may_decide(&resource, &request, &decisions, &click.user_id, true) {
        return refuse(&request, refusal.code(), refusal.message(&request, Some(&resource))).await;
    }
    let listed = resource.approvers.contains(&click.user_id);
    let in_group = if listed {
        false
    } else {
        match app
            .slack
            .is_in_any_group(&resource.approver_groups, &click.user_id)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "could not read approver groups from Slack");
                return reply(format!(
                    "I couldn't check the approver groups with Slack just now ({e}); nothing changed. Please click again in a moment."
                ))
                .await;
            }
        }
    };
    if let Err(refusal) = may_decide(&resource, &request, &decisions, &click.user_id, in_group) {
        return refuse(&request, refusal.code(), refusal.message(&request, Some(&resource))).await;
    }
    match record(app, &request, &click.user_id, verdict).await? {
        Ok(_) => Ok(()),
        Err(refusal) => refuse(&request, refusal.code(), refusal.message(&request, Some(&resource))).await,
    }
}

/// Is `user` an approver of `resource`: listed, or (asking Slack now) in a listed group?
pub async fn is_approver(app: &AppState, resource: &Resource, user: &str) -> Result<bool, SlackCallError> {
    if resource.approvers.iter().any(|a| a == user) {
        return Ok(true);
    }
    app.slack.is_in_any_group(&resource.approver_groups, user).await
}

/// Ends request `request_id`'s grant early on behalf of `actor`, if the requester or an
/// approver of its resource. Returns the reply for the actor, or `None` when deciding needs
/// a Slack call (a group lookup) and `may_ask_slack` is false.
pub async fn revoke_as(
    app: &AppState,
    request_id: i64,
    actor: &str,
    may_ask_slack: bool,
) -> anyhow::Result<Option<String>> {
    let id = label(request_id);
    let request = {
        let mut conn = app.db.read.acquire().await?;
        store::get_request(&mut conn, request_id).await?
    };
    let Some(request) = request.filter(|r| r.kind == RequestKind::Access) else {
        return Ok(Some(format!(
            "{id} is not a grant jitgate knows; check `{} list`.",
            app.config.slack.command
        )));
    };
    let resource = app.config.resource(&request.resource);
    let allowed = if actor == request.requester_id {
        true
    } else {
        match resource {
            Some(r) if r.approvers.iter().any(|a| a == actor) => true,
            Some(r) if !r.approver_groups.is_empty() => {
                if !may_ask_slack {
                    return Ok(None);
                }
                match is_approver(app, r, actor).await {
                    Ok(yes) => yes,
                    Err(e) => {
                        return Ok(Some(format!(
                            "I couldn't check the approver groups with Slack just now ({e}); nothing changed. Please try again."
                        )))
                    }
                }
            }
            _ => false,
        }
    };
    if !allowed {
        return Ok(Some(format!(
            "Only <@{}> or an approver of `{}` can revoke {id}; nothing changed.",
            request.requester_id, request.resource
        )));
    }
    let revoked = grants::revoke_early(app, request_id, actor).await?;
    if revoked.is_ok() && actor != request.requester_id {
        // An approver's "Revoke now" on a break-glass use is its review, too.
        let now = app.now_ms();
        let mut tx = app.db.begin().await?;
        if store::break_glass_of(&mut tx, request_id).await?.is_some() {
            breakglass::record_review(&app.audit_key, &mut tx, &request, actor, "revoked", now).await?;
        }
        tx.commit().await?;
        app.outbox.wake();
    }
    Ok(Some(match revoked {
        Ok(()) => format!(
            "Revoking {id} (`{}:{}` for <@{}>) now.",
            request.resource, request.role, request.requester_id
        ),
        Err(RevokeRefusal::NoGrant) => format!("{id} has no access to revoke (it was never granted)."),
        Err(RevokeRefusal::AlreadyEnded) => format!("{id} has already ended or is being revoked."),
    }))
}

/// Records an eligible approver's decision in one transaction and applies its outcome.
pub async fn record(
    app: &AppState,
    request: &RequestRow,
    approver: &str,
    verdict: Verdict,
) -> anyhow::Result<Result<Outcome, Refusal>> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    // Re-read inside the transaction: another click may have landed since.
    let Some(current) = store::get_request(&mut tx, request.id).await? else {
        return Ok(Err(Refusal::NotPending(RequestState::Expired)));
    };
    if current.state != RequestState::Pending {
        return Ok(Err(Refusal::NotPending(current.state)));
    }
    if !store::insert_decision(&mut tx, request.id, approver, verdict, now).await? {
        let prior = store::decisions(&mut tx, request.id).await?;
        let v = prior
            .iter()
            .find(|d| d.approver_id == approver)
            .map(|d| d.verdict)
            .unwrap_or(verdict);
        return Ok(Err(Refusal::AlreadyDecided(v)));
    }
    let decisions = store::decisions(&mut tx, request.id).await?;
    let result = outcome(current.approvals_required, &decisions);
    let action = if verdict == Verdict::Approve {
        "decision.approve"
    } else {
        "decision.deny"
    };
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        approver,
        action,
        Some(request.id),
        json!({ "resource": current.resource, "role": current.role }),
    )
    .await?;
    let requester = current.requester_id.as_str();
    let what = format!("`{}:{}`", current.resource, current.role);
    match result {
        Outcome::Waiting { approvals, required } => {
            audit::append(
                &app.audit_key,
                &mut tx,
                now,
                audit::SYSTEM_ACTOR,
                "request.partially_approved",
                Some(request.id),
                json!({ "approvals": approvals, "required": required }),
            )
            .await?;
        }
        Outcome::Denied => {
            if !store::transition_request(&mut tx, request.id, RequestState::Pending, RequestState::Denied, now).await?
            {
                return Ok(Err(Refusal::NotPending(current.state)));
            }
            store::cancel_job(&mut tx, request.id, JobKind::ExpireRequest, now).await?;
            audit::append(
                &app.audit_key,
                &mut tx,
                now,
                approver,
                "request.denied",
                Some(request.id),
                json!({}),
            )
            .await?;
            store::enqueue(
                &mut tx,
                &Outgoing::message(
                    requester,
                    format!(
                        ":no_entry: Your request {} for {what} was denied by <@{approver}>.",
                        label(request.id)
                    ),
                    Some(request.id),
                ),
                now,
            )
            .await?;
        }
        Outcome::Approved => {
            let approvers: Vec<&str> = decisions.iter().map(|d| d.approver_id.as_str()).collect();
            let details = json!({ "approvers": approvers });
            let text = match apply_approval(&mut tx, app, &current, approver, details, now).await? {
                Applied::NotPending => return Ok(Err(Refusal::NotPending(current.state))),
                Applied::Extension { original } => format!(
                    ":white_check_mark: Your extension {} of {} was approved by <@{approver}>. Applying it now…",
                    label(request.id),
                    label(original)
                ),
                Applied::Grant => format!(
                    ":white_check_mark: Your request {} for {what} was approved by <@{approver}>. Granting access now…",
                    label(request.id)
                ),
            };
            store::enqueue(&mut tx, &Outgoing::message(requester, text, Some(request.id)), now).await?;
        }
    }
    store::enqueue(&mut tx, &Outgoing::update_card(request.id), now).await?;
    tx.commit().await?;
    let verdict_word = if verdict == Verdict::Approve { "approve" } else { "deny" };
    app.metrics.decision(verdict_word, "person");
    match result {
        Outcome::Approved => note_decided(app, &current, approver, "approved", now),
        Outcome::Denied => note_decided(app, &current, approver, "denied", now),
        Outcome::Waiting { approvals, required } => tracing::info!(
            request_id = %label(current.id),
            actor = %approver,
            user = %current.requester_id,
            resource = %current.resource,
            role = %current.role,
            approvals,
            required,
            "approval recorded; more needed"
        ),
    }
    app.outbox.wake();
    if result == Outcome::Approved {
        app.scheduler.wake();
    }
    Ok(Ok(result))
}

/// Counts and logs, once committed, the decision that ended `request` (`approved` or
/// `denied`) by `actor` (a person, or an on-call policy).
pub(crate) fn note_decided(app: &AppState, request: &RequestRow, actor: &str, outcome: &str, now: i64) {
    app.metrics.request(outcome);
    app.metrics.decided_after(now - request.created_at);
    tracing::info!(
        request_id = %label(request.id),
        actor = %actor,
        user = %request.requester_id,
        resource = %request.resource,
        role = %request.role,
        "{outcome}"
    );
}

/// What an approval set in motion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Someone else decided first; nothing was written.
    NotPending,
    /// A grant and its job were created.
    Grant,
    /// An extension job for the grant of request `original` was created.
    Extension { original: i64 },
}

/// What every approval does, whoever approves (people through [`record`], on-call
/// policies through `approvals::oncall`), inside the caller's transaction: pending → approved,
/// the time-out cancelled, the `request.approved` audit entry with `details`, and the
/// grant (or the extension) with its job. The caller tells the requester.
pub(crate) async fn apply_approval(
    conn: &mut crate::store::Conn,
    app: &AppState,
    request: &RequestRow,
    actor: &str,
    details: serde_json::Value,
    now: i64,
) -> anyhow::Result<Applied> {
    if !store::transition_request(conn, request.id, RequestState::Pending, RequestState::Approved, now).await? {
        return Ok(Applied::NotPending);
    }
    store::cancel_job(conn, request.id, JobKind::ExpireRequest, now).await?;
    audit::append(
        &app.audit_key,
        conn,
        now,
        actor,
        "request.approved",
        Some(request.id),
        details,
    )
    .await?;
    if let (RequestKind::Extension, Some(original)) = (request.kind, request.extends_request_id) {
        store::insert_job(conn, request.id, JobKind::Extend, now, now).await?;
        return Ok(Applied::Extension { original });
    }
    let adapter = app
        .config
        .resource(&request.resource)
        .map(|r| r.adapter.clone())
        .unwrap_or_default();
    if store::insert_grant(conn, request, &adapter, now).await? {
        store::insert_job(conn, request.id, JobKind::Grant, now, now).await?;
    }
    Ok(Applied::Grant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn resource() -> Resource {
        Resource {
            name: "prod-db".into(),
            description: String::new(),
            roles: vec!["read".into()],
            default_duration: crate::duration::HumanDuration::from_secs(3600),
            max_duration: crate::duration::HumanDuration::from_secs(3600),
            approval_channel: "C0".into(),
            approvers: vec!["UA".into(), "UB".into()],
            approver_groups: vec!["S1".into()],
            approvals_required: 2,
            adapter: "demo".into(),
            max_total_duration: crate::duration::HumanDuration::from_secs(3600),
            self_extend: false,
            break_glass: None,
        }
    }

    fn request(state: RequestState) -> RequestRow {
        RequestRow {
            id: 1,
            requester_id: "UR".into(),
            team_id: "T".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 60,
            reason: "x".into(),
            origin_channel: "C1".into(),
            approval_channel: "C0".into(),
            approvals_required: 2,
            state,
            created_at: 0,
            decided_at: None,
            card_channel: None,
            card_ts: None,
            kind: crate::store::RequestKind::Access,
            extends_request_id: None,
        }
    }

    fn d(who: &str, verdict: Verdict) -> DecisionRow {
        DecisionRow {
            approver_id: who.into(),
            verdict,
            decided_at: 0,
            reason: None,
        }
    }

    #[test]
    fn listed_approvers_and_group_members_may_decide() {
        let r = request(RequestState::Pending);
        assert_eq!(may_decide(&resource(), &r, &[], "UA", false), Ok(()));
        assert_eq!(may_decide(&resource(), &r, &[], "UG", true), Ok(()));
    }

    #[test]
    fn non_approver_click_is_refused() {
        let r = request(RequestState::Pending);
        assert_eq!(may_decide(&resource(), &r, &[], "UX", false), Err(Refusal::NotApprover));
    }

    #[test]
    fn requester_cannot_approve_even_when_listed() {
        let mut res = resource();
        res.approvers.push("UR".into());
        let r = request(RequestState::Pending);
        assert_eq!(may_decide(&res, &r, &[], "UR", true), Err(Refusal::SelfApproval));
    }

    #[test]
    fn decided_requests_refuse_clicks() {
        let r = request(RequestState::Approved);
        assert_eq!(
            may_decide(&resource(), &r, &[], "UA", false),
            Err(Refusal::NotPending(RequestState::Approved))
        );
    }

    #[test]
    fn a_second_click_by_the_same_approver_is_refused() {
        let r = request(RequestState::Pending);
        let prior = [d("UA", Verdict::Approve)];
        assert_eq!(
            may_decide(&resource(), &r, &prior, "UA", false),
            Err(Refusal::AlreadyDecided(Verdict::Approve))
        );
    }

    #[test]
    fn two_of_n_needs_two_distinct_approvals_and_one_deny_ends_it() {
        assert_eq!(
            outcome(2, &[d("UA", Verdict::Approve)]),
            Outcome::Waiting {
                approvals: 1,
                required: 2
            }
        );
        assert_eq!(
            outcome(2, &[d("UA", Verdict::Approve), d("UB", Verdict::Approve)]),
            Outcome::Approved
        );
        assert_eq!(
            outcome(2, &[d("UA", Verdict::Approve), d("UB", Verdict::Deny)]),
            Outcome::Denied
        );
    }

    proptest! {
        #[test]
        fn approved_exactly_when_enough_approvals_and_no_deny(
            required in 1i64..5,
            verdicts in proptest::collection::vec(proptest::bool::ANY, 0..8),
        ) {
            let ds: Vec<_> = verdicts.iter().enumerate()
                .map(|(i, ok)| d(&format!("U{i}"), if *ok { Verdict::Approve } else { Verdict::Deny }))
                .collect();
            let approvals = verdicts.iter().filter(|v| **v).count() as i64;
            let any_deny = verdicts.iter().any(|v| !*v);
            let o = outcome(required, &ds);
            prop_assert_eq!(o == Outcome::Approved, !any_deny && approvals >= required);
            prop_assert_eq!(o == Outcome::Denied, any_deny);
        }

        /// Any sequence of clicks, replayed through the decision functions as the click
        /// handler applies them: ineligible clickers (the requester, people neither listed
        /// nor in a group) never get a request approved; an approval needs
        /// `approvals_required` distinct eligible approvers and no deny.
        #[test]
        fn no_click_sequence_by_ineligible_users_grants_and_n_distinct_approvers_are_needed(
            required in 1i64..4,
            clicks in proptest::collection::vec((0usize..7, proptest::bool::ANY), 0..40),
        ) {
            // UA, UB listed; UG, UH in a listed group; UR the requester; UX, UY outsiders.
            let people = ["UA", "UB", "UG", "UH", "UR", "UX", "UY"];
            let eligible = |u: &str| matches!(u, "UA" | "UB" | "UG" | "UH");
            let mut res = resource();
            res.approvals_required = required as u32;
            let mut req = request(RequestState::Pending);
            req.approvals_required = required;
            let mut decisions: Vec<DecisionRow> = Vec::new();
            let mut only_ineligible = true;
            for (who, approve) in clicks {
                let clicker = people[who];
                let in_group = matches!(clicker, "UG" | "UH");
                if may_decide(&res, &req, &decisions, clicker, in_group).is_err() {
                    continue;
                }
                prop_assert!(eligible(clicker), "{} was allowed to decide", clicker);
                only_ineligible = false;
                decisions.push(d(clicker, if approve { Verdict::Approve } else { Verdict::Deny }));
                match outcome(required, &decisions) {
                    Outcome::Approved => req.state = RequestState::Approved,
                    Outcome::Denied => req.state = RequestState::Denied,
                    Outcome::Waiting { .. } => {}
                }
            }
            if only_ineligible {
                prop_assert_eq!(req.state, RequestState::Pending);
            }
            if req.state == RequestState::Approved {
                let approvers: std::collections::HashSet<&str> = decisions
                    .iter()
                    .filter(|d| d.verdict == Verdict::Approve)
                    .map(|d| d.approver_id.as_str())
                    .collect();
                prop_assert!(approvers.len() as i64 >= required);
                prop_assert!(approvers.iter().all(|a| eligible(a)));
                prop_assert!(decisions.iter().all(|d| d.verdict == Verdict::Approve));
            }
            let distinct: std::collections::HashSet<&str> = decisions.iter().map(|d| d.approver_id.as_str()).collect();
            prop_assert_eq!(distinct.len(), decisions.len(), "one decision per approver");
        }
    }
}
