//! The local Slack: a web page, served by the binary itself (`jitgate dev`), that a person
//! uses like Slack — channels and direct messages, an "acting as" switcher over the demo
//! people, a composer for slash commands, messages rendered from their Block Kit, and
//! the app's Home tab — backed by the fake Slack of this module's parent.
//!
//! Nothing here talks to jitgate through a back door. A typed command is sent to the
//! bot's `/slack/commands` and a click to `/slack/interactions`, form-encoded and signed
//! exactly as Slack signs them; opening Home sends a signed `app_home_opened` event.
//! What the bot does in return (posting, updating, publishing Home, answering a
//! `response_url`) reaches the fake's Web API, and the page shows the fake's log of it
//! ([`FakeSlack::observed_since`]). Every change is pushed to open pages by server-sent
//! events, so a click by one person shows up for another without a reload.
//!
//! The page is one HTML file, one script and one style sheet compiled into the binary
//! (no build step, nothing from a CDN). It renders all text with `textContent`, never as
//! HTML. The server listens where it is told (`jitgate dev`: loopback only), answers only
//! requests addressed to a loopback host name (no DNS rebinding), and takes actions only
//! as JSON (so another web site cannot post a form to it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{FakeSlack, Observed, BOT_USER};
use crate::slack::signature;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Slack gives an app this long to answer a command or a click; later answers are
/// shown as `operation_timeout`, as Slack does.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// A person of the demo workspace.
#[derive(Debug, Clone, Serialize)]
pub struct Person {
    /// The Slack user ID (`U…`).
    pub id: String,
    /// The name shown for them.
    pub name: String,
    /// What they do, shown beside the name in the switcher.
    pub title: String,
}

/// A channel of the demo workspace.
#[derive(Debug, Clone, Serialize)]
pub struct Room {
    /// The channel ID (`C…` or `G…`).
    pub id: String,
    /// Its name, without `#`.
    pub name: String,
}

/// A user group (`S…`), shown as `@handle`.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub id: String,
    pub handle: String,
    pub members: Vec<String>,
}

/// Who and what the local workspace has.
#[derive(Debug, Clone, Serialize)]
pub struct Directory {
    /// The workspace ID commands and clicks carry.
    pub team_id: String,
    /// The app ID commands and clicks carry.
    pub api_app_id: String,
    /// The slash command as the bot knows it (`/jit`).
    pub command: String,
    pub people: Vec<Person>,
    pub channels: Vec<Room>,
    pub groups: Vec<Group>,
    /// Global shortcuts the app declares (the manifest's `features.shortcuts`).
    pub shortcuts: Vec<Shortcut>,
}

/// A global shortcut, offered in the composer's shortcuts menu.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shortcut {
    pub name: String,
    pub callback_id: String,
}

/// The global shortcuts declared in an app manifest (YAML): the `name` and `callback_id`
/// of each item under `features.shortcuts` with `type: global`.
pub fn manifest_shortcuts(manifest: &str) -> Vec<Shortcut> {
    let mut out = Vec::new();
    let mut inside: Option<usize> = None;
    let mut item: Option<(Option<String>, Option<String>, bool)> = None;
    let flush = |item: &mut Option<(Option<String>, Option<String>, bool)>, out: &mut Vec<Shortcut>| {
        if let Some((Some(name), Some(callback_id), true)) = item.take() {
            out.push(Shortcut { name, callback_id });
        }
    };
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        match inside {
            None => {
                if trimmed == "shortcuts:" {
                    inside = Some(indent);
                }
                continue;
            }
            Some(level) if indent <= level && !trimmed.starts_with('-') => {
                flush(&mut item, &mut out);
                inside = None;
                continue;
            }
            Some(_) => {}
        }
        let field = match trimmed.strip_prefix("- ") {
            Some(rest) => {
                flush(&mut item, &mut out);
                item = Some((None, None, false));
                rest
            }
            None => trimmed,
        };
        let Some((key, value)) = field.split_once(':') else {
            continue;
        };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        if let Some(it) = item.as_mut() {
            match key.trim() {
                "name" => it.0 = Some(value),
                "callback_id" => it.1 = Some(value),
                "type" => it.2 = value == "global",
                _ => {}
            }
        }
    }
    flush(&mut item, &mut out);
    out
}

impl Directory {
    /// Tells the fake Web API about the channels (for `conversations.info`), the user
    /// groups (`usergroups.users.list`) and the people (`users.info`).
    pub fn install(&self, fake: &FakeSlack) {
        for c in &self.channels {
            fake.set_channel(&c.id, &c.name);
        }
        for g in &self.groups {
            let members: Vec<&str> = g.members.iter().map(String::as_str).collect();
            fake.set_group(&g.id, &members);
        }
        for p in &self.people {
            let email = format!("{}@example.com", p.name.to_ascii_lowercase().replace(' ', "."));
            fake.set_email(&p.id, Some(&email));
        }
    }

    fn person(&self, id: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.id == id)
    }

    /// The channel's name (`directmessage` for a DM), if it exists for `user`.
    fn channel_name(&self, channel: &str, user: &str) -> Option<String> {
        if channel == dm_channel(user) {
            return Some("directmessage".into());
        }
        self.channels.iter().find(|c| c.id == channel).map(|c| c.name.clone())
    }
}

/// The ID of the bot's direct-message channel with `user`, as the fake reports it for a
/// post to the user ID (`U123` → `D123`).
pub fn dm_channel(user: &str) -> String {
    format!("D{}", user.get(1..).unwrap_or_default())
}

/// One message as the page shows it.
#[derive(Debug, Clone, Serialize)]
struct Message {
    channel: String,
    ts: String,
    /// Who posted it: the bot or a person.
    user: String,
    text: String,
    blocks: Value,
    /// An ephemeral message: only this person sees it.
    only_for: Option<String>,
    /// The command whose answer this is, shown above it.
    command: Option<String>,
    edited: bool,
    /// When the page learnt of it, unix milliseconds.
    at: i64,
}

/// Where a `response_url` the page handed out came from.
#[derive(Debug, Clone)]
struct Origin {
    user: String,
    channel: String,
    command: Option<String>,
    /// The message a click came from (so `replace_original` knows what to replace).
    message_ts: Option<String>,
}

