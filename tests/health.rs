//! Health as GitOps tools compute it: the kstatus rules (Flux, cli-utils,
//! `kubectl wait`) and Argo CD's Lua health checks (examples/argocd/*.lua),
//! both run against real objects the controller reconciled.

mod support;

use hookrelay::resources::{Hub, Webhook};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use std::time::Duration;
use support::eventually;
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, WAIT, deliveries_of, spec};

/// kstatus's generic rules, in their documented order: deletion →
/// Terminating; observedGeneration behind generation → InProgress;
/// Reconciling=True → InProgress; Stalled=True → Failed; else Current.
fn kstatus(obj: &Value) -> &'static str {
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating";
    }
    let observed = &obj["status"]["observedGeneration"];
    if !observed.is_null() && *observed != obj["metadata"]["generation"] {
        return "InProgress";
    }
    let condition = |kind: &str| {
        obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] == "True")
    };
    if condition("Reconciling") {
        return "InProgress";
    }
    if condition("Stalled") {
        return "Failed";
    }
    "Current"
}

#[test]
fn the_kstatus_rules_follow_their_table() {
    let obj = |generation: i64, status: Value| json!({ "metadata": { "generation": generation }, "status": status });
    assert_eq!(
        kstatus(&json!({ "metadata": { "generation": 1 } })),
        "Current",
        "no status at all"
    );
    assert_eq!(kstatus(&obj(2, json!({ "observedGeneration": 1 }))), "InProgress");
    assert_eq!(
        kstatus(&obj(
            1,
            json!({ "observedGeneration": 1, "conditions": [{ "type": "Reconciling", "status": "True" }] })
        )),
        "InProgress"
    );
    assert_eq!(
        kstatus(&obj(
            1,
            json!({ "observedGeneration": 1, "conditions": [{ "type": "Stalled", "status": "True" }] })
        )),
        "Failed"
    );
    assert_eq!(
        kstatus(&json!({ "metadata": { "generation": 1, "deletionTimestamp": "x" } })),
        "Terminating"
    );
}

/// Runs an Argo CD health script against `obj`; its (status, message).
fn argo_health(kind: &str, obj: &Value) -> (String, String) {
    use mlua::LuaSerdeExt;
    let script = std::fs::read_to_string(format!("{}/examples/argocd/{kind}.lua", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let lua = mlua::Lua::new();
    lua.globals().set("obj", lua.to_value(obj).unwrap()).unwrap();
    let hs: mlua::Table = lua.load(&script).eval().unwrap_or_else(|e| panic!("{kind}.lua: {e}"));
    (hs.get("status").unwrap(), hs.get("message").unwrap_or_default())
}

fn as_json<T: serde::Serialize>(obj: &T) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    // As Argo CD sees objects: without managed fields.
    v["metadata"]["managedFields"] = Value::Null;
    v
}

#[tokio::test]
async fn gitops_health_follows_the_controller() {
    let mut stack = Stack::start_with("gitops_health", Options::single_controller()).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/bad", Reply::status(500));
    let webhooks: Api<Webhook> = stack.env.api();

    // Created while no controller runs: InProgress, not Current.
    stack.kill_controller();
    let fresh = webhooks
        .create(
            &PostParams::default(),
            &Webhook::new(
                "fresh",
                spec(receiver.url("/fresh"), &["dynamic-content.snapshot.published"]),
            ),
        )
        .await
        .unwrap();
    let fresh = webhooks.get(&fresh.metadata.name.unwrap()).await.unwrap();
    assert_eq!(kstatus(&as_json(&fresh)), "InProgress", "{:?}", fresh.status);
    assert_eq!(argo_health("webhook", &as_json(&fresh)).0, "Progressing");
    stack.restart_controller();
    let current = eventually(WAIT, "the fresh webhook Current", || async {
        let w = webhooks.get("fresh").await.ok()?;
        (kstatus(&as_json(&w)) == "Current").then_some(w)
    })
    .await;
    assert_eq!(argo_health("webhook", &as_json(&current)).0, "Healthy");

    // A configuration error that will not fix itself: Stalled, kstatus Failed.
    webhooks
        .create(
            &PostParams::default(),
            &Webhook::new(
                "typo",
                spec(receiver.url("/typo"), &["dynamic-content.snapshot.publish"]),
            ),
        )
        .await
        .unwrap();
    let typo = eventually(WAIT, "the typo webhook Failed", || async {
        let w = webhooks.get("typo").await.ok()?;
        (kstatus(&as_json(&w)) == "Failed").then_some(w)
    })
    .await;
    let stalled = typo
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.reason, "UnknownEvent");
    let (health, message) = argo_health("webhook", &as_json(&typo));
    assert_eq!(health, "Degraded");
    assert!(message.contains("UnknownEvent"), "{message}");

    // A webhook whose hub is not there yet is waiting (it may come in the same sync).
    let mut orphan = spec(receiver.url("/orphan"), &["dynamic-content.snapshot.published"]);
    orphan.hub = "later".into();
    webhooks
        .create(&PostParams::default(), &Webhook::new("orphan", orphan))
        .await
        .unwrap();
    eventually(WAIT, "the orphan webhook InProgress by Reconciling", || async {
        let w = webhooks.get("orphan").await.ok()?;
        let reconciling = w
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.status == "True");
        (reconciling && kstatus(&as_json(&w)) == "InProgress").then_some(())
    })
    .await;

    // Hub and Deliveries in Argo CD's terms.
    let hub = stack.env.api::<Hub>().get("main").await.unwrap();
    assert_eq!(kstatus(&as_json(&hub)), "Current");
    assert_eq!(argo_health("hub", &as_json(&hub)).0, "Healthy");
    let mut bad = spec(receiver.url("/bad"), &["dynamic-content.content-item.updated"]);
    bad.retry = Some(hookrelay::resources::RetryPolicy {
        max_retries: Some(0),
        window: None,
    });
    stack.webhook("bad", bad).await;
    let (_, answer) = stack
        .post(json!({ "name": "dynamic-content.snapshot.published", "payload": {} }))
        .await;
    let good = deliveries_of(&answer)
        .into_iter()
        .find(|n| n.starts_with("fresh-"))
        .unwrap();
    let (_, answer) = stack
        .post(json!({ "name": "dynamic-content.content-item.updated", "payload": {} }))
        .await;
    let failed = deliveries_of(&answer).remove(0);
    let good = stack.delivery_done(&good).await;
    assert_eq!(argo_health("delivery", &as_json(&good)).0, "Healthy");
    let failed = stack.delivery_done(&failed).await;
    assert_eq!(argo_health("delivery", &as_json(&failed)).0, "Degraded");
    let deactivated = eventually(Duration::from_secs(60), "bad deactivated", || async {
        let w = webhooks.get("bad").await.ok()?;
        (!w.spec.active && w.status.as_ref()?.observed_generation == w.metadata.generation).then_some(w)
    })
    .await;
    eventually(WAIT, "the deactivation in the status", || async {
        let w = webhooks.get("bad").await.ok()?;
        let active = w
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Active")?
            .clone();
        (active.reason == "RetriesExhausted").then_some(())
    })
    .await;
    let deactivated = webhooks.get(&deactivated.metadata.name.unwrap()).await.unwrap();
    assert_eq!(argo_health("webhook", &as_json(&deactivated)).0, "Degraded");
    stack.cleanup().await;
}

