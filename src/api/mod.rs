//! `hookrelay api`: delivery history through the Kubernetes API, whatever
//! the store. An aggregated API (as metrics-server is): an APIService
//! routes `history.hookrelay.dev/v1alpha1` to this server; the
//! kube-apiserver authenticates the user and forwards the request with the
//! user in headers over TLS with its front-proxy certificate
//! (`front_proxy`). The API server has authorised the request already
//! (RBAC for `deliveries.history.hookrelay.dev`); this server asks again
//! with a SubjectAccessReview for the user it was told, so a request that
//! reached it another way is not served on trust. Users never hold the
//! database's credentials. The chart's roles grant `deliveries` in both
//! groups together, so who may read Delivery objects may read history.
//!
//! Its group ranks above the CRDs' (`GROUP_PRIORITY`), so with the
//! Postgres store `kubectl get deliveries` reads this API; with the
//! Kubernetes store no APIService is made and the same command reads the
//! Delivery objects.

pub mod front_proxy;
mod openapi;
pub mod register;
pub mod table;
mod watch;
mod write;

use crate::resources::Delivery;
use crate::store::{Deliveries, Store, StoreError};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use front_proxy::{FrontProxy, Peer, User};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The API group history is served in (the Delivery CRD's is `hookrelay.dev`).
pub const GROUP: &str = crate::resources::HISTORY_GROUP;
pub const VERSION: &str = crate::resources::HISTORY_VERSION;
/// Above the 1000 CRD groups get, so kubectl resolves `deliveries` here
/// when both exist.
pub const GROUP_PRIORITY: i32 = 1100;
/// How long an access review's answer is reused for the same question.
const REVIEW_TTL: Duration = Duration::from_secs(10);
/// The most deliveries one page of a list holds (a list without `limit`
/// gets pages this long, with `continue`): a page is held in memory at once
/// (each delivery up to the Delivery budget), and this process serves every
/// tenant.
const PAGE_MOST: usize = 500;
/// Connections open at once; more are closed as they arrive (anyone in
/// the cluster may reach the port, though only the API server is served).
const MAX_CONNECTIONS: usize = 256;

pub struct Settings {
    pub listen: SocketAddr,
    pub store: Store,
    /// PEM files of the serving certificate and key; generated (self-signed
    /// for the registered Service's name) when absent.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Make (and at stop remove) the APIService and the Service it points
    /// to, in this namespace: for local use and tests.
    pub register: Option<String>,
}

#[derive(Clone)]
struct Api {
    deliveries: Arc<dyn Deliveries>,
    front_proxy: Arc<FrontProxy>,
    client: kube::Client,
    reviews: Arc<Mutex<HashMap<Question, (bool, Instant)>>>,
    /// Watches open at once (each reads the store every second).
    watches: Arc<tokio::sync::Semaphore>,
}

/// One access review's question.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Question {
    user: User,
    verb: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

pub async fn run(
    client: kube::Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let front_proxy = FrontProxy::load(&client).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    let service_namespace = settings.register.clone().unwrap_or_else(|| "default".into());
    let (cert_pem, key_pem) = match &settings.tls {
        Some((cert, key)) => (
            std::fs::read_to_string(cert).map_err(|e| anyhow::anyhow!("--tls-cert-file {}: {e}", cert.display()))?,
            std::fs::read_to_string(key).map_err(|e| anyhow::anyhow!("--tls-key-file {}: {e}", key.display()))?,
        ),
        None => register::self_signed(&service_namespace)?,
    };
    let tls = tls_config(&front_proxy, &cert_pem, &key_pem)?;
    let registered = match &settings.register {
        Some(namespace) => Some(register::Registration::make(&client, namespace, address, &cert_pem).await?),
        None => None,
    };
    let api = Api {
        deliveries: settings.store.deliveries(&client),
        front_proxy: Arc::new(front_proxy),
        client,
        reviews: Arc::default(),
        watches: Arc::new(tokio::sync::Semaphore::new(watch::MAX_WATCHES)),
    };
    tracing::info!(%address, store = settings.store.name(), "serving {GROUP}/{VERSION}");
    let served = serve_tls(listener, routes(api), tls, shutdown).await;
    if let Some(registration) = registered {
        registration.remove().await;
    }
    served
}

fn routes(api: Api) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/apis", get(group_list))
        .route(&format!("/apis/{GROUP}"), get(group))
        .route("/openapi/v3", get(openapi::index))
        .route(&format!("/openapi/v3/apis/{GROUP}/{VERSION}"), get(openapi::document))
        .route(&base, get(resources))
        .route(&format!("{base}/deliveries"), get(list_all))
        .route(
            &format!("{base}/namespaces/{{namespace}}/deliveries"),
            get(list).post(write::create),
        )
        .route(
            &format!("{base}/namespaces/{{namespace}}/deliveries/{{name}}"),
            get(get_one).merge(patch(write::redeliver)),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
            )
        })
        .with_state(api)
}

