//! Fan-out: which webhooks an event triggers, and the Delivery each gets.

use crate::events::subscription_matches;
use crate::filters;
use crate::resources::delivery::{Delivery, DeliverySpec, EventRef};
use crate::resources::{HUB_LABEL, MANAGED_BY_LABEL, WEBHOOK_LABEL, Webhook};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

/// The value of `webhook`'s ordering key in the event `document`, when it
/// orders by one the event has.
pub fn ordering_key(webhook: &Webhook, document: &Value) -> Option<String> {
    let path = &webhook.spec.ordering.as_ref()?.key;
    filters::first_value(path, document).ok().flatten()
}

/// Label on a Delivery naming its event (when the name fits in a label value).
pub const EVENT_LABEL: &str = "hookrelay.dev/event";

/// The webhooks of `hub` in `ns` that `event` triggers: active, subscribed
/// (exactly or by wildcard), and passing their filters. Webhooks that would
/// be selected but whose filters or template do not compile are returned
/// apart, with the reason (their Ready condition says it too).
/// Webhooks come as the caller holds them (`&Webhook`, `&Arc<Webhook>`)
/// and the selected go back so.
pub fn select<'a, W: std::borrow::Borrow<Webhook>>(
    webhooks: impl IntoIterator<Item = &'a W>,
    ns: &str,
    hub: &str,
    name: &str,
    document: &Value,
) -> (Vec<&'a W>, Vec<(String, String)>) {
    let mut selected: Vec<&W> = Vec::new();
    let mut skipped = Vec::new();
    let candidates = webhooks
        .into_iter()
        .filter(|w| {
            let w = (*w).borrow();
            w.namespace().as_deref() == Some(ns) && w.spec.hub == hub && w.spec.active
        })
        .filter(|w| (*w).borrow().spec.events.iter().any(|s| subscription_matches(s, name)));
    for held in candidates {
        let w = held.borrow();
        let compiled = compiled(w);
        match (&compiled.filters, &compiled.template) {
            (Err(e), _) | (_, Err(e)) => skipped.push((w.name_any(), e.clone())),
            (Ok(f), Ok(())) if filters::hold(f, document) => selected.push(held),
            _ => {}
        }
    }
    selected.sort_by_key(|w| (*w).borrow().name_any());
    skipped.sort();
    (selected, skipped)
}

/// A webhook's filters and template as fan-out uses them: compiled once per
/// version of its spec (fan-out looks at every subscribed webhook for every
/// event), or why they do not compile.
struct Compiled {
    filters: Result<Vec<filters::Compiled>, String>,
    template: Result<(), String>,
}

/// Compiled versions kept; past this the cache starts afresh (webhooks
/// deleted or changed leave entries behind).
const COMPILED_KEPT: usize = 20_000;

fn compiled(w: &Webhook) -> Arc<Compiled> {
    /// (uid, generation) → what its spec compiles to.
    type Cache = Mutex<HashMap<(String, i64), Arc<Compiled>>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Mutex::default);
    let compile = || {
        Arc::new(Compiled {
            filters: filters::compile(&w.spec.filters).map_err(|e| e.to_string()),
            template: match w.spec.custom_payload.as_deref().map(crate::template::check) {
                Some(Err(e)) => Err(e.to_string()),
                _ => Ok(()),
            },
        })
    };
    // The spec's generation changes with every change of the spec.
    let (Some(uid), Some(generation)) = (w.uid(), w.metadata.generation) else {
        return compile();
    };
    let key = (uid, generation);
    if let Some(hit) = CACHE.lock().expect("not poisoned").get(&key) {
        return hit.clone();
    }
    // Compiled outside the lock: other events' fan-outs go on meanwhile.
    let fresh = compile();
    let mut cache = CACHE.lock().expect("not poisoned");
    if cache.len() >= COMPILED_KEPT {
        cache.clear();
    }
    cache.insert(key, fresh.clone());
    fresh
}

