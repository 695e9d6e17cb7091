//! The ending-soon DM (`[requests] ending_soon`) and extension requests closed when the
//! grant they would extend has ended.

use chrono::Duration;

use crate::support::*;

/// The ending-soon DMs sent to `user` so far (the DMs with an Extend button).
fn notices(app: &TestApp, user: &str) -> Vec<jitgate::fakeslack::Call> {
    app.slack
        .posted_to(user)
        .into_iter()
        .filter(|c| c.all_text().contains("jit_open_extend"))
        .collect()
}

async fn run_due(app: &TestApp) {
    jitgate::jobs::run_due(app.state(), app.state().now_ms()).await.unwrap();
}

#[tokio::test]
async fn the_ending_soon_dm_is_sent_once_ten_minutes_before_the_end_and_survives_a_restart() {
    let mut app = TestApp::start().await;
    let id = app.request("prod-db:read 1h investigating").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.clock.advance(Duration::minutes(49));
    run_due(&app).await;
    assert!(notices(&app, REQUESTER).is_empty(), "too early");
    // Down across the moment it is due: sent after the restart, once.
    app.stop().await;
    app.clock.advance(Duration::minutes(1) + Duration::seconds(1));
    app.boot().await;
    run_due(&app).await;
    let sent = wait_for("the ending-soon DM", || async {
        let n = notices(&app, REQUESTER);
        (!n.is_empty()).then_some(n)
    })
    .await;
    let text = sent[0].all_text();
    assert!(
        text.contains(&format!("JIT-{id}")) && text.contains("prod-db:read"),
        "{text}"
    );
    for (label, action) in [("Extend", "jit_open_extend"), ("I'm done", "jit_revoke")] {
        let block = &sent[0].body["blocks"][1]["elements"];
        let button = block
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["action_id"] == action)
            .unwrap_or_else(|| panic!("{action} in {text}"));
        assert!(button["text"]["text"].as_str().unwrap().contains(label));
        assert_eq!(button["value"], id.to_string());
    }
    // Its Extend button opens the extend form for this grant.
    app.click(REQUESTER, "jit_open_extend", id).await;
    let form = app.wait_opened_view(1).await;
    assert_eq!(form["callback_id"], "jit_extend");
    assert!(form.to_string().contains(&format!("JIT-{id}")), "{form}");
    app.clock.advance(Duration::minutes(2));
    run_due(&app).await;
    app.clock.advance(Duration::minutes(8));
    run_due(&app).await;
    app.wait_grant(id, "revoked").await;
    assert_eq!(notices(&app, REQUESTER).len(), 1, "sent once");
}

#[tokio::test]
async fn access_shorter_than_the_notice_gets_no_ending_soon_dm() {
    let app = TestApp::start_with(Setup {
        requests_toml: "ending_soon = \"10m\"".into(),
        ..Setup::default()
    })
    .await;
    let id = app.request("prod-db:read 5m quick look").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.clock.advance(Duration::minutes(5) + Duration::seconds(1));
    run_due(&app).await;
    app.wait_grant(id, "revoked").await;
    assert!(notices(&app, REQUESTER).is_empty());
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE kind = 'ending_soon'").await,
        0
    );
}

#[tokio::test]
async fn ending_soon_off_sends_nothing() {
    let app = TestApp::start_with(Setup {
        requests_toml: "ending_soon = \"off\"".into(),
        ..Setup::default()
    })
    .await;
    let id = app.request("prod-db:read 1h investigating").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.clock.advance(Duration::minutes(55));
    run_due(&app).await;
    assert!(notices(&app, REQUESTER).is_empty());
}

#[tokio::test]
async fn an_extension_moves_the_notice_to_the_new_end() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h investigating").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    let reply = app
        .command(REQUESTER, &format!("extend JIT-{id} 1h still digging"))
        .await;
    let ext: i64 = app.count("SELECT MAX(id) FROM requests").await;
    assert!(reply.contains(&format!("JIT-{ext}")), "{reply}");
    app.approve(APPROVER1, ext).await;
    wait_for("the extension to apply", || async {
        (app.count(&format!("SELECT duration_secs FROM grants WHERE request_id = {id}"))
            .await
            == 7200)
            .then_some(())
    })
    .await;
    app.clock.advance(Duration::minutes(51));
    run_due(&app).await;
    assert!(notices(&app, REQUESTER).is_empty(), "not at the old time");
    app.clock.advance(Duration::minutes(60));
    run_due(&app).await;
    wait_for("the notice at the new time", || async {
        (notices(&app, REQUESTER).len() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_extension_request_is_closed_on_its_card_when_its_grant_ends() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h investigating").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.command(REQUESTER, &format!("extend JIT-{id} 30m still digging"))
        .await;
    let ext: i64 = app.count("SELECT MAX(id) FROM requests").await;
    let card = app.wait_card_containing(ext, "jit_approve").await;
    assert!(card.contains("Extension"), "{card}");
    app.command(REQUESTER, &format!("revoke JIT-{id}")).await;
    app.wait_grant(id, "revoked").await;
    app.wait_request(ext, "expired").await;
    let card = app.wait_card_containing(ext, "Closed").await;
    assert!(
        !card.contains("jit_approve") && !card.contains("jit_deny"),
        "no live buttons: {card}"
    );
    app.wait_dm(REQUESTER, &format!("Extension request JIT-{ext} is closed"))
        .await;
    // A forged late click changes nothing.
    app.approve(APPROVER1, ext).await;
    app.wait_ephemeral(APPROVER1, ext).await;
    assert_eq!(app.request_state(ext).await, "expired");
}
