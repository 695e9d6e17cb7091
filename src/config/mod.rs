//! The TOML configuration file, read into validated, typed settings.
//!
//! Every problem is reported with the file, the key and what to write instead, and all
//! problems are reported at once so an operator fixes the file in one pass.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub(crate) mod de;
pub mod oncall;
pub mod postgres;

pub use self::postgres::{PostgresAdapterConfig, PostgresMode};
use crate::duration::HumanDuration;
use crate::ids::{is_name, is_slack_id};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "./jitgate.toml";
/// Slack's Web API, unless overridden.
pub const DEFAULT_SLACK_API_URL: &str = "https://slack.com/api";

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, for messages.
    pub path: PathBuf,
    pub server: ServerConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    pub database: DatabaseConfig,
    pub slack: SlackConfig,
    pub requests: RequestsConfig,
    pub jobs: JobsConfig,
    pub reconcile: ReconcileConfig,
    pub audit: AuditConfig,
    pub resources: Vec<Resource>,
    pub adapters: BTreeMap<String, AdapterConfig>,
    /// `[oncall]`: auto-approval for people on call; `None` when absent.
    pub oncall: Option<oncall::OnCallConfig>,
    /// `[break_glass]`: where break-glass uses are announced and how often one person may
    /// use it.
    pub break_glass: BreakGlassConfig,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long running adapter calls may take to finish at shutdown.
    pub shutdown_grace: HumanDuration,
    /// A client must send a request's headers within this long of connecting (or of the
    /// previous request on a kept-alive connection).
    pub header_timeout: HumanDuration,
    /// The whole request, body included, must be read and answered within this long.
    pub request_timeout: HumanDuration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Marks what this installation creates in shared targets (the `postgres` adapter's
    /// roles are `jit_<installation_id>_<grant>_<user>`), so two installations sharing a
    /// target never take, list or revoke each other's access. `None`: the original names
    /// (`jit_<grant>_<user>`); at most one installation per target may go without.
    pub installation_id: Option<String>,
}

/// `[metrics]`
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// A separate address for `/metrics` and `/readyz` (e.g. loopback), besides
    /// `[server] listen`, which serves them too.
    pub listen: Option<SocketAddr>,
}

/// `[database]`
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// A `sqlite://` URL or a plain path.
    pub url: String,
}

/// `[slack]`
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// Base URL of the Web API, without a trailing slash.
    pub api_url: String,
    /// The slash command as installed, used in help texts.
    pub command: String,
    /// The only workspace (`T…`) whose requests are served; any when unset.
    pub team_id: Option<String>,
    /// The only Slack app (`A…`) whose requests are served; any when unset.
    pub api_app_id: Option<String>,
    /// Hosts a `response_url` may point at (exact host names, https only unless the host
    /// is this machine). Default: `hooks.slack.com`.
    pub response_url_hosts: Vec<String>,
}

/// `[requests]`
#[derive(Debug, Clone)]
pub struct RequestsConfig {
    /// A request nobody decided on is closed after this long.
    pub pending_timeout: HumanDuration,
    /// Longest reason accepted, in characters.
    pub max_reason_length: usize,
    /// First reminder to approvers after this long; then 2×, 4× … until the time-out.
    /// `None` turns reminders off.
    pub remind_after: Option<HumanDuration>,
    /// Pending requests one person may have at once.
    pub max_pending_per_user: usize,
    /// `/jit` commands one person may send per minute.
    pub commands_per_minute: u32,
    /// The holder gets a DM this long before their access ends (with "Extend" and "I'm
    /// done"). `None` turns it off.
    pub ending_soon: Option<HumanDuration>,
}

/// `[jobs]`: how grant and revoke attempts are retried.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Attempts at a grant before it is marked failed.
    pub grant_attempts: u32,
    /// Wait after the first failure; doubles each time, with jitter.
    pub backoff_initial: HumanDuration,
    /// Longest wait between attempts.
    pub backoff_max: HumanDuration,
    /// A revoke that keeps failing is reported again this often.
    pub revoke_alert_interval: HumanDuration,
    /// Adapter calls running at once.
    pub concurrency: usize,
}

/// `[audit]`: the audit key and where the chain's head is anchored, all outside the data
/// directory.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// File holding the audit key, when `JITGATE_AUDIT_KEY` is not set.
    pub key_file: Option<PathBuf>,
    /// File the chain's head is appended to.
    pub anchor_file: Option<PathBuf>,
    /// Channel ID the chain's head is posted to.
    pub channel: Option<String>,
    /// How often the head is anchored (and always at shutdown).
    pub anchor_interval: HumanDuration,
}

/// `[reconcile]`: comparing what adapters have granted with what the database says.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How often; `None` ("off") turns the periodic pass off.
    pub interval: Option<HumanDuration>,
    /// Channel ID for reports (a security channel); only the audit log and the process
    /// log when unset.
    pub channel: Option<String>,
}

/// One `[[resources]]` entry.
#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    pub description: String,
    /// Never empty; the first is the default.
    pub roles: Vec<String>,
    pub default_duration: HumanDuration,
    pub max_duration: HumanDuration,
    pub approval_channel: String,
    pub approvers: Vec<String>,
    pub approver_groups: Vec<String>,
    pub approvals_required: u32,
    pub adapter: String,
    /// Longest a grant may last with all its extensions.
    pub max_total_duration: HumanDuration,
    /// The requester may extend their own grant without approval (up to the maximum).
    pub self_extend: bool,
    /// Break-glass: `Some` when `break_glass = true`.
    pub break_glass: Option<BreakGlass>,
}

/// A resource's break-glass settings: who may grant themselves access at once, with no
/// approver, and for how long at most. Every use is announced and must be reviewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// Longest break-glass grant (at most the resource's `max_duration`).
    pub max_duration: HumanDuration,
    /// Slack user IDs allowed to use it.
    pub users: Vec<String>,
    /// Slack user group IDs whose members may use it.
    pub groups: Vec<String>,
}

