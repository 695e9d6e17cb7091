//! The small HTTP client the on-call sources share: GET a JSON document with a credential
//! header, read at most a bounded body, and sort failures into errors that are safe to
//! show (no credential, no response body).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use url::Url;

/// Largest response body read from an on-call service.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A credential (PagerDuty token, Opsgenie key). `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value.trim()))
    }

    /// The value, for building the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a source gave no answer. The text goes to the requester, the audit log and the
/// process log, so it never holds a credential or a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("could not be reached ({0})")]
    Unreachable(String),
    #[error("refused jitgate's credential (HTTP {0}); check the token or key")]
    Unauthorized(u16),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answered something jitgate cannot read ({0})")]
    Malformed(String),
    #[error("Slack lookup failed ({0})")]
    Slack(String),
}

/// A pooled HTTPS client for the on-call services.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let connector = crate::slack::client::https_connector_http1();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// GETs `url` with `Authorization: {authorization}` and `Accept: {accept}` and reads
    /// the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &Url,
        authorization: &str,
        accept: &str,
    ) -> Result<T, SourceError> {
        let mut auth = HeaderValue::from_str(authorization)
            .map_err(|_| SourceError::Unreachable("the credential holds characters a header cannot".into()))?;
        auth.set_sensitive(true);
        let mut req = Request::get(url.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| SourceError::Unreachable(format!("bad request: {e}")))?;
        let headers = req.headers_mut();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(accept).unwrap_or(HeaderValue::from_static("application/json")),
        );
        headers.insert(USER_AGENT, HeaderValue::from_static("jitgate"));
        let resp = self.client.request(req).await.map_err(|e| {
            // The error's Display names the failing stage (connect, TLS), never headers.
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            SourceError::Unreachable(msg)
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SourceError::Unauthorized(status.as_u16()));
        }
        if !status.is_success() {
            return Err(SourceError::Status(status.as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| SourceError::Malformed(format!("body: {e}")))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| SourceError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Secret::new("u+verysecret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", SourceError::Unauthorized(401)).contains("verysecret"));
    }
}
