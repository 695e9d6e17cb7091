//! Ending access early, asking for more time, withdrawing, and overlapping grants.

use chrono::Duration;

use crate::support::*;

async fn active(app: &TestApp, text: &str) -> i64 {
    let id = app.request(text).await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    id
}

#[tokio::test]
async fn requester_ends_their_own_grant_early() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:read 2h quick look").await;
    let reply = app.command(REQUESTER, &format!("revoke JIT-{id}")).await;
    assert!(reply.contains(&format!("Revoking JIT-{id}")), "{reply}");
    app.wait_grant(id, "revoked").await;
    app.wait_dm(REQUESTER, "has ended early, as you asked").await;
    app.wait_card_containing(id, "ended early by <@UREQUESTER>").await;
    let (by,): (String,) = sqlx::query_as("SELECT revoked_by FROM grants WHERE request_id = $1")
        .bind(id)
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    assert_eq!(by, REQUESTER);
    // A second revoke is harmless.
    let again = app.command(REQUESTER, &format!("revoke {id}")).await;
    assert!(again.contains("already ended"), "{again}");
    assert_eq!(app.adapter_log().iter().filter(|l| l.starts_with("revoke")).count(), 1);
}

#[tokio::test]
async fn approver_revokes_with_the_card_button() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:write 1h risky").await;
    let card = app.wait_card_containing(id, "jit_revoke").await;
    assert!(card.contains("Revoke access?"), "confirmation dialog: {card}");
    app.click(APPROVER2, "jit_revoke", id).await;
    app.wait_grant(id, "revoked").await;
    app.wait_dm(REQUESTER, "revoked by <@UAPPROVER2>").await;
    let card = app.wait_card_containing(id, "revoked early by <@UAPPROVER2>").await;
    assert!(!card.contains("jit_revoke"), "{card}");
}

#[tokio::test]
async fn group_approver_may_revoke_by_command_after_a_lookup() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:read 1h x").await;
    let reply = app.command("UGROUPMEMBER", &format!("revoke JIT-{id}")).await;
    assert!(reply.contains("Checking whether you may revoke"), "{reply}");
    app.wait_grant(id, "revoked").await;
    let calls = app
        .wait_calls("the outcome", 1, |c| {
            c.method == "response_url" && c.text().contains("Revoking")
        })
        .await;
    assert!(calls[0].text().contains(&format!("JIT-{id}")));
}

#[tokio::test]
async fn others_cannot_revoke() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:read 1h x").await;
    let reply = app.command(OUTSIDER, &format!("revoke JIT-{id}")).await;
    assert!(reply.contains("Checking"), "{reply}");
    let calls = app
        .wait_calls("the refusal", 1, |c| {
            c.method == "response_url" && c.text().contains("Only <@UREQUESTER>")
        })
        .await;
    assert!(calls[0].text().contains("nothing changed"));
    app.click(OUTSIDER, "jit_revoke", id).await;
    app.wait_ephemeral(OUTSIDER, id).await;
    assert_eq!(app.grant_state(id).await.as_deref(), Some("active"));
}

#[tokio::test]
async fn extension_needs_approval_and_moves_the_expiry() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:read 1h long debugging").await;
    let expires = |app: &TestApp| {
        let pool = app.state().db.read.clone();
        async move {
            let (e,): (i64,) = sqlx::query_as("SELECT expires_at FROM grants WHERE request_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            e
        }
    };
    let before = expires(&app).await;
    let reply = app.command(REQUESTER, &format!("extend JIT-{id} 1h still at it")).await;
    assert!(
        reply.contains("Extension request *JIT-") && reply.contains("(+1h)"),
        "{reply}"
    );
    let ext: i64 = reply
        .split("*JIT-")
        .nth(1)
        .unwrap()
        .split('*')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let card = app.wait_card_containing(ext, "jit_approve").await;
    assert!(card.contains(&format!("JIT-{id} by 1h")), "{card}");
    app.approve(APPROVER1, ext).await;
    wait_for("the new expiry", || async {
        (expires(&app).await == before + 3_600_000).then_some(())
    })
    .await;
    app.wait_dm(REQUESTER, "now ends").await;

    // The old expiry passes without a revoke; the new one revokes.
    app.clock.advance(Duration::minutes(61));
    jitgate::jobs::run_due(app.state(), app.state().now_ms()).await.unwrap();
    assert_eq!(app.grant_state(id).await.as_deref(), Some("active"));
    app.clock.advance(Duration::minutes(60));
    app.wait_grant(id, "revoked").await;
}

