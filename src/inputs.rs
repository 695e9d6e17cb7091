//! What people do in Slack, as jitgate receives it: one entry point per kind of input — a
//! slash command, an interaction (a click on a button; form submissions arrive the same
//! way), an event. Transports (the HTTP endpoints today) check authenticity and decode
//! the wire format, then call these; none of them has a copy of what happens next.
//!
//! Every entry point answers at once: work that needs Slack or an adapter is spawned and
//! happens after the answer.

use slack_morphism::prelude::SlackCommandEventResponse;

use crate::app::AppState;
use crate::approvals::{self, Click};
use crate::commands;
use crate::home;
use crate::slack::payloads::{BlockActions, EventEnvelope, Interaction, SlashCommand};

/// Why an input from outside the configured workspace and app is refused, if it is.
/// `[slack] team_id` and `api_app_id` are optional; when set, an input must name them.
fn foreign(app: &AppState, team: Option<&str>, api_app: Option<&str>) -> Option<&'static str> {
    let slack = &app.config.slack;
    if slack.team_id.as_deref().is_some_and(|t| team != Some(t)) {
        return Some("another workspace");
    }
    if slack.api_app_id.as_deref().is_some_and(|a| api_app != Some(a)) {
        return Some("another Slack app");
    }
    None
}

/// A slash command: runs it and returns the ephemeral reply for the invoker.
pub async fn command(app: &AppState, cmd: &SlashCommand) -> SlackCommandEventResponse {
    if let Some(why) = foreign(app, Some(&cmd.team_id), cmd.api_app_id.as_deref()) {
        app.audit_refusal(
            &cmd.user_id,
            "command.refused",
            None,
            serde_json::json!({ "why": format!("sent from {why}"), "team_id": cmd.team_id,
                                "api_app_id": cmd.api_app_id }),
        )
        .await;
        return commands::ephemeral(format!(
            "This jitgate serves a different Slack workspace or app ({why}); nothing was done."
        ));
    }
    match commands::handle(app, cmd).await {
        Ok(text) => commands::ephemeral(text),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), user = %cmd.user_id, "slash command failed");
            commands::ephemeral(
                "Something went wrong on jitgate's side and nothing was saved; please try again. \
                 If it keeps happening, tell the jitgate operators."
                    .into(),
            )
        }
    }
}

/// An interaction. Clicks are decided after the answer: who may approve can need Slack
/// (user-group membership).
pub fn interaction(app: &AppState, interaction: Interaction) {
    match interaction {
        Interaction::BlockActions(BlockActions {
            user,
            team,
            api_app_id,
            response_url,
            actions,
            ..
        }) => {
            if let Some(why) = foreign(app, team.as_ref().map(|t| t.id.as_str()), api_app_id.as_deref()) {
                let task_app = app.clone();
                app.tasks.spawn(async move {
                    task_app
                        .audit_refusal(
                            &user.id,
                            "click.refused",
                            None,
                            serde_json::json!({ "why": format!("sent from {why}"),
                                                "team_id": team.map(|t| t.id), "api_app_id": api_app_id }),
                        )
                        .await;
                });
                return;
            }
            // One action per payload: jitgate's buttons send one each; a payload listing
            // more is not from a real click, and acting on each would multiply the work.
            if actions.len() > 1 {
                tracing::warn!(user = %user.id, actions = actions.len(), "interaction with several actions; acting on the first only");
            }
            if let Some(action) = actions.into_iter().next() {
                click(
                    app,
                    Click {
                        user_id: user.id,
                        action_id: action.action_id,
                        value: action.value.unwrap_or_default(),
                        response_url,
                    },
                );
            }
        }
        Interaction::Other => {}
    }
}

/// One click on one of jitgate's buttons.
pub fn click(app: &AppState, click: Click) {
    let task_app = app.clone();
    app.tasks.spawn(async move {
        if let Err(e) = approvals::handle_click(&task_app, click).await {
            tracing::error!(error = format!("{e:#}"), "click failed");
        }
    });
}

/// What an event asks to be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventReply {
    /// Slack's `url_verification`: echo the challenge.
    Challenge(String),
    /// Acknowledge with an empty 200.
    Ack,
}

/// An Events API delivery. Slack retries deliveries it thinks failed; each event is acted
/// on once.
pub fn event(app: &AppState, envelope: EventEnvelope) -> EventReply {
    match envelope {
        EventEnvelope::UrlVerification { challenge } => EventReply::Challenge(challenge),
        EventEnvelope::EventCallback {
            event_id,
            event,
            team_id,
            api_app_id,
        } => {
            if let Some(why) = foreign(app, team_id.as_deref(), api_app_id.as_deref()) {
                tracing::warn!(why, "ignoring an event from outside the configured workspace or app");
                return EventReply::Ack;
            }
            if event_id.as_deref().is_some_and(|id| !app.seen_events.first_time(id)) {
                return EventReply::Ack;
            }
            let is_home = event["type"] == "app_home_opened" && event["tab"] == "home";
            if let (true, Some(user)) = (is_home, event["user"].as_str()) {
                let user = user.to_string();
                let task_app = app.clone();
                app.tasks.spawn(async move {
                    if let Err(e) = home::publish(&task_app, &user).await {
                        tracing::warn!(error = format!("{e:#}"), "could not publish the Home tab");
                    }
                });
            }
            EventReply::Ack
        }
        EventEnvelope::Other => EventReply::Ack,
    }
}
