//! On-call auto-approval end to end: signed slash commands from incident channels, the
//! `auto_approve` job, fake PagerDuty/Opsgenie, and what Slack and the database end up with.

mod fakes;
mod sources;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::*;
use fakes::{FakePagerDuty, Mode, PD_TOKEN};

const INCIDENT: &str = "C0INC42";
const GENERAL: &str = "C0GENERAL";
const REQUESTER_EMAIL: &str = "requester@example.com";

fn oncall_toml(pd: &FakePagerDuty, policy_extra: &str) -> String {
    format!(
        r#"
[oncall]
source_timeout = "1s"
incident_channels = ["C0INCLISTED"]
incident_channel_prefixes = ["inc-"]

[[oncall.policies]]
name = "db-on-call"
allow = ["prod-db:read", "prod-db:write"]
sources = ["pd"]
max_duration = "2h"
{policy_extra}

[oncall.sources.pd]
type = "pagerduty"
base_url = "{base}"
token_env = "JIT_TEST_PD_TOKEN"
schedule_ids = ["PSCHED1"]
"#,
        base = pd.base_url()
    )
}

async fn start_with_toml(extra_toml: String) -> TestApp {
    let app = TestApp::start_with(Setup {
        extra_toml,
        env: BTreeMap::from([("JIT_TEST_PD_TOKEN".to_string(), PD_TOKEN.to_string())]),
        ..Setup::default()
    })
    .await;
    app.slack.set_channel(INCIDENT, "inc-42-db-down");
    app.slack.set_channel(GENERAL, "general");
    app.slack.set_email(REQUESTER, Some(REQUESTER_EMAIL));
    app
}

async fn start(pd: &FakePagerDuty, policy_extra: &str) -> TestApp {
    start_with_toml(oncall_toml(pd, policy_extra)).await
}

fn requester_on_call(pd: &FakePagerDuty) {
    pd.add_oncall(
        "PREQUESTER",
        REQUESTER_EMAIL,
        ("PSCHED1", "Primary DB"),
        ("PEP1", "Databases"),
        1,
        None,
        None,
    );
}

/// `/jit request <text>` as `user` from `channel`: the new id and the reply.
async fn request_in(app: &TestApp, user: &str, channel: &str, text: &str) -> (i64, String) {
    let reply = app.command_in(user, channel, &format!("request {text}")).await;
    let id = reply
        .split("JIT-")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in reply: {reply}"));
    (id, reply)
}

/// Waits for the DM telling `user` that request `id` was not auto-approved.
async fn wait_declined_dm(app: &TestApp, user: &str, id: i64) -> String {
    let label = format!("JIT-{id} ");
    wait_for(&format!("the not-auto-approved DM for JIT-{id}"), || async {
        app.dms(user)
            .into_iter()
            .find(|t| t.contains(&label) && t.contains("was not approved automatically"))
    })
    .await
}

async fn decisions_of(app: &TestApp, id: i64) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT approver_id, reason FROM decisions WHERE request_id = $1")
        .bind(id)
        .fetch_all(&app.state().db.read)
        .await
        .unwrap()
}

