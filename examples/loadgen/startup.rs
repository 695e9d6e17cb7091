//! The start-up scenario: a database holding many past requests (made once, kept with
//! `--db`), then `jitgate::start` to the first 200 on /healthz, several times.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::database::BenchDb;
use crate::harness::{self, Runtimes};
use crate::{history, Args};

/// Runs the scenario and prints the report.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let rt = Runtimes::new(args.server_threads, args.client_threads)?;
    let dir = tempfile::tempdir()?;
    let db = BenchDb::prepare(args, dir.path())?;
    let db_path = db.file.clone().context("the startup scenario runs on a SQLite file")?;
    let url = db.url.clone();
    let want = args.past_requests as i64;

    let made = Instant::now();
    let had = rt.server.block_on(async {
        let db = jitgate::store::Db::open(&url).await?;
        let mut conn = db.write.acquire().await?;
        let (had,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests")
            .fetch_one(&mut *conn)
            .await?;
        if had < want {
            println!(
                "writing {} past requests to {} (set-up, not measured)",
                want - had,
                db_path.display()
            );
            sqlx::query("PRAGMA synchronous = OFF").execute(&mut *conn).await?;
            history::past_requests(&mut conn, want - had, chrono::Utc::now().timestamp_millis(), 50_000).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut *conn)
                .await?;
        }
        drop(conn);
        db.close().await;
        anyhow::Ok(had)
    })?;
    if had < want {
        println!("  done in {:.1} s", made.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
    let counts = rt.server.block_on(async {
        let db = jitgate::store::Db::open(&url).await?;
        let mut out = Vec::new();
        for table in ["requests", "jobs", "outbox", "audit_log"] {
            let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&db.read)
                .await?;
            out.push(format!("{n} {table}"));
        }
        db.close().await;
        anyhow::Ok(out.join(", "))
    })?;
    println!("database: {:.0} MiB; {counts}", size as f64 / 1024.0 / 1024.0);

    let fake = harness::start_fake(&rt);
    let config = harness::config_text(&url, &fake.api_url());
    let mut times = Vec::new();
    for run in 1..=args.runs {
        let started = Instant::now();
        let running = rt.server.block_on(harness::start_server(dir.path(), &config))?;
        let ready = rt
            .server
            .block_on(harness::wait_healthy(running.addr, Duration::from_secs(60)))?;
        let took = ready.duration_since(started);
        std::thread::sleep(Duration::from_millis(300));
        let (rss, _) = harness::rss_kib();
        println!(
            "run {run}: start to first 200 on /healthz in {:.1} ms (process RSS now {} MiB)",
            took.as_secs_f64() * 1000.0,
            rss / 1024
        );
        times.push(took);
        rt.server.block_on(running.shutdown())?;
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "start-up to ready with {want} past requests: median {:.1} ms, max {:.1} ms over {} runs (warm page cache)",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
            times.len()
        );
    }
    Ok(())
}
