//! Break-glass: access granted at once, with no approver, for the people a resource lists,
//! when the normal path cannot wait (approvers or on-call data unavailable in an outage).
//!
//! It is loud and reviewed: the approval channel and the `[break_glass] security_channel`
//! hear of it with `@here`, the listed approvers get a DM, and the card stays open with
//! "Reviewed — OK" and "Revoke now" until an approver acts, reminding the approval channel
//! meanwhile. Each person may use it `rate_limit` times per `rate_window`. Who may use it
//! and for how long is [`crate::policy::break_glass`]; who may review is
//! [`crate::policy::approver_eligibility`], as for Approve.

use serde_json::json;

use crate::app::AppState;
use crate::audit;
use crate::duration::HumanDuration;
use crate::ids::label;
use crate::policy::{self, BreakGlassRefusal, Ineligible};
use crate::requests::{validate, RequestInput, Requester};
use crate::store::{self, JobKind, NewRequest, Outgoing, RequestKind};
use crate::text::{escape, truncate};

/// Breaks the glass for `who`. Returns the reply, or `None` when deciding needs a Slack
/// call (a `break_glass_groups` lookup) and `may_ask_slack` is false.
pub async fn use_as(
    app: &AppState,
    who: &Requester,
    input: &RequestInput,
    may_ask_slack: bool,
) -> anyhow::Result<Option<String>> {
    let cmd = &app.config.slack.command;
    let Some(resource) = app.config.resource(&input.resource) else {
        return Ok(Some(validate(&app.config, input).err().unwrap_or_default()));
    };
    let bg = match policy::break_glass_of(resource) {
        Ok(bg) => bg,
        Err(_) => {
            return Ok(Some(format!(
                "`{}` does not allow break-glass. Ask for it with `{cmd} request {} <reason>` instead.",
                resource.name, resource.name
            )))
        }
    };
    let listed = bg.users.iter().any(|u| u == &who.user_id);
    let in_group = if listed || bg.groups.is_empty() {
        false
    } else if !may_ask_slack {
        return Ok(None);
    } else {
        match app.slack.is_in_any_group(&bg.groups, &who.user_id).await {
            Ok(yes) => yes,
            Err(e) => {
                return Ok(Some(format!(
                    "I couldn't check the break-glass groups with Slack just now ({e}); nothing was granted. \
                     Please try again, or use `{cmd} request`."
                )))
            }
        }
    };
    let duration = input.duration.unwrap_or(bg.max_duration);
    let valid = match validate(
        &app.config,
        &RequestInput {
            duration: Some(duration),
            ..input.clone()
        },
    ) {
        Ok(v) => v,
        Err(reply) => {
            return Ok(Some(
                reply.replace(&format!("{cmd} request"), &format!("{cmd} breakglass")),
            ))
        }
    };
    let now = app.now_ms();
    let window_start = now - app.config.break_glass.rate_window.as_secs() as i64 * 1000;
    let mut tx = app.db.begin().await?;
    // Counted inside the write transaction: two uses racing cannot both slip under the limit.
    let used = store::count_break_glass_uses(&mut tx, &who.user_id, window_start).await?;
    if let Err(refusal) = policy::break_glass(&app.config, resource, &who.user_id, in_group, Some(duration), used) {
        drop(tx);
        return Ok(Some(refusal_message(&refusal, &resource.name, cmd)));
    }
    let new = NewRequest {
        requester_id: who.user_id.clone(),
        team_id: who.team_id.clone(),
        resource: valid.resource.clone(),
        role: valid.role.clone(),
        duration_secs: duration.as_secs() as i64,
        reason: valid.reason.clone(),
        origin_channel: who.channel_id.clone(),
        approval_channel: valid.approval_channel.clone(),
        approvals_required: 1,
        created_at: now,
        kind: RequestKind::Access,
        extends_request_id: None,
        response_url: who.response_url.clone(),
        delivery_key: None,
    };
    let id = store::insert_request(&mut tx, &new).await?;
    store::insert_break_glass(&mut tx, id, now).await?;
    let details = json!({
        "resource": new.resource, "role": new.role, "duration_secs": new.duration_secs,
        "reason": new.reason, "break_glass": true,
    });
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        &who.user_id,
        "request.created",
        Some(id),
        details,
    )
    .await?;
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        &who.user_id,
        "breakglass.used",
        Some(id),
        json!({ "resource": new.resource, "role": new.role, "duration_secs": new.duration_secs,
                "uses_in_window": used + 1, "break_glass": true }),
    )
    .await?;
    let Some(row) = store::get_request(&mut tx, id).await? else {
        anyhow::bail!("request {id} vanished inside its own transaction");
    };
    super::apply_approval(&mut tx, app, &row, &who.user_id, json!({ "break_glass": true }), now).await?;
    store::enqueue(&mut tx, &Outgoing::post_card(id), now).await?;
    let what = format!("`{}:{}`", new.resource, new.role);
    let reason = escape(&truncate(&new.reason, 500));
    let alarm = format!(
        "<!here> :rotating_light: *Break-glass*: <@{}> granted themselves {what} for {duration} ({}) with no approver. \
         Reason: {reason}. An approver must review it in <#{}>.",
        who.user_id,
        label(id),
        new.approval_channel
    );
    store::enqueue(
        &mut tx,
        &Outgoing::message(&new.approval_channel, alarm.clone(), Some(id)),
        now,
    )
    .await?;
    if let Some(security) = &app.config.break_glass.security_channel {
        if *security != new.approval_channel {
            store::enqueue(&mut tx, &Outgoing::message(security, alarm, Some(id)), now).await?;
        }
    }
    for approver in resource.approvers.iter().filter(|a| **a != who.user_id) {
        store::enqueue(
            &mut tx,
            &Outgoing::private_message(
                approver,
                format!(
                    ":rotating_light: <@{}> used break-glass on {what} for {duration} ({}): {reason}. \
                     Please review it on the card in <#{}> — *Reviewed — OK* or *Revoke now*.",
                    who.user_id,
                    label(id),
                    new.approval_channel
                ),
                Some(id),
            ),
            now,
        )
        .await?;
    }
    let remind_at = now + app.config.break_glass.remind_after.as_secs() as i64 * 1000;
    store::insert_job(&mut tx, id, JobKind::Remind, remind_at, now).await?;
    tx.commit().await?;
    app.outbox.wake();
    app.scheduler.wake();
    app.metrics.request("created");
    app.metrics.decision("approve", "break_glass");
    tracing::warn!(
        request_id = %label(id),
        actor = %who.user_id,
        user = %who.user_id,
        resource = %new.resource,
        role = %new.role,
        "break-glass used: granted without approval"
    );
    if !resource.approver_groups.is_empty() {
        // Members of approver groups are approvers too: asking Slack who they are happens
        // after the commit, in the background, and never holds up the grant.
        let text = format!(
            ":rotating_light: <@{}> used break-glass on {what} for {duration} ({}): {reason}. Please review it on the card in <#{}> — *Reviewed — OK* or *Revoke now*.",
            who.user_id,
            label(id),
            new.approval_channel
        );
        app.tasks.spawn(dm_group_members(
            app.clone(),
            id,
            resource.approver_groups.clone(),
            resource.approvers.clone(),
            who.user_id.clone(),
            text,
        ));
    }
    Ok(Some(format!(
        ":rotating_light: Break-glass {}: granting {what} for {duration} now, with no approver. \
         The approval channel{} and the approvers have been told, and an approver will review this use.",
        label(id),
        if app.config.break_glass.security_channel.is_some() {
            " and the security channel"
        } else {
            ""
        }
    )))
}