#[derive(Default)]
struct Workspace {
    messages: Vec<Message>,
    /// User ID → their published Home tab.
    homes: HashMap<String, Value>,
    response_urls: HashMap<String, Origin>,
    /// trigger_id → the person whose command or click it came with.
    triggers: HashMap<String, String>,
    /// User ID → their open modal views, the top last.
    modals: HashMap<String, Vec<Value>>,
    next_ts: u64,
    /// The fake's log is applied up to here.
    applied: usize,
}

impl Workspace {
    fn local_ts(&mut self) -> String {
        self.next_ts += 1;
        format!("{}.{:06}", chrono::Utc::now().timestamp(), self.next_ts % 1_000_000)
    }

    fn find(&mut self, channel: &str, ts: &str) -> Option<&mut Message> {
        self.messages.iter_mut().find(|m| m.channel == channel && m.ts == ts)
    }

    /// Applies one call the bot made to the fake.
    fn apply(&mut self, o: &Observed) {
        let now = chrono::Utc::now().timestamp_millis();
        match o.method.as_str() {
            "chat.postMessage" => self.messages.push(Message {
                channel: o.reply["channel"].as_str().unwrap_or_default().to_string(),
                ts: o.reply["ts"].as_str().unwrap_or_default().to_string(),
                user: BOT_USER.to_string(),
                text: str_of(&o.body["text"]),
                blocks: json_of(&o.body["blocks"]),
                only_for: None,
                command: None,
                edited: false,
                at: now,
            }),
            "chat.postEphemeral" => {
                let ts = self.local_ts();
                self.messages.push(Message {
                    channel: str_of(&o.body["channel"]),
                    ts,
                    user: BOT_USER.to_string(),
                    text: str_of(&o.body["text"]),
                    blocks: json_of(&o.body["blocks"]),
                    only_for: o.body["user"].as_str().map(String::from),
                    command: None,
                    edited: false,
                    at: now,
                })
            }
            "chat.update" => {
                let (channel, ts) = (str_of(&o.body["channel"]), str_of(&o.body["ts"]));
                if let Some(m) = self.find(&channel, &ts) {
                    m.text = str_of(&o.body["text"]);
                    m.blocks = json_of(&o.body["blocks"]);
                    m.edited = true;
                }
            }
            "views.publish" => {
                if let Some(user) = o.body["user_id"].as_str() {
                    let mut view = json_of(&o.body["view"]);
                    if let Some(published) = o.reply.get("view") {
                        view = json_of(published);
                    }
                    self.homes.insert(user.to_string(), view);
                }
            }
            "views.open" | "views.push" => {
                let trigger = str_of(&o.body["trigger_id"]);
                if let Some(user) = self.triggers.get(&trigger).cloned() {
                    let view = view_of(o);
                    let stack = self.modals.entry(user).or_default();
                    // views.open starts a new stack; views.push adds to the open one.
                    if o.method == "views.open" {
                        stack.clear();
                    }
                    stack.push(view);
                }
            }
            "views.update" => {
                let view = view_of(o);
                let id = o.body["view_id"]
                    .as_str()
                    .or_else(|| view["id"].as_str())
                    .unwrap_or_default()
                    .to_string();
                let external = o.body["external_id"].as_str().unwrap_or_default().to_string();
                for stack in self.modals.values_mut() {
                    for v in stack.iter_mut() {
                        let same = (!id.is_empty() && v["id"].as_str() == Some(id.as_str()))
                            || (!external.is_empty() && v["external_id"].as_str() == Some(external.as_str()));
                        if same {
                            *v = view.clone();
                        }
                    }
                }
            }
            "response_url" => self.answer(&o.body, now),
            _ => {}
        }
    }

    /// The open modal `view_id` of `user`, and its place in their stack.
    fn modal(&self, user: &str, view_id: &str) -> Option<(usize, &Value)> {
        self.modals
            .get(user)?
            .iter()
            .enumerate()
            .find(|(_, v)| v["id"].as_str() == Some(view_id))
    }

    /// A post to a `response_url` the page handed out, with Slack's semantics.
    fn answer(&mut self, body: &Value, now: i64) {
        let id = str_of(&body["response_url_id"]);
        let Some(origin) = self.response_urls.get(&id).cloned() else {
            return;
        };
        let replace = body["replace_original"].as_bool().unwrap_or(false);
        if let Some(ts) = &origin.message_ts {
            if body["delete_original"].as_bool().unwrap_or(false) {
                self.messages.retain(|m| !(m.channel == origin.channel && &m.ts == ts));
                return;
            }
            if replace {
                if let Some(m) = self.find(&origin.channel, ts) {
                    m.text = str_of(&body["text"]);
                    m.blocks = json_of(&body["blocks"]);
                    m.edited = true;
                }
                return;
            }
        }
        let in_channel = body["response_type"].as_str() == Some("in_channel");
        let ts = self.local_ts();
        self.messages.push(Message {
            channel: origin.channel,
            ts,
            user: BOT_USER.to_string(),
            text: str_of(&body["text"]),
            blocks: json_of(&body["blocks"]),
            only_for: (!in_channel).then_some(origin.user),
            command: origin.command,
            edited: false,
            at: now,
        });
    }
}

