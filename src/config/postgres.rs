//! `[adapters.NAME]` with `type = "postgres"`: where to connect, which mode, which roles
//! and logins. Checked here so that `check-config` reports every problem at once; the
//! adapter itself (`adapters::postgres`) only reads the result.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

use crate::duration::HumanDuration;

/// Every role this adapter creates starts with this.
pub const ROLE_PREFIX: &str = "jit_";
/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
pub const MAX_IDENT_BYTES: usize = 63;
/// Query parameters of the URL that sqlx understands. Anything else is refused at load,
/// because sqlx would log an unknown parameter together with its value.
const URL_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

// ---- configuration -------------------------------------------------------------------

/// `type = "postgres"`
#[derive(Debug, Clone)]
pub struct PostgresAdapterConfig {
    /// Where to connect, with the credentials of the adapter's own role.
    pub url: DatabaseUrl,
    pub mode: PostgresMode,
    /// jitgate role → PostgreSQL role to grant.
    pub roles: BTreeMap<String, String>,
    /// grant_role: Slack user ID → existing database login.
    pub logins: BTreeMap<String, String>,
    /// grant_role: the login of users not in `logins`; `{user_id}` stands for the Slack
    /// user ID in lower case.
    pub login_template: Option<String>,
    /// temporary_login: `CONNECTION LIMIT` of each login.
    pub connection_limit: Option<i32>,
    /// temporary_login: `VALID UNTIL` is the end of the grant plus this.
    pub valid_until_grace: HumanDuration,
    /// temporary_login: how to connect, shown to the requester with the credentials.
    pub connect_hint: Option<String>,
    /// Giving up on connecting after this long.
    pub connect_timeout: HumanDuration,
    /// Giving up on one grant, revoke or check after this long.
    pub timeout: HumanDuration,
}

/// What a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresMode {
    /// Membership of the mapped role for the user's existing login.
    GrantRole,
    /// A login of its own, with generated credentials.
    TemporaryLogin,
}

impl PostgresMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PostgresMode::GrantRole => "grant_role",
            PostgresMode::TemporaryLogin => "temporary_login",
        }
    }
}

/// A `postgres://` URL that may hold a password: `Debug` and [`DatabaseUrl::redacted`]
/// show neither the password nor the query string.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub(crate) String);

impl DatabaseUrl {
    /// The URL as configured. Only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `postgres://user@host:port/db`, for logs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(u) => {
                let user = if u.username().is_empty() {
                    String::new()
                } else {
                    format!("{}@", u.username())
                };
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                format!(
                    "{}://{user}{}{port}{}",
                    u.scheme(),
                    u.host_str().unwrap_or_default(),
                    u.path()
                )
            }
            Err(_) => "postgres://(unparsable)".into(),
        }
    }

    /// Strings that must never appear in a message: the URL and its password, raw and
    /// percent-decoded.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.0.clone()];
        if let Ok(u) = url::Url::parse(&self.0) {
            if let Some(p) = u.password() {
                out.push(p.to_string());
                if let Ok(decoded) = percent_decode(p) {
                    out.push(decoded);
                }
            }
            for (k, v) in u.query_pairs() {
                if k == "password" {
                    out.push(v.into_owned());
                }
            }
        }
        out.retain(|s| s.len() >= 3);
        out
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    url_env: Option<String>,
    mode: Option<String>,
    #[serde(default)]
    roles: BTreeMap<String, String>,
    #[serde(default)]
    logins: BTreeMap<String, String>,
    login_template: Option<String>,
    connection_limit: Option<i64>,
    valid_until_grace: Option<HumanDuration>,
    connect_hint: Option<String>,
    connect_timeout: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
}

/// Reads an `[adapters.NAME]` table with `type = "postgres"` (the `type` key removed).
/// `key` is `adapters.NAME`, for messages. `url_env` is read from the process environment.
pub fn parse_config(key: &str, value: toml::Value) -> Result<PostgresAdapterConfig, Vec<String>> {
    parse_config_with_env(key, value, &|name| std::env::var(name).ok())
}

