//! Who may click, and what clicks do: every click is re-checked on the server.

use crate::support::*;

#[tokio::test]
async fn denied_request_grants_nothing_and_tells_the_requester() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:write 1h please").await;
    app.deny(APPROVER2, id).await;
    app.wait_request(id, "denied").await;
    app.wait_dm(REQUESTER, "denied by <@UAPPROVER2>").await;
    let card = app.wait_card_containing(id, "Denied by <@UAPPROVER2>").await;
    assert!(!card.contains("jit_approve"), "buttons gone: {card}");
    assert_eq!(app.grant_state(id).await, None);
    assert!(app.adapter_log().is_empty());
}

#[tokio::test]
async fn requester_cannot_approve_their_own_request() {
    let app = TestApp::start().await;
    // The requester is a listed approver of prod-db.
    let reply = app.command(APPROVER1, "request prod-db:read 1h my own").await;
    let id: i64 = reply
        .split("JIT-")
        .nth(1)
        .unwrap()
        .split('*')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    app.approve(APPROVER1, id).await;
    let text = app.wait_ephemeral(APPROVER1, id).await;
    assert!(text.contains("can't decide on your own request"), "{text}");
    assert_eq!(app.request_state(id).await, "pending");
    assert_eq!(app.count("SELECT COUNT(*) FROM decisions").await, 0);
}

#[tokio::test]
async fn non_approver_click_changes_nothing_and_is_told_why() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h x").await;
    app.approve(OUTSIDER, id).await;
    let text = app.wait_ephemeral(OUTSIDER, id).await;
    assert!(text.contains("not an approver for `prod-db`"), "{text}");
    assert!(
        text.contains("<@UAPPROVER1>") && text.contains("<!subteam^SDBAS>"),
        "names who can: {text}"
    );
    assert_eq!(app.request_state(id).await, "pending");
    assert_eq!(app.count("SELECT COUNT(*) FROM decisions").await, 0);
    // The group was consulted, because the clicker was not listed by ID.
    assert!(app
        .slack
        .calls()
        .iter()
        .any(|c| c.method == "usergroups.users.list" && c.body["usergroup"] == GROUP));
}

#[tokio::test]
async fn member_of_an_approver_group_can_approve() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h group").await;
    app.approve("UGROUPMEMBER", id).await;
    app.wait_grant(id, "active").await;
    app.wait_card_containing(id, "Approved by <@UGROUPMEMBER>").await;
}

#[tokio::test]
async fn group_lookup_failure_changes_nothing_and_asks_to_retry() {
    let app = TestApp::start().await;
    app.slack.fail_next("usergroups.users.list", vec![Failure::ServerError]);
    let id = app.request("prod-db:read 1h group trouble").await;
    app.approve("UGROUPMEMBER", id).await;
    let text = app.wait_ephemeral("UGROUPMEMBER", id).await;
    assert!(text.contains("couldn't check the approver groups"), "{text}");
    assert_eq!(app.request_state(id).await, "pending");
}

#[tokio::test]
async fn two_of_n_needs_two_distinct_approvers() {
    let app = TestApp::start().await;
    let id = app.request("payments:admin 30m refund run").await;
    app.approve(APPROVER1, id).await;
    app.wait_card_containing(id, "(1 of 2)").await;
    assert_eq!(app.request_state(id).await, "pending");

    // The same approver again does not count twice.
    app.approve(APPROVER1, id).await;
    let text = app.wait_ephemeral(APPROVER1, id).await;
    assert!(text.contains("already approved"), "{text}");
    assert_eq!(app.request_state(id).await, "pending");

    app.approve(APPROVER3, id).await;
    app.wait_grant(id, "active").await;
    let card = app.wait_card_containing(id, "Access granted").await;
    assert!(card.contains("<@UAPPROVER1>, <@UAPPROVER3>"), "{card}");
}

#[tokio::test]
async fn one_deny_ends_a_multi_approver_request() {
    let app = TestApp::start().await;
    let id = app.request("payments:admin 30m x").await;
    app.approve(APPROVER1, id).await;
    app.wait_card_containing(id, "(1 of 2)").await;
    app.deny(APPROVER2, id).await;
    app.wait_request(id, "denied").await;
    assert_eq!(app.grant_state(id).await, None);
}

#[tokio::test]
async fn double_and_simultaneous_clicks_grant_once() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h clicky").await;
    // Two approvers and a double click, all at once.
    tokio::join!(
        app.approve(APPROVER1, id),
        app.approve(APPROVER1, id),
        app.approve(APPROVER2, id),
        app.approve("UGROUPMEMBER", id),
    );
    app.wait_grant(id, "active").await;
    // Every other click is answered with an explanation; wait for all three.
    app.wait_calls("the three refused clicks answered", 3, |c| c.method == "response_url")
        .await;
    assert_eq!(app.count("SELECT COUNT(*) FROM grants").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM jobs WHERE kind = 'grant'").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'request.approved'")
            .await,
        1
    );
    app.clock.advance(chrono::Duration::seconds(1));
    jitgate::jobs::run_due(app.state(), app.state().now_ms()).await.unwrap();
    let grants = app.adapter_log().iter().filter(|l| l.starts_with("grant ")).count();
    assert_eq!(grants, 1, "{:?}", app.adapter_log());
}

#[tokio::test]
async fn a_forged_button_value_changes_nothing() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h x").await;
    let body = app.click_body(APPROVER1, "jit_approve", "1 OR 1=1", "forged");
    let (status, _) = app
        .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200);
    let calls = app
        .wait_calls("a reply to the forged click", 1, |c| {
            c.method == "response_url" && c.body["response_url_id"] == "forged"
        })
        .await;
    assert!(calls[0].text().contains("not one of jitgate's"), "{}", calls[0].text());
    assert_eq!(app.request_state(id).await, "pending");
}
