//! The ack scenario: signed `/jit request` commands from many users over keep-alive
//! connections, the latency of each acknowledgement, and afterwards a check that every
//! acknowledged request is stored and got exactly one approval card.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::harness::{self, Runtimes};
use crate::{Args, SlackMode};

/// What the connections share: when to stop, and counts per second of the run.
struct Plan {
    addr: SocketAddr,
    users: u64,
    max_requests: u64,
    deadline: Instant,
    started: Instant,
    issued: AtomicU64,
    per_second: Vec<AtomicU64>,
}

/// What one connection saw.
struct ConnResult {
    latency_us: Histogram<u64>,
    acked: Vec<i64>,
    errors: HashMap<String, u64>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// The server under load: in this process, or the real binary as a child process.
enum Server {
    InProcess(Box<jitgate::Running>),
    Child(harness::ChildServer),
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::InProcess(r) => r.addr,
            Server::Child(c) => c.addr,
        }
    }

    fn describe(&self) -> String {
        match self {
            Server::InProcess(_) => "in-process".into(),
            Server::Child(c) => format!("child process {}", c.pid()),
        }
    }

    /// (VmRSS, VmHWM) in KiB of the process running the server.
    fn rss_kib(&self) -> (u64, u64) {
        match self {
            Server::InProcess(_) => harness::rss_kib(),
            Server::Child(c) => harness::rss_kib_of(&format!("/proc/{}/status", c.pid())),
        }
    }

    /// A read-only pool on the server's database, for the checks.
    async fn read_pool(&self, db: &std::path::Path) -> anyhow::Result<jitgate::store::Pool> {
        match self {
            Server::InProcess(r) => Ok(r.state.db.read.clone()),
            Server::Child(_) => Ok(jitgate::store::Db::open(&format!("sqlite://{}", db.display()))
                .await?
                .read),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Server::InProcess(r) => (*r).shutdown().await,
            Server::Child(c) => c.stop(),
        }
    }
}

