//! The real binary, killed with SIGKILL at several points of the grant lifecycle and
//! restarted: nothing is lost, nothing is granted twice, nothing is marked revoked unless
//! the adapter confirmed it. And SIGTERM lets a running adapter call finish.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `jitgate serve` as a child process.
pub struct Bot {
    child: Child,
}

impl Bot {
    /// Starts the binary on `app`'s configuration and points `app` at its address.
    pub async fn start(app: &mut TestApp) -> Self {
        Self::start_with_env(app, &[]).await
    }

    /// [`Bot::start`] with extra environment variables.
    pub async fn start_with_env(app: &mut TestApp, env: &[(&str, &str)]) -> Self {
        let config = app.dir.path().join("jitgate.toml");
        std::fs::write(&config, &app.config_text).unwrap();
        let (bot, addr) = Self::spawn(&config, env, None).await;
        app.base = format!("http://{addr}");
        bot
    }

    /// Starts the binary on the configuration file `config` and returns it with the
    /// address it listens on. With `log`, its log lines are appended to that file.
    pub async fn spawn(config: &Path, env: &[(&str, &str)], log: Option<PathBuf>) -> (Self, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jitgate"))
            .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
            .args(["serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("JITGATE_AUDIT_KEY", AUDIT_KEY)
            .env("SLACK_BOT_TOKEN", fake_slack::BOT_TOKEN)
            .env("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            .env("JITGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        // Owned by the guard from here on, so a failed start-up cannot leave it running.
        let bot = Self { child };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log.and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(path).ok());
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = log.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
                if let Some(addr) = line.split("addr=").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
            .await
            .unwrap()
            .expect("jitgate printed its address");
        (bot, addr)
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait_exit(mut self) -> std::process::ExitStatus {
        wait_for("jitgate to exit", || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn scalar(app: &TestApp, sql: &str) -> Option<String> {
    let db = jitgate::store::Db::open(&app.database.url).await.unwrap();
    let row: Option<(String,)> = sqlx::query_as(sql).fetch_optional(&db.read).await.unwrap();
    db.close().await;
    row.map(|r| r.0)
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test]
async fn sigkill_at_any_point_loses_nothing_and_never_fakes_a_revoke() {
    let mut app = TestApp::start_with(Setup {
        clock: TestClock::System,
        in_process: false,
        ..Setup::default()
    })
    .await;

    // 1. Killed between the request and its approval: the card stays clickable.
    let bot = Bot::start(&mut app).await;
    let id = app.request("prod-db:read 3s crash test").await;
    app.wait_card_containing(id, "jit_approve").await;
    bot.kill();

    // 2. Killed while the adapter is granting.
    let bot = Bot::start(&mut app).await;
    app.block_adapter("grant", true);
    app.approve(APPROVER1, id).await;
    wait_for("the grant to start", || async {
        (count(&app.adapter_log(), "grant ") == 1).then_some(())
    })
    .await;
    bot.kill();
    assert_eq!(
        scalar(&app, "SELECT state FROM grants").await.as_deref(),
        Some("granting")
    );
    app.block_adapter("grant", false);

    // 3. Restarted: the interrupted grant is applied again (the adapter tolerates it) and
    //    becomes active exactly once.
    app.block_adapter("revoke", true);
    let bot = Bot::start(&mut app).await;
    wait_for("the grant to be active", || async {
        (scalar(&app, "SELECT state FROM grants").await.as_deref() == Some("active")).then_some(())
    })
    .await;
    assert_eq!(count(&app.adapter_log(), "grant "), 2, "retried once after the crash");
    assert_eq!(
        scalar(&app, "SELECT CAST(COUNT(*) AS TEXT) FROM grants")
            .await
            .as_deref(),
        Some("1")
    );

    // 4. Killed while the adapter is revoking (the grant expired after 3s).
    wait_for("the revoke to start", || async {
        (count(&app.adapter_log(), "revoke ") == 1).then_some(())
    })
    .await;
    bot.kill();
    assert_eq!(
        scalar(&app, "SELECT state FROM grants").await.as_deref(),
        Some("active"),
        "not revoked until the adapter says so"
    );

    // 5. Restarted: the due revoke runs first thing and is recorded.
    app.block_adapter("revoke", false);
    let bot = Bot::start(&mut app).await;
    wait_for("the grant to be revoked", || async {
        (scalar(&app, "SELECT state FROM grants").await.as_deref() == Some("revoked")).then_some(())
    })
    .await;
    assert!(count(&app.adapter_log(), "revoke ") >= 2);
    wait_for("a DM about the end", || async {
        app.dms(REQUESTER).iter().any(|t| t.contains("has ended")).then_some(())
    })
    .await;

    // 6. Killed after everything: nothing more happens on restart.
    bot.kill();
    let before = app.adapter_log().len();
    let bot = Bot::start(&mut app).await;
    let reply = app.command(REQUESTER, "list").await;
    assert!(reply.contains("no pending requests"), "{reply}");
    assert_eq!(app.adapter_log().len(), before);
    bot.kill();

    let (ok,) = {
        let pool = jitgate::store::Db::open(&app.database.url).await.unwrap().write;
        let mut conn = pool.acquire().await.unwrap();
        (jitgate::audit::verify_chain(&audit_key(), &mut conn).await.unwrap(),)
    };
    assert!(ok.is_ok(), "audit chain intact across crashes: {ok:?}");
}

#[tokio::test]
async fn sigterm_lets_the_running_adapter_call_finish() {
    let mut app = TestApp::start_with(Setup {
        clock: TestClock::System,
        in_process: false,
        ..Setup::default()
    })
    .await;
    let bot = Bot::start(&mut app).await;
    let id = app.request("prod-db:read 1h graceful").await;
    app.block_adapter("grant", true);
    app.approve(APPROVER1, id).await;
    wait_for("the grant to start", || async {
        (count(&app.adapter_log(), "grant ") == 1).then_some(())
    })
    .await;
    bot.terminate();
    // New requests are refused once shutdown began (the listener closes).
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let url = format!("{}/healthz", app.base);
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
            if client.get(url.parse().unwrap()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the listener closes on SIGTERM");
    app.block_adapter("grant", false);
    let status = bot.wait_exit().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(app.adapter_done(), vec!["done grant 1".to_string()]);
    assert_eq!(
        scalar(&app, "SELECT state FROM grants").await.as_deref(),
        Some("active"),
        "the finished call was recorded"
    );
}

/// Issue #11: a click is acknowledged to Slack before it is decided (deciding can need a
/// Slack lookup). Killed between the acknowledgement and the decision, jitgate acts on
/// the click at the next start, once; Slack delivering it again changes nothing.
#[tokio::test]
async fn a_click_acknowledged_just_before_a_crash_is_acted_on_after_the_restart() {
    let mut app = TestApp::start_with(Setup {
        clock: TestClock::System,
        in_process: false,
        ..Setup::default()
    })
    .await;
    let bot = Bot::start(&mut app).await;
    let id = app.request("prod-db:read 1h click before a crash").await;
    app.wait_card_containing(id, "jit_approve").await;

    // A group member's click needs Slack to confirm the membership; Slack stalls there,
    // so the click is acknowledged and still undecided when the process dies.
    app.slack.hang_method("usergroups.users.list", true);
    let body = app.click_body("UGROUPMEMBER", "jit_approve", &id.to_string(), "click-crash");
    let (status, _) = app
        .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200, "the click is acknowledged");
    wait_for("the decision to wait on Slack", || async {
        (app.slack.held_calls() > 0).then_some(())
    })
    .await;
    bot.kill();
    assert_eq!(
        scalar(&app, &format!("SELECT state FROM requests WHERE id = {id}"))
            .await
            .as_deref(),
        Some("pending"),
        "nothing decided before the crash"
    );

    app.slack.hang_method("usergroups.users.list", false);
    let bot = Bot::start(&mut app).await;
    wait_for("the click to be acted on after the restart", || async {
        let state = scalar(&app, &format!("SELECT state FROM requests WHERE id = {id}")).await;
        (state.as_deref() == Some("approved")).then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT CAST(COUNT(*) AS TEXT) FROM decisions WHERE request_id = {id}")
        )
        .await
        .as_deref(),
        Some("1")
    );
    wait_for("the recorded click to be cleared", || async {
        let left = scalar(
            &app,
            "SELECT CAST(COUNT(*) AS TEXT) FROM deliveries WHERE pending_input IS NOT NULL",
        )
        .await;
        (left.as_deref() == Some("0")).then_some(())
    })
    .await;

    // Slack delivering the same click again (same trigger_id) has no second effect, and
    // neither does a restart.
    let (status, _) = app
        .post_signed("/slack/interactions", &body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200);
    bot.kill();
    let bot = Bot::start(&mut app).await;
    wait_for("the grant to be active", || async {
        (scalar(&app, "SELECT state FROM grants").await.as_deref() == Some("active")).then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT CAST(COUNT(*) AS TEXT) FROM decisions WHERE request_id = {id}")
        )
        .await
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        scalar(&app, "SELECT CAST(COUNT(*) AS TEXT) FROM grants")
            .await
            .as_deref(),
        Some("1")
    );
    bot.kill();
}
