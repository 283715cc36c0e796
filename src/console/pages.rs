//! The console's screens, following the CMS's: hubs, a hub's webhooks, the
//! add/edit form, the secret, recent deliveries (live), delivery details,
//! and test events. Every call uses the signed-in user's client.

// Helpers hand a finished error page back to the handler, which returns it
// at once: the size of `Response` in `Err` costs nothing that matters here.
#![allow(clippy::result_large_err)]

use super::forms::{self, FieldErrors, Fields};
use super::{Console, Session};
use crate::events::{CATALOGUE, sample_payload};
use crate::resources::delivery::{Delivery, Header, Phase};
use crate::resources::webhook::WebhookSpec;
use crate::resources::{Hub, ROTATE_SECRET_ANNOTATION, Webhook};
use crate::secrets;
use crate::store::{NewDelivery, StoreError, allowed};
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// `expr?` for a handler that answers with a page: an `Err` is the page.
macro_rules! or_page {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(page) => return page,
        }
    };
}

/// What every page shows around its content.
pub(crate) struct Chrome {
    pub ns: String,
    pub user: String,
    pub csrf: String,
    pub can_edit: bool,
}

/// A path segment as it goes into a URL.
pub(crate) fn url_part(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '_' => c.to_string(),
            c => c.to_string().bytes().map(|b| format!("%{b:02X}")).collect(),
        })
        .collect()
}

fn page(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the page: {e}")).into_response(),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    text: &'a str,
}

pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    (status, page(MessagePage { title, text })).into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

pub(crate) fn login_page(enabled: bool, error: Option<String>) -> Response {
    if !enabled {
        return Redirect::to("/").into_response();
    }
    page(LoginPage { error })
}

/// Says what the API server refused, naming RBAC when that is why.
fn api_problem(e: &kube::Error, doing: &str) -> Response {
    match e {
        kube::Error::Api(s) if s.code == 403 => message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "Your Kubernetes identity may not {doing}. Ask for the hookrelay-edit role in this namespace. ({})",
                s.message
            ),
        ),
        kube::Error::Api(s) if s.code == 404 => message(StatusCode::NOT_FOUND, "Not found", &s.message),
        other => message(
            StatusCode::BAD_GATEWAY,
            "The API server did not answer",
            &format!("{doing}: {other}"),
        ),
    }
}

/// The page for what a delivery store said no to (`doing`: what the user
/// asked for, e.g. "redeliver d-1").
fn store_problem(e: &StoreError, doing: &str) -> Response {
    match e {
        StoreError::Forbidden(reason) => message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "Your Kubernetes identity may not {doing}. Ask for the hookrelay-edit role in this namespace. ({reason})"
            ),
        ),
        StoreError::NotFound(reason) => message(StatusCode::NOT_FOUND, "Not found", reason),
        StoreError::Busy => message(
            StatusCode::CONFLICT,
            "An attempt is under way",
            "This delivery is being attempted right now; redeliver it once that attempt is recorded.",
        ),
        StoreError::Database(reason) => message(StatusCode::BAD_GATEWAY, "The delivery store did not answer", reason),
        other => message(
            StatusCode::BAD_GATEWAY,
            "The API server did not answer",
            &format!("{doing}: {other}"),
        ),
    }
}

/// Whether the user may change Webhooks in `ns` (RBAC decides; the console
/// only hides what would be refused anyway).
async fn may_edit(client: &kube::Client, ns: &str) -> bool {
    allowed(client, ns, "update", "webhooks", None).await
}

async fn chrome(session: &Session, ns: &str) -> Chrome {
    Chrome {
        ns: ns.to_string(),
        user: session.user.clone(),
        csrf: session.csrf.clone(),
        can_edit: may_edit(&session.client, ns).await,
    }
}

