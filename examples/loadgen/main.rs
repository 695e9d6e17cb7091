//! jitgate's load generator and benchmark scenarios. See BENCHMARKS.md.
//!
//! `cargo run --release --example loadgen -- --help`
//!
//! Every scenario runs the real server (`jitgate::start`, as `jitgate serve` does, or the
//! `jitgate serve` binary as one or several child processes) on ephemeral loopback ports
//! against a fake Slack Web API and a noop adapter, on SQLite or PostgreSQL, and sends
//! traffic only to 127.0.0.1. Every loop is bounded in count and time.

mod ack;
mod database;
mod expiry;
// Not every scenario uses all of it.
#[allow(dead_code)]
mod harness;
mod history;
mod procfs;
mod servers;
mod startup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use jitgate::duration::HumanDuration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SlackMode {
    /// The fake Slack answers.
    Ok,
    /// Connections to Slack are refused.
    Refuses,
    /// Slack accepts connections and never answers.
    Hangs,
}

impl Args {
    /// The Slack behaviour asked for (`--slack-stalled` is `--slack hangs`).
    pub fn slack_mode(&self) -> SlackMode {
        if self.slack_stalled {
            SlackMode::Hangs
        } else {
            self.slack
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Signed `/jit request` commands at a given concurrency: throughput, ack latency, errors.
    Ack,
    /// Many active grants expiring over a window: revoke lateness and idle CPU.
    Expiry,
    /// A database with many past requests: time from start to ready.
    Startup,
}

/// Benchmarks jitgate: ack latency under load, revoke punctuality, start-up, footprint.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "ack")]
    scenario: Scenario,

    /// The SQLite file to use (default: a fresh one in a temporary directory). `startup`
    /// reuses the past requests already in it.
    #[arg(long, conflicts_with_all = ["database_url", "postgres"])]
    db: Option<PathBuf>,

    /// ack, expiry: run on this database instead of a fresh SQLite file: a `sqlite://` URL
    /// (as --db), or a `postgres://` URL of an existing database that holds no tables yet
    /// (refused otherwise, so the checks count only this run's rows); it is kept afterwards.
    /// For a database made for the run and dropped after it, use --postgres.
    #[arg(long, conflicts_with = "postgres")]
    database_url: Option<String>,

    /// ack, expiry: run on PostgreSQL, in a scratch database `jit_bench_<pid>` the load
    /// generator creates on the server of this URL (connecting through the database the
    /// URL names, e.g. postgres://postgres@127.0.0.1:5432/postgres) and drops at the end,
    /// also when the run fails (an interrupted run leaves it: `dropdb jit_bench_<pid>`).
    #[arg(long, value_name = "SERVER_URL")]
    postgres: Option<String>,

    /// ack, expiry: run this many `jitgate serve` child processes on the one database,
    /// each on its own port, sharing the fake Slack (PostgreSQL only: replicas cannot
    /// share a SQLite file). ack spreads the connections over them round-robin. Runs
    /// --server-bin, by default the `jitgate` next to this program
    /// (target/release/jitgate: `cargo build --release --bin jitgate`). Each replica may
    /// open up to 25 PostgreSQL connections.
    #[arg(long, default_value_t = 1)]
    replicas: usize,

    /// Tokio worker threads for the server (default: one per core, like `jitgate serve`).
    #[arg(long, default_value_t = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))]
    server_threads: usize,

    /// Tokio worker threads for the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,

    /// ack, expiry: run this `jitgate` binary as a child process (or --replicas of them)
    /// instead of the server in this process, so its memory, CPU and threads are measured
    /// alone (e.g. target/release/jitgate).
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// ack: a Slack that never answers, so the outbox stalls and the ack path runs alone
    /// (a diagnostic: cards are not checked; shutdown waits out the grace period). The
    /// same as `--slack hangs`.
    #[arg(long)]
    slack_stalled: bool,

    /// ack: how the fake Slack behaves: `ok`; `refuses` (nothing listens: every call is
    /// refused at once); `hangs` (accepts connections, never answers: every call runs into
    /// its timeout). In the last two, cards are not checked, only storage.
    #[arg(long, value_enum, default_value = "ok")]
    slack: SlackMode,

    /// ack: concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// ack: send this many requests (bounded by --time-limit) instead of running for --duration.
    #[arg(long)]
    requests: Option<u64>,

    /// ack: how long to send.
    #[arg(long, default_value = "10s")]
    duration: HumanDuration,

    /// ack: upper bound on the run when --requests is given.
    #[arg(long, default_value = "10m")]
    time_limit: HumanDuration,

    /// ack: distinct requesting users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,

    /// ack, expiry: how long to wait for the outbox to deliver everything afterwards.
    #[arg(long, default_value = "10m")]
    drain_timeout: HumanDuration,

    /// expiry: active grants.
    #[arg(long, default_value_t = 100_000)]
    grants: u64,

    /// expiry: the expiries are spread evenly over this window.
    #[arg(long, default_value = "60s")]
    window: HumanDuration,

    /// expiry: time from the start of set-up to the first expiry (set-up, start and the
    /// idle window must fit in it).
    #[arg(long, default_value = "20s")]
    setup_allowance: HumanDuration,

    /// expiry: length of each idle-CPU window.
    #[arg(long, default_value = "10s")]
    idle: HumanDuration,

    /// startup: past requests in the database.
    #[arg(long, default_value_t = 1_000_000)]
    past_requests: u64,

    /// startup: how many times to start and stop.
    #[arg(long, default_value_t = 5)]
    runs: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JITGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    println!("machine: {}", harness::machine());
    if let Err(e) = check_database_args(&args) {
        eprintln!("loadgen: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.scenario {
        Scenario::Ack => ack::run(&args),
        Scenario::Expiry => expiry::run(&args),
        Scenario::Startup => startup::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses combinations of database options that cannot work, saying what would.
fn check_database_args(args: &Args) -> Result<(), String> {
    let postgres = args.postgres.is_some()
        || args
            .database_url
            .as_deref()
            .is_some_and(jitgate::config::is_postgres_url);
    if args.replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    if args.scenario == Scenario::Startup
        && (args.database_url.is_some() || args.postgres.is_some() || args.replicas > 1)
    {
        return Err(
            "the startup scenario runs on a SQLite file only (--db); --database-url, --postgres and --replicas \
             are for ack and expiry"
                .into(),
        );
    }
    if args.replicas > 1 && !postgres {
        return Err(format!(
            "--replicas {} needs PostgreSQL: replicas share one database, and a SQLite file belongs to one \
             process; add --postgres postgres://postgres@127.0.0.1:5432/postgres (a scratch database is made \
             and dropped) or --database-url postgres://…",
            args.replicas
        ));
    }
    Ok(())
}