/// The `[break_glass]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassConfig {
    /// Channel that hears of every use (with `@here`), besides the approval channel.
    pub security_channel: Option<String>,
    /// Uses per person within `rate_window`.
    pub rate_limit: u32,
    pub rate_window: HumanDuration,
    /// First reminder of an unreviewed use; then 2×, 4× … until someone reviews it.
    pub remind_after: HumanDuration,
}

impl Default for BreakGlassConfig {
    fn default() -> Self {
        Self {
            security_channel: None,
            rate_limit: 1,
            rate_window: HumanDuration::from_secs(24 * 3600),
            remind_after: HumanDuration::from_secs(3600),
        }
    }
}

impl Resource {
    /// The role used when a request names none.
    pub fn default_role(&self) -> &str {
        &self.roles[0]
    }
}

/// One `[adapters.NAME]` table.
#[derive(Debug, Clone)]
pub enum AdapterConfig {
    /// Runs a program.
    Exec(ExecAdapterConfig),
    /// Calls a signed HTTPS webhook.
    Webhook(WebhookAdapterConfig),
    /// Grants PostgreSQL roles.
    Postgres(PostgresAdapterConfig),
    /// Does nothing; for trying jitgate out and for benchmarks.
    Noop,
    /// Grants nothing; appends every grant, extension and revoke to a file as a JSON
    /// line (`jitgate dev`'s demo adapter).
    Record(RecordAdapterConfig),
}

/// `type = "record"`
#[derive(Debug, Clone)]
pub struct RecordAdapterConfig {
    /// The JSON-lines file calls are appended to (relative paths: against the
    /// configuration file's directory).
    pub file: PathBuf,
}

impl AdapterConfig {
    /// The `type` as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            AdapterConfig::Exec(_) => "exec",
            AdapterConfig::Webhook(_) => "webhook",
            AdapterConfig::Postgres(_) => "postgres",
            AdapterConfig::Noop => "noop",
            AdapterConfig::Record(_) => "record",
        }
    }
}

/// `type = "exec"`
#[derive(Debug, Clone)]
pub struct ExecAdapterConfig {
    /// argv; the first element is the program. Never run through a shell.
    pub command: Vec<String>,
    /// The program is killed after this long.
    pub timeout: HumanDuration,
    /// Extra environment variables for the program.
    pub env: BTreeMap<String, String>,
}

/// `type = "webhook"`
#[derive(Clone)]
pub struct WebhookAdapterConfig {
    /// Where calls are POSTed: https, or http to a loopback address.
    pub url: String,
    /// The environment variable holding the shared signing secret (never the secret itself).
    pub secret_env: String,
    /// The whole exchange (connect, send, read the answer) must finish within this.
    pub timeout: HumanDuration,
    /// Extra static headers sent with every call; names are valid and none is set by jitgate.
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for WebhookAdapterConfig {
    // Header values may hold a gateway token; only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAdapterConfig")
            .field("url", &self.url)
            .field("secret_env", &self.secret_env)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{} in the configuration:",
            self.path.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    slack: RawSlack,
    #[serde(default)]
    requests: RawRequests,
    #[serde(default)]
    jobs: RawJobs,
    #[serde(default)]
    reconcile: RawReconcile,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    resources: Vec<RawResource>,
    #[serde(default)]
    adapters: BTreeMap<String, toml::Table>,
    #[serde(default)]
    oncall: Option<crate::config::oncall::RawOnCall>,
    #[serde(default)]
    break_glass: RawBreakGlass,
}

/// An installation marker: 1–16 lowercase ASCII letters and digits, starting with a
/// letter (so it can never be read as a grant id in a role name).
pub fn is_installation_id(id: &str) -> bool {
    (1..=16).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    shutdown_grace: Option<HumanDuration>,
    header_timeout: Option<HumanDuration>,
    request_timeout: Option<HumanDuration>,
    max_connections: Option<usize>,
    installation_id: Option<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            shutdown_grace: None,
            header_timeout: None,
            request_timeout: None,
            max_connections: None,
            installation_id: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

fn default_listen() -> String {
    "0.0.0.0:3000".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default = "default_db_url")]
    url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self { url: default_db_url() }
    }
}

fn default_db_url() -> String {
    "sqlite://jitgate.db".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    api_url: Option<String>,
    command: Option<String>,
    team_id: Option<String>,
    api_app_id: Option<String>,
    response_url_hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRequests {
    pending_timeout: Option<HumanDuration>,
    max_reason_length: Option<usize>,
    remind_after: Option<String>,
    max_pending_per_user: Option<usize>,
    commands_per_minute: Option<u32>,
    ending_soon: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    key_file: Option<String>,
    anchor_file: Option<String>,
    channel: Option<String>,
    anchor_interval: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    grant_attempts: Option<u32>,
    backoff_initial: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
    revoke_alert_interval: Option<HumanDuration>,
    concurrency: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    interval: Option<String>,
    channel: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    roles: Vec<String>,
    default_duration: Option<HumanDuration>,
    max_duration: Option<HumanDuration>,
    approval_channel: String,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    approver_groups: Vec<String>,
    #[serde(default = "one")]
    approvals_required: u32,
    adapter: String,
    max_total_duration: Option<HumanDuration>,
    #[serde(default)]
    self_extend: bool,
    #[serde(default)]
    break_glass: bool,
    break_glass_max_duration: Option<HumanDuration>,
    #[serde(default)]
    break_glass_users: Vec<String>,
    #[serde(default)]
    break_glass_groups: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    security_channel: Option<String>,
    rate_limit: Option<u32>,
    rate_window: Option<HumanDuration>,
    remind_after: Option<HumanDuration>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: Vec<String>,
    timeout: Option<HumanDuration>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<String>,
    secret_env: Option<String>,
    timeout: Option<HumanDuration>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNoop {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    file: PathBuf,
}

// ---- loading -------------------------------------------------------------------------

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        problems: vec![format!(
            "cannot read the file: {e}; pass --config PATH or set JITGATE_CONFIG \
             (manifest/jitgate.example.toml is a starting point)"
        )],
    })?;
    parse(path, &text)
}

