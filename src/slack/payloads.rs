//! Inbound Slack payloads, parsed after the signature check.
//!
//! These read only the fields jitgate uses and ignore the rest. Slack keeps adding fields
//! to interaction payloads (and the `message` object in them can hold any block type), so
//! a strict parse of the whole object could drop a real click.

use serde::Deserialize;

/// A slash command invocation (form-encoded).
#[derive(Debug, Clone, Deserialize)]
pub struct SlashCommand {
    pub team_id: String,
    /// The Slack app the command was sent to (absent in old payloads).
    #[serde(default)]
    pub api_app_id: Option<String>,
    pub channel_id: String,
    #[serde(default)]
    pub channel_name: Option<String>,
    pub user_id: String,
    pub command: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub response_url: Option<String>,
    /// Unique per invocation; a re-delivery (Socket Mode) carries the same one.
    #[serde(default)]
    pub trigger_id: Option<String>,
}

/// The form of `/slack/commands`: either a command or Slack's `ssl_check` probe.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandForm {
    #[serde(default)]
    pub ssl_check: Option<String>,
    #[serde(flatten)]
    pub command: Option<SlashCommand>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

/// One clicked element.
#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub action_id: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// A `block_actions` interaction.
#[derive(Debug, Clone, Deserialize)]
pub struct BlockActions {
    pub user: IdOnly,
    #[serde(default)]
    pub team: Option<IdOnly>,
    #[serde(default)]
    pub api_app_id: Option<String>,
    #[serde(default)]
    pub channel: Option<IdOnly>,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Unique per click; a re-delivery (Socket Mode) carries the same one.
    #[serde(default)]
    pub trigger_id: Option<String>,
}

/// The interaction kinds jitgate handles.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Interaction {
    #[serde(rename = "block_actions")]
    BlockActions(BlockActions),
    #[serde(other)]
    Other,
}

/// The form of `/slack/interactions`.
#[derive(Debug, Clone, Deserialize)]
pub struct InteractionForm {
    pub payload: String,
}

/// An Events API envelope.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum EventEnvelope {
    #[serde(rename = "url_verification")]
    UrlVerification { challenge: String },
    #[serde(rename = "event_callback")]
    EventCallback {
        #[serde(default)]
        event_id: Option<String>,
        #[serde(default)]
        team_id: Option<String>,
        #[serde(default)]
        api_app_id: Option<String>,
        event: serde_json::Value,
    },
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_block_actions_payload_parses_and_extra_fields_are_ignored() {
        let json = r#"{"type":"block_actions","team":{"id":"T1","domain":"x"},"user":{"id":"U1","username":"a","name":"a","team_id":"T1"},
          "api_app_id":"A1","container":{"type":"message","message_ts":"1.2","channel_id":"C1","is_ephemeral":false},
          "trigger_id":"t","channel":{"id":"C1","name":"approvals"},"message":{"type":"message","blocks":[{"type":"brand_new_block"}]},
          "response_url":"https://hooks.slack.com/actions/x","actions":[{"type":"button","action_id":"jit_approve","block_id":"b","value":"42","action_ts":"1"}]}"#;
        let Interaction::BlockActions(b) = serde_json::from_str(json).unwrap() else {
            panic!("not block_actions")
        };
        assert_eq!(b.user.id, "U1");
        assert_eq!(b.actions[0].value.as_deref(), Some("42"));
    }

    #[test]
    fn other_interactions_are_recognised_as_other() {
        let i: Interaction = serde_json::from_str(r#"{"type":"view_submission","user":{"id":"U1"}}"#).unwrap();
        assert!(matches!(i, Interaction::Other));
    }
}
