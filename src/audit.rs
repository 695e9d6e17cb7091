//! The append-only audit log: every request, decision, grant, revoke and failure.
//!
//! Rows are chained: each stores the previous row's hash and the SHA-256 of its own
//! content with that hash, so an edit, insertion or deletion anywhere breaks the chain.
//! SQLite triggers refuse UPDATE and DELETE on the table as well.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, SqliteConnection};

/// The hash before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor recorded for what jitgate does on its own (grants, expiry, retries).
pub const SYSTEM_ACTOR: &str = "jitgate";

/// One audit row, as stored and exported.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// A Slack user ID, or `jitgate` for what the bot did on its own.
    pub actor: String,
    /// What happened, like `request.created` or `grant.revoked`.
    pub action: String,
    pub request_id: Option<i64>,
    /// JSON object with the particulars.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

fn entry_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: &str,
) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields: no two different rows can serialize to the same bytes.
    for field in [
        prev.as_bytes(),
        seq.to_string().as_bytes(),
        at.to_string().as_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        request_id.map(|r| r.to_string()).unwrap_or_default().as_bytes(),
        details.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    hex::encode(h.finalize())
}

/// The entry that follows the one with `prev_seq` and `prev_hash` (0 and `GENESIS` for
/// the first), with its hash computed. For writers that keep the chain's head in memory
/// and insert many entries at once; `append` reads the head from the table instead.
pub fn next_entry(
    prev_seq: i64,
    prev_hash: &str,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: String,
) -> AuditEntry {
    let seq = prev_seq + 1;
    let hash = entry_hash(prev_hash, seq, at, actor, action, request_id, &details);
    AuditEntry {
        seq,
        at,
        actor: actor.to_string(),
        action: action.to_string(),
        request_id,
        details,
        prev_hash: prev_hash.to_string(),
        hash,
    }
}

/// Appends an entry inside the caller's write transaction.
pub async fn append(
    conn: &mut SqliteConnection,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: serde_json::Value,
) -> sqlx::Result<()> {
    let (last, prev) = head(conn).await?;
    let seq = last + 1;
    let details = details.to_string();
    let hash = entry_hash(&prev, seq, at, actor, action, request_id, &details);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(request_id)
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// An entry to append with `append_all`.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub at: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub request_id: Option<i64>,
    pub details: serde_json::Value,
}

/// The chain's head: the last entry's seq and hash (0 and `GENESIS` when empty).
pub async fn head(conn: &mut SqliteConnection) -> sqlx::Result<(i64, String)> {
    let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(last.unwrap_or_else(|| (0, GENESIS.to_string())))
}

/// `events` as the entries that follow the head (`prev_seq`, `prev_hash`), hashes chained.
pub fn chain(prev_seq: i64, prev_hash: &str, events: &[Event<'_>]) -> Vec<AuditEntry> {
    let (mut seq, mut prev) = (prev_seq, prev_hash.to_string());
    let mut entries = Vec::with_capacity(events.len());
    for e in events {
        let entry = next_entry(seq, &prev, e.at, e.actor, e.action, e.request_id, e.details.to_string());
        seq = entry.seq;
        prev.clone_from(&entry.hash);
        entries.push(entry);
    }
    entries
}

/// Adds the INSERTs for chained `entries` to a batch of inserts.
pub fn insert_entries<'a>(inserts: &mut crate::store::Inserts<'a>, entries: &'a [AuditEntry]) {
    inserts.rows(
        "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash)",
        entries,
        "",
        |mut b, e| {
            b.push_bind(e.seq)
                .push_bind(e.at)
                .push_bind(&e.actor)
                .push_bind(&e.action)
                .push_bind(e.request_id)
                .push_bind(&e.details)
                .push_bind(&e.prev_hash)
                .push_bind(&e.hash);
        },
    );
}

