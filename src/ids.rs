//! Identifiers: the names people type (resources, roles, adapters), Slack IDs, and request
//! ids as people see and type them (`JIT-42`).

/// Names of resources, roles and adapters: what users type after `/jit request`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A Slack ID: one of `prefixes`, then upper-case letters and digits.
pub fn is_slack_id(s: &str, prefixes: &[char]) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if prefixes.contains(&c))
        && s.len() >= 3
        && s.len() <= 24
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// How users see and type a request id.
pub fn label(id: i64) -> String {
    format!("JIT-{id}")
}

/// Reads a request id as users type it: `JIT-42`, `jit-42`, `#42` or `42`.
pub fn parse_label(text: &str) -> Option<i64> {
    let t = text.trim();
    let digits = t
        .strip_prefix("JIT-")
        .or_else(|| t.strip_prefix("jit-"))
        .or_else(|| t.strip_prefix("Jit-"))
        .or_else(|| t.strip_prefix('#'))
        .unwrap_or(t);
    if digits.is_empty() || digits.len() > 15 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_in_every_typed_form() {
        assert_eq!(label(42), "JIT-42");
        for t in ["JIT-42", "jit-42", "#42", "42", " 42 "] {
            assert_eq!(parse_label(t), Some(42), "{t}");
        }
        for t in ["", "JIT-", "x42", "-1", "0", "JIT-4 2", "99999999999999999999"] {
            assert_eq!(parse_label(t), None, "{t}");
        }
    }
}
