//! Access requests: how they are named, validated against the configuration, and stored.

use std::sync::atomic::Ordering;

use serde_json::json;
use sqlx::pool::PoolConnection;
use tokio::sync::oneshot;

use crate::app::AppState;
use crate::audit;
use crate::config::{Config, Resource};
use crate::duration::HumanDuration;
use crate::ids::label;
use crate::store::{self, Creation, JobKind, NewRequest, Outgoing, RequestRow};

/// A request as typed, before it is checked against the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInput {
    pub resource: String,
    pub role: Option<String>,
    pub duration: Option<HumanDuration>,
    pub reason: String,
}

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRequest {
    pub resource: String,
    pub role: String,
    pub duration: HumanDuration,
    pub reason: String,
    pub approval_channel: String,
    pub approvals_required: u32,
}

fn resource_summary(r: &Resource) -> String {
    let mut s = format!("`{}` (roles: {}; up to {})", r.name, r.roles.join(", "), r.max_duration);
    if !r.description.is_empty() {
        s.push_str(&format!(" — {}", crate::text::escape(&r.description)));
    }
    s
}

/// The configured resources, one per line, for help and error texts.
pub fn resource_list(config: &Config) -> String {
    config
        .resources
        .iter()
        .map(|r| format!("• {}", resource_summary(r)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Checks a typed request against the configuration. The error is the reply to show.
pub fn validate(config: &Config, input: &RequestInput) -> Result<ValidRequest, String> {
    let cmd = &config.slack.command;
    use crate::policy::{requestable, RequestRefusal};
    let target = match requestable(config, &input.resource, input.role.as_deref(), input.duration) {
        Ok(t) => t,
        Err(RequestRefusal::UnknownResource) => {
            return Err(format!(
                "There is no resource called `{}`. You can ask for:\n{}\nFor example: `{cmd} request {}:{} {} <reason>`",
                crate::text::escape(&input.resource),
                resource_list(config),
                config.resources[0].name,
                config.resources[0].default_role(),
                config.resources[0].default_duration,
            ));
        }
        Err(RequestRefusal::UnknownRole { role }) => {
            let resource = config
                .resource(&input.resource)
                .map(|r| (r.name.as_str(), r.roles.join(", ")));
            let (name, roles) = resource.unwrap_or_default();
            return Err(format!(
                "`{name}` has no role `{}`. Its roles are: {roles}.",
                crate::text::escape(&role),
            ));
        }
        Err(RequestRefusal::TooLong { max }) => {
            let duration = input.duration.unwrap_or(max);
            let name = &input.resource;
            let role = input.role.clone().unwrap_or_else(|| {
                config
                    .resource(name)
                    .map(|r| r.default_role().to_string())
                    .unwrap_or_default()
            });
            return Err(format!(
                "{duration} is longer than the {max} allowed for `{name}`. Ask for {max} or less, for example `{cmd} request {name}:{role} {max} {}`.",
                if input.reason.is_empty() { "<reason>" } else { "…" },
            ));
        }
    };
    let (resource, role, duration) = (target.resource, target.role, target.duration);
    let reason = crate::text::check_typed("reason", &input.reason, config.requests.max_reason_length)?;
    if reason.is_empty() {
        return Err(format!(
            "Please say why you need access, for example: `{cmd} request {}:{role} {duration} investigating INC-1234`",
            resource.name
        ));
    }
    Ok(ValidRequest {
        resource: resource.name.clone(),
        role,
        duration,
        reason,
        approval_channel: resource.approval_channel.clone(),
        approvals_required: resource.approvals_required,
    })
}

/// Which form field a refusal by [`validate`] concerns (a request modal's block_id).
pub fn refused_field(config: &Config, input: &RequestInput) -> &'static str {
    use crate::policy::{requestable, RequestRefusal};
    match requestable(config, &input.resource, input.role.as_deref(), input.duration) {
        Err(RequestRefusal::UnknownResource) => "resource",
        Err(RequestRefusal::UnknownRole { .. }) => "role",
        Err(RequestRefusal::TooLong { .. }) => "duration",
        Ok(_) => "reason",
    }
}

/// Who asked, and from where.
#[derive(Debug, Clone)]
pub struct Requester {
    pub user_id: String,
    pub team_id: String,
    pub channel_id: String,
    /// The command's response_url: if Slack refuses the card, the requester is told
    /// through it (no token needed) while it is valid.
    pub response_url: Option<String>,
    /// The command's trigger_id: a request is stored at most once per trigger_id (see
    /// [`store::NewRequest::delivery_key`]).
    pub delivery_key: Option<String>,
}

/// Stores a validated request with its audit entry, its card and its time-out, in one
/// commit. Returns the new request id.
///
/// When an on-call policy could approve it (see [`crate::oncall::could_auto_approve`]; a
/// look at the configuration only), the card is not queued: an `auto_approve` job due now
/// checks on-call status outside the request path and then approves or posts the card.
pub async fn create(app: &AppState, who: &Requester, req: &ValidRequest) -> anyhow::Result<i64> {
    let on_call_check =
        crate::oncall::could_auto_approve(&app.config, &req.resource, &req.role, req.duration, &who.channel_id);
    let new = NewRequest {
        requester_id: who.user_id.clone(),
        team_id: who.team_id.clone(),
        resource: req.resource.clone(),
        role: req.role.clone(),
        duration_secs: req.duration.as_secs() as i64,
        reason: req.reason.clone(),
        origin_channel: who.channel_id.clone(),
        approval_channel: req.approval_channel.clone(),
        approvals_required: req.approvals_required as i64,
        created_at: app.now_ms(),
        kind: store::RequestKind::Access,
        extends_request_id: None,
        response_url: who.response_url.clone(),
        delivery_key: who.delivery_key.clone(),
    };
    insert_pending(app, &new, on_call_check).await
}

/// Stores a pending request (access or extension), its audit entry, its card (or, with
/// `on_call_check`, the `auto_approve` job that decides whether to post it), its time-out
/// and its reminder in one transaction, and returns its id once that is committed.
///
/// Requests arriving together share a transaction (group commit): SQLite makes one commit
/// durable at a time, so under load one fsync per batch instead of one per request is what
/// keeps acknowledgements fast. Each caller still gets its id only after the commit that
/// holds its rows.
async fn insert_pending(app: &AppState, new: &NewRequest, on_call_check: bool) -> anyhow::Result<i64> {
    let (reply, stored) = oneshot::channel();
    app.creations.push(Creation {
        new: new.clone(),
        on_call_check,
        reply,
    });
    if !app.creations.draining.swap(true, Ordering::SeqCst) {
        app.tasks.spawn(drain_creations(app.clone()));
    }
    let id = stored
        .await
        .map_err(|_| anyhow::anyhow!("the request was not stored: jitgate is stopping"))??;
    app.metrics.request("created");
    tracing::info!(
        request_id = %label(id),
        actor = %new.requester_id,
        resource = %new.resource,
        role = %new.role,
        duration_secs = new.duration_secs,
        extends = new.extends_request_id.map(label),
        "{}",
        match new.kind {
            store::RequestKind::Access => "request created",
            store::RequestKind::Extension => "extension requested",
        }
    );
    Ok(id)
}

/// How long the drain keeps the writer connection while requests keep coming, before it
/// lets other writers (decisions, grants, the outbox) have a turn.
const HOLD_WRITER: std::time::Duration = std::time::Duration::from_millis(20);

/// The writer connection while the drain holds it, and since when.
type Writer = Option<(PoolConnection<sqlx::Any>, std::time::Instant)>;

/// Stores queued requests, a batch per transaction, until the queue is empty. At most one
/// runs at a time (`store::Creations::draining`); whoever queues a request starts one if none is.
///
/// Back-to-back batches keep the writer connection (up to `HOLD_WRITER`): returning it to
/// the pool and taking it again costs more than a batch's own statements under load.
async fn drain_creations(app: AppState) {
    let mut writer: Writer = None;
    loop {
        let batch = app.creations.take();
        if batch.is_empty() {
            drop(writer.take());
            app.creations.draining.store(false, Ordering::SeqCst);
            // A request queued after `take` whose sender saw `draining` still set relies on
            // us: look once more, and carry on unless another drain has started meanwhile.
            if app.creations.is_empty() || app.creations.draining.swap(true, Ordering::SeqCst) {
                return;
            }
            continue;
        }
        if writer.as_ref().is_some_and(|(_, since)| since.elapsed() > HOLD_WRITER) {
            writer = None;
        }
        store_batch(&app, &mut writer, batch).await;
    }
}

/// The writer connection, taken from the pool unless the drain holds it already.
async fn writer<'w>(app: &AppState, writer: &'w mut Writer) -> anyhow::Result<&'w mut PoolConnection<sqlx::Any>> {
    if writer.is_none() {
        *writer = Some((app.db.write.acquire().await?, std::time::Instant::now()));
    }
    Ok(&mut writer.as_mut().expect("just set").0)
}

