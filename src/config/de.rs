//! TOML into the configuration's raw structs, with messages an operator can act on.
//!
//! serde stops at the first problem and words it for programmers ("invalid type: string
//! \"500\", expected usize"). Here every problem names the full key path
//! (`requests.max_reason_length`, `resources[2].max_duration`), the expected type in the
//! file's words, and, for an unknown key, the nearest valid one. After a problem the bad
//! key is set aside and reading goes on, so one run reports every such problem in a table.

use serde::de::DeserializeOwned;

/// Problems reported from one table before the rest is left for the next run; it also
/// bounds how often the table is read again.
const MAX_PROBLEMS: usize = 50;

/// What reading a table gave.
pub(crate) struct Read<T> {
    /// The struct, built without the keys that were set aside; `None` when a required key
    /// is missing or a problem could not be stepped over.
    pub value: Option<T>,
    /// One message per problem, each starting with its key path.
    pub problems: Vec<String>,
    /// The key paths (as in the messages) that were set aside, so that checks of the
    /// values built without them can leave out what follows from their absence.
    pub dropped: Vec<String>,
}

/// Reads `value` (found at key path `prefix`, `""` for the whole file) into `T`.
pub(crate) fn read<T: DeserializeOwned>(prefix: &str, value: toml::Value) -> Read<T> {
    let mut value = value;
    let mut out = Read {
        value: None,
        problems: Vec::new(),
        dropped: Vec::new(),
    };
    let mut dropped: Vec<Vec<Seg>> = Vec::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => {
                out.value = Some(v);
                return out;
            }
            Err(e) => e,
        };
        let mut at: Vec<Seg> = err.path().iter().map(Seg::from).collect();
        let kind = Kind::of(err.inner().message());
        let culprit = match &kind {
            Kind::MissingField(field) => {
                at.push(Seg::Key(field.clone()));
                // Missing because it was set aside for a problem already reported.
                if !dropped.contains(&at) {
                    out.problems.push(describe(prefix, &at, &kind));
                }
                return out;
            }
            Kind::UnknownField { name, .. } => {
                if at.last() != Some(&Seg::Key(name.clone())) {
                    at.push(Seg::Key(name.clone()));
                }
                at.clone()
            }
            _ => {
                // A bad element sets aside the whole list: removing only the element
                // would shift the positions named in later messages.
                let mut c = at.clone();
                while matches!(c.last(), Some(Seg::Index(_))) {
                    c.pop();
                }
                c
            }
        };
        out.problems.push(describe(prefix, &at, &kind));
        if out.problems.len() >= MAX_PROBLEMS || !remove(&mut value, &culprit) {
            return out;
        }
        out.dropped.push(key_path(prefix, &culprit));
        dropped.push(culprit);
    }
}

/// Reads `value` (found at key path `prefix`) into `T`, or every problem found.
pub(crate) fn from_value<T: DeserializeOwned>(prefix: &str, value: toml::Value) -> Result<T, Vec<String>> {
    let read = read(prefix, value);
    match read.value {
        Some(v) if read.problems.is_empty() => Ok(v),
        _ => Err(read.problems),
    }
}

/// Whether a problem found while checking values is only a consequence of a key set aside
/// by [`read`] (a default standing in for it): it names the key, under the same table.
pub(crate) fn follows_from_dropped(problem: &str, dropped: &[String]) -> bool {
    dropped.iter().any(|d| {
        let (parent, leaf) = match d.rfind('.') {
            Some(i) => (&d[..i], &d[i + 1..]),
            None => ("", d.as_str()),
        };
        problem.starts_with(parent) && problem.contains(leaf)
    })
}

