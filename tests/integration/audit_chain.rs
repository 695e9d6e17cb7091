//! The audit log against an insider who can write the data directory but not read the
//! audit key or the anchor: edits with re-hashing, deletions anywhere (the tail too),
//! insertions, reordering and sequence numbers below 1 are all detected; an older
//! unkeyed log is carried over at upgrade; a restored backup verifies up to the head it
//! reached.

use jitgate::audit::{verify_all, ChainError, VerifyAgainst};
use jitgate::store::Pool;
use sha2::{Digest, Sha256};

use crate::support::*;

/// An app with an anchor file outside its data directory, some history, stopped.
async fn history() -> (TestApp, tempfile::TempDir) {
    let outside = tempfile::tempdir().unwrap();
    let mut app = TestApp::start_with(Setup {
        extra_toml: format!(
            "\n[audit]\nanchor_file = \"{}\"\n",
            outside.path().join("anchor.jsonl").display()
        ),
        ..Setup::default()
    })
    .await;
    for i in 0..3 {
        let id = app.request(&format!("prod-db:read 1h audited {i}")).await;
        app.approve(APPROVER1, id).await;
        app.wait_grant(id, "active").await;
    }
    app.stop().await; // anchors the final head
    (app, outside)
}

/// A writable copy of the app's database, as an insider would open it: triggers gone.
async fn tamper_copy(app: &TestApp, name: &str) -> Pool {
    let src = app.dir.path().join("jitgate.db");
    let dst = app.dir.path().join(name);
    std::fs::copy(&src, &dst).unwrap();
    let pool = jitgate::store::Db::open(&dst.display().to_string())
        .await
        .unwrap()
        .write;
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_delete")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn verify(
    pool: &Pool,
    outside: &tempfile::TempDir,
    restored: bool,
) -> Result<jitgate::audit::Verified, ChainError> {
    let mut conn = pool.acquire().await.unwrap();
    let against = VerifyAgainst {
        anchor_file: Some(outside.path().join("anchor.jsonl")),
        head: None,
        restored,
    };
    verify_all(&audit_key(), &mut conn, &against).await.unwrap()
}

/// The unkeyed SHA-256 an attacker without the key can compute (the old scheme).
fn sha_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: &str,
) -> String {
    let mut h = Sha256::new();
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

/// Re-hashes every entry from `from_seq` on with the unkeyed scheme, as an attacker would.
async fn rehash_from(pool: &Pool, from_seq: i64) {
    let rows: Vec<jitgate::audit::AuditEntry> = sqlx::query_as("SELECT * FROM audit_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut prev = jitgate::audit::GENESIS.to_string();
    for e in rows {
        if e.seq >= from_seq {
            let hash = sha_hash(&prev, e.seq, e.at, &e.actor, &e.action, e.request_id, &e.details);
            sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(&prev)
                .bind(&hash)
                .bind(e.seq)
                .execute(pool)
                .await
                .unwrap();
            prev = hash;
        } else {
            prev = e.hash;
        }
    }
}

#[tokio::test]
async fn every_kind_of_quiet_rewrite_is_detected() {
    crate::sqlite_only!("it rewrites a copy of the SQLite file as an insider would");
    let (app, outside) = history().await;
    let intact = tamper_copy(&app, "intact.db").await;
    let v = verify(&intact, &outside, false)
        .await
        .expect("an untouched log verifies");
    assert_eq!(v.anchored, Some(v.entries), "anchored at its last entry at shutdown");
    let n = v.entries;
    assert!(n >= 9, "{n}");

    // An edit, with every later hash recomputed (all an attacker without the key can do).
    let p = tamper_copy(&app, "edited.db").await;
    sqlx::query("UPDATE audit_log SET actor = 'UINNOCENT' WHERE seq = 3")
        .execute(&p)
        .await
        .unwrap();
    rehash_from(&p, 3).await;
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::Tampered { seq: 3 })
    ));

    // The last entries deleted: the chain itself is consistent, the anchor is not.
    let p = tamper_copy(&app, "tail.db").await;
    sqlx::query("DELETE FROM audit_log WHERE seq > $1")
        .bind(n - 2)
        .execute(&p)
        .await
        .unwrap();
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::AnchorMismatch { .. })
    ));

    // Everything deleted.
    let p = tamper_copy(&app, "empty.db").await;
    sqlx::query("DELETE FROM audit_log").execute(&p).await.unwrap();
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::AnchorMismatch { .. })
    ));

    // An entry deleted in the middle.
    let p = tamper_copy(&app, "middle.db").await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&p)
        .await
        .unwrap();
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::Gap { seq: 5, expected: 4 })
    ));

    // An entry inserted before the first, and one inserted as seq 0.
    let p = tamper_copy(&app, "seq0.db").await;
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash) \
         SELECT 0, at, actor, action, request_id, details, prev_hash, hash FROM audit_log WHERE seq = 1",
    )
    .execute(&p)
    .await
    .unwrap();
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::BadSeq { count: 1 })
    ));

    // Two entries swapped, their seq and links fixed up.
    let p = tamper_copy(&app, "swapped.db").await;
    sqlx::query("UPDATE audit_log SET seq = -2 WHERE seq = 2")
        .execute(&p)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        .execute(&p)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET seq = 3 WHERE seq = -2")
        .execute(&p)
        .await
        .unwrap();
    rehash_from(&p, 2).await;
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::Tampered { seq: 2 })
    ));

    // A forged entry appended at the end (after the anchor): not keyed.
    let p = tamper_copy(&app, "appended.db").await;
    let (hash,): (String,) = sqlx::query_as("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&p)
        .await
        .unwrap();
    let forged = sha_hash(&hash, n + 1, 1, "UAPPROVER1", "request.approved", Some(1), "{}");
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash) VALUES ($1, 1, 'UAPPROVER1', 'request.approved', 1, '{}', $2, $3)",
    )
    .bind(n + 1)
    .bind(&hash)
    .bind(&forged)
    .execute(&p)
    .await
    .unwrap();
    assert!(matches!(
        verify(&p, &outside, false).await,
        Err(ChainError::Tampered { .. })
    ));

    // The wrong key verifies nothing.
    let mut conn = intact.acquire().await.unwrap();
    let wrong = jitgate::audit::AuditKey::new("another-key-entirely-0123456789abcdef").unwrap();
    assert!(jitgate::audit::verify_chain(&wrong, &mut conn).await.unwrap().is_err());
}

