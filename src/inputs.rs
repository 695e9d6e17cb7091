//! What people do in Slack, as jitgate receives it: one entry point per kind of input — a
//! slash command, an interaction (a click on a button; form submissions arrive the same
//! way), an event. Transports (the HTTP endpoints today) check authenticity and decode
//! the wire format, then call these; none of them has a copy of what happens next.
//!
//! Every entry point answers at once: work that needs Slack or an adapter is spawned and
//! happens after the answer.

use std::time::Duration;

use serde_json::{json, Value};
use slack_morphism::prelude::SlackCommandEventResponse;

use crate::app::AppState;
use crate::approvals::{self, Click};
use crate::commands::{self, Command};
use crate::forms::{self, FieldErrors, Origin};
use crate::home;
use crate::requests::Requester;
use crate::slack::payloads::{BlockActions, EventEnvelope, Interaction, Shortcut, SlashCommand, ViewSubmission};
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
    /// A form submission's trigger_id.
    pub const SUBMISSION: &str = "view_submission";
}

/// True the first time Slack delivers `key` of `kind`; false for re-deliveries. Durable
/// (the `deliveries` table), so it holds across restarts and processes. If the database
/// cannot answer, the delivery is treated as new: acting twice on a rare retry is better
/// than dropping a person's input.
pub async fn first_delivery(app: &AppState, kind: &str, key: &str) -> bool {
    claim_delivery(app, kind, key, None).await
}

