//! The Slack self-check: is the bot token valid, does it have the scopes jitgate uses,
//! can the bot post in every configured channel? Run at start-up by `serve` (and again
//! with back-off while the token is refused or Slack is unreachable) and on demand by
//! `jitgate check-config --online`. Every problem is reported at once, with its fix.
//!
//! [`SlackStatus`] keeps the latest result (and the Socket Mode connections' state) for
//! readiness and for operators.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::backoff::backoff;
use crate::config::Config;
use crate::slack::client::{SlackApi, SlackCallError};

/// The manifest every scope below comes from, named in fixes.
const MANIFEST: &str = "manifest/slack-app.yaml";

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, like `bot token (SLACK_BOT_TOKEN)` or `channel C0123 (#approvals)`.
    pub what: String,
    /// `Ok(detail)` or `Err(problem and fix)`.
    pub outcome: Result<String, String>,
    /// A failure that stops jitgate from talking to Slack at all (a refused token) or
    /// means Slack could not be asked; retried with back-off.
    pub blocking: bool,
}

/// All checks of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.outcome.is_ok())
    }

    /// True when a blocking check failed (retry the whole check later).
    pub fn blocked(&self) -> bool {
        self.checks.iter().any(|c| c.blocking && c.outcome.is_err())
    }

    /// The failures, one line each.
    pub fn problems(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter_map(|c| c.outcome.as_ref().err().map(|e| format!("{}: {e}", c.what)))
            .collect()
    }

    /// One line per check, as `check-config --online` prints them.
    pub fn lines(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| match &c.outcome {
                Ok(detail) => format!("ok    {}: {detail}", c.what),
                Err(problem) => format!("FAIL  {}: {problem}", c.what),
            })
            .collect()
    }
}

/// The scopes jitgate needs with this configuration, each with why.
pub fn required_scopes(config: &Config) -> Vec<(&'static str, &'static str)> {
    let mut scopes = vec![
        ("commands", "the /jit command"),
        ("chat:write", "cards, replies and DMs"),
    ];
    if config.resources.iter().any(|r| !r.approver_groups.is_empty()) {
        scopes.push(("usergroups:read", "approver_groups"));
    }
    if config.oncall.is_some() {
        scopes.push(("channels:read", "incident channels"));
        scopes.push(("groups:read", "private incident channels"));
        scopes.push(("users:read", "matching on-call people"));
        scopes.push(("users:read.email", "matching on-call people by e-mail"));
    }
    scopes
}

/// Every channel jitgate posts in or reads, with where it is configured.
pub fn configured_channels(config: &Config) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |id: &str, key: String| {
        if seen.insert(id.to_string()) {
            out.push((id.to_string(), key));
        }
    };
    for r in &config.resources {
        add(
            &r.approval_channel,
            format!("approval_channel of resource `{}`", r.name),
        );
    }
    if let Some(c) = &config.reconcile.channel {
        add(c, "[reconcile] channel".into());
    }
    if let Some(oncall) = &config.oncall {
        for c in &oncall.incident_channels {
            add(c, "[oncall] incident_channels".into());
        }
    }
    out
}