/// Every property under `schema` (following `$ref`s into `schemas`) without
/// a description, by path; Kubernetes' own types (ObjectMeta, Condition...)
/// are described upstream and not walked.
fn undescribed(schema: &Value, schemas: &Value, path: &str, out: &mut Vec<String>) {
    let resolved = match schema["allOf"][0]["$ref"].as_str().or(schema["$ref"].as_str()) {
        Some(r) if r.contains("io.k8s.") => return,
        Some(r) => &schemas[r.rsplit('/').next().unwrap()],
        None => schema,
    };
    for (name, property) in resolved["properties"].as_object().into_iter().flatten() {
        let here = format!("{path}.{name}");
        if property["description"].is_null() && name != "metadata" {
            out.push(here.clone());
        }
        undescribed(property, schemas, &here, out);
    }
    if !resolved["items"].is_null() {
        undescribed(&resolved["items"], schemas, &format!("{path}[]"), out);
    }
}

#[tokio::test]
async fn kubectl_explain_has_a_description_for_every_field() {
    let env = support::TestEnv::new("explain_descriptions").await;
    // Published a moment after the CRDs are established (on a control
    // plane started for this run, the first request can come before it).
    let document: Value = eventually(WAIT, "the API server's OpenAPI v3 of hookrelay.dev", || async {
        let request = http::Request::get("/openapi/v3/apis/hookrelay.dev/v1alpha1")
            .body(Vec::new())
            .unwrap();
        let document: Value = env.client.request(request).await.ok()?;
        ["Hub", "Webhook", "Delivery"]
            .iter()
            .all(|kind| !document["components"]["schemas"][format!("dev.hookrelay.v1alpha1.{kind}")].is_null())
            .then_some(document)
    })
    .await;
    let schemas = &document["components"]["schemas"];
    for kind in ["Hub", "Webhook", "Delivery"] {
        let schema = &schemas[format!("dev.hookrelay.v1alpha1.{kind}")];
        let description = schema["description"].as_str().unwrap_or_default();
        assert!(
            !description.is_empty() && !description.contains("Auto-generated"),
            "{kind}: {description:?}"
        );
        let mut missing = vec![];
        undescribed(schema, schemas, kind, &mut missing);
        assert!(missing.is_empty(), "{kind}: fields without a description: {missing:?}");
    }
    env.cleanup().await;
}
