//! HTTP: the three Slack endpoints, and health, readiness and metrics for operators. Every Slack endpoint checks the
//! signature on the raw body before reading anything, decodes Slack's wire format and
//! hands the input to its entry point in `inputs`, which answers at once.
//!
//! [`serve`] is the server itself: its own accept loop over hyper, so that a client that
//! is slow to send its headers or body, or never finishes, holds nothing for long — a
//! header read time-out, a body and a whole-request time-out, a cap on connections — and
//! so that shutdown waits for clients only up to a bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::app::AppState;
use crate::inputs::{self, EventReply};
use crate::slack::payloads::{EventEnvelope, Interaction, InteractionForm, SlashCommand};
use crate::slack::signature;
use crate::store;

/// Slack's payloads are small; anything bigger is refused before it is read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// All routes, with the body-size limit and the request time-outs of `[server]`. Without a
/// signing secret (Socket Mode) the Slack endpoints are not served: nothing unsigned is
/// ever taken.
pub fn router(state: AppState) -> Router {
    let request_timeout = state.config.server.request_timeout.to_std();
    let slack = Router::new()
        .route("/slack/commands", post(slash_command))
        .route("/slack/interactions", post(interaction))
        .route("/slack/events", post(event));
    let routes = if state.signing_secret.is_empty() {
        Router::new()
    } else {
        slack
    };
    routes
        .merge(operations())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A body that stops arriving, and a request (body and answer) that takes too long.
        .layer(RequestBodyTimeoutLayer::new(request_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), timed))
        .with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`: served on `[server] listen`, and on
/// `[metrics] listen` when it is set (see [`operations_router`]).
fn operations() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The operations routes alone, for a separate listener (`[metrics] listen`), so that they
/// can stay on a loopback or internal address.
pub fn operations_router(state: AppState) -> Router {
    operations()
        .layer(middleware::from_fn_with_state(state.clone(), timed))
        .with_state(state)
}

/// Ready (200) or not (503, with one line per problem).
async fn readyz(State(app): State<AppState>) -> Response {
    let problems = crate::readiness::check(&app).await;
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

/// The routes `/metrics` names; any other path counts as `other`, so a scan of random
/// paths cannot create new series.
const ROUTES: &[&str] = &[
    "/slack/commands",
    "/slack/interactions",
    "/slack/events",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Counts every HTTP request by route and status, with its duration.
async fn timed(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = ROUTES
        .iter()
        .find(|r| **r == req.uri().path())
        .copied()
        .unwrap_or("other");
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    app.metrics
        .http_request(path, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// What bounds the server's clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this long.
    pub header_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// At shutdown, how long open connections may take to finish before they are cut.
    pub grace: Duration,
}

/// Serves `app` on `listener` until `stop` is cancelled; then stops accepting, lets open
/// connections finish their current request for at most `limits.grace`, and cuts the
/// rest. Never waits longer than that for any client.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: CancellationToken) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BODY_BYTES.max(8192) * 2);
    loop {
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // Finish the request in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = connections.len();
    if tokio::time::timeout(limits.grace, async { while connections.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            grace = ?limits.grace,
            "clients did not finish within the shutdown grace; cutting them off"
        );
        connections.shutdown().await;
    } else if open > 0 {
        tracing::info!(connections = open, "open connections finished");
    }
    Ok(())
}

/// A request body whose Slack signature has been checked.
pub struct Signed(pub Bytes);

impl FromRequest<AppState> for Signed {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let headers: HeaderMap = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(|e| e.into_response())?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let now = state.clock.now().timestamp();
        match signature::verify(
            &state.signing_secret,
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
            &body,
            now,
        ) {
            Ok(()) => Ok(Signed(body)),
            Err(e) => {
                tracing::warn!(reason = %e, "refused a request with a bad Slack signature");
                Err(StatusCode::UNAUTHORIZED.into_response())
            }
        }
    }
}

async fn healthz(State(app): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&app.db.read).await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// Prometheus' scrape: counters and histograms as they stand, and the stored state read now.
async fn metrics(State(app): State<AppState>) -> Response {
    let observed = match app.db.read.acquire().await {
        Ok(mut conn) => store::observed(&mut conn).await,
        Err(e) => Err(e),
    };
    match observed {
        Ok(o) => {
            // Every configured resource is reported, with 0 when nothing is in force.
            let mut active: Vec<(String, i64)> = app.config.resources.iter().map(|r| (r.name.clone(), 0)).collect();
            for (resource, n) in o.active_by_resource {
                match active.iter_mut().find(|(r, _)| *r == resource) {
                    Some(entry) => entry.1 = n,
                    None => active.push((resource, n)),
                }
            }
            let oldest_age = o.outbox_oldest_at.map(|at| app.now_ms() - at);
            app.metrics.set_state(&active, o.outbox_backlog, oldest_age);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the database; stored-state gauges are stale"),
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.encode(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct SslCheck {
    #[serde(default)]
    ssl_check: Option<String>,
}

async fn slash_command(State(app): State<AppState>, Signed(body): Signed) -> Response {
    if let Ok(SslCheck { ssl_check: Some(_) }) = serde_urlencoded::from_bytes::<SslCheck>(&body) {
        return StatusCode::OK.into_response();
    }
    let cmd: SlashCommand = match serde_urlencoded::from_bytes(&body) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable slash command");
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    Json(inputs::command(&app, &cmd).await).into_response()
}

async fn interaction(State(app): State<AppState>, Signed(body): Signed) -> Response {
    let form: InteractionForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let interaction: Interaction = match serde_json::from_str(&form.payload) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable interaction payload");
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    match inputs::interaction(&app, interaction).await {
        Some(answer) => Json(answer).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

async fn event(State(app): State<AppState>, Signed(body): Signed) -> Response {
    match serde_json::from_slice::<EventEnvelope>(&body) {
        Ok(envelope) => match inputs::event(&app, envelope).await {
            EventReply::Challenge(challenge) => Json(serde_json::json!({ "challenge": challenge })).into_response(),
            EventReply::Ack => StatusCode::OK.into_response(),
        },
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}
