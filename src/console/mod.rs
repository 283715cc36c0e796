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
mod pages;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
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
/// A session lasts this long without use.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);

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
    /// Where deliveries live; each user reads them with their own identity.
    pub store: crate::store::Store,
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

pub(crate) struct Console {
    auth: Auth,
    /// Locally: the one-time login token, until used.
    login_token: Mutex<Option<String>>,
    /// Locally: the caller's client, handed to the session the token opens.
    local_client: Option<Client>,
    store: crate::store::Store,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub ingest_url: String,
    pub default_namespace: String,
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
        sessions.retain(|_, s| s.last_used.lock().map(|t| t.elapsed() < SESSION_IDLE).unwrap_or(false));
        let session = sessions.get(id).cloned()?;
        *session.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Some(session)
    }

    fn open_session(&self, client: Client, user: String) -> String {
        let id = random_token(48);
        let session = Arc::new(Session {
            deliveries: self.store.for_user(&client),
            client,
            csrf: random_token(32),
            user,
            last_used: Mutex::new(Instant::now()),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), session);
        id
    }

    fn close_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

fn cookie_of(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string))
}

fn session_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/")
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
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
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
        Auth::Kubeconfig => Some(Client::try_default().await?),
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
        store: settings.store.clone(),
        sessions: Mutex::default(),
        ingest_url: settings.ingest_url.trim_end_matches('/').to_string(),
        default_namespace,
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
        let mut expected = console.login_token.lock().unwrap_or_else(|e| e.into_inner());
        let valid = expected
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(presented.as_bytes())));
        let client = console.local_client.clone();
        return match (valid, client) {
            (true, Some(client)) => {
                *expected = None;
                let id = console.open_session(client, "kubeconfig user".into());
                let mut response = Redirect::to("/").into_response();
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_str(&session_cookie(&id)).expect("ascii"),
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
async fn login(State(console): State<Arc<Console>>, axum::Form(form): axum::Form<LoginForm>) -> Response {
    if console.auth != Auth::Token {
        return StatusCode::NOT_FOUND.into_response();
    }
    let token = form.token.trim().to_string();
    let user = match client_for_token(&token).await {
        Ok((client, user)) => (client, user),
        Err(e) => return pages::login_page(true, Some(e)),
    };
    let id = console.open_session(user.0, user.1);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session_cookie(&id)).expect("ascii"),
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
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("hookrelay_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
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
