//! The forms (Slack modals): asking for access, and asking for more time. Built as Block
//! Kit JSON from the configuration, and read back from a `view_submission` field by
//! field, with the same rules as typed commands ([`crate::text::check_typed`] for text,
//! [`crate::duration::parse_typed`] for durations, [`crate::policy::requestable`] for
//! what may be asked). Pure: opening, updating and submitting happen in `commands`,
//! `home` and `inputs`.
//!
//! Field errors are keyed by the input's `block_id` ([`block`]), as Slack requires. Every
//! value that comes back is re-checked: a select's choices are only suggestions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Config, Resource};
use crate::duration::{parse_typed, HumanDuration};
use crate::ids::{is_name, is_slack_id, label};
use crate::requests::RequestInput;
use crate::slack::payloads::View;

/// `callback_id` of the request form.
pub const REQUEST_CALLBACK: &str = "jit_request";
/// `callback_id` of the extend form.
pub const EXTEND_CALLBACK: &str = "jit_extend";
/// `callback_id` of the global shortcut "Request access" (both manifests).
pub const SHORTCUT_CALLBACK: &str = "request_access";
/// action_id of buttons that open the request form (Home).
pub const OPEN_REQUEST: &str = "jit_open_request";
/// action_id of "Extend" buttons (Home, the ending-soon DM); value: the request id.
pub const OPEN_EXTEND: &str = crate::cards::EXTEND;
/// action_id of the resource select: choosing one updates the role and duration choices.
pub const RESOURCE_CHOSEN: &str = "resource";

/// The inputs' `block_id`s (each input's action_id is the same word).
pub mod block {
    pub const RESOURCE: &str = "resource";
    pub const ROLE: &str = "role";
    pub const DURATION: &str = "duration";
    pub const REASON: &str = "reason";
    pub const TICKET: &str = "ticket";
}

/// Longest ticket or reference.
pub const MAX_TICKET: usize = 100;
/// Longest text Slack shows for a modal title, submit or close (24).
const MODAL_TEXT: usize = 24;
/// Options in one select (Slack allows 100).
const MAX_OPTIONS: usize = 100;

/// Where a form was opened, carried in the view's `private_metadata` so that a request
/// from an incident channel can still be approved by the on-call policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The channel of the command (`C…`, `G…` or a DM `D…`); none from a shortcut or Home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The request being extended (extend form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<i64>,
}

impl Origin {
    /// Opened from `channel`.
    pub fn channel(channel: &str) -> Self {
        Self {
            channel: Some(channel.to_string()),
            request: None,
        }
    }

    /// Reads `private_metadata` back. Anything that is not what jitgate wrote (not JSON,
    /// a channel that is not a channel id) counts as no origin: it never reaches a query.
    pub fn read(metadata: &str) -> Self {
        let Ok(mut o) = serde_json::from_str::<Origin>(metadata) else {
            return Self::default();
        };
        if o.channel.as_deref().is_some_and(|c| !is_slack_id(c, &['C', 'G', 'D'])) {
            o.channel = None;
        }
        if o.request.is_some_and(|r| r <= 0) {
            o.request = None;
        }
        o
    }

