//! The ack scenario: signed `/jit request` commands from many users over keep-alive
//! connections, the latency of each acknowledgement, and afterwards a check that every
//! acknowledged request is stored and got exactly one approval card. With `--replicas N`
//! the connections are spread round-robin over N `jitgate serve` processes on one
//! PostgreSQL database and the report adds a line per replica. The server's CPU time
//! (from /proc) per acknowledged request and per thread answers where the time goes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::database::BenchDb;
use crate::harness::{self, Runtimes};
use crate::procfs::{self, ThreadCpu};
use crate::servers::{self, Server};
use crate::{Args, SlackMode};

/// What the connections share: when to stop, and counts per second of the run.
struct Plan {
    users: u64,
    max_requests: u64,
    deadline: Instant,
    started: Instant,
    issued: AtomicU64,
    per_second: Vec<AtomicU64>,
}

/// What one connection saw.
struct ConnResult {
    /// Which server (replica) it was connected to.
    replica: usize,
    latency_us: Histogram<u64>,
    acked: Vec<i64>,
    errors: HashMap<String, u64>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
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

async fn connection(plan: Arc<Plan>, addr: SocketAddr, replica: usize) -> ConnResult {
    let mut out = ConnResult {
        replica,
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
            match connect(addr).await {
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
    let db = BenchDb::prepare(args, dir.path())?;
    let bin = servers::server_bin(args)?;
    let fake = harness::start_fake(&rt);
    let mode = args.slack_mode();
    let api_url = match mode {
        SlackMode::Hangs => format!("http://{}/api", rt.fake.block_on(harness::stalled_listener())?),
        SlackMode::Refuses => format!("http://{}/api", rt.fake.block_on(harness::refusing_address())?),
        SlackMode::Ok => fake.api_url(),
    };
    let broken = mode != SlackMode::Ok;
    println!("Slack: {mode:?}; database: {}", db.describe());
    let config = harness::config_text(&db.url, &api_url);
    let servers = servers::start(args, &rt, dir.path(), &config, bin.as_deref())?;
    let in_process = matches!(servers[0], Server::InProcess(_));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss: Vec<u64> = servers.iter().map(|s| s.rss_kib().0).collect();

    let duration = args.duration.to_std();
    let limit = args.requests.map(|_| args.time_limit.to_std()).unwrap_or(duration);
    println!(
        "sending signed `/jit request` from {} users on {} keep-alive connections{} for {}",
        args.users,
        args.concurrency,
        if servers.len() > 1 {
            format!(" spread round-robin over {} replicas", servers.len())
        } else {
            String::new()
        },
        match args.requests {
            Some(n) => format!("{n} requests (at most {:?})", limit),
            None => format!("{:?}", duration),
        }
    );
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    let cpu_before = harness::cpu_time();
    let server_cpu_before: Vec<Duration> = servers.iter().map(Server::cpu_time).collect();
    let threads_before: Vec<Vec<ThreadCpu>> = servers.iter().map(Server::threads).collect();
    let backends_before = db.backend_cpu();
    let plan = Arc::new(Plan {
        users: args.users.max(1),
        max_requests: args.requests.unwrap_or(u64::MAX),
        deadline: Instant::now() + limit,
        started: Instant::now(),
        issued: AtomicU64::new(0),
        per_second: (0..=limit.as_secs() + 1).map(|_| AtomicU64::new(0)).collect(),
    });
    let results: Vec<ConnResult> = rt.client.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|i| tokio::spawn(connection(plan.clone(), addrs[i % addrs.len()], i % addrs.len())))
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("connection task"));
        }
        results
    });
    let elapsed = plan.started.elapsed();
    let cpu_load = harness::cpu_time().saturating_sub(cpu_before);
    let server_cpu: Vec<Duration> = servers
        .iter()
        .zip(&server_cpu_before)
        .map(|(s, before)| s.cpu_time().saturating_sub(*before))
        .collect();
    let threads_used: Vec<Vec<ThreadCpu>> = servers
        .iter()
        .zip(&threads_before)
        .map(|(s, before)| procfs::used_between(before, &s.threads()))
        .collect();
    let load_rss: Vec<(u64, u64)> = servers.iter().map(Server::rss_kib).collect();
    let backends_after = db.backend_cpu();

    let mut latency = new_histogram();
    let mut per_replica: Vec<(Histogram<u64>, usize)> = servers.iter().map(|_| (new_histogram(), 0)).collect();
    let mut acked = Vec::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for r in results {
        latency.add(&r.latency_us).expect("same bounds");
        per_replica[r.replica].0.add(&r.latency_us).expect("same bounds");
        per_replica[r.replica].1 += r.acked.len();
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
    let total_cpu: Duration = server_cpu.iter().sum();
    println!(
        "server CPU during load: {} ({})",
        cpu_per_ack(total_cpu, acked.len(), elapsed),
        if in_process {
            "in-process: this process minus the load generator's and the fake Slack's threads"
        } else if servers.len() > 1 {
            "the jitgate processes alone, summed"
        } else {
            "the jitgate process alone"
        }
    );
    if !backends_after.is_empty() {
        // A backend that started during the load counts from zero; one that ended is lost.
        let backends: Duration = backends_after
            .iter()
            .map(|(pid, cpu)| {
                let before = backends_before.iter().find(|(p, _)| p == pid).map(|(_, c)| *c);
                cpu.saturating_sub(before.unwrap_or_default())
            })
            .sum();
        println!(
            "PostgreSQL backends of the database during load: {} ({} backends; the server's shared \
             processes, e.g. the WAL writer, not counted)",
            cpu_per_ack(backends, acked.len(), elapsed),
            backends_after.len()
        );
        println!(
            "jitgate and its PostgreSQL backends together: {}",
            cpu_per_ack(total_cpu + backends, acked.len(), elapsed)
        );
    }
    if servers.len() > 1 {
        println!("per replica:");
        for (i, server) in servers.iter().enumerate() {
            let (h, n) = &per_replica[i];
            println!(
                "  replica {i} ({}, {}): {n} acknowledged, {:.0} requests/s; latency {}; CPU {}",
                server.describe(),
                server.addr(),
                *n as f64 / secs,
                harness::summary_us(h),
                cpu_per_ack(server_cpu[i], *n, elapsed)
            );
        }
    }
    println!(
        "\n== server threads during the load (CPU seconds; cores = CPU / {secs:.2} s wall){} ==",
        if in_process {
            ": in-process, the load generator's and fake Slack's threads left out"
        } else {
            ""
        }
    );
    for (i, server) in servers.iter().enumerate() {
        if servers.len() > 1 {
            println!("replica {i} ({}):", server.describe());
        }
        procfs::print_threads(&threads_used[i], elapsed, if servers.len() > 1 { 5 } else { 10 }, "  ");
    }
    for (i, server) in servers.iter().enumerate() {
        println!(
            "server RSS{} idle {} MiB, after load {} MiB, peak {} MiB ({})",
            if servers.len() > 1 {
                format!(" of replica {i}")
            } else {
                String::new()
            },
            idle_rss[i] / 1024,
            load_rss[i].0 / 1024,
            load_rss[i].1 / 1024,
            match server {
                Server::InProcess(_) => "in-process: includes the load generator and the fake Slack",
                Server::Child(_) => "the jitgate process alone",
            }
        );
    }

    // Durability and delivery: every acknowledged request is stored and got one card.
    println!("\n== after the load ==");
    let check = rt.client.block_on(jitgate::store::Db::open(&db.url))?;
    let read = check.read.clone();
    let drain_started = Instant::now();
    // With Slack stalled nothing can be delivered: check storage only.
    let drain_limit = if broken {
        Duration::ZERO
    } else {
        args.drain_timeout.to_std()
    };
    let (pending, stored, chain) = rt.client.block_on(async {
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
    if !in_process {
        let peaks: Vec<String> = servers
            .iter()
            .map(|s| format!("{} MiB", s.rss_kib().1 / 1024))
            .collect();
        println!(
            "server peak RSS over the whole run, outbox drain included: {}",
            peaks.join(", ")
        );
    }
    rt.client.block_on(check.close());
    servers::stop_all(&rt, servers)?;
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

/// `cpu` over a run of `wall` that acknowledged `acked` requests, as text: total seconds,
/// microseconds per acknowledged request, and cores used on average.
fn cpu_per_ack(cpu: Duration, acked: usize, wall: Duration) -> String {
    format!(
        "{:.2} s, {} per acknowledged request, {:.2} cores on average",
        cpu.as_secs_f64(),
        if acked == 0 {
            "—".to_string()
        } else {
            format!("{:.0} µs", cpu.as_secs_f64() * 1e6 / acked as f64)
        },
        cpu.as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON)
    )
}
