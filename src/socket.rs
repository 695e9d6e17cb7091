//! Socket Mode: jitgate connects out to Slack over WebSockets, so no public URL is
//! needed. Each of [`CONNECTIONS`] slots calls `apps.connections.open` with the app-level
//! token and opens the single-use URL it returns; envelopes (`slash_commands`,
//! `interactive`, `events_api`) go to the same entry points in `inputs` as the HTTP
//! endpoints and are acknowledged with their `envelope_id` (a slash command's reply rides
//! in the ack's `payload`). Re-deliveries have one effect: `inputs` de-duplicates on the
//! payload's `trigger_id` / `event_id`, since a re-delivery may carry a new envelope id.
//!
//! Spoken with tokio-tungstenite rather than slack-morphism's listener, which (2.31) waits
//! a fixed number of seconds between reconnects without back-off or jitter, handles one
//! envelope at a time per connection, lets `SSL_CERT_FILE` only replace its roots in ways
//! it does not document, and logs the socket URL with its one-time ticket at debug.
//!
//! After a `disconnect` message a slot opens a new connection at once while the old one
//! keeps serving until Slack closes it (at most [`OLD_SOCKET_GRACE`]); with two slots a
//! refresh loses nothing. A dropped socket, a failed `apps.connections.open` or a failed
//! connect is retried after 0.5–10 s (doubling, with jitter), never in a tight loop.
//! Neither token nor URL is ever logged.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::app::AppState;
use crate::backoff::backoff;
use crate::inputs::{self, EventReply};
use crate::log_throttle::LogThrottle;
use crate::slack::client::{tls_config, SlackCallError};
use crate::slack::payloads::{EventEnvelope, Interaction, SlashCommand};

/// Connections kept open at once (Slack allows up to 10 and spreads deliveries across them).
pub const CONNECTIONS: usize = 2;
/// First wait after a failure; doubles up to [`RETRY_MAX`]; equal jitter keeps each wait
/// between half of it and all of it, so always between 0.5 s and 10 s.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// A ping goes out this often; a connection silent for [`SILENCE_LIMIT`] is dead.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How long a connection Slack asked us to leave may keep serving.
pub const OLD_SOCKET_GRACE: Duration = Duration::from_secs(30);
/// Connecting (TCP, TLS and the WebSocket handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

static CONNECT_WARNINGS: LogThrottle = LogThrottle::new(Duration::from_secs(30));

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts the Socket Mode connections; they run until shutdown.
pub fn spawn(app: &AppState, app_token: &str) {
    let token: Arc<str> = Arc::from(app_token);
    app.slack_status.set_socket_mode();
    for slot in 0..CONNECTIONS {
        app.tasks.spawn(keep_connected(app.clone(), token.clone(), slot));
    }
}

/// Why one attempt to connect failed.
enum ConnectError {
    Open(SlackCallError),
    Connect(String),
}

async fn connect(app: &AppState, token: &str) -> Result<Socket, ConnectError> {
    let url = app.slack.open_socket_url(token).await.map_err(ConnectError::Open)?;
    let connector = if url.starts_with("wss://") {
        Some(Connector::Rustls(tls_config()))
    } else {
        Some(Connector::Plain)
    };
    let attempt = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, connector);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        // The error's text never contains the URL (and so never the ticket).
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(e)) => Err(ConnectError::Connect(e.to_string())),
        Err(_) => Err(ConnectError::Connect(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// One slot: connect, serve until the connection ends or Slack asks us to move, repeat.
async fn keep_connected(app: AppState, token: Arc<str>, slot: usize) {
    let mut failures = 0u32;
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let attempt = tokio::select! {
            r = connect(&app, &token) => r,
            _ = app.shutdown.cancelled() => break,
        };
        let failure = match attempt {
            Ok(socket) => {
                let (moved, moved_rx) = oneshot::channel();
                let (greeted, greeted_rx) = oneshot::channel();
                app.tasks.spawn(serve(app.clone(), socket, slot, moved, greeted));
                tokio::select! {
                    _ = moved_rx => {}
                    _ = app.shutdown.cancelled() => break,
                }
                let mut greeted_rx = greeted_rx;
                if greeted_rx.try_recv().is_ok() {
                    failures = 0;
                    CONNECT_WARNINGS.reset();
                    continue;
                }
                // Closed before `hello`: count it as a failure so a server that hangs up
                // at once is not called in a tight loop.
                "the connection closed before Slack's hello".to_string()
            }
            Err(ConnectError::Open(SlackCallError::Permanent(code))) => {
                let problem = format!(
                    "Slack refused SLACK_APP_TOKEN ({code}): create an app-level token with connections:write \
                     (Basic Information → App-Level Tokens) and set SLACK_APP_TOKEN to it"
                );
                if CONNECT_WARNINGS.hit().is_some() {
                    tracing::error!(slot, "Socket Mode cannot connect: {problem}");
                }
                app.slack_status.set_socket_problem(Some(problem));
                failures += 1;
                wait(&app, failures).await;
                continue;
            }
            Err(ConnectError::Open(e)) => format!("apps.connections.open failed: {e}"),
            Err(ConnectError::Connect(e)) => format!("connecting failed: {e}"),
        };
        failures += 1;
        if let Some(n) = CONNECT_WARNINGS.hit() {
            tracing::warn!(slot, failures = n, error = %failure, "Socket Mode: cannot connect; retrying");
        }
        wait(&app, failures).await;
    }
    tracing::info!(slot, "Socket Mode connection slot stopped");
}

async fn wait(app: &AppState, failures: u32) {
    let pause = backoff(RETRY_INITIAL, RETRY_MAX, failures, rand::random::<f64>());
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = app.shutdown.cancelled() => {}
    }
}

