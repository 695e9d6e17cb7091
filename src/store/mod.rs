//! All SQL lives here. Functions take a connection (or a transaction) so that callers
//! compose one state change, its audit entry and its Slack messages into one commit.

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
        let shown = dialect::redacted(url);
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

/// SQL text with its bound values, numbered `$1, $2, …` as they are pushed: the one
/// builder of statements whose shape depends on the data (`IN` lists, multi-row
/// inserts). sqlx's `QueryBuilder<Any>` writes `?`, which PostgreSQL does not take.
#[derive(Default)]
pub struct Sql<'q> {
    text: String,
    args: AnyArguments<'q>,
}

impl<'q> Sql<'q> {
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            args: AnyArguments::default(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds `value` and writes its placeholder.
    pub fn bind<T: 'q + Encode<'q, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        // Encoding into the Any buffer only copies the value; it cannot fail.
        let _ = self.args.add(value);
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// `(a, b), (c, d)…`: a parenthesised group per item, `push_row` binding its values
    /// (each `bind` of a group after the first is preceded by a comma by [`Row::bind`]).
    pub fn rows<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut push_row: impl FnMut(&mut Row<'_, 'q>, T),
    ) -> &mut Self {
        for (i, item) in items.into_iter().enumerate() {
            self.text.push_str(if i == 0 { "(" } else { ", (" });
            push_row(&mut Row { sql: self, first: true }, item);
            self.text.push(')');
        }
        self
    }

    /// `(v1, v2, …)`, each value bound.
    pub fn in_list<T: 'q + Encode<'q, Any> + Type<Any>>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self {
        self.text.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self.text.push(')');
        self
    }

    /// Runs the statement.
    pub async fn execute(self, conn: &mut Conn) -> sqlx::Result<sqlx::any::AnyQueryResult> {
        let Sql { text, args } = self;
        sqlx::query_with(&text, args).execute(conn).await
    }

    /// Runs the statement, decoding its rows as `T`.
    pub async fn fetch_all<T>(self, conn: &mut Conn) -> sqlx::Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let Sql { text, args } = self;
        sqlx::query_as_with(&text, args).fetch_all(conn).await
    }

    /// `statements` as one SQLite query, `;`-separated. Their placeholders become `?`,
    /// which SQLite numbers on from one statement to the next: numbered ones would count
    /// over the whole query and could pass SQLite's limit of 32,766.
    fn joined_for_sqlite(statements: Vec<Sql<'q>>) -> Sql<'q> {
        let mut all = Sql::default();
        for q in statements {
            all.text.push_str(&dialect::anonymous(&q.text));
            all.text.push_str(";\n");
            all.args.values.0.extend(q.args.values.0);
        }
        all
    }
}

/// One parenthesised group of [`Sql::rows`].
pub struct Row<'s, 'q> {
    sql: &'s mut Sql<'q>,
    first: bool,
}

impl<'q> Row<'_, 'q> {
    pub fn bind<T: 'q + Encode<'q, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        if !std::mem::take(&mut self.first) {
            self.sql.text.push_str(", ");
        }
        self.sql.bind(value);
        self
    }

    /// Writes `text` as the next value (a literal or expression, not user data).
    pub fn push(&mut self, text: &str) -> &mut Self {
        if !std::mem::take(&mut self.first) {
            self.sql.text.push_str(", ");
        }
        self.sql.text.push_str(text);
        self
    }
}

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

// ---- requests ------------------------------------------------------------------------

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
    /// Withdrawn by the requester before anyone decided.
    Cancelled,
}
stored_as_text!(RequestState { Pending => "pending", Approved => "approved", Denied => "denied", Expired => "expired", Cancelled => "cancelled" });

/// A stored request.
#[derive(Debug, Clone, FromRow)]
pub struct RequestRow {
    pub id: i64,
    pub requester_id: String,
    pub team_id: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    pub reason: String,
    pub origin_channel: String,
    pub approval_channel: String,
    pub approvals_required: i64,
    pub state: RequestState,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub card_channel: Option<String>,
    pub card_ts: Option<String>,
    pub kind: RequestKind,
    pub extends_request_id: Option<i64>,
}

/// Whether a request asks for new access or for more time on an existing grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Access,
    Extension,
}
stored_as_text!(RequestKind { Access => "access", Extension => "extension" });

/// What a new request needs.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub requester_id: String,
    pub team_id: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    pub reason: String,
    pub origin_channel: String,
    pub approval_channel: String,
    pub approvals_required: i64,
    pub created_at: i64,
    pub kind: RequestKind,
    pub extends_request_id: Option<i64>,
    /// Not stored with the request: rides on its card's outbox entry (see
    /// [`Outgoing::post_card_for`]).
    pub response_url: Option<String>,
    /// The trigger_id of the slash command that asked for it. Written to `deliveries` in
    /// the same transaction as the request, so the same command delivered again (a Socket
    /// Mode retry, a replayed signed request) cannot store a second one: its batch fails on
    /// the key and it is told [`ALREADY_RECEIVED`].
    pub delivery_key: Option<String>,
}

/// How long a delivery's key (trigger_id, event_id) is remembered, in milliseconds. Slack
/// re-delivers within minutes (Events API retries end after about 5 minutes) and a signed
/// request is accepted for 5 minutes after its timestamp.
pub const DELIVERY_RETENTION_MS: i64 = 6 * 3600 * 1000;

/// The `deliveries` kind of a slash command's trigger_id.
pub const COMMAND_DELIVERY: &str = "command";

/// The error a request gets when its command's `delivery_key` was stored before.
pub const ALREADY_RECEIVED: &str = "this command was received before";

/// Whether `e` is a request refused for a `delivery_key` stored before.
pub fn is_already_received(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == ALREADY_RECEIVED)
        || e.chain().any(|c| {
            c.downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .is_some_and(|d| d.is_unique_violation() && d.message().contains("deliveries"))
        })
}

