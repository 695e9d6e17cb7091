//! `jitgate report` (CSV, JSON, HTML) and `audit export`, run as the real binary against a
//! database filled through Slack requests; the HTML report opened in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Duration, SecondsFormat};
use serde_json::Value;

use crate::breakglass::{break_glass_toml, BG_USER};
use crate::support::browser;
use crate::support::*;

const OTHER: &str = "UREQUESTER2";

/// A week of requests on the manual clock: granted and expired, denied, revoked early,
/// timed out, a break-glass use reviewed by an approver. Returns the app, the config path and the `--since`/`--until` bounds.
async fn a_week_of_requests() -> (TestApp, PathBuf, String, String) {
    let app = TestApp::start_with(Setup {
        extra_toml: break_glass_toml(),
        ..Setup::default()
    })
    .await;
    let start = app.clock.now();
    let mut timed_out = Vec::new();
    for day in 0..7i64 {
        let a = app.request(&format!("prod-db:read 1h investigating INC-{day}")).await;
        app.clock.advance(Duration::minutes(2 + day * 9));
        app.approve(APPROVER1, a).await;
        app.wait_grant(a, "active").await;
        if day % 2 == 0 {
            let d = app.request_as(OTHER, "prod-db:write 2h schema change").await;
            app.clock.advance(Duration::minutes(30));
            app.deny(APPROVER2, d).await;
            app.wait_request(d, "denied").await;
        }
        if day % 3 == 0 {
            timed_out.push(app.request_as(OTHER, "payments:admin 30m refund run").await);
        }
        if day == 4 {
            let r = app.request_as(OTHER, "prod-db:read 2h <b>bold</b> & \"quoted\"").await;
            app.approve(APPROVER2, r).await;
            app.wait_grant(r, "active").await;
            app.command(OTHER, &format!("revoke {r}")).await;
            app.wait_grant(r, "revoked").await;
        }
        if day == 5 {
            let reply = app.command(BG_USER, "breakglass core-db:admin 20m primary down").await;
            let bg = reply
                .split("JIT-")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{reply}"));
            app.wait_grant(bg, "active").await;
            app.click(APPROVER1, "jit_reviewed", bg).await;
            app.wait_ephemeral(APPROVER1, bg).await;
        }
        app.clock.advance(Duration::hours(2));
        app.wait_grant(a, "revoked").await;
        app.clock.advance(Duration::hours(21));
    }
    // The last day's undecided request reaches its 24h time-out too.
    app.clock.advance(Duration::hours(2));
    for id in timed_out {
        app.wait_request(id, "expired").await;
    }
    // One still pending and one still in force at report time.
    app.request_as(OTHER, "payments:admin 30m month end").await;
    let live = app.request("prod-db:read 4h on call").await;
    app.approve(APPROVER1, live).await;
    app.wait_grant(live, "active").await;

    let path = app.dir.path().join("jitgate.toml");
    std::fs::write(&path, &app.config_text).unwrap();
    let since = (start - Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let until = (app.clock.now() + Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    (app, path, since, until)
}

fn jitgate(args: &[&str], config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jitgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn report_lists_every_access_as_csv_and_json_with_a_summary() {
    let (app, config, since, until) = a_week_of_requests().await;
    let csv = jitgate(
        &["report", "--since", &since, "--until", &until, "--format", "csv"],
        &config,
    );
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "requester,resource,role,reason,approvers,requested_at,decided_at,granted_at,ended_at,time_to_decision,time_used,outcome,extensions"
    );
    let total = app.count("SELECT COUNT(*) FROM requests").await as usize;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), total);
    let first = &rows[0];
    assert_eq!(&first[0], REQUESTER);
    assert_eq!(&first[3], "investigating INC-0");
    assert_eq!(&first[4], APPROVER1);
    assert_eq!(&first[9], "120", "time to decision in seconds");
    assert_eq!(&first[11], "expired");
    let time = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    for t in [&first[5], &first[6], &first[7], &first[8]] {
        time(t);
    }
    // Time used runs from the grant to the revoke (the manual clock jumped past the hour).
    let used = (time(&first[8]) - time(&first[7])).num_seconds();
    assert_eq!(first[10].parse::<i64>().unwrap(), used);
    assert!(used >= 3600, "{used}");
    let outcomes: Vec<&str> = rows.iter().map(|r| r.get(11).unwrap()).collect();
    for o in ["expired", "denied", "timed_out", "revoked_early", "pending", "active"] {
        assert!(outcomes.contains(&o), "{o} missing from {outcomes:?}");
    }
    let pending = rows.iter().find(|r| &r[11] == "pending").unwrap();
    assert_eq!((&pending[6], &pending[7], &pending[8]), ("", "", ""));
    assert!(rows.iter().any(|r| &r[3] == "<b>bold</b> & \"quoted\""));

    let json: Value = serde_json::from_str(&jitgate(
        &["report", "--since", &since, "--until", &until, "--format", "json"],
        &config,
    ))
    .unwrap();
    let jrows = json["rows"].as_array().unwrap();
    assert_eq!(jrows.len(), total);
    let keys: Vec<&String> = jrows[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 13);
    for column in ["requester", "approvers", "time_to_decision", "outcome", "extensions"] {
        assert!(jrows[0].get(column).is_some(), "{column}");
    }
    assert_eq!(json["summary"]["requests"], total);
    assert_eq!(json["summary"]["outcomes"]["denied"], 4);
    assert_eq!(json["summary"]["outcomes"]["timed_out"], 3);
    assert_eq!(json["summary"]["break_glass"], 1);
    assert_eq!(json["summary"]["break_glass_unreviewed"], 0);
    let bg = rows.iter().find(|r| &r[1] == "core-db").unwrap();
    assert_eq!(&bg[4], "break-glass (reviewed by UAPPROVER1: ok)");
    assert_eq!(&bg[9], "0", "break-glass is decided at once");

    // A period with nothing in it: just the header.
    let empty = jitgate(&["report", "--since", "2000-01-01", "--until", "2000-02-01"], &config);
    assert_eq!(empty.lines().count(), 1);
}

