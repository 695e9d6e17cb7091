//! Decisions on requests (people's and policies'), and break-glass uses and their reviews.

use super::*;

/// An approver's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Deny,
}
stored_as_text!(Verdict { Approve => "approve", Deny => "deny" });

/// A stored decision.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct DecisionRow {
    pub approver_id: String,
    pub verdict: Verdict,
    pub decided_at: i64,
    /// Why, when a policy decided (on-call evidence).
    pub reason: Option<String>,
}

pub async fn decisions(conn: &mut Conn, request_id: i64) -> sqlx::Result<Vec<DecisionRow>> {
    let order = Backend::of(conn).decisions_insertion_order();
    sqlx::query_as(&format!(
        "SELECT approver_id, verdict, decided_at, reason FROM decisions WHERE request_id = $1 ORDER BY decided_at, {order}"
    ))
    .bind(request_id)
    .fetch_all(conn)
    .await
}

/// Records a decision; false if this approver had already decided (double click).
pub async fn insert_decision(
    conn: &mut Conn,
    request_id: i64,
    approver: &str,
    verdict: Verdict,
    now: i64,
) -> sqlx::Result<bool> {
    insert_decision_with_reason(conn, request_id, approver, verdict, None, now).await
}

/// Records a decision with its reason (a policy's evidence); false if this approver had
/// already decided.
pub async fn insert_decision_with_reason(
    conn: &mut Conn,
    request_id: i64,
    approver: &str,
    verdict: Verdict,
    reason: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO decisions (request_id, approver_id, verdict, decided_at, reason) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (request_id, approver_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(approver)
    .bind(verdict)
    .bind(now)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many of `requester`'s requests `approver` (a policy) approved after `since`. The
/// rate limit of on-call auto-approval counts from here, so it survives restarts.
pub async fn count_policy_approvals(conn: &mut Conn, requester: &str, approver: &str, since: i64) -> sqlx::Result<i64> {
    // Driven by requests_by_requester, then the decisions primary key.
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM requests r JOIN decisions d ON d.request_id = r.id \
         WHERE r.requester_id = $1 AND d.approver_id = $2 AND d.verdict = 'approve' AND d.decided_at > $3",
    )
    .bind(requester)
    .bind(approver)
    .bind(since)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}

/// How many times `user` broke the glass since `since_ms` (for the per-person rate limit).
pub async fn count_break_glass_uses(conn: &mut Conn, user: &str, since_ms: i64) -> sqlx::Result<i64> {
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM break_glass b JOIN requests r ON r.id = b.request_id \
         WHERE b.used_at >= $1 AND r.requester_id = $2",
    )
    .bind(since_ms)
    .bind(user)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}

/// A break-glass use and its review.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct BreakGlassRow {
    pub request_id: i64,
    pub used_at: i64,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
    /// `ok` or `revoked`.
    pub review: Option<String>,
}

/// Records that request `request_id` was a break-glass use.
pub async fn insert_break_glass(conn: &mut Conn, request_id: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO break_glass (request_id, used_at) VALUES ($1, $2)")
        .bind(request_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The break-glass record of a request, if it was one.
pub async fn break_glass_of(conn: &mut Conn, request_id: i64) -> sqlx::Result<Option<BreakGlassRow>> {
    sqlx::query_as("SELECT * FROM break_glass WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// Marks a break-glass use reviewed (`review` is `ok` or `revoked`), once: false if it
/// was reviewed already (or is not a break-glass use).
pub async fn review_break_glass(
    conn: &mut Conn,
    request_id: i64,
    by: &str,
    review: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE break_glass SET reviewed_by = $1, reviewed_at = $2, review = $3 \
         WHERE request_id = $4 AND reviewed_at IS NULL",
    )
    .bind(by)
    .bind(now)
    .bind(review)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