/// A request not served, answered as a Kubernetes Status object.
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

fn status(code: StatusCode, reason: &'static str, message: String) -> Failure {
    Failure { code, reason, message }
}

/// 503 for a read this server depends on that failed (`what` could not be
/// done: the client may try again); the cause goes to the log, not to the
/// client.
fn unavailable(what: &str, error: impl std::fmt::Display) -> Failure {
    tracing::warn!(%error, "{what} failed");
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        format!("{what} failed; try again"),
    )
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure { code, reason, message } = self;
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        });
        (code, axum::Json(body)).into_response()
    }
}

impl Api {
    /// The request's user, as the front proxy says.
    fn user(&self, peer: &Peer, headers: &HeaderMap) -> Result<User, Failure> {
        self.front_proxy
            .user(peer, headers)
            .map_err(|refused| status(StatusCode::UNAUTHORIZED, "Unauthorized", refused.to_string()))
    }

    /// Whether `user` may `verb` deliveries (`name`, or any) in `namespace`
    /// (every namespace: `None`), by RBAC for Delivery objects.
    async fn authorize(
        &self,
        user: &User,
        verb: &'static str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), Failure> {
        let question = Question {
            user: user.clone(),
            verb,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
        };
        let cached = {
            let reviews = self.reviews.lock().unwrap_or_else(|e| e.into_inner());
            reviews
                .get(&question)
                .filter(|(_, at)| at.elapsed() < REVIEW_TTL)
                .map(|(allowed, _)| *allowed)
        };
        let allowed = match cached {
            Some(allowed) => allowed,
            None => {
                let allowed = self.review(&question).await?;
                let mut reviews = self.reviews.lock().unwrap_or_else(|e| e.into_inner());
                reviews.retain(|_, (_, at)| at.elapsed() < REVIEW_TTL);
                reviews.insert(question, (allowed, Instant::now()));
                allowed
            }
        };
        if allowed {
            return Ok(());
        }
        let scope = match namespace {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".into(),
        };
        Err(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "deliveries.{GROUP}{} is forbidden: User \"{}\" cannot {verb} resource \"deliveries\" in API group \"{GROUP}\"{scope}",
                name.map(|n| format!(" \"{n}\"")).unwrap_or_default(),
                user.name,
            ),
        ))
    }

    async fn review(&self, question: &Question) -> Result<bool, Failure> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(question.user.name.clone()),
                groups: Some(question.user.groups.clone()),
                extra: Some(question.user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: question.namespace.clone(),
                    verb: Some(question.verb.into()),
                    group: Some(GROUP.into()),
                    resource: Some("deliveries".into()),
                    name: question.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| unavailable("the access review", e))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

async fn group_list() -> impl IntoResponse {
    axum::Json(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [group_body()] }))
}

async fn group() -> impl IntoResponse {
    axum::Json(group_body())
}

fn group_body() -> Value {
    let version = json!({ "groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION });
    json!({ "kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version], "preferredVersion": version })
}

async fn resources() -> impl IntoResponse {
    axum::Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{
            "name": "deliveries",
            "singularName": "delivery",
            "namespaced": true,
            "kind": "Delivery",
            "verbs": ["create", "get", "list", "patch", "watch"],
            "categories": ["hookrelay"],
        }],
    }))
}