/// Appends entries in order inside the caller's write transaction, as `append` would one
/// by one: the chain's head is read once and the rows go in as multi-row inserts.
pub async fn append_all(conn: &mut SqliteConnection, events: &[Event<'_>]) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (seq, prev) = head(conn).await?;
    let entries = chain(seq, &prev, events);
    let mut inserts = crate::store::Inserts::default();
    insert_entries(&mut inserts, &entries);
    inserts.execute(conn).await
}

/// One entry as `audit export` writes it: `at` as an RFC 3339 time (UTC, milliseconds) and
/// `details` as the JSON object it holds. `audit verify` checks the chain in the database,
/// where the hashes were computed over the stored text.
pub fn export_json(e: &AuditEntry) -> serde_json::Value {
    let details = serde_json::from_str::<serde_json::Value>(&e.details)
        .unwrap_or_else(|_| serde_json::Value::String(e.details.clone()));
    serde_json::json!({
        "seq": e.seq,
        "at": crate::text::rfc3339_ms(e.at),
        "actor": e.actor,
        "action": e.action,
        "request_id": e.request_id,
        "details": details,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// Entries from `after_seq` on, in order.
pub async fn entries(conn: &mut SqliteConnection, after_seq: i64, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after_seq)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Entries about one request, in order.
pub async fn entries_for_request(conn: &mut SqliteConnection, request_id: i64) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE request_id = ? ORDER BY seq")
        .bind(request_id)
        .fetch_all(conn)
        .await
}

/// Where the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit entry {seq}: sequence gap (expected {expected}); an entry was deleted")]
    Gap { seq: i64, expected: i64 },
    #[error("audit entry {seq}: prev_hash does not match entry {}; the log was altered", seq - 1)]
    BrokenLink { seq: i64 },
    #[error("audit entry {seq}: content does not match its hash; the entry was edited")]
    Tampered { seq: i64 },
}

/// Checks one entry against its predecessor's hash. Returns the entry's hash.
pub fn verify_entry(e: &AuditEntry, expected_seq: i64, prev_hash: &str) -> Result<(), ChainError> {
    if e.seq != expected_seq {
        return Err(ChainError::Gap {
            seq: e.seq,
            expected: expected_seq,
        });
    }
    if e.prev_hash != prev_hash {
        return Err(ChainError::BrokenLink { seq: e.seq });
    }
    if entry_hash(&e.prev_hash, e.seq, e.at, &e.actor, &e.action, e.request_id, &e.details) != e.hash {
        return Err(ChainError::Tampered { seq: e.seq });
    }
    Ok(())
}

/// Walks the whole chain. Returns the number of entries checked.
pub async fn verify_chain(conn: &mut SqliteConnection) -> anyhow::Result<Result<i64, ChainError>> {
    let mut prev = GENESIS.to_string();
    let mut expected = 1;
    loop {
        let batch = entries(conn, expected - 1, 10_000).await?;
        if batch.is_empty() {
            return Ok(Ok(expected - 1));
        }
        for e in &batch {
            if let Err(err) = verify_entry(e, expected, &prev) {
                return Ok(Err(err));
            }
            prev = e.hash.clone();
            expected += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let details = format!("{{\"n\":{seq}}}");
                let hash = entry_hash(&prev, seq, seq * 10, "U1", "request.created", Some(seq), &details);
                let e = AuditEntry {
                    seq,
                    at: seq * 10,
                    actor: "U1".into(),
                    action: "request.created".into(),
                    request_id: Some(seq),
                    details,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn check(entries: &[AuditEntry]) -> Result<(), ChainError> {
        let mut prev = GENESIS.to_string();
        for (i, e) in entries.iter().enumerate() {
            verify_entry(e, i as i64 + 1, &prev)?;
            prev = e.hash.clone();
        }
        Ok(())
    }

    #[tokio::test]
    async fn appending_many_at_once_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Db::open(&dir.path().join("a.db").display().to_string())
            .await
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        append(&mut tx, 1, "U1", "request.created", Some(1), serde_json::json!({}))
            .await
            .unwrap();
        let events: Vec<Event> = (0..300)
            .map(|i| Event {
                at: 2 + i,
                actor: "U2",
                action: "request.created",
                request_id: Some(2 + i),
                details: serde_json::json!({ "n": i }),
            })
            .collect();
        append_all(&mut tx, &events).await.unwrap();
        append(&mut tx, 999, "U3", "request.created", Some(999), serde_json::json!({}))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut conn = db.read.acquire().await.unwrap();
        assert_eq!(verify_chain(&mut conn).await.unwrap(), Ok(302));
        drop(conn);
        db.close().await;
    }

    #[test]
    fn export_writes_rfc3339_times_and_details_as_an_object() {
        let e = &chain(1)[0];
        let mut e = e.clone();
        e.at = 1_735_689_600_000;
        let v = export_json(&e);
        assert_eq!(v["at"], "2025-01-01T00:00:00.000Z");
        assert_eq!(v["details"], serde_json::json!({ "n": 1 }));
        assert_eq!(v["request_id"], 1);
        assert_eq!(v["hash"], e.hash);
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(check(&chain(5)), Ok(()));
    }

    #[test]
    fn an_edited_entry_is_detected() {
        let mut c = chain(5);
        c[2].actor = "U2".into();
        assert_eq!(check(&c), Err(ChainError::Tampered { seq: 3 }));
    }

    #[test]
    fn a_deleted_entry_is_detected() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(check(&c), Err(ChainError::Gap { seq: 4, expected: 3 }));
    }
}
