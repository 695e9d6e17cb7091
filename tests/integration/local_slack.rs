//! `jitgate dev` and the local Slack: the binary's own behaviour (loopback, no `SLACK_*`
//! variables, SIGTERM) and the whole flow in headless Chromium — a typed command, the
//! card, another person's Approve, the card updated for everyone without a reload, the
//! requester's DM and Home tab.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::Value;

use crate::support::{browser, wait_for, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// A raw HTTP/1.0 GET, to see exactly what the page server answers.
fn get(addr: &str, path: &str, host: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Runs `jitgate dev` in `dir` until it prints its URL; returns the child and the address.
fn start_dev(dir: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["dev", "--port", "0", "--data-dir"])
        .arg(dir)
        .env_remove("SLACK_BOT_TOKEN")
        .env_remove("SLACK_SIGNING_SECRET")
        .env_remove("SLACK_APP_TOKEN")
        .env_remove("JITGATE_AUDIT_KEY")
        .env_remove("JITGATE_CONFIG")
        .env("JITGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("dev prints the URL").unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_string();
    // Keep reading what else it prints, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    (
        child,
        url.trim_start_matches("http://").trim_end_matches('/').to_string(),
    )
}

/// Sends `signal` and waits (at most 10 s) for a clean exit.
fn stop_dev(mut child: std::process::Child, signal: &str) {
    let asked = Instant::now();
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "still running 10 s after {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(exit.success(), "{signal}: {exit:?}\n{stderr}");
    assert!(!stderr.contains("xoxb-"), "a token reached the log:\n{stderr}");
}

#[test]
fn dev_needs_no_slack_variables_serves_on_loopback_and_exits_0_soon_after_sigterm_or_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = start_dev(dir.path());
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let page = get(&addr, "/", &addr);
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert!(page.contains("<script src=\"/app.js\""), "{page}");
    // A page on another host name (DNS rebinding) gets nothing.
    let rebound = get(&addr, "/api/people", "evil.example");
    assert!(rebound.contains(" 403 "), "{rebound}");
    let people = get(&addr, "/api/people", "localhost");
    assert!(people.contains("\"U0ALICE\""), "{people}");

    // Its data stays in the data directory: its own database and audit key.
    assert!(dir.path().join("jitgate-dev.db").is_file());
    let key = std::fs::read_to_string(dir.path().join("jitgate-dev-audit.key")).unwrap();
    stop_dev(child, "-TERM");

    // Started again on the same data: the same key, and Ctrl-C (SIGINT) stops it too.
    let (child, _) = start_dev(dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("jitgate-dev-audit.key")).unwrap(),
        key
    );
    stop_dev(child, "-INT");
}

#[test]
fn dev_refuses_real_adapters_without_a_configuration_and_a_busy_port_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["dev", "--real-adapters", "--data-dir"])
        .arg(dir.path())
        .env_remove("JITGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--real-adapters needs --config"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args(["dev", "--port", &port, "--data-dir"])
        .arg(dir.path())
        .env_remove("JITGATE_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("--port"),
        "{err}"
    );
}

/// A raw HTTP/1.0 POST; returns the status line and the body.
fn post(addr: &str, path: &str, content_type: &str, body: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

#[tokio::test]
async fn the_page_server_sends_only_what_is_on_the_page_and_takes_actions_only_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let dev = jitgate::dev::start(jitgate::dev::DevOptions {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        config: None,
        real_adapters: false,
    })
    .await
    .unwrap();
    let addr = dev.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let call = |path: &'static str, ctype: &'static str, body: String| {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || post(&addr, path, ctype, &body))
                .await
                .unwrap()
        }
    };
    let (status, _) = call(
        "/api/command",
        "application/json",
        r#"{"user":"U0ALICE","channel":"C0GENERAL","text":"/jit request prod-db:read 1h checking"}"#.into(),
    )
    .await;
    assert!(status.contains(" 200 "), "{status}");
    let card = wait_for("the card", || async { dev.fake.posted_to("C0DBAPPROVE").pop() }).await;
    let ts = dev
        .fake
        .observed_since(0)
        .into_iter()
        .find(|o| o.method == "chat.postMessage" && o.reply["channel"] == "C0DBAPPROVE")
        .map(|o| o.reply["ts"].as_str().unwrap().to_string())
        .unwrap();
    assert!(card.all_text().contains("jit_approve"));

    // A button that is not on the message, and a message that does not exist: refused
    // by the page's server, nothing sent to jitgate.
    for body in [
        format!(r#"{{"user":"U0BOB","channel":"C0DBAPPROVE","ts":"{ts}","block_id":"b6","action_id":"jit_revoke"}}"#),
        r#"{"user":"U0BOB","channel":"C0DBAPPROVE","ts":"1.000000","block_id":"b6","action_id":"jit_approve"}"#
            .to_string(),
        format!(
            r#"{{"user":"UNOBODY","channel":"C0DBAPPROVE","ts":"{ts}","block_id":"b6","action_id":"jit_approve"}}"#
        ),
    ] {
        let (status, answer) = call("/api/action", "application/json", body.clone()).await;
        assert!(
            status.contains(" 404 ") || status.contains(" 400 "),
            "{body}: {status} {answer}"
        );
        assert!(answer.contains("\"ok\":false"), "{answer}");
    }
    // A form post (what another web site could make a browser send) is not taken.
    let (status, _) = call(
        "/api/command",
        "application/x-www-form-urlencoded",
        "user=U0ALICE&channel=C0GENERAL&text=%2Fjit+help".into(),
    )
    .await;
    assert!(status.contains(" 415 "), "{status}");
    // Had a click reached jitgate, it would have answered by response_url or updated the card.
    assert!(dev.fake.ok_calls("response_url").is_empty(), "a click reached jitgate");
    assert_eq!(dev.fake.ok_calls("chat.update").len(), 0);
    dev.shutdown().await.unwrap();
}

