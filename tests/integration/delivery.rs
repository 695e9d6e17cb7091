//! Slack being slow, rate-limiting or down never loses a card or a DM.

use crate::support::*;

#[tokio::test]
async fn rate_limited_card_is_delivered_once_after_retry_after() {
    let app = TestApp::start_with(Setup {
        clock: TestClock::System,
        ..Setup::default()
    })
    .await;
    app.slack
        .fail_next("chat.postMessage", vec![Failure::RateLimited { retry_after_secs: 1 }]);
    let id = app.request("prod-db:read 1h x").await;
    app.wait_card_containing(id, "jit_approve").await;
    let attempts: Vec<_> = app
        .slack
        .calls()
        .into_iter()
        .filter(|c| c.method == "chat.postMessage" && c.channel() == APPROVAL_CHANNEL)
        .collect();
    assert_eq!(attempts.len(), 2, "one refused, one delivered");
    assert!(!attempts[0].ok && attempts[1].ok);
    assert_eq!(app.slack.posted_to(APPROVAL_CHANNEL).len(), 1, "exactly one card");
}

#[tokio::test]
async fn messages_wait_out_a_slack_outage_and_are_delivered_later() {
    let app = TestApp::start().await;
    app.slack.fail_next(
        "chat.postMessage",
        vec![Failure::ServerError, Failure::ServerError, Failure::ServerError],
    );
    let id = app.request("prod-db:read 1h during an outage").await;
    // Each retry is due after a backoff; move the clock past it until the card goes out.
    wait_for("the card after the outage", || async {
        app.clock.advance(chrono::Duration::seconds(30));
        (!app.slack.posted_to(APPROVAL_CHANNEL).is_empty()).then_some(())
    })
    .await;
    assert_eq!(app.slack.posted_to(APPROVAL_CHANNEL).len(), 1);
    // Recorded once Slack took it: three failures and the success.
    let attempts = wait_for("the delivery recorded", || async {
        let (state, attempts): (String, i64) =
            sqlx::query_as("SELECT state, attempts FROM outbox WHERE request_id = $1 AND kind = 'post_card'")
                .bind(id)
                .fetch_one(&app.state().db.read)
                .await
                .unwrap();
        (state == "sent").then_some(attempts)
    })
    .await;
    assert_eq!(attempts, 4);
}

#[tokio::test]
async fn a_card_update_before_the_card_exists_is_not_lost() {
    let app = TestApp::start().await;
    app.slack.fail_next("chat.postMessage", vec![Failure::ServerError]);
    let id = app.request("prod-db:read 1h quick approver").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    wait_for("the card", || async {
        app.clock.advance(chrono::Duration::seconds(30));
        (!app.slack.posted_to(APPROVAL_CHANNEL).is_empty()).then_some(())
    })
    .await;
    // Rendered from the stored state when finally sent, it already shows the grant.
    app.wait_card_containing(id, "Access granted").await;
}

#[tokio::test]
async fn a_permanent_slack_refusal_is_kept_and_retried_slowly_not_dropped() {
    let app = TestApp::start().await;
    app.slack
        .fail_next("chat.postMessage", vec![Failure::ApiError("channel_not_found")]);
    let id = app.request("prod-db:read 1h x").await;
    let now = app.clock.now().timestamp_millis();
    let next = wait_for("the refusal recorded", || async {
        let row: Option<(String, Option<String>, Option<i64>, i64)> = sqlx::query_as(
            "SELECT state, last_error, refused_at, next_attempt_at FROM outbox WHERE request_id = $1 AND kind = 'post_card'",
        )
        .bind(id)
        .fetch_optional(&app.state().db.read)
        .await
        .unwrap();
        match row {
            Some((s, Some(e), Some(_), next)) if s == "pending" && e == "channel_not_found" => Some(next),
            _ => None,
        }
    })
    .await;
    assert!(
        next - now >= 150_000,
        "a slow schedule, not a tight retry: {}ms",
        next - now
    );
    // The slow retry comes, and Slack (the cause fixed) takes the card.
    app.clock.advance(chrono::Duration::hours(1));
    app.wait_card_containing(id, "This card is late").await;
}
