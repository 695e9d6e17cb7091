//! What people do in Slack, as jitgate receives it: one entry point per kind of input — a
//! slash command, an interaction (a click on a button; form submissions arrive the same
//! way), an event. Transports (the HTTP endpoints today) check authenticity and decode
//! the wire format, then call these; none of them has a copy of what happens next.
//!
//! Every entry point answers at once: work that needs Slack or an adapter is spawned and
//! happens after the answer.

use std::time::Duration;

use slack_morphism::prelude::SlackCommandEventResponse;

use crate::app::AppState;
use crate::approvals::{self, Click};
use crate::commands::{self, Command};
use crate::home;
use crate::slack::payloads::{BlockActions, EventEnvelope, Interaction, SlashCommand};
use crate::store;

/// How long a delivery's key (trigger_id, event_id) is remembered. Slack re-delivers
/// within minutes (Events API retries end after about 5 minutes).
pub const DELIVERY_RETENTION: Duration = Duration::from_millis(store::DELIVERY_RETENTION_MS as u64);

/// Kinds of keys in the `deliveries` table.
pub mod delivery_kind {
    /// A slash command's trigger_id.
    pub const COMMAND: &str = crate::store::COMMAND_DELIVERY;
    /// A click's trigger_id.
    pub const INTERACTION: &str = "interaction";
    /// An Events API event_id.
    pub const EVENT: &str = "event";
}

/// True the first time Slack delivers `key` of `kind`; false for re-deliveries. Durable
/// (the `deliveries` table), so it holds across restarts and processes. If the database
/// cannot answer, the delivery is treated as new: acting twice on a rare retry is better
/// than dropping a person's input.
pub async fn first_delivery(app: &AppState, kind: &str, key: &str) -> bool {
    let now = app.now_ms();
    let expires = now + DELIVERY_RETENTION.as_millis() as i64;
    let claimed = async {
        let mut conn = app.db.write.acquire().await?;
        anyhow::Ok(store::first_delivery(&mut conn, kind, key, now, expires).await?)
    };
    match claimed.await {
        Ok(first) => {
            if !first {
                tracing::info!(kind, "Slack delivered an input again; it was handled the first time");
            }
            first
        }
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                kind,
                "cannot check for a re-delivery; handling it"
            );
            true
        }
    }
}

/// A slash command, from either transport, that may arrive more than once (Socket Mode
/// re-delivers an envelope whose acknowledgement it did not get; over HTTP, someone may
/// replay a signed request within the signature's 5-minute window): acted on once per
/// `trigger_id`, and a re-delivery is answered as the first delivery was.
///
/// What keeps it once depends on the command, so that the common one costs the ack path
/// nothing more (no extra write, no extra read): a request stores its trigger_id in the
/// same transaction as itself (the group commit; see `store::NewRequest::delivery_key`),
/// and a copy fails there and gets the first confirmation; other commands that change
/// something claim their trigger_id first; commands that only answer need nothing.
pub async fn command_once(app: &AppState, cmd: &SlashCommand) -> SlackCommandEventResponse {
    let Some(trigger) = cmd.trigger_id.as_deref().filter(|t| !t.is_empty()) else {
        return command(app, cmd).await;
    };
    let claims = matches!(
        commands::parse(&cmd.text, &app.config),
        Ok(Command::Revoke { .. } | Command::Cancel { .. } | Command::Extend { .. } | Command::BreakGlass(_))
    );
    if !claims {
        return command(app, cmd).await;
    }
    if !first_delivery(app, delivery_kind::COMMAND, trigger).await {
        return commands::ephemeral(
            commands::earlier_reply(app, trigger)
                .await
                .unwrap_or_else(|| "Received; jitgate is still working on this command.".into()),
        );
    }
    let reply = command(app, cmd).await;
    if let Some(text) = reply.content.text.as_deref() {
        if let Ok(mut conn) = app.db.write.acquire().await {
            if let Err(e) = store::set_delivery_reply(&mut conn, delivery_kind::COMMAND, trigger, text).await {
                tracing::warn!(error = %e, "could not remember a command's reply");
            }
        }
    }
    reply
}

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

