//! The append-only audit log: every request, decision, grant, revoke, failure and
//! refusal.
//!
//! Rows are chained with a key: each stores the previous row's hash and the HMAC-SHA256,
//! under the audit key (which never enters the data directory), of its own content with
//! that hash. Without the key nobody can write an entry that verifies, so an edit,
//! insertion, reordering or deletion anywhere but the very end breaks the chain; the end
//! is covered by anchoring the head (seq and hash, with its own MAC) outside the data
//! directory — a file and/or a Slack channel — at intervals and at shutdown.
//!
//! Logs from before keying hold plain SHA-256 entries; the first keyed entry after them is
//! an `audit.keyed` entry, whose MAC covers the last plain hash, so the older history is
//! protected from the upgrade on. SQLite triggers refuse UPDATE and DELETE as well.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::FromRow;

/// The hash before the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor recorded for what jitgate does on its own (grants, expiry, retries).
pub const SYSTEM_ACTOR: &str = "jitgate";

/// The action of the entry that switches an older, unkeyed log to keyed hashing.
pub const KEYED_ACTION: &str = "audit.keyed";

/// Shortest audit key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// The audit key: what makes the chain's hashes unforgeable. Read from the environment
/// (`JITGATE_AUDIT_KEY`) or a file outside the data directory; never logged.
#[derive(Clone)]
pub struct AuditKey(Arc<[u8]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

impl AuditKey {
    /// A key from its text (surrounding whitespace ignored). At least [`MIN_KEY_LEN`] bytes.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < MIN_KEY_LEN {
            return Err(format!(
                "the audit key is {} bytes long; it must be at least {MIN_KEY_LEN} (make one with `openssl rand -hex 32`)",
                text.len()
            ));
        }
        Ok(Self(Arc::from(text.as_bytes())))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// Where the audit key comes from: `JITGATE_AUDIT_KEY` (looked up through `env`) or
/// `[audit] key_file`. The error says what to set.
pub fn load_key(key_file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<AuditKey> {
    let text = match (env("JITGATE_AUDIT_KEY").filter(|k| !k.trim().is_empty()), key_file) {
        (Some(k), _) => k,
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the audit key file {} ([audit] key_file): {e}",
                path.display()
            )
        })?,
        (None, None) => anyhow::bail!(
            "no audit key: set JITGATE_AUDIT_KEY, or [audit] key_file to a file outside the data directory, \
             to a secret of at least {MIN_KEY_LEN} bytes (make one with `openssl rand -hex 32`)"
        ),
    };
    AuditKey::new(&text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// One audit row, as stored and exported.
#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// A Slack user ID, or `jitgate` for what the bot did on its own.
    pub actor: String,
    /// What happened, like `request.created` or `grant.revoked`.
    pub action: String,
    pub request_id: Option<i64>,
    /// JSON object with the particulars.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The bytes an entry's hash covers. Length-prefixed fields: no two different rows can
/// serialize to the same bytes.
#[allow(clippy::too_many_arguments)]
fn entry_fields(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: &str,
    mut update: impl FnMut(&[u8]),
) {
    for field in [
        prev.as_bytes(),
        seq.to_string().as_bytes(),
        at.to_string().as_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        request_id.map(|r| r.to_string()).unwrap_or_default().as_bytes(),
        details.as_bytes(),
    ] {
        update(&(field.len() as u64).to_be_bytes());
        update(field);
    }
}

/// The plain SHA-256 of an entry, as logs from before keying used.
fn unkeyed_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: &str,
) -> String {
    let mut h = Sha256::new();
    entry_fields(prev, seq, at, actor, action, request_id, details, |b| h.update(b));
    hex::encode(h.finalize())
}

/// The keyed hash (HMAC-SHA256 under the audit key) of an entry.
#[allow(clippy::too_many_arguments)]
fn entry_hash(
    key: &AuditKey,
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: &str,
) -> String {
    let mut m = key.mac();
    entry_fields(prev, seq, at, actor, action, request_id, details, |b| m.update(b));
    hex::encode(m.finalize().into_bytes())
}

