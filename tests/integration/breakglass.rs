//! Break-glass: granted at once with no approver, announced loudly, open for review until
//! an approver acts; refused for people not listed, over its cap or its rate limit.

use chrono::Duration;

use crate::support::*;

pub const BG_USER: &str = "UONCALLER";
pub const SECURITY: &str = "C0SECURITY";

/// A resource that allows break-glass, and the `[break_glass]` table.
pub fn break_glass_toml() -> String {
    format!(
        r#"
[[resources]]
name = "core-db"
roles = ["read", "admin"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "{APPROVAL_CHANNEL}"
approvers = ["{APPROVER1}", "{APPROVER2}"]
approver_groups = ["{GROUP}"]
adapter = "demo"
break_glass = true
break_glass_max_duration = "30m"
break_glass_users = ["{BG_USER}"]

[break_glass]
security_channel = "{SECURITY}"
rate_limit = 1
rate_window = "24h"
remind_after = "10m"
"#
    )
}

async fn app() -> TestApp {
    TestApp::start_with(Setup {
        extra_toml: break_glass_toml(),
        ..Setup::default()
    })
    .await
}

fn id_in(reply: &str) -> i64 {
    reply
        .split("JIT-")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in reply: {reply}"))
}

async fn reviewed_by(app: &TestApp, id: i64) -> Option<String> {
    let row: (Option<String>,) = sqlx::query_as("SELECT reviewed_by FROM break_glass WHERE request_id = $1")
        .bind(id)
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    row.0
}

async fn actions(app: &TestApp, id: i64) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT action FROM audit_log WHERE request_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(&app.state().db.read)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

#[tokio::test]
async fn break_glass_grants_at_once_alerts_and_stays_open_until_an_approver_reviews_it() {
    let app = app().await;
    let reply = app
        .command(
            BG_USER,
            "breakglass core-db:admin 20m primary down <!channel>, approvers unreachable",
        )
        .await;
    assert!(reply.contains("Break-glass JIT-"), "{reply}");
    let id = id_in(&reply);
    app.wait_grant(id, "active").await;
    assert_eq!(app.request_state(id).await, "approved");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("jitgate_decisions_total{verdict=\"approve\",kind=\"break_glass\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM decisions WHERE request_id = {id}"))
            .await,
        0,
        "no approver decided"
    );
    let (duration,): (i64,) = sqlx::query_as("SELECT duration_secs FROM grants WHERE request_id = $1")
        .bind(id)
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    assert_eq!(duration, 20 * 60);

    // Loud: the security channel and the approval channel with @here, the approvers by DM.
    let security = app
        .wait_calls("the security channel's alert", 1, |c| {
            c.method == "chat.postMessage" && c.channel() == SECURITY
        })
        .await;
    let alert = security[0].text();
    assert!(
        alert.contains("<!here>") && alert.contains(&format!("JIT-{id}")),
        "{alert}"
    );
    assert!(alert.contains("&lt;!channel&gt;"), "the reason pings nobody: {alert}");
    app.wait_calls("the approval channel's alert", 1, |c| {
        c.method == "chat.postMessage" && c.channel() == APPROVAL_CHANNEL && c.text().contains("<!here>")
    })
    .await;
    app.wait_dm(APPROVER1, "break-glass").await;
    app.wait_dm(APPROVER2, "break-glass").await;
    // Members of approver groups too (asked of Slack), each once.
    app.wait_dm("UGROUPMEMBER", "break-glass").await;
    assert_eq!(
        app.dms(APPROVER1).iter().filter(|t| t.contains("break-glass")).count(),
        1
    );
    assert!(app.dms(BG_USER).iter().all(|t| !t.contains("Please review")));

    // The card stays open for review.
    let card = app.wait_card_containing(id, "Access granted").await;
    assert!(card.contains("Review required"), "{card}");
    assert!(card.contains("Reviewed — OK") && card.contains("Revoke now"), "{card}");
    assert!(card.contains("jit_reviewed"), "{card}");
    assert!(actions(&app, id).await.contains(&"breakglass.used".to_string()));

    // Checked on the server like Approve: not the requester, not an outsider.
    app.click(BG_USER, "jit_reviewed", id).await;
    let refused = app.wait_ephemeral(BG_USER, id).await;
    assert!(refused.contains("your own"), "{refused}");
    app.click(OUTSIDER, "jit_reviewed", id).await;
    let refused = app.wait_ephemeral(OUTSIDER, id).await;
    assert!(refused.contains("Only an approver"), "{refused}");
    assert_eq!(reviewed_by(&app, id).await, None);

    // A member of an approver group may review.
    app.click("UGROUPMEMBER", "jit_reviewed", id).await;
    let done = app.wait_ephemeral("UGROUPMEMBER", id).await;
    assert!(done.contains("reviewed"), "{done}");
    assert_eq!(reviewed_by(&app, id).await.as_deref(), Some("UGROUPMEMBER"));
    let card = app.wait_card_containing(id, "Reviewed by <@UGROUPMEMBER>").await;
    assert!(!card.contains("jit_reviewed"), "{card}");
    assert!(card.contains("Revoke now"), "access stays until it ends: {card}");
    app.wait_dm(BG_USER, "was reviewed by <@UGROUPMEMBER>").await;

    // A second review changes nothing.
    app.click(APPROVER1, "jit_reviewed", id).await;
    let again = app.wait_ephemeral(APPROVER1, id).await;
    assert!(again.contains("already reviewed"), "{again}");
    assert_eq!(reviewed_by(&app, id).await.as_deref(), Some("UGROUPMEMBER"));
    let log = actions(&app, id).await;
    assert_eq!(log.iter().filter(|a| *a == "breakglass.reviewed").count(), 1, "{log:?}");
}

