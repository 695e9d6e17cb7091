//! The expiry scenario: many active grants whose expiries are spread over a window, the
//! scheduler revoking them through a noop adapter, and how late each revoke was. Before
//! the first expiry and after the last, the process's CPU time over an idle window.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::harness::{self, Runtimes};
use crate::{history, Args};

fn idle_cpu(window: Duration) -> (Duration, Duration) {
    let before = harness::cpu_time();
    let started = Instant::now();
    std::thread::sleep(window);
    (harness::cpu_time().saturating_sub(before), started.elapsed())
}

fn print_idle(what: &str, (cpu, wall): (Duration, Duration)) {
    println!(
        "CPU while {what}: {:.0} ms over {:.1} s ({:.2}% of one core; resolution 10 ms)",
        cpu.as_secs_f64() * 1000.0,
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
}

/// Runs the scenario and prints the report. Fails when a grant was not revoked in time.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = Runtimes::new(args.server_threads, args.client_threads)?;
    let dir = tempfile::tempdir()?;
    let db_path = args.db.clone().unwrap_or_else(|| dir.path().join("jitgate.db"));
    let url = format!("sqlite://{}", db_path.display());
    let count = args.grants as i64;
    let window_ms = args.window.as_secs() as i64 * 1000;
    let idle = args.idle.to_std();

    // Set-up, not measured: the grants go in through SQL, expiring after the idle window.
    let setup = Instant::now();
    let first_expiry = chrono::Utc::now().timestamp_millis() + args.setup_allowance.as_secs() as i64 * 1000;
    rt.server.block_on(async {
        let db = jitgate::store::Db::open(&url).await?;
        let mut conn = db.write.acquire().await?;
        sqlx::query("PRAGMA synchronous = OFF").execute(&mut *conn).await?;
        history::active_grants(&mut conn, count, first_expiry, window_ms).await?;
        drop(conn);
        db.close().await;
        anyhow::Ok(())
    })?;
    println!(
        "set up {count} active grants in {:.1} s; expiries from {} s after set-up began, over {} s",
        setup.elapsed().as_secs_f64(),
        args.setup_allowance.as_secs(),
        args.window.as_secs()
    );

    let fake = harness::start_fake(&rt);
    let config = harness::config_text(&db_path, &fake.api_url());
    let started = Instant::now();
    let running = rt.server.block_on(harness::start_server(dir.path(), &config))?;
    rt.server
        .block_on(harness::wait_healthy(running.addr, Duration::from_secs(30)))?;
    println!(
        "jitgate ready in {:.1} ms with {count} revoke jobs pending",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let (rss, _) = harness::rss_kib();
    println!(
        "RSS with {count} grants pending, idle: {} MiB (includes the load generator and fake Slack)",
        rss / 1024
    );

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
        idle_cpu(window),
    );

    // Wait for every grant to be revoked, bounded.
    let limit = Duration::from_millis((first_expiry - chrono::Utc::now().timestamp_millis()).max(0) as u64)
        + args.window.to_std()
        + Duration::from_secs(120);
    let waited = Instant::now();
    let cpu_before = harness::cpu_time();
    let state = running.state.clone();
    let (left, lateness) = rt.server.block_on(async {
        let left = loop {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM grants WHERE state = 'active'")
                .fetch_one(&state.db.read)
                .await?;
            if n == 0 || waited.elapsed() > limit {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let late: Vec<(i64,)> = sqlx::query_as("SELECT revoked_at - expires_at FROM grants WHERE state = 'revoked'")
            .fetch_all(&state.db.read)
            .await?;
        anyhow::Ok((left, late))
    })?;
    let cpu_revoking = harness::cpu_time().saturating_sub(cpu_before);
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
    println!(
        "process CPU while revoking: {:.1} s (over {:.1} s)",
        cpu_revoking.as_secs_f64(),
        waited.elapsed().as_secs_f64()
    );

    // Let the outbox deliver the revoke messages and card updates, then idle again.
    let drained = Instant::now();
    rt.server.block_on(async {
        loop {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
                .fetch_one(&state.db.read)
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
    print_idle("nothing is pending", idle_cpu(idle));
    let (rss, hwm) = harness::rss_kib();
    println!("RSS after: {} MiB, peak {} MiB (in-process)", rss / 1024, hwm / 1024);
    rt.server.block_on(running.shutdown())?;
    anyhow::ensure!(left == 0, "{left} grants were not revoked within {limit:?}");
    Ok(())
}
