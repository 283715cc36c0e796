//! The Table form of a list (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`),
//! which `kubectl get` asks for: the same columns the Delivery CRD prints,
//! so `kubectl get deliveries` looks the same in both stores.

use crate::resources::Delivery;
use jiff::Timestamp;
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// Whether a request's `Accept` header asks for the Table form.
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|kind| {
            let params: Vec<&str> = kind.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && !params.iter().any(|p| p.starts_with("g=") && *p != "g=meta.k8s.io")
        })
    })
}

/// The CRD's printer columns: (name, type, priority, JSON path).
fn columns() -> Vec<(String, String, i32, String)> {
    let crd = Delivery::crd();
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| {
            (
                c.name.clone(),
                c.type_.clone(),
                c.priority.unwrap_or(0),
                c.json_path.clone(),
            )
        })
        .collect()
}

/// `deliveries` (as JSON objects of this API) as a Table, ages counted from `now`.
pub fn table(deliveries: &[Value], resource_version: &str, continue_token: Option<&str>, now: Timestamp) -> Value {
    let columns = columns();
    let mut definitions = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    definitions.extend(columns.iter().map(|(name, kind, priority, _)| {
        json!({ "name": name, "type": kind, "format": "", "priority": priority, "description": "" })
    }));
    let rows: Vec<Value> = deliveries
        .iter()
        .map(|delivery| {
            let mut cells = vec![delivery["metadata"]["name"].clone()];
            cells.extend(columns.iter().map(|(_, kind, _, path)| cell(delivery, kind, path, now)));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": delivery["metadata"],
                },
            })
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": resource_version });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// One cell: the value at a simple JSON path (`.a.b`), a date as an age,
/// nothing (null) where the object has no value.
fn cell(object: &Value, kind: &str, path: &str, now: Timestamp) -> Value {
    let value = path
        .trim_start_matches('.')
        .split('.')
        .try_fold(object, |value, key| value.get(key));
    match (value, kind) {
        (None | Some(Value::Null), _) => Value::Null,
        (Some(Value::String(text)), "date") => match text.parse::<Timestamp>() {
            Ok(at) => json!(crate::plugin::age(at, now)),
            Err(_) => json!(text),
        },
        (Some(value), _) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_s_accept_header_asks_for_a_table_and_json_does_not() {
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_table(Some("application/json")));
        assert!(!wants_table(None));
        assert!(!wants_table(Some("application/json;as=Table;v=v1;g=example.com")));
    }

    #[test]
    fn rows_carry_the_crd_s_columns_in_order() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let delivery = json!({
            "metadata": { "name": "evt-1-shop", "namespace": "a", "creationTimestamp": "2026-12-04T09:55:00Z" },
            "spec": { "webhook": "shop", "event": { "name": "content.updated" } },
            "status": { "phase": "Succeeded", "attemptCount": 2, "lastStatusCode": 200 },
        });
        let table = table(&[delivery], "7", Some("next"), now);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Webhook",
                "Event",
                "Phase",
                "Attempts",
                "Last Status",
                "Next Attempt",
                "Waiting For",
                "Age"
            ]
        );
        assert_eq!(
            table["rows"][0]["cells"],
            json!([
                "evt-1-shop",
                "shop",
                "content.updated",
                "Succeeded",
                2,
                200,
                null,
                null,
                "5m"
            ])
        );
        assert_eq!(table["metadata"]["continue"], "next");
        assert_eq!(table["rows"][0]["object"]["metadata"]["namespace"], "a");
    }
}
