//! Whether this jitgate can do its job now, for `/readyz` (load balancers, orchestrators).
//! `/healthz` only says the process is alive; ready means: the database takes writes and
//! has every migration, the scheduler loop is running (it proves both by writing its
//! heartbeat every few seconds), and Slack answers: the start-up self-check accepted the
//! token, Socket Mode (when used) is connected, and the latest calls did not find Slack
//! unreachable or the token refused. The probe itself calls nobody.

use crate::app::AppState;
use crate::scheduler::HEARTBEAT_EVERY_MS;
use crate::store;

/// A heartbeat older than this means the loop is stuck or the database takes no writes.
/// The loop writes every `HEARTBEAT_EVERY_MS`, so a healthy one is never this late, and a
/// database that stops taking writes is reported within this long.
pub const STALE_AFTER_MS: i64 = 12_000;

/// What the probe looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub now_ms: i64,
    /// The scheduler's last successful heartbeat (0: none yet).
    pub last_beat_ms: i64,
    /// Whether all migrations are applied, or why that could not be read.
    pub migrations: Result<bool, String>,
    /// Why Slack cannot be used, if the latest calls say so.
    pub slack: Option<String>,
    /// The start-up self-check passed (token accepted) and, in Socket Mode, a connection
    /// is open.
    pub slack_checked: bool,
    /// What the self-check and Socket Mode report, when `slack_checked` is false.
    pub slack_problems: Vec<String>,
}

/// Why jitgate is not ready; empty when it is.
pub fn problems(o: &Observed) -> Vec<String> {
    const _: () = assert!(STALE_AFTER_MS > 2 * HEARTBEAT_EVERY_MS);
    let mut out = Vec::new();
    if o.last_beat_ms == 0 {
        out.push("scheduler: no heartbeat written yet".to_string());
    } else if o.now_ms.saturating_sub(o.last_beat_ms) > STALE_AFTER_MS {
        out.push(format!(
            "scheduler: last heartbeat written {} s ago; the loop is stuck or the database takes no writes",
            o.now_ms.saturating_sub(o.last_beat_ms) / 1000
        ));
    }
    match &o.migrations {
        Ok(true) => {}
        Ok(false) => out.push("database: migrations not all applied".to_string()),
        Err(e) => out.push(format!("database: cannot read it ({e})")),
    }
    if !o.slack_checked {
        if o.slack_problems.is_empty() {
            out.push("slack: the start-up self-check has not passed yet".to_string());
        }
        for p in &o.slack_problems {
            out.push(format!("slack: {p}"));
        }
    }
    if let Some(s) = &o.slack {
        out.push(format!("slack: {s}"));
    }
    out
}

/// Looks at `app` now.
pub async fn check(app: &AppState) -> Vec<String> {
    let migrations = match app.db.read.acquire().await {
        Ok(mut conn) => store::migrations_applied(&mut conn).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let status = app.slack_status.snapshot();
    problems(&Observed {
        now_ms: app.now_ms(),
        last_beat_ms: app.scheduler.last_beat_ms(),
        migrations,
        slack: app.slack.trouble(),
        slack_checked: status.ready,
        slack_problems: if status.ready { Vec::new() } else { status.problems },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observed {
        Observed {
            now_ms: 100_000,
            last_beat_ms: 96_000,
            migrations: Ok(true),
            slack: None,
            slack_checked: true,
            slack_problems: Vec::new(),
        }
    }

    #[test]
    fn a_recent_heartbeat_migrations_and_slack_make_it_ready() {
        assert!(problems(&healthy()).is_empty());
    }

    #[test]
    fn each_failing_part_is_named() {
        let stale = Observed {
            last_beat_ms: 100_000 - STALE_AFTER_MS - 1,
            ..healthy()
        };
        assert!(problems(&stale)[0].starts_with("scheduler: last heartbeat"));
        let never = Observed {
            last_beat_ms: 0,
            ..healthy()
        };
        assert!(problems(&never)[0].contains("no heartbeat"));
        let unmigrated = Observed {
            migrations: Ok(false),
            ..healthy()
        };
        assert!(problems(&unmigrated)[0].starts_with("database:"));
        let slack = Observed {
            slack: Some("Slack refuses the bot token (auth.test: invalid_auth)".into()),
            ..healthy()
        };
        assert!(problems(&slack)[0].starts_with("slack: Slack refuses"));
        let unchecked = Observed {
            slack_checked: false,
            slack_problems: vec!["Socket Mode: not connected".into()],
            ..healthy()
        };
        assert_eq!(problems(&unchecked), ["slack: Socket Mode: not connected"]);
    }
}