/// The view a `views.*` call left: the fake's answer (with its `id` and `hash`), else
/// the one sent.
fn view_of(o: &Observed) -> Value {
    match o.reply.get("view") {
        Some(v) if v.is_object() => v.clone(),
        _ => json_of(&o.body["view"]),
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Blocks and views arrive as JSON, or (form-encoded calls) as a JSON string.
fn json_of(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

/// Slack escapes `&`, `<` and `>` in what people type before sending it to an app.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

type HttpClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

#[derive(Clone)]
struct Page {
    fake: FakeSlack,
    dir: Arc<Directory>,
    /// The bot's base URL (`http://127.0.0.1:PORT`).
    bot: Arc<str>,
    secret: Arc<[u8]>,
    ws: Arc<Mutex<Workspace>>,
    /// Bumped at every change the page shows.
    version: Arc<tokio::sync::watch::Sender<u64>>,
    http: HttpClient,
    stop: CancellationToken,
}

impl Page {
    fn lock(&self) -> std::sync::MutexGuard<'_, Workspace> {
        self.ws.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Applies what the fake logged since last time.
    fn catch_up(&self) {
        let mut ws = self.lock();
        let new = self.fake.observed_since(ws.applied);
        if new.is_empty() {
            return;
        }
        for o in &new {
            ws.apply(o);
        }
        ws.applied += new.len();
        drop(ws);
        self.changed();
    }

    /// POSTs `body` to the bot's `path`, signed as Slack signs it, within Slack's time.
    async fn send_signed(&self, path: &str, content_type: &str, body: String) -> Result<(u16, String, Bytes), String> {
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = signature::sign(&self.secret, &ts, body.as_bytes());
        let req = hyper::Request::post(format!("{}{path}", self.bot))
            .header(header::CONTENT_TYPE, content_type)
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let call = async {
            let res = self
                .http
                .request(req)
                .await
                .map_err(|_| "dispatch_failed".to_string())?;
            let status = res.status().as_u16();
            let ctype = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|_| "dispatch_failed".to_string())?
                .to_bytes();
            Ok((status, ctype, bytes))
        };
        tokio::time::timeout(REPLY_TIMEOUT, call)
            .await
            .map_err(|_| "operation_timeout".to_string())?
    }

    /// Shows `text` to `user` alone, as Slack shows its own errors.
    fn ephemeral(&self, user: &str, channel: &str, command: Option<String>, text: String) {
        let mut ws = self.lock();
        let ts = ws.local_ts();
        ws.messages.push(Message {
            channel: channel.to_string(),
            ts,
            user: "USLACKBOT".into(),
            text,
            blocks: Value::Null,
            only_for: Some(user.to_string()),
            command,
            edited: false,
            at: chrono::Utc::now().timestamp_millis(),
        });
        drop(ws);
        self.changed();
    }

    /// A trigger_id for `user`'s command or click; a `views.open` or `views.push` with it
    /// opens a modal for them. The one place they are made.
    fn trigger_id(&self, user: &str) -> String {
        let id = self.fake.new_trigger_id();
        self.lock().triggers.insert(id.clone(), user.to_string());
        id
    }

    fn new_response_url(&self, origin: Origin) -> String {
        let id = hex::encode(rand::random::<[u8; 12]>());
        self.lock().response_urls.insert(id.clone(), origin);
        self.fake.response_url(&id)
    }
}

/// Serves the local Slack page on `listener` until `stop` is cancelled, for the bot at
/// `bot_url` (`http://127.0.0.1:PORT`) that checks signatures with `signing_secret`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    fake: FakeSlack,
    dir: Directory,
    bot_url: &str,
    signing_secret: &[u8],
    stop: CancellationToken,
) -> std::io::Result<()> {
    dir.install(&fake);
    let page = Page {
        fake: fake.clone(),
        dir: Arc::new(dir),
        bot: Arc::from(bot_url.trim_end_matches('/')),
        secret: Arc::from(signing_secret),
        ws: Arc::default(),
        version: Arc::new(tokio::sync::watch::Sender::new(0)),
        http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        stop: stop.clone(),
    };
    // Follow the fake's log: every call the bot makes shows on the page.
    let follower = page.clone();
    let mut changes = fake.subscribe();
    tokio::spawn(async move {
        loop {
            follower.catch_up();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = follower.stop.cancelled() => break,
            }
        }
        tracing::debug!("local Slack: stopped following the fake's log");
    });
    let app = router(page);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/people", get(people))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/command", post(command))
        .route("/api/action", post(action))
        .route("/api/home_opened", post(home_opened))
        .route("/api/view_submission", post(view_submission))
        .route("/api/shortcut", post(shortcut))
        .route("/api/view_closed", post(view_closed))
        .layer(middleware::from_fn(loopback_only))
        .with_state(page)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

/// Answers only requests addressed to a loopback name (a DNS-rebinding page gets 403),
/// and refuses cross-site requests a browser marks as such.
async fn loopback_only(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let loopback = matches!(name, "127.0.0.1" | "localhost" | "[::1]");
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    if !loopback || cross_site {
        return (
            StatusCode::FORBIDDEN,
            "the local Slack answers only on 127.0.0.1 or localhost, from its own page\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// The people one can act as.
async fn people(State(page): State<Page>) -> Response {
    Json(&page.dir.people).into_response()
}

#[derive(Deserialize)]
struct Who {
    user: String,
}

/// What `user` sees: the directory, the messages visible to them, their Home tab.
async fn state(State(page): State<Page>, Query(who): Query<Who>) -> Response {
    page.catch_up();
    let Some(me) = page.dir.person(&who.user).cloned() else {
        return error(StatusCode::NOT_FOUND, "no such person in this workspace");
    };
    let ws = page.lock();
    let dm = dm_channel(&me.id);
    let messages: Vec<&Message> = ws
        .messages
        .iter()
        .filter(|m| m.only_for.as_deref().is_none_or(|u| u == me.id))
        .filter(|m| !m.channel.starts_with('D') || m.channel == dm)
        .collect();
    let body = json!({
        "version": *page.version.borrow(),
        "me": me,
        "bot": {"id": BOT_USER, "name": "jitgate"},
        "team_id": page.dir.team_id,
        "command": page.dir.command,
        "people": page.dir.people,
        "channels": page.dir.channels,
        "shortcuts": page.dir.shortcuts,
        "groups": page.dir.groups.iter().map(|g| json!({"id": g.id, "handle": g.handle})).collect::<Vec<_>>(),
        "dm": dm,
        "messages": messages,
        "home": ws.homes.get(&me.id),
        "modals": ws.modals.get(&me.id).cloned().unwrap_or_default(),
    });
    Json(body).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"ok": false, "error": message}))).into_response()
}

