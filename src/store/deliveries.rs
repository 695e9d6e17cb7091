//! Deliveries: at-most-once keys of what Slack sent (commands, clicks, events), and the
//! clicks recorded before their acknowledgement.

use super::*;

/// Claims `key` of `kind` (like `event` + an event_id): true for the first delivery,
/// false for every later one until the row expires at `expires_at`. Atomic across
/// connections and processes sharing the database.
pub async fn first_delivery(conn: &mut Conn, kind: &str, key: &str, now: i64, expires_at: i64) -> sqlx::Result<bool> {
    first_delivery_with_input(conn, kind, key, None, now, expires_at, "").await
}

/// What the first delivery of a command answered, as far as stored: its reply, or the
/// request it created. `None` when `key` was never seen.
pub async fn earlier_delivery(
    conn: &mut Conn,
    kind: &str,
    key: &str,
) -> sqlx::Result<Option<(Option<String>, Option<i64>)>> {
    sqlx::query_as("SELECT reply, request_id FROM deliveries WHERE kind = $1 AND key = $2")
        .bind(kind)
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Remembers what the first delivery of `key` was answered with.
pub async fn set_delivery_reply(conn: &mut Conn, kind: &str, key: &str, reply: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE deliveries SET reply = $1 WHERE kind = $2 AND key = $3")
        .bind(reply)
        .bind(kind)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// [`first_delivery`] that also stores the input (`pending_input`, JSON) with the key, in
/// the same statement, when it must survive a crash between the acknowledgement and the
/// work: a delivery is either new and recorded, or a re-delivery.
#[allow(clippy::too_many_arguments)]
pub async fn first_delivery_with_input(
    conn: &mut Conn,
    kind: &str,
    key: &str,
    input: Option<&str>,
    now: i64,
    expires_at: i64,
    replica: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO deliveries (kind, key, seen_at, expires_at, pending_input, claimed_by) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, key) DO NOTHING",
    )
    .bind(kind)
    .bind(key)
    .bind(now)
    .bind(expires_at)
    .bind(input)
    .bind(replica)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a recorded input as acted on, erasing what it held.
pub async fn input_handled(conn: &mut Conn, kind: &str, key: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE deliveries SET pending_input = NULL WHERE kind = $1 AND key = $2")
        .bind(kind)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inputs of `kind` recorded but not yet acted on (the process stopped in between),
/// oldest first: `(key, input)`.
pub async fn pending_inputs(conn: &mut Conn, kind: &str) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT key, pending_input FROM deliveries WHERE pending_input IS NOT NULL AND kind = $1 ORDER BY seen_at",
    )
    .bind(kind)
    .fetch_all(conn)
    .await
}

/// Forgets keys whose retention has passed; returns how many.
pub async fn purge_deliveries(conn: &mut Conn, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM deliveries WHERE expires_at <= $1")
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Puts a message off until `at` without counting an attempt (it waits for another).
pub async fn outbox_defer(conn: &mut Conn, id: i64, at: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET next_attempt_at = CASE WHEN next_attempt_at > $1 THEN next_attempt_at ELSE $1 END WHERE id = $2 AND state = 'pending'")
        .bind(at)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn outbox_retry(conn: &mut Conn, id: i64, at: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET next_attempt_at = $1, last_error = $2, attempts = attempts + 1 WHERE id = $3")
        .bind(at)
        .bind(error)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
