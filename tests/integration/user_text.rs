//! One rule for what people type: the same length limit and refused characters for
//! request and extension reasons, decoded once; and an adapter that cannot take a stored
//! reason fails once, cleanly, with nothing internal in the message.

use crate::support::*;

async fn active(app: &TestApp, text: &str) -> i64 {
    let id = app.request(text).await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    id
}

#[tokio::test]
async fn extension_reasons_follow_the_request_rule_and_are_decoded_once() {
    let app = TestApp::start().await;
    let id = active(&app, "prod-db:read 1h long debugging").await;
    let extensions = || app.count("SELECT COUNT(*) FROM requests WHERE kind = 'extension'");

    let long = "x".repeat(20_000);
    let reply = app.command(REQUESTER, &format!("extend JIT-{id} 1h {long}")).await;
    assert!(
        reply.contains("20000 characters long") && reply.contains("under 500"),
        "{reply}"
    );
    let reply = app
        .command(REQUESTER, &format!("extend JIT-{id} 1h evil\u{202E}txt"))
        .await;
    assert!(
        reply.contains("right-to-left override") && reply.contains("remove it"),
        "{reply}"
    );
    assert_eq!(extensions().await, 0, "refused extensions store nothing");

    // Typed `&lt;!channel&gt;`: Slack sends it escaped once more; jitgate decodes once.
    let reply = app
        .command(REQUESTER, &format!("extend JIT-{id} 1h &amp;lt;!channel&amp;gt; more"))
        .await;
    assert!(reply.contains("Extension request"), "{reply}");
    let (reason,): (String,) = sqlx::query_as("SELECT reason FROM requests WHERE kind = 'extension'")
        .fetch_one(&app.state().db.read)
        .await
        .unwrap();
    assert_eq!(reason, "&lt;!channel&gt; more");

    // Requests follow the same rule.
    let reply = app.command(REQUESTER, "request prod-db:read 1h bell\u{7}ring").await;
    assert!(reply.contains("U+0007") && reply.contains("remove it"), "{reply}");
}

#[tokio::test]
async fn a_reason_the_exec_adapter_cannot_pass_fails_once_and_its_cleanup_ends() {
    crate::sqlite_only!("PostgreSQL text cannot hold a NUL byte at all");
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h before the upgrade").await;
    // A reason stored before the one rule existed, with a NUL byte in it.
    sqlx::query("UPDATE requests SET reason = 'before' || char(0) || 'upgrade' WHERE id = $1")
        .bind(id)
        .execute(&app.state().db.write)
        .await
        .unwrap();
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "failed").await;
    let dm = app.wait_dm(REQUESTER, "failed after 1 attempt").await;
    assert!(dm.contains("cannot pass this grant's details"), "{dm}");
    let dir = app.dir.path().display().to_string();
    for text in app.slack.calls().iter().map(|c| c.all_text()) {
        assert!(
            !text.contains(&dir) && !text.contains("adapter.sh"),
            "internal path shown: {text}"
        );
    }
    wait_for("the clean-up revoke to end", || async {
        (app.count(&format!(
            "SELECT COUNT(*) FROM jobs WHERE request_id = {id} AND kind = 'revoke' AND state = 'done'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    // Hours later nothing is retried or alerted on.
    app.clock.advance(chrono::Duration::hours(3));
    jitgate::jobs::run_due(app.state(), app.state().now_ms()).await.unwrap();
    assert_eq!(
        app.count(&format!(
            "SELECT attempts FROM jobs WHERE request_id = {id} AND kind = 'revoke'"
        ))
        .await,
        0
    );
    assert!(
        app.adapter_log().is_empty(),
        "the program never ran: {:?}",
        app.adapter_log()
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'grant.cleanup_skipped'")
            .await,
        1
    );
    assert!(!app.slack.calls().iter().any(|c| c.all_text().contains("is failing")));
}