async fn store_batch(app: &AppState, conn: &mut Writer, batch: Vec<Creation>) {
    let rows: Vec<(&NewRequest, bool)> = batch.iter().map(|c| (&c.new, c.on_call_check)).collect();
    let started = std::time::Instant::now();
    let written = write_pending(app, conn, &rows).await;
    tracing::debug!(
        requests = rows.len(),
        took_us = started.elapsed().as_micros() as u64,
        "stored a batch of requests"
    );
    match written {
        Ok(ids) => {
            for (c, id) in batch.into_iter().zip(ids) {
                let _ = c.reply.send(Ok(id));
            }
        }
        Err(e) if batch.len() > 1 => {
            // One bad row must not fail the others: store each on its own.
            tracing::warn!(
                error = format!("{e:#}"),
                requests = batch.len(),
                "storing a batch of requests failed; storing them one by one"
            );
            for c in batch {
                let one = write_pending(app, conn, &[(&c.new, c.on_call_check)])
                    .await
                    .map(|ids| ids[0])
                    .map_err(|e| {
                        if store::is_already_received(&e) {
                            anyhow::anyhow!(store::ALREADY_RECEIVED)
                        } else {
                            e
                        }
                    });
                let _ = c.reply.send(one);
            }
        }
        Err(e) => {
            let e = if store::is_already_received(&e) {
                anyhow::anyhow!(store::ALREADY_RECEIVED)
            } else {
                e
            };
            for c in batch {
                let _ = c.reply.send(Err(anyhow::anyhow!("{e:#}")));
            }
        }
    }
}