#[tokio::test]
async fn on_call_request_in_an_incident_channel_is_auto_approved_granted_and_announced() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let app = start(&pd, "").await;

    let (id, reply) = request_in(&app, REQUESTER, INCIDENT, "prod-db:write 1h primary is down").await;
    assert!(reply.contains("being checked against on-call"), "{reply}");

    app.wait_grant(id, "active").await;
    assert_eq!(app.request_state(id).await, "approved");
    assert!(app
        .adapter_log()
        .iter()
        .any(|l| l.starts_with("grant ") && l.contains("prod-db write")));

    // A short, visible notice in the incident channel.
    let notice = wait_for("the notice in the incident channel", || async {
        app.slack
            .posted_to(INCIDENT)
            .into_iter()
            .map(|c| c.text().to_string())
            .find(|t| t.contains(" got "))
    })
    .await;
    assert!(
        notice.contains("<@UREQUESTER> got `prod-db:write` for 1h") && notice.contains("schedule *Primary DB*"),
        "{notice}"
    );
    // The requester hears why; approvers see the card, marked auto-approved, with the evidence.
    let dm = app.wait_dm(REQUESTER, "approved automatically").await;
    assert!(dm.contains("PagerDuty schedule *Primary DB* (level 1"), "{dm}");
    let card = app.wait_card_containing(id, "Auto-approved by on-call policy").await;
    assert!(card.contains("Primary DB") && !card.contains("jit_approve"), "{card}");
    assert_eq!(app.slack.posted_to(APPROVAL_CHANNEL).len(), 1, "one card");

    // The decision is the policy's, with the evidence as its reason.
    let decisions = decisions_of(&app, id).await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].0, "oncall:db-on-call");
    let evidence: Value = serde_json::from_str(decisions[0].1.as_deref().unwrap()).unwrap();
    assert_eq!(evidence["source"], "pd");
    assert_eq!(evidence["source_type"], "pagerduty");
    assert_eq!(evidence["schedule"], "Primary DB");
    assert_eq!(evidence["schedule_id"], "PSCHED1");
    assert_eq!(evidence["level"], 1);
    assert_eq!(evidence["channel"], INCIDENT);
    assert_eq!(evidence["channel_name"], "inc-42-db-down");
    assert_eq!(evidence["matched_by"], "email");
    let audited = app
        .count(
            "SELECT COUNT(*) FROM audit_log WHERE actor = 'oncall:db-on-call' \
             AND action IN ('decision.approve', 'request.approved') AND details LIKE '%PSCHED1%'",
        )
        .await;
    assert_eq!(audited, 2);

    // PagerDuty was asked about this moment, with the token.
    let asked = pd.seen_at("/oncalls");
    let now = app.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(asked[0].one("since"), Some(now.as_str()));
    // The token is nowhere in what jitgate stored.
    let leaked = app
        .count(&format!(
            "SELECT (SELECT COUNT(*) FROM audit_log WHERE details LIKE '%{PD_TOKEN}%') + \
             (SELECT COUNT(*) FROM decisions WHERE reason LIKE '%{PD_TOKEN}%')"
        ))
        .await;
    assert_eq!(leaked, 0);
}

#[tokio::test]
async fn the_command_answers_without_waiting_for_on_call_sources() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    pd.set_mode(Mode::Hang);
    let toml = oncall_toml(&pd, "").replace("source_timeout = \"1s\"", "source_timeout = \"5s\"");
    let app = start_with_toml(toml).await;
    let started = std::time::Instant::now();
    let (id, reply) = request_in(&app, REQUESTER, INCIDENT, "prod-db:read 1h look").await;
    // PagerDuty never answers and the job waits 5s for it; the reply did not wait.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(reply.contains("being checked against on-call"), "{reply}");
    let dm = wait_declined_dm(&app, REQUESTER, id).await;
    assert!(dm.contains("did not answer within 5s"), "{dm}");
}

#[tokio::test]
async fn requests_outside_incident_channels_are_never_auto_approved() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let app = start(&pd, "").await;

    let (id, _) = request_in(&app, REQUESTER, GENERAL, "prod-db:write 1h tidy up").await;
    app.wait_card_containing(id, "Waiting for an approver").await;
    let dm = wait_declined_dm(&app, REQUESTER, id).await;
    assert!(dm.contains("#general is not an incident channel"), "{dm}");
    assert!(
        dm.contains(&format!("waiting for approval in <#{APPROVAL_CHANNEL}>")),
        "{dm}"
    );
    assert_eq!(app.request_state(id).await, "pending");
    assert!(decisions_of(&app, id).await.is_empty());
    assert!(pd.seen().is_empty(), "on-call status was never asked");

    // A direct message cannot be an incident channel: no check at all.
    let (dm_id, reply) = request_in(&app, REQUESTER, "D0DIRECT", "prod-db:write 1h from a DM").await;
    assert!(reply.contains("is waiting for approval"), "{reply}");
    let jobs = app
        .count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'auto_approve' AND request_id = {dm_id}"
        ))
        .await;
    assert_eq!(jobs, 0);
    app.wait_card_containing(dm_id, "Waiting for an approver").await;

    // Approvers decide as usual.
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
}

