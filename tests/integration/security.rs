//! Every Slack endpoint refuses unsigned, mis-signed and stale requests, and stores nothing.

use jitgate::slack::signature::sign;

use crate::support::*;

fn command_body() -> String {
    serde_urlencoded::to_string([
        ("team_id", "T0TEAM"),
        ("channel_id", "C0GENERAL"),
        ("user_id", REQUESTER),
        ("command", "/jit"),
        ("text", "request prod-db:read 1h sneaky"),
        ("response_url", "http://127.0.0.1:9/x"),
        ("trigger_id", &new_trigger_id()),
    ])
    .unwrap()
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_missing_headers_get_401_and_store_nothing() {
    let app = TestApp::start().await;
    let body = command_body();
    let now = app.clock.now().timestamp();
    let good_ts = now.to_string();
    let stale_ts = (now - 301).to_string();
    let future_ts = (now + 301).to_string();
    let cases: Vec<(&str, Option<(String, String)>)> = vec![
        ("missing headers", None),
        (
            "wrong secret",
            Some((good_ts.clone(), sign(b"not-the-secret", &good_ts, body.as_bytes()))),
        ),
        (
            "body changed",
            Some((
                good_ts.clone(),
                sign(SIGNING_SECRET.as_bytes(), &good_ts, b"text=other"),
            )),
        ),
        (
            "stale timestamp",
            Some((
                stale_ts.clone(),
                sign(SIGNING_SECRET.as_bytes(), &stale_ts, body.as_bytes()),
            )),
        ),
        (
            "future timestamp",
            Some((
                future_ts.clone(),
                sign(SIGNING_SECRET.as_bytes(), &future_ts, body.as_bytes()),
            )),
        ),
        ("malformed signature", Some((good_ts.clone(), "v0=nothex".into()))),
        (
            "signature from another scheme",
            Some((good_ts.clone(), "v1=abcd".into())),
        ),
    ];
    for path in ["/slack/commands", "/slack/interactions", "/slack/events"] {
        for (what, sig) in &cases {
            let (status, text) = app
                .post_raw(path, &body, "application/x-www-form-urlencoded", sig.clone())
                .await;
            assert_eq!(status, 401, "{path} {what}");
            assert!(text.is_empty(), "a bare 401: {text}");
        }
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM outbox").await, 0);
    assert!(app.slack.calls().is_empty());
}

#[tokio::test]
async fn a_signed_click_from_a_forged_payload_for_another_request_is_rechecked() {
    // Signed by Slack, but the button value was edited to point at another request: the
    // server checks eligibility against that request's resource, not the card's.
    let app = TestApp::start().await;
    let payments = app.request("payments:admin 30m x").await;
    app.approve("UGROUPMEMBER", payments).await; // in SDBAS, which approves prod-db only
    let text = app.wait_ephemeral("UGROUPMEMBER", payments).await;
    assert!(text.contains("not an approver for `payments`"), "{text}");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = TestApp::start().await;
    let body = format!("text={}", "a".repeat(200 * 1024));
    let (status, _) = app
        .post_signed("/slack/commands", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn health_check_answers() {
    let app = TestApp::start().await;
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>()
        .get(format!("{}/healthz", app.base).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Issue #11: the same signed request replayed within the 5-minute window has no second
/// effect — a slash command, a click and an event — also across a restart, and event
/// de-duplication has no small cap (the old in-memory set forgot after 1,000 events).
#[tokio::test]
async fn replayed_signed_requests_have_no_second_effect_even_across_a_restart() {
    let mut app = TestApp::start().await;
    let command = command_body();
    let first = post(
        &app,
        "/slack/commands",
        command.clone(),
        "application/x-www-form-urlencoded",
    )
    .await;
    let again = post(
        &app,
        "/slack/commands",
        command.clone(),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert!(first.contains("JIT-"), "{first}");
    assert_eq!(
        first, again,
        "a replay is answered with the first reply and does nothing else"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 1);
    let id: i64 = app.count("SELECT MAX(id) FROM requests").await;
    app.wait_card_containing(id, "jit_approve").await;

    let click = app.click_body("UGROUPMEMBER", "jit_approve", &id.to_string(), "replayed");
    post(
        &app,
        "/slack/interactions",
        click.clone(),
        "application/x-www-form-urlencoded",
    )
    .await;
    app.wait_grant(id, "active").await;

    // More distinct events than the old in-memory set held, then the first one again.
    let event = |n: usize| {
        serde_json::json!({
            "token": "x", "team_id": "T0TEAM", "api_app_id": "A0APP", "type": "event_callback",
            "event_id": format!("Ev{n:06}"), "event_time": 1700000000,
            "event": {"type": "app_mention", "user": REQUESTER, "channel": "C0GENERAL", "event_ts": "1.2"}
        })
        .to_string()
    };
    for n in 0..1_100 {
        post(&app, "/slack/events", event(n), "application/json").await;
    }
    let home = serde_json::json!({
        "token": "x", "team_id": "T0TEAM", "api_app_id": "A0APP", "type": "event_callback",
        "event_id": "Ev0HOMEREPLAY", "event_time": 1700000000,
        "event": {"type": "app_home_opened", "user": REQUESTER, "channel": "D0DM", "tab": "home", "event_ts": "1.2"}
    })
    .to_string();
    post(&app, "/slack/events", home.clone(), "application/json").await;
    app.wait_calls("the Home tab", 1, |c| c.method == "views.publish").await;

    // After a restart, every replay is still recognised.
    app.stop().await;
    app.boot().await;
    let again = post(&app, "/slack/commands", command, "application/x-www-form-urlencoded").await;
    assert_eq!(first, again);
    post(&app, "/slack/interactions", click, "application/x-www-form-urlencoded").await;
    post(&app, "/slack/events", home, "application/json").await;
    post(&app, "/slack/events", event(0), "application/json").await;
    app.command(REQUESTER, "help").await; // something else to wait behind
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 1, "one request");
    assert_eq!(app.count("SELECT COUNT(*) FROM decisions").await, 1, "one decision");
    assert_eq!(app.count("SELECT COUNT(*) FROM grants").await, 1, "one grant");
    assert_eq!(app.slack.posted_to(APPROVAL_CHANNEL).len(), 1, "one card");
    assert_eq!(app.slack.ok_calls("views.publish").len(), 1, "one Home tab publish");
}

/// Posts a signed body and returns the answer, which must be a 200.
async fn post(app: &TestApp, path: &str, body: String, content_type: &str) -> String {
    let (status, reply) = app.post_signed(path, &body, content_type).await;
    assert_eq!(status, 200, "{path}: {reply}");
    reply
}

/// The same command sent many times at once (a replay racing the original) stores one
/// request: its trigger_id is written in the request's own transaction, and every copy
/// is answered with the same confirmation.
#[tokio::test]
async fn the_same_command_sent_many_times_at_once_stores_one_request() {
    let app = TestApp::start().await;
    let command = command_body();
    let replies = futures_util::future::join_all((0..20).map(|_| {
        post(
            &app,
            "/slack/commands",
            command.clone(),
            "application/x-www-form-urlencoded",
        )
    }))
    .await;
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 1);
    assert!(replies[0].contains("JIT-1"), "{}", replies[0]);
    for r in &replies {
        assert_eq!(r, &replies[0]);
    }
    app.wait_card_containing(1, "jit_approve").await;
    assert_eq!(app.slack.posted_to(APPROVAL_CHANNEL).len(), 1, "one card");
}
