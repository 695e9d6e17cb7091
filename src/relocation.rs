//! `jitgate move-database --to postgres://…`: moves an installation's SQLite database,
//! with all its history, into an empty PostgreSQL database, and proves there that nothing
//! was lost or changed.
//!
//! The source is read on a read-only connection, in one read transaction (one snapshot),
//! and only after its migrations are found to be exactly this build's and its audit chain
//! verifies. The target gets this build's PostgreSQL schema (`migrations/postgres/`, the
//! same versions as the SQLite ones) and must hold no jitgate rows. Every table is copied
//! in one PostgreSQL transaction, ids kept (`decisions` gets SQLite's rowid as `seq`), the
//! identity sequences are moved past the copied ids, and the transaction commits only if
//! every table has as many rows as the source, the audit chain verifies in PostgreSQL with
//! the installation's key, entry by entry identical to the source, with the same head, and
//! nobody wrote the SQLite file meanwhile. Otherwise it rolls back and says what differed.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnection, SqlitePoolOptions, SqliteRow};
use sqlx::{Postgres, QueryBuilder, Row};

use crate::audit::{self, AuditEntry, AuditKey, ChainError};
use crate::config::postgres::DatabaseUrl;
use crate::config::Config;
use crate::store::{self, Db};

/// Every table of the schema, parents before the tables that reference them, each with the
/// order its rows are copied in. `_sqlx_migrations` is not copied: the target has its own.
const TABLES: &[(&str, &str)] = &[
    ("requests", "id"),
    ("decisions", "rowid"),
    ("grants", "id"),
    ("jobs", "id"),
    ("outbox", "id"),
    ("break_glass", "request_id"),
    ("audit_log", "seq"),
    ("deliveries", "kind, key"),
    ("heartbeat", "id"),
];

/// Tables that are not history and are left behind: `replicas` holds the heartbeats of
/// the processes that ran on the SQLite file (the replicas on PostgreSQL write their own).
const NOT_MOVED: &[&str] = &["replicas"];

/// Identity columns whose sequence must continue after the copied ids.
const IDENTITIES: &[(&str, &str)] = &[("grants", "id"), ("jobs", "id"), ("outbox", "id"), ("decisions", "seq")];

/// Most rows in one INSERT (PostgreSQL takes at most 65,535 parameters per statement).
const BATCH_ROWS: usize = 4000;

/// Audit entries compared and verified at a time.
const AUDIT_BATCH: i64 = 10_000;

/// What a move did.
#[derive(Debug, Clone)]
pub struct Moved {
    /// The SQLite file.
    pub source: PathBuf,
    /// The target, without its password or options.
    pub target: String,
    /// Whether `target` is the URL as given (false: the password or options were left out).
    pub target_whole: bool,
    /// Rows per table, equal in both databases.
    pub rows: Vec<(&'static str, i64)>,
    /// Audit entries verified in PostgreSQL.
    pub audit_entries: i64,
    /// The audit chain's head: seq and hash.
    pub head: (i64, String),
    pub elapsed: Duration,
}

impl Moved {
    fn rows_of(&self, table: &str) -> i64 {
        self.rows.iter().find(|(t, _)| *t == table).map_or(0, |(_, n)| *n)
    }
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "moved {} requests, {} audit entries and every other row from {} to {} in {:.1}s",
            self.rows_of("requests"),
            self.rows_of("audit_log"),
            self.source.display(),
            self.target,
            self.elapsed.as_secs_f64()
        )?;
        let rows: Vec<String> = self.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(f, "  rows, the same in both databases: {}", rows.join(", "))?;
        let (seq, hash) = &self.head;
        writeln!(
            f,
            "  audit chain verified in PostgreSQL ({} entries, head {seq}:{}…), the same head as the SQLite file",
            self.audit_entries,
            hash.get(..16).unwrap_or(hash)
        )?;
        let given = if self.target_whole {
            ""
        } else {
            ", with the password and options given to --to,"
        };
        write!(
            f,
            "next: set [database] url = \"{}\"{given} (or JITGATE_DATABASE_URL) and start jitgate serve; \
             keep {} as a backup until you have checked the new one",
            self.target,
            self.source.display()
        )
    }
}

/// Moves the SQLite database of `config` into the empty PostgreSQL database at `to`.
/// No message carries the URL's password.
pub async fn run(config: &Config, to: &str) -> anyhow::Result<Moved> {
    let url = DatabaseUrl(to.trim().to_string());
    let secrets = url.secrets();
    move_to(config, &url).await.map_err(|e| {
        let text = secrets
            .iter()
            .fold(format!("{e:#}"), |m, s| m.replace(s.as_str(), "***"));
        anyhow::anyhow!(text)
    })
}

