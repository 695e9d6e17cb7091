//! Text as Slack shows it: escaping user text for mrkdwn, undoing Slack's escaping of
//! typed text, shortening, and dates each reader sees in their own time zone.

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
}
