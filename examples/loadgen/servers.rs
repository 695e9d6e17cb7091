//! The jitgate server(s) under test: in this process, or `jitgate serve` child processes
//! — one, or several replicas on one PostgreSQL database — with their memory and CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::harness::{self, ChildServer, Runtimes};
use crate::procfs::{self, ThreadCpu};
use crate::Args;

/// Threads of this process that belong to the load generator and the fake Slack, not to
/// the server: the runtimes' names (see [`Runtimes`]); the main thread is `loadgen` too.
const CLIENT_THREADS: [&str; 2] = ["loadgen", "fake-slack"];

/// One server under test.
pub enum Server {
    InProcess(Box<jitgate::Running>),
    Child(ChildServer),
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::InProcess(r) => r.addr,
            Server::Child(c) => c.addr,
        }
    }

    /// The process it runs in.
    pub fn pid(&self) -> u32 {
        match self {
            Server::InProcess(_) => std::process::id(),
            Server::Child(c) => c.pid(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Server::InProcess(_) => "in-process".into(),
            Server::Child(c) => format!("child process {}", c.pid()),
        }
    }

    /// (VmRSS, VmHWM) in KiB of the process running the server.
    pub fn rss_kib(&self) -> (u64, u64) {
        harness::rss_kib_of(&format!("/proc/{}/status", self.pid()))
    }

    /// CPU time (user + system) of the server so far. In this process: the process's
    /// minus the load generator's and the fake Slack's threads (threads of the server that
    /// have exited stay counted; the database checks' SQLite threads count as server).
    pub fn cpu_time(&self) -> Duration {
        match self {
            Server::Child(c) => procfs::process_cpu(c.pid()),
            Server::InProcess(_) => {
                let pid = std::process::id();
                let clients: Duration = procfs::threads(pid)
                    .iter()
                    .filter(|t| CLIENT_THREADS.contains(&t.comm.as_str()))
                    .map(|t| t.cpu)
                    .sum();
                procfs::process_cpu(pid).saturating_sub(clients)
            }
        }
    }

    /// The server's threads and their CPU so far (in this process: without the load
    /// generator's and the fake Slack's).
    pub fn threads(&self) -> Vec<ThreadCpu> {
        let mut threads = procfs::threads(self.pid());
        if let Server::InProcess(_) = self {
            threads.retain(|t| !CLIENT_THREADS.contains(&t.comm.as_str()));
        }
        threads
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Server::InProcess(r) => (*r).shutdown().await,
            Server::Child(c) => c.stop(),
        }
    }
}

/// The `jitgate` binary to run as child processes: `--server-bin`, or with `--replicas`
/// above 1 the `jitgate` built next to this load generator (target/release/jitgate for
/// target/release/examples/loadgen). None: the server runs in this process.
pub fn server_bin(args: &Args) -> anyhow::Result<Option<PathBuf>> {
    if let Some(bin) = &args.server_bin {
        return Ok(Some(bin.clone()));
    }
    if args.replicas <= 1 {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("jitgate"))
        .context("finding the target directory")?;
    anyhow::ensure!(
        bin.is_file(),
        "--replicas runs `jitgate serve` child processes and {} does not exist: build it with \
         `cargo build --release --bin jitgate`, or give the binary with --server-bin",
        bin.display()
    );
    println!(
        "replicas run {} (the jitgate next to this loadgen; --server-bin to choose another)",
        bin.display()
    );
    Ok(Some(bin))
}

/// Starts the server(s) and waits until each answers /healthz: `args.replicas` child
/// processes of `bin`, each on its own port with its own copy of `config`, or one server
/// in this process. Prints when they were ready.
pub fn start(args: &Args, rt: &Runtimes, dir: &Path, config: &str, bin: Option<&Path>) -> anyhow::Result<Vec<Server>> {
    let started = Instant::now();
    let mut servers = Vec::new();
    match bin {
        None => servers.push(Server::InProcess(Box::new(
            rt.server.block_on(harness::start_server(dir, config))?,
        ))),
        Some(bin) => {
            // Started together, as an operator's replicas would be; migrations apply once.
            for i in 0..args.replicas {
                let own = dir.join(format!("replica-{i}"));
                std::fs::create_dir_all(&own)?;
                servers.push(Server::Child(harness::spawn_server(bin, &own, config)?));
            }
        }
    }
    let deadline = started + Duration::from_secs(60);
    for (i, server) in servers.iter_mut().enumerate() {
        loop {
            if let Server::Child(child) = server {
                if let Some(status) = child.exited() {
                    anyhow::bail!(
                        "server {i} ({}) exited with {status} before it was ready; its stderr is above",
                        server.describe()
                    );
                }
            }
            if rt
                .client
                .block_on(harness::wait_healthy(server.addr(), Duration::from_millis(200)))
                .is_ok()
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "server {i} ({}) did not answer 200 on /healthz within 60 s",
                server.describe()
            );
        }
    }
    let names: Vec<String> = servers
        .iter()
        .map(|s| format!("{} at {}", s.describe(), s.addr()))
        .collect();
    println!(
        "jitgate ready in {:.1} ms: {}",
        started.elapsed().as_secs_f64() * 1000.0,
        names.join("; ")
    );
    Ok(servers)
}

/// Stops every server, each gracefully; fails with the first error.
pub fn stop_all(rt: &Runtimes, servers: Vec<Server>) -> anyhow::Result<()> {
    let mut first = Ok(());
    for server in servers {
        let what = server.describe();
        if let Err(e) = rt.server.block_on(server.stop()) {
            if first.is_ok() {
                first = Err(e.context(format!("shutting down {what}")));
            }
        }
    }
    first
}

/// The servers' CPU time so far, summed.
pub fn cpu_time(servers: &[Server]) -> Duration {
    servers.iter().map(Server::cpu_time).sum()
}