async fn move_to(config: &Config, url: &DatabaseUrl) -> anyhow::Result<Moved> {
    let started = Instant::now();
    let target = url.redacted();
    if !crate::config::is_postgres_url(url.expose()) {
        bail!("--to must be a PostgreSQL URL, like postgres://jitgate@db.example.com:5432/jitgate");
    }
    let source = Db::existing_file(config)?;
    // The chain is verified on both sides with the audit key: without it there is no move.
    let key = audit::load_key(config.audit.key_file.as_deref(), &|n| std::env::var(n).ok())
        .context("`jitgate move-database` verifies the audit log before and after the move")?;

    let sqlite = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            store::connect_options(&config.database.url)?
                .create_if_missing(false)
                .read_only(true),
        )
        .await
        .with_context(|| format!("opening the database {}", source.display()))?;
    let mut src = sqlite.acquire().await?;
    // Changes with every commit another connection makes: a running `serve` is caught.
    let version_before = data_version(&mut src).await?;
    // One read transaction: every table is read from the same snapshot. Begun by hand,
    // not as a `Transaction`, so the connection stays usable for `data_version` after it.
    sqlx::query("BEGIN").execute(&mut *src).await?;
    check_migrations(&mut src, &source).await?;
    // The chain is checked through the store's own connection type; `serve` writing
    // meanwhile is caught by the data version below.
    sqlx::any::install_default_drivers();
    let mut chain_conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&store::sqlite_url(&source, "ro"))
        .await
        .with_context(|| format!("opening the database {}", source.display()))?;
    let verified = audit::verify_chain(&key, &mut chain_conn)
        .await
        .context("reading the audit log")?;
    let _ = sqlx::Connection::close(chain_conn).await;
    match verified {
        Ok(_) => {}
        Err(e) => bail!(
            "the audit log of {} does not verify ({e}); nothing was moved. Check it with `jitgate audit verify` \
             and restore a verified backup before moving",
            source.display()
        ),
    }
    check_tables(&mut src).await?;

    let pg = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url.expose())
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let moved = async {
        // Before the schema is created or brought up to date: a refused target is left as
        // it was.
        refuse_rows(&mut *pg.acquire().await?, &target).await?;
        store::PG_MIGRATOR
            .run(&pg)
            .await
            .with_context(|| format!("creating jitgate's tables in {target}; point --to at an empty database"))?;
        let mut tx = pg.begin().await?;
        let copied = copy_and_check(&mut src, &mut tx, &key, &target).await;
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        sqlx::query("ROLLBACK").execute(&mut *src).await?;
        if data_version(&mut src).await? != version_before {
            let _ = tx.rollback().await;
            bail!(
                "{} changed while it was copied (is jitgate serve running?); nothing was moved. \
                 Stop jitgate serve and run move-database again",
                source.display()
            );
        }
        tx.commit()
            .await
            .with_context(|| format!("committing the copy in {target}"))?;
        // Fresh statistics for the planner: the tables were filled in one go.
        if let Err(e) = sqlx::query("ANALYZE").execute(&pg).await {
            tracing::warn!(error = %e, "the copy is committed, but ANALYZE failed; PostgreSQL's autovacuum will do it");
        }
        anyhow::Ok(copied)
    }
    .await;
    pg.close().await;
    drop(src);
    sqlite.close().await;
    let (rows, audit_entries, head) = moved?;
    Ok(Moved {
        source,
        target_whole: target == url.expose(),
        target,
        rows,
        audit_entries,
        head,
        elapsed: started.elapsed(),
    })
}

async fn data_version(conn: &mut SqliteConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("PRAGMA data_version").fetch_one(conn).await?)
}