/// Serves one connection. `moved` fires when the slot should open a new connection
/// (Slack's `disconnect`, or this one ended); `greeted` when Slack said `hello`.
async fn serve(app: AppState, socket: Socket, slot: usize, moved: oneshot::Sender<()>, greeted: oneshot::Sender<()>) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut moved = Some(moved);
    let mut greeted = Some(greeted);
    let mut connected = false;
    let mut leave_by: Option<tokio::time::Instant> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // Slack pings, and answers our pings: a connection that stays silent is dead.
    let mut last_heard = tokio::time::Instant::now();
    let end = loop {
        let deadline = leave_by.unwrap_or(last_heard + SILENCE_LIMIT);
        let frame = tokio::select! {
            f = tokio::time::timeout_at(deadline, stream.next()) => f,
            _ = ping.tick() => {
                let _ = tx.try_send(Message::Ping(Vec::new().into()));
                continue;
            }
            _ = app.shutdown.cancelled() => break "shutting down",
        };
        if let Ok(Some(Ok(_))) = &frame {
            last_heard = tokio::time::Instant::now();
        }
        let text = match frame {
            Err(_) if leave_by.is_some() => break "left after Slack's disconnect",
            Err(_) => break "silent for too long",
            Ok(None) | Ok(Some(Err(_))) => break "dropped",
            Ok(Some(Ok(Message::Close(_)))) => break "closed by Slack",
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            tracing::warn!(slot, "Socket Mode: a message that is not JSON; ignored");
            continue;
        };
        match v["type"].as_str() {
            Some("hello") => {
                connected = true;
                app.slack_status.socket_connected(true);
                if let Some(g) = greeted.take() {
                    let _ = g.send(());
                }
                tracing::info!(
                    slot,
                    connections = v["num_connections"].as_u64(),
                    "Socket Mode connected"
                );
            }
            Some("disconnect") => {
                tracing::info!(
                    slot,
                    reason = v["reason"].as_str().unwrap_or("?"),
                    "Slack asked for a new Socket Mode connection; opening one"
                );
                if let Some(m) = moved.take() {
                    let _ = m.send(());
                }
                leave_by = Some(tokio::time::Instant::now() + OLD_SOCKET_GRACE);
            }
            _ if v["envelope_id"].is_string() => {
                let task_app = app.clone();
                let tx = tx.clone();
                app.tasks.spawn(async move {
                    let ack = handle_envelope(&task_app, v).await;
                    // A lost ack is harmless: Slack delivers again and inputs de-duplicate.
                    let _ = tx.send(Message::text(ack.to_string())).await;
                });
            }
            other => tracing::debug!(slot, kind = ?other, "Socket Mode: message ignored"),
        }
    };
    if connected {
        app.slack_status.socket_connected(false);
    }
    match end {
        "shutting down" | "left after Slack's disconnect" => tracing::info!(slot, "Socket Mode connection {end}"),
        _ if leave_by.is_some() => tracing::info!(slot, "old Socket Mode connection {end}"),
        _ => tracing::warn!(slot, "Socket Mode connection {end}; reconnecting"),
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    if let Some(m) = moved.take() {
        let _ = m.send(());
    }
}

/// Hands one envelope to its entry point and returns the acknowledgement to send.
pub async fn handle_envelope(app: &AppState, envelope: Value) -> Value {
    let id = envelope["envelope_id"].as_str().unwrap_or_default().to_string();
    let payload = envelope["payload"].clone();
    let reply: Option<Value> = match envelope["type"].as_str() {
        Some("slash_commands") => match serde_json::from_value::<SlashCommand>(payload) {
            Ok(cmd) => serde_json::to_value(inputs::command_once(app, &cmd).await).ok(),
            Err(e) => {
                tracing::warn!(error = %e, "Socket Mode: unreadable slash command");
                None
            }
        },
        // A form submission's answer (field errors) rides in the ack's payload.
        Some("interactive") => match serde_json::from_value::<Interaction>(payload) {
            Ok(i) => inputs::interaction_once(app, i).await,
            Err(e) => {
                tracing::warn!(error = %e, "Socket Mode: unreadable interaction");
                None
            }
        },
        Some("events_api") => {
            match serde_json::from_value::<EventEnvelope>(payload) {
                Ok(e) => match inputs::event(app, e).await {
                    EventReply::Ack | EventReply::Challenge(_) => {}
                },
                Err(e) => tracing::warn!(error = %e, "Socket Mode: unreadable event"),
            }
            None
        }
        other => {
            tracing::debug!(kind = ?other, "Socket Mode: envelope of a kind jitgate does not use");
            None
        }
    };
    match reply {
        Some(payload) => json!({ "envelope_id": id, "payload": payload }),
        None => json!({ "envelope_id": id }),
    }
}
