//! All SQL lives here, one file per thing stored (`requests`, `decisions`, `grants`,
//! `jobs`, `outbox`, `deliveries`, `replicas`; `batch` for statements whose shape depends
//! on the data, `report` for the reports' reads). Functions take a connection (or a
//! transaction) so that callers compose one state change, its audit entry and its Slack
//! messages into one commit. Every query is written once for SQLite and PostgreSQL;
//! `dialect` holds where they differ.

mod dialect;
mod group_commit;
pub mod replicas;
pub mod report;

pub use self::dialect::Backend;
pub use self::group_commit::{Creation, Creations};

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Any, Arguments, Encode, Executor, FromRow, Type};

/// A connection to whichever database `[database] url` names: SQLite or PostgreSQL. Every
/// query is written once, with `$1, $2, …` placeholders (both understand them); where
/// the two dialects differ, the difference is a function of [`Backend`].
pub type Conn = sqlx::AnyConnection;
/// A pool of [`Conn`]s.
pub type Pool = sqlx::AnyPool;

/// The SQLite schema, embedded in the binary and applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The PostgreSQL schema: the same versions as [`MIGRATOR`], in PostgreSQL's dialect.
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A database handle. On SQLite: one writer connection, so write transactions never
/// contend with each other inside the process, and a pool of readers (WAL lets them run
/// alongside). On PostgreSQL: pools of both, shared by every replica of the database;
/// write transactions ([`Db::begin`]) take one advisory lock, so they run one at a time
/// across all replicas, as SQLite's write lock makes them in one process.
#[derive(Clone, Debug)]
pub struct Db {
    pub write: Pool,
    pub read: Pool,
    pub backend: Backend,
    /// This process's id among the replicas sharing the database (new at every start):
    /// what it claims carries it (see [`replicas`]).
    pub replica: std::sync::Arc<str>,
}

/// A new replica id: random, short, and telling when it started.
fn new_replica_id() -> std::sync::Arc<str> {
    let started = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    format!("{started}-{:08x}", rand::random::<u32>()).into()
}

/// A write transaction.
pub type Tx = sqlx::Transaction<'static, Any>;

