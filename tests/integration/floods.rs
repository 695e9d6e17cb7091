//! Floods and foreign senders: requests from another workspace or app are refused and
//! audited; one person's pending requests are capped (also when sent all at once) and
//! their commands rate-limited, each with a clear reply; one action per interaction
//! payload is acted on; response_urls go only to allowed hosts.

use serde_json::{json, Value};

use crate::support::*;

fn command_from(app: &TestApp, team: &str, api_app: &str, text: &str) -> String {
    serde_urlencoded::to_string([
        ("team_id", team),
        ("channel_id", "C0GENERAL"),
        ("user_id", REQUESTER),
        ("command", "/jit"),
        ("text", text),
        ("api_app_id", api_app),
        ("response_url", &app.slack.response_url("cmd")),
        ("trigger_id", &new_trigger_id()),
    ])
    .unwrap()
}

#[tokio::test]
async fn commands_and_clicks_from_another_workspace_or_app_are_refused_and_audited() {
    let app = TestApp::start_with(Setup {
        slack_toml: "team_id = \"T0TEAM\"\napi_app_id = \"A0APP\"\n".into(),
        ..Setup::default()
    })
    .await;
    for (team, api_app) in [("T0EVIL", "A0APP"), ("T0TEAM", "A0EVIL")] {
        let body = command_from(&app, team, api_app, "request prod-db:read 1h from elsewhere");
        let (status, reply) = app
            .post_signed("/slack/commands", &body, "application/x-www-form-urlencoded")
            .await;
        assert_eq!(status, 200);
        assert!(reply.contains("different Slack workspace or app"), "{reply}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'command.refused'")
            .await,
        2
    );

    // The configured workspace works; a click from another workspace changes nothing.
    let id = app.request("prod-db:read 1h legit").await;
    let body = app.click_body(APPROVER1, "jit_approve", &id.to_string(), "foreign");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    let mut payload: Value = serde_json::from_str(&form[0].1).unwrap();
    payload["team"]["id"] = json!("T0EVIL");
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let (status, _) = app
        .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200);
    wait_for("the foreign click to be audited", || async {
        (app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'click.refused'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(app.request_state(id).await, "pending");
}

#[tokio::test]
async fn pending_requests_per_person_are_capped_even_when_sent_at_once() {
    let app = TestApp::start_with(Setup {
        requests_toml: "max_pending_per_user = 3\n".into(),
        ..Setup::default()
    })
    .await;
    let texts: Vec<String> = (0..20)
        .map(|i| format!("request prod-db:read 1h parallel {i}"))
        .collect();
    let replies = futures_util::future::join_all(texts.iter().map(|t| app.command(REQUESTER, t))).await;
    let refused = replies.iter().filter(|r| r.contains("3 requests waiting")).count();
    assert_eq!(refused, 17, "{replies:?}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM requests WHERE state = 'pending'").await,
        3
    );
    // Another person is not affected.
    app.request_as(OUTSIDER, "prod-db:read 1h mine").await;
}

#[tokio::test]
async fn commands_past_the_per_person_rate_are_refused_with_when_to_retry() {
    let app = TestApp::start_with(Setup {
        requests_toml: "commands_per_minute = 5\n".into(),
        ..Setup::default()
    })
    .await;
    for _ in 0..5 {
        assert!(!app.command(REQUESTER, "list").await.contains("try again"));
    }
    let reply = app.command(REQUESTER, "list").await;
    assert!(
        reply.contains("more than 5") && reply.contains("try again in"),
        "{reply}"
    );
    assert!(!app.command(OUTSIDER, "list").await.contains("try again"));
    app.clock.advance(chrono::Duration::seconds(61));
    assert!(!app.command(REQUESTER, "list").await.contains("try again"));
}

#[tokio::test]
async fn one_action_per_payload_is_acted_on() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h many clicks").await;
    let body = app.click_body(OUTSIDER, "jit_approve", &id.to_string(), "many");
    let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
    let mut payload: Value = serde_json::from_str(&form[0].1).unwrap();
    let action = json!({ "action_id": "jit_approve", "value": id.to_string() });
    payload["actions"] = Value::Array(vec![action; 700]);
    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
    let (status, _) = app
        .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200);
    wait_for("the refusal", || async {
        (app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'click.refused'")
            .await
            >= 1)
            .then_some(())
    })
    .await;
    // The old build queued all 700 within milliseconds; a moment later there is still one.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'click.refused'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE kind = 'ephemeral'").await,
        1
    );
}

#[tokio::test]
async fn a_response_url_off_the_allowed_hosts_is_never_called() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h hostile url").await;
    let body = app.click_body(OUTSIDER, "jit_approve", &id.to_string(), "x");
    // The fake Slack's own address, but named `localhost`, which is not allowed.
    let body = body.replace("127.0.0.1", "localhost");
    let (status, _) = app
        .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200);
    wait_for("the reply to be given up", || async {
        (app.count("SELECT COUNT(*) FROM outbox WHERE kind = 'ephemeral' AND state = 'failed'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(
        !app.slack.calls().iter().any(|c| c.method == "response_url"),
        "no call to a host off the list"
    );
}