/// The Delivery name for (event id, webhook): deterministic, so a repeated
/// ingest of the same event is idempotent. The webhook's name leads, for
/// people reading `kubectl get deliveries`.
pub fn delivery_name(event_id: &str, webhook: &Webhook) -> String {
    let mut hasher = Sha256::new();
    hasher.update(event_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(webhook.uid().unwrap_or_default().as_bytes());
    let digest: String = hasher.finalize()[..10].iter().map(|b| format!("{b:02x}")).collect();
    let name = webhook.name_any();
    let prefix: String = name.chars().take(40).collect();
    format!("{}-{digest}", prefix.trim_end_matches(['-', '.']))
}

/// The Delivery of `event` for `webhook`, owned by the webhook so it goes
/// when the webhook goes. `payload` is the payload's JSON text.
pub fn build(webhook: &Webhook, event_id: &str, name: &str, payload: &str, received_at: Timestamp) -> Delivery {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), "hookrelay".to_string()),
        (HUB_LABEL.to_string(), webhook.spec.hub.clone()),
        (WEBHOOK_LABEL.to_string(), webhook.name_any()),
    ]);
    if name.len() <= 63 {
        labels.insert(EVENT_LABEL.to_string(), name.to_string());
    }
    let owner = webhook.controller_owner_ref(&()).map(|mut o| {
        // Ingest may not hold the finalizers permission blockOwnerDeletion needs.
        o.block_owner_deletion = None;
        o
    });
    Delivery {
        metadata: ObjectMeta {
            name: Some(delivery_name(event_id, webhook)),
            namespace: webhook.namespace(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: DeliverySpec {
            webhook: webhook.name_any(),
            hub: webhook.spec.hub.clone(),
            event: EventRef {
                id: event_id.to_string(),
                name: name.to_string(),
                received_at: MicroTime(received_at),
                trace: None,
            },
            payload: payload.to_string(),
        },
        status: None,
    }
}

/// A Delivery of a test event for `webhook` alone (the console's and the
/// kubectl plugin's "send a test event"), with a fresh event id.
pub fn test_delivery(webhook: &Webhook, event: &str, payload: &Value) -> Result<Delivery, String> {
    let id = format!("test-{}", uuid::Uuid::new_v4().simple());
    test_delivery_as(webhook, &id, event, payload)
}

/// A test delivery under the event id `id` (as `test_delivery` made it, so
/// a client that asks for it by name finds it).
pub fn test_delivery_as(webhook: &Webhook, id: &str, event: &str, payload: &Value) -> Result<Delivery, String> {
    use crate::resources::delivery::{MAX_PAYLOAD_DEPTH, json_depth};
    if !is_test_id(id) {
        return Err(format!("{id:?} is not a test event id (test- and 32 hex digits)"));
    }
    if json_depth(payload) > MAX_PAYLOAD_DEPTH {
        return Err(format!("the payload nests more than {MAX_PAYLOAD_DEPTH} levels"));
    }
    Ok(build(webhook, id, event, &payload.to_string(), Timestamp::now()))
}

/// Whether `id` is one `test_delivery` makes.
pub fn is_test_id(id: &str) -> bool {
    id.strip_prefix("test-")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

/// The event as filters see it.
pub fn document(id: &str, name: &str, payload: &Value) -> Value {
    json!({ "id": id, "name": name, "payload": payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::webhook::{WebhookFilter, WebhookSpec};

    fn webhook(name: &str, hub: &str, events: &[&str], active: bool, filters: Vec<WebhookFilter>) -> Webhook {
        let mut w = Webhook::new(
            name,
            WebhookSpec {
                active,
                filters,
                ..WebhookSpec::new(hub, name, "http://127.0.0.1:1/h", events)
            },
        );
        w.metadata.namespace = Some("ns".into());
        w.metadata.uid = Some(format!("uid-{name}"));
        w
    }

    #[test]
    fn selects_active_subscribed_webhooks_of_the_hub_passing_filters() {
        let locale = |v: &str| WebhookFilter {
            path: "$.payload.locale".into(),
            equal: Some(v.into()),
            in_: None,
        };
        let hooks = [
            webhook("exact", "main", &["dynamic-content.content-item.updated"], true, vec![]),
            webhook("wildcard", "main", &["dynamic-content.content-item.*"], true, vec![]),
            webhook(
                "inactive",
                "main",
                &["dynamic-content.content-item.updated"],
                false,
                vec![],
            ),
            webhook(
                "other-hub",
                "other",
                &["dynamic-content.content-item.updated"],
                true,
                vec![],
            ),
            webhook(
                "other-event",
                "main",
                &["dynamic-content.edition.published"],
                true,
                vec![],
            ),
            webhook(
                "filtered-in",
                "main",
                &["dynamic-content.content-item.updated"],
                true,
                vec![locale("en-GB")],
            ),
            webhook(
                "filtered-out",
                "main",
                &["dynamic-content.content-item.updated"],
                true,
                vec![locale("de-DE")],
            ),
        ];
        let doc = document(
            "e1",
            "dynamic-content.content-item.updated",
            &json!({ "locale": "en-GB" }),
        );
        let names: Vec<String> = select(&hooks, "ns", "main", "dynamic-content.content-item.updated", &doc)
            .0
            .iter()
            .map(|w| w.name_any())
            .collect();
        assert_eq!(names, vec!["exact", "filtered-in", "wildcard"]);
        assert!(
            select(
                &hooks,
                "elsewhere",
                "main",
                "dynamic-content.content-item.updated",
                &doc
            )
            .0
            .is_empty()
        );
    }

    #[test]
    fn webhooks_whose_filters_or_template_do_not_compile_are_skipped_saying_why() {
        let bad_filter = WebhookFilter {
            path: "$[".into(),
            equal: Some("x".into()),
            in_: None,
        };
        let mut bad_template = webhook("templated", "main", &["a.b"], true, vec![]);
        bad_template.spec.custom_payload = Some("{{> p}}".into());
        let hooks = [
            webhook("ok", "main", &["a.b"], true, vec![]),
            webhook("filtered", "main", &["a.b"], true, vec![bad_filter]),
            bad_template,
        ];
        let (selected, skipped) = select(&hooks, "ns", "main", "a.b", &document("e", "a.b", &json!({})));
        assert_eq!(selected.iter().map(|w| w.name_any()).collect::<Vec<_>>(), vec!["ok"]);
        let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["filtered", "templated"]);
        assert!(skipped[1].1.contains("partials"), "{skipped:?}");
    }

    #[test]
    fn delivery_names_are_deterministic_per_event_and_webhook() {
        let a = webhook("shop", "main", &["x.y"], true, vec![]);
        let b = webhook("blog", "main", &["x.y"], true, vec![]);
        assert_eq!(delivery_name("e1", &a), delivery_name("e1", &a));
        assert_ne!(delivery_name("e1", &a), delivery_name("e2", &a));
        assert_ne!(delivery_name("e1", &a), delivery_name("e1", &b));
        assert!(delivery_name("e1", &a).starts_with("shop-"));
        let long = webhook(&format!("{}-x", "a".repeat(39)), "main", &["x.y"], true, vec![]);
        let n = delivery_name("e1", &long);
        assert!(n.len() <= 63 && !n.contains("--"), "{n}");
    }

    #[test]
    fn delivery_is_labelled_and_owned_by_its_webhook() {
        let w = webhook("shop", "main", &["x.y"], true, vec![]);
        let d = build(
            &w,
            "e1",
            "dynamic-content.content-item.updated",
            r#"{"id":1}"#,
            Timestamp::now(),
        );
        assert_eq!(d.labels()[WEBHOOK_LABEL], "shop");
        assert_eq!(d.labels()[HUB_LABEL], "main");
        assert_eq!(d.labels()[EVENT_LABEL], "dynamic-content.content-item.updated");
        assert_eq!(d.owner_references()[0].uid, "uid-shop");
        assert_eq!(d.spec.event.id, "e1");
        assert_eq!(d.spec.payload_value().unwrap(), json!({"id": 1}));
        assert!(d.status.is_none());
    }
}
