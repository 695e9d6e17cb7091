//! Outbound calls to Slack's Web API, through slack-morphism, with errors sorted into
//! "wait and retry", "retry later" and "give up".

use std::sync::Arc;
use std::time::Duration;

use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;

use crate::metrics::Metrics;

/// How a Slack call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackCallError {
    #[error("rate limited by Slack")]
    RateLimited(Option<Duration>),
    #[error("Slack unavailable: {0}")]
    Transient(String),
    #[error("Slack refused: {0}")]
    Permanent(String),
}

/// Slack error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "ratelimited",
    "team_added_to_org",
];

impl From<SlackClientError> for SlackCallError {
    fn from(e: SlackClientError) -> Self {
        match e {
            SlackClientError::RateLimitError(r) => SlackCallError::RateLimited(r.retry_after),
            SlackClientError::ApiError(api) if api.code == "ratelimited" => SlackCallError::RateLimited(None),
            SlackClientError::ApiError(api) if TRANSIENT_CODES.contains(&api.code.as_str()) => {
                SlackCallError::Transient(api.code)
            }
            SlackClientError::ApiError(api) => SlackCallError::Permanent(api.code),
            SlackClientError::HttpError(h) if h.status_code.is_client_error() => {
                SlackCallError::Permanent(format!("HTTP {}", h.status_code))
            }
            SlackClientError::HttpError(h) => SlackCallError::Transient(format!("HTTP {}", h.status_code)),
            other => SlackCallError::Transient(other.to_string()),
        }
    }
}

/// What `conversations.info` says about a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub id: String,
    /// Without the `#`; absent for direct messages.
    pub name: Option<String>,
    pub is_private: bool,
    /// Whether the bot is in the channel.
    pub is_member: bool,
    pub is_archived: bool,
}

/// The Slack Web API, with the bot token.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackHyperClient>,
    token: Arc<SlackApiToken>,
    metrics: Option<Metrics>,
    /// What went wrong with the last call that failed for a reason that concerns every
    /// call (Slack unreachable, the token refused), until a call succeeds again.
    trouble: Arc<std::sync::Mutex<Option<String>>>,
    /// Hosts a response_url may point at (`[slack] response_url_hosts`).
    response_url_hosts: Arc<[String]>,
    /// For the calls slack-morphism cannot make as needed (response headers, app tokens).
    raw: RawClient,
    base: Arc<str>,
    timeout: Duration,
}

/// Whether jitgate may call `url` as a response_url: its host is one of `hosts` exactly,
/// over https (plain http only to this machine), with no user name or password. Anything
/// else in a payload's `response_url` could make jitgate call an arbitrary server.
pub fn response_url_allowed(url: &url::Url, hosts: &[String]) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let loopback = matches!(host.as_str(), "127.0.0.1" | "::1" | "localhost");
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    scheme_ok && url.username().is_empty() && url.password().is_none() && hosts.contains(&host)
}

/// Slack error codes that mean the token itself is refused: no call can succeed.
const TOKEN_REFUSED: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
];

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlackApi { token: <redacted> }")
    }
}

/// An HTTPS (and, for loopback test servers, HTTP) connector using the system's roots.
pub fn https_connector() -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    tls_builder().https_or_http().enable_http1().enable_http2().build()
}

/// Like [`https_connector`], offering HTTP/1.1 only (for clients built without HTTP/2).
pub fn https_connector_http1() -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    tls_builder().https_or_http().enable_http1().build()
}

fn tls_builder() -> hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes> {
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls_config()).clone())
}

/// The TLS settings of every outbound connection to Slack (Web API and Socket Mode): the
/// system's CA certificates, or those of the file `SSL_CERT_FILE` (or directory
/// `SSL_CERT_DIR`) names instead, as OpenSSL does. Built once.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "could not read some CA certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no CA certificates found; HTTPS calls will fail (install ca-certificates, or name a PEM file in SSL_CERT_FILE)"
                );
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// How long one Web API call may take before it counts as failed (and is retried later).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What `auth.test` says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// The bot's user ID (`U…`); absent for app-level tokens.
    pub user_id: Option<String>,
    pub team: Option<String>,
    /// The scopes Slack granted, from the `x-oauth-scopes` header (None if absent).
    pub scopes: Option<Vec<String>>,
}

type RawClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

impl SlackApi {
    /// A client for the Web API at `api_url` (like `https://slack.com/api`).
    pub fn new(api_url: &str, bot_token: &str) -> Self {
        let base = api_url.trim_end_matches('/');
        let connector = SlackClientHyperConnector::from(https_connector()).with_slack_api_url(base);
        Self {
            client: Arc::new(SlackClient::new(connector)),
            token: Arc::new(SlackApiToken::new(SlackApiTokenValue::new(bot_token.to_string()))),
            metrics: None,
            trouble: Arc::default(),
            response_url_hosts: Arc::from(vec!["hooks.slack.com".to_string()]),
            raw: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https_connector()),
            base: Arc::from(base),
            timeout: CALL_TIMEOUT,
        }
    }

    /// Allows response_urls on these hosts only (default `hooks.slack.com`).
    pub fn with_response_url_hosts(mut self, hosts: &[String]) -> Self {
        self.response_url_hosts = Arc::from(hosts.to_vec());
        self
    }

    /// Why Slack cannot be used now, as the latest calls saw it (`None` while calls
    /// succeed, and before the first).
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts every call by method and outcome in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs one Web API call, sorting its error and counting it.
    async fn call<T>(
        &self,
        method: &str,
        call: impl std::future::Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, SlackCallError> {
        let result = self.timed(call).await;
        let trouble = match &result {
            Ok(_) => Some(None),
            Err(SlackCallError::Transient(e)) => Some(Some(format!("Slack unreachable ({method}: {e})"))),
            Err(SlackCallError::Permanent(code)) if TOKEN_REFUSED.contains(&code.as_str()) => {
                Some(Some(format!("Slack refuses the bot token ({method}: {code})")))
            }
            // Rate limits and refusals of one message say nothing about the others.
            Err(_) => None,
        };
        // A response_url needs no token and may be on another host: its answer says
        // nothing about the Web API.
        if let Some(t) = trouble.filter(|_| method != "response_url") {
            *self.trouble.lock().unwrap_or_else(|e| e.into_inner()) = t;
        }
        if let Some(m) = &self.metrics {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(SlackCallError::RateLimited(_)) => "rate_limited",
                Err(SlackCallError::Transient(_)) => "transient",
                Err(SlackCallError::Permanent(_)) => "refused",
            };
            m.slack_call(method, outcome);
        }
        result
    }

    /// The same client with another per-call timeout (tests, the load generator).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Web API base URL, like `https://slack.com/api`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Runs one call under the per-call timeout: a Slack that accepts the connection and
    /// never answers costs this long, then counts as a temporary failure.
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, SlackClientError>>,
    ) -> Result<T, SlackCallError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(SlackCallError::from),
            Err(_) => Err(SlackCallError::Transient(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// POSTs `method` with `token` (form-encoded `fields`) and returns the response's
    /// headers and JSON; `ok: false` becomes an error with Slack's code. Neither the token
    /// nor the response body reaches a log or an error message.
    async fn raw_call(
        &self,
        method: &str,
        token: &str,
        fields: &[(&str, &str)],
    ) -> Result<(hyper::HeaderMap, serde_json::Value), SlackCallError> {
        use http_body_util::BodyExt;
        let body = serde_urlencoded::to_string(fields).unwrap_or_default();
        let req = hyper::Request::post(format!("{}/{method}", self.base))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|_| SlackCallError::Permanent(format!("{}/{method} is not a valid URL", self.base)))?;
        let call = async {
            let resp = self
                .raw
                .request(req)
                .await
                .map_err(|e| SlackCallError::Transient(format!("cannot reach Slack: {e}")))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if status == hyper::StatusCode::TOO_MANY_REQUESTS {
                let after = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs);
                return Err(SlackCallError::RateLimited(after));
            }
            if status.is_server_error() {
                return Err(SlackCallError::Transient(format!("HTTP {status}")));
            }
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| SlackCallError::Transient(format!("reading Slack's answer: {e}")))?
                .to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| SlackCallError::Transient(format!("HTTP {status} without a JSON answer")))?;
            if json["ok"].as_bool() == Some(true) {
                Ok((headers, json))
            } else {
                let code = json["error"].as_str().unwrap_or("unknown_error").to_string();
                if TRANSIENT_CODES.contains(&code.as_str()) {
                    Err(SlackCallError::Transient(code))
                } else {
                    Err(SlackCallError::Permanent(code))
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(SlackCallError::Transient(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// `auth.test` with the bot token: who the bot is, and its scopes.
    pub async fn auth_test(&self) -> Result<AuthInfo, SlackCallError> {
        let token = self.token.token_value.0.clone();
        self.auth_test_with(&token).await
    }

    /// `auth.test` with any token.
    pub async fn auth_test_with(&self, token: &str) -> Result<AuthInfo, SlackCallError> {
        let (headers, json) = self.raw_call("auth.test", token, &[]).await?;
        let scopes = headers.get("x-oauth-scopes").and_then(|v| v.to_str().ok()).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        Ok(AuthInfo {
            user_id: json["user_id"].as_str().map(String::from),
            team: json["team"].as_str().map(String::from),
            scopes,
        })
    }

    /// `apps.connections.open` with an app-level token: a single-use Socket Mode URL.
    /// The URL carries a ticket: keep it out of logs.
    pub async fn open_socket_url(&self, app_token: &str) -> Result<String, SlackCallError> {
        let (_, json) = self.raw_call("apps.connections.open", app_token, &[]).await?;
        json["url"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| SlackCallError::Transient("apps.connections.open answered without a url".into()))
    }

    /// Posts a message; returns its channel and `ts`. A user ID as channel sends a DM.
    pub async fn post_message(
        &self,
        channel: &str,
        content: SlackMessageContent,
    ) -> Result<(String, String), SlackCallError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiChatPostMessageRequest::new(channel.into(), content).with_unfurl_links(false);
        let resp = self.call("chat.postMessage", session.chat_post_message(&req)).await?;
        Ok((resp.channel.to_string(), resp.ts.to_string()))
    }

    /// Replaces a message's content.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        content: SlackMessageContent,
    ) -> Result<(), SlackCallError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiChatUpdateRequest::new(channel.into(), content, ts.into());
        self.call("chat.update", session.chat_update(&req)).await?;
        Ok(())
    }

    /// Replies only to the person who clicked, through the interaction's response_url.
    pub async fn respond_ephemeral(&self, response_url: &str, text: &str) -> Result<(), SlackCallError> {
        let url: url::Url = response_url
            .parse()
            .map_err(|_| SlackCallError::Permanent("response_url is not a URL".into()))?;
        if !response_url_allowed(&url, &self.response_url_hosts) {
            tracing::warn!(host = ?url.host_str(), "refusing a response_url outside [slack] response_url_hosts");
            return Err(SlackCallError::Permanent(
                "response_url is not on an allowed host ([slack] response_url_hosts)".into(),
            ));
        }
        // The hyper client never follows redirects, so an allowed host cannot send the
        // call elsewhere.
        let req = SlackApiPostWebhookMessageRequest::new(SlackMessageContent::new().with_text(text.to_string()))
            .with_replace_original(false);
        // response_type is not a field of the request type; ephemeral is Slack's default.
        self.call(
            "response_url",
            self.client.respond_to_event(&SlackResponseUrl(url), &req),
        )
        .await?;
        Ok(())
    }

    /// Replaces a person's Home tab.
    pub async fn publish_home(&self, user: &str, view: SlackHomeView) -> Result<(), SlackCallError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiViewsPublishRequest::new(user.into(), SlackView::Home(view));
        self.call("views.publish", session.views_publish(&req)).await?;
        Ok(())
    }

    /// Opens a modal with a `trigger_id` (valid 3 s, once); returns the new view's id.
    /// `view` is Block Kit JSON of `"type": "modal"`.
    pub async fn open_view(&self, trigger_id: &str, view: serde_json::Value) -> Result<String, SlackCallError> {
        let view: SlackView = serde_json::from_value(view)
            .map_err(|e| SlackCallError::Permanent(format!("jitgate built a view slack-morphism cannot read: {e}")))?;
        let session = self.client.open_session(&self.token);
        let req = SlackApiViewsOpenRequest::new(trigger_id.into(), view);
        let resp = self.call("views.open", session.views_open(&req)).await?;
        Ok(resp.view.state_params.id.to_string())
    }

    /// Replaces an open modal (`view_id`); with `hash`, only if nobody changed it since.
    pub async fn update_view(
        &self,
        view_id: &str,
        hash: Option<&str>,
        view: serde_json::Value,
    ) -> Result<(), SlackCallError> {
        let view: SlackView = serde_json::from_value(view)
            .map_err(|e| SlackCallError::Permanent(format!("jitgate built a view slack-morphism cannot read: {e}")))?;
        let session = self.client.open_session(&self.token);
        let mut req = SlackApiViewsUpdateRequest::new(view).with_view_id(view_id.into());
        if let Some(h) = hash {
            req = req.with_hash(h.to_string());
        }
        self.call("views.update", session.views_update(&req)).await?;
        Ok(())
    }

    /// The members of a user group.
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, SlackCallError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiUserGroupsUsersListRequest::new(group.into());
        let resp = self
            .call("usergroups.users.list", session.usergroups_users_list(&req))
            .await?;
        Ok(resp.users.into_iter().map(|u| u.to_string()).collect())
    }

    /// A channel's name and whether it is private, from `conversations.info` (scopes
    /// `channels:read` for public and `groups:read` for private channels; for a private
    /// channel the bot must be a member).
    pub async fn conversations_info(&self, channel: &str) -> Result<ChannelInfo, SlackCallError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiConversationsInfoRequest::new(channel.into());
        let resp = self
            .call("conversations.info", session.conversations_info(&req))
            .await?;
        Ok(ChannelInfo {
            id: resp.channel.id.to_string(),
            name: resp.channel.name.or(resp.channel.name_normalized),
            is_private: resp.channel.flags.is_private.unwrap_or(false),
            is_member: resp.channel.flags.is_member.unwrap_or(false),
            is_archived: resp.channel.flags.is_archived.unwrap_or(false),
        })
    }

    /// A user's e-mail address from `users.info` (scopes `users:read` and
    /// `users:read.email`); `None` when Slack shows none (bots, or the scope is missing
    /// on an older install).
    pub async fn users_info_email(&self, user: &str) -> Result<Option<String>, SlackCallError> {
        let session = self.client.open_session(&self.token);
        let req = SlackApiUsersInfoRequest::new(user.into());
        let resp = self.call("users.info", session.users_info(&req)).await?;
        Ok(resp
            .user
            .profile
            .and_then(|p| p.email)
            .map(|e| e.to_string())
            .filter(|e| e.contains('@')))
    }

    /// True if `user` belongs to any of `groups`, asked of Slack now.
    pub async fn is_in_any_group(&self, groups: &[String], user: &str) -> Result<bool, SlackCallError> {
        for g in groups {
            if self.group_members(g).await?.iter().any(|u| u == user) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_urls_are_allowed_on_listed_hosts_only() {
        let hosts = vec!["hooks.slack.com".to_string(), "127.0.0.1".to_string()];
        let ok = |u: &str| response_url_allowed(&u.parse().unwrap(), &hosts);
        assert!(ok("https://hooks.slack.com/actions/T1/2/x"));
        assert!(ok("http://127.0.0.1:8080/response/x"));
        assert!(!ok("http://hooks.slack.com/actions/x"), "plain http off this machine");
        assert!(!ok("https://evil.example/actions/x"));
        assert!(!ok("https://hooks.slack.com.evil.example/x"));
        assert!(!ok("https://user:pw@hooks.slack.com/x"));
        assert!(!ok("https://localhost/x"), "not listed");
    }
}
