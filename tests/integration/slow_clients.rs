//! Slow or stuck clients hold nothing for long: partial headers and silent connections are
//! cut after the header time-out, a trickled body after the request time-out, the
//! connection cap keeps the rest waiting, and shutdown waits for clients at most the
//! grace while the scheduler keeps revoking until the very end of the drain.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::crash::scalar;
use crate::support::*;

/// Reads until the server closes the connection; how long that took.
async fn closed_after(mut s: TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
    start.elapsed()
}

async fn slow_app(server: &str) -> TestApp {
    TestApp::start_with(Setup {
        clock: TestClock::System,
        server_toml: server.into(),
        ..Setup::default()
    })
    .await
}

#[tokio::test]
async fn partial_headers_and_silent_connections_are_cut_off_and_the_cap_holds() {
    let app = slow_app("header_timeout = \"1s\"\nrequest_timeout = \"3s\"\nmax_connections = 4\n").await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..12 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"POST /slack/commands HTTP/1.1\r\nHost: jitgate\r\nX-Slow: ")
                .await
                .unwrap();
        }
        clients.push(s);
    }
    let waits = futures_util::future::join_all(clients.into_iter().map(closed_after)).await;
    let total = start.elapsed();
    // 12 clients, 4 at a time, 1 s each: about 3 s; never the 20 s deadline.
    assert!(
        total < Duration::from_secs(10),
        "slow clients were cut off: {total:?} {waits:?}"
    );
    // The app still answers.
    let (status, _) = app.post_raw("/healthz", "", "text/plain", None).await;
    assert_ne!(status, 0);
    let reply = app.command(REQUESTER, "help").await;
    assert!(!reply.is_empty());
}

#[tokio::test]
async fn a_slow_client_delays_neither_a_due_revoke_nor_shutdown() {
    let mut app = slow_app("header_timeout = \"1s\"\nrequest_timeout = \"6s\"\n").await;
    let id = app.request("prod-db:read 2s short one").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    let addr = app.base.trim_start_matches("http://").to_string();

    // A client that sent its headers and trickles its body, one byte every 200 ms.
    let trickle = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(
                b"POST /slack/commands HTTP/1.1\r\nHost: jitgate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\n",
            )
            .await
            .unwrap();
            for _ in 0..500 {
                if s.write_all(b"a").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // And one stuck in its headers.
    let mut stuck = TcpStream::connect(&addr).await.unwrap();
    stuck
        .write_all(b"POST /slack/interactions HTTP/1.1\r\nHost: ")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Shut down now: the grant is due in under 2 s, while the trickling client holds the
    // drain open (it is cut after the 6 s request time-out, well within the 10 s grace).
    let running = app.running.take().unwrap();
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), running.shutdown())
        .await
        .expect("shutdown is bounded by the grace despite slow clients")
        .unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(12), "shutdown took {took:?}");
    trickle.abort();
    assert_eq!(
        scalar(&app, &format!("SELECT state FROM grants WHERE request_id = {id}"))
            .await
            .as_deref(),
        Some("revoked"),
        "the revoke that fell due during the drain ran"
    );
}
