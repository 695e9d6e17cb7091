//! Reconciliation: compare what adapters say exists with what the database says is in
//! force. Access nobody holds a grant for is revoked (unless dry-run) and reported; grants
//! the database thinks active but the adapter does not have are reported. Reports go to
//! the audit log and, when configured, to a security channel.

use serde_json::json;

use crate::adapters::{Adapter, GrantContext, ListedAccess};
use crate::app::AppState;
use crate::audit;
use crate::grants::context;
use crate::ids::label;
use crate::store::{self, GrantRow, GrantState, Outgoing};

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Access exists that no active grant accounts for; `revoked` says whether it was removed.
    Orphan {
        adapter: String,
        access: String,
        grant: Option<i64>,
        revoked: bool,
        error: Option<String>,
    },
    /// The database says active, the adapter says the access is not there.
    Missing {
        adapter: String,
        request_id: i64,
        user_id: String,
    },
    /// The adapter could not be asked.
    Unreachable { adapter: String, error: String },
}

impl Finding {
    /// A line for people.
    pub fn describe(&self) -> String {
        match self {
            Finding::Orphan {
                adapter,
                access,
                grant,
                revoked,
                error,
            } => {
                let whose = grant
                    .map(|g| format!(" (grant {g}, not active in this jitgate)"))
                    .unwrap_or_default();
                let what = match (revoked, error) {
                    (true, _) => "revoked".to_string(),
                    (false, Some(e)) => format!("revoking it failed: {e}"),
                    (false, None) => "not revoked (dry run or not attributable)".to_string(),
                };
                format!("`{adapter}`: {access}{whose} exists without an active grant; {what}")
            }
            Finding::Missing {
                adapter,
                request_id,
                user_id,
            } => format!(
                "`{adapter}`: {} for {user_id} is active in jitgate but the adapter does not have it",
                label(*request_id)
            ),
            Finding::Unreachable { adapter, error } => format!("`{adapter}`: could not be checked: {error}"),
        }
    }
}

/// What one pass found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub adapters_checked: usize,
    pub grants_checked: usize,
    pub findings: Vec<Finding>,
}

/// Decides which listed access no live grant accounts for. Pure, for tests.
pub fn orphans<'a>(listed: &'a [ListedAccess], live_grant_ids: &[i64]) -> Vec<&'a ListedAccess> {
    listed
        .iter()
        .filter(|l| !l.grant_id.is_some_and(|g| live_grant_ids.contains(&g)))
        .collect()
}

async fn live_grants(app: &AppState) -> anyhow::Result<Vec<GrantRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM grants WHERE state IN ('granting', 'active')")
            .fetch_all(&app.db.read)
            .await?,
    )
}

/// One reconciliation pass over every configured adapter.
pub async fn run(app: &AppState, dry_run: bool) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let grants = live_grants(app).await?;
    for name in app.config.adapters.keys() {
        let Some(adapter) = app.adapters.get(name) else {
            continue;
        };
        report.adapters_checked += 1;
        let mine: Vec<&GrantRow> = grants.iter().filter(|g| &g.adapter == name).collect();
        // Only settled grants count: one being granted or revoked right now is in flux.
        let live: Vec<i64> = mine
            .iter()
            .filter(|g| matches!(g.state, GrantState::Active | GrantState::Granting))
            .map(|g| g.id)
            .collect();
        match adapter.list_granted().await {
            Ok(Some(listed)) => {
                for access in orphans(&listed, &live) {
                    // Fresh from the database: the grant may have started since the snapshot.
                    let row: Option<GrantRow> = match access.grant_id {
                        Some(id) => {
                            sqlx::query_as("SELECT * FROM grants WHERE id = $1")
                                .bind(id)
                                .fetch_optional(&app.db.read)
                                .await?
                        }
                        None => None,
                    };
                    if row
                        .as_ref()
                        .is_some_and(|g| matches!(g.state, GrantState::Active | GrantState::Granting))
                    {
                        continue;
                    }
                    let row = row.as_ref();
                    let mut finding = Finding::Orphan {
                        adapter: name.clone(),
                        access: access.description.clone(),
                        grant: access.grant_id,
                        revoked: false,
                        error: None,
                    };
                    let result = match (dry_run, row, access.grant_id) {
                        (true, _, _) | (false, None, None) => None,
                        (false, Some(g), _) => {
                            let request = {
                                let mut conn = app.db.read.acquire().await?;
                                store::get_request(&mut conn, g.request_id).await?
                            };
                            let _access = app.access_locks.lock_access(g).await?;
                            Some(
                                adapter
                                    .revoke(&context(
                                        g,
                                        request.as_ref().map_or("", |r| r.reason.as_str()),
                                        g.expires_at.unwrap_or(g.created_at),
                                    ))
                                    .await,
                            )
                        }
                        // Named as this installation names its grants, but never in its
                        // database (created by hand, or after the backup it was restored
                        // from): nothing accounts for it, so it goes. The adapter finds
                        // it by the grant id alone.
                        (false, None, Some(id)) => Some(adapter.revoke(&unknown_grant(id, app.clock.now())).await),
                    };
                    if let (Finding::Orphan { revoked, error, .. }, Some(result)) = (&mut finding, result) {
                        match result {
                            Ok(()) => *revoked = true,
                            Err(e) => *error = Some(e.to_string()),
                        }
                    }
                    report.findings.push(finding);
                }
            }
            Ok(None) => {}
            Err(e) => report.findings.push(Finding::Unreachable {
                adapter: name.clone(),
                error: e.to_string(),
            }),
        }
        let now = app.now_ms();
        // Grants that are due for revoke (or asked to end) are in flux; the revoke job owns them.
        let settled = |g: &&&GrantRow| {
            g.state == GrantState::Active && g.revoke_requested_by.is_none() && g.expires_at.is_some_and(|e| e > now)
        };
        for g in mine.iter().filter(settled) {
            report.grants_checked += 1;
            let answer = {
                let _access = app.access_locks.lock_access(g).await?;
                let answer = is_active(adapter.as_ref(), g).await;
                // Re-read under the lock: a revoke may have finished while we waited for it.
                let still: Option<(String,)> = sqlx::query_as("SELECT state FROM grants WHERE id = $1")
                    .bind(g.id)
                    .fetch_optional(&app.db.read)
                    .await?;
                if still.is_some_and(|s| s.0 == "active") {
                    answer
                } else {
                    Ok(None)
                }
            };
            match answer {
                Ok(Some(false)) => report.findings.push(Finding::Missing {
                    adapter: name.clone(),
                    request_id: g.request_id,
                    user_id: g.user_id.clone(),
                }),
                Ok(_) => {}
                Err(e) => report.findings.push(Finding::Unreachable {
                    adapter: name.clone(),
                    error: e.to_string(),
                }),
            }
        }
    }
    record(app, &report, dry_run).await?;
    Ok(report)
}

