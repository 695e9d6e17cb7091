//! The `postgres` adapter: access to a PostgreSQL cluster through roles.
//!
//! Every grant gets its own role, named `jit_<grant id>_<slack user id>`, or
//! `jit_<installation>_<grant id>_<slack user id>` when `[server] installation_id` is set
//! (so installations sharing a cluster never list or drop each other's roles):
//!
//! - `mode = "temporary_login"`: the role is a LOGIN role with a random password, `VALID
//!   UNTIL` the end of the grant (plus a grace), member of the mapped role. The password
//!   reaches the requester only through [`Granted::private_note`]. Revoke disables the
//!   login, ends its sessions, hands anything it created to the adapter's own role and
//!   drops it.
//! - `mode = "grant_role"`: the role is a NOLOGIN role, member of the mapped role, and is
//!   granted to the requester's existing login. Revoke drops it. A per-grant role rather
//!   than a direct `GRANT app_read TO alice` means two overlapping grants never take each
//!   other's access away, a membership the login had before is never revoked, and
//!   reconciliation can tell which grant a membership belongs to.
//!
//! Revoke finds the roles by the grant id alone, so it works even when the grant's state
//! was lost or the login mapping changed since.
//!
//! Secrets: the connection URL is redacted in `Debug` and never appears in messages. The
//! generated password is sent to the server only as a SCRAM-SHA-256 verifier computed
//! here (as `psql`'s `\password` does), so neither the server's statement log nor sqlx's
//! logs ever see it; statement logging is off on these connections anyway.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor as _};

use super::{Adapter, AdapterError, BoxFuture, GrantContext, Granted, ListedAccess};
pub use crate::config::postgres::{DatabaseUrl, PostgresAdapterConfig, PostgresMode, MAX_IDENT_BYTES, ROLE_PREFIX};

/// Length of generated passwords: 32 alphanumerics, about 190 bits.
const PASSWORD_CHARS: usize = 32;
/// PostgreSQL's default `scram_iterations`.
const SCRAM_ITERATIONS: u32 = 4096;
/// First key of the advisory lock taken per grant ("jitg"), so concurrent attempts at the
/// same grant run one after the other.
const LOCK_CLASS: i32 = 0x6a69_7467;
/// How long revoke waits for a terminated session to exit.
const TERMINATE_WAIT_MS: i64 = 5_000;

// ---- SQL text --------------------------------------------------------------------------

/// Quotes `name` as a PostgreSQL identifier: in double quotes, inner double quotes doubled.
/// Always quotes, so case and special characters are kept exactly. PostgreSQL rejects
/// identifiers containing NUL; names reaching here are checked or generated.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes `text` as a PostgreSQL string literal: single quotes doubled, and, when it has a
/// backslash, in `E'…'` form with backslashes doubled, which reads the same whatever
/// `standard_conforming_strings` is (like the server's own `quote_literal`).
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// `text` reduced to lowercase ASCII letters, digits and `_` (anything else becomes `_`).
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The start of every role an installation creates: `jit_`, or `jit_<installation>_`
/// when `[server] installation_id` is set. An installation id starts with a letter, so a
/// role of one naming never parses as a grant's role under another.
pub fn role_prefix(installation: Option<&str>) -> String {
    match installation {
        Some(id) => format!("{ROLE_PREFIX}{id}_"),
        None => ROLE_PREFIX.to_string(),
    }
}

/// The role created for a grant: `<prefix><grant id>_<sanitized user>`, at most 63 bytes.
pub fn role_name(prefix: &str, grant_id: i64, user_id: &str) -> Result<String, AdapterError> {
    if grant_id < 0 {
        return Err(AdapterError::Permanent(format!("grant id {grant_id} is negative")));
    }
    let head = format!("{prefix}{grant_id}_");
    let mut user = sanitize(user_id);
    if user.is_empty() {
        user.push_str("user");
    }
    user.truncate(MAX_IDENT_BYTES - head.len());
    Ok(format!("{head}{user}"))
}

/// The grant id in a role name made by [`role_name`] with `prefix`.
pub fn grant_id_of(prefix: &str, role: &str) -> Option<i64> {
    let rest = role.strip_prefix(prefix)?;
    let (digits, _) = rest.split_once('_')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn generate_password() -> String {
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(PASSWORD_CHARS)
        .map(char::from)
        .collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, as in
/// `pg_authid.rolpassword`). Passing it instead of the password keeps the password out of
/// the statement. `password` must be ASCII without control characters (SASLprep is then
/// the identity), which generated passwords are.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    // PBKDF2-HMAC-SHA256 with one 32-byte block.
    let keyed = Hmac::<Sha256>::new_from_slice(password.as_bytes()).expect("HMAC takes keys of any length");
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = [0u8; 32];
    let mut salted = [0u8; 32];
    for i in 0..iterations.max(1) {
        let mut mac = keyed.clone();
        mac.update(if i == 0 { &block[..] } else { &u[..] });
        u.copy_from_slice(&mac.finalize().into_bytes());
        salted.iter_mut().zip(u.iter()).for_each(|(s, x)| *s ^= x);
    }
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

fn new_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    scram_sha256_verifier(password, &salt, SCRAM_ITERATIONS)
}

// ---- the adapter -----------------------------------------------------------------------

/// Grants PostgreSQL roles; see the module documentation.
pub struct PostgresAdapter {
    name: String,
    config: PostgresAdapterConfig,
    /// Built from the URL once; an error says why the URL is unusable.
    connect: Result<PgConnectOptions, String>,
    /// Created on first use, so building the adapter needs no runtime and no server.
    pool: OnceLock<PgPool>,
    /// [`role_prefix`] of this installation.
    prefix: String,
}

impl fmt::Debug for PostgresAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresAdapter")
            .field("name", &self.name)
            .field("url", &self.config.url)
            .field("mode", &self.config.mode)
            .field("roles", &self.config.roles)
            .finish_non_exhaustive()
    }
}

/// A role as listed from `pg_roles`.
#[derive(sqlx::FromRow)]
struct RoleRow {
    rolname: String,
    rolcanlogin: bool,
    valid_until: Option<String>,
    member_of: String,
    members: String,
}

impl PostgresAdapter {
    /// An adapter called `name` (the `[adapters.NAME]` key). Does not connect.
    pub fn new(name: &str, config: PostgresAdapterConfig) -> Self {
        let timeout_ms = config.timeout.as_secs().saturating_mul(1000).to_string();
        let connect = PgConnectOptions::from_str(config.url.expose())
            .map(|o| {
                o.application_name("jitgate")
                    .options([("statement_timeout", timeout_ms.as_str())])
                    .disable_statement_logging()
            })
            .map_err(|_| format!("adapters.{name}.url is not a usable PostgreSQL URL"));
        Self {
            name: name.to_string(),
            config,
            connect,
            pool: OnceLock::new(),
            prefix: role_prefix(None),
        }
    }

    /// Names roles with `installation` (`[server] installation_id`).
    pub fn with_installation(mut self, installation: Option<&str>) -> Self {
        self.prefix = role_prefix(installation);
        self
    }

    fn pool(&self) -> Result<&PgPool, AdapterError> {
        let options = self.connect.as_ref().map_err(|m| AdapterError::Permanent(m.clone()))?;
        Ok(self.pool.get_or_init(|| {
            PgPoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(self.config.connect_timeout.to_std())
                .idle_timeout(Some(Duration::from_secs(60)))
                .connect_lazy_with(options.clone())
        }))
    }