/// Polls `script` (a function body returning a value) in the page until it returns
/// something truthy, failing the test after the deadline with `what`.
async fn until(c: &Client, what: &str, script: &str) -> Value {
    let script = script.to_string();
    wait_for(what, || {
        let c = c.clone();
        let script = script.clone();
        async move {
            let v = c.execute(&script, vec![]).await.ok()?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            truthy.then_some(v)
        }
    })
    .await
}

/// The text of the messages in the open channel.
const MESSAGES: &str =
    "return [...document.querySelectorAll('#messages .message')].map(m => m.innerText).join('\\n---\\n');";

async fn open_room(c: &Client, room: &str) {
    until(
        c,
        &format!("the sidebar entry {room}"),
        &format!("return document.querySelector('#sidebar li[data-room=\"{room}\"]') !== null;"),
    )
    .await;
    c.find(Locator::Css(&format!("#sidebar li[data-room=\"{room}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Clicks the first button `action_id` in the open channel, confirming its dialog if it
/// has one.
async fn click_button(c: &Client, action_id: &str) {
    let css = format!("#messages button[data-action-id=\"{action_id}\"]");
    until(
        c,
        &format!("a {action_id} button"),
        &format!("return document.querySelector('{css}') !== null;"),
    )
    .await;
    c.find(Locator::Css(&css)).await.unwrap().click().await.unwrap();
    let dialog = c
        .execute("return !document.getElementById('dialog-backdrop').hidden;", vec![])
        .await
        .unwrap();
    if dialog == Value::Bool(true) {
        c.find(Locator::Id("dialog-confirm"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_request_typed_on_the_local_slack_is_approved_by_another_person_and_everyone_sees_it() {
    let Some(browser) = browser::launch().await else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dev = jitgate::dev::start(jitgate::dev::DevOptions {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        config: None,
        real_adapters: false,
    })
    .await
    .unwrap();
    let c = &browser.client;

    // Alice, in #general, types the command.
    c.goto(&format!("{}?as=U0ALICE", dev.url)).await.unwrap();
    until(
        c,
        "the page as Alice",
        "return document.getElementById('acting-as').value === 'U0ALICE';",
    )
    .await;
    open_room(c, "C0GENERAL").await;
    let input = c.find(Locator::Id("composer-input")).await.unwrap();
    input
        .send_keys("/jit request prod-db:read 2h investigating INC-1234")
        .await
        .unwrap();
    c.find(Locator::Id("composer-send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let reply = until(
        c,
        "the command's ephemeral answer",
        "return [...document.querySelectorAll('#messages .message.ephemeral')].map(m => m.innerText).find(t => t.includes('JIT-1')) || '';",
    )
    .await;
    let reply = reply.as_str().unwrap();
    assert!(reply.contains("Only visible to you"), "{reply}");
    // The channel mention is shown by name, and the mrkdwn as formatting, not markup.
    assert!(reply.contains("#db-approvals") && !reply.contains("<#"), "{reply}");
    assert!(!reply.contains('*'), "{reply}");

    // The card in #db-approvals, with names instead of IDs.
    open_room(c, "C0DBAPPROVE").await;
    let card = until(
        c,
        "the approval card",
        "return [...document.querySelectorAll('#messages .message')].map(m => m.innerText).find(t => t.includes('Access request JIT-1')) || '';",
    )
    .await;
    let card = card.as_str().unwrap();
    assert!(card.contains("Alice") && !card.contains("U0ALICE"), "{card}");
    assert!(card.contains("investigating INC-1234"), "{card}");
    // Marks this page: a reload would lose it.
    c.execute("window.__notReloaded = 42; return true;", vec![])
        .await
        .unwrap();
    let alice_window = c.window().await.unwrap();

    // Bob, in another window, approves.
    let bob_window = c.new_window(true).await.unwrap();
    c.switch_to_window(bob_window.handle).await.unwrap();
    c.goto(&format!("{}?as=U0BOB", dev.url)).await.unwrap();
    until(
        c,
        "the page as Bob",
        "return document.getElementById('acting-as').value === 'U0BOB';",
    )
    .await;
    open_room(c, "C0DBAPPROVE").await;
    // Alice's ephemeral answer is not Bob's to see.
    let seen = c.execute(MESSAGES, vec![]).await.unwrap();
    assert!(!seen.as_str().unwrap().contains("Only visible to you"), "{seen}");
    click_button(c, "jit_approve").await;
    until(
        c,
        "the card approved by Bob, in Bob's window",
        "return document.querySelector('#messages').innerText.includes('Approved by @Bob');",
    )
    .await;

    // Alice's window shows it too, without a reload.
    c.switch_to_window(alice_window).await.unwrap();
    let granted = until(
        c,
        "the card approved and granted, in Alice's window",
        "const t = document.querySelector('#messages').innerText; \
         return t.includes('Approved by @Bob') && t.includes('Access granted') ? t : '';",
    )
    .await;
    assert!(granted.as_str().unwrap().contains("(edited)"), "{granted}");
    let marker = c.execute("return window.__notReloaded;", vec![]).await.unwrap();
    assert_eq!(marker, 42, "Alice's page was reloaded");
    assert_eq!(
        dev.fake.posted_to("C0DBAPPROVE").len(),
        1,
        "the card was updated in place, not posted again"
    );
    assert!(!dev.fake.ok_calls("chat.update").is_empty());

    // The README's picture: the approved card, as Alice sees it.
    c.set_window_size(1280, 820).await.unwrap();
    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    if std::env::var("JITGATE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/local-slack.png");
        std::fs::write(&target, &png).unwrap();
    }

    // Alice's DM from jitgate.
    open_room(c, "D0ALICE").await;
    let dm = until(
        c,
        "the requester's DM",
        "const t = document.querySelector('#messages').innerText; return t.includes('prod-db') ? t : '';",
    )
    .await;
    assert!(dm.as_str().unwrap().contains("jitgate"), "{dm}");

    // The record adapter was asked to grant.
    let record = std::fs::read_to_string(dir.path().join("jitgate-dev-grants.jsonl")).unwrap();
    assert!(
        record.contains("\"action\":\"grant\"") && record.contains("U0ALICE"),
        "{record}"
    );

    // Her Home tab, published when she opens it (a signed app_home_opened event).
    open_room(c, "home").await;
    let home = until(
        c,
        "Alice's Home tab",
        "const h = document.getElementById('home'); return h && h.innerText.includes('prod-db') ? h.innerText : '';",
    )
    .await;
    assert!(home.as_str().unwrap().contains("Your just-in-time access"), "{home}");

    browser.close().await;
    dev.shutdown().await.unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "local Slack browser flow took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Fills the open modal's plain text input `block_id` with `text` (replacing what it held).
async fn type_into(c: &Client, block_id: &str, text: &str) {
    let css = format!("#modal [data-block-id=\"{block_id}\"] .input-element");
    let field = c.find(Locator::Css(&css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn modal_open(c: &Client, callback_id: &str) {
    until(
        c,
        &format!("the {callback_id} modal"),
        &format!("return document.querySelector('#modal[data-callback-id=\"{callback_id}\"]') !== null;"),
    )
    .await;
}

#[tokio::test]
async fn on_the_local_slack_a_modal_request_shows_field_errors_is_approved_and_ended_from_home() {
    let Some(browser) = browser::launch().await else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dev = jitgate::dev::start(jitgate::dev::DevOptions {
        port: 0,
        data_dir: dir.path().to_path_buf(),
        config: None,
        real_adapters: false,
    })
    .await
    .unwrap();
    let c = &browser.client;
    c.goto(&format!("{}?as=U0ALICE", dev.url)).await.unwrap();
    until(
        c,
        "the page as Alice",
        "return document.getElementById('acting-as').value === 'U0ALICE';",
    )
    .await;
    open_room(c, "C0GENERAL").await;

    // The manifest's "Request access" shortcut opens the form; Cancel closes it.
    c.find(Locator::Id("shortcuts-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css(
        "#shortcuts-menu button[data-callback-id=\"request_access\"]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    modal_open(c, "jit_request").await;
    c.find(Locator::Id("modal-close")).await.unwrap().click().await.unwrap();
    until(
        c,
        "the modal closed",
        "return document.getElementById('modal-backdrop') === null;",
    )
    .await;

    // `/jit` alone opens it too.
    let input = c.find(Locator::Id("composer-input")).await.unwrap();
    input.send_keys("/jit").await.unwrap();
    c.find(Locator::Id("composer-send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    modal_open(c, "jit_request").await;
    // Choosing another resource updates the form (dispatch_action → views.update), and
    // what was typed stays.
    type_into(c, "reason", "   ").await;
    c.find(Locator::Css("#modal [data-block-id=\"resource\"] select"))
        .await
        .unwrap()
        .select_by_value("staging-db")
        .await
        .unwrap();
    until(
        c,
        "the form updated for staging-db",
        "return document.getElementById('modal').innerText.includes('up to 8h');",
    )
    .await;

    // A reason of only spaces: the app answers with a field error, shown under Reason.
    c.find(Locator::Id("modal-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = until(
        c,
        "the reason's field error",
        "const e = document.querySelector('#modal .input-error[data-error-for=\"reason\"]'); return e ? e.textContent : '';",
    )
    .await;
    assert!(shown.as_str().unwrap().contains("Say why"), "{shown}");
    let others = c
        .execute(
            "return [...document.querySelectorAll('#modal .input-error')].filter(e => e.dataset.errorFor !== 'reason').map(e => e.textContent).join('');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(others, "", "an error under another input");
    if std::env::var("JITGATE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        c.set_window_size(1280, 820).await.unwrap();
        let png = c.screenshot().await.unwrap();
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/local-slack-modal.png");
        std::fs::write(&target, &png).unwrap();
    }

    type_into(
        c,
        "reason",
        "checking replication lag <img src=x onerror=window.__xss=1>",
    )
    .await;
    c.find(Locator::Id("modal-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        c,
        "the modal closed after submitting",
        "return document.getElementById('modal-backdrop') === null;",
    )
    .await;
    let submissions: Vec<_> = dev
        .fake
        .ok_calls("views.update")
        .into_iter()
        .filter(|call| call.body["view"]["callback_id"] == "jit_request")
        .collect();
    assert!(!submissions.is_empty(), "the resource choice reached the app");

    // Bob, switched to with the page's switcher, approves in #db-approvals.
    c.find(Locator::Id("acting-as"))
        .await
        .unwrap()
        .select_by_value("U0BOB")
        .await
        .unwrap();
    until(
        c,
        "the page as Bob",
        "return document.querySelector('#sidebar li[data-room=\"D0BOB\"]') !== null;",
    )
    .await;
    open_room(c, "C0DBAPPROVE").await;
    let card = until(
        c,
        "the card of the form's request",
        "return [...document.querySelectorAll('#messages .message')].map(m => m.innerText).find(t => t.includes('staging-db:read')) || '';",
    )
    .await;
    // What was typed is shown as text: no element made of it, no script run.
    assert!(
        card.as_str()
            .unwrap()
            .contains("checking replication lag <img src=x onerror=window.__xss=1>"),
        "{card}"
    );
    let injected = c
        .execute(
            "return document.querySelectorAll('#messages img').length + (window.__xss === undefined ? 0 : 100);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, 0, "typed markup became an element or ran");
    click_button(c, "jit_approve").await;
    until(
        c,
        "the card approved and granted",
        "const t = document.querySelector('#messages').innerText; return t.includes('Approved by @Bob') && t.includes('Access granted');",
    )
    .await;

    // Alice: her DM, then "I'm done" on her Home tab.
    c.find(Locator::Id("acting-as"))
        .await
        .unwrap()
        .select_by_value("U0ALICE")
        .await
        .unwrap();
    until(
        c,
        "the page as Alice again",
        "return document.querySelector('#sidebar li[data-room=\"D0ALICE\"]') !== null;",
    )
    .await;
    open_room(c, "D0ALICE").await;
    until(
        c,
        "the requester's DM",
        "return document.querySelector('#messages').innerText.includes('staging-db');",
    )
    .await;
    open_room(c, "home").await;
    until(
        c,
        "the I'm done button on Home",
        "return [...document.querySelectorAll('#home button')].some(b => b.innerText.includes(\"I'm done\"));",
    )
    .await;
    c.execute(
        "[...document.querySelectorAll('#home button')].find(b => b.innerText.includes(\"I'm done\")).click(); return true;",
        vec![],
    )
    .await
    .unwrap();
    let record_file = dir.path().join("jitgate-dev-grants.jsonl");
    wait_for("the record adapter asked to revoke", || {
        let f = record_file.clone();
        async move {
            std::fs::read_to_string(f)
                .ok()
                .filter(|t| t.contains("\"action\":\"revoke\""))
        }
    })
    .await;
    until(
        c,
        "Home without the ended access's buttons",
        "const h = document.getElementById('home'); return h && ![...h.querySelectorAll('button')].some(b => b.innerText.includes(\"I'm done\"));",
    )
    .await;

    browser.close().await;
    dev.shutdown().await.unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "local Slack modal and Home flow took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
