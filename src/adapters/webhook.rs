//! The `webhook` adapter: POSTs each grant, revoke and status question as signed JSON to a
//! configured URL, so any system can be plugged in.
//!
//! Requests are signed like Slack's (`v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`), so
//! receivers can reuse Slack verification code. Grant and revoke carry an `Idempotency-Key`
//! and must be idempotent on the receiver's side, because jitgate retries them.
//!
//! How answers are read:
//! - 2xx is success. On grant, a JSON object may carry `state` (a string, handed back on
//!   revoke) and `private_note` (a string sent to the requester only, as a DM).
//! - 408, 409, 425, 429, 5xx, time-outs and connection errors are temporary: jitgate retries.
//! - Any other 4xx, and 3xx (redirects are not followed), are permanent.
//!
//! Error messages go to Slack and the audit log, so they carry the HTTP status only; the
//! answer's body goes to the debug log, truncated. The secret is never logged.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::{Adapter, AdapterError, BoxFuture, GrantContext, Granted};
use crate::config::WebhookAdapterConfig;
use crate::duration::HumanDuration;

/// Largest answer read from a receiver.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a refused call's answer goes to the debug log.
const LOGGED_BODY_BYTES: usize = 512;
/// Shortest signing secret accepted.
const MIN_SECRET_BYTES: usize = 16;
const USER_AGENT_VALUE: &str = concat!("jitgate/", env!("CARGO_PKG_VERSION"));
/// Header carrying the unix time the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-jitgate-request-timestamp";
/// Header carrying `v0=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-jitgate-signature";
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The shared signing secret. Its `Debug` never shows it.
#[derive(Clone)]
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a call asks the receiver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Grant,
    Revoke,
    Status,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Grant => "grant",
            Action::Revoke => "revoke",
            Action::Status => "status",
        }
    }
}

/// The JSON body of every call.
#[derive(Serialize)]
struct Payload<'a> {
    action: &'static str,
    grant_id: i64,
    request_id: String,
    user_id: &'a str,
    resource: &'a str,
    role: &'a str,
    duration_seconds: i64,
    expires_at: String,
    reason: &'a str,
    state: Option<&'a str>,
}

/// How an HTTP status is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Temporary,
    Permanent,
}

fn verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        // Time-out, conflict (often a concurrent change on the receiver), too early, rate limited.
        408 | 409 | 425 | 429 => Verdict::Temporary,
        // Redirects are not followed: a moved receiver is a configuration problem.
        300..=499 => Verdict::Permanent,
        _ => Verdict::Temporary,
    }
}

/// An answer read within the size limit.
struct Answer {
    status: StatusCode,
    body: Bytes,
    /// The body was longer than `MAX_BODY_BYTES`; `body` holds its start.
    too_large: bool,
}

/// POSTs signed JSON to a receiver for grant, revoke and status.
#[derive(Clone)]
pub struct WebhookAdapter {
    name: String,
    uri: Uri,
    secret: Secret,
    timeout: HumanDuration,
    headers: HeaderMap,
    client: HttpClient,
}

