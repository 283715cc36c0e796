//! A hub's webhooks, with their state and last delivery.

use super::*;

pub(super) struct WebhookRow {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) url: String,
    pub(super) events: String,
    pub(super) active: bool,
    pub(super) paused: bool,
    pub(super) last_status: String,
    /// The newest deliveries as a strip (from the Webhook's status).
    pub(super) trend_svg: String,
    /// Succeeded of the newest finished deliveries, e.g. "90%", or "—".
    pub(super) success_rate: String,
    /// Below `HEALTHY` percent: marked, so the worst stands out.
    pub(super) unhealthy: bool,
}

/// A success rate under this (of the newest deliveries) is marked.
const HEALTHY: f64 = 95.0;

#[derive(Template)]
#[template(path = "webhooks.html")]
pub(super) struct WebhooksPage {
    pub(super) chrome: Chrome,
    pub(super) hub: String,
    pub(super) hub_label: String,
    pub(super) webhooks: Vec<WebhookRow>,
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
        .map(|w| {
            let recent = w
                .status
                .as_ref()
                .map(|s| s.recent_deliveries.as_slice())
                .unwrap_or_default();
            let rate = health::recent_success_rate(recent);
            WebhookRow {
                trend_svg: health::trend_svg(recent),
                success_rate: rate.map(|r| format!("{r:.0}%")).unwrap_or_else(|| "—".into()),
                unhealthy: rate.is_some_and(|r| r < HEALTHY),
                name: w.name_any(),
                label: w.spec.label.clone(),
                url: crate::delivery::request::redact_url(&w.spec.url),
                events: w.spec.events.join(", "),
                active: w.spec.active,
                paused: w.spec.paused,
                last_status: w
                    .status
                    .as_ref()
                    .and_then(|s| s.last_delivery.as_ref())
                    .and_then(|d| d.status_code)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "—".into()),
            }
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
