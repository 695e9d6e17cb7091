//! The request and extend forms, the interactive Home tab and typed commands that never
//! change meaning: driven as Slack drives them, against the fake Slack's Slack semantics
//! (trigger_ids good for 3 s and once, Block Kit limits).

use serde_json::{json, Value};

use crate::support::*;

/// The block_ids of a view's input blocks.
fn input_blocks(view: &Value) -> Vec<String> {
    view["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "input")
        .map(|b| b["block_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every button in a view or message: (label, action_id, value).
fn buttons(view: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for b in view["blocks"].as_array().into_iter().flatten() {
        for e in b["elements"].as_array().into_iter().flatten() {
            if e["type"] == "button" {
                out.push((
                    e["text"]["text"].as_str().unwrap_or_default().to_string(),
                    e["action_id"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

const VALID: &[(&str, &str)] = &[
    ("resource", "prod-db"),
    ("role", "write"),
    ("duration", "1h 30m"),
    ("reason", "fixing prod"),
];

#[tokio::test]
async fn bare_jit_and_jit_request_open_the_request_form_with_their_trigger_id() {
    let app = TestApp::start().await;
    for (n, text) in [(1, ""), (2, "request")] {
        let reply = app.command(REQUESTER, text).await;
        assert!(reply.contains("Opening the request form"), "{reply}");
        let view = app.wait_opened_view(n).await;
        assert_eq!(view["type"], "modal");
        assert_eq!(
            input_blocks(&view),
            ["resource", "role", "duration", "reason", "ticket"]
        );
        let labels = view.to_string();
        for label in ["Resource", "Role", "Duration", "Reason"] {
            assert!(labels.contains(label), "{label} in {labels}");
        }
    }
    // Each open used the command's own trigger_id: the fake refuses any other.
    let opens = app.slack.ok_calls("views.open");
    assert_ne!(opens[0].body["trigger_id"], opens[1].body["trigger_id"]);
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
}

#[tokio::test]
async fn a_valid_form_creates_the_same_request_as_the_command_and_confirms_what_was_understood() {
    let app = TestApp::start().await;
    app.command_in(REQUESTER, "C0INCIDENT", "").await;
    let view = app.wait_opened_view(1).await;
    // Submitted as Slack sends it back: with the view's id and its private_metadata.
    let mut with_id = view.clone();
    with_id["id"] = json!("V0FORM");
    let mut values = VALID.to_vec();
    values.push(("ticket", "INC-77"));
    let answer = app.submit(REQUESTER, &with_id, &values).await;
    assert_eq!(answer, Value::Null, "a valid form closes");
    let row: (String, String, i64, String, String) =
        sqlx::query_as("SELECT resource, role, duration_secs, reason, origin_channel FROM requests")
            .fetch_one(&app.state().db.read)
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            "prod-db".into(),
            "write".into(),
            5400,
            "fixing prod (ticket: INC-77)".into(),
            "C0INCIDENT".into()
        )
    );
    let dm = app.wait_dm(REQUESTER, "JIT-1").await;
    assert!(
        dm.contains("`prod-db:write` for 1h30m") && dm.contains("fixing prod (ticket: INC-77)"),
        "{dm}"
    );
    app.wait_card_containing(1, "prod-db").await;
    // The same request by command, for comparison.
    let reply = app
        .command(REQUESTER, "request prod-db:write 1h 30m fixing prod (ticket: INC-77)")
        .await;
    assert!(reply.contains("`prod-db:write` for 1h30m"), "{reply}");
    let same: i64 = app
        .count("SELECT COUNT(DISTINCT resource || role || duration_secs || reason) FROM requests")
        .await;
    assert_eq!(same, 1);
}

#[tokio::test]
async fn bad_fields_are_answered_with_errors_keyed_by_block_id_and_change_nothing() {
    let app = TestApp::start().await;
    app.command(REQUESTER, "").await;
    let view = app.wait_opened_view(1).await;
    let long = "x".repeat(600);
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("resource", "prod-db"), ("reason", "   ")],
            "reason",
            "only spaces",
        ),
        (vec![("resource", "prod-db"), ("reason", "")], "reason", "why"),
        (
            vec![("resource", "prod-db"), ("reason", &long)],
            "reason",
            "characters long",
        ),
        (
            vec![("resource", "prod-db"), ("reason", "a\u{202E}b")],
            "reason",
            "U+202E",
        ),
        (
            vec![("resource", "prod-db"), ("duration", "8h"), ("reason", "x")],
            "duration",
            "4h",
        ),
        (
            vec![("resource", "prod-db"), ("duration", "1.5x"), ("reason", "x")],
            "duration",
            "`1.5x`",
        ),
        (
            vec![("resource", "secret-db"), ("reason", "x")],
            "resource",
            "secret-db",
        ),
        (
            vec![("resource", "prod-db"), ("role", "root"), ("reason", "x")],
            "role",
            "root",
        ),
    ];
    for (values, field, needle) in cases {
        let answer = app.submit(REQUESTER, &view, &values).await;
        assert_eq!(answer["response_action"], "errors", "{values:?}: {answer}");
        let error = answer["errors"][field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {answer}"));
        assert!(error.contains(needle), "{values:?}: {error}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
    assert!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'form.refused'")
            .await
            >= 8
    );
}

#[tokio::test]
async fn over_socket_mode_field_errors_ride_in_the_ack_and_a_valid_form_closes() {
    let app = TestApp::start_with(Setup {
        socket_mode: true,
        ..Setup::default()
    })
    .await;
    wait_for("a Socket Mode connection", || async {
        (app.slack.socket.connections() >= 1).then_some(())
    })
    .await;
    let view =
        json!({"id": "V0FORM", "type": "modal", "callback_id": "jit_request", "private_metadata": "", "hash": "h"});
    let send = |payload: Value| {
        let app = &app;
        async move {
            let id = app.slack.socket.send("interactive", payload).expect("a connection");
            wait_for("the ack", || async { app.slack.socket.acks_of(&id).into_iter().next() })
                .await
                .payload
        }
    };
    let bad = app.submission(REQUESTER, &view, &[("resource", "prod-db"), ("reason", "  ")]);
    let ack = send(bad.clone()).await.expect("errors ride in the ack");
    assert_eq!(ack["response_action"], "errors");
    assert!(ack["errors"]["reason"].is_string(), "{ack}");
    // A re-delivery of the same submission gets the same answer and does nothing more.
    let again = send(bad).await.expect("the first answer again");
    assert_eq!(again, ack);
    let ok = send(app.submission(REQUESTER, &view, VALID)).await;
    assert!(ok.is_none(), "a valid form closes: {ok:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 1);
}

#[tokio::test]
async fn the_shortcut_and_the_home_button_open_the_form_and_choosing_a_resource_updates_it() {
    let app = TestApp::start().await;
    let (status, _) = app
        .interact(&json!({
            "type": "shortcut", "callback_id": "request_access", "trigger_id": app.slack.new_trigger_id(),
            "team": {"id": "T0TEAM"}, "user": {"id": REQUESTER}, "api_app_id": "A0APP"
        }))
        .await;
    assert_eq!(status, 200);
    app.wait_opened_view(1).await;
    app.home_click(REQUESTER, "jit_open_request", "new").await;
    let view = app.wait_opened_view(2).await;
    // Choosing `payments` offers its roles and durations (up to its 2h).
    let view_id = {
        // The fake numbers views in order; the second open is the Home button's.
        let mut found = None;
        for n in 1..10 {
            let id = format!("V{n:08}");
            if app.slack.view(&id).is_some_and(|v| v["blocks"] == view["blocks"]) {
                found = Some(id);
            }
        }
        found.expect("the fake holds the opened form")
    };
    let (status, _) = app
        .interact(&json!({
            "type": "block_actions", "team": {"id": "T0TEAM"}, "user": {"id": REQUESTER}, "api_app_id": "A0APP",
            "trigger_id": app.slack.new_trigger_id(),
            "container": {"type": "view", "view_id": view_id},
            "view": app.slack.view(&view_id).unwrap(),
            "actions": [{"type": "static_select", "action_id": "resource", "block_id": "resource",
                         "selected_option": {"text": {"type": "plain_text", "text": "payments"}, "value": "payments"}}]
        }))
        .await;
    assert_eq!(status, 200);
    let updated = app
        .wait_calls("the form to update", 1, |c| c.method == "views.update")
        .await;
    let text = updated[0].body["view"].to_string();
    assert!(text.contains("admin") && text.contains("up to 2h"), "{text}");
}

#[tokio::test]
async fn the_fake_slack_refuses_stale_reused_and_unknown_trigger_ids() {
    let app = TestApp::start().await;
    let slack = &app.state().slack;
    let view = || jitgate::forms::notice_modal("Hello", "hi");
    let fresh = app.slack.new_trigger_id();
    slack.open_view(&fresh, view()).await.unwrap();
    let again = slack.open_view(&fresh, view()).await.unwrap_err();
    assert!(again.to_string().contains("exchanged_trigger_id"), "{again}");
    let stale = app.slack.new_trigger_id();
    app.slack.age_trigger_id(&stale, std::time::Duration::from_millis(3100));
    let e = slack.open_view(&stale, view()).await.unwrap_err();
    assert!(e.to_string().contains("expired_trigger_id"), "{e}");
    let e = slack.open_view("1.2.3", view()).await.unwrap_err();
    assert!(e.to_string().contains("invalid_trigger_id"), "{e}");
    // Over Slack's limits: a title over 24 characters, more than 100 blocks.
    let t = app.slack.new_trigger_id();
    let e = slack
        .open_view(
            &t,
            jitgate::forms::notice_modal("x", "y").tap_title("A title longer than 24 chars"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid_arguments"), "{e}");
    let mut big = view();
    big["blocks"] = json!(vec![json!({"type": "divider"}); 101]);
    let e = slack.open_view(&app.slack.new_trigger_id(), big).await.unwrap_err();
    assert!(e.to_string().contains("invalid_blocks"), "{e}");
}

trait TapTitle {
    fn tap_title(self, title: &str) -> Self;
}
impl TapTitle for Value {
    fn tap_title(mut self, title: &str) -> Self {
        self["title"]["text"] = json!(title);
        self
    }
}

/// Publishes `user`'s Home tab and returns it as the fake holds it.
async fn home(app: &TestApp, user: &str) -> Value {
    jitgate::home::publish(app.state(), user).await.unwrap();
    app.slack.home_of(user).expect("a published Home tab")
}

#[tokio::test]
async fn home_shows_approvers_what_waits_for_them_and_decides_with_the_cards_checks() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:write 2h fixing prod").await;
    app.wait_card_containing(id, "fixing prod").await;
    let mine = home(&app, REQUESTER).await;
    assert!(
        buttons(&mine).contains(&(":x: Cancel".into(), "jit_cancel".into(), id.to_string())),
        "{:?}",
        buttons(&mine)
    );
    let theirs = home(&app, APPROVER1).await;
    let b = buttons(&theirs);
    assert!(
        b.iter().any(|(l, _, v)| l.contains("Approve") && *v == id.to_string()),
        "{b:?}"
    );
    assert!(
        b.iter().any(|(l, _, v)| l.contains("Deny") && *v == id.to_string()),
        "{b:?}"
    );
    assert!(b.iter().any(|(l, _, _)| l.contains("Request access")), "{b:?}");
    // An outsider sees nothing to decide, and a forged click is refused like the card's.
    let outsider = home(&app, OUTSIDER).await;
    assert!(!buttons(&outsider).iter().any(|(l, _, _)| l.contains("Approve")));
    app.home_click(OUTSIDER, "jit_approve", &id.to_string()).await;
    wait_for("the outsider to be told by DM", || async {
        (!app.dms(OUTSIDER).is_empty()).then_some(())
    })
    .await;
    assert_eq!(app.request_state(id).await, "pending");
    // The approver's click goes through the card's path: approved, granted, card updated.
    app.home_click(APPROVER1, "jit_approve", &id.to_string()).await;
    app.wait_grant(id, "active").await;
    app.wait_card_containing(id, "Approved by").await;
}

#[tokio::test]
async fn home_buttons_end_access_withdraw_and_extend_through_the_commands_paths() {
    let app = TestApp::start().await;
    // Cancel withdraws a pending request.
    let pending = app.request("payments 30m checking refunds").await;
    app.home_click(REQUESTER, "jit_cancel", &pending.to_string()).await;
    app.wait_request(pending, "cancelled").await;
    // Extend opens the extend form; its submission asks for more time.
    let id = app.request("prod-db:read 1h investigating").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    let h = home(&app, REQUESTER).await;
    let b = buttons(&h);
    assert!(
        b.contains(&(":wave: I'm done".into(), "jit_revoke".into(), id.to_string())),
        "{b:?}"
    );
    assert!(
        b.contains(&(":hourglass: Extend".into(), "jit_open_extend".into(), id.to_string())),
        "{b:?}"
    );
    assert!(h.to_string().contains("ends at"), "{h}");
    app.home_click(REQUESTER, "jit_open_extend", &id.to_string()).await;
    let form = app.wait_opened_view(1).await;
    assert_eq!(form["callback_id"], "jit_extend");
    let answer = app
        .submit(REQUESTER, &form, &[("duration", "30m"), ("reason", "still digging")])
        .await;
    assert_eq!(answer, Value::Null, "{answer}");
    let ext: (String, i64, i64) =
        sqlx::query_as("SELECT kind, duration_secs, extends_request_id FROM requests WHERE kind = 'extension'")
            .fetch_one(&app.state().db.read)
            .await
            .unwrap();
    assert_eq!(ext, ("extension".into(), 1800, id));
    // Someone else's Extend form is refused on the server.
    let forged = app
        .submit(OUTSIDER, &form, &[("duration", "30m"), ("reason", "mine now")])
        .await;
    assert_eq!(forged["response_action"], "errors", "{forged}");
    // I'm done ends the access, as `/jit revoke` does.
    app.home_click(REQUESTER, "jit_revoke", &id.to_string()).await;
    app.wait_grant(id, "revoked").await;
}

#[tokio::test]
async fn typed_commands_mean_what_was_typed_or_are_refused_with_the_fix() {
    let app = TestApp::start().await;
    let reply = app.command(REQUESTER, "request prod-db write 2h fixing prod").await;
    assert!(reply.contains("`/jit request prod-db:write 2h fixing prod`"), "{reply}");
    for bad in ["1.5x", "90 mins?"] {
        let reply = app
            .command(REQUESTER, &format!("request prod-db:read {bad} fixing"))
            .await;
        assert!(reply.contains(&format!("`{bad}`")), "{reply}");
    }
    let reply = app.command(REQUESTER, "request prod-db:read for 2h fixing").await;
    assert!(reply.contains("`2h`") && reply.contains("nothing was done"), "{reply}");
    assert_eq!(app.count("SELECT COUNT(*) FROM requests").await, 0);
    for (typed, shown) in [
        ("90min", "1h30m"),
        ("1.5h", "1h30m"),
        ("1h 30m", "1h30m"),
        ("2 hours", "2h"),
    ] {
        let reply = app
            .command(APPROVER3, &format!("request prod-db:read {typed} fixing prod"))
            .await;
        assert!(
            reply.contains(&format!(
                "`prod-db:read` for {shown}, reason: \u{201c}fixing prod\u{201d}"
            )),
            "{typed}: {reply}"
        );
        let id: i64 = app.count("SELECT MAX(id) FROM requests").await;
        app.command(APPROVER3, &format!("cancel JIT-{id}")).await;
    }
}