/// Refuses a form without this session's CSRF token.
fn checked(session: &Session, body: &Bytes) -> Result<Fields, Response> {
    let fields = Fields::parse(body);
    if bool::from(fields.get("csrf").as_bytes().ct_eq(session.csrf.as_bytes())) {
        Ok(fields)
    } else {
        Err(message(
            StatusCode::FORBIDDEN,
            "Form refused",
            "The form did not come from this console session (its CSRF token is missing or wrong). Reload the page and try again.",
        ))
    }
}

// ---- Hubs ----------------------------------------------------------------

struct HubRow {
    name: String,
    label: String,
    active: usize,
    total: usize,
    ready: bool,
    ingest_url: String,
}

#[derive(Template)]
#[template(path = "hubs.html")]
struct HubsPage {
    chrome: Chrome,
    hubs: Vec<HubRow>,
}

pub(crate) async fn hubs(
    State(console): State<Arc<Console>>,
    Extension(session): Extension<Arc<Session>>,
    Path(ns): Path<String>,
) -> Response {
    let hubs = match Api::<Hub>::namespaced(session.client.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => return api_problem(&e, &format!("list Hubs in namespace {ns}")),
    };
    let webhooks = Api::<Webhook>::namespaced(session.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let rows = hubs
        .iter()
        .map(|h| {
            let name = h.name_any();
            let of_hub: Vec<&Webhook> = webhooks.iter().filter(|w| w.spec.hub == name).collect();
            HubRow {
                label: h.spec.label.clone(),
                active: of_hub.iter().filter(|w| w.spec.active).count(),
                total: of_hub.len(),
                ready: h
                    .status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
                ingest_url: format!("{}/v1/namespaces/{ns}/hubs/{name}/events", console.ingest_url),
                name,
            }
        })
        .collect();
    page(HubsPage {
        chrome: chrome(&session, &ns).await,
        hubs: rows,
    })
}

// ---- A hub's webhooks ----------------------------------------------------

struct WebhookRow {
    name: String,
    label: String,
    url: String,
    events: String,
    active: bool,
    last_status: String,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    hub: String,
    hub_label: String,
    webhooks: Vec<WebhookRow>,
}

pub(crate) async fn webhooks(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, hub)): Path<(String, String)>,
) -> Response {
    let hub_object = match Api::<Hub>::namespaced(session.client.clone(), &ns).get(&hub).await {
        Ok(h) => h,
        Err(e) => return api_problem(&e, &format!("read Hub {hub}")),
    };
    let list = match Api::<Webhook>::namespaced(session.client.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => return api_problem(&e, "list Webhooks"),
    };
    let mut rows: Vec<WebhookRow> = list
        .into_iter()
        .filter(|w| w.spec.hub == hub)
        .map(|w| WebhookRow {
            name: w.name_any(),
            label: w.spec.label.clone(),
            url: crate::delivery::request::redact_url(&w.spec.url),
            events: w.spec.events.join(", "),
            active: w.spec.active,
            last_status: w
                .status
                .as_ref()
                .and_then(|s| s.last_delivery.as_ref())
                .and_then(|d| d.status_code)
                .map(|c| c.to_string())
                .unwrap_or_else(|| "—".into()),
        })
        .collect();
    rows.sort_by(|a, b| a.label.cmp(&b.label));
    page(WebhooksPage {
        chrome: chrome(&session, &ns).await,
        hub_label: hub_object.spec.label.clone(),
        hub,
        webhooks: rows,
    })
}

// ---- Add / edit ----------------------------------------------------------

struct EventChoice {
    name: String,
    label: String,
    description: String,
    checked: bool,
}

struct EventGroup {
    name: String,
    events: Vec<EventChoice>,
}

/// The form as shown: values, and errors by field.
struct FormView {
    label: String,
    url: String,
    groups: Vec<EventGroup>,
    other_events: String,
    active: bool,
    method: String,
    headers: String,
    filters: String,
    custom_payload: String,
    errors: FieldErrors,
}

