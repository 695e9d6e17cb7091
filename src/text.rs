//! Text as Slack shows it: the one rule for text a person types ([`check_typed`]),
//! making it inert for display ([`inert`]), escaping for mrkdwn, undoing Slack's escaping
//! of typed text, shortening, and dates each reader sees in their own time zone.

/// Characters that reorder or hide text (bidirectional embeddings, overrides, isolates
/// and marks; line and paragraph separators): a reason could otherwise read differently
/// on a card than what was stored.
fn is_bidi_or_separator(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// True for a character no typed text may hold: control characters other than newline
/// and tab, and the characters of [`is_bidi_or_separator`].
pub fn is_refused_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_bidi_or_separator(c)
}

fn describe_char(c: char) -> String {
    let name = match c {
        '\0' => "NUL",
        '\u{202E}' => "right-to-left override",
        '\u{202D}' => "left-to-right override",
        '\u{202A}' | '\u{202B}' => "bidirectional embedding",
        '\u{202C}' => "pop directional formatting",
        '\u{2066}'..='\u{2069}' => "bidirectional isolate",
        '\u{200E}' | '\u{200F}' | '\u{061C}' => "direction mark",
        '\u{2028}' | '\u{2029}' => "line or paragraph separator",
        _ => "control character",
    };
    format!("U+{:04X}, {name}", c as u32)
}

/// The one rule for every text a person types (request and extension reasons, and any
/// future form field or ticket reference): at most `max_chars` characters, no control
/// characters (newline and tab aside) and no bidirectional overrides. Takes the text as
/// typed (already decoded once from Slack's escaping) and returns it trimmed; the error
/// is the reply to show, naming `what` and what to remove.
pub fn check_typed(what: &str, text: &str, max_chars: usize) -> Result<String, String> {
    let text = text.trim();
    if let Some((pos, c)) = text.chars().enumerate().find(|(_, c)| is_refused_char(*c)) {
        return Err(format!(
            "Your {what} contains an invisible character ({}) at character {}; please remove it and send it again.",
            describe_char(c),
            pos + 1
        ));
    }
    let len = text.chars().count();
    if len > max_chars {
        return Err(format!(
            "Your {what} is {len} characters long; please keep it under {max_chars} (link to a ticket instead)."
        ));
    }
    Ok(text.to_string())
}

/// Stored user text made safe to show in a Slack `plain_text` object: characters
/// [`check_typed`] refuses (text stored before that rule) become U+FFFD. `plain_text` is
/// not parsed for mentions, links or formatting, so the rest shows as typed.
pub fn inert(text: &str) -> String {
    text.chars()
        .map(|c| if is_refused_char(c) { '\u{FFFD}' } else { c })
        .collect()
}

/// Slack escapes `&`, `<` and `>` in command text; this undoes it so the stored text is
/// what the user typed. Rendering escapes again.
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Escapes text for Slack mrkdwn so user input cannot mention, link or break formatting.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Slack's date formatting: each reader sees their own time zone.
pub fn slack_date(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let fallback = chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    format!("<!date^{secs}^{{date_short_pretty}} {{time}}|{fallback}>")
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds, like
/// `2025-03-01T09:30:00.000Z`; empty for a time chrono cannot represent.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Shortens `text` to at most `max` characters, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        let typed = "a <@U1> & <!channel> > b";
        assert_eq!(unescape(&escape(typed)), typed);
        assert!(!escape(typed).contains('<'));
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(1_735_689_600_123), "2025-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn typed_text_with_control_or_bidi_characters_is_refused_with_what_to_remove() {
        for bad in ["a\0b", "a\u{202E}b", "x\u{2066}y", "bell\u{7}", "a\u{2028}b"] {
            let e = check_typed("reason", bad, 100).unwrap_err();
            assert!(e.contains("please remove it"), "{e}");
            assert!(e.contains("U+"), "{e}");
        }
        assert_eq!(
            check_typed("reason", "  fine\ttext\nok  ", 100).unwrap(),
            "fine\ttext\nok"
        );
        assert!(check_typed("reason", &"x".repeat(101), 100)
            .unwrap_err()
            .contains("101 characters"));
        assert_eq!(
            check_typed("reason", "👩‍💻 <!channel> *b*", 100).unwrap(),
            "👩‍💻 <!channel> *b*"
        );
    }

    proptest::proptest! {
        #[test]
        fn checked_text_is_already_inert(text in "\\PC*|[\\x00-\\x1f\u{202a}-\u{202e}a-z]{0,20}") {
            if let Ok(ok) = check_typed("reason", &text, 10_000) {
                proptest::prop_assert_eq!(inert(&ok), ok);
            }
            proptest::prop_assert!(!inert(&text).chars().any(is_refused_char));
        }
    }
}
