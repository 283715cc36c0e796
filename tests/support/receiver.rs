//! A webhook receiver for tests: listens on loopback, records every request
//! and answers with replies the test scripts per path (status, delay,
//! headers), changeable mid-flight.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The process that sent it (found from its socket while connected).
    pub sender_pid: Option<u32>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: vec![],
            body: String::new(),
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }
}

#[derive(Default)]
struct Book {
    received: Vec<Received>,
    scripted: HashMap<String, VecDeque<Reply>>,
    defaults: HashMap<String, Reply>,
    /// Whether to find each request's sending process (a /proc scan).
    identify: bool,
    /// (path, text in the body, times left): answered 500 while times last.
    failing: Vec<(String, String, usize)>,
    /// Requests being answered now, and the most ever at once, per path.
    in_flight: HashMap<String, usize>,
    most_in_flight: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    book: Arc<Mutex<Book>>,
}

impl Receiver {
    /// Starts on 127.0.0.1 with a free port; every path answers 200 until scripted.
    pub async fn start() -> Receiver {
        Self::start_with(false, "127.0.0.1").await
    }

    /// Starts on `ip` (an address of this machine that pods reach, in the
    /// end-to-end suite) with a free port.
    pub async fn start_on(ip: &str) -> Receiver {
        Self::start_with(false, ip).await
    }

    /// Like `start`, and notes the process that sent each request.
    pub async fn start_identifying() -> Receiver {
        Self::start_with(true, "127.0.0.1").await
    }

    async fn start_with(identify: bool, ip: &str) -> Receiver {
        let book = Arc::new(Mutex::new(Book {
            identify,
            ..Book::default()
        }));
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("binding the receiver on {ip}: {e}"));
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(answer)
            .layer(axum::Extension(LocalAddr(addr)))
            .with_state(book.clone());
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .expect("receiver")
        });
        Receiver { addr, book }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replies to the next requests on `path`, in order; then the default.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.book
            .lock()
            .unwrap()
            .scripted
            .entry(path.into())
            .or_default()
            .extend(replies);
    }

    /// The reply once the script of `path` is used up.
    pub fn set_default(&self, path: &str, reply: Reply) {
        self.book.lock().unwrap().defaults.insert(path.into(), reply);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.book
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Answers 500 to the next `times` requests on `path` whose body
    /// contains `needle` (others as scripted).
    pub fn fail_matching(&self, path: &str, needle: &str, times: usize) {
        self.book
            .lock()
            .unwrap()
            .failing
            .push((path.into(), needle.into(), times));
    }

    /// The most requests on `path` that were being answered at once.
    pub fn most_in_flight(&self, path: &str) -> usize {
        self.book.lock().unwrap().most_in_flight.get(path).copied().unwrap_or(0)
    }

    pub fn all_received(&self) -> Vec<Received> {
        self.book.lock().unwrap().received.clone()
    }

    /// Waits until `path` got at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        super::eventually(timeout, &format!("{n} requests on {path}"), || async {
            let got = self.received(path);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn answer(
    State(book): State<Arc<Mutex<Book>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(local): axum::Extension<LocalAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let identify = book.lock().unwrap().identify;
    let sender_pid = identify.then(|| pid_of_connection(peer.port(), local.port())).flatten();
    let reply = {
        let mut book = book.lock().unwrap();
        book.received.push(Received {
            method,
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
            sender_pid,
        });
        let now = book.in_flight.entry(path.clone()).or_default();
        *now += 1;
        let now = *now;
        let most = book.most_in_flight.entry(path.clone()).or_default();
        *most = (*most).max(now);
        let body_text = String::from_utf8_lossy(&book.received.last().expect("just pushed").body).into_owned();
        let failing = book
            .failing
            .iter_mut()
            .find(|(p, needle, left)| *p == path && *left > 0 && body_text.contains(needle.as_str()));
        let forced = failing.map(|rule| {
            rule.2 -= 1;
            Reply::status(500)
        });
        let scripted = forced.or_else(|| book.scripted.get_mut(&path).and_then(|q| q.pop_front()));
        scripted
            .or_else(|| book.defaults.get(&path).cloned())
            .unwrap_or(Reply::status(200))
    };
    // Answered (as far as this count goes) once the reply is built, or
    // abandoned when the sender closes the connection first (the server
    // drops this future then): either way no longer in flight.
    let _answering = InFlight { book: &book, path };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&value).unwrap(),
        );
    }
    response
}

/// One request being answered: counted out of `in_flight` when dropped.
struct InFlight<'a> {
    book: &'a Mutex<Book>,
    path: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self
            .book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight
            .get_mut(&self.path)
        {
            *n -= 1;
        }
    }
}

/// The receiver's own address, for finding a connection's other end.
#[derive(Clone, Copy)]
pub struct LocalAddr(SocketAddr);

impl LocalAddr {
    fn port(&self) -> u16 {
        self.0.port()
    }
}

/// The process owning the client end of the IPv4 TCP connection from local
/// port `client` to `server`: the socket's inode from /proc/net/tcp (an
/// open one: closed sockets in TIME_WAIT have inode 0), then the process
/// holding it.
pub fn pid_of_connection(client: u16, server: u16) -> Option<u32> {
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (port(fields.get(1)?)?, port(fields.get(2)?)?, *fields.get(9)?);
        (local == client && remote == server && inode != "0").then(|| inode.to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(wanted.as_str())))
            .then_some(pid)
    })
}