    /// Runs `work` within the configured time limit.
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, AdapterError>>,
    ) -> Result<T, AdapterError> {
        tokio::time::timeout(self.config.timeout.to_std(), work)
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(adapter = %self.name, target = %self.config.url.redacted(), "PostgreSQL call timed out");
                Err(AdapterError::Temporary(format!(
                    "PostgreSQL did not answer within {}",
                    self.config.timeout
                )))
            })
    }

    /// Replaces anything secret in `text`.
    fn scrub(&self, text: &str, extra: &[&str]) -> String {
        let mut out = text.to_string();
        for s in self
            .config
            .url
            .secrets()
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            if !s.is_empty() {
                out = out.replace(s, "***");
            }
        }
        out
    }

    /// Turns a database error met while `what` into an adapter error: connection trouble
    /// is temporary; refusals name what to fix. `secrets` are scrubbed from the message.
    fn fail(&self, what: &str, e: sqlx::Error, secrets: &[&str]) -> AdapterError {
        tracing::warn!(
            adapter = %self.name, target = %self.config.url.redacted(), step = what,
            error = %self.scrub(&e.to_string(), secrets), "PostgreSQL call failed"
        );
        match self.classify(what, &e) {
            AdapterError::Temporary(m) => AdapterError::Temporary(self.scrub(&m, secrets)),
            AdapterError::Permanent(m) => AdapterError::Permanent(self.scrub(&m, secrets)),
            AdapterError::NotApplied(m) => AdapterError::NotApplied(self.scrub(&m, secrets)),
        }
    }

    fn classify(&self, what: &str, e: &sqlx::Error) -> AdapterError {
        use AdapterError::{Permanent, Temporary};
        let url_key = format!("adapters.{}.url", self.name);
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let msg = db.message();
                match code.as_str() {
                    "42501" => Permanent(format!(
                        "PostgreSQL refused {what}: {msg}. The adapter's database role needs CREATEROLE, \
                         ADMIN OPTION on the mapped roles and pg_signal_backend (see the README)"
                    )),
                    "42704" => Permanent(format!(
                        "{what}: {msg}; create it in PostgreSQL or fix adapters.{}.roles/logins",
                        self.name
                    )),
                    c if c.starts_with("28") => Permanent(format!(
                        "cannot log in to PostgreSQL: {msg}; check the user and password in {url_key}(_env)"
                    )),
                    "3D000" => Permanent(format!("{msg}; fix the database name in {url_key}(_env)")),
                    c if c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c.starts_with("40")
                        || c == "55P03"
                        || c.starts_with("XX") =>
                    {
                        Temporary(format!("PostgreSQL failed {what}, will retry: {msg}"))
                    }
                    _ => Permanent(format!("PostgreSQL refused {what}: {msg} (SQLSTATE {code})")),
                }
            }
            sqlx::Error::PoolTimedOut => Temporary(format!(
                "cannot connect to PostgreSQL within {}",
                self.config.connect_timeout
            )),
            sqlx::Error::Io(io) => Temporary(format!("cannot talk to PostgreSQL: {}", io.kind())),
            sqlx::Error::Tls(_) => Permanent(format!(
                "TLS with PostgreSQL failed; check sslmode/sslrootcert in {url_key}(_env) (details in jitgate's log)"
            )),
            sqlx::Error::Configuration(_) => Permanent(format!("{url_key}(_env) is not usable")),
            other => Temporary(format!("PostgreSQL failed {what}: {other}")),
        }
    }

    fn mapped_role(&self, ctx: &GrantContext) -> Result<&str, AdapterError> {
        self.config.roles.get(&ctx.role).map(String::as_str).ok_or_else(|| {
            AdapterError::Permanent(format!(
                "jitgate role `{}` has no PostgreSQL role; add {} = \"…\" to adapters.{}.roles",
                ctx.role, ctx.role, self.name
            ))
        })
    }

    /// grant_role: the existing login of a Slack user.
    fn login_for(&self, user_id: &str) -> Result<String, AdapterError> {
        if let Some(login) = self.config.logins.get(user_id) {
            return Ok(login.clone());
        }
        if let Some(template) = &self.config.login_template {
            let login = template.replace("{user_id}", &sanitize(user_id));
            if login.len() > MAX_IDENT_BYTES {
                return Err(AdapterError::Permanent(format!(
                    "the login for {user_id} from adapters.{}.login_template is longer than 63 bytes; \
                     add {user_id} = \"…\" to adapters.{}.logins",
                    self.name, self.name
                )));
            }
            return Ok(login);
        }
        Err(AdapterError::Permanent(format!(
            "Slack user {user_id} has no database login; add {user_id} = \"their_login\" to adapters.{}.logins",
            self.name
        )))
    }

    /// The role of this grant: from the state `grant` returned when it is one of ours.
    fn role_of_grant(&self, ctx: &GrantContext) -> Result<String, AdapterError> {
        match self.state_role(ctx) {
            Some(s) => Ok(s.to_string()),
            None => role_name(&self.prefix, ctx.grant_id, &ctx.user_id),
        }
    }

    /// The role named in the grant's state when it is this grant's: named with this
    /// installation's prefix, or with the original one (a grant made before
    /// `installation_id` was set). The state comes from jitgate's own database.
    fn state_role<'c>(&self, ctx: &'c GrantContext) -> Option<&'c str> {
        let s = ctx.state.as_deref()?;
        let ours =
            grant_id_of(&self.prefix, s) == Some(ctx.grant_id) || grant_id_of(ROLE_PREFIX, s) == Some(ctx.grant_id);
        (ours && s.len() <= MAX_IDENT_BYTES).then_some(s)
    }

    /// Runs `sql` (one or more statements, no parameters); `what` and `secrets` as for
    /// [`Self::fail`].
    async fn run(&self, conn: &mut PgConnection, sql: &str, what: &str, secrets: &[&str]) -> Result<(), AdapterError> {
        conn.execute(sqlx::raw_sql(sql))
            .await
            .map(|_| ())
            .map_err(|e| self.fail(what, e, secrets))
    }

    async fn lock_grant(&self, conn: &mut PgConnection, grant_id: i64) -> Result<(), AdapterError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(grant_id as i32)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.fail("locking the grant", e, &[]))?;
        Ok(())
    }

    async fn existing_roles(&self, conn: &mut PgConnection, names: &[&str]) -> Result<Vec<String>, AdapterError> {
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname::text = ANY($1)")
            .bind(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.fail("looking up roles", e, &[]))
    }

    /// Makes `member` a direct member of `role` unless it already is.
    async fn ensure_member(&self, conn: &mut PgConnection, role: &str, member: &str) -> Result<(), AdapterError> {
        let is: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_auth_members m \
               JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
              WHERE r.rolname::text = $1 AND u.rolname::text = $2)",
        )
        .bind(role)
        .bind(member)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| self.fail("checking a membership", e, &[]))?;
        if !is {
            let sql = format!("GRANT {} TO {}", quote_ident(role), quote_ident(member));
            self.run(conn, &sql, &format!("granting {role} to {member}"), &[])
                .await?;
        }
        Ok(())
    }

    async fn grant_inner(&self, ctx: &GrantContext) -> Result<Granted, AdapterError> {
        let pg_role = self.mapped_role(ctx)?;
        let name = role_name(&self.prefix, ctx.grant_id, &ctx.user_id)?;
        let login = match self.config.mode {
            PostgresMode::GrantRole => Some(self.login_for(&ctx.user_id)?),
            PostgresMode::TemporaryLogin => None,
        };
        let pool = self.pool()?;
        let mut tx = pool.begin().await.map_err(|e| self.fail("connecting", e, &[]))?;
        self.lock_grant(&mut tx, ctx.grant_id).await?;
        let mut wanted = vec![name.as_str(), pg_role];
        wanted.extend(login.as_deref());
        let existing = self.existing_roles(&mut tx, &wanted).await?;
        let role_exists = existing.iter().any(|e| e == &name);
        if !existing.iter().any(|e| e == pg_role) {
            return Err(AdapterError::Permanent(format!(
                "PostgreSQL role `{pg_role}` (adapters.{}.roles.{}) does not exist; create it or fix the mapping",
                self.name, ctx.role
            )));
        }
        if let Some(login) = &login {
            if !existing.iter().any(|e| e == login) {
                return Err(AdapterError::Permanent(format!(
                    "database login `{login}` for Slack user {} does not exist; create it \
                     (CREATE ROLE … LOGIN) or fix adapters.{}.logins",
                    ctx.user_id, self.name
                )));
            }
        }
        let ident = quote_ident(&name);
        let mut note = None;
        match self.config.mode {
            PostgresMode::TemporaryLogin => {
                let password = generate_password();
                let verifier = new_verifier(&password);
                let valid_until = ctx.expires_at + self.config.valid_until_grace.to_chrono();
                let attributes = format!(
                    "LOGIN INHERIT PASSWORD {} VALID UNTIL {} CONNECTION LIMIT {}",
                    quote_literal(&verifier),
                    quote_literal(&valid_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    self.config.connection_limit.unwrap_or(-1)
                );
                // Granting again (a retry after a crash) keeps the login and gives it a fresh
                // password: the old one was never delivered, or is replaced by this note.
                let (verb, what) = if role_exists {
                    ("ALTER", format!("updating login {name}"))
                } else {
                    ("CREATE", format!("creating login {name}"))
                };
                let sql = format!("{verb} ROLE {ident} WITH {attributes}");
                self.run(&mut tx, &sql, &what, &[&password, &verifier]).await?;
                self.ensure_member(&mut tx, pg_role, &name).await?;
                note = Some(self.credentials_note(ctx, &name, &password, valid_until));
            }
            PostgresMode::GrantRole => {
                if !role_exists {
                    let sql = format!("CREATE ROLE {ident} WITH NOLOGIN INHERIT");
                    self.run(&mut tx, &sql, &format!("creating role {name}"), &[]).await?;
                }
                self.ensure_member(&mut tx, pg_role, &name).await?;
                self.ensure_member(&mut tx, &name, login.as_deref().unwrap_or_default())
                    .await?;
            }
        }
        let comment = format!(
            "jitgate grant {} ({}) for Slack user {}: {} via adapter {}; dropped when the grant ends",
            ctx.grant_id,
            crate::ids::label(ctx.request_id),
            sanitize(&ctx.user_id).to_uppercase(),
            pg_role,
            self.name
        );
        let sql = format!("COMMENT ON ROLE {ident} IS {}", quote_literal(&comment));
        self.run(&mut tx, &sql, "commenting the role", &[]).await?;
        tx.commit()
            .await
            .map_err(|e| self.fail("committing the grant", e, &[]))?;
        tracing::info!(adapter = %self.name, grant = ctx.grant_id, role = %name, mode = self.config.mode.as_str(), "granted");
        Ok(Granted {
            state: Some(name),
            private_note: note,
        })
    }

    /// temporary_login: moves `VALID UNTIL` to the new end (plus the grace). grant_role
    /// roles carry no expiry of their own, so there is nothing to move.
    async fn extend_inner(&self, ctx: &GrantContext) -> Result<(), AdapterError> {
        if !matches!(self.config.mode, PostgresMode::TemporaryLogin) {
            return Ok(());
        }
        let name = self.role_of_grant(ctx)?;
        let pool = self.pool()?;
        let mut tx = pool.begin().await.map_err(|e| self.fail("connecting", e, &[]))?;
        self.lock_grant(&mut tx, ctx.grant_id).await?;
        if self.existing_roles(&mut tx, &[name.as_str()]).await?.is_empty() {
            return Err(AdapterError::Permanent(format!(
                "login {name} no longer exists, so it cannot be extended"
            )));
        }
        let valid_until = ctx.expires_at + self.config.valid_until_grace.to_chrono();
        let sql = format!(
            "ALTER ROLE {} VALID UNTIL {}",
            quote_ident(&name),
            quote_literal(&valid_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        );
        self.run(&mut tx, &sql, &format!("extending login {name}"), &[]).await?;
        tx.commit()
            .await
            .map_err(|e| self.fail("committing the extension", e, &[]))?;
        tracing::info!(adapter = %self.name, grant = ctx.grant_id, role = %name, "extended");
        Ok(())
    }

    fn credentials_note(
        &self,
        ctx: &GrantContext,
        login: &str,
        password: &str,
        valid_until: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let connect = match (&self.config.connect_hint, &self.connect) {
            (Some(hint), _) => crate::text::escape(hint),
            (None, Ok(o)) => format!(
                "`{}:{}/{}`",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or(o.get_username())
            ),
            (None, Err(_)) => "(ask the owner of the database)".into(),
        };
        format!(
            ":key: Your PostgreSQL login for `{}:{}` ({}):\n• user: `{login}`\n• password: `{password}`\n\
             • connect: {connect}\nThe login is deleted when your access ends and stops working at {} \
             at the latest. Keep this message to yourself.",
            ctx.resource,
            ctx.role,
            crate::ids::label(ctx.request_id),
            crate::text::slack_date(valid_until.timestamp_millis())
        )
    }

    async fn revoke_inner(&self, ctx: &GrantContext) -> Result<(), AdapterError> {
        let pool = self.pool()?;
        // By grant id alone: the state may be missing (a grant that failed half-way) and
        // the user's mapping may have changed since.
        let prefix = format!("{}{}_", self.prefix, ctx.grant_id);
        let mut names: Vec<String> =
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1)")
                .bind(&prefix)
                .fetch_all(pool)
                .await
                .map_err(|e| self.fail("looking up the grant's roles", e, &[]))?;
        names.retain(|n| grant_id_of(&self.prefix, n) == Some(ctx.grant_id));
        // A grant made before `installation_id` was set has its role under the original
        // name, recorded in its state.
        if let Some(role) = self.state_role(ctx) {
            if !names.iter().any(|n| n == role) {
                let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname::text = $1")
                    .bind(role)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| self.fail("looking up the grant's roles", e, &[]))?;
                if exists.is_some() {
                    names.push(role.to_string());
                }
            }
        }
        for name in names {
            self.drop_role(pool, ctx.grant_id, &name).await?;
            tracing::info!(adapter = %self.name, grant = ctx.grant_id, role = %name, "revoked");
        }
        Ok(())
    }

    /// Disables `name`, ends its sessions, moves what it owns to the adapter's role and
    /// drops it. Each step is idempotent, so a retry picks up where a failure stopped.
    async fn drop_role(&self, pool: &PgPool, grant_id: i64, name: &str) -> Result<(), AdapterError> {
        let ident = quote_ident(name);
        // 1. No new sessions.
        let mut tx = pool.begin().await.map_err(|e| self.fail("connecting", e, &[]))?;
        self.lock_grant(&mut tx, grant_id).await?;
        let can_login: Option<bool> = sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname::text = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.fail("looking up the role", e, &[]))?;
        match can_login {
            None => return Ok(()),
            Some(true) => {
                let sql = format!("ALTER ROLE {ident} WITH NOLOGIN");
                self.run(&mut tx, &sql, &format!("disabling login {name}"), &[]).await?;
            }
            Some(false) => {}
        }
        tx.commit().await.map_err(|e| self.fail("committing", e, &[]))?;

        // 2. End the sessions it has, waiting for each to exit.
        let what = format!("ending the sessions of {name}");
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, $2) FROM pg_stat_activity \
              WHERE usename::text = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .bind(TERMINATE_WAIT_MS)
        .fetch_all(pool)
        .await
        .map_err(|e| self.fail(&what, e, &[]))?;
        if ended.iter().any(|ok| !ok) {
            return Err(AdapterError::Temporary(format!(
                "login {name} is disabled, but some of its sessions did not end within {}s; will retry",
                TERMINATE_WAIT_MS / 1000
            )));
        }

        // 3. Hand over what it owns, then drop it.
        let mut tx = pool.begin().await.map_err(|e| self.fail("connecting", e, &[]))?;
        self.lock_grant(&mut tx, grant_id).await?;
        let elsewhere: Vec<(String, bool)> = sqlx::query_as(
            "SELECT DISTINCT COALESCE(d.datname::text, ''), \
                    (s.dbid = 0 OR d.datname = current_database()) AS here \
               FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid \
              WHERE s.refclassid = 'pg_authid'::regclass \
                AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname::text = $1)",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| self.fail("looking up what the role owns", e, &[]))?;
        let other_dbs: Vec<&str> = elsewhere
            .iter()
            .filter(|(_, here)| !here)
            .map(|(db, _)| db.as_str())
            .collect();
        if !other_dbs.is_empty() {
            return Err(AdapterError::Permanent(format!(
                "role {name} can no longer log in and has no sessions, but it owns objects or holds privileges \
                 in database(s) {}; run REASSIGN OWNED BY {ident} TO <owner>; DROP OWNED BY {ident}; there",
                other_dbs.join(", ")
            )));
        }
        if !elsewhere.is_empty() {
            // REASSIGN and DROP OWNED need the privileges of the role; a non-superuser
            // adapter role gets them by joining it (it created it, so it may).
            let sql = format!(
                "GRANT {ident} TO CURRENT_USER; REASSIGN OWNED BY {ident} TO CURRENT_USER; DROP OWNED BY {ident}"
            );
            self.run(&mut tx, &sql, &format!("reassigning what {name} owns"), &[])
                .await?;
        }
        let sql = format!("DROP ROLE IF EXISTS {ident}");
        self.run(&mut tx, &sql, &format!("dropping role {name}"), &[]).await?;
        tx.commit()
            .await
            .map_err(|e| self.fail("committing the revoke", e, &[]))?;
        Ok(())
    }

    async fn is_active_inner(&self, ctx: &GrantContext) -> Result<bool, AdapterError> {
        let pg_role = self.mapped_role(ctx)?;
        let name = self.role_of_grant(ctx)?;
        let pool = self.pool()?;
        let member_of = "EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                          WHERE m.member = r.oid AND g.rolname::text = $2)";
        let active: Option<bool> = match self.config.mode {
            PostgresMode::TemporaryLogin => sqlx::query_scalar(&format!(
                "SELECT r.rolcanlogin AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now()) AND {member_of} \
                   FROM pg_roles r WHERE r.rolname::text = $1"
            ))
            .bind(&name)
            .bind(pg_role)
            .fetch_optional(pool)
            .await
            .map_err(|e| self.fail("checking the login", e, &[]))?,
            PostgresMode::GrantRole => {
                let login = self.login_for(&ctx.user_id)?;
                sqlx::query_scalar(&format!(
                    "SELECT {member_of} \
                        AND EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles l ON l.oid = m.member \
                                     WHERE m.roleid = r.oid AND l.rolname::text = $3) \
                        AND pg_has_role($3::text::name, $2::text::name, 'MEMBER') \
                       FROM pg_roles r WHERE r.rolname::text = $1 \
                        AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname::text = $3)"
                ))
                .bind(&name)
                .bind(pg_role)
                .bind(&login)
                .fetch_optional(pool)
                .await
                .map_err(|e| self.fail("checking the membership", e, &[]))?
            }
        };
        Ok(active.unwrap_or(false))
    }

    async fn list_inner(&self) -> Result<Vec<ListedAccess>, AdapterError> {
        let pool = self.pool()?;
        let rows: Vec<RoleRow> = sqlx::query_as(
            "SELECT r.rolname::text AS rolname, r.rolcanlogin, \
                    to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"') AS valid_until, \
                    COALESCE((SELECT string_agg(g.rolname::text, ', ' ORDER BY g.rolname) FROM pg_auth_members m \
                               JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), '') AS member_of, \
                    COALESCE((SELECT string_agg(l.rolname::text, ', ' ORDER BY l.rolname) FROM pg_auth_members m \
                               JOIN pg_roles l ON l.oid = m.member WHERE m.roleid = r.oid), '') AS members \
               FROM pg_roles r WHERE starts_with(r.rolname::text, $1) ORDER BY r.rolname",
        )
        .bind(&self.prefix)
        .fetch_all(pool)
        .await
        .map_err(|e| self.fail("listing roles", e, &[]))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let grant_id = grant_id_of(&self.prefix, &r.rolname)?;
                let of = if r.member_of.is_empty() {
                    "no role".to_string()
                } else {
                    r.member_of
                };
                let description = if r.rolcanlogin {
                    format!(
                        "login {} in {of}, valid until {}",
                        r.rolname,
                        r.valid_until.as_deref().unwrap_or("forever")
                    )
                } else if r.members.is_empty() {
                    format!("role {} in {of}, held by nobody", r.rolname)
                } else {
                    format!("role {} in {of}, held by {}", r.rolname, r.members)
                };
                Some(ListedAccess {
                    grant_id: Some(grant_id),
                    description,
                })
            })
            .collect())
    }
}