/// The entry that follows the one with `prev_seq` and `prev_hash` (0 and `GENESIS` for
/// the first), with its hash computed. For writers that keep the chain's head in memory
/// and insert many entries at once; `append` reads the head from the table instead.
#[allow(clippy::too_many_arguments)]
pub fn next_entry(
    key: &AuditKey,
    prev_seq: i64,
    prev_hash: &str,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: String,
) -> AuditEntry {
    let seq = prev_seq + 1;
    let hash = entry_hash(key, prev_hash, seq, at, actor, action, request_id, &details);
    AuditEntry {
        seq,
        at,
        actor: actor.to_string(),
        action: action.to_string(),
        request_id,
        details,
        prev_hash: prev_hash.to_string(),
        hash,
    }
}

/// Appends an entry inside the caller's write transaction.
pub async fn append(
    key: &AuditKey,
    conn: &mut crate::store::Conn,
    at: i64,
    actor: &str,
    action: &str,
    request_id: Option<i64>,
    details: serde_json::Value,
) -> sqlx::Result<()> {
    let (last, prev) = head(conn).await?;
    let seq = last + 1;
    let details = details.to_string();
    let hash = entry_hash(key, &prev, seq, at, actor, action, request_id, &details);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(request_id)
    .bind(&details)
    .bind(&prev)
    .bind(&hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// An entry to append with `append_all`.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub at: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub request_id: Option<i64>,
    pub details: serde_json::Value,
}

/// The chain's head: the last entry's seq and hash (0 and `GENESIS` when empty).
pub async fn head(conn: &mut crate::store::Conn) -> sqlx::Result<(i64, String)> {
    let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(last.unwrap_or_else(|| (0, GENESIS.to_string())))
}

/// `events` as the entries that follow the head (`prev_seq`, `prev_hash`), hashes chained.
pub fn chain(key: &AuditKey, prev_seq: i64, prev_hash: &str, events: &[Event<'_>]) -> Vec<AuditEntry> {
    let (mut seq, mut prev) = (prev_seq, prev_hash.to_string());
    let mut entries = Vec::with_capacity(events.len());
    for e in events {
        let entry = next_entry(
            key,
            seq,
            &prev,
            e.at,
            e.actor,
            e.action,
            e.request_id,
            e.details.to_string(),
        );
        seq = entry.seq;
        prev.clone_from(&entry.hash);
        entries.push(entry);
    }
    entries
}

/// Adds the INSERTs for chained `entries` to a batch of inserts.
pub fn insert_entries<'a>(inserts: &mut crate::store::Inserts<'a>, entries: &'a [AuditEntry]) {
    inserts.rows(
        "INSERT INTO audit_log (seq, at, actor, action, request_id, details, prev_hash, hash)",
        entries,
        "",
        |b, e| {
            b.bind(e.seq)
                .bind(e.at)
                .bind(e.actor.as_str())
                .bind(e.action.as_str())
                .bind(e.request_id)
                .bind(e.details.as_str())
                .bind(e.prev_hash.as_str())
                .bind(e.hash.as_str());
        },
    );
}

/// Appends entries in order inside the caller's write transaction, as `append` would one
/// by one: the chain's head is read once and the rows go in as multi-row inserts.
pub async fn append_all(key: &AuditKey, conn: &mut crate::store::Conn, events: &[Event<'_>]) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (seq, prev) = head(conn).await?;
    let entries = chain(key, seq, &prev, events);
    let mut inserts = crate::store::Inserts::default();
    insert_entries(&mut inserts, &entries);
    inserts.execute(conn).await
}

/// One entry as `audit export` writes it: `at` as an RFC 3339 time (UTC, milliseconds) and
/// `details` as the JSON object it holds. `audit verify` checks the chain in the database,
/// where the hashes were computed over the stored text.
pub fn export_json(e: &AuditEntry) -> serde_json::Value {
    let details = serde_json::from_str::<serde_json::Value>(&e.details)
        .unwrap_or_else(|_| serde_json::Value::String(e.details.clone()));
    serde_json::json!({
        "seq": e.seq,
        "at": crate::text::rfc3339_ms(e.at),
        "actor": e.actor,
        "action": e.action,
        "request_id": e.request_id,
        "details": details,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// Entries from `after_seq` on, in order.
pub async fn entries(conn: &mut crate::store::Conn, after_seq: i64, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(after_seq)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// Entries about one request, in order.
pub async fn entries_for_request(conn: &mut crate::store::Conn, request_id: i64) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE request_id = $1 ORDER BY seq")
        .bind(request_id)
        .fetch_all(conn)
        .await
}

/// Where the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit entry {seq}: sequence gap (expected {expected}); an entry was deleted")]
    Gap { seq: i64, expected: i64 },
    #[error("audit entry {seq}: prev_hash does not match entry {}; the log was altered", seq - 1)]
    BrokenLink { seq: i64 },
    #[error("audit entry {seq}: content does not match its hash; the entry was edited, inserted or moved, or the audit key is not the one it was written with")]
    Tampered { seq: i64 },
    #[error("{count} audit entries have a sequence number below 1; they were inserted")]
    BadSeq { count: i64 },
    #[error("audit entry {seq} is not keyed but follows an unkeyed one without an `audit.keyed` entry between; the log was altered")]
    MissingSwitch { seq: i64 },
    #[error("the audit log holds only unkeyed entries ({count}); start jitgate once to key it, or the keyed entries were deleted")]
    NeverKeyed { count: i64 },
    #[error(
        "the anchor records entry {anchored} with hash {hash}, but the log {found}; entries were deleted or rewritten"
    )]
    AnchorMismatch { anchored: i64, hash: String, found: String },
    #[error("the anchor file {path} has a line whose MAC does not verify (line {line}); it was edited, or the audit key is wrong")]
    BadAnchor { path: String, line: usize },
}

/// How entries so far were hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before keying: plain SHA-256 entries (possibly none yet).
    Unkeyed,
    Keyed,
}

/// Checks one entry against its predecessor's hash and the chain's mode so far; returns
/// the mode from this entry on.
fn check_entry(
    key: &AuditKey,
    e: &AuditEntry,
    expected_seq: i64,
    prev_hash: &str,
    mode: Mode,
) -> Result<Mode, ChainError> {
    if e.seq != expected_seq {
        return Err(ChainError::Gap {
            seq: e.seq,
            expected: expected_seq,
        });
    }
    if e.prev_hash != prev_hash {
        return Err(ChainError::BrokenLink { seq: e.seq });
    }
    let keyed = entry_hash(
        key,
        &e.prev_hash,
        e.seq,
        e.at,
        &e.actor,
        &e.action,
        e.request_id,
        &e.details,
    ) == e.hash;
    match (mode, keyed) {
        (Mode::Keyed, true) => Ok(Mode::Keyed),
        // The first keyed entry after unkeyed ones must be the switch.
        (Mode::Unkeyed, true) if e.seq == 1 || e.action == KEYED_ACTION => Ok(Mode::Keyed),
        (Mode::Unkeyed, true) => Err(ChainError::MissingSwitch { seq: e.seq }),
        (Mode::Keyed, false) => Err(ChainError::Tampered { seq: e.seq }),
        (Mode::Unkeyed, false) => {
            if unkeyed_hash(&e.prev_hash, e.seq, e.at, &e.actor, &e.action, e.request_id, &e.details) == e.hash {
                Ok(Mode::Unkeyed)
            } else {
                Err(ChainError::Tampered { seq: e.seq })
            }
        }
    }
}

/// Checks one entry of a keyed chain against its predecessor's hash.
pub fn verify_entry(key: &AuditKey, e: &AuditEntry, expected_seq: i64, prev_hash: &str) -> Result<(), ChainError> {
    check_entry(key, e, expected_seq, prev_hash, Mode::Keyed).map(|_| ())
}

/// Walks the whole chain with `key`: sequence numbers start at 1 and are contiguous,
/// every link and hash holds, unkeyed entries (from before keying) come only before an
/// `audit.keyed` entry. Returns the number of entries checked. Deletions at the very end
/// are caught by [`verify_anchor`], not here.
pub async fn verify_chain(key: &AuditKey, conn: &mut crate::store::Conn) -> anyhow::Result<Result<i64, ChainError>> {
    let (below,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE seq < 1")
        .fetch_one(&mut *conn)
        .await?;
    if below > 0 {
        return Ok(Err(ChainError::BadSeq { count: below }));
    }
    let mut prev = GENESIS.to_string();
    let mut expected = 1;
    let mut mode = Mode::Unkeyed;
    loop {
        let batch = entries(conn, expected - 1, 10_000).await?;
        if batch.is_empty() {
            let count = expected - 1;
            if mode == Mode::Unkeyed && count > 0 {
                return Ok(Err(ChainError::NeverKeyed { count }));
            }
            return Ok(Ok(count));
        }
        for e in &batch {
            match check_entry(key, e, expected, &prev, mode) {
                Ok(m) => mode = m,
                Err(err) => return Ok(Err(err)),
            }
            prev.clone_from(&e.hash);
            expected += 1;
        }
    }
}

/// Keys an older, unkeyed log: if the last entry is not keyed, appends the `audit.keyed`
/// entry (keyed, covering the last plain hash), from which every entry is keyed. Does
/// nothing for an empty or already keyed log. Returns the switch's seq when it wrote one.
pub async fn key_the_log(key: &AuditKey, conn: &mut crate::store::Conn, now: i64) -> sqlx::Result<Option<i64>> {
    let last: Option<AuditEntry> = sqlx::query_as("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let Some(last) = last else {
        return Ok(None);
    };
    let keyed = entry_hash(
        key,
        &last.prev_hash,
        last.seq,
        last.at,
        &last.actor,
        &last.action,
        last.request_id,
        &last.details,
    ) == last.hash;
    if keyed {
        return Ok(None);
    }
    append(
        key,
        conn,
        now,
        SYSTEM_ACTOR,
        KEYED_ACTION,
        None,
        serde_json::json!({ "from_seq": last.seq + 1, "last_unkeyed_seq": last.seq, "last_unkeyed_hash": last.hash }),
    )
    .await?;
    Ok(Some(last.seq + 1))
}

/// One recorded head of the chain, as a line of the anchor file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
    /// Unix milliseconds when it was recorded.
    pub at: i64,
    /// HMAC-SHA256 under the audit key of `anchor:{seq}:{hash}:{at}`.
    pub mac: String,
}

impl Anchor {
    fn mac_of(key: &AuditKey, seq: i64, hash: &str, at: i64) -> String {
        let mut m = key.mac();
        m.update(format!("anchor:{seq}:{hash}:{at}").as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// The anchor for head (`seq`, `hash`) at `at`.
    pub fn new(key: &AuditKey, seq: i64, hash: &str, at: i64) -> Self {
        Self {
            seq,
            hash: hash.to_string(),
            at,
            mac: Self::mac_of(key, seq, hash, at),
        }
    }

    fn verifies(&self, key: &AuditKey) -> bool {
        Self::mac_of(key, self.seq, &self.hash, self.at) == self.mac
    }

    /// What a person reads in the audit channel.
    pub fn message(&self) -> String {
        format!(
            ":lock: jitgate audit log head: entry {} with hash `{}` (recorded {}). `jitgate audit verify --head {}:{}` checks a copy against it.",
            self.seq,
            self.hash,
            crate::text::slack_date(self.at),
            self.seq,
            self.hash
        )
    }
}

/// Appends `anchor` as one JSON line to `path` and syncs it to disk.
pub fn write_anchor(path: &Path, anchor: &Anchor) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut line = serde_json::to_string(anchor).map_err(std::io::Error::other)?;
    line.push('\n');
    file.write_all(line.as_bytes())?;
    file.sync_all()
}

/// Every anchor in the file, oldest first, each checked with `key`.
pub fn read_anchors(path: &Path, key: &AuditKey) -> anyhow::Result<Result<Vec<Anchor>, ChainError>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(Vec::new())),
        Err(e) => anyhow::bail!("cannot read the anchor file {}: {e}", path.display()),
    };
    let mut anchors = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || ChainError::BadAnchor {
            path: path.display().to_string(),
            line: i + 1,
        };
        let Ok(anchor) = serde_json::from_str::<Anchor>(line) else {
            return Ok(Err(bad()));
        };
        if !anchor.verifies(key) {
            return Ok(Err(bad()));
        }
        anchors.push(anchor);
    }
    Ok(Ok(anchors))
}

