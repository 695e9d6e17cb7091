//! The `jitgate` command line. The work happens in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use jitgate::config::{self, DEFAULT_CONFIG_PATH};
use jitgate::duration::HumanDuration;

/// `jitgate --version`: the package version and the commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("JITGATE_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "jitgate", version = VERSION, about = "Just-in-time access through Slack")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "JITGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bot.
    Serve {
        /// Revoke grants whose resource was removed from the configuration, instead of
        /// refusing to start.
        #[arg(long)]
        revoke_removed: bool,
    },
    /// Check the configuration file and exit (non-zero if it has problems).
    CheckConfig {
        /// Also ask Slack: the tokens, the scopes, and every configured channel. One line
        /// per check; non-zero exit on any failure.
        #[arg(long)]
        online: bool,
    },
    /// Messages Slack has not taken (refused for good, or given up on).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Compare what adapters have granted with the database once: revoke access nobody
    /// holds a grant for and report grants whose access is missing.
    Reconcile {
        /// Report only; revoke nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Report who had what access, why, approved by whom, for how long and how it ended.
    Report {
        /// Start of the period: a duration back from now (`30d`), a date (`2025-03-01`,
        /// UTC) or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
        /// End of the period (exclusive), written like `--since`. Default: now.
        #[arg(long)]
        until: Option<String>,
        /// `csv`, `json` or `html` (one self-contained file with charts).
        #[arg(long, default_value = "csv")]
        format: jitgate::report::Format,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Explain the access policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Copy the database to PATH, safely while `serve` runs, and verify the copy
    /// (integrity check and audit hash chain).
    Backup {
        /// Where the copy goes.
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Move the database (the SQLite file of the configuration), with all its history, into
    /// an empty PostgreSQL database, and verify the copy there (row counts, the audit hash
    /// chain and its head). Stop `jitgate serve` first.
    MoveDatabase {
        /// The empty PostgreSQL database: postgres://user@host:5432/database (the password
        /// may come from PGPASSWORD or ~/.pgpass instead of the URL).
        #[arg(long)]
        to: String,
    },
    /// Ask a running jitgate whether it is healthy (GET /healthz); exit 0 if it is, 1 if
    /// not. For container and supervisor health checks.
    Healthcheck {
        /// The URL to ask. Default: /healthz at `[server] listen` of the configuration.
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s")]
        timeout: HumanDuration,
    },
    /// A first look with no Slack account: jitgate with a demo configuration and a local
    /// Slack — a web page on 127.0.0.1 where you act as any demo person. Not for production.
    /// `--config FILE` given on the command line runs that file's configuration instead
    /// (the default path and JITGATE_CONFIG are not used by `dev`).
    Dev {
        /// The local Slack's port on 127.0.0.1.
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Where the database (jitgate-dev.db), the record of grants and revokes and the
        /// audit key are kept.
        #[arg(long, default_value = ".")]
        data_dir: PathBuf,
        /// Keep the adapters of the configuration given with --config (default: every one
        /// is replaced by the record adapter, since anyone at the page can approve).
        #[arg(long)]
        real_adapters: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Whether a person may request a resource and for how long, who may approve it and
    /// how many must, whether on-call auto-approval would apply from a channel (and which
    /// condition fails if not), and whether break-glass is available to them.
    Explain {
        /// The person's Slack user ID (U…).
        #[arg(long)]
        user: String,
        /// `resource` or `resource:role`.
        #[arg(long)]
        resource: String,
        /// The channel the request would be made in (C…); on-call auto-approval needs an
        /// incident channel.
        #[arg(long)]
        channel: Option<String>,
        /// The duration to ask for, like `2h` (default: the resource's default).
        #[arg(long)]
        duration: Option<jitgate::duration::HumanDuration>,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// List messages Slack refused (kept and retried slowly) or that were given up on.
    List,
    /// Send undelivered messages again now (a running `serve` picks them up within seconds).
    Retry {
        /// The message's id, from `jitgate outbox list`.
        id: Option<i64>,
        /// Every undelivered message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that no audit entry was edited, inserted, moved or deleted: the keyed chain,
    /// and its end against the newest anchored head.
    Verify {
        /// Also check against this head, as posted in the audit channel: `SEQ:HASH`.
        #[arg(long)]
        head: Option<String>,
        /// The database is a restored backup: check it up to the newest anchored head it
        /// reaches, and say how much newer the live log was.
        #[arg(long)]
        restored: bool,
    },
    /// Print the audit log as JSON lines.
    Export {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("JITGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // PostgreSQL's notices at start-up ("relation … already exists, skipping") are
        // the migrator's business, not the operator's.
        .add_directive("sqlx::postgres::notice=warn".parse().expect("a valid directive"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("JITGATE_LOG_FORMAT").as_deref() {
        // One JSON object per line: `timestamp`, `level`, `fields.message` and the step's
        // fields (`request_id`, `grant_id`, `actor`, `resource`, `role`, …).
        Ok("json") => builder.json().with_current_span(false).init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            builder.with_ansi(false).init();
            tracing::warn!(
                value = other,
                "JITGATE_LOG_FORMAT must be `json` or `text`; logging as text"
            );
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    // `dev` runs its demo configuration unless --config is on the command line (not the
    // default path, not JITGATE_CONFIG: an operator's environment must not turn a first
    // look into a run of the production configuration).
    let config_given = matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // These two need no configuration (the health check reads it only for the address).
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "jitgate", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Healthcheck { url, timeout } => {
            // Exit status 1 for every failure: container runtimes reserve 2.
            return match jitgate::healthcheck::run(&cli.config, url.clone(), timeout.to_std()).await {
                Ok(said) => {
                    println!("{said}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("unhealthy: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Dev {
            port,
            data_dir,
            real_adapters,
        } => {
            init_tracing();
            if *real_adapters && !config_given {
                eprintln!("error: --real-adapters needs --config FILE (the demo configuration has no real adapters)");
                return ExitCode::from(2);
            }
            let options = jitgate::dev::DevOptions {
                port: *port,
                data_dir: data_dir.clone(),
                config: config_given.then(|| cli.config.clone()),
                real_adapters: *real_adapters,
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                on_signal.cancel();
            });
            return match jitgate::dev::run(options, stop).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    init_tracing();
    let config = match config::load(&cli.config).and_then(config::apply_env) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig { online } => {
            println!(
                "{}: OK ({} resource{}, {} adapter{})",
                config.path.display(),
                config.resources.len(),
                if config.resources.len() == 1 { "" } else { "s" },
                config.adapters.len(),
                if config.adapters.len() == 1 { "" } else { "s" }
            );
            if let Some(db) = config.database.file() {
                println!("database: {}", db.display());
                if db.parent().is_some_and(|d| !d.is_dir()) {
                    println!("note: the database's directory does not exist; `jitgate serve` needs it");
                }
            }
            let unset = |var: &str| std::env::var(var).map(|v| v.trim().is_empty()).unwrap_or(true);
            let mut vars: Vec<&str> = vec!["SLACK_BOT_TOKEN"];
            if unset("SLACK_APP_TOKEN") {
                vars.push("SLACK_SIGNING_SECRET");
            }
            if let Some(oncall) = &config.oncall {
                vars.extend(oncall.sources.values().filter_map(|s| s.credential_env()));
            }
            for var in vars {
                if unset(var) {
                    println!("note: {var} is not set; `jitgate serve` needs it");
                }
            }
            if online {
                match check_online(&config).await {
                    Ok(true) => Ok(()),
                    Ok(false) => return ExitCode::FAILURE,
                    Err(e) => Err(e),
                }
            } else {
                Ok(())
            }
        }
        Command::Outbox { command } => outbox(config, command).await,
        Command::Serve { revoke_removed } => serve(config, revoke_removed).await,
        Command::Audit { command } => audit(config, command).await,
        Command::Reconcile { dry_run } => reconcile(config, dry_run).await,
        Command::Backup { path, force } => jitgate::backup::run(&config, &path, force)
            .await
            .map(|done| println!("{done}")),
        Command::MoveDatabase { to } => jitgate::relocation::run(&config, &to)
            .await
            .map(|done| println!("{done}")),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    user,
                    resource,
                    channel,
                    duration,
                },
        } => policy_explain(config, user, &resource, channel, duration).await,
        Command::Report {
            since,
            until,
            format,
            out,
        } => report(config, &since, until.as_deref(), format, out).await,
        Command::Healthcheck { .. } | Command::Completions { .. } | Command::Dev { .. } => Ok(()), // answered above
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: config::Config, revoke_removed: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let secrets = jitgate::Secrets::from_env()?;
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen in {})", config.path.display()))?;
    let options = jitgate::Options {
        revoke_removed,
        shutdown_grace: config.server.shutdown_grace.to_std(),
        ..jitgate::Options::default()
    };
    let running = jitgate::start(config, secrets, options, listener).await?;
    let token = running.state.stop_requested.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.until_shutdown().await
}

async fn reconcile(config: config::Config, dry_run: bool) -> anyhow::Result<()> {
    jitgate::store::Db::ensure_exists(&config)?;
    // Reconciling makes no Slack call (reports are queued for the running bot to send).
    let secrets = jitgate::Secrets::from_env().unwrap_or(jitgate::Secrets {
        bot_token: String::new(),
        signing_secret: None,
        app_token: None,
    });
    let clock: jitgate::clock::SharedClock = std::sync::Arc::new(jitgate::clock::SystemClock);
    let state = jitgate::build(config, secrets, clock, Vec::new()).await?;
    let report = jitgate::reconcile::run(&state, dry_run).await?;
    println!(
        "reconciliation{}: {} adapter{}, {} active grant{} checked, {} finding{}",
        if dry_run { " (dry run)" } else { "" },
        report.adapters_checked,
        if report.adapters_checked == 1 { "" } else { "s" },
        report.grants_checked,
        if report.grants_checked == 1 { "" } else { "s" },
        report.findings.len(),
        if report.findings.len() == 1 { "" } else { "s" },
    );
    for f in &report.findings {
        println!("  - {}", f.describe());
    }
    state.db.close().await;
    Ok(())
}

async fn report(
    config: config::Config,
    since: &str,
    until: Option<&str>,
    format: jitgate::report::Format,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use jitgate::report::{parse_bound, Period};
    let now = chrono::Utc::now().timestamp_millis();
    let period = Period {
        since: parse_bound(since, now).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        until: match until {
            Some(u) => parse_bound(u, now).map_err(|e| anyhow::anyhow!("--until: {e}"))?,
            None => now,
        },
        generated_at: now,
    };
    if period.until <= period.since {
        anyhow::bail!("--until must be later than --since");
    }
    let db = jitgate::store::Db::open(&config.database.url).await?;
    let report = {
        let mut conn = db.read.acquire().await?;
        jitgate::report::load(&mut conn, period).await?
    };
    db.close().await;
    let bytes = report.render(format)?;
    match out {
        Some(path) => std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?,
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(&bytes)?;
        }
    }
    Ok(())
}

async fn policy_explain(
    config: config::Config,
    user: String,
    target: &str,
    channel: Option<String>,
    duration: Option<jitgate::duration::HumanDuration>,
) -> anyhow::Result<()> {
    use jitgate::approvals::explain::{explain, render, Lookups, Question};
    use jitgate::ids::is_slack_id;
    if !is_slack_id(&user, &['U', 'W']) {
        anyhow::bail!("--user: `{user}` is not a Slack user ID; use the member ID like U0123ABCD");
    }
    if let Some(c) = &channel {
        if !is_slack_id(c, &['C', 'G', 'D']) {
            anyhow::bail!("--channel: `{c}` is not a Slack channel ID; use the ID like C0123ABCD, not the #name");
        }
    }
    let target = target.to_ascii_lowercase();
    let (resource, role) = match target.split_once(':') {
        Some((r, role)) => (r.to_string(), Some(role.to_string()).filter(|r| !r.is_empty())),
        None => (target.clone(), None),
    };
    let token = std::env::var("SLACK_BOT_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let slack = jitgate::slack::client::SlackApi::new(&config.slack.api_url, token.as_deref().unwrap_or(""));
    let env = |name: &str| std::env::var(name).ok();
    let oncall = match jitgate::oncall::OnCall::new(config.oncall.as_ref(), &env) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("note: {e}; on-call sources without their credential are shown as failing");
            jitgate::oncall::OnCall::new(None, &env)?
        }
    };
    if token.is_none() {
        eprintln!("note: SLACK_BOT_TOKEN is not set; user groups are shown as groups, not members");
    }
    let db = jitgate::store::Db::open(&config.database.url).await?;
    let lookups = Lookups {
        config: &config,
        slack: token.as_ref().map(|_| &slack),
        slack_or_offline: &slack,
        oncall: &oncall,
        read: &db.read,
        now: chrono::Utc::now(),
    };
    let question = Question {
        user,
        resource,
        role,
        channel,
        duration,
    };
    let answer = explain(&lookups, &question).await;
    db.close().await;
    match answer? {
        Ok(e) => {
            println!("{}", render(&e, false));
            Ok(())
        }
        Err(unknown) => anyhow::bail!("{unknown}"),
    }
}

/// `check-config --online`: one line per check; true when all passed.
async fn check_online(config: &config::Config) -> anyhow::Result<bool> {
    let secrets = jitgate::Secrets::from_env()?;
    let slack = jitgate::slack::client::SlackApi::new(&config.slack.api_url, &secrets.bot_token);
    let report = jitgate::selfcheck::run(config, &slack, secrets.app_token.as_deref()).await;
    for line in report.lines() {
        println!("{line}");
    }
    let failed = report.checks.iter().filter(|c| c.outcome.is_err()).count();
    if failed > 0 {
        println!("{failed} check{} failed", if failed == 1 { "" } else { "s" });
    } else {
        println!("Slack: all {} checks passed", report.checks.len());
    }
    Ok(failed == 0)
}

async fn outbox(config: config::Config, command: OutboxCommand) -> anyhow::Result<()> {
    let db = jitgate::store::Db::open(&config.database.url).await?;
    let result = async {
        match command {
            OutboxCommand::List => {
                let mut conn = db.read.acquire().await?;
                let rows = jitgate::store::undelivered(&mut conn, 1000).await?;
                if rows.is_empty() {
                    println!("nothing undelivered: Slack has taken every message");
                }
                for r in &rows {
                    let status = match (r.state.as_str(), r.refused_at) {
                        ("pending", Some(_)) => format!(
                            "refused, next try {}",
                            chrono::DateTime::from_timestamp_millis(r.next_attempt_at)
                                .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
                                .unwrap_or_default()
                        ),
                        _ => "given up".to_string(),
                    };
                    println!(
                        "{id}\t{kind:?}\t{request}\t{channel}\t{error}\t{attempts} attempt{s}\t{status}",
                        id = r.id,
                        kind = r.kind,
                        request = r.request_id.map(jitgate::ids::label).unwrap_or_else(|| "-".into()),
                        channel = r.channel.as_deref().unwrap_or("-"),
                        error = r.last_error.as_deref().unwrap_or("-"),
                        attempts = r.attempts,
                        s = if r.attempts == 1 { "" } else { "s" },
                    );
                }
            }
            OutboxCommand::Retry { id, all } => {
                anyhow::ensure!(
                    id.is_some() || all,
                    "say which message to send again (an id from `jitgate outbox list`), or --all"
                );
                let mut conn = db.write.acquire().await?;
                let n = jitgate::store::retry_undelivered(&mut conn, id, true).await?;
                match (id, n) {
                    (Some(id), 0) => anyhow::bail!(
                        "message {id} is not undelivered (or its secret content was erased); see `jitgate outbox list`"
                    ),
                    _ => println!(
                        "{n} message{} queued again; a running `jitgate serve` sends {} within seconds",
                        if n == 1 { "" } else { "s" },
                        if n == 1 { "it" } else { "them" }
                    ),
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    db.close().await;
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn audit(config: config::Config, command: AuditCommand) -> anyhow::Result<()> {
    jitgate::store::Db::ensure_exists(&config)?;
    let db = jitgate::store::Db::open(&config.database.url).await?;
    let mut conn = db.read.acquire().await?;
    match command {
        AuditCommand::Verify { head, restored } => {
            let key = jitgate::audit::load_key(config.audit.key_file.as_deref(), &|n| std::env::var(n).ok())?;
            let head = match head {
                None => None,
                Some(h) => {
                    let (seq, hash) = h
                        .split_once(':')
                        .and_then(|(s, h)| Some((s.trim().parse::<i64>().ok()?, h.trim().to_string())))
                        .ok_or_else(|| anyhow::anyhow!("--head: write it as SEQ:HASH, like 1200:3fa9…"))?;
                    Some((seq, hash))
                }
            };
            let against = jitgate::audit::VerifyAgainst {
                anchor_file: config.audit.anchor_file.clone(),
                head,
                restored,
            };
            match jitgate::audit::verify_all(&key, &mut conn, &against).await? {
                Ok(v) => {
                    print!("audit log intact: {} entries verified", v.entries);
                    match v.anchored {
                        Some(seq) => print!("; its end matches the anchored head (entry {seq})"),
                        None => print!("; no anchored head to check its end against (set [audit] anchor_file)"),
                    }
                    if let Some(live) = v.live_reached {
                        print!("; restored copy: the live log had reached entry {live}");
                    }
                    println!();
                }
                Err(e) => anyhow::bail!("audit log damaged: {e}"),
            }
        }
        AuditCommand::Export { after } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let mut last = after;
            loop {
                let batch = jitgate::audit::entries(&mut conn, last, 10_000).await?;
                let Some(end) = batch.last().map(|e| e.seq) else {
                    break;
                };
                for e in &batch {
                    writeln!(out, "{}", jitgate::audit::export_json(e))?;
                }
                last = end;
            }
        }
    }
    drop(conn);
    db.close().await;
    Ok(())
}
