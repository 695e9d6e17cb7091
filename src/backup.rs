//! `jitgate backup PATH`: a consistent copy of the live database, taken while `serve`
//! runs, and checked before it is kept.
//!
//! SQLite's `VACUUM INTO` writes the snapshot one read transaction sees, so a change that
//! `serve` commits meanwhile is either wholly in the copy or not at all, and in WAL mode
//! nobody waits for the copy. It is made on a read-only connection (the live file is
//! never written, never migrated). The copy goes to a temporary file next to PATH, is
//! switched to a rollback journal (one self-contained file), checked with
//! `PRAGMA integrity_check` and by verifying the audit hash chain, synced to disk, and
//! only then given its name — so PATH is either a verified backup or absent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use crate::config::Config;
use crate::store::{self, Db};

/// What a backup did.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The live database.
    pub source: PathBuf,
    /// The verified copy.
    pub dest: PathBuf,
    /// Size of the copy.
    pub bytes: u64,
    /// Audit entries whose hash chain was verified in the copy.
    pub audit_entries: i64,
    pub elapsed: Duration,
}

impl fmt::Display for Backup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "backed up {} to {} ({}) in {:.1}s",
            self.source.display(),
            self.dest.display(),
            size(self.bytes),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  integrity check of the copy: ok")?;
        writeln!(
            f,
            "  audit log of the copy intact: {} entries verified",
            self.audit_entries
        )?;
        write!(
            f,
            "to restore: stop jitgate, delete {0}-wal and {0}-shm if present, copy the backup to {0}, start jitgate",
            self.source.display()
        )
    }
}

/// Copies the database of `config` to `dest` and verifies the copy. An existing `dest`
/// is replaced only with `force`.
pub async fn run(config: &Config, dest: &Path, force: bool) -> anyhow::Result<Backup> {
    let started = Instant::now();
    let source = Db::existing_file(config)?;
    // The copy is verified with the audit key: without it there is no point copying.
    let key = crate::audit::load_key(config.audit.key_file.as_deref(), &|n| std::env::var(n).ok())
        .context("`jitgate backup` verifies the copy's audit log")?;
    let dest = std::path::absolute(dest).with_context(|| format!("the path {}", dest.display()))?;
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        bail!(
            "{} names no file; write the backup's file name, like jitgate-backup.db",
            dest.display()
        );
    };
    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
    if dest.is_dir() {
        bail!(
            "{} is a directory; name the backup file, like {}",
            dest.display(),
            dest.join("jitgate-backup.db").display()
        );
    }
    if !dir.is_dir() {
        bail!("the directory {} does not exist; create it first", dir.display());
    }
    if same_file(&source, &dest) {
        bail!(
            "{} is the live database itself; write the backup to another path",
            dest.display()
        );
    }
    if dest.exists() && !force {
        bail!(
            "{} already exists; choose another path, or pass --force to replace it",
            dest.display()
        );
    }

    let partial = Partial(dir.join(format!(".{name}.partial-{}", std::process::id())));
    partial.remove();
    let partial_str = partial
        .0
        .to_str()
        .with_context(|| format!("the path {} is not UTF-8; choose another", partial.0.display()))?;

    let mut live = store::connect_options(&config.database.url)?
        .create_if_missing(false)
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("opening the database {}", source.display()))?;
    sqlx::query("VACUUM INTO $1")
        .bind(partial_str)
        .execute(&mut live)
        .await
        .with_context(|| format!("copying {} to {}", source.display(), partial.0.display()))?;
    live.close().await?;

    let audit_entries = check_copy(&partial.0, &key).await?;
    std::fs::File::open(&partial.0)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", partial.0.display()))?;
    let bytes = std::fs::metadata(&partial.0)?.len();
    persist(&partial.0, &dest, force)?;
    // The new name must survive a power cut too.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))?;
    Ok(Backup {
        source,
        dest,
        bytes,
        audit_entries,
        elapsed: started.elapsed(),
    })
}

/// Checks a copy: SQLite's integrity check and the audit hash chain. Returns the number of
/// audit entries verified. Leaves the copy as one file in rollback-journal mode.
pub async fn check_copy(path: &Path, key: &crate::audit::AuditKey) -> anyhow::Result<i64> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Delete)
        .connect()
        .await
        .with_context(|| format!("opening the copy {}", path.display()))?;
    let problems: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .context("checking the copy's integrity")?;
    if problems.len() != 1 || problems[0].0 != "ok" {
        let list: Vec<String> = problems.into_iter().map(|p| p.0).take(5).collect();
        bail!(
            "the copy fails SQLite's integrity check ({}); run `PRAGMA integrity_check` on the live database",
            list.join("; ")
        );
    }
    conn.close().await?;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&store::sqlite_url(path, "rw"))
        .await
        .with_context(|| format!("opening the copy {}", path.display()))?;
    let verified = crate::audit::verify_chain(key, &mut conn)
        .await
        .context("reading the copy's audit log")?;
    conn.close().await?;
    match verified {
        Ok(n) => Ok(n),
        Err(e) => bail!(
            "the copy's audit log does not verify ({e}); the live database's log is damaged too — \
             check it with `jitgate audit verify`"
        ),
    }
}

/// Gives the verified copy its name: replacing `dest` only with `force`, and never a file
/// that appeared meanwhile otherwise.
fn persist(partial: &Path, dest: &Path, force: bool) -> anyhow::Result<()> {
    let rename = || {
        std::fs::rename(partial, dest).with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))
    };
    if force {
        return rename();
    }
    // A hard link fails if `dest` exists, where a rename would replace it.
    match std::fs::hard_link(partial, dest) {
        Ok(()) => {
            std::fs::remove_file(partial).with_context(|| format!("removing {}", partial.display()))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} appeared while the backup was made; choose another path, or pass --force to replace it",
            dest.display()
        ),
        // A file system without hard links.
        Err(_) if !dest.exists() => rename(),
        Err(e) => Err(e).with_context(|| format!("naming the copy {}", dest.display())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The temporary copy, removed unless it was given its name.
struct Partial(PathBuf);

impl Partial {
    fn remove(&self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.remove();
    }
}
