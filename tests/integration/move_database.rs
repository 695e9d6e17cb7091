//! `jitgate move-database --to postgres://…`: a SQLite installation's history moves into an
//! empty PostgreSQL database, every row and the audit chain intact; a non-empty target, a
//! tampered audit log and a database from another build are refused, changing nothing.
//!
//! The tests that need PostgreSQL use `JITGATE_TEST_POSTGRES_URL` (default: the local
//! test server) and skip, saying so, when it cannot be reached, unless
//! `JITGATE_REQUIRE_POSTGRES=1` (as the postgres adapter's tests do).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
/// Every jitgate table, as the move copies them.
const TABLES: &[&str] = &[
    "requests",
    "decisions",
    "grants",
    "jobs",
    "outbox",
    "break_glass",
    "audit_log",
    "deliveries",
    "heartbeat",
];
/// Put into the target's URL; trust authentication ignores it, and no output may show it.
const PASSWORD: &str = "hunter22secret";

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A database of its own on the test server, dropped when the test ends (passed or not).
struct Scratch {
    admin_url: String,
    name: String,
    /// Its URL, with [`PASSWORD`] in it when the server's URL had none.
    url: String,
}

impl Scratch {
    async fn new(admin_url: &str) -> Self {
        let name = format!("jt_move_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(admin_url).await.unwrap();
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        admin.close().await.unwrap();
        let mut url = url::Url::parse(admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        if url.password().is_none() {
            url.set_password(Some(PASSWORD)).unwrap();
        }
        Self {
            admin_url: admin_url.to_string(),
            name,
            url: url.to_string(),
        }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut admin = PgConnection::connect(&admin_url).await?;
                    admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await?;
                    admin.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the scratch database {}: {dropped:?}", self.name);
        }
    }
}

/// Writes the app's configuration where the binary can read it.
fn config_file(app: &TestApp) -> PathBuf {
    let path = app.dir.path().join("jitgate.toml");
    std::fs::write(&path, &app.config_text).unwrap();
    path
}

async fn move_database(config: &Path, to: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["move-database", "--to", to, "--config"])
        .arg(config)
        .env("JITGATE_AUDIT_KEY", AUDIT_KEY)
        .env_remove("JITGATE_DATABASE_URL")
        .env_remove("PGPASSWORD")
        .env("JITGATE_LOG", "warn");
    tokio::process::Command::from(cmd).output().await.unwrap()
}

async fn sqlite(app: &TestApp) -> sqlx::SqliteConnection {
    SqliteConnectOptions::new()
        .filename(app.dir.path().join("jitgate.db"))
        .read_only(true)
        .connect()
        .await
        .unwrap()
}

/// Rows per jitgate table; a table that does not exist counts as empty.
async fn pg_counts(pg: &mut PgConnection) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(*table)
            .fetch_one(&mut *pg)
            .await
            .unwrap();
        let n = if exists {
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut *pg)
                .await
                .unwrap()
        } else {
            0
        };
        out.push((*table, n));
    }
    out
}

async fn sqlite_counts(conn: &mut sqlx::SqliteConnection) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        out.push((*table, n));
    }
    out
}

/// History on SQLite: approved requests (one needing two approvers), a denied one, a
/// pending one; then the app is stopped.
async fn history() -> TestApp {
    let mut app = TestApp::start().await;
    for i in 0..3 {
        let id = app.request(&format!("prod-db:read 1h moved {i}")).await;
        app.approve(APPROVER1, id).await;
        app.wait_grant(id, "active").await;
    }
    let two = app.request("payments:admin 30m needs two").await;
    app.approve(APPROVER1, two).await;
    app.approve(APPROVER2, two).await;
    app.wait_grant(two, "active").await;
    let denied = app.request("prod-db:write 1h denied").await;
    app.deny(APPROVER1, denied).await;
    app.wait_request(denied, "denied").await;
    app.request("prod-db:read 2h still pending").await;
    app.stop().await;
    app
}

