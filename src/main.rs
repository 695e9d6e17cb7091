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
    CheckConfig,
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
    /// Copy the database to PATH, safely while `serve` runs, and verify the copy
    /// (integrity check and audit hash chain).
    Backup {
        /// Where the copy goes.
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("JITGATE_LOG_FORMAT").as_deref() {
        // One JSON object per line: `timestamp`, `level`, `fields.message` and the step's
        // fields (`request_id`, `grant_id`, `actor`, `resource`, `role`, …).
        Ok("json") => builder.json().with_current_span(false).init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            builder.with_ansi(false).init();
            tracing::warn!(value = other, "JITGATE_LOG_FORMAT must be `json` or `text`; logging as text");
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // These two need no configuration (the health check reads it only for the address).
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
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
        Command::CheckConfig => {
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
            let mut vars: Vec<&str> = vec!["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"];
            if let Some(oncall) = &config.oncall {
                vars.extend(oncall.sources.values().filter_map(|s| s.credential_env()));
            }
            for var in vars {
                if std::env::var(var).map(|v| v.trim().is_empty()).unwrap_or(true) {
                    println!("note: {var} is not set; `jitgate serve` needs it");
                }
            }
            Ok(())
        }
        Command::Serve { revoke_removed } => serve(config, revoke_removed).await,
        Command::Audit { command } => audit(config, command).await,
        Command::Reconcile { dry_run } => reconcile(config, dry_run).await,
        Command::Backup { path, force } => jitgate::backup::run(&config, &path, force)
            .await
            .map(|done| println!("{done}")),
        Command::Healthcheck { .. } | Command::Completions { .. } => Ok(()), // answered above
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
    jitgate::store::Db::existing_file(&config)?;
    // Reconciling makes no Slack call (reports are queued for the running bot to send).
    let secrets = jitgate::Secrets::from_env().unwrap_or(jitgate::Secrets {
        bot_token: String::new(),
        signing_secret: String::new(),
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
    jitgate::store::Db::existing_file(&config)?;
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