/// Writes pending requests with their audit entries, cards, time-outs and reminders in one
/// transaction. Returns their ids in order.
async fn write_pending(app: &AppState, conn: &mut Writer, rows: &[(&NewRequest, bool)]) -> anyhow::Result<Vec<i64>> {
    let written = try_write_pending(app, writer(app, conn).await?, rows).await;
    if written.is_err() {
        // Start the next batch on a fresh hand-out from the pool (and give others a turn).
        *conn = None;
    }
    written
}

async fn try_write_pending(
    app: &AppState,
    conn: &mut PoolConnection<sqlx::Any>,
    rows: &[(&NewRequest, bool)],
) -> anyhow::Result<Vec<i64>> {
    // Two round trips to the writer's thread in all: begin and read the heads, then
    // insert everything and commit.
    let (tx, heads) = store::BatchTx::begin(conn).await?;
    let news: Vec<&NewRequest> = rows.iter().map(|(new, _)| *new).collect();
    let ids: Vec<i64> = (heads.next_request_id..heads.next_request_id + rows.len() as i64).collect();
    let mut events = Vec::with_capacity(rows.len());
    let mut cards = Vec::with_capacity(rows.len());
    let mut jobs = Vec::with_capacity(rows.len() * 2);
    for (&(new, on_call_check), &id) in rows.iter().zip(&ids) {
        let now = new.created_at;
        events.push(audit::Event {
            at: now,
            actor: &new.requester_id,
            action: match new.kind {
                store::RequestKind::Access => "request.created",
                store::RequestKind::Extension => "extension.requested",
            },
            request_id: Some(id),
            details: json!({
                "resource": new.resource,
                "role": new.role,
                "duration_secs": new.duration_secs,
                "reason": new.reason,
                "channel": new.origin_channel,
                "approval_channel": new.approval_channel,
                "approvals_required": new.approvals_required,
                "extends": new.extends_request_id.map(label),
                "on_call_check": on_call_check,
            }),
        });
        let timeout_at = now + app.config.requests.pending_timeout.as_secs() as i64 * 1000;
        let job = |kind, run_at| store::NewJob {
            request_id: id,
            kind,
            run_at,
            created_at: now,
        };
        if on_call_check {
            jobs.push(job(JobKind::AutoApprove, now));
        } else {
            cards.push((Outgoing::post_card_for(id, new.response_url.as_deref()), now));
        }
        jobs.push(job(JobKind::ExpireRequest, timeout_at));
        if let Some(remind) = app.config.requests.remind_after {
            let at = now + remind.as_secs() as i64 * 1000;
            if at < timeout_at {
                jobs.push(job(JobKind::Remind, at));
            }
        }
    }
    let entries = audit::chain(
        &app.audit_key,
        heads.audit_seq,
        heads.audit_hash.as_deref().unwrap_or(audit::GENESIS),
        &events,
    );
    let keyed: Vec<(i64, &str, i64)> = ids
        .iter()
        .zip(&news)
        .filter_map(|(id, r)| r.delivery_key.as_deref().map(|k| (*id, k, r.created_at)))
        .collect();
    let delivery_expiry = rows.first().map_or(0, |(r, _)| r.created_at) + store::DELIVERY_RETENTION_MS;
    let mut inserts = store::Inserts::default();
    inserts.requests(&ids, &news);
    inserts.request_deliveries(&keyed, delivery_expiry);
    audit::insert_entries(&mut inserts, &entries);
    inserts.outbox(&cards).jobs(&jobs);
    tx.commit(inserts).await?;
    app.outbox.wake();
    // Time-outs and reminders are hours away: wake the scheduler only if it planned to
    // sleep past the soonest job (an on-call check is due now, so that one wakes it).
    if let Some(soonest) = jobs.iter().map(|j| j.run_at).min() {
        app.scheduler.wake_for(soonest);
    }
    Ok(ids)
}