/// Server-sent events: `changed` with the new version after every change.
async fn events(State(page): State<Page>) -> Response {
    let rx = page.version.subscribe();
    let stop = page.stop.clone();
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        tokio::select! {
            changed = rx.changed() => changed.ok()?,
            _ = stop.cancelled() => return None,
        }
        let v = *rx.borrow_and_update();
        let event = Event::default().event("changed").data(v.to_string());
        Some((Ok::<_, std::convert::Infallible>(event), (rx, stop)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

#[derive(Deserialize)]
struct CommandReq {
    user: String,
    channel: String,
    text: String,
}

/// A line typed in the composer: a slash command goes to the bot, signed; anything else
/// is posted in the channel as the person's message.
async fn command(State(page): State<Page>, Json(req): Json<CommandReq>) -> Response {
    let Some(me) = page.dir.person(&req.user).cloned() else {
        return error(StatusCode::BAD_REQUEST, "no such person in this workspace");
    };
    let Some(channel_name) = page.dir.channel_name(&req.channel, &me.id) else {
        return error(StatusCode::BAD_REQUEST, "no such channel here");
    };
    let text = req.text.trim();
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, "type a message or a command");
    }
    if !text.starts_with('/') {
        let mut ws = page.lock();
        let ts = ws.local_ts();
        ws.messages.push(Message {
            channel: req.channel.clone(),
            ts,
            user: me.id.clone(),
            text: text.to_string(),
            blocks: Value::Null,
            only_for: None,
            command: None,
            edited: false,
            at: chrono::Utc::now().timestamp_millis(),
        });
        drop(ws);
        page.changed();
        return Json(json!({"ok": true})).into_response();
    }
    let (name, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if name != page.dir.command {
        page.ephemeral(
            &me.id,
            &req.channel,
            Some(text.to_string()),
            format!(
                "`{name}` is not a valid command here. jitgate's command is `{}`.",
                page.dir.command
            ),
        );
        return Json(json!({"ok": true})).into_response();
    }
    let response_url = page.new_response_url(Origin {
        user: me.id.clone(),
        channel: req.channel.clone(),
        command: Some(text.to_string()),
        message_ts: None,
    });
    let form = [
        ("token", "local-slack-legacy-token"),
        ("team_id", &page.dir.team_id),
        ("team_domain", "local"),
        ("channel_id", &req.channel),
        ("channel_name", &channel_name),
        ("user_id", &me.id),
        ("user_name", &me.name),
        ("command", name),
        ("text", &slack_escape(args.trim())),
        ("api_app_id", &page.dir.api_app_id),
        ("is_enterprise_install", "false"),
        ("response_url", &response_url),
        ("trigger_id", &page.trigger_id(&me.id)),
    ];
    let body = match serde_urlencoded::to_string(form) {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "the command cannot be encoded"),
    };
    let reply = page
        .send_signed("/slack/commands", "application/x-www-form-urlencoded", body)
        .await;
    let typed = Some(text.to_string());
    match reply {
        Ok((200, ctype, bytes)) => {
            if bytes.is_empty() {
                // An empty 200: the bot answers later, by response_url or message.
            } else if ctype.starts_with("application/json") {
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut ws = page.lock();
                let ts = ws.local_ts();
                let in_channel = v["response_type"].as_str() == Some("in_channel");
                ws.messages.push(Message {
                    channel: req.channel.clone(),
                    ts,
                    user: BOT_USER.into(),
                    text: str_of(&v["text"]),
                    blocks: json_of(&v["blocks"]),
                    only_for: (!in_channel).then(|| me.id.clone()),
                    command: typed,
                    edited: false,
                    at: chrono::Utc::now().timestamp_millis(),
                });
                drop(ws);
                page.changed();
            } else {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut ws = page.lock();
                let ts = ws.local_ts();
                ws.messages.push(Message {
                    channel: req.channel.clone(),
                    ts,
                    user: BOT_USER.into(),
                    text,
                    blocks: Value::Null,
                    only_for: Some(me.id.clone()),
                    command: typed,
                    edited: false,
                    at: chrono::Utc::now().timestamp_millis(),
                });
                drop(ws);
                page.changed();
            }
        }
        Ok((status, _, _)) => page.ephemeral(
            &me.id,
            &req.channel,
            typed,
            format!("{name} failed with the error \"dispatch_failed\" (jitgate answered HTTP {status})"),
        ),
        Err(code) => page.ephemeral(
            &me.id,
            &req.channel,
            typed,
            format!("{name} failed with the error \"{code}\""),
        ),
    }
    Json(json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
struct ActionReq {
    user: String,
    /// The message's channel and ts; absent for a click on the Home tab.
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
    /// A click in an open modal.
    #[serde(default)]
    view_id: Option<String>,
    /// What the modal's inputs hold at the click, as for a submission.
    #[serde(default)]
    values: Option<HashMap<String, HashMap<String, Input>>>,
    block_id: String,
    action_id: String,
    /// For a select or radio group: the chosen option's value.
    #[serde(default)]
    selected: Option<String>,
}

/// Finds the interactive element `action_id` in block `block_id`: a section's accessory,
/// an actions block's element, or an input block's element (`dispatch_action` only): the
/// page says which element, the message or view says what it carries.
fn find_element<'a>(blocks: &'a Value, block_id: &str, action_id: &str) -> Option<&'a Value> {
    let blocks = blocks.as_array()?;
    blocks.iter().enumerate().find_map(|(i, b)| {
        let id = b["block_id"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("b{i}"));
        if id != block_id {
            return None;
        }
        let mut candidates: Vec<&Value> = b["elements"].as_array().map(|e| e.iter().collect()).unwrap_or_default();
        candidates.push(&b["accessory"]);
        if b["type"] == "input" && b["dispatch_action"].as_bool() == Some(true) {
            candidates.push(&b["element"]);
        }
        candidates
            .into_iter()
            .find(|e| e["action_id"].as_str() == Some(action_id) && e["type"].is_string())
    })
}

/// The `actions[0]` Slack sends for a click on `element` (a button) or a choice in it (a
/// select or radio group: `selected` must be one of its options).
fn action_of(element: &Value, block_id: &str, selected: Option<&str>, action_ts: &str) -> Result<Value, String> {
    let kind = element["type"].as_str().unwrap_or_default();
    let mut action = json!({
        "type": kind,
        "action_id": element["action_id"],
        "block_id": block_id,
        "action_ts": action_ts,
    });
    match kind {
        "button" => {
            action["text"] = element["text"].clone();
            for key in ["value", "style"] {
                if !element[key].is_null() {
                    action[key] = element[key].clone();
                }
            }
        }
        "static_select" | "radio_buttons" => {
            let Some(chosen) = selected else {
                return Err("say which option was chosen".into());
            };
            let option = options_of(element)
                .into_iter()
                .find(|o| o["value"].as_str() == Some(chosen))
                .ok_or_else(|| format!("`{chosen}` is not one of its options"))?;
            action["selected_option"] = option;
            if !element["placeholder"].is_null() {
                action["placeholder"] = element["placeholder"].clone();
            }
        }
        other => return Err(format!("the local Slack cannot send a {other} action")),
    }
    Ok(action)
}

/// A click on a button: a signed `block_actions` interaction, as Slack sends it.
async fn action(State(page): State<Page>, Json(req): Json<ActionReq>) -> Response {
    page.catch_up();
    let Some(me) = page.dir.person(&req.user).cloned() else {
        return error(StatusCode::BAD_REQUEST, "no such person in this workspace");
    };
    let user = json!({"id": me.id, "username": me.name.to_ascii_lowercase(), "name": me.name.to_ascii_lowercase(), "team_id": page.dir.team_id});
    let now = chrono::Utc::now();
    let action_ts = format!("{}.{:06}", now.timestamp(), now.timestamp_subsec_micros());
    let mut payload = json!({
        "type": "block_actions",
        "token": "local-slack-legacy-token",
        "team": {"id": page.dir.team_id, "domain": "local"},
        "user": user,
        "api_app_id": page.dir.api_app_id,
        "is_enterprise_install": false,
        "enterprise": null,
        "trigger_id": page.trigger_id(&me.id),
        "state": {"values": {}},
    });
    let button = match (&req.channel, &req.ts) {
        (Some(channel), Some(ts)) => {
            let Some(channel_name) = page.dir.channel_name(channel, &me.id) else {
                return error(StatusCode::BAD_REQUEST, "no such channel here");
            };
            let ws = page.lock();
            let Some(m) = ws
                .messages
                .iter()
                .find(|m| &m.channel == channel && &m.ts == ts && m.only_for.as_deref().is_none_or(|u| u == me.id))
            else {
                return error(StatusCode::NOT_FOUND, "that message is gone");
            };
            let Some(button) = find_element(&m.blocks, &req.block_id, &req.action_id).cloned() else {
                return error(StatusCode::NOT_FOUND, "that button is no longer on the message");
            };
            let ephemeral = m.only_for.is_some();
            payload["container"] =
                json!({"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": ephemeral});
            payload["channel"] = json!({"id": channel, "name": channel_name});
            // Slack leaves the message out when it was ephemeral.
            if !ephemeral {
                payload["message"] = json!({
                    "type": "message", "subtype": "bot_message", "user": m.user, "bot_id": "B0JITGATE",
                    "ts": m.ts, "text": m.text, "blocks": m.blocks, "team": page.dir.team_id,
                });
            }
            drop(ws);
            payload["response_url"] = json!(page.new_response_url(Origin {
                user: me.id.clone(),
                channel: channel.clone(),
                command: None,
                message_ts: Some(ts.clone()),
            }));
            button
        }
        (None, None) if req.view_id.is_some() => {
            let ws = page.lock();
            let view_id = req.view_id.as_deref().unwrap_or_default();
            let Some((_, view)) = ws.modal(&me.id, view_id) else {
                return error(StatusCode::NOT_FOUND, "that modal is closed");
            };
            let Some(button) = find_element(&view["blocks"], &req.block_id, &req.action_id).cloned() else {
                return error(StatusCode::NOT_FOUND, "that button is no longer in the modal");
            };
            let mut view = view.clone();
            match state_values(&view, req.values.as_ref().unwrap_or(&HashMap::new())) {
                Ok(values) => view["state"] = json!({ "values": values }),
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            }
            payload["container"] = json!({"type": "view", "view_id": view_id});
            payload["view"] = view;
            button
        }
        (None, None) => {
            let ws = page.lock();
            let Some(view) = ws.homes.get(&me.id) else {
                return error(StatusCode::NOT_FOUND, "no Home tab is published for you");
            };
            let Some(button) = find_element(&view["blocks"], &req.block_id, &req.action_id).cloned() else {
                return error(StatusCode::NOT_FOUND, "that button is no longer on the Home tab");
            };
            payload["container"] = json!({"type": "view", "view_id": view["id"]});
            payload["view"] = view.clone();
            button
        }
        _ => return error(StatusCode::BAD_REQUEST, "give both channel and ts, or neither (Home)"),
    };
    let clicked = match action_of(&button, &req.block_id, req.selected.as_deref(), &action_ts) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    payload["actions"] = json!([clicked]);
    let body = match serde_urlencoded::to_string([("payload", payload.to_string())]) {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "the click cannot be encoded"),
    };
    let channel = req.channel.clone().unwrap_or_else(|| dm_channel(&me.id));
    match page
        .send_signed("/slack/interactions", "application/x-www-form-urlencoded", body)
        .await
    {
        Ok((200, _, _)) => {}
        Ok((status, _, _)) => page.ephemeral(
            &me.id,
            &channel,
            None,
            format!("That didn't work: jitgate answered HTTP {status} (dispatch_failed)"),
        ),
        Err(code) => page.ephemeral(&me.id, &channel, None, format!("That didn't work: \"{code}\"")),
    }
    Json(json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
struct ShortcutReq {
    user: String,
    callback_id: String,
}

/// Choosing a global shortcut: a signed `shortcut` interaction.
async fn shortcut(State(page): State<Page>, Json(req): Json<ShortcutReq>) -> Response {
    let Some(me) = page.dir.person(&req.user).cloned() else {
        return error(StatusCode::BAD_REQUEST, "no such person in this workspace");
    };
    if !page.dir.shortcuts.iter().any(|s| s.callback_id == req.callback_id) {
        return error(StatusCode::BAD_REQUEST, "the app declares no such shortcut");
    }
    let now = chrono::Utc::now();
    let payload = json!({
        "type": "shortcut",
        "token": "local-slack-legacy-token",
        "action_ts": format!("{}.{:06}", now.timestamp(), now.timestamp_subsec_micros()),
        "team": {"id": page.dir.team_id, "domain": "local"},
        "user": {"id": me.id, "username": me.name.to_ascii_lowercase(), "team_id": page.dir.team_id},
        "api_app_id": page.dir.api_app_id,
        "is_enterprise_install": false,
        "enterprise": null,
        "callback_id": req.callback_id,
        "trigger_id": page.trigger_id(&me.id),
    });
    let body = match serde_urlencoded::to_string([("payload", payload.to_string())]) {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "the shortcut cannot be encoded"),
    };
    match page
        .send_signed("/slack/interactions", "application/x-www-form-urlencoded", body)
        .await
    {
        Ok((200, _, _)) => Json(json!({"ok": true})).into_response(),
        Ok((status, _, _)) => error(StatusCode::BAD_GATEWAY, &format!("jitgate answered HTTP {status}")),
        Err(code) => error(StatusCode::BAD_GATEWAY, &code),
    }
}

/// Opening the app's Home tab: a signed `app_home_opened` event (Events API).
async fn home_opened(State(page): State<Page>, Json(who): Json<Who>) -> Response {
    let Some(me) = page.dir.person(&who.user).cloned() else {
        return error(StatusCode::BAD_REQUEST, "no such person in this workspace");
    };
    let now = chrono::Utc::now();
    let event_ts = format!("{}.{:06}", now.timestamp(), now.timestamp_subsec_micros());
    let mut event = json!({
        "type": "app_home_opened",
        "user": me.id,
        "channel": dm_channel(&me.id),
        "tab": "home",
        "event_ts": event_ts,
    });
    if let Some(view) = page.lock().homes.get(&me.id) {
        event["view"] = view.clone();
    }
    let envelope = json!({
        "token": "local-slack-legacy-token",
        "team_id": page.dir.team_id,
        "api_app_id": page.dir.api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": format!("Ev{}", hex::encode_upper(rand::random::<[u8; 8]>())),
        "event_time": now.timestamp(),
        "authorizations": [{"team_id": page.dir.team_id, "user_id": BOT_USER, "is_bot": true}],
        "is_ext_shared_channel": false,
    });
    match page
        .send_signed("/slack/events", "application/json", envelope.to_string())
        .await
    {
        Ok((200, _, _)) => Json(json!({"ok": true})).into_response(),
        Ok((status, _, _)) => error(StatusCode::BAD_GATEWAY, &format!("jitgate answered HTTP {status}")),
        Err(code) => error(StatusCode::BAD_GATEWAY, &code),
    }
}

/// What the page says one input holds: a text, or the value of the chosen option.
#[derive(Debug, Clone, Deserialize)]
struct Input {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    selected: Option<String>,
}

/// `view.state.values` as Slack sends it, built from the view's own input blocks (the
/// page says what was typed or chosen; the view says what each element is and what its
/// options read). Unknown blocks, elements or options are refused.
fn state_values(view: &Value, inputs: &HashMap<String, HashMap<String, Input>>) -> Result<Value, String> {
    let blocks = view["blocks"].as_array().cloned().unwrap_or_default();
    let mut values = serde_json::Map::new();
    for (i, b) in blocks.iter().enumerate() {
        if b["type"] != "input" {
            continue;
        }
        let block_id = b["block_id"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("b{i}"));
        let element = &b["element"];
        let action_id = element["action_id"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("a{i}"));
        let given = inputs.get(&block_id).and_then(|m| m.get(&action_id));
        let kind = element["type"].as_str().unwrap_or_default();
        let value = match kind {
            "plain_text_input" => {
                let text = given.and_then(|g| g.value.clone()).filter(|v| !v.is_empty());
                json!({"type": kind, "value": text})
            }
            "static_select" | "radio_buttons" => {
                let chosen = given.and_then(|g| g.selected.clone()).filter(|v| !v.is_empty());
                let option = match chosen {
                    None => Value::Null,
                    Some(v) => options_of(element)
                        .into_iter()
                        .find(|o| o["value"].as_str() == Some(v.as_str()))
                        .ok_or_else(|| format!("`{v}` is not an option of {block_id}"))?,
                };
                json!({"type": kind, "selected_option": option})
            }
            _ => continue,
        };
        values.insert(block_id, json!({ action_id: value }));
    }
    for (block_id, actions) in inputs {
        if !values
            .get(block_id)
            .is_some_and(|v| actions.keys().all(|a| v.get(a).is_some()))
        {
            return Err(format!("the modal has no input {block_id}"));
        }
    }
    Ok(Value::Object(values))
}

/// A select's or radio group's options, option groups included.
fn options_of(element: &Value) -> Vec<Value> {
    let mut all: Vec<Value> = element["options"].as_array().cloned().unwrap_or_default();
    for g in element["option_groups"].as_array().into_iter().flatten() {
        all.extend(g["options"].as_array().cloned().unwrap_or_default());
    }
    all
}

#[derive(Deserialize)]
struct SubmitReq {
    user: String,
    view_id: String,
    #[serde(default)]
    values: HashMap<String, HashMap<String, Input>>,
}

/// Submitting a modal: a signed `view_submission`, and Slack's handling of the answer —
/// empty (close this view), `errors` (shown under their inputs), `update`, `push`, `clear`.
async fn view_submission(State(page): State<Page>, Json(req): Json<SubmitReq>) -> Response {
    page.catch_up();
    let Some(me) = page.dir.person(&req.user).cloned() else {
        return error(StatusCode::BAD_REQUEST, "no such person in this workspace");
    };
    let view = {
        let ws = page.lock();
        let Some((_, view)) = ws.modal(&me.id, &req.view_id) else {
            return error(StatusCode::NOT_FOUND, "that modal is closed");
        };
        view.clone()
    };
    let values = match state_values(&view, &req.values) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut submitted = view.clone();
    submitted["state"] = json!({ "values": values });
    let payload = json!({
        "type": "view_submission",
        "token": "local-slack-legacy-token",
        "team": {"id": page.dir.team_id, "domain": "local"},
        "user": {"id": me.id, "username": me.name.to_ascii_lowercase(), "name": me.name.to_ascii_lowercase(), "team_id": page.dir.team_id},
        "api_app_id": page.dir.api_app_id,
        "trigger_id": page.trigger_id(&me.id),
        "view": submitted,
        "response_urls": [],
        "is_enterprise_install": false,
        "enterprise": null,
    });
    let body = match serde_urlencoded::to_string([("payload", payload.to_string())]) {
        Ok(b) => b,
        Err(_) => return error(StatusCode::BAD_REQUEST, "the submission cannot be encoded"),
    };
    let answer = page
        .send_signed("/slack/interactions", "application/x-www-form-urlencoded", body)
        .await;
    let (status, bytes) = match answer {
        Ok((status, _, bytes)) => (status, bytes),
        Err(code) => return Json(json!({"ok": false, "error": code})).into_response(),
    };
    if status != 200 {
        return Json(json!({"ok": false, "error": format!("jitgate answered HTTP {status}")})).into_response();
    }
    let reply: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                return Json(json!({"ok": false, "error": "jitgate's answer is not JSON"})).into_response();
            }
        }
    };
    let result = page.lock().after_submission(&me.id, &req.view_id, &reply);
    page.changed();
    Json(result).into_response()
}

