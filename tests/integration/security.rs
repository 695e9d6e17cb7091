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
        ("trigger_id", "1.2.3"),
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
