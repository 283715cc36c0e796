//! Preview of a custom payload and "Send test".

use super::*;

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
