//! The CustomResourceDefinitions, generated from the Rust types. The files in
//! `crds/` and `charts/hookrelay/files/crds.yaml` are this output (a test checks it).

use crate::resources::{Delivery, Hub, Webhook};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of hookrelay, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![Hub::crd(), Webhook::crd(), Delivery::crd()]
        .into_iter()
        .map(drop_unknown_formats)
        .map(with_type_meta)
        .map(unreconciled_by_default)
        .map(labelled)
        .collect()
}

/// A Hub or Webhook the controller has not looked at yet reads
/// `status.observedGeneration: 0`, which kstatus (Flux, cli-utils, `kubectl
/// wait`) takes as "in progress" rather than "current". Deliveries have no
/// generation to observe.
fn unreconciled_by_default(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    if crd.spec.names.kind == "Delivery" {
        return crd;
    }
    let mut value = serde_json::to_value(crd).expect("a CRD serialises to JSON");
    for version in value["spec"]["versions"].as_array_mut().into_iter().flatten() {
        version["schema"]["openAPIV3Schema"]["properties"]["status"]["default"] =
            serde_json::json!({ "observedGeneration": 0 });
    }
    serde_json::from_value(value).expect("a status default keeps a valid CRD")
}

/// Labels on the CRDs themselves, for inventory and GitOps tools.
fn labelled(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.metadata.labels = Some(
        [
            ("app.kubernetes.io/name", "hookrelay"),
            ("app.kubernetes.io/part-of", "hookrelay"),
            ("app.kubernetes.io/component", "crd"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    crd
}

/// Declares `apiVersion` and `kind` in the schema, as strict offline
/// validators (kubeconform) expect; the API server fills them in anyway.
fn with_type_meta(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(crd).expect("a CRD serialises to JSON");
    for version in value["spec"]["versions"].as_array_mut().into_iter().flatten() {
        let properties = &mut version["schema"]["openAPIV3Schema"]["properties"];
        properties["apiVersion"] = serde_json::json!({
            "type": "string",
            "description": "The versioned schema of this object: hookrelay.dev/v1alpha1."
        });
        properties["kind"] = serde_json::json!({
            "type": "string",
            "description": "The kind of this object."
        });
    }
    serde_json::from_value(value).expect("adding type fields keeps a valid CRD")
}

/// schemars marks Rust's unsigned integers with formats such as "uint32",
/// which the API server does not know and warns about on every apply; the
/// `minimum: 0` schemars emits beside them already says what they mean.
fn drop_unknown_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    map.remove("format");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd).expect("a CRD serialises to JSON");
    walk(&mut value);
    serde_json::from_value(value).expect("removing formats keeps a valid CRD")
}

/// The CRDs as one multi-document YAML stream.
pub fn yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every property of every schema, by path, that has no description.
    fn undescribed(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            let here = format!("{path}.{name}");
            if property.get("description").is_none() {
                out.push(here.clone());
            }
            undescribed(property, &here, out);
        }
        if let Some(items) = schema.get("items") {
            undescribed(items, &format!("{path}[]"), out);
        }
    }

    #[test]
    fn every_field_and_kind_is_described_by_hand() {
        for crd in all() {
            let value = serde_json::to_value(&crd).unwrap();
            let schema = &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let kind = &crd.spec.names.kind;
            let description = schema["description"].as_str().unwrap_or_default();
            assert!(!description.contains("Auto-generated"), "{kind}: {description}");
            let mut missing = vec![];
            undescribed(schema, kind, &mut missing);
            assert!(missing.is_empty(), "fields without a description: {missing:?}");
            assert_eq!(schema["properties"]["kind"]["type"], "string");
            assert!(
                crd.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l["app.kubernetes.io/name"] == "hookrelay")
            );
        }
    }

    #[test]
    fn committed_crd_files_match_the_types() {
        let generated = yaml().unwrap();
        for path in ["crds/hookrelay.yaml", "charts/hookrelay/files/crds.yaml"] {
            let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                committed == generated,
                "{path} is out of date with the Rust types: run `make crds`"
            );
        }
    }

    #[test]
    fn crds_are_namespaced_with_status_and_short_names() {
        for crd in all() {
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.group, "hookrelay.dev");
            let version = &crd.spec.versions[0];
            assert!(
                version.subresources.as_ref().unwrap().status.is_some(),
                "{}",
                crd.spec.names.kind
            );
            assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
        }
    }
}