/// Runs every check. `app_token` (Socket Mode) is checked with `apps.connections.open`
/// when given (the URL it returns is not used).
pub async fn run(config: &Config, slack: &SlackApi, app_token: Option<&str>) -> Report {
    let mut checks = Vec::new();
    let auth = slack.auth_test().await;
    let scopes = match &auth {
        Ok(info) => {
            checks.push(Check {
                what: "bot token (SLACK_BOT_TOKEN)".into(),
                outcome: Ok(format!(
                    "valid, the bot is {} in {}",
                    info.user_id.as_deref().unwrap_or("?"),
                    info.team.as_deref().unwrap_or("the workspace")
                )),
                blocking: true,
            });
            info.scopes.clone()
        }
        Err(e) => {
            checks.push(Check {
                what: "bot token (SLACK_BOT_TOKEN)".into(),
                outcome: Err(token_problem("SLACK_BOT_TOKEN", e)),
                blocking: true,
            });
            None
        }
    };
    if let Some(granted) = &scopes {
        let missing: Vec<_> = required_scopes(config)
            .into_iter()
            .filter(|(s, _)| !granted.iter().any(|g| g == s))
            .collect();
        checks.push(Check {
            what: "scopes".into(),
            outcome: if missing.is_empty() {
                Ok(format!("granted: {}", granted.join(", ")))
            } else {
                Err(format!(
                    "missing {}; add {} under oauth_config.scopes.bot in {MANIFEST} (or OAuth & Permissions → \
                     Bot Token Scopes) and reinstall the app",
                    missing
                        .iter()
                        .map(|(s, why)| format!("{s} (for {why})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    missing
                        .iter()
                        .map(|(s, _)| format!("`- {s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            },
            blocking: false,
        });
    }
    if let Some(token) = app_token {
        checks.push(Check {
            what: "app token (SLACK_APP_TOKEN)".into(),
            outcome: match slack.open_socket_url(token).await {
                Ok(_) => Ok("valid, Socket Mode connections can be opened".into()),
                Err(e) => Err(token_problem("SLACK_APP_TOKEN", &e)),
            },
            blocking: true,
        });
    }
    if auth.is_ok() {
        let public_ok = scopes
            .as_ref()
            .is_none_or(|s| s.iter().any(|g| g == "chat:write.public"));
        for (id, key) in configured_channels(config) {
            checks.push(check_channel(slack, &id, &key, public_ok, &config.path).await);
        }
    }
    Report { checks }
}

fn token_problem(var: &str, e: &SlackCallError) -> String {
    match e {
        SlackCallError::Permanent(code) => {
            let fix = if var == "SLACK_APP_TOKEN" {
                "create an app-level token with the connections:write scope (Basic Information → App-Level Tokens) \
                 and set SLACK_APP_TOKEN to it (xapp-…)"
            } else {
                "set it to the Bot User OAuth Token (xoxb-…, under OAuth & Permissions); reinstall the app if the \
                 token was revoked"
            };
            format!("Slack refused {var} ({code}): {fix}")
        }
        other => format!("could not ask Slack ({other}); will try again"),
    }
}

async fn check_channel(slack: &SlackApi, id: &str, key: &str, public_ok: bool, file: &std::path::Path) -> Check {
    let what = format!("channel {id}");
    let invite = "invite the bot there with `/invite @jitgate`";
    let outcome = match slack.conversations_info(id).await {
        Ok(info) => {
            let name = info
                .name
                .as_deref()
                .map(|n| format!("#{n}"))
                .unwrap_or_else(|| id.to_string());
            if info.is_archived {
                Err(format!(
                    "{name} is archived; unarchive it or change {key} in {}",
                    file.display()
                ))
            } else if info.is_member {
                Ok(format!("{name}, the bot is a member"))
            } else if !info.is_private && public_ok {
                Ok(format!("{name}, public: the bot posts with chat:write.public"))
            } else if !info.is_private {
                Err(format!(
                    "{name} is public but the bot is not in it and lacks chat:write.public: {invite}, or add \
                     `- chat:write.public` to {MANIFEST}"
                ))
            } else {
                Err(format!("{name} is private and the bot is not in it: {invite}"))
            }
        }
        Err(SlackCallError::Permanent(code)) if code == "channel_not_found" => Err(format!(
            "not found: it is private and the bot is not in it ({invite}), or the ID is wrong ({key} in {})",
            file.display()
        )),
        Err(SlackCallError::Permanent(code)) if code == "missing_scope" => Err(format!(
            "cannot be checked without the channels:read and groups:read scopes; add them to {MANIFEST} and reinstall"
        )),
        Err(e) => Err(format!("could not be checked ({e})")),
    };
    Check {
        what: format!("{what} ({key})"),
        outcome,
        blocking: false,
    }
}

/// The latest self-check and Socket Mode state, for readiness and operators. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct SlackStatus {
    inner: Arc<RwLock<StatusInner>>,
}

#[derive(Debug, Clone, Default)]
struct StatusInner {
    report: Option<Report>,
    socket_mode: bool,
    sockets: usize,
    socket_problem: Option<String>,
}

/// A copy of the status at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Slack can be used: the self-check ran and nothing blocking failed, and in Socket
    /// Mode at least one connection is open.
    pub ready: bool,
    /// Why not, or what is wrong but not blocking (channels, scopes).
    pub problems: Vec<String>,
    pub socket_mode: bool,
    /// Socket Mode connections open now.
    pub sockets: usize,
}

impl SlackStatus {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StatusInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that input arrives by Socket Mode.
    pub fn set_socket_mode(&self) {
        self.write().socket_mode = true;
    }

    /// Records a self-check's result.
    pub fn set_report(&self, report: Report) {
        self.write().report = Some(report);
    }

    /// A Socket Mode connection opened (`+1`) or closed (`-1`).
    pub fn socket_connected(&self, connected: bool) {
        let mut g = self.write();
        if connected {
            g.sockets += 1;
            g.socket_problem = None;
        } else {
            g.sockets = g.sockets.saturating_sub(1);
        }
    }

    /// Why Socket Mode cannot connect (a refused app token), or None.
    pub fn set_socket_problem(&self, problem: Option<String>) {
        self.write().socket_problem = problem;
    }

    /// The status now.
    pub fn snapshot(&self) -> StatusSnapshot {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut problems = match &g.report {
            Some(r) => r.problems(),
            None => vec!["the Slack self-check has not finished yet".into()],
        };
        if let Some(p) = &g.socket_problem {
            problems.push(format!("Socket Mode: {p}"));
        } else if g.socket_mode && g.sockets == 0 {
            problems.push("Socket Mode: not connected".into());
        }
        let checked = g.report.as_ref().is_some_and(|r| !r.blocked());
        StatusSnapshot {
            ready: checked && (!g.socket_mode || g.sockets > 0),
            problems,
            socket_mode: g.socket_mode,
            sockets: g.sockets,
        }
    }
}

/// Runs the self-check until Slack could be asked and accepted the token, retrying with
/// back-off (5 s, doubling, at most 5 minutes) — never fatal: the scheduler keeps ending
/// access on time meanwhile and messages wait in the outbox. Each run's problems are
/// logged together; a refused token loudly.
pub async fn run_until_ok(
    config: Arc<Config>,
    slack: SlackApi,
    status: SlackStatus,
    shutdown: tokio_util::sync::CancellationToken,
    recovered: impl std::future::Future<Output = ()>,
) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let report = tokio::select! {
            r = run(&config, &slack, None) => r,
            _ = shutdown.cancelled() => return,
        };
        let problems = report.problems();
        let blocked = report.blocked();
        status.set_report(report);
        if problems.is_empty() {
            tracing::info!("Slack self-check passed: token, scopes and channels are fine");
        } else if blocked {
            tracing::error!(
                "Slack self-check FAILED: jitgate cannot talk to Slack; access still ends on time and messages \
                 wait in the outbox. Fix the following and it recovers on its own:\n  {}",
                problems.join("\n  ")
            );
        } else {
            tracing::warn!(
                "Slack self-check found {} problem{}; cards may not reach approvers until fixed:\n  {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("\n  ")
            );
        }
        if !blocked {
            if attempt > 1 {
                // Slack took the token again: what it refused meanwhile goes out now.
                recovered.await;
            }
            return;
        }
        let wait = backoff(
            Duration::from_secs(5),
            Duration::from_secs(300),
            attempt,
            rand::random::<f64>(),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
