//! A fake Slack for tests, the load generator and (later) a local Slack: the Web API and
//! Socket Mode, speaking the real wire formats and recording every call. Never used by
//! production paths.
//!
//! The Web API answers what slack-morphism's response types require; `auth.test` reports
//! scopes in `x-oauth-scopes`; `apps.connections.open` hands out single-use `ws://` URLs
//! of the Socket Mode server in [`socket`]. Failures can be scripted (`fail_next`), a
//! channel can refuse posts for good (`refuse_channel`), calls can hang (`hang_channel`),
//! and the bot token can be revoked (`set_token_revoked`).

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

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `chat.update`, `usergroups.users.list` or `response_url`.
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

    /// Calls held by [`FakeSlack::hang_channel`] right now.
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
    let reply = match method.as_str() {
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
        "views.publish" => {
            let mut view = body["view"].clone();
            view["id"] = json!("V0HOME");
            view["team_id"] = json!("T0TEAM");
            view["hash"] = json!("1700000000.abc");
            json!({"ok": true, "view": view})
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