/// Validates configuration `text` as if read from `path` (relative adapter paths are
/// resolved against the file's directory).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<String>| ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    let table: toml::Table = text.parse().map_err(|e| fail(vec![toml_problem(&e, text)]))?;
    // Wrong types and unknown keys are all reported, with the values checked below.
    let read = crate::config::de::read::<RawConfig>("", toml::Value::Table(table));
    let Some(raw) = read.value else {
        return Err(fail(read.problems));
    };
    let base_dir = config_dir(path);
    let mut problems = Vec::new();

    let listen = match raw.server.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            problems.push(format!(
                "server.listen: `{}` is not an address; write it like \"0.0.0.0:3000\"",
                raw.server.listen
            ));
            "0.0.0.0:3000".parse().expect("literal address")
        }
    };

    let metrics_listen = match raw.metrics.listen.as_deref().map(str::parse::<SocketAddr>) {
        None => None,
        Some(Ok(a)) if a == listen && a.port() != 0 => {
            problems.push(format!(
                "metrics.listen: `{a}` is also server.listen, which serves /metrics and /readyz already; \
                 remove metrics.listen or give it another port (like \"127.0.0.1:9090\")"
            ));
            None
        }
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            problems.push(format!(
                "metrics.listen: `{}` is not an address; write it like \"127.0.0.1:9090\"",
                raw.metrics.listen.as_deref().unwrap_or_default()
            ));
            None
        }
    };

    let url = raw.database.url.trim();
    if url.is_empty() {
        problems.push("database.url: empty; write it like \"sqlite://jitgate.db\"".into());
    } else if let Some(problem) = foreign_database_url(url) {
        problems.push(format!("database.url: {problem}"));
    }
    let database = DatabaseConfig {
        url: resolve_database_url(url, &base_dir),
    };

    let api_url = raw
        .slack
        .api_url
        .unwrap_or_else(|| DEFAULT_SLACK_API_URL.to_string())
        .trim_end_matches('/')
        .to_string();
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        problems.push(format!(
            "slack.api_url: `{api_url}` must start with https:// (default {DEFAULT_SLACK_API_URL})"
        ));
    }
    let command = raw.slack.command.unwrap_or_else(|| "/jit".into());
    if !command.starts_with('/') || command.len() > 32 || command.contains(char::is_whitespace) {
        problems.push(format!(
            "slack.command: `{command}` must be a slash command like \"/jit\" (at most 32 characters)"
        ));
    }

    let team_id = raw.slack.team_id.map(|t| t.trim().to_string());
    if let Some(t) = &team_id {
        if !(t.starts_with('T') || t.starts_with('E')) || t.len() < 2 || !t.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(format!(
                "slack.team_id: `{t}` is not a workspace ID; write it like \"T0123ABCD\" (Slack: workspace settings, or the `team_id` of any request)"
            ));
        }
    }
    let api_app_id = raw.slack.api_app_id.map(|a| a.trim().to_string());
    if let Some(a) = &api_app_id {
        if !a.starts_with('A') || a.len() < 2 || !a.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(format!(
                "slack.api_app_id: `{a}` is not an app ID; write it like \"A0123ABCD\" (Basic Information → App ID)"
            ));
        }
    }
    let response_url_hosts: Vec<String> = raw
        .slack
        .response_url_hosts
        .unwrap_or_else(|| vec!["hooks.slack.com".into()])
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for h in &response_url_hosts {
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
            problems.push(format!(
                "slack.response_url_hosts: `{h}` is not a host name; write it like \"hooks.slack.com\""
            ));
        }
    }

    let requests = RequestsConfig {
        pending_timeout: raw
            .requests
            .pending_timeout
            .unwrap_or(HumanDuration::from_secs(24 * 3600)),
        max_reason_length: raw.requests.max_reason_length.unwrap_or(500),
        max_pending_per_user: raw.requests.max_pending_per_user.unwrap_or(10),
        commands_per_minute: raw.requests.commands_per_minute.unwrap_or(30),
        remind_after: match raw.requests.remind_after.as_deref().map(str::trim) {
            None => Some(HumanDuration::from_secs(3600)),
            Some("off") | Some("never") => None,
            Some(text) => match text.parse() {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!("requests.remind_after: {e}, or \"off\""));
                    None
                }
            },
        },
        ending_soon: match raw.requests.ending_soon.as_deref().map(str::trim) {
            None => Some(HumanDuration::from_secs(600)),
            Some("off") | Some("never") => None,
            Some(text) => match text.parse() {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!("requests.ending_soon: {e}, or \"off\""));
                    None
                }
            },
        },
    };
    if !(10..=2000).contains(&requests.max_reason_length) {
        problems.push("requests.max_reason_length: must be between 10 and 2000".into());
    }
    if !(1..=1000).contains(&requests.max_pending_per_user) {
        problems.push("requests.max_pending_per_user: must be between 1 and 1000".into());
    }
    if !(1..=10_000).contains(&requests.commands_per_minute) {
        problems.push("requests.commands_per_minute: must be between 1 and 10000".into());
    }
    let header_timeout = raw.server.header_timeout.unwrap_or(HumanDuration::from_secs(5));
    let request_timeout = raw.server.request_timeout.unwrap_or(HumanDuration::from_secs(10));
    let max_connections = raw.server.max_connections.unwrap_or(1024);
    if !(1..=3600).contains(&header_timeout.to_std().as_secs()) {
        problems.push("server.header_timeout: must be between 1s and 1h".into());
    }
    if !(1..=3600).contains(&request_timeout.to_std().as_secs()) {
        problems.push("server.request_timeout: must be between 1s and 1h".into());
    }
    if !(1..=100_000).contains(&max_connections) {
        problems.push("server.max_connections: must be between 1 and 100000".into());
    }
    if let Some(id) = &raw.server.installation_id {
        if !is_installation_id(id) {
            problems.push(format!(
                "server.installation_id: {id:?} is not usable; write 1 to 16 lowercase letters \
                 and digits starting with a letter, like \"prod\" or \"eu1\""
            ));
        }
    }

    let jobs = JobsConfig {
        grant_attempts: raw.jobs.grant_attempts.unwrap_or(5),
        backoff_initial: raw.jobs.backoff_initial.unwrap_or(HumanDuration::from_secs(5)),
        backoff_max: raw.jobs.backoff_max.unwrap_or(HumanDuration::from_secs(300)),
        revoke_alert_interval: raw.jobs.revoke_alert_interval.unwrap_or(HumanDuration::from_secs(3600)),
        concurrency: raw.jobs.concurrency.unwrap_or(8),
    };
    if jobs.grant_attempts == 0 || jobs.grant_attempts > 100 {
        problems.push("jobs.grant_attempts: must be between 1 and 100".into());
    }
    if jobs.backoff_initial > jobs.backoff_max {
        problems.push(format!(
            "jobs.backoff_initial ({}) is longer than jobs.backoff_max ({})",
            jobs.backoff_initial, jobs.backoff_max
        ));
    }
    if jobs.concurrency == 0 || jobs.concurrency > 256 {
        problems.push("jobs.concurrency: must be between 1 and 256".into());
    }

    let reconcile = ReconcileConfig {
        interval: match raw.reconcile.interval.as_deref().map(str::trim) {
            None => Some(HumanDuration::from_secs(3600)),
            Some("off") | Some("never") => None,
            Some(text) => match text.parse() {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!("reconcile.interval: {e}, or \"off\""));
                    None
                }
            },
        },
        channel: raw.reconcile.channel,
    };
    if let Some(c) = &reconcile.channel {
        if !is_slack_id(c, &['C', 'G']) {
            problems.push(format!(
                "reconcile.channel: `{c}` is not a Slack channel ID; use the ID like \"C0123ABCD\", not the #name"
            ));
        }
    }

    // The audit key and anchor must live where an insider who can write the data
    // directory cannot: refuse paths inside the database's directory.
    let data_dir = if is_postgres_url(&database.url) {
        None
    } else {
        let db_path = database.url.strip_prefix("sqlite://").unwrap_or(&database.url);
        let db_path = db_path.split('?').next().unwrap_or_default();
        std::path::absolute(Path::new(db_path))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    };
    let mut audit_path = |key: &str, value: Option<String>| -> Option<PathBuf> {
        let value = value?;
        let path = base_dir.join(value.trim());
        let inside = match (&data_dir, std::path::absolute(&path)) {
            (Some(dir), Ok(abs)) => abs.starts_with(dir),
            _ => false,
        };
        if inside {
            problems.push(format!(
                "audit.{key}: `{}` is inside the data directory ({}); put it where someone who can write the database cannot, like /etc/jitgate/",
                path.display(),
                data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default()
            ));
        }
        Some(path)
    };
    let audit = AuditConfig {
        key_file: audit_path("key_file", raw.audit.key_file),
        anchor_file: audit_path("anchor_file", raw.audit.anchor_file),
        channel: raw.audit.channel,
        anchor_interval: raw.audit.anchor_interval.unwrap_or(HumanDuration::from_secs(300)),
    };
    if let Some(c) = &audit.channel {
        if !is_slack_id(c, &['C', 'G']) {
            problems.push(format!(
                "audit.channel: `{c}` is not a Slack channel ID; use the ID like \"C0123ABCD\", not the #name"
            ));
        }
    }

    let mut adapters = BTreeMap::new();
    // Adapters defined but invalid: their problems are already reported, so resources
    // using them are not also told the adapter is unknown.
    let mut invalid_adapters = HashSet::new();
    for (name, table) in raw.adapters {
        let key = format!("adapters.{name}");
        if !is_name(&name) {
            problems.push(format!(
                "{key}: adapter names use lowercase letters, digits, - and _ (like \"demo\")"
            ));
        }
        match adapter_from_table(&key, table, &base_dir) {
            Ok(a) => {
                adapters.insert(name, a);
            }
            Err(mut p) => {
                problems.append(&mut p);
                invalid_adapters.insert(name);
            }
        }
    }

    let mut resources = Vec::new();
    let mut seen = HashSet::new();
    if raw.resources.is_empty() {
        problems.push(
            "resources: none configured; add at least one [[resources]] table \
             (see manifest/jitgate.example.toml)"
                .into(),
        );
    }
    for (i, r) in raw.resources.into_iter().enumerate() {
        let key = format!("resources[{i}] ({})", r.name);
        if !is_name(&r.name) {
            problems.push(format!(
                "resources[{i}].name: `{}` must use lowercase letters, digits, - and _ (like \"prod-db\")",
                r.name
            ));
        }
        if !seen.insert(r.name.clone()) {
            problems.push(format!(
                "{key}.name: duplicate resource `{}`; names must be unique",
                r.name
            ));
        }
        let mut roles = r.roles;
        if roles.is_empty() {
            roles.push("default".into());
        }
        let mut role_seen = HashSet::new();
        for role in &roles {
            if !is_name(role) {
                problems.push(format!(
                    "{key}.roles: `{role}` must use lowercase letters, digits, - and _ (like \"read\")"
                ));
            }
            if !role_seen.insert(role) {
                problems.push(format!("{key}.roles: `{role}` is listed twice"));
            }
        }
        let max_duration = r.max_duration.unwrap_or(HumanDuration::from_secs(4 * 3600));
        let default_duration = r
            .default_duration
            .unwrap_or(max_duration.min(HumanDuration::from_secs(3600)));
        if default_duration > max_duration {
            problems.push(format!(
                "{key}.default_duration ({default_duration}) is longer than max_duration ({max_duration}); \
                 lower default_duration or raise max_duration"
            ));
        }
        let max_total_duration = r.max_total_duration.unwrap_or(max_duration);
        if max_total_duration < max_duration {
            problems.push(format!(
                "{key}.max_total_duration ({max_total_duration}) is shorter than max_duration ({max_duration}); \
                 raise it or leave it out (it defaults to max_duration)"
            ));
        }
        if !is_slack_id(&r.approval_channel, &['C', 'G']) {
            problems.push(format!(
                "{key}.approval_channel: `{}` is not a Slack channel ID; use the ID like \"C0123ABCD\" \
                 (channel details → About, at the bottom), not the #name",
                r.approval_channel
            ));
        }
        for u in &r.approvers {
            if !is_slack_id(u, &['U', 'W']) {
                problems.push(format!(
                    "{key}.approvers: `{u}` is not a Slack user ID; use the member ID like \"U0123ABCD\" \
                     (profile → ⋮ → Copy member ID), not a name or e-mail"
                ));
            }
        }
        for g in &r.approver_groups {
            if !is_slack_id(g, &['S']) {
                problems.push(format!(
                    "{key}.approver_groups: `{g}` is not a Slack user group ID; use the ID like \"S0123ABCD\""
                ));
            }
        }
        if r.approvers.is_empty() && r.approver_groups.is_empty() {
            problems.push(format!(
                "{key}: nobody can approve; add approvers = [\"U…\"] or approver_groups = [\"S…\"]"
            ));
        }
        let distinct_approvers: HashSet<_> = r.approvers.iter().collect();
        if r.approvals_required == 0 {
            problems.push(format!("{key}.approvals_required: must be at least 1"));
        } else if r.approver_groups.is_empty() && (r.approvals_required as usize) > distinct_approvers.len() {
            problems.push(format!(
                "{key}.approvals_required: {} approvals needed but only {} approvers listed; \
                 add approvers or lower approvals_required",
                r.approvals_required,
                distinct_approvers.len()
            ));
        }
        if !adapters.contains_key(&r.adapter) && !invalid_adapters.contains(&r.adapter) {
            let known: Vec<_> = adapters.keys().cloned().collect();
            problems.push(format!(
                "{key}.adapter: unknown adapter `{}`; define [adapters.{}] or use one of: {}",
                r.adapter,
                r.adapter,
                if known.is_empty() {
                    "(none defined)".into()
                } else {
                    known.join(", ")
                }
            ));
        }
        if let Some(AdapterConfig::Postgres(pg)) = adapters.get(&r.adapter) {
            for role in roles.iter().filter(|role| !pg.roles.contains_key(*role)) {
                problems.push(format!(
                    "{key}.roles: `{role}` has no PostgreSQL role; add {role} = \"…\" to adapters.{}.roles",
                    r.adapter
                ));
            }
        }
        let break_glass = if r.break_glass {
            let max = r
                .break_glass_max_duration
                .unwrap_or(max_duration.min(HumanDuration::from_secs(3600)));
            if max > max_duration {
                problems.push(format!(
                    "{key}.break_glass_max_duration ({max}) is longer than max_duration ({max_duration}); lower it"
                ));
            }
            if r.break_glass_users.is_empty() && r.break_glass_groups.is_empty() {
                problems.push(format!(
                    "{key}: break_glass = true but nobody may use it; add break_glass_users = [\"U…\"] \
                     or break_glass_groups = [\"S…\"]"
                ));
            }
            for u in &r.break_glass_users {
                if !is_slack_id(u, &['U', 'W']) {
                    problems.push(format!(
                        "{key}.break_glass_users: `{u}` is not a Slack user ID; use the member ID like \"U0123ABCD\""
                    ));
                }
            }
            for g in &r.break_glass_groups {
                if !is_slack_id(g, &['S']) {
                    problems.push(format!(
                        "{key}.break_glass_groups: `{g}` is not a Slack user group ID; use the ID like \"S0123ABCD\""
                    ));
                }
            }
            Some(BreakGlass {
                max_duration: max,
                users: r.break_glass_users,
                groups: r.break_glass_groups,
            })
        } else {
            if r.break_glass_max_duration.is_some()
                || !r.break_glass_users.is_empty()
                || !r.break_glass_groups.is_empty()
            {
                problems.push(format!(
                    "{key}: break_glass_* keys are set but break_glass is not; add break_glass = true \
                     or remove them"
                ));
            }
            None
        };
        resources.push(Resource {
            break_glass,
            name: r.name,
            description: r.description,
            roles,
            default_duration,
            max_duration,
            approval_channel: r.approval_channel,
            approvers: r.approvers,
            approver_groups: r.approver_groups,
            approvals_required: r.approvals_required,
            adapter: r.adapter,
            max_total_duration,
            self_extend: r.self_extend,
        });
    }

    let oncall = raw
        .oncall
        .and_then(|o| crate::config::oncall::validate(o, &resources, &mut problems));

    let defaults = BreakGlassConfig::default();
    let break_glass = BreakGlassConfig {
        security_channel: raw.break_glass.security_channel,
        rate_limit: raw.break_glass.rate_limit.unwrap_or(defaults.rate_limit),
        rate_window: raw.break_glass.rate_window.unwrap_or(defaults.rate_window),
        remind_after: raw.break_glass.remind_after.unwrap_or(defaults.remind_after),
    };
    if let Some(c) = &break_glass.security_channel {
        if !is_slack_id(c, &['C', 'G']) {
            problems.push(format!(
                "break_glass.security_channel: `{c}` is not a Slack channel ID; use the ID like \"C0123ABCD\", not the #name"
            ));
        }
    }
    if break_glass.rate_limit == 0 {
        problems.push("break_glass.rate_limit: must be at least 1 (turn break-glass off per resource instead)".into());
    }
    // A key set aside for its type left a default behind; what the checks say about that
    // default is no news.
    problems.retain(|p| !crate::config::de::follows_from_dropped(p, &read.dropped));
    let mut all = read.problems;
    all.append(&mut problems);
    if !all.is_empty() {
        return Err(fail(all));
    }
    Ok(Config {
        break_glass,
        path: path.to_path_buf(),
        server: ServerConfig {
            listen,
            shutdown_grace: raw.server.shutdown_grace.unwrap_or(HumanDuration::from_secs(20)),
            header_timeout,
            request_timeout,
            max_connections,
            installation_id: raw.server.installation_id.clone(),
        },
        metrics: MetricsConfig { listen: metrics_listen },
        database,
        slack: SlackConfig {
            api_url,
            command,
            team_id,
            api_app_id,
            response_url_hosts,
        },
        requests,
        jobs,
        reconcile,
        audit,
        resources,
        adapters,
        oncall,
    })
}

