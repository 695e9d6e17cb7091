//! The reads behind `jitgate report`: one row per access request in a time range, with
//! its decisions, grant, extensions and break-glass review joined in.

use sqlx::FromRow;

use super::Conn;

/// One access request and everything that happened to it, as stored.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct AccessRecord {
    pub id: i64,
    pub requester_id: String,
    pub resource: String,
    pub role: String,
    pub reason: String,
    pub duration_secs: i64,
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub state: String,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    /// Approvers in the order they approved, space-separated (policies as `oncall:NAME`).
    pub approved_by: Option<String>,
    /// Who denied it, if someone did.
    pub denied_by: Option<String>,
    /// `granting`, `active`, `revoked`, `failed`, `superseded`.
    pub grant_state: Option<String>,
    pub granted_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// `expiry`, or who ended it early.
    pub revoked_by: Option<String>,
    /// Approved extensions of the grant.
    pub extensions: i64,
    /// Set when the request was a break-glass use.
    pub break_glass_at: Option<i64>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
    pub review: Option<String>,
}

/// Access requests (not extensions) made in `[since, until)`, oldest first.
pub async fn access_records(conn: &mut Conn, since: i64, until: i64) -> sqlx::Result<Vec<AccessRecord>> {
    sqlx::query_as(
        "SELECT r.id, r.requester_id, r.resource, r.role, r.reason, r.duration_secs, r.state, \
                r.created_at, r.decided_at, \
                (SELECT string_agg(d.approver_id, ' ' ORDER BY d.decided_at, d.approver_id) FROM decisions d \
                    WHERE d.request_id = r.id AND d.verdict = 'approve') AS approved_by, \
                (SELECT approver_id FROM decisions d WHERE d.request_id = r.id AND d.verdict = 'deny' \
                    ORDER BY d.decided_at LIMIT 1) AS denied_by, \
                g.state AS grant_state, g.granted_at, g.expires_at, g.revoked_at, g.revoked_by, \
                (SELECT COUNT(*) FROM requests e WHERE e.extends_request_id = r.id AND e.state = 'approved') \
                    AS extensions, \
                b.used_at AS break_glass_at, b.reviewed_by, b.reviewed_at, b.review \
         FROM requests r \
         LEFT JOIN grants g ON g.request_id = r.id \
         LEFT JOIN break_glass b ON b.request_id = r.id \
         WHERE r.kind = 'access' AND r.created_at >= $1 AND r.created_at < $2 \
         ORDER BY r.created_at, r.id",
    )
    .bind(since)
    .bind(until)
    .fetch_all(conn)
    .await
}
