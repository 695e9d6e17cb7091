//! `jitgate healthcheck`: asks a running jitgate's `/healthz`, for container and
//! supervisor health checks, so that an image needs no curl or wget.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The command: asks `url`, or else `/healthz` at `[server] listen` of the configuration
/// at `config_path`. Says what it found when healthy.
pub async fn run(config_path: &Path, url: Option<String>, timeout: Duration) -> anyhow::Result<String> {
    let url = match url {
        Some(url) => url,
        None => url_for(crate::config::load(config_path)?.server.listen),
    };
    let body = check(&url, timeout).await?;
    Ok(format!("healthy: {url} answered 200 {body}"))
}

/// The `/healthz` URL of a jitgate listening on `listen` (`[server] listen`), from this
/// machine: an unspecified address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn url_for(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// GETs `url`; healthy when it answers 200 within `timeout`. Returns the answer's body.
pub async fn check(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL; write it like http://127.0.0.1:3000/healthz"))?;
    if uri.scheme_str() != Some("http") {
        bail!("`{url}`: only http:// is supported; the health check talks to jitgate on this machine");
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = async {
        let response = client.get(uri).await.with_context(|| format!("{url} did not answer"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).trim().to_string();
        if status != hyper::StatusCode::OK {
            bail!("{url} answered {status}: {body}");
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("{url} did not answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            url_for("0.0.0.0:3000".parse().unwrap()),
            "http://127.0.0.1:3000/healthz"
        );
        assert_eq!(url_for("[::]:8080".parse().unwrap()), "http://[::1]:8080/healthz");
        assert_eq!(
            url_for("10.1.2.3:3000".parse().unwrap()),
            "http://10.1.2.3:3000/healthz"
        );
    }
}
