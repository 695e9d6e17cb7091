//! Many grants ending at once: the scheduler revokes a wave of due grants together
//! (one batch, one transaction) and must keep every guarantee of one-at-a-time revokes.

use chrono::Duration;

use crate::support::*;

async fn active_as(app: &TestApp, user: &str, text: &str) -> i64 {
    let id = app.request_as(user, text).await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    id
}

fn revokes(app: &TestApp) -> Vec<String> {
    app.adapter_log()
        .into_iter()
        .filter(|l| l.starts_with("revoke"))
        .collect()
}

#[tokio::test]
async fn a_wave_of_expiries_revokes_each_grant_once_with_its_record_and_messages() {
    let app = TestApp::start().await;
    let users: Vec<String> = (1..=12).map(|i| format!("UWAVE{i:02}")).collect();
    let mut ids = Vec::new();
    for user in &users {
        ids.push(active_as(&app, user, "prod-db:read 1h wave").await);
    }

    app.clock.advance(Duration::minutes(61));
    for id in &ids {
        app.wait_grant(*id, "revoked").await;
    }

    let mut revoked = revokes(&app);
    revoked.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .zip(&users)
        .map(|(id, user)| {
            let grant: i64 = *id; // one grant per request, numbered alike in a fresh database
            format!("revoke {grant} {user} prod-db read 3600 state=granted-{grant}")
        })
        .collect();
    expected.sort();
    assert_eq!(revoked, expected, "each grant revoked exactly once, with its own state");

    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'grant.revoked'")
            .await,
        12
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM grants WHERE state = 'revoked' AND revoked_by = 'expiry'")
            .await,
        12
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE kind = 'revoke' AND state = 'done'")
            .await,
        12
    );
    for (id, user) in ids.iter().zip(&users) {
        app.wait_dm(user, &format!("(JIT-{id}) has ended.")).await;
        app.wait_card_containing(*id, "Access ended").await;
    }
    let mut conn = app.state().db.read.acquire().await.unwrap();
    let entries = app.count("SELECT COUNT(*) FROM audit_log").await;
    assert_eq!(
        jitgate::audit::verify_chain(&audit_key(), &mut conn).await.unwrap(),
        Ok(entries)
    );
}

#[tokio::test]
async fn two_grants_of_one_access_ending_together_still_take_the_access_away() {
    let app = TestApp::start().await;
    // Both granted at the same instant for the same access: their revokes fall due
    // together and are claimed in the same batch. Each sees the other as still covering
    // the access; only one at a time may decide, or both would be superseded and the
    // access would never be revoked.
    let first = app.request("prod-db:read 1h first").await;
    let second = app.request("prod-db:read 1h second").await;
    app.approve(APPROVER1, first).await;
    app.approve(APPROVER1, second).await;
    app.wait_grant(first, "active").await;
    app.wait_grant(second, "active").await;

    app.clock.advance(Duration::minutes(61));
    wait_for("both grants to end", || async {
        let ended = app
            .count("SELECT COUNT(*) FROM grants WHERE state IN ('revoked', 'superseded')")
            .await;
        (ended == 2).then_some(())
    })
    .await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM grants WHERE state = 'superseded'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM grants WHERE state = 'revoked'").await,
        1
    );
    assert_eq!(revokes(&app).len(), 1, "{:?}", app.adapter_log());
}

#[tokio::test]
async fn a_grant_in_progress_for_one_access_does_not_hold_up_the_rest_of_the_wave() {
    let app = TestApp::start().await;
    let mine = active_as(&app, REQUESTER, "prod-db:read 1h mine").await;
    let others: Vec<i64> = {
        let mut ids = Vec::new();
        for i in 1..=3 {
            ids.push(active_as(&app, &format!("UOTHER{i}"), "prod-db:read 1h theirs").await);
        }
        ids
    };

    // A second grant of the requester's access is being given (the adapter hangs) and
    // holds that access's lock when the wave falls due.
    app.clock.advance(Duration::minutes(59));
    app.block_adapter("grant", true);
    let again = app.request("prod-db:read 1h again").await;
    app.approve(APPROVER1, again).await;
    wait_for("the second grant to start", || async {
        app.adapter_log()
            .iter()
            .any(|l| l.starts_with(&format!("grant {again} ")))
            .then_some(())
    })
    .await;

    app.clock.advance(Duration::minutes(2));
    for id in &others {
        app.wait_grant(*id, "revoked").await;
    }
    assert_eq!(app.grant_state(mine).await.as_deref(), Some("active"));

    // Once the grant finishes, the waiting revoke sees the new grant covering the access.
    app.block_adapter("grant", false);
    app.wait_grant(again, "active").await;
    app.wait_grant(mine, "superseded").await;
    assert!(
        !revokes(&app).iter().any(|l| l.contains(" UREQUESTER ")),
        "{:?}",
        app.adapter_log()
    );
}
