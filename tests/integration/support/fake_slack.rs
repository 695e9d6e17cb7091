//! A fake Slack Web API that speaks the real wire format and records every call.

use std::collections::{HashMap, VecDeque};
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
    /// User ID → e-mail (`None`: a profile without one), for `users.info`.
    emails: HashMap<String, Option<String>>,
    next_ts: u64,
}

/// The fake's handle: inspect calls, script failures, set group members.
#[derive(Clone)]
pub struct FakeSlack {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeSlack {
    /// Starts the fake on an ephemeral port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            next_ts: 1_700_000_000,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/api/{method}", post(api_post).get(api_get))
            .route("/response/{id}", post(response_url))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, inner }
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
        self.inner.lock().unwrap().calls.clone()
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
        self.inner
            .lock()
            .unwrap()
            .failures
            .entry(method.to_string())
            .or_default()
            .extend(failures);
    }

    /// Names a channel for `conversations.info`; unknown channels answer `channel_not_found`.
    pub fn set_channel(&self, id: &str, name: &str) {
        self.inner.lock().unwrap().channels.insert(id.into(), name.into());
    }

    /// Sets the e-mail `users.info` shows for `user` (`None`: a profile without one);
    /// unknown users answer `user_not_found`.
    pub fn set_email(&self, user: &str, email: Option<&str>) {
        self.inner
            .lock()
            .unwrap()
            .emails
            .insert(user.into(), email.map(String::from));
    }

    /// Sets the members `usergroups.users.list` returns for `group`.
    pub fn set_group(&self, group: &str, members: &[&str]) {
        self.inner
            .lock()
            .unwrap()
            .groups
            .insert(group.into(), members.iter().map(|m| m.to_string()).collect());
    }
}

type Shared = Arc<Mutex<Inner>>;

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {BOT_TOKEN}"))
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
    State(inner): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body)
        .or_else(|_| serde_urlencoded::from_bytes::<HashMap<String, String>>(&body).map(|m| json!(m)))
        .unwrap_or(Value::Null);
    let mut g = inner.lock().unwrap();
    if !authorized(&headers) {
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
    let channel = body["channel"].as_str().unwrap_or_default().to_string();
    let reply = match method.as_str() {
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
    g.calls.push(Call { method, body, ok });
    Json(reply).into_response()
}

async fn api_get(
    State(inner): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let body = json!(query);
    let mut g = inner.lock().unwrap();
    if !authorized(&headers) {
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
            match g.channels.get(&id) {
                Some(name) => json!({"ok": true, "channel": {
                    "id": id, "name": name, "name_normalized": name, "created": 1_600_000_000,
                    "is_channel": true, "is_private": id.starts_with('G'), "is_archived": false, "is_member": true
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

async fn response_url(State(inner): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let mut body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    body["response_url_id"] = json!(id);
    inner.lock().unwrap().calls.push(Call {
        method: "response_url".into(),
        body,
        ok: true,
    });
    // Slack answers a response_url post with a bare "ok".
    (StatusCode::OK, "ok").into_response()
}