/// What an adapter is told to revoke access whose grant id this installation's database
/// never had: the id, and nothing else it could trust.
fn unknown_grant(grant_id: i64, now: chrono::DateTime<chrono::Utc>) -> GrantContext {
    GrantContext {
        grant_id,
        request_id: 0,
        user_id: String::new(),
        resource: String::new(),
        role: String::new(),
        duration_secs: 0,
        expires_at: now,
        reason: String::new(),
        state: None,
    }
}

async fn is_active(adapter: &dyn Adapter, g: &GrantRow) -> Result<Option<bool>, crate::adapters::AdapterError> {
    adapter
        .is_active(&context(g, "", g.expires_at.unwrap_or(g.created_at)))
        .await
}

/// Writes findings to the audit log and, if configured, the security channel.
async fn record(app: &AppState, report: &Report, dry_run: bool) -> anyhow::Result<()> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    audit::append(
        &app.audit_key,
        &mut tx,
        now,
        audit::SYSTEM_ACTOR,
        "reconcile.ran",
        None,
        json!({ "dry_run": dry_run, "adapters": report.adapters_checked, "grants": report.grants_checked,
                "findings": report.findings.len() }),
    )
    .await?;
    for f in &report.findings {
        let (action, request_id) = match f {
            Finding::Orphan { revoked: true, .. } => ("reconcile.orphan_revoked", None),
            Finding::Orphan { .. } => ("reconcile.orphan_found", None),
            Finding::Missing { request_id, .. } => ("reconcile.access_missing", Some(*request_id)),
            Finding::Unreachable { .. } => ("reconcile.adapter_unreachable", None),
        };
        audit::append(
            &app.audit_key,
            &mut tx,
            now,
            audit::SYSTEM_ACTOR,
            action,
            request_id,
            json!({ "finding": f.describe() }),
        )
        .await?;
    }
    if let (Some(channel), false) = (&app.config.reconcile.channel, report.findings.is_empty()) {
        let lines: Vec<String> = report
            .findings
            .iter()
            .map(|f| format!("• {}", crate::text::escape(&f.describe())))
            .collect();
        store::enqueue(
            &mut tx,
            &Outgoing::message(
                channel,
                format!(
                    ":mag: Reconciliation{} found {} inconsistenc{}:\n{}",
                    if dry_run { " (dry run)" } else { "" },
                    report.findings.len(),
                    if report.findings.len() == 1 { "y" } else { "ies" },
                    lines.join("\n")
                ),
                None,
            ),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    app.outbox.wake();
    Ok(())
}

/// Reconciles every `[reconcile] interval`, counted from `started`, until shutdown.
pub async fn run_periodically(app: AppState, started: chrono::DateTime<chrono::Utc>) {
    let Some(interval) = app.config.reconcile.interval else {
        return;
    };
    let mut next = started;
    loop {
        next += interval.to_chrono();
        tokio::select! {
            _ = app.clock.sleep_until(next) => {}
            _ = app.shutdown.cancelled() => break,
        }
        // Replicas sharing a PostgreSQL database reconcile once per interval between them:
        // the first to reach a round of the interval takes it.
        if app.db.backend == crate::store::Backend::Postgres {
            let every = interval.to_chrono().num_milliseconds().max(1);
            let now = app.now_ms();
            let round = async {
                let mut conn = app.db.write.acquire().await?;
                anyhow::Ok(
                    store::first_delivery(
                        &mut conn,
                        "reconcile_round",
                        &(now / every).to_string(),
                        now,
                        now + 2 * every,
                    )
                    .await?,
                )
            };
            match round.await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("reconciliation: another replica runs this round");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "reconciliation: cannot take this round");
                    continue;
                }
            }
        }
        match run(&app, false).await {
            Ok(r) if r.findings.is_empty() => tracing::info!(grants = r.grants_checked, "reconciliation: consistent"),
            Ok(r) => {
                for f in &r.findings {
                    tracing::warn!(finding = %f.describe(), "reconciliation");
                }
            }
            Err(e) => tracing::error!(error = format!("{e:#}"), "reconciliation failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(id: Option<i64>) -> ListedAccess {
        ListedAccess {
            grant_id: id,
            description: format!("role jit_{}", id.unwrap_or(0)),
        }
    }

    #[test]
    fn listed_access_without_a_live_grant_is_an_orphan() {
        let listed = [l(Some(1)), l(Some(2)), l(None)];
        let o = orphans(&listed, &[1]);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].grant_id, Some(2));
        assert_eq!(o[1].grant_id, None);
    }
}
