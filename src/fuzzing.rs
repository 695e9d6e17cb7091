//! Entry points for fuzzing: each takes arbitrary bytes and drives one parser or renderer
//! that sees outside input, checking what must hold for any input. The `cargo fuzz`
//! targets in `fuzz/` call these, and `cargo test` replays the committed corpus through
//! them, so a crash found once stays a regression test. None of them may panic.

use std::path::Path;
use std::sync::LazyLock;

use crate::cards::{render_card, CardModel};
use crate::config::Config;
use crate::duration::HumanDuration;
use crate::slack::payloads::{EventEnvelope, Interaction, InteractionForm, SlashCommand};
use crate::slack::signature;
use crate::store::{RequestKind, RequestRow, RequestState};
use crate::text;

/// The configuration commands are parsed against.
static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    crate::config::parse(
        Path::new("fuzz.toml"),
        r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER"]
adapter = "noop"

[adapters.noop]
type = "noop"
"#,
    )
    .expect("the fuzzing configuration is valid")
});

/// Splits the input at the first `sep`, or returns it whole and empty.
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Signature headers and body: `timestamp \n signature \n body`, checked at a fixed now.
/// Only a correctly signed body within the window verifies.
pub fn signature_headers(data: &[u8]) {
    let (ts, rest) = split(data, b'\n');
    let (sig, body) = split(rest, b'\n');
    let ts = String::from_utf8_lossy(ts);
    let sig = String::from_utf8_lossy(sig);
    for now in [0, 1_700_000_000, i64::MAX, i64::MIN] {
        let result = signature::verify(b"fuzz-secret", Some(&ts), Some(&sig), body, now);
        if result.is_ok() {
            assert_eq!(
                sig,
                signature::sign(b"fuzz-secret", ts.trim(), body),
                "only the right signature verifies"
            );
        }
    }
    // The real signature always verifies at its own time.
    if let Ok(t) = ts.trim().parse::<i64>() {
        let good = signature::sign(b"fuzz-secret", ts.trim(), body);
        assert_eq!(
            signature::verify(b"fuzz-secret", Some(&ts), Some(&good), body, t),
            Ok(())
        );
    }
}

/// A slash command's form body, decoded as the HTTP endpoint decodes it, then its text
/// parsed as a command and checked by the typed-text rule.
pub fn command_form(data: &[u8]) {
    if let Ok(cmd) = serde_urlencoded::from_bytes::<SlashCommand>(data) {
        command_text(cmd.text.as_bytes());
    }
}

/// `/jit …` text: parsed (decoded once) against a fixed configuration; a request's reason
/// goes through the typed-text rule, and what passes is inert.
pub fn command_text(data: &[u8]) {
    let text = text::unescape(&String::from_utf8_lossy(data));
    match crate::commands::parse(&text, &CONFIG) {
        Ok(crate::commands::Command::Request(input)) => {
            if let Ok(valid) = crate::requests::validate(&CONFIG, &input) {
                assert!(valid.reason.chars().count() <= CONFIG.requests.max_reason_length);
                assert_eq!(
                    text::inert(&valid.reason),
                    valid.reason,
                    "a valid reason is inert already"
                );
            }
        }
        Ok(_) => {}
        Err(reply) => assert!(!reply.is_empty()),
    }
}

/// An interaction's form body (`payload=<json>`) and an Events API body.
pub fn interaction(data: &[u8]) {
    if let Ok(form) = serde_urlencoded::from_bytes::<InteractionForm>(data) {
        let _ = serde_json::from_str::<Interaction>(&form.payload);
    }
    let _ = serde_json::from_slice::<Interaction>(data);
    let _ = serde_json::from_slice::<EventEnvelope>(data);
}

/// A duration as typed: parses only to 1 s … 1 year, and shows as text that parses back
/// to the same duration.
pub fn duration(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = text.parse::<HumanDuration>() {
        assert!(d.as_secs() >= 1 && d.as_secs() <= 366 * 86_400, "{d:?}");
        assert_eq!(d.to_string().parse::<HumanDuration>(), Ok(d));
    }
}

/// A configuration file: either a configuration or a list of problems, never a panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = crate::config::parse(Path::new("/etc/jitgate/fuzz.toml"), &text) {
        assert!(!e.problems.is_empty());
    }
}

/// Arbitrary text as a reason and a description on the approval card: valid JSON, within
/// Slack's limits, with no refused character anywhere.
pub fn card(data: &[u8]) {
    let (reason, description) = split(data, 0xff);
    let reason = String::from_utf8_lossy(reason).into_owned();
    let description = String::from_utf8_lossy(description).into_owned();
    let _ = text::check_typed("reason", &reason, 2000);
    let request = RequestRow {
        id: 42,
        requester_id: "U0REQUESTER".into(),
        team_id: "T0TEAM".into(),
        resource: "prod-db".into(),
        role: "read".into(),
        duration_secs: 3600,
        reason,
        origin_channel: "C0GENERAL".into(),
        approval_channel: "C0APPROVALS".into(),
        approvals_required: 1,
        state: RequestState::Pending,
        created_at: 1_700_000_000_000,
        decided_at: None,
        card_channel: None,
        card_ts: None,
        kind: RequestKind::Access,
        extends_request_id: None,
    };
    let model = CardModel {
        request: &request,
        description: &description,
        decisions: &[],
        grant: None,
        job: None,
        break_glass: None,
        refused: None,
    };
    let content = render_card(&model);
    let blocks = serde_json::to_value(content.blocks.unwrap_or_default()).expect("the card serializes");
    for block in blocks.as_array().into_iter().flatten() {
        if let Some(t) = block.pointer("/text/text").and_then(|t| t.as_str()) {
            assert!(
                t.chars().count() <= 3000,
                "section text of {} characters",
                t.chars().count()
            );
            assert!(
                !t.chars().any(text::is_refused_char),
                "a refused character reached the card"
            );
        }
    }
}

/// One fuzzing entry point: arbitrary bytes in, a panic on a broken invariant.
pub type Entry = fn(&[u8]);

/// Every entry point, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("signature_headers", signature_headers),
    ("command_form", command_form),
    ("command_text", command_text),
    ("interaction", interaction),
    ("duration", duration),
    ("config", config),
    ("card", card),
];