impl Workspace {
    /// Applies a view_submission's answer to `user`'s modal stack; what the page shows.
    fn after_submission(&mut self, user: &str, view_id: &str, reply: &Value) -> Value {
        let Some((at, _)) = self.modal(user, view_id) else {
            return json!({"ok": true});
        };
        let stack = self.modals.entry(user.to_string()).or_default();
        let new_view = |v: &Value, id: String| {
            let mut v = v.clone();
            if v["id"].is_null() {
                v["id"] = json!(id);
            }
            v
        };
        match reply["response_action"].as_str() {
            None => {
                stack.truncate(at);
                json!({"ok": true})
            }
            Some("errors") => json!({"ok": true, "errors": reply["errors"]}),
            Some("update") => {
                let id = stack[at]["id"].as_str().unwrap_or_default().to_string();
                stack[at] = new_view(&reply["view"], id);
                json!({"ok": true})
            }
            Some("push") => {
                let id = format!("V{}", hex::encode_upper(rand::random::<[u8; 5]>()));
                stack.truncate(at + 1);
                stack.push(new_view(&reply["view"], id));
                json!({"ok": true})
            }
            Some("clear") => {
                stack.clear();
                json!({"ok": true})
            }
            Some(other) => json!({"ok": false, "error": format!("unknown response_action `{other}`")}),
        }
    }
}