/// The options every SQLite connection uses, in production and tests alike (through
/// [`Db::open`] the same settings are applied to each connection of the pools).
pub fn connect_options(url: &str) -> anyhow::Result<SqliteConnectOptions> {
    let url = if url.starts_with("sqlite:") {
        url.to_string()
    } else {
        format!("sqlite://{url}")
    };
    let opts = SqliteConnectOptions::from_str(&url)
        .with_context(|| format!("database.url `{url}` is not a SQLite URL"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // An acknowledged request must survive a power cut, not only a crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // Deleted and overwritten content (an erased credential) is zeroed on the page
        // rather than left in free space; `Db::checkpoint` then clears the WAL.
        .pragma("secure_delete", "ON");
    Ok(opts)
}

/// What every SQLite connection of [`Db::open`] runs first: the settings of
/// [`connect_options`] (the `Any` pools take only a URL).
const SQLITE_WRITER_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;";
const SQLITE_READER_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

/// `file` as a `sqlite://` URL opened in `mode` (`rw` or `ro`).
pub fn sqlite_url(file: &std::path::Path, mode: &str) -> String {
    // sqlx percent-decodes the file name.
    let file = file
        .to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    format!("sqlite://{file}?mode={mode}")
}

impl Db {
    /// Opens (creating a missing SQLite file) and migrates the database.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        match Backend::of_url(url) {
            Backend::Sqlite => Self::open_sqlite(url).await,
            Backend::Postgres => Self::open_postgres(url).await,
        }
    }

    async fn open_sqlite(url: &str) -> anyhow::Result<Self> {
        use sqlx::{ConnectOptions, Connection};
        let opts = connect_options(url)?;
        // Creates the file and switches it to WAL once, with every setting checked.
        opts.connect()
            .await
            .with_context(|| format!("opening the database {url}"))?
            .close()
            .await
            .with_context(|| format!("opening the database {url}"))?;
        let file = opts.get_filename().to_path_buf();
        let write = AnyPoolOptions::new()
            // An in-process SQLite connection cannot go stale; testing it costs a round trip
            // to its thread on every acquire.
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| Box::pin(async move { conn.execute(SQLITE_WRITER_PRAGMAS).await.map(|_| ()) }))
            .connect(&sqlite_url(&file, "rw"))
            .await
            .with_context(|| format!("opening the database {url}"))?;
        MIGRATOR
            .run(&write)
            .await
            .with_context(|| format!("migrating the database {url}"))?;
        let read = AnyPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| Box::pin(async move { conn.execute(SQLITE_READER_PRAGMAS).await.map(|_| ()) }))
            .connect(&sqlite_url(&file, "ro"))
            .await
            .with_context(|| format!("opening the database {url} for reading"))?;
        Ok(Self {
            write,
            read,
            backend: Backend::Sqlite,
            replica: new_replica_id(),
        })
    }

    async fn open_postgres(url: &str) -> anyhow::Result<Self> {
        let shown = crate::config::postgres::DatabaseUrl(url.to_string()).redacted();
        let write = AnyPoolOptions::new()
            .max_connections(PG_POOL)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .with_context(|| format!("connecting to the database {shown}"))?;
        // sqlx takes an advisory lock while it migrates: replicas starting together
        // apply each migration once.
        PG_MIGRATOR
            .run(&write)
            .await
            .with_context(|| format!("migrating the database {shown}"))?;
        let read = AnyPoolOptions::new()
            .max_connections(PG_POOL)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .with_context(|| format!("connecting to the database {shown} for reading"))?;
        Ok(Self {
            write,
            read,
            backend: Backend::Postgres,
            replica: new_replica_id(),
        })
    }

    /// Fails, naming the file, when the configured SQLite database does not exist: for
    /// commands that only read what `serve` stored (`audit`, `reconcile`), opening a
    /// missing file would create an empty database and report on nothing. A PostgreSQL
    /// database is checked by connecting to it.
    pub fn ensure_exists(config: &crate::config::Config) -> anyhow::Result<()> {
        if Backend::of_url(&config.database.url) == Backend::Postgres {
            return Ok(());
        }
        Self::existing_file(config).map(|_| ())
    }

    /// The SQLite database file of `config` (see [`Db::ensure_exists`]).
    pub fn existing_file(config: &crate::config::Config) -> anyhow::Result<std::path::PathBuf> {
        let source = if std::env::var("JITGATE_DATABASE_URL").is_ok_and(|v| !v.trim().is_empty()) {
            "JITGATE_DATABASE_URL".to_string()
        } else {
            format!(
                "database.url in {}; a relative path there is resolved against the file's directory",
                config.path.display()
            )
        };
        if Backend::of_url(&config.database.url) == Backend::Postgres {
            anyhow::bail!(
                "this command works on a SQLite file, and the database is PostgreSQL ({source}); \
                 see the README, \"Backups\", for PostgreSQL"
            );
        }
        let Some(file) = config.database.file() else {
            anyhow::bail!(
                "`{}` is an in-memory database ({source}); there is nothing stored to read",
                config.database.url
            );
        };
        if !file.exists() {
            anyhow::bail!(
                "the database {} does not exist ({source}); point it at the file `jitgate serve` uses \
                 (serve creates it when it first starts)",
                file.display()
            );
        }
        Ok(file)
    }

    /// Starts a write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock up
    /// front, so a read-then-write transaction cannot fail half-way with "database is
    /// locked"; on PostgreSQL the write lock is an advisory lock held until it ends.
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        self.write.begin_with(self.backend.begin_write()).await
    }

    /// Copies the WAL into the database file and truncates it to zero bytes, so content
    /// overwritten since (an erased credential) is left in no file. Called after a
    /// credential is erased, at start-up and at shutdown. (PostgreSQL keeps its own WAL;
    /// see the README on erased credentials there.)
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        if self.backend == Backend::Postgres {
            return Ok(());
        }
        for attempt in 0..50 {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.write)
                .await
                .context("checkpointing the database's write-ahead log")?;
            if busy == 0 {
                return Ok(());
            }
            // A reader still holds an older snapshot; it finishes within milliseconds.
            tokio::time::sleep(Duration::from_millis(10 * (attempt + 1).min(10))).await;
        }
        anyhow::bail!("checkpointing the database's write-ahead log: readers kept it busy")
    }

    /// Closes both pools, waiting for connections to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Connections of each PostgreSQL pool (writers, readers) per replica. With the access
/// locks' pool (`[jobs] concurrency` + 4) and the wake-up listener, a replica uses at
/// most 2 × 6 + concurrency + 5 connections (25 by default).
pub const PG_POOL: u32 = 6;