    fn write(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn plain(text: &str) -> Value {
    json!({"type": "plain_text", "text": text, "emoji": true})
}

fn option(text: &str, value: &str) -> Value {
    json!({"text": plain(&crate::text::truncate(text, 75)), "value": value})
}

/// The durations offered for `resource`: common ones up to `max`, plus its default and `max`.
pub fn duration_choices(default: HumanDuration, max: HumanDuration) -> Vec<HumanDuration> {
    let mut out: Vec<HumanDuration> = [
        15 * 60,
        30 * 60,
        3600,
        2 * 3600,
        4 * 3600,
        8 * 3600,
        12 * 3600,
        86_400,
        2 * 86_400,
        7 * 86_400,
    ]
    .into_iter()
    .map(HumanDuration::from_secs)
    .filter(|d| *d <= max)
    .collect();
    for d in [default, max] {
        if d <= max && d.as_secs() > 0 {
            out.push(d);
        }
    }
    out.sort();
    out.dedup();
    out.truncate(MAX_OPTIONS);
    out
}

fn select(action_id: &str, options: Vec<Value>, initial: Option<Value>, placeholder: &str) -> Value {
    let mut element = json!({
        "type": "static_select",
        "action_id": action_id,
        "placeholder": plain(placeholder),
        "options": options,
    });
    if let Some(i) = initial {
        element["initial_option"] = i;
    }
    element
}

/// The request form. `chosen`: the resource picked so far (its roles and durations are
/// offered); none picked yet offers the first resource's. Lists the resources a person
/// may request (`policy::requestable`: everyone may ask for any; approvers decide).
pub fn request_modal(config: &Config, chosen: Option<&str>, origin: Origin) -> Value {
    let requestable: Vec<&Resource> = config
        .resources
        .iter()
        .filter(|r| crate::policy::requestable(config, &r.name, None, None).is_ok())
        .take(MAX_OPTIONS)
        .collect();
    let resource = chosen
        .and_then(|c| requestable.iter().find(|r| r.name == c))
        .or(requestable.first())
        .copied();
    let resource_options: Vec<Value> = requestable
        .iter()
        .map(|r| {
            let text = if r.description.is_empty() {
                r.name.clone()
            } else {
                format!("{} — {}", r.name, r.description)
            };
            option(&text, &r.name)
        })
        .collect();
    let mut blocks = Vec::new();
    let Some(resource) = resource else {
        return json!({
            "type": "modal",
            "callback_id": REQUEST_CALLBACK,
            "title": plain("Request access"),
            "close": plain("Close"),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "No resources are configured."}}],
        });
    };
    let initial_resource = resource_options
        .iter()
        .find(|o| o["value"] == resource.name.as_str())
        .cloned();
    blocks.push(json!({
        "type": "input",
        "block_id": block::RESOURCE,
        "dispatch_action": true,
        "label": plain("Resource"),
        "element": select(RESOURCE_CHOSEN, resource_options, initial_resource, "Choose a resource"),
    }));
    let roles: Vec<Value> = resource.roles.iter().take(MAX_OPTIONS).map(|r| option(r, r)).collect();
    let initial_role = roles.first().cloned();
    blocks.push(json!({
        "type": "input",
        // The block_id names the field (errors are keyed by it); the action_id names the
        // resource too, so that Slack does not keep a role of the previous one.
        "block_id": block::ROLE,
        "label": plain("Role"),
        "element": select(&format!("{}:{}", block::ROLE, resource.name), roles, initial_role, "Choose a role"),
    }));
    let durations: Vec<Value> = duration_choices(resource.default_duration, resource.max_duration)
        .into_iter()
        .map(|d| option(&d.to_string(), &d.to_string()))
        .collect();
    let initial_duration = durations
        .iter()
        .find(|o| o["value"] == resource.default_duration.to_string().as_str())
        .cloned();
    blocks.push(json!({
        "type": "input",
        "block_id": block::DURATION,
        "label": plain(&format!("Duration (up to {})", resource.max_duration)),
        "element": select(&format!("{}:{}", block::DURATION, resource.name), durations, initial_duration, "How long"),
    }));
    blocks.push(json!({
        "type": "input",
        "block_id": block::REASON,
        "label": plain("Reason"),
        "hint": plain("Why you need it, e.g. investigating INC-1234. Approvers see this."),
        "element": {
            "type": "plain_text_input",
            "action_id": block::REASON,
            "multiline": true,
            "max_length": config.requests.max_reason_length.min(3000),
            "placeholder": plain("investigating INC-1234"),
        },
    }));
    blocks.push(json!({
        "type": "input",
        "block_id": block::TICKET,
        "optional": true,
        "label": plain("Ticket or reference"),
        "element": {
            "type": "plain_text_input",
            "action_id": block::TICKET,
            "max_length": MAX_TICKET,
            "placeholder": plain("INC-1234"),
        },
    }));
    json!({
        "type": "modal",
        "callback_id": REQUEST_CALLBACK,
        "title": plain(&crate::text::truncate("Request access", MODAL_TEXT)),
        "submit": plain("Request"),
        "close": plain("Cancel"),
        "private_metadata": origin.write(),
        "blocks": blocks,
    })
}

/// A form that only explains (no inputs), e.g. why a grant cannot be extended.
pub fn notice_modal(title: &str, text: &str) -> Value {
    json!({
        "type": "modal",
        "title": plain(&crate::text::truncate(title, MODAL_TEXT)),
        "close": plain("Close"),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": crate::text::truncate(text, 3000)}}],
    })
}

