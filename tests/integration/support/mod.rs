//! The harness: the real jitgate on an ephemeral port, a fresh SQLite file, a fake Slack,
//! an exec adapter script that records what it was asked to do, and requests signed
//! exactly as Slack signs them.

pub mod browser;
/// The fake Slack lives in the library (`jitgate::fakeslack`) so the load generator and
/// the local Slack reuse it.
pub use jitgate::fakeslack as fake_slack;

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use jitgate::clock::{ManualClock, SharedClock, SystemClock};
use jitgate::slack::signature::sign;

pub use fake_slack::{Failure, FakeSlack};

pub const SIGNING_SECRET: &str = "test-signing-secret";
/// The audit key every test app runs with (as `JITGATE_AUDIT_KEY`).
pub const AUDIT_KEY: &str = "test-audit-key-0123456789abcdef-0123456789";

/// The audit key the test apps use, for checking their audit chains.
pub fn audit_key() -> jitgate::audit::AuditKey {
    jitgate::audit::AuditKey::new(AUDIT_KEY).unwrap()
}
pub const APPROVAL_CHANNEL: &str = "C0APPROVALS";
pub const REQUESTER: &str = "UREQUESTER";
pub const APPROVER1: &str = "UAPPROVER1";
pub const APPROVER2: &str = "UAPPROVER2";
pub const APPROVER3: &str = "UAPPROVER3";
pub const GROUP: &str = "SDBAS";
pub const OUTSIDER: &str = "UOUTSIDER";

/// How long any awaited state may take before the test fails.
/// Numbers the trigger_ids of the commands and clicks tests make.
static NEXT_TRIGGER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A trigger_id unique to this command or click, as Slack's are: jitgate acts once per
/// trigger_id (a replay of the same signed body has no second effect).
pub fn new_trigger_id() -> String {
    let n = NEXT_TRIGGER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}.test", std::process::id())
}

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The PostgreSQL server the suite runs on when `JITGATE_TEST_DATABASE=postgres`
/// (`JITGATE_TEST_POSTGRES_URL` overrides it): each test app gets a database of its own.
pub const TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether the suite runs on PostgreSQL (`JITGATE_TEST_DATABASE=postgres`) rather than
/// on a SQLite file per test.
pub fn on_postgres() -> bool {
    std::env::var("JITGATE_TEST_DATABASE").as_deref() == Ok("postgres")
}

/// Skips the calling test on PostgreSQL, saying why: for tests of SQLite's files.
#[macro_export]
macro_rules! sqlite_only {
    ($why:literal) => {
        if $crate::support::on_postgres() {
            eprintln!("skipped on PostgreSQL: {}", $why);
            return;
        }
    };
}

/// A test app's database: a SQLite file in its directory, or a fresh PostgreSQL database
/// dropped when the last holder lets go.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub async fn new(dir: &std::path::Path) -> Self {
        if !on_postgres() {
            return Self {
                url: format!("sqlite://{}", dir.join("jitgate.db").display()),
                postgres: None,
            };
        }
        Self::postgres()
            .await
            .unwrap_or_else(|| panic!("JITGATE_TEST_DATABASE=postgres, but PostgreSQL is not reachable"))
    }

    /// A fresh PostgreSQL database whatever `JITGATE_TEST_DATABASE` says, for tests of
    /// replicas; `None` (with a notice) when the server cannot be reached, unless
    /// `JITGATE_REQUIRE_POSTGRES=1` (CI), which fails instead.
    pub async fn postgres() -> Option<Self> {
        use sqlx::Connection;
        let server = postgres_server().await?;
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server} answered, then refused a connection: {e}"));
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let name = format!(
            "jit_t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let mut url = url::Url::parse(&server).expect("a PostgreSQL URL");
        url.set_path(&name);
        Some(Self {
            url: url.to_string(),
            postgres: Some((server, name)),
        })
    }
}