impl std::fmt::Debug for WebhookAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookAdapter")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            // Values may be gateway tokens.
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl WebhookAdapter {
    /// Builds the adapter with the secret read from the variable named by `secret_env`. The
    /// error says which variable to set.
    pub fn from_env(name: &str, config: &WebhookAdapterConfig) -> Result<Self, String> {
        let value = std::env::var(&config.secret_env).ok();
        let secret = secret_from(name, &config.secret_env, value)?;
        Self::new(name, config, secret)
    }

    /// Builds the adapter with `secret` as the signing key.
    pub fn new(name: &str, config: &WebhookAdapterConfig, secret: Vec<u8>) -> Result<Self, String> {
        let key = format!("adapters.{name}");
        let uri: Uri = config
            .url
            .parse()
            .map_err(|e| format!("{key}.url: `{}` cannot be used ({e})", config.url))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{key}.headers: bad name `{k}`"))?;
            let mut value = HeaderValue::from_str(v).map_err(|_| format!("{key}.headers.{k}: bad value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = Client::builder(TokioExecutor::new()).build(crate::slack::client::https_connector());
        Ok(Self {
            name: name.to_string(),
            uri,
            secret: Secret(secret),
            timeout: config.timeout,
            headers,
            client,
        })
    }

    fn request(&self, action: Action, ctx: &GrantContext) -> Result<Request<Full<Bytes>>, AdapterError> {
        let payload = Payload {
            action: action.as_str(),
            grant_id: ctx.grant_id,
            request_id: crate::ids::label(ctx.request_id),
            user_id: &ctx.user_id,
            resource: &ctx.resource,
            role: &ctx.role,
            duration_seconds: ctx.duration_secs,
            expires_at: ctx.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason: &ctx.reason,
            state: ctx.state.as_deref(),
        };
        let body = serde_json::to_vec(&payload)
            .map_err(|e| AdapterError::Permanent(format!("webhook `{}`: cannot encode the call: {e}", self.name)))?;
        // The receiver checks this against its own clock (replay protection), so it is the
        // real time, not an injected one.
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = crate::slack::signature::sign(&self.secret.0, &timestamp, &body);
        let mut builder = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, &signature);
        // Only changes are keyed: a receiver (or gateway) that replays stored answers by key
        // would otherwise answer every status question with the first answer.
        if action != Action::Status {
            builder = builder.header(
                IDEMPOTENCY_KEY_HEADER,
                format!("jitgate-{}-{}", ctx.grant_id, action.as_str()),
            );
        }
        let mut request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AdapterError::Permanent(format!("webhook `{}`: cannot build the call: {e}", self.name)))?;
        // Configuration validation keeps these off the names set above.
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        Ok(request)
    }

    /// Sends one call and reads the answer, all within the configured time-out.
    async fn call(&self, action: Action, ctx: &GrantContext) -> Result<Answer, AdapterError> {
        let request = self.request(action, ctx)?;
        let what = action.as_str();
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                tracing::warn!(adapter = %self.name, action = what, grant = ctx.grant_id, error = %chain(&e), "webhook call failed");
                let problem = if e.is_connect() {
                    "could not be reached"
                } else {
                    "failed"
                };
                AdapterError::Temporary(format!(
                    "webhook `{}` {problem} for the {what}: {}",
                    self.name,
                    chain(&e)
                ))
            })?;
            let status = response.status();
            let mut body = response.into_body();
            let mut buf = Vec::new();
            let mut too_large = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    AdapterError::Temporary(format!(
                        "webhook `{}` answered the {what} with HTTP {status} but the answer broke off: {}",
                        self.name,
                        chain(&e)
                    ))
                })?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > MAX_BODY_BYTES {
                        // Stop reading; the connection is dropped rather than drained.
                        buf.extend_from_slice(&data[..MAX_BODY_BYTES - buf.len()]);
                        too_large = true;
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Answer {
                status,
                body: Bytes::from(buf),
                too_large,
            })
        };
        match tokio::time::timeout(self.timeout.to_std(), exchange).await {
            Ok(answer) => answer,
            Err(_) => {
                tracing::warn!(adapter = %self.name, action = what, grant = ctx.grant_id, timeout = %self.timeout, "webhook call timed out");
                Err(AdapterError::Temporary(format!(
                    "webhook `{}` did not answer the {what} within {}",
                    self.name, self.timeout
                )))
            }
        }
    }

    /// Turns a non-2xx answer into the error it stands for.
    fn refusal(&self, action: Action, ctx: &GrantContext, answer: &Answer) -> AdapterError {
        let status = answer.status;
        let what = action.as_str();
        // The body can say anything, so it only goes to the debug log.
        tracing::warn!(adapter = %self.name, action = what, grant = ctx.grant_id, %status, "webhook refused the call");
        tracing::debug!(adapter = %self.name, action = what, grant = ctx.grant_id, body = %excerpt(&answer.body), "webhook answer");
        let mut message = format!("webhook `{}` answered HTTP {status} to the {what}", self.name);
        if status.is_redirection() {
            message.push_str("; redirects are not followed, so set its url to the final address");
        }
        match verdict(status) {
            Verdict::Permanent => AdapterError::Permanent(message),
            Verdict::Temporary | Verdict::Success => AdapterError::Temporary(message),
        }
    }

    /// A 2xx answer's JSON object, or `None` when the body is empty or not a JSON object.
    fn object(
        &self,
        action: Action,
        answer: &Answer,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, AdapterError> {
        if answer.too_large {
            return Err(AdapterError::Permanent(format!(
                "webhook `{}` answered the {} with more than 64 KiB",
                self.name,
                action.as_str()
            )));
        }
        match serde_json::from_slice::<serde_json::Value>(&answer.body) {
            Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
            _ => {
                if !answer.body.iter().all(u8::is_ascii_whitespace) {
                    tracing::debug!(adapter = %self.name, action = action.as_str(), body = %excerpt(&answer.body), "webhook answer is not a JSON object; ignored");
                }
                Ok(None)
            }
        }
    }

    /// An optional string field of a 2xx answer; empty counts as absent.
    fn string_field(
        &self,
        action: Action,
        object: &serde_json::Map<String, serde_json::Value>,
        field: &str,
    ) -> Result<Option<String>, AdapterError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
            Some(_) => Err(AdapterError::Permanent(format!(
                "webhook `{}` answered the {} with a `{field}` that is not a string",
                self.name,
                action.as_str()
            ))),
        }
    }
}

