//! What users type and what they are told.

use crate::support::*;

#[tokio::test]
async fn help_shows_usage_with_resources() {
    let app = TestApp::start().await;
    for text in ["help", "HELP"] {
        let reply = app.command(REQUESTER, text).await;
        assert!(
            reply.contains("/jit request <resource>[:<role>] [<duration>] <reason>"),
            "{reply}"
        );
        assert!(
            reply.contains("`prod-db` (roles: read, write; up to 4h) — Production PostgreSQL"),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn bad_requests_are_explained_and_store_nothing() {
    let app = TestApp::start().await;
    let cases = [
        ("request nope:read 1h x", "no resource called `nope`"),
        (
            "request prod-db:admin 1h x",
            "has no role `admin`. Its roles are: read, write.",
        ),
        (
            "request prod-db:read 5h x",
            "5h is longer than the 4h allowed for `prod-db`",
        ),
        ("request prod-db:read 1h", "Please say why you need access"),
        ("request prod-db 2 x", "is not a duration"),
        (
            "request prod-db write 1h x",
            "did you mean `/jit request prod-db:write 1h x`?",
        ),
        ("request prod-db:read 1h30 x", "`1h30` is not a duration"),
        ("dance", "I don't know the command `dance`"),
    ];
    for (text, expected) in cases {
        let reply = app.command(REQUESTER, text).await;
        assert!(reply.contains(expected), "{text:?} → {reply}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
    // Refused requests are audited (who asked for what, and why it was refused); nothing else.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action <> 'command.refused'")
            .await,
        0
    );
}

#[tokio::test]
async fn confirmation_names_the_request_and_the_approval_channel() {
    let app = TestApp::start().await;
    let reply = app.command(REQUESTER, "request prod-db:write 90m deploy hotfix").await;
    assert!(
        reply.contains("Request *JIT-1*") && reply.contains("`prod-db:write` for 1h30m"),
        "{reply}"
    );
    assert!(reply.contains("<#C0APPROVALS>"), "{reply}");
}

#[tokio::test]
async fn list_shows_pending_requests_and_active_grants() {
    let app = TestApp::start().await;
    assert!(app.command(REQUESTER, "list").await.contains("no pending requests"));
    let a = app.request("prod-db:read 1h one").await;
    let b = app.request("prod-db:write 2h two").await;
    app.approve(APPROVER1, a).await;
    app.wait_grant(a, "active").await;
    let reply = app.command(REQUESTER, "list").await;
    assert!(
        reply.contains(&format!("JIT-{a} `prod-db:read` — active, ends <!date^")),
        "{reply}"
    );
    assert!(
        reply.contains(&format!("JIT-{b} `prod-db:write` for 2h — in <#C0APPROVALS>")),
        "{reply}"
    );
    // Only the caller's own.
    assert!(app.command(OUTSIDER, "list").await.contains("no pending requests"));
}

#[tokio::test]
async fn user_text_is_stored_verbatim_and_shown_inert_on_the_card() {
    let app = TestApp::start().await;
    // Slack escapes &, < and > in command text.
    let id = app
        .request("prod-db:read 1h fix &lt;!channel&gt; &amp; `rm -rf /`")
        .await;
    let (reason,): (String,) = sqlx::query_as("SELECT reason FROM requests WHERE id = $1")
        .bind(id)
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    assert_eq!(reason, "fix <!channel> & `rm -rf /`");
    // Shown as typed, inert: only in a plain_text object, which Slack does not parse for
    // mentions, links or formatting.
    let card = app.wait_card_containing(id, "Reason").await;
    assert!(
        card.contains(r#"{"emoji":false,"text":"fix <!channel> & `rm -rf /`","type":"plain_text"}"#),
        "{card}"
    );
    assert_eq!(card.matches("<!channel>").count(), 1, "{card}");
}

#[tokio::test]
async fn ssl_check_probe_is_answered() {
    let app = TestApp::start().await;
    let (status, _) = app
        .post_signed(
            "/slack/commands",
            "ssl_check=1&token=x",
            "application/x-www-form-urlencoded",
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn events_endpoint_answers_url_verification() {
    let app = TestApp::start().await;
    let body =
        r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (status, reply) = app.post_signed("/slack/events", body, "application/json").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["challenge"], "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P");
}

#[tokio::test]
async fn opening_the_home_tab_shows_the_persons_access_once_per_event() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h x").await;
    let event = serde_json::json!({
        "token": "x", "team_id": "T0TEAM", "api_app_id": "A0APP", "type": "event_callback",
        "event_id": "Ev0HOME1", "event_time": 1700000000,
        "event": {"type": "app_home_opened", "user": REQUESTER, "channel": "D0DM", "tab": "home", "event_ts": "1.2"}
    })
    .to_string();
    for _ in 0..2 {
        // The second delivery is Slack retrying the same event.
        let (status, _) = app.post_signed("/slack/events", &event, "application/json").await;
        assert_eq!(status, 200);
    }
    let calls = app.wait_calls("the Home tab", 1, |c| c.method == "views.publish").await;
    assert_eq!(calls[0].body["user_id"], REQUESTER);
    let text = calls[0].all_text();
    assert!(
        text.contains(&format!("*JIT-{id}* `prod-db:read` for 1h")) && text.contains("/jit request"),
        "{text}"
    );
    app.command(REQUESTER, "help").await; // something else to wait behind
    assert_eq!(
        app.slack.calls().iter().filter(|c| c.method == "views.publish").count(),
        1
    );
}
