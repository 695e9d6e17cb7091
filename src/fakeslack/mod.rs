//! A fake Slack for tests, the load generator and (later) a local Slack: the Web API and
//! Socket Mode, speaking the real wire formats and recording every call. Never used by
//! production paths.
//!
//! The Web API answers what slack-morphism's response types require; `auth.test` reports
//! scopes in `x-oauth-scopes`; `apps.connections.open` hands out single-use `ws://` URLs
//! of the Socket Mode server in [`socket`]. Failures can be scripted (`fail_next`), a
//! channel can refuse posts for good (`refuse_channel`), calls can hang (`hang_channel`),
//! and the bot token can be revoked (`set_token_revoked`).
//!
//! Modals and the Home tab follow Slack's rules, so code that works here works on Slack:
//! `views.open` and `views.push` take only a `trigger_id` the fake issued
//! ([`FakeSlack::new_trigger_id`]: the test harness and a local Slack give one to each
//! command and click), at most [`TRIGGER_TTL`] old (`expired_trigger_id`) and once
//! (`exchanged_trigger_id`); `views.update` needs a `view_id` (or `external_id`) the fake
//! handed out (`not_found`) and a matching `hash` when one is sent (`hash_conflict`);
//! `views.publish` needs a `user_id`. Block Kit is checked against Slack's limits
//! ([`check_view`], [`check_message_blocks`]: `invalid_blocks`, or `invalid_arguments` for
//! a modal's title, buttons and `private_metadata`). A post to a private channel (`G…`) the
//! bot is not in answers `not_in_channel`. Every call is recorded with its full body,
//! views included ([`FakeSlack::calls`]); the views the fake holds are in
//! [`FakeSlack::view`] and [`FakeSlack::home_of`].

pub mod page;
pub mod socket;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The token the fake expects; the app under test is configured with it.
pub const BOT_TOKEN: &str = "xoxb-test-token";
/// The app-level token `apps.connections.open` expects (Socket Mode).
pub const APP_TOKEN: &str = "xapp-test-token";
/// The bot's user ID, as `auth.test` reports it.
pub const BOT_USER: &str = "U0JITGATE";
/// The scopes `auth.test` reports unless a test sets others: the manifest's.
pub const ALL_SCOPES: &[&str] = &[
    "commands",
    "chat:write",
    "chat:write.public",
    "usergroups:read",
    "channels:read",
    "groups:read",
    "users:read",
    "users:read.email",
];

/// How long a `trigger_id` may be exchanged for a view, as on Slack.
pub const TRIGGER_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The Web API method (`chat.postMessage`, `views.open`, `usergroups.users.list`, …)
    /// or `response_url`.
    pub method: String,
    /// The JSON body (or the query, as JSON, for GET calls).
    pub body: Value,
    /// Whether the fake answered with success.
    pub ok: bool,
}

impl Call {
    /// The `channel` field.
    pub fn channel(&self) -> &str {
        self.body["channel"].as_str().unwrap_or_default()
    }
    /// The `text` field.
    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }
    /// All text in the message, blocks included, for assertions.
    pub fn all_text(&self) -> String {
        self.body.to_string()
    }
}

/// One successful call with the fake's answer, in the order they were answered: what the
/// local Slack's page replays to show messages, their edits and the Home tab.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Position in the log, from 0.
    pub seq: usize,
    /// `chat.postMessage`, `chat.update`, `views.publish`, … or `response_url`.
    pub method: String,
    /// The request's JSON body (for `response_url`, with `response_url_id` added).
    pub body: Value,
    /// What the fake answered (for `response_url`, `{"ok":true}`).
    pub reply: Value,
}