/// A list's (or watch's) query: selectors, paging and watching, as the
/// Kubernetes API spells them.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    field_selector: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<bool>,
}

impl ListQuery {
    fn watches(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true" | "1"))
    }
}

async fn list_all(
    State(api): State<Api>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, Failure> {
    listing(api, peer, headers, None, query).await
}

async fn list(
    State(api): State<Api>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, Failure> {
    listing(api, peer, headers, Some(namespace), query).await
}

async fn listing(
    api: Api,
    peer: Peer,
    headers: HeaderMap,
    namespace: Option<String>,
    query: ListQuery,
) -> Result<Response, Failure> {
    let user = api.user(&peer, &headers)?;
    let verb = if query.watches() { "watch" } else { "list" };
    api.authorize(&user, verb, namespace.as_deref(), None).await?;
    let selector = Selector::parse(query.label_selector.as_deref(), query.field_selector.as_deref())
        .map_err(|message| status(StatusCode::BAD_REQUEST, "BadRequest", message))?;
    let table = table::wants_table(accept(&headers));
    if query.watches() {
        return watch::serve(api, namespace, selector, query, table).await;
    }
    let after = match query.continue_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => Some(Continue::decode(token).map_err(|message| status(StatusCode::GONE, "Expired", message))?),
        None => None,
    };
    // Where changes stood before the first page was read: a watch from
    // there misses nothing the list did not show.
    let position = match &after {
        Some(after) => after.position.clone(),
        None => api.position().await?,
    };
    let page = api
        .page(
            namespace.as_deref(),
            &selector,
            after.as_ref().map(|a| a.after.as_str()),
            query.limit,
        )
        .await?;
    let next = page.next.map(|after| {
        Continue {
            after,
            position: position.clone(),
        }
        .encode()
    });
    if table {
        let table = table::table(&page.items, &position, next.as_deref(), jiff::Timestamp::now());
        return Ok(axum::Json(table).into_response());
    }
    let mut metadata = json!({ "resourceVersion": position });
    if let Some(next) = next {
        metadata["continue"] = json!(next);
    }
    let list = json!({
        "kind": "DeliveryList",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata,
        "items": page.items,
    });
    Ok(axum::Json(list).into_response())
}

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

async fn get_one(
    State(api): State<Api>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let user = api.user(&peer, &headers)?;
    api.authorize(&user, "get", Some(&namespace), Some(&name)).await?;
    let delivery = api.deliveries.get(&namespace, &name).await.map_err(store_error)?;
    let object = object(&delivery.ok_or_else(|| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("deliveries.{GROUP} \"{name}\" not found"),
        )
    })?);
    if table::wants_table(accept(&headers)) {
        return Ok(axum::Json(table::table(&[object], "0", None, jiff::Timestamp::now())).into_response());
    }
    Ok(axum::Json(object).into_response())
}

impl Api {
    /// Where the store's changes stand (`"0"` where it has no positions).
    async fn position(&self) -> Result<String, Failure> {
        Ok(self
            .deliveries
            .position()
            .await
            .map_err(store_error)?
            .unwrap_or_else(|| "0".into()))
    }

