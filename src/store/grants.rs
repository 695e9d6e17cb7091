//! Grants: access given for a request, from being given to its end.

use super::*;

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    Granting,
    Active,
    Revoked,
    Failed,
    /// Ended while another grant still covered the same (shared) access.
    Superseded,
}
stored_as_text!(GrantState { Granting => "granting", Active => "active", Revoked => "revoked", Failed => "failed", Superseded => "superseded" });

/// A stored grant.
#[derive(Debug, Clone, FromRow)]
pub struct GrantRow {
    pub id: i64,
    pub request_id: i64,
    pub user_id: String,
    pub resource: String,
    pub role: String,
    pub adapter: String,
    pub duration_secs: i64,
    pub state: GrantState,
    pub created_at: i64,
    pub granted_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoke_requested_by: Option<String>,
    pub revoke_requested_at: Option<i64>,
    pub adapter_state: Option<String>,
    pub last_error: Option<String>,
}

/// Creates the grant for an approved request; false if it already has one.
pub async fn insert_grant(conn: &mut Conn, request: &RequestRow, adapter: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO grants (request_id, user_id, resource, role, adapter, duration_secs, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'granting', $7) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request.id)
    .bind(&request.requester_id)
    .bind(&request.resource)
    .bind(&request.role)
    .bind(adapter)
    .bind(request.duration_secs)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn grant_of(conn: &mut Conn, request_id: i64) -> sqlx::Result<Option<GrantRow>> {
    sqlx::query_as("SELECT * FROM grants WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// Marks a grant active from `granted_at`; false if it was not being granted.
pub async fn activate_grant(
    conn: &mut Conn,
    grant_id: i64,
    granted_at: i64,
    expires_at: i64,
    adapter_state: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET state = 'active', granted_at = $1, expires_at = $2, adapter_state = $3, last_error = NULL \
         WHERE id = $4 AND state = 'granting'",
    )
    .bind(granted_at)
    .bind(expires_at)
    .bind(adapter_state)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a grant that could not be given as failed.
pub async fn fail_grant(conn: &mut Conn, grant_id: i64, error: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE grants SET state = 'failed', last_error = $1 WHERE id = $2 AND state = 'granting'")
        .bind(error)
        .bind(grant_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records that `by` asked to end an active (or still granting) grant early; false if it
/// had already ended or someone already asked.
pub async fn request_revoke(conn: &mut Conn, grant_id: i64, by: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET revoke_requested_by = $1, revoke_requested_at = $2 \
         WHERE id = $3 AND state IN ('granting', 'active') AND revoke_requested_by IS NULL",
    )
    .bind(by)
    .bind(now)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// For each of `grants`, another grant of the same user, resource, role and adapter that
/// is being given or in force (the one ending last): while one exists, shared access must
/// not be revoked. Read in one statement per chunk of grants.
pub async fn covers_of(conn: &mut Conn, grants: &[&GrantRow]) -> sqlx::Result<HashMap<i64, GrantRow>> {
    #[derive(FromRow)]
    struct Cover {
        covered_id: i64,
        #[sqlx(flatten)]
        grant: GrantRow,
    }
    let mut covers = HashMap::new();
    for chunk in chunks(grants) {
        let mut q = Sql::new(
            "SELECT g.id AS covered_id, c.* FROM grants g JOIN grants c ON c.user_id = g.user_id \
             AND c.resource = g.resource AND c.role = g.role AND c.adapter = g.adapter \
             AND c.state IN ('granting', 'active') AND c.id != g.id WHERE g.id IN ",
        );
        q.in_list(chunk.iter().map(|g| g.id));
        q.push(" ORDER BY c.expires_at IS NULL DESC, c.expires_at DESC");
        for row in q.fetch_all::<Cover>(&mut *conn).await? {
            covers.entry(row.covered_id).or_insert(row.grant);
        }
    }
    Ok(covers)
}

/// Rows of `select` (ending in `WHERE column IN `) for these ids, a statement per chunk.
async fn select_in<T>(conn: &mut Conn, select: &str, ids: &[i64]) -> sqlx::Result<Vec<T>>
where
    T: for<'r> FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in chunks(ids) {
        let mut q = Sql::new(select);
        q.in_list(chunk.iter().copied());
        rows.extend(q.fetch_all::<T>(&mut *conn).await?);
    }
    Ok(rows)
}

/// The grants of these requests, by request id.
pub async fn grants_of(conn: &mut Conn, request_ids: &[i64]) -> sqlx::Result<HashMap<i64, GrantRow>> {
    let grants: Vec<GrantRow> = select_in(conn, "SELECT * FROM grants WHERE request_id IN ", request_ids).await?;
    Ok(grants.into_iter().map(|g| (g.request_id, g)).collect())
}

/// These requests, by id.
pub async fn requests_by_id(conn: &mut Conn, ids: &[i64]) -> sqlx::Result<HashMap<i64, RequestRow>> {
    let requests: Vec<RequestRow> = select_in(conn, "SELECT * FROM requests WHERE id IN ", ids).await?;
    Ok(requests.into_iter().map(|r| (r.id, r)).collect())
}

/// Marks active grants revoked (by whoever asked to end each early, else "expiry") and
/// returns the ids of those that were still active. Only called once the adapter
/// confirmed the revokes.
pub async fn revoke_grants(conn: &mut Conn, grant_ids: &[i64], now: i64) -> sqlx::Result<Vec<i64>> {
    let mut revoked = Vec::with_capacity(grant_ids.len());
    for chunk in chunks(grant_ids) {
        let mut q = Sql::new("UPDATE grants SET state = 'revoked', revoked_at = ");
        q.bind(now)
            .push(", revoked_by = COALESCE(revoke_requested_by, 'expiry'), last_error = NULL WHERE state = 'active' AND id IN ");
        q.in_list(chunk.iter().copied());
        q.push(" RETURNING id");
        for (id,) in q.fetch_all::<(i64,)>(&mut *conn).await? {
            revoked.push(id);
        }
    }
    Ok(revoked)
}

/// Ends an active grant whose access another grant still covers.
pub async fn supersede_grant(conn: &mut Conn, grant_id: i64, now: i64, by: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET state = 'superseded', revoked_at = $1, revoked_by = $2 WHERE id = $3 AND state = 'active'",
    )
    .bind(now)
    .bind(by)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Adds `secs` to an active grant's duration and expiry.
pub async fn extend_grant(conn: &mut Conn, grant_id: i64, secs: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET duration_secs = duration_secs + $1, expires_at = expires_at + $2 * 1000 \
         WHERE id = $3 AND state = 'active' AND revoke_requested_by IS NULL",
    )
    .bind(secs)
    .bind(secs)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_grant_error(conn: &mut Conn, grant_id: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE grants SET last_error = $1 WHERE id = $2")
        .bind(error)
        .bind(grant_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The caller's grants being given or in force, soonest expiry first.
pub async fn live_grants_of(conn: &mut Conn, user: &str) -> sqlx::Result<Vec<GrantRow>> {
    sqlx::query_as(
        "SELECT * FROM grants WHERE user_id = $1 AND state IN ('granting', 'active') \
         ORDER BY expires_at IS NULL, expires_at LIMIT 20",
    )
    .bind(user)
    .fetch_all(conn)
    .await
}