/// A scripted failure for the next call(s) to a method.
#[derive(Debug, Clone)]
pub enum Failure {
    /// HTTP 429 with `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// HTTP 500.
    ServerError,
    /// `{"ok": false, "error": code}` with HTTP 200.
    ApiError(&'static str),
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    failures: HashMap<String, VecDeque<Failure>>,
    groups: HashMap<String, Vec<String>>,
    /// Channel ID → name, for `conversations.info`.
    channels: HashMap<String, String>,
    /// Channels the bot is not a member of (private ones then look absent, as on Slack).
    not_member: HashSet<String>,
    /// Channel ID → error code every post to it answers, until cleared.
    refused: HashMap<String, String>,
    /// Channels whose posts and updates never get an answer, until cleared.
    hung: HashSet<String>,
    /// `auth.test`'s `x-oauth-scopes`.
    scopes: Vec<String>,
    /// Every bot call answers `invalid_auth` (a revoked or wrong token).
    token_revoked: bool,
    /// Calls being held by a hang now.
    held: usize,
    /// User ID → e-mail (`None`: a profile without one), for `users.info`.
    emails: HashMap<String, Option<String>>,
    next_ts: u64,
    /// trigger_id → when it was issued and whether it was used.
    triggers: HashMap<String, (std::time::Instant, bool)>,
    next_trigger: u64,
    /// view_id → the view as the fake holds it (with id, hash, state).
    views: HashMap<String, Value>,
    /// user ID → view_id of their published Home tab.
    homes: HashMap<String, String>,
    next_view: u64,
    /// Successful calls with their answers (see [`Observed`]).
    observed: Vec<Observed>,
}

impl Inner {
    /// Logs a successful call and its answer, and tells subscribers.
    fn observe(&mut self, changes: &tokio::sync::watch::Sender<usize>, method: &str, body: &Value, reply: &Value) {
        let seq = self.observed.len();
        self.observed.push(Observed {
            seq,
            method: method.to_string(),
            body: body.clone(),
            reply: reply.clone(),
        });
        changes.send_replace(self.observed.len());
    }
}

/// The fake's handle: inspect calls, script failures, set group members.
#[derive(Clone)]
pub struct FakeSlack {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    /// The Socket Mode server `apps.connections.open` points at.
    pub socket: socket::FakeSocket,
    /// Wakes hung calls when a hang is lifted.
    unhang: Arc<tokio::sync::Notify>,
    /// The length of the observed log, changed after every successful call.
    changes: Arc<tokio::sync::watch::Sender<usize>>,
}

impl FakeSlack {
    /// Starts the fake on an ephemeral port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            next_ts: 1_700_000_000,
            scopes: ALL_SCOPES.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }));
        let socket = socket::FakeSocket::start().await;
        let unhang = Arc::new(tokio::sync::Notify::new());
        let changes = Arc::new(tokio::sync::watch::Sender::new(0));
        let shared = Shared {
            inner: inner.clone(),
            socket: socket.clone(),
            unhang: unhang.clone(),
            changes: changes.clone(),
        };
        let app = Router::new()
            .route("/api/{method}", post(api_post).get(api_get))
            .route("/response/{id}", post(response_url))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the fake Slack");
        let addr = listener.local_addr().expect("a bound listener has an address");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake Slack stopped");
            }
        });
        Self {
            addr,
            inner,
            socket,
            unhang,
            changes,
        }
    }

    /// A receiver that changes after every successful call (its value: how many calls are
    /// in the observed log); read them with [`FakeSlack::observed_since`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<usize> {
        self.changes.subscribe()
    }

    /// Successful calls with the fake's answers, from position `from` of the log on.
    pub fn observed_since(&self, from: usize) -> Vec<Observed> {
        self.lock()
            .observed
            .get(from..)
            .map(<[Observed]>::to_vec)
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every post to `channel` answers `{"ok":false,"error":code}` (like `not_in_channel`)
    /// until [`FakeSlack::accept_channel`].
    pub fn refuse_channel(&self, channel: &str, code: &str) {
        self.lock().refused.insert(channel.into(), code.into());
    }

    /// Lifts [`FakeSlack::refuse_channel`].
    pub fn accept_channel(&self, channel: &str) {
        self.lock().refused.remove(channel);
    }

    /// Posts and updates to `channel` get no answer at all while `hung` (a Slack that
    /// accepted the connection and stalls).
    pub fn hang_channel(&self, channel: &str, hung: bool) {
        if hung {
            self.lock().hung.insert(channel.into());
        } else {
            self.lock().hung.remove(channel);
            self.unhang.notify_waiters();
        }
    }

    /// Every GET call to `method` (like `usergroups.users.list`) gets no answer while
    /// `hung`.
    pub fn hang_method(&self, method: &str, hung: bool) {
        self.hang_channel(&format!("method:{method}"), hung);
    }

    /// Calls held by [`FakeSlack::hang_channel`] or [`FakeSlack::hang_method`] right now.
    pub fn held_calls(&self) -> usize {
        self.lock().held
    }

    /// The scopes `auth.test` reports.
    pub fn set_scopes(&self, scopes: &[&str]) {
        self.lock().scopes = scopes.iter().map(|s| s.to_string()).collect();
    }

    /// Whether the bot is a member of `channel` (default: yes). A private channel
    /// (`G…`) the bot is not in looks absent, as on Slack.
    pub fn set_member(&self, channel: &str, member: bool) {
        if member {
            self.lock().not_member.remove(channel);
        } else {
            self.lock().not_member.insert(channel.into());
        }
    }

    /// While `revoked`, every call with the bot token answers `invalid_auth`.
    pub fn set_token_revoked(&self, revoked: bool) {
        self.lock().token_revoked = revoked;
    }

    /// The Web API base URL to configure.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// A response_url pointing at the fake.
    pub fn response_url(&self, id: &str) -> String {
        format!("http://{}/response/{id}", self.addr)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Successful calls to `method`.
    pub fn ok_calls(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.ok && c.method == method)
            .collect()
    }

    /// Messages successfully posted to `channel` (a channel or user ID).
    pub fn posted_to(&self, channel: &str) -> Vec<Call> {
        self.ok_calls("chat.postMessage")
            .into_iter()
            .filter(|c| c.channel() == channel)
            .collect()
    }

    /// Scripts the next calls to `method` to fail, in order.
    pub fn fail_next(&self, method: &str, failures: Vec<Failure>) {
        self.lock()
            .failures
            .entry(method.to_string())
            .or_default()
            .extend(failures);
    }

    /// Names a channel for `conversations.info`; unknown channels answer `channel_not_found`.
    pub fn set_channel(&self, id: &str, name: &str) {
        self.lock().channels.insert(id.into(), name.into());
    }

    /// Sets the e-mail `users.info` shows for `user` (`None`: a profile without one);
    /// unknown users answer `user_not_found`.
    pub fn set_email(&self, user: &str, email: Option<&str>) {
        self.lock().emails.insert(user.into(), email.map(String::from));
    }

    /// A fresh `trigger_id`, as Slack puts in every command and click: `views.open` and
    /// `views.push` accept it once, within [`TRIGGER_TTL`] of this call.
    pub fn new_trigger_id(&self) -> String {
        let mut g = self.lock();
        g.next_trigger += 1;
        let id = format!("{}.{}.{:016x}", g.next_trigger, 1_700_000_000u64, rand::random::<u64>());
        g.triggers.insert(id.clone(), (std::time::Instant::now(), false));
        id
    }

    /// Makes `trigger_id` look issued `by` earlier (a person who waited, a slow app).
    pub fn age_trigger_id(&self, trigger_id: &str, by: std::time::Duration) {
        if let Some((issued, _)) = self.lock().triggers.get_mut(trigger_id) {
            if let Some(earlier) = issued.checked_sub(by) {
                *issued = earlier;
            }
        }
    }

    /// The view the fake holds under `view_id` (opened, pushed, updated or published).
    pub fn view(&self, view_id: &str) -> Option<Value> {
        self.lock().views.get(view_id).cloned()
    }

    /// `user`'s Home tab as last published.
    pub fn home_of(&self, user: &str) -> Option<Value> {
        let g = self.lock();
        g.homes.get(user).and_then(|id| g.views.get(id)).cloned()
    }

    /// Sets the members `usergroups.users.list` returns for `group`.
    pub fn set_group(&self, group: &str, members: &[&str]) {
        self.lock()
            .groups
            .insert(group.into(), members.iter().map(|m| m.to_string()).collect());
    }
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    socket: socket::FakeSocket,
    unhang: Arc<tokio::sync::Notify>,
    changes: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn authorized(headers: &HeaderMap, inner: &Inner) -> bool {
    bearer(headers) == Some(BOT_TOKEN) && !inner.token_revoked
}

/// Waits while `channel` is hung.
async fn wait_unhung(state: &Shared, channel: &str) {
    /// Counts the call as held until it is released or its client gives up.
    struct Held<'a>(&'a Shared);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.lock().held -= 1;
        }
    }
    let mut held = None;
    loop {
        let unhung = state.unhang.notified();
        if !state.lock().hung.contains(channel) {
            return;
        }
        if held.is_none() {
            state.lock().held += 1;
            held = Some(Held(state));
        }
        unhung.await;
    }
}