/// Asks for `add` more time on `original`'s grant. With `self_extend`, it is approved at
/// once (the caller checked the limits); otherwise it goes to the approvers like a request.
pub async fn create_extension(
    app: &AppState,
    who: &Requester,
    original: &RequestRow,
    resource: &Resource,
    add: HumanDuration,
    reason: String,
) -> anyhow::Result<i64> {
    let now = app.now_ms();
    let new = NewRequest {
        requester_id: who.user_id.clone(),
        team_id: who.team_id.clone(),
        resource: original.resource.clone(),
        role: original.role.clone(),
        duration_secs: add.as_secs() as i64,
        reason,
        origin_channel: who.channel_id.clone(),
        approval_channel: resource.approval_channel.clone(),
        approvals_required: resource.approvals_required as i64,
        created_at: now,
        kind: store::RequestKind::Extension,
        extends_request_id: Some(original.id),
        response_url: who.response_url.clone(),
        delivery_key: None,
    };
    if !resource.self_extend {
        return insert_pending(app, &new, false).await;
    }
    let mut tx = app.db.begin().await?;
    let id = store::insert_request(&mut tx, &new).await?;
    store::transition_request(
        &mut tx,
        id,
        store::RequestState::Pending,
        store::RequestState::Approved,
        now,
    )
    .await?;
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        &who.user_id,
        "extension.self_approved",
        Some(id),
        json!({ "extends": label(original.id), "added_secs": add.as_secs(), "reason": new.reason }),
    )
    .await?;
    store::insert_job(&mut tx, id, JobKind::Extend, now, now).await?;
    store::enqueue(
        &mut tx,
        &Outgoing::message(
            &resource.approval_channel,
            format!(
                ":information_source: <@{}> extended {} (`{}:{}`) by {add} ({}; `{}` allows self-extension).",
                who.user_id,
                label(original.id),
                original.resource,
                original.role,
                label(id),
                resource.name
            ),
            Some(id),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    app.metrics.request("created");
    app.metrics.decision("approve", "self_extend");
    tracing::info!(
        request_id = %label(id),
        actor = %who.user_id,
        resource = %new.resource,
        role = %new.role,
        duration_secs = new.duration_secs,
        extends = %label(original.id),
        "extension requested and approved (self-extension)"
    );
    app.outbox.wake();
    app.scheduler.wake();
    Ok(id)
}

/// Withdraws a pending request of `user`'s; false if it was not theirs or not pending.
pub async fn cancel(app: &AppState, request_id: i64, user: &str) -> anyhow::Result<bool> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let Some(r) = store::get_request(&mut tx, request_id).await? else {
        return Ok(false);
    };
    if r.requester_id != user
        || !store::transition_request(
            &mut tx,
            request_id,
            store::RequestState::Pending,
            store::RequestState::Cancelled,
            now,
        )
        .await?
    {
        return Ok(false);
    }
    store::cancel_job(&mut tx, request_id, JobKind::ExpireRequest, now).await?;
    store::cancel_job(&mut tx, request_id, JobKind::Remind, now).await?;
    // Withdrawn while the on-call check was pending: no card exists, none will.
    store::cancel_job(&mut tx, request_id, JobKind::AutoApprove, now).await?;
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        user,
        "request.cancelled",
        Some(request_id),
        json!({}),
    )
    .await?;
    if r.card_ts.is_some() || store::card_post_pending(&mut tx, request_id).await? {
        store::enqueue(&mut tx, &Outgoing::update_card(request_id), now).await?;
    }
    tx.commit().await?;
    app.metrics.request("cancelled");
    tracing::info!(
        request_id = %label(request_id),
        actor = %user,
        resource = %r.resource,
        role = %r.role,
        "cancelled"
    );
    app.outbox.wake();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(
            Path::new("t.toml"),
            r#"
[[resources]]
name = "prod-db"
description = "Production PostgreSQL"
roles = ["read", "write"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[adapters.demo]
type = "noop"
"#,
        )
        .unwrap()
    }

    fn input(resource: &str, role: Option<&str>, duration: Option<&str>, reason: &str) -> RequestInput {
        RequestInput {
            resource: resource.into(),
            role: role.map(Into::into),
            duration: duration.map(|d| d.parse().unwrap()),
            reason: reason.into(),
        }
    }

    #[test]
    fn defaults_fill_role_and_duration() {
        let v = validate(&config(), &input("prod-db", None, None, "debugging")).unwrap();
        assert_eq!((v.role.as_str(), v.duration.as_secs()), ("read", 3600));
    }

    #[test]
    fn unknown_resource_lists_what_exists() {
        let e = validate(&config(), &input("prod", None, None, "x")).unwrap_err();
        assert!(
            e.contains("no resource called `prod`") && e.contains("`prod-db` (roles: read, write; up to 4h)"),
            "{e}"
        );
    }

    #[test]
    fn unknown_role_lists_the_roles() {
        let e = validate(&config(), &input("prod-db", Some("admin"), None, "x")).unwrap_err();
        assert!(e.contains("no role `admin`") && e.contains("read, write"), "{e}");
    }

    #[test]
    fn duration_above_max_names_the_max() {
        let e = validate(&config(), &input("prod-db", None, Some("5h"), "x")).unwrap_err();
        assert!(e.starts_with("5h is longer than the 4h allowed"), "{e}");
    }

    #[test]
    fn empty_and_overlong_reasons_are_refused() {
        assert!(validate(&config(), &input("prod-db", None, None, "  "))
            .unwrap_err()
            .contains("say why"));
        let long = "x".repeat(501);
        assert!(validate(&config(), &input("prod-db", None, None, &long))
            .unwrap_err()
            .contains("under 500"));
    }
}
