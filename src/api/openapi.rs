//! The OpenAPI v3 document of the history API, which the kube-apiserver
//! aggregates so `kubectl explain deliveries` works: the Delivery CRD's own
//! schema, tagged with this group's kind. Public, as the CRD's schema is.

use super::{GROUP, VERSION};
use crate::resources::Delivery;
use axum::response::IntoResponse;
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// The schema's name in the document.
fn schema_name() -> String {
    let reversed: Vec<&str> = GROUP.split('.').rev().collect();
    format!("{}.{VERSION}.Delivery", reversed.join("."))
}

/// `/openapi/v3`: where this group-version's document is.
pub(super) async fn index() -> impl IntoResponse {
    let path = format!("apis/{GROUP}/{VERSION}");
    axum::Json(
        json!({ "paths": { path.clone(): { "serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash()) } } }),
    )
}

/// `/openapi/v3/apis/GROUP/VERSION`.
pub(super) async fn document() -> impl IntoResponse {
    ([(axum::http::header::CACHE_CONTROL, "no-cache")], axum::Json(spec()))
}

/// Changes when the document does, so the aggregator fetches it again.
fn hash() -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(spec().to_string());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn spec() -> Value {
    let crd = Delivery::crd();
    let mut schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_else(|| json!({ "type": "object" }));
    let kind = json!({ "group": GROUP, "version": VERSION, "kind": "Delivery" });
    schema["x-kubernetes-group-version-kind"] = json!([kind]);
    let reference = json!({ "$ref": format!("#/components/schemas/{}", schema_name()) });
    // kubectl explain finds the kind from the operation, then the schema.
    let one = json!({
        "x-kubernetes-group-version-kind": kind,
        "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": reference } } } },
    });
    json!({
        "openapi": "3.0.0",
        "info": { "title": "hookrelay delivery history", "version": VERSION },
        "paths": {
            format!("/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/deliveries/{{name}}"): { "get": one },
        },
        "components": { "schemas": { schema_name(): schema } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_holds_the_crds_schema_under_this_groups_kind() {
        let spec = spec();
        let schema = &spec["components"]["schemas"]["dev.hookrelay.history.v1alpha1.Delivery"];
        assert_eq!(schema["x-kubernetes-group-version-kind"][0]["group"], GROUP);
        assert!(
            schema["properties"]["spec"]["properties"]["webhook"].is_object(),
            "{schema}"
        );
        assert_eq!(hash(), hash(), "the same document, the same hash");
    }
}
