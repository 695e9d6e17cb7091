//! What an operator scrapes at `/metrics`: counters, gauges and histograms in Prometheus'
//! (OpenMetrics) text format, from the `prometheus-client` crate. One registry per running
//! app — no global state, so several apps in one process (the tests) never mix their
//! numbers.
//!
//! Counters and histograms are updated where things happen; gauges that describe stored
//! state (grants in force, the outbox's backlog) are read from the database at scrape time
//! by the caller and set with [`Metrics::set_state`], so they cannot drift.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Decision {
    /// `approve` or `deny`.
    pub verdict: String,
    /// `person`, `oncall_policy` or `break_glass`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdapterResult {
    pub adapter: String,
    /// `ok` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Resource {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlackCall {
    /// The Web API method (`chat.postMessage`, …) or `response_url`.
    pub method: String,
    /// `ok`, `rate_limited`, `transient` or `refused`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobKind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Lookup {
    /// The `[oncall.sources.NAME]`, or `slack` for the incident-channel check.
    pub source: String,
    /// `on_call`, `not_on_call` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRequest {
    /// The route (`/slack/commands`, …), or `other`.
    pub path: String,
    pub status: u16,
}

/// All of jitgate's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    decisions: Family<Decision, Counter>,
    decision_seconds: Histogram,
    grant_seconds: Histogram,
    grants_active: Family<Resource, Gauge>,
    grant_attempts: Family<AdapterResult, Counter>,
    revoke_attempts: Family<AdapterResult, Counter>,
    revoke_lateness: Histogram,
    outbox_backlog: Gauge,
    outbox_oldest: Gauge,
    slack_calls: Family<SlackCall, Counter>,
    job_retries: Family<JobKind, Counter>,
    oncall_lookups: Family<Lookup, Counter>,
    http_seconds: Family<HttpRequest, Histogram>,
}