/// DMs the members of the approver `groups` about break-glass use `request_id`, except
/// those already told (`listed`) and the person who used it.
async fn dm_group_members(
    app: AppState,
    request_id: i64,
    groups: Vec<String>,
    listed: Vec<String>,
    user: String,
    text: String,
) {
    let mut told: std::collections::BTreeSet<String> = listed.into_iter().collect();
    told.insert(user);
    let mut messages = Vec::new();
    for g in &groups {
        match app.slack.group_members(g).await {
            Ok(members) => {
                for m in members {
                    if told.insert(m.clone()) {
                        messages.push(Outgoing::private_message(&m, text.clone(), Some(request_id)));
                    }
                }
            }
            Err(e) => tracing::warn!(
                request = request_id,
                group = %g,
                error = %e,
                "could not list an approver group to tell it of a break-glass use; the channels were told"
            ),
        }
    }
    for m in messages {
        if let Err(e) = app.send_now(m).await {
            tracing::error!(
                request = request_id,
                error = format!("{e:#}"),
                "could not queue a break-glass DM"
            );
        }
    }
}

/// What the person sees when break-glass is refused.
pub fn refusal_message(refusal: &BreakGlassRefusal, resource: &str, cmd: &str) -> String {
    match refusal {
        BreakGlassRefusal::NotEnabled => format!(
            "`{resource}` does not allow break-glass. Ask for it with `{cmd} request {resource} <reason>` instead."
        ),
        BreakGlassRefusal::NotListed => format!(
            "You are not allowed to use break-glass on `{resource}`; nothing was granted. \
             Ask for it with `{cmd} request {resource} <reason>`."
        ),
        BreakGlassRefusal::TooLong { max } => format!(
            "Break-glass on `{resource}` grants at most {max}; ask for {max} or less, \
             e.g. `{cmd} breakglass {resource} {max} <reason>`."
        ),
        BreakGlassRefusal::RateLimited { limit, window } => format!(
            "You have used break-glass {limit} time{} in the last {window}, the most allowed; nothing was granted. \
             Use `{cmd} request {resource} <reason>` and ask an approver directly.",
            if *limit == 1 { "" } else { "s" }
        ),
    }
}

