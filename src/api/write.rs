//! The two writes the history API takes, each allowed by RBAC as the same
//! write on Delivery objects would be: a test delivery (`create`), built
//! here from the webhook, event name and payload it names; and a new round
//! of attempts (`patch` setting the `hookrelay.dev/redeliver` annotation,
//! as on a Delivery object). Nothing else of a delivery changes here.

use super::front_proxy::Peer;
use super::{Api, Failure, object, status, store_error, unavailable};
use crate::resources::delivery::REDELIVER_ANNOTATION;
use crate::resources::{DeliverySpec, Webhook};
use crate::store::NewDelivery;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

fn invalid(message: String) -> Failure {
    status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

pub(super) async fn create(
    State(api): State<Api>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let user = api.user(&peer, &headers)?;
    api.authorize(&user, "create", Some(&namespace), None).await?;
    let asked: Value = serde_json::from_slice(&body).map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let spec: DeliverySpec = serde_json::from_value(asked["spec"].clone()).map_err(|e| {
        invalid(format!(
            "spec: {e} (a test delivery names spec.webhook, spec.event.name and spec.payload)"
        ))
    })?;
    let webhooks: kube::Api<Webhook> = kube::Api::namespaced(api.client.clone(), &namespace);
    let webhook = webhooks
        .get_opt(&spec.webhook)
        .await
        .map_err(|e| unavailable("reading the webhook", e))?
        .ok_or_else(|| {
            invalid(format!(
                "spec.webhook: there is no webhook {:?} in {namespace}",
                spec.webhook
            ))
        })?;
    if !webhook.spec.active {
        return Err(invalid(format!(
            "spec.webhook: webhook {:?} is inactive (spec.active is false); nothing would be sent",
            spec.webhook
        )));
    }
    let payload: Value =
        serde_json::from_str(&spec.payload).map_err(|e| invalid(format!("spec.payload is not JSON: {e}")))?;
    // The client's test event id where it made one (so it finds the
    // delivery by the name it expects), else a new one.
    let delivery = if crate::fanout::is_test_id(&spec.event.id) {
        crate::fanout::test_delivery_as(&webhook, &spec.event.id, &spec.event.name, &payload)
    } else {
        crate::fanout::test_delivery(&webhook, &spec.event.name, &payload)
    }
    .map_err(|e| invalid(format!("spec.payload: {e}")))?;
    let shown = object(&delivery);
    let row = NewDelivery {
        delivery,
        ordering_key: None,
    };
    api.deliveries
        .insert(&namespace, Box::new(std::iter::once(row)), false)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, axum::Json(shown)).into_response())
}

pub(super) async fn redeliver(
    State(api): State<Api>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Failure> {
    let user = api.user(&peer, &headers)?;
    api.authorize(&user, "patch", Some(&namespace), Some(&name)).await?;
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        kind,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("a {kind:?} patch is not taken here; send a merge patch (application/merge-patch+json)"),
        ));
    }
    let patch: Value = serde_json::from_slice(&body).map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the patch is not JSON: {e}"),
        )
    })?;
    let request = redelivery_request(&patch).map_err(invalid)?;
    api.deliveries
        .redeliver(&namespace, &name, &request)
        .await
        .map_err(store_error)?;
    let now = api
        .deliveries
        .get(&namespace, &name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| status(StatusCode::NOT_FOUND, "NotFound", format!("delivery {name:?} is gone")))?;
    Ok(axum::Json(object(&now)).into_response())
}

/// The redelivery a patch asks for: it may set the redeliver annotation
/// (to a non-empty value) and nothing else.
fn redelivery_request(patch: &Value) -> Result<String, String> {
    let only = || format!("only metadata.annotations[{REDELIVER_ANNOTATION:?}] may be changed here");
    let top = patch.as_object().ok_or_else(only)?;
    let metadata = top.get("metadata").and_then(Value::as_object).ok_or_else(only)?;
    let annotations = metadata
        .get("annotations")
        .and_then(Value::as_object)
        .ok_or_else(only)?;
    if top.len() != 1 || metadata.len() != 1 || annotations.len() != 1 {
        return Err(only());
    }
    match annotations.get(REDELIVER_ANNOTATION) {
        Some(Value::String(value)) if !value.is_empty() && value.len() <= 256 => Ok(value.clone()),
        Some(_) => Err(format!(
            "metadata.annotations[{REDELIVER_ANNOTATION:?}] must be a non-empty string of at most 256 characters"
        )),
        None => Err(only()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_may_ask_for_a_redelivery_and_nothing_else() {
        let ask = |value: Value| json!({ "metadata": { "annotations": { REDELIVER_ANNOTATION: value } } });
        assert_eq!(redelivery_request(&ask(json!("now"))).unwrap(), "now");
        assert!(redelivery_request(&ask(json!(""))).unwrap_err().contains("non-empty"));
        assert!(
            redelivery_request(&ask(Value::Null)).is_err(),
            "removing it is not a redelivery"
        );
        let more =
            json!({ "metadata": { "annotations": { REDELIVER_ANNOTATION: "x" } }, "status": { "phase": "Succeeded" } });
        assert!(
            redelivery_request(&more)
                .unwrap_err()
                .contains("only metadata.annotations")
        );
        let other = json!({ "metadata": { "annotations": { "team": "a" } } });
        assert!(redelivery_request(&other).is_err());
        let labels = json!({ "metadata": { "labels": { "x": "y" } } });
        assert!(redelivery_request(&labels).is_err());
    }
}
