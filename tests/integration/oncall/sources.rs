//! The on-call sources against the fake services: request shapes, paging, matching,
//! caching, and every failure ending in "no answer" rather than "on call".

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use jitgate::oncall::http::SourceError;
use jitgate::oncall::{ChannelCheck, OnCall, OnCallConfig, SourceAnswer};
use jitgate::slack::client::SlackApi;

use super::fakes::{FakeOpsgenie, FakePagerDuty, Mode, OG_KEY, PD_ACCEPT, PD_TOKEN};
use crate::support::{fake_slack::BOT_TOKEN, FakeSlack};

const ALICE: &str = "U0ALICE";
const ALICE_EMAIL: &str = "alice@example.com";

struct Fixture {
    pd: FakePagerDuty,
    og: FakeOpsgenie,
    slack: FakeSlack,
    api: SlackApi,
    cfg: OnCallConfig,
    oncall: OnCall,
    now: DateTime<Utc>,
}

fn now() -> DateTime<Utc> {
    // Whole seconds, as the services see it.
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

async fn fixture(extra: &str, token: &str) -> Fixture {
    let pd = FakePagerDuty::start().await;
    let og = FakeOpsgenie::start().await;
    let slack = FakeSlack::start().await;
    let text = format!(
        r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER"]
adapter = "demo"

[adapters.demo]
type = "noop"

[oncall]
source_timeout = "1s"
incident_channel_prefixes = ["inc-"]

[[oncall.policies]]
name = "db"
allow = ["prod-db:*"]
sources = ["pd", "og"]

[oncall.sources.pd]
type = "pagerduty"
base_url = "{pd}"
token_env = "PD_TOKEN"
schedule_ids = ["PSCHED1"]
{extra}

[oncall.sources.og]
type = "opsgenie"
base_url = "{og}"
key_env = "OG_KEY"
schedule_ids = ["4f1c-ops/primary"]
"#,
        pd = pd.base_url(),
        og = og.base_url(),
    );
    let config = jitgate::config::parse(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = config.oncall.clone().unwrap();
    let env: BTreeMap<&str, &str> = [("PD_TOKEN", token), ("OG_KEY", OG_KEY)].into();
    let oncall = OnCall::new(Some(&cfg), &|name| env.get(name).map(|v| v.to_string())).unwrap();
    let api = SlackApi::new(&slack.api_url(), BOT_TOKEN);
    slack.set_email(ALICE, Some(ALICE_EMAIL));
    Fixture {
        pd,
        og,
        slack,
        api,
        cfg,
        oncall,
        now: now(),
    }
}

impl Fixture {
    async fn check(&self, source: &str, user: &str) -> Result<SourceAnswer, SourceError> {
        self.oncall
            .check_source(&self.cfg, source, &self.api, user, self.now)
            .await
    }

    async fn check_at(&self, source: &str, user: &str, at: DateTime<Utc>) -> Result<SourceAnswer, SourceError> {
        self.oncall.check_source(&self.cfg, source, &self.api, user, at).await
    }

    fn on_call_now(&self, user_id: &str, email: &str, level: u32) {
        self.pd.add_oncall(
            user_id,
            email,
            ("PSCHED1", "Primary DB"),
            ("PEP1", "Databases"),
            level,
            Some(self.now - Duration::hours(3)),
            Some(self.now + Duration::hours(5)),
        );
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn pagerduty_pages_through_on_calls_with_the_time_window_and_credentials() {
    let f = fixture("", PD_TOKEN).await;
    for i in 0..230 {
        f.on_call_now(&format!("PFILL{i:03}"), &format!("filler{i}@example.com"), 1);
    }
    // Another schedule's people never count.
    f.pd.add_oncall(
        "POTHER",
        ALICE_EMAIL,
        ("PSCHED9", "Other"),
        ("PEP9", "Other"),
        1,
        None,
        None,
    );
    f.on_call_now("PALICE", "Alice@Example.com", 1);

    let answer = f.check("pd", ALICE).await.unwrap();
    let SourceAnswer::OnCall { entry, matched_by } = answer else {
        panic!("not on call: {answer:?}")
    };
    assert_eq!(matched_by, "email");
    assert_eq!(entry.user.id.as_deref(), Some("PALICE"));
    assert_eq!(entry.schedule, "Primary DB");
    assert_eq!(entry.schedule_id.as_deref(), Some("PSCHED1"));
    assert_eq!(entry.level, Some(1));

    let seen = f.pd.seen_at("/oncalls");
    let offsets: Vec<&str> = seen.iter().map(|s| s.one("offset").unwrap()).collect();
    assert_eq!(offsets, ["0", "100", "200"], "paged by offset until more=false");
    for s in &seen {
        assert_eq!(s.status, 200);
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Token token={PD_TOKEN}").as_str())
        );
        assert_eq!(s.accept.as_deref(), Some(PD_ACCEPT));
        assert_eq!(s.all("schedule_ids[]"), ["PSCHED1"]);
        assert_eq!(s.one("limit"), Some("100"));
        assert!(s.all("include[]").contains(&"users"));
        assert_eq!(s.one("since"), Some(rfc3339(f.now).as_str()));
        let until = DateTime::parse_from_rfc3339(s.one("until").unwrap())
            .unwrap()
            .with_timezone(&Utc);
        assert!(until >= f.now && until - f.now <= Duration::minutes(1), "until {until}");
    }
}

#[tokio::test]
async fn pagerduty_counts_only_escalation_levels_up_to_the_maximum() {
    let f = fixture("escalation_policy_ids = [\"PEP1\"]\nmax_escalation_level = 1", PD_TOKEN).await;
    f.on_call_now("PALICE", ALICE_EMAIL, 2);
    f.on_call_now("PBOB", "bob@example.com", 1);
    assert_eq!(f.check("pd", ALICE).await.unwrap(), SourceAnswer::NotOnCall);
    let seen = f.pd.seen_at("/oncalls");
    assert_eq!(seen[0].all("escalation_policy_ids[]"), ["PEP1"]);
}

#[tokio::test]
async fn pagerduty_shifts_that_ended_or_have_not_begun_do_not_count() {
    let f = fixture("", PD_TOKEN).await;
    // Alice's shift ends exactly now; Bob's begins in a minute.
    f.pd.add_oncall(
        "PALICE",
        ALICE_EMAIL,
        ("PSCHED1", "Primary DB"),
        ("PEP1", "Databases"),
        1,
        Some(f.now - Duration::hours(8)),
        Some(f.now),
    );
    assert_eq!(f.check("pd", ALICE).await.unwrap(), SourceAnswer::NotOnCall);
}

#[tokio::test]
async fn an_explicit_mapping_is_used_instead_of_the_slack_email() {
    let f = fixture("users = { U0ALICE = \"PALICE\" }", PD_TOKEN).await;
    f.on_call_now("PALICE", "a.l.i.c.e@corp.example", 1);
    let answer = f.check("pd", ALICE).await.unwrap();
    assert!(
        matches!(
            answer,
            SourceAnswer::OnCall {
                matched_by: "mapping",
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(
        f.slack.calls().iter().all(|c| c.method != "users.info"),
        "no e-mail lookup needed"
    );
}

#[tokio::test]
async fn pagerduty_failures_are_errors_never_answers() {
    let f = fixture("", PD_TOKEN).await;
    f.on_call_now("PALICE", ALICE_EMAIL, 1);

    f.pd.set_mode(Mode::ServerError);
    assert_eq!(f.check("pd", ALICE).await, Err(SourceError::Status(500)));

    f.pd.set_mode(Mode::Malformed);
    let e = f.check("pd", ALICE).await.unwrap_err();
    assert!(matches!(e, SourceError::Malformed(_)), "{e:?}");

    f.pd.set_mode(Mode::Hang);
    let started = Instant::now();
    let e = f.check("pd", ALICE).await.unwrap_err();
    assert_eq!(e, SourceError::Timeout(std::time::Duration::from_secs(1)));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "bounded by source_timeout"
    );

    // Nothing was cached along the way: once PagerDuty answers, Alice is on call.
    f.pd.set_mode(Mode::Normal);
    assert!(matches!(f.check("pd", ALICE).await, Ok(SourceAnswer::OnCall { .. })));
}

#[tokio::test]
async fn a_refused_token_is_reported_without_the_token() {
    let f = fixture("", "wrong-token-SECRET-VALUE").await;
    f.on_call_now("PALICE", ALICE_EMAIL, 1);
    let e = f.check("pd", ALICE).await.unwrap_err();
    assert_eq!(e, SourceError::Unauthorized(401));
    let shown = format!("{e} {e:?} {:?}", f.oncall);
    assert!(!shown.contains("SECRET-VALUE") && !shown.contains(PD_TOKEN), "{shown}");
}

#[tokio::test]
async fn someone_slack_cannot_name_is_unknown_not_on_call() {
    let f = fixture("", PD_TOKEN).await;
    f.on_call_now("PALICE", ALICE_EMAIL, 1);
    // A profile without an e-mail (or a missing users:read.email scope).
    f.slack.set_email("U0NOMAIL", None);
    let answer = f.check("pd", "U0NOMAIL").await.unwrap();
    let SourceAnswer::UnknownUser(why) = answer else {
        panic!("{answer:?}")
    };
    assert!(why.contains("oncall.sources.pd.users"), "{why}");
    // A user Slack does not know: the lookup itself failed.
    let e = f.check("pd", "U0GHOST").await.unwrap_err();
    assert!(
        matches!(e, SourceError::Slack(ref m) if m.contains("user_not_found")),
        "{e:?}"
    );
}

#[tokio::test]
async fn on_call_answers_are_cached_for_the_ttl() {
    let f = fixture("", PD_TOKEN).await;
    f.on_call_now("PALICE", ALICE_EMAIL, 1);
    f.on_call_now("PBOB", "bob@example.com", 1);
    f.slack.set_email("U0BOB", Some("bob@example.com"));
    assert!(matches!(f.check("pd", ALICE).await, Ok(SourceAnswer::OnCall { .. })));
    assert!(matches!(f.check("pd", "U0BOB").await, Ok(SourceAnswer::OnCall { .. })));
    assert_eq!(f.pd.seen_at("/oncalls").len(), 1, "one roster serves both");
    let later = f.now + Duration::seconds(61);
    assert!(matches!(
        f.check_at("pd", ALICE, later).await,
        Ok(SourceAnswer::OnCall { .. })
    ));
    assert_eq!(f.pd.seen_at("/oncalls").len(), 2, "asked again after 60s");
}

#[tokio::test]
async fn opsgenie_is_asked_for_the_flat_list_at_this_moment_with_the_genie_key() {
    let f = fixture("", PD_TOKEN).await;
    f.og.set_schedule(
        "4f1c-ops/primary",
        "Ops Primary",
        &["ALICE@example.com", "bob@example.com"],
    );
    let answer = f.check("og", ALICE).await.unwrap();
    let SourceAnswer::OnCall { entry, matched_by } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!((entry.schedule.as_str(), matched_by), ("Ops Primary", "email"));
    let seen = f.og.seen();
    assert_eq!(seen.len(), 1);
    // The schedule ID is one path segment, encoded.
    assert_eq!(seen[0].path, "/v2/schedules/4f1c-ops%2Fprimary/on-calls");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("GenieKey {OG_KEY}").as_str())
    );
    assert_eq!(seen[0].one("flat"), Some("true"));
    assert_eq!(seen[0].one("date"), Some(rfc3339(f.now).as_str()));
    assert!(f.check("og", "U0CAROL").await.is_err(), "unknown to Slack");
}

#[tokio::test]
async fn opsgenie_failures_are_errors_never_answers() {
    let f = fixture("", PD_TOKEN).await;
    f.og.set_schedule("4f1c-ops/primary", "Ops Primary", &[ALICE_EMAIL]);
    f.og.set_mode(Mode::ServerError);
    assert_eq!(f.check("og", ALICE).await, Err(SourceError::Status(500)));
    f.og.set_mode(Mode::Malformed);
    assert!(matches!(f.check("og", ALICE).await, Err(SourceError::Malformed(_))));
    f.og.set_mode(Mode::Hang);
    assert!(matches!(f.check("og", ALICE).await, Err(SourceError::Timeout(_))));
}

#[tokio::test]
async fn open_incidents_are_found_by_assignment_and_status() {
    let f = fixture("", PD_TOKEN).await;
    f.pd.add_user("PALICE", ALICE_EMAIL);
    f.pd.add_incident("QRESOLVED", 7, "old", "resolved", "PALICE");
    f.pd.add_incident("QBOB", 8, "bob's", "triggered", "PBOB");
    let none = f
        .oncall
        .open_incident(&f.cfg, "pd", &f.api, ALICE, None, f.now.timestamp_millis())
        .await
        .unwrap();
    assert_eq!(none, None);
    f.pd.add_incident("QDB", 42, "Primary DB down", "acknowledged", "PALICE");
    let found = f
        .oncall
        .open_incident(&f.cfg, "pd", &f.api, ALICE, None, f.now.timestamp_millis())
        .await
        .unwrap()
        .expect("assigned incident");
    assert_eq!((found.id.as_str(), found.number), ("QDB", Some(42)));
    let seen = f.pd.seen_at("/incidents");
    assert_eq!(seen[0].all("statuses[]"), ["triggered", "acknowledged"]);
    assert_eq!(seen[0].all("user_ids[]"), ["PALICE"]);
    // The PagerDuty user was found by e-mail, once, then cached.
    assert_eq!(f.pd.seen_at("/users").len(), 1);
    assert_eq!(f.pd.seen_at("/users")[0].one("query"), Some(ALICE_EMAIL));
}

#[tokio::test]
async fn incident_channels_are_recognised_by_name_prefix_through_conversations_info() {
    let f = fixture("", PD_TOKEN).await;
    f.slack.set_channel("C0INC42", "inc-42-db-down");
    f.slack.set_channel("C0GENERAL", "general");
    let now_ms = f.now.timestamp_millis();
    assert_eq!(
        f.oncall.check_channel(&f.cfg, &f.api, "C0INC42", now_ms).await,
        ChannelCheck::Incident {
            name: Some("inc-42-db-down".into())
        }
    );
    assert_eq!(
        f.oncall.check_channel(&f.cfg, &f.api, "C0GENERAL", now_ms).await,
        ChannelCheck::NotIncident {
            name: Some("general".into())
        }
    );
    let again = f.oncall.check_channel(&f.cfg, &f.api, "C0INC42", now_ms + 1000).await;
    assert!(matches!(again, ChannelCheck::Incident { .. }));
    let lookups: Vec<_> = f
        .slack
        .calls()
        .into_iter()
        .filter(|c| c.method == "conversations.info")
        .collect();
    assert_eq!(lookups.len(), 2, "the second look at C0INC42 came from the cache");
    assert_eq!(lookups[0].body["channel"], "C0INC42");
    // Slack failing to answer is never read as "an incident channel".
    let failed = f.oncall.check_channel(&f.cfg, &f.api, "C0UNKNOWN", now_ms).await;
    assert!(
        matches!(failed, ChannelCheck::Failed(ref e) if e.contains("channel_not_found")),
        "{failed:?}"
    );
    // Direct messages are never incident channels and cost no lookup.
    assert_eq!(
        f.oncall.check_channel(&f.cfg, &f.api, "D0DM", now_ms).await,
        ChannelCheck::NotIncident { name: None }
    );
}

#[tokio::test]
async fn a_missing_credential_stops_start_up_naming_the_key() {
    let f = fixture("", PD_TOKEN).await;
    let e = OnCall::new(Some(&f.cfg), &|name| (name == "OG_KEY").then(|| OG_KEY.to_string())).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("oncall.sources.pd.token_env: the environment variable PD_TOKEN is not set"),
        "{msg}"
    );
}