#[tokio::test]
async fn on_call_source_failures_fall_back_to_normal_approval() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let app = start(&pd, "").await;
    for (mode, why) in [
        (Mode::ServerError, "the on-call source `pd` answered HTTP 500"),
        (
            Mode::Malformed,
            "the on-call source `pd` answered something jitgate cannot read",
        ),
        (Mode::Hang, "the on-call source `pd` did not answer within 1s"),
    ] {
        pd.set_mode(mode);
        let (id, _) = request_in(&app, REQUESTER, INCIDENT, "prod-db:write 1h db down").await;
        let dm = wait_declined_dm(&app, REQUESTER, id).await;
        assert!(dm.contains(why), "{mode:?}: {dm}");
        app.wait_card_containing(id, "Waiting for an approver").await;
        assert_eq!(app.request_state(id).await, "pending", "{mode:?}");
        assert!(decisions_of(&app, id).await.is_empty(), "{mode:?}");
        let declined = app
            .count(&format!(
                "SELECT COUNT(*) FROM audit_log WHERE request_id = {id} AND action = 'auto_approval.declined' \
                 AND details LIKE '%source_failed%'"
            ))
            .await;
        assert_eq!(declined, 1, "{mode:?}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM grants").await, 0);
}

#[tokio::test]
async fn someone_who_cannot_be_matched_goes_to_normal_approval() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let app = start(&pd, "").await;
    app.slack.set_email("U0NOMAIL", None);
    let (id, _) = request_in(&app, "U0NOMAIL", INCIDENT, "prod-db:read 1h db down").await;
    let dm = wait_declined_dm(&app, "U0NOMAIL", id).await;
    assert!(dm.contains("Slack shows no e-mail address"), "{dm}");
    assert!(dm.contains("oncall.sources.pd.users"), "{dm}");
    assert_eq!(app.request_state(id).await, "pending");

    // Someone Slack knows but who is not on call.
    app.slack.set_email("U0BYSTANDER", Some("bystander@example.com"));
    let (id, _) = request_in(&app, "U0BYSTANDER", INCIDENT, "prod-db:read 1h curious").await;
    let dm = wait_declined_dm(&app, "U0BYSTANDER", id).await;
    assert!(dm.contains("you are not on call right now in pd"), "{dm}");
}

#[tokio::test]
async fn the_rate_limit_counts_auto_approvals_from_the_database_across_restarts() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let mut app = start(&pd, "rate_limit = 1\nrate_window = \"24h\"").await;
    let (first, _) = request_in(&app, REQUESTER, INCIDENT, "prod-db:read 1h first").await;
    app.wait_grant(first, "active").await;

    app.stop().await;
    app.boot().await;

    let (second, _) = request_in(&app, REQUESTER, INCIDENT, "prod-db:read 1h second").await;
    let dm = wait_declined_dm(&app, REQUESTER, second).await;
    assert!(
        dm.contains("you have had 1 auto-approval from policy `db-on-call` in the last 1d"),
        "{dm}"
    );
    app.wait_card_containing(second, "Waiting for an approver").await;
    assert_eq!(app.request_state(second).await, "pending");

    // A day later the window has moved on.
    app.clock.advance(chrono::Duration::hours(25));
    let (third, _) = request_in(&app, REQUESTER, INCIDENT, "prod-db:read 1h third").await;
    app.wait_request(third, "approved").await;
}