/// Checks that the log still holds entry `seq` with `hash` (a recorded head), and says
/// how far past it the log goes.
pub async fn verify_anchor(
    conn: &mut crate::store::Conn,
    seq: i64,
    hash: &str,
) -> anyhow::Result<Result<(), ChainError>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some((h,)) if h == hash => Ok(()),
        Some((h,)) => Err(ChainError::AnchorMismatch {
            anchored: seq,
            hash: hash.to_string(),
            found: format!("has hash {h} there"),
        }),
        None => {
            let (last, _) = head(conn).await?;
            Err(ChainError::AnchorMismatch {
                anchored: seq,
                hash: hash.to_string(),
                found: format!("ends at entry {last}"),
            })
        }
    })
}

/// What `audit verify` checks the log's end against.
#[derive(Debug, Clone, Default)]
pub struct VerifyAgainst {
    /// The anchor file (`[audit] anchor_file`).
    pub anchor_file: Option<PathBuf>,
    /// A head given by hand (`--head SEQ:HASH`, e.g. from the audit channel).
    pub head: Option<(i64, String)>,
    /// The log is a restored backup: accept the newest anchor it still reaches rather
    /// than the newest anchor of all.
    pub restored: bool,
}

/// What `audit verify` found, when the log is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: i64,
    /// The anchored head the log was checked against (seq), if any.
    pub anchored: Option<i64>,
    /// For a restored backup: the newest head anchored by the live log, past this copy.
    pub live_reached: Option<i64>,
}

