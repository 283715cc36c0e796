//! The seed's "Recent deliveries": a webhook's list, by outcome, live.

use super::*;

pub(super) struct DeliveryRow {
    pub(super) name: String,
    pub(super) event: String,
    pub(super) time: String,
    pub(super) attempts: u32,
    pub(super) status_code: String,
    pub(super) outcome: String,
}

#[derive(Template)]
#[template(path = "deliveries.html")]
pub(super) struct DeliveriesFragment {
    pub(super) chrome: Chrome,
    pub(super) deliveries: Vec<DeliveryRow>,
}

/// Deliveries a webhook's list shows at most.
pub(super) const SHOWN: usize = 50;

/// The phases an outcome filter (`succeeded`, `failed`, `retrying`) keeps;
/// none (all) for no filter.
fn phases_of(outcome: &str) -> &'static [Phase] {
    match outcome {
        "succeeded" => &[Phase::Succeeded],
        "failed" => &[Phase::Failed, Phase::Cancelled],
        "retrying" => &[Phase::Retrying, Phase::Pending],
        _ => &[],
    }
}

/// The webhook's recent deliveries, newest first, optionally by outcome.
pub(super) async fn recent(session: &Session, ns: &str, webhook: &str, outcome: &str) -> Vec<DeliveryRow> {
    let phases = phases_of(outcome);
    let mut list = session
        .deliveries
        .list(Some(ns), Some(webhook), phases, SHOWN)
        .await
        .unwrap_or_default();
    list.sort_by_key(|d| std::cmp::Reverse(d.spec.event.received_at.0));
    rows(&list, outcome)
}

/// The list's rows: of `newest` (newest first), the first `SHOWN` with
/// the outcome.
pub(super) fn rows(newest: &[Delivery], outcome: &str) -> Vec<DeliveryRow> {
    let phases = phases_of(outcome);
    newest
        .iter()
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

#[derive(serde::Deserialize, Default)]
pub(crate) struct OutcomeQuery {
    #[serde(default)]
    pub(super) outcome: Option<String>,
}

pub(crate) async fn deliveries_fragment(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<OutcomeQuery>,
) -> Response {
    let deliveries = recent(&session, &ns, &name, query.outcome.as_deref().unwrap_or("")).await;
    page(DeliveriesFragment {
        chrome: fragment_chrome(&session, ns),
        deliveries,
    })
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
