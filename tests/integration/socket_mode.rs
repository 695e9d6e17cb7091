//! Socket Mode end to end: the real app connects to the fake Slack's Socket Mode server
//! (through `apps.connections.open`), takes envelopes there, and answers with acks.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

async fn socket_app() -> TestApp {
    TestApp::start_with(Setup {
        socket_mode: true,
        ..Setup::default()
    })
    .await
}

/// Waits until `n` Socket Mode connections are open.
async fn wait_connected(app: &TestApp, n: usize) {
    wait_for(&format!("{n} Socket Mode connection(s)"), || async {
        (app.slack.socket.connections() >= n).then_some(())
    })
    .await
}

/// A slash command's payload as Socket Mode carries it.
fn command_payload(app: &TestApp, user: &str, text: &str, trigger: &str) -> Value {
    json!({
        "token": "legacy-ignored", "team_id": "T0TEAM", "team_domain": "acme",
        "channel_id": "C0GENERAL", "channel_name": "general", "user_id": user, "user_name": "someone",
        "command": "/jit", "text": text, "api_app_id": "A0APP", "is_enterprise_install": "false",
        "response_url": app.slack.response_url(&format!("cmd-{trigger}")), "trigger_id": trigger
    })
}

/// A click's payload as Socket Mode carries it.
fn click_payload(app: &TestApp, user: &str, action: &str, request: i64, trigger: &str) -> Value {
    let form = app.click_body(user, action, &request.to_string(), &format!("{user}-{request}"));
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form).unwrap();
    let mut v: Value = serde_json::from_str(&pairs[0].1).unwrap();
    v["trigger_id"] = json!(trigger);
    v
}

/// Sends an envelope and waits for its ack; returns the ack's payload.
async fn send_and_ack(app: &TestApp, kind: &str, payload: Value) -> (String, Option<Value>) {
    let id = app.slack.socket.send(kind, payload).expect("a connection is open");
    let ack = wait_for(&format!("the ack of {id}"), || async {
        app.slack.socket.acks_of(&id).into_iter().next()
    })
    .await;
    (id, ack.payload)
}

/// `/jit <text>` over the socket; returns the reply text from the ack.
async fn socket_command(app: &TestApp, user: &str, text: &str, trigger: &str) -> String {
    let (_, payload) = send_and_ack(app, "slash_commands", command_payload(app, user, text, trigger)).await;
    let payload = payload.expect("a slash command's reply rides in the ack");
    assert_eq!(
        payload["response_type"], "ephemeral",
        "never visible to the channel: {payload}"
    );
    payload["text"].as_str().unwrap_or_default().to_string()
}

fn request_id(reply: &str) -> i64 {
    reply
        .split("JIT-")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in reply: {reply}"))
}

#[tokio::test]
async fn socket_mode_runs_request_card_click_grant_and_revoke_end_to_end() {
    let app = socket_app().await;
    wait_connected(&app, 2).await;

    let reply = socket_command(
        &app,
        REQUESTER,
        "request prod-db:read 1h investigating INC-1",
        "t-req-1",
    )
    .await;
    assert!(reply.contains(APPROVAL_CHANNEL), "names the approval channel: {reply}");
    let id = request_id(&reply);
    app.wait_card_containing(id, "jit_approve").await;

    // Server-side click checks are unchanged: an outsider's click changes nothing.
    send_and_ack(
        &app,
        "interactive",
        click_payload(&app, OUTSIDER, "jit_approve", id, "t-click-out"),
    )
    .await;
    app.wait_ephemeral(OUTSIDER, id).await;
    assert_eq!(app.request_state(id).await, "pending");

    send_and_ack(
        &app,
        "interactive",
        click_payload(&app, APPROVER1, "jit_approve", id, "t-click-1"),
    )
    .await;
    app.wait_grant(id, "active").await;
    app.wait_dm(REQUESTER, "You have `prod-db:read` now").await;

    let reply = socket_command(&app, REQUESTER, &format!("revoke JIT-{id}"), "t-revoke-1").await;
    assert!(reply.contains(&format!("JIT-{id}")), "{reply}");
    app.wait_grant(id, "revoked").await;
    assert_eq!(
        app.adapter_done(),
        vec![format!("done grant 1"), format!("done revoke 1")]
    );
}

