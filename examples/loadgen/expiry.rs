//! The expiry scenario: many active grants whose expiries are spread over a window, the
//! scheduler(s) revoking them through a noop adapter, and how late each revoke was. Before
//! the first expiry and after the last, the server's CPU time over an idle window. The
//! grants are written once, into the database, before any server starts; with
//! `--replicas N` the N replicas then share the wave.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use jitgate::store::Backend;

use crate::database::BenchDb;
use crate::harness::{self, Runtimes};
use crate::procfs;
use crate::servers::{self, Server};
use crate::{history, Args};

fn idle_cpu(servers: &[Server], window: Duration) -> (Duration, Duration) {
    let before = servers::cpu_time(servers);
    let started = Instant::now();
    std::thread::sleep(window);
    (servers::cpu_time(servers).saturating_sub(before), started.elapsed())
}

fn print_idle(what: &str, (cpu, wall): (Duration, Duration)) {
    println!(
        "server CPU while {what}: {:.0} ms over {:.1} s ({:.2}% of one core; resolution 10 ms)",
        cpu.as_secs_f64() * 1000.0,
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
}

/// What the servers' memory is, as text: in this process, or each child's.
fn rss_text(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| {
            let (rss, hwm) = s.rss_kib();
            format!(
                "{} MiB, peak {} MiB ({}{})",
                rss / 1024,
                hwm / 1024,
                s.describe(),
                if matches!(s, Server::InProcess(_)) {
                    ": includes the load generator and fake Slack"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the scenario and prints the report. Fails when a grant was not revoked in time.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = Runtimes::new(args.server_threads, args.client_threads)?;
    let dir = tempfile::tempdir()?;
    let db = BenchDb::prepare(args, dir.path())?;
    let bin = servers::server_bin(args)?;
    let count = args.grants as i64;
    let window_ms = args.window.as_secs() as i64 * 1000;
    let idle = args.idle.to_std();
    println!("database: {}", db.describe());

    // Set-up, not measured: the grants go in through SQL, expiring after the idle window.
    let setup = Instant::now();
    let first_expiry = chrono::Utc::now().timestamp_millis() + args.setup_allowance.as_secs() as i64 * 1000;
    rt.client.block_on(async {
        let store = jitgate::store::Db::open(&db.url).await?;
        let mut conn = store.write.acquire().await?;
        // Set-up need not survive a power cut; the servers' own writes are durable.
        let relax = match db.backend {
            Backend::Sqlite => "PRAGMA synchronous = OFF",
            Backend::Postgres => "SET synchronous_commit = off",
        };
        sqlx::query(relax).execute(&mut *conn).await?;
        history::active_grants(&mut conn, count, first_expiry, window_ms).await?;
        drop(conn);
        store.close().await;
        anyhow::Ok(())
    })?;
    println!(
        "set up {count} active grants in {:.1} s; expiries from {} s after set-up began, over {} s",
        setup.elapsed().as_secs_f64(),
        args.setup_allowance.as_secs(),
        args.window.as_secs()
    );

    let fake = harness::start_fake(&rt);
    let config = harness::config_text(&db.url, &fake.api_url());
    let servers = servers::start(args, &rt, dir.path(), &config, bin.as_deref())?;
    println!("{count} revoke jobs pending");
    println!("RSS with {count} grants pending, idle: {}", rss_text(&servers));
    let check = rt.client.block_on(jitgate::store::Db::open(&db.url))?;
    let read = check.read.clone();

    // Idle window: settle for a moment, then measure until shortly before the first expiry.
    std::thread::sleep(Duration::from_millis(500));
    let until_first = Duration::from_millis((first_expiry - chrono::Utc::now().timestamp_millis() - 500).max(0) as u64);
    let window = idle.min(until_first);
    if window < idle {
        println!(
            "note: only {window:?} left before the first expiry; raise --setup-allowance for a longer idle window"
        );
    }
    print_idle(
        &format!("{count} revokes are pending but none is due"),
        idle_cpu(&servers, window),
    );

    // Wait for every grant to be revoked, bounded.
    let limit = Duration::from_millis((first_expiry - chrono::Utc::now().timestamp_millis()).max(0) as u64)
        + args.window.to_std()
        + Duration::from_secs(120);
    let waited = Instant::now();
    let cpu_before = servers::cpu_time(&servers);
    let threads_before: Vec<_> = servers.iter().map(Server::threads).collect();
    let (left, lateness, by_replica) = rt.client.block_on(async {
        let left = loop {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM grants WHERE state = 'active'")
                .fetch_one(&read)
                .await?;
            if n == 0 || waited.elapsed() > limit {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let late: Vec<(i64,)> = sqlx::query_as("SELECT revoked_at - expires_at FROM grants WHERE state = 'revoked'")
            .fetch_all(&read)
            .await?;
        // A finished job keeps the id of the replica that claimed it.
        let by_replica: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT claimed_by, COUNT(*) FROM jobs WHERE kind = 'revoke' AND state = 'done' \
             GROUP BY claimed_by ORDER BY claimed_by",
        )
        .fetch_all(&read)
        .await?;
        anyhow::Ok((left, late, by_replica))
    })?;
    let cpu_revoking = servers::cpu_time(&servers).saturating_sub(cpu_before);
    let revoking = waited.elapsed();
    let threads_used: Vec<_> = servers
        .iter()
        .zip(&threads_before)
        .map(|(s, before)| procfs::used_between(before, &s.threads()))
        .collect();
    let mut late_us = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut early = 0;
    for (ms,) in &lateness {
        if *ms < 0 {
            early += 1;
        }
        late_us.saturating_record((*ms).max(0) as u64 * 1000 + 1);
    }
    println!("\n== revoke lateness (revoked_at − expires_at) ==");
    println!(
        "{} revoked, {left} still active, {early} revoked early; lateness {}",
        lateness.len(),
        harness::summary_us(&late_us)
    );
    let runs: Vec<String> = by_replica
        .iter()
        .map(|(id, n)| format!("{} {n}", id.as_deref().unwrap_or("(none)")))
        .collect();
    println!(
        "revoke jobs run, by the replica id that claimed them: {}",
        runs.join(", ")
    );
    println!(
        "server CPU while revoking: {:.1} s (over {:.1} s); by thread:",
        cpu_revoking.as_secs_f64(),
        revoking.as_secs_f64()
    );
    for (i, used) in threads_used.iter().enumerate() {
        if servers.len() > 1 {
            println!("  replica {i} ({}):", servers[i].describe());
        }
        procfs::print_threads(used, revoking, 4, "    ");
    }

    // Let the outbox deliver the revoke messages and card updates, then idle again.
    let drained = Instant::now();
    rt.client.block_on(async {
        loop {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
                .fetch_one(&read)
                .await?;
            if n == 0 || drained.elapsed() > args.drain_timeout.to_std() {
                anyhow::ensure!(
                    n == 0,
                    "{n} outbox entries still pending after {:?}",
                    args.drain_timeout
                );
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })?;
    println!(
        "outbox drained {:.1} s after the last revoke",
        drained.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));
    print_idle("nothing is pending", idle_cpu(&servers, idle));
    println!("RSS after: {}", rss_text(&servers));
    rt.client.block_on(check.close());
    servers::stop_all(&rt, servers)?;
    anyhow::ensure!(left == 0, "{left} grants were not revoked within {limit:?}");
    Ok(())
}