impl FormView {
    fn error(&self, field: &str) -> String {
        self.errors.get(field).cloned().unwrap_or_default()
    }

    fn of(spec: &WebhookSpec, hub: &Hub, errors: FieldErrors) -> Self {
        let mut groups: Vec<EventGroup> = vec![];
        let mut known: Vec<String> = vec![];
        for info in CATALOGUE {
            let choice = EventChoice {
                name: info.name.into(),
                label: format!("{} - {}", info.group, info.label),
                description: info.description.into(),
                checked: spec.events.iter().any(|e| e == info.name),
            };
            known.push(info.name.into());
            match groups.iter_mut().find(|g| g.name == info.group) {
                Some(g) => g.events.push(choice),
                None => groups.push(EventGroup {
                    name: info.group.into(),
                    events: vec![choice],
                }),
            }
        }
        if !hub.spec.custom_events.is_empty() {
            groups.push(EventGroup {
                name: "This hub's custom events".into(),
                events: hub
                    .spec
                    .custom_events
                    .iter()
                    .map(|e| {
                        known.push(e.clone());
                        EventChoice {
                            name: e.clone(),
                            label: e.clone(),
                            description: String::new(),
                            checked: spec.events.contains(e),
                        }
                    })
                    .collect(),
            });
        }
        let other: Vec<&str> = spec
            .events
            .iter()
            .filter(|e| !known.contains(e))
            .map(String::as_str)
            .collect();
        Self {
            label: spec.label.clone(),
            url: spec.url.clone(),
            groups,
            other_events: other.join("\n"),
            active: spec.active,
            method: spec.method.as_str().into(),
            headers: forms::headers_text(spec),
            filters: forms::filters_text(spec),
            custom_payload: spec.custom_payload.clone().unwrap_or_default(),
            errors,
        }
    }
}

struct SecretView {
    secret_name: String,
    revealed: Option<String>,
    previous_until: Option<String>,
    generated: bool,
}

struct DeliveryRow {
    name: String,
    event: String,
    time: String,
    attempts: u32,
    status_code: String,
    outcome: String,
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    chrome: Chrome,
    hub: String,
    /// `None` for a new webhook.
    name: Option<String>,
    form: FormView,
    ready: Option<String>,
    secret: Option<SecretView>,
    deliveries: Vec<DeliveryRow>,
    outcome: String,
    event_names: Vec<String>,
    /// The event the sample payload is of (selected first).
    first_event: String,
    sample: String,
    preview: Option<String>,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "deliveries.html")]
struct DeliveriesFragment {
    chrome: Chrome,
    deliveries: Vec<DeliveryRow>,
}

fn new_spec(hub: &str) -> WebhookSpec {
    WebhookSpec::new(hub, "", "", &[])
}

async fn read_webhook(session: &Session, ns: &str, name: &str) -> Result<Webhook, Response> {
    Api::<Webhook>::namespaced(session.client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| api_problem(&e, &format!("read Webhook {name}")))
}

async fn hub_of(session: &Session, ns: &str, hub: &str) -> Result<Hub, Response> {
    Api::<Hub>::namespaced(session.client.clone(), ns)
        .get(hub)
        .await
        .map_err(|e| api_problem(&e, &format!("read Hub {hub}")))
}

