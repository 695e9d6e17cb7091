//! The outbox: Slack messages written with the state change they report, sent afterwards.

use super::*;

/// What an outbox entry sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// The approval card, rendered from the request's state at delivery time.
    PostCard,
    /// Re-render the card in place.
    UpdateCard,
    /// A plain message to a channel or, with a user ID as channel, a DM.
    Message,
    /// A reply only the clicker sees, through the interaction's response_url.
    Ephemeral,
}
stored_as_text!(OutboxKind { PostCard => "post_card", UpdateCard => "update_card", Message => "message", Ephemeral => "ephemeral" });

/// A stored outbox entry.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: OutboxKind,
    pub request_id: Option<i64>,
    pub channel: Option<String>,
    pub body: Option<String>,
    pub response_url: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    /// When Slack first refused it for good (it is then retried slowly), if it did.
    pub refused_at: Option<i64>,
    pub last_error: Option<String>,
}

/// A message to send once the current transaction commits.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub kind: OutboxKind,
    pub request_id: Option<i64>,
    pub channel: Option<String>,
    pub body: Option<String>,
    pub response_url: Option<String>,
    /// The body is a secret: erased once delivered.
    pub sensitive: bool,
}

impl Outgoing {
    pub fn post_card(request_id: i64) -> Self {
        Self {
            kind: OutboxKind::PostCard,
            request_id: Some(request_id),
            channel: None,
            body: None,
            response_url: None,
            sensitive: false,
        }
    }
    /// The card, remembering the requester's response_url: if Slack refuses the card, the
    /// requester is told through it while it is valid.
    pub fn post_card_for(request_id: i64, response_url: Option<&str>) -> Self {
        Self {
            response_url: response_url.map(String::from),
            ..Self::post_card(request_id)
        }
    }
    pub fn update_card(request_id: i64) -> Self {
        Self {
            kind: OutboxKind::UpdateCard,
            request_id: Some(request_id),
            channel: None,
            body: None,
            response_url: None,
            sensitive: false,
        }
    }
    /// A message to a channel ID, or a DM when `channel` is a user ID.
    pub fn message(channel: &str, text: String, request_id: Option<i64>) -> Self {
        Self {
            kind: OutboxKind::Message,
            request_id,
            channel: Some(channel.to_string()),
            body: Some(text),
            response_url: None,
            sensitive: false,
        }
    }
    /// A DM holding a secret; its text is erased once Slack has it.
    pub fn private_message(user: &str, text: String, request_id: Option<i64>) -> Self {
        Self {
            sensitive: true,
            ..Self::message(user, text, request_id)
        }
    }
    pub fn ephemeral(response_url: &str, text: String) -> Self {
        Self {
            kind: OutboxKind::Ephemeral,
            request_id: None,
            channel: None,
            body: Some(text),
            response_url: Some(response_url.to_string()),
            sensitive: false,
        }
    }
}

pub async fn enqueue(conn: &mut Conn, m: &Outgoing, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (kind, request_id, channel, body, response_url, sensitive, state, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
    )
    .bind(m.kind)
    .bind(m.request_id)
    .bind(&m.channel)
    .bind(&m.body)
    .bind(&m.response_url)
    .bind(i64::from(m.sensitive))
    .bind(now)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Due outbox entries in the order they were written. On PostgreSQL, where replicas
/// share the outbox, they are claimed for `replica` in the same statement: those another
/// live replica claimed are not returned (see [`replicas::take_over`]).
pub async fn due_outbox(conn: &mut Conn, now: i64, limit: i64, replica: &str) -> sqlx::Result<Vec<OutboxRow>> {
    const COLUMNS: &str =
        "id, kind, request_id, channel, body, response_url, attempts, created_at, refused_at, last_error";
    match Backend::of(conn) {
        Backend::Sqlite => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
            ))
            .bind(now)
            .bind(limit)
            .fetch_all(conn)
            .await
        }
        Backend::Postgres => {
            let mut rows: Vec<OutboxRow> = sqlx::query_as(&format!(
                "UPDATE outbox SET claimed_by = $3 WHERE id IN \
                   (SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1 \
                    AND (claimed_by IS NULL OR claimed_by = $3) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            ))
            .bind(now)
            .bind(limit)
            .bind(replica)
            .fetch_all(conn)
            .await?;
            rows.sort_by_key(|r| r.id);
            Ok(rows)
        }
    }
}

