//! `jitgate policy explain` (the real binary) and `/jit explain` in Slack.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::breakglass::{break_glass_toml, BG_USER};
use crate::support::*;

const ON_CALL: &str = "UONCALLDBA";
const INCIDENT: &str = "C0INCLISTED";

fn oncall_toml() -> String {
    let start = chrono::Utc::now().date_naive() - chrono::Duration::days(2);
    format!(
        r#"
[oncall]
incident_channels = ["{INCIDENT}"]

[[oncall.policies]]
name = "dba"
allow = ["prod-db:read"]
sources = ["dba-rota"]
max_duration = "2h"

[oncall.sources.dba-rota]
type = "static"
schedule_name = "DBA daily"
members = ["{ON_CALL}"]
time_zone = "UTC"
start = "{start}"
rotation_length = "1d"
"#
    )
}

async fn app() -> (TestApp, PathBuf) {
    let app = TestApp::start_with(Setup {
        extra_toml: oncall_toml() + &break_glass_toml(),
        ..Setup::default()
    })
    .await;
    let path = app.dir.path().join("jitgate.toml");
    std::fs::write(&path, &app.config_text).unwrap();
    (app, path)
}

fn explain(config: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["policy", "explain"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SLACK_BOT_TOKEN")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn policy_explain_names_approvers_groups_and_why_on_call_does_not_apply() {
    let (_app, config) = app().await;
    let text = ok(explain(
        &config,
        &[
            "--user",
            REQUESTER,
            "--resource",
            "prod-db:read",
            "--channel",
            "C0GENERAL",
        ],
    ));
    assert!(
        text.contains(&format!("{REQUESTER} may request prod-db:read for 1h")),
        "{text}"
    );
    assert!(text.contains("up to 4h"), "{text}");
    assert!(
        text.contains(&format!("{APPROVER1}, {APPROVER2}, group {GROUP}")),
        "{text}"
    );
    assert!(text.contains("SLACK_BOT_TOKEN is not set"), "{text}");
    assert!(text.contains("One approval needed"), "{text}");
    assert!(text.contains("cannot approve their own request"), "{text}");
    assert!(
        text.contains("would not be auto-approved: not an incident channel"),
        "{text}"
    );
    assert!(text.contains("Break-glass: not enabled"), "{text}");

    // From the incident channel, someone not on the rota is told so.
    let text = ok(explain(
        &config,
        &["--user", REQUESTER, "--resource", "prod-db:read", "--channel", INCIDENT],
    ));
    assert!(text.contains("would not be auto-approved now: not on call"), "{text}");

    // Over the policy's cap, naming it.
    let text = ok(explain(
        &config,
        &[
            "--user",
            ON_CALL,
            "--resource",
            "prod-db:read",
            "--channel",
            INCIDENT,
            "--duration",
            "3h",
        ],
    ));
    assert!(text.contains("over the on-call cap of 2h"), "{text}");

    // Not allowlisted: the write role.
    let text = ok(explain(
        &config,
        &["--user", ON_CALL, "--resource", "prod-db:write", "--channel", INCIDENT],
    ));
    assert!(text.contains("not allowlisted"), "{text}");

    // Longer than the resource allows: may not request.
    let text = ok(explain(
        &config,
        &["--user", REQUESTER, "--resource", "prod-db", "--duration", "5h"],
    ));
    assert!(text.contains("may not request"), "{text}");

    // An approver asking about their own request is told they need another approver.
    let text = ok(explain(&config, &["--user", APPROVER1, "--resource", "prod-db"]));
    assert!(text.contains("needs another approver"), "{text}");

    // Two approvals.
    let text = ok(explain(&config, &["--user", REQUESTER, "--resource", "payments"]));
    assert!(text.contains("2 approvals"), "{text}");
}

#[tokio::test]
async fn policy_explain_says_when_on_call_would_auto_approve_and_when_break_glass_is_available() {
    let (_app, config) = app().await;
    let text = ok(explain(
        &config,
        &["--user", ON_CALL, "--resource", "prod-db:read", "--channel", INCIDENT],
    ));
    assert!(text.contains("would be auto-approved now by policy dba"), "{text}");
    assert!(text.contains("DBA daily"), "{text}");

    let text = ok(explain(&config, &["--user", BG_USER, "--resource", "core-db"]));
    assert!(text.contains("Break-glass: available"), "{text}");
    assert!(text.contains("up to 30m"), "{text}");
    let text = ok(explain(&config, &["--user", REQUESTER, "--resource", "core-db"]));
    assert!(text.contains("Break-glass: not available"), "{text}");
}

#[tokio::test]
async fn policy_explain_of_an_unknown_resource_fails_and_names_it() {
    let (_app, config) = app().await;
    let out = explain(&config, &["--user", REQUESTER, "--resource", "nosuch-db"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuch-db") && err.contains("prod-db"), "{err}");
    let out = explain(&config, &["--user", "alice", "--resource", "prod-db"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Slack user ID"));
}

#[tokio::test]
async fn jit_explain_answers_in_slack_with_group_members_from_slack() {
    let (app, _) = app().await;
    let reply = app.command_in(ON_CALL, INCIDENT, "explain prod-db:read").await;
    assert!(reply.contains("Working out"), "{reply}");
    let answer = app
        .wait_calls("the explain answer", 1, |c| {
            c.method == "response_url" && c.text().contains("Policy for")
        })
        .await;
    let text = answer[0].text();
    assert!(text.contains("may request `prod-db:read`"), "{text}");
    // The group is resolved through Slack.
    assert!(text.contains("<@UGROUPMEMBER>"), "{text}");
    assert!(text.contains("would be auto-approved now by policy dba"), "{text}");

    let reply = app.command(REQUESTER, "explain nosuch").await;
    assert!(reply.contains("no resource called `nosuch`"), "{reply}");
}
