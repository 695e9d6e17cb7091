//! `jitgate backup` while the bot runs, the README's restore procedure, and commands that
//! read the database refusing one that does not exist.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes the app's configuration where the binary can read it.
fn config_file(app: &TestApp) -> std::path::PathBuf {
    let path = app.dir.path().join("jitgate.toml");
    std::fs::write(&path, &app.config_text).unwrap();
    path
}

/// `jitgate <args> --config <config>`, without the caller's environment overrides.
fn jitgate(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env_remove("JITGATE_DATABASE_URL")
        .env("JITGATE_LOG", "warn");
    cmd
}

async fn run(cmd: Command) -> Output {
    tokio::process::Command::from(cmd).output().await.unwrap()
}

/// Rows of `sql` (one integer) in the SQLite file at `path`, opened read-only.
async fn count_in(path: &Path, sql: &str) -> i64 {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    n
}

#[tokio::test]
async fn backup_while_serving_is_a_verified_consistent_copy_in_one_file() {
    crate::sqlite_only!("jitgate backup copies a SQLite file; PostgreSQL is backed up with pg_dump");
    let app = TestApp::start().await;
    let config = config_file(&app);
    let first = app.request("prod-db:read 1h before the backup").await;
    app.approve(APPROVER1, first).await;
    app.wait_grant(first, "active").await;

    // Requests keep coming while the copy is made.
    let dest = app.dir.path().join("backups/jitgate-copy.db");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let backup = run(jitgate(&config, &["backup", dest.to_str().unwrap()]));
    let traffic = async {
        for i in 0..20 {
            // Several people: one person may have only a few requests pending at once.
            app.request_as(
                &format!("UTRAFFIC{}", i % 5),
                &format!("prod-db:read 1h during the backup {i}"),
            )
            .await;
        }
    };
    let (out, ()) = tokio::join!(backup, traffic);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let db = app.dir.path().join("jitgate.db");
    assert!(
        stdout.contains(&format!("backed up {} to {}", db.display(), dest.display())),
        "{stdout}"
    );
    assert!(stdout.contains("integrity check of the copy: ok"), "{stdout}");
    assert!(stdout.contains("audit log of the copy intact"), "{stdout}");

    // One self-contained file: no WAL beside it, and nothing left over.
    let leftovers: Vec<String> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["jitgate-copy.db"]);
    let requests = count_in(&dest, "SELECT COUNT(*) FROM requests").await;
    assert!((1..=21).contains(&requests), "{requests} requests in the copy");
    // One snapshot: every request in the copy has its audit entry, and no entry lacks
    // its request.
    assert_eq!(
        count_in(&dest, "SELECT COUNT(*) FROM audit_log WHERE action = 'request.created'").await,
        requests
    );
    assert_eq!(
        count_in(&dest, "SELECT COUNT(*) FROM grants WHERE state = 'active'").await,
        1
    );

    // The copy is a jitgate database `audit verify` accepts (pointed at it by the
    // environment override, as an operator would check a backup).
    let mut verify = jitgate(&config, &["audit", "verify"]);
    verify.env("JITGATE_DATABASE_URL", format!("sqlite://{}", dest.display()));
    let out = run(verify).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("audit log intact"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn backup_does_not_replace_a_file_unless_forced() {
    crate::sqlite_only!("jitgate backup copies a SQLite file; PostgreSQL is backed up with pg_dump");
    let app = TestApp::start().await;
    let config = config_file(&app);
    app.request("prod-db:read 1h something").await;
    let dest = app.dir.path().join("precious.db");
    std::fs::write(&dest, "not a backup").unwrap();

    let out = run(jitgate(&config, &["backup", dest.to_str().unwrap()])).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{} already exists; choose another path, or pass --force to replace it",
            dest.display()
        )),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "not a backup");

    let out = run(jitgate(&config, &["backup", "--force", dest.to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count_in(&dest, "SELECT COUNT(*) FROM requests").await, 1);
    let partials = std::fs::read_dir(app.dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("partial"))
        .count();
    assert_eq!(partials, 0);
}

#[tokio::test]
async fn restoring_a_backup_as_the_readme_says_brings_its_state_back_and_the_bot_starts() {
    crate::sqlite_only!("jitgate backup copies a SQLite file; PostgreSQL is backed up with pg_dump");
    let mut app = TestApp::start().await;
    let config = config_file(&app);
    let kept = app.request("prod-db:read 1h before the backup").await;
    let backup = app.dir.path().join("jitgate-backup.db");
    let out = run(jitgate(&config, &["backup", backup.to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out));
    let lost = app.request("prod-db:read 1h after the backup").await;

    // The README's procedure: stop; move the database aside and delete its -wal and -shm
    // files; copy the backup in; check it; start.
    app.stop().await;
    let db = app.dir.path().join("jitgate.db");
    std::fs::rename(&db, app.dir.path().join("jitgate.db.before-restore")).unwrap();
    for sidecar in ["jitgate.db-wal", "jitgate.db-shm"] {
        let _ = std::fs::remove_file(app.dir.path().join(sidecar));
    }
    std::fs::copy(&backup, &db).unwrap();
    let out = run(jitgate(&config, &["audit", "verify"])).await;
    assert!(out.status.success(), "{}", text(&out));
    app.boot().await;

    assert_eq!(app.request_state(kept).await, "pending");
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM requests WHERE id = {lost}"))
            .await,
        0
    );
    // It works on: a new request, and the audit log still verifies.
    let next = app.request("prod-db:read 1h after the restore").await;
    app.wait_request(next, "pending").await;
    let out = run(jitgate(&config, &["audit", "verify"])).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn commands_that_read_the_database_refuse_a_missing_one_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jitgate.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"sqlite://data/jitgate.db\"\n\n[[resources]]\nname = \"demo\"\n\
         approval_channel = \"C0APPROVALS\"\napprovers = [\"U0APPROVER\"]\nadapter = \"demo\"\n\n\
         [adapters.demo]\ntype = \"noop\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/jitgate.db");
    let dest = dir.path().join("copy.db");
    for args in [
        vec!["audit", "verify"],
        vec!["audit", "export"],
        vec!["reconcile", "--dry-run"],
        vec!["reconcile"],
        vec!["backup", dest.to_str().unwrap()],
    ] {
        let out = jitgate(&config, &args).current_dir("/").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("the database {} does not exist", db.display())),
            "{args:?}: {err}"
        );
        assert!(!db.exists(), "{args:?} created the database");
        assert!(!dest.exists());
    }
    // check-config names the file the commands looked for.
    let out = jitgate(&config, &["check-config"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("database: {}", db.display())),
        "{}",
        text(&out)
    );
}