/// The request id in an acknowledgement, from `Request *JIT-42* for …`.
fn acked_id(body: &[u8]) -> Option<i64> {
    const NEEDLE: &[u8] = b"Request *JIT-";
    let at = body.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one_request(sender: &mut Sender, body: String, ts: String, sig: String) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::post("/slack/commands")
        .header("host", "127.0.0.1")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(Full::new(Bytes::from(body)))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

async fn connection(plan: Arc<Plan>) -> ConnResult {
    let mut out = ConnResult {
        latency_us: new_histogram(),
        acked: Vec::new(),
        errors: HashMap::new(),
    };
    let error = |out: &mut ConnResult, what: String| *out.errors.entry(what).or_default() += 1;
    let mut sender = None;
    let mut failures_in_a_row = 0;
    loop {
        let n = plan.issued.fetch_add(1, Ordering::Relaxed);
        if n >= plan.max_requests || Instant::now() >= plan.deadline || failures_in_a_row >= 10 {
            break;
        }
        if sender.is_none() {
            match connect(plan.addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    error(&mut out, format!("connect: {e}"));
                    failures_in_a_row += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let user = format!("ULOAD{:06}", n % plan.users);
        let body = harness::command_body(&user, &format!("request prod-db:read 1h load test {n}"));
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = jitgate::slack::signature::sign(harness::SIGNING_SECRET.as_bytes(), &ts, body.as_bytes());
        let t0 = Instant::now();
        let result = one_request(s, body, ts, sig).await;
        let took = t0.elapsed();
        match result {
            Ok((200, reply)) => match acked_id(&reply) {
                Some(id) => {
                    failures_in_a_row = 0;
                    out.latency_us
                        .saturating_record(took.as_micros().clamp(1, u64::MAX as u128) as u64);
                    out.acked.push(id);
                    let second = plan.started.elapsed().as_secs() as usize;
                    if let Some(c) = plan.per_second.get(second) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => error(
                    &mut out,
                    format!("200 without a request id: {}", String::from_utf8_lossy(&reply)),
                ),
            },
            Ok((status, reply)) => error(&mut out, format!("HTTP {status}: {}", String::from_utf8_lossy(&reply))),
            Err(e) => {
                error(&mut out, format!("transport: {e}"));
                failures_in_a_row += 1;
                sender = None;
            }
        }
    }
    out
}

/// Runs the scenario and prints the report. Fails when anything was lost or doubled.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = Runtimes::new(args.server_threads, args.client_threads)?;
    let dir = tempfile::tempdir()?;
    let db_path = args.db.clone().unwrap_or_else(|| dir.path().join("jitgate.db"));
    let fake = harness::start_fake(&rt);
    let mode = args.slack_mode();
    let api_url = match mode {
        SlackMode::Hangs => format!("http://{}/api", rt.fake.block_on(harness::stalled_listener())?),
        SlackMode::Refuses => format!("http://{}/api", rt.fake.block_on(harness::refusing_address())?),
        SlackMode::Ok => fake.api_url(),
    };
    let broken = mode != SlackMode::Ok;
    println!("Slack: {mode:?}");
    let config = harness::config_text(&db_path, &api_url);
    let started = Instant::now();
    let server = match &args.server_bin {
        None => Server::InProcess(Box::new(
            rt.server.block_on(harness::start_server(dir.path(), &config))?,
        )),
        Some(bin) => Server::Child(harness::spawn_server(bin, dir.path(), &config)?),
    };
    let addr = server.addr();
    rt.server
        .block_on(harness::wait_healthy(addr, Duration::from_secs(30)))?;
    println!(
        "jitgate ({}) ready in {:.1} ms at {addr} (database {})",
        server.describe(),
        started.elapsed().as_secs_f64() * 1000.0,
        db_path.display()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (idle_rss, _) = server.rss_kib();

    let duration = args.duration.to_std();
    let limit = args.requests.map(|_| args.time_limit.to_std()).unwrap_or(duration);
    let plan = Arc::new(Plan {
        addr,
        users: args.users.max(1),
        max_requests: args.requests.unwrap_or(u64::MAX),
        deadline: Instant::now() + limit,
        started: Instant::now(),
        issued: AtomicU64::new(0),
        per_second: (0..=limit.as_secs() + 1).map(|_| AtomicU64::new(0)).collect(),
    });
    println!(
        "sending signed `/jit request` from {} users on {} keep-alive connections for {}",
        args.users,
        args.concurrency,
        match args.requests {
            Some(n) => format!("{n} requests (at most {:?})", limit),
            None => format!("{:?}", duration),
        }
    );
    let cpu_before = harness::cpu_time();
    let results: Vec<ConnResult> = rt.client.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| tokio::spawn(connection(plan.clone())))
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("connection task"));
        }
        results
    });
    let elapsed = plan.started.elapsed();
    let cpu_load = harness::cpu_time().saturating_sub(cpu_before);
    let (load_rss, load_hwm) = server.rss_kib();

    let mut latency = new_histogram();
    let mut acked = Vec::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for r in results {
        latency.add(&r.latency_us).expect("same bounds");
        acked.extend(r.acked);
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let error_count: u64 = errors.values().sum();
    let secs = elapsed.as_secs_f64();
    println!("\n== ack latency ==");
    println!(
        "{} acknowledged in {:.2} s: {:.0} requests/s; errors: {error_count}",
        acked.len(),
        secs,
        acked.len() as f64 / secs
    );
    println!("latency: {}", harness::summary_us(&latency));
    let full_seconds = elapsed.as_secs() as usize;
    if full_seconds >= 2 {
        let mut per: Vec<u64> = plan.per_second[..full_seconds]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        per.sort_unstable();
        println!(
            "per whole second: min {}, median {}, max {} requests",
            per[0],
            per[per.len() / 2],
            per[per.len() - 1]
        );
    }
    let mut errs: Vec<_> = errors.into_iter().collect();
    errs.sort_by_key(|e| std::cmp::Reverse(e.1));
    for (what, n) in errs.iter().take(5) {
        println!("  error ×{n}: {}", what.chars().take(200).collect::<String>());
    }
    println!(
        "CPU of this process during load: {:.2} s ({:.0}% of one core)",
        cpu_load.as_secs_f64(),
        100.0 * cpu_load.as_secs_f64() / secs,
    );
    println!(
        "server RSS idle {} MiB, after load {} MiB, peak {} MiB ({})",
        idle_rss / 1024,
        load_rss / 1024,
        load_hwm / 1024,
        match server {
            Server::InProcess(_) => "in-process: includes the load generator and the fake Slack",
            Server::Child(_) => "the jitgate process alone",
        }
    );

    // Durability and delivery: every acknowledged request is stored and got one card.
    println!("\n== after the load ==");
    let read = rt.server.block_on(server.read_pool(&db_path))?;
    let drain_started = Instant::now();
    // With Slack stalled nothing can be delivered: check storage only.
    let drain_limit = if broken {
        Duration::ZERO
    } else {
        args.drain_timeout.to_std()
    };
    let (pending, stored, chain) = rt.server.block_on(async {
        let pending = loop {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
                .fetch_one(&read)
                .await?;
            if n == 0 || drain_started.elapsed() > drain_limit {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM requests").fetch_all(&read).await?;
        let stored: HashSet<i64> = ids.into_iter().map(|r| r.0).collect();
        let mut conn = read.acquire().await?;
        let chain = jitgate::audit::verify_chain(
            &jitgate::audit::AuditKey::new(harness::AUDIT_KEY).map_err(anyhow::Error::msg)?,
            &mut conn,
        )
        .await?;
        anyhow::Ok((pending, stored, chain))
    })?;
    let drain = drain_started.elapsed();
    let mut cards: HashMap<i64, u32> = HashMap::new();
    for call in fake.ok_calls("chat.postMessage") {
        if call.channel() != harness::APPROVAL_CHANNEL {
            continue;
        }
        if let Some(id) = call
            .text()
            .strip_prefix("Access request JIT-")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse::<i64>().ok())
        {
            *cards.entry(id).or_default() += 1;
        }
    }
    let unique: HashSet<i64> = acked.iter().copied().collect();
    let not_stored = unique.iter().filter(|id| !stored.contains(id)).count();
    let one_card = unique.iter().filter(|id| cards.get(id) == Some(&1)).count();
    let no_card = unique.iter().filter(|id| !cards.contains_key(id)).count();
    let many_cards = unique.iter().filter(|id| cards.get(id).is_some_and(|n| *n > 1)).count();
    println!(
        "outbox drained in {:.1} s ({} still pending){}",
        drain.as_secs_f64(),
        pending,
        if drain.as_secs_f64() > 0.0 {
            format!(
                ", {:.0} cards/s after the load",
                acked.len() as f64 / drain.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    println!(
        "acknowledged {}, distinct ids {}, stored {}, with exactly one card {}, without a card {}, with several {}",
        acked.len(),
        unique.len(),
        unique.len() - not_stored,
        one_card,
        no_card,
        many_cards
    );
    match chain {
        Ok(n) => println!("audit chain intact: {n} entries"),
        Err(e) => println!("audit chain BROKEN: {e}"),
    }
    let (_, final_hwm) = server.rss_kib();
    if matches!(server, Server::Child(_)) {
        println!(
            "server peak RSS over the whole run, outbox drain included: {} MiB",
            final_hwm / 1024
        );
    }
    rt.server.block_on(read.close());
    rt.server.block_on(server.stop()).context("shutting down")?;
    if broken {
        let ok = error_count == 0 && unique.len() == acked.len() && not_stored == 0;
        anyhow::ensure!(ok, "check failed: see the counts above");
        println!("check passed: every acknowledged request is stored (cards not checked: Slack was {mode:?})");
        return Ok(());
    }
    let ok =
        error_count == 0 && unique.len() == acked.len() && not_stored == 0 && one_card == unique.len() && pending == 0;
    anyhow::ensure!(ok, "check failed: see the counts above");
    println!("check passed: every acknowledged request is stored and got exactly one card");
    Ok(())
}
