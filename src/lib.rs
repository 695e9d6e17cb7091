//! jitgate: just-in-time access through Slack.
//!
//! `start` builds the whole service from a validated configuration; `main.rs`, the
//! integration tests and the benchmarks all use it, so they run the same code.

pub mod adapters;
pub mod approvals;
pub mod audit;
pub mod backup;
pub mod clock;
pub mod commands;
pub mod config;
mod config_de;
pub mod duration;
pub mod grants;
pub mod healthcheck;
pub mod home;
pub mod http;
pub mod oncall;
pub mod reconcile;
pub mod requests;
pub mod scheduler;
pub mod slack;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::{Adapter, Adapters};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::slack::client::SlackApi;
use crate::store::{Db, Outgoing};

/// Secrets, read from the environment only. Never logged: `Debug` redacts them.
#[derive(Clone)]
pub struct Secrets {
    pub bot_token: String,
    pub signing_secret: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { <redacted> }")
    }
}

impl Secrets {
    /// Reads `SLACK_BOT_TOKEN` and `SLACK_SIGNING_SECRET`.
    pub fn from_env() -> anyhow::Result<Self> {
        let get = |name: &str, hint: &str| match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(anyhow::anyhow!("{name} is not set; {hint}")),
        };
        Ok(Self {
            bot_token: get(
                "SLACK_BOT_TOKEN",
                "set it to the app's Bot User OAuth Token (xoxb-…, under OAuth & Permissions)",
            )?,
            signing_secret: get(
                "SLACK_SIGNING_SECRET",
                "set it to the app's Signing Secret (under Basic Information)",
            )?,
        })
    }
}

/// Everything a request handler or background task needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub clock: SharedClock,
    pub slack: SlackApi,
    pub adapters: Arc<Adapters>,
    /// On-call lookups and their caches.
    pub oncall: Arc<oncall::OnCall>,
    pub(crate) signing_secret: Arc<[u8]>,
    pub(crate) scheduler_wake: Arc<Notify>,
    /// When the scheduler next wakes on its own (unix ms); `i64::MAX` while it is
    /// looking for work or has none. See `wake_scheduler_for`.
    pub(crate) scheduler_next: Arc<AtomicI64>,
    pub(crate) outbox_wake: Arc<Notify>,
    pub(crate) job_permits: Arc<Semaphore>,
    pub(crate) access_locks: Arc<grants::AccessLocks>,
    pub(crate) seen_events: Arc<home::SeenEvents>,
    /// Requests waiting for their (group) commit.
    pub(crate) creations: Arc<requests::Creations>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl AppState {
    /// Now, in unix milliseconds, from the injected clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Tells the scheduler that a job may be due sooner than it thought.
    pub fn wake_scheduler(&self) {
        self.scheduler_wake.notify_one();
    }

    /// Tells the scheduler about a new job due at `at_ms`, if it planned to sleep past it.
    /// Cheaper than `wake_scheduler` when jobs are added often but due late (request
    /// time-outs): the scheduler is not made to look for work it cannot have.
    pub fn wake_scheduler_for(&self, at_ms: i64) {
        if at_ms < self.scheduler_next.load(Ordering::SeqCst) {
            self.scheduler_wake.notify_one();
        }
    }

    /// Tells the outbox worker there is something to send.
    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    /// Queues one Slack message on its own (outside any other change).
    pub async fn send_now(&self, message: Outgoing) -> anyhow::Result<()> {
        let mut conn = self.db.write.acquire().await?;
        store::enqueue(&mut conn, &message, self.now_ms()).await?;
        drop(conn);
        self.wake_outbox();
        Ok(())
    }
}

/// How to run: the clock, and adapters to use instead of the configured ones (tests).
#[derive(Clone)]
pub struct Options {
    pub clock: SharedClock,
    pub adapter_overrides: Vec<(String, Arc<dyn Adapter>)>,
    /// How long running adapter calls may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Revoke, at start-up, grants whose resource was removed from the configuration
    /// (instead of refusing to start).
    pub revoke_removed: bool,
    /// Values for environment variables named in the configuration (the on-call
    /// sources' `token_env`/`key_env`), looked up here before the process environment.
    /// Lets tests pass credentials without changing the process environment.
    pub env_overrides: BTreeMap<String, String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(clock::SystemClock),
            adapter_overrides: Vec::new(),
            shutdown_grace: Duration::from_secs(20),
            revoke_removed: false,
            env_overrides: BTreeMap::new(),
        }
    }
}

/// A running jitgate.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, for tests and benchmarks to inspect.
    pub state: AppState,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl Running {
    /// Stops taking requests, lets running work finish (bounded), then closes the database.
    /// Interrupted jobs are resumed at the next start.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.shutdown.cancel();
        let served = self.server.await;
        self.state.tasks.close();
        if tokio::time::timeout(self.grace, self.state.tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "some work did not finish in time; it resumes at the next start");
        }
        self.state.db.close().await;
        tracing::info!("jitgate stopped");
        served.context("server task panicked")?.context("server error")?;
        Ok(())
    }

    /// Waits until shutdown is requested through the state's token, then shuts down.
    pub async fn until_shutdown(self) -> anyhow::Result<()> {
        self.state.shutdown.cancelled().await;
        self.shutdown().await
    }
}