/// The valid key closest to `unknown`, if one is close enough to be a likely typo.
pub(crate) fn nearest<'a>(unknown: &str, valid: &[&'a str]) -> Option<&'a str> {
    let unknown_lower = unknown.to_ascii_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for &candidate in valid {
        let score = strsim::jaro_winkler(&unknown_lower, candidate);
        // A part of the name (`channel` for `approval_channel`) or the name with more
        // around it (`max_reason_length_chars`) is also a likely mix-up.
        let contained = (unknown_lower.len() >= 4 && candidate.contains(&unknown_lower))
            || (candidate.len() >= 4 && unknown_lower.contains(candidate));
        if (score >= 0.8 || contained) && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}

// ---- key paths -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
    /// Something serde_path_to_error could not name; nothing under it can be set aside.
    Other,
}

impl From<&serde_path_to_error::Segment> for Seg {
    fn from(s: &serde_path_to_error::Segment) -> Self {
        match s {
            serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
            _ => Seg::Other,
        }
    }
}

/// `prefix` and `segs` as written in messages: `resources[2].max_duration`.
fn key_path(prefix: &str, segs: &[Seg]) -> String {
    let mut out = prefix.to_string();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if is_bare_key(k) {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Other => out.push_str(".?"),
        }
    }
    out
}

/// A key TOML lets one write without quotes.
fn is_bare_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Removes the key at `segs` from `value`; false if it cannot.
fn remove(value: &mut toml::Value, segs: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = segs.split_last() else {
        return false;
    };
    let mut at = value;
    for s in parents {
        let next = match (s, at) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match at {
        toml::Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

// ---- messages ------------------------------------------------------------------------

/// serde's message, taken apart. The wording is serde's own (`serde::de::Error`'s
/// provided methods), which every deserializer, `toml`'s included, uses.
#[derive(Debug, PartialEq)]
enum Kind {
    UnknownField { name: String, expected: Vec<String> },
    UnknownVariant { name: String, expected: Vec<String> },
    MissingField(String),
    InvalidType { found: String, expected: String },
    InvalidValue { found: String, expected: String },
    Other(String),
}

impl Kind {
    fn of(message: &str) -> Self {
        let message = message.trim();
        let backticked = |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(String::from).collect() };
        let first_and_rest = |rest: &str| -> Option<(String, Vec<String>)> {
            let (name, expected) = rest.split_once("`, expected ")?;
            Some((name.to_string(), backticked(expected)))
        };
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some((name, expected)) = first_and_rest(rest) {
                return Kind::UnknownField { name, expected };
            }
            if let Some(name) = rest.strip_suffix("`, there are no fields") {
                return Kind::UnknownField {
                    name: name.to_string(),
                    expected: Vec::new(),
                };
            }
        }
        if let Some(rest) = message.strip_prefix("unknown variant `") {
            if let Some((name, expected)) = first_and_rest(rest) {
                return Kind::UnknownVariant { name, expected };
            }
        }
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            return Kind::MissingField(name.to_string());
        }
        for (prefix, is_type) in [("invalid type: ", true), ("invalid value: ", false)] {
            if let Some((found, expected)) = message.strip_prefix(prefix).and_then(|r| r.rsplit_once(", expected ")) {
                let (found, expected) = (found.to_string(), expected.to_string());
                return if is_type {
                    Kind::InvalidType { found, expected }
                } else {
                    Kind::InvalidValue { found, expected }
                };
            }
        }
        Kind::Other(message.to_string())
    }
}