#[tokio::test]
async fn unreviewed_break_glass_reminds_until_an_approver_revokes_it() {
    let app = app().await;
    let id = id_in(&app.command(BG_USER, "breakglass core-db 15m disk full").await);
    app.wait_grant(id, "active").await;

    app.clock.advance(Duration::minutes(10));
    app.wait_calls("a review reminder", 1, |c| {
        c.channel() == APPROVAL_CHANNEL && c.text().contains("waited") && c.text().contains("for review")
    })
    .await;
    app.clock.advance(Duration::minutes(20) + Duration::seconds(1));
    // The grant ended on time (15m), yet the review is still owed: reminders go on.
    app.wait_grant(id, "revoked").await;
    app.wait_calls("a second review reminder", 2, |c| {
        c.channel() == APPROVAL_CHANNEL && c.text().contains("for review")
    })
    .await;
    assert_eq!(reviewed_by(&app, id).await, None);

    // "Revoke now" by an approver counts as the review.
    let id2 = {
        app.clock.advance(Duration::hours(25));
        id_in(&app.command(BG_USER, "breakglass core-db 15m disk full again").await)
    };
    app.wait_grant(id2, "active").await;
    app.click(APPROVER2, "jit_revoke", id2).await;
    app.wait_grant(id2, "revoked").await;
    let row: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT reviewed_by, review FROM break_glass WHERE request_id = $1")
            .bind(id2)
            .fetch_one(&app.state().db.read)
            .await
            .unwrap();
    assert_eq!(row, (Some(APPROVER2.into()), Some("revoked".into())));
    app.wait_card_containing(id2, "revoked").await;
}

#[tokio::test]
async fn break_glass_is_refused_to_others_over_its_cap_and_over_the_rate_limit() {
    let app = app().await;
    let reply = app.command(OUTSIDER, "breakglass core-db 10m let me in").await;
    assert!(reply.contains("not allowed to use break-glass"), "{reply}");
    let reply = app.command(BG_USER, "breakglass core-db 2h long outage").await;
    assert!(reply.contains("at most 30m"), "{reply}");
    let reply = app.command(BG_USER, "breakglass prod-db 10m outage").await;
    assert!(reply.contains("does not allow break-glass"), "{reply}");
    let reply = app.command(BG_USER, "breakglass core-db 10m").await;
    assert!(reply.contains("why"), "a reason is required: {reply}");
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);

    let first = id_in(&app.command(BG_USER, "breakglass core-db 10m outage").await);
    app.wait_grant(first, "active").await;
    let reply = app.command(BG_USER, "breakglass core-db 10m still out").await;
    assert!(reply.contains("the most allowed"), "{reply}");
    assert_eq!(app.count("SELECT COUNT(*) FROM break_glass").await, 1);
}

#[tokio::test]
async fn break_glass_through_a_listed_group_is_decided_after_asking_slack() {
    let mut toml = break_glass_toml();
    toml = toml.replace(
        &format!("break_glass_users = [\"{BG_USER}\"]"),
        &format!("break_glass_groups = [\"{GROUP}\"]"),
    );
    let app = TestApp::start_with(Setup {
        extra_toml: toml,
        ..Setup::default()
    })
    .await;
    let reply = app.command("UGROUPMEMBER", "breakglass core-db 10m outage").await;
    assert!(reply.contains("Checking"), "{reply}");
    let later = app
        .wait_calls("the break-glass answer", 1, |c| {
            c.method == "response_url" && c.text().contains("Break-glass JIT-")
        })
        .await;
    let id = id_in(later[0].text());
    app.wait_grant(id, "active").await;
}
