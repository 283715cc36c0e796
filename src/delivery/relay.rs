//! Egress through the operator's HTTP CONNECT proxy (`--egress-proxy`), with
//! the egress policy kept on the address the proxy is asked to reach.
//!
//! Given a proxy, reqwest asks it for `CONNECT name:port` and the proxy
//! resolves the name: a name that resolves to a denied address at that
//! moment (DNS rebinding) would be reached. So each client's proxy is a
//! relay on loopback in this process. It reads what reqwest sends (`CONNECT
//! name:port`, or for an http:// handler the request in absolute form),
//! resolves the name, checks every address with the hub's policy, asks the
//! operator's proxy for `CONNECT <checked address>:port` and splices the two
//! connections. TLS stays end to end between reqwest and the handler (SNI
//! and Host are the name); the relay never sees inside it.

use super::http::{SendError, checked_addresses};
use crate::egress::Policy;
use base64::Engine as _;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The operator's proxy: where it listens and how to authenticate to it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EgressProxy {
    /// `host:port`, as connected to (not checked against any hub's policy:
    /// the operator chose it).
    authority: String,
    /// `Basic …` for `Proxy-Authorization`.
    authorization: Option<String>,
}

impl std::fmt::Debug for EgressProxy {
    // The credentials stay out of every log and panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EgressProxy({})", self.authority)
    }
}

impl std::fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.authority)
    }
}

impl EgressProxy {
    /// `url` is `http://host:port`, with or without `user:password@`;
    /// `credentials` (`user:password`) take the place of the URL's. Errors
    /// never quote the URL (it may hold the password).
    pub fn parse(url: &str, credentials: Option<&str>) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(url).map_err(|_| "not a URL such as \"http://egress-proxy.infra:3128\"".to_string())?;
        if url.scheme() != "http" {
            return Err(format!(
                "the scheme must be http (hookrelay speaks plain HTTP to the proxy and TLS end to end with handlers through it), not {:?}",
                url.scheme()
            ));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err("the URL names no host, as in \"http://egress-proxy.infra:3128\"".into());
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err("the URL is a proxy's address: no path or query".into());
        }
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let pair = match credentials {
            Some(pair) => Some(pair.trim().to_string()).filter(|p| !p.is_empty()),
            None if !url.username().is_empty() => Some(format!(
                "{}:{}",
                decode(url.username()),
                decode(url.password().unwrap_or(""))
            )),
            None => None,
        };
        if pair.as_deref().is_some_and(|p| !p.contains(':')) {
            return Err("the credentials are \"user:password\"".into());
        }
        Ok(Self {
            authority: format!("{host}:{port}"),
            authorization: pair.map(|p| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(p))),
        })
    }
}

/// The longest request or answer head the relay reads.
const HEAD_LIMIT: usize = 16 * 1024;

/// How long a refusal is kept for the attempt that caused it to read.
const REFUSAL_KEPT: Duration = Duration::from_secs(60);

