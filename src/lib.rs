//! jitgate: just-in-time access through Slack.
//!
//! `start` builds the whole service from a validated configuration; `main.rs`, the
//! integration tests and the benchmarks all use it, so they run the same code.

pub mod access_locks;
pub mod adapters;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod backoff;
pub mod backup;
pub mod cards;
pub mod clock;
pub mod commands;
pub mod config;
pub mod dev;
pub mod duration;
pub mod fakeslack;
pub mod forms;
pub mod fuzzing;
pub mod grants;
pub mod healthcheck;
pub mod home;
pub mod http;
pub mod ids;
pub mod inputs;
pub mod jobs;
pub mod log_throttle;
pub mod metrics;
pub mod oncall;
pub mod outbox;
pub mod policy;
pub mod readiness;
pub mod reconcile;
pub mod relocation;
pub mod report;
pub mod requests;
pub mod rotation;
pub mod scheduler;
pub mod selfcheck;
pub mod slack;
pub mod socket;
pub mod store;
pub mod text;
pub mod throttle;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::{Adapter, Adapters};
pub use crate::app::AppState;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::outbox::{Outbox, OutboxHandle};
use crate::scheduler::SchedulerHandle;
use crate::slack::client::SlackApi;
use crate::store::Db;

/// Secrets, read from the environment only. Never logged: `Debug` redacts them.
#[derive(Clone)]
pub struct Secrets {
    pub bot_token: String,
    /// Checks requests to the HTTP endpoints. Optional in Socket Mode: without it the
    /// `/slack/*` endpoints are not served.
    pub signing_secret: Option<String>,
    /// An app-level token (`xapp-…`, scope `connections:write`): when present, Slack's
    /// input arrives by Socket Mode.
    pub app_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { <redacted> }")
    }
}

impl Secrets {
    /// Reads `SLACK_BOT_TOKEN`, `SLACK_APP_TOKEN` (optional: Socket Mode) and
    /// `SLACK_SIGNING_SECRET` (required without an app token).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// [`Secrets::from_env`] reading the variables through `env`.
    pub fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let bot_token = get("SLACK_BOT_TOKEN").ok_or_else(|| {
            anyhow::anyhow!(
                "SLACK_BOT_TOKEN is not set; set it to the app's Bot User OAuth Token (xoxb-…, under OAuth & Permissions)"
            )
        })?;
        let app_token = get("SLACK_APP_TOKEN");
        if let Some(t) = &app_token {
            anyhow::ensure!(
                t.starts_with("xapp-"),
                "SLACK_APP_TOKEN does not look like an app-level token (they start with xapp-); create one with \
                 the connections:write scope under Basic Information → App-Level Tokens"
            );
        }
        let signing_secret = get("SLACK_SIGNING_SECRET");
        anyhow::ensure!(
            signing_secret.is_some() || app_token.is_some(),
            "neither SLACK_APP_TOKEN nor SLACK_SIGNING_SECRET is set; for Socket Mode set SLACK_APP_TOKEN to an \
             app-level token (xapp-…, Basic Information → App-Level Tokens, scope connections:write); for HTTP \
             set SLACK_SIGNING_SECRET to the app's Signing Secret (under Basic Information)"
        );
        Ok(Self {
            bot_token,
            signing_secret,
            app_token,
        })
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
    /// Run the Slack self-check at start-up (tests that count Slack calls turn it off).
    pub slack_self_check: bool,
    /// How long one Slack Web API call may take.
    pub slack_call_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Arc::new(clock::SystemClock),
            adapter_overrides: Vec::new(),
            shutdown_grace: Duration::from_secs(20),
            revoke_removed: false,
            env_overrides: BTreeMap::new(),
            slack_self_check: true,
            slack_call_timeout: slack::client::CALL_TIMEOUT,
        }
    }
}

