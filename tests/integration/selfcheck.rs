//! The start-up Slack self-check and `check-config --online`: a refused token, a missing
//! scope, a private channel the bot was never invited to — all named with their fix, all
//! at once, and none of them fatal.

use crate::support::*;

async fn checked_app(extra_toml: &str, prepare: impl FnOnce(&FakeSlack)) -> TestApp {
    let mut app = TestApp::start_with(Setup {
        self_check: true,
        in_process: false,
        extra_toml: extra_toml.into(),
        ..Setup::default()
    })
    .await;
    app.slack.set_channel(APPROVAL_CHANNEL, "approvals");
    prepare(&app.slack);
    app.boot().await;
    app
}

/// Waits for the self-check's first result and returns its problems.
async fn problems(app: &TestApp) -> Vec<String> {
    wait_for("the self-check's result", || async {
        let s = app.state().slack_status.snapshot();
        (!s.problems.iter().any(|p| p.contains("has not finished"))).then_some(s.problems)
    })
    .await
}

#[tokio::test]
async fn a_refused_bot_token_is_reported_the_scheduler_keeps_running_and_it_recovers() {
    let app = checked_app("", |slack| slack.set_token_revoked(true)).await;
    let found = problems(&app).await;
    assert!(
        found
            .iter()
            .any(|p| p.contains("SLACK_BOT_TOKEN") && p.contains("invalid_auth")),
        "{found:?}"
    );
    assert!(!app.state().slack_status.snapshot().ready);
    // Still serving, still storing requests (the card waits in the outbox).
    let id = app.request("prod-db:read 1h while Slack refuses us").await;
    assert_eq!(app.request_state(id).await, "pending");
    // The card was tried and refused (invalid_auth), so it waits minutes for its retry...
    wait_for("the card to be refused", || async {
        let calls = app.slack.calls();
        calls
            .iter()
            .any(|c| c.method == "chat.postMessage" && !c.ok)
            .then_some(())
    })
    .await;
    // ...until the token is fixed: the retried check passes, and the card goes out at once.
    app.slack.set_token_revoked(false);
    wait_for("the self-check to pass on retry", || async {
        app.state().slack_status.snapshot().ready.then_some(())
    })
    .await;
    app.wait_card_containing(id, "jit_approve").await;
}

#[tokio::test]
async fn a_missing_scope_is_named_with_the_manifest_line_to_add() {
    let app = checked_app("", |slack| {
        slack.set_scopes(&["commands", "chat:write", "chat:write.public"])
    })
    .await;
    let found = problems(&app).await;
    let scope = found
        .iter()
        .find(|p| p.contains("usergroups:read"))
        .unwrap_or_else(|| panic!("{found:?}"));
    assert!(
        scope.contains("`- usergroups:read`") && scope.contains("manifest/slack-app.yaml"),
        "{scope}"
    );
    // Not blocking: the token works, so jitgate is ready.
    assert!(app.state().slack_status.snapshot().ready);
}

#[tokio::test]
async fn a_private_channel_the_bot_is_not_in_is_named_with_the_invite_fix_and_all_problems_come_together() {
    let app = checked_app("[reconcile]\ninterval = \"off\"\nchannel = \"G0SECURITY\"\n", |slack| {
        slack.set_channel("G0SECURITY", "security");
        slack.set_member("G0SECURITY", false);
        slack.set_scopes(&["commands", "chat:write", "chat:write.public"]);
    })
    .await;
    let found = problems(&app).await;
    assert_eq!(found.len(), 2, "the channel and the scope, together: {found:?}");
    let channel = found
        .iter()
        .find(|p| p.contains("G0SECURITY"))
        .unwrap_or_else(|| panic!("{found:?}"));
    assert!(
        channel.contains("/invite @jitgate") && channel.contains("[reconcile] channel"),
        "{channel}"
    );
}

/// `jitgate check-config --online` against the fake Slack: one line per check, non-zero
/// exit on a failure, zero once fixed.
#[tokio::test]
async fn check_config_online_prints_one_line_per_check_and_fails_on_a_problem() {
    let app = TestApp::start_with(Setup {
        in_process: false,
        ..Setup::default()
    })
    .await;
    let config = app.dir.path().join("jitgate.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let run = || {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
                    .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
                    .args(["check-config", "--online", "--config"])
                    .arg(&config)
                    .env("SLACK_BOT_TOKEN", fake_slack::BOT_TOKEN)
                    .env("SLACK_APP_TOKEN", fake_slack::APP_TOKEN)
                    .env_remove("SLACK_SIGNING_SECRET")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    // The approval channel is unknown to Slack.
    let out = run().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("ok    bot token (SLACK_BOT_TOKEN)"), "{stdout}");
    assert!(stdout.contains("ok    app token (SLACK_APP_TOKEN)"), "{stdout}");
    assert!(stdout.contains("ok    scopes"), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL  channel {APPROVAL_CHANNEL}")) && stdout.contains("/invite @jitgate"),
        "{stdout}"
    );
    app.slack.set_channel(APPROVAL_CHANNEL, "approvals");
    let out = run().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("all 4 checks passed"), "{stdout}");
}