/// The whole check: the chain, then its end against the anchor (or a given head).
pub async fn verify_all(
    key: &AuditKey,
    conn: &mut crate::store::Conn,
    against: &VerifyAgainst,
) -> anyhow::Result<Result<Verified, ChainError>> {
    let entries = match verify_chain(key, conn).await? {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let mut verified = Verified {
        entries,
        anchored: None,
        live_reached: None,
    };
    if let Some((seq, hash)) = &against.head {
        if let Err(e) = verify_anchor(conn, *seq, hash).await? {
            return Ok(Err(e));
        }
        verified.anchored = Some(*seq);
    }
    if let Some(path) = &against.anchor_file {
        let anchors = match read_anchors(path, key)? {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let Some(newest) = anchors.last() else {
            return Ok(Ok(verified));
        };
        if against.restored {
            // The newest anchor this copy still matches; anything newer belongs to the
            // live log the backup was taken from.
            let mut matched = None;
            for a in anchors.iter().rev().filter(|a| a.seq <= entries) {
                if verify_anchor(conn, a.seq, &a.hash).await?.is_ok() {
                    matched = Some(a.seq);
                    break;
                }
            }
            let Some(seq) = matched else {
                return Ok(Err(ChainError::AnchorMismatch {
                    anchored: newest.seq,
                    hash: newest.hash.clone(),
                    found: "matches none of the anchored heads".into(),
                }));
            };
            verified.anchored = Some(seq);
            verified.live_reached = Some(newest.seq).filter(|n| *n > seq);
        } else {
            if let Err(e) = verify_anchor(conn, newest.seq, &newest.hash).await? {
                return Ok(Err(e));
            }
            verified.anchored = Some(newest.seq);
        }
    }
    Ok(Ok(verified))
}

/// Records the chain's head outside the data directory, if it moved since `last`:
/// a line in `anchor_file`, and (through the outbox) a message in `channel`. Returns
/// the head recorded.
pub async fn anchor_head(
    key: &AuditKey,
    db: &crate::store::Db,
    anchor_file: Option<&PathBuf>,
    channel: Option<&str>,
    last: Option<i64>,
    now: i64,
) -> anyhow::Result<Option<i64>> {
    let (seq, hash) = {
        let mut conn = db.read.acquire().await?;
        head(&mut conn).await?
    };
    if seq == 0 || last == Some(seq) {
        return Ok(last);
    }
    let anchor = Anchor::new(key, seq, &hash, now);
    if let Some(path) = anchor_file {
        write_anchor(path, &anchor).map_err(|e| anyhow::anyhow!("writing the audit anchor {}: {e}", path.display()))?;
    }
    if let Some(channel) = channel {
        let mut tx = db.begin().await?;
        // Replicas sharing a PostgreSQL database see the same head: the first to anchor it
        // posts it, the others find its key taken.
        let first = db.backend == crate::store::Backend::Sqlite
            || crate::store::first_delivery(
                &mut tx,
                "audit_anchor",
                &seq.to_string(),
                now,
                now + crate::store::DELIVERY_RETENTION_MS,
            )
            .await?;
        if first {
            crate::store::enqueue(
                &mut tx,
                &crate::store::Outgoing::message(channel, anchor.message(), None),
                now,
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(Some(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::new("unit-test-audit-key-0123456789abcdef").unwrap()
    }

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let details = format!("{{\"n\":{seq}}}");
                let hash = entry_hash(
                    &key(),
                    &prev,
                    seq,
                    seq * 10,
                    "U1",
                    "request.created",
                    Some(seq),
                    &details,
                );
                let e = AuditEntry {
                    seq,
                    at: seq * 10,
                    actor: "U1".into(),
                    action: "request.created".into(),
                    request_id: Some(seq),
                    details,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn check(entries: &[AuditEntry]) -> Result<(), ChainError> {
        let mut prev = GENESIS.to_string();
        for (i, e) in entries.iter().enumerate() {
            verify_entry(&key(), e, i as i64 + 1, &prev)?;
            prev = e.hash.clone();
        }
        Ok(())
    }

    #[tokio::test]
    async fn appending_many_at_once_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Db::open(&dir.path().join("a.db").display().to_string())
            .await
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        append(
            &key(),
            &mut tx,
            1,
            "U1",
            "request.created",
            Some(1),
            serde_json::json!({}),
        )
        .await
        .unwrap();
        let events: Vec<Event> = (0..300)
            .map(|i| Event {
                at: 2 + i,
                actor: "U2",
                action: "request.created",
                request_id: Some(2 + i),
                details: serde_json::json!({ "n": i }),
            })
            .collect();
        append_all(&key(), &mut tx, &events).await.unwrap();
        append(
            &key(),
            &mut tx,
            999,
            "U3",
            "request.created",
            Some(999),
            serde_json::json!({}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut conn = db.read.acquire().await.unwrap();
        assert_eq!(verify_chain(&key(), &mut conn).await.unwrap(), Ok(302));
        drop(conn);
        db.close().await;
    }

    #[test]
    fn export_writes_rfc3339_times_and_details_as_an_object() {
        let e = &chain(1)[0];
        let mut e = e.clone();
        e.at = 1_735_689_600_000;
        let v = export_json(&e);
        assert_eq!(v["at"], "2025-01-01T00:00:00.000Z");
        assert_eq!(v["details"], serde_json::json!({ "n": 1 }));
        assert_eq!(v["request_id"], 1);
        assert_eq!(v["hash"], e.hash);
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(check(&chain(5)), Ok(()));
    }

    #[test]
    fn an_edited_entry_is_detected() {
        let mut c = chain(5);
        c[2].actor = "U2".into();
        assert_eq!(check(&c), Err(ChainError::Tampered { seq: 3 }));
    }

    #[test]
    fn a_deleted_entry_is_detected() {
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(check(&c), Err(ChainError::Gap { seq: 4, expected: 3 }));
    }
}