/// A loopback relay in front of the operator's proxy, for one client (one
/// egress policy). Stops accepting when dropped.
pub struct Relay {
    /// Where it listens, as a proxy URL (tests connect without credentials).
    #[cfg(test)]
    url: String,
    /// reqwest's proxy: this relay, with its credentials.
    proxy: reqwest::Proxy,
    shared: Arc<Shared>,
    accept: tokio::task::AbortHandle,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct Shared {
    upstream: Arc<EgressProxy>,
    policy: Policy,
    connect_timeout: Duration,
    /// What reqwest must present: other processes of the pod may connect
    /// to loopback too, and must not use the operator's proxy through it.
    expected: String,
    /// Why the relay refused a destination (host, port), and when: read by
    /// the attempt, whose reqwest error only says the tunnel failed.
    refusals: Mutex<HashMap<(String, u16), (Instant, SendError)>>,
}

impl Relay {
    /// Listens on a free loopback port and serves until dropped.
    pub fn start(upstream: Arc<EgressProxy>, policy: Policy, connect_timeout: Duration) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let address = listener.local_addr()?;
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("hookrelay:{password}"))
        );
        let url = format!("http://{address}");
        let proxy = reqwest::Proxy::all(&url)
            .map_err(std::io::Error::other)?
            .basic_auth("hookrelay", &password);
        let shared = Arc::new(Shared {
            upstream,
            policy,
            connect_timeout,
            expected,
            refusals: Mutex::default(),
        });
        let serving = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serving.clone().serve(stream));
                    }
                    // Out of descriptors, say: let connections end first.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .abort_handle();
        Ok(Self {
            #[cfg(test)]
            url,
            proxy,
            shared,
            accept,
        })
    }

    /// reqwest's proxy setting for this relay, credentials included.
    pub fn proxy(&self) -> reqwest::Proxy {
        self.proxy.clone()
    }

    /// Where the relay listens (without its credentials).
    #[cfg(test)]
    fn proxy_url(&self) -> &str {
        &self.url
    }

    /// Why the relay refused `url`'s destination since `since`, if it did.
    pub fn refusal(&self, url: &reqwest::Url, since: Instant) -> Option<SendError> {
        let key = (normalized(url.host_str()?), url.port_or_known_default()?);
        let refusals = self.shared.refusals.lock().unwrap_or_else(|e| e.into_inner());
        refusals
            .get(&key)
            .filter(|(when, _)| *when >= since)
            .map(|(_, refusal)| refusal.clone())
    }
}

