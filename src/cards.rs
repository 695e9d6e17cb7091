//! What jitgate shows in Slack: the approval card (Block Kit) and its plain-text messages.
//!
//! The card is always rendered from the stored state, so every update shows the whole
//! truth (who decided, granted, expired, failed) rather than a patch on the last version.

use slack_morphism::prelude::*;

use crate::duration::HumanDuration;
use crate::ids::label;
use crate::oncall::{Evidence, APPROVER_PREFIX};
use crate::store::{
    BreakGlassRow, DecisionRow, GrantRow, GrantState, JobRow, RequestKind, RequestRow, RequestState, Verdict,
};
use crate::text::{escape, inert, slack_date, truncate};

/// `action_id` of the Approve button.
pub const APPROVE: &str = "jit_approve";
/// `action_id` of the Deny button.
pub const DENY: &str = "jit_deny";
/// `action_id` of the Revoke button on a card whose grant is in force.
pub const REVOKE: &str = "jit_revoke";
/// `action_id` of the "Reviewed — OK" button on a break-glass card awaiting review.
pub const REVIEWED: &str = "jit_reviewed";
/// action_id of "Extend" (Home, the ending-soon DM): opens the extend form; value: the request id.
pub const EXTEND: &str = "jit_open_extend";

/// Section text must stay under Slack's 3000-character limit.
const MAX_SECTION: usize = 2900;

/// Everything the card shows.
#[derive(Debug, Clone)]
pub struct CardModel<'a> {
    pub request: &'a RequestRow,
    pub description: &'a str,
    pub decisions: &'a [DecisionRow],
    pub grant: Option<&'a GrantRow>,
    /// The grant or revoke job currently relevant, for retry status.
    pub job: Option<&'a JobRow>,
    /// Set when the request was a break-glass use.
    pub break_glass: Option<&'a BreakGlassRow>,
    /// Set when Slack refused the card at first (its error code): the card says it is late.
    pub refused: Option<&'a str>,
}

fn mention_list(users: &[&str]) -> String {
    users.iter().map(|u| format!("<@{u}>")).collect::<Vec<_>>().join(", ")
}

/// The status lines under the request details.
pub fn status_text(m: &CardModel<'_>) -> String {
    let r = m.request;
    let approvers: Vec<&str> = m
        .decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Approve)
        .map(|d| d.approver_id.as_str())
        .collect();
    match r.state {
        RequestState::Cancelled => format!(
            ":leftwards_arrow_with_hook: Withdrawn by <@{}> {}.",
            r.requester_id,
            slack_date(r.decided_at.unwrap_or(r.created_at))
        ),
        RequestState::Pending => {
            if approvers.is_empty() {
                if r.approvals_required > 1 {
                    format!(
                        ":hourglass_flowing_sand: Waiting for {} approvals.",
                        r.approvals_required
                    )
                } else {
                    ":hourglass_flowing_sand: Waiting for an approver.".to_string()
                }
            } else {
                format!(
                    ":hourglass_flowing_sand: Approved by {} ({} of {}); waiting for {} more.",
                    mention_list(&approvers),
                    approvers.len(),
                    r.approvals_required,
                    r.approvals_required as usize - approvers.len().min(r.approvals_required as usize)
                )
            }
        }
        RequestState::Denied => {
            let denier = m.decisions.iter().find(|d| d.verdict == Verdict::Deny);
            match denier {
                Some(d) => format!(
                    ":no_entry: Denied by <@{}> {}.",
                    d.approver_id,
                    slack_date(d.decided_at)
                ),
                None => ":no_entry: Denied.".to_string(),
            }
        }
        // An extension whose grant ended before anyone decided: closed, nothing to extend.
        RequestState::Expired
            if r.kind == RequestKind::Extension
                && m.grant
                    .is_some_and(|g| matches!(g.state, GrantState::Revoked | GrantState::Superseded)) =>
        {
            format!(
                ":lock: Closed {}: {} ended before anyone decided, so there is nothing left to extend.",
                slack_date(r.decided_at.unwrap_or(r.created_at)),
                r.extends_request_id.map(label).unwrap_or_default()
            )
        }
        RequestState::Expired => format!(
            ":hourglass: Expired {}: nobody decided in time. Ask again with a new request if still needed.",
            slack_date(r.decided_at.unwrap_or(r.created_at))
        ),
        RequestState::Approved => {
            let when = slack_date(r.decided_at.unwrap_or(r.created_at));
            let auto = m
                .decisions
                .iter()
                .filter(|d| d.verdict == Verdict::Approve && d.approver_id.starts_with(APPROVER_PREFIX))
                .find_map(|d| Evidence::from_reason(d.reason.as_deref()));
            let mut lines = vec![match (m.break_glass, auto) {
                (Some(bg), _) => {
                    let mut line = format!(
                        ":rotating_light: *Break-glass*: <@{}> granted this to themselves {when}, with no approver.",
                        r.requester_id
                    );
                    match (&bg.reviewed_by, bg.reviewed_at, bg.review.as_deref()) {
                        (Some(by), Some(at), Some("revoked")) => line.push_str(&format!(
                            "\n:white_check_mark: Reviewed by <@{by}> {}: revoked.",
                            slack_date(at)
                        )),
                        (Some(by), Some(at), _) => line.push_str(&format!(
                            "\n:white_check_mark: Reviewed by <@{by}> {}: OK.",
                            slack_date(at)
                        )),
                        _ => line.push_str("\n:eyes: *Review required*: an approver must check this use."),
                    }
                    line
                }
                (None, auto) => match auto {
                    Some(ev) => format!(
                        ":robot_face: Auto-approved by on-call policy `{}` {when}: <@{}> is {}.",
                        escape(&ev.policy),
                        r.requester_id,
                        ev.summary()
                    ),
                    None => format!(":white_check_mark: Approved by {} {when}.", mention_list(&approvers)),
                },
            }];
            if let Some(g) = m.grant {
                lines.push(grant_line(g, m.job));
            }
            lines.join("\n")
        }
    }
}

