//! Statements whose shape depends on the data: the `$n` builder, `IN` lists, multi-row
//! inserts, and the group commit's transaction.

use super::*;

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
