//! Jobs: the durable timer's rows (grants, revokes, time-outs, reminders), claimed by one
//! replica at a time.

use super::*;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Grant,
    Revoke,
    ExpireRequest,
    /// Decide whether an incident-channel request is approved by the on-call policy.
    AutoApprove,
    /// Remind approvers of a request still pending.
    Remind,
    /// Apply an approved extension to the grant it extends.
    Extend,
    /// Tell the holder their access ends soon (`[requests] ending_soon`).
    EndingSoon,
}
stored_as_text!(JobKind { Grant => "grant", Revoke => "revoke", ExpireRequest => "expire_request", AutoApprove => "auto_approve", Remind => "remind", Extend => "extend", EndingSoon => "ending_soon" });

/// A stored job.
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: i64,
    pub request_id: i64,
    pub kind: JobKind,
    pub run_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_alert_at: Option<i64>,
}

/// Schedules a job; a second one of the same kind for the same request is ignored.
pub async fn insert_job(conn: &mut Conn, request_id: i64, kind: JobKind, run_at: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (request_id, kind, state, run_at, created_at) VALUES ($1, $2, 'pending', $3, $4) \
         ON CONFLICT (kind, request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(kind)
    .bind(run_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which due jobs to claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Revokes,
    AllButRevokes,
}

pub(super) fn claim_sql(backend: Backend, which: Claim) -> String {
    // `+kind` keeps SQLite on the partial index of pending jobs: on `kind = 'revoke'` alone
    // it would pick the (kind, request_id) index and walk every revoke job ever run.
    let kind = backend.unindexed("kind");
    let kind = match which {
        Claim::Revokes => format!("{kind} = 'revoke'"),
        Claim::AllButRevokes => format!("{kind} != 'revoke'"),
    };
    // On PostgreSQL replicas claim at once: each skips the rows another is claiming, and
    // the outer `state = 'pending'` re-checks a row that changed while it waited.
    let skip_locked = backend.skip_locked();
    format!(
        "UPDATE jobs SET state = 'running', claimed_by = $3 WHERE state = 'pending' AND id IN \
           (SELECT id FROM jobs WHERE state = 'pending' AND run_at <= $1 AND {kind} ORDER BY run_at LIMIT $2{skip_locked}) \
         RETURNING id, request_id, kind, run_at, attempts, last_error, last_alert_at"
    )
}

/// Claims up to `limit` due jobs of `which` kinds, earliest first, in one statement.
pub async fn claim_due_jobs(
    conn: &mut Conn,
    now: i64,
    which: Claim,
    limit: i64,
    replica: &str,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&claim_sql(Backend::of(conn), which))
        .bind(now)
        .bind(limit)
        .bind(replica)
        .fetch_all(conn)
        .await
}

/// When the next pending job is due, if any.
pub async fn next_job_due(conn: &mut Conn) -> sqlx::Result<Option<i64>> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(run_at) FROM jobs WHERE state = 'pending'")
        .fetch_one(conn)
        .await?;
    Ok(row.0)
}