fn grant_line(g: &GrantRow, job: Option<&JobRow>) -> String {
    let retrying = |what: &str| match job.and_then(|j| j.last_error.as_deref().map(|e| (j.attempts, e))) {
        Some((attempts, err)) if attempts > 0 => {
            format!(
                " :warning: {what} attempt {attempts} failed ({}); retrying.",
                escape(&truncate(err, 200))
            )
        }
        _ => String::new(),
    };
    match g.state {
        GrantState::Granting => format!(":arrows_counterclockwise: Granting access…{}", retrying("Grant")),
        GrantState::Active => {
            let mut line = format!(
                ":key: Access granted {}; ends {}.",
                slack_date(g.granted_at.unwrap_or(g.created_at)),
                slack_date(g.expires_at.unwrap_or(g.created_at)),
            );
            if let Some(by) = &g.revoke_requested_by {
                line.push_str(&format!(" :hourglass: Revoking now, as <@{by}> asked."));
            }
            line + &retrying("Revoke")
        }
        GrantState::Revoked | GrantState::Superseded => {
            let when = slack_date(g.revoked_at.unwrap_or(g.created_at));
            let how = match g.revoked_by.as_deref() {
                Some(by) if by == g.user_id => format!("ended early by <@{by}>"),
                Some(by) if by.starts_with('U') || by.starts_with('W') => format!("revoked early by <@{by}>"),
                _ => "ended (expired)".to_string(),
            };
            if g.state == GrantState::Superseded {
                format!(":lock: This grant {how} {when}; the same access continues under a later grant.")
            } else {
                format!(":lock: Access {how} {when}.")
            }
        }
        GrantState::Failed => {
            format!(
                ":x: Granting failed: {}. Nothing is in force; ask again once the problem is fixed.",
                escape(&truncate(g.last_error.as_deref().unwrap_or("unknown error"), 300))
            )
        }
    }
}

/// The DM `notice` before request `id`'s access (`what`) ends at `expires_at`, with
/// "Extend" (opens the extend form) and "I'm done" (ends it now). Buttons carry the id only.
pub fn ending_soon_message(id: i64, what: &str, expires_at: i64, notice: HumanDuration) -> SlackMessageContent {
    let text = format!(
        ":hourglass: Your access to `{what}` ({}) ends {} (in about {notice}).",
        label(id),
        slack_date(expires_at)
    );
    let value = id.to_string();
    let button = |label: &str, action: &str| {
        SlackBlockButtonElement::new(pt!(label))
            .with_action_id(action.into())
            .with_value(value.clone())
    };
    SlackMessageContent::new().with_text(text.clone()).with_blocks(vec![
        SlackSectionBlock::new().with_text(md!(text)).into(),
        SlackActionsBlock::new(vec![
            button(":hourglass: Extend", EXTEND).into(),
            button(":wave: I'm done", REVOKE).into(),
        ])
        .with_block_id(format!("ending_soon_{id}").into())
        .into(),
    ])
}

