//! Replicas sharing one PostgreSQL database, piece by piece: claims, takeover of a
//! silent replica's work, access locks across replicas, wake-ups. (The whole, with the
//! real binary killed at random, is in `replicas.rs`.) Needs PostgreSQL; skipped with a
//! notice without it unless `JITGATE_REQUIRE_POSTGRES=1`.

use std::collections::HashSet;
use std::time::Duration;

use jitgate::store::{self, replicas, Db, GrantRow, GrantState, JobKind, NewRequest, Outgoing, RequestKind};

use crate::support::*;

const T0: i64 = 1_800_000_000_000;

fn new_request(i: i64) -> NewRequest {
    NewRequest {
        requester_id: format!("U{i}"),
        team_id: "T1".into(),
        resource: "prod-db".into(),
        role: "read".into(),
        duration_secs: 3600,
        reason: "replicas".into(),
        origin_channel: "C1".into(),
        approval_channel: "C2".into(),
        approvals_required: 1,
        created_at: T0,
        kind: RequestKind::Access,
        extends_request_id: None,
        response_url: None,
        delivery_key: None,
    }
}

/// A request with a grant job due at `T0`; returns the request id.
async fn request_with_job(db: &Db, i: i64) -> i64 {
    let mut tx = db.begin().await.unwrap();
    let id = store::insert_request(&mut tx, &new_request(i)).await.unwrap();
    store::insert_job(&mut tx, id, JobKind::Grant, T0, T0).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn claim(db: &Db, now: i64, limit: i64) -> Vec<i64> {
    let mut tx = db.begin().await.unwrap();
    let jobs = store::claim_due_jobs(&mut tx, now, store::Claim::AllButRevokes, limit, &db.replica)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    jobs.into_iter().map(|j| j.id).collect()
}

async fn seen(db: &Db, at: i64) {
    let mut conn = db.write.acquire().await.unwrap();
    replicas::seen(&mut conn, &db.replica, at).await.unwrap();
}

async fn take_over(db: &Db, at: i64) -> replicas::TakenOver {
    let mut tx = db.begin().await.unwrap();
    let taken = replicas::take_over(&mut tx, &db.replica, at, "interaction")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    taken
}

#[tokio::test]
async fn what_a_silent_replica_claimed_is_taken_over_and_what_a_live_one_claimed_is_not() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let a = Db::open(&database.url).await.unwrap();
    let b = Db::open(&database.url).await.unwrap();
    assert_ne!(a.replica, b.replica, "every process is a replica of its own");
    let id = request_with_job(&a, 1).await;
    seen(&a, T0).await;
    seen(&b, T0).await;

    // A claims the job, a message and a click.
    assert_eq!(claim(&a, T0, 10).await.len(), 1);
    {
        let mut conn = a.write.acquire().await.unwrap();
        store::enqueue(&mut conn, &Outgoing::message("C1", "hello".into(), Some(id)), T0)
            .await
            .unwrap();
        assert!(store::first_delivery_with_input(
            &mut conn,
            "interaction",
            "trig-1",
            Some("{}"),
            T0,
            T0 + 1,
            &a.replica
        )
        .await
        .unwrap());
        assert_eq!(store::due_outbox(&mut conn, T0, 10, &a.replica).await.unwrap().len(), 1);
    }
    // B sees none of it while A is alive, even with its own heartbeat going on.
    let mut conn = b.write.acquire().await.unwrap();
    assert!(store::due_outbox(&mut conn, T0, 10, &b.replica)
        .await
        .unwrap()
        .is_empty());
    drop(conn);
    assert!(claim(&b, T0, 10).await.is_empty());
    seen(&b, T0 + 10_000).await;
    let taken = take_over(&b, T0 + 10_000).await;
    assert_eq!(
        (taken.jobs, taken.messages, taken.clicks.len()),
        (0, 0, 0),
        "A is not silent yet"
    );

    // A falls silent for longer than the lease: B takes over everything, once.
    let later = T0 + replicas::REPLICA_LEASE_MS + 1_000;
    seen(&b, later).await;
    let taken = take_over(&b, later).await;
    assert_eq!((taken.jobs, taken.messages), (1, 1));
    assert_eq!(taken.clicks, vec![("trig-1".to_string(), "{}".to_string())]);
    let again = take_over(&b, later).await;
    assert_eq!(
        (again.jobs, again.messages, again.clicks.len()),
        (0, 0, 0),
        "taken once"
    );
    assert_eq!(claim(&b, later, 10).await.len(), 1, "the job runs again, on B");
    let mut conn = b.write.acquire().await.unwrap();
    let rows = store::due_outbox(&mut conn, later, 10, &b.replica).await.unwrap();
    assert_eq!(rows.len(), 1, "the message is B's to send");
    drop(conn);

    // A replica that stops cleanly hands its messages over at once and is no longer alive.
    {
        let mut conn = b.write.acquire().await.unwrap();
        replicas::leave(&mut conn, &b.replica).await.unwrap();
    }
    seen(&a, later + 1).await;
    let taken = take_over(&a, later + 1).await;
    assert_eq!(taken.jobs, 1, "B's running job, at once");
    let mut conn = a.write.acquire().await.unwrap();
    assert_eq!(
        store::due_outbox(&mut conn, later + 1, 10, &a.replica)
            .await
            .unwrap()
            .len(),
        1,
        "B's message, handed over as it left"
    );
    drop(conn);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn replicas_claiming_at_once_never_take_a_job_twice() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let first = Db::open(&database.url).await.unwrap();
    let mut ids = HashSet::new();
    for i in 0..200 {
        ids.insert(request_with_job(&first, i).await);
    }
    let mut replicas = vec![first];
    for _ in 0..3 {
        replicas.push(Db::open(&database.url).await.unwrap());
    }
    let claimers: Vec<_> = replicas
        .iter()
        .cloned()
        .map(|db| {
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = claim(&db, T0, 7).await;
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got);
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    let jobs: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), jobs.len(), "no job claimed twice");
    assert_eq!(jobs.len(), ids.len(), "every job claimed");
    for db in replicas {
        db.close().await;
    }
}