#[tokio::test]
async fn report_refuses_a_period_it_cannot_read() {
    let app = TestApp::start().await;
    let path = app.dir.path().join("jitgate.toml");
    std::fs::write(&path, &app.config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["report", "--since", "last tuesday", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--since") && err.contains("30d"), "{err}");
}

#[tokio::test]
async fn audit_export_writes_rfc3339_times_and_details_objects() {
    let app = TestApp::start().await;
    let id = app.request("prod-db:read 1h investigating").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    let path = app.dir.path().join("jitgate.toml");
    std::fs::write(&path, &app.config_text).unwrap();
    let out = jitgate(&["audit", "export"], &path);
    let entries: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(entries.len() >= 4);
    for e in &entries {
        let at = e["at"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|err| panic!("{at}: {err}"));
        assert!(e["details"].is_object(), "{e}");
    }
    let approved = entries.iter().find(|e| e["action"] == "request.approved").unwrap();
    assert_eq!(approved["details"]["approvers"][0], APPROVER1);
}

#[tokio::test]
async fn html_report_renders_its_charts_and_table_in_headless_chromium() {
    let Some(browser) = browser::launch().await else {
        return;
    };
    let (app, config, since, until) = a_week_of_requests().await;
    let html = app.dir.path().join("report.html");
    jitgate(
        &[
            "report",
            "--since",
            &since,
            "--until",
            &until,
            "--format",
            "html",
            "--out",
            html.to_str().unwrap(),
        ],
        &config,
    );
    let total = app.count("SELECT COUNT(*) FROM requests").await;
    let c = &browser.client;
    c.goto(&format!("file://{}", html.display())).await.unwrap();
    let probe = c
        .execute(
            r#"
            const charts = [...document.querySelectorAll('figure.chart')];
            return {
              title: document.title,
              charts: charts.length,
              rendered: charts.map(f => {
                const svg = f.querySelector('svg');
                const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                return { id: f.id, width: box.width, height: box.height,
                         bars: svg ? svg.querySelectorAll('rect').length : 0,
                         texts: svg ? svg.querySelectorAll('text').length : 0 };
              }),
              rows: document.querySelectorAll('#accesses tbody tr').length,
              flagged: document.querySelectorAll('#accesses tr.break-glass').length,
              headers: [...document.querySelectorAll('#accesses th')].map(th => th.textContent),
              cells: [...document.querySelectorAll('#accesses td')].map(td => td.textContent),
              loaded: performance.getEntriesByType('resource').length,
            };
            "#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(probe["title"], "jitgate access report");
    assert_eq!(probe["charts"], 5, "{probe}");
    for chart in probe["rendered"].as_array().unwrap() {
        assert!(chart["width"].as_f64().unwrap() > 300.0, "{chart}");
        assert!(chart["height"].as_f64().unwrap() > 150.0, "{chart}");
        // Background, plot area and at least one bar; axis labels as text.
        assert!(chart["bars"].as_u64().unwrap() >= 3, "{chart}");
        assert!(chart["texts"].as_u64().unwrap() >= 3, "{chart}");
    }
    assert_eq!(probe["rows"], total, "{probe}");
    assert_eq!(probe["flagged"], 1, "the break-glass use stands out");
    assert_eq!(probe["headers"].as_array().unwrap().len(), 13);
    assert_eq!(probe["loaded"], 0, "the report fetched something");
    // User text shows as text, not markup.
    assert!(probe["cells"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "<b>bold</b> & \"quoted\""));

    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // `JITGATE_UPDATE_SCREENSHOT=1 cargo test html_report` refreshes the README's picture.
    if std::env::var("JITGATE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.png");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &png).unwrap();
    }
    browser.close().await;
}