/// A running jitgate.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where `/metrics` and `/readyz` listen besides `addr` (`[metrics] listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// Its state, for tests and benchmarks to inspect.
    pub state: AppState,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl Running {
    /// Stops taking requests and lets open connections finish (at most the grace), while
    /// the scheduler keeps revoking; then stops background work, lets running work finish
    /// (bounded), and closes the database. Interrupted jobs are resumed at the next start.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.stop_requested.cancel();
        let served = self.server.await;
        self.state.shutdown.cancel();
        self.state.tasks.close();
        if tokio::time::timeout(self.grace, self.state.tasks.wait()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "some work did not finish in time; it resumes at the next start");
        }
        // The final head, outside the data directory.
        anchor_once(&self.state, None).await;
        if self.state.db.backend == store::Backend::Postgres {
            let left = async {
                let mut conn = self.state.db.write.acquire().await?;
                anyhow::Ok(store::replicas::leave(&mut conn, &self.state.db.replica).await?)
            };
            if let Err(e) = left.await {
                tracing::warn!(error = format!("{e:#}"), "shutdown: cannot hand this replica's messages over; the others take them once its heartbeat is stale");
            }
        }
        // Leave no erased secret in the WAL behind.
        if let Err(e) = self.state.db.checkpoint().await {
            tracing::error!(error = format!("{e:#}"), "shutdown: cannot checkpoint the database");
        }
        self.state.db.close().await;
        tracing::info!("jitgate stopped");
        served.context("server task panicked")?.context("server error")?;
        Ok(())
    }

    /// Waits until shutdown is requested through the state's `stop_requested` (or
    /// `shutdown`) token, then shuts down.
    pub async fn until_shutdown(self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.state.stop_requested.cancelled() => {}
            _ = self.state.shutdown.cancelled() => {}
        }
        self.shutdown().await
    }
}

/// Records the audit chain's head in `[audit] anchor_file` and `channel` if it moved
/// since `last`; failures are logged (the next anchor covers them).
async fn anchor_once(state: &AppState, last: Option<i64>) -> Option<i64> {
    let audit = &state.config.audit;
    if audit.anchor_file.is_none() && audit.channel.is_none() {
        return last;
    }
    match audit::anchor_head(
        &state.audit_key,
        &state.db,
        audit.anchor_file.as_ref(),
        audit.channel.as_deref(),
        last,
        state.now_ms(),
    )
    .await
    {
        Ok(seq) => {
            if seq != last {
                state.outbox.wake();
            }
            seq
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "could not anchor the audit log's head");
            last
        }
    }
}

/// Anchors the audit chain's head every `[audit] anchor_interval` until shutdown.
async fn anchor_periodically(state: AppState) {
    let every = state.config.audit.anchor_interval.to_std();
    let mut last = anchor_once(&state, None).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.shutdown.cancelled() => break,
        }
        last = anchor_once(&state, last).await;
    }
    tracing::info!("audit anchoring stopped");
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
    let audit_key = audit::load_key(config.audit.key_file.as_deref(), &env)?;
    let db = Db::open(&config.database.url).await?;
    for (name, adapter) in adapter_overrides {
        adapters.insert(&name, adapter);
    }
    let concurrency = config.jobs.concurrency;
    let metrics = metrics::Metrics::new();
    let access_locks = Arc::new(match db.backend {
        store::Backend::Sqlite => access_locks::AccessLocks::default(),
        // One connection per adapter call in flight, and a few for batches.
        store::Backend::Postgres => access_locks::AccessLocks::shared_through(
            sqlx::any::AnyPoolOptions::new()
                .max_connections(concurrency as u32 + 4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy(&config.database.url)?,
        ),
    });
    Ok(AppState {
        slack: SlackApi::new(&config.slack.api_url, &secrets.bot_token)
            .with_response_url_hosts(&config.slack.response_url_hosts)
            .with_metrics(metrics.clone()),
        metrics,
        slack_status: selfcheck::SlackStatus::default(),
        config: Arc::new(config),
        db,
        clock,
        adapters: Arc::new(adapters),
        oncall: Arc::new(oncall),
        audit_key,
        signing_secret: Arc::from(secrets.signing_secret.unwrap_or_default().into_bytes()),
        scheduler: SchedulerHandle::new(concurrency),
        outbox: OutboxHandle::default(),
        access_locks,
        command_rate: Arc::default(),
        creations: Arc::default(),
        stop_requested: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
    })
}

/// On PostgreSQL: writes that this replica is alive every few seconds, and takes over
/// the work of replicas that are not (see `store::replicas`), acting on their clicks.
async fn keep_replica_alive(state: AppState) {
    let every = Duration::from_millis(scheduler::HEARTBEAT_EVERY_MS as u64);
    let mut purged_at = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.shutdown.cancelled() => break,
        }
        let now = state.now_ms();
        let taken = async {
            let mut tx = state.db.begin().await?;
            store::replicas::seen(&mut tx, &state.db.replica, now).await?;
            let taken =
                store::replicas::take_over(&mut tx, &state.db.replica, now, inputs::delivery_kind::INTERACTION).await?;
            if now - purged_at > 3_600_000 {
                store::replicas::purge(&mut tx, now).await?;
                purged_at = now;
            }
            tx.commit().await?;
            anyhow::Ok(taken)
        };
        match taken.await {
            Ok(taken) => {
                if taken.jobs > 0 || taken.messages > 0 || !taken.clicks.is_empty() {
                    tracing::warn!(
                        jobs = taken.jobs,
                        messages = taken.messages,
                        clicks = taken.clicks.len(),
                        "taking over work of a replica that stopped"
                    );
                    state.scheduler.wake();
                    state.outbox.wake();
                }
                if let Err(e) = inputs::resume_recorded_clicks(&state, taken.clicks).await {
                    tracing::error!(error = format!("{e:#}"), "could not act on clicks taken over");
                }
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "cannot write this replica's heartbeat; the others take over its work if this lasts"
            ),
        }
    }
}

