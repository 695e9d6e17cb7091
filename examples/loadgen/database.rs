//! The database a run uses: a fresh SQLite file (the default), a given one, or PostgreSQL
//! — a scratch database the load generator creates on a server and drops afterwards, or
//! an empty database given by URL. Whatever the scenario reads to check its results goes
//! through `jitgate::store::Db::open(url)`, so the checks are the same on both.

use std::path::{Path, PathBuf};

use anyhow::Context;
use jitgate::store::Backend;
use sqlx::Connection;

use crate::Args;

/// The database of one run. Dropping it drops a scratch PostgreSQL database.
pub struct BenchDb {
    /// What `[database] url` says, for the server(s) and for `Db::open`.
    pub url: String,
    pub backend: Backend,
    /// The SQLite file, when it is one.
    pub file: Option<PathBuf>,
    /// (server URL, database name) of a scratch database to drop at the end.
    scratch: Option<(String, String)>,
}

impl BenchDb {
    /// The database `args` ask for; `dir` holds a fresh SQLite file when none is named.
    pub fn prepare(args: &Args, dir: &Path) -> anyhow::Result<Self> {
        if let Some(server) = &args.postgres {
            return Self::scratch(server);
        }
        match &args.database_url {
            Some(url) if jitgate::config::is_postgres_url(url) => Self::given_postgres(url),
            Some(url) => {
                let file = jitgate::store::connect_options(url)?.get_filename().to_path_buf();
                Ok(Self::sqlite(file))
            }
            None => Ok(Self::sqlite(args.db.clone().unwrap_or_else(|| dir.join("jitgate.db")))),
        }
    }

    fn sqlite(file: PathBuf) -> Self {
        // Relative paths in a configuration follow the file's directory (a temporary one
        // here); a file given on the command line is relative to the working directory.
        let file = std::path::absolute(&file).unwrap_or(file);
        Self {
            url: format!("sqlite://{}", file.display()),
            backend: Backend::Sqlite,
            file: Some(file),
            scratch: None,
        }
    }

    /// Creates `jit_bench_<pid>` on the server of `server_url` (connecting through the
    /// database that URL names).
    fn scratch(server_url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            jitgate::config::is_postgres_url(server_url),
            "--postgres wants a postgres:// URL of a server (e.g. postgres://postgres@127.0.0.1:5432/postgres), not {}",
            redacted(server_url)
        );
        let name = format!("jit_bench_{}", std::process::id());
        let mut url = url::Url::parse(server_url).context("--postgres: the URL does not parse")?;
        url.set_path(&name);
        let shown = redacted(server_url);
        on_own_runtime(async {
            let mut admin = sqlx::PgConnection::connect(server_url)
                .await
                .with_context(|| format!("--postgres: connecting to {shown}"))?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .with_context(|| {
                    format!(
                        "creating the scratch database {name} on {shown} (left by an interrupted run? `dropdb {name}`)"
                    )
                })?;
            admin.close().await?;
            anyhow::Ok(())
        })?;
        Ok(Self {
            url: url.to_string(),
            backend: Backend::Postgres,
            file: None,
            scratch: Some((server_url.to_string(), name)),
        })
    }

    /// A PostgreSQL database given by URL: it must exist and hold no tables, so that the
    /// run's counts are the run's own.
    fn given_postgres(url: &str) -> anyhow::Result<Self> {
        let shown = redacted(url);
        let tables = on_own_runtime(async {
            let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| {
                format!("--database-url: connecting to {shown} (to have a database made and dropped for the run, give the server with --postgres)")
            })?;
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
            )
            .fetch_one(&mut conn)
            .await?;
            conn.close().await?;
            anyhow::Ok(n)
        })?;
        anyhow::ensure!(
            tables == 0,
            "--database-url {shown} holds {tables} tables; the load generator needs an empty database \
             (or give the server with --postgres, and it makes and drops a scratch database)"
        );
        Ok(Self {
            url: url.to_string(),
            backend: Backend::Postgres,
            file: None,
            scratch: None,
        })
    }

    /// The PostgreSQL backend processes connected to this database (the servers' pools),
    /// with the CPU time /proc shows for each so far: none on SQLite, or when the
    /// PostgreSQL server runs on another machine.
    pub fn backend_cpu(&self) -> Vec<(u32, std::time::Duration)> {
        if self.backend != Backend::Postgres {
            return Vec::new();
        }
        let pids = on_own_runtime(async {
            let mut conn = sqlx::PgConnection::connect(&self.url).await?;
            let rows: Vec<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut conn)
            .await?;
            conn.close().await?;
            anyhow::Ok(rows)
        })
        .unwrap_or_default();
        pids.into_iter()
            .filter(|(pid,)| Path::new(&format!("/proc/{pid}")).exists())
            .map(|(pid,)| (pid as u32, crate::procfs::process_cpu(pid as u32)))
            .collect()
    }

    /// For the report: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match (&self.file, &self.scratch) {
            (Some(file), _) => format!("SQLite {}", file.display()),
            (None, Some(_)) => format!("PostgreSQL {} (scratch, dropped at the end)", redacted(&self.url)),
            (None, None) => format!("PostgreSQL {}", redacted(&self.url)),
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.scratch.take() else {
            return;
        };
        // Its own thread and runtime: this may run inside another runtime's context.
        let dropped = std::thread::spawn(move || {
            on_own_runtime(async {
                let mut admin = sqlx::PgConnection::connect(&server).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
                anyhow::Ok(name)
            })
        })
        .join();
        match dropped {
            Ok(Ok(name)) => eprintln!("dropped the scratch database {name}"),
            Ok(Err(e)) => eprintln!("loadgen: could not drop the scratch database: {e:#}"),
            Err(_) => eprintln!("loadgen: could not drop the scratch database"),
        }
    }
}

fn on_own_runtime<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `url` without its password.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}