async fn form_page(
    session: &Session,
    ns: &str,
    hub: &Hub,
    name: Option<&str>,
    spec: &WebhookSpec,
    errors: FieldErrors,
    extra: PageExtras,
) -> Response {
    let chrome = chrome(session, ns).await;
    let mut view = WebhookPage {
        hub: hub.name_any(),
        name: name.map(str::to_string),
        form: FormView::of(spec, hub, errors),
        ready: None,
        secret: None,
        deliveries: vec![],
        outcome: extra.outcome.clone(),
        event_names: CATALOGUE
            .iter()
            .map(|e| e.name.to_string())
            .chain(hub.spec.custom_events.iter().cloned())
            .collect(),
        first_event: first_event(spec),
        sample: serde_json::to_string_pretty(&sample_payload(&first_event(spec))).expect("JSON"),
        preview: extra.preview,
        notice: extra.notice,
        chrome,
    };
    if let Some(name) = name {
        if let Ok(w) = Api::<Webhook>::namespaced(session.client.clone(), ns).get(name).await {
            view.ready = w
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    if c.status == "True" {
                        "Ready".to_string()
                    } else {
                        format!("Not ready ({}): {}", c.reason, c.message)
                    }
                });
            view.secret = secret_view(session, ns, &w, extra.reveal).await;
        }
        view.deliveries = recent(session, ns, name, &extra.outcome).await;
    }
    page(view)
}

/// The first concrete event a webhook subscribes to (the catalogue's first
/// for a wildcard or none).
fn first_event(spec: &WebhookSpec) -> String {
    spec.events
        .iter()
        .find(|e| !e.ends_with('*'))
        .cloned()
        .unwrap_or_else(|| CATALOGUE[0].name.to_string())
}

#[derive(Default)]
struct PageExtras {
    reveal: bool,
    outcome: String,
    preview: Option<String>,
    notice: Option<String>,
}

async fn secret_view(session: &Session, ns: &str, webhook: &Webhook, reveal: bool) -> Option<SecretView> {
    let reference = webhook
        .spec
        .secret_ref
        .clone()
        .or_else(|| webhook.status.as_ref().and_then(|s| s.secret_ref.clone()))?;
    let mut view = SecretView {
        secret_name: reference.name.clone(),
        revealed: None,
        previous_until: None,
        generated: webhook.spec.secret_ref.is_none(),
    };
    // Read only when needed: a user without Secret rights still sees the page.
    if let Ok(secret) = Api::<Secret>::namespaced(session.client.clone(), ns)
        .get(&reference.name)
        .await
    {
        view.previous_until = secrets::previous_expires_at(&secret)
            .filter(|t| *t > jiff::Timestamp::now())
            .map(|t| t.to_string());
        if reveal {
            view.revealed = secrets::value(&secret, &reference.key).map(str::to_string);
        }
    }
    Some(view)
}

/// Deliveries a webhook's list shows at most.
const SHOWN: usize = 50;

/// The webhook's recent deliveries, newest first, optionally by outcome.
async fn recent(session: &Session, ns: &str, webhook: &str, outcome: &str) -> Vec<DeliveryRow> {
    let phases: &[Phase] = match outcome {
        "succeeded" => &[Phase::Succeeded],
        "failed" => &[Phase::Failed, Phase::Cancelled],
        "retrying" => &[Phase::Retrying, Phase::Pending],
        _ => &[],
    };
    let mut list = session
        .deliveries
        .list(Some(ns), Some(webhook), phases, SHOWN)
        .await
        .unwrap_or_default();
    list.sort_by_key(|d| std::cmp::Reverse(d.spec.event.received_at.0));
    list.into_iter()
        .filter(|d| phases.is_empty() || phases.contains(&d.status.as_ref().map(|s| s.phase).unwrap_or_default()))
        .take(SHOWN)
        .map(|d| {
            let s = d.status.clone().unwrap_or_default();
            DeliveryRow {
                name: d.name_any(),
                event: d.spec.event.name.clone(),
                time: d.spec.event.received_at.0.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                attempts: s.attempt_count,
                status_code: s.last_status_code.map(|c| c.to_string()).unwrap_or_else(|| "—".into()),
                outcome: format!("{:?}", s.phase),
            }
        })
        .collect()
}

pub(crate) async fn new_webhook(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, hub)): Path<(String, String)>,
) -> Response {
    let hub = or_page!(hub_of(&session, &ns, &hub).await);
    form_page(
        &session,
        &ns,
        &hub,
        None,
        &new_spec(&hub.name_any()),
        FieldErrors::new(),
        PageExtras::default(),
    )
    .await
}

