//! The app's Home tab: what the person holds (ends at; "I'm done", "Extend"), what they are
//! waiting for ("Cancel"), what waits for them as an approver ("Approve", "Deny"), and
//! "Request access". Published when Slack reports `app_home_opened`, and again after each
//! action taken from it or from a form.
//!
//! Every button's value is a request id and nothing else; what a click may do is decided
//! on the server by the same functions as the card's buttons and the commands: "I'm done"
//! is `/jit revoke` ([`crate::approvals::revoke_as`]), "Cancel" is `/jit cancel`, Approve
//! and Deny are the card's click ([`crate::approvals::handle_click`]), "Extend" opens a
//! form whose submission is `/jit extend`.

use serde_json::{json, Value};

use crate::app::AppState;
use crate::cards::{APPROVE, DENY, REVOKE};
use crate::commands;
use crate::duration::HumanDuration;
use crate::forms;
use crate::ids::label;
use crate::store::{self, GrantState, Outgoing};
use crate::text::{escape, inert, slack_date, truncate};

/// action_id of "Cancel" on a pending request of one's own; value: the request id.
pub const CANCEL: &str = "jit_cancel";

/// Rows shown per list; more are summed up (a Home tab holds at most 100 blocks).
const ROWS: usize = 15;

fn button(text: &str, action_id: &str, value: &str, style: Option<&str>) -> Value {
    let mut b = json!({"type": "button", "text": {"type": "plain_text", "text": text, "emoji": true},
                       "action_id": action_id, "value": value});
    if let Some(s) = style {
        b["style"] = json!(s);
    }
    b
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&text, 3000)}})
}

fn actions(block_id: String, elements: Vec<Value>) -> Value {
    json!({"type": "actions", "block_id": block_id, "elements": elements})
}

fn more(n: usize) -> Option<Value> {
    (n > ROWS).then(|| {
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("…and {} more; `/jit list` shows them all.", n - ROWS)}]})
    })
}

/// The Home tab for `user`, as Block Kit JSON.
pub async fn render(app: &AppState, user: &str) -> anyhow::Result<Value> {
    let (grants, mine, mine_total, pending) = {
        let mut conn = app.db.read.acquire().await?;
        (
            store::live_grants_of(&mut conn, user).await?,
            store::pending_requests_of(&mut conn, user).await?,
            store::count_pending_of(&mut conn, user).await?,
            store::pending_requests(&mut conn, 200).await?,
        )
    };
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": "Your just-in-time access"}}),
        actions(
            "home_request".into(),
            vec![button(
                ":key: Request access",
                forms::OPEN_REQUEST,
                "new",
                Some("primary"),
            )],
        ),
    ];

    blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": "Your access"}}));
    if grants.is_empty() {
        blocks.push(section("You have no access right now.".into()));
    }
    for g in grants.iter().take(ROWS) {
        let status = match (g.state, g.expires_at) {
            (GrantState::Active, Some(exp)) if g.revoke_requested_by.is_none() => {
                format!("ends at {}", slack_date(exp))
            }
            (GrantState::Active, _) => "ending".to_string(),
            _ => "being granted".to_string(),
        };
        blocks.push(section(format!(
            "*{}* `{}:{}` — {status}",
            label(g.request_id),
            g.resource,
            g.role
        )));
        if g.state == GrantState::Active && g.revoke_requested_by.is_none() {
            let id = g.request_id.to_string();
            blocks.push(actions(
                format!("home_grant_{id}"),
                vec![
                    button(":wave: I'm done", REVOKE, &id, None),
                    button(":hourglass: Extend", forms::OPEN_EXTEND, &id, None),
                ],
            ));
        }
    }
    blocks.extend(more(grants.len()));

    blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": "Waiting for approval"}}));
    if mine.is_empty() {
        blocks.push(section("No requests of yours are waiting.".into()));
    }
    for r in mine.iter().take(ROWS) {
        let id = r.id.to_string();
        blocks.push(section(format!(
            "*{}* `{}:{}` for {} — in <#{}> since {}",
            label(r.id),
            r.resource,
            r.role,
            HumanDuration::from_secs(r.duration_secs as u64),
            r.approval_channel,
            slack_date(r.created_at)
        )));
        blocks.push(actions(
            format!("home_mine_{id}"),
            vec![button(":x: Cancel", CANCEL, &id, None)],
        ));
    }
    blocks.extend(more(mine.len().max(mine_total as usize)));

    let waiting = waiting_for(app, user, pending).await;
    if !waiting.is_empty() {
        blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": "Waiting for you"}}));
        for r in waiting.iter().take(ROWS) {
            let id = r.id.to_string();
            let what = match r.kind {
                store::RequestKind::Extension => format!(
                    "extend {} by {}",
                    r.extends_request_id.map(label).unwrap_or_default(),
                    HumanDuration::from_secs(r.duration_secs as u64)
                ),
                store::RequestKind::Access => format!("for {}", HumanDuration::from_secs(r.duration_secs as u64)),
            };
            blocks.push(section(format!(
                "*{}* <@{}> asks for `{}:{}` {what}: {}",
                label(r.id),
                r.requester_id,
                r.resource,
                r.role,
                escape(&inert(&truncate(&r.reason, 500)))
            )));
            blocks.push(actions(
                format!("home_decide_{id}"),
                vec![
                    button(":white_check_mark: Approve", APPROVE, &id, Some("primary")),
                    button(":no_entry: Deny", DENY, &id, Some("danger")),
                ],
            ));
        }
        blocks.extend(more(waiting.len()));
    }
    blocks.push(json!({"type": "divider"}));
    blocks.push(section(commands::usage(&app.config)));
    Ok(json!({"type": "home", "blocks": blocks}))
}

