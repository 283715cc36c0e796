//! The hubs of a namespace: the console's first screen.

use super::*;

pub(super) struct HubRow {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) active: usize,
    pub(super) total: usize,
    pub(super) ready: bool,
    pub(super) ingest_url: String,
}

#[derive(Template)]
#[template(path = "hubs.html")]
pub(super) struct HubsPage {
    pub(super) chrome: Chrome,
    pub(super) hubs: Vec<HubRow>,
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