#[tokio::test]
async fn extension_beyond_the_total_maximum_is_refused() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:read 3h x").await;
    let reply = app.command(REQUESTER, &format!("extend JIT-{id} 2h more")).await;
    assert!(
        reply.contains("has 3h so far") && reply.contains("you can add up to 1h"),
        "{reply}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM requests WHERE kind = 'extension'")
            .await,
        0
    );
    let other = app.command(OUTSIDER, &format!("extend JIT-{id} 1h mine now")).await;
    assert!(other.contains("Only <@UREQUESTER> can extend"), "{other}");
}

#[tokio::test]
async fn self_extension_applies_without_approval_where_allowed() {
    let app = TestApp::start_with(Setup {
        extra_toml: r#"
[[resources]]
name = "staging"
max_duration = "1h"
max_total_duration = "3h"
self_extend = true
approval_channel = "C0APPROVALS"
approvers = ["UAPPROVER1"]
adapter = "demo"
"#
        .into(),
        ..Setup::default()
    })
    .await;
    let id = active(&app, "staging 1h testing").await;
    let reply = app
        .command(REQUESTER, &format!("extend JIT-{id} 1h more testing"))
        .await;
    assert!(reply.starts_with(&format!("Extending JIT-{id} by 1h")), "{reply}");
    app.wait_dm(REQUESTER, "now ends").await;
    let (d,): (i64,) = sqlx::query_as("SELECT duration_secs FROM grants WHERE request_id = $1")
        .bind(id)
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    assert_eq!(d, 7200);
    app.wait_calls("a notice to approvers", 1, |c| {
        c.channel() == APPROVAL_CHANNEL && c.text().contains("self-extension")
    })
    .await;
}

#[tokio::test]
async fn requester_withdraws_a_pending_request() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h never mind").await;
    assert!(app
        .command(OUTSIDER, &format!("cancel JIT-{id}"))
        .await
        .contains("nothing changed"));
    assert!(app
        .command(REQUESTER, &format!("cancel JIT-{id}"))
        .await
        .contains("withdrawn"));
    app.wait_request(id, "cancelled").await;
    app.wait_card_containing(id, "Withdrawn by <@UREQUESTER>").await;
    app.approve(APPROVER1, id).await;
    assert!(app.wait_ephemeral(APPROVER1, id).await.contains("withdrawn"));
}

#[tokio::test]
async fn the_first_of_two_overlapping_grants_does_not_cut_the_second_short() {
    let app = TestApp::start().await;
    let first = active(&app, "prod-db:read 1h first").await;
    app.clock.advance(Duration::minutes(30));
    let second = active(&app, "prod-db:read 2h second").await;

    // The first one's expiry leaves the shared access alone.
    app.clock.advance(Duration::minutes(31));
    app.wait_grant(first, "superseded").await;
    assert_eq!(
        app.adapter_log().iter().filter(|l| l.starts_with("revoke")).count(),
        0,
        "{:?}",
        app.adapter_log()
    );
    app.wait_dm(REQUESTER, &format!("you keep `prod-db:read` under JIT-{second}"))
        .await;

    // The last one to end takes the access away.
    app.clock.advance(Duration::minutes(90));
    app.wait_grant(second, "revoked").await;
    assert_eq!(app.adapter_log().iter().filter(|l| l.starts_with("revoke")).count(), 1);
}

#[tokio::test]
async fn start_up_refuses_while_grants_depend_on_a_removed_resource() {
    let mut app = TestApp::start().await;
    let id = app.request("payments:admin 1h x").await;
    app.approve(APPROVER1, id).await;
    app.approve(APPROVER3, id).await;
    app.wait_grant(id, "active").await;
    app.stop().await;
    // payments is removed from the file.
    let start = app.config_text.find("[[resources]]\nname = \"payments\"").unwrap();
    let end = app.config_text[start..].find("[adapters.demo]").unwrap() + start;
    app.config_text.replace_range(start..end, "");
    let config = jitgate::config::parse(&app.dir.path().join("jitgate.toml"), &app.config_text).unwrap();
    let secrets = jitgate::Secrets {
        bot_token: "x".into(),
        signing_secret: Some("y".into()),
        app_token: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = jitgate::Options {
        clock: app.clock.shared(),
        env_overrides: app.env.clone(),
        ..jitgate::Options::default()
    };
    let err = jitgate::start(config, secrets, options, listener)
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("is for resource `payments`, which is no longer in the file"),
        "{msg}"
    );
    assert!(msg.contains("--revoke-removed"), "{msg}");

    // With the flag, it starts and revokes them.
    app.revoke_removed = true;
    app.boot().await;
    app.wait_grant(id, "revoked").await;
}