/// The one-line summary used as the notification text.
pub fn card_fallback(r: &RequestRow) -> String {
    format!(
        "Access request {}: <@{}> asks for {}:{} for {}",
        label(r.id),
        r.requester_id,
        r.resource,
        r.role,
        HumanDuration::from_secs(r.duration_secs as u64)
    )
}

/// The approval card.
pub fn render_card(m: &CardModel<'_>) -> SlackMessageContent {
    let r = m.request;
    let duration = HumanDuration::from_secs(r.duration_secs as u64);
    let (title, length) = match (r.kind, r.extends_request_id) {
        (RequestKind::Extension, Some(original)) => (
            "Extension request",
            md!(format!("*Extends*\n{} by {duration}", label(original))),
        ),
        _ if m.break_glass.is_some() => ("Break-glass access request", md!(format!("*Duration*\n{duration}"))),
        _ => ("Access request", md!(format!("*Duration*\n{duration}"))),
    };
    let mut blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(pt!(format!("{title} {}", label(r.id)))).into(),
        SlackSectionBlock::new()
            .with_fields(vec![
                md!(format!("*Requester*\n<@{}>", r.requester_id)),
                md!(format!("*Resource*\n`{}:{}`", r.resource, r.role)),
                length,
                md!(format!("*Request*\n{}", label(r.id))),
            ])
            .into(),
        SlackSectionBlock::new().with_text(md!("*Reason*")).into(),
        // What the requester typed, in a plain_text object: Slack parses no mention, link
        // or formatting there, so it shows as typed and pings nobody.
        SlackSectionBlock::new()
            .with_text(SlackBlockText::Plain(
                SlackBlockPlainText::new(truncate(&inert(&r.reason), MAX_SECTION)).with_emoji(false),
            ))
            .into(),
    ];
    let mut context = format!("Requested {}", slack_date(r.created_at));
    if !m.description.is_empty() {
        context = format!("{} · {context}", escape(&truncate(m.description, 200)));
    }
    if r.origin_channel != r.approval_channel && r.origin_channel.starts_with(['C', 'G']) {
        context.push_str(&format!(" · from <#{}>", r.origin_channel));
    }
    blocks.push(SlackContextBlock::new(vec![md!(context)]).into());
    blocks.push(SlackSectionBlock::new().with_text(md!(status_text(m))).into());
    if let Some(code) = m.refused {
        blocks.push(
            SlackContextBlock::new(vec![md!(format!(
                ":warning: This card is late: Slack refused to post it at first (`{}`); the requester was told. \
                 The request's time-out ran meanwhile.",
                escape(&truncate(code, 100))
            ))])
            .into(),
        );
    }
    if r.state == RequestState::Pending {
        let id = r.id.to_string();
        blocks.push(
            SlackActionsBlock::new(vec![
                SlackBlockButtonElement::new(pt!("Approve"))
                    .with_action_id(APPROVE.into())
                    .with_value(id.clone())
                    .with_style(SlackBlockButtonStyle::Primary)
                    .into(),
                SlackBlockButtonElement::new(pt!("Deny"))
                    .with_action_id(DENY.into())
                    .with_value(id)
                    .with_style(SlackBlockButtonStyle::Danger)
                    .into(),
            ])
            .into(),
        );
    }
    let mut buttons: Vec<SlackActionBlockElement> = Vec::new();
    // A break-glass use keeps its card open for review until an approver acts.
    if m.break_glass.is_some_and(|bg| bg.reviewed_at.is_none()) {
        buttons.push(
            SlackBlockButtonElement::new(pt!("Reviewed — OK"))
                .with_action_id(REVIEWED.into())
                .with_value(r.id.to_string())
                .with_style(SlackBlockButtonStyle::Primary)
                .into(),
        );
    }
    if let Some(g) = m
        .grant
        .filter(|g| g.state == GrantState::Active && g.revoke_requested_by.is_none())
    {
        let confirm = SlackBlockConfirmItem::new(
            pt!("Revoke access?"),
            md!(format!("<@{}> loses `{}:{}` now.", g.user_id, g.resource, g.role)),
            pt!("Revoke"),
            pt!("Cancel"),
        );
        buttons.push(
            SlackBlockButtonElement::new(pt!("Revoke now"))
                .with_action_id(REVOKE.into())
                .with_value(r.id.to_string())
                .with_style(SlackBlockButtonStyle::Danger)
                .with_confirm(confirm)
                .into(),
        );
    }
    if !buttons.is_empty() {
        blocks.push(SlackActionsBlock::new(buttons).into());
    }
    SlackMessageContent::new()
        .with_text(match m.break_glass {
            Some(_) => format!(
                "Break-glass {}: <@{}> granted themselves {}:{} for {}",
                label(r.id),
                r.requester_id,
                r.resource,
                r.role,
                duration
            ),
            None => card_fallback(r),
        })
        .with_blocks(blocks)
}