/// The extend form for request `id` (`resource:role`), offering up to `room` more.
pub fn extend_modal(id: i64, what: &str, room: HumanDuration, default: HumanDuration) -> Value {
    let choices = duration_choices(default.min(room), room);
    let options: Vec<Value> = choices.iter().map(|d| option(&d.to_string(), &d.to_string())).collect();
    let initial = choices
        .iter()
        .rev()
        .find(|d| **d <= default)
        .or(choices.first())
        .map(|d| option(&d.to_string(), &d.to_string()));
    json!({
        "type": "modal",
        "callback_id": EXTEND_CALLBACK,
        "title": plain(&crate::text::truncate(&format!("Extend {}", label(id)), MODAL_TEXT)),
        "submit": plain("Extend"),
        "close": plain("Cancel"),
        "private_metadata": Origin { channel: None, request: Some(id) }.write(),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("More time on *{}* (`{}`), up to {room} more.", label(id), crate::text::escape(what))}},
            {"type": "input", "block_id": block::DURATION, "label": plain("How much longer"),
             "element": select(block::DURATION, options, initial, "How long")},
            {"type": "input", "block_id": block::REASON, "optional": true, "label": plain("Reason"),
             "element": {"type": "plain_text_input", "action_id": block::REASON, "multiline": true,
                         "placeholder": plain("still debugging INC-1234")}},
        ],
    })
}

/// Field errors, by block_id.
pub type FieldErrors = BTreeMap<&'static str, String>;

/// Slack's answer that shows `errors` under their fields.
pub fn errors_response(errors: &FieldErrors) -> Value {
    json!({"response_action": "errors", "errors": errors})
}

