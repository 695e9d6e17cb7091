//! The grant lifecycle: approved → granting → active → revoked (or failed), and the
//! time-out of requests nobody decided on. Each step runs as a durable job (see
//! `scheduler`); adapter calls happen outside any database transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use serde_json::json;

use crate::adapters::{AdapterError, GrantContext};
use crate::duration::HumanDuration;
use crate::requests::label;
use crate::scheduler::backoff;
use crate::slack::cards::slack_date;
use crate::store::{self, GrantRow, GrantState, JobKind, JobRow, Outgoing, RequestRow, RequestState};
use crate::{audit, AppState};

/// One lock per access (adapter, user, resource, role): grant, revoke and extend calls for
/// the same access never overlap, so a revoke cannot race a grant that re-applies it.
#[derive(Default)]
pub struct AccessLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AccessLocks {
    /// Waits for the access `g` concerns.
    pub async fn lock(&self, g: &GrantRow) -> tokio::sync::OwnedMutexGuard<()> {
        let key = format!("{}\u{1f}{}\u{1f}{}\u{1f}{}", g.adapter, g.user_id, g.resource, g.role);
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 1024 {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Who ended a grant, as shown to people.
fn ended_by_text(g: &GrantRow) -> String {
    match g.revoke_requested_by.as_deref() {
        Some(by) if by == g.user_id => "as you asked".to_string(),
        Some(by) => format!("revoked by <@{by}>"),
        None => "it expired".to_string(),
    }
}

/// A grant still holding access whose configuration is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub request_id: i64,
    pub description: String,
    /// Its adapter is still configured, so it can be revoked now.
    pub revocable: bool,
}

/// Live grants whose resource or adapter was removed from the configuration. Starting
/// without them would leave access nobody can take away.
pub fn stranded(config: &crate::config::Config, live: &[GrantRow]) -> Vec<Stranded> {
    live.iter()
        .filter_map(|g| {
            let what = format!(
                "{} (`{}:{}` for {})",
                label(g.request_id),
                g.resource,
                g.role,
                g.user_id
            );
            let adapter_known = config.adapters.contains_key(&g.adapter);
            if !adapter_known {
                Some(Stranded {
                    request_id: g.request_id,
                    description: format!("{what} uses adapter `{}`, which is no longer in the file", g.adapter),
                    revocable: false,
                })
            } else if config.resource(&g.resource).is_none() {
                Some(Stranded {
                    request_id: g.request_id,
                    description: format!(
                        "{what} is for resource `{}`, which is no longer in the file",
                        g.resource
                    ),
                    revocable: true,
                })
            } else {
                None
            }
        })
        .collect()
}

/// Runs one claimed job to its next state.
pub async fn run_job(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    match job.kind {
        JobKind::Grant => run_grant(app, job).await,
        JobKind::Revoke => run_revoke(app, job).await,
        JobKind::ExpireRequest => expire_request(app, job).await,
        JobKind::Remind => remind(app, job).await,
        JobKind::Extend => run_extend(app, job).await,
        JobKind::AutoApprove => crate::oncall::auto::run(app, job).await,
    }
}

async fn load(app: &AppState, request_id: i64) -> anyhow::Result<(RequestRow, Option<GrantRow>)> {
    let mut conn = app.db.read.acquire().await?;
    let request = store::get_request(&mut conn, request_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("request {request_id} vanished"))?;
    let grant = store::grant_of(&mut conn, request_id).await?;
    Ok((request, grant))
}

/// What the adapter is told about `grant`, due to end at `expires_at_ms`.
pub(crate) fn context(grant: &GrantRow, reason: &str, expires_at_ms: i64) -> GrantContext {
    GrantContext {
        grant_id: grant.id,
        request_id: grant.request_id,
        user_id: grant.user_id.clone(),
        resource: grant.resource.clone(),
        role: grant.role.clone(),
        duration_secs: grant.duration_secs,
        expires_at: DateTime::from_timestamp_millis(expires_at_ms).unwrap_or_default(),
        reason: reason.to_string(),
        state: grant.adapter_state.clone(),
    }
}

fn jittered(app: &AppState, attempt: i64) -> Duration {
    let jobs = &app.config.jobs;
    backoff(
        jobs.backoff_initial.to_std(),
        jobs.backoff_max.to_std(),
        attempt as u32,
        rand::random::<f64>(),
    )
}

async fn run_grant(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let (request, grant) = load(app, job.request_id).await?;
    let Some(grant) = grant.filter(|g| g.state == GrantState::Granting) else {
        let mut tx = app.db.begin().await?;
        store::finish_job(&mut tx, job.id, false, app.now_ms()).await?;
        tx.commit().await?;
        return Ok(());
    };
    let _access = app.access_locks.lock(&grant).await;
    let started = app.now_ms();
    let planned_expiry = started + grant.duration_secs * 1000;
    let result = match app.adapters.get(&grant.adapter) {
        Some(adapter) => adapter.grant(&context(&grant, &request.reason, planned_expiry)).await,
        None => Err(AdapterError::Temporary(format!(
            "adapter `{}` is not in the configuration",
            grant.adapter
        ))),
    };
    let now = app.now_ms();
    let what = format!("`{}:{}`", grant.resource, grant.role);
    let mut tx = app.db.begin().await?;
    match result {
        Ok(granted) => {
            // The clock starts when the grant succeeded, not when it was asked for.
            let expires_at = now + grant.duration_secs * 1000;
            if store::activate_grant(&mut tx, grant.id, now, expires_at, granted.state.as_deref()).await? {
                // Someone asked to end it while it was being granted: revoke at once.
                let revoke_at = match store::grant_of(&mut tx, request.id).await? {
                    Some(g) if g.revoke_requested_by.is_some() => now,
                    _ => expires_at,
                };
                if let Some(note) = granted.private_note {
                    store::enqueue(
                        &mut tx,
                        &Outgoing::private_message(&grant.user_id, note, Some(request.id)),
                        now,
                    )
                    .await?;
                }
                store::insert_job(&mut tx, request.id, JobKind::Revoke, revoke_at, now).await?;
                audit::append(
                    &mut tx,
                    now,
                    audit::SYSTEM_ACTOR,
                    "grant.active",
                    Some(request.id),
                    json!({ "grant_id": grant.id, "adapter": grant.adapter, "granted_at": now, "expires_at": expires_at,
                            "attempt": job.attempts + 1 }),
                )
                .await?;
                store::enqueue(
                    &mut tx,
                    &Outgoing::message(
                        &grant.user_id,
                        format!(
                            ":key: You have {what} now ({}). It ends {}.",
                            label(request.id),
                            slack_date(expires_at)
                        ),
                        Some(request.id),
                    ),
                    now,
                )
                .await?;
                store::enqueue(&mut tx, &Outgoing::update_card(request.id), now).await?;
            }
            store::finish_job(&mut tx, job.id, false, now).await?;
        }
        Err(err) => {
            let attempts = job.attempts + 1;
            let permanent = matches!(err, AdapterError::Permanent(_));
            let message = err.to_string();
            if permanent || attempts >= app.config.jobs.grant_attempts as i64 {
                store::fail_grant(&mut tx, grant.id, &message).await?;
                store::finish_job(&mut tx, job.id, true, now).await?;
                // Clean up whatever a failed attempt may have left half-applied.
                store::insert_job(&mut tx, request.id, JobKind::Revoke, now, now).await?;
                audit::append(
                    &mut tx,
                    now,
                    audit::SYSTEM_ACTOR,
                    "grant.failed",
                    Some(request.id),
                    json!({ "grant_id": grant.id, "adapter": grant.adapter, "attempts": attempts, "error": message }),
                )
                .await?;
                let text = format!(
                    ":x: Granting {what} for {} failed after {attempts} attempt{}: {}. Nothing is in force.",
                    label(request.id),
                    if attempts == 1 { "" } else { "s" },
                    crate::slack::payloads::escape(&message)
                );
                store::enqueue(
                    &mut tx,
                    &Outgoing::message(&grant.user_id, text.clone(), Some(request.id)),
                    now,
                )
                .await?;
                store::enqueue(
                    &mut tx,
                    &Outgoing::message(&request.approval_channel, text, Some(request.id)),
                    now,
                )
                .await?;
            } else {
                let retry_at = now + jittered(app, attempts).as_millis() as i64;
                store::retry_job(&mut tx, job.id, retry_at, &message, None).await?;
                store::set_grant_error(&mut tx, grant.id, &message).await?;
                audit::append(
                    &mut tx,
                    now,
                    audit::SYSTEM_ACTOR,
                    "grant.attempt_failed",
                    Some(request.id),
                    json!({ "grant_id": grant.id, "attempt": attempts, "error": message, "retry_at": retry_at }),
                )
                .await?;
            }
            store::enqueue(&mut tx, &Outgoing::update_card(request.id), now).await?;
        }
    }
    tx.commit().await?;
    app.wake_outbox();
    app.wake_scheduler();
    Ok(())
}

async fn run_revoke(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let (_, grant) = load(app, job.request_id).await?;
    let Some(grant) = grant else {
        return finish(app, &job).await;
    };
    let _access = app.access_locks.lock(&grant).await;
    // Re-read under the lock: an extension or another revoke may have run meanwhile.
    let (request, grant) = load(app, job.request_id).await?;
    let Some(grant) = grant.filter(|g| matches!(g.state, GrantState::Active | GrantState::Failed)) else {
        return finish(app, &job).await;
    };
    let now = app.now_ms();
    if grant.state == GrantState::Active && grant.revoke_requested_by.is_none() {
        if let Some(expires_at) = grant.expires_at.filter(|e| *e > now) {
            // Extended after this job was claimed: not due yet.
            let mut conn = app.db.write.acquire().await?;
            store::release_job(&mut conn, job.id).await?;
            store::reschedule_job(&mut conn, request.id, JobKind::Revoke, expires_at).await?;
            return Ok(());
        }
    }
    let cleanup = grant.state == GrantState::Failed;
    let adapter = app.adapters.get(&grant.adapter);
    if adapter.as_ref().is_some_and(|a| a.shares_access()) {
        let covering = {
            let mut conn = app.db.read.acquire().await?;
            store::covering_grants(&mut conn, &grant).await?
        };
        if let Some(cover) = covering.first() {
            return supersede(app, &job, &request, &grant, cover).await;
        }
    }
    let due = grant.expires_at.unwrap_or(job.run_at);
    let result = match &adapter {
        Some(adapter) => adapter.revoke(&context(&grant, &request.reason, due)).await,
        None => Err(AdapterError::Temporary(format!(
            "adapter `{}` is not in the configuration; restore it so the access can be revoked",
            grant.adapter
        ))),
    };
    let now = app.now_ms();
    let what = format!("`{}:{}`", grant.resource, grant.role);
    let mut tx = app.db.begin().await?;
    match result {
        Ok(()) => {
            let by = grant.revoke_requested_by.clone().unwrap_or_else(|| "expiry".into());
            if cleanup {
                audit::append(
                    &mut tx,
                    now,
                    audit::SYSTEM_ACTOR,
                    "grant.cleaned_up",
                    Some(request.id),
                    json!({ "grant_id": grant.id }),
                )
                .await?;
            } else if store::revoke_grant(&mut tx, grant.id, now, &by).await? {
                audit::append(
                    &mut tx,
                    now,
                    grant.revoke_requested_by.as_deref().unwrap_or(audit::SYSTEM_ACTOR),
                    "grant.revoked",
                    Some(request.id),
                    json!({ "grant_id": grant.id, "adapter": grant.adapter, "expires_at": due, "revoked_at": now,
                            "late_ms": now - due, "attempt": job.attempts + 1, "revoked_by": by }),
                )
                .await?;
                let text = if grant.revoke_requested_by.is_none() {
                    format!(":lock: Your access to {what} ({}) has ended.", label(request.id))
                } else {
                    format!(
                        ":lock: Your access to {what} ({}) has ended early, {}.",
                        label(request.id),
                        ended_by_text(&grant)
                    )
                };
                store::enqueue(&mut tx, &Outgoing::message(&grant.user_id, text, Some(request.id)), now).await?;
                if job.attempts > 0 {
                    store::enqueue(
                        &mut tx,
                        &Outgoing::message(
                            &request.approval_channel,
                            format!(
                                ":white_check_mark: Revoking {what} for <@{}> ({}) succeeded after {} failed attempt{}.",
                                grant.user_id,
                                label(request.id),
                                job.attempts,
                                if job.attempts == 1 { "" } else { "s" }
                            ),
                            Some(request.id),
                        ),
                        now,
                    )
                    .await?;
                }
            }
            store::finish_job(&mut tx, job.id, false, now).await?;
        }
        Err(err) => {
            // A revoke never gives up: access that should have ended is the worst failure.
            let attempts = job.attempts + 1;
            let message = err.to_string();
            let retry_at = now + jittered(app, attempts).as_millis() as i64;
            let alert_every = app.config.jobs.revoke_alert_interval.as_secs() as i64 * 1000;
            let alert = job.last_alert_at.is_none_or(|at| now - at >= alert_every);
            store::retry_job(&mut tx, job.id, retry_at, &message, alert.then_some(now)).await?;
            store::set_grant_error(&mut tx, grant.id, &message).await?;
            audit::append(
                &mut tx,
                now,
                audit::SYSTEM_ACTOR,
                "revoke.attempt_failed",
                Some(request.id),
                json!({ "grant_id": grant.id, "attempt": attempts, "error": message, "retry_at": retry_at }),
            )
            .await?;
            if alert {
                store::enqueue(
                    &mut tx,
                    &Outgoing::message(
                        &request.approval_channel,
                        format!(
                            ":rotating_light: Revoking {what} for <@{}> ({}) is failing: {}. It was due {}; \
                             jitgate keeps retrying (attempt {attempts}, next {}). Check the `{}` adapter.",
                            grant.user_id,
                            label(request.id),
                            crate::slack::payloads::escape(&message),
                            slack_date(due),
                            slack_date(retry_at),
                            grant.adapter
                        ),
                        Some(request.id),
                    ),
                    now,
                )
                .await?;
            }
        }
    }
    store::enqueue(&mut tx, &Outgoing::update_card(request.id), now).await?;
    tx.commit().await?;
    app.wake_outbox();
    app.wake_scheduler();
    Ok(())
}

async fn finish(app: &AppState, job: &JobRow) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    store::finish_job(&mut tx, job.id, false, app.now_ms()).await?;
    tx.commit().await?;
    Ok(())
}

/// Ends a grant without touching the adapter, because `cover` still needs the same access.
async fn supersede(
    app: &AppState,
    job: &JobRow,
    request: &RequestRow,
    grant: &GrantRow,
    cover: &GrantRow,
) -> anyhow::Result<()> {
    let now = app.now_ms();
    let what = format!("`{}:{}`", grant.resource, grant.role);
    let mut tx = app.db.begin().await?;
    if grant.state == GrantState::Failed {
        audit::append(
            &mut tx,
            now,
            audit::SYSTEM_ACTOR,
            "grant.cleanup_skipped",
            Some(request.id),
            json!({ "grant_id": grant.id, "covered_by": label(cover.request_id) }),
        )
        .await?;
    } else {
        let by = grant.revoke_requested_by.clone().unwrap_or_else(|| "expiry".into());
        if store::supersede_grant(&mut tx, grant.id, now, &by).await? {
            audit::append(
                &mut tx,
                now,
                grant.revoke_requested_by.as_deref().unwrap_or(audit::SYSTEM_ACTOR),
                "grant.superseded",
                Some(request.id),
                json!({ "grant_id": grant.id, "covered_by": label(cover.request_id), "covered_until": cover.expires_at }),
            )
            .await?;
            let until = match cover.expires_at {
                Some(at) => format!(" until {}", slack_date(at)),
                None => String::new(),
            };
            store::enqueue(
                &mut tx,
                &Outgoing::message(
                    &grant.user_id,
                    format!(
                        ":information_source: {} has ended ({}), but you keep {what} under {}{until}.",
                        label(request.id),
                        ended_by_text(grant),
                        label(cover.request_id)
                    ),
                    Some(request.id),
                ),
                now,
            )
            .await?;
            store::enqueue(&mut tx, &Outgoing::update_card(request.id), now).await?;
        }
    }
    store::finish_job(&mut tx, job.id, false, now).await?;
    tx.commit().await?;
    app.wake_outbox();
    Ok(())
}

/// Why an early revoke was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeRefusal {
    NoGrant,
    AlreadyEnded,
}

