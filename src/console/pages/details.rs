//! One delivery's details: its attempts, and Redeliver.

use super::*;

pub(super) struct AttemptView {
    pub(super) number: u32,
    pub(super) time: String,
    pub(super) duration_ms: u64,
    /// "waited 1.2 s for the rate limit · ", or empty.
    pub(super) rate_limit_wait: String,
    pub(super) method: String,
    pub(super) url: String,
    pub(super) request_headers: Vec<Header>,
    pub(super) status_code: String,
    pub(super) response_headers: Vec<Header>,
    pub(super) response_body: String,
    pub(super) error: String,
}

#[derive(Template)]
#[template(path = "delivery.html")]
pub(super) struct DeliveryPage {
    pub(super) chrome: Chrome,
    pub(super) name: String,
    pub(super) webhook: String,
    pub(super) event: String,
    pub(super) event_id: String,
    /// The event's trace id, and a link to it with --trace-url-template.
    pub(super) trace_id: String,
    pub(super) trace_url: String,
    pub(super) phase: String,
    pub(super) message: String,
    pub(super) attempts: Vec<AttemptView>,
    pub(super) omitted: u32,
    pub(super) body: String,
}

pub(crate) async fn delivery(
    State(console): State<Arc<Console>>,
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
            rate_limit_wait: a
                .rate_limit_wait_ms
                .map(|ms| format!("waited {:.1} s for the rate limit · ", ms as f64 / 1000.0))
                .unwrap_or_default(),
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
    let trace_id = d
        .spec
        .event
        .trace
        .as_ref()
        .map(|t| t.trace_id().to_string())
        .unwrap_or_default();
    page(DeliveryPage {
        chrome: chrome(&session, &ns).await,
        webhook: d.spec.webhook.clone(),
        event: d.spec.event.name.clone(),
        event_id: d.spec.event.id.clone(),
        trace_id: trace_id.clone(),
        trace_url: match (&console.trace_url_template, trace_id.is_empty()) {
            (Some(template), false) => template.replace("{traceId}", &trace_id),
            _ => String::new(),
        },
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
pub(super) async fn read_delivery(session: &Session, ns: &str, name: &str) -> Result<Delivery, Response> {
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