#[derive(Deserialize)]
struct CloseReq {
    user: String,
    view_id: String,
}

/// Closing a modal (Cancel or ×): gone from the stack, and a signed `view_closed` when
/// the view asked for `notify_on_close`.
async fn view_closed(State(page): State<Page>, Json(req): Json<CloseReq>) -> Response {
    let Some(me) = page.dir.person(&req.user).cloned() else {
        return error(StatusCode::BAD_REQUEST, "no such person in this workspace");
    };
    let closed = {
        let mut ws = page.lock();
        let Some((at, _)) = ws.modal(&me.id, &req.view_id) else {
            return Json(json!({"ok": true})).into_response();
        };
        let stack = ws.modals.entry(me.id.clone()).or_default();
        let view = stack[at].clone();
        stack.truncate(at);
        view
    };
    page.changed();
    if closed["notify_on_close"].as_bool() == Some(true) {
        let payload = json!({
            "type": "view_closed",
            "team": {"id": page.dir.team_id, "domain": "local"},
            "user": {"id": me.id, "name": me.name.to_ascii_lowercase(), "team_id": page.dir.team_id},
            "api_app_id": page.dir.api_app_id,
            "view": closed,
            "is_cleared": false,
        });
        if let Ok(body) = serde_urlencoded::to_string([("payload", payload.to_string())]) {
            let _ = page
                .send_signed("/slack/interactions", "application/x-www-form-urlencoded", body)
                .await;
        }
    }
    Json(json!({"ok": true})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_found_in_actions_accessories_and_dispatching_inputs_only_where_they_are() {
        let blocks = json!([
            {"type": "section", "block_id": "s", "text": {"type": "mrkdwn", "text": "x"},
             "accessory": {"type": "button", "action_id": "more", "value": "7", "text": {"type": "plain_text", "text": "More"}}},
            {"type": "actions", "block_id": "a", "elements": [
                {"type": "button", "action_id": "jit_approve", "value": "42", "text": {"type": "plain_text", "text": "Approve"}}]},
            {"type": "actions", "elements": [
                {"type": "button", "action_id": "nameless", "value": "1", "text": {"type": "plain_text", "text": "N"}}]}
        ]);
        assert_eq!(find_element(&blocks, "a", "jit_approve").unwrap()["value"], "42");
        assert_eq!(find_element(&blocks, "s", "more").unwrap()["value"], "7");
        assert_eq!(find_element(&blocks, "b2", "nameless").unwrap()["value"], "1");
        assert!(find_element(&blocks, "s", "jit_approve").is_none());
        assert!(find_element(&json!(null), "a", "jit_approve").is_none());
        let form = modal();
        assert!(
            find_element(&form["blocks"], "resource", "pick").is_none(),
            "not a dispatching input"
        );
        let mut dispatching = form.clone();
        dispatching["blocks"][0]["dispatch_action"] = json!(true);
        let select = find_element(&dispatching["blocks"], "resource", "pick").unwrap();
        let action = action_of(select, "resource", Some("staging-db"), "1.2").unwrap();
        assert_eq!(action["type"], "static_select");
        assert_eq!(action["selected_option"]["value"], "staging-db");
        assert!(action_of(select, "resource", Some("other"), "1.2").is_err());
        let button = find_element(&blocks, "a", "jit_approve").unwrap();
        let action = action_of(button, "a", None, "1.2").unwrap();
        assert_eq!(
            (action["value"].as_str(), action["type"].as_str()),
            (Some("42"), Some("button"))
        );
    }

    #[test]
    fn a_response_url_answer_is_ephemeral_unless_in_channel_and_replaces_when_asked() {
        let mut ws = Workspace::default();
        ws.response_urls.insert(
            "r1".into(),
            Origin {
                user: "U1".into(),
                channel: "C1".into(),
                command: Some("/jit list".into()),
                message_ts: None,
            },
        );
        ws.answer(&json!({"response_url_id": "r1", "text": "hello"}), 0);
        assert_eq!(ws.messages[0].only_for.as_deref(), Some("U1"));
        ws.answer(
            &json!({"response_url_id": "r1", "text": "all", "response_type": "in_channel"}),
            0,
        );
        assert_eq!(ws.messages[1].only_for, None);
        ws.messages.push(Message {
            channel: "C1".into(),
            ts: "5.0".into(),
            user: BOT_USER.into(),
            text: "card".into(),
            blocks: Value::Null,
            only_for: None,
            command: None,
            edited: false,
            at: 0,
        });
        ws.response_urls.insert(
            "r2".into(),
            Origin {
                user: "U2".into(),
                channel: "C1".into(),
                command: None,
                message_ts: Some("5.0".into()),
            },
        );
        ws.answer(
            &json!({"response_url_id": "r2", "text": "new", "replace_original": true}),
            0,
        );
        assert_eq!(ws.messages[2].text, "new");
        ws.answer(&json!({"response_url_id": "r2", "delete_original": true}), 0);
        assert_eq!(ws.messages.len(), 2);
        // An unknown response_url changes nothing.
        ws.answer(&json!({"response_url_id": "nope", "text": "x"}), 0);
        assert_eq!(ws.messages.len(), 2);
    }

    fn modal() -> Value {
        json!({"id": "V1", "type": "modal", "callback_id": "jit_request", "blocks": [
            {"type": "input", "block_id": "resource", "label": {"type": "plain_text", "text": "Resource"},
             "element": {"type": "static_select", "action_id": "pick", "options": [
                {"text": {"type": "plain_text", "text": "prod-db"}, "value": "prod-db"}],
                "option_groups": [{"label": {"type": "plain_text", "text": "More"}, "options": [
                {"text": {"type": "plain_text", "text": "staging-db"}, "value": "staging-db"}]}]}},
            {"type": "input", "block_id": "why", "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": "text"}},
            {"type": "input", "block_id": "how", "optional": true, "label": {"type": "plain_text", "text": "How"},
             "element": {"type": "radio_buttons", "action_id": "r", "options": [
                {"text": {"type": "plain_text", "text": "Read"}, "value": "read"}]}}
        ]})
    }

    fn input(value: Option<&str>, selected: Option<&str>) -> Input {
        Input {
            value: value.map(String::from),
            selected: selected.map(String::from),
        }
    }

    #[test]
    fn state_values_are_shaped_as_slack_sends_them_from_the_view_itself() {
        let mut given: HashMap<String, HashMap<String, Input>> = HashMap::new();
        given.insert(
            "resource".into(),
            [("pick".to_string(), input(None, Some("staging-db")))].into(),
        );
        given.insert("why".into(), [("text".to_string(), input(Some("INC-1"), None))].into());
        let v = state_values(&modal(), &given).unwrap();
        assert_eq!(v["resource"]["pick"]["type"], "static_select");
        assert_eq!(v["resource"]["pick"]["selected_option"]["value"], "staging-db");
        assert_eq!(v["resource"]["pick"]["selected_option"]["text"]["text"], "staging-db");
        assert_eq!(v["why"]["text"], json!({"type": "plain_text_input", "value": "INC-1"}));
        // Untouched inputs are there too, empty, as on Slack.
        assert_eq!(v["how"]["r"], json!({"type": "radio_buttons", "selected_option": null}));

        given.insert(
            "resource".into(),
            [("pick".to_string(), input(None, Some("prod-db-admin")))].into(),
        );
        assert!(
            state_values(&modal(), &given).is_err(),
            "an option the view does not offer"
        );
        given.remove("resource");
        given.insert("nope".into(), [("x".to_string(), input(Some("1"), None))].into());
        assert!(
            state_values(&modal(), &given).is_err(),
            "an input the view does not have"
        );
    }

    #[test]
    fn a_submission_answer_closes_shows_errors_updates_pushes_or_clears() {
        let mut ws = Workspace::default();
        ws.modals.insert("U1".into(), vec![modal()]);
        let r = ws.after_submission(
            "U1",
            "V1",
            &json!({"response_action": "errors", "errors": {"why": "Say why"}}),
        );
        assert_eq!(r["errors"]["why"], "Say why");
        assert_eq!(ws.modals["U1"].len(), 1);
        ws.after_submission(
            "U1",
            "V1",
            &json!({"response_action": "push", "view": {"type": "modal", "blocks": []}}),
        );
        assert_eq!(ws.modals["U1"].len(), 2);
        let pushed = ws.modals["U1"][1]["id"].as_str().unwrap().to_string();
        ws.after_submission("U1", &pushed, &json!({"response_action": "update", "view": {"type": "modal", "blocks": [], "title": {"type": "plain_text", "text": "Done"}}}));
        assert_eq!(ws.modals["U1"][1]["title"]["text"], "Done");
        assert_eq!(
            ws.modals["U1"][1]["id"],
            pushed.as_str(),
            "an update keeps the view's id"
        );
        ws.after_submission("U1", &pushed, &Value::Null);
        assert_eq!(ws.modals["U1"].len(), 1, "an empty answer closes the top view only");
        ws.after_submission("U1", "V1", &json!({"response_action": "clear"}));
        assert!(ws.modals["U1"].is_empty());
    }

    #[test]
    fn views_open_shows_a_modal_to_the_person_whose_trigger_it_was() {
        let mut ws = Workspace::default();
        ws.triggers.insert("t1".into(), "U1".into());
        let observed = |method: &str, body: Value, reply: Value| Observed {
            seq: 0,
            method: method.into(),
            body,
            reply,
        };
        ws.apply(&observed(
            "views.open",
            json!({"trigger_id": "t1", "view": {"type": "modal"}}),
            json!({"ok": true, "view": {"id": "V9", "type": "modal", "hash": "h1"}}),
        ));
        assert_eq!(ws.modals["U1"][0]["id"], "V9");
        ws.apply(&observed(
            "views.update",
            json!({"view_id": "V9", "view": {"type": "modal"}}),
            json!({"ok": true, "view": {"id": "V9", "type": "modal", "hash": "h2"}}),
        ));
        assert_eq!(ws.modals["U1"][0]["hash"], "h2");
        // A trigger the page did not hand out opens nothing.
        ws.apply(&observed(
            "views.open",
            json!({"trigger_id": "zz"}),
            json!({"ok": true, "view": {"id": "V8"}}),
        ));
        assert_eq!(ws.modals.len(), 1);
    }

    #[test]
    fn global_shortcuts_are_read_from_a_manifest() {
        let manifest = "features:\n  bot_user:\n    display_name: jitgate\n  shortcuts:\n    - name: Request access\n      type: global\n      callback_id: request_access\n      description: Ask\n    - name: On a message\n      type: message\n      callback_id: msg\n  slash_commands:\n    - command: /jit\n";
        assert_eq!(
            manifest_shortcuts(manifest),
            vec![Shortcut {
                name: "Request access".into(),
                callback_id: "request_access".into()
            }]
        );
        assert!(manifest_shortcuts("features: {}").is_empty());
    }

    #[test]
    fn a_dm_channel_is_the_user_id_with_d() {
        assert_eq!(dm_channel("U0ALICE"), "D0ALICE");
        assert_eq!(dm_channel(""), "D");
    }
}
