//! Grant adapters: what actually gives and takes away access.
//!
//! Every call is keyed by the grant id, so a retry after a crash or a time-out is safe:
//! "already granted" and "already revoked" are successes. `grant` may return opaque state
//! (for example a generated login name) that is handed back to `revoke`.

pub mod conformance;
pub mod exec;
pub mod postgres;
pub mod record;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{AdapterConfig, Config};

/// A boxed future, so adapters can be used behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything an adapter is told about a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantContext {
    pub grant_id: i64,
    pub request_id: i64,
    /// Slack user ID of the person getting access.
    pub user_id: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    /// For `grant`: when the access is planned to end (the grant starts now). For `revoke`:
    /// when it was due to end.
    pub expires_at: DateTime<Utc>,
    pub reason: String,
    /// What `grant` returned, on `revoke`.
    pub state: Option<String>,
}

/// Why an adapter call failed. The message goes to Slack and the audit log, so it must
/// never contain secrets; details belong in the process log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// Worth retrying (time-out, crash, unavailable).
    #[error("{0}")]
    Temporary(String),
    /// Retrying cannot help (refused, misconfigured).
    #[error("{0}")]
    Permanent(String),
    /// The call could not be made at all — a value cannot be passed to the target (like a
    /// NUL byte in an environment variable) — so nothing was started and nothing changed.
    /// Retrying cannot help; a clean-up revoke of a grant that failed this way has
    /// nothing to clean.
    #[error("{0}")]
    NotApplied(String),
}

impl AdapterError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_) | Self::NotApplied(_))
    }
}

/// What a successful grant hands back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// Opaque state kept with the grant and handed back to `revoke`. Stored in SQLite, so
    /// never a secret.
    pub state: Option<String>,
    /// A message for the requester's eyes only (for example generated credentials). Sent
    /// as a DM, erased from the outbox once delivered, never logged or audited.
    pub private_note: Option<String>,
}

impl Granted {
    /// A grant with state only.
    pub fn with_state(state: Option<String>) -> Self {
        Self {
            state,
            private_note: None,
        }
    }
}

/// Access an adapter says exists, as listed for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAccess {
    /// The jitgate grant it belongs to, when the adapter can tell.
    pub grant_id: Option<i64>,
    /// What it is, for reports (like `role jit_42_alice`).
    pub description: String,
}

/// Gives and takes away one kind of access.
pub trait Adapter: Send + Sync {
    /// Gives the access. Must succeed if the access is already there (retries after a crash).
    fn grant<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>>;
    /// Takes the access away. Must succeed if it is already gone.
    fn revoke<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>>;
    /// Whether the access is in force now; `None` when the adapter cannot tell.
    fn is_active<'a>(&'a self, _ctx: &'a GrantContext) -> BoxFuture<'a, Result<Option<bool>, AdapterError>> {
        Box::pin(async { Ok(None) })
    }
    /// Moves the access's end to `ctx.expires_at` (an approved extension). Adapters that
    /// make the target system expire access on its own must move that expiry too.
    fn extend<'a>(&'a self, _ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(async { Ok(()) })
    }
    /// True when grants of the same user, resource and role share one access (revoking
    /// one takes it away for all), so jitgate revokes only when the last of them ends.
    /// False when each grant has access of its own (like a login per grant).
    fn shares_access(&self) -> bool {
        true
    }
    /// Everything this adapter has granted that still exists; `None` when it cannot list.
    fn list_granted(&self) -> BoxFuture<'_, Result<Option<Vec<ListedAccess>>, AdapterError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Does nothing and always succeeds. For trying jitgate out and for benchmarks.
#[derive(Debug, Default)]
pub struct NoopAdapter;

impl Adapter for NoopAdapter {
    fn grant<'a>(&'a self, _ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>> {
        Box::pin(async { Ok(Granted::default()) })
    }
    fn revoke<'a>(&'a self, _ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The configured adapters, by name.
#[derive(Clone, Default)]
pub struct Adapters {
    by_name: HashMap<String, Arc<dyn Adapter>>,
}

impl Adapters {
    /// Builds every adapter named in the configuration. Fails at start-up, naming the file,
    /// the key and the fix, when something outside the file is missing (like a secret in the
    /// environment), rather than at the first grant or, worse, the first revoke.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let by_name = config
            .adapters
            .iter()
            .map(|(name, cfg)| {
                let adapter: Arc<dyn Adapter> = match cfg {
                    AdapterConfig::Exec(c) => Arc::new(exec::ExecAdapter::new(name, c.clone())),
                    AdapterConfig::Webhook(c) => Arc::new(
                        webhook::WebhookAdapter::from_env(name, c)
                            .map_err(|fix| anyhow::anyhow!("{}: {fix}", config.path.display()))?,
                    ),
                    AdapterConfig::Postgres(c) => Arc::new(
                        postgres::PostgresAdapter::new(name, c.clone())
                            .with_installation(config.server.installation_id.as_deref()),
                    ),
                    AdapterConfig::Noop => Arc::new(NoopAdapter),
                    AdapterConfig::Record(c) => Arc::new(record::RecordAdapter::new(name, c.file.clone())),
                };
                Ok((name.clone(), adapter))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { by_name })
    }

    /// The adapter called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Adapter>> {
        self.by_name.get(name).cloned()
    }

    /// Replaces or adds an adapter (tests use this to inject failures).
    pub fn insert(&mut self, name: &str, adapter: Arc<dyn Adapter>) {
        self.by_name.insert(name.to_string(), adapter);
    }
}