fn describe(prefix: &str, at: &[Seg], kind: &Kind) -> String {
    let path = key_path(prefix, at);
    match kind {
        Kind::UnknownField { name, expected } => {
            let valid: Vec<&str> = expected.iter().map(String::as_str).collect();
            match nearest(name, &valid) {
                Some(near) => format!("{path}: unknown key; did you mean `{near}`?"),
                None if valid.is_empty() => format!("{path}: unknown key; this table takes no other keys"),
                None => format!("{path}: unknown key; the keys here are {}", list(&valid)),
            }
        }
        Kind::UnknownVariant { name, expected } => {
            let valid: Vec<&str> = expected.iter().map(String::as_str).collect();
            match nearest(name, &valid) {
                Some(near) => format!("{path}: unknown value \"{name}\"; did you mean \"{near}\"?"),
                None => format!("{path}: unknown value \"{name}\"; use one of {}", list(&valid)),
            }
        }
        Kind::MissingField(_) => format!("{path}: missing; this key is required"),
        Kind::InvalidType { found, expected } | Kind::InvalidValue { found, expected } => {
            let found = Found::of(found);
            // How the fix is written: `key = value`, or only the value inside a list.
            let write = |v: &str| match at.last() {
                Some(Seg::Key(k)) => format!("{k} = {v}"),
                _ => v.to_string(),
            };
            format!(
                "{path}: expected {}, found {}{}",
                expected_words(expected),
                found.words,
                found.hint(expected, write)
            )
        }
        Kind::Other(message) if path.is_empty() => message.clone(),
        Kind::Other(message) => format!("{path}: {message}"),
    }
}

fn list(keys: &[&str]) -> String {
    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

/// serde's name of the expected type, in the words of a TOML file.
fn expected_words(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a string" | "a borrowed string" | "a character" => "a string in quotes",
        "a boolean" => "true or false",
        "a sequence" => "a list, like [\"…\"]",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    }
}

/// What was found, from serde's description of it (`string "500"`, ``integer `5` ``).
struct Found {
    /// In the words of a TOML file.
    words: String,
    /// The value, when it is a string, number or boolean.
    literal: Option<String>,
    /// It was written in quotes.
    quoted: bool,
}

impl Found {
    fn of(found: &str) -> Self {
        if let Some(s) = found.strip_prefix("string ") {
            return Self {
                words: format!("the string {s}"),
                literal: serde_json::from_str::<String>(s).ok(),
                quoted: true,
            };
        }
        for (prefix, words) in [
            ("integer ", "the number "),
            ("floating point ", "the number "),
            ("boolean ", ""),
        ] {
            if let Some(v) = found.strip_prefix(prefix) {
                let v = v.trim_matches('`');
                return Self {
                    words: format!("{words}{v}"),
                    literal: Some(v.to_string()),
                    quoted: false,
                };
            }
        }
        let words = match found {
            "sequence" => "a list",
            "map" => "a table",
            other => other,
        };
        Self {
            words: words.to_string(),
            literal: None,
            quoted: false,
        }
    }

