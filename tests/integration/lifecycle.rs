//! Request → card → approve → grant → expiry → revoke, and what survives a restart.

use chrono::Duration;

use crate::support::*;

#[tokio::test]
async fn approved_request_is_granted_then_revoked_when_it_expires() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 2h investigating INC-1234").await;
    assert_eq!(app.request_state(id).await, "pending");

    let card = app.wait_card_containing(id, "jit_approve").await;
    assert!(
        card.contains("<@UREQUESTER>") && card.contains("prod-db:read") && card.contains("2h"),
        "{card}"
    );
    assert!(
        card.contains("investigating INC-1234") && card.contains(&format!("JIT-{id}")),
        "{card}"
    );
    let post = &app.slack.posted_to(APPROVAL_CHANNEL)[0];
    assert_eq!(post.channel(), APPROVAL_CHANNEL);

    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    assert_eq!(
        app.adapter_log(),
        vec![format!("grant 1 UREQUESTER prod-db read 7200 state=")]
    );

    // The clock starts at the grant: expires_at = granted_at + duration.
    let (granted_at, expires_at): (i64, i64) =
        sqlx::query_as("SELECT granted_at, expires_at FROM grants WHERE request_id = $1")
            .bind(id)
            .fetch_one(&app.state().db.read)
            .await
            .unwrap();
    assert_eq!(expires_at - granted_at, 7_200_000);

    app.wait_dm(REQUESTER, "approved by <@UAPPROVER1>").await;
    app.wait_dm(REQUESTER, "You have `prod-db:read` now").await;
    let card = app.wait_card_containing(id, "Access granted").await;
    assert!(
        card.contains("Approved by <@UAPPROVER1>") && !card.contains("jit_approve"),
        "{card}"
    );

    // Nothing happens before the expiry...
    app.clock.advance(Duration::minutes(119));
    jitgate::jobs::run_due(app.state(), app.state().now_ms()).await.unwrap();
    assert_eq!(app.grant_state(id).await.as_deref(), Some("active"));

    // ...and the revoke runs once it is due, with the state the grant printed.
    app.clock.advance(Duration::minutes(1) + Duration::seconds(1));
    app.wait_grant(id, "revoked").await;
    assert_eq!(
        app.adapter_log()[1],
        "revoke 1 UREQUESTER prod-db read 7200 state=granted-1"
    );
    app.wait_dm(REQUESTER, "has ended").await;
    app.wait_card_containing(id, "Access ended").await;

    let actions: Vec<(String,)> = sqlx::query_as("SELECT action FROM audit_log WHERE request_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(&app.state().db.read)
        .await
        .unwrap();
    let actions: Vec<&str> = actions.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "request.created",
            "decision.approve",
            "request.approved",
            "grant.active",
            "grant.revoked"
        ]
    );
    let mut conn = app.state().db.read.acquire().await.unwrap();
    assert_eq!(
        jitgate::audit::verify_chain(&audit_key(), &mut conn).await.unwrap(),
        Ok(5)
    );
}

#[tokio::test]
async fn overdue_grant_is_revoked_at_start_up() {
    let mut app = TestApp::start().await;
    let id = app.request("prod-db:write 1h restart test").await;
    app.approve(APPROVER2, id).await;
    app.wait_grant(id, "active").await;
    app.stop().await;

    // The bot is down while the grant expires.
    app.clock.advance(Duration::hours(3));
    app.boot().await;
    app.wait_grant(id, "revoked").await;
    assert_eq!(app.adapter_log().len(), 2);
    let late: (i64,) = sqlx::query_as("SELECT revoked_at - expires_at FROM grants WHERE request_id = $1")
        .bind(id)
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    assert!(late.0 >= 2 * 3_600_000, "revoked after the outage, not before");
}

#[tokio::test]
async fn pending_card_stays_clickable_across_a_restart() {
    let mut app = TestApp::start().await;
    let id = app.request("prod-db 30m still pending").await;
    app.wait_card_containing(id, "jit_approve").await;
    app.stop().await;
    app.boot().await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
}

