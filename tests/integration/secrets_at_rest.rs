//! A generated credential, once delivered and erased, is in no file jitgate writes: not
//! the database, not its WAL or shared-memory index — at once, after SIGTERM, and after
//! SIGKILL by the next start. The real binary, with a webhook adapter that hands out a
//! fresh password on every grant, and a byte scan of the files.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};

use crate::crash::{scalar, Bot};
use crate::support::*;

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789abcdef";

/// A webhook receiver answering every grant with `password: pw-marker-<n>`.
async fn password_webhook() -> (String, Arc<AtomicUsize>) {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<serde_json::Value>| {
            let c = c.clone();
            async move {
                if body["action"] == "grant" {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    Json(serde_json::json!({ "state": "acct", "private_note": format!("password: pw-marker-{n}") }))
                } else {
                    Json(serde_json::json!({}))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), counter)
}

/// The names of the database files holding `needle`, by byte scan.
fn files_holding(app: &TestApp, needle: &str) -> Vec<String> {
    ["jitgate.db", "jitgate.db-wal", "jitgate.db-shm", "jitgate.db-journal"]
        .iter()
        .filter(|name| {
            std::fs::read(app.dir.path().join(name))
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|n| n.to_string())
        .collect()
}

async fn wait_gone(app: &TestApp, needle: &str, when: &str) {
    wait_for(&format!("{needle} to leave every database file {when}"), || async {
        files_holding(app, needle).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_delivered_credential_is_in_no_file_after_delivery_sigterm_or_sigkill() {
    let (url, _counter) = password_webhook().await;
    let mut app = TestApp::start_with(Setup {
        clock: TestClock::System,
        in_process: false,
        extra_toml: format!(
            r#"
[[resources]]
name = "vault"
roles = ["read"]
approval_channel = "{APPROVAL_CHANNEL}"
approvers = ["{APPROVER1}"]
adapter = "hook"

[adapters.hook]
type = "webhook"
url = "{url}"
secret_env = "JITGATE_TEST_HOOK_SECRET"
"#
        ),
        ..Setup::default()
    })
    .await;
    let env = [("JITGATE_TEST_HOOK_SECRET", WEBHOOK_SECRET)];

    // 1. Delivered: erased from the outbox, and from every file, at once.
    let bot = Bot::start_with_env(&mut app, &env).await;
    let id = app.request("vault:read 1h first login").await;
    app.approve(APPROVER1, id).await;
    app.wait_dm(REQUESTER, "pw-marker-1").await;
    wait_gone(&app, "pw-marker-1", "after delivery").await;
    assert_eq!(
        scalar(
            &app,
            "SELECT CAST(COUNT(*) AS TEXT) FROM outbox WHERE body IS NULL AND sensitive = 1"
        )
        .await
        .as_deref(),
        Some("1")
    );

    // 2. A second credential, then SIGTERM: nothing left after a clean stop.
    let id = app.request("vault:read 1h second login").await;
    app.approve(APPROVER1, id).await;
    app.wait_dm(REQUESTER, "pw-marker-2").await;
    bot.terminate();
    assert!(bot.wait_exit().await.success());
    assert_eq!(
        files_holding(&app, "pw-marker-2"),
        Vec::<String>::new(),
        "after SIGTERM"
    );
    let wal = std::fs::metadata(app.dir.path().join("jitgate.db-wal")).map(|m| m.len());
    assert!(
        matches!(wal, Ok(0) | Err(_)),
        "the WAL is empty after a clean stop: {wal:?}"
    );

    // 3. A third, then SIGKILL right after the DM: gone by the time the next start serves.
    let bot = Bot::start_with_env(&mut app, &env).await;
    let id = app.request("vault:read 1h third login").await;
    app.approve(APPROVER1, id).await;
    app.wait_dm(REQUESTER, "pw-marker-3").await;
    bot.kill();
    let bot = Bot::start_with_env(&mut app, &env).await;
    wait_gone(&app, "pw-marker-3", "after SIGKILL and a restart").await;
    for n in 1..=3 {
        assert_eq!(files_holding(&app, &format!("pw-marker-{n}")), Vec::<String>::new());
    }
    bot.kill();
}