#[tokio::test]
async fn an_unkeyed_log_is_keyed_at_upgrade_and_its_history_protected_from_then_on() {
    crate::sqlite_only!("it rewrites a copy of the SQLite file as an insider would");
    let outside = tempfile::tempdir().unwrap();
    let mut app = TestApp::start_with(Setup {
        in_process: false,
        extra_toml: format!(
            "\n[audit]\nanchor_file = \"{}\"\n",
            outside.path().join("anchor.jsonl").display()
        ),
        ..Setup::default()
    })
    .await;
    // The database as the previous release left it: three plain SHA-256 entries.
    {
        let db = jitgate::store::Db::open(&app.dir.path().join("jitgate.db").display().to_string())
            .await
            .unwrap();
        let mut prev = jitgate::audit::GENESIS.to_string();
        for seq in 1..=3 {
            let hash = sha_hash(&prev, seq, seq * 10, "U1", "request.created", None, "{}");
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash) VALUES ($1, $2, 'U1', 'request.created', NULL, '{}', $3, $4)",
            )
            .bind(seq)
            .bind(seq * 10)
            .bind(&prev)
            .bind(&hash)
            .execute(&db.write)
            .await
            .unwrap();
            prev = hash;
        }
        let mut conn = db.read.acquire().await.unwrap();
        assert!(matches!(
            jitgate::audit::verify_chain(&audit_key(), &mut conn).await.unwrap(),
            Err(ChainError::NeverKeyed { count: 3 })
        ));
        drop(conn);
        db.close().await;
    }
    app.boot().await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE seq = 4 AND action = 'audit.keyed'")
            .await,
        1
    );
    let id = app.request("prod-db:read 1h after the upgrade").await;
    app.approve(APPROVER1, id).await;
    app.stop().await;

    let p = tamper_copy(&app, "upgraded.db").await;
    verify(&p, &outside, false)
        .await
        .expect("the carried-over log verifies");
    // The pre-upgrade history can no longer be rewritten quietly either.
    sqlx::query("UPDATE audit_log SET actor = 'UOTHER' WHERE seq = 2")
        .execute(&p)
        .await
        .unwrap();
    rehash_from(&p, 2).await;
    assert!(verify(&p, &outside, false).await.is_err());
}

#[tokio::test]
async fn a_restored_backup_verifies_up_to_the_head_it_reached() {
    crate::sqlite_only!("it rewrites a copy of the SQLite file as an insider would");
    let (mut app, outside) = history().await;
    let backup = tamper_copy(&app, "backup.db").await;
    let (at_backup,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM audit_log")
        .fetch_one(&backup)
        .await
        .unwrap();
    // Life goes on after the backup, and is anchored.
    app.boot().await;
    let id = app.request("prod-db:read 1h after the backup").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.stop().await;

    // As the live log it looks truncated; as a restored backup it verifies to its head.
    assert!(matches!(
        verify(&backup, &outside, false).await,
        Err(ChainError::AnchorMismatch { .. })
    ));
    let v = verify(&backup, &outside, true)
        .await
        .expect("a restored backup verifies");
    assert_eq!(v.anchored, Some(at_backup));
    assert!(v.live_reached.unwrap() > at_backup);
}

#[tokio::test]
async fn the_head_is_posted_to_the_audit_channel_at_intervals() {
    let app = TestApp::start_with(Setup {
        extra_toml: "\n[audit]\nchannel = \"C0AUDIT\"\nanchor_interval = \"1s\"\n".into(),
        ..Setup::default()
    })
    .await;
    let id = app.request("prod-db:read 1h anchored").await;
    let (seq, hash): (i64, String) = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    let posted = app
        .wait_calls("the head in the audit channel", 1, |c| {
            c.method == "chat.postMessage" && c.channel() == "C0AUDIT"
        })
        .await;
    let text = posted.last().unwrap().text().to_string();
    assert!(
        text.contains("audit log head") && text.contains(&format!("--head {seq}:{hash}")),
        "{text}"
    );
    // The posted head verifies the log.
    let mut conn = app.state().db.read.acquire().await.unwrap();
    let against = VerifyAgainst {
        anchor_file: None,
        head: Some((seq, hash)),
        restored: false,
    };
    let v = verify_all(&audit_key(), &mut conn, &against).await.unwrap().unwrap();
    assert_eq!(v.anchored, Some(seq));
    let _ = id;
}