/// An interaction (a click), from either transport, which may deliver it more than once.
/// Before this returns — before Slack gets the acknowledgement — the click is stored
/// with its `trigger_id`: a re-delivery changes nothing, and a click acknowledged just
/// before a crash is acted on at the next start ([`resume_clicks`]). The decision itself
/// comes after the answer: who may approve can need Slack (user-group membership).
pub async fn interaction_once(app: &AppState, interaction: Interaction) {
    match interaction {
        Interaction::BlockActions(BlockActions {
            user,
            team,
            api_app_id,
            response_url,
            actions,
            trigger_id,
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
                let key = trigger_id
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| format!("untriggered-{:032x}", rand::random::<u128>()));
                click(
                    app,
                    &key,
                    Click {
                        user_id: user.id,
                        action_id: action.action_id,
                        value: action.value.unwrap_or_default(),
                        response_url,
                    },
                )
                .await;
            }
        }
        Interaction::Other => {}
    }
}

/// One click on one of jitgate's buttons, delivered under `key` (its `trigger_id`):
/// recorded, then acted on after the caller has answered Slack. A key seen before is a
/// re-delivery and changes nothing.
pub async fn click(app: &AppState, key: &str, click: Click) {
    let now = app.now_ms();
    let expires = now + DELIVERY_RETENTION.as_millis() as i64;
    let recorded = async {
        let input = serde_json::to_string(&click)?;
        let mut conn = app.db.write.acquire().await?;
        anyhow::Ok(
            store::first_delivery_with_input(&mut conn, delivery_kind::INTERACTION, key, &input, now, expires).await?,
        )
    };
    match recorded.await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(
                kind = delivery_kind::INTERACTION,
                "Slack delivered an input again; it was handled the first time"
            );
            return;
        }
        // Acting without the record beats dropping the approver's click; only a crash in
        // the next moments could lose it.
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "cannot record a click before acting on it; acting on it anyway"
        ),
    }
    spawn_click(app, key.to_string(), click);
}

/// Acts on a recorded click in the background, then marks it handled. A click whose
/// handling failed stays recorded and is tried again at the next start.
fn spawn_click(app: &AppState, key: String, click: Click) {
    let task_app = app.clone();
    app.tasks.spawn(async move {
        match approvals::handle_click(&task_app, click).await {
            Ok(()) => {
                let handled = async {
                    let mut conn = task_app.db.write.acquire().await?;
                    anyhow::Ok(store::input_handled(&mut conn, delivery_kind::INTERACTION, &key).await?)
                };
                if let Err(e) = handled.await {
                    tracing::warn!(error = format!("{e:#}"), "could not mark a click handled; it may be acted on again at the next start, with no second effect");
                }
            }
            Err(e) => tracing::error!(error = format!("{e:#}"), "click failed; it is tried again at the next start"),
        }
    });
}

/// Acts on the clicks that were acknowledged to Slack but not acted on before the last
/// stop. Every click is checked again from scratch, so one that no longer applies (the
/// request was decided or expired meanwhile) is refused as it would be live. Returns how
/// many were resumed.
pub async fn resume_clicks(app: &AppState) -> anyhow::Result<usize> {
    let pending = {
        let mut conn = app.db.read.acquire().await?;
        store::pending_inputs(&mut conn, delivery_kind::INTERACTION).await?
    };
    let mut resumed = 0;
    for (key, input) in pending {
        match serde_json::from_str::<Click>(&input) {
            Ok(click) => {
                spawn_click(app, key, click);
                resumed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a recorded click cannot be read; dropping it");
                let mut conn = app.db.write.acquire().await?;
                store::input_handled(&mut conn, delivery_kind::INTERACTION, &key).await?;
            }
        }
    }
    Ok(resumed)
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
pub async fn event(app: &AppState, envelope: EventEnvelope) -> EventReply {
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
            if let Some(id) = event_id.as_deref() {
                if !first_delivery(app, delivery_kind::EVENT, id).await {
                    return EventReply::Ack;
                }
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