#[tokio::test]
async fn unlisted_roles_and_long_durations_go_straight_to_the_approvers() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let app = start(&pd, "").await;

    let (id, reply) = request_in(&app, REQUESTER, INCIDENT, "payments:admin 30m refund").await;
    assert!(reply.contains("is waiting for approval"), "{reply}");
    app.wait_card_containing(id, "Waiting for").await;

    let (long, reply) = request_in(&app, REQUESTER, INCIDENT, "prod-db:write 3h long job").await;
    assert!(reply.contains("is waiting for approval"), "{reply}");
    assert!(
        reply.contains("On-call auto-approval covers at most 2h"),
        "the requester learns how to be approved on call: {reply}"
    );
    app.wait_card_containing(long, "Waiting for an approver").await;

    let jobs = app.count("SELECT COUNT(*) FROM jobs WHERE kind = 'auto_approve'").await;
    assert_eq!(jobs, 0);
    assert!(pd.seen().is_empty());
}

#[tokio::test]
async fn the_stricter_mode_needs_an_open_incident_assigned_to_the_requester() {
    let pd = FakePagerDuty::start().await;
    requester_on_call(&pd);
    let app = start(&pd, "require_open_incident = true").await;

    let (id, _) = request_in(&app, REQUESTER, INCIDENT, "prod-db:write 1h first").await;
    let dm = wait_declined_dm(&app, REQUESTER, id).await;
    assert!(
        dm.contains("open (triggered or acknowledged) PagerDuty incident"),
        "{dm}"
    );
    assert_eq!(app.request_state(id).await, "pending");

    pd.add_incident("QDBDOWN", 4711, "Primary DB down", "acknowledged", "PREQUESTER");
    let (id, _) = request_in(&app, REQUESTER, INCIDENT, "prod-db:write 1h second").await;
    app.wait_grant(id, "active").await;
    let notice = wait_for("the notice naming the incident", || async {
        app.slack
            .posted_to(INCIDENT)
            .into_iter()
            .map(|c| c.text().to_string())
            .find(|t| t.contains("incident #4711"))
    })
    .await;
    assert!(notice.contains("“Primary DB down”"), "{notice}");
    let incidents = pd.seen_at("/incidents");
    assert_eq!(incidents.last().unwrap().all("user_ids[]"), ["PREQUESTER"]);
    let decisions = decisions_of(&app, id).await;
    let evidence: Value = serde_json::from_str(decisions[0].1.as_deref().unwrap()).unwrap();
    assert_eq!(evidence["incident"]["id"], "QDBDOWN");
}

#[tokio::test]
async fn a_static_rotation_approves_whoever_is_on_call_in_a_listed_channel() {
    let today = chrono::Utc::now().date_naive() - chrono::Duration::days(2);
    let app = start_with_toml(format!(
        r#"
[oncall]
incident_channels = ["C0INCLISTED"]

[[oncall.policies]]
name = "dba"
allow = ["prod-db:*"]
sources = ["dba-rota"]

[oncall.sources.dba-rota]
type = "static"
schedule_name = "DBA daily"
members = ["{REQUESTER}"]
time_zone = "Europe/Berlin"
start = "{today}"
handoff_time = "09:00"
rotation_length = "1d"
"#
    ))
    .await;
    let (id, _) = request_in(&app, REQUESTER, "C0INCLISTED", "prod-db:read 30m check").await;
    app.wait_grant(id, "active").await;
    let decisions = decisions_of(&app, id).await;
    assert_eq!(decisions[0].0, "oncall:dba");
    let evidence: Value = serde_json::from_str(decisions[0].1.as_deref().unwrap()).unwrap();
    assert_eq!(evidence["source_type"], "static");
    assert_eq!(evidence["matched_by"], "slack_id");
    assert!(evidence["shift_start"].as_i64().is_some() && evidence["shift_end"].as_i64().is_some());
    app.wait_card_containing(id, "rotation *DBA daily*").await;

    // Someone else in the same channel is not on this rotation.
    let (other, _) = request_in(&app, APPROVER3, "C0INCLISTED", "prod-db:read 30m me too").await;
    let dm = wait_declined_dm(&app, APPROVER3, other).await;
    assert!(dm.contains("not on call right now"), "{dm}");
}