fn grant(id: i64) -> GrantRow {
    GrantRow {
        id,
        request_id: id,
        user_id: "U1".into(),
        resource: "prod-db".into(),
        role: "read".into(),
        adapter: "demo".into(),
        duration_secs: 60,
        state: GrantState::Active,
        created_at: T0,
        granted_at: None,
        expires_at: None,
        revoked_at: None,
        revoked_by: None,
        revoke_requested_by: None,
        revoke_requested_at: None,
        adapter_state: None,
        last_error: None,
    }
}

#[tokio::test]
async fn one_access_is_held_by_one_replica_at_a_time() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let pool = || {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .connect_lazy(&database.url)
            .unwrap()
    };
    let a = jitgate::access_locks::AccessLocks::shared_through(pool());
    let b = std::sync::Arc::new(jitgate::access_locks::AccessLocks::shared_through(pool()));
    // Grants 1 and 2 are the same access (user, resource, role, adapter); 3 another one.
    let held = a.lock_access(&grant(1)).await.unwrap();
    let key = jitgate::access_locks::key(&grant(2));
    let other = jitgate::access_locks::key(&GrantRow {
        user_id: "U2".into(),
        ..grant(3)
    });
    let (batch, taken) = b.try_lock_accesses(&[key, other]).await.unwrap();
    assert_eq!(taken, vec![false, true], "the held access is skipped, the other taken");
    drop(batch);
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.lock_access(&grant(2)).await.map(|_| ()) })
    };
    // Still held by A: B waits (a bounded look, not a sleep the result depends on).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "B must wait while A holds the access");
    drop(held);
    tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("B gets the access once A lets go")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_job_or_message_added_anywhere_notifies_every_replica() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let db = Db::open(&database.url).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&database.url).await.unwrap();
    listener.listen_all(["jitgate_jobs", "jitgate_outbox"]).await.unwrap();
    let id = request_with_job(&db, 1).await;
    let n = tokio::time::timeout(DEADLINE, listener.recv()).await.unwrap().unwrap();
    assert_eq!(n.channel(), "jitgate_jobs");
    {
        let mut conn = db.write.acquire().await.unwrap();
        store::enqueue(&mut conn, &Outgoing::message("C1", "hi".into(), Some(id)), T0)
            .await
            .unwrap();
    }
    let n = tokio::time::timeout(DEADLINE, listener.recv()).await.unwrap().unwrap();
    assert_eq!(n.channel(), "jitgate_outbox");
    // Claiming a job changes its state, not its time: no wake-up storm.
    assert_eq!(claim(&db, T0, 10).await.len(), 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "a claim wakes no one"
    );
    db.close().await;
}