/// A Kubernetes name for a new webhook, from its label.
fn name_for(label: &str) -> String {
    let mut name: String = label
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-");
    name.truncate(40);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() { "webhook".into() } else { name }
}

pub(crate) async fn create_webhook(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, hub)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let hub = or_page!(hub_of(&session, &ns, &hub).await);
    let spec = match forms::spec_from(&fields, &hub.name_any()) {
        Ok(s) => s,
        Err(errors) => {
            let shown = echo(&fields, &hub.name_any());
            return form_page(&session, &ns, &hub, None, &shown, errors, PageExtras::default()).await;
        }
    };
    let api: Api<Webhook> = Api::namespaced(session.client.clone(), &ns);
    let mut webhook = Webhook::new(&name_for(&spec.label), spec.clone());
    // A unique name even for two webhooks with one label.
    webhook.metadata.name = None;
    webhook.metadata.generate_name = Some(format!("{}-", name_for(&spec.label)));
    match api.create(&PostParams::default(), &webhook).await {
        Ok(created) => Redirect::to(&format!(
            "/ns/{}/webhooks/{}",
            url_part(&ns),
            url_part(&created.name_any())
        ))
        .into_response(),
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
            form_page(
                &session,
                &ns,
                &hub,
                None,
                &spec,
                forms::errors_from_api(&e.message),
                PageExtras::default(),
            )
            .await
        }
        Err(e) => api_problem(&e, "create a Webhook"),
    }
}

/// What the user typed, shown again next to the errors.
fn echo(fields: &Fields, hub: &str) -> WebhookSpec {
    let mut spec = new_spec(hub);
    spec.label = fields.get("label").into();
    spec.url = fields.get("url").into();
    spec.events = fields.all("events");
    spec.active = fields.get("active") == "on";
    spec.custom_payload = Some(fields.get("customPayload").to_string()).filter(|s| !s.is_empty());
    spec
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct WebhookQuery {
    #[serde(default)]
    reveal: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    notice: Option<String>,
}

pub(crate) async fn webhook(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<WebhookQuery>,
) -> Response {
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let hub = or_page!(hub_of(&session, &ns, &w.spec.hub).await);
    let extras = PageExtras {
        reveal: query.reveal.is_some(),
        outcome: query.outcome.unwrap_or_default(),
        preview: None,
        notice: query.notice,
    };
    form_page(&session, &ns, &hub, Some(&name), &w.spec, FieldErrors::new(), extras).await
}

pub(crate) async fn update_webhook(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let api: Api<Webhook> = Api::namespaced(session.client.clone(), &ns);
    let current = match api.get(&name).await {
        Ok(w) => w,
        Err(e) => return api_problem(&e, &format!("read Webhook {name}")),
    };
    let hub = or_page!(hub_of(&session, &ns, &current.spec.hub).await);
    let mut spec = match forms::spec_from(&fields, &current.spec.hub) {
        Ok(s) => s,
        Err(errors) => {
            let shown = echo(&fields, &current.spec.hub);
            return form_page(&session, &ns, &hub, Some(&name), &shown, errors, PageExtras::default()).await;
        }
    };
    // What the form does not show is kept.
    spec.secret_ref = current.spec.secret_ref.clone();
    spec.retry = current.spec.retry.clone();
    spec.ordering = current.spec.ordering.clone();
    spec.tls = current.spec.tls.clone();
    spec.oauth2 = current.spec.oauth2.clone();
    // Fields the form emptied are removed (a merge patch keeps what it omits).
    let mut spec_value = serde_json::to_value(&spec).expect("a spec serialises");
    if let Some(fields) = spec_value.as_object_mut() {
        for key in [
            "headers",
            "filters",
            "customPayload",
            "secretRef",
            "retry",
            "ordering",
            "tls",
            "oauth2",
        ] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    let patch =
        serde_json::json!({ "metadata": { "resourceVersion": current.resource_version() }, "spec": spec_value });
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => notice(&ns, &name, "Saved."),
        Err(kube::Error::Api(e)) if e.code == 409 => notice(
            &ns,
            &name,
            "Not saved: the webhook was changed meanwhile (by someone else or the controller). Here it is as it is now; make your change again.",
        ),
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
            form_page(
                &session,
                &ns,
                &hub,
                Some(&name),
                &spec,
                forms::errors_from_api(&e.message),
                PageExtras::default(),
            )
            .await
        }
        Err(e) => api_problem(&e, &format!("change Webhook {name}")),
    }
}