/// [`first_delivery`], storing `input` with the key (see [`store::first_delivery_with_input`]).
async fn claim_delivery(app: &AppState, kind: &str, key: &str, input: Option<&str>) -> bool {
    let now = app.now_ms();
    let expires = now + DELIVERY_RETENTION.as_millis() as i64;
    let claimed = async {
        let mut conn = app.db.write.acquire().await?;
        anyhow::Ok(store::first_delivery_with_input(&mut conn, kind, key, input, now, expires, &app.db.replica).await?)
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

/// An interaction, from either transport, which may deliver it more than once; answered
/// as [`interaction`] answers. A click is recorded with its `trigger_id` before this
/// returns (see [`click`]); a shortcut claims its `trigger_id` here; a form submission is
/// de-duplicated by [`view_submission`].
pub async fn interaction_once(app: &AppState, input: Interaction) -> Option<Value> {
    if let Interaction::Shortcut(Shortcut {
        trigger_id: Some(trigger),
        ..
    }) = &input
    {
        if !trigger.is_empty() && !first_delivery(app, delivery_kind::INTERACTION, trigger).await {
            return None;
        }
    }
    interaction(app, input).await
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

/// An interaction, answered at once: `Some(body)` is the answer to send back (a form
/// submission's field errors, on the HTTP response or in the Socket Mode ack), `None` an
/// empty acknowledgement (which also closes a submitted form). Clicks are decided after
/// the answer: who may approve can need Slack (user-group membership).
pub async fn interaction(app: &AppState, interaction: Interaction) -> Option<Value> {
    match interaction {
        Interaction::BlockActions(BlockActions {
            user,
            team,
            api_app_id,
            response_url,
            actions,
            trigger_id,
            view,
            ..
        }) => {
            if let Some(why) = foreign(app, team.as_ref().map(|t| t.id.as_str()), api_app_id.as_deref()) {
                refuse_foreign(app, &user.id, "click.refused", why, team.map(|t| t.id), api_app_id);
                return None;
            }
            // One action per payload: jitgate's buttons send one each; a payload listing
            // more is not from a real click, and acting on each would multiply the work.
            if actions.len() > 1 {
                tracing::warn!(user = %user.id, actions = actions.len(), "interaction with several actions; acting on the first only");
            }
            let action = actions.into_iter().next()?;
            let trigger = trigger_id.unwrap_or_default();
            let from_home = view.as_ref().is_some_and(|v| v.kind == "home");
            let value = action.value.clone().unwrap_or_default();
            let task_app = app.clone();
            let user = user.id;
            match action.action_id.as_str() {
                forms::RESOURCE_CHOSEN => {
                    // The request form's resource changed: offer its roles and durations.
                    let view = view.filter(|v| v.callback_id == forms::REQUEST_CALLBACK)?;
                    let chosen = action.selected_option.map(|o| o.value);
                    let modal =
                        forms::request_modal(&app.config, chosen.as_deref(), Origin::read(&view.private_metadata));
                    app.tasks.spawn(async move {
                        let hash = Some(view.hash.as_str()).filter(|h| !h.is_empty());
                        if let Err(e) = task_app.slack.update_view(&view.id, hash, modal).await {
                            tracing::warn!(error = %e, "could not update the request form");
                        }
                    });
                }
                forms::OPEN_REQUEST => {
                    let modal = forms::request_modal(&app.config, None, Origin::default());
                    app.tasks.spawn(async move {
                        if let Err(e) = task_app.slack.open_view(&trigger, modal).await {
                            tracing::warn!(error = %e, "could not open the request form");
                        }
                    });
                }
                forms::OPEN_EXTEND => {
                    app.tasks.spawn(async move {
                        if let Err(e) = home::open_extend(&task_app, &trigger, &user, &value).await {
                            tracing::warn!(error = format!("{e:#}"), "could not open the extend form");
                        }
                    });
                }
                home::CANCEL => {
                    app.tasks.spawn(async move {
                        if let Err(e) = home::cancel(&task_app, &user, &value).await {
                            tracing::error!(error = format!("{e:#}"), "cancel from the Home tab failed");
                        }
                        home::refresh(&task_app, &user);
                    });
                }
                _ => {
                    // Slack always sends one; a key of its own otherwise, so the click is
                    // still recorded.
                    let key = Some(trigger)
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| format!("untriggered-{:032x}", rand::random::<u128>()));
                    click(
                        app,
                        &key,
                        Click {
                            user_id: user,
                            action_id: action.action_id,
                            value,
                            response_url,
                        },
                        from_home,
                    )
                    .await
                }
            }
            None
        }
        Interaction::Shortcut(Shortcut {
            user,
            team,
            api_app_id,
            callback_id,
            trigger_id,
        }) => {
            if let Some(why) = foreign(app, team.as_ref().map(|t| t.id.as_str()), api_app_id.as_deref()) {
                refuse_foreign(app, &user.id, "shortcut.refused", why, team.map(|t| t.id), api_app_id);
                return None;
            }
            if callback_id != forms::SHORTCUT_CALLBACK {
                tracing::debug!(callback_id, "ignoring a shortcut jitgate does not own");
                return None;
            }
            let trigger = trigger_id.unwrap_or_default();
            let modal = forms::request_modal(&app.config, None, Origin::default());
            let task_app = app.clone();
            app.tasks.spawn(async move {
                if let Err(e) = task_app.slack.open_view(&trigger, modal).await {
                    tracing::warn!(error = %e, "could not open the request form");
                }
            });
            None
        }
        Interaction::ViewSubmission(submission) => view_submission(app, submission).await,
        Interaction::Other => None,
    }
}

fn refuse_foreign(
    app: &AppState,
    user: &str,
    action: &'static str,
    why: &'static str,
    team: Option<String>,
    api_app_id: Option<String>,
) {
    let (task_app, user) = (app.clone(), user.to_string());
    app.tasks.spawn(async move {
        task_app
            .audit_refusal(
                &user,
                action,
                None,
                json!({ "why": format!("sent from {why}"), "team_id": team, "api_app_id": api_app_id }),
            )
            .await;
    });
}

/// A form's Submit: checked field by field and answered within Slack's 3 s, with field
/// errors (keyed by block_id) or by closing the form. A valid request form creates the
/// request through the same function as `/jit request`; a valid extend form is `/jit
/// extend`. The confirmation goes to the person by DM. Acted on once per `trigger_id`
/// (a re-delivery gets the first answer again).
pub async fn view_submission(app: &AppState, sub: ViewSubmission) -> Option<Value> {
    if let Some(why) = foreign(app, sub.team.as_ref().map(|t| t.id.as_str()), sub.api_app_id.as_deref()) {
        refuse_foreign(
            app,
            &sub.user.id,
            "form.refused",
            why,
            sub.team.map(|t| t.id),
            sub.api_app_id,
        );
        let mut errors = FieldErrors::new();
        errors.insert(
            forms::block::REASON,
            format!("This jitgate serves a different Slack workspace or app ({why}); nothing was done."),
        );
        return Some(forms::errors_response(&errors));
    }
    let trigger = sub.trigger_id.clone().filter(|t| !t.is_empty());
    if let Some(t) = &trigger {
        if !first_delivery(app, delivery_kind::SUBMISSION, t).await {
            let earlier = match app.db.read.acquire().await {
                Ok(mut conn) => store::earlier_delivery(&mut conn, delivery_kind::SUBMISSION, t)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|(reply, _)| reply),
                Err(_) => None,
            };
            return earlier.and_then(|text| serde_json::from_str(&text).ok());
        }
    }
    let answer = match sub.view.callback_id.as_str() {
        forms::REQUEST_CALLBACK => submit_request(app, &sub).await,
        forms::EXTEND_CALLBACK => submit_extend(app, &sub).await,
        other => {
            tracing::debug!(callback_id = other, "ignoring a form jitgate does not own");
            None
        }
    };
    if let (Some(t), Some(answer)) = (&trigger, &answer) {
        if let Ok(mut conn) = app.db.write.acquire().await {
            if let Err(e) =
                store::set_delivery_reply(&mut conn, delivery_kind::SUBMISSION, t, &answer.to_string()).await
            {
                tracing::warn!(error = %e, "could not remember a form's answer");
            }
        }
    }
    answer
}

/// Audits a refused form (who, which form, each field's error) and returns Slack's answer.
async fn refuse_form(app: &AppState, user: &str, form: &str, why: &str, errors: FieldErrors) -> Option<Value> {
    app.audit_refusal(
        user,
        "form.refused",
        None,
        json!({ "why": why, "form": form, "errors": errors }),
    )
    .await;
    Some(forms::errors_response(&errors))
}

fn one_error(field: &'static str, message: String) -> FieldErrors {
    let mut errors = FieldErrors::new();
    errors.insert(field, message);
    errors
}

const FAILED: &str = "Something went wrong on jitgate's side and nothing was saved; please try again. \
                      If it keeps happening, tell the jitgate operators.";

fn requester(sub: &ViewSubmission, origin: &Origin) -> Requester {
    Requester {
        user_id: sub.user.id.clone(),
        team_id: sub.team.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
        // Opened from a channel: from there (on-call auto-approval in incident channels);
        // from a shortcut or Home: from the person's DM with the app.
        channel_id: origin.channel.clone().unwrap_or_else(|| sub.user.id.clone()),
        response_url: None,
        // A submission is de-duplicated by its own trigger_id (see `view_submission`).
        delivery_key: None,
    }
}

async fn submit_request(app: &AppState, sub: &ViewSubmission) -> Option<Value> {
    let user = &sub.user.id;
    // The same per-person budget as typed commands.
    let per_minute = app.config.requests.commands_per_minute;
    if let Err(wait) = app.command_rate.check(user, per_minute, app.now_ms()) {
        let message = format!(
            "You sent more than {per_minute} requests and commands in the last minute; nothing was done. \
             Please try again in {wait} s."
        );
        return refuse_form(
            app,
            user,
            forms::REQUEST_CALLBACK,
            "rate limited",
            one_error(forms::block::REASON, message),
        )
        .await;
    }
    let input = match forms::read_request(&app.config, &sub.view) {
        Ok(i) => i,
        Err(errors) => {
            app.metrics.request("refused");
            return refuse_form(app, user, forms::REQUEST_CALLBACK, "invalid form", errors).await;
        }
    };
    let who = requester(sub, &Origin::read(&sub.view.private_metadata));
    match commands::request_access(app, &who, &input).await {
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), user = %user, "request form failed");
            Some(forms::errors_response(&one_error(forms::block::REASON, FAILED.into())))
        }
        Ok(Err(refused)) => {
            refuse_form(
                app,
                user,
                forms::REQUEST_CALLBACK,
                refused.why,
                one_error(refused.field, refused.message),
            )
            .await
        }
        Ok(Ok((id, reply))) => {
            confirm(app, user, reply, Some(id)).await;
            None
        }
    }
}