fn histogram(buckets: &'static [f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

const DECISION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];
const GRANT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const LATENESS_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jitgate");
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "requests",
            "Access requests by outcome: created, refused (invalid), approved, denied, expired, cancelled",
            requests.clone(),
        );
        let decisions = Family::<Decision, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by verdict and kind (person, oncall_policy, break_glass)",
            decisions.clone(),
        );
        let decision_seconds = histogram(DECISION_BUCKETS);
        registry.register_with_unit(
            "request_decision",
            "Time from a request to the decision that ended it",
            Unit::Seconds,
            decision_seconds.clone(),
        );
        let grant_seconds = histogram(GRANT_BUCKETS);
        registry.register_with_unit(
            "approval_to_grant",
            "Time from approval to access granted",
            Unit::Seconds,
            grant_seconds.clone(),
        );
        let grants_active = Family::<Resource, Gauge>::default();
        registry.register("grants_active", "Grants in force, by resource", grants_active.clone());
        let grant_attempts = Family::<AdapterResult, Counter>::default();
        registry.register(
            "grant_attempts",
            "Adapter grant calls by adapter and result",
            grant_attempts.clone(),
        );
        let revoke_attempts = Family::<AdapterResult, Counter>::default();
        registry.register(
            "revoke_attempts",
            "Adapter revoke calls by adapter and result",
            revoke_attempts.clone(),
        );
        let revoke_lateness = histogram(LATENESS_BUCKETS);
        registry.register_with_unit(
            "revoke_lateness",
            "How long after its end time an expired grant was revoked",
            Unit::Seconds,
            revoke_lateness.clone(),
        );
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Slack messages waiting in the outbox",
            outbox_backlog.clone(),
        );
        let outbox_oldest = Gauge::default();
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest Slack message waiting in the outbox",
            Unit::Seconds,
            outbox_oldest.clone(),
        );
        let slack_calls = Family::<SlackCall, Counter>::default();
        registry.register(
            "slack_api_calls",
            "Slack Web API calls by method and outcome (ok, rate_limited, transient, refused)",
            slack_calls.clone(),
        );
        let job_retries = Family::<JobKind, Counter>::default();
        registry.register(
            "job_retries",
            "Jobs put back to run again, by kind",
            job_retries.clone(),
        );
        let oncall_lookups = Family::<Lookup, Counter>::default();
        registry.register(
            "oncall_lookups",
            "On-call checks by source and result (on_call, not_on_call, error)",
            oncall_lookups.clone(),
        );
        let http_seconds =
            Family::<HttpRequest, Histogram>::new_with_constructor((|| histogram(HTTP_BUCKETS)) as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "HTTP requests by route and status",
            Unit::Seconds,
            http_seconds.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            requests,
            decisions,
            decision_seconds,
            grant_seconds,
            grants_active,
            grant_attempts,
            revoke_attempts,
            revoke_lateness,
            outbox_backlog,
            outbox_oldest,
            slack_calls,
            job_retries,
            oncall_lookups,
            http_seconds,
        }))
    }

    /// The metrics in OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }

    /// A request reached `outcome`.
    pub fn request(&self, outcome: &str) {
        self.0
            .requests
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A decision by `kind` (`person`, `oncall_policy`, `break_glass`).
    pub fn decision(&self, verdict: &str, kind: &str) {
        self.0
            .decisions
            .get_or_create(&Decision {
                verdict: verdict.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// A request was decided (approved or denied) `ms` after it was made.
    pub fn decided_after(&self, ms: i64) {
        self.0.decision_seconds.observe(seconds(ms));
    }

    /// Access was granted `ms` after its approval.
    pub fn granted_after(&self, ms: i64) {
        self.0.grant_seconds.observe(seconds(ms));
    }

    /// An adapter's grant call ended.
    pub fn grant_attempt(&self, adapter: &str, ok: bool) {
        self.0.grant_attempts.get_or_create(&adapter_result(adapter, ok)).inc();
    }

    /// An adapter's revoke call ended.
    pub fn revoke_attempt(&self, adapter: &str, ok: bool) {
        self.0.revoke_attempts.get_or_create(&adapter_result(adapter, ok)).inc();
    }

    /// An expired grant was revoked `ms` after its end time.
    pub fn revoked_late_by(&self, ms: i64) {
        self.0.revoke_lateness.observe(seconds(ms));
    }

    /// A Slack call ended with `outcome`.
    pub fn slack_call(&self, method: &str, outcome: &str) {
        self.0
            .slack_calls
            .get_or_create(&SlackCall {
                method: method.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A job of `kind` was put back to run again.
    pub fn job_retry(&self, kind: &str) {
        self.0.job_retries.get_or_create(&JobKind { kind: kind.into() }).inc();
    }

    /// An on-call check asked `source` and got `result`.
    pub fn oncall_lookup(&self, source: &str, result: &str) {
        self.0
            .oncall_lookups
            .get_or_create(&Lookup {
                source: source.into(),
                result: result.into(),
            })
            .inc();
    }

    /// An HTTP request to `path` was answered with `status` after `secs`.
    pub fn http_request(&self, path: &str, status: u16, secs: f64) {
        self.0
            .http_seconds
            .get_or_create(&HttpRequest {
                path: path.into(),
                status,
            })
            .observe(secs);
    }

    /// The stored state, read at scrape time: grants in force per resource (the caller
    /// lists every configured resource, with 0 where none is in force), the outbox's backlog
    /// and the age of its oldest message.
    pub fn set_state(&self, active: &[(String, i64)], backlog: i64, oldest_age_ms: Option<i64>) {
        // A resource no longer listed (removed from the configuration) stops being reported.
        self.0.grants_active.clear();
        for (resource, n) in active {
            self.0
                .grants_active
                .get_or_create(&Resource {
                    resource: resource.clone(),
                })
                .set(*n);
        }
        self.0.outbox_backlog.set(backlog);
        self.0.outbox_oldest.set(oldest_age_ms.map_or(0, |ms| ms.max(0) / 1000));
    }
}

fn adapter_result(adapter: &str, ok: bool) -> AdapterResult {
    AdapterResult {
        adapter: adapter.into(),
        result: if ok { "ok" } else { "error" }.into(),
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_what_they_count_and_values_show_up() {
        let m = Metrics::new();
        m.request("created");
        m.decision("approve", "person");
        m.grant_attempt("exec", true);
        m.revoke_attempt("exec", false);
        m.revoked_late_by(1500);
        m.slack_call("chat.postMessage", "rate_limited");
        m.set_state(&[("prod-db".into(), 3)], 2, Some(4_000));
        let text = m.encode();
        for line in [
            "jitgate_requests_total{outcome=\"created\"} 1",
            "jitgate_decisions_total{verdict=\"approve\",kind=\"person\"} 1",
            "jitgate_grant_attempts_total{adapter=\"exec\",result=\"ok\"} 1",
            "jitgate_revoke_attempts_total{adapter=\"exec\",result=\"error\"} 1",
            "jitgate_revoke_lateness_seconds_count 1",
            "jitgate_slack_api_calls_total{method=\"chat.postMessage\",outcome=\"rate_limited\"} 1",
            "jitgate_grants_active{resource=\"prod-db\"} 3",
            "jitgate_outbox_backlog 2",
            "jitgate_outbox_oldest_age_seconds 4",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn gauges_show_the_latest_state_only() {
        let m = Metrics::new();
        m.set_state(&[("a".into(), 1), ("b".into(), 2)], 5, Some(9_000));
        m.set_state(&[("a".into(), 0)], 0, None);
        let text = m.encode();
        assert!(text.contains("jitgate_grants_active{resource=\"a\"} 0"), "{text}");
        assert!(!text.contains("resource=\"b\""), "{text}");
        assert!(text.contains("jitgate_outbox_backlog 0"), "{text}");
    }
}