/// "Reviewed — OK" clicked by `actor` on break-glass request `request_id`. Re-checked here
/// like Approve: only an eligible approver, never the requester. Returns the reply.
pub async fn review(app: &AppState, request_id: i64, actor: &str) -> anyhow::Result<String> {
    let id = label(request_id);
    let (request, bg) = {
        let mut conn = app.db.read.acquire().await?;
        let request = store::get_request(&mut conn, request_id).await?;
        let bg = store::break_glass_of(&mut conn, request_id).await?;
        (request, bg)
    };
    let (Some(request), Some(bg)) = (request, bg) else {
        return Ok(format!("{id} is not a break-glass use; there is nothing to review."));
    };
    if let Some(by) = &bg.reviewed_by {
        return Ok(format!("{id} was already reviewed by <@{by}>; nothing changed."));
    }
    let Some(resource) = app.config.resource(&request.resource) else {
        return Ok(format!(
            "`{}` is no longer configured, so {id} cannot be reviewed here.",
            request.resource
        ));
    };
    let listed = resource.approvers.iter().any(|a| a == actor);
    // Cheap checks first (the requester, listed approvers), so a refused click costs no Slack call.
    if let Err(Ineligible::SelfApproval) = policy::approver_eligibility(resource, &request.requester_id, actor, true) {
        return Ok(format!(
            "You can't review your own break-glass use {id}; another approver has to."
        ));
    }
    let in_group = if listed {
        false
    } else {
        match super::is_approver(app, resource, actor).await {
            Ok(yes) => yes,
            Err(e) => {
                return Ok(format!(
                    "I couldn't check the approver groups with Slack just now ({e}); nothing changed. Please click again in a moment."
                ))
            }
        }
    };
    if policy::approver_eligibility(resource, &request.requester_id, actor, in_group).is_err() {
        return Ok(format!(
            "Only an approver of `{}` can review {id}; your click changed nothing.",
            request.resource
        ));
    }
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    if !record_review(&app.audit_key, &mut tx, &request, actor, "ok", now).await? {
        return Ok(format!("{id} was already reviewed; nothing changed."));
    }
    store::enqueue(
        &mut tx,
        &Outgoing::message(
            &request.requester_id,
            format!(
                "Your break-glass use {id} on `{}:{}` was reviewed by <@{actor}>: OK.",
                request.resource, request.role
            ),
            Some(request.id),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    app.outbox.wake();
    Ok(format!("Marked break-glass {id} as reviewed — OK."))
}

/// Marks the review in the caller's transaction: the row, its audit entry, no more
/// reminders, and the card updated. False if someone reviewed it first.
pub(crate) async fn record_review(
    key: &audit::AuditKey,
    conn: &mut crate::store::Conn,
    request: &store::RequestRow,
    actor: &str,
    review: &str,
    now: i64,
) -> anyhow::Result<bool> {
    if !store::review_break_glass(conn, request.id, actor, review, now).await? {
        return Ok(false);
    }
    audit::append(
        key,
        conn,
        now,
        actor,
        "breakglass.reviewed",
        Some(request.id),
        json!({ "review": review, "break_glass": true }),
    )
    .await?;
    store::cancel_job(conn, request.id, JobKind::Remind, now).await?;
    store::enqueue(conn, &Outgoing::update_card(request.id), now).await?;
    Ok(true)
}

/// The reminder text for a break-glass use nobody has reviewed after `waited`.
pub fn reminder(request: &store::RequestRow, waited: HumanDuration) -> String {
    format!(
        ":rotating_light: Break-glass {} by <@{}> on `{}:{}` has waited {waited} for review. \
         An approver: *Reviewed — OK* or *Revoke now* on its card.",
        label(request.id),
        request.requester_id,
        request.resource,
        request.role
    )
}

/// The `remind` job: a break-glass use nobody has reviewed reminds the approval channel,
/// then again after twice as long each time (at most daily) until someone reviews it;
/// any other request's reminder is [`crate::grants::remind`].
pub async fn remind(app: &AppState, job: store::JobRow) -> anyhow::Result<()> {
    let (request, bg) = {
        let mut conn = app.db.read.acquire().await?;
        (
            store::get_request(&mut conn, job.request_id).await?,
            store::break_glass_of(&mut conn, job.request_id).await?,
        )
    };
    let (Some(request), Some(bg)) = (request, bg) else {
        return crate::grants::remind(app, job).await;
    };
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    // Reviewed meanwhile: the review cancelled this job, unless it was already claimed.
    let still_open = store::break_glass_of(&mut tx, request.id)
        .await?
        .is_some_and(|b| b.reviewed_at.is_none());
    if still_open {
        let waited = HumanDuration::from_secs(((now - bg.used_at).max(1000) / 1000) as u64);
        store::enqueue(
            &mut tx,
            &Outgoing::message(&request.approval_channel, reminder(&request, waited), Some(request.id)),
            now,
        )
        .await?;
        let first = app.config.break_glass.remind_after.as_secs() as i64 * 1000;
        let next = (first * 2i64.pow((job.attempts as u32 + 1).min(10))).min(86_400_000);
        store::retry_job(&mut tx, job.id, now + next, "", None).await?;
    } else {
        store::finish_job(&mut tx, job.id, false, now).await?;
    }
    tx.commit().await?;
    app.outbox.wake();
    Ok(())
}
