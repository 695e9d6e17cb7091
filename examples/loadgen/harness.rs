//! What every scenario shares: the runtimes, the fake Slack, the configuration, a started
//! jitgate, signed command bodies, and readings of this process's memory and CPU time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Runtime;

use jitgate::fakeslack::{self as fake_slack, FakeSlack};

/// The signing secret the server and the load generator share.
pub const SIGNING_SECRET: &str = "loadgen-signing-secret";
/// The audit key the load generator's jitgate runs with.
pub const AUDIT_KEY: &str = "loadgen-audit-key-0123456789abcdef-0123";
/// Where approval cards go.
pub const APPROVAL_CHANNEL: &str = "C0APPROVALS";
/// The resource every request asks for.
pub const RESOURCE: &str = "prod-db";
/// The noop adapter's name in the configuration.
pub const ADAPTER: &str = "bench";

/// Separate runtimes, so the server runs on as many workers as `jitgate serve` would and
/// the load generator and the fake Slack do not share its scheduler.
pub struct Runtimes {
    pub server: Runtime,
    pub client: Runtime,
    pub fake: Runtime,
}

impl Runtimes {
    pub fn new(server_threads: usize, client_threads: usize) -> anyhow::Result<Self> {
        let build = |name: &str, threads: usize| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .thread_name(name)
                .enable_all()
                .build()
                .with_context(|| format!("building the {name} runtime"))
        };
        Ok(Self {
            server: build("server", server_threads)?,
            client: build("loadgen", client_threads)?,
            fake: build("fake-slack", 1)?,
        })
    }
}

/// Starts the fake Slack Web API on its own runtime.
pub fn start_fake(rt: &Runtimes) -> FakeSlack {
    rt.fake.block_on(FakeSlack::start())
}

/// A "Slack" that accepts connections and never answers (at most 64 are held), so the
/// outbox waits on its first call and the ack path can be measured on its own.
pub async fn stalled_listener() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 64 {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => break,
            }
        }
        std::future::pending::<()>().await;
    });
    Ok(addr)
}

/// An address where nothing listens, so every connection to "Slack" is refused at once.
pub async fn refusing_address() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(addr)
}

/// A configuration like an operator's: defaults everywhere, one resource, a noop adapter,
/// on the database of `db_url` (a `sqlite://` URL with an absolute path, or PostgreSQL's).
pub fn config_text(db_url: &str, api_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[database]
url = "{db_url}"

[slack]
api_url = "{api_url}"
response_url_hosts = ["127.0.0.1"]

# The load is many requests per simulated person: lift the per-person flood limits,
# which would otherwise (rightly) refuse most of it.
[requests]
max_pending_per_user = 1000
commands_per_minute = 10000

[[resources]]
name = "{RESOURCE}"
description = "Production PostgreSQL"
roles = ["read", "write"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "{APPROVAL_CHANNEL}"
approvers = ["UAPPROVER1", "UAPPROVER2"]
adapter = "{ADAPTER}"

[adapters.{ADAPTER}]
type = "noop"
"#
    )
}

/// Starts jitgate exactly as `jitgate serve` does, on an ephemeral loopback port.
pub async fn start_server(dir: &Path, config_text: &str) -> anyhow::Result<jitgate::Running> {
    let config = jitgate::config::parse(&dir.join("jitgate.toml"), config_text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secrets = jitgate::Secrets {
        bot_token: fake_slack::BOT_TOKEN.into(),
        signing_secret: Some(SIGNING_SECRET.into()),
        app_token: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let options = jitgate::Options {
        env_overrides: [("JITGATE_AUDIT_KEY".to_string(), AUDIT_KEY.to_string())].into(),
        ..jitgate::Options::default()
    };
    jitgate::start(config, secrets, options, listener).await
}

/// Numbers the trigger_ids of generated commands.
static NEXT_TRIGGER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The form body Slack posts for `/jit <text>` typed by `user`. Each has a trigger_id of
/// its own, as Slack's do (jitgate acts once per trigger_id).
pub fn command_body(user: &str, text: &str) -> String {
    let trigger = format!(
        "{}.{}.loadgen",
        std::process::id(),
        NEXT_TRIGGER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    serde_urlencoded::to_string([
        ("token", "legacy-ignored"),
        ("team_id", "T0TEAM"),
        ("team_domain", "acme"),
        ("channel_id", "C0GENERAL"),
        ("channel_name", "general"),
        ("user_id", user),
        ("user_name", "someone"),
        ("command", "/jit"),
        ("text", text),
        ("api_app_id", "A0APP"),
        ("response_url", "http://127.0.0.1:9/response/cmd"),
        ("trigger_id", &trigger),
    ])
    .expect("strings encode")
}

/// Polls `GET /healthz` until it answers 200 or `limit` passes. Returns when it did.
pub async fn wait_healthy(addr: std::net::SocketAddr, limit: Duration) -> anyhow::Result<Instant> {
    let start = Instant::now();
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
            if stream.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = Vec::new();
                let _ = stream.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return Ok(Instant::now());
                }
            }
        }
        anyhow::ensure!(start.elapsed() < limit, "/healthz did not answer 200 within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The real `jitgate serve` binary, run as a child process on a loopback port.
pub struct ChildServer {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
}

impl ChildServer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (a graceful stop, as an operator's), then waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "jitgate exited with {status}");
        Ok(())
    }
}

impl Drop for ChildServer {
    /// A run that failed half-way must not leave the server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `bin serve` with `config_text` (its `listen` replaced by a free loopback port)
/// and the secrets in its environment.
pub fn spawn_server(bin: &Path, dir: &Path, config_text: &str) -> anyhow::Result<ChildServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let path = dir.join("jitgate.toml");
    std::fs::write(&path, config_text.replace("127.0.0.1:0", &addr.to_string()))?;
    let child = std::process::Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env("SLACK_BOT_TOKEN", fake_slack::BOT_TOKEN)
        .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
        .env("JITGATE_AUDIT_KEY", AUDIT_KEY)
        .env("JITGATE_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(ChildServer { addr, child })
}

/// Resident memory of this process, from /proc/self/status: (VmRSS, VmHWM) in KiB.
pub fn rss_kib() -> (u64, u64) {
    rss_kib_of("/proc/self/status")
}

/// Resident memory from a /proc/PID/status file: (VmRSS, VmHWM) in KiB.
pub fn rss_kib_of(path: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) this process used so far, from /proc/self/stat, including
/// threads that have exited. Resolution: one clock tick (10 ms on Linux).
pub fn cpu_time() -> Duration {
    crate::procfs::process_cpu(std::process::id())
}

/// Percentiles of a histogram of microseconds, as text.
pub fn summary_us(h: &hdrhistogram::Histogram<u64>) -> String {
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    )
}

/// This machine, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} cores, {cpu}, {:.1} GiB RAM", mem_kib as f64 / 1024.0 / 1024.0)
}
