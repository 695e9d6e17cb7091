//! Headless Chromium for tests, driven over WebDriver (`chromedriver` + `fantoccini`).
//!
//! [`launch`] finds Chromium and chromedriver on this machine, starts chromedriver on a
//! free loopback port and opens a fresh headless session. Without them it returns `None`
//! after saying so loudly on stderr, unless `JITGATE_REQUIRE_BROWSER=1` (set by `.ci/run`),
//! which makes a missing browser a test failure. Debian: `apt-get install chromium
//! chromium-driver`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running headless browser. Call [`Browser::close`] at the end of the test; dropping it
/// also stops chromedriver (and with it Chromium).
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Ends the session and stops chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn missing(what: &str) -> Option<Browser> {
    if std::env::var("JITGATE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{what} not found and JITGATE_REQUIRE_BROWSER=1 (Debian: apt-get install -y chromium chromium-driver)");
    }
    // Written to the real stderr, not through `eprintln!`, which the test harness captures
    // and hides for a passing test: a skipped browser test must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPING browser test: {what} not found. Install it (Debian: apt-get install -y chromium \
         chromium-driver), or set JITGATE_REQUIRE_BROWSER=1 to fail instead. ***\n"
    );
    None
}

/// Starts chromedriver and a headless Chromium session, or `None` (skipping loudly) when
/// they are not installed and not required.
pub async fn launch() -> Option<Browser> {
    let Some(chromium) = find(&["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]) else {
        return missing("Chromium");
    };
    let Some(driver_bin) = find(&["chromedriver"]) else {
        return missing("chromedriver");
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let driver = Command::new(&driver_bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", driver_bin.display()));
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless",
                // Root in a container: Chromium's sandbox needs user namespaces it may not have.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1280,2000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let client = loop {
        let attempt = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(c) => break c,
            // chromedriver takes a moment to listen.
            Err(e) if start.elapsed() < super::DEADLINE => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("could not start a Chromium session through chromedriver: {e}"),
        }
    };
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}
