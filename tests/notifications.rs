//! Failure notifications: a webhook that runs out of retries makes
//! operational events arrive, signed, at a webhook subscribed to
//! `hookrelay.*`; the chart's alerts and dashboard name only metrics that
//! exist, and render only when enabled.

mod support;

use hookrelay::delivery::signing;
use hookrelay::resources::RetryPolicy;
use serde_json::json;
use std::collections::BTreeSet;
use std::process::Command;
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, Store, WAIT, deliveries_of, spec};
use support::tool;

const SNAPSHOT: &str = "dynamic-content.snapshot.published";

fn helm_template(args: &[&str]) -> String {
    let out = Command::new(tool("helm"))
        .args(["template", "rel", "charts/hookrelay"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("helm");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every `hookrelay_…` metric name in `text`, without sample suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("hookrelay_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let base = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        names.insert(base);
        rest = &rest[at + name.len()..];
    }
    names
}

async fn running_out_of_retries_notifies_subscribed_webhooks_and_the_charts_metrics_exist(store: Store) {
    let options = Options {
        store,
        ..Options::single_controller()
    };
    let stack = Stack::start_with("operational_events", options).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/flaky", Reply::status(500));
    // The failing webhook also listens to hookrelay.*: it must never be told about itself.
    let mut flaky = spec(receiver.url("/flaky"), &[SNAPSHOT, "hookrelay.*"]);
    flaky.retry = Some(RetryPolicy {
        max_retries: Some(0),
        window: None,
    });
    stack.webhook("flaky", flaky).await;
    let ops_secret = stack.webhook("ops", spec(receiver.url("/ops"), &["hookrelay.*"])).await;

    // Senders cannot forge operational events.
    let (status, answer) = stack
        .post(json!({ "name": "hookrelay.delivery.failed", "payload": {} }))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("UnknownEvent")),
        "{answer}"
    );

    let (status, answer) = stack
        .post(json!({ "id": "snap-1", "name": SNAPSHOT, "payload": { "id": "s-1" } }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let failed = deliveries_of(&answer)
        .into_iter()
        .find(|n| n.starts_with("flaky-"))
        .unwrap();
    let notes = receiver.wait_for("/ops", 2, WAIT).await;
    let mut names: Vec<String> = notes
        .iter()
        .map(|r| r.json()["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["hookrelay.delivery.failed", "hookrelay.webhook.deactivated"]
    );
    for note in &notes {
        let body = note.json();
        assert_eq!(body["payload"]["webhook"], "flaky", "{body}");
        assert_eq!(body["payload"]["delivery"], failed.as_str(), "{body}");
        assert_eq!(
            note.header("X-Amplience-Webhook-Signature"),
            Some(signing::body_signature(&ops_secret, &note.body).as_str()),
            "signed like any delivery"
        );
    }
    let failure = notes
        .iter()
        .find(|r| r.json()["name"] == "hookrelay.delivery.failed")
        .unwrap();
    assert_eq!(failure.json()["payload"]["lastStatus"], 500);
    let deactivation = notes
        .iter()
        .find(|r| r.json()["name"] == "hookrelay.webhook.deactivated")
        .unwrap();
    assert_eq!(deactivation.json()["payload"]["reason"], "RetriesExhausted");
    assert_eq!(receiver.received("/flaky").len(), 1, "never notified about itself");

    // Every metric a chart rule or panel names is exported by the controller or ingest.
    let rendered = helm_template(&[
        "--set=metrics.prometheusRule.enabled=true",
        "--set=metrics.grafanaDashboard.enabled=true",
    ]);
    assert!(rendered.contains("kind: PrometheusRule") && rendered.contains("hookrelay-dashboard"));
    let default = helm_template(&[]);
    assert!(
        !default.contains("PrometheusRule") && !default.contains("hookrelay-dashboard"),
        "opt-in only"
    );
    let wanted = metric_names(&rendered);
    assert!(wanted.len() >= 8, "{wanted:?}");
    let http = reqwest::Client::new();
    let mut exported = String::new();
    for (process, message) in [
        (&stack.controller, "serving /healthz, /readyz, /metrics"),
        (&stack.ingest.process, "serving /metrics, /healthz, /readyz"),
    ] {
        let addr = process.log_field(message, "listen").expect("a metrics listener");
        exported.push_str(
            &http
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    for name in &wanted {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "{name} is named by the chart but not exported"
        );
    }
    stack.cleanup().await;
}

both_stores!(running_out_of_retries_notifies_subscribed_webhooks_and_the_charts_metrics_exist);