/// Implements storing `$enum` as the text of each variant (snake_case, as the schema's
/// CHECK constraints spell them), for both backends through sqlx's `Any` driver.
macro_rules! stored_as_text {
    ($enum:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $enum {
            /// How the database stores it.
            pub fn as_stored(self) -> &'static str {
                match self {
                    $($enum::$variant => $text),+
                }
            }
        }
        impl sqlx::Type<Any> for $enum {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <&str as sqlx::Type<Any>>::type_info()
            }
        }
        impl<'q> sqlx::Encode<'q, Any> for $enum {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, Any>>::encode(self.as_stored(), buf)
            }
        }
        impl<'r> sqlx::Decode<'r, Any> for $enum {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                match <&str as sqlx::Decode<'r, Any>>::decode(value)? {
                    $($text => Ok($enum::$variant),)+
                    other => Err(format!("`{other}` is not a stored {}", stringify!($enum)).into()),
                }
            }
        }
    };
}

mod batch;
mod decisions;
mod deliveries;
mod grants;
mod jobs;
mod outbox;
mod requests;

pub use self::batch::*;
pub use self::decisions::*;
pub use self::deliveries::*;
pub use self::grants::*;
pub use self::jobs::*;
pub use self::outbox::*;
pub use self::requests::*;

// ---- the database's health ------------------------------------------------------

/// Writes the scheduler's heartbeat and checkpoints the WAL into the database file
/// (passively: it waits for no reader), so a database that can no longer take writes in
/// either file fails here. Run it on the writer connection.
pub async fn heartbeat(conn: &mut Conn, now: i64) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO heartbeat (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if Backend::of(conn) == Backend::Sqlite {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Whether every migration this build knows has been applied.
pub async fn migrations_applied(conn: &mut Conn) -> sqlx::Result<bool> {
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *conn)
        .await?;
    Ok(applied as usize >= MIGRATOR.iter().count())
}

/// What `/metrics` reports of the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Grants in force per resource (only resources with at least one live grant).
    pub active_by_resource: Vec<(String, i64)>,
    /// Slack messages waiting in the outbox, and when the oldest was written.
    pub outbox_backlog: i64,
    pub outbox_oldest_at: Option<i64>,
}

/// Reads [`Observed`], each part on its partial index (so history size does not matter).
pub async fn observed(conn: &mut Conn) -> sqlx::Result<Observed> {
    let active_by_resource: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resource, COUNT(*) FILTER (WHERE state = 'active') FROM grants WHERE state IN ('granting', 'active') GROUP BY resource",
    )
    .fetch_all(&mut *conn)
    .await?;
    let (outbox_backlog, outbox_oldest_at): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = 'pending'")
            .fetch_one(&mut *conn)
            .await?;
    Ok(Observed {
        active_by_resource,
        outbox_backlog,
        outbox_oldest_at,
    })
}

#[cfg(test)]
mod tests {
    use super::jobs::claim_sql;
    use super::*;

    fn new_request(i: i64) -> NewRequest {
        NewRequest {
            requester_id: format!("U{i}"),
            team_id: "T1".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 3600,
            reason: format!("reason {i}"),
            origin_channel: "C1".into(),
            approval_channel: "C2".into(),
            approvals_required: 1,
            created_at: 1_700_000_000_000 + i,
            kind: RequestKind::Access,
            extends_request_id: None,
            response_url: None,
            delivery_key: None,
        }
    }