/// Reads a request form: every field checked with the rules of typed commands; either
/// the request as typed (with the ticket folded into the reason) or every field's error.
pub fn read_request(config: &Config, view: &View) -> Result<RequestInput, FieldErrors> {
    let mut errors = FieldErrors::new();
    let resource_text = view
        .input(block::RESOURCE)
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let resource = if resource_text.is_empty() {
        errors.insert(block::RESOURCE, "Choose a resource.".into());
        None
    } else {
        match config.resource(&resource_text) {
            Some(r) if is_name(&resource_text) && crate::policy::requestable(config, &r.name, None, None).is_ok() => {
                Some(r)
            }
            _ => {
                errors.insert(
                    block::RESOURCE,
                    format!(
                        "There is no resource called “{}” that you may request; choose one from the list.",
                        crate::text::truncate(&resource_text, 64)
                    ),
                );
                None
            }
        }
    };
    let role = view
        .input(block::ROLE)
        .map(|r| r.trim().to_ascii_lowercase())
        .filter(|r| !r.is_empty());
    if let (Some(r), Some(role)) = (resource, role.as_deref()) {
        if !r.roles.iter().any(|x| x == role) {
            errors.insert(
                block::ROLE,
                format!(
                    "{} has no role “{}”; its roles are: {}.",
                    r.name,
                    crate::text::truncate(role, 64),
                    r.roles.join(", ")
                ),
            );
        }
    }
    let duration = match view.input(block::DURATION).map(str::trim).filter(|d| !d.is_empty()) {
        None => None,
        Some(text) => match parse_typed(text) {
            Ok(d) => {
                if let Some(r) = resource.filter(|r| d > r.max_duration) {
                    errors.insert(
                        block::DURATION,
                        format!(
                            "{d} is longer than the {} allowed for {}; choose {} or less.",
                            r.max_duration, r.name, r.max_duration
                        ),
                    );
                }
                Some(d)
            }
            Err(e) => {
                errors.insert(block::DURATION, e.to_string());
                None
            }
        },
    };
    let max_reason = config.requests.max_reason_length;
    let reason = match crate::text::check_typed("reason", view.input(block::REASON).unwrap_or_default(), max_reason) {
        Ok(r) if r.is_empty() => {
            errors.insert(
                block::REASON,
                "Say why you need access, e.g. “investigating INC-1234” (a reason of only spaces is empty).".into(),
            );
            String::new()
        }
        Ok(r) => r,
        Err(e) => {
            errors.insert(block::REASON, e);
            String::new()
        }
    };
    let ticket = match crate::text::check_typed(
        "ticket or reference",
        view.input(block::TICKET).unwrap_or_default(),
        MAX_TICKET,
    ) {
        Ok(t) => t,
        Err(e) => {
            errors.insert(block::TICKET, e);
            String::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let reason = if ticket.is_empty() {
        reason
    } else {
        format!("{reason} (ticket: {ticket})")
    };
    if reason.chars().count() > max_reason {
        errors.insert(
            block::REASON,
            format!("The reason and the ticket together are over {max_reason} characters; please shorten the reason."),
        );
        return Err(errors);
    }
    Ok(RequestInput {
        resource: resource.map(|r| r.name.clone()).unwrap_or_default(),
        role,
        duration,
        reason,
    })
}

/// An extend form's fields: the request it extends, how much longer, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendInput {
    pub request_id: i64,
    pub duration: HumanDuration,
    pub reason: String,
}

/// Reads an extend form with the rules of `/jit extend`.
pub fn read_extend(config: &Config, view: &View) -> Result<ExtendInput, FieldErrors> {
    let mut errors = FieldErrors::new();
    let request_id = Origin::read(&view.private_metadata).request;
    let duration = match parse_typed(view.input(block::DURATION).unwrap_or_default()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.insert(block::DURATION, e.to_string());
            None
        }
    };
    let reason = match crate::text::check_typed(
        "reason",
        view.input(block::REASON).unwrap_or_default(),
        config.requests.max_reason_length,
    ) {
        Ok(r) => r,
        Err(e) => {
            errors.insert(block::REASON, e);
            String::new()
        }
    };
    let Some(request_id) = request_id else {
        errors.insert(
            block::DURATION,
            "This form lost which access it extends; close it and click Extend again.".into(),
        );
        return Err(errors);
    };
    match (duration, errors.is_empty()) {
        (Some(duration), true) => Ok(ExtendInput {
            request_id,
            duration,
            reason,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(
            Path::new("t.toml"),
            r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
max_duration = "4h"
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[adapters.demo]
type = "noop"
"#,
        )
        .unwrap()
    }

    fn view(fields: &[(&str, &str)], metadata: &str) -> View {
        let mut values = serde_json::Map::new();
        for (block, value) in fields {
            values.insert(
                block.to_string(),
                json!({ *block: {"type": "plain_text_input", "value": value} }),
            );
        }
        serde_json::from_value(json!({"id": "V1", "type": "modal", "callback_id": REQUEST_CALLBACK,
            "private_metadata": metadata, "state": {"values": values}}))
        .unwrap()
    }

    #[test]
    fn a_valid_form_reads_like_the_command() {
        let v = view(
            &[
                ("resource", "prod-db"),
                ("role", "write"),
                ("duration", "1h 30m"),
                ("reason", " fixing "),
                ("ticket", "INC-1"),
            ],
            "",
        );
        let r = read_request(&config(), &v).unwrap();
        assert_eq!(r.resource, "prod-db");
        assert_eq!(r.role.as_deref(), Some("write"));
        assert_eq!(r.duration.unwrap().as_secs(), 5400);
        assert_eq!(r.reason, "fixing (ticket: INC-1)");
    }

    #[test]
    fn each_bad_field_gets_its_own_error_under_its_block_id() {
        let v = view(
            &[
                ("resource", "prod-db"),
                ("role", "root"),
                ("duration", "8h"),
                ("reason", "   "),
                ("ticket", "a\u{202E}b"),
            ],
            "",
        );
        let e = read_request(&config(), &v).unwrap_err();
        assert_eq!(
            e.keys().copied().collect::<Vec<_>>(),
            vec!["duration", "reason", "role", "ticket"]
        );
        assert!(e["reason"].contains("only spaces"), "{}", e["reason"]);
        assert!(e["duration"].contains("4h"), "{}", e["duration"]);
        let e = read_request(&config(), &view(&[("resource", "nope"), ("reason", "x")], "")).unwrap_err();
        assert!(e.contains_key("resource"));
        let long = "x".repeat(config().requests.max_reason_length + 1);
        let e = read_request(&config(), &view(&[("resource", "prod-db"), ("reason", &long)], "")).unwrap_err();
        assert!(e["reason"].contains("characters long"), "{}", e["reason"]);
    }

    #[test]
    fn metadata_that_jitgate_did_not_write_is_no_origin() {
        assert_eq!(
            Origin::read(r#"{"channel":"C0INCIDENT"}"#).channel.as_deref(),
            Some("C0INCIDENT")
        );
        assert_eq!(Origin::read(r#"{"channel":"'; DROP TABLE"}"#), Origin::default());
        assert_eq!(Origin::read("not json"), Origin::default());
        assert_eq!(Origin::read(r#"{"request":-3}"#), Origin::default());
    }

    #[test]
    fn durations_offered_stay_within_the_maximum() {
        let d = duration_choices(HumanDuration::from_secs(3600), HumanDuration::from_secs(5400));
        assert_eq!(d.last().unwrap().as_secs(), 5400);
        assert!(d.iter().all(|x| x.as_secs() <= 5400));
    }

    #[test]
    fn the_modal_keeps_within_slacks_limits() {
        let m = request_modal(&config(), Some("prod-db"), Origin::channel("C0GENERAL"));
        crate::fakeslack::check_view(&m).unwrap();
        let m = extend_modal(
            3,
            "prod-db:read",
            HumanDuration::from_secs(7200),
            HumanDuration::from_secs(3600),
        );
        crate::fakeslack::check_view(&m).unwrap();
    }
}
