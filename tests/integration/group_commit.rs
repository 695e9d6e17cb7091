//! Requests that arrive together are stored together (group commit): each must still get
//! its own id, rows, card and time-outs, and the audit chain must stay intact.

use std::sync::Arc;

use crate::support::{audit_key, wait_for, TestApp};

#[tokio::test]
async fn simultaneous_requests_are_each_stored_once_with_an_intact_audit_chain() {
    let app = Arc::new(TestApp::start().await);
    let n = 40;
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("UCONCURRENT{i:02}");
            let reply = app.command(&user, &format!("request prod-db:read 1h reason {i}")).await;
            let id: i64 = reply
                .split("JIT-")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("no request id in reply: {reply}"));
            (user, id)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    let mut ids: Vec<i64> = acked.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "every request got its own id");

    let db = &app.state().db.read;
    for (user, id) in &acked {
        let (requester, reason): (String, String) =
            sqlx::query_as("SELECT requester_id, reason FROM requests WHERE id = $1 AND state = 'pending'")
                .bind(id)
                .fetch_one(db)
                .await
                .unwrap();
        assert_eq!(&requester, user, "JIT-{id} belongs to whoever was told its id");
        let (entries,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_log WHERE request_id = $1 AND action = 'request.created' AND actor = $2",
        )
        .bind(id)
        .bind(user)
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(entries, 1, "one request.created entry for JIT-{id}");
        assert!(reason.starts_with("reason "), "{reason}");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE kind = 'expire_request' AND state = 'pending'")
            .await,
        n as i64
    );
    let mut conn = db.acquire().await.unwrap();
    let verified = jitgate::audit::verify_chain(&audit_key(), &mut conn).await.unwrap();
    assert_eq!(verified, Ok(n as i64), "the audit chain is intact");
    drop(conn);

    // Each request gets exactly one card.
    let cards = wait_for("a card for every request", || async {
        let posted: Vec<_> = app
            .slack
            .ok_calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.text().starts_with("Access request JIT-"))
            .collect();
        (posted.len() >= n).then_some(posted)
    })
    .await;
    for id in &ids {
        let prefix = format!("Access request JIT-{id}:");
        assert_eq!(
            cards.iter().filter(|c| c.text().starts_with(&prefix)).count(),
            1,
            "one card for JIT-{id}"
        );
    }
}