/// Reads the secret from an environment variable's value; the error names the variable.
fn secret_from(name: &str, var: &str, value: Option<String>) -> Result<Vec<u8>, String> {
    let key = format!("adapters.{name}.secret_env");
    let value = value.map(|v| v.trim().to_string()).unwrap_or_default();
    if value.is_empty() {
        return Err(format!(
            "{key}: the environment variable {var} is not set; set {var} to the secret shared with \
             the webhook receiver (for example from `openssl rand -hex 32`) before starting jitgate"
        ));
    }
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{key}: the secret in {var} is shorter than {MIN_SECRET_BYTES} characters; set {var} to a \
             long random value (for example from `openssl rand -hex 32`) and give the receiver the same"
        ));
    }
    Ok(value.into_bytes())
}

/// An error and its causes on one line (the legacy client's own message says little).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        parts.push(cause.to_string());
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// The start of a body, for the debug log.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(LOGGED_BODY_BYTES)]);
    if body.len() > LOGGED_BODY_BYTES {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

impl Adapter for WebhookAdapter {
    fn grant<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>> {
        Box::pin(async move {
            let answer = self.call(Action::Grant, ctx).await?;
            if verdict(answer.status) != Verdict::Success {
                return Err(self.refusal(Action::Grant, ctx, &answer));
            }
            let Some(object) = self.object(Action::Grant, &answer)? else {
                return Ok(Granted::default());
            };
            Ok(Granted {
                state: self.string_field(Action::Grant, &object, "state")?,
                private_note: self.string_field(Action::Grant, &object, "private_note")?,
            })
        })
    }

    fn revoke<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(async move {
            let answer = self.call(Action::Revoke, ctx).await?;
            if verdict(answer.status) != Verdict::Success {
                return Err(self.refusal(Action::Revoke, ctx, &answer));
            }
            Ok(())
        })
    }

    fn is_active<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Option<bool>, AdapterError>> {
        Box::pin(async move {
            let answer = self.call(Action::Status, ctx).await?;
            if matches!(answer.status, StatusCode::NOT_FOUND | StatusCode::NOT_IMPLEMENTED) {
                // The receiver does not answer status questions.
                return Ok(None);
            }
            if verdict(answer.status) != Verdict::Success {
                return Err(self.refusal(Action::Status, ctx, &answer));
            }
            Ok(self
                .object(Action::Status, &answer)?
                .and_then(|o| o.get("active").and_then(serde_json::Value::as_bool)))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::extract::{Path as UrlPath, State};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};

    use super::*;
    use crate::slack::signature::verify;

    const SECRET: &str = "canary-secret-6f1d2c9e8b7a";
    const GATEWAY_TOKEN: &str = "canary-gateway-token-41a7";

    /// A receiver as the README tells people to write one: verifies the signature, keys
    /// changes by grant id, answers status, and records every verified call.
    #[derive(Default)]
    struct Receiver {
        active: Mutex<HashSet<i64>>,
        calls: Mutex<Vec<Value>>,
    }

    impl Receiver {
        fn calls(&self) -> Vec<Value> {
            self.calls.lock().unwrap().clone()
        }
    }

    async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let now = chrono::Utc::now().timestamp();
        if verify(
            SECRET.as_bytes(),
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            &body,
            now,
        )
        .is_err()
        {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        if header("content-type") != Some("application/json")
            || !header("user-agent").is_some_and(|ua| ua.starts_with("jitgate/"))
            || header("x-gateway-token") != Some(GATEWAY_TOKEN)
        {
            return (StatusCode::BAD_REQUEST, "missing headers").into_response();
        }
        let Ok(call) = serde_json::from_slice::<Value>(&body) else {
            return (StatusCode::BAD_REQUEST, "not JSON").into_response();
        };
        let (Some(action), Some(id)) = (call["action"].as_str(), call["grant_id"].as_i64()) else {
            return (StatusCode::BAD_REQUEST, "no action or grant_id").into_response();
        };
        let expected_key = (action != "status").then(|| format!("jitgate-{id}-{action}"));
        if header("idempotency-key").map(str::to_string) != expected_key {
            return (StatusCode::BAD_REQUEST, "wrong idempotency key").into_response();
        }
        let action = action.to_string();
        r.calls.lock().unwrap().push(call);
        let mut active = r.active.lock().unwrap();
        match action.as_str() {
            "grant" => {
                active.insert(id);
                Json(json!({ "state": format!("acct-{id}") })).into_response()
            }
            "revoke" => {
                active.remove(&id);
                StatusCode::NO_CONTENT.into_response()
            }
            "status" => Json(json!({ "active": active.contains(&id) })).into_response(),
            _ => (StatusCode::BAD_REQUEST, "unknown action").into_response(),
        }
    }

    async fn fixed(UrlPath(code): UrlPath<u16>) -> Response {
        let status = StatusCode::from_u16(code).unwrap();
        (status, "receiver detail that must stay out of Slack").into_response()
    }

    async fn never_answers() -> StatusCode {
        std::future::pending::<()>().await;
        StatusCode::OK
    }

    async fn plain() -> &'static str {
        "OK"
    }

    async fn with_note() -> Json<Value> {
        Json(json!({ "state": "acct-9", "private_note": "password: hunter2", "other": 1 }))
    }

    async fn huge() -> String {
        "x".repeat(MAX_BODY_BYTES + 1)
    }

    async fn bad_state() -> Json<Value> {
        Json(json!({ "state": { "login": "x" } }))
    }

    /// Starts the receiver on a free loopback port; returns its base URL.
    async fn receiver() -> (String, Arc<Receiver>) {
        let r = Arc::new(Receiver::default());
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/status/{code}", post(fixed))
            .route("/hang", post(never_answers))
            .route("/plain", post(plain))
            .route("/note", post(with_note))
            .route("/huge", post(huge))
            .route("/bad-state", post(bad_state))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), r)
    }

    fn config(url: &str, timeout_secs: u64) -> WebhookAdapterConfig {
        WebhookAdapterConfig {
            url: url.to_string(),
            secret_env: "JITGATE_TEST_WEBHOOK_SECRET".into(),
            timeout: HumanDuration::from_secs(timeout_secs),
            headers: BTreeMap::from([("X-Gateway-Token".to_string(), GATEWAY_TOKEN.to_string())]),
        }
    }

    fn adapter(url: &str) -> WebhookAdapter {
        WebhookAdapter::new("hooks", &config(url, 5), SECRET.as_bytes().to_vec()).unwrap()
    }

    fn ctx(reason: &str) -> GrantContext {
        GrantContext {
            grant_id: 7,
            request_id: 42,
            user_id: "U1".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 60,
            expires_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            reason: reason.into(),
            state: None,
        }
    }

    fn assert_secret_free(err: &AdapterError) {
        let text = err.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(GATEWAY_TOKEN), "{text}");
        assert!(
            !text.contains("receiver detail"),
            "the body must not reach Slack: {text}"
        );
    }

    #[tokio::test]
    async fn webhook_adapter_passes_the_conformance_checks_against_a_verifying_receiver() {
        let (base, r) = receiver().await;
        let a = adapter(&format!("{base}/hook"));
        crate::adapters::conformance::check(&a, &ctx("r"), true).await.unwrap();
        assert!(r.active.lock().unwrap().is_empty());
        let actions: Vec<_> = r
            .calls()
            .iter()
            .map(|c| c["action"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            actions,
            ["grant", "status", "grant", "status", "revoke", "status", "revoke", "status"]
        );
    }

    #[tokio::test]
    async fn revoke_sends_back_the_grant_state_and_the_reason_arrives_verbatim() {
        let (base, r) = receiver().await;
        let a = adapter(&format!("{base}/hook"));
        let reason = "incident \"INC-1\" }\n\t\\ $(rm -rf /) <@U2> ünïcødé 🔥";
        let c = ctx(reason);
        let granted = a.grant(&c).await.unwrap();
        assert_eq!(granted, Granted::with_state(Some("acct-7".into())));
        let mut held = c.clone();
        held.state = granted.state;
        a.revoke(&held).await.unwrap();

        let calls = r.calls();
        assert_eq!(calls.len(), 2);
        let (grant, revoke) = (&calls[0], &calls[1]);
        assert_eq!(
            grant,
            &json!({
                "action": "grant", "grant_id": 7, "request_id": "JIT-42", "user_id": "U1",
                "resource": "prod-db", "role": "read", "duration_seconds": 60,
                "expires_at": "2023-11-14T22:13:20Z", "reason": reason, "state": null,
            })
        );
        assert_eq!(revoke["action"], "revoke");
        assert_eq!(revoke["state"], "acct-7");
        assert_eq!(revoke["reason"], reason);
    }

    #[tokio::test]
    async fn a_wrongly_signed_call_is_refused_and_that_is_permanent() {
        let (base, r) = receiver().await;
        let wrong = WebhookAdapter::new(
            "hooks",
            &config(&format!("{base}/hook"), 5),
            b"another-secret-0123".to_vec(),
        )
        .unwrap();
        let err = wrong.grant(&ctx("r")).await.unwrap_err();
        assert_eq!(
            err,
            AdapterError::Permanent("webhook `hooks` answered HTTP 401 Unauthorized to the grant".into())
        );
        assert!(r.calls().is_empty());
    }

    #[tokio::test]
    async fn client_errors_are_permanent_and_server_errors_temporary() {
        let (base, _) = receiver().await;
        for (code, temporary) in [
            (400, false),
            (404, false),
            (503, true),
            (500, true),
            (429, true),
            (408, true),
        ] {
            let a = adapter(&format!("{base}/status/{code}"));
            for err in [
                a.grant(&ctx("r")).await.unwrap_err(),
                a.revoke(&ctx("r")).await.unwrap_err(),
            ] {
                assert_eq!(matches!(err, AdapterError::Temporary(_)), temporary, "{code}: {err:?}");
                assert!(err.to_string().contains(&format!("HTTP {code}")), "{err}");
                assert_secret_free(&err);
            }
        }
    }

    #[test]
    fn statuses_are_sorted_into_success_retry_and_give_up() {
        let v = |code: u16| verdict(StatusCode::from_u16(code).unwrap());
        for code in [200, 201, 202, 204] {
            assert_eq!(v(code), Verdict::Success, "{code}");
        }
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert_eq!(v(code), Verdict::Temporary, "{code}");
        }
        for code in [301, 302, 307, 400, 401, 403, 404, 405, 410, 422] {
            assert_eq!(v(code), Verdict::Permanent, "{code}");
        }
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_is_temporary_after_the_timeout() {
        let (base, _) = receiver().await;
        let a = WebhookAdapter::new("hooks", &config(&format!("{base}/hang"), 1), SECRET.as_bytes().to_vec()).unwrap();
        let started = Instant::now();
        let err = a.grant(&ctx("r")).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            err,
            AdapterError::Temporary("webhook `hooks` did not answer the grant within 1s".into())
        );
        assert!(
            took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(10),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn connection_refused_is_temporary() {
        // A port that was free a moment ago and has nobody listening now.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let a = adapter(&format!("http://127.0.0.1:{port}/hook"));
        let err = a.revoke(&ctx("r")).await.unwrap_err();
        assert!(matches!(err, AdapterError::Temporary(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("webhook `hooks` could not be reached for the revoke"),
            "{err}"
        );
        assert_secret_free(&err);
        let err = a.is_active(&ctx("r")).await.unwrap_err();
        assert!(matches!(err, AdapterError::Temporary(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_plain_answer_means_no_state_and_a_private_note_is_passed_on() {
        let (base, _) = receiver().await;
        assert_eq!(
            adapter(&format!("{base}/plain")).grant(&ctx("r")).await.unwrap(),
            Granted::default()
        );
        assert_eq!(
            adapter(&format!("{base}/note")).grant(&ctx("r")).await.unwrap(),
            Granted {
                state: Some("acct-9".into()),
                private_note: Some("password: hunter2".into()),
            }
        );
    }

    #[tokio::test]
    async fn oversized_or_malformed_grant_answers_are_permanent() {
        let (base, _) = receiver().await;
        let err = adapter(&format!("{base}/huge")).grant(&ctx("r")).await.unwrap_err();
        assert_eq!(
            err,
            AdapterError::Permanent("webhook `hooks` answered the grant with more than 64 KiB".into())
        );
        let err = adapter(&format!("{base}/bad-state"))
            .grant(&ctx("r"))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::Permanent(_)), "{err:?}");
        assert!(err.to_string().contains("`state` that is not a string"), "{err}");
    }

    #[tokio::test]
    async fn status_is_unknown_when_the_receiver_does_not_answer_it() {
        let (base, _) = receiver().await;
        for path in ["status/404", "status/501", "plain", "note"] {
            let got = adapter(&format!("{base}/{path}")).is_active(&ctx("r")).await.unwrap();
            assert_eq!(got, None, "{path}");
        }
        let err = adapter(&format!("{base}/status/503"))
            .is_active(&ctx("r"))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::Temporary(_)), "{err:?}");
    }

    #[test]
    fn debug_output_hides_the_secret_and_header_values() {
        let cfg = config("https://access.example.com/jitgate", 10);
        let a = WebhookAdapter::new("hooks", &cfg, SECRET.as_bytes().to_vec()).unwrap();
        for text in [format!("{a:?}"), format!("{a:#?}"), format!("{cfg:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains(GATEWAY_TOKEN), "{text}");
            assert!(text.contains("access.example.com"), "{text}");
        }
    }

    #[test]
    fn a_missing_or_short_secret_names_the_variable_to_set() {
        let cfg = WebhookAdapterConfig {
            secret_env: "JITGATE_TEST_WEBHOOK_SECRET_NEVER_SET".into(),
            ..config("https://access.example.com/jitgate", 10)
        };
        let err = WebhookAdapter::from_env("hooks", &cfg).unwrap_err();
        assert!(
            err.starts_with(
                "adapters.hooks.secret_env: the environment variable JITGATE_TEST_WEBHOOK_SECRET_NEVER_SET \
                 is not set; set JITGATE_TEST_WEBHOOK_SECRET_NEVER_SET to the secret"
            ),
            "{err}"
        );
        assert!(secret_from("hooks", "S", Some("  \n".into()))
            .unwrap_err()
            .contains("S is not set"));
        let short = secret_from("hooks", "S", Some("tooshort".into())).unwrap_err();
        assert!(short.contains("shorter than 16 characters"), "{short}");
        assert!(!short.contains("tooshort"), "{short}");
        assert_eq!(
            secret_from("hooks", "S", Some(" 0123456789abcdef\n".into())).unwrap(),
            b"0123456789abcdef"
        );
    }

    // ---- configuration ------------------------------------------------------------------

    const FILE: &str = r#"
[[resources]]
name = "prod-db"
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "hooks"

[adapters.hooks]
type = "webhook"
url = "https://access.example.com/jitgate"
secret_env = "JITGATE_WEBHOOK_SECRET"
"#;

    fn load(text: &str) -> Result<WebhookAdapterConfig, Vec<String>> {
        match crate::config::parse(std::path::Path::new("jitgate.toml"), text) {
            Ok(c) => match c.adapters["hooks"].clone() {
                crate::config::AdapterConfig::Webhook(w) => Ok(w),
                other => panic!("not a webhook: {other:?}"),
            },
            Err(e) => Err(e.problems),
        }
    }

    /// The one problem reported about the adapter table. (The resource using a broken
    /// adapter is reported too, as naming an unknown adapter.)
    fn one_problem(text: &str) -> String {
        let problems: Vec<_> = load(text)
            .unwrap_err()
            .into_iter()
            .filter(|p| p.starts_with("adapters.hooks"))
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems[0].clone()
    }

    #[test]
    fn a_minimal_webhook_table_loads_with_defaults() {
        let w = load(FILE).unwrap();
        assert_eq!(w.url, "https://access.example.com/jitgate");
        assert_eq!(w.secret_env, "JITGATE_WEBHOOK_SECRET");
        assert_eq!(w.timeout, HumanDuration::from_secs(10));
        assert!(w.headers.is_empty());
        let w = load(&format!(
            "{FILE}timeout = \"3s\"\nheaders = {{ \"X-Team\" = \"sre\" }}\n"
        ))
        .unwrap();
        assert_eq!(w.timeout, HumanDuration::from_secs(3));
        assert_eq!(w.headers["X-Team"], "sre");
    }

    #[test]
    fn a_missing_url_says_what_to_write() {
        let p = one_problem(&FILE.replace("url = \"https://access.example.com/jitgate\"\n", ""));
        assert!(
            p.starts_with("adapters.hooks.url: missing; write the receiver's address"),
            "{p}"
        );
    }

    #[test]
    fn only_https_or_loopback_http_urls_are_accepted() {
        let with_url = |url: &str| FILE.replace("https://access.example.com/jitgate", url);
        let p = one_problem(&with_url("ftp://access.example.com/jitgate"));
        assert!(p.contains("has the scheme `ftp`; use https://"), "{p}");
        let p = one_problem(&with_url("http://access.example.com/jitgate"));
        assert!(p.contains("plain http, which is only allowed to this machine"), "{p}");
        let p = one_problem(&with_url("access.example.com/jitgate"));
        assert!(p.contains("is not a URL"), "{p}");
        let p = one_problem(&with_url("https://bob:pw@access.example.com/jitgate"));
        assert!(p.contains("holds credentials"), "{p}");
        for ok in [
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://[::1]:9/x",
        ] {
            assert_eq!(load(&with_url(ok)).unwrap().url, ok);
        }
    }

    #[test]
    fn a_missing_secret_env_says_what_to_write() {
        let p = one_problem(&FILE.replace("secret_env = \"JITGATE_WEBHOOK_SECRET\"\n", ""));
        assert!(
            p.starts_with("adapters.hooks.secret_env: missing; name the environment variable"),
            "{p}"
        );
        let p = one_problem(&FILE.replace("JITGATE_WEBHOOK_SECRET", "SLACK_SIGNING_SECRET"));
        assert!(p.contains("must not be a Slack secret"), "{p}");
        let p = one_problem(&FILE.replace("JITGATE_WEBHOOK_SECRET", "MY-SECRET"));
        assert!(p.contains("is not an environment variable name"), "{p}");
    }

    #[test]
    fn a_secret_written_in_the_file_is_refused_without_echoing_it() {
        let p = one_problem(&format!("{FILE}secret = \"hunter2-hunter2-hunter2\"\n"));
        assert!(
            p.starts_with("adapters.hooks.secret: the signing secret must not be in the file"),
            "{p}"
        );
        assert!(!p.contains("hunter2"), "{p}");
    }

    #[test]
    fn unknown_keys_and_reserved_headers_are_named() {
        let p = one_problem(&format!("{FILE}retries = 3\n"));
        assert!(
            p.starts_with("adapters.hooks.retries: unknown key; the keys here are `url`"),
            "{p}"
        );
        let p = one_problem(&format!("{FILE}headers = {{ \"X-Jitgate-Signature\" = \"x\" }}\n"));
        assert!(p.contains("`X-Jitgate-Signature` is set by jitgate; remove it"), "{p}");
        let p = one_problem(&format!("{FILE}headers = {{ \"Bad Name\" = \"x\" }}\n"));
        assert!(p.contains("`Bad Name` is not a header name"), "{p}");
        let p = one_problem(&format!("{FILE}timeout = \"1h\"\n"));
        assert!(p.contains("timeout: 1h is too long; at most 5m"), "{p}");
    }
}
