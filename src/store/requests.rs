//! Requests: what people asked for, and the keys of the commands that asked.

use super::*;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Withdrawn by the requester before anyone decided.
    Cancelled,
}
stored_as_text!(RequestState { Pending => "pending", Approved => "approved", Denied => "denied", Expired => "expired", Cancelled => "cancelled" });

/// A stored request.
#[derive(Debug, Clone, FromRow)]
pub struct RequestRow {
    pub id: i64,
    pub requester_id: String,
    pub team_id: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    pub reason: String,
    pub origin_channel: String,
    pub approval_channel: String,
    pub approvals_required: i64,
    pub state: RequestState,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub card_channel: Option<String>,
    pub card_ts: Option<String>,
    pub kind: RequestKind,
    pub extends_request_id: Option<i64>,
}

/// Whether a request asks for new access or for more time on an existing grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Access,
    Extension,
}
stored_as_text!(RequestKind { Access => "access", Extension => "extension" });

/// What a new request needs.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub requester_id: String,
    pub team_id: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    pub reason: String,
    pub origin_channel: String,
    pub approval_channel: String,
    pub approvals_required: i64,
    pub created_at: i64,
    pub kind: RequestKind,
    pub extends_request_id: Option<i64>,
    /// Not stored with the request: rides on its card's outbox entry (see
    /// [`Outgoing::post_card_for`]).
    pub response_url: Option<String>,
    /// The trigger_id of the slash command that asked for it. Written to `deliveries` in
    /// the same transaction as the request, so the same command delivered again (a Socket
    /// Mode retry, a replayed signed request) cannot store a second one: its batch fails on
    /// the key and it is told [`ALREADY_RECEIVED`].
    pub delivery_key: Option<String>,
}

/// How long a delivery's key (trigger_id, event_id) is remembered, in milliseconds. Slack
/// re-delivers within minutes (Events API retries end after about 5 minutes) and a signed
/// request is accepted for 5 minutes after its timestamp.
pub const DELIVERY_RETENTION_MS: i64 = 6 * 3600 * 1000;

/// The `deliveries` kind of a slash command's trigger_id.
pub const COMMAND_DELIVERY: &str = "command";

/// The error a request gets when its command's `delivery_key` was stored before.
pub const ALREADY_RECEIVED: &str = "this command was received before";

/// Whether `e` is a request refused for a `delivery_key` stored before.
pub fn is_already_received(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == ALREADY_RECEIVED)
        || e.chain().any(|c| {
            c.downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .is_some_and(|d| d.is_unique_violation() && d.message().contains("deliveries"))
        })
}

pub async fn insert_request(conn: &mut Conn, r: &NewRequest) -> sqlx::Result<i64> {
    // The next id as SQLite picks it for an INTEGER PRIMARY KEY, written out so that
    // PostgreSQL (where the group commit also assigns ids itself) picks the same; the
    // write lock of `Db::begin` makes it safe.
    let row: (i64,) = sqlx::query_as(
        "INSERT INTO requests (id, requester_id, team_id, resource, role, duration_secs, reason, \
         origin_channel, approval_channel, approvals_required, state, created_at, kind, extends_request_id) \
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM requests), $1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $12) \
         RETURNING id",
    )
    .bind(&r.requester_id)
    .bind(&r.team_id)
    .bind(&r.resource)
    .bind(&r.role)
    .bind(r.duration_secs)
    .bind(&r.reason)
    .bind(&r.origin_channel)
    .bind(&r.approval_channel)
    .bind(r.approvals_required)
    .bind(r.created_at)
    .bind(r.kind)
    .bind(r.extends_request_id)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}

pub async fn get_request(conn: &mut Conn, id: i64) -> sqlx::Result<Option<RequestRow>> {
    sqlx::query_as("SELECT * FROM requests WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Moves a request from `from` to `to`; false if it was not in `from` (someone else won).
pub async fn transition_request(
    conn: &mut Conn,
    id: i64,
    from: RequestState,
    to: RequestState,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE requests SET state = $1, decided_at = $2 WHERE id = $3 AND state = $4")
        .bind(to)
        .bind(now)
        .bind(id)
        .bind(from)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_card(conn: &mut Conn, id: i64, channel: &str, ts: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE requests SET card_channel = $1, card_ts = $2 WHERE id = $3")
        .bind(channel)
        .bind(ts)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The caller's requests still waiting for a decision, newest first.
/// How many requests of `user` are pending.
pub async fn count_pending_of(conn: &mut Conn, user: &str) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests WHERE requester_id = $1 AND state = 'pending'")
        .bind(user)
        .fetch_one(conn)
        .await?;
    Ok(n)
}

pub async fn pending_requests_of(conn: &mut Conn, user: &str) -> sqlx::Result<Vec<RequestRow>> {
    sqlx::query_as("SELECT * FROM requests WHERE requester_id = $1 AND state = 'pending' ORDER BY id DESC LIMIT 20")
        .bind(user)
        .fetch_all(conn)
        .await
}

/// Pending requests of anyone, oldest first, at most `limit` (the Home tab's "waiting
/// for you" filters them by approver).
pub async fn pending_requests(conn: &mut Conn, limit: i64) -> sqlx::Result<Vec<RequestRow>> {
    sqlx::query_as("SELECT * FROM requests WHERE state = 'pending' ORDER BY id LIMIT $1")
        .bind(limit)
        .fetch_all(conn)
        .await
}
