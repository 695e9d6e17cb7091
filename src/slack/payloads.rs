//! Inbound Slack payloads, parsed after the signature check.
//!
//! These read only the fields jitgate uses and ignore the rest. Slack keeps adding fields
//! to interaction payloads (and the `message` object in them can hold any block type), so
//! a strict parse of the whole object could drop a real click.

use std::collections::HashMap;

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
    /// A select's choice.
    #[serde(default)]
    pub selected_option: Option<SelectedOption>,
}

/// The chosen option of a select.
#[derive(Debug, Clone, Deserialize)]
pub struct SelectedOption {
    pub value: String,
}

/// One input's value in a view's state: typed text (`value`) or a select's choice.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateValue {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selected_option: Option<SelectedOption>,
}

impl StateValue {
    /// What the person entered or chose, if anything.
    pub fn text(&self) -> Option<&str> {
        self.value
            .as_deref()
            .or(self.selected_option.as_ref().map(|o| o.value.as_str()))
    }
}

/// A view's state: `values[block_id][action_id]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewState {
    #[serde(default)]
    pub values: HashMap<String, HashMap<String, StateValue>>,
}

/// A view (modal or Home tab) as an interaction carries it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct View {
    #[serde(default)]
    pub id: String,
    /// `modal` or `home`.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub callback_id: String,
    #[serde(default)]
    pub private_metadata: String,
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub state: ViewState,
}

impl View {
    /// The value of input `block_id` (whatever its action_id), if one was given.
    pub fn input(&self, block_id: &str) -> Option<&str> {
        self.state
            .values
            .get(block_id)
            .and_then(|actions| actions.values().find_map(StateValue::text))
    }
}

/// A `view_submission`: a modal's Submit.
#[derive(Debug, Clone, Deserialize)]
pub struct ViewSubmission {
    pub user: IdOnly,
    #[serde(default)]
    pub team: Option<IdOnly>,
    #[serde(default)]
    pub api_app_id: Option<String>,
    #[serde(default)]
    pub trigger_id: Option<String>,
    pub view: View,
}

/// A global shortcut (the lightning menu or search).
#[derive(Debug, Clone, Deserialize)]
pub struct Shortcut {
    pub user: IdOnly,
    #[serde(default)]
    pub team: Option<IdOnly>,
    #[serde(default)]
    pub api_app_id: Option<String>,
    #[serde(default)]
    pub callback_id: String,
    #[serde(default)]
    pub trigger_id: Option<String>,
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
    /// The view (Home tab or modal) the click happened in; absent for messages.
    #[serde(default)]
    pub view: Option<View>,
}

/// The interaction kinds jitgate handles.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Interaction {
    #[serde(rename = "block_actions")]
    BlockActions(BlockActions),
    #[serde(rename = "view_submission")]
    ViewSubmission(ViewSubmission),
    #[serde(rename = "shortcut")]
    Shortcut(Shortcut),
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
        let i: Interaction = serde_json::from_str(r#"{"type":"view_closed","user":{"id":"U1"}}"#).unwrap();
        assert!(matches!(i, Interaction::Other));
    }

    #[test]
    fn a_view_submission_reads_inputs_by_block_id_typed_or_chosen() {
        let json = r#"{"type":"view_submission","user":{"id":"U1"},"trigger_id":"t","view":{"id":"V1","type":"modal",
          "callback_id":"jit_request","private_metadata":"{}","hash":"h","state":{"values":{
          "resource":{"resource":{"type":"static_select","selected_option":{"text":{"type":"plain_text","text":"x"},"value":"prod-db"}}},
          "reason":{"reason":{"type":"plain_text_input","value":"fixing"}},
          "ticket":{"ticket":{"type":"plain_text_input","value":null}}}}}}"#;
        let Interaction::ViewSubmission(v) = serde_json::from_str(json).unwrap() else {
            panic!("not a view_submission")
        };
        assert_eq!(v.view.input("resource"), Some("prod-db"));
        assert_eq!(v.view.input("reason"), Some("fixing"));
        assert_eq!(v.view.input("ticket"), None);
        assert_eq!(v.view.input("role"), None);
    }
}