/// Applies environment overrides: `SLACK_API_URL` replaces `[slack] api_url`, and
/// `JITGATE_DATABASE_URL` replaces `[database] url` (a relative path in it is resolved
/// against the working directory, like any path outside the file).
pub fn apply_env(mut config: Config) -> Result<Config, ConfigError> {
    if let Some(url) = std::env::var("JITGATE_DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        let url = url.trim();
        if let Some(problem) = foreign_database_url(url) {
            return Err(ConfigError {
                path: config.path.clone(),
                problems: vec![format!("JITGATE_DATABASE_URL: {problem}")],
            });
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        config.database.url = resolve_database_url(url, &cwd);
    }
    if let Some(url) = std::env::var("SLACK_API_URL").ok().filter(|u| !u.trim().is_empty()) {
        let url = url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError {
                path: config.path.clone(),
                problems: vec![format!(
                    "SLACK_API_URL: `{url}` must start with https://, like {DEFAULT_SLACK_API_URL}"
                )],
            });
        }
        config.slack.api_url = url;
    }
    Ok(config)
}

impl Config {
    /// The resource called `name`.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

fn adapter_from_table(key: &str, mut table: toml::Table, base_dir: &Path) -> Result<AdapterConfig, Vec<String>> {
    let Some(kind) = table.remove("type") else {
        return Err(vec![format!(
            "{key}.type: missing; write type = \"exec\" (or \"postgres\", \"webhook\", \"record\", \"noop\")"
        )]);
    };
    let kind = kind.as_str().unwrap_or_default().to_string();
    let value = toml::Value::Table(table);
    match kind.as_str() {
        "exec" => {
            let raw: RawExec = crate::config::de::from_value(key, value)?;
            let mut problems = Vec::new();
            let mut command = raw.command;
            match command.first_mut() {
                None => problems.push(format!(
                    "{key}.command: empty; write the program and its arguments as a list, \
                     like [\"/usr/local/bin/jit-grant\"]"
                )),
                Some(program) => {
                    let p = Path::new(program.as_str());
                    // A bare name (`kubectl`) is looked up in PATH when it runs.
                    let resolved = if program.contains('/') {
                        resolve_path(base_dir, p)
                    } else {
                        p.to_path_buf()
                    };
                    if program.contains('/') {
                        if !resolved.is_file() {
                            let fix = if p.is_relative() {
                                format!(
                                    "relative paths are resolved against the configuration file's directory \
                                     ({}); write the program's path from there, or an absolute path",
                                    base_dir.display()
                                )
                            } else {
                                "install the program there or correct the path".to_string()
                            };
                            problems.push(format!(
                                "{key}.command: `{}` does not exist or is not a file; {fix}",
                                resolved.display()
                            ));
                        } else if !is_executable(&resolved) {
                            problems.push(format!(
                                "{key}.command: `{}` is not executable; run chmod +x on it",
                                resolved.display()
                            ));
                        }
                        *program = resolved.to_string_lossy().into_owned();
                    }
                }
            }
            for k in raw.env.keys() {
                if k.is_empty() || k.starts_with("JIT_") || k.contains('=') {
                    problems.push(format!(
                        "{key}.env: `{k}` is not allowed; JIT_* names are set by jitgate"
                    ));
                }
            }
            if !problems.is_empty() {
                return Err(problems);
            }
            Ok(AdapterConfig::Exec(ExecAdapterConfig {
                command,
                timeout: raw.timeout.unwrap_or(HumanDuration::from_secs(30)),
                env: raw.env,
            }))
        }
        "webhook" => webhook_from_value(key, value).map(AdapterConfig::Webhook),
        "postgres" => postgres::parse_config(key, value).map(AdapterConfig::Postgres),
        "noop" => {
            let _: RawNoop = crate::config::de::from_value(key, value)?;
            Ok(AdapterConfig::Noop)
        }
        "record" => {
            let raw: RawRecord = crate::config::de::from_value(key, value)?;
            if raw.file.as_os_str().is_empty() {
                return Err(vec![format!(
                    "{key}.file: empty; write the file grants and revokes are recorded in, like \"jitgate-grants.jsonl\""
                )]);
            }
            Ok(AdapterConfig::Record(RecordAdapterConfig {
                file: resolve_path(base_dir, &raw.file),
            }))
        }
        other => Err(vec![format!(
            "{key}.type: unknown adapter type `{other}`; use \"exec\", \"postgres\", \"webhook\", \"record\" or \"noop\""
        )]),
    }
}

/// The directory relative paths in the file at `path` are resolved against: the file's
/// own, made absolute so that messages show where a path really points.
fn config_dir(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `path` against `base` when relative, without `.` components (`./x` reads as `x`).
fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    base.join(path)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Whether `[database] url` names a PostgreSQL database (`postgres://` or
/// `postgresql://`); anything else is a SQLite URL or path.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// What is wrong with a database URL that is neither SQLite's nor PostgreSQL's (the
/// password of a URL is never repeated).
fn foreign_database_url(url: &str) -> Option<String> {
    if is_postgres_url(url) {
        return match url::Url::parse(url) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => None,
            _ => Some(
                "not a PostgreSQL URL that parses; write it like \"postgres://jitgate@db.internal:5432/jitgate\" \
                 (the password is better given in PGPASSWORD or a .pgpass file than in the file)"
                    .to_string(),
            ),
        };
    }
    if url.contains("://") && !url.starts_with("sqlite://") {
        let scheme = url.split("://").next().unwrap_or_default();
        return Some(format!(
            "`{scheme}://…` is not a database jitgate runs on; write a SQLite file like \"sqlite://jitgate.db\" \
             or a PostgreSQL URL like \"postgres://jitgate@db.internal:5432/jitgate\""
        ));
    }
    None
}

/// `url` (a `sqlite:` URL or a plain path) with a relative file path resolved against
/// `base`; in-memory databases and absolute paths are left as they are.
pub(crate) fn resolve_database_url(url: &str, base: &Path) -> String {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (file, query) = match rest.split_once('?') {
        Some((file, query)) => (file, Some(query)),
        None => (rest, None),
    };
    let foreign = rest.contains("://");
    if foreign || file.is_empty() || file == ":memory:" || Path::new(file).is_absolute() {
        return url.to_string();
    }
    // sqlx percent-decodes the file name; the directory part must survive that.
    let base = base
        .to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    let file = resolve_path(Path::new(&base), Path::new(file));
    match query {
        Some(q) => format!("sqlite://{}?{q}", file.display()),
        None => format!("sqlite://{}", file.display()),
    }
}

impl DatabaseConfig {
    /// The SQLite file, or `None` for an in-memory database.
    pub fn file(&self) -> Option<PathBuf> {
        use std::str::FromStr;
        let rest = self
            .url
            .strip_prefix("sqlite://")
            .or_else(|| self.url.strip_prefix("sqlite:"))
            .unwrap_or(&self.url);
        if rest.is_empty() || rest.starts_with(":memory:") || rest.starts_with('?') || rest.contains("mode=memory") {
            return None;
        }
        let url = if self.url.starts_with("sqlite:") {
            self.url.clone()
        } else {
            format!("sqlite://{}", self.url)
        };
        sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .ok()
            .map(|o| o.get_filename().to_path_buf())
    }
}

/// Headers jitgate sets itself on webhook calls (names compared in lower case; every
/// `x-jitgate-*` name is reserved too).
const WEBHOOK_RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "user-agent",
    "idempotency-key",
];

fn webhook_from_value(key: &str, value: toml::Value) -> Result<WebhookAdapterConfig, Vec<String>> {
    // The most likely mistake gets its own answer rather than "unknown field".
    if value.get("secret").is_some() {
        return Err(vec![format!(
            "{key}.secret: the signing secret must not be in the file; put it in an environment \
             variable and name that variable instead, like secret_env = \"JITGATE_WEBHOOK_SECRET\""
        )]);
    }
    let raw: RawWebhook = crate::config::de::from_value(key, value)?;
    let mut problems = Vec::new();
    let url = match raw.url.as_deref().map(str::trim) {
        None | Some("") => {
            problems.push(format!(
                "{key}.url: missing; write the receiver's address, like url = \"https://access.example.com/jitgate\""
            ));
            String::new()
        }
        Some(text) => match check_webhook_url(text) {
            Ok(url) => url,
            Err(fix) => {
                problems.push(format!("{key}.url: `{text}` {fix}"));
                String::new()
            }
        },
    };
    let secret_env = raw.secret_env.unwrap_or_default().trim().to_string();
    if secret_env.is_empty() {
        problems.push(format!(
            "{key}.secret_env: missing; name the environment variable that holds the shared signing \
             secret, like secret_env = \"JITGATE_WEBHOOK_SECRET\" (the secret itself never goes in the file)"
        ));
    } else if !is_env_name(&secret_env) {
        problems.push(format!(
            "{key}.secret_env: `{secret_env}` is not an environment variable name; use letters, digits \
             and _, like \"JITGATE_WEBHOOK_SECRET\""
        ));
    } else if secret_env.starts_with("SLACK_") {
        // A receiver holding Slack's signing secret could forge Slack requests to jitgate.
        problems.push(format!(
            "{key}.secret_env: `{secret_env}` must not be a Slack secret; give the webhook its own \
             secret, like secret_env = \"JITGATE_WEBHOOK_SECRET\""
        ));
    }
    let timeout = raw.timeout.unwrap_or(HumanDuration::from_secs(10));
    if timeout > HumanDuration::from_secs(300) {
        problems.push(format!(
            "{key}.timeout: {timeout} is too long; at most 5m (a call holds one of jobs.concurrency slots)"
        ));
    }
    for (name, value) in &raw.headers {
        let lower = name.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!(
                "{key}.headers: `{name}` is not a header name; use letters, digits and -, like \"X-Team\""
            ));
        } else if WEBHOOK_RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-jitgate-") {
            problems.push(format!("{key}.headers: `{name}` is set by jitgate; remove it"));
        }
        if hyper::header::HeaderValue::from_str(value).is_err() {
            problems.push(format!(
                "{key}.headers.{name}: the value must be visible ASCII text on one line"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(WebhookAdapterConfig {
        url,
        secret_env,
        timeout,
        headers: raw.headers,
    })
}

/// The URL as jitgate will call it, or what is wrong with it (said after the URL).
fn check_webhook_url(text: &str) -> Result<String, String> {
    let example = "write it like \"https://access.example.com/jitgate\"";
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL ({e}); {example}"))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(
                    "uses plain http, which is only allowed to this machine (127.0.0.1, [::1], \
                            localhost); use https://"
                        .into(),
                );
            }
        }
        other => return Err(format!("has the scheme `{other}`; use https://, {example}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "holds credentials, which would end up in logs; remove the `user:password@` part \
                    (receivers authenticate jitgate by the X-Jitgate-Signature header)"
                .into(),
        );
    }
    let mut url = url;
    url.set_fragment(None);
    let normalized = url.to_string();
    normalized
        .parse::<hyper::Uri>()
        .map_err(|e| format!("cannot be used for HTTP ({e}); {example}"))?;
    Ok(normalized)
}