/// On PostgreSQL: wakes the scheduler or the outbox worker when another replica adds a
/// job or a message (the triggers of migration 0009 notify), so punctuality does not
/// depend on which replica took a request. Reconnects on its own; polling covers gaps.
async fn listen_for_wake_ups(state: AppState) {
    loop {
        let listened = async {
            let mut listener = sqlx::postgres::PgListener::connect(&state.config.database.url).await?;
            listener.listen_all(["jitgate_jobs", "jitgate_outbox"]).await?;
            loop {
                tokio::select! {
                    n = listener.recv() => match n?.channel() {
                        "jitgate_jobs" => state.scheduler.wake(),
                        _ => state.outbox.wake(),
                    },
                    _ = state.shutdown.cancelled() => return anyhow::Ok(()),
                }
            }
        };
        match listened.await {
            Ok(()) => break,
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "not listening for other replicas' wake-ups; retrying in 5 s"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = state.shutdown.cancelled() => break,
        }
    }
}

/// Forgets delivery keys (re-delivery protection) once their retention has passed, every
/// ten minutes.
async fn purge_deliveries(state: AppState) {
    loop {
        let purged = async {
            let mut conn = state.db.write.acquire().await?;
            anyhow::Ok(store::purge_deliveries(&mut conn, state.now_ms()).await?)
        };
        match purged.await {
            Ok(n) if n > 0 => tracing::debug!(keys = n, "forgot expired delivery keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "could not purge delivery keys"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = state.shutdown.cancelled() => break,
        }
    }
}

/// Opens the database, resumes interrupted work, and serves on `listener`.
pub async fn start(
    config: Config,
    secrets: Secrets,
    options: Options,
    listener: TcpListener,
) -> anyhow::Result<Running> {
    let app_token = secrets.app_token.clone();
    let mut state = build_with_env(
        config,
        secrets,
        options.clock,
        options.adapter_overrides,
        &options.env_overrides,
    )
    .await?;
    // A crash may have left an erased secret in the WAL: clear it before anything else.
    state.db.checkpoint().await?;
    {
        // An older, unkeyed audit log is keyed from here on.
        let mut tx = state.db.begin().await?;
        if let Some(seq) = audit::key_the_log(&state.audit_key, &mut tx, state.now_ms()).await? {
            tracing::warn!(
                from_seq = seq,
                "the audit log was unkeyed; it is keyed from this entry on"
            );
        }
        tx.commit().await?;
    }
    state.slack = state.slack.clone().with_timeout(options.slack_call_timeout);
    // Work interrupted by the last stop: on SQLite (one process) everything left running;
    // on PostgreSQL what replicas that stopped had taken (the others' is theirs).
    let mut clicks_taken_over = Vec::new();
    if state.db.backend == store::Backend::Postgres {
        let mut tx = state.db.begin().await?;
        store::replicas::seen(&mut tx, &state.db.replica, state.now_ms()).await?;
        let taken = store::replicas::take_over(
            &mut tx,
            &state.db.replica,
            state.now_ms(),
            inputs::delivery_kind::INTERACTION,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(replica = %state.db.replica, "joined the replicas sharing the database");
        if taken.jobs > 0 || taken.messages > 0 {
            tracing::warn!(
                jobs = taken.jobs,
                messages = taken.messages,
                "taking over work of replicas that stopped"
            );
        }
        clicks_taken_over = taken.clicks;
    }
    {
        let mut conn = state.db.write.acquire().await?;
        if state.db.backend == store::Backend::Sqlite {
            let resumed = store::recover_running_jobs(&mut conn).await?;
            if resumed > 0 {
                tracing::warn!(jobs = resumed, "resuming jobs interrupted by the last stop");
            }
        }
        // Messages Slack refused for good are tried again at every start: the restart
        // often comes with the fix (a new token, the bot invited).
        let refused = store::retry_undelivered(&mut conn, None, false).await?;
        if refused > 0 {
            tracing::warn!(
                messages = refused,
                "retrying messages Slack refused before (`jitgate outbox list` shows them)"
            );
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
    let scheduler = jobs::scheduler(&state);
    scheduler.claim_and_spawn(state.now_ms()).await?;
    state.tasks.spawn(scheduler.run());
    // Clicks acknowledged to Slack but not acted on before the last stop.
    let resumed = if state.db.backend == store::Backend::Sqlite {
        inputs::resume_clicks(&state).await?
    } else {
        inputs::resume_recorded_clicks(&state, clicks_taken_over).await?
    };
    if resumed > 0 {
        tracing::warn!(clicks = resumed, "acting on clicks received just before the last stop");
    }
    state.tasks.spawn(outbox::run(Outbox {
        db: state.db.clone(),
        slack: state.slack.clone(),
        clock: state.clock.clone(),
        config: state.config.clone(),
        handle: state.outbox.clone(),
        shutdown: state.shutdown.clone(),
    }));
    state
        .tasks
        .spawn(reconcile::run_periodically(state.clone(), state.clock.now()));
    state.tasks.spawn(anchor_periodically(state.clone()));

    // `/metrics` and `/readyz` on their own address too, when configured.
    let metrics_addr = match state.config.metrics.listen {
        None => None,
        Some(at) => {
            let ops = TcpListener::bind(at).await.with_context(|| {
                format!(
                    "{}: metrics.listen: cannot listen on {at}; free the port or choose another",
                    state.config.path.display()
                )
            })?;
            let bound = ops.local_addr()?;
            let router = http::operations_router(state.clone());
            // The same bounds as the main listener; it answers until the very end, so
            // readiness stays visible while the main server drains.
            let limits = http::Limits {
                header_timeout: state.config.server.header_timeout.to_std(),
                max_connections: state.config.server.max_connections,
                grace: options.shutdown_grace,
            };
            let stop = state.shutdown.child_token();
            state.tasks.spawn(async move {
                if let Err(e) = http::serve(ops, router, limits, stop).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
            tracing::info!(addr = %bound, "metrics and readiness listening");
            Some(bound)
        }
    };
    state.tasks.spawn(purge_deliveries(state.clone()));
    if state.db.backend == store::Backend::Postgres {
        state.tasks.spawn(keep_replica_alive(state.clone()));
        state.tasks.spawn(listen_for_wake_ups(state.clone()));
    }
    if options.slack_self_check {
        let recovered = {
            let state = state.clone();
            async move {
                let retried = async {
                    let mut conn = state.db.write.acquire().await?;
                    anyhow::Ok(store::retry_undelivered(&mut conn, None, false).await?)
                };
                match retried.await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(
                                messages = n,
                                "Slack takes the token again; sending what it refused meanwhile"
                            );
                        }
                        state.outbox.wake();
                    }
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "could not queue the messages Slack refused again; they are retried within minutes"
                    ),
                }
            }
        };
        state.tasks.spawn(selfcheck::run_until_ok(
            state.config.clone(),
            state.slack.clone(),
            state.slack_status.clone(),
            state.shutdown.clone(),
            recovered,
        ));
    } else {
        state.slack_status.set_report(selfcheck::Report::default());
    }
    if let Some(token) = &app_token {
        socket::spawn(&state, token);
        tracing::info!("Slack input arrives by Socket Mode");
    }
    if state.signing_secret.is_empty() {
        tracing::info!("no SLACK_SIGNING_SECRET: the /slack/* HTTP endpoints are off");
    }

    let addr = listener.local_addr()?;
    let app = http::router(state.clone());
    let limits = http::Limits {
        header_timeout: state.config.server.header_timeout.to_std(),
        max_connections: state.config.server.max_connections,
        grace: options.shutdown_grace,
    };
    // The server stops on either token: `stop_requested` drains it while background work
    // goes on; `shutdown` (cancelled after the drain, or by a test) ends everything.
    let stop = state.stop_requested.child_token();
    let shutdown = state.shutdown.clone();
    let stop_on_shutdown = stop.clone();
    state.tasks.spawn(async move {
        shutdown.cancelled().await;
        stop_on_shutdown.cancel();
    });
    let server = tokio::spawn(http::serve(listener, app, limits, stop));
    tracing::info!(%addr, "jitgate listening");
    Ok(Running {
        addr,
        metrics_addr,
        state,
        server,
        grace: options.shutdown_grace,
    })
}