/// The source's applied migrations must be exactly this build's: the PostgreSQL schema
/// made for the target is this build's, version for version.
async fn check_migrations(src: &mut SqliteConnection, source: &std::path::Path) -> anyhow::Result<()> {
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *src)
        .await
        .with_context(|| format!("reading the migrations applied to {}", source.display()))?;
    let known: Vec<i64> = store::MIGRATOR.iter().map(|m| m.version).collect();
    let list = |v: Vec<i64>| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let newer: Vec<i64> = applied.iter().copied().filter(|v| !known.contains(v)).collect();
    if !newer.is_empty() {
        bail!(
            "{} was migrated by a newer jitgate (migrations {} are unknown to this build); \
             move it with the jitgate version that serves it",
            source.display(),
            list(newer)
        );
    }
    let missing: Vec<i64> = known.iter().copied().filter(|v| !applied.contains(v)).collect();
    if !missing.is_empty() {
        bail!(
            "{} is from an older jitgate (migrations {} not applied yet); start this version's \
             `jitgate serve` once on it (it applies them), stop it, and run move-database again",
            source.display(),
            list(missing)
        );
    }
    Ok(())
}

/// The source must hold exactly the tables this build copies: a table it does not know
/// would be left behind.
async fn check_tables(src: &mut SqliteConnection) -> anyhow::Result<()> {
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *src)
    .await?;
    let unknown: Vec<&str> = found
        .iter()
        .map(String::as_str)
        .filter(|t| !TABLES.iter().any(|(k, _)| k == t) && !NOT_MOVED.contains(t))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "the database has tables this build cannot move ({}); nothing was moved",
            unknown.join(", ")
        );
    }
    Ok(())
}

/// What the copy found: rows per table, audit entries verified, the chain's head.
type Copied = (Vec<(&'static str, i64)>, i64, (i64, String));

async fn copy_and_check(
    src: &mut SqliteConnection,
    pg: &mut PgConnection,
    key: &AuditKey,
    target: &str,
) -> anyhow::Result<Copied> {
    // Again inside the transaction, now that the tables exist.
    refuse_rows(pg, target).await?;
    for (table, order) in TABLES {
        copy_table(src, pg, table, order)
            .await
            .with_context(|| format!("copying the table {table}"))?;
    }
    for (table, column) in IDENTITIES {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) \
             FROM {table}"
        ))
        .execute(&mut *pg)
        .await
        .with_context(|| format!("moving the sequence of {table}.{column} past the copied ids"))?;
    }

    let mut rows = Vec::new();
    let mut differ = Vec::new();
    for (table, _) in TABLES {
        let query = format!("SELECT COUNT(*) FROM {table}");
        let (in_sqlite,): (i64,) = sqlx::query_as(&query).fetch_one(&mut *src).await?;
        let (in_pg,): (i64,) = sqlx::query_as(&query).fetch_one(&mut *pg).await?;
        if in_sqlite != in_pg {
            differ.push(format!("{table}: {in_sqlite} in SQLite, {in_pg} in PostgreSQL"));
        }
        rows.push((*table, in_sqlite));
    }
    if !differ.is_empty() {
        bail!(
            "the copy's row counts differ ({}); nothing was moved",
            differ.join("; ")
        );
    }

    let entries = match verify_copied_chain(key, src, pg).await? {
        Ok(n) => n,
        Err(why) => bail!("the audit log copied to PostgreSQL does not verify ({why}); nothing was moved"),
    };
    let source_head: (i64, String) = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *src)
        .await?
        .unwrap_or_else(|| (0, audit::GENESIS.to_string()));
    let pg_head: (i64, String) = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *pg)
        .await?
        .unwrap_or_else(|| (0, audit::GENESIS.to_string()));
    if pg_head != source_head {
        bail!(
            "the audit log's head differs: entry {} ({}) in SQLite, entry {} ({}) in PostgreSQL; nothing was moved",
            source_head.0,
            source_head.1,
            pg_head.0,
            pg_head.1
        );
    }
    Ok((rows, entries, source_head))
}

/// Refuses a target where a jitgate table holds rows (a table not there yet is empty).
async fn refuse_rows(pg: &mut PgConnection, target: &str) -> anyhow::Result<()> {
    for (table, _) in TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(*table)
            .fetch_one(&mut *pg)
            .await?;
        if !exists {
            continue;
        }
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *pg)
            .await?;
        if n > 0 {
            bail!(
                "the table {table} in {target} already has {n} rows; move-database moves only into an empty \
                 database, and changed nothing: point --to at an empty one (CREATE DATABASE …)"
            );
        }
    }
    Ok(())
}

/// One column's type in a STRICT table.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
}

enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

