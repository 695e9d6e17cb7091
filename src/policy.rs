//! The access policy as plain decisions over the configuration: may this person ask for
//! this resource and role, for how long; who may approve and how many must; which on-call
//! policies could approve it; may they break the glass.
//!
//! The live paths (a typed request, a click, the on-call job, `/jit breakglass`) and
//! `policy explain` call these same functions, so what explain says is what happens.
//! Nothing here does I/O: group membership, on-call status and usage counts are asked for
//! by the caller and passed in.

use crate::config::oncall::Policy;
use crate::config::{BreakGlass, Config, Resource};
use crate::duration::HumanDuration;

/// Why a request cannot be made as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestRefusal {
    UnknownResource,
    UnknownRole { role: String },
    TooLong { max: HumanDuration },
}

/// What a request resolves to: the resource, the role (the first if none was named) and
/// the duration (the resource's default if none was named).
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub resource: &'a Resource,
    pub role: String,
    pub duration: HumanDuration,
}

/// May anyone ask for `resource[:role]` for `duration`? Requests are open to everyone;
/// the approvers are the gate.
pub fn requestable<'a>(
    config: &'a Config,
    resource: &str,
    role: Option<&str>,
    duration: Option<HumanDuration>,
) -> Result<Target<'a>, RequestRefusal> {
    let Some(resource) = config.resource(resource) else {
        return Err(RequestRefusal::UnknownResource);
    };
    let role = match role {
        Some(r) if !resource.roles.iter().any(|x| x == r) => {
            return Err(RequestRefusal::UnknownRole { role: r.to_string() })
        }
        Some(r) => r.to_string(),
        None => resource.default_role().to_string(),
    };
    let duration = duration.unwrap_or(resource.default_duration);
    if duration > resource.max_duration {
        return Err(RequestRefusal::TooLong {
            max: resource.max_duration,
        });
    }
    Ok(Target {
        resource,
        role,
        duration,
    })
}

/// Why someone may not approve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    /// The requester never approves their own request, even when listed.
    SelfApproval,
    /// Neither listed in `approvers` nor a member of an `approver_groups` group.
    NotApprover,
}

/// May `user` approve (or deny, or review) `requester`'s request for `resource`?
/// `in_listed_group`: whether `user` is in one of the resource's approver groups.
pub fn approver_eligibility(
    resource: &Resource,
    requester: &str,
    user: &str,
    in_listed_group: bool,
) -> Result<(), Ineligible> {
    if user == requester {
        return Err(Ineligible::SelfApproval);
    }
    if resource.approvers.iter().any(|a| a == user) || in_listed_group {
        Ok(())
    } else {
        Err(Ineligible::NotApprover)
    }
}

/// Where on-call auto-approval stands for a request, from the configuration alone.
#[derive(Debug, Clone)]
pub enum OnCallPrecheck<'a> {
    /// No `[oncall]` section.
    NotConfigured,
    /// No policy lists `resource:role`.
    NotAllowlisted,
    /// Policies list it, but for less time than asked: `cap` is the longest of them.
    TooLong { cap: HumanDuration },
    /// These policies could approve it (in order), if the channel and on-call status allow.
    Candidates(Vec<&'a Policy>),
}

/// Which on-call policies could approve `resource:role` for `duration`.
pub fn oncall_candidates<'a>(
    config: &'a Config,
    resource: &str,
    role: &str,
    duration: HumanDuration,
) -> OnCallPrecheck<'a> {
    let Some(oncall) = config.oncall.as_ref() else {
        return OnCallPrecheck::NotConfigured;
    };
    let allowlisted: Vec<&Policy> = oncall.policies.iter().filter(|p| p.allows(resource, role)).collect();
    if allowlisted.is_empty() {
        return OnCallPrecheck::NotAllowlisted;
    }
    let within: Vec<&Policy> = allowlisted
        .iter()
        .copied()
        .filter(|p| duration <= p.max_duration)
        .collect();
    if within.is_empty() {
        let cap = allowlisted.iter().map(|p| p.max_duration).max().unwrap_or(duration);
        return OnCallPrecheck::TooLong { cap };
    }
    OnCallPrecheck::Candidates(within)
}

/// Whether `channel` might be an incident channel, from the configuration alone: listed
/// by ID, or a channel whose name Slack can tell (when name prefixes are configured).
pub fn channel_may_be_incident(config: &Config, channel: &str) -> bool {
    config.oncall.as_ref().is_some_and(|o| {
        o.incident_channels.iter().any(|c| c == channel)
            || (!o.incident_channel_prefixes.is_empty() && channel.starts_with(['C', 'G']))
    })
}