pub async fn insert_request(conn: &mut Conn, r: &NewRequest) -> sqlx::Result<i64> {
    // The next id as SQLite picks it for an INTEGER PRIMARY KEY, written out so that
    // PostgreSQL (where the group commit also assigns ids itself) picks the same; the
    // write lock of `Db::begin` makes it safe.
    let row: (i64,) = sqlx::query_as(
        "INSERT INTO requests (id, requester_id, team_id, resource, role, duration_secs, reason, \
         origin_channel, approval_channel, approvals_required, state, created_at, kind, extends_request_id) \
         VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM requests), $1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $12) \
         RETURNING id",
    )
    .bind(&r.requester_id)
    .bind(&r.team_id)
    .bind(&r.resource)
    .bind(&r.role)
    .bind(r.duration_secs)
    .bind(&r.reason)
    .bind(&r.origin_channel)
    .bind(&r.approval_channel)
    .bind(r.approvals_required)
    .bind(r.created_at)
    .bind(r.kind)
    .bind(r.extends_request_id)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}

pub async fn get_request(conn: &mut Conn, id: i64) -> sqlx::Result<Option<RequestRow>> {
    sqlx::query_as("SELECT * FROM requests WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Moves a request from `from` to `to`; false if it was not in `from` (someone else won).
pub async fn transition_request(
    conn: &mut Conn,
    id: i64,
    from: RequestState,
    to: RequestState,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE requests SET state = $1, decided_at = $2 WHERE id = $3 AND state = $4")
        .bind(to)
        .bind(now)
        .bind(id)
        .bind(from)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_card(conn: &mut Conn, id: i64, channel: &str, ts: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE requests SET card_channel = $1, card_ts = $2 WHERE id = $3")
        .bind(channel)
        .bind(ts)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The caller's requests still waiting for a decision, newest first.
/// How many requests of `user` are pending.
pub async fn count_pending_of(conn: &mut Conn, user: &str) -> sqlx::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM requests WHERE requester_id = $1 AND state = 'pending'")
        .bind(user)
        .fetch_one(conn)
        .await?;
    Ok(n)
}

pub async fn pending_requests_of(conn: &mut Conn, user: &str) -> sqlx::Result<Vec<RequestRow>> {
    sqlx::query_as("SELECT * FROM requests WHERE requester_id = $1 AND state = 'pending' ORDER BY id DESC LIMIT 20")
        .bind(user)
        .fetch_all(conn)
        .await
}

/// Pending requests of anyone, oldest first, at most `limit` (the Home tab's "waiting
/// for you" filters them by approver).
pub async fn pending_requests(conn: &mut Conn, limit: i64) -> sqlx::Result<Vec<RequestRow>> {
    sqlx::query_as("SELECT * FROM requests WHERE state = 'pending' ORDER BY id LIMIT $1")
        .bind(limit)
        .fetch_all(conn)
        .await
}

// ---- decisions -----------------------------------------------------------------------

/// An approver's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Deny,
}
stored_as_text!(Verdict { Approve => "approve", Deny => "deny" });

/// A stored decision.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct DecisionRow {
    pub approver_id: String,
    pub verdict: Verdict,
    pub decided_at: i64,
    /// Why, when a policy decided (on-call evidence).
    pub reason: Option<String>,
}

pub async fn decisions(conn: &mut Conn, request_id: i64) -> sqlx::Result<Vec<DecisionRow>> {
    let order = Backend::of(conn).decisions_insertion_order();
    sqlx::query_as(&format!(
        "SELECT approver_id, verdict, decided_at, reason FROM decisions WHERE request_id = $1 ORDER BY decided_at, {order}"
    ))
    .bind(request_id)
    .fetch_all(conn)
    .await
}

/// Records a decision; false if this approver had already decided (double click).
pub async fn insert_decision(
    conn: &mut Conn,
    request_id: i64,
    approver: &str,
    verdict: Verdict,
    now: i64,
) -> sqlx::Result<bool> {
    insert_decision_with_reason(conn, request_id, approver, verdict, None, now).await
}

/// Records a decision with its reason (a policy's evidence); false if this approver had
/// already decided.
pub async fn insert_decision_with_reason(
    conn: &mut Conn,
    request_id: i64,
    approver: &str,
    verdict: Verdict,
    reason: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO decisions (request_id, approver_id, verdict, decided_at, reason) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (request_id, approver_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(approver)
    .bind(verdict)
    .bind(now)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many of `requester`'s requests `approver` (a policy) approved after `since`. The
/// rate limit of on-call auto-approval counts from here, so it survives restarts.
pub async fn count_policy_approvals(conn: &mut Conn, requester: &str, approver: &str, since: i64) -> sqlx::Result<i64> {
    // Driven by requests_by_requester, then the decisions primary key.
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM requests r JOIN decisions d ON d.request_id = r.id \
         WHERE r.requester_id = $1 AND d.approver_id = $2 AND d.verdict = 'approve' AND d.decided_at > $3",
    )
    .bind(requester)
    .bind(approver)
    .bind(since)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}

// ---- break-glass ---------------------------------------------------------------------

/// How many times `user` broke the glass since `since_ms` (for the per-person rate limit).
pub async fn count_break_glass_uses(conn: &mut Conn, user: &str, since_ms: i64) -> sqlx::Result<i64> {
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM break_glass b JOIN requests r ON r.id = b.request_id \
         WHERE b.used_at >= $1 AND r.requester_id = $2",
    )
    .bind(since_ms)
    .bind(user)
    .fetch_one(conn)
    .await?;
    Ok(row.0)
}

/// A break-glass use and its review.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct BreakGlassRow {
    pub request_id: i64,
    pub used_at: i64,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
    /// `ok` or `revoked`.
    pub review: Option<String>,
}