/// A portable environment variable name.
fn is_env_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(_path: &Path) -> bool {
    true
}

fn toml_problem(e: &toml::de::Error, text: &str) -> String {
    // The toml crate's message names the key; add the line so the operator can find it.
    let msg = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:3000"

[[resources]]
name = "prod-db"
roles = ["read", "write"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1", "U0APPROVER2"]
approver_groups = ["S0DBAS"]
adapter = "demo"

[adapters.demo]
type = "noop"
"#;

    fn problems(text: &str) -> Vec<String> {
        parse(Path::new("test.toml"), text).unwrap_err().problems
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = parse(Path::new("test.toml"), GOOD).unwrap();
        let r = c.resource("prod-db").unwrap();
        assert_eq!(r.default_role(), "read");
        assert_eq!(r.approvals_required, 1);
        assert_eq!(c.slack.api_url, DEFAULT_SLACK_API_URL);
        assert_eq!(c.requests.pending_timeout.as_secs(), 86_400);
    }

    #[test]
    fn an_installation_id_is_a_short_lowercase_name_starting_with_a_letter() {
        let with = |id: &str| {
            GOOD.replace(
                "listen = \"127.0.0.1:3000\"",
                &format!("listen = \"127.0.0.1:3000\"\ninstallation_id = {id:?}"),
            )
        };
        let c = parse(Path::new("test.toml"), &with("eu1")).unwrap();
        assert_eq!(c.server.installation_id.as_deref(), Some("eu1"));
        assert_eq!(
            parse(Path::new("test.toml"), GOOD).unwrap().server.installation_id,
            None
        );
        for bad in ["", "1eu", "EU", "eu_1", "eu-1", "abcdefghijklmnopq"] {
            let p = problems(&with(bad));
            assert!(
                p.len() == 1
                    && p[0].starts_with("server.installation_id:")
                    && p[0].contains("lowercase letters and digits"),
                "{bad}: {p:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let p = problems(&GOOD.replace("adapter = \"demo\"", "adapter = \"demo\"\napprover = \"x\""));
        assert_eq!(p, ["resources[0].approver: unknown key; did you mean `approvers`?"]);
    }

    #[test]
    fn default_above_max_is_refused_with_both_values() {
        let p = problems(&GOOD.replace("default_duration = \"1h\"", "default_duration = \"5h\""));
        assert!(
            p.iter()
                .any(|m| m.contains("default_duration (5h) is longer than max_duration (4h)")),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_adapter_and_bad_ids_are_all_reported() {
        let text = GOOD
            .replace("adapter = \"demo\"", "adapter = \"nope\"")
            .replace("\"U0APPROVER1\"", "\"alice\"")
            .replace("C0APPROVALS", "#approvals");
        let p = problems(&text);
        assert!(p.iter().any(|m| m.contains("unknown adapter `nope`")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("`alice` is not a Slack user ID")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("`#approvals` is not a Slack channel ID")),
            "{p:?}"
        );
    }

    #[test]
    fn duplicate_resources_are_refused() {
        let dup = GOOD
            .split("[adapters.demo]")
            .next()
            .unwrap()
            .split("[[resources]]")
            .nth(1)
            .unwrap();
        let text = format!("{GOOD}\n[[resources]]{dup}");
        let p = problems(&text);
        assert!(p.iter().any(|m| m.contains("duplicate resource `prod-db`")), "{p:?}");
    }

    #[test]
    fn malformed_durations_say_how_to_write_them() {
        let p = problems(&GOOD.replace("\"4h\"", "\"4 hours\""));
        assert!(p[0].contains("write it like 45s"), "{p:?}");
    }

    #[test]
    fn more_approvals_than_approvers_is_refused() {
        let text = GOOD.replace("approver_groups = [\"S0DBAS\"]\n", "approvals_required = 3\n");
        let p = problems(&text);
        assert!(
            p.iter().any(|m| m.contains("3 approvals needed but only 2 approvers")),
            "{p:?}"
        );
    }

    #[test]
    fn exec_adapter_requires_an_existing_program() {
        let text = GOOD.replace(
            "type = \"noop\"",
            "type = \"exec\"\ncommand = [\"/nonexistent/jit-grant\"]",
        );
        let p = problems(&text);
        assert!(
            p.iter().any(|m| m.contains("/nonexistent/jit-grant` does not exist")),
            "{p:?}"
        );
    }

    #[test]
    fn relative_database_paths_follow_the_files_directory() {
        let base = Path::new("/etc/jitgate");
        for (written, resolved) in [
            ("sqlite://jitgate.db", "sqlite:///etc/jitgate/jitgate.db"),
            (
                "sqlite:./data/j.db?mode=rwc",
                "sqlite:///etc/jitgate/data/j.db?mode=rwc",
            ),
            ("jitgate.db", "sqlite:///etc/jitgate/jitgate.db"),
            ("sqlite:///var/lib/jitgate/j.db", "sqlite:///var/lib/jitgate/j.db"),
            ("/var/lib/jitgate/j.db", "/var/lib/jitgate/j.db"),
            ("sqlite::memory:", "sqlite::memory:"),
        ] {
            assert_eq!(resolve_database_url(written, base), resolved, "{written}");
        }
        let c = parse(Path::new("/etc/jitgate/jitgate.toml"), GOOD).unwrap();
        assert_eq!(c.database.file().unwrap(), Path::new("/etc/jitgate/jitgate.db"));
        let p = problems(&format!("[database]\nurl = \"mysql://db/app\"\n{GOOD}"));
        assert!(
            p.iter()
                .any(|m| m.contains("`mysql://…` is not a database jitgate runs on")),
            "{p:?}"
        );
        let c = parse(
            Path::new("/etc/jitgate/jitgate.toml"),
            &format!("[database]\nurl = \"postgres://jit:pw@db.internal/jit\"\n{GOOD}"),
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://jit:pw@db.internal/jit");
        let p = problems(&format!("[database]\nurl = \"postgres://:pw@/\"\n{GOOD}"));
        assert!(
            p.iter()
                .any(|m| m.contains("not a PostgreSQL URL that parses") && !m.contains("pw")),
            "{p:?}"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let e = parse(Path::new("/etc/jitgate.toml"), "nonsense = 1").unwrap_err();
        assert!(e.to_string().starts_with("/etc/jitgate.toml: 2 problems"), "{e}");
    }
}