fn failure_response(f: Failure) -> Response {
    match f {
        Failure::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_secs.to_string())],
            Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response(),
        Failure::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "upstream trouble").into_response(),
        Failure::ApiError(code) => Json(json!({"ok": false, "error": code})).into_response(),
    }
}

fn take_failure(inner: &mut Inner, method: &str) -> Option<Failure> {
    inner.failures.get_mut(method).and_then(|q| q.pop_front())
}

async fn api_post(
    State(state): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body)
        .or_else(|_| serde_urlencoded::from_bytes::<HashMap<String, String>>(&body).map(|m| json!(m)))
        .unwrap_or(Value::Null);
    if method == "apps.connections.open" {
        return connections_open(&state, &headers, body);
    }
    let channel = body["channel"].as_str().unwrap_or_default().to_string();
    if matches!(method.as_str(), "chat.postMessage" | "chat.update") {
        wait_unhung(&state, &channel).await;
    }
    let mut g = state.lock();
    if !authorized(&headers, &g) {
        g.calls.push(Call {
            method,
            body,
            ok: false,
        });
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    if let Some(f) = take_failure(&mut g, &method) {
        g.calls.push(Call {
            method,
            body,
            ok: false,
        });
        return failure_response(f);
    }
    if let Some(code) = g.refused.get(&channel).cloned() {
        if matches!(method.as_str(), "chat.postMessage" | "chat.update") {
            g.calls.push(Call {
                method,
                body,
                ok: false,
            });
            return Json(json!({"ok": false, "error": code})).into_response();
        }
    }
    if matches!(method.as_str(), "chat.postMessage" | "chat.update") {
        if let Err(code) = check_message_blocks(&body) {
            g.calls.push(Call {
                method,
                body,
                ok: false,
            });
            return Json(json!({"ok": false, "error": code})).into_response();
        }
        // chat:write.public reaches public channels; a private one needs the bot in it.
        if channel.starts_with('G') && g.not_member.contains(&channel) {
            g.calls.push(Call {
                method,
                body,
                ok: false,
            });
            return Json(json!({"ok": false, "error": "not_in_channel"})).into_response();
        }
    }
    let reply = match method.as_str() {
        "views.open" | "views.push" | "views.update" | "views.publish" => {
            let mut body = body;
            // Form-encoded calls carry the view as a JSON string.
            if let Some(text) = body["view"].as_str() {
                body["view"] = serde_json::from_str(text).unwrap_or(Value::Null);
            }
            let reply = views_call(&mut g, &method, &body);
            let ok = reply["ok"].as_bool().unwrap_or(false);
            if ok {
                g.observe(&state.changes, &method, &body, &reply);
            }
            g.calls.push(Call { method, body, ok });
            return Json(reply).into_response();
        }
        "auth.test" => {
            let scopes = g.scopes.join(",");
            g.calls.push(Call { method, body, ok: true });
            return (
                [("x-oauth-scopes", scopes)],
                Json(
                    json!({"ok": true, "url": "https://acme.slack.com/", "team": "Acme", "user": "jitgate",
                            "team_id": "T0TEAM", "user_id": BOT_USER, "bot_id": "B0JITGATE"}),
                ),
            )
                .into_response();
        }
        "chat.postMessage" => {
            g.next_ts += 1;
            let ts = format!("{}.000100", g.next_ts);
            // DMs to a user ID land in a D… channel, as on real Slack.
            let channel = match channel.strip_prefix('U') {
                Some(rest) => format!("D{rest}"),
                None => channel,
            };
            json!({"ok": true, "channel": channel, "ts": ts, "message": {"ts": ts, "type": "message", "text": body["text"]}})
        }
        "chat.update" => {
            json!({"ok": true, "channel": channel, "ts": body["ts"], "text": body["text"], "message": {"text": body["text"]}})
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    let ok = reply["ok"].as_bool().unwrap_or(false);
    if ok {
        g.observe(&state.changes, &method, &body, &reply);
    }
    g.calls.push(Call { method, body, ok });
    Json(reply).into_response()
}

async fn api_get(
    State(state): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let body = json!(query);
    wait_unhung(&state, &format!("method:{method}")).await;
    let mut g = state.lock();
    if !authorized(&headers, &g) {
        g.calls.push(Call {
            method,
            body,
            ok: false,
        });
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    if let Some(f) = take_failure(&mut g, &method) {
        g.calls.push(Call {
            method,
            body,
            ok: false,
        });
        return failure_response(f);
    }
    let reply = match method.as_str() {
        "usergroups.users.list" => match query.get("usergroup").and_then(|u| g.groups.get(u)) {
            Some(users) => json!({"ok": true, "users": users}),
            None => json!({"ok": false, "error": "no_such_subteam"}),
        },
        "conversations.info" => {
            let id = query.get("channel").cloned().unwrap_or_default();
            let private = id.starts_with('G');
            let member = !g.not_member.contains(&id);
            match g.channels.get(&id) {
                // Slack hides a private channel from a bot that is not in it.
                Some(_) if private && !member => json!({"ok": false, "error": "channel_not_found"}),
                Some(name) => json!({"ok": true, "channel": {
                    "id": id, "name": name, "name_normalized": name, "created": 1_600_000_000,
                    "is_channel": true, "is_private": private, "is_archived": false, "is_member": member
                }}),
                None => json!({"ok": false, "error": "channel_not_found"}),
            }
        }
        "users.info" => {
            let id = query.get("user").cloned().unwrap_or_default();
            match g.emails.get(&id) {
                Some(email) => {
                    let mut profile = json!({"real_name": "Someone", "display_name": "someone"});
                    if let Some(e) = email {
                        profile["email"] = json!(e);
                    }
                    json!({"ok": true, "user": {"id": id, "team_id": "T0TEAM", "name": "someone", "deleted": false, "profile": profile}})
                }
                None => json!({"ok": false, "error": "user_not_found"}),
            }
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    let ok = reply["ok"].as_bool().unwrap_or(false);
    g.calls.push(Call { method, body, ok });
    Json(reply).into_response()
}

fn connections_open(state: &Shared, headers: &HeaderMap, body: Value) -> Response {
    let method = "apps.connections.open".to_string();
    let mut g = state.lock();
    if bearer(headers) != Some(APP_TOKEN) {
        g.calls.push(Call {
            method,
            body,
            ok: false,
        });
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    if let Some(f) = take_failure(&mut g, &method) {
        g.calls.push(Call {
            method,
            body,
            ok: false,
        });
        return failure_response(f);
    }
    let url = state.socket.new_url();
    g.calls.push(Call { method, body, ok: true });
    Json(json!({"ok": true, "url": url})).into_response()
}

async fn response_url(State(state): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let mut body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    body["response_url_id"] = json!(id);
    let mut g = state.lock();
    g.observe(&state.changes, "response_url", &body, &json!({"ok": true}));
    g.calls.push(Call {
        method: "response_url".into(),
        body,
        ok: true,
    });
    // Slack answers a response_url post with a bare "ok".
    (StatusCode::OK, "ok").into_response()
}

/// Slack's limits on Block Kit, as the fake enforces them.
pub mod limits {
    /// Blocks in one message.
    pub const MESSAGE_BLOCKS: usize = 50;
    /// Blocks in a modal or a Home tab.
    pub const VIEW_BLOCKS: usize = 100;
    /// A modal's title, submit and close texts.
    pub const MODAL_TEXT: usize = 24;
    /// A section's text (and each field).
    pub const SECTION_TEXT: usize = 3000;
    /// A header block's text.
    pub const HEADER_TEXT: usize = 150;
    /// A button's text.
    pub const BUTTON_TEXT: usize = 75;
    /// A button's (or option's) value.
    pub const VALUE: usize = 2000;
    /// `block_id` and `action_id`.
    pub const ID: usize = 255;
    /// A view's `private_metadata`.
    pub const PRIVATE_METADATA: usize = 3000;
    /// An input block's label and an option's text.
    pub const LABEL: usize = 2000;
    /// Options in a static select.
    pub const OPTIONS: usize = 100;
}

fn chars(v: &Value) -> usize {
    v.as_str().map(|s| s.chars().count()).unwrap_or(0)
}

/// Why Slack would refuse these blocks (`invalid_blocks`), if it would.
fn check_blocks(blocks: &Value, max: usize) -> Result<(), String> {
    let Some(list) = blocks.as_array() else {
        return if blocks.is_null() {
            Ok(())
        } else {
            Err("blocks is not a list".into())
        };
    };
    if list.len() > max {
        return Err(format!("{} blocks, more than {max}", list.len()));
    }
    let mut ids = HashSet::new();
    for (i, b) in list.iter().enumerate() {
        if let Some(id) = b["block_id"].as_str() {
            if chars(&b["block_id"]) > limits::ID {
                return Err(format!("block {i}: block_id too long"));
            }
            if !ids.insert(id.to_string()) {
                return Err(format!("block {i}: duplicate block_id {id}"));
            }
        }
        match b["type"].as_str() {
            Some("section") => {
                if chars(&b["text"]["text"]) > limits::SECTION_TEXT {
                    return Err(format!("block {i}: section text over {}", limits::SECTION_TEXT));
                }
                if let Some(fields) = b["fields"].as_array() {
                    if fields.iter().any(|f| chars(&f["text"]) > 2000) || fields.len() > 10 {
                        return Err(format!("block {i}: section fields over Slack's limits"));
                    }
                }
                if b["text"].is_null() && b["fields"].is_null() {
                    return Err(format!("block {i}: section without text or fields"));
                }
                check_element(&b["accessory"], i)?;
            }
            Some("header") => {
                if b["text"]["type"] != "plain_text" || chars(&b["text"]["text"]) > limits::HEADER_TEXT {
                    return Err(format!(
                        "block {i}: header must be plain_text of at most {}",
                        limits::HEADER_TEXT
                    ));
                }
            }
            Some("actions") => {
                let elements = b["elements"].as_array().map(Vec::as_slice).unwrap_or_default();
                if elements.is_empty() || elements.len() > 25 {
                    return Err(format!("block {i}: actions needs 1 to 25 elements"));
                }
                for e in elements {
                    check_element(e, i)?;
                }
            }
            Some("context") => {
                let elements = b["elements"].as_array().map(Vec::as_slice).unwrap_or_default();
                if elements.is_empty() || elements.len() > 10 {
                    return Err(format!("block {i}: context needs 1 to 10 elements"));
                }
            }
            Some("input") => {
                if chars(&b["label"]["text"]) == 0 || chars(&b["label"]["text"]) > limits::LABEL {
                    return Err(format!("block {i}: input label missing or too long"));
                }
                if b["element"].is_null() {
                    return Err(format!("block {i}: input without element"));
                }
                check_element(&b["element"], i)?;
            }
            Some("divider") | Some("image") | Some("rich_text") | Some("file") | Some("video") => {}
            other => return Err(format!("block {i}: unknown block type {other:?}")),
        }
    }
    Ok(())
}

/// Why Slack would refuse one interactive element, if it would.
fn check_element(e: &Value, block: usize) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    if chars(&e["action_id"]) > limits::ID {
        return Err(format!("block {block}: action_id too long"));
    }
    match e["type"].as_str() {
        Some("button") => {
            let text = chars(&e["text"]["text"]);
            if text == 0 || text > limits::BUTTON_TEXT {
                return Err(format!(
                    "block {block}: button text must be 1 to {} characters",
                    limits::BUTTON_TEXT
                ));
            }
            if chars(&e["value"]) > limits::VALUE {
                return Err(format!("block {block}: button value over {}", limits::VALUE));
            }
        }
        Some("static_select") | Some("radio_buttons") | Some("checkboxes") | Some("overflow") => {
            let options = e["options"].as_array().map(Vec::as_slice).unwrap_or_default();
            if e["option_groups"].is_null() && (options.is_empty() || options.len() > limits::OPTIONS) {
                return Err(format!(
                    "block {block}: a select needs 1 to {} options",
                    limits::OPTIONS
                ));
            }
            for o in options {
                if chars(&o["text"]["text"]) == 0 || chars(&o["text"]["text"]) > 75 || chars(&o["value"]) > 150 {
                    return Err(format!(
                        "block {block}: an option's text or value is over Slack's limits"
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why Slack would refuse a message's blocks (`invalid_blocks`), if it would.
pub fn check_message_blocks(body: &Value) -> Result<(), &'static str> {
    let blocks = match body["blocks"].as_str() {
        // Form-encoded calls carry blocks as a JSON string.
        Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        None => body["blocks"].clone(),
    };
    check_blocks(&blocks, limits::MESSAGE_BLOCKS).map_err(|why| {
        tracing::warn!(why, "fake Slack: invalid_blocks");
        "invalid_blocks"
    })
}

/// Why Slack would refuse a view (`invalid_arguments` for its frame, `invalid_blocks`
/// for its blocks), if it would.
pub fn check_view(view: &Value) -> Result<(), &'static str> {
    let kind = view["type"].as_str();
    if !matches!(kind, Some("modal") | Some("home")) {
        return Err("invalid_arguments");
    }
    if kind == Some("modal") {
        let title = chars(&view["title"]["text"]);
        if title == 0 || title > limits::MODAL_TEXT {
            return Err("invalid_arguments");
        }
        for key in ["submit", "close"] {
            if chars(&view[key]["text"]) > limits::MODAL_TEXT {
                return Err("invalid_arguments");
            }
        }
        let has_input = view["blocks"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["type"] == "input"));
        if has_input && view["submit"].is_null() {
            return Err("invalid_arguments");
        }
    }
    if chars(&view["private_metadata"]) > limits::PRIVATE_METADATA
        || chars(&view["callback_id"]) > limits::ID
        || chars(&view["external_id"]) > limits::ID
    {
        return Err("invalid_arguments");
    }
    check_blocks(&view["blocks"], limits::VIEW_BLOCKS).map_err(|why| {
        tracing::warn!(why, "fake Slack: invalid_blocks in a view");
        "invalid_blocks"
    })
}

/// Takes a trigger_id for a view, as Slack does: issued by the fake, fresh, once.
fn exchange_trigger(g: &mut Inner, trigger: Option<&str>) -> Result<(), &'static str> {
    let Some(trigger) = trigger.filter(|t| !t.is_empty()) else {
        return Err("invalid_arguments");
    };
    match g.triggers.get_mut(trigger) {
        None => Err("invalid_trigger_id"),
        Some((_, true)) => Err("exchanged_trigger_id"),
        Some((issued, used)) => {
            if issued.elapsed() > TRIGGER_TTL {
                return Err("expired_trigger_id");
            }
            *used = true;
            Ok(())
        }
    }
}

/// `views.open`, `views.push`, `views.update` and `views.publish`, with Slack's answers.
fn views_call(g: &mut Inner, method: &str, body: &Value) -> Value {
    let fail = |code: &str| json!({"ok": false, "error": code});
    let view = &body["view"];
    if let Err(code) = check_view(view) {
        return fail(code);
    }
    let previous: Option<String> = match method {
        "views.open" | "views.push" => {
            if view["type"] != "modal" {
                return fail("invalid_arguments");
            }
            if let Err(code) = exchange_trigger(g, body["trigger_id"].as_str()) {
                return fail(code);
            }
            None
        }
        "views.update" => {
            let id = match (body["view_id"].as_str(), body["external_id"].as_str()) {
                (Some(id), _) => Some(id.to_string()),
                (None, Some(ext)) => g
                    .views
                    .iter()
                    .find(|(_, v)| v["external_id"] == ext)
                    .map(|(id, _)| id.clone()),
                (None, None) => return fail("invalid_arguments"),
            };
            let Some(old) = id.as_ref().and_then(|id| g.views.get(id)) else {
                return fail("not_found");
            };
            if old["type"] != view["type"] {
                return fail("invalid_arguments");
            }
            if let Some(hash) = body["hash"].as_str() {
                if old["hash"] != hash {
                    return fail("hash_conflict");
                }
            }
            id
        }
        _ => {
            if view["type"] != "home" {
                return fail("invalid_arguments");
            }
            let Some(user) = body["user_id"].as_str().filter(|u| !u.is_empty()) else {
                return fail("invalid_arguments");
            };
            g.homes.get(user).cloned()
        }
    };
    g.next_view += 1;
    let n = g.next_view;
    let id = previous.clone().unwrap_or_else(|| format!("V{n:08}"));
    let mut stored = view.clone();
    stored["id"] = json!(id);
    stored["team_id"] = json!("T0TEAM");
    stored["app_id"] = json!("A0APP");
    stored["bot_id"] = json!("B0JITGATE");
    stored["hash"] = json!(format!("{}.{n:08x}", 1_700_000_000u64 + n));
    stored["state"] = json!({"values": {}});
    for key in ["private_metadata", "callback_id", "external_id"] {
        if stored[key].is_null() {
            stored[key] = json!("");
        }
    }
    let root = match (method, previous.as_ref().and_then(|p| g.views.get(p))) {
        (_, Some(old)) => old["root_view_id"].clone(),
        _ => json!(id),
    };
    stored["root_view_id"] = root;
    stored["previous_view_id"] = Value::Null;
    if method == "views.publish" {
        if let Some(user) = body["user_id"].as_str() {
            g.homes.insert(user.to_string(), id.clone());
        }
    }
    g.views.insert(id, stored.clone());
    json!({"ok": true, "view": stored})
}
