//! `hookrelay console`: the CMS's webhook screens, served by hookrelay.
//!
//! Every Kubernetes call is made with the user's own identity (their
//! kubeconfig locally, their bearer token in a cluster), never with a
//! privileged ServiceAccount, so RBAC stays the one authority. Locally a
//! one-time login token (printed at start) is swapped for a session cookie;
//! in a cluster users sign in with a Kubernetes bearer token. Cookies are
//! HttpOnly and SameSite=Strict, every form carries a CSRF token, and the
//! Content-Security-Policy allows no inline script.

mod forms;
mod health;
mod pages;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kube::Client;
use rand::TryRngCore;
use rand::distr::{Alphanumeric, Distribution};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const COOKIE: &str = "hookrelay_session";
/// The cookie's name when served over TLS: browsers keep a `__Host-` cookie
/// to this origin, path / and HTTPS, so no subdomain or plain-HTTP page can
/// set or overwrite it.
const TLS_COOKIE: &str = "__Host-hookrelay_session";
/// A session lasts this long without use.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; past it the least recently used goes.
const MAX_SESSIONS: usize = 10_000;
/// Sign-ins tried with a token, each an API review: per second, and at once.
const LOGINS_PER_SECOND: f64 = 5.0;
const LOGIN_BURST: f64 = 20.0;

/// How users sign in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Auth {
    /// The caller's kubeconfig; a one-time login link is printed at start.
    Kubeconfig,
    /// A Kubernetes bearer token (ServiceAccount or OIDC) entered at /login.
    Token,
}

pub struct Settings {
    pub listen: SocketAddr,
    pub auth: Auth,
    /// Where the CMS posts events (shown with each hub).
    pub ingest_url: String,
    /// The namespace shown first.
    pub namespace: Option<String>,
    /// With `Auth::Kubeconfig`: the kubeconfig file and context to use
    /// (default: kubectl's).
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    /// A URL with `{traceId}`: trace ids become links to it.
    pub trace_url_template: Option<String>,
}

/// One signed-in user: their client (their identity) and CSRF token.
pub(crate) struct Session {
    pub client: Client,
    pub csrf: String,
    pub user: String,
    /// The deliveries as this user may see them.
    pub deliveries: Arc<dyn crate::store::Deliveries>,
    last_used: Mutex<Instant>,
}

impl Session {
    fn idle(&self) -> Duration {
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full() -> Self {
        Self {
            tokens: LOGIN_BURST,
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * LOGINS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(LOGIN_BURST);
        self.at = now;
        let taken = self.tokens >= 1.0;
        if taken {
            self.tokens -= 1.0;
        }
        taken
    }
}

pub(crate) struct Console {
    auth: Auth,
    /// Locally: the one-time login token, until used.
    login_token: Mutex<Option<String>>,
    /// Locally: the caller's client, handed to the session the token opens.
    local_client: Option<Client>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Sign-ins with a token, limited: each costs the API server a review.
    logins: Mutex<Bucket>,
    pub ingest_url: String,
    pub default_namespace: String,
    pub trace_url_template: Option<String>,
}

pub(crate) fn random_token(len: usize) -> String {
    Alphanumeric
        .sample_iter(&mut rand::rngs::OsRng.unwrap_err())
        .take(len)
        .map(char::from)
        .collect()
}

impl Console {
    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.idle() < SESSION_IDLE);
        let session = sessions.get(id).cloned()?;
        *session.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Some(session)
    }

    /// A session for `client`'s user, who reads deliveries through the
    /// Kubernetes API (the history API where it is served) with their own
    /// identity: the console holds no store credentials.
    async fn open_session(&self, client: Client, user: String) -> String {
        let id = random_token(48);
        let session = Arc::new(Session {
            deliveries: crate::store::history::for_user(&client).await,
            client,
            csrf: random_token(32),
            user,
            last_used: Mutex::new(Instant::now()),
        });
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.idle() < SESSION_IDLE);
        }
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().max_by_key(|(_, s)| s.idle()).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        id
    }

    fn close_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

