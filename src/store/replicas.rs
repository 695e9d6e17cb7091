//! Replicas sharing one database. Each process has an id ([`super::Db::replica`]) and
//! writes when it was last alive; the jobs, messages and clicks it takes carry its id. A
//! replica whose heartbeat is older than [`REPLICA_LEASE_MS`] is taken for dead, and what
//! it had taken is taken over by the others: a job it was running is run again under the
//! same grant id, as after a restart.

use super::Conn;

/// A replica that has not written its heartbeat for this long is taken for dead (three
/// missed heartbeats of the scheduler, which writes one every 5 s).
pub const REPLICA_LEASE_MS: i64 = 15_000;

/// Records that replica `id` is alive at `now`.
pub async fn seen(conn: &mut Conn, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO replicas (id, started_at, seen_at) VALUES ($1, $2, $2) \
         ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// What [`take_over`] took from replicas that died.
#[derive(Debug, Default)]
pub struct TakenOver {
    /// Jobs that were running, now pending again (for whichever replica claims them).
    pub jobs: u64,
    /// Messages that were claimed, now free to be claimed again.
    pub messages: u64,
    /// Clicks recorded but not acted on, now this replica's: `(key, input)`.
    pub clicks: Vec<(String, String)>,
}

/// The replicas alive at `$2` (a sub-select of the statements below).
const LIVE: &str = "SELECT id FROM replicas WHERE seen_at > $2";

/// Takes over, for replica `me`, the work of replicas not seen since `now` minus
/// [`REPLICA_LEASE_MS`] (and work marked by no replica), clicks of `click_kind` included.
/// Run it in a write transaction.
pub async fn take_over(conn: &mut Conn, me: &str, now: i64, click_kind: &str) -> sqlx::Result<TakenOver> {
    let cutoff = now - REPLICA_LEASE_MS;
    // `run_at = run_at` and `next_attempt_at = next_attempt_at` wake the other replicas
    // (the PostgreSQL triggers of migration 0009 fire on those columns).
    let jobs = sqlx::query(&format!(
        "UPDATE jobs SET state = 'pending', claimed_by = NULL, run_at = run_at \
         WHERE state = 'running' AND (claimed_by IS NULL OR (claimed_by <> $1 AND claimed_by NOT IN ({LIVE})))"
    ))
    .bind(me)
    .bind(cutoff)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let messages = sqlx::query(&format!(
        "UPDATE outbox SET claimed_by = NULL, next_attempt_at = next_attempt_at \
         WHERE state = 'pending' AND claimed_by IS NOT NULL AND claimed_by <> $1 AND claimed_by NOT IN ({LIVE})"
    ))
    .bind(me)
    .bind(cutoff)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let clicks = sqlx::query_as(&format!(
        "UPDATE deliveries SET claimed_by = $1 \
         WHERE pending_input IS NOT NULL AND kind = $3 \
           AND (claimed_by IS NULL OR (claimed_by <> $1 AND claimed_by NOT IN ({LIVE}))) \
         RETURNING key, pending_input"
    ))
    .bind(me)
    .bind(cutoff)
    .bind(click_kind)
    .fetch_all(&mut *conn)
    .await?;
    Ok(TakenOver { jobs, messages, clicks })
}

/// A replica stopping cleanly: its unsent messages are free for the others at once, and
/// it is no longer alive (so whatever it still held is taken over at the others' next
/// heartbeat, without waiting for the lease).
pub async fn leave(conn: &mut Conn, me: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET claimed_by = NULL, next_attempt_at = next_attempt_at WHERE claimed_by = $1 AND state = 'pending'")
        .bind(me)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM replicas WHERE id = $1")
        .bind(me)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Forgets replicas not seen for a day (each start of a process is a new one).
pub async fn purge(conn: &mut Conn, now: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query("DELETE FROM replicas WHERE seen_at < $1")
        .bind(now - 24 * 3600 * 1000)
        .execute(conn)
        .await?
        .rows_affected())
}