fn notice(ns: &str, name: &str, text: &str) -> Response {
    Redirect::to(&format!(
        "/ns/{}/webhooks/{}?notice={}",
        url_part(ns),
        url_part(name),
        url_part(text)
    ))
    .into_response()
}

pub(crate) async fn set_active(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let active = fields.get("active") == "true";
    let api: Api<Webhook> = Api::namespaced(session.client.clone(), &ns);
    let patch = serde_json::json!({ "spec": { "active": active } });
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(w) => Redirect::to(&format!("/ns/{}/hubs/{}", url_part(&ns), url_part(&w.spec.hub))).into_response(),
        Err(e) => api_problem(
            &e,
            &format!("{} Webhook {name}", if active { "activate" } else { "deactivate" }),
        ),
    }
}

#[derive(Template)]
#[template(path = "delete.html")]
struct DeletePage {
    chrome: Chrome,
    name: String,
    label: String,
    hub: String,
}

pub(crate) async fn confirm_delete(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match Api::<Webhook>::namespaced(session.client.clone(), &ns).get(&name).await {
        Ok(w) => page(DeletePage {
            chrome: chrome(&session, &ns).await,
            label: w.spec.label.clone(),
            hub: w.spec.hub.clone(),
            name,
        }),
        Err(e) => api_problem(&e, &format!("read Webhook {name}")),
    }
}

pub(crate) async fn delete_webhook(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let api: Api<Webhook> = Api::namespaced(session.client.clone(), &ns);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Redirect::to(&format!("/ns/{}/hubs/{}", url_part(&ns), url_part(fields.get("hub")))).into_response(),
        Err(e) => api_problem(&e, &format!("delete Webhook {name}")),
    }
}