/// Ends a grant now, on behalf of `actor` (already authorised by the caller).
pub async fn revoke_early(app: &AppState, request_id: i64, actor: &str) -> anyhow::Result<Result<(), RevokeRefusal>> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let Some(grant) = store::grant_of(&mut tx, request_id).await? else {
        return Ok(Err(RevokeRefusal::NoGrant));
    };
    if !store::request_revoke(&mut tx, grant.id, actor, now).await? {
        return Ok(Err(RevokeRefusal::AlreadyEnded));
    }
    store::reschedule_job(&mut tx, request_id, JobKind::Revoke, now).await?;
    audit::append(
        &mut tx,
        now,
        actor,
        "grant.revoke_requested",
        Some(request_id),
        json!({ "grant_id": grant.id }),
    )
    .await?;
    store::enqueue(&mut tx, &Outgoing::update_card(request_id), now).await?;
    tx.commit().await?;
    app.wake_scheduler();
    app.wake_outbox();
    Ok(Ok(()))
}

/// Applies an approved extension (job of the extension request) to the grant it extends.
async fn run_extend(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let (ext, _) = load(app, job.request_id).await?;
    let Some(original_id) = ext.extends_request_id else {
        return finish(app, &job).await;
    };
    let Some(g) = load(app, original_id).await?.1 else {
        return finish(app, &job).await;
    };
    let _access = app.access_locks.lock(&g).await;
    let (original, grant) = load(app, original_id).await?;
    let grant = grant.expect("a grant is never deleted");
    let add = ext.duration_secs;
    let max_total = app
        .config
        .resource(&grant.resource)
        .map(|r| r.max_total_duration.as_secs() as i64);
    let refusal = if grant.state != GrantState::Active || grant.revoke_requested_by.is_some() {
        Some(format!(
            "{} had already ended, so nothing was extended",
            label(original_id)
        ))
    } else if max_total.is_some_and(|m| grant.duration_secs + add > m) {
        Some(format!(
            "{} would then last {}, more than the {} allowed, so nothing was extended",
            label(original_id),
            HumanDuration::from_secs((grant.duration_secs + add) as u64),
            HumanDuration::from_secs(max_total.unwrap_or_default() as u64)
        ))
    } else {
        None
    };
    let what = format!("`{}:{}`", grant.resource, grant.role);
    if let Some(why) = refusal {
        let now = app.now_ms();
        let mut tx = app.db.begin().await?;
        audit::append(
            &mut tx,
            now,
            audit::SYSTEM_ACTOR,
            "extension.void",
            Some(ext.id),
            json!({ "reason": why }),
        )
        .await?;
        store::enqueue(
            &mut tx,
            &Outgoing::message(
                &ext.requester_id,
                format!(":information_source: Extension {}: {why}.", label(ext.id)),
                Some(ext.id),
            ),
            now,
        )
        .await?;
        store::finish_job(&mut tx, job.id, false, now).await?;
        tx.commit().await?;
        app.wake_outbox();
        return Ok(());
    }
    let new_expiry = grant.expires_at.unwrap_or_default() + add * 1000;
    let result = match app.adapters.get(&grant.adapter) {
        Some(adapter) => adapter.extend(&context(&grant, &original.reason, new_expiry)).await,
        None => Err(AdapterError::Temporary(format!(
            "adapter `{}` is not in the configuration",
            grant.adapter
        ))),
    };
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    match result {
        Ok(()) => {
            if store::extend_grant(&mut tx, grant.id, add).await? {
                store::reschedule_job(&mut tx, original_id, JobKind::Revoke, new_expiry).await?;
                audit::append(
                    &mut tx,
                    now,
                    audit::SYSTEM_ACTOR,
                    "grant.extended",
                    Some(original_id),
                    json!({ "grant_id": grant.id, "extension": label(ext.id), "added_secs": add, "expires_at": new_expiry }),
                )
                .await?;
                store::enqueue(
                    &mut tx,
                    &Outgoing::message(
                        &grant.user_id,
                        format!(
                            ":hourglass_flowing_sand: {what} ({}) now ends {}.",
                            label(original_id),
                            slack_date(new_expiry)
                        ),
                        Some(original_id),
                    ),
                    now,
                )
                .await?;
                store::enqueue(&mut tx, &Outgoing::update_card(original_id), now).await?;
            }
            store::finish_job(&mut tx, job.id, false, now).await?;
        }
        Err(err) => {
            let attempts = job.attempts + 1;
            let message = err.to_string();
            if matches!(err, AdapterError::Permanent(_)) || attempts >= app.config.jobs.grant_attempts as i64 {
                audit::append(
                    &mut tx,
                    now,
                    audit::SYSTEM_ACTOR,
                    "extension.failed",
                    Some(ext.id),
                    json!({ "error": message }),
                )
                .await?;
                store::enqueue(
                    &mut tx,
                    &Outgoing::message(
                        &ext.requester_id,
                        format!(
                            ":x: Extending {what} ({}) failed: {}. It still ends {}.",
                            label(original_id),
                            crate::slack::payloads::escape(&message),
                            slack_date(grant.expires_at.unwrap_or_default())
                        ),
                        Some(ext.id),
                    ),
                    now,
                )
                .await?;
                store::finish_job(&mut tx, job.id, true, now).await?;
            } else {
                store::retry_job(
                    &mut tx,
                    job.id,
                    now + jittered(app, attempts).as_millis() as i64,
                    &message,
                    None,
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    app.wake_outbox();
    app.wake_scheduler();
    Ok(())
}

async fn expire_request(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    if store::transition_request(
        &mut tx,
        job.request_id,
        RequestState::Pending,
        RequestState::Expired,
        now,
    )
    .await?
    {
        if let Some(r) = store::get_request(&mut tx, job.request_id).await? {
            audit::append(
                &mut tx,
                now,
                audit::SYSTEM_ACTOR,
                "request.expired",
                Some(r.id),
                json!({ "pending_timeout_secs": app.config.requests.pending_timeout.as_secs() }),
            )
            .await?;
            store::enqueue(
                &mut tx,
                &Outgoing::message(
                    &r.requester_id,
                    format!(
                        ":hourglass: Your request {} for `{}:{}` expired: nobody decided within {}. Ask again if you still need it.",
                        label(r.id),
                        r.resource,
                        r.role,
                        HumanDuration::from_secs(app.config.requests.pending_timeout.as_secs())
                    ),
                    Some(r.id),
                ),
                now,
            )
            .await?;
            store::enqueue(&mut tx, &Outgoing::update_card(r.id), now).await?;
        }
    }
    store::finish_job(&mut tx, job.id, false, now).await?;
    tx.commit().await?;
    app.wake_outbox();
    Ok(())
}

/// Reminds the approval channel of a request nobody has decided on, then schedules the
/// next reminder twice as far out (1×, 2×, 4× `remind_after` …) while it stays pending.
async fn remind(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let request = store::get_request(&mut tx, job.request_id).await?;
    match request.filter(|r| r.state == RequestState::Pending) {
        Some(r) => {
            let waited = HumanDuration::from_secs(((now - r.created_at).max(1000) / 1000) as u64);
            store::enqueue(
                &mut tx,
                &Outgoing::message(
                    &r.approval_channel,
                    format!(
                        ":bell: {} from <@{}> for `{}:{}` has been waiting {waited} for a decision.",
                        label(r.id),
                        r.requester_id,
                        r.resource,
                        r.role
                    ),
                    Some(r.id),
                ),
                now,
            )
            .await?;
            let interval = app
                .config
                .requests
                .remind_after
                .map(|d| d.as_secs() as i64 * 1000)
                .unwrap_or(0);
            let next = now + interval * 2i64.pow((job.attempts as u32 + 1).min(10));
            let timeout_at = r.created_at + app.config.requests.pending_timeout.as_secs() as i64 * 1000;
            if interval > 0 && next < timeout_at {
                store::retry_job(&mut tx, job.id, next, "", None).await?;
            } else {
                store::finish_job(&mut tx, job.id, false, now).await?;
            }
        }
        None => store::finish_job(&mut tx, job.id, false, now).await?,
    }
    tx.commit().await?;
    app.wake_outbox();
    Ok(())
}