/// A host as compared: lower case, IPv6 without brackets.
fn normalized(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// What reqwest asked the relay for.
struct Wanted {
    host: String,
    port: u16,
    /// For an http:// handler, the request head to send it (origin form,
    /// without the relay's credentials); `None` for a CONNECT.
    forward: Option<Vec<u8>>,
}

impl Shared {
    async fn serve(self: Arc<Self>, mut client: TcpStream) {
        let Ok(Ok(Some((head, rest)))) = tokio::time::timeout(self.connect_timeout, read_head(&mut client)).await
        else {
            return;
        };
        let wanted = match self.wanted(&head) {
            Ok(wanted) => wanted,
            Err(status) => {
                let _ = client.write_all(status.as_bytes()).await;
                return;
            }
        };
        let (mut upstream, early) = match self.open(&wanted.host, wanted.port).await {
            Ok(opened) => opened,
            Err(refusal) => {
                self.keep(wanted.host, wanted.port, refusal);
                // A CONNECT gets a status reqwest reports as a failed
                // tunnel; a forwarded request gets no answer at all, which
                // reqwest could only take for the handler's.
                if wanted.forward.is_none() {
                    let _ = client
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
                return;
            }
        };
        let started = match &wanted.forward {
            None => client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await,
            Some(head) => upstream.write_all(head).await,
        };
        if started.is_err() || upstream.write_all(&rest).await.is_err() || client.write_all(&early).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }

    /// Keeps why a destination was refused, for the attempt to read.
    fn keep(&self, host: String, port: u16, refusal: SendError) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        refusals.retain(|_, (when, _)| now.duration_since(*when) < REFUSAL_KEPT);
        refusals.insert((host, port), (now, refusal));
    }

    /// What the request head asks for; `Err` is the answer to a request the
    /// relay does not serve.
    fn wanted(&self, head: &[u8]) -> Result<Wanted, &'static str> {
        const BAD: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
            (request.parse(head), request.method, request.path)
        else {
            return Err(BAD);
        };
        let presented = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
            .map(|h| h.value);
        if presented != Some(self.expected.as_bytes()) {
            return Err(
                "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"hookrelay\"\r\nContent-Length: 0\r\n\r\n",
            );
        }
        if method == "CONNECT" {
            let url = reqwest::Url::parse(&format!("http://{target}/")).map_err(|_| BAD)?;
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                return Err(BAD);
            };
            return Ok(Wanted {
                host: normalized(host),
                port,
                forward: None,
            });
        }
        let url = reqwest::Url::parse(target).map_err(|_| BAD)?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(BAD);
        };
        if url.scheme() != "http" {
            return Err(BAD);
        }
        // The handler gets the request as if sent to it directly: origin
        // form, no proxy headers. One request per tunnel: what follows on
        // the connection is passed as it is (the client asks for close too).
        let mut forward = format!("{method} {}", url.path());
        if let Some(query) = url.query() {
            forward.push('?');
            forward.push_str(query);
        }
        forward.push_str(if request.version == Some(0) {
            " HTTP/1.0\r\n"
        } else {
            " HTTP/1.1\r\n"
        });
        let mut forward = forward.into_bytes();
        for header in request.headers.iter() {
            let name = header.name.to_ascii_lowercase();
            if matches!(
                name.as_str(),
                "proxy-authorization" | "proxy-connection" | "connection" | "keep-alive"
            ) {
                continue;
            }
            forward.extend_from_slice(header.name.as_bytes());
            forward.extend_from_slice(b": ");
            forward.extend_from_slice(header.value);
            forward.extend_from_slice(b"\r\n");
        }
        forward.extend_from_slice(b"Connection: close\r\n\r\n");
        Ok(Wanted {
            host: normalized(host),
            port,
            forward: Some(forward),
        })
    }

    /// A tunnel through the operator's proxy to an allowed address of
    /// `host`, and any bytes the proxy sent after its answer.
    async fn open(&self, host: &str, port: u16) -> Result<(TcpStream, Vec<u8>), SendError> {
        let addresses = checked_addresses(&self.policy, host, port).await?;
        let mut last = None;
        for address in addresses {
            match self.tunnel(address).await {
                Ok(opened) => return Ok(opened),
                // The proxy could not reach this address: try the next one,
                // as a direct connection would.
                Err((next, refusal)) => {
                    last = Some(refusal);
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| SendError::Connection(format!("{host} has no addresses"))))
    }

    /// `CONNECT address` through the proxy. `Err` says whether another
    /// address may do better, and why this one failed.
    async fn tunnel(&self, address: SocketAddr) -> Result<(TcpStream, Vec<u8>), (bool, SendError)> {
        let proxy = &self.upstream;
        let failed = |what: String| (false, SendError::Connection(format!("egress proxy {proxy}: {what}")));
        let mut stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&proxy.authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(failed(format!("connection failed: {e}"))),
            Err(_) => return Err(failed("connection timed out".into())),
        };
        let mut request = format!("CONNECT {address} HTTP/1.1\r\nHost: {address}\r\n");
        if let Some(authorization) = &proxy.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return Err(failed(format!("connection failed: {e}")));
        }
        let (head, early) = match tokio::time::timeout(self.connect_timeout, read_head(&mut stream)).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(_) => return Err(failed(format!("no answer to CONNECT {address}"))),
            Err(_) => return Err(failed(format!("no answer to CONNECT {address} in time"))),
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let (Ok(httparse::Status::Complete(_)), Some(code)) = (response.parse(&head), response.code) else {
            return Err(failed(format!("not an HTTP answer to CONNECT {address}")));
        };
        if (200..300).contains(&code) {
            return Ok((stream, early));
        }
        // The reason phrase comes from the network: printable and short.
        let reason: String = response
            .reason
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(64)
            .collect();
        let hint = match code {
            407 => " (the proxy wants other credentials: --egress-proxy, HOOKRELAY_EGRESS_PROXY_CREDENTIALS)",
            403 => " (the proxy does not allow this destination)",
            _ => "",
        };
        Err((
            matches!(code, 502..=504),
            SendError::Connection(format!(
                "egress proxy {proxy} answered {code} {reason} to CONNECT {address}{hint}"
            )),
        ))
    }
}