/// Sets `annotation` to the current time: a new value asks the controller
/// to act once (rotate a secret, redeliver).
async fn stamp<K>(session: &Session, ns: &str, name: &str, annotation: &str) -> Result<K, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let patch =
        serde_json::json!({ "metadata": { "annotations": { annotation: jiff::Timestamp::now().to_string() } } });
    Api::<K>::namespaced(session.client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

// ---- Secret --------------------------------------------------------------

/// The signing secret as plain text, for the Copy button.
pub(crate) async fn secret_value(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let Some(reference) = w
        .spec
        .secret_ref
        .clone()
        .or_else(|| w.status.and_then(|s| s.secret_ref))
    else {
        return message(
            StatusCode::NOT_FOUND,
            "No secret yet",
            "The controller has not generated this webhook's secret yet.",
        );
    };
    match Api::<Secret>::namespaced(session.client.clone(), &ns)
        .get(&reference.name)
        .await
    {
        Ok(secret) => match secrets::value(&secret, &reference.key) {
            Some(v) => (
                [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                v.to_string(),
            )
                .into_response(),
            None => message(StatusCode::NOT_FOUND, "No secret yet", "The Secret has no value yet."),
        },
        Err(e) => api_problem(&e, &format!("read Secret {}", reference.name)),
    }
}

pub(crate) async fn regenerate_secret(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    or_page!(checked(&session, &body));
    match stamp::<Webhook>(&session, &ns, &name, ROTATE_SECRET_ANNOTATION).await {
        Ok(_) => notice(
            &ns,
            &name,
            "Regenerating: the new secret signs in a moment; the previous one keeps signing until the hub's rotation overlap ends.",
        ),
        Err(e) => api_problem(&e, &format!("regenerate the secret of Webhook {name}")),
    }
}

pub(crate) async fn replace_secret(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let value = fields.get("value").trim().to_string();
    if value.len() < 16 {
        return notice(&ns, &name, "Not replaced: a secret needs at least 16 characters.");
    }
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let Some(reference) = w
        .spec
        .secret_ref
        .clone()
        .or_else(|| w.status.and_then(|s| s.secret_ref))
    else {
        return notice(&ns, &name, "Not replaced: the webhook has no secret yet.");
    };
    let patch = serde_json::json!({ "stringData": { reference.key.clone(): value } });
    match Api::<Secret>::namespaced(session.client.clone(), &ns)
        .patch(&reference.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => notice(
            &ns,
            &name,
            "Replaced: deliveries are signed with your value from now on.",
        ),
        Err(e) => api_problem(&e, &format!("change Secret {}", reference.name)),
    }
}

// ---- Preview and test events ---------------------------------------------

/// The custom payload rendered against a sample event of a chosen type.
pub(crate) async fn preview(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let hub = or_page!(hub_of(&session, &ns, &w.spec.hub).await);
    let event = fields.get("event").to_string();
    let template = fields.get("customPayload").to_string();
    let document = serde_json::json!({
        "id": "preview", "name": event, "payload": sample_payload(&event),
        "receivedAt": jiff::Timestamp::now().to_string(),
    });
    let rendered = tokio::task::spawn_blocking(move || crate::template::render(&template, &document))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let mut spec = w.spec.clone();
    spec.custom_payload = Some(fields.get("customPayload").to_string()).filter(|s| !s.is_empty());
    let preview = Some(match rendered {
        Ok(body) => body,
        Err(e) => format!("(does not render: {e})"),
    });
    let extras = PageExtras {
        preview,
        ..Default::default()
    };
    form_page(&session, &ns, &hub, Some(&name), &spec, FieldErrors::new(), extras).await
}

/// Stores a Delivery of a test event for this webhook only, as ingest would.
pub(crate) async fn send_test(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let payload: serde_json::Value = match serde_json::from_str(fields.get("payload")) {
        Ok(v) => v,
        Err(e) => return notice(&ns, &name, &format!("Not sent: the payload is not JSON ({e}).")),
    };
    let delivery = match crate::fanout::test_delivery(&w, fields.get("event"), &payload) {
        Ok(d) => d,
        Err(e) => return notice(&ns, &name, &format!("Not sent: {e}.")),
    };
    let id = delivery.name_any();
    let row = NewDelivery {
        delivery,
        ordering_key: None,
    };
    match session
        .deliveries
        .insert(&ns, Box::new(std::iter::once(row)), false)
        .await
    {
        Ok(()) => notice(&ns, &name, &format!("Test event sent as delivery {id}.")),
        Err(StoreError::Invalid(reason)) => notice(&ns, &name, &format!("Not sent: {reason}")),
        Err(e) => store_problem(&e, "create a Delivery"),
    }
}

// ---- Recent deliveries and details ---------------------------------------

#[derive(serde::Deserialize, Default)]
pub(crate) struct OutcomeQuery {
    #[serde(default)]
    outcome: Option<String>,
}

pub(crate) async fn deliveries_fragment(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<OutcomeQuery>,
) -> Response {
    let deliveries = recent(&session, &ns, &name, query.outcome.as_deref().unwrap_or("")).await;
    // Refreshed on every change while a page is open: the fragment shows
    // links only, so no access review is made for it.
    let chrome = Chrome {
        ns,
        user: session.user.clone(),
        csrf: session.csrf.clone(),
        can_edit: false,
    };
    page(DeliveriesFragment { chrome, deliveries })
}

/// Server-sent events: one `changed` each time a Delivery of the webhook
/// changes (a watch with the user's identity).
pub(crate) async fn deliveries_live(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match session.deliveries.changes(&ns, &name).await {
        Ok(changed) => {
            let events =
                changed.map(|name| Ok::<_, std::convert::Infallible>(SseEvent::default().event("changed").data(name)));
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
        Err(e) => store_problem(&e, "read this webhook"),
    }
}

struct AttemptView {
    number: u32,
    time: String,
    duration_ms: u64,
    method: String,
    url: String,
    request_headers: Vec<Header>,
    status_code: String,
    response_headers: Vec<Header>,
    response_body: String,
    error: String,
}

#[derive(Template)]
#[template(path = "delivery.html")]
struct DeliveryPage {
    chrome: Chrome,
    name: String,
    webhook: String,
    event: String,
    event_id: String,
    phase: String,
    message: String,
    attempts: Vec<AttemptView>,
    omitted: u32,
    body: String,
}

pub(crate) async fn delivery(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let d = match read_delivery(&session, &ns, &name).await {
        Ok(d) => d,
        Err(problem) => return problem,
    };
    let custom = Api::<Webhook>::namespaced(session.client.clone(), &ns)
        .get(&d.spec.webhook)
        .await
        .ok()
        .and_then(|w| w.spec.custom_payload);
    // The body as sent: recorded for a custom payload; the envelope is
    // rebuilt byte for byte from the stored payload.
    let body = match (d.status.as_ref().and_then(|s| s.request_body.clone()), custom) {
        (Some(recorded), _) => recorded,
        (None, custom) => match crate::delivery::request::body(&d, custom.as_deref()) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("(cannot be shown: {e})"),
        },
    };
    let status = d.status.clone().unwrap_or_default();
    let attempts = status
        .attempts
        .iter()
        .rev()
        .map(|a| AttemptView {
            number: a.number,
            time: a.time.0.strftime("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
            duration_ms: a.duration_ms,
            method: a.request.method.clone(),
            url: a.request.url.clone(),
            request_headers: a.request.headers.clone(),
            status_code: a
                .response
                .as_ref()
                .map(|r| r.status_code.to_string())
                .unwrap_or_else(|| "no response".into()),
            response_headers: a.response.as_ref().map(|r| r.headers.clone()).unwrap_or_default(),
            response_body: a.response.as_ref().map(|r| r.body.clone()).unwrap_or_default(),
            error: a.error.clone().unwrap_or_default(),
        })
        .collect();
    page(DeliveryPage {
        chrome: chrome(&session, &ns).await,
        webhook: d.spec.webhook.clone(),
        event: d.spec.event.name.clone(),
        event_id: d.spec.event.id.clone(),
        phase: format!("{:?}", status.phase),
        message: status.message.clone().unwrap_or_default(),
        attempts,
        omitted: status.attempts_omitted,
        body,
        name,
    })
}

/// A delivery as the user may see it: a Delivery object read with their
/// identity, or from the Postgres store if they may read its Webhook (one
/// answer for missing and not allowed, so nothing is revealed).
async fn read_delivery(session: &Session, ns: &str, name: &str) -> Result<Delivery, Response> {
    match session.deliveries.get(ns, name).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(message(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("No delivery {name} that your Kubernetes identity may read in {ns}."),
        )),
        Err(e) => Err(store_problem(&e, &format!("read Delivery {name}"))),
    }
}

pub(crate) async fn redeliver(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    or_page!(checked(&session, &body));
    match session
        .deliveries
        .redeliver(&ns, &name, &jiff::Timestamp::now().to_string())
        .await
    {
        Ok(()) => Redirect::to(&format!("/ns/{}/deliveries/{}", url_part(&ns), url_part(&name))).into_response(),
        Err(e) => store_problem(&e, &format!("redeliver {name}")),
    }
}
