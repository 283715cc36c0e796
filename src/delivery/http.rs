//! Sending an attempt: pooled HTTP clients (one per hub setting), no
//! redirects, timeouts, response bodies read up to a limit, and the egress
//! policy enforced on the addresses actually connected to.

use super::relay::{EgressProxy, Relay};
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
    /// A webhook's client certificate and CAs; a renewed Secret makes a new key.
    pub tls: Option<Tls>,
}

/// TLS material of a webhook, as PEM.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Certificate chain and private key presented to the handler.
    pub identity: Option<Arc<[u8]>>,
    /// CA certificates trusted instead of the public roots.
    pub roots: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Tls {
    // The private key stays out of every log and panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("roots", &self.roots.as_ref().map(|r| r.len()))
            .finish()
    }
}

impl Tls {
    /// Parses the material, so a broken Secret is reported by its field
    /// (the parser's own messages are not repeated: they may quote bytes).
    pub fn check(&self) -> Result<(Option<reqwest::Identity>, Vec<reqwest::Certificate>), String> {
        let identity = match &self.identity {
            None => None,
            Some(pem) => Some(reqwest::Identity::from_pem(pem).map_err(|_| {
                "spec.tls.clientCertSecretRef: tls.crt and tls.key are not a PEM certificate chain and its private key"
                    .to_string()
            })?),
        };
        let roots = match &self.roots {
            None => vec![],
            Some(pem) => reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or("spec.tls.caSecretRef: the key does not hold PEM certificates")?,
        };
        Ok((identity, roots))
    }
}

/// How long a client nobody used is kept (its pool, its relay, and the key
/// material of a certificate since renewed).
const IDLE_CLIENT: Duration = Duration::from_secs(600);

/// Clients kept at most, the least recently used dropped first: each holds
/// a pool (and, with an egress proxy, a loopback listener), and a tenant
/// that keeps changing its hub's egress or TLS settings makes new ones.
const MOST_CLIENTS: usize = 256;

/// A client for a hub's handlers: reqwest's, and with an egress proxy the
/// relay it goes through.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    relay: Option<Arc<Relay>>,
}

/// Reused clients, so connections are pooled across attempts.
#[derive(Default)]
pub struct Clients {
    /// The operator's proxy every request goes through, if any.
    proxy: Option<Arc<EgressProxy>>,
    clients: Mutex<HashMap<ClientKey, (Client, std::time::Instant)>>,
}

impl Clients {
    pub fn new(proxy: Option<Arc<EgressProxy>>) -> Self {
        Self {
            proxy,
            clients: Mutex::default(),
        }
    }

    /// The client for `key`; `Err` names the TLS field that cannot be used.
    pub fn get(&self, key: &ClientKey) -> Result<Client, String> {
        let now = std::time::Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((client, used)) = clients.get_mut(key) {
            *used = now;
            return Ok(client.clone());
        }
        let client = self.build(key)?;
        clients.retain(|_, (_, used)| now.duration_since(*used) < IDLE_CLIENT);
        if clients.len() >= MOST_CLIENTS
            && let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            clients.remove(&oldest);
        }
        clients.insert(key.clone(), (client.clone(), now));
        Ok(client)
    }

    fn build(&self, key: &ClientKey) -> Result<Client, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY from the environment would make the proxy's
            // address the only one checked against the egress policy.
            .no_proxy()
            .connect_timeout(key.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(CheckedResolver(key.egress.clone())))
            .user_agent(format!("hookrelay/{}", crate::VERSION));
        let relay = match &self.proxy {
            None => None,
            Some(proxy) => {
                let relay = Relay::start(proxy.clone(), key.egress.clone(), key.connect_timeout)
                    .map_err(|e| format!("the egress proxy relay cannot listen on loopback: {e}"))?;
                builder = builder.proxy(relay.proxy());
                Some(Arc::new(relay))
            }
        };
        if let Some(tls) = &key.tls {
            let (identity, roots) = tls.check()?;
            if let Some(identity) = identity {
                builder = builder.identity(identity);
            }
            if !roots.is_empty() {
                builder = builder.tls_built_in_root_certs(false);
                for root in roots {
                    builder = builder.add_root_certificate(root);
                }
            }
        }
        let http = builder
            .build()
            .map_err(|_| "spec.tls: the client certificate or CAs are not usable for TLS".to_string())?;
        Ok(Client { http, relay })
    }
}