    /// What to write instead, when the value only has the wrong form (`"500"` for 500).
    fn hint(&self, expected: &str, write: impl Fn(&str) -> String) -> String {
        let Some(v) = self.literal.as_deref() else {
            return String::new();
        };
        let is_int = v.parse::<i64>().is_ok();
        let unquoted = (self.quoted && is_int && expected_words(expected).starts_with("a whole number"))
            || (self.quoted && expected == "a boolean" && (v == "true" || v == "false"));
        if unquoted {
            return format!("; write it without quotes: {}", write(v));
        }
        if self.quoted && expected == "a boolean" {
            return format!("; write {} or {}", write("true"), write("false"));
        }
        if !self.quoted && expected.starts_with("a duration") && is_int {
            return format!(
                "; a duration needs a unit and quotes, like {} or \"{v}m\"",
                write(&format!("\"{v}s\""))
            );
        }
        if !self.quoted && matches!(expected, "a string" | "a borrowed string") {
            return format!("; put it in quotes: {}", write(&format!("\"{v}\"")));
        }
        if self.quoted && expected == "a sequence" {
            return format!("; write a list: {}", write(&format!("[\"{v}\"]")));
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Top {
        #[serde(default)]
        requests: Requests,
        #[serde(default)]
        resources: Vec<Res>,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Requests {
        max_reason_length: Option<usize>,
        remind_after: Option<String>,
        enabled: Option<bool>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Res {
        name: String,
        approval_channel: String,
        #[serde(default)]
        approvers: Vec<String>,
        max_duration: Option<crate::duration::HumanDuration>,
    }

    fn problems(text: &str) -> Vec<String> {
        let value = toml::Value::Table(text.parse().unwrap());
        read::<Top>("", value).problems
    }

    #[test]
    fn a_quoted_number_names_the_key_the_type_and_the_fix() {
        let p = problems("[requests]\nmax_reason_length = \"500\"\n");
        assert_eq!(
            p,
            [
                "requests.max_reason_length: expected a whole number (0 or more), found the string \"500\"; \
              write it without quotes: max_reason_length = 500"
            ]
        );
    }

    #[test]
    fn an_unknown_key_gets_the_nearest_valid_one() {
        let p = problems("[[resources]]\nname = \"a\"\napproval_chanel = \"C1\"\napproval_channel = \"C1\"\n");
        assert_eq!(
            p,
            ["resources[0].approval_chanel: unknown key; did you mean `approval_channel`?"]
        );
        let p = problems("[[resources]]\nname = \"a\"\nchannel = \"C1\"\napproval_channel = \"C1\"\n");
        assert_eq!(
            p,
            ["resources[0].channel: unknown key; did you mean `approval_channel`?"]
        );
        let p = problems("[requests]\nzzz = 1\n");
        assert_eq!(
            p,
            ["requests.zzz: unknown key; the keys here are `max_reason_length`, `remind_after`, `enabled`"]
        );
    }

    #[test]
    fn every_problem_in_the_file_is_reported_in_one_run() {
        let p = problems(
            "[requests]\nmax_reason_lenght = 5\nenabled = \"true\"\n\n\
             [[resources]]\nname = \"a\"\napproval_channel = \"C1\"\n\n\
             [[resources]]\nname = \"b\"\napproval_channel = 7\nmax_duration = 4\napprovers = [\"U1\", 2]\n",
        );
        // In key order within a table (TOML tables are sorted maps); a required key with a
        // wrong type is not reported missing as well.
        assert_eq!(
            p,
            [
                "requests.enabled: expected true or false, found the string \"true\"; write it without quotes: enabled = true",
                "requests.max_reason_lenght: unknown key; did you mean `max_reason_length`?",
                "resources[1].approval_channel: expected a string in quotes, found the number 7; put it in quotes: approval_channel = \"7\"",
                "resources[1].approvers[1]: expected a string in quotes, found the number 2; put it in quotes: \"2\"",
                "resources[1].max_duration: expected a duration in quotes, like \"2h\", found the number 4; \
                 a duration needs a unit and quotes, like max_duration = \"4s\" or \"4m\"",
            ],
        );
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let p = problems("[[resources]]\nname = \"a\"\n");
        assert_eq!(p, ["resources[0].approval_channel: missing; this key is required"]);
    }

    #[test]
    fn keys_set_aside_are_reported_for_filtering() {
        let value = toml::Value::Table("[requests]\nmax_reason_length = -3\n".parse().unwrap());
        let r = read::<Top>("", value);
        assert!(r.value.is_some());
        assert_eq!(r.dropped, ["requests.max_reason_length"]);
        assert_eq!(
            r.problems,
            ["requests.max_reason_length: expected a whole number (0 or more), found the number -3"]
        );
        assert!(follows_from_dropped(
            "requests.max_reason_length: must be between 10 and 2000",
            &r.dropped
        ));
        assert!(!follows_from_dropped("requests.remind_after: bad", &r.dropped));
    }

    #[test]
    fn prefixes_and_odd_keys_are_written_as_in_toml() {
        let value = toml::Value::Table("\"odd key\" = 1\n".parse().unwrap());
        let p = read::<Requests>("adapters.demo", value).problems;
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("adapters.demo.\"odd key\": unknown key"), "{p:?}");
    }

    #[test]
    fn nearest_only_suggests_likely_typos() {
        let keys = ["listen", "shutdown_grace"];
        assert_eq!(nearest("listn", &keys), Some("listen"));
        assert_eq!(nearest("LISTEN", &keys), Some("listen"));
        assert_eq!(nearest("grace", &keys), Some("shutdown_grace"));
        assert_eq!(nearest("database", &keys), None);
    }
}