#[tokio::test]
async fn failing_grant_is_retried_then_reported_as_failed() {
    let app = TestApp::start_with(Setup {
        clock: TestClock::System,
        ..Setup::default()
    })
    .await;
    app.fail_adapter("grant", true);
    let id = app.request("prod-db:read 1h will fail").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "failed").await;

    let grants = app.adapter_log().iter().filter(|l| l.starts_with("grant ")).count();
    assert_eq!(grants, 3, "grant_attempts = 3");
    let text = app.wait_dm(REQUESTER, "failed after 3 attempts").await;
    assert!(
        !text.contains("simulated failure"),
        "adapter stderr stays in the log: {text}"
    );
    app.wait_calls("failure reported in the approval channel", 1, |c| {
        c.method == "chat.postMessage"
            && c.channel() == APPROVAL_CHANNEL
            && c.text().contains("failed after 3 attempts")
    })
    .await;
    app.wait_card_containing(id, "Granting failed").await;
    // Whatever a failed attempt left behind is cleaned up.
    wait_for("clean-up revoke", || async {
        app.adapter_log().iter().any(|l| l.starts_with("revoke ")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn failing_revoke_keeps_retrying_and_alerts_until_it_succeeds() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h revoke trouble").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.fail_adapter("revoke", true);
    app.clock.advance(Duration::hours(1) + Duration::seconds(1));
    app.wait_calls("revoke failure alert", 1, |c| {
        c.method == "chat.postMessage" && c.channel() == APPROVAL_CHANNEL && c.text().contains("is failing")
    })
    .await;
    // Never marked revoked while the adapter says no.
    for _ in 0..3 {
        app.clock.advance(Duration::seconds(5));
        let attempts = app.count("SELECT attempts FROM jobs WHERE kind = 'revoke'").await;
        wait_for("another revoke attempt", || async {
            (app.count("SELECT attempts FROM jobs WHERE kind = 'revoke'").await > attempts).then_some(())
        })
        .await;
        assert_eq!(app.grant_state(id).await.as_deref(), Some("active"));
    }
    app.fail_adapter("revoke", false);
    app.clock.advance(Duration::seconds(5));
    app.wait_grant(id, "revoked").await;
    app.wait_calls("recovery reported", 1, |c| {
        c.channel() == APPROVAL_CHANNEL && c.text().contains("succeeded after")
    })
    .await;
}

#[tokio::test]
async fn undecided_request_expires_and_its_card_says_so() {
    let app = TestApp::start().await;
    let id = app.request("prod-db 1h nobody answers").await;
    app.wait_card_containing(id, "jit_approve").await;
    app.clock.advance(Duration::hours(24) + Duration::seconds(1));
    app.wait_request(id, "expired").await;
    app.wait_card_containing(id, "Expired").await;
    app.wait_dm(REQUESTER, "expired").await;
    app.approve(APPROVER1, id).await;
    let reply = app.wait_ephemeral(APPROVER1, id).await;
    assert!(reply.contains("expired"), "{reply}");
    assert_eq!(app.count("SELECT COUNT(*) FROM grants").await, 0);
}

/// An adapter that hands out a generated secret, like the postgres temporary login.
struct Credentials;

impl jitgate::adapters::Adapter for Credentials {
    fn grant<'a>(
        &'a self,
        _ctx: &'a jitgate::adapters::GrantContext,
    ) -> jitgate::adapters::BoxFuture<'a, Result<jitgate::adapters::Granted, jitgate::adapters::AdapterError>> {
        Box::pin(async {
            Ok(jitgate::adapters::Granted {
                state: Some("login-1".into()),
                private_note: Some("password: hunter2-generated".into()),
            })
        })
    }
    fn revoke<'a>(
        &'a self,
        _ctx: &'a jitgate::adapters::GrantContext,
    ) -> jitgate::adapters::BoxFuture<'a, Result<(), jitgate::adapters::AdapterError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn generated_credentials_reach_only_the_requester_and_leave_no_copy() {
    let app = TestApp::start_with(Setup {
        adapters: vec![(
            "demo".into(),
            std::sync::Arc::new(Credentials) as std::sync::Arc<dyn jitgate::adapters::Adapter>,
        )],
        ..Setup::default()
    })
    .await;
    let id = app.request("prod-db:read 1h needs a login").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.wait_dm(REQUESTER, "hunter2-generated").await;
    let elsewhere = app
        .slack
        .calls()
        .iter()
        .filter(|c| c.channel() != REQUESTER && c.all_text().contains("hunter2"))
        .count();
    assert_eq!(elsewhere, 0, "only the requester's DM holds the secret");
    wait_for("the delivered secret erased from the outbox", || async {
        (app.count("SELECT COUNT(*) FROM outbox WHERE body LIKE '%hunter2%'")
            .await
            == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE sensitive = 1 AND state = 'sent' AND body IS NULL")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE details LIKE '%hunter2%'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM grants WHERE adapter_state LIKE '%hunter2%'")
            .await,
        0
    );
}