/// Why a host cannot be reached.
pub(super) enum Unreachable {
    /// The name does not resolve.
    Lookup(std::io::Error),
    /// Every address it resolves to is denied: the reason.
    Denied(String),
}

impl From<Unreachable> for SendError {
    fn from(unreachable: Unreachable) -> Self {
        match unreachable {
            Unreachable::Lookup(e) => SendError::Connection(format!("the name does not resolve: {e}")),
            Unreachable::Denied(reason) => SendError::Denied(EgressDenied(reason).to_string()),
        }
    }
}

/// The addresses `host` resolves to (the system resolver; a literal is
/// itself) that `policy` allows.
pub(super) async fn checked_addresses(policy: &Policy, host: &str, port: u16) -> Result<Vec<SocketAddr>, Unreachable> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(Unreachable::Lookup)?
        .collect();
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
        return Err(Unreachable::Denied(
            denied.unwrap_or_else(|| format!("{host} has no addresses")),
        ));
    }
    Ok(allowed)
}

/// Resolves names with the system resolver and drops denied addresses; a
/// name with only denied addresses fails to resolve, naming the denial.
struct CheckedResolver(Policy);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            match checked_addresses(&policy, name.as_str(), 0).await {
                Ok(allowed) => Ok(Box::new(allowed.into_iter()) as Addrs),
                Err(Unreachable::Lookup(e)) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                Err(Unreachable::Denied(reason)) => Err(Box::new(EgressDenied(reason)) as _),
            }
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

/// Why no response was received: the text recorded in the attempt (written
/// for people) and, by its kind, the label of the attempts metric.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Nothing was sent: the request could not be made (configuration,
    /// credentials). The text starts "not sent:".
    #[error("{0}")]
    NotSent(String),
    /// The egress policy refused the handler's address.
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Timeout(String),
    /// No answer for any other reason (refused, reset, TLS, DNS).
    #[error("{0}")]
    Connection(String),
}

impl SendError {
    /// The attempts metric's `result` label.
    pub fn label(&self) -> &'static str {
        match self {
            SendError::NotSent(_) => "not_sent",
            SendError::Denied(_) => "denied",
            SendError::Timeout(_) => "timeout",
            SendError::Connection(_) => "connection_error",
        }
    }
}

/// Sends `request`. `Err` is the reason no response was received.
pub async fn send(
    client: &Client,
    egress: &Policy,
    request: &Outgoing,
    limits: &Limits,
) -> Result<(RecordedResponse, Option<Duration>), SendError> {
    let url = reqwest::Url::parse(&request.url).map_err(|e| SendError::Connection(format!("invalid URL: {e}")))?;
    // Literal addresses never reach the resolver: check them here.
    if let Some(host) = url.host_str() {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>()
            && let Some(net) = egress.denies(ip)
        {
            return Err(SendError::Denied(format!(
                "egress denied: {ip} is in denied network {net}"
            )));
        }
    }
    let method =
        reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| SendError::Connection(e.to_string()))?;
    let mut builder = client.http.request(method, url.clone()).body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    // reqwest would send the next request on a relayed http:// connection
    // in a proxy's absolute form, which the relay passes as it is: one
    // request per connection keeps the handler's requests in origin form.
    if client.relay.is_some() && url.scheme() == "http" {
        builder = builder.header(reqwest::header::CONNECTION, "close");
    }
    let started = std::time::Instant::now();
    // Through the relay, reqwest only learns that the tunnel failed; the
    // relay kept why.
    let fail = |error| match client.relay.as_ref().and_then(|relay| relay.refusal(&url, started)) {
        Some(refusal) => refusal,
        None => describe(error),
    };
    let exchange = async {
        let mut response = builder.send().await.map_err(fail)?;
        let status = response.status().as_u16();
        let (headers, headers_truncated) = record_headers(response.headers());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            let room = limits.body_limit.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                truncated = true;
                break;
            }
        }
        // Measured as stored: escaping can make a body several times longer.
        let (body, cut) = fit_escaped(&String::from_utf8_lossy(&body), limits.body_limit);
        Ok((
            RecordedResponse {
                status_code: status,
                headers,
                headers_truncated,
                body,
                body_truncated: truncated || cut,
            },
            retry_after,
        ))
    };
    match tokio::time::timeout(limits.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(SendError::Timeout(format!(
            "timed out after {}s",
            limits.timeout.as_secs_f64()
        ))),
    }
}