/// Reads up to the end of an HTTP head: the head and what came after it;
/// `None` if the connection ended or the head is too long.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf[searched_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(searched_from + end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > HEAD_LIMIT {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_url_is_checked_and_its_credentials_never_quoted() {
        let proxy = EgressProxy::parse("http://user:p%40ss@egress.infra:3128", None).unwrap();
        assert_eq!(proxy.authority, "egress.infra:3128");
        assert_eq!(
            proxy.authorization.as_deref(),
            Some(
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("user:p@ss")
                )
                .as_str()
            )
        );
        assert!(!format!("{proxy:?} {proxy}").contains("p@ss"));
        let replaced = EgressProxy::parse("http://user:old@egress.infra:3128", Some("svc:new")).unwrap();
        assert_eq!(
            replaced.authorization.as_deref(),
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:new")).as_str())
        );
        assert_eq!(
            EgressProxy::parse("http://[::1]:8888", None).unwrap().authority,
            "[::1]:8888"
        );
        for (url, says) in [
            ("https://user:s3cret@egress.infra:3128", "scheme must be http"),
            ("egress.infra s3cret", "not a URL"),
            ("http://user:s3cret@egress.infra:3128/path", "no path"),
        ] {
            let error = EgressProxy::parse(url, None).unwrap_err();
            assert!(error.contains(says) && !error.contains("s3cret"), "{url}: {error}");
        }
        assert!(
            EgressProxy::parse("http://egress.infra:3128", Some("only-a-user"))
                .unwrap_err()
                .contains("user:password")
        );
    }

    use crate::delivery::http::{ClientKey, Clients, Limits, send};
    use crate::delivery::request::Outgoing;
    use crate::egress::Floor;

    type Seen = Arc<Mutex<Vec<String>>>;

    /// Accepts connections on 127.0.0.1 and hands each request head to
    /// `serve` with the stream; returns the port.
    async fn listen<F, R>(serve: F) -> u16
    where
        F: Fn(TcpStream, Vec<u8>) -> R + Send + Sync + 'static,
        R: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let serve = serve.clone();
                tokio::spawn(async move {
                    if let Ok(Some((head, _))) = read_head(&mut stream).await {
                        serve(stream, head).await;
                    }
                });
            }
        });
        port
    }

    /// The head's request line and the named header's value.
    fn line_and(head: &[u8], header: &str) -> String {
        let text = String::from_utf8_lossy(head);
        let line = text.lines().next().unwrap_or("").to_string();
        let value = text
            .lines()
            .find_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(header)))
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        format!("{line} | {value}")
    }

    /// A CONNECT proxy: notes each request line and its Proxy-Authorization;
    /// answers `status`, or with 200 connects where asked and splices.
    async fn upstream(status: u16) -> (u16, Seen) {
        let seen = Seen::default();
        let noted = seen.clone();
        let port = listen(move |mut client, head| {
            noted.lock().unwrap().push(line_and(&head, "proxy-authorization"));
            async move {
                let text = String::from_utf8_lossy(&head).to_string();
                let target = text.split(' ').nth(1).unwrap_or("").to_string();
                let upstream = match status {
                    200 => TcpStream::connect(target).await.ok(),
                    _ => None,
                };
                let Some(mut upstream) = upstream else {
                    let code = if status == 200 { 502 } else { status };
                    let _ = client.write_all(format!("HTTP/1.1 {code} No\r\n\r\n").as_bytes()).await;
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        })
        .await;
        (port, seen)
    }

    /// A handler on 127.0.0.1: notes each request line and Host, answers 200.
    async fn handler() -> (u16, Seen) {
        let seen = Seen::default();
        let noted = seen.clone();
        let port = listen(move |mut stream, head| {
            noted.lock().unwrap().push(line_and(&head, "host"));
            let proxy_header = String::from_utf8_lossy(&head).to_ascii_lowercase().contains("proxy-");
            async move {
                let status = if proxy_header { "400 Proxy Header" } else { "200 OK" };
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        })
        .await;
        (port, seen)
    }

    async fn post(proxy_port: u16, policy: Policy, url: String) -> Result<u16, SendError> {
        let proxy = EgressProxy::parse(&format!("http://svc:pw@127.0.0.1:{proxy_port}"), None).unwrap();
        let client = Clients::new(Some(Arc::new(proxy)))
            .get(&ClientKey {
                connect_timeout: Duration::from_secs(5),
                egress: policy.clone(),
                tls: None,
            })
            .unwrap();
        let outgoing = Outgoing {
            method: "POST",
            url,
            headers: vec![],
            recorded_headers: vec![],
            body: b"{}".to_vec(),
        };
        let limits = Limits {
            timeout: Duration::from_secs(10),
            body_limit: 1024,
        };
        send(&client, &policy, &outgoing, &limits)
            .await
            .map(|(response, _)| response.status_code)
    }

    fn loopback_allowed() -> Policy {
        Policy::from_spec(&Floor::with_loopback(&[]), None)
    }

    #[tokio::test]
    async fn a_named_handler_is_reached_through_the_proxy_at_a_checked_address() {
        let (proxy, asked) = upstream(200).await;
        let (port, received) = handler().await;
        let status = post(proxy, loopback_allowed(), format!("http://localhost:{port}/hook?x=1")).await;
        assert_eq!(status, Ok(200), "the handler answered, without proxy headers");
        let asked = asked.lock().unwrap().clone();
        let credentials = base64::engine::general_purpose::STANDARD.encode("svc:pw");
        // localhost may resolve to ::1 first, where nothing listens: the
        // proxy answers 502 and the next address is asked for.
        assert_eq!(
            asked.last().map(String::as_str),
            Some(format!("CONNECT 127.0.0.1:{port} HTTP/1.1 | Basic {credentials}").as_str())
        );
        assert!(
            asked
                .iter()
                .all(|a| a.starts_with("CONNECT ") && !a.contains("localhost")),
            "only checked addresses are asked for: {asked:?}"
        );
        assert_eq!(
            *received.lock().unwrap(),
            [format!("POST /hook?x=1 HTTP/1.1 | localhost:{port}")],
            "the handler sees the request as if sent directly"
        );
    }

    #[tokio::test]
    async fn a_tunnel_carries_requests_to_one_handler_only() {
        // Handlers that keep connections open whatever they are asked: a
        // pooled connection reused for another handler would show here.
        async fn keep_alive_handler() -> (u16, Seen) {
            let seen = Seen::default();
            let noted = seen.clone();
            let port = listen(move |mut stream, head| {
                let noted = noted.clone();
                async move {
                    let mut head = head;
                    loop {
                        noted.lock().unwrap().push(line_and(&head, "host"));
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        match read_head(&mut stream).await {
                            Ok(Some((next, _))) => head = next,
                            _ => return,
                        }
                    }
                }
            })
            .await;
            (port, seen)
        }
        let (proxy, _) = upstream(200).await;
        let (a, seen_a) = keep_alive_handler().await;
        let (b, seen_b) = keep_alive_handler().await;
        let policy = loopback_allowed();
        let client = Clients::new(Some(Arc::new(
            EgressProxy::parse(&format!("http://127.0.0.1:{proxy}"), None).unwrap(),
        )))
        .get(&ClientKey {
            connect_timeout: Duration::from_secs(5),
            egress: policy.clone(),
            tls: None,
        })
        .unwrap();
        let limits = Limits {
            timeout: Duration::from_secs(10),
            body_limit: 1024,
        };
        for (port, path) in [(a, "/1"), (b, "/2"), (a, "/3"), (b, "/4")] {
            let outgoing = Outgoing {
                method: "POST",
                url: format!("http://localhost:{port}{path}"),
                headers: vec![],
                recorded_headers: vec![],
                body: vec![],
            };
            let (response, _) = send(&client, &policy, &outgoing, &limits).await.unwrap();
            assert_eq!(response.status_code, 200);
        }
        let paths = |seen: &Seen| -> Vec<String> {
            let seen = seen.lock().unwrap();
            seen.iter()
                .map(|s| s.split(' ').nth(1).unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            (paths(&seen_a), paths(&seen_b)),
            (vec!["/1".into(), "/3".into()], vec!["/2".into(), "/4".into()])
        );
    }

    #[tokio::test]
    async fn a_denied_address_is_never_asked_of_the_proxy() {
        let (proxy, asked) = upstream(200).await;
        let (port, received) = handler().await;
        for scheme in ["http", "https"] {
            let error = post(proxy, Policy::default(), format!("{scheme}://localhost:{port}/hook"))
                .await
                .unwrap_err();
            assert_eq!(error.label(), "denied", "{error}");
            assert!(
                error.to_string().starts_with("egress denied: localhost resolves to"),
                "{error}"
            );
        }
        assert!(asked.lock().unwrap().is_empty() && received.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_proxys_refusal_is_what_the_attempt_records() {
        let (proxy, asked) = upstream(407).await;
        let (port, received) = handler().await;
        for scheme in ["http", "https"] {
            let error = post(proxy, loopback_allowed(), format!("{scheme}://127.0.0.1:{port}/hook"))
                .await
                .unwrap_err();
            let text = error.to_string();
            assert_eq!(error.label(), "connection_error");
            assert!(
                text.contains(&format!(
                    "egress proxy 127.0.0.1:{proxy} answered 407 No to CONNECT 127.0.0.1:{port}"
                )) && text.contains("credentials")
                    && !text.contains("pw"),
                "{text}"
            );
        }
        assert_eq!(asked.lock().unwrap().len(), 2);
        assert!(received.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_relay_serves_only_its_own_client() {
        let relay = Relay::start(
            Arc::new(EgressProxy::parse("http://127.0.0.1:9", None).unwrap()),
            loopback_allowed(),
            Duration::from_secs(5),
        )
        .unwrap();
        let stranger = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(relay.proxy_url()).unwrap())
            .build()
            .unwrap();
        let answer = stranger.get("http://127.0.0.1:9/").send().await.unwrap();
        assert_eq!(answer.status(), 407);
    }

    /// A reader that gives one chunk per read, as a socket may.
    struct Chunks(std::collections::VecDeque<&'static [u8]>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(chunk) = self.0.pop_front() {
                buf.put_slice(chunk);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_is_read_to_its_end_and_the_rest_kept() {
        // The blank line straddles two reads; the body's start comes with it.
        let mut reader = Chunks([&b"POST http://h/ HTTP/1.1\r\nA: b\r\n\r"[..], b"\nbo", b"dy"].into());
        let (head, rest) = read_head(&mut reader).await.unwrap().unwrap();
        assert_eq!(head, b"POST http://h/ HTTP/1.1\r\nA: b\r\n\r\n");
        assert_eq!(rest, b"bo");
        assert_eq!(reader.0, [&b"dy"[..]], "nothing read past the read that ended the head");
        // Ended before the blank line, or longer than the limit: none.
        let mut ended = Chunks([&b"POST / HTTP/1.1\r\n"[..]].into());
        assert_eq!(read_head(&mut ended).await.unwrap(), None);
        let block: &'static [u8] = &[b'a'; 4096];
        let mut endless = Chunks(std::iter::repeat_n(block, HEAD_LIMIT / 4096 + 2).collect());
        assert_eq!(read_head(&mut endless).await.unwrap(), None);
        assert!(!endless.0.is_empty(), "refused at the limit, not at the end");
    }
}
