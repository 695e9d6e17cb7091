//! The `jitgate` command line. The work happens in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use jitgate::config::{self, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(name = "jitgate", version, about = "Just-in-time access through Slack")]
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
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
    /// Check that no audit entry was edited, inserted or deleted.
    Verify,
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
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let token = running.state.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.until_shutdown().await
}

async fn reconcile(config: config::Config, dry_run: bool) -> anyhow::Result<()> {
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
    let db = jitgate::store::Db::open(&config.database.url).await?;
    let mut conn = db.read.acquire().await?;
    match command {
        AuditCommand::Verify => match jitgate::audit::verify_chain(&mut conn).await? {
            Ok(n) => println!("audit log intact: {n} entries verified"),
            Err(e) => anyhow::bail!("audit log damaged: {e}"),
        },
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
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
                last = end;
            }
        }
    }
    drop(conn);
    db.close().await;
    Ok(())
}