    /// A page of the deliveries a list shows, as objects of this API,
    /// newest first: at most `limit` (and `PAGE_MOST`) read from the store,
    /// those the selector takes kept (so a page may hold fewer, even none,
    /// and still continue).
    async fn page(
        &self,
        namespace: Option<&str>,
        selector: &Selector,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page, Failure> {
        let limit = limit.filter(|l| *l > 0).unwrap_or(PAGE_MOST).min(PAGE_MOST);
        let listed = self
            .deliveries
            .page(namespace, selector.webhook(), after, limit)
            .await
            .map_err(store_error)?;
        let items = listed
            .deliveries
            .iter()
            .map(object)
            .filter(|o| selector.matches(o))
            .collect();
        Ok(Page {
            items,
            next: listed.next,
        })
    }
}

/// A store failure as the API answers it; what went wrong inside is logged,
/// not shown.
fn store_error(e: StoreError) -> Failure {
    match e {
        StoreError::NotFound(message) => status(StatusCode::NOT_FOUND, "NotFound", message),
        StoreError::Busy => status(
            StatusCode::CONFLICT,
            "Conflict",
            "an attempt of this delivery is under way; ask again when it is recorded".into(),
        ),
        StoreError::Expired(message) => status(StatusCode::GONE, "Expired", message),
        StoreError::Invalid(message) => status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message),
        StoreError::Forbidden(message) => status(StatusCode::FORBIDDEN, "Forbidden", message),
        e => unavailable("reading the delivery store", e),
    }
}

/// A delivery as this API shows it: the stored object, in this group.
fn object(delivery: &Delivery) -> Value {
    let mut value = serde_json::to_value(delivery).unwrap_or_default();
    value["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
    value["kind"] = json!("Delivery");
    // A row of the Postgres store has no creation time of its own: it was
    // made when ingest received the event.
    if value["metadata"]["creationTimestamp"].is_null() {
        value["metadata"]["creationTimestamp"] = value["spec"]["event"]["receivedAt"].clone();
    }
    value
}

struct Page {
    items: Vec<Value>,
    /// The store's token for the next page, if there is one.
    next: Option<String>,
}

/// A continue token: where the store's next page starts, and the position
/// the first page was read at (every page reports it, so a watch after
/// the last page misses nothing changed since the first).
#[derive(serde::Serialize, Deserialize)]
struct Continue {
    after: String,
    position: String,
}

impl Continue {
    fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("strings"))
    }

    fn decode(token: &str) -> Result<Self, String> {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| "the continue token is not one this server gave; list again from the start".to_string())
    }
}

/// Label and field selectors over the objects a list returns: `k=v`,
/// `k==v`, `k!=v`, and `k` (exists) for labels; `=`, `==`, `!=` on
/// `metadata.name`, `metadata.namespace`, `spec.webhook`, `spec.hub`,
/// `spec.event.name`, `spec.event.id` and `status.phase` for fields.
#[derive(Debug, Default, PartialEq)]
struct Selector {
    labels: Vec<(String, Op, String)>,
    fields: Vec<(String, Op, String)>,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Op {
    Equals,
    NotEquals,
    Exists,
}

const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.webhook",
    "spec.hub",
    "spec.event.name",
    "spec.event.id",
    "status.phase",
];

impl Selector {
    fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        let terms = |text: Option<&str>, what: &str| -> Result<Vec<(String, Op, String)>, String> {
            text.unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|term| {
                    let (key, op, value) = if let Some((k, v)) = term.split_once("!=") {
                        (k, Op::NotEquals, v)
                    } else if let Some((k, v)) = term.split_once("==") {
                        (k, Op::Equals, v)
                    } else if let Some((k, v)) = term.split_once('=') {
                        (k, Op::Equals, v)
                    } else if what == "labelSelector" && !term.contains([' ', '(', '!']) {
                        (term, Op::Exists, "")
                    } else {
                        return Err(format!(
                            "{what} {term:?}: this server takes key=value, key==value, key!=value{} terms, comma-separated",
                            if what == "labelSelector" { " and key" } else { "" }
                        ));
                    };
                    Ok((key.trim().to_string(), op, value.trim().to_string()))
                })
                .collect()
        };
        let selector = Self {
            labels: terms(labels, "labelSelector")?,
            fields: terms(fields, "fieldSelector")?,
        };
        if let Some((field, _, _)) = selector.fields.iter().find(|(f, _, _)| !FIELDS.contains(&f.as_str())) {
            return Err(format!(
                "fieldSelector {field:?} is not supported; these are: {}",
                FIELDS.join(", ")
            ));
        }
        Ok(selector)
    }

    /// The one webhook the selector asks for, which the store can filter by.
    fn webhook(&self) -> Option<&str> {
        let label = self
            .labels
            .iter()
            .find(|(k, op, _)| k == crate::resources::WEBHOOK_LABEL && *op == Op::Equals);
        let field = self
            .fields
            .iter()
            .find(|(k, op, _)| k == "spec.webhook" && *op == Op::Equals);
        label.or(field).map(|(_, _, v)| v.as_str())
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label_ok = self.labels.iter().all(|(key, op, value)| {
            let have = labels.get(key).and_then(Value::as_str);
            match op {
                Op::Exists => have.is_some(),
                Op::Equals => have == Some(value.as_str()),
                Op::NotEquals => have != Some(value.as_str()),
            }
        });
        let field_ok = self.fields.iter().all(|(path, op, value)| {
            let have = path
                .split('.')
                .try_fold(object, |v, key| v.get(key))
                .and_then(Value::as_str);
            // A delivery not yet attempted has no phase: it is Pending.
            let have = match (have, path.as_str()) {
                (None, "status.phase") => Some("Pending"),
                (have, _) => have,
            };
            match op {
                Op::Equals | Op::Exists => have == Some(value.as_str()),
                Op::NotEquals => have != Some(value.as_str()),
            }
        });
        label_ok && field_ok
    }
}