/// Has a requester with `used` auto-approvals from `policy` in its window reached its limit?
pub fn oncall_rate_limited(policy: &Policy, used: i64) -> bool {
    used >= policy.rate_limit as i64
}

/// Why break-glass is not available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakGlassRefusal {
    /// The resource does not allow break-glass.
    NotEnabled,
    /// The person is not in `break_glass_users` or a `break_glass_groups` group.
    NotListed,
    /// Longer than `break_glass_max_duration`.
    TooLong { max: HumanDuration },
    /// `rate_limit` uses within `rate_window` already.
    RateLimited { limit: u32, window: HumanDuration },
}

/// The resource's break-glass settings, if it allows break-glass.
pub fn break_glass_of(resource: &Resource) -> Result<&BreakGlass, BreakGlassRefusal> {
    resource.break_glass.as_ref().ok_or(BreakGlassRefusal::NotEnabled)
}

/// May `user` break the glass on `resource` for `duration` (default: its break-glass
/// maximum), having used it `used` times within the configured window? Returns the
/// duration to grant. `in_listed_group`: whether `user` is in a `break_glass_groups` group.
pub fn break_glass(
    config: &Config,
    resource: &Resource,
    user: &str,
    in_listed_group: bool,
    duration: Option<HumanDuration>,
    used: i64,
) -> Result<HumanDuration, BreakGlassRefusal> {
    let bg = break_glass_of(resource)?;
    if !(bg.users.iter().any(|u| u == user) || in_listed_group) {
        return Err(BreakGlassRefusal::NotListed);
    }
    let duration = duration.unwrap_or(bg.max_duration);
    if duration > bg.max_duration {
        return Err(BreakGlassRefusal::TooLong { max: bg.max_duration });
    }
    if used >= config.break_glass.rate_limit as i64 {
        return Err(BreakGlassRefusal::RateLimited {
            limit: config.break_glass.rate_limit,
            window: config.break_glass.rate_window,
        });
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
default_duration = "1h"
max_duration = "4h"
approval_channel = "C0APPROVALS"
approvers = ["U0A", "U0B"]
approver_groups = ["S0DBAS"]
adapter = "demo"
break_glass = true
break_glass_max_duration = "1h"
break_glass_users = ["UONCALL"]

[adapters.demo]
type = "noop"
{extra}
"#
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn requests_resolve_the_default_role_and_duration_and_respect_the_maximum() {
        let c = config("");
        let t = requestable(&c, "prod-db", None, None).unwrap();
        assert_eq!((t.role.as_str(), t.duration.as_secs()), ("read", 3600));
        assert_eq!(
            requestable(&c, "prod-db", Some("admin"), None).err(),
            Some(RequestRefusal::UnknownRole { role: "admin".into() })
        );
        assert_eq!(
            requestable(&c, "prod-db", None, Some(HumanDuration::from_secs(5 * 3600))).err(),
            Some(RequestRefusal::TooLong {
                max: HumanDuration::from_secs(4 * 3600)
            })
        );
        assert_eq!(
            requestable(&c, "nope", None, None).err(),
            Some(RequestRefusal::UnknownResource)
        );
    }

    #[test]
    fn break_glass_is_for_listed_people_within_its_cap_and_rate() {
        let c = config("");
        let r = c.resource("prod-db").unwrap();
        assert_eq!(
            break_glass(&c, r, "UONCALL", false, None, 0),
            Ok(HumanDuration::from_secs(3600))
        );
        assert_eq!(
            break_glass(&c, r, "UX", false, None, 0),
            Err(BreakGlassRefusal::NotListed)
        );
        assert_eq!(
            break_glass(&c, r, "UX", true, Some(HumanDuration::from_secs(60)), 0),
            Ok(HumanDuration::from_secs(60))
        );
        assert!(matches!(
            break_glass(&c, r, "UONCALL", false, Some(HumanDuration::from_secs(7200)), 0),
            Err(BreakGlassRefusal::TooLong { .. })
        ));
        assert!(matches!(
            break_glass(&c, r, "UONCALL", false, None, 1),
            Err(BreakGlassRefusal::RateLimited { limit: 1, .. })
        ));
    }

    #[test]
    fn break_glass_needs_someone_listed() {
        let text = r#"
[[resources]]
name = "prod-db"
approval_channel = "C0APPROVALS"
approvers = ["U0A"]
adapter = "demo"
break_glass = true

[adapters.demo]
type = "noop"
"#;
        let err = crate::config::parse(std::path::Path::new("t.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("break_glass_users"), "{err}");
    }
}