async fn submit_extend(app: &AppState, sub: &ViewSubmission) -> Option<Value> {
    let user = &sub.user.id;
    let input = match forms::read_extend(&app.config, &sub.view) {
        Ok(i) => i,
        Err(errors) => return refuse_form(app, user, forms::EXTEND_CALLBACK, "invalid form", errors).await,
    };
    let who = requester(sub, &Origin::default());
    let outcome = async {
        let Some(_slot) = commands::pending_slot(app, user).await? else {
            return Ok(Err(commands::Refused {
                why: "too many pending requests",
                message: commands::too_many_pending_message(app),
                field: forms::block::DURATION,
            }));
        };
        commands::extend_as(app, &who, input.request_id, input.duration, input.reason).await
    };
    match outcome.await {
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), user = %user, "extend form failed");
            Some(forms::errors_response(&one_error(
                forms::block::DURATION,
                FAILED.into(),
            )))
        }
        Ok(Err(refused)) => {
            refuse_form(
                app,
                user,
                forms::EXTEND_CALLBACK,
                refused.why,
                one_error(refused.field, refused.message),
            )
            .await
        }
        // Nothing could be done (the grant ended meanwhile, the limit): say so on the form.
        Ok(Ok((None, reply))) => Some(forms::errors_response(&one_error(forms::block::DURATION, reply))),
        Ok(Ok((Some(id), reply))) => {
            confirm(app, user, reply, Some(id)).await;
            None
        }
    }
}

