//! HTTP: the three Slack endpoints and a health check. Every Slack endpoint checks the
//! signature on the raw body before reading anything, and answers at once: work that
//! needs Slack or an adapter happens afterwards, in the background.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::approvals::{self, Click};
use crate::commands;
use crate::slack::payloads::{BlockActions, EventEnvelope, Interaction, InteractionForm, SlashCommand};
use crate::slack::signature;
use crate::AppState;

/// Slack's payloads are small; anything bigger is refused before it is read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/slack/commands", post(slash_command))
        .route("/slack/interactions", post(interaction))
        .route("/slack/events", post(event))
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
    match commands::handle(&app, &cmd).await {
        Ok(text) => Json(commands::ephemeral(text)).into_response(),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), user = %cmd.user_id, "slash command failed");
            Json(commands::ephemeral(
                "Something went wrong on jitgate's side and nothing was saved; please try again. \
                 If it keeps happening, tell the jitgate operators."
                    .into(),
            ))
            .into_response()
        }
    }
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
    if let Interaction::BlockActions(BlockActions {
        user,
        response_url,
        actions,
        ..
    }) = interaction
    {
        for action in actions {
            let click = Click {
                user_id: user.id.clone(),
                action_id: action.action_id,
                value: action.value.unwrap_or_default(),
                response_url: response_url.clone(),
            };
            // Group lookups need Slack, so the decision is made after answering.
            let task_app = app.clone();
            app.tasks.spawn(async move {
                if let Err(e) = approvals::handle_click(&task_app, click).await {
                    tracing::error!(error = format!("{e:#}"), "click failed");
                }
            });
        }
    }
    StatusCode::OK.into_response()
}

async fn event(State(app): State<AppState>, Signed(body): Signed) -> Response {
    match serde_json::from_slice::<EventEnvelope>(&body) {
        Ok(EventEnvelope::UrlVerification { challenge }) => {
            Json(serde_json::json!({ "challenge": challenge })).into_response()
        }
        Ok(EventEnvelope::EventCallback { event_id, event }) => {
            // Slack retries deliveries it thinks failed; act on each event once.
            if event_id.as_deref().is_some_and(|id| !app.seen_events.first_time(id)) {
                return StatusCode::OK.into_response();
            }
            let is_home = event["type"] == "app_home_opened" && event["tab"] == "home";
            if let (true, Some(user)) = (is_home, event["user"].as_str()) {
                let user = user.to_string();
                let task_app = app.clone();
                app.tasks.spawn(async move {
                    if let Err(e) = crate::home::publish(&task_app, &user).await {
                        tracing::warn!(error = format!("{e:#}"), "could not publish the Home tab");
                    }
                });
            }
            StatusCode::OK.into_response()
        }
        Ok(EventEnvelope::Other) => StatusCode::OK.into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}