pub(crate) fn parse_config_with_env(
    key: &str,
    value: toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PostgresAdapterConfig, Vec<String>> {
    let raw: RawPostgres = crate::config::de::from_value(key, value)?;
    let mut problems = Vec::new();
    let example_url = "\"postgres://jitgate@db.example.com:5432/app\"";

    let url = match (raw.url, raw.url_env) {
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{key}: both url and url_env are set; keep only one (url_env keeps the password out of this file)"
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{key}.url: missing; set url = {example_url} or url_env = \"JITGATE_PG_URL\" \
                 (the name of an environment variable holding the URL)"
            ));
            None
        }
        (Some(url), None) => match check_url(&url) {
            Ok(()) => Some(DatabaseUrl(url)),
            Err(why) => {
                problems.push(format!("{key}.url: {why}; write it like {example_url}"));
                None
            }
        },
        (None, Some(var)) if var.is_empty() || var.contains(['=', '\0']) => {
            problems.push(format!(
                "{key}.url_env: not a variable name; write the name like \"JITGATE_PG_URL\""
            ));
            None
        }
        (None, Some(var)) => match env(&var).filter(|v| !v.trim().is_empty()) {
            None => {
                problems.push(format!(
                    "{key}.url_env: environment variable {var} is not set; export it (like {example_url}) \
                     before starting jitgate"
                ));
                None
            }
            Some(url) => match check_url(url.trim()) {
                Ok(()) => Some(DatabaseUrl(url.trim().to_string())),
                Err(why) => {
                    problems.push(format!(
                        "{key}.url_env: the value of {var}: {why}; it should look like {example_url}"
                    ));
                    None
                }
            },
        },
    };

    let mode = match raw.mode.as_deref() {
        Some("grant_role") => Some(PostgresMode::GrantRole),
        Some("temporary_login") => Some(PostgresMode::TemporaryLogin),
        Some(other) => {
            problems.push(format!(
                "{key}.mode: unknown mode `{other}`; use \"grant_role\" (membership for existing logins) \
                 or \"temporary_login\" (a generated login per grant)"
            ));
            None
        }
        None => {
            problems.push(format!(
                "{key}.mode: missing; write mode = \"grant_role\" or mode = \"temporary_login\""
            ));
            None
        }
    };

    if raw.roles.is_empty() {
        problems.push(format!(
            "{key}.roles: missing; map each jitgate role to a PostgreSQL role, like \
             roles = {{ read = \"app_read\", write = \"app_write\" }}"
        ));
    }
    for (role, pg_role) in &raw.roles {
        if !crate::ids::is_name(role) {
            problems.push(format!(
                "{key}.roles: `{role}` is not a jitgate role name; use lowercase letters, digits, - and _ (like read)"
            ));
        }
        if let Err(why) = check_pg_name(pg_role) {
            problems.push(format!("{key}.roles.{role}: {why}"));
        }
    }

    for (user, login) in &raw.logins {
        if !crate::ids::is_slack_id(user, &['U', 'W']) {
            problems.push(format!(
                "{key}.logins: `{user}` is not a Slack user ID; use the member ID like U0123ABCD"
            ));
        }
        if let Err(why) = check_pg_name(login) {
            problems.push(format!("{key}.logins.{user}: {why}"));
        }
    }
    if let Some(t) = &raw.login_template {
        if t.matches("{user_id}").count() != 1 || t.replace("{user_id}", "").contains(['{', '}']) {
            problems.push(format!(
                "{key}.login_template: must contain {{user_id}} exactly once and no other braces, \
                 like \"slack_{{user_id}}\""
            ));
        } else if let Err(why) = check_pg_name(&t.replace("{user_id}", "u0123abcd")) {
            problems.push(format!("{key}.login_template: {why}"));
        }
    }

    let connection_limit = match raw.connection_limit {
        None => None,
        Some(n @ 1..=10_000) => Some(n as i32),
        Some(_) => {
            problems.push(format!(
                "{key}.connection_limit: must be between 1 and 10000 (leave it out for no limit)"
            ));
            None
        }
    };

    match mode {
        Some(PostgresMode::GrantRole) => {
            if raw.logins.is_empty() && raw.login_template.is_none() {
                problems.push(format!(
                    "{key}: mode = \"grant_role\" needs to know each requester's database login; add \
                     logins = {{ U0123ABCD = \"alice\" }} and/or login_template = \"slack_{{user_id}}\""
                ));
            }
            for (set, name) in [
                (raw.connection_limit.is_some(), "connection_limit"),
                (raw.valid_until_grace.is_some(), "valid_until_grace"),
                (raw.connect_hint.is_some(), "connect_hint"),
            ] {
                if set {
                    problems.push(format!(
                        "{key}.{name}: only used with mode = \"temporary_login\"; remove it"
                    ));
                }
            }
        }
        Some(PostgresMode::TemporaryLogin) => {
            for (set, name) in [
                (!raw.logins.is_empty(), "logins"),
                (raw.login_template.is_some(), "login_template"),
            ] {
                if set {
                    problems.push(format!(
                        "{key}.{name}: only used with mode = \"grant_role\" (temporary logins are named \
                         jit_<grant>_<user>); remove it"
                    ));
                }
            }
        }
        None => {}
    }

    let connect_timeout = raw.connect_timeout.unwrap_or(HumanDuration::from_secs(10));
    let timeout = raw.timeout.unwrap_or(HumanDuration::from_secs(30));
    if connect_timeout > timeout {
        problems.push(format!(
            "{key}.connect_timeout ({connect_timeout}) is longer than timeout ({timeout}); lower it"
        ));
    }

    match (url, mode) {
        (Some(url), Some(mode)) if problems.is_empty() => Ok(PostgresAdapterConfig {
            url,
            mode,
            roles: raw.roles,
            logins: raw.logins,
            login_template: raw.login_template,
            connection_limit,
            valid_until_grace: raw.valid_until_grace.unwrap_or(HumanDuration::from_secs(300)),
            connect_hint: raw.connect_hint,
            connect_timeout,
            timeout,
        }),
        _ => Err(problems),
    }
}

/// Why `url` cannot be used. Never quotes the URL: it may hold a password.
fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!("the scheme must be postgres://, not {}://", parsed.scheme()));
    }
    for (k, _) in parsed.query_pairs() {
        if !URL_PARAMS.contains(&k.as_ref()) {
            return Err(format!(
                "unsupported query parameter `{k}` (supported: {})",
                URL_PARAMS.join(", ")
            ));
        }
    }
    PgConnectOptions::from_str(url).map_err(|_| "sqlx cannot read it as a PostgreSQL URL".to_string())?;
    Ok(())
}

/// Why `name` cannot be a PostgreSQL role or login configured for this adapter.
fn check_pg_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty role name".into());
    }
    if name.len() > MAX_IDENT_BYTES {
        return Err(format!(
            "`{name}` is longer than PostgreSQL's {MAX_IDENT_BYTES}-byte limit"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("role names cannot contain control characters".into());
    }
    if name.starts_with(ROLE_PREFIX) {
        return Err(format!(
            "`{name}` starts with {ROLE_PREFIX}, which is reserved for the roles jitgate creates and drops"
        ));
    }
    if matches!(
        name,
        "public" | "none" | "current_user" | "session_user" | "current_role"
    ) {
        return Err(format!("`{name}` is reserved in PostgreSQL"));
    }
    Ok(())
}