/// Confirms a form's outcome to its sender by DM, and refreshes their Home tab.
async fn confirm(app: &AppState, user: &str, reply: String, request_id: Option<i64>) {
    if let Err(e) = app.send_now(store::Outgoing::message(user, reply, request_id)).await {
        tracing::error!(error = format!("{e:#}"), "could not queue a form's confirmation");
    }
    home::refresh(app, user);
}

/// One click on one of jitgate's buttons, delivered under `key` (its `trigger_id`):
/// recorded, then acted on after the caller has answered Slack. A key seen before is a
/// re-delivery and changes nothing.
pub async fn click(app: &AppState, key: &str, click: Click, from_home: bool) {
    // Unrecordable (it cannot fail to serialise) or a database that cannot answer: acting
    // without the record beats dropping the approver's click.
    let input = serde_json::to_string(&click).ok();
    if claim_delivery(app, delivery_kind::INTERACTION, key, input.as_deref()).await {
        spawn_click(app, key.to_string(), click, from_home);
    }
}

/// Acts on a recorded click in the background, then marks it handled (and, for a click
/// on the Home tab, shows the clicker their Home again). A click whose handling failed
/// stays recorded and is tried again at the next start.
fn spawn_click(app: &AppState, key: String, click: Click, from_home: bool) {
    let task_app = app.clone();
    app.tasks.spawn(async move {
        let user = click.user_id.clone();
        let handled = approvals::handle_click(&task_app, click).await;
        if from_home {
            home::refresh(&task_app, &user);
        }
        match handled {
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
    resume_recorded_clicks(app, pending).await
}

/// Acts on recorded clicks, `(key, input)` as stored: those [`resume_clicks`] finds, or
/// those taken over from a replica that stopped.
pub async fn resume_recorded_clicks(app: &AppState, pending: Vec<(String, String)>) -> anyhow::Result<usize> {
    let mut resumed = 0;
    for (key, input) in pending {
        match serde_json::from_str::<Click>(&input) {
            Ok(click) => {
                spawn_click(app, key, click, false);
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
