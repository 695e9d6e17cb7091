//! HTTP: the three Slack endpoints and a health check. Every Slack endpoint checks the
//! signature on the raw body before reading anything, decodes Slack's wire format and
//! hands the input to its entry point in `inputs`, which answers at once.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::app::AppState;
use crate::inputs::{self, EventReply};
use crate::slack::payloads::{EventEnvelope, Interaction, InteractionForm, SlashCommand};
use crate::slack::signature;

/// Slack's payloads are small; anything bigger is refused before it is read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// All routes. Without a signing secret (Socket Mode) the Slack endpoints are not served:
/// nothing unsigned is ever taken.
pub fn router(state: AppState) -> Router {
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
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
    inputs::interaction(&app, interaction);
    StatusCode::OK.into_response()
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
