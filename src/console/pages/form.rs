//! A webhook's page: the add / edit form, activation and deletion.

use super::*;

pub(super) struct EventChoice {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) description: String,
    pub(super) checked: bool,
}

pub(super) struct EventGroup {
    pub(super) name: String,
    pub(super) events: Vec<EventChoice>,
}

/// The form as shown: values, and errors by field.
pub(super) struct FormView {
    pub(super) label: String,
    pub(super) url: String,
    pub(super) groups: Vec<EventGroup>,
    pub(super) other_events: String,
    pub(super) active: bool,
    pub(super) method: String,
    pub(super) headers: String,
    pub(super) filters: String,
    pub(super) custom_payload: String,
    pub(super) errors: FieldErrors,
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

#[derive(Template)]
#[template(path = "webhook.html")]
pub(super) struct WebhookPage {
    pub(super) chrome: Chrome,
    pub(super) hub: String,
    /// `None` for a new webhook.
    pub(super) name: Option<String>,
    pub(super) form: FormView,
    pub(super) ready: Option<String>,
    /// The delivery controls in effect: pause, signing scheme, rate limit,
    /// egress proxy.
    pub(super) controls: Vec<String>,
    pub(super) secret: Option<SecretView>,
    pub(super) health: Option<HealthView>,
    pub(super) deliveries: Vec<DeliveryRow>,
    pub(super) outcome: String,
    pub(super) event_names: Vec<String>,
    /// The event the sample payload is of (selected first).
    pub(super) first_event: String,
    pub(super) sample: String,
    pub(super) preview: Option<String>,
    pub(super) notice: Option<String>,
}

pub(super) fn new_spec(hub: &str) -> WebhookSpec {
    WebhookSpec::new(hub, "", "", &[])
}

pub(super) async fn read_webhook(session: &Session, ns: &str, name: &str) -> Result<Webhook, Response> {
    Api::<Webhook>::namespaced(session.client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| api_problem(&e, &format!("read Webhook {name}")))
}

pub(super) async fn hub_of(session: &Session, ns: &str, hub: &str) -> Result<Hub, Response> {
    Api::<Hub>::namespaced(session.client.clone(), ns)
        .get(hub)
        .await
        .map_err(|e| api_problem(&e, &format!("read Hub {hub}")))
}

pub(super) async fn form_page(
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
        controls: vec![],
        secret: None,
        health: None,
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
            view.controls = controls(&w, hub);
            view.secret = secret_view(session, ns, &w, extra.reveal).await;
        }
        // One read for both the health section and the list, unless the
        // list is filtered (its outcome may lie beyond the newest read).
        let newest = newest(session, ns, name).await;
        view.deliveries = match extra.outcome.as_str() {
            "" => rows(&newest.deliveries, ""),
            outcome => recent(session, ns, name, outcome).await,
        };
        view.health = Some(health_view(&newest, extra.window));
    }
    page(view)
}

