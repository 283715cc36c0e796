//! W3C Trace Context from the CMS to the handler: ingest continues the
//! sender's trace (or starts one), the Delivery keeps it, and each attempt's
//! request carries a new child span of it, unless the webhook turns that off.

mod support;

use hookrelay::resources::webhook::WebhookDelivery;
use hookrelay::trace_context::parse;
use serde_json::json;
use support::eventually;
use support::otlp::{Jaeger, OtlpReceiver};
use support::receiver::Receiver;
use support::stack::{Options, Stack, Store, WAIT, deliveries_of, spec};

const EVENT: &str = "dynamic-content.content-item.updated";
/// The spec's example: what a CMS with tracing would send.
const CMS: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Posts `body` with trace headers; the accepted answer.
async fn post_traced(stack: &Stack, body: &serde_json::Value, headers: &[(&str, &str)]) -> serde_json::Value {
    let (status, answer) = stack
        .post_raw(
            "main",
            Some(&stack.token),
            "application/json",
            body.to_string().into_bytes(),
            headers,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    answer
}

async fn the_senders_trace_reaches_the_handler_and_stays_with_the_delivery(store: Store) {
    let stack = Stack::start_in("trace_context", store).await;
    let receiver = Receiver::start().await;
    stack.webhook("traced", spec(receiver.url("/traced"), &[EVENT])).await;
    let mut quiet = spec(receiver.url("/quiet"), &[EVENT]);
    quiet.delivery = Some(WebhookDelivery {
        trace_context: Some(false),
        ..Default::default()
    });
    stack.webhook("quiet", quiet).await;

    let body = json!({ "id": "traced-1", "name": EVENT, "payload": {} });
    let answer = post_traced(&stack, &body, &[("traceparent", CMS), ("tracestate", "cms=1")]).await;
    assert_eq!(answer["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let got = receiver.wait_for("/traced", 1, WAIT).await;
    let sent = got[0].header("traceparent").expect("a traceparent").to_string();
    let parent = parse(&sent).expect("a valid traceparent");
    assert_eq!(parent.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "the CMS's trace");
    assert_ne!(parent.span_id, "00f067aa0ba902b7", "a span of its own, not the CMS's");
    assert_eq!(parent.flags, "01");
    assert_eq!(got[0].header("tracestate"), Some("cms=1"));
    let quiet = receiver.wait_for("/quiet", 1, WAIT).await;
    assert_eq!(
        (quiet[0].header("traceparent"), quiet[0].header("tracestate")),
        (None, None),
        "delivery.traceContext: false sends none"
    );
    // The Delivery keeps the trace, and its attempt records the header sent.
    for name in deliveries_of(&answer) {
        let d = stack.delivery_done(&name).await;
        let trace = d.spec.event.trace.as_ref().expect("the event's trace");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.tracestate.as_deref(), Some("cms=1"));
        let recorded = &d.status.unwrap().attempts[0].request.headers;
        let recorded = recorded
            .iter()
            .find(|h| h.name == "traceparent")
            .map(|h| h.value.as_str());
        match d.spec.webhook.as_str() {
            "traced" => assert_eq!(recorded, Some(sent.as_str())),
            _ => assert_eq!(recorded, None),
        }
    }

    // No trace context: ingest starts a trace, and the handler gets it.
    let (status, answer) = stack
        .post(json!({ "id": "untraced-1", "name": EVENT, "payload": {} }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let started = answer["traceId"].as_str().unwrap().to_string();
    assert!(
        started.len() == 32 && started != "4bf92f3577b34da6a3ce929d0e0e4736",
        "{started}"
    );
    let got = receiver.wait_for("/traced", 2, WAIT).await;
    let sent = parse(got[1].header("traceparent").unwrap())
        .unwrap()
        .trace_id
        .to_string();
    assert_eq!(sent, started);
    assert_eq!(got[1].header("tracestate"), None);
    stack.cleanup().await;
}

/// A payload value no span may hold.
const PAYLOAD_MARKER: &str = "payload-marker-6f1c";

async fn spans_of_one_event_are_exported_with_their_parents(store: Store) {
    let collector = OtlpReceiver::start().await;
    let otlp = ["--otlp-endpoint".to_string(), collector.endpoint()];
    let stack = Stack::start_with(
        "trace_spans",
        Options {
            store,
            controller_args: otlp.to_vec(),
            ingest_args: otlp.to_vec(),
            ..Options::default()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    let secret = stack
        .webhook("traced", spec(receiver.url("/traced?token=q-secret"), &[EVENT]))
        .await;
    let body = json!({ "id": "spans-1", "name": EVENT, "payload": { "title": PAYLOAD_MARKER } });
    let answer = post_traced(&stack, &body, &[("traceparent", CMS)]).await;
    let got = receiver.wait_for("/traced", 1, WAIT).await;
    let sent = parse(got[0].header("traceparent").unwrap())
        .unwrap()
        .span_id
        .to_string();
    let signature = got[0].header("webhook-signature").unwrap().to_string();

    // Spans are exported in batches (every 5 s by default).
    let spans = eventually(WAIT, "the event's three spans", || async {
        let spans = collector.spans();
        let named = |name: &str| spans.iter().any(|s| s.name == name);
        (named("hookrelay.ingest") && named("hookrelay.store.insert") && named("POST")).then_some(spans)
    })
    .await;
    let one = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
    let (ingest, write, attempt) = (one("hookrelay.ingest"), one("hookrelay.store.insert"), one("POST"));
    for span in [&ingest, &write, &attempt] {
        assert_eq!(span.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{span:?}");
    }
    assert_eq!(ingest.service, "hookrelay-ingest");
    assert_eq!(ingest.parent_span_id, "00f067aa0ba902b7", "a child of the CMS's span");
    assert_eq!(write.parent_span_id, ingest.span_id);
    assert_eq!(attempt.service, "hookrelay-controller");
    assert_eq!(
        attempt.parent_span_id, ingest.span_id,
        "each attempt is a child of ingest's span"
    );
    assert_eq!(attempt.span_id, sent, "the span the handler's traceparent names");
    assert_eq!(attempt.attribute("server.address"), Some("127.0.0.1"));
    assert_eq!(attempt.attribute("http.response.status_code"), Some("200"));
    assert_eq!(attempt.attribute("hookrelay.attempt"), Some("1"));
    let stored = stack.delivery_done(&deliveries_of(&answer)[0]).await;
    let stored = stored.spec.event.trace.unwrap();
    assert_eq!(parse(&stored.traceparent).unwrap().span_id, ingest.span_id);
    // No payload, header value, URL query or secret in any span.
    for span in &spans {
        for (key, value) in &span.attributes {
            for forbidden in [
                PAYLOAD_MARKER,
                secret.as_str(),
                signature.as_str(),
                "q-secret",
                stack.token.as_str(),
            ] {
                assert!(!value.contains(forbidden), "{}: {key} = {value}", span.name);
            }
        }
    }
    stack.cleanup().await;
}

/// The same spans, received by a real OTLP receiver and trace store
/// (Jaeger, another implementation of OTLP), come back as one trace with
/// the parent links the handler's `traceparent` implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jaeger_receives_an_events_spans_as_one_trace() {
    let jaeger = Jaeger::start("trace_jaeger").await;
    let otlp = ["--otlp-endpoint".to_string(), jaeger.endpoint()];
    let stack = Stack::start_with(
        "trace_jaeger",
        Options {
            controller_args: otlp.to_vec(),
            ingest_args: otlp.to_vec(),
            ..Options::default()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    stack.webhook("traced", spec(receiver.url("/traced"), &[EVENT])).await;
    let body = json!({ "id": "jaeger-1", "name": EVENT, "payload": {} });
    post_traced(&stack, &body, &[("traceparent", CMS)]).await;
    let got = receiver.wait_for("/traced", 1, WAIT).await;
    let sent = parse(got[0].header("traceparent").unwrap())
        .unwrap()
        .span_id
        .to_string();

    let trace = eventually(WAIT, "the trace in Jaeger with its three spans", || async {
        let trace = jaeger.trace("4bf92f3577b34da6a3ce929d0e0e4736").await?;
        (trace["spans"].as_array()?.len() >= 3).then_some(trace)
    })
    .await;
    // (operation, service, span id, parent span id) of each span.
    let spans: Vec<(String, String, String, String)> = trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let process = s["processID"].as_str().unwrap_or_default();
            (
                s["operationName"].as_str().unwrap_or_default().to_string(),
                trace["processes"][process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                s["spanID"].as_str().unwrap_or_default().to_string(),
                s["references"][0]["spanID"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let one = |name: &str| {
        spans
            .iter()
            .find(|s| s.0 == name)
            .unwrap_or_else(|| panic!("{name} in {spans:?}"))
    };
    let ingest = one("hookrelay.ingest");
    assert_eq!(
        (ingest.1.as_str(), ingest.3.as_str()),
        ("hookrelay-ingest", "00f067aa0ba902b7")
    );
    let write = one("hookrelay.store.insert");
    assert_eq!(write.3, ingest.2, "the store write is a child of ingest's span");
    let attempt = one("POST");
    assert_eq!(attempt.1, "hookrelay-controller");
    assert_eq!(attempt.3, ingest.2, "the attempt is a child of ingest's span");
    assert_eq!(attempt.2, sent, "the span the handler's traceparent names");
    stack.cleanup().await;
}

both_stores!(
    the_senders_trace_reaches_the_handler_and_stays_with_the_delivery,
    spans_of_one_event_are_exported_with_their_parents
);