fn cookie_of(request: &Request) -> Option<String> {
    let cookies = || {
        request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
    };
    let named = |name: &str| cookies().find_map(|c| c.strip_prefix(&format!("{name}=")).map(str::to_string));
    named(TLS_COOKIE).or_else(|| named(COOKIE))
}

/// Whether the browser reached the console over HTTPS (through a proxy
/// that terminates TLS and says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The session cookie: `Secure` and `__Host-` over TLS.
fn session_cookie(id: &str, tls: bool) -> String {
    if tls {
        format!("{TLS_COOKIE}={id}; Secure; HttpOnly; SameSite=Strict; Path=/")
    } else {
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
    }
}

/// What signing out sets: both names expired, as which one the browser
/// holds depends on how it came.
fn expired_cookies() -> [String; 2] {
    [false, true].map(|tls| format!("{}; Max-Age=0", session_cookie("", tls)))
}

/// Whether a request comes from another site's page (login CSRF): the
/// browser's `Sec-Fetch-Site` (sent to HTTPS and localhost pages only), or
/// an `Origin` naming another host or `null` (a sandboxed or no-referrer
/// page: the console's own pages send their origin).
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = text("origin") else {
        // Not a browser's cross-site request: nothing to forge.
        return false;
    };
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    // A proxy may pass the browser's host on in X-Forwarded-Host.
    let ours = [text("host"), text("x-forwarded-host")];
    !ours.into_iter().flatten().any(|host| Some(host) == origin_host)
}

/// Security headers on every answer.
async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // same-origin, not no-referrer: under no-referrer browsers send
    // `Origin: null` with the console's own form posts, which would then
    // look like another site's (see `cross_site`).
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Puts the session in the request, or answers "sign in".
async fn require_session(State(console): State<Arc<Console>>, mut request: Request, next: Next) -> Response {
    match cookie_of(&request).and_then(|id| console.session(&id)) {
        Some(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None if console.auth == Auth::Token => Redirect::to("/login").into_response(),
        None => pages::message(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "Open the link that `hookrelay console` printed when it started (it works once), or start it again.",
        ),
    }
}

/// Serves the console until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local_client = match settings.auth {
        Auth::Kubeconfig => Some(
            crate::kubernetes::user_client(settings.kubeconfig.as_deref(), settings.context.clone())
                .await?
                .0,
        ),
        Auth::Token => None,
    };
    let default_namespace = settings
        .namespace
        .clone()
        .or_else(|| local_client.as_ref().map(|c| c.default_namespace().to_string()))
        .unwrap_or_else(|| "default".into());
    let login_token = (settings.auth == Auth::Kubeconfig).then(|| random_token(32));
    let console = Arc::new(Console {
        auth: settings.auth,
        login_token: Mutex::new(login_token.clone()),
        local_client,
        sessions: Mutex::default(),
        logins: Mutex::new(Bucket::full()),
        ingest_url: settings.ingest_url.trim_end_matches('/').to_string(),
        default_namespace,
        trace_url_template: settings.trace_url_template.clone(),
    });
    let app = router(console);
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    match login_token {
        // The one line a person (or a test) reads to get in.
        Some(token) => println!("console: http://{addr}/?token={token}"),
        None => println!("console: http://{addr}/login"),
    }
    tracing::info!(listen = %addr, "console listening");
    crate::server::serve(listener, app, shutdown).await?;
    Ok(())
}