#[tokio::test]
async fn a_redelivered_envelope_has_one_effect_with_the_same_or_a_new_envelope_id() {
    let app = socket_app().await;
    wait_connected(&app, 1).await;

    let payload = command_payload(&app, REQUESTER, "request prod-db:read 1h once", "t-dup-cmd");
    let (first_id, first) = send_and_ack(&app, "slash_commands", payload.clone()).await;
    let id = request_id(first.as_ref().unwrap()["text"].as_str().unwrap());
    // Slack did not get the ack (say): the same envelope again, then a new envelope id.
    assert!(app
        .slack
        .socket
        .send_envelope(&first_id, "slash_commands", payload.clone(), 1));
    let (_, again) = send_and_ack(&app, "slash_commands", payload).await;
    wait_for("both re-deliveries acknowledged", || async {
        (app.slack.socket.acks_of(&first_id).len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        again.unwrap()["text"],
        first.unwrap()["text"],
        "the confirmation is repeated"
    );
    app.wait_card_containing(id, "jit_approve").await;

    let click = click_payload(&app, APPROVER1, "jit_approve", id, "t-dup-click");
    let (click_id, _) = send_and_ack(&app, "interactive", click.clone()).await;
    assert!(app
        .slack
        .socket
        .send_envelope(&click_id, "interactive", click.clone(), 1));
    send_and_ack(&app, "interactive", click).await;
    app.wait_grant(id, "active").await;

    let event = json!({"type": "event_callback", "event_id": "Ev0DUP", "team_id": "T0TEAM", "api_app_id": "A0APP",
                       "event": {"type": "app_home_opened", "user": REQUESTER, "channel": "D0HOME", "tab": "home"}});
    send_and_ack(&app, "events_api", event.clone()).await;
    send_and_ack(&app, "events_api", event).await;
    app.wait_calls("the Home tab published", 1, |c| c.method == "views.publish")
        .await;

    // Re-deliveries are recognised before anything is started, and every envelope above
    // was acknowledged after that check, so nothing more can happen from here.
    app.wait_dm(REQUESTER, "You have `prod-db:read` now").await;
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 1, "one request");
    assert_eq!(app.count("SELECT COUNT(*) FROM decisions").await, 1, "one decision");
    assert_eq!(app.count("SELECT COUNT(*) FROM grants").await, 1, "one grant");
    assert_eq!(app.slack.posted_to(APPROVAL_CHANNEL).len(), 1, "one card");
    assert_eq!(app.slack.ok_calls("views.publish").len(), 1, "one Home tab publish");
    assert_eq!(
        app.dms(REQUESTER)
            .iter()
            .filter(|t| t.contains("You have `prod-db:read` now"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_disconnect_message_brings_a_new_connection_within_ten_seconds() {
    let app = socket_app().await;
    wait_connected(&app, 2).await;
    let opened = app.slack.ok_calls("apps.connections.open").len();
    let accepted = app.slack.socket.accepted();
    let asked = Instant::now();
    app.slack.socket.disconnect_all("refresh_requested");
    wait_for("new connections after disconnect", || async {
        (app.slack.socket.accepted() >= accepted + 2).then_some(())
    })
    .await;
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    assert!(app.slack.ok_calls("apps.connections.open").len() >= opened + 2);
    // And it keeps serving.
    let reply = socket_command(
        &app,
        REQUESTER,
        "request prod-db:read 1h after refresh",
        "t-after-refresh",
    )
    .await;
    assert!(reply.contains("JIT-"), "{reply}");
}

#[tokio::test]
async fn a_dropped_socket_reconnects_within_thirty_seconds_though_two_opens_fail() {
    let app = socket_app().await;
    wait_connected(&app, 2).await;
    let before = app
        .slack
        .calls()
        .iter()
        .filter(|c| c.method == "apps.connections.open")
        .count();
    app.slack.fail_next(
        "apps.connections.open",
        vec![Failure::ServerError, Failure::ApiError("internal_error")],
    );
    let dropped = Instant::now();
    app.slack.socket.drop_all();
    wait_for("the sockets to be seen as closed", || async {
        (app.slack.socket.connections() < 2).then_some(())
    })
    .await;
    wait_for("both connections back", || async {
        (app.slack.socket.connections() >= 2).then_some(())
    })
    .await;
    assert!(
        dropped.elapsed() < Duration::from_secs(30),
        "took {:?}",
        dropped.elapsed()
    );
    let opens = app
        .slack
        .calls()
        .iter()
        .filter(|c| c.method == "apps.connections.open")
        .count()
        - before;
    assert!(opens >= 4, "two failed opens and two good ones: {opens}");
    assert!(opens <= 8, "no tight loop: {opens} opens");
    let reply = socket_command(&app, REQUESTER, "request prod-db:read 1h after drop", "t-after-drop").await;
    assert!(reply.contains("JIT-"), "{reply}");
}

#[tokio::test]
async fn without_a_signing_secret_the_slack_endpoints_refuse_and_healthz_answers() {
    let app = socket_app().await;
    let body = "command=%2Fjit&text=help&user_id=U1&team_id=T1&channel_id=C1";
    for path in ["/slack/commands", "/slack/interactions", "/slack/events"] {
        // Signed with the secret HTTP mode would use: there is none, so nothing passes.
        let (status, _) = app.post_signed(path, body, "application/x-www-form-urlencoded").await;
        assert!(!(200..300).contains(&status), "{path} answered {status}");
        let (status, _) = app
            .post_raw(path, body, "application/x-www-form-urlencoded", None)
            .await;
        assert!(!(200..300).contains(&status), "{path} answered {status}");
    }
    let (status, text) = app.get("/healthz").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
}

#[tokio::test]
async fn app_home_opened_over_the_socket_publishes_the_home_tab() {
    let app = socket_app().await;
    wait_connected(&app, 1).await;
    let event = json!({"type": "event_callback", "event_id": "Ev0HOME1", "team_id": "T0TEAM",
                       "event": {"type": "app_home_opened", "user": REQUESTER, "channel": "D0HOME", "tab": "home"}});
    send_and_ack(&app, "events_api", event).await;
    let calls = app
        .wait_calls("the Home tab published", 1, |c| c.method == "views.publish")
        .await;
    assert_eq!(calls[0].body["user_id"], REQUESTER);
}

/// The real binary in Socket Mode at RUST_LOG=debug: it connects, serves a command, and
/// its output never shows a token, the signing secret or the socket URL's ticket.
#[tokio::test]
async fn the_binary_connects_by_socket_mode_and_logs_no_secret_at_debug() {
    let app = TestApp::start_with(Setup {
        in_process: false,
        ..Setup::default()
    })
    .await;
    let config = app.dir.path().join("jitgate.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SLACK_BOT_TOKEN", fake_slack::BOT_TOKEN)
        .env("SLACK_APP_TOKEN", fake_slack::APP_TOKEN)
        .env_remove("SLACK_SIGNING_SECRET")
        .env_remove("JITGATE_LOG")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let guard = Kill(child);
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let mut o = String::new();
        let _ = stdout.read_to_string(&mut o);
        s + &o
    });
    wait_for("the binary's Socket Mode connections", || async {
        (app.slack.socket.connections() >= 2).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let (_, ack) = send_and_ack(
        &app,
        "slash_commands",
        command_payload(&app, REQUESTER, "request prod-db:read 1h from the binary", "t-bin-1"),
    )
    .await;
    assert!(ack.unwrap()["text"].as_str().unwrap().contains("JIT-1"));
    wait_for("the card", || async {
        (!app.slack.posted_to(APPROVAL_CHANNEL).is_empty()).then_some(())
    })
    .await;
    drop(guard);
    let output = out.join().unwrap();
    assert!(output.contains("Socket Mode connected"), "{output}");
    for secret in [fake_slack::BOT_TOKEN, fake_slack::APP_TOKEN, "fake-ticket", "ticket="] {
        assert!(!output.contains(secret), "`{secret}` appears in the output");
    }
}

#[tokio::test]
async fn a_refused_app_token_is_named_and_the_connection_recovers_once_slack_accepts_it() {
    let mut app = TestApp::start_with(Setup {
        socket_mode: true,
        in_process: false,
        ..Setup::default()
    })
    .await;
    app.slack.fail_next(
        "apps.connections.open",
        vec![Failure::ApiError("invalid_auth"), Failure::ApiError("invalid_auth")],
    );
    app.boot().await;
    let problem = wait_for("the refused app token reported", || async {
        let s = app.state().slack_status.snapshot();
        s.problems.into_iter().find(|p| p.contains("SLACK_APP_TOKEN"))
    })
    .await;
    assert!(
        problem.contains("invalid_auth") && problem.contains("connections:write"),
        "{problem}"
    );
    // The scripted refusals are used up: both slots connect, and the problem is gone.
    wait_connected(&app, 2).await;
    wait_for("the problem cleared", || async {
        let s = app.state().slack_status.snapshot();
        (s.sockets == 2 && !s.problems.iter().any(|p| p.contains("SLACK_APP_TOKEN"))).then_some(())
    })
    .await;
}