#[test]
fn every_sqlite_migration_has_a_postgresql_twin_with_the_same_version() {
    let sqlite: Vec<(i64, String)> = jitgate::store::MIGRATOR
        .iter()
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    let postgres: Vec<(i64, String)> = jitgate::store::PG_MIGRATOR
        .iter()
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    assert_eq!(sqlite, postgres);
}

#[tokio::test]
async fn moving_to_postgres_keeps_every_row_and_the_audit_chain_and_refuses_a_second_time() {
    crate::sqlite_only!("the source of a move is a SQLite installation");
    let Some(server) = postgres_server().await else {
        return;
    };
    let app = history().await;
    let config = config_file(&app);
    let target = Scratch::new(&server).await;

    let out = move_database(&config, &target.url).await;
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(!all.contains(PASSWORD), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut src = sqlite(&app).await;
    let counts = sqlite_counts(&mut src).await;
    let count = |t: &str| counts.iter().find(|(n, _)| *n == t).unwrap().1;
    assert_eq!(count("requests"), 6);
    assert!(
        stdout.contains(&format!(
            "moved 6 requests, {} audit entries and every other row from {}",
            count("audit_log"),
            app.dir.path().join("jitgate.db").display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("/{}", target.name)), "{stdout}");
    assert!(stdout.contains("audit chain verified in PostgreSQL"), "{stdout}");
    assert!(stdout.contains("next: set [database] url = "), "{stdout}");

    // Every table, row for row; the audit log entry for entry, hashes identical.
    let mut pg = target.connect().await;
    assert_eq!(pg_counts(&mut pg).await, counts);
    assert!(count("decisions") >= 6 && count("audit_log") > 10, "{counts:?}");
    let audit_sql = "SELECT seq, at, actor, action, request_id, details, prev_hash, hash FROM audit_log ORDER BY seq";
    let in_sqlite: Vec<jitgate::audit::AuditEntry> = sqlx::query_as(audit_sql).fetch_all(&mut src).await.unwrap();
    let in_pg: Vec<jitgate::audit::AuditEntry> = sqlx::query_as(audit_sql).fetch_all(&mut pg).await.unwrap();
    assert_eq!(in_pg, in_sqlite);
    // Decisions keep SQLite's insertion order as `seq`.
    let order_sqlite: Vec<(i64, String)> =
        sqlx::query_as("SELECT request_id, approver_id FROM decisions ORDER BY rowid")
            .fetch_all(&mut src)
            .await
            .unwrap();
    let order_pg: Vec<(i64, String)> = sqlx::query_as("SELECT request_id, approver_id FROM decisions ORDER BY seq")
        .fetch_all(&mut pg)
        .await
        .unwrap();
    assert_eq!(order_pg, order_sqlite);
    // New rows get ids after the copied ones.
    for (table, column) in [("grants", "id"), ("jobs", "id"), ("outbox", "id"), ("decisions", "seq")] {
        let max: i64 = sqlx::query_scalar(&format!("SELECT MAX({column}) FROM {table}"))
            .fetch_one(&mut pg)
            .await
            .unwrap();
        let next: i64 = sqlx::query_scalar(&format!(
            "SELECT nextval(pg_get_serial_sequence('{table}', '{column}'))"
        ))
        .fetch_one(&mut pg)
        .await
        .unwrap();
        assert_eq!(next, max + 1, "{table}.{column}");
    }

    // Into the now non-empty database: refused, nothing changed.
    let out = move_database(&config, &target.url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the table requests in ") && stderr.contains("already has 6 rows"),
        "{stderr}"
    );
    assert!(stderr.contains("point --to at an empty one"), "{stderr}");
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    assert_eq!(pg_counts(&mut pg).await, counts);
    let again: Vec<jitgate::audit::AuditEntry> = sqlx::query_as(audit_sql).fetch_all(&mut pg).await.unwrap();
    assert_eq!(again, in_sqlite);
    pg.close().await.unwrap();
    src.close().await.unwrap();
}

#[tokio::test]
async fn a_tampered_audit_log_is_refused_and_nothing_is_moved() {
    crate::sqlite_only!("the source of a move is a SQLite installation");
    let Some(server) = postgres_server().await else {
        return;
    };
    let app = history().await;
    let config = config_file(&app);
    // An insider edits an entry, dropping the trigger that refuses it.
    let mut conn = SqliteConnectOptions::new()
        .filename(app.dir.path().join("jitgate.db"))
        .connect()
        .await
        .unwrap();
    conn.execute("DROP TRIGGER audit_log_no_update").await.unwrap();
    conn.execute("UPDATE audit_log SET actor = 'UFORGED' WHERE seq = 2")
        .await
        .unwrap();
    conn.close().await.unwrap();
    let target = Scratch::new(&server).await;

    let out = move_database(&config, &target.url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not verify"), "{stderr}");
    assert!(stderr.contains("audit entry 2"), "{stderr}");
    assert!(stderr.contains("nothing was moved"), "{stderr}");
    let mut pg = target.connect().await;
    assert!(pg_counts(&mut pg).await.iter().all(|(_, n)| *n == 0));
    pg.close().await.unwrap();
}

#[tokio::test]
async fn a_copy_that_differs_in_postgresql_is_rolled_back() {
    crate::sqlite_only!("the source of a move is a SQLite installation");
    let Some(server) = postgres_server().await else {
        return;
    };
    let app = history().await;
    let config = config_file(&app);
    let target = Scratch::new(&server).await;
    // The schema, with triggers that make the copy differ from what was sent.
    let mut pg = target.connect().await;
    jitgate::store::PG_MIGRATOR.run(&mut pg).await.unwrap();
    pg.execute(
        "CREATE FUNCTION lose_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END; $$; \
         CREATE TRIGGER lose_one BEFORE INSERT ON outbox FOR EACH ROW WHEN (NEW.id = 2) EXECUTE FUNCTION lose_row(); \
         CREATE FUNCTION forge() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN NEW.details := '{\"forged\":true}'; RETURN NEW; END; $$;",
    )
    .await
    .unwrap();

    let out = move_database(&config, &target.url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the copy's row counts differ (outbox: "), "{stderr}");
    assert!(pg_counts(&mut pg).await.iter().all(|(_, n)| *n == 0));

    pg.execute(
        "DROP TRIGGER lose_one ON outbox; \
         CREATE TRIGGER forge_one BEFORE INSERT ON audit_log FOR EACH ROW WHEN (NEW.seq = 3) EXECUTE FUNCTION forge();",
    )
    .await
    .unwrap();
    let out = move_database(&config, &target.url).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "the audit log copied to PostgreSQL does not verify (entry 3 in PostgreSQL differs from entry 3 in SQLite)"
        ),
        "{stderr}"
    );
    assert!(pg_counts(&mut pg).await.iter().all(|(_, n)| *n == 0));
    pg.close().await.unwrap();
}

#[tokio::test]
async fn a_database_from_an_older_build_is_refused_before_the_target_is_touched() {
    crate::sqlite_only!("the source of a move is a SQLite installation");
    let app = history().await;
    let config = config_file(&app);
    let mut conn = SqliteConnectOptions::new()
        .filename(app.dir.path().join("jitgate.db"))
        .connect()
        .await
        .unwrap();
    conn.execute("DELETE FROM _sqlx_migrations WHERE version = 8")
        .await
        .unwrap();
    conn.close().await.unwrap();

    // Nothing listens there: the refusal comes before any connection.
    let out = move_database(&config, &format!("postgres://jitgate:{PASSWORD}@127.0.0.1:1/jitgate")).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is from an older jitgate (migrations 8 not applied yet)"),
        "{stderr}"
    );
    assert!(stderr.contains("start this version's `jitgate serve` once"), "{stderr}");
    assert!(!text(&out).contains(PASSWORD));
}