/// Copies one table, its columns as the source declares them (`decisions` also gets its
/// rowid as `seq`), in `order`, a batch of rows per INSERT.
async fn copy_table(src: &mut SqliteConnection, pg: &mut PgConnection, table: &str, order: &str) -> anyhow::Result<()> {
    let declared: Vec<(String, String)> = sqlx::query_as("SELECT name, type FROM pragma_table_info(?) ORDER BY cid")
        .bind(table)
        .fetch_all(&mut *src)
        .await?;
    let mut columns = Vec::new();
    for (name, ty) in declared {
        let kind = match ty.to_ascii_uppercase().as_str() {
            "INTEGER" => Kind::Int,
            "TEXT" => Kind::Text,
            other => bail!("{table}.{name} has the type {other}, which this build cannot move"),
        };
        columns.push((format!("\"{name}\""), kind));
    }
    let mut select: Vec<String> = columns.iter().map(|(c, _)| c.clone()).collect();
    if table == "decisions" {
        // PostgreSQL has no rowid; `seq` keeps the order SQLite's rowid gave.
        select.push("rowid AS seq".into());
        columns.push(("seq".into(), Kind::Int));
    }
    let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
    let insert = format!("INSERT INTO {table} ({}) ", names.join(", "));
    let batch_rows = BATCH_ROWS.min(65_535 / columns.len());

    let query = format!("SELECT {} FROM {table} ORDER BY {order}", select.join(", "));
    let mut stream = sqlx::query(&query).fetch(&mut *src);
    let mut batch: Vec<Vec<Value>> = Vec::with_capacity(batch_rows);
    loop {
        let row: Option<SqliteRow> = stream.try_next().await?;
        if let Some(row) = &row {
            let mut values = Vec::with_capacity(columns.len());
            for (i, (_, kind)) in columns.iter().enumerate() {
                values.push(match kind {
                    Kind::Int => Value::Int(row.try_get(i)?),
                    Kind::Text => Value::Text(row.try_get(i)?),
                });
            }
            batch.push(values);
        }
        if batch.len() == batch_rows || (row.is_none() && !batch.is_empty()) {
            let mut q = QueryBuilder::<Postgres>::new(&insert);
            q.push_values(&batch, |mut b, values| {
                for v in values {
                    match v {
                        Value::Int(x) => b.push_bind(*x),
                        Value::Text(x) => b.push_bind(x.as_deref()),
                    };
                }
            });
            q.build().execute(&mut *pg).await?;
            batch.clear();
        }
        if row.is_none() {
            return Ok(());
        }
    }
}

/// Walks the audit log in PostgreSQL as `audit::verify_chain` walks SQLite's: sequence
/// numbers from 1 without a gap, every link, every keyed hash. Each entry must also be
/// identical to the source's (whose whole chain `verify_chain` checked before the copy):
/// that covers the plain SHA-256 entries of a log older than keying, which only the
/// source's check recomputes. Returns the entries verified.
async fn verify_copied_chain(
    key: &AuditKey,
    src: &mut SqliteConnection,
    pg: &mut PgConnection,
) -> anyhow::Result<Result<i64, String>> {
    let mut prev = audit::GENESIS.to_string();
    let mut expected = 1;
    let mut keyed = false;
    // From the lowest seq there is: an entry below 1 is a gap too.
    let mut after = i64::MIN;
    loop {
        let copied: Vec<AuditEntry> = sqlx::query_as(
            "SELECT seq, at, actor, action, request_id, details, prev_hash, hash FROM audit_log \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(AUDIT_BATCH)
        .fetch_all(&mut *pg)
        .await?;
        let original: Vec<AuditEntry> = sqlx::query_as(
            "SELECT seq, at, actor, action, request_id, details, prev_hash, hash FROM audit_log \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(AUDIT_BATCH)
        .fetch_all(&mut *src)
        .await?;
        if let Some((c, o)) = copied.iter().zip(&original).find(|(c, o)| c != o) {
            return Ok(Err(format!(
                "entry {} in PostgreSQL differs from entry {} in SQLite",
                c.seq, o.seq
            )));
        }
        if copied.len() != original.len() {
            return Ok(Err(format!(
                "PostgreSQL has {} entries after entry {after}, SQLite {}",
                copied.len(),
                original.len()
            )));
        }
        let Some(last) = copied.last() else {
            return Ok(Ok(expected - 1));
        };
        after = last.seq;
        for e in &copied {
            match audit::verify_entry(key, e, expected, &prev) {
                Ok(()) => keyed = true,
                // A plain entry from before keying, identical to the verified source's.
                Err(ChainError::Tampered { .. }) if !keyed => {}
                Err(why) => return Ok(Err(why.to_string())),
            }
            prev.clone_from(&e.hash);
            expected += 1;
        }
    }
}