/// The pending requests `user` may decide: an approver of the resource (listed, or in an
/// approver group: asked of Slack once per resource), not the requester, not decided yet.
async fn waiting_for(app: &AppState, user: &str, pending: Vec<store::RequestRow>) -> Vec<store::RequestRow> {
    let mut approver_of: std::collections::HashMap<String, bool> = Default::default();
    let mut out = Vec::new();
    for r in pending {
        if r.requester_id == user {
            continue;
        }
        let Some(resource) = app.config.resource(&r.resource) else {
            continue;
        };
        let may = match approver_of.get(&r.resource) {
            Some(m) => *m,
            None => {
                let m = crate::approvals::is_approver(app, resource, user)
                    .await
                    .unwrap_or(false);
                approver_of.insert(r.resource.clone(), m);
                m
            }
        };
        if !may {
            continue;
        }
        let decided = match app.db.read.acquire().await {
            Ok(mut conn) => store::decisions(&mut conn, r.id)
                .await
                .map(|d| d.iter().any(|d| d.approver_id == user))
                .unwrap_or(false),
            Err(_) => false,
        };
        if !decided {
            out.push(r);
        }
    }
    out
}

/// Publishes `user`'s Home tab. Runs after the event was acknowledged.
pub async fn publish(app: &AppState, user: &str) -> anyhow::Result<()> {
    let view = render(app, user).await?;
    let view: slack_morphism::prelude::SlackView = serde_json::from_value(view)?;
    let slack_morphism::prelude::SlackView::Home(home) = view else {
        anyhow::bail!("the Home tab rendered as something else");
    };
    app.slack.publish_home(user, home).await?;
    Ok(())
}

/// Publishes `user`'s Home tab in the background, logging a failure.
pub fn refresh(app: &AppState, user: &str) {
    let (task_app, user) = (app.clone(), user.to_string());
    app.tasks.spawn(async move {
        if let Err(e) = publish(&task_app, &user).await {
            tracing::warn!(error = format!("{e:#}"), "could not publish the Home tab");
        }
    });
}

/// "Cancel" on a pending request: `/jit cancel`, answered by DM.
pub async fn cancel(app: &AppState, user: &str, value: &str) -> anyhow::Result<()> {
    let text = match value.parse::<i64>() {
        Ok(id) if crate::requests::cancel(app, id, user).await? => format!("{} is withdrawn.", label(id)),
        Ok(id) => format!("{} is not a pending request of yours, so nothing changed.", label(id)),
        Err(_) => "That button is not one of jitgate's; nothing changed.".into(),
    };
    app.send_now(Outgoing::message(user, text, None)).await
}

/// "Extend": opens the extend form for the request in `value` if it is `user`'s active
/// grant, or a form saying why not. Uses the click's `trigger_id` (3 s) first thing.
pub async fn open_extend(app: &AppState, trigger: &str, user: &str, value: &str) -> anyhow::Result<()> {
    let view = match value.parse::<i64>() {
        Err(_) => forms::notice_modal("Extend", "That button is not one of jitgate's; nothing changed."),
        Ok(id) => {
            let (request, grant) = {
                let mut conn = app.db.read.acquire().await?;
                (
                    store::get_request(&mut conn, id).await?,
                    store::grant_of(&mut conn, id).await?,
                )
            };
            let resource = request.as_ref().and_then(|r| app.config.resource(&r.resource));
            match (request, grant, resource) {
                (Some(r), Some(g), Some(res))
                    if r.requester_id == user && g.state == GrantState::Active && g.revoke_requested_by.is_none() =>
                {
                    let room = res.max_total_duration.as_secs().saturating_sub(g.duration_secs as u64);
                    if room == 0 {
                        forms::notice_modal(
                            "Extend",
                            &format!(
                                "{} has the {} `{}` allows in all; ask for new access when it ends.",
                                label(id),
                                res.max_total_duration,
                                res.name
                            ),
                        )
                    } else {
                        forms::extend_modal(
                            id,
                            &format!("{}:{}", r.resource, r.role),
                            HumanDuration::from_secs(room),
                            res.default_duration,
                        )
                    }
                }
                (Some(r), _, _) if r.requester_id != user => forms::notice_modal(
                    "Extend",
                    &format!("Only <@{}> can extend {}.", r.requester_id, label(id)),
                ),
                _ => forms::notice_modal(
                    "Extend",
                    &format!(
                        "{} is not active, so it cannot be extended; ask for new access instead.",
                        label(id)
                    ),
                ),
            }
        }
    };
    app.slack.open_view(trigger, view).await?;
    Ok(())
}