pub async fn next_outbox_due(conn: &mut Conn) -> sqlx::Result<Option<i64>> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'")
        .fetch_one(conn)
        .await?;
    Ok(row.0)
}

/// True while a card post for this request is still waiting to be delivered.
pub async fn card_post_pending(conn: &mut Conn, request_id: i64) -> sqlx::Result<bool> {
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM outbox WHERE request_id = $1 AND kind = 'post_card' AND state = 'pending'",
    )
    .bind(request_id)
    .fetch_one(conn)
    .await?;
    Ok(row.0 > 0)
}

/// Marks an entry sent. True when it held a secret, now erased: the caller checkpoints
/// the WAL after committing ([`Db::checkpoint`]) so no file keeps a copy.
pub async fn outbox_sent(conn: &mut Conn, id: i64, now: i64) -> sqlx::Result<bool> {
    // A sensitive body (generated credentials) is erased once Slack has it.
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE outbox SET state = 'sent', sent_at = $1, attempts = attempts + 1, \
         body = CASE WHEN sensitive = 1 THEN NULL ELSE body END WHERE id = $2 RETURNING sensitive",
    )
    .bind(now)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some_and(|r| r.0 == 1))
}

/// Marks an entry failed for good. True when it held a secret, now erased (see
/// [`outbox_sent`]).
pub async fn outbox_failed(conn: &mut Conn, id: i64, error: &str) -> sqlx::Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE outbox SET state = 'failed', last_error = $1, attempts = attempts + 1, \
         body = CASE WHEN sensitive = 1 THEN NULL ELSE body END WHERE id = $2 RETURNING sensitive",
    )
    .bind(error)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some_and(|r| r.0 == 1))
}

/// Marks a message Slack refused for good: kept pending, retried at `at`. Returns true the
/// first time (the refusal is new), so the caller logs and tells people once.
pub async fn outbox_refused(conn: &mut Conn, id: i64, at: i64, error: &str, now: i64) -> sqlx::Result<bool> {
    let first = sqlx::query("UPDATE outbox SET refused_at = $1 WHERE id = $2 AND refused_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    outbox_retry(conn, id, at, error).await?;
    Ok(first)
}

/// An undelivered outbox message, for `jitgate outbox list`.
#[derive(Debug, Clone, FromRow)]
pub struct Undelivered {
    pub id: i64,
    pub kind: OutboxKind,
    pub request_id: Option<i64>,
    pub channel: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub refused_at: Option<i64>,
    pub next_attempt_at: i64,
}

/// Messages Slack refused for good (still pending, retried slowly) and messages given up
/// on, oldest first; at most `limit`.
pub async fn undelivered(conn: &mut Conn, limit: i64) -> sqlx::Result<Vec<Undelivered>> {
    sqlx::query_as(
        "SELECT id, kind, request_id, channel, state, attempts, last_error, created_at, refused_at, next_attempt_at \
         FROM outbox WHERE (state = 'pending' AND refused_at IS NOT NULL) OR state = 'failed' ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Makes undelivered messages due now: all of them (`id` None) or one; with
/// `include_failed`, also messages given up on (back to pending, unless their sensitive
/// body was erased). Returns how many were rescheduled. "Now" is the message's own
/// creation time, so the running server sends it at once whatever the skew between its
/// clock and the caller's (the CLI runs in another process).
pub async fn retry_undelivered(conn: &mut Conn, id: Option<i64>, include_failed: bool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET state = 'pending', next_attempt_at = created_at \
         WHERE ((state = 'pending' AND refused_at IS NOT NULL) \
                OR ($2 AND state = 'failed' AND NOT (sensitive = 1 AND body IS NULL))) \
         AND ($1 IS NULL OR id = $1)",
    )
    .bind(id)
    .bind(include_failed)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Requests among `ids` whose card Slack refused and that nobody has seen yet (a card
/// counts as seen as soon as Slack took it, before its delivery is recorded).
pub async fn cards_refused(conn: &mut Conn, ids: &[i64]) -> sqlx::Result<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    for id in ids {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT o.last_error FROM outbox o JOIN requests r ON r.id = o.request_id \
             WHERE o.request_id = $1 AND o.kind = 'post_card' AND o.state = 'pending' \
             AND o.refused_at IS NOT NULL AND r.card_ts IS NULL LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((error,)) = row {
            out.insert(*id, error.unwrap_or_default());
        }
    }
    Ok(out)
}