    #[tokio::test]
    async fn a_delivery_key_is_first_once_until_it_expires_and_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db").display().to_string()).await.unwrap();
        let mut conn = db.write.acquire().await.unwrap();
        assert!(first_delivery(&mut conn, "event", "Ev1", 1_000, 5_000).await.unwrap());
        assert!(!first_delivery(&mut conn, "event", "Ev1", 2_000, 6_000).await.unwrap());
        // Kinds are separate namespaces.
        assert!(first_delivery(&mut conn, "command", "Ev1", 2_000, 6_000).await.unwrap());
        set_delivery_reply(&mut conn, "command", "Ev1", "JIT-1 is waiting")
            .await
            .unwrap();
        assert_eq!(
            earlier_delivery(&mut conn, "command", "Ev1").await.unwrap(),
            Some((Some("JIT-1 is waiting".to_string()), None))
        );
        assert_eq!(earlier_delivery(&mut conn, "command", "Ev2").await.unwrap(), None);
        assert_eq!(purge_deliveries(&mut conn, 4_999).await.unwrap(), 0);
        assert_eq!(purge_deliveries(&mut conn, 5_000).await.unwrap(), 1);
        assert!(first_delivery(&mut conn, "event", "Ev1", 7_000, 9_000).await.unwrap());
        drop(conn);
        db.close().await;
    }

    #[tokio::test]
    async fn a_failed_batch_writes_nothing_and_leaves_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db").display().to_string()).await.unwrap();
        let news: Vec<NewRequest> = (1..=3).map(new_request).collect();
        let refs: Vec<&NewRequest> = news.iter().collect();
        let mut writer = db.write.acquire().await.unwrap();
        let (batch, heads) = BatchTx::begin(&mut writer).await.unwrap();
        // The third row reuses the first one's id: the statement fails after two rows of
        // another table went in.
        let ids = [heads.next_request_id, heads.next_request_id + 1, heads.next_request_id];
        let jobs = [NewJob {
            request_id: 1,
            kind: JobKind::Remind,
            run_at: 1,
            created_at: 1,
        }];
        let mut inserts = Inserts::default();
        inserts.jobs(&jobs).requests(&ids, &refs);
        assert!(batch.commit(inserts).await.is_err());
        drop(writer);

        let mut tx = db.begin().await.expect("the writer is free again");
        let (requests, jobs): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM requests), (SELECT COUNT(*) FROM jobs)")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!((requests, jobs), (0, 0));
        insert_request(&mut tx, &new_request(1)).await.unwrap();
        tx.commit().await.unwrap();
        db.close().await;
    }

    #[tokio::test]
    async fn claiming_due_jobs_reads_only_the_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db").display().to_string()).await.unwrap();
        for which in [Claim::Revokes, Claim::AllButRevokes] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {}", claim_sql(Backend::Sqlite, which)))
                    .bind(0)
                    .bind(1)
                    .fetch_all(&db.read)
                    .await
                    .unwrap();
            let plan: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            assert!(
                plan.iter().any(|p| p.contains("USING INDEX jobs_due"))
                    && !plan.iter().any(|p| p.contains("autoindex")),
                "{which:?}: {plan:?}"
            );
        }
        db.close().await;
    }

    #[tokio::test]
    async fn many_rows_at_once_match_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db").display().to_string()).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let first = insert_request(&mut tx, &new_request(0)).await.unwrap();
        crate::audit::append(
            &crate::audit::AuditKey::new("store-test-audit-key-0123456789abcdef").unwrap(),
            &mut tx,
            1,
            "U0",
            "request.created",
            Some(first),
            serde_json::json!({}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();

        // More than one statement's worth, and not a multiple of it.
        let news: Vec<NewRequest> = (1..=300).map(new_request).collect();
        let refs: Vec<&NewRequest> = news.iter().collect();
        let mut writer = db.write.acquire().await.unwrap();
        let (batch, heads) = BatchTx::begin(&mut writer).await.unwrap();
        let mut conn = db.read.acquire().await.unwrap();
        assert_eq!(heads, batch_heads(&mut conn).await.unwrap());
        assert_eq!((heads.next_request_id, heads.audit_seq), (first + 1, 1));
        let ids: Vec<i64> = (heads.next_request_id..).take(300).collect();
        let mut inserts = Inserts::default();
        inserts.requests(&ids, &refs);
        batch.commit(inserts).await.unwrap();
        drop((conn, writer));

        let mut tx = db.begin().await.unwrap();
        let jobs: Vec<NewJob> = ids
            .iter()
            .map(|&id| NewJob {
                request_id: id,
                kind: JobKind::ExpireRequest,
                run_at: 5,
                created_at: 1,
            })
            .collect();
        let mut inserts = Inserts::default();
        // A second job of the same kind for a request is ignored, as with insert_job.
        inserts.jobs(&jobs).jobs(&jobs[..3]);
        inserts.execute(&mut tx).await.unwrap();
        let cards: Vec<(Outgoing, i64)> = ids.iter().map(|&id| (Outgoing::post_card(id), 7)).collect();
        enqueue_all(&mut tx, &cards).await.unwrap();
        tx.commit().await.unwrap();

        let mut conn = db.read.acquire().await.unwrap();
        for (i, id) in ids.iter().enumerate() {
            let r = get_request(&mut conn, *id).await.unwrap().unwrap();
            assert_eq!(
                (r.requester_id.as_str(), r.state),
                (format!("U{}", i + 1).as_str(), RequestState::Pending)
            );
            assert_eq!(r.reason, format!("reason {}", i + 1));
            assert!(job_of(&mut conn, *id, JobKind::ExpireRequest).await.unwrap().is_some());
        }
        let (jobs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(jobs, 300);
        let due = due_outbox(&mut conn, 7, 1000, "r1").await.unwrap();
        assert_eq!(due.len(), 300);
        assert!(due.windows(2).all(|w| w[0].id < w[1].id), "in the order written");
        drop(conn);
        db.close().await;
    }
}