/// rustls for the API port: our serving certificate; client certificates
/// verified against the front-proxy CA when given (requests without one
/// reach the handlers, which refuse them, so the error is readable).
fn tls_config(front_proxy: &FrontProxy, cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(front_proxy.ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS until `shutdown`, telling each request which
/// front-proxy certificate (if any) its connection presented.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            stream = crate::server::next_connection(&listener) => stream,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        connections.spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            let Ok(Ok(stream)) = handshake else {
                tracing::debug!("a TLS handshake failed or took too long");
                return;
            };
            let peer = Peer(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| front_proxy::common_name(leaf)),
            );
            let service = hyper_util::service::TowerToHyperService::new(router.layer(axum::Extension(peer)));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, at: &str, webhook: &str, phase: Option<&str>) -> Value {
        let mut item = json!({
            "metadata": {
                "name": name, "namespace": "a", "creationTimestamp": at,
                "labels": { crate::resources::WEBHOOK_LABEL: webhook },
            },
            "spec": { "webhook": webhook },
        });
        if let Some(phase) = phase {
            item["status"] = json!({ "phase": phase });
        }
        item
    }

    #[test]
    fn continue_tokens_carry_the_stores_place_and_the_first_pages_position() {
        let token = Continue {
            after: "41".into(),
            position: "7:7:".into(),
        }
        .encode();
        let back = Continue::decode(&token).unwrap();
        assert_eq!((back.after.as_str(), back.position.as_str()), ("41", "7:7:"));
        assert!(Continue::decode("not-a-token").is_err());
    }

    #[test]
    fn selectors_filter_by_labels_and_fields_and_name_what_is_unsupported() {
        let shop = item("d1", "2026-12-04T10:00:00Z", "shop", Some("Failed"));
        let search = item("d2", "2026-12-04T10:00:00Z", "search", None);
        let by_label = Selector::parse(Some("hookrelay.dev/webhook=shop"), None).unwrap();
        assert_eq!(by_label.webhook(), Some("shop"));
        assert!(by_label.matches(&shop) && !by_label.matches(&search));
        let pending = Selector::parse(None, Some("status.phase=Pending")).unwrap();
        assert!(pending.matches(&search) && !pending.matches(&shop));
        let not_shop = Selector::parse(Some("hookrelay.dev/webhook!=shop"), None).unwrap();
        assert_eq!(not_shop.webhook(), None);
        assert!(not_shop.matches(&search) && !not_shop.matches(&shop));
        let error = Selector::parse(None, Some("spec.payload=x")).unwrap_err();
        assert!(
            error.contains("spec.payload") && error.contains("status.phase"),
            "{error}"
        );
        let error = Selector::parse(Some("tier in (a,b)"), None).unwrap_err();
        assert!(error.contains("key=value"), "{error}");
    }
}