/// Opens (and migrates) the database and builds the state, starting nothing. One-off
/// commands such as `jitgate reconcile` use this; `start` builds on it.
pub async fn build(
    config: Config,
    secrets: Secrets,
    clock: SharedClock,
    adapter_overrides: Vec<(String, Arc<dyn Adapter>)>,
) -> anyhow::Result<AppState> {
    build_with_env(config, secrets, clock, adapter_overrides, &BTreeMap::new()).await
}

/// [`build`], looking up the environment variables the configuration names (on-call
/// credentials) in `env_overrides` before the process environment.
pub async fn build_with_env(
    config: Config,
    secrets: Secrets,
    clock: SharedClock,
    adapter_overrides: Vec<(String, Arc<dyn Adapter>)>,
    env_overrides: &BTreeMap<String, String>,
) -> anyhow::Result<AppState> {
    // Adapters first: a missing adapter secret fails before anything is touched.
    let mut adapters = Adapters::from_config(&config)?;
    // Likewise a missing on-call credential.
    let env = |name: &str| env_overrides.get(name).cloned().or_else(|| std::env::var(name).ok());
    let oncall = oncall::OnCall::new(config.oncall.as_ref(), &env)
        .with_context(|| format!("on-call sources in {}", config.path.display()))?;
    let db = Db::open(&config.database.url).await?;
    for (name, adapter) in adapter_overrides {
        adapters.insert(&name, adapter);
    }
    let concurrency = config.jobs.concurrency;
    Ok(AppState {
        slack: SlackApi::new(&config.slack.api_url, &secrets.bot_token),
        config: Arc::new(config),
        db,
        clock,
        adapters: Arc::new(adapters),
        oncall: Arc::new(oncall),
        signing_secret: Arc::from(secrets.signing_secret.into_bytes()),
        scheduler_wake: Arc::new(Notify::new()),
        scheduler_next: Arc::new(AtomicI64::new(i64::MAX)),
        outbox_wake: Arc::new(Notify::new()),
        job_permits: Arc::new(Semaphore::new(concurrency)),
        access_locks: Arc::new(grants::AccessLocks::default()),
        seen_events: Arc::new(home::SeenEvents::default()),
        creations: Arc::new(requests::Creations::default()),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    })
}

/// Opens the database, resumes interrupted work, and serves on `listener`.
pub async fn start(
    config: Config,
    secrets: Secrets,
    options: Options,
    listener: TcpListener,
) -> anyhow::Result<Running> {
    let state = build_with_env(
        config,
        secrets,
        options.clock,
        options.adapter_overrides,
        &options.env_overrides,
    )
    .await?;
    {
        let mut conn = state.db.write.acquire().await?;
        let resumed = store::recover_running_jobs(&mut conn).await?;
        if resumed > 0 {
            tracing::warn!(jobs = resumed, "resuming jobs interrupted by the last stop");
        }
    }
    let stranded = {
        let mut conn = state.db.read.acquire().await?;
        let accesses = store::live_accesses(&mut conn).await?;
        if accesses
            .iter()
            .any(|(resource, adapter)| grants::removed(&state.config, resource, adapter))
        {
            grants::stranded(&state.config, &store::live_grants(&mut conn).await?)
        } else {
            Vec::new()
        }
    };
    if stranded.iter().any(|s| !s.revocable) || (!stranded.is_empty() && !options.revoke_removed) {
        let list: Vec<String> = stranded.iter().map(|s| format!("  - {}", s.description)).collect();
        state.db.close().await;
        anyhow::bail!(
            "{}: grants still in force depend on configuration that was removed:\n{}\n\
             Put the resources and adapters back until these grants have ended, or run \
             `jitgate serve --revoke-removed` to revoke grants of removed resources now \
             (their adapters must still be configured).",
            state.config.path.display(),
            list.join("\n")
        );
    }
    for s in stranded {
        tracing::warn!(
            request = s.request_id,
            "revoking a grant whose resource was removed from the configuration"
        );
        if let Err(refused) = grants::revoke_early(&state, s.request_id, audit::SYSTEM_ACTOR).await? {
            tracing::warn!(request = s.request_id, ?refused, "nothing to revoke");
        }
    }
    // Overdue revokes first: claim what is due before the first request is served.
    scheduler::claim_and_spawn(&state, state.now_ms()).await?;
    state.tasks.spawn(scheduler::run(state.clone()));
    state.tasks.spawn(slack::outbox::run(state.clone()));
    state
        .tasks
        .spawn(reconcile::run_periodically(state.clone(), state.clock.now()));

    let addr = listener.local_addr()?;
    let app = http::router(state.clone());
    let token = state.shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    tracing::info!(%addr, "jitgate listening");
    Ok(Running {
        addr,
        state,
        server,
        grace: options.shutdown_grace,
    })
}