fn router(console: Arc<Console>) -> Router {
    let signed_in = Router::new()
        .route("/ns/{ns}", get(pages::hubs))
        .route("/ns/{ns}/hubs/{hub}", get(pages::webhooks))
        .route(
            "/ns/{ns}/hubs/{hub}/new",
            get(pages::new_webhook).post(pages::create_webhook),
        )
        .route(
            "/ns/{ns}/webhooks/{name}",
            get(pages::webhook).post(pages::update_webhook),
        )
        .route("/ns/{ns}/webhooks/{name}/active", post(pages::set_active))
        .route("/ns/{ns}/webhooks/{name}/paused", post(pages::set_paused))
        .route(
            "/ns/{ns}/webhooks/{name}/delete",
            get(pages::confirm_delete).post(pages::delete_webhook),
        )
        .route("/ns/{ns}/webhooks/{name}/secret", get(pages::secret_value))
        .route(
            "/ns/{ns}/webhooks/{name}/secret/regenerate",
            post(pages::regenerate_secret),
        )
        .route("/ns/{ns}/webhooks/{name}/secret/replace", post(pages::replace_secret))
        .route("/ns/{ns}/webhooks/{name}/preview", post(pages::preview))
        .route("/ns/{ns}/webhooks/{name}/test", post(pages::send_test))
        .route("/ns/{ns}/webhooks/{name}/deliveries", get(pages::deliveries_fragment))
        .route("/ns/{ns}/webhooks/{name}/health", get(pages::health_fragment))
        .route("/ns/{ns}/webhooks/{name}/deliveries/live", get(pages::deliveries_live))
        .route("/ns/{ns}/deliveries/{name}", get(pages::delivery))
        .route("/ns/{ns}/deliveries/{name}/redeliver", post(pages::redeliver))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(console.clone(), require_session));
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .merge(signed_in)
        .layer(middleware::from_fn(secure_headers))
        .with_state(console)
}

#[derive(serde::Deserialize)]
struct HomeQuery {
    token: Option<String>,
    ns: Option<String>,
}

/// `/?token=…` opens a session once; `/` goes to the first namespace.
async fn home(
    State(console): State<Arc<Console>>,
    axum::extract::Query(query): axum::extract::Query<HomeQuery>,
    request: Request,
) -> Response {
    if let Some(presented) = query.token {
        // Used once: taken before the session is opened.
        let valid = {
            let mut expected = console.login_token.lock().unwrap_or_else(|e| e.into_inner());
            let valid = expected
                .as_deref()
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(presented.as_bytes())));
            if valid {
                *expected = None;
            }
            valid
        };
        let client = console.local_client.clone();
        return match (valid, client) {
            (true, Some(client)) => {
                let id = console.open_session(client, "kubeconfig user".into()).await;
                let mut response = Redirect::to("/").into_response();
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_str(&session_cookie(&id, over_tls(request.headers()))).expect("ascii"),
                );
                response
            }
            _ => pages::message(
                StatusCode::UNAUTHORIZED,
                "Sign in",
                "That login link is not valid or was already used; start `hookrelay console` again for a new one.",
            ),
        };
    }
    if cookie_of(&request).and_then(|id| console.session(&id)).is_none() {
        return match console.auth {
            Auth::Token => Redirect::to("/login").into_response(),
            Auth::Kubeconfig => pages::message(
                StatusCode::UNAUTHORIZED,
                "Sign in",
                "Open the link that `hookrelay console` printed when it started (it works once), or start it again.",
            ),
        };
    }
    let ns = query
        .ns
        .filter(|n| !n.is_empty())
        .unwrap_or(console.default_namespace.clone());
    Redirect::to(&format!("/ns/{}", pages::url_part(&ns))).into_response()
}

async fn login_form(State(console): State<Arc<Console>>) -> Response {
    pages::login_page(console.auth == Auth::Token, None)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Signs in with a bearer token, checked by asking the API server who it is.
async fn login(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if console.auth != Auth::Token {
        return StatusCode::NOT_FOUND.into_response();
    }
    if cross_site(&headers) {
        // Another site's form would sign the browser in as its own user.
        return pages::message(
            StatusCode::FORBIDDEN,
            "Not signed in",
            "Sign in from the console's own page.",
        );
    }
    let admitted = console
        .logins
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(Instant::now());
    if !admitted {
        return pages::message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-ins",
            "Too many sign-ins were tried just now; wait a few seconds and try again.",
        );
    }
    let token = form.token.trim().to_string();
    let user = match client_for_token(&token).await {
        Ok((client, user)) => (client, user),
        Err(e) => return pages::login_page(true, Some(e)),
    };
    let id = console.open_session(user.0, user.1).await;
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session_cookie(&id, over_tls(&headers))).expect("ascii"),
    );
    response
}

