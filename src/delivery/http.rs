//! Sending an attempt: pooled HTTP clients (one per hub setting), no
//! redirects, timeouts, response bodies read up to a limit, and the egress
//! policy enforced on the addresses actually connected to.

use super::request::Outgoing;
use crate::egress::Policy;
use crate::resources::delivery::{Header, RecordedResponse};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What distinguishes one client from another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub connect_timeout: Duration,
    pub egress: Policy,
}

/// Reused clients, so connections are pooled across attempts.
#[derive(Default)]
pub struct Clients(Mutex<HashMap<ClientKey, reqwest::Client>>);

impl Clients {
    pub fn get(&self, key: &ClientKey) -> reqwest::Client {
        let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(key.clone()).or_insert_with(|| build(key)).clone()
    }
}

fn build(key: &ClientKey) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(key.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .dns_resolver(Arc::new(CheckedResolver(key.egress.clone())))
        .user_agent(format!("hookrelay/{}", crate::VERSION))
        .build()
        .expect("the TLS backend initialises")
}

/// Resolves names with the system resolver and drops denied addresses; a
/// name with only denied addresses fails to resolve, naming the denial.
struct CheckedResolver(Policy);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut denied = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.denies(a.ip()) {
                    Some(net) => {
                        denied = Some(format!("{host} resolves to {}, in denied network {net}", a.ip()));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let reason = denied.unwrap_or_else(|| format!("{host} has no addresses"));
                return Err(Box::new(EgressDenied(reason)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("egress denied: {0}")]
struct EgressDenied(String);

/// Limits of one send.
pub struct Limits {
    pub timeout: Duration,
    pub body_limit: usize,
}

/// Sends `request`. `Err` is the reason no response was received, written
/// for people (it is recorded in the Delivery status).
pub async fn send(
    client: &reqwest::Client,
    egress: &Policy,
    request: &Outgoing,
    limits: &Limits,
) -> Result<(RecordedResponse, Option<Duration>), String> {
    let url = reqwest::Url::parse(&request.url).map_err(|e| format!("invalid URL: {e}"))?;
    // Literal addresses never reach the resolver: check them here.
    if let Some(host) = url.host_str() {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>()
            && let Some(net) = egress.denies(ip)
        {
            return Err(format!("egress denied: {ip} is in denied network {net}"));
        }
    }
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut builder = client.request(method, url).body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let exchange = async {
        let mut response = builder.send().await.map_err(describe)?;
        let status = response.status().as_u16();
        let headers: Vec<Header> = response
            .headers()
            .iter()
            .map(|(n, v)| Header {
                name: n.to_string(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })
            .collect();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            let room = limits.body_limit.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                truncated = true;
                break;
            }
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok((
            RecordedResponse {
                status_code: status,
                headers,
                body,
                body_truncated: truncated,
            },
            retry_after,
        ))
    };
    match tokio::time::timeout(limits.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}s", limits.timeout.as_secs_f64())),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and
/// treated as absent).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The error and its causes in one line: reqwest's top-level message alone
/// ("error sending request") does not say what went wrong.
fn describe(error: reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_parse() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