/// Records that request `request_id` was a break-glass use.
pub async fn insert_break_glass(conn: &mut Conn, request_id: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO break_glass (request_id, used_at) VALUES ($1, $2)")
        .bind(request_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The break-glass record of a request, if it was one.
pub async fn break_glass_of(conn: &mut Conn, request_id: i64) -> sqlx::Result<Option<BreakGlassRow>> {
    sqlx::query_as("SELECT * FROM break_glass WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// Marks a break-glass use reviewed (`review` is `ok` or `revoked`), once: false if it
/// was reviewed already (or is not a break-glass use).
pub async fn review_break_glass(
    conn: &mut Conn,
    request_id: i64,
    by: &str,
    review: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE break_glass SET reviewed_by = $1, reviewed_at = $2, review = $3 \
         WHERE request_id = $4 AND reviewed_at IS NULL",
    )
    .bind(by)
    .bind(now)
    .bind(review)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ---- grants --------------------------------------------------------------------------

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    Granting,
    Active,
    Revoked,
    Failed,
    /// Ended while another grant still covered the same (shared) access.
    Superseded,
}
stored_as_text!(GrantState { Granting => "granting", Active => "active", Revoked => "revoked", Failed => "failed", Superseded => "superseded" });

/// A stored grant.
#[derive(Debug, Clone, FromRow)]
pub struct GrantRow {
    pub id: i64,
    pub request_id: i64,
    pub user_id: String,
    pub resource: String,
    pub role: String,
    pub adapter: String,
    pub duration_secs: i64,
    pub state: GrantState,
    pub created_at: i64,
    pub granted_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoke_requested_by: Option<String>,
    pub revoke_requested_at: Option<i64>,
    pub adapter_state: Option<String>,
    pub last_error: Option<String>,
}

/// Creates the grant for an approved request; false if it already has one.
pub async fn insert_grant(conn: &mut Conn, request: &RequestRow, adapter: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO grants (request_id, user_id, resource, role, adapter, duration_secs, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'granting', $7) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request.id)
    .bind(&request.requester_id)
    .bind(&request.resource)
    .bind(&request.role)
    .bind(adapter)
    .bind(request.duration_secs)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn grant_of(conn: &mut Conn, request_id: i64) -> sqlx::Result<Option<GrantRow>> {
    sqlx::query_as("SELECT * FROM grants WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await
}

/// Marks a grant active from `granted_at`; false if it was not being granted.
pub async fn activate_grant(
    conn: &mut Conn,
    grant_id: i64,
    granted_at: i64,
    expires_at: i64,
    adapter_state: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET state = 'active', granted_at = $1, expires_at = $2, adapter_state = $3, last_error = NULL \
         WHERE id = $4 AND state = 'granting'",
    )
    .bind(granted_at)
    .bind(expires_at)
    .bind(adapter_state)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a grant that could not be given as failed.
pub async fn fail_grant(conn: &mut Conn, grant_id: i64, error: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE grants SET state = 'failed', last_error = $1 WHERE id = $2 AND state = 'granting'")
        .bind(error)
        .bind(grant_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records that `by` asked to end an active (or still granting) grant early; false if it
/// had already ended or someone already asked.
pub async fn request_revoke(conn: &mut Conn, grant_id: i64, by: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET revoke_requested_by = $1, revoke_requested_at = $2 \
         WHERE id = $3 AND state IN ('granting', 'active') AND revoke_requested_by IS NULL",
    )
    .bind(by)
    .bind(now)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// For each of `grants`, another grant of the same user, resource, role and adapter that
/// is being given or in force (the one ending last): while one exists, shared access must
/// not be revoked. Read in one statement per chunk of grants.
pub async fn covers_of(conn: &mut Conn, grants: &[&GrantRow]) -> sqlx::Result<HashMap<i64, GrantRow>> {
    #[derive(FromRow)]
    struct Cover {
        covered_id: i64,
        #[sqlx(flatten)]
        grant: GrantRow,
    }
    let mut covers = HashMap::new();
    for chunk in chunks(grants) {
        let mut q = Sql::new(
            "SELECT g.id AS covered_id, c.* FROM grants g JOIN grants c ON c.user_id = g.user_id \
             AND c.resource = g.resource AND c.role = g.role AND c.adapter = g.adapter \
             AND c.state IN ('granting', 'active') AND c.id != g.id WHERE g.id IN ",
        );
        q.in_list(chunk.iter().map(|g| g.id));
        q.push(" ORDER BY c.expires_at IS NULL DESC, c.expires_at DESC");
        for row in q.fetch_all::<Cover>(&mut *conn).await? {
            covers.entry(row.covered_id).or_insert(row.grant);
        }
    }
    Ok(covers)
}

/// Rows of `select` (ending in `WHERE column IN `) for these ids, a statement per chunk.
async fn select_in<T>(conn: &mut Conn, select: &str, ids: &[i64]) -> sqlx::Result<Vec<T>>
where
    T: for<'r> FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
{
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in chunks(ids) {
        let mut q = Sql::new(select);
        q.in_list(chunk.iter().copied());
        rows.extend(q.fetch_all::<T>(&mut *conn).await?);
    }
    Ok(rows)
}

/// The grants of these requests, by request id.
pub async fn grants_of(conn: &mut Conn, request_ids: &[i64]) -> sqlx::Result<HashMap<i64, GrantRow>> {
    let grants: Vec<GrantRow> = select_in(conn, "SELECT * FROM grants WHERE request_id IN ", request_ids).await?;
    Ok(grants.into_iter().map(|g| (g.request_id, g)).collect())
}

/// These requests, by id.
pub async fn requests_by_id(conn: &mut Conn, ids: &[i64]) -> sqlx::Result<HashMap<i64, RequestRow>> {
    let requests: Vec<RequestRow> = select_in(conn, "SELECT * FROM requests WHERE id IN ", ids).await?;
    Ok(requests.into_iter().map(|r| (r.id, r)).collect())
}

/// Marks active grants revoked (by whoever asked to end each early, else "expiry") and
/// returns the ids of those that were still active. Only called once the adapter
/// confirmed the revokes.
pub async fn revoke_grants(conn: &mut Conn, grant_ids: &[i64], now: i64) -> sqlx::Result<Vec<i64>> {
    let mut revoked = Vec::with_capacity(grant_ids.len());
    for chunk in chunks(grant_ids) {
        let mut q = Sql::new("UPDATE grants SET state = 'revoked', revoked_at = ");
        q.bind(now)
            .push(", revoked_by = COALESCE(revoke_requested_by, 'expiry'), last_error = NULL WHERE state = 'active' AND id IN ");
        q.in_list(chunk.iter().copied());
        q.push(" RETURNING id");
        for (id,) in q.fetch_all::<(i64,)>(&mut *conn).await? {
            revoked.push(id);
        }
    }
    Ok(revoked)
}

/// Ends an active grant whose access another grant still covers.
pub async fn supersede_grant(conn: &mut Conn, grant_id: i64, now: i64, by: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET state = 'superseded', revoked_at = $1, revoked_by = $2 WHERE id = $3 AND state = 'active'",
    )
    .bind(now)
    .bind(by)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Adds `secs` to an active grant's duration and expiry.
pub async fn extend_grant(conn: &mut Conn, grant_id: i64, secs: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET duration_secs = duration_secs + $1, expires_at = expires_at + $2 * 1000 \
         WHERE id = $3 AND state = 'active' AND revoke_requested_by IS NULL",
    )
    .bind(secs)
    .bind(secs)
    .bind(grant_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_grant_error(conn: &mut Conn, grant_id: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE grants SET last_error = $1 WHERE id = $2")
        .bind(error)
        .bind(grant_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The caller's grants being given or in force, soonest expiry first.
pub async fn live_grants_of(conn: &mut Conn, user: &str) -> sqlx::Result<Vec<GrantRow>> {
    sqlx::query_as(
        "SELECT * FROM grants WHERE user_id = $1 AND state IN ('granting', 'active') \
         ORDER BY expires_at IS NULL, expires_at LIMIT 20",
    )
    .bind(user)
    .fetch_all(conn)
    .await
}

// ---- jobs ----------------------------------------------------------------------------

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Grant,
    Revoke,
    ExpireRequest,
    /// Decide whether an incident-channel request is approved by the on-call policy.
    AutoApprove,
    /// Remind approvers of a request still pending.
    Remind,
    /// Apply an approved extension to the grant it extends.
    Extend,
    /// Tell the holder their access ends soon (`[requests] ending_soon`).
    EndingSoon,
}
stored_as_text!(JobKind { Grant => "grant", Revoke => "revoke", ExpireRequest => "expire_request", AutoApprove => "auto_approve", Remind => "remind", Extend => "extend", EndingSoon => "ending_soon" });

/// A stored job.
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: i64,
    pub request_id: i64,
    pub kind: JobKind,
    pub run_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_alert_at: Option<i64>,
}

/// Schedules a job; a second one of the same kind for the same request is ignored.
pub async fn insert_job(conn: &mut Conn, request_id: i64, kind: JobKind, run_at: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (request_id, kind, state, run_at, created_at) VALUES ($1, $2, 'pending', $3, $4) \
         ON CONFLICT (kind, request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(kind)
    .bind(run_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which due jobs to claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Revokes,
    AllButRevokes,
}

fn claim_sql(backend: Backend, which: Claim) -> String {
    // `+kind` keeps SQLite on the partial index of pending jobs: on `kind = 'revoke'` alone
    // it would pick the (kind, request_id) index and walk every revoke job ever run.
    let kind = backend.unindexed("kind");
    let kind = match which {
        Claim::Revokes => format!("{kind} = 'revoke'"),
        Claim::AllButRevokes => format!("{kind} != 'revoke'"),
    };
    // On PostgreSQL replicas claim at once: each skips the rows another is claiming, and
    // the outer `state = 'pending'` re-checks a row that changed while it waited.
    let skip_locked = backend.skip_locked();
    format!(
        "UPDATE jobs SET state = 'running', claimed_by = $3 WHERE state = 'pending' AND id IN \
           (SELECT id FROM jobs WHERE state = 'pending' AND run_at <= $1 AND {kind} ORDER BY run_at LIMIT $2{skip_locked}) \
         RETURNING id, request_id, kind, run_at, attempts, last_error, last_alert_at"
    )
}

/// Claims up to `limit` due jobs of `which` kinds, earliest first, in one statement.
pub async fn claim_due_jobs(
    conn: &mut Conn,
    now: i64,
    which: Claim,
    limit: i64,
    replica: &str,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&claim_sql(Backend::of(conn), which))
        .bind(now)
        .bind(limit)
        .bind(replica)
        .fetch_all(conn)
        .await
}

/// When the next pending job is due, if any.
pub async fn next_job_due(conn: &mut Conn) -> sqlx::Result<Option<i64>> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(run_at) FROM jobs WHERE state = 'pending'")
        .fetch_one(conn)
        .await?;
    Ok(row.0)
}

/// Finishes a claimed job.
pub async fn finish_job(conn: &mut Conn, id: i64, failed: bool, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET state = $1, finished_at = $2 WHERE id = $3")
        .bind(if failed { "failed" } else { "done" })
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Finishes claimed jobs that succeeded, as `finish_job` does for each.
pub async fn finish_jobs(conn: &mut Conn, ids: &[i64], now: i64) -> sqlx::Result<()> {
    for chunk in chunks(ids) {
        let mut q = Sql::new("UPDATE jobs SET state = 'done', finished_at = ");
        q.bind(now).push(" WHERE id IN ");
        q.in_list(chunk.iter().copied());
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Puts a claimed job back to run again at `run_at` after a failed attempt.
pub async fn retry_job(
    conn: &mut Conn,
    id: i64,
    run_at: i64,
    error: &str,
    alerted_at: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'pending', attempts = attempts + 1, run_at = $1, last_error = $2, \
         last_alert_at = COALESCE($3, last_alert_at) WHERE id = $4 AND state = 'running'",
    )
    .bind(run_at)
    .bind(error)
    .bind(alerted_at)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Releases a claimed job untouched (shutdown interrupted it before it ran).
pub async fn release_job(conn: &mut Conn, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET state = 'pending' WHERE id = $1 AND state = 'running'")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a pending job of `kind` for a request to `run_at`.
/// Schedules a job at `run_at`, or moves its time and makes it pending again when one of
/// this kind already exists for the request (done or not) — but never one that is running.
pub async fn schedule_job(conn: &mut Conn, request_id: i64, kind: JobKind, run_at: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (request_id, kind, state, run_at, created_at) VALUES ($1, $2, 'pending', $3, $4) \
         ON CONFLICT (kind, request_id) DO UPDATE SET state = 'pending', run_at = excluded.run_at, \
         attempts = 0, last_error = NULL, finished_at = NULL WHERE jobs.state <> 'running'",
    )
    .bind(request_id)
    .bind(kind)
    .bind(run_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes the pending extension requests of the grants of `request_ids` (they ended, so
/// there is nothing left to extend), in one statement per chunk; returns them.
pub async fn close_pending_extensions(conn: &mut Conn, request_ids: &[i64], now: i64) -> sqlx::Result<Vec<RequestRow>> {
    let mut closed = Vec::new();
    for chunk in chunks(request_ids) {
        let mut q = Sql::new("UPDATE requests SET state = 'expired', decided_at = ");
        q.bind(now)
            .push(" WHERE kind = 'extension' AND state = 'pending' AND extends_request_id IN ");
        q.in_list(chunk.iter().copied());
        q.push(" RETURNING *");
        closed.extend(q.fetch_all::<RequestRow>(&mut *conn).await?);
    }
    Ok(closed)
}

pub async fn reschedule_job(conn: &mut Conn, request_id: i64, kind: JobKind, run_at: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET run_at = $1 WHERE request_id = $2 AND kind = $3 AND state = 'pending'")
        .bind(run_at)
        .bind(request_id)
        .bind(kind)
        .execute(conn)
        .await?;
    Ok(())
}

/// Grants that still hold (or may hold) access, with their request, for start-up checks.
pub async fn live_grants(conn: &mut Conn) -> sqlx::Result<Vec<GrantRow>> {
    // Three disjoint parts (a request has one revoke job, in one state), so each reads a
    // partial index of the rows in play (grants_live, jobs_due, jobs_running) rather than
    // every grant or revoke job ever written, and UNION ALL needs no de-duplication;
    // `+kind` keeps SQLite off the (kind, request_id) index, which covers all of history.
    let kind = Backend::of(conn).unindexed("j.kind");
    sqlx::query_as(&format!(
        "SELECT * FROM grants WHERE state IN ('granting', 'active') \
         UNION ALL SELECT g.* FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'pending' AND g.state NOT IN ('granting', 'active') \
         UNION ALL SELECT g.* FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'running' AND g.state NOT IN ('granting', 'active')",
    ))
    .fetch_all(conn)
    .await
}

/// The (resource, adapter) pairs the grants of `live_grants` use, without reading the
/// grants themselves: start-up checks these against the configuration, and there may be
/// a hundred thousand grants in force.
pub async fn live_accesses(conn: &mut Conn) -> sqlx::Result<Vec<(String, String)>> {
    // The same three parts as `live_grants`, each on its partial index.
    let kind = Backend::of(conn).unindexed("j.kind");
    sqlx::query_as(&format!(
        "SELECT DISTINCT resource, adapter FROM ( \
           SELECT resource, adapter FROM grants WHERE state IN ('granting', 'active') \
           UNION ALL SELECT g.resource, g.adapter FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'pending' AND g.state NOT IN ('granting', 'active') \
           UNION ALL SELECT g.resource, g.adapter FROM jobs j JOIN grants g ON g.request_id = j.request_id \
               WHERE {kind} = 'revoke' AND j.state = 'running' AND g.state NOT IN ('granting', 'active')) AS live",
    ))
    .fetch_all(conn)
    .await
}

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

/// Jobs left 'running' by a process that died are put back to run now.
pub async fn recover_running_jobs(conn: &mut Conn) -> sqlx::Result<u64> {
    let done = sqlx::query("UPDATE jobs SET state = 'pending' WHERE state = 'running'")
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Cancels a pending job (for example a request time-out once someone decided).
pub async fn cancel_job(conn: &mut Conn, request_id: i64, kind: JobKind, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = 'done', finished_at = $1 WHERE request_id = $2 AND kind = $3 AND state = 'pending'",
    )
    .bind(now)
    .bind(request_id)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// The job of `kind` for a request.
pub async fn job_of(conn: &mut Conn, request_id: i64, kind: JobKind) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "SELECT id, request_id, kind, run_at, attempts, last_error, last_alert_at FROM jobs WHERE request_id = $1 AND kind = $2",
    )
    .bind(request_id)
    .bind(kind)
    .fetch_optional(conn)
    .await
}

// ---- outbox --------------------------------------------------------------------------

/// What an outbox entry sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// The approval card, rendered from the request's state at delivery time.
    PostCard,
    /// Re-render the card in place.
    UpdateCard,
    /// A plain message to a channel or, with a user ID as channel, a DM.
    Message,
    /// A reply only the clicker sees, through the interaction's response_url.
    Ephemeral,
}
stored_as_text!(OutboxKind { PostCard => "post_card", UpdateCard => "update_card", Message => "message", Ephemeral => "ephemeral" });

/// A stored outbox entry.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: OutboxKind,
    pub request_id: Option<i64>,
    pub channel: Option<String>,
    pub body: Option<String>,
    pub response_url: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    /// When Slack first refused it for good (it is then retried slowly), if it did.
    pub refused_at: Option<i64>,
    pub last_error: Option<String>,
}

/// A message to send once the current transaction commits.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub kind: OutboxKind,
    pub request_id: Option<i64>,
    pub channel: Option<String>,
    pub body: Option<String>,
    pub response_url: Option<String>,
    /// The body is a secret: erased once delivered.
    pub sensitive: bool,
}

impl Outgoing {
    pub fn post_card(request_id: i64) -> Self {
        Self {
            kind: OutboxKind::PostCard,
            request_id: Some(request_id),
            channel: None,
            body: None,
            response_url: None,
            sensitive: false,
        }
    }
    /// The card, remembering the requester's response_url: if Slack refuses the card, the
    /// requester is told through it while it is valid.
    pub fn post_card_for(request_id: i64, response_url: Option<&str>) -> Self {
        Self {
            response_url: response_url.map(String::from),
            ..Self::post_card(request_id)
        }
    }
    pub fn update_card(request_id: i64) -> Self {
        Self {
            kind: OutboxKind::UpdateCard,
            request_id: Some(request_id),
            channel: None,
            body: None,
            response_url: None,
            sensitive: false,
        }
    }
    /// A message to a channel ID, or a DM when `channel` is a user ID.
    pub fn message(channel: &str, text: String, request_id: Option<i64>) -> Self {
        Self {
            kind: OutboxKind::Message,
            request_id,
            channel: Some(channel.to_string()),
            body: Some(text),
            response_url: None,
            sensitive: false,
        }
    }
    /// A DM holding a secret; its text is erased once Slack has it.
    pub fn private_message(user: &str, text: String, request_id: Option<i64>) -> Self {
        Self {
            sensitive: true,
            ..Self::message(user, text, request_id)
        }
    }
    pub fn ephemeral(response_url: &str, text: String) -> Self {
        Self {
            kind: OutboxKind::Ephemeral,
            request_id: None,
            channel: None,
            body: Some(text),
            response_url: Some(response_url.to_string()),
            sensitive: false,
        }
    }
}

pub async fn enqueue(conn: &mut Conn, m: &Outgoing, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (kind, request_id, channel, body, response_url, sensitive, state, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
    )
    .bind(m.kind)
    .bind(m.request_id)
    .bind(&m.channel)
    .bind(&m.body)
    .bind(&m.response_url)
    .bind(i64::from(m.sensitive))
    .bind(now)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Due outbox entries in the order they were written. On PostgreSQL, where replicas
/// share the outbox, they are claimed for `replica` in the same statement: those another
/// live replica claimed are not returned (see [`replicas::take_over`]).
pub async fn due_outbox(conn: &mut Conn, now: i64, limit: i64, replica: &str) -> sqlx::Result<Vec<OutboxRow>> {
    const COLUMNS: &str =
        "id, kind, request_id, channel, body, response_url, attempts, created_at, refused_at, last_error";
    match Backend::of(conn) {
        Backend::Sqlite => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
            ))
            .bind(now)
            .bind(limit)
            .fetch_all(conn)
            .await
        }
        Backend::Postgres => {
            let mut rows: Vec<OutboxRow> = sqlx::query_as(&format!(
                "UPDATE outbox SET claimed_by = $3 WHERE id IN \
                   (SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1 \
                    AND (claimed_by IS NULL OR claimed_by = $3) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            ))
            .bind(now)
            .bind(limit)
            .bind(replica)
            .fetch_all(conn)
            .await?;
            rows.sort_by_key(|r| r.id);
            Ok(rows)
        }
    }
}

pub async fn next_outbox_due(conn: &mut Conn) -> sqlx::Result<Option<i64>> {
    let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'")
        .fetch_one(conn)
        .await?;
    Ok(row.0)
}

/// True while a card post for this request is still waiting to be delivered.
pub async fn card_post_pending(conn: &mut Conn, request_id: i64) -> sqlx::Result<bool> {
    let row: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM outbox WHERE request_id = $1 AND kind = 'post_card' AND state = 'pending'",
    )
    .bind(request_id)
    .fetch_one(conn)
    .await?;
    Ok(row.0 > 0)
}

/// Marks an entry sent. True when it held a secret, now erased: the caller checkpoints
/// the WAL after committing ([`Db::checkpoint`]) so no file keeps a copy.
pub async fn outbox_sent(conn: &mut Conn, id: i64, now: i64) -> sqlx::Result<bool> {
    // A sensitive body (generated credentials) is erased once Slack has it.
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE outbox SET state = 'sent', sent_at = $1, attempts = attempts + 1, \
         body = CASE WHEN sensitive = 1 THEN NULL ELSE body END WHERE id = $2 RETURNING sensitive",
    )
    .bind(now)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some_and(|r| r.0 == 1))
}

/// Marks an entry failed for good. True when it held a secret, now erased (see
/// [`outbox_sent`]).
pub async fn outbox_failed(conn: &mut Conn, id: i64, error: &str) -> sqlx::Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE outbox SET state = 'failed', last_error = $1, attempts = attempts + 1, \
         body = CASE WHEN sensitive = 1 THEN NULL ELSE body END WHERE id = $2 RETURNING sensitive",
    )
    .bind(error)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some_and(|r| r.0 == 1))
}

/// Marks a message Slack refused for good: kept pending, retried at `at`. Returns true the
/// first time (the refusal is new), so the caller logs and tells people once.
pub async fn outbox_refused(conn: &mut Conn, id: i64, at: i64, error: &str, now: i64) -> sqlx::Result<bool> {
    let first = sqlx::query("UPDATE outbox SET refused_at = $1 WHERE id = $2 AND refused_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    outbox_retry(conn, id, at, error).await?;
    Ok(first)
}

/// An undelivered outbox message, for `jitgate outbox list`.
#[derive(Debug, Clone, FromRow)]
pub struct Undelivered {
    pub id: i64,
    pub kind: OutboxKind,
    pub request_id: Option<i64>,
    pub channel: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub refused_at: Option<i64>,
    pub next_attempt_at: i64,
}

/// Messages Slack refused for good (still pending, retried slowly) and messages given up
/// on, oldest first; at most `limit`.
pub async fn undelivered(conn: &mut Conn, limit: i64) -> sqlx::Result<Vec<Undelivered>> {
    sqlx::query_as(
        "SELECT id, kind, request_id, channel, state, attempts, last_error, created_at, refused_at, next_attempt_at \
         FROM outbox WHERE (state = 'pending' AND refused_at IS NOT NULL) OR state = 'failed' ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Makes undelivered messages due now: all of them (`id` None) or one; with
/// `include_failed`, also messages given up on (back to pending, unless their sensitive
/// body was erased). Returns how many were rescheduled. "Now" is the message's own
/// creation time, so the running server sends it at once whatever the skew between its
/// clock and the caller's (the CLI runs in another process).
pub async fn retry_undelivered(conn: &mut Conn, id: Option<i64>, include_failed: bool) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET state = 'pending', next_attempt_at = created_at \
         WHERE ((state = 'pending' AND refused_at IS NOT NULL) \
                OR ($2 AND state = 'failed' AND NOT (sensitive = 1 AND body IS NULL))) \
         AND ($1 IS NULL OR id = $1)",
    )
    .bind(id)
    .bind(include_failed)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Requests among `ids` whose card Slack refused and that nobody has seen yet (a card
/// counts as seen as soon as Slack took it, before its delivery is recorded).
pub async fn cards_refused(conn: &mut Conn, ids: &[i64]) -> sqlx::Result<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    for id in ids {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT o.last_error FROM outbox o JOIN requests r ON r.id = o.request_id \
             WHERE o.request_id = $1 AND o.kind = 'post_card' AND o.state = 'pending' \
             AND o.refused_at IS NOT NULL AND r.card_ts IS NULL LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((error,)) = row {
            out.insert(*id, error.unwrap_or_default());
        }
    }
    Ok(out)
}

// ---- deliveries (at-most-once keys) --------------------------------------------------

/// Claims `key` of `kind` (like `event` + an event_id): true for the first delivery,
/// false for every later one until the row expires at `expires_at`. Atomic across
/// connections and processes sharing the database.
pub async fn first_delivery(conn: &mut Conn, kind: &str, key: &str, now: i64, expires_at: i64) -> sqlx::Result<bool> {
    first_delivery_with_input(conn, kind, key, None, now, expires_at, "").await
}

/// What the first delivery of a command answered, as far as stored: its reply, or the
/// request it created. `None` when `key` was never seen.
pub async fn earlier_delivery(
    conn: &mut Conn,
    kind: &str,
    key: &str,
) -> sqlx::Result<Option<(Option<String>, Option<i64>)>> {
    sqlx::query_as("SELECT reply, request_id FROM deliveries WHERE kind = $1 AND key = $2")
        .bind(kind)
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Remembers what the first delivery of `key` was answered with.
pub async fn set_delivery_reply(conn: &mut Conn, kind: &str, key: &str, reply: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE deliveries SET reply = $1 WHERE kind = $2 AND key = $3")
        .bind(reply)
        .bind(kind)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// [`first_delivery`] that also stores the input (`pending_input`, JSON) with the key, in
/// the same statement, when it must survive a crash between the acknowledgement and the
/// work: a delivery is either new and recorded, or a re-delivery.
#[allow(clippy::too_many_arguments)]
pub async fn first_delivery_with_input(
    conn: &mut Conn,
    kind: &str,
    key: &str,
    input: Option<&str>,
    now: i64,
    expires_at: i64,
    replica: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO deliveries (kind, key, seen_at, expires_at, pending_input, claimed_by) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, key) DO NOTHING",
    )
    .bind(kind)
    .bind(key)
    .bind(now)
    .bind(expires_at)
    .bind(input)
    .bind(replica)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a recorded input as acted on, erasing what it held.
pub async fn input_handled(conn: &mut Conn, kind: &str, key: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE deliveries SET pending_input = NULL WHERE kind = $1 AND key = $2")
        .bind(kind)
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inputs of `kind` recorded but not yet acted on (the process stopped in between),
/// oldest first: `(key, input)`.
pub async fn pending_inputs(conn: &mut Conn, kind: &str) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT key, pending_input FROM deliveries WHERE pending_input IS NOT NULL AND kind = $1 ORDER BY seen_at",
    )
    .bind(kind)
    .fetch_all(conn)
    .await
}

/// Forgets keys whose retention has passed; returns how many.
pub async fn purge_deliveries(conn: &mut Conn, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM deliveries WHERE expires_at <= $1")
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Puts a message off until `at` without counting an attempt (it waits for another).
pub async fn outbox_defer(conn: &mut Conn, id: i64, at: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET next_attempt_at = CASE WHEN next_attempt_at > $1 THEN next_attempt_at ELSE $1 END WHERE id = $2 AND state = 'pending'")
        .bind(at)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn outbox_retry(conn: &mut Conn, id: i64, at: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox SET next_attempt_at = $1, last_error = $2, attempts = attempts + 1 WHERE id = $3")
        .bind(at)
        .bind(error)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

// ---- many rows at once ----------------------------------------------------------------

/// Most rows in one multi-row statement (the widest, `requests`, binds 14 values a row).
const MAX_ROWS_PER_STATEMENT: usize = 128;

/// `items` cut into chunks of at most `MAX_ROWS_PER_STATEMENT`. Each chunk becomes one
/// statement, however many rows it has: a statement costs a round trip to the
/// connection's thread, which under load is worth more than re-preparing a statement of
/// a new size (prepared statements are cached by text, so common sizes stay prepared).
pub(crate) fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    items.chunks(MAX_ROWS_PER_STATEMENT)
}

/// Multi-row INSERT statements for several tables. On SQLite they go as one query: sqlx
/// runs each SQLite connection on its own thread and every query is a round trip to it
/// (two thread wake-ups, worth more than the inserts themselves under load), so a batch
/// writer gathers all its rows here and pays for one round trip. PostgreSQL takes one
/// statement with bound values per query, so there they go one after another.
#[derive(Default)]
pub struct Inserts<'a> {
    statements: Vec<Sql<'a>>,
}

impl<'a> Inserts<'a> {
    /// Adds `insert` (like `INSERT INTO t (a, b)`) with a VALUES row per item of `rows`,
    /// `push_row` binding one row's values, and `suffix` after the values (an ON CONFLICT
    /// clause, or empty).
    pub fn rows<T>(
        &mut self,
        insert: &str,
        rows: &'a [T],
        suffix: &str,
        mut push_row: impl FnMut(&mut Row<'_, 'a>, &'a T),
    ) -> &mut Self {
        for chunk in chunks(rows) {
            let mut q = Sql::new(insert);
            q.push(" VALUES ");
            q.rows(chunk, &mut push_row);
            q.push(suffix);
            self.statements.push(q);
        }
        self
    }

    /// Pending requests with the given ids (see `batch_heads`).
    pub fn requests(&mut self, ids: &'a [i64], rows: &'a [&'a NewRequest]) -> &mut Self {
        debug_assert_eq!(ids.len(), rows.len());
        let mut ids = ids.iter();
        self.rows(
            "INSERT INTO requests (id, requester_id, team_id, resource, role, duration_secs, reason, \
             origin_channel, approval_channel, approvals_required, state, created_at, kind, extends_request_id)",
            rows,
            "",
            move |b, r| {
                b.bind(ids.next().copied())
                    .bind(r.requester_id.as_str())
                    .bind(r.team_id.as_str())
                    .bind(r.resource.as_str())
                    .bind(r.role.as_str())
                    .bind(r.duration_secs)
                    .bind(r.reason.as_str())
                    .bind(r.origin_channel.as_str())
                    .bind(r.approval_channel.as_str())
                    .bind(r.approvals_required)
                    .bind(RequestState::Pending)
                    .bind(r.created_at)
                    .bind(r.kind)
                    .bind(r.extends_request_id);
            },
        )
    }

    /// The delivery keys of the commands that asked for new requests, as
    /// `(request id, key, seen at)`, kept until `expires_at`. No ON CONFLICT: a key stored
    /// before fails the whole statement, and with it the batch.
    pub fn request_deliveries(&mut self, keyed: &'a [(i64, &'a str, i64)], expires_at: i64) -> &mut Self {
        self.rows(
            "INSERT INTO deliveries (kind, key, seen_at, expires_at, request_id)",
            keyed,
            "",
            move |b, (id, key, at)| {
                b.bind(COMMAND_DELIVERY).bind(*key).bind(*at).bind(expires_at).bind(*id);
            },
        )
    }

    /// Jobs, as `insert_job` schedules them (a second of one kind for a request is ignored).
    pub fn jobs(&mut self, jobs: &'a [NewJob]) -> &mut Self {
        self.rows(
            "INSERT INTO jobs (request_id, kind, state, run_at, created_at)",
            jobs,
            " ON CONFLICT (kind, request_id) DO NOTHING",
            |b, j| {
                b.bind(j.request_id)
                    .bind(j.kind)
                    .push("'pending'")
                    .bind(j.run_at)
                    .bind(j.created_at);
            },
        )
    }

    /// Messages, as `enqueue` queues them, each written at its own time.
    pub fn outbox(&mut self, messages: &'a [(Outgoing, i64)]) -> &mut Self {
        self.rows(
            "INSERT INTO outbox (kind, request_id, channel, body, response_url, sensitive, state, next_attempt_at, created_at)",
            messages,
            "",
            |b, (m, at)| {
                b.bind(m.kind)
                    .bind(m.request_id)
                    .bind(m.channel.as_deref())
                    .bind(m.body.as_deref())
                    .bind(m.response_url.as_deref())
                    .bind(i64::from(m.sensitive))
                    .push("'pending'")
                    .bind(*at)
                    .bind(*at);
            },
        )
    }

    /// Runs every statement added, in order: on SQLite in one round trip.
    pub async fn execute(self, conn: &mut Conn) -> sqlx::Result<()> {
        match Backend::of(conn) {
            Backend::Sqlite => {
                if !self.statements.is_empty() {
                    Sql::joined_for_sqlite(self.statements).execute(conn).await?;
                }
            }
            Backend::Postgres => {
                for q in self.statements {
                    q.execute(&mut *conn).await?;
                }
            }
        }
        Ok(())
    }
}

/// What a writer of many new requests reads before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeads {
    /// The id the next request will get, as SQLite would choose it.
    pub next_request_id: i64,
    /// The audit chain's last entry: its seq (0 when the log is empty) and hash (`None`
    /// when empty; the chain then starts from `audit::GENESIS`).
    pub audit_seq: i64,
    pub audit_hash: Option<String>,
}

const BATCH_HEADS: &str = "SELECT (SELECT MAX(id) FROM requests), \
     (SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1), (SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1)";

fn batch_heads_of((max, seq, hash): (Option<i64>, Option<i64>, Option<String>)) -> BatchHeads {
    BatchHeads {
        next_request_id: max.unwrap_or(0) + 1,
        audit_seq: seq.unwrap_or(0),
        audit_hash: hash,
    }
}

/// Reads `BatchHeads` in one round trip. The caller must hold the write lock
/// (`Db::begin`) until it has written, so no one else takes the ids or the chain.
pub async fn batch_heads(conn: &mut Conn) -> sqlx::Result<BatchHeads> {
    Ok(batch_heads_of(sqlx::query_as(BATCH_HEADS).fetch_one(conn).await?))
}

/// A write transaction for group commit, in two round trips to the writer's thread where
/// `Db::begin` needs four: `BEGIN IMMEDIATE` goes with the read of the heads, `COMMIT`
/// with the inserts. sqlx does not know about it, so it rolls back on any error itself,
/// and a connection dropped while it may still be open is closed rather than returned to
/// the pool (where the next user would find itself inside it). Run it on the connection
/// from `Db::write`.
pub struct BatchTx<'c> {
    conn: &'c mut sqlx::pool::PoolConnection<Any>,
    open: bool,
}

impl<'c> BatchTx<'c> {
    /// Takes the write lock on the writer connection `conn` and reads the heads a batch
    /// of new requests writes from.
    pub async fn begin(conn: &'c mut sqlx::pool::PoolConnection<Any>) -> sqlx::Result<(Self, BatchHeads)> {
        let backend = Backend::of(conn);
        let mut tx = BatchTx { conn, open: true };
        let heads = match backend {
            // `fetch_one` would stop at BEGIN's result, which comes first and has no row.
            Backend::Sqlite => sqlx::query_as(&format!("{}; {BATCH_HEADS}", backend.begin_write()))
                .fetch_all(&mut **tx.conn)
                .await
                .and_then(|rows| rows.into_iter().next().ok_or(sqlx::Error::RowNotFound)),
            // The lock's row would come first; the heads are read once it is held.
            Backend::Postgres => match tx.conn.execute(backend.begin_write()).await {
                Ok(_) => sqlx::query_as(BATCH_HEADS).fetch_one(&mut **tx.conn).await,
                Err(e) => Err(e),
            },
        };
        match heads {
            Ok(heads) => Ok((tx, batch_heads_of(heads))),
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }

    /// Runs `inserts` and commits, in one round trip; on error nothing is written.
    pub async fn commit(mut self, mut inserts: Inserts<'_>) -> sqlx::Result<()> {
        inserts.statements.push(Sql::new("COMMIT"));
        match inserts.execute(self.conn).await {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    async fn rollback(&mut self) {
        match sqlx::query("ROLLBACK").execute(&mut **self.conn).await {
            Ok(_) => self.open = false,
            // SQLite ended it already (or it never began).
            Err(e) if e.to_string().contains("no transaction is active") => self.open = false,
            Err(e) => tracing::error!(error = %e, "could not roll back; closing the writer connection"),
        }
    }
}

impl Drop for BatchTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// A job to schedule.
#[derive(Debug, Clone, Copy)]
pub struct NewJob {
    pub request_id: i64,
    pub kind: JobKind,
    pub run_at: i64,
    pub created_at: i64,
}

/// Queues messages as `enqueue` does, each written at its own time, in multi-row statements.
pub async fn enqueue_all(conn: &mut Conn, messages: &[(Outgoing, i64)]) -> sqlx::Result<()> {
    let mut inserts = Inserts::default();
    inserts.outbox(messages);
    inserts.execute(conn).await
}

#[cfg(test)]
mod tests {
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