/// What an operator must do when Slack refuses a message for good with `code` (an error
/// like `not_in_channel`) in `channel`.
pub fn refusal_fix(code: &str, channel: &str) -> String {
    match code {
        "not_in_channel" => format!("invite the bot with `/invite @jitgate` in <#{channel}>"),
        "channel_not_found" => format!(
            "<#{channel}> does not exist, or is private and the bot is not in it: `/invite @jitgate` there, or \
             correct the channel ID in jitgate's configuration"
        ),
        "is_archived" => format!("<#{channel}> is archived: unarchive it, or configure another channel"),
        "invalid_auth" | "account_inactive" | "token_revoked" | "token_expired" | "not_authed" => {
            "jitgate's Slack token is not valid any more: set SLACK_BOT_TOKEN to the app's Bot User OAuth Token \
             (reinstall the app if it was removed)"
                .to_string()
        }
        "missing_scope" => {
            "the Slack app lacks a scope: compare it with manifest/slack-app.yaml and reinstall it".into()
        }
        "restricted_action" => {
            format!("a workspace setting keeps the bot from posting in <#{channel}>: ask a Slack admin")
        }
        _ => "see jitgate's log for the details".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(state: RequestState) -> RequestRow {
        RequestRow {
            id: 42,
            requester_id: "U1".into(),
            team_id: "T1".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 7200,
            reason: "investigating <!channel> & INC-1234".into(),
            origin_channel: "C9".into(),
            approval_channel: "C0".into(),
            approvals_required: 2,
            state,
            created_at: 1_700_000_000_000,
            decided_at: None,
            card_channel: None,
            card_ts: None,
            kind: crate::store::RequestKind::Access,
            extends_request_id: None,
        }
    }

    fn json(m: &CardModel<'_>) -> String {
        serde_json::to_string(&render_card(m)).unwrap()
    }

    #[test]
    fn pending_card_has_buttons_that_carry_only_the_request_id() {
        let r = request(RequestState::Pending);
        let m = CardModel {
            request: &r,
            description: "Production DB",
            decisions: &[],
            grant: None,
            job: None,
            break_glass: None,
            refused: None,
        };
        let j = json(&m);
        assert!(j.contains("\"action_id\":\"jit_approve\""), "{j}");
        assert!(j.contains("\"value\":\"42\""), "{j}");
        assert!(j.contains("JIT-42"));
        assert!(j.contains("prod-db:read"));
        assert!(j.contains("2h"));
        // The reason is shown as typed, in plain_text, where it cannot ping the channel.
        assert!(
            j.contains(r#"{"type":"plain_text","text":"investigating <!channel> & INC-1234","emoji":false}"#),
            "{j}"
        );
    }

    #[test]
    fn decided_card_has_no_buttons_and_names_the_decider() {
        let mut r = request(RequestState::Denied);
        r.decided_at = Some(1_700_000_100_000);
        let d = [DecisionRow {
            approver_id: "U2".into(),
            verdict: Verdict::Deny,
            decided_at: 1_700_000_100_000,
            reason: None,
        }];
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &d,
            grant: None,
            job: None,
            break_glass: None,
            refused: None,
        };
        let j = json(&m);
        assert!(!j.contains("jit_approve"));
        assert!(j.contains("Denied by <@U2>"), "{j}");
    }

    #[test]
    fn auto_approved_card_shows_the_policy_and_its_evidence() {
        let mut r = request(RequestState::Approved);
        r.decided_at = Some(1_700_000_100_000);
        let evidence = Evidence {
            policy: "db-on-call".into(),
            source: "pd".into(),
            source_type: "pagerduty".into(),
            schedule: "Primary <DB>".into(),
            schedule_id: Some("PSCHED1".into()),
            escalation_policy: None,
            level: Some(1),
            shift_start: None,
            shift_end: None,
            matched_by: "email".into(),
            incident: None,
            channel: "C9".into(),
            channel_name: Some("inc-42".into()),
            checked_at: 1_700_000_100_000,
        };
        let d = [DecisionRow {
            approver_id: "oncall:db-on-call".into(),
            verdict: Verdict::Approve,
            decided_at: 1_700_000_100_000,
            reason: Some(serde_json::to_string(&evidence).unwrap()),
        }];
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &d,
            grant: None,
            job: None,
            break_glass: None,
            refused: None,
        };
        let text = status_text(&m);
        assert!(text.contains("Auto-approved by on-call policy `db-on-call`"), "{text}");
        assert!(
            text.contains("PagerDuty schedule *Primary &lt;DB&gt;* (level 1)"),
            "{text}"
        );
        assert!(!text.contains("<@oncall:"), "{text}");
        assert!(!json(&m).contains("jit_approve"));
    }

    #[test]
    fn break_glass_card_stays_open_for_review_until_reviewed() {
        let mut r = request(RequestState::Approved);
        r.decided_at = Some(r.created_at);
        let mut bg = BreakGlassRow {
            request_id: 42,
            used_at: r.created_at,
            reviewed_by: None,
            reviewed_at: None,
            review: None,
        };
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &[],
            grant: None,
            job: None,
            break_glass: Some(&bg),
            refused: None,
        };
        let j = json(&m);
        assert!(j.contains("Break-glass access request JIT-42"), "{j}");
        assert!(
            j.contains("Review required") && j.contains("\"action_id\":\"jit_reviewed\""),
            "{j}"
        );
        assert!(j.contains("Reviewed — OK"), "{j}");
        assert!(!j.contains("Approved by"), "{j}");

        bg.reviewed_by = Some("U2".into());
        bg.reviewed_at = Some(r.created_at + 1);
        bg.review = Some("ok".into());
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &[],
            grant: None,
            job: None,
            break_glass: Some(&bg),
            refused: None,
        };
        let j = json(&m);
        assert!(j.contains("Reviewed by <@U2>") && j.contains("OK."), "{j}");
        assert!(!j.contains("jit_reviewed"), "{j}");
    }

    #[test]
    fn partial_approval_shows_progress() {
        let r = request(RequestState::Pending);
        let d = [DecisionRow {
            approver_id: "U2".into(),
            verdict: Verdict::Approve,
            decided_at: 1,
            reason: None,
        }];
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &d,
            grant: None,
            job: None,
            break_glass: None,
            refused: None,
        };
        assert!(status_text(&m).contains("(1 of 2)"), "{}", status_text(&m));
    }

    #[test]
    fn user_text_is_inert_on_the_card_and_only_in_plain_text() {
        let mut r = request(RequestState::Pending);
        r.reason = "@channel <!here> *bold* <https://evil.example|click> \u{202E}gnp.exe".into();
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &[],
            grant: None,
            job: None,
            break_glass: None,
            refused: None,
        };
        let blocks = serde_json::to_value(render_card(&m).blocks.unwrap()).unwrap();
        let mut shown_in = Vec::new();
        for b in blocks.as_array().unwrap() {
            let text = b.pointer("/text");
            if let Some(t) = text.filter(|t| t["text"].as_str().is_some_and(|s| s.contains("evil.example"))) {
                shown_in.push(t["type"].as_str().unwrap().to_string());
                assert!(!t["text"].as_str().unwrap().contains('\u{202E}'), "{t}");
            }
        }
        assert_eq!(shown_in, vec!["plain_text"], "{blocks}");
        let all = blocks.to_string();
        assert!(!all.contains('\u{202E}'));
    }

    #[test]
    fn long_reasons_are_cut_to_fit_a_section() {
        let mut r = request(RequestState::Pending);
        r.reason = "<".repeat(5000);
        let m = CardModel {
            request: &r,
            description: "",
            decisions: &[],
            grant: None,
            job: None,
            break_glass: None,
            refused: None,
        };
        let content = render_card(&m);
        let blocks = serde_json::to_value(content.blocks.unwrap()).unwrap();
        for b in blocks.as_array().unwrap() {
            if let Some(t) = b.pointer("/text/text").and_then(|t| t.as_str()) {
                assert!(t.len() <= 3000, "section of {} chars", t.len());
            }
        }
    }
}