/// A client that authenticates with `token` only (the cluster's address and
/// CA from the environment), and the user the API server says it is.
async fn client_for_token(token: &str) -> Result<(Client, String), String> {
    if token.is_empty() {
        return Err("Enter a Kubernetes bearer token.".into());
    }
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| format!("no cluster configuration: {e}"))?;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let review = k8s_openapi::api::authentication::v1::SelfSubjectReview::default();
    let api: kube::Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> = kube::Api::all(client.clone());
    match api.create(&Default::default(), &review).await {
        Ok(r) => {
            let user = r
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .unwrap_or_else(|| "unknown".into());
            Ok((client, user))
        }
        Err(kube::Error::Api(e)) if e.code == 401 => Err("The API server does not accept this token.".into()),
        Err(e) => Err(format!("Could not check the token: {e}")),
    }
}

async fn logout(State(console): State<Arc<Console>>, request: Request) -> Response {
    if let Some(id) = cookie_of(&request) {
        console.close_session(&id);
    }
    let mut response = Redirect::to("/").into_response();
    for expired in expired_cookies() {
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_str(&expired).expect("ascii"));
    }
    response
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/console.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn signing_out_expires_the_cookie_under_both_names() {
        assert_eq!(
            expired_cookies(),
            [
                "hookrelay_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                "__Host-hookrelay_session=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
            ]
        );
    }

    #[test]
    fn a_sign_in_from_another_site_is_told_apart() {
        let same = headers(&[
            ("host", "console.example:8443"),
            ("origin", "https://console.example:8443"),
        ]);
        assert!(!cross_site(&same));
        let other = headers(&[("host", "console.example:8443"), ("origin", "https://evil.example")]);
        assert!(cross_site(&other));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        // Over plain HTTP to a non-local address browsers send no
        // Sec-Fetch-Site; the origin decides, and `null` is not ours.
        let plain = headers(&[("host", "10.96.0.12"), ("origin", "http://10.96.0.12")]);
        assert!(!cross_site(&plain));
        assert!(cross_site(&headers(&[("host", "10.96.0.12"), ("origin", "null")])));
        let proxied = headers(&[
            ("host", "hookrelay-console:80"),
            ("x-forwarded-host", "console.example"),
            ("origin", "https://console.example"),
        ]);
        assert!(!cross_site(&proxied));
        assert!(!cross_site(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://x")
        ])));
        // Not a browser: no Origin, nothing to forge.
        assert!(!cross_site(&headers(&[("host", "console.example")])));
    }

    #[test]
    fn over_tls_the_cookie_is_secure_and_bound_to_the_host() {
        let tls = headers(&[("x-forwarded-proto", "https")]);
        assert!(over_tls(&tls) && !over_tls(&headers(&[])));
        let cookie = session_cookie("abc", true);
        assert!(cookie.starts_with("__Host-hookrelay_session=abc;") && cookie.contains("; Secure"));
        assert!(
            cookie.contains("Path=/") && !cookie.contains("Domain"),
            "__Host- needs Path=/ and no Domain"
        );
        assert!(!session_cookie("abc", false).contains("Secure"));
    }

    #[test]
    fn sign_ins_are_limited_and_refill() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: LOGIN_BURST,
            at: start,
        };
        let admitted = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(admitted, LOGIN_BURST as usize);
        assert!(bucket.take(start + Duration::from_secs(1)), "refilled after a second");
    }
}