/// Finishes a claimed job.
pub async fn finish_job(conn: &mut Conn, id: i64, failed: bool, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET state = $1, finished_at = $2 WHERE id = $3")
        .bind(if failed { "failed" } else { "done" })
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Finishes claimed jobs that succeeded, as `finish_job` does for each.
pub async fn finish_jobs(conn: &mut Conn, ids: &[i64], now: i64) -> sqlx::Result<()> {
    for chunk in chunks(ids) {
        let mut q = Sql::new("UPDATE jobs SET state = 'done', finished_at = ");
        q.bind(now).push(" WHERE id IN ");
        q.in_list(chunk.iter().copied());
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Puts a claimed job back to run again at `run_at` after a failed attempt.
pub async fn retry_job(
    conn: &mut Conn,
    id: i64,
    run_at: i64,
    error: &str,
    alerted_at: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'pending', attempts = attempts + 1, run_at = $1, last_error = $2, \
         last_alert_at = COALESCE($3, last_alert_at) WHERE id = $4 AND state = 'running'",
    )
    .bind(run_at)
    .bind(error)
    .bind(alerted_at)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Releases a claimed job untouched (shutdown interrupted it before it ran).
pub async fn release_job(conn: &mut Conn, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET state = 'pending' WHERE id = $1 AND state = 'running'")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a pending job of `kind` for a request to `run_at`.
/// Schedules a job at `run_at`, or moves its time and makes it pending again when one of
/// this kind already exists for the request (done or not) — but never one that is running.
pub async fn schedule_job(conn: &mut Conn, request_id: i64, kind: JobKind, run_at: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (request_id, kind, state, run_at, created_at) VALUES ($1, $2, 'pending', $3, $4) \
         ON CONFLICT (kind, request_id) DO UPDATE SET state = 'pending', run_at = excluded.run_at, \
         attempts = 0, last_error = NULL, finished_at = NULL WHERE jobs.state <> 'running'",
    )
    .bind(request_id)
    .bind(kind)
    .bind(run_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes the pending extension requests of the grants of `request_ids` (they ended, so
/// there is nothing left to extend), in one statement per chunk; returns them.
pub async fn close_pending_extensions(conn: &mut Conn, request_ids: &[i64], now: i64) -> sqlx::Result<Vec<RequestRow>> {
    let mut closed = Vec::new();
    for chunk in chunks(request_ids) {
        let mut q = Sql::new("UPDATE requests SET state = 'expired', decided_at = ");
        q.bind(now)
            .push(" WHERE kind = 'extension' AND state = 'pending' AND extends_request_id IN ");
        q.in_list(chunk.iter().copied());
        q.push(" RETURNING *");
        closed.extend(q.fetch_all::<RequestRow>(&mut *conn).await?);
    }
    Ok(closed)
}

pub async fn reschedule_job(conn: &mut Conn, request_id: i64, kind: JobKind, run_at: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET run_at = $1 WHERE request_id = $2 AND kind = $3 AND state = 'pending'")
        .bind(run_at)
        .bind(request_id)
        .bind(kind)
        .execute(conn)
        .await?;
    Ok(())
}

/// Grants that still hold (or may hold) access, with their request, for start-up checks.
pub async fn live_grants(conn: &mut Conn) -> sqlx::Result<Vec<GrantRow>> {
    // Three disjoint parts (a request has one revoke job, in one state), so each reads a
    // partial index of the rows in play (grants_live, jobs_due, jobs_running) rather than
    // every grant or revoke job ever written, and UNION ALL needs no de-duplication;
    // `+kind` keeps SQLite off the (kind, request_id) index, which covers all of history.
    let kind = Backend::of(conn).unindexed("j.kind");
    sqlx::query_as(&format!(
        "SELECT * FROM grants WHERE state IN ('granting', 'active') \
         UNION ALL SELECT g.* FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'pending' AND g.state NOT IN ('granting', 'active') \
         UNION ALL SELECT g.* FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'running' AND g.state NOT IN ('granting', 'active')",
    ))
    .fetch_all(conn)
    .await
}

/// The (resource, adapter) pairs the grants of `live_grants` use, without reading the
/// grants themselves: start-up checks these against the configuration, and there may be
/// a hundred thousand grants in force.
pub async fn live_accesses(conn: &mut Conn) -> sqlx::Result<Vec<(String, String)>> {
    // The same three parts as `live_grants`, each on its partial index.
    let kind = Backend::of(conn).unindexed("j.kind");
    sqlx::query_as(&format!(
        "SELECT DISTINCT resource, adapter FROM ( \
           SELECT resource, adapter FROM grants WHERE state IN ('granting', 'active') \
           UNION ALL SELECT g.resource, g.adapter FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'pending' AND g.state NOT IN ('granting', 'active') \
           UNION ALL SELECT g.resource, g.adapter FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'running' AND g.state NOT IN ('granting', 'active')) AS live",
    ))
    .fetch_all(conn)
    .await
}

/// Jobs left 'running' by a process that died are put back to run now.
pub async fn recover_running_jobs(conn: &mut Conn) -> sqlx::Result<u64> {
    let done = sqlx::query("UPDATE jobs SET state = 'pending' WHERE state = 'running'")
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Cancels a pending job (for example a request time-out once someone decided).
pub async fn cancel_job(conn: &mut Conn, request_id: i64, kind: JobKind, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'done', finished_at = $1 WHERE request_id = $2 AND kind = $3 AND state = 'pending'",
    )
    .bind(now)
    .bind(request_id)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// The job of `kind` for a request.
pub async fn job_of(conn: &mut Conn, request_id: i64, kind: JobKind) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "SELECT id, request_id, kind, run_at, attempts, last_error, last_alert_at FROM jobs WHERE request_id = $1 AND kind = $2",
    )
    .bind(request_id)
    .bind(kind)
    .fetch_optional(conn)
    .await
}
