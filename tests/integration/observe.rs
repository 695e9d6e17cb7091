//! What an operator sees: `/metrics` counting the lifecycle, `/readyz` telling whether
//! jitgate can work (and not once its database stops taking writes), a separate metrics
//! listener, and one JSON log line per lifecycle step.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Duration as Span;
use serde_json::Value;

use crate::support::*;

/// The value of the sample `line_start` (a metric name with its labels) in `text`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_decisions_grants_revokes_and_slack_calls() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h checking metrics").await;
    app.command(REQUESTER, "request prod-db:admin 1h no such role").await;
    app.wait_card_containing(id, "jit_approve").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;

    let (status, content_type, text) = app.get_url(&format!("{}/metrics", app.base)).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let expect = |line: &str, value: f64| {
        assert_eq!(sample(&text, line), Some(value), "`{line}` in:\n{text}");
    };
    expect("jitgate_requests_total{outcome=\"created\"}", 1.0);
    expect("jitgate_requests_total{outcome=\"refused\"}", 1.0);
    expect("jitgate_requests_total{outcome=\"approved\"}", 1.0);
    expect("jitgate_decisions_total{verdict=\"approve\",kind=\"person\"}", 1.0);
    expect("jitgate_grant_attempts_total{adapter=\"demo\",result=\"ok\"}", 1.0);
    expect("jitgate_grants_active{resource=\"prod-db\"}", 1.0);
    expect("jitgate_grants_active{resource=\"payments\"}", 0.0);
    expect("jitgate_request_decision_seconds_count", 1.0);
    expect("jitgate_approval_to_grant_seconds_count", 1.0);
    assert!(
        sample(
            &text,
            "jitgate_slack_api_calls_total{method=\"chat.postMessage\",outcome=\"ok\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "jitgate_http_request_duration_seconds_count{path=\"/slack/commands\",status=\"200\"}"
        ) == Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "jitgate_outbox_backlog").is_some(), "{text}");

    // The expiry: one revoke, late by less than the clock's step.
    app.clock.advance(Span::hours(1) + Span::seconds(1));
    app.wait_grant(id, "revoked").await;
    let (_, text) = app.get("/metrics").await;
    assert_eq!(
        sample(&text, "jitgate_revoke_attempts_total{adapter=\"demo\",result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "jitgate_revoke_lateness_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "jitgate_grants_active{resource=\"prod-db\"}"),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_adapter_and_rate_limits_are_counted() {
    let app = TestApp::start().await;
    app.fail_adapter("grant", true);
    let id = app.request("prod-db:read 1h counting failures").await;
    app.wait_card_containing(id, "jit_approve").await;
    app.slack
        .fail_next("chat.update", vec![Failure::RateLimited { retry_after_secs: 0 }]);
    app.approve(APPROVER1, id).await;
    wait_for("a failed grant attempt", || async {
        let (_, text) = app.get("/metrics").await;
        sample(&text, "jitgate_grant_attempts_total{adapter=\"demo\",result=\"error\"}")
            .filter(|n| *n >= 1.0)
            .map(|_| text)
    })
    .await;
    let (_, text) = app.get("/metrics").await;
    assert!(
        sample(&text, "jitgate_job_retries_total{kind=\"grant\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("jitgate_slack_api_calls_total{") && l.contains("outcome=\"rate_limited\"")),
        "{text}"
    );
}

#[tokio::test]
async fn readyz_is_ready_when_the_scheduler_beats_and_not_once_the_database_takes_no_writes() {
    crate::sqlite_only!("it makes the SQLite file immutable");
    if !chattr_works() {
        eprintln!("SKIPPED readyz_…_database_takes_no_writes: `chattr +i` is not available here (needs root and a filesystem with attributes)");
        return;
    }
    let app = TestApp::start_with(Setup {
        clock: TestClock::System,
        ..Setup::default()
    })
    .await;
    let (status, body) = wait_for("/readyz to say ready", || async {
        let (status, body) = app.get("/readyz").await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!((status, body.trim()), (200, "ready"));

    // As root a chmod changes nothing: an immutable file is what a full disk looks like.
    let db = app.dir.path().join("jitgate.db");
    let _unlock = Immutable::set(&[db.clone(), db.with_extension("db-wal")]);
    let since = Instant::now();
    let body = wait_for("/readyz to say not ready", || async {
        let (status, body) = app.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(
        since.elapsed() < Duration::from_secs(15),
        "not ready only after {:?}",
        since.elapsed()
    );
    assert!(body.contains("scheduler: last heartbeat"), "{body}");
    // Liveness is another question: the process still answers.
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn readyz_names_slack_refusing_the_token() {
    let app = TestApp::start_with(Setup {
        clock: TestClock::System,
        ..Setup::default()
    })
    .await;
    wait_for("ready", || async { (app.get("/readyz").await.0 == 200).then_some(()) }).await;
    app.slack
        .fail_next("chat.postMessage", vec![Failure::ApiError("invalid_auth"); 20]);
    let id = app.request("prod-db:read 1h slack says no").await;
    let body = wait_for("/readyz to name Slack", || async {
        let (status, body) = app.get("/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("slack: Slack refuses the bot token"), "{body}");
    assert!(id > 0);
}

#[tokio::test]
async fn a_separate_metrics_listener_serves_metrics_and_readiness_only() {
    let app = TestApp::start_with(Setup {
        extra_toml: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Setup::default()
    })
    .await;
    let addr = app.running.as_ref().unwrap().metrics_addr.expect("a metrics listener");
    let (status, _, text) = app.get_url(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE jitgate_request_decision_seconds histogram"),
        "{text}"
    );
    assert_eq!(app.get_url(&format!("http://{addr}/healthz")).await.0, 200);
    assert!(matches!(
        app.get_url(&format!("http://{addr}/readyz")).await.0,
        200 | 503
    ));
    let (status, _, _) = app.get_url(&format!("http://{addr}/slack/commands")).await;
    assert_eq!(status, 404, "the Slack endpoints stay on [server] listen only");
    // And the main listener keeps serving them as well.
    assert_eq!(app.get("/metrics").await.0, 200);
}

#[tokio::test]
async fn json_logs_have_one_line_per_lifecycle_step() {
    let mut app = TestApp::start_with(Setup {
        clock: TestClock::System,
        in_process: false,
        ..Setup::default()
    })
    .await;
    let config = app.dir.path().join("jitgate.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", AUDIT_KEY)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SLACK_BOT_TOKEN", fake_slack::BOT_TOKEN)
        .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
        .env("JITGATE_LOG_FORMAT", "json")
        .env("JITGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let child = KillOnDrop(child);
    let addr = wait_for("the address in the JSON log", || {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "jitgate listening").then(|| v["fields"]["addr"].as_str().map(String::from))?
        });
        async move { found }
    })
    .await;
    app.base = format!("http://{addr}");

    let id = app.request("prod-db:read 1h logging it").await;
    app.approve(APPROVER1, id).await;
    app.wait_dm(REQUESTER, "You have `prod-db:read` now").await;
    app.command(REQUESTER, &format!("revoke JIT-{id}")).await;
    app.wait_dm(REQUESTER, "has ended early").await;
    if let Err(waited) = child.terminate() {
        let tail: Vec<String> = lines.lock().unwrap().iter().rev().take(15).cloned().collect();
        panic!(
            "jitgate did not exit {waited:?} after SIGTERM; last lines:\n{}",
            tail.join("\n")
        );
    }
    reader.join().unwrap();

    let lines = lines.lock().unwrap().clone();
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        let message = v["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {line}"));
        if let Some(request) = v["fields"]["request_id"].as_str() {
            steps.push((request.to_string(), message.to_string()));
        }
        assert!(
            !line.contains(fake_slack::BOT_TOKEN) && !line.contains(SIGNING_SECRET),
            "a secret in the log: {line}"
        );
    }
    let label = format!("JIT-{id}");
    for step in ["request created", "approved", "granted", "revoked"] {
        let n = steps.iter().filter(|(r, m)| *r == label && m == step).count();
        assert_eq!(n, 1, "`{step}` logged {n} times for {label}; steps: {steps:?}");
    }
    let granted = lines
        .iter()
        .find(|l| l.contains("\"message\":\"granted\""))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .unwrap();
    for field in ["grant_id", "actor", "resource", "role"] {
        assert!(!granted["fields"][field].is_null(), "no {field} in {granted}");
    }
}

/// Kills the child if the test fails before it is terminated.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// SIGTERM, then waits for the exit (an error after `DEADLINE`).
    fn terminate(mut self) -> Result<(), Duration> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        while self.0.try_wait().unwrap().is_none() {
            if start.elapsed() > DEADLINE {
                return Err(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `chattr +i` works here (root, and a filesystem with attributes).
fn chattr_works() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "x").unwrap();
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(&probe)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("chattr").arg("-i").arg(&probe).status();
    }
    ok
}

/// Files made immutable for the guard's life.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(files: &[std::path::PathBuf]) -> Self {
        for f in files {
            let status = Command::new("chattr").arg("+i").arg(f).status().unwrap();
            assert!(status.success(), "chattr +i {}", f.display());
        }
        Self(files.to_vec())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(f).status();
        }
    }
}