/// The health section alone, redrawn by the page's script while deliveries
/// change (at most every few seconds: each is one store read).
#[derive(Template)]
#[template(path = "health.html")]
pub(super) struct HealthFragment {
    pub(super) chrome: Chrome,
    pub(super) name: String,
    pub(super) h: HealthView,
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct WindowQuery {
    #[serde(default)]
    window: Option<String>,
}

pub(crate) async fn health_fragment(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<WindowQuery>,
) -> Response {
    let window = Window::parse(query.window.as_deref().unwrap_or_default());
    let newest = newest(&session, &ns, &name).await;
    page(HealthFragment {
        chrome: fragment_chrome(&session, ns),
        name,
        h: health_view(&newest, window),
    })
}

/// The health section of a webhook's page.
pub(super) struct HealthView {
    pub(super) window: &'static str,
    pub(super) deliveries_svg: String,
    pub(super) latency_svg: String,
    pub(super) deliveries: u32,
    pub(super) succeeded: u32,
    pub(super) failed: u32,
    pub(super) success_rate: String,
    pub(super) attempts_per_delivery: String,
    pub(super) latency: String,
    /// Fewer deliveries were read than the window holds.
    pub(super) partial: bool,
    /// The charts' numbers, for reading without the pictures.
    pub(super) rows: Vec<[String; 6]>,
    /// Why the numbers could not be read, if they could not.
    pub(super) error: Option<String>,
}

/// A webhook's newest deliveries as one store read gave them.
pub(super) struct Newest {
    /// At most `health::MOST`, newest first.
    deliveries: Vec<Delivery>,
    /// There may be older ones than were read.
    more: bool,
    /// Why none could be read, if so.
    error: Option<String>,
}

/// The newest `health::MOST` deliveries of the webhook: one store read,
/// with the user's identity.
async fn newest(session: &Session, ns: &str, name: &str) -> Newest {
    let (mut deliveries, error) = match session.deliveries.list(Some(ns), Some(name), &[], health::MOST).await {
        Ok(list) => (list, None),
        Err(e) => (vec![], Some(format!("the deliveries could not be read: {e}"))),
    };
    deliveries.sort_by_key(|d| std::cmp::Reverse(d.spec.event.received_at.0));
    let more = deliveries.len() >= health::MOST;
    deliveries.truncate(health::MOST);
    Newest {
        deliveries,
        more,
        error,
    }
}

/// The health section: `newest` drawn over `window`.
fn health_view(newest: &Newest, window: Window) -> HealthView {
    let h = health::compute(&newest.deliveries, window, jiff::Timestamp::now(), newest.more);
    let ms = |v: u64| format!("{v} ms");
    HealthView {
        window: window.name(),
        deliveries_svg: health::deliveries_svg(&h),
        latency_svg: health::latency_svg(&h),
        deliveries: h.deliveries,
        succeeded: h.succeeded,
        failed: h.failed,
        success_rate: h.success_rate.map(|r| format!("{r:.1}%")).unwrap_or_else(|| "—".into()),
        attempts_per_delivery: h
            .attempts_per_delivery
            .map(|a| format!("{a:.2}"))
            .unwrap_or_else(|| "—".into()),
        latency: h
            .latency
            .map(|(p50, p95)| format!("p50 {} · p95 {}", ms(p50), ms(p95)))
            .unwrap_or_else(|| "—".into()),
        partial: h.partial,
        rows: h
            .buckets
            .iter()
            .filter(|b| b.succeeded + b.in_progress + b.failed > 0 || b.latency.is_some())
            .map(|b| {
                let (p50, p95) = b.latency.map(|(a, b)| (ms(a), ms(b))).unwrap_or_default();
                [
                    b.start.strftime("%Y-%m-%d %H:%M UTC").to_string(),
                    b.succeeded.to_string(),
                    b.in_progress.to_string(),
                    b.failed.to_string(),
                    p50,
                    p95,
                ]
            })
            .collect(),
        error: newest.error.clone(),
    }
}

/// The delivery controls a webhook's page states, with its hub's defaults applied.
fn controls(webhook: &Webhook, hub: &Hub) -> Vec<String> {
    let mut shown = vec![];
    if webhook.spec.paused {
        shown.push("Paused: its events are stored, nothing is sent until it is resumed".to_string());
    }
    let scheme = webhook.spec.signing_scheme(Some(&hub.spec));
    shown.push(format!(
        "Signing: {}",
        match scheme {
            crate::resources::hub::SigningScheme::Symmetric => "symmetric (v1, the shared secret)",
            crate::resources::hub::SigningScheme::Asymmetric => "asymmetric (v1a, ed25519)",
            crate::resources::hub::SigningScheme::Both => "both (v1 and v1a)",
        }
    ));
    if let Some(rate) = webhook.spec.rate_limit(Some(&hub.spec)) {
        shown.push(format!(
            "Rate limit: {} requests a second, burst {}",
            rate.requests_per_second,
            rate.burst.unwrap_or(1)
        ));
    }
    if let Some(proxy) = hub.status.as_ref().and_then(|s| s.egress_proxy.as_deref()) {
        shown.push(format!("Egress: through the operator's proxy {proxy}"));
    }
    shown
}

/// The first concrete event a webhook subscribes to (the catalogue's first
/// for a wildcard or none).
pub(super) fn first_event(spec: &WebhookSpec) -> String {
    spec.events
        .iter()
        .find(|e| !e.ends_with('*'))
        .cloned()
        .unwrap_or_else(|| CATALOGUE[0].name.to_string())
}

#[derive(Default)]
pub(super) struct PageExtras {
    pub(super) reveal: bool,
    pub(super) outcome: String,
    pub(super) preview: Option<String>,
    pub(super) notice: Option<String>,
    /// The health charts' window.
    pub(super) window: Window,
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
pub(super) fn name_for(label: &str) -> String {
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
pub(super) fn echo(fields: &Fields, hub: &str) -> WebhookSpec {
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
    pub(super) reveal: Option<String>,
    #[serde(default)]
    pub(super) outcome: Option<String>,
    #[serde(default)]
    pub(super) notice: Option<String>,
    /// The health charts' window: hour, day (default) or week.
    #[serde(default)]
    pub(super) window: Option<String>,
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
        window: Window::parse(query.window.as_deref().unwrap_or_default()),
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
    spec.paused = current.spec.paused;
    spec.secret_ref = current.spec.secret_ref.clone();
    spec.retry = current.spec.retry.clone();
    spec.ordering = current.spec.ordering.clone();
    spec.tls = current.spec.tls.clone();
    spec.oauth2 = current.spec.oauth2.clone();
    spec.signing = current.spec.signing.clone();
    spec.delivery = current.spec.delivery.clone();
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
            "signing",
            "delivery",
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

pub(super) fn notice(ns: &str, name: &str, text: &str) -> Response {
    Redirect::to(&format!(
        "/ns/{}/webhooks/{}?notice={}",
        url_part(ns),
        url_part(name),
        url_part(text)
    ))
    .into_response()
}

pub(crate) async fn set_active(
    session: Extension<Arc<Session>>,
    path: Path<(String, String)>,
    body: Bytes,
) -> Response {
    switch(session, path, body, "active", ("activate", "deactivate")).await
}

/// Pauses or resumes a webhook (its deliveries are held, not missed).
pub(crate) async fn set_paused(
    session: Extension<Arc<Session>>,
    path: Path<(String, String)>,
    body: Bytes,
) -> Response {
    switch(session, path, body, "paused", ("pause", "resume")).await
}

/// Sets the boolean spec field `field` to the form's value (named the
/// same), then shows the hub's webhooks; `verbs` name the change in an
/// error (true, false).
async fn switch(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
    field: &str,
    verbs: (&str, &str),
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let on = fields.get(field) == "true";
    let api: Api<Webhook> = Api::namespaced(session.client.clone(), &ns);
    let patch = serde_json::json!({ "spec": { field: on } });
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(w) => Redirect::to(&format!("/ns/{}/hubs/{}", url_part(&ns), url_part(&w.spec.hub))).into_response(),
        Err(e) => api_problem(&e, &format!("{} Webhook {name}", if on { verbs.0 } else { verbs.1 })),
    }
}

#[derive(Template)]
#[template(path = "delete.html")]
pub(super) struct DeletePage {
    pub(super) chrome: Chrome,
    pub(super) name: String,
    pub(super) label: String,
    pub(super) hub: String,
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
pub(super) async fn stamp<K>(session: &Session, ns: &str, name: &str, annotation: &str) -> Result<K, kube::Error>
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controls_state_the_hubs_defaults_and_its_egress_proxy() {
        let hub: Hub = serde_json::from_value(serde_json::json!({
            "apiVersion": "hookrelay.dev/v1alpha1", "kind": "Hub",
            "metadata": { "name": "main" },
            "spec": { "label": "Main", "delivery": { "rateLimit": { "requestsPerSecond": 5 } } },
            "status": { "egressProxy": "egress.infra:3128" }
        }))
        .unwrap();
        let mut webhook = Webhook::new(
            "shop",
            WebhookSpec::new("main", "Shop", "https://shop.example/h", &["e"]),
        );
        webhook.spec.paused = true;
        let shown = controls(&webhook, &hub);
        assert_eq!(
            shown,
            [
                "Paused: its events are stored, nothing is sent until it is resumed",
                "Signing: symmetric (v1, the shared secret)",
                "Rate limit: 5 requests a second, burst 1",
                "Egress: through the operator's proxy egress.infra:3128",
            ]
        );
    }
}