impl Adapter for PostgresAdapter {
    fn grant<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>> {
        Box::pin(self.bounded(self.grant_inner(ctx)))
    }

    fn revoke<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(self.bounded(self.revoke_inner(ctx)))
    }

    fn is_active<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Option<bool>, AdapterError>> {
        Box::pin(async move { self.bounded(self.is_active_inner(ctx)).await.map(Some) })
    }

    fn extend<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(self.bounded(self.extend_inner(ctx)))
    }

    /// Each grant has a role of its own (`jit_<grant>_…`), so overlapping grants never
    /// share access and each is revoked when it ends.
    fn shares_access(&self) -> bool {
        false
    }

    /// Every role of this installation's naming (`jit_<grant>_…`, or
    /// `jit_<installation>_<grant>_…`) in the cluster, whichever of its adapters made it.
    fn list_granted(&self) -> BoxFuture<'_, Result<Option<Vec<ListedAccess>>, AdapterError>> {
        Box::pin(async move { self.bounded(self.list_inner()).await.map(Some) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::conformance;
    use crate::config::postgres::parse_config_with_env;
    use proptest::prelude::*;
    use sqlx::{Connection, Executor, PgConnection};
    use std::collections::BTreeMap;

    const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    // ---- pure helpers ------------------------------------------------------------------

    #[test]
    fn quote_ident_wraps_in_double_quotes_and_doubles_inner_ones() {
        assert_eq!(quote_ident("app_read"), "\"app_read\"");
        assert_eq!(quote_ident("App Read"), "\"App Read\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("\"; DROP ROLE x; --"), "\"\"\"; DROP ROLE x; --\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn quote_literal_doubles_quotes_and_uses_e_form_for_backslashes() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_literal("\\'; x"), "E'\\\\''; x'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn sanitize_keeps_lowercase_letters_digits_and_underscores() {
        assert_eq!(sanitize("U0123ABC"), "u0123abc");
        assert_eq!(sanitize("a-b.c d\"é"), "a_b_c_d__");
        assert_eq!(sanitize(""), "");
    }

    #[test]
    fn role_names_carry_the_grant_id_and_fit_postgres() {
        assert_eq!(role_name("jit_", 42, "U0123ABC").unwrap(), "jit_42_u0123abc");
        assert_eq!(role_name("jit_", 7, "").unwrap(), "jit_7_user");
        let long = role_name("jit_", i64::MAX, &"W".repeat(100)).unwrap();
        assert_eq!(long.len(), 63);
        assert_eq!(grant_id_of("jit_", &long), Some(i64::MAX));
        assert!(role_name("jit_", -1, "U1").is_err());
        assert_eq!(grant_id_of("jit_", "jit_42_u1"), Some(42));
        assert_eq!(grant_id_of("jit_", "jit_42"), None);
        assert_eq!(grant_id_of("jit_", "jit__u1"), None);
        assert_eq!(grant_id_of("jit_", "jit_x1_u1"), None);
        assert_eq!(grant_id_of("jit_", "app_read"), None);
    }

    #[test]
    fn installations_never_read_each_others_roles() {
        let (plain, blue, blue2) = (role_prefix(None), role_prefix(Some("blue")), role_prefix(Some("blue2")));
        assert_eq!(blue, "jit_blue_");
        let role = role_name(&blue, 42, "U1").unwrap();
        assert_eq!(role, "jit_blue_42_u1");
        assert_eq!(grant_id_of(&blue, &role), Some(42));
        assert_eq!(
            grant_id_of(&plain, &role),
            None,
            "an installation without an id ignores it"
        );
        assert_eq!(grant_id_of(&blue2, &role), None);
        assert_eq!(grant_id_of(&blue, "jit_42_u1"), None);
        assert_eq!(grant_id_of(&blue, &role_name(&blue2, 42, "U1").unwrap()), None);
    }

    proptest! {
        #[test]
        fn any_grant_and_user_give_a_short_safe_parsable_role_name(
            id in 0..i64::MAX,
            user in ".{0,80}",
            installation in proptest::option::of("[a-z][a-z0-9]{0,15}"),
        ) {
            let prefix = role_prefix(installation.as_deref());
            let name = role_name(&prefix, id, &user).unwrap();
            prop_assert!(name.len() <= 63);
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            prop_assert_eq!(grant_id_of(&prefix, &name), Some(id));
        }

        #[test]
        fn quoting_round_trips(text in ".{0,40}") {
            let ident = quote_ident(&text);
            let inner = &ident[1..ident.len() - 1];
            prop_assert_eq!(inner.replace("\"\"", "\""), text.clone());
            prop_assert!(!inner.replace("\"\"", "").contains('"'));
            let lit = quote_literal(&text);
            let (body, backslashes) = match lit.strip_prefix('E') {
                Some(rest) => (&rest[1..rest.len() - 1], true),
                None => (&lit[1..lit.len() - 1], false),
            };
            prop_assert!(!body.replace("''", "").contains('\''));
            let mut back = body.replace("''", "'");
            if backslashes {
                back = back.replace("\\\\", "\\");
            }
            prop_assert_eq!(back, text);
        }
    }

    #[test]
    fn scram_verifier_matches_the_rfc_7677_example() {
        // RFC 7677 section 3: user "user", password "pencil", this salt, 4096 iterations.
        // Its ServerSignature is HMAC(ServerKey, AuthMessage); recompute it from our key.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let verifier = scram_sha256_verifier("pencil", &salt, 4096);
        let server_key_b64 = verifier.rsplit(':').next().unwrap();
        let server_key = base64::engine::general_purpose::STANDARD
            .decode(server_key_b64)
            .unwrap();
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac_sha256(&server_key, auth_message.as_bytes());
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    }

    #[test]
    fn generated_passwords_are_long_random_alphanumerics() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    // ---- configuration -----------------------------------------------------------------

    fn parse_table(text: &str, env: &[(&str, &str)]) -> Result<PostgresAdapterConfig, Vec<String>> {
        let value: toml::Value = toml::from_str(text).unwrap();
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_config_with_env("adapters.pg", value, &|k| env.get(k).cloned())
    }

    fn problems(text: &str) -> Vec<String> {
        parse_table(text, &[]).unwrap_err()
    }

    const GRANT_ROLE: &str = r#"
url = "postgres://jitgate@db.example.com:5432/app"
mode = "grant_role"
roles = { read = "app_read", write = "App Write" }
logins = { U0123ABCD = "alice" }
login_template = "slack_{user_id}"
"#;

    #[test]
    fn a_grant_role_table_loads_with_defaults() {
        let c = parse_table(GRANT_ROLE, &[]).unwrap();
        assert_eq!(c.mode, PostgresMode::GrantRole);
        assert_eq!(c.roles["write"], "App Write");
        assert_eq!(c.logins["U0123ABCD"], "alice");
        assert_eq!(c.connect_timeout.as_secs(), 10);
        assert_eq!(c.timeout.as_secs(), 30);
    }

    #[test]
    fn url_env_reads_the_url_from_the_environment() {
        let text = GRANT_ROLE.replace(
            "url = \"postgres://jitgate@db.example.com:5432/app\"",
            "url_env = \"PG_URL_FOR_TEST\"",
        );
        let c = parse_table(&text, &[("PG_URL_FOR_TEST", "postgres://j:hunter22@db/app")]).unwrap();
        assert_eq!(c.url.expose(), "postgres://j:hunter22@db/app");
        let p = parse_table(&text, &[]).unwrap_err();
        assert!(
            p[0].contains("environment variable PG_URL_FOR_TEST is not set"),
            "{p:?}"
        );
    }

    #[test]
    fn a_missing_url_is_refused_with_both_ways_to_give_it() {
        let p = problems(&GRANT_ROLE.replace("url = \"postgres://jitgate@db.example.com:5432/app\"", ""));
        assert!(p[0].starts_with("adapters.pg.url: missing"), "{p:?}");
        assert!(p[0].contains("url_env"), "{p:?}");
    }

    #[test]
    fn url_and_url_env_together_are_refused() {
        let p = problems(&format!("url_env = \"X\"\n{GRANT_ROLE}"));
        assert!(p[0].contains("both url and url_env are set"), "{p:?}");
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        for url in [
            "mysql://root:sekrit-pw@db/app",
            "not a url sekrit-pw",
            "postgres://u:sekrit-pw@db/app?passwd=sekrit-pw",
        ] {
            let p = problems(&GRANT_ROLE.replace("postgres://jitgate@db.example.com:5432/app", url));
            assert!(p[0].starts_with("adapters.pg.url: "), "{p:?}");
            assert!(!p.join(" ").contains("sekrit-pw"), "{p:?}");
        }
    }

    #[test]
    fn an_unknown_mode_is_refused_with_the_choices() {
        let p = problems(&GRANT_ROLE.replace("grant_role", "superuser"));
        assert!(p[0].contains("unknown mode `superuser`"), "{p:?}");
        assert!(
            p[0].contains("\"grant_role\"") && p[0].contains("\"temporary_login\""),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let p = problems(&format!("{GRANT_ROLE}\npassword = \"x\""));
        assert!(
            p[0].starts_with("adapters.pg.password: unknown key; the keys here are `url`, `url_env`"),
            "{p:?}"
        );
    }

    #[test]
    fn bad_names_and_mode_mismatches_are_all_reported() {
        let text = r#"
url = "postgres://jitgate@db/app"
mode = "temporary_login"
roles = { read = "jit_sneaky", Write = "app_write", x = "" }
logins = { alice = "alice" }
connection_limit = 0
"#;
        let p = problems(text);
        let all = p.join("\n");
        assert!(all.contains("roles.read: `jit_sneaky` starts with jit_"), "{all}");
        assert!(all.contains("`Write` is not a jitgate role name"), "{all}");
        assert!(all.contains("roles.x: empty role name"), "{all}");
        assert!(all.contains("`alice` is not a Slack user ID"), "{all}");
        assert!(all.contains("connection_limit: must be between 1 and 10000"), "{all}");
        assert!(
            all.contains("adapters.pg.logins: only used with mode = \"grant_role\""),
            "{all}"
        );
    }

    #[test]
    fn grant_role_needs_a_way_to_find_logins() {
        let p = problems("url = \"postgres://jitgate@db/app\"\nmode = \"grant_role\"\nroles = { read = \"app_read\" }");
        assert!(p[0].contains("add logins = { U0123ABCD = \"alice\" }"), "{p:?}");
    }

    #[test]
    fn a_login_template_needs_exactly_one_user_id() {
        let p = problems(&GRANT_ROLE.replace("slack_{user_id}", "slack_{user}"));
        assert!(
            p[0].contains("login_template: must contain {user_id} exactly once"),
            "{p:?}"
        );
    }

    const FILE: &str = r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "pg"

[adapters.pg]
type = "postgres"
url = "postgres://jitgate:hunter22secret@db.example.com/app"
mode = "temporary_login"
roles = { read = "app_read", write = "app_write" }
"#;

    #[test]
    fn the_adapter_is_registered_and_its_password_never_shows_in_debug() {
        let config = crate::config::parse(std::path::Path::new("t.toml"), FILE).unwrap();
        let crate::config::AdapterConfig::Postgres(pg) = &config.adapters["pg"] else {
            panic!("not a postgres adapter");
        };
        assert_eq!(config.adapters["pg"].type_name(), "postgres");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter22secret"), "{debug}");
        assert!(debug.contains("postgres://jitgate@db.example.com/app"), "{debug}");
        let adapter = PostgresAdapter::new("pg", pg.clone());
        let debug = format!("{adapter:?}");
        assert!(!debug.contains("hunter22secret"), "{debug}");
        assert!(crate::adapters::Adapters::from_config(&config)
            .unwrap()
            .get("pg")
            .is_some());
    }

    #[test]
    fn every_role_of_a_resource_needs_a_mapping() {
        let text = FILE.replace(", write = \"app_write\"", "");
        let p = crate::config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap_err()
            .problems;
        assert!(
            p.iter().any(|m| m.contains(
                "resources[0] (prod-db).roles: `write` has no PostgreSQL role; add write = \"…\" to adapters.pg.roles"
            )),
            "{p:?}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_temporary_error_without_the_password() {
        let text = r#"
url = "postgres://jitgate:hunter22secret@127.0.0.1:1/app"
mode = "temporary_login"
roles = { read = "app_read" }
connect_timeout = "1s"
"#;
        let adapter = PostgresAdapter::new("pg", parse_table(text, &[]).unwrap());
        let ctx = context(1, "U1", "read");
        let err = adapter.grant(&ctx).await.unwrap_err();
        assert!(matches!(err, AdapterError::Temporary(_)), "{err:?}");
        assert!(
            err.to_string().contains("cannot connect to PostgreSQL within 1s"),
            "{err}"
        );
        for e in [err, adapter.revoke(&ctx).await.unwrap_err()] {
            assert!(!format!("{e:?}").contains("hunter22secret"));
            assert!(!e.to_string().contains("127.0.0.1:1"), "{e}");
        }
    }

    #[test]
    fn unknown_users_are_told_to_add_a_mapping() {
        let mut c = parse_table(GRANT_ROLE, &[]).unwrap();
        c.login_template = None;
        let adapter = PostgresAdapter::new("pg", c);
        let err = adapter.login_for("U0NOBODY").unwrap_err();
        assert!(matches!(err, AdapterError::Permanent(_)));
        assert!(
            err.to_string()
                .contains("add U0NOBODY = \"their_login\" to adapters.pg.logins"),
            "{err}"
        );
    }

    // ---- against a real PostgreSQL -----------------------------------------------------

    /// A superuser connection to the test server, or `None` (with a message) when it cannot
    /// be reached and `JITGATE_REQUIRE_POSTGRES=1` is not set.
    async fn test_server() -> Option<String> {
        let url = std::env::var("JITGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_URL.to_string());
        let shown = DatabaseUrl(url.clone()).redacted();
        let attempt = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
        let why = match attempt {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Some(url);
            }
            Ok(Err(e)) => DatabaseUrl(url.clone())
                .secrets()
                .iter()
                .fold(e.to_string(), |m, s| m.replace(s, "***")),
            Err(_) => "no answer within 5s".to_string(),
        };
        if std::env::var("JITGATE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("PostgreSQL not reachable at {shown} ({why}) and JITGATE_REQUIRE_POSTGRES=1");
        }
        eprintln!(
            "skipping: PostgreSQL not reachable at {shown} ({why}); set JITGATE_TEST_POSTGRES_URL, \
             or JITGATE_REQUIRE_POSTGRES=1 to fail instead"
        );
        None
    }

    /// Names and objects of one test, all starting with `jt_<random>_`.
    struct Fixture {
        url: String,
        admin: PgConnection,
        prefix: String,
        grant_base: i64,
    }

    impl Fixture {
        async fn new(url: String) -> Self {
            let admin = PgConnection::connect(&url).await.unwrap();
            let tag: u32 = rand::random();
            Self {
                url,
                admin,
                prefix: format!("jt_{tag:08x}_"),
                // Far above any real grant id, different per test.
                grant_base: 1_000_000_000 + (tag as i64) * 16,
            }
        }

        fn name(&self, what: &str) -> String {
            format!("{}{what}", self.prefix)
        }

        /// An installation id unique to this test (`t<tag>`), plus `suffix`.
        fn installation(&self, suffix: &str) -> String {
            format!("t{}{suffix}", &self.prefix[3..11])
        }

        async fn exec(&mut self, sql: &str) {
            self.admin.execute(sqlx::raw_sql(sql)).await.unwrap();
        }

        /// A NOLOGIN role `<prefix>read` that may read table `<prefix>t` (one row, 42).
        async fn readable_table(&mut self) -> (String, String) {
            let (role, table) = (self.name("read"), self.name("t"));
            let sql = format!(
                "CREATE ROLE {r} NOLOGIN; CREATE TABLE {t} (v int); INSERT INTO {t} VALUES (42); \
                 GRANT SELECT ON {t} TO {r};",
                r = quote_ident(&role),
                t = quote_ident(&table)
            );
            self.exec(&sql).await;
            (role, table)
        }

        fn adapter(&self, mode: &str, extra: &str) -> PostgresAdapter {
            let text = format!(
                "url = {}\nmode = \"{mode}\"\nroles = {{ read = \"{}\" }}\n{extra}",
                toml::Value::String(self.url.clone()),
                self.name("read")
            );
            PostgresAdapter::new("pg", parse_table(&text, &[]).unwrap())
        }

        async fn connect_as(&self, user: &str, password: Option<&str>) -> Result<PgConnection, sqlx::Error> {
            let mut options = PgConnectOptions::from_str(&self.url).unwrap().username(user);
            if let Some(p) = password {
                options = options.password(p);
            }
            options.connect().await
        }

        /// Drops everything this test made, jit roles of its grants included.
        async fn clean_up(mut self) {
            let objects: Vec<(String, String)> = sqlx::query_as(
                "SELECT 'TABLE', quote_ident(tablename) FROM pg_tables WHERE starts_with(tablename::text, $1) \
                 UNION ALL SELECT 'SCHEMA', quote_ident(nspname) FROM pg_namespace WHERE starts_with(nspname::text, $1)",
            )
            .bind(&self.prefix)
            .fetch_all(&mut self.admin)
            .await
            .unwrap();
            for (kind, name) in objects {
                self.exec(&format!("DROP {kind} IF EXISTS {name} CASCADE")).await;
            }
            let roles: Vec<String> = sqlx::query_scalar(
                "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1) \
                 OR starts_with(rolname::text, $3) \
                 OR (starts_with(rolname::text, 'jit_') AND CASE WHEN split_part(rolname::text, '_', 2) ~ '^[0-9]{1,18}$' \
                     THEN split_part(rolname::text, '_', 2)::bigint END BETWEEN $2 AND $2 + 15)",
            )
            .bind(&self.prefix)
            .bind(self.grant_base)
            .bind(format!("{ROLE_PREFIX}{}", self.installation("")))
            .fetch_all(&mut self.admin)
            .await
            .unwrap();
            for role in roles {
                let r = quote_ident(&role);
                self.exec(&format!("DROP OWNED BY {r}; DROP ROLE IF EXISTS {r}")).await;
            }
        }
    }

    fn context(grant_id: i64, user_id: &str, role: &str) -> GrantContext {
        GrantContext {
            grant_id,
            request_id: 9,
            user_id: user_id.into(),
            resource: "prod-db".into(),
            role: role.into(),
            duration_secs: 3600,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
            reason: "'; DROP TABLE users; --".into(),
            state: None,
        }
    }

    /// Runs `test` against the test server with a fresh fixture, cleaning up even when it
    /// panics.
    async fn with_server<F, Fut>(test: F)
    where
        F: FnOnce(Fixture) -> Fut,
        Fut: std::future::Future<Output = Fixture> + Send + 'static,
    {
        let Some(url) = test_server().await else {
            return;
        };
        let fixture = Fixture::new(url.clone()).await;
        let (prefix, grant_base) = (fixture.prefix.clone(), fixture.grant_base);
        let outcome = tokio::spawn(test(fixture)).await;
        let mut cleaner = Fixture::new(url).await;
        cleaner.prefix = prefix;
        cleaner.grant_base = grant_base;
        cleaner.clean_up().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// Which of `names` exist as roles.
    async fn existing_of(admin: &mut PgConnection, names: &[&String]) -> Vec<String> {
        let mut left = Vec::new();
        for n in names {
            let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname::text = $1")
                .bind(n.as_str())
                .fetch_optional(&mut *admin)
                .await
                .unwrap();
            if found.is_some() {
                left.push(n.to_string());
            }
        }
        left
    }

    async fn select(conn: &mut PgConnection, table: &str) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar(&format!("SELECT v FROM {}", quote_ident(table)))
            .fetch_one(conn)
            .await
    }

    fn note_field<'a>(note: &'a str, field: &str) -> &'a str {
        let line = note
            .lines()
            .find(|l| l.starts_with(&format!("• {field}: `")))
            .unwrap_or_else(|| panic!("no {field} in the note"));
        line.split('`').nth(1).unwrap()
    }

    /// Whether `password` matches the SCRAM verifier the server stores for `role`.
    async fn password_matches(admin: &mut PgConnection, role: &str, password: &str) -> bool {
        let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname::text = $1")
            .bind(role)
            .fetch_one(admin)
            .await
            .unwrap();
        let (head, _) = stored.rsplit_once('$').unwrap();
        let (iterations, salt) = head.trim_start_matches("SCRAM-SHA-256$").split_once(':').unwrap();
        let salt = base64::engine::general_purpose::STANDARD.decode(salt).unwrap();
        scram_sha256_verifier(password, &salt, iterations.parse().unwrap()) == stored
    }

    #[tokio::test]
    async fn scram_verifiers_match_what_postgres_computes_itself() {
        with_server(|mut f| async move {
            let role = f.name("scram");
            f.exec(&format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE {} PASSWORD 'correct-Horse-9'",
                quote_ident(&role)
            ))
            .await;
            assert!(password_matches(&mut f.admin, &role, "correct-Horse-9").await);
            assert!(!password_matches(&mut f.admin, &role, "correct-Horse-8").await);
            f
        })
        .await;
    }

    #[tokio::test]
    async fn quoting_survives_a_round_trip_through_postgres() {
        with_server(|mut f| async move {
            for text in [
                "plain",
                "it's",
                "a\"b",
                "back\\slash",
                "\\'\"",
                "ünïcödé ✓",
                "; DROP ROLE postgres; --",
            ] {
                let sql = format!("SELECT {} AS {}", quote_literal(text), quote_ident(text));
                let row = sqlx::query(&sql).fetch_one(&mut f.admin).await.unwrap();
                use sqlx::{Column, Row};
                assert_eq!(row.columns()[0].name(), text);
                assert_eq!(row.get::<String, _>(0), text);
            }
            f
        })
        .await;
    }

    #[tokio::test]
    async fn temporary_login_passes_the_conformance_checks() {
        with_server(|mut f| async move {
            f.readable_table().await;
            let adapter = f.adapter("temporary_login", "connection_limit = 3");
            let ctx = context(f.grant_base, "U0CONFORM", "read");
            conformance::check(&adapter, &ctx, true).await.unwrap();
            f
        })
        .await;
    }

    /// Issue #11: two installations sharing one cluster (each with its own
    /// `installation_id`) never list or revoke each other's roles, even for the same grant
    /// id; a grant made before the id was set is still revoked through its state.
    #[tokio::test]
    async fn installations_sharing_a_cluster_never_touch_each_others_roles() {
        with_server(|mut f| async move {
            f.readable_table().await;
            let (a_id, b_id) = (f.installation("a"), f.installation("b"));
            let a = f.adapter("temporary_login", "").with_installation(Some(&a_id));
            let b = f.adapter("temporary_login", "").with_installation(Some(&b_id));
            let plain = f.adapter("temporary_login", "");
            let id = f.grant_base + 12;
            let ctx = context(id, "U0SHARED", "read");
            let from_a = a.grant(&ctx).await.unwrap().state.unwrap();
            let from_b = b.grant(&ctx).await.unwrap().state.unwrap();
            assert_eq!(from_a, format!("jit_{a_id}_{id}_u0shared"));
            assert_eq!(from_b, format!("jit_{b_id}_{id}_u0shared"));
            let listed = |l: Vec<ListedAccess>| l.into_iter().map(|x| x.description).collect::<Vec<_>>().join("\n");
            let a_lists = listed(a.list_granted().await.unwrap().unwrap());
            assert!(a_lists.contains(&from_a) && !a_lists.contains(&from_b), "{a_lists}");
            let plain_lists = listed(plain.list_granted().await.unwrap().unwrap());
            assert!(
                !plain_lists.contains(&from_a) && !plain_lists.contains(&from_b),
                "{plain_lists}"
            );

            b.revoke(&ctx).await.unwrap();
            assert_eq!(
                existing_of(&mut f.admin, &[&from_a, &from_b]).await,
                vec![from_a.clone()],
                "only b's role went"
            );
            a.revoke(&ctx).await.unwrap();
            assert!(existing_of(&mut f.admin, &[&from_a, &from_b]).await.is_empty());

            // Granted before `installation_id` was set: revoked through the grant's state.
            let old_id = f.grant_base + 13;
            let mut old = context(old_id, "U0OLD", "read");
            old.state = plain.grant(&old).await.unwrap().state;
            let legacy = old.state.clone().unwrap();
            assert_eq!(legacy, format!("jit_{old_id}_u0old"));
            assert!(!listed(a.list_granted().await.unwrap().unwrap()).contains(&legacy));
            a.revoke(&old).await.unwrap();
            assert!(
                existing_of(&mut f.admin, &[&legacy]).await.is_empty(),
                "the old role went"
            );
            f
        })
        .await;
    }

    #[tokio::test]
    async fn temporary_login_credentials_work_until_revoke() {
        with_server(|mut f| async move {
            let (_, table) = f.readable_table().await;
            let adapter = f.adapter("temporary_login", "");
            let mut ctx = context(f.grant_base + 1, "U0ALICE", "read");
            let granted = adapter.grant(&ctx).await.unwrap();
            let login = granted.state.clone().unwrap();
            assert_eq!(login, format!("jit_{}_u0alice", f.grant_base + 1));
            let note = granted.private_note.clone().unwrap();
            assert_eq!(note_field(&note, "user"), login);
            let password = note_field(&note, "password").to_string();
            assert!(!login.contains(&password));
            assert!(note.contains("127.0.0.1:5432/test") || std::env::var("JITGATE_TEST_POSTGRES_URL").is_ok());
            assert!(
                password_matches(&mut f.admin, &login, &password).await,
                "the note's password is the login's"
            );

            let (limit, valid_until): (i32, f64) = sqlx::query_as(
                "SELECT rolconnlimit, extract(epoch FROM rolvaliduntil)::float8 FROM pg_roles WHERE rolname::text = $1",
            )
            .bind(&login)
            .fetch_one(&mut f.admin)
            .await
            .unwrap();
            assert_eq!(limit, -1);
            assert_eq!(
                valid_until as i64,
                ctx.expires_at.timestamp() + 300,
                "VALID UNTIL is the expiry plus 5m"
            );

            let mut session = f.connect_as(&login, Some(&password)).await.unwrap();
            assert_eq!(select(&mut session, &table).await.unwrap(), 42);
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut session)
                .await
                .unwrap();

            // Granting again keeps the login and sends a fresh password.
            let again = adapter.grant(&ctx).await.unwrap();
            assert_eq!(again.state, granted.state);
            let fresh = note_field(again.private_note.as_deref().unwrap(), "password").to_string();
            assert_ne!(fresh, password);
            assert!(password_matches(&mut f.admin, &login, &fresh).await);
            assert_eq!(
                select(&mut session, &table).await.unwrap(),
                42,
                "open sessions survive a re-grant"
            );

            ctx.state = granted.state.clone();
            adapter.revoke(&ctx).await.unwrap();
            let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(&mut f.admin)
                .await
                .unwrap();
            assert_eq!(alive, 0, "revoke ends open sessions");
            assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err());
            let refused = f.connect_as(&login, Some(&fresh)).await.unwrap_err();
            assert!(refused.to_string().contains("does not exist"), "{refused}");
            f
        })
        .await;
    }

    #[tokio::test]
    async fn extending_a_temporary_login_moves_valid_until() {
        with_server(|mut f| async move {
            f.readable_table().await;
            let adapter = f.adapter("temporary_login", "");
            let mut ctx = context(f.grant_base + 7, "U0EXT", "read");
            let granted = adapter.grant(&ctx).await.unwrap();
            let login = granted.state.clone().unwrap();
            ctx.expires_at += chrono::Duration::hours(1);
            adapter.extend(&ctx).await.unwrap();
            let valid_until: f64 = sqlx::query_scalar(
                "SELECT extract(epoch FROM rolvaliduntil)::float8 FROM pg_roles WHERE rolname::text = $1",
            )
            .bind(&login)
            .fetch_one(&mut f.admin)
            .await
            .unwrap();
            assert_eq!(valid_until as i64, ctx.expires_at.timestamp() + 300);
            ctx.state = granted.state;
            adapter.revoke(&ctx).await.unwrap();
            assert!(matches!(adapter.extend(&ctx).await, Err(AdapterError::Permanent(_))));
            f
        })
        .await;
    }

    #[tokio::test]
    async fn secrets_stay_out_of_state_errors_and_debug() {
        with_server(|mut f| async move {
            f.readable_table().await;
            let adapter = f.adapter("temporary_login", "");
            let ctx = context(f.grant_base + 2, "U0BOB", "read");
            let granted = adapter.grant(&ctx).await.unwrap();
            let password = note_field(granted.private_note.as_deref().unwrap(), "password").to_string();
            assert!(!granted.state.as_deref().unwrap().contains(&password));
            assert!(!format!("{adapter:?}").contains(&password));
            // A later failure: the mapped role vanished.
            let read = quote_ident(&f.name("read"));
            f.exec(&format!("DROP OWNED BY {read}; DROP ROLE {read}")).await;
            let err = adapter.grant(&ctx).await.unwrap_err();
            assert!(!format!("{err:?}").contains(&password));
            assert!(matches!(err, AdapterError::Permanent(_)), "{err:?}");
            assert!(
                err.to_string()
                    .contains(&format!("PostgreSQL role `{}`", f.name("read"))),
                "{err}"
            );
            assert!(
                err.to_string().contains("does not exist; create it or fix the mapping"),
                "{err}"
            );
            adapter.revoke(&ctx).await.unwrap();
            f
        })
        .await;
    }

    #[tokio::test]
    async fn revoke_hands_what_the_login_created_to_the_adapter_role() {
        with_server(|mut f| async move {
            let (role, _) = f.readable_table().await;
            let schema = f.name("s");
            f.exec(&format!(
                "CREATE SCHEMA {s}; GRANT USAGE, CREATE ON SCHEMA {s} TO {r}",
                s = quote_ident(&schema),
                r = quote_ident(&role)
            ))
            .await;
            let adapter = f.adapter("temporary_login", "");
            let mut ctx = context(f.grant_base + 3, "U0CAROL", "read");
            let granted = adapter.grant(&ctx).await.unwrap();
            let login = granted.state.clone().unwrap();
            let password = note_field(granted.private_note.as_deref().unwrap(), "password").to_string();
            let mut session = f.connect_as(&login, Some(&password)).await.unwrap();
            session
                .execute(sqlx::raw_sql(&format!(
                    "CREATE TABLE {}.notes (x int)",
                    quote_ident(&schema)
                )))
                .await
                .unwrap();
            drop(session);
            ctx.state = granted.state;
            adapter.revoke(&ctx).await.unwrap();
            let owner: String = sqlx::query_scalar(
                "SELECT tableowner::text FROM pg_tables WHERE schemaname::text = $1 AND tablename = 'notes'",
            )
            .bind(&schema)
            .fetch_one(&mut f.admin)
            .await
            .unwrap();
            let me: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&mut f.admin)
                .await
                .unwrap();
            assert_eq!(owner, me);
            assert_eq!(adapter.is_active(&ctx).await.unwrap(), Some(false));
            f
        })
        .await;
    }

    #[tokio::test]
    async fn grant_role_passes_the_conformance_checks() {
        with_server(|mut f| async move {
            f.readable_table().await;
            let alice = f.name("alice");
            f.exec(&format!("CREATE ROLE {} LOGIN", quote_ident(&alice))).await;
            let adapter = f.adapter("grant_role", &format!("logins = {{ U0ALICE = \"{alice}\" }}"));
            let ctx = context(f.grant_base + 4, "U0ALICE", "read");
            conformance::check(&adapter, &ctx, true).await.unwrap();
            f
        })
        .await;
    }

    #[tokio::test]
    async fn grant_role_gives_and_takes_the_mapped_role() {
        with_server(|mut f| async move {
            let (_, table) = f.readable_table().await;
            // Found through the template: <prefix>slack_u0dave.
            let login = f.name("slack_u0dave");
            f.exec(&format!("CREATE ROLE {} LOGIN", quote_ident(&login))).await;
            let template = format!("login_template = \"{}slack_{{user_id}}\"", f.prefix);
            let adapter = f.adapter("grant_role", &template);
            let mut session = f.connect_as(&login, None).await.unwrap();
            let denied = select(&mut session, &table).await.unwrap_err();
            assert!(denied.to_string().contains("permission denied"), "{denied}");

            let mut ctx = context(f.grant_base + 5, "U0DAVE", "read");
            let granted = adapter.grant(&ctx).await.unwrap();
            assert_eq!(granted.private_note, None);
            assert_eq!(
                select(&mut session, &table).await.unwrap(),
                42,
                "an open session gets the access"
            );
            let mut fresh = f.connect_as(&login, None).await.unwrap();
            assert_eq!(select(&mut fresh, &table).await.unwrap(), 42);

            ctx.state = granted.state;
            adapter.revoke(&ctx).await.unwrap();
            for conn in [&mut session, &mut fresh] {
                let denied = select(conn, &table).await.unwrap_err();
                assert!(denied.to_string().contains("permission denied"), "{denied}");
            }
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname::text = $1)")
                .bind(&login)
                .fetch_one(&mut f.admin)
                .await
                .unwrap();
            assert!(exists, "the user's own login stays");
            f
        })
        .await;
    }

    #[tokio::test]
    async fn overlapping_grants_and_standing_memberships_survive_a_revoke() {
        with_server(|mut f| async move {
            let (role, table) = f.readable_table().await;
            let (erin, frank) = (f.name("erin"), f.name("frank"));
            f.exec(&format!(
                "CREATE ROLE {e} LOGIN; CREATE ROLE {fr} LOGIN IN ROLE {r}",
                e = quote_ident(&erin),
                fr = quote_ident(&frank),
                r = quote_ident(&role)
            ))
            .await;
            let adapter = f.adapter(
                "grant_role",
                &format!("logins = {{ U0ERIN = \"{erin}\", U0FRANK = \"{frank}\" }}"),
            );
            let first = context(f.grant_base + 6, "U0ERIN", "read");
            let second = context(f.grant_base + 7, "U0ERIN", "read");
            adapter.grant(&first).await.unwrap();
            adapter.grant(&second).await.unwrap();
            adapter.revoke(&first).await.unwrap();
            let mut session = f.connect_as(&erin, None).await.unwrap();
            assert_eq!(
                select(&mut session, &table).await.unwrap(),
                42,
                "the second grant still holds"
            );
            assert_eq!(adapter.is_active(&second).await.unwrap(), Some(true));
            adapter.revoke(&second).await.unwrap();
            assert!(select(&mut session, &table).await.is_err());

            // Frank was a member before; a grant and its revoke leave that alone.
            let standing = context(f.grant_base + 8, "U0FRANK", "read");
            adapter.grant(&standing).await.unwrap();
            adapter.revoke(&standing).await.unwrap();
            let mut session = f.connect_as(&frank, None).await.unwrap();
            assert_eq!(select(&mut session, &table).await.unwrap(), 42);
            f
        })
        .await;
    }

    #[tokio::test]
    async fn grant_role_refuses_unknown_users_and_missing_logins_permanently() {
        with_server(|mut f| async move {
            f.readable_table().await;
            let ghost = f.name("ghost");
            let adapter = f.adapter("grant_role", &format!("logins = {{ U0GHOST = \"{ghost}\" }}"));
            let err = adapter
                .grant(&context(f.grant_base + 9, "U0NOBODY", "read"))
                .await
                .unwrap_err();
            assert!(matches!(err, AdapterError::Permanent(_)), "{err:?}");
            assert!(
                err.to_string()
                    .contains("add U0NOBODY = \"their_login\" to adapters.pg.logins"),
                "{err}"
            );
            let err = adapter
                .grant(&context(f.grant_base + 10, "U0GHOST", "read"))
                .await
                .unwrap_err();
            assert!(matches!(err, AdapterError::Permanent(_)), "{err:?}");
            assert!(err.to_string().contains(&format!("database login `{ghost}`")), "{err}");
            assert!(err.to_string().contains("does not exist"), "{err}");
            f
        })
        .await;
    }

    /// The adapter connected as `role` instead of the superuser.
    fn adapter_as(f: &Fixture, role: &str, mode: &str, extra: &str) -> PostgresAdapter {
        let mut url = url::Url::parse(&f.url).unwrap();
        url.set_username(role).unwrap();
        let _ = url.set_password(None);
        let mut config = f.adapter(mode, extra).config;
        config.url = DatabaseUrl(url.to_string());
        PostgresAdapter::new("pg", config)
    }

    #[tokio::test]
    async fn the_documented_privileges_are_enough_without_superuser() {
        with_server(|mut f| async move {
            let (role, table) = f.readable_table().await;
            let (admin, schema, gina) = (f.name("admin"), f.name("s"), f.name("gina"));
            let (a, r, s) = (quote_ident(&admin), quote_ident(&role), quote_ident(&schema));
            let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                .fetch_one(&mut f.admin)
                .await
                .unwrap();
            // PostgreSQL 16 wants ADMIN OPTION on the mapped role; before, CREATEROLE was enough.
            let admin_option = if version >= 160_000 {
                format!("GRANT {r} TO {a} WITH ADMIN OPTION;")
            } else {
                String::new()
            };
            f.exec(&format!(
                "CREATE ROLE {a} LOGIN CREATEROLE; GRANT pg_signal_backend TO {a}; {admin_option} \
                 CREATE SCHEMA {s}; GRANT USAGE, CREATE ON SCHEMA {s} TO {r}; CREATE ROLE {g} LOGIN",
                g = quote_ident(&gina)
            ))
            .await;

            let temporary = adapter_as(&f, &admin, "temporary_login", "");
            let mut ctx = context(f.grant_base + 12, "U0GINA", "read");
            let granted = temporary.grant(&ctx).await.unwrap();
            let login = granted.state.clone().unwrap();
            let password = note_field(granted.private_note.as_deref().unwrap(), "password").to_string();
            let mut session = f.connect_as(&login, Some(&password)).await.unwrap();
            assert_eq!(select(&mut session, &table).await.unwrap(), 42);
            session
                .execute(sqlx::raw_sql(&format!("CREATE TABLE {s}.made_by_login (x int)")))
                .await
                .unwrap();
            ctx.state = granted.state;
            temporary.revoke(&ctx).await.unwrap();
            assert!(select(&mut session, &table).await.is_err(), "the session was ended");
            assert_eq!(temporary.is_active(&ctx).await.unwrap(), Some(false));

            let membership = adapter_as(&f, &admin, "grant_role", &format!("logins = {{ U0GINA = \"{gina}\" }}"));
            let ctx = context(f.grant_base + 13, "U0GINA", "read");
            conformance::check(&membership, &ctx, true).await.unwrap();
            f
        })
        .await;
    }

    #[tokio::test]
    async fn missing_privileges_are_permanent_and_say_what_to_grant() {
        with_server(|mut f| async move {
            f.readable_table().await;
            // An adapter role without CREATEROLE.
            let weak = f.name("weak");
            f.exec(&format!("CREATE ROLE {} LOGIN", quote_ident(&weak))).await;
            let adapter = adapter_as(&f, &weak, "temporary_login", "");
            let err = adapter
                .grant(&context(f.grant_base + 11, "U0WEAK", "read"))
                .await
                .unwrap_err();
            assert!(matches!(err, AdapterError::Permanent(_)), "{err:?}");
            assert!(err.to_string().contains("needs CREATEROLE"), "{err}");
            f
        })
        .await;
    }
}