/// The PostgreSQL server for tests that need one whatever `JITGATE_TEST_DATABASE` says
/// (`JITGATE_TEST_POSTGRES_URL`, default [`TEST_POSTGRES`]), or `None`, with a notice, when
/// it cannot be reached. With `JITGATE_REQUIRE_POSTGRES=1` (CI) an unreachable server fails
/// the test instead.
pub async fn postgres_server() -> Option<String> {
    use sqlx::Connection;
    let url = std::env::var("JITGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| TEST_POSTGRES.to_string());
    let why = match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Some(url);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5s".to_string(),
    };
    if std::env::var("JITGATE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("PostgreSQL not reachable ({why}) and JITGATE_REQUIRE_POSTGRES=1");
    }
    eprintln!(
        "skipping: PostgreSQL not reachable ({why}); set JITGATE_TEST_POSTGRES_URL, \
         or JITGATE_REQUIRE_POSTGRES=1 to fail instead"
    );
    None
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // Dropped from sync code, maybe inside a runtime: on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Waits until `check` returns `Some`, polling, failing the test after `DEADLINE`.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which clock the app runs on.
#[derive(Clone)]
pub enum TestClock {
    Manual(ManualClock),
    System,
}

impl TestClock {
    pub fn shared(&self) -> SharedClock {
        match self {
            TestClock::Manual(c) => Arc::new(c.clone()),
            TestClock::System => Arc::new(SystemClock),
        }
    }
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared().now()
    }
    /// Moves a manual clock forward.
    pub fn advance(&self, by: chrono::Duration) {
        match self {
            TestClock::Manual(c) => c.advance(by),
            TestClock::System => panic!("cannot move the system clock"),
        }
    }
}

/// Knobs for one test's configuration.
pub struct Setup {
    pub clock: TestClock,
    /// Start jitgate inside the test process (false: the test runs the binary itself).
    pub in_process: bool,
    /// Extra TOML appended to the generated configuration.
    pub extra_toml: String,
    /// Extra keys in the `[server]` table.
    pub server_toml: String,
    /// Extra keys in the `[slack]` table.
    pub slack_toml: String,
    /// Extra keys in the `[requests]` table.
    pub requests_toml: String,
    /// `[jobs]` table body.
    pub jobs_toml: String,
    /// Adapters to use instead of the configured ones, by name.
    pub adapters: Vec<(String, Arc<dyn jitgate::adapters::Adapter>)>,
    /// Environment variables the configuration names (on-call credentials), passed
    /// through `Options::env_overrides` instead of the process environment.
    pub env: BTreeMap<String, String>,
    /// Connect by Socket Mode (an app token), without a signing secret.
    pub socket_mode: bool,
    /// Run the start-up Slack self-check (off by default: most tests count Slack calls).
    pub self_check: bool,
    /// Per-call timeout of Slack Web API calls.
    pub slack_call_timeout: Duration,
    /// The database to run on instead of the one `JITGATE_TEST_DATABASE` chooses.
    pub database: Option<TestDatabase>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            clock: TestClock::Manual(ManualClock::new(chrono::Utc::now())),
            in_process: true,
            extra_toml: String::new(),
            server_toml: String::new(),
            slack_toml: String::new(),
            requests_toml: String::new(),
            jobs_toml: "grant_attempts = 3\nbackoff_initial = \"1s\"\nbackoff_max = \"1s\"\n".into(),
            adapters: Vec::new(),
            env: BTreeMap::new(),
            socket_mode: false,
            self_check: false,
            slack_call_timeout: Duration::from_secs(10),
            database: None,
        }
    }
}

