//! The grant lifecycle: approved → granting → active → revoked (or failed), and the
//! time-out of requests nobody decided on. Each step runs as a durable job (see
//! `scheduler`); adapter calls happen outside any database transaction.

use std::time::Duration;

use chrono::DateTime;
use futures_util::StreamExt;
use serde_json::json;

use crate::access_locks;
use crate::adapters::{AdapterError, GrantContext};
use crate::app::AppState;
use crate::audit;
use crate::backoff::backoff;
use crate::duration::HumanDuration;
use crate::ids::label;
use crate::store::{self, GrantRow, GrantState, JobKind, JobRow, Outgoing, RequestRow, RequestState};
use crate::text::slack_date;

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

/// Whether grants of `resource` through `adapter` lost their configuration.
pub fn removed(config: &crate::config::Config, resource: &str, adapter: &str) -> bool {
    !config.adapters.contains_key(adapter) || config.resource(resource).is_none()
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

pub async fn run_grant(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let (request, grant) = load(app, job.request_id).await?;
    let Some(grant) = grant.filter(|g| g.state == GrantState::Granting) else {
        let mut tx = app.db.begin().await?;
        store::finish_job(&mut tx, job.id, false, app.now_ms()).await?;
        tx.commit().await?;
        return Ok(());
    };
    let _access = app.access_locks.lock_access(&grant).await?;
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
    app.metrics.grant_attempt(&grant.adapter, result.is_ok());
    // What to log once the transaction is committed.
    let mut logged: Option<(bool, Option<i64>, String)> = None;
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
                if revoke_at == expires_at {
                    if let Some(at) = ending_soon_at(app, grant.duration_secs, expires_at, now) {
                        store::schedule_job(&mut tx, request.id, JobKind::EndingSoon, at, now).await?;
                    }
                }
                audit::append(
                    &app.audit_key,
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
                logged = Some((true, Some(expires_at), String::new()));
            }
            store::finish_job(&mut tx, job.id, false, now).await?;
        }
        Err(err) => {
            let attempts = job.attempts + 1;
            let permanent = err.is_permanent();
            let message = err.to_string();
            if permanent || attempts >= app.config.jobs.grant_attempts as i64 {
                store::fail_grant(&mut tx, grant.id, &message).await?;
                store::finish_job(&mut tx, job.id, true, now).await?;
                // Clean up whatever a failed attempt may have left half-applied.
                store::insert_job(&mut tx, request.id, JobKind::Revoke, now, now).await?;
                audit::append(
                    &app.audit_key,
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
                    crate::text::escape(&message)
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
                logged = Some((false, None, message.clone()));
            } else {
                app.metrics.job_retry("grant");
                let retry_at = now + jittered(app, attempts).as_millis() as i64;
                store::retry_job(&mut tx, job.id, retry_at, &message, None).await?;
                store::set_grant_error(&mut tx, grant.id, &message).await?;
                audit::append(
                    &app.audit_key,
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
    match logged {
        Some((true, expires_at, _)) => {
            if let Some(decided) = request.decided_at {
                app.metrics.granted_after(now - decided);
            }
            tracing::info!(
                request_id = %label(request.id),
                grant_id = grant.id,
                actor = audit::SYSTEM_ACTOR,
                user = %grant.user_id,
                resource = %grant.resource,
                role = %grant.role,
                adapter = %grant.adapter,
                expires_at = expires_at.unwrap_or_default(),
                "granted"
            );
        }
        Some((false, _, error)) => tracing::warn!(
            request_id = %label(request.id),
            grant_id = grant.id,
            actor = audit::SYSTEM_ACTOR,
            user = %grant.user_id,
            resource = %grant.resource,
            role = %grant.role,
            adapter = %grant.adapter,
            error = %error,
            "grant failed"
        ),
        None => {}
    }
    app.outbox.wake();
    app.scheduler.wake();
    Ok(())
}

/// What a claimed revoke job does, decided under its access lock.
#[derive(Debug, Clone, PartialEq)]
enum RevokeStep {
    /// Nothing to revoke: there is no grant, or it already ended.
    Finish,
    /// The grant was extended after the job was claimed: run again at the new expiry.
    NotDue(i64),
    /// Another grant still needs the same shared access: end this one, leave the access.
    Supersede,
    /// Ask the adapter to take the access away.
    Revoke,
}

/// The decision for one revoke job at `now`. `covered` says whether another grant still
/// covers the same access and the adapter shares access between grants.
fn revoke_step(grant: Option<&GrantRow>, now: i64, covered: bool) -> RevokeStep {
    let Some(grant) = grant.filter(|g| matches!(g.state, GrantState::Active | GrantState::Failed)) else {
        return RevokeStep::Finish;
    };
    if grant.state == GrantState::Active && grant.revoke_requested_by.is_none() {
        if let Some(expires_at) = grant.expires_at.filter(|e| *e > now) {
            return RevokeStep::NotDue(expires_at);
        }
    }
    if covered {
        RevokeStep::Supersede
    } else {
        RevokeStep::Revoke
    }
}

/// One revoke job with what it acts on, once its access is locked.
struct RevokeItem {
    job: JobRow,
    request: RequestRow,
    grant: GrantRow,
    /// When the access was due to end.
    due: i64,
}

/// What a revoke job leads to, written in the batch's transaction.
// Short-lived, one per job of a batch: boxing the rows would only add allocations.
#[allow(clippy::large_enum_variant)]
enum RevokeOutcome {
    Finish(JobRow),
    NotDue(JobRow, i64),
    Superseded(RevokeItem, GrantRow),
    Revoked(RevokeItem),
    Failed(RevokeItem, AdapterError),
}

/// Runs one revoke job on its own, waiting for its access lock.
pub async fn run_revoke(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let deferred = revoke_batch(app, vec![job], 1, true).await?;
    debug_assert!(deferred.is_empty());
    Ok(())
}

/// Runs claimed revoke jobs together: their grants are read in a few statements, the
/// adapter calls run `concurrency` at a time, and every result is written in one
/// transaction. Revokes fall due in waves (a shift's worth of grants ending at once), and
/// one revoke at a time with two commits each cannot keep up with a large wave.
///
/// A job whose access is locked by another task (a grant, extension or reconciliation
/// for the same access), or whose access another job of this batch already covers, runs
/// on its own after the batch. Returns an error only when the batch wrote nothing; its
/// jobs are then still claimed and the caller retries them.
pub async fn run_revokes(app: &AppState, jobs: Vec<JobRow>, concurrency: usize) -> anyhow::Result<()> {
    let deferred = revoke_batch(app, jobs, concurrency, false).await?;
    for job in deferred {
        let id = job.id;
        if let Err(e) = run_revoke(app, job).await {
            crate::scheduler::retry_after_error(&app.db, app.now_ms(), &[id], &e).await;
        }
    }
    Ok(())
}

/// Runs `jobs` as one batch and returns those left for later (see `run_revokes`). With
/// `wait`, waits for every access lock instead of deferring.
async fn revoke_batch(
    app: &AppState,
    jobs: Vec<JobRow>,
    concurrency: usize,
    wait: bool,
) -> anyhow::Result<Vec<JobRow>> {
    let request_ids: Vec<i64> = jobs.iter().map(|j| j.request_id).collect();
    let before = {
        let mut conn = app.db.read.acquire().await?;
        store::grants_of(&mut conn, &request_ids).await?
    };
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut locked = Vec::with_capacity(jobs.len());
    let mut deferred = Vec::new();
    let mut guards = Vec::new();
    let mut keys = std::collections::HashSet::new();
    let mut candidates = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Some(grant) = before.get(&job.request_id) else {
            outcomes.push(RevokeOutcome::Finish(job));
            continue;
        };
        let key = access_locks::key(grant);
        if !keys.insert(key.clone()) {
            deferred.push(job);
            continue;
        }
        candidates.push((job, key, grant));
    }
    if wait {
        for (job, _, grant) in candidates {
            guards.push(app.access_locks.lock_access(grant).await?);
            locked.push(job);
        }
    } else {
        let keys: Vec<String> = candidates.iter().map(|(_, key, _)| key.clone()).collect();
        let (guard, taken) = app.access_locks.try_lock_accesses(&keys).await?;
        guards.push(guard);
        for ((job, _, _), taken) in candidates.into_iter().zip(taken) {
            if taken {
                locked.push(job);
            } else {
                deferred.push(job);
            }
        }
    }

    // Read again under the locks: an extension or another revoke may have run meanwhile.
    let request_ids: Vec<i64> = locked.iter().map(|j| j.request_id).collect();
    let (mut requests, mut grants, covers) = {
        let mut conn = app.db.read.acquire().await?;
        let requests = store::requests_by_id(&mut conn, &request_ids).await?;
        let grants = store::grants_of(&mut conn, &request_ids).await?;
        let shared: Vec<&GrantRow> = grants
            .values()
            .filter(|g| app.adapters.get(&g.adapter).is_some_and(|a| a.shares_access()))
            .collect();
        let covers = store::covers_of(&mut conn, &shared).await?;
        (requests, grants, covers)
    };
    let now = app.now_ms();
    let mut calls = Vec::new();
    for job in locked {
        let grant = grants.remove(&job.request_id);
        let cover = grant.as_ref().and_then(|g| covers.get(&g.id));
        let step = revoke_step(grant.as_ref(), now, cover.is_some());
        let item = match (grant, requests.remove(&job.request_id)) {
            (Some(grant), Some(request)) => RevokeItem {
                due: grant.expires_at.unwrap_or(job.run_at),
                job,
                request,
                grant,
            },
            _ => {
                outcomes.push(RevokeOutcome::Finish(job));
                continue;
            }
        };
        match step {
            RevokeStep::Finish => outcomes.push(RevokeOutcome::Finish(item.job)),
            RevokeStep::NotDue(at) => outcomes.push(RevokeOutcome::NotDue(item.job, at)),
            RevokeStep::Supersede => {
                let cover = cover.cloned().expect("a superseded grant has a cover");
                outcomes.push(RevokeOutcome::Superseded(item, cover))
            }
            RevokeStep::Revoke => calls.push(item),
        }
    }

    let called = futures_util::stream::iter(calls)
        .map(|item| async move {
            let result = match app.adapters.get(&item.grant.adapter) {
                Some(adapter) => {
                    adapter
                        .revoke(&context(&item.grant, &item.request.reason, item.due))
                        .await
                }
                None => Err(AdapterError::Temporary(format!(
                    "adapter `{}` is not in the configuration; restore it so the access can be revoked",
                    item.grant.adapter
                ))),
            };
            app.metrics.revoke_attempt(&item.grant.adapter, result.is_ok());
            match result {
                Ok(()) => RevokeOutcome::Revoked(item),
                Err(e) => RevokeOutcome::Failed(item, e),
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    outcomes.extend(called);

    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let ended = record_revokes(app, &mut tx, outcomes, now).await?;
    tx.commit().await?;
    drop(guards);
    for e in ended {
        if e.expired && !e.superseded {
            app.metrics.revoked_late_by(e.late_ms);
        }
        tracing::info!(
            request_id = %label(e.request_id),
            grant_id = e.grant_id,
            actor = %e.actor,
            user = %e.user,
            resource = %e.resource,
            role = %e.role,
            adapter = %e.adapter,
            late_ms = e.late_ms,
            "{}",
            if e.superseded { "revoked (access kept under another grant)" } else { "revoked" }
        );
    }
    app.outbox.wake();
    app.scheduler.wake();
    Ok(deferred)
}

/// A grant a batch ended, for the log once the batch is committed.
struct Ended {
    request_id: i64,
    grant_id: i64,
    actor: String,
    user: String,
    resource: String,
    role: String,
    adapter: String,
    /// It ended at its end time rather than early.
    expired: bool,
    /// The access itself stays, under another grant.
    superseded: bool,
    late_ms: i64,
}

impl Ended {
    fn of(item: &RevokeItem, superseded: bool, now: i64) -> Self {
        let g = &item.grant;
        Self {
            request_id: item.request.id,
            grant_id: g.id,
            actor: g
                .revoke_requested_by
                .clone()
                .unwrap_or_else(|| audit::SYSTEM_ACTOR.into()),
            user: g.user_id.clone(),
            resource: g.resource.clone(),
            role: g.role.clone(),
            adapter: g.adapter.clone(),
            expired: g.revoke_requested_by.is_none(),
            superseded,
            late_ms: now - item.due,
        }
    }
}

/// Writes what a batch of revoke jobs led to: grant states, audit entries, messages, and
/// the jobs' own state, with one multi-row statement per table for the common case.
/// Returns the grants it ended.
async fn record_revokes(
    app: &AppState,
    tx: &mut crate::store::Conn,
    mut outcomes: Vec<RevokeOutcome>,
    now: i64,
) -> anyhow::Result<Vec<Ended>> {
    // The audit log and messages follow the order the jobs were due.
    outcomes.sort_by_key(|o| match o {
        RevokeOutcome::Finish(job) | RevokeOutcome::NotDue(job, _) => (job.run_at, job.id),
        RevokeOutcome::Superseded(i, _) | RevokeOutcome::Revoked(i) | RevokeOutcome::Failed(i, _) => {
            (i.job.run_at, i.job.id)
        }
    });
    let to_revoke: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            RevokeOutcome::Revoked(i) if i.grant.state == GrantState::Active => Some(i.grant.id),
            _ => None,
        })
        .collect();
    let revoked: std::collections::HashSet<i64> =
        store::revoke_grants(tx, &to_revoke, now).await?.into_iter().collect();

    let mut events: Vec<audit::Event> = Vec::new();
    let mut messages: Vec<(Outgoing, i64)> = Vec::new();
    let mut finished: Vec<i64> = Vec::new();
    let mut ended: Vec<Ended> = Vec::new();
    for outcome in &outcomes {
        match outcome {
            RevokeOutcome::Finish(job) => finished.push(job.id),
            RevokeOutcome::NotDue(job, at) => {
                store::release_job(tx, job.id).await?;
                store::reschedule_job(tx, job.request_id, JobKind::Revoke, *at).await?;
            }
            RevokeOutcome::Superseded(item, cover) => {
                let (grant, request) = (&item.grant, &item.request);
                if grant.state == GrantState::Failed {
                    events.push(audit::Event {
                        at: now,
                        actor: audit::SYSTEM_ACTOR,
                        action: "grant.cleanup_skipped",
                        request_id: Some(request.id),
                        details: json!({ "grant_id": grant.id, "covered_by": label(cover.request_id) }),
                    });
                } else {
                    let by = grant.revoke_requested_by.as_deref().unwrap_or("expiry");
                    if store::supersede_grant(tx, grant.id, now, by).await? {
                        ended.push(Ended::of(item, true, now));
                        events.push(audit::Event {
                            at: now,
                            actor: grant.revoke_requested_by.as_deref().unwrap_or(audit::SYSTEM_ACTOR),
                            action: "grant.superseded",
                            request_id: Some(request.id),
                            details: json!({ "grant_id": grant.id, "covered_by": label(cover.request_id),
                                             "covered_until": cover.expires_at }),
                        });
                        let until = match cover.expires_at {
                            Some(at) => format!(" until {}", slack_date(at)),
                            None => String::new(),
                        };
                        let text = format!(
                            ":information_source: {} has ended ({}), but you keep `{}:{}` under {}{until}.",
                            label(request.id),
                            ended_by_text(grant),
                            grant.resource,
                            grant.role,
                            label(cover.request_id)
                        );
                        messages.push((Outgoing::message(&grant.user_id, text, Some(request.id)), now));
                        messages.push((Outgoing::update_card(request.id), now));
                    }
                }
                finished.push(item.job.id);
            }
            RevokeOutcome::Revoked(item) => {
                let (grant, request, job) = (&item.grant, &item.request, &item.job);
                let what = format!("`{}:{}`", grant.resource, grant.role);
                if grant.state == GrantState::Failed {
                    events.push(audit::Event {
                        at: now,
                        actor: audit::SYSTEM_ACTOR,
                        action: "grant.cleaned_up",
                        request_id: Some(request.id),
                        details: json!({ "grant_id": grant.id }),
                    });
                } else if revoked.contains(&grant.id) {
                    ended.push(Ended::of(item, false, now));
                    let by = grant.revoke_requested_by.as_deref().unwrap_or("expiry");
                    events.push(audit::Event {
                        at: now,
                        actor: grant.revoke_requested_by.as_deref().unwrap_or(audit::SYSTEM_ACTOR),
                        action: "grant.revoked",
                        request_id: Some(request.id),
                        details: json!({ "grant_id": grant.id, "adapter": grant.adapter, "expires_at": item.due,
                                         "revoked_at": now, "late_ms": now - item.due, "attempt": job.attempts + 1,
                                         "revoked_by": by }),
                    });
                    let text = if grant.revoke_requested_by.is_none() {
                        format!(":lock: Your access to {what} ({}) has ended.", label(request.id))
                    } else {
                        format!(
                            ":lock: Your access to {what} ({}) has ended early, {}.",
                            label(request.id),
                            ended_by_text(grant)
                        )
                    };
                    messages.push((Outgoing::message(&grant.user_id, text, Some(request.id)), now));
                    if job.attempts > 0 {
                        let text = format!(
                            ":white_check_mark: Revoking {what} for <@{}> ({}) succeeded after {} failed attempt{}.",
                            grant.user_id,
                            label(request.id),
                            job.attempts,
                            if job.attempts == 1 { "" } else { "s" }
                        );
                        messages.push((
                            Outgoing::message(&request.approval_channel, text, Some(request.id)),
                            now,
                        ));
                    }
                }
                messages.push((Outgoing::update_card(request.id), now));
                finished.push(job.id);
            }
            RevokeOutcome::Failed(item, err @ AdapterError::NotApplied(_))
                if item.grant.state == GrantState::Failed =>
            {
                // The clean-up of a grant that never became active, through an adapter that
                // cannot even be called with this grant's details: nothing was ever applied,
                // so there is nothing to clean. Retrying forever would only raise alarms.
                events.push(audit::Event {
                    at: now,
                    actor: audit::SYSTEM_ACTOR,
                    action: "grant.cleanup_skipped",
                    request_id: Some(item.request.id),
                    details: json!({ "grant_id": item.grant.id, "reason": "nothing to clean", "error": err.to_string() }),
                });
                messages.push((Outgoing::update_card(item.request.id), now));
                finished.push(item.job.id);
            }
            RevokeOutcome::Failed(item, err) => {
                // A revoke never gives up: access that should have ended is the worst failure.
                let (grant, request, job) = (&item.grant, &item.request, &item.job);
                let attempts = job.attempts + 1;
                let message = err.to_string();
                let retry_at = now + jittered(app, attempts).as_millis() as i64;
                app.metrics.job_retry("revoke");
                let alert_every = app.config.jobs.revoke_alert_interval.as_secs() as i64 * 1000;
                let alert = job.last_alert_at.is_none_or(|at| now - at >= alert_every);
                store::retry_job(tx, job.id, retry_at, &message, alert.then_some(now)).await?;
                store::set_grant_error(tx, grant.id, &message).await?;
                events.push(audit::Event {
                    at: now,
                    actor: audit::SYSTEM_ACTOR,
                    action: "revoke.attempt_failed",
                    request_id: Some(request.id),
                    details: json!({ "grant_id": grant.id, "attempt": attempts, "error": message,
                                     "retry_at": retry_at }),
                });
                if alert {
                    let text = format!(
                        ":rotating_light: Revoking `{}:{}` for <@{}> ({}) is failing: {}. It was due {}; \
                         jitgate keeps retrying (attempt {attempts}, next {}). Check the `{}` adapter.",
                        grant.resource,
                        grant.role,
                        grant.user_id,
                        label(request.id),
                        crate::text::escape(&message),
                        slack_date(item.due),
                        slack_date(retry_at),
                        grant.adapter
                    );
                    messages.push((
                        Outgoing::message(&request.approval_channel, text, Some(request.id)),
                        now,
                    ));
                }
                messages.push((Outgoing::update_card(request.id), now));
            }
        }
    }
    // Extension requests of grants that ended have nothing left to extend: closed, and
    // their cards lose their buttons. One statement for the whole batch (an expiry wave
    // ends thousands at once).
    let ended_ids: Vec<i64> = ended.iter().map(|e| e.request_id).collect();
    for ext in store::close_pending_extensions(tx, &ended_ids, now).await? {
        let extended = ext.extends_request_id.unwrap_or_default();
        store::cancel_job(tx, ext.id, JobKind::ExpireRequest, now).await?;
        store::cancel_job(tx, ext.id, JobKind::Remind, now).await?;
        events.push(audit::Event {
            at: now,
            actor: audit::SYSTEM_ACTOR,
            action: "extension.closed",
            request_id: Some(ext.id),
            details: json!({ "extends": label(extended), "why": "the grant ended" }),
        });
        messages.push((Outgoing::update_card(ext.id), now));
        messages.push((
            Outgoing::message(
                &ext.requester_id,
                format!(
                    ":information_source: Extension request {} is closed: {} has ended, so there is nothing to extend.",
                    label(ext.id),
                    label(extended)
                ),
                Some(ext.id),
            ),
            now,
        ));
    }
    audit::append_all(&app.audit_key, tx, &events).await?;
    store::enqueue_all(tx, &messages).await?;
    store::finish_jobs(tx, &finished, now).await?;
    Ok(ended)
}

/// When to tell the holder of a grant lasting `duration_secs` and ending at `expires_at`
/// that it ends soon (`[requests] ending_soon` before): `None` when the notice is off,
/// the grant is not longer than the notice, or that moment has passed.
pub fn ending_soon_at(app: &AppState, duration_secs: i64, expires_at: i64, now: i64) -> Option<i64> {
    let notice = app.config.requests.ending_soon?;
    ending_soon_due(notice, duration_secs, expires_at, now)
}

/// The decision behind [`ending_soon_at`], as a plain function.
pub fn ending_soon_due(notice: HumanDuration, duration_secs: i64, expires_at: i64, now: i64) -> Option<i64> {
    let notice_secs = notice.as_secs() as i64;
    let at = expires_at - notice_secs * 1000;
    (duration_secs > notice_secs && at > now).then_some(at)
}

/// The ending-soon job: DMs the holder that their access ends soon, with "Extend" and
/// "I'm done". Sent once; nothing when the access has ended or is ending already; moved
/// when the grant was extended after the job was planned. Slack's failures are retried
/// by the scheduler (the job stays until the DM is sent or the access has ended).
pub async fn ending_soon(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let now = app.now_ms();
    let (request, grant) = load(app, job.request_id).await?;
    let Some(notice) = app.config.requests.ending_soon else {
        return finish(app, &job).await;
    };
    let live = grant.filter(|g| g.state == GrantState::Active && g.revoke_requested_by.is_none());
    let Some((grant, expires_at)) = live.and_then(|g| g.expires_at.map(|at| (g, at))) else {
        return finish(app, &job).await;
    };
    if expires_at <= now {
        return finish(app, &job).await;
    }
    let due = expires_at - notice.as_secs() as i64 * 1000;
    if due > now {
        // Extended since it was planned: come back at the new time.
        let mut tx = app.db.begin().await?;
        store::release_job(&mut tx, job.id).await?;
        store::reschedule_job(&mut tx, job.request_id, JobKind::EndingSoon, due).await?;
        tx.commit().await?;
        app.scheduler.wake_for(due);
        return Ok(());
    }
    let left = HumanDuration::from_secs(((expires_at - now) / 1000).max(1) as u64);
    let content = crate::cards::ending_soon_message(
        request.id,
        &format!("{}:{}", grant.resource, grant.role),
        expires_at,
        left,
    );
    app.slack
        .post_message(&grant.user_id, content)
        .await
        .map_err(|e| anyhow::anyhow!("the ending-soon DM to {}: {e}", grant.user_id))?;
    tracing::info!(request_id = %label(request.id), user = %grant.user_id, expires_at, "ending-soon notice sent");
    finish(app, &job).await
}

async fn finish(app: &AppState, job: &JobRow) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    store::finish_job(&mut tx, job.id, false, app.now_ms()).await?;
    tx.commit().await?;
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
        &app.audit_key,
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
    app.scheduler.wake();
    app.outbox.wake();
    Ok(Ok(()))
}

/// Applies an approved extension (job of the extension request) to the grant it extends.
pub async fn run_extend(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let (ext, _) = load(app, job.request_id).await?;
    let Some(original_id) = ext.extends_request_id else {
        return finish(app, &job).await;
    };
    let Some(g) = load(app, original_id).await?.1 else {
        return finish(app, &job).await;
    };
    let _access = app.access_locks.lock_access(&g).await?;
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
            &app.audit_key,
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
        app.outbox.wake();
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
    let mut extended = false;
    let mut tx = app.db.begin().await?;
    match result {
        Ok(()) => {
            if store::extend_grant(&mut tx, grant.id, add).await? {
                extended = true;
                store::reschedule_job(&mut tx, original_id, JobKind::Revoke, new_expiry).await?;
                if let Some(at) = ending_soon_at(app, grant.duration_secs + add, new_expiry, now) {
                    store::schedule_job(&mut tx, original_id, JobKind::EndingSoon, at, now).await?;
                }
                audit::append(&app.audit_key, &mut tx,
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
            if err.is_permanent() || attempts >= app.config.jobs.grant_attempts as i64 {
                audit::append(
                    &app.audit_key,
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
                            crate::text::escape(&message),
                            slack_date(grant.expires_at.unwrap_or_default())
                        ),
                        Some(ext.id),
                    ),
                    now,
                )
                .await?;
                store::finish_job(&mut tx, job.id, true, now).await?;
            } else {
                app.metrics.job_retry("extend");
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
    if extended {
        tracing::info!(
            request_id = %label(original_id),
            extension = %label(ext.id),
            grant_id = grant.id,
            actor = %ext.requester_id,
            user = %grant.user_id,
            resource = %grant.resource,
            role = %grant.role,
            expires_at = new_expiry,
            "extended"
        );
    }
    app.outbox.wake();
    app.scheduler.wake();
    Ok(())
}

pub async fn expire_request(app: &AppState, job: JobRow) -> anyhow::Result<()> {
    let now = app.now_ms();
    let mut expired = None;
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
                &app.audit_key,
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
            expired = Some(r);
        }
    }
    store::finish_job(&mut tx, job.id, false, now).await?;
    tx.commit().await?;
    if let Some(r) = expired {
        app.metrics.request("expired");
        tracing::info!(
            request_id = %label(r.id),
            actor = audit::SYSTEM_ACTOR,
            user = %r.requester_id,
            resource = %r.resource,
            role = %r.role,
            "request expired: nobody decided in time"
        );
    }
    app.outbox.wake();
    Ok(())
}

/// Reminds the approval channel of a request nobody has decided on, then schedules the
/// next reminder twice as far out (1×, 2×, 4× `remind_after` …) while it stays pending.
pub async fn remind(app: &AppState, job: JobRow) -> anyhow::Result<()> {
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
    app.outbox.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ending_soon_notice_is_planned_only_when_it_means_something() {
        let ten = HumanDuration::from_secs(600);
        let (hour, end, now) = (3600, 10_000_000, 10_000_000 - 3_600_000);
        assert_eq!(ending_soon_due(ten, hour, end, now), Some(end - 600_000));
        // Access no longer than the notice: no notice.
        assert_eq!(ending_soon_due(ten, 600, end, end - 600_000), None);
        assert_eq!(ending_soon_due(ten, 300, end, end - 300_000), None);
        // Extended within the last ten minutes: the moment has passed.
        assert_eq!(ending_soon_due(ten, hour, end, end - 300_000), None);
    }

    fn grant(state: GrantState, expires_at: Option<i64>, revoke_requested_by: Option<&str>) -> GrantRow {
        GrantRow {
            id: 1,
            request_id: 1,
            user_id: "U1".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            adapter: "demo".into(),
            duration_secs: 3600,
            state,
            created_at: 0,
            granted_at: Some(0),
            expires_at,
            revoked_at: None,
            revoked_by: None,
            revoke_requested_by: revoke_requested_by.map(String::from),
            revoke_requested_at: None,
            adapter_state: None,
            last_error: None,
        }
    }

    #[test]
    fn a_revoke_job_acts_only_on_access_that_is_due_to_end() {
        use GrantState::*;
        let now = 1_000;
        assert_eq!(revoke_step(None, now, false), RevokeStep::Finish);
        for ended in [Revoked, Superseded, Granting] {
            assert_eq!(
                revoke_step(Some(&grant(ended, Some(0), None)), now, false),
                RevokeStep::Finish
            );
        }
        assert_eq!(
            revoke_step(Some(&grant(Active, Some(now), None)), now, false),
            RevokeStep::Revoke
        );
        // Extended after the job was claimed.
        assert_eq!(
            revoke_step(Some(&grant(Active, Some(now + 1), None)), now, false),
            RevokeStep::NotDue(now + 1)
        );
        // Ended early: due whatever the expiry says.
        assert_eq!(
            revoke_step(Some(&grant(Active, Some(now + 1), Some("U2"))), now, false),
            RevokeStep::Revoke
        );
        // A failed grant is cleaned up.
        assert_eq!(
            revoke_step(Some(&grant(Failed, None, None)), now, false),
            RevokeStep::Revoke
        );
        // Shared access another grant still needs is left alone.
        assert_eq!(
            revoke_step(Some(&grant(Active, Some(now), None)), now, true),
            RevokeStep::Supersede
        );
        assert_eq!(
            revoke_step(Some(&grant(Failed, None, None)), now, true),
            RevokeStep::Supersede
        );
        assert_eq!(
            revoke_step(Some(&grant(Active, Some(now + 1), None)), now, true),
            RevokeStep::NotDue(now + 1)
        );
    }
}