/// Response headers recorded at most (the rest are counted as truncated).
pub const MAX_RECORDED_HEADERS: usize = 32;
/// Bytes of response header names and values recorded at most.
pub const MAX_RECORDED_HEADER_BYTES: usize = 4096;
/// One header value recorded at most this long.
const MAX_RECORDED_HEADER_VALUE: usize = 512;
/// Response headers whose values are credentials or sessions: recorded as
/// `<redacted>`.
pub const SENSITIVE_RESPONSE_HEADERS: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "cookie",
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "www-authenticate",
    "x-amz-security-token",
    "x-aws-ec2-metadata-token",
    "x-csrf-token",
    "x-xsrf-token",
];

/// Response headers not recorded: about the connection or the transfer,
/// never about the handler's answer (each costs the API server on every
/// write and every watcher).
const UNRECORDED_RESPONSE_HEADERS: &[&str] = &[
    "date",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

/// Response headers as recorded: connection headers left out, sensitive values redacted, each value cut
/// at 512 bytes, at most 32 headers and 4 KiB in all; `true` when any were
/// left out or cut.
pub fn record_headers(headers: &reqwest::header::HeaderMap) -> (Vec<Header>, bool) {
    let mut recorded = Vec::new();
    let (mut bytes, mut truncated) = (0, false);
    for (name, value) in headers {
        if UNRECORDED_RESPONSE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = if SENSITIVE_RESPONSE_HEADERS.contains(&name.as_str()) {
            super::request::REDACTED.to_string()
        } else {
            let text = String::from_utf8_lossy(value.as_bytes());
            let (cut, was_cut) = cut_at(&text, MAX_RECORDED_HEADER_VALUE);
            truncated |= was_cut;
            cut
        };
        let size = name.as_str().len() + value.len();
        if recorded.len() == MAX_RECORDED_HEADERS || bytes + size > MAX_RECORDED_HEADER_BYTES {
            truncated = true;
            break;
        }
        bytes += size;
        recorded.push(Header {
            name: name.to_string(),
            value,
        });
    }
    (recorded, truncated)
}

/// `text` cut to at most `limit` bytes at a character boundary.
fn cut_at(text: &str, limit: usize) -> (String, bool) {
    if text.len() <= limit {
        return (text.to_string(), false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

/// `text` cut so that, escaped as a JSON string (as it is stored), it takes
/// at most `limit` bytes; `true` when cut.
pub fn fit_escaped(text: &str, limit: usize) -> (String, bool) {
    let mut size = 0;
    for (i, c) in text.char_indices() {
        size += match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if size > limit {
            return (text[..i].to_string(), true);
        }
    }
    (text.to_string(), false)
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and
/// treated as absent).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The error and its causes in one line: reqwest's top-level message alone
/// ("error sending request") does not say what went wrong.
fn describe(error: reqwest::Error) -> SendError {
    // reqwest quotes the URL, userinfo included (`https://user:pass@…`);
    // the record names the URL already, redacted.
    let error = error.without_url();
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        error.to_string()
    };
    let timed_out = error.is_timeout();
    let (mut denied, mut io_timeout) = (false, false);
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        denied |= s.downcast_ref::<EgressDenied>().is_some();
        io_timeout |= s
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    // The handler's TLS said what is missing: name the field that supplies it.
    if text.contains("CertificateRequired") {
        text.push_str(" (the handler requires a client certificate: spec.tls.clientCertSecretRef)");
    } else if text.contains("UnknownIssuer") {
        text.push_str(" (the handler's certificate is not trusted: spec.tls.caSecretRef names the CAs to trust)");
    }
    if denied {
        SendError::Denied(text)
    } else if timed_out || io_timeout {
        SendError::Timeout(text)
    } else {
        SendError::Connection(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_do_not_repeat_the_url_and_its_credentials() {
        // Nothing listens on port 9 of 127.0.0.1: the connection is refused.
        let client = reqwest::Client::new();
        let error = client.get("http://user:s3cr3t@127.0.0.1:9/").send().await.unwrap_err();
        let text = describe(error).to_string();
        assert!(!text.contains("s3cr3t") && text.contains("connection failed"), "{text}");
    }

    #[tokio::test]
    async fn why_nothing_came_back_gives_the_metric_label() {
        let refused = reqwest::Client::new()
            .get("http://127.0.0.1:9/")
            .send()
            .await
            .unwrap_err();
        assert_eq!(describe(refused).label(), "connection_error");
        let outgoing = Outgoing {
            method: "POST",
            url: "http://127.0.0.1:9/".into(),
            headers: vec![],
            recorded_headers: vec![],
            body: vec![],
        };
        let deny_loopback = Policy::from_spec(&crate::egress::Floor::with(&["127.0.0.0/8".parse().unwrap()]), None);
        let limits = Limits {
            timeout: Duration::from_secs(5),
            body_limit: 1024,
        };
        let client = Clients::default()
            .get(&ClientKey {
                connect_timeout: Duration::from_secs(5),
                egress: deny_loopback.clone(),
                tls: None,
            })
            .unwrap();
        let denied = send(&client, &deny_loopback, &outgoing, &limits).await.unwrap_err();
        assert_eq!(
            (denied.label(), denied.to_string().starts_with("egress denied")),
            ("denied", true)
        );
    }

    #[tokio::test]
    async fn clients_are_kept_up_to_a_bound_the_least_recently_used_dropped() {
        let clients = Clients::default();
        let key = |ms: usize| ClientKey {
            connect_timeout: Duration::from_millis(100 + ms as u64),
            egress: Policy::default(),
            tls: None,
        };
        for n in 0..MOST_CLIENTS + 10 {
            clients.get(&key(n)).unwrap();
            // The first stays in use throughout.
            clients.get(&key(0)).unwrap();
        }
        let kept = clients.clients.lock().unwrap();
        assert_eq!(kept.len(), MOST_CLIENTS);
        assert!(kept.contains_key(&key(0)) && kept.contains_key(&key(MOST_CLIENTS + 9)));
        assert!(!kept.contains_key(&key(1)), "the least recently used went first");
    }

    #[test]
    fn escaped_size_is_what_json_stores() {
        let samples = ["plain", "quote \" and \\ back", "ctl \u{1}\u{2}\n\t", "Grüße €", ""];
        for s in samples {
            let stored = serde_json::to_string(s).unwrap().len() - 2;
            let (kept, cut) = fit_escaped(s, stored);
            assert_eq!((kept.as_str(), cut), (s, false), "{s:?} fits its own escaped size");
            if stored > 0 {
                let (kept, cut) = fit_escaped(s, stored - 1);
                assert!(cut && serde_json::to_string(&kept).unwrap().len() - 2 < stored, "{s:?}");
            }
        }
        // 64 KiB of control characters would be 384 KiB escaped; it is cut.
        let hostile = "\u{1}".repeat(65536);
        let (kept, cut) = fit_escaped(&hostile, 4096);
        assert!(cut && serde_json::to_string(&kept).unwrap().len() <= 4096 + 2);
    }

    #[test]
    fn recorded_headers_are_redacted_and_bounded() {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        let mut h = HeaderMap::new();
        h.insert("set-cookie", HeaderValue::from_static("session=abc"));
        h.insert("www-authenticate", HeaderValue::from_static("Bearer realm=x"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        let (recorded, truncated) = record_headers(&h);
        let value = |n: &str| recorded.iter().find(|x| x.name == n).map(|x| x.value.clone());
        assert_eq!(value("set-cookie").as_deref(), Some("<redacted>"));
        assert_eq!(value("www-authenticate").as_deref(), Some("<redacted>"));
        assert_eq!(value("content-type").as_deref(), Some("text/plain"));
        assert!(!truncated);
        let mut big = HeaderMap::new();
        for i in 0..400 {
            big.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"v".repeat(450)).unwrap(),
            );
        }
        let (recorded, truncated) = record_headers(&big);
        let bytes: usize = recorded.iter().map(|h| h.name.len() + h.value.len()).sum();
        assert!(truncated && recorded.len() <= MAX_RECORDED_HEADERS && bytes <= MAX_RECORDED_HEADER_BYTES);
    }

    #[test]
    fn retry_after_seconds_parse() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
