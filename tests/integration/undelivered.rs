//! Messages Slack refuses for good are never lost in silence; one hung Slack call holds up
//! nothing else; messages queued by another process go out within seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitgate::adapters::Adapter;
use jitgate::store::Outgoing;

use crate::reconcile::Inventory;
use crate::support::*;

fn write_config(app: &TestApp) -> std::path::PathBuf {
    let config = app.dir.path().join("jitgate.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    config
}

async fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
            .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn a_refused_card_is_explained_to_the_requester_kept_listed_and_sent_once_fixed() {
    let app = TestApp::start().await;
    app.slack.refuse_channel(APPROVAL_CHANNEL, "not_in_channel");
    let id = app.request("prod-db:read 1h card refused").await;

    // The requester hears why, and what an operator must do, through the command's response_url.
    let notice = app
        .wait_calls("the requester told", 1, |c| {
            c.method == "response_url" && c.body["response_url_id"] == "cmd" && c.text().contains("could not be shown")
        })
        .await[0]
        .text()
        .to_string();
    assert!(
        notice.contains(&format!("JIT-{id}"))
            && notice.contains("/invite @jitgate")
            && notice.contains("not_in_channel"),
        "{notice}"
    );
    assert_eq!(app.request_state(id).await, "pending", "the request stays pending");
    // Its requester does not see it as simply "waiting in #approvals".
    let list = app.command(REQUESTER, "list").await;
    assert!(list.contains("not seen by any approver yet"), "{list}");

    // The operator sees it in the CLI…
    let config = write_config(&app);
    let (ok, listed) = cli(&config, &["outbox", "list"]).await;
    assert!(ok, "{listed}");
    assert!(
        listed.contains("PostCard") && listed.contains(&format!("JIT-{id}")) && listed.contains("not_in_channel"),
        "{listed}"
    );
    // …fixes the cause and re-sends it: a running jitgate posts it within seconds.
    app.slack.accept_channel(APPROVAL_CHANNEL);
    let (ok, retried) = cli(&config, &["outbox", "retry", "--all"]).await;
    assert!(ok && retried.contains("1 message queued again"), "{retried}");
    let sent = Instant::now();
    let card = app.wait_card_containing(id, "jit_approve").await;
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}", sent.elapsed());
    assert!(card.contains("This card is late"), "the card says it is late: {card}");
    assert_eq!(
        app.slack
            .calls()
            .iter()
            .filter(|c| c.method == "response_url" && c.text().contains("could not be shown"))
            .count(),
        1,
        "told once"
    );
    // As soon as jitgate has Slack's answer (a moment after the fake recorded the post).
    wait_for("/jit list to show the card as seen", || async {
        let list = app.command(REQUESTER, "list").await;
        (!list.contains("not seen by any approver") && list.contains(&format!("JIT-{id}"))).then_some(())
    })
    .await;
    wait_for("the delivery recorded", || async {
        (app.count("SELECT COUNT(*) FROM outbox WHERE state <> 'sent'").await == 0).then_some(())
    })
    .await;
    let (_, listed) = cli(&config, &["outbox", "list"]).await;
    assert!(listed.contains("nothing undelivered"), "{listed}");
}

#[tokio::test]
async fn a_refused_card_is_retried_at_the_next_start() {
    let mut app = TestApp::start().await;
    app.slack.refuse_channel(APPROVAL_CHANNEL, "channel_not_found");
    let id = app.request("prod-db:read 1h retried at start").await;
    wait_for("the refusal recorded", || async {
        (app.count("SELECT COUNT(*) FROM outbox WHERE kind = 'post_card' AND refused_at IS NOT NULL")
            .await
            == 1)
            .then_some(())
    })
    .await;
    app.slack.accept_channel(APPROVAL_CHANNEL);
    app.stop().await;
    app.boot().await;
    app.wait_card_containing(id, "jit_approve").await;
}

#[tokio::test]
async fn a_hung_slack_call_holds_up_no_other_card() {
    let app = TestApp::start_with(Setup {
        slack_call_timeout: Duration::from_secs(2),
        extra_toml: r#"
[[resources]]
name = "stalled"
roles = ["read"]
approval_channel = "C0STALLED"
approvers = ["UAPPROVER1"]
adapter = "demo"
"#
        .into(),
        ..Setup::default()
    })
    .await;
    app.slack.hang_channel("C0STALLED", true);
    let stalled = app.request("stalled:read 1h hangs").await;
    wait_for("the worker to be stuck in the hung call", || async {
        (app.slack.held_calls() == 1).then_some(())
    })
    .await;
    let started = Instant::now();
    let flowing = app.request("prod-db:read 1h flows").await;
    app.wait_card_containing(flowing, "jit_approve").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the other card did not wait for the hung call: {:?}",
        started.elapsed()
    );
    let also = app.request("payments:admin 30m flows too").await;
    app.wait_card_containing(also, "jit_approve").await;
    // Slack answers again: the stalled card goes out on a retry.
    app.slack.hang_channel("C0STALLED", false);
    wait_for("the stalled card", || async {
        app.clock.advance(chrono::Duration::seconds(30));
        (!app.slack.posted_to("C0STALLED").is_empty()).then_some(())
    })
    .await;
    assert_eq!(app.slack.posted_to("C0STALLED").len(), 1, "{stalled}");
}

#[tokio::test]
async fn a_message_queued_by_another_process_is_sent_within_five_seconds() {
    let inventory = Arc::new(Inventory::default());
    let app = TestApp::start_with(Setup {
        adapters: vec![("demo".into(), inventory.clone() as Arc<dyn Adapter>)],
        extra_toml: "[reconcile]\ninterval = \"off\"\nchannel = \"C0SECURITY\"\n".into(),
        ..Setup::default()
    })
    .await;
    inventory.add(99, "USOMEONE");
    // `jitgate reconcile` builds its own state on the same database: its wake-up reaches
    // nobody, so the running server must notice the report on its own.
    let config = jitgate::config::parse(&app.dir.path().join("jitgate.toml"), &app.config_text).unwrap();
    let cli_state = jitgate::build_with_env(
        config,
        jitgate::Secrets {
            bot_token: String::new(),
            signing_secret: None,
            app_token: None,
        },
        app.clock.shared(),
        vec![("demo".into(), inventory.clone() as Arc<dyn Adapter>)],
        &app.env,
    )
    .await
    .unwrap();
    let queued = Instant::now();
    jitgate::reconcile::run(&cli_state, true).await.unwrap();
    app.wait_calls("the report in its channel", 1, |c| c.channel() == "C0SECURITY")
        .await;
    assert!(queued.elapsed() < Duration::from_secs(5), "took {:?}", queued.elapsed());
    cli_state
        .send_now(Outgoing::message("C0SECURITY", "from the CLI".into(), None))
        .await
        .unwrap();
    app.wait_calls("the CLI's message", 1, |c| c.text() == "from the CLI")
        .await;
    cli_state.db.close().await;
}
