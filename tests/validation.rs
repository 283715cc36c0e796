//! The API server itself rejects bad Hubs and Webhooks, with an error that
//! names the field; good ones (the examples) are accepted.

mod support;

use hookrelay::resources::{Hub, Webhook};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::TestEnv;

fn webhook(name: &str, patch: impl FnOnce(&mut Value)) -> Value {
    let mut w = json!({
        "apiVersion": "hookrelay.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": { "name": name },
        "spec": {
            "hub": "main",
            "label": "Example integration",
            "url": "https://shop.example.com/hook",
            "events": ["dynamic-content.content-item.created"],
        }
    });
    patch(&mut w["spec"]);
    w
}

fn hub(name: &str, patch: impl FnOnce(&mut Value)) -> Value {
    let mut h = json!({
        "apiVersion": "hookrelay.dev/v1alpha1",
        "kind": "Hub",
        "metadata": { "name": name },
        "spec": { "label": "Main" }
    });
    patch(&mut h["spec"]);
    h
}

async fn create(env: &TestEnv, object: Value) -> Result<(), String> {
    let resource = match object["kind"].as_str() {
        Some("Hub") => ApiResource::erase::<Hub>(&()),
        _ => ApiResource::erase::<Webhook>(&()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &resource);
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

#[tokio::test]
async fn valid_objects_are_accepted() {
    let env = TestEnv::new("valid_objects_are_accepted").await;
    let everything = webhook("everything", |s| {
        s["url"] = json!("http://127.0.0.1:8090/hook?x=1");
        s["events"] = json!(["dynamic-content.content-item.*", "shop.order.paid"]);
        s["active"] = json!(false);
        s["method"] = json!("PUT");
        s["headers"] = json!([
            { "name": "X-Api-Key", "valueFrom": { "secretKeyRef": { "name": "k", "key": "v" } } },
            { "name": "X-Team", "value": "content" },
        ]);
        s["filters"] = json!([
            { "path": "$.payload.contentTypeUri", "equal": "https://example.com/blog" },
            { "path": "$.payload.locale", "in": ["en-GB", "de-DE"] },
        ]);
        s["customPayload"] = json!("{\"event\": \"{{name}}\"}");
        s["secretRef"] = json!({ "name": "mine", "key": "secret" });
        s["retry"] = json!({ "maxRetries": 3, "window": "1h30m" });
    });
    let full_hub = hub("full", |s| {
        s["ingest"] = json!({ "tokenSecretRef": { "name": "t", "key": "token" } });
        s["customEvents"] = json!(["shop.order.paid"]);
        s["retry"] = json!({ "maxRetries": 18, "window": "12h" });
        s["delivery"] =
            json!({ "timeout": "10s", "connectTimeout": "2s", "concurrencyPerWebhook": 8, "responseBodyLimit": 1024 });
        s["retention"] = json!({ "keepPerWebhook": 50, "maxAge": "72h" });
        s["signing"] = json!({ "header": "X-Signature", "rotationOverlap": "1h" });
        s["egress"] = json!({ "deniedNetworks": ["10.0.0.0/8"], "allowedNetworks": ["169.254.0.0/16"] });
    });
    for object in [webhook("minimal", |_| {}), everything, hub("minimal", |_| {}), full_hub] {
        let name = format!("{} {}", object["kind"], object["metadata"]["name"]);
        create(&env, object)
            .await
            .unwrap_or_else(|e| panic!("{name} rejected: {e}"));
    }
    // Defaults are applied by the API server.
    let stored: Webhook = env.api::<Webhook>().get("minimal").await.unwrap();
    assert!(stored.spec.active);
    assert_eq!(stored.spec.method.as_str(), "POST");
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_objects_are_rejected_naming_the_field() {
    let env = TestEnv::new("invalid_objects_are_rejected").await;
    let long_label = "x".repeat(129);
    // (object, text the error must contain: the field path, and the rule)
    let cases: Vec<(Value, &[&str])> = vec![
        (
            webhook("ftp", |s| s["url"] = json!("ftp://example.com/hook")),
            &["spec.url", "http or https"],
        ),
        (
            webhook("relative", |s| s["url"] = json!("/hook")),
            &["spec.url", "absolute"],
        ),
        (
            webhook("nohost", |s| s["url"] = json!("http:///hook")),
            &["spec.url", "with a host"],
        ),
        (webhook("noevents", |s| s["events"] = json!([])), &["spec.events"]),
        (
            webhook("badevent", |s| s["events"] = json!(["Content Updated"])),
            &["spec.events[0]", "should match"],
        ),
        (
            webhook("dupevent", |s| {
                s["events"] = json!(["dynamic-content.edition.published", "dynamic-content.edition.published"])
            }),
            &["spec.events[1]", "Duplicate value"],
        ),
        (webhook("nolabel", |s| s["label"] = json!("")), &["spec.label"]),
        (
            webhook("longlabel", |s| s["label"] = json!(long_label)),
            &["spec.label", "128"],
        ),
        (webhook("get", |s| s["method"] = json!("GET")), &["spec.method", "POST"]),
        (
            webhook("tls-http", |s| {
                s["url"] = json!("http://127.0.0.1/hook");
                s["tls"] = json!({ "clientCertSecretRef": { "name": "c" } });
            }),
            &["spec", "tls needs an https url"],
        ),
        (
            webhook("oauth2-header", |s| {
                s["oauth2"] = json!({
                    "tokenURL": "https://login.example.com/token",
                    "clientID": "c",
                    "clientSecretRef": { "name": "o", "key": "k" }
                });
                s["headers"] = json!([{ "name": "authorization", "value": "Basic x" }]);
            }),
            &["spec", "oauth2 sets the Authorization header"],
        ),
        (
            webhook("asymmetric-own-secret", |s| {
                s["secretRef"] = json!({ "name": "mine", "key": "secret" });
                s["signing"] = json!({ "scheme": "asymmetric" });
            }),
            &["spec", "signing.scheme asymmetric or both", "remove secretRef"],
        ),
        (
            webhook("unknown-scheme", |s| {
                s["signing"] = json!({ "scheme": "rsa" });
            }),
            &["spec.signing.scheme", "symmetric", "asymmetric", "both"],
        ),
        (
            webhook("oauth2-url", |s| {
                s["oauth2"] = json!({
                    "tokenURL": "file:///etc/passwd",
                    "clientID": "c",
                    "clientSecretRef": { "name": "o", "key": "k" }
                });
            }),
            &["spec.oauth2.tokenURL", "http or https"],
        ),
        (
            webhook("oauth2-auth", |s| {
                s["oauth2"] = json!({
                    "tokenURL": "https://login.example.com/token",
                    "clientID": "c",
                    "clientSecretRef": { "name": "o", "key": "k" },
                    "clientAuth": "jwt"
                });
            }),
            &["spec.oauth2.clientAuth", "basic"],
        ),
        (
            webhook("reserved", |s| {
                s["headers"] = json!([{ "name": "Content-Type", "value": "text/plain" }])
            }),
            &["spec.headers[0].name", "reserved"],
        ),
        (
            webhook("swh", |s| {
                s["headers"] = json!([{ "name": "webhook-id", "value": "x" }])
            }),
            &["spec.headers[0].name", "reserved"],
        ),
        (
            webhook("badheader", |s| {
                s["headers"] = json!([{ "name": "X Bad", "value": "x" }])
            }),
            &["spec.headers[0].name", "should match"],
        ),
        (
            webhook(
                "both",
                |s| s["headers"] = json!([{ "name": "X-Key", "value": "x", "valueFrom": { "secretKeyRef": { "name": "a", "key": "b" } } }]),
            ),
            &["spec.headers[0]", "exactly one of value or valueFrom"],
        ),
        (
            webhook("neither", |s| s["headers"] = json!([{ "name": "X-Key" }])),
            &["spec.headers[0]", "exactly one of value or valueFrom"],
        ),
        (
            webhook("filterboth", |s| {
                s["filters"] = json!([{ "path": "$.name", "equal": "a", "in": ["b"] }])
            }),
            &["spec.filters[0]", "exactly one of equal or in"],
        ),
        (
            webhook("filterpath", |s| {
                s["filters"] = json!([{ "path": "payload.id", "equal": "a" }])
            }),
            &["spec.filters[0].path", "should match"],
        ),
        (
            webhook("retries", |s| s["retry"] = json!({ "maxRetries": 51 })),
            &["spec.retry.maxRetries", "50"],
        ),
        (
            webhook("window", |s| s["retry"] = json!({ "window": "200h" })),
            &["spec.retry.window", "between 1s and 168h"],
        ),
        (
            webhook("nohub", |s| {
                s.as_object_mut().unwrap().remove("hub").map(drop).unwrap_or(())
            }),
            &["spec.hub", "Required"],
        ),
        (
            hub("custom", |s| s["customEvents"] = json!(["Order Paid"])),
            &["spec.customEvents[0]", "should match"],
        ),
        (
            hub("cidr", |s| s["egress"] = json!({ "deniedNetworks": ["10.0.0.0/33"] })),
            &["spec.egress.deniedNetworks", "CIDR"],
        ),
        (
            hub("timeout", |s| s["delivery"] = json!({ "timeout": "10m" })),
            &["spec.delivery.timeout", "between 1s and 5m"],
        ),
        (
            hub("overlap", |s| s["signing"] = json!({ "rotationOverlap": "1000h" })),
            &["spec.signing.rotationOverlap", "720h"],
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (object, expected) in cases {
        let name = format!(
            "{}/{}",
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap()
        );
        match create(&env, object).await {
            Ok(()) => failures.push(format!("{name}: accepted, expected a rejection naming {expected:?}")),
            Err(message) => {
                for text in expected {
                    if !message.contains(text) {
                        failures.push(format!("{name}: error lacks {text:?}: {message}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    env.cleanup().await;
}