/// A running jitgate with its fake Slack and its files.
pub struct TestApp {
    pub dir: Arc<tempfile::TempDir>,
    pub database: Arc<TestDatabase>,
    pub slack: FakeSlack,
    pub clock: TestClock,
    pub running: Option<jitgate::Running>,
    pub base: String,
    pub config_text: String,
    /// Passed to `Options::revoke_removed` at the next boot.
    pub revoke_removed: bool,
    adapters: Vec<(String, Arc<dyn jitgate::adapters::Adapter>)>,
    /// Passed to `Options::env_overrides` at every boot.
    pub env: BTreeMap<String, String>,
    pub socket_mode: bool,
    pub self_check: bool,
    pub slack_call_timeout: Duration,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let database = Arc::new(match setup.database {
            Some(database) => database,
            None => TestDatabase::new(dir.path()).await,
        });
        let slack = FakeSlack::start().await;
        slack.set_group(GROUP, &["UGROUPMEMBER", APPROVER1]);
        let script = dir.path().join("adapter.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n\
             echo \"$JIT_ACTION $JIT_GRANT_ID $JIT_USER_ID $JIT_RESOURCE $JIT_ROLE $JIT_DURATION_SECONDS state=$JIT_GRANT_STATE\" >> \"$LOG\"\n\
             n=0; while [ -e \"$FLAGS/block-$JIT_ACTION\" ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done\n\
             echo \"done $JIT_ACTION $JIT_GRANT_ID\" >> \"$LOG.done\"\n\
             if [ -e \"$FLAGS/fail-$JIT_ACTION\" ]; then echo 'simulated failure' >&2; exit 1; fi\n\
             if [ \"$JIT_ACTION\" = grant ]; then echo \"granted-$JIT_GRANT_ID\"; fi\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config_text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
{server}

[database]
url = "{db}"

[slack]
api_url = "{api}"
# The fake Slack's response_urls are on this machine.
response_url_hosts = ["127.0.0.1"]
{slack}

[requests]
pending_timeout = "24h"
remind_after = "off"
{requests}

[jobs]
{jobs}
{reconcile}

[[resources]]
name = "prod-db"
description = "Production PostgreSQL"
roles = ["read", "write"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "{chan}"
approvers = ["{a1}", "{a2}"]
approver_groups = ["{group}"]
approvals_required = 1
adapter = "demo"

[[resources]]
name = "payments"
roles = ["admin"]
default_duration = "30m"
max_duration = "2h"
approval_channel = "{chan}"
approvers = ["{a1}", "{a2}", "{a3}"]
approvals_required = 2
adapter = "demo"

[adapters.demo]
type = "exec"
command = ["{script}"]
timeout = "10s"
env = {{ LOG = "{log}", FLAGS = "{flags}" }}
{extra}
"#,
            db = database.url,
            api = slack.api_url(),
            jobs = setup.jobs_toml,
            chan = APPROVAL_CHANNEL,
            a1 = APPROVER1,
            a2 = APPROVER2,
            a3 = APPROVER3,
            group = GROUP,
            script = script.display(),
            log = dir.path().join("adapter.log").display(),
            flags = dir.path().display(),
            reconcile = if setup.extra_toml.contains("[reconcile]") {
                ""
            } else {
                "[reconcile]\ninterval = \"off\"\n"
            },
            extra = setup.extra_toml,
            server = setup.server_toml,
            slack = setup.slack_toml,
            requests = setup.requests_toml,
        );
        let mut app = Self {
            dir,
            database,
            slack,
            clock: setup.clock,
            running: None,
            base: String::new(),
            config_text,
            revoke_removed: false,
            adapters: setup.adapters,
            env: {
                let mut env = setup.env;
                env.entry("JITGATE_AUDIT_KEY".into())
                    .or_insert_with(|| AUDIT_KEY.into());
                env
            },
            socket_mode: setup.socket_mode,
            self_check: setup.self_check,
            slack_call_timeout: setup.slack_call_timeout,
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        if setup.in_process {
            app.boot().await;
        }
        app
    }

    /// Starts (or restarts) jitgate on the same database.
    pub async fn boot(&mut self) {
        let config = jitgate::config::parse(&self.dir.path().join("jitgate.toml"), &self.config_text)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let secrets = jitgate::Secrets {
            bot_token: fake_slack::BOT_TOKEN.into(),
            signing_secret: (!self.socket_mode).then(|| SIGNING_SECRET.into()),
            app_token: self.socket_mode.then(|| fake_slack::APP_TOKEN.into()),
        };
        let options = jitgate::Options {
            clock: self.clock.shared(),
            adapter_overrides: self.adapters.clone(),
            shutdown_grace: Duration::from_secs(10),
            revoke_removed: self.revoke_removed,
            env_overrides: self.env.clone(),
            slack_self_check: self.self_check,
            slack_call_timeout: self.slack_call_timeout,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = jitgate::start(config, secrets, options, listener)
            .await
            .expect("jitgate starts");
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    /// Graceful stop.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }

    pub fn state(&self) -> &jitgate::AppState {
        &self.running.as_ref().expect("running").state
    }

    /// Creates a flag file that makes the adapter script wait before finishing `action`.
    pub fn block_adapter(&self, action: &str, block: bool) {
        let path = self.dir.path().join(format!("block-{action}"));
        if block {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Adapter calls that ran to completion, like `done grant 1`.
    pub fn adapter_done(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("adapter.log.done"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Creates a flag file that makes the adapter script fail `action`.
    pub fn fail_adapter(&self, action: &str, fail: bool) {
        let path = self.dir.path().join(format!("fail-{action}"));
        if fail {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Lines the adapter script logged, like `grant 1 UREQUESTER prod-db read 3600 state=`.
    pub fn adapter_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("adapter.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// POSTs `body` to `path`, signed with `secret` at `timestamp`.
    pub async fn post_raw(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
        signature: Option<(String, String)>,
    ) -> (u16, String) {
        let mut req = hyper::Request::post(format!("{}{path}", self.base)).header("content-type", content_type);
        if let Some((ts, sig)) = signature {
            req = req
                .header("x-slack-request-timestamp", ts)
                .header("x-slack-signature", sig);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = self.http.request(req).await.expect("jitgate answers");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// GETs `url` (a full URL); returns the status, the content type and the body.
    pub async fn get_url(&self, url: &str) -> (u16, String, String) {
        let req = hyper::Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let resp = self.http.request(req).await.expect("jitgate answers");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// GETs `path` from the app; returns the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.get_url(&format!("{}{path}", self.base)).await;
        (status, body)
    }

    /// POSTs `body` signed as Slack signs, with the app's clock.
    pub async fn post_signed(&self, path: &str, body: &str, content_type: &str) -> (u16, String) {
        let ts = self.clock.now().timestamp().to_string();
        let sig = sign(SIGNING_SECRET.as_bytes(), &ts, body.as_bytes());
        self.post_raw(path, body, content_type, Some((ts, sig))).await
    }

    /// Sends `/jit <text>` as `user` from `channel`; returns the ephemeral reply text.
    pub async fn command_in(&self, user: &str, channel: &str, text: &str) -> String {
        let body = serde_urlencoded::to_string([
            ("token", "legacy-ignored"),
            ("team_id", "T0TEAM"),
            ("team_domain", "acme"),
            ("channel_id", channel),
            ("channel_name", "general"),
            ("user_id", user),
            ("user_name", "someone"),
            ("command", "/jit"),
            ("text", text),
            ("api_app_id", "A0APP"),
            ("response_url", &self.slack.response_url("cmd")),
            ("trigger_id", &self.slack.new_trigger_id()),
        ])
        .unwrap();
        let (status, reply) = self
            .post_signed("/slack/commands", &body, "application/x-www-form-urlencoded")
            .await;
        assert_eq!(status, 200, "command answered: {reply}");
        let v: Value = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("JSON reply: {reply}"));
        assert_eq!(v["response_type"], "ephemeral");
        v["text"].as_str().unwrap_or_default().to_string()
    }

    pub async fn command(&self, user: &str, text: &str) -> String {
        self.command_in(user, "C0GENERAL", text).await
    }

    /// Asks for access and returns the new request id.
    pub async fn request(&self, text: &str) -> i64 {
        self.request_as(REQUESTER, text).await
    }

    /// Asks for access as `user` and returns the new request id.
    pub async fn request_as(&self, user: &str, text: &str) -> i64 {
        let reply = self.command(user, &format!("request {text}")).await;
        let id = reply
            .split("JIT-")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request id in reply: {reply}"));
        id
    }

    /// The block_actions payload for clicking `action_id` on request `id`'s card.
    pub fn click_body(&self, user: &str, action_id: &str, value: &str, response_id: &str) -> String {
        let payload = json!({
            "type": "block_actions",
            "team": {"id": "T0TEAM", "domain": "acme"},
            "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0TEAM"},
            "api_app_id": "A0APP",
            "token": "legacy",
            "container": {"type": "message", "message_ts": "1700000001.000100", "channel_id": APPROVAL_CHANNEL, "is_ephemeral": false},
            "trigger_id": self.slack.new_trigger_id(),
            "channel": {"id": APPROVAL_CHANNEL, "name": "approvals"},
            "message": {"type": "message", "ts": "1700000001.000100", "text": "card", "blocks": []},
            "response_url": self.slack.response_url(response_id),
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b1",
                         "text": {"type": "plain_text", "text": "Approve"}, "value": value, "action_ts": "1700000002.1"}]
        });
        serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
    }

    /// Clicks a card button as `user`.
    pub async fn click(&self, user: &str, action_id: &str, request_id: i64) {
        let body = self.click_body(
            user,
            action_id,
            &request_id.to_string(),
            &format!("{user}-{request_id}"),
        );
        let (status, text) = self
            .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
            .await;
        assert_eq!(status, 200, "click answered: {text}");
    }

    /// Posts an interaction payload as Slack does; returns the status and the body.
    pub async fn interact(&self, payload: &Value) -> (u16, String) {
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        self.post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
            .await
    }

    /// Clicks a button in `user`'s Home tab (no response_url, a `view` of type home).
    pub async fn home_click(&self, user: &str, action_id: &str, value: &str) {
        let payload = json!({
            "type": "block_actions",
            "team": {"id": "T0TEAM", "domain": "acme"},
            "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0TEAM"},
            "api_app_id": "A0APP",
            "container": {"type": "view", "view_id": "V0HOME"},
            "trigger_id": self.slack.new_trigger_id(),
            "view": {"id": "V0HOME", "type": "home", "callback_id": "", "private_metadata": "", "hash": "h",
                     "state": {"values": {}}},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b1",
                         "text": {"type": "plain_text", "text": "x"}, "value": value, "action_ts": "1700000002.1"}]
        });
        let (status, text) = self.interact(&payload).await;
        assert_eq!(status, 200, "click answered: {text}");
    }

    /// The `view_submission` payload for submitting `view` (a view as the fake holds it)
    /// as `user` with `values` typed into its inputs (block_id → value).
    pub fn submission(&self, user: &str, view: &Value, values: &[(&str, &str)]) -> Value {
        let mut state = serde_json::Map::new();
        for (block, value) in values {
            state.insert(
                block.to_string(),
                json!({ *block: {"type": "plain_text_input", "value": value} }),
            );
        }
        let mut view = view.clone();
        view["state"] = json!({ "values": state });
        json!({
            "type": "view_submission",
            "team": {"id": "T0TEAM", "domain": "acme"},
            "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T0TEAM"},
            "api_app_id": "A0APP",
            "trigger_id": self.slack.new_trigger_id(),
            "view": view,
        })
    }

    /// Submits a form over HTTP; returns Slack's answer as JSON (`Null` for an empty 200).
    pub async fn submit(&self, user: &str, view: &Value, values: &[(&str, &str)]) -> Value {
        let (status, body) = self.interact(&self.submission(user, view, values)).await;
        assert_eq!(status, 200, "submission answered: {body}");
        if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON answer: {body}"))
        }
    }

    /// Waits for the `n`-th successful `views.open` and returns the view it opened.
    pub async fn wait_opened_view(&self, n: usize) -> Value {
        let calls = self
            .wait_calls("a modal to open", n, |c| c.method == "views.open")
            .await;
        calls[n - 1].body["view"].clone()
    }

    pub async fn approve(&self, user: &str, id: i64) {
        self.click(user, "jit_approve", id).await
    }

    pub async fn deny(&self, user: &str, id: i64) {
        self.click(user, "jit_deny", id).await
    }

    /// Runs a read-only SQL query returning one integer.
    pub async fn count(&self, sql: &str) -> i64 {
        let row: (i64,) = sqlx::query_as(sql).fetch_one(&self.state().db.read).await.unwrap();
        row.0
    }

    /// The state column of a request.
    pub async fn request_state(&self, id: i64) -> String {
        let row: (String,) = sqlx::query_as("SELECT state FROM requests WHERE id = $1")
            .bind(id)
            .fetch_one(&self.state().db.read)
            .await
            .unwrap();
        row.0
    }

    /// The grant's state, if the request has a grant.
    pub async fn grant_state(&self, id: i64) -> Option<String> {
        let row: Option<(String,)> = sqlx::query_as("SELECT state FROM grants WHERE request_id = $1")
            .bind(id)
            .fetch_optional(&self.state().db.read)
            .await
            .unwrap();
        row.map(|r| r.0)
    }

    /// Waits for the grant to reach `state`.
    pub async fn wait_grant(&self, id: i64, state: &str) {
        wait_for(&format!("grant of JIT-{id} to be {state}"), || async {
            (self.grant_state(id).await.as_deref() == Some(state)).then_some(())
        })
        .await
    }

    /// Waits for the request to reach `state`.
    pub async fn wait_request(&self, id: i64, state: &str) {
        wait_for(&format!("JIT-{id} to be {state}"), || async {
            (self.request_state(id).await == state).then_some(())
        })
        .await
    }

    /// Waits for `n` successful calls matching `pred` and returns them.
    pub async fn wait_calls(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&fake_slack::Call) -> bool,
    ) -> Vec<fake_slack::Call> {
        wait_for(what, || async {
            let calls: Vec<_> = self.slack.calls().into_iter().filter(|c| c.ok && pred(c)).collect();
            (calls.len() >= n).then_some(calls)
        })
        .await
    }

    /// Waits for the ephemeral reply sent to the clicker `user` about request `id`.
    pub async fn wait_ephemeral(&self, user: &str, id: i64) -> String {
        let rid = format!("{user}-{id}");
        let calls = self
            .wait_calls(&format!("an ephemeral reply to {user}"), 1, |c| {
                c.method == "response_url" && c.body["response_url_id"] == rid.as_str()
            })
            .await;
        calls[0].text().to_string()
    }

    /// Waits for the card of request `id` to be posted; returns its latest content (post or update).
    pub async fn wait_card_containing(&self, id: i64, needle: &str) -> String {
        let label = format!(" request JIT-{id}\"");
        wait_for(&format!("JIT-{id}'s card to show {needle:?}"), || async {
            let last = self.slack.calls().into_iter().rev().find(|c| {
                c.ok && (c.method == "chat.postMessage" || c.method == "chat.update") && c.all_text().contains(&label)
            })?;
            last.all_text().contains(needle).then(|| last.all_text())
        })
        .await
    }

    /// DMs sent to `user` so far.
    pub fn dms(&self, user: &str) -> Vec<String> {
        self.slack
            .posted_to(user)
            .iter()
            .map(|c| c.text().to_string())
            .collect()
    }

    /// Waits for a DM to `user` containing `needle`.
    pub async fn wait_dm(&self, user: &str, needle: &str) -> String {
        wait_for(&format!("a DM to {user} containing {needle:?}"), || async {
            self.dms(user).into_iter().find(|t| t.contains(needle))
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.state.shutdown.cancel();
        }
    }
}
