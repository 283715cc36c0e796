//! The engine over the memory store, without a cluster: what happens to
//! deliveries (retries, giving up, deactivation, cancelled siblings,
//! notifications, 410, Retry-After, redelivery, a record that fails) with a
//! handler on 127.0.0.1 and a stand-in API server answering the few calls
//! the engine makes besides its store (the signing Secret, the Webhook's
//! deactivation and status, Events). Retry windows are seconds long, so
//! each test takes about as long as its retries.

use super::*;
use crate::resources::delivery::{DeliveryStatus, Phase};
use crate::resources::webhook::WebhookSpec;
use crate::resources::{RetryPolicy, SecretKeyRef};
use crate::store::memory::Memory;
use crate::store::{Deliveries, NewDelivery, Records};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::runtime::reflector;
use kube::runtime::watcher;
use std::time::Instant;

const EVENT: &str = "dynamic-content.content-item.updated";
const NS: &str = "tenant";
const SECRET: &str = "signing";

/// What the handler answers on a path.
#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Answer 500 to this many requests first.
    fail_first: usize,
}

/// What the handler on 127.0.0.1 answers and what it received.
#[derive(Default)]
struct Handler {
    /// Path → (status, extra headers).
    replies: Mutex<HashMap<String, Reply>>,
    /// (path, webhook-id header, body) in arrival order.
    received: Mutex<Vec<(String, String, String)>>,
}

impl Handler {
    async fn start() -> (Arc<Handler>, String) {
        let handler = Arc::new(Handler::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = handler.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_string();
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    state.received.lock().unwrap().push((path.clone(), id, body));
                    let reply = {
                        let mut replies = state.replies.lock().unwrap();
                        let reply = replies.entry(path).or_insert(Reply {
                            status: 200,
                            ..Reply::default()
                        });
                        let answer = reply.clone();
                        reply.fail_first = reply.fail_first.saturating_sub(1);
                        answer
                    };
                    let status = if reply.fail_first > 0 { 500 } else { reply.status };
                    let mut response = axum::http::Response::builder().status(status);
                    for (k, v) in reply.headers {
                        response = response.header(k, v);
                    }
                    response.body(axum::body::Body::from(reply.body)).unwrap()
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (handler, base)
    }

    fn reply(&self, path: &str, status: u16, headers: &[(&str, &str)]) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.set(
            path,
            Reply {
                status,
                headers,
                ..Reply::default()
            },
        );
    }

    fn set(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.into(), reply);
    }

    fn count(&self, path: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .count()
    }

    fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, _, b)| serde_json::from_str(b).unwrap())
            .collect()
    }

    /// The `webhook-id` of each request to `path` (the delivery's name), in arrival order.
    fn ids(&self, path: &str) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, id, _)| id.clone())
            .collect()
    }
}

/// A stand-in API server: the signing Secret, Webhook patches (answered
/// with the webhook deactivated, generation 2), Events; 404 otherwise.
fn api_server(webhooks: Vec<Webhook>) -> Client {
    let service = tower::service_fn(move |request: ::http::Request<kube::client::Body>| {
        let webhooks = webhooks.clone();
        async move {
            let path = request.uri().path().to_string();
            let method = request.method().clone();
            let json = |status: u16, value: serde_json::Value| {
                ::http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap()
            };
            let response = if method == ::http::Method::GET && path.ends_with(&format!("/secrets/{SECRET}")) {
                json(
                    200,
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": { "name": SECRET, "namespace": NS, "resourceVersion": "1",
                                      "labels": { "hookrelay.dev/webhook-credential": "true" } },
                        "stringData": {}, "data": { "secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMy" },
                    }),
                )
            } else if method == ::http::Method::PATCH && path.contains("/webhooks/") {
                let name = path
                    .split("/webhooks/")
                    .nth(1)
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string();
                match webhooks
                    .iter()
                    .find(|w| w.metadata.name.as_deref() == Some(name.as_str()))
                {
                    Some(w) => {
                        let mut w = w.clone();
                        w.metadata.generation = Some(2);
                        w.spec.active = false;
                        json(200, serde_json::to_value(&w).unwrap())
                    }
                    None => json(404, not_found()),
                }
            } else if method == ::http::Method::POST && path.ends_with("/events") {
                json(
                    201,
                    serde_json::json!({ "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": { "name": "e" }, "eventTime": null }),
                )
            } else {
                json(404, not_found())
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    Client::new(service, NS)
}

fn not_found() -> serde_json::Value {
    serde_json::json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" })
}

fn webhook(name: &str, url: &str, events: &[&str], retry: Option<RetryPolicy>) -> Webhook {
    let mut spec = WebhookSpec::new("main", name, url, events);
    spec.secret_ref = Some(SecretKeyRef {
        name: SECRET.into(),
        key: "secret".into(),
    });
    spec.retry = retry;
    let mut w = Webhook::new(name, spec);
    w.metadata.namespace = Some(NS.into());
    w.metadata.uid = Some(format!("uid-{name}"));
    w.metadata.generation = Some(1);
    w
}

/// One retry, due about a second after the first attempt.
fn one_quick_retry() -> Option<RetryPolicy> {
    Some(RetryPolicy {
        max_retries: Some(1),
        window: Some(kube::core::Duration::from(Duration::from_secs(2))),
    })
}

/// An engine over `memory` with these webhooks (and examples/hub.yaml as `main`).
fn engine(memory: &Arc<Memory>, webhooks: &[Webhook]) -> Arc<Engine> {
    engine_with_budget(memory, webhooks, crate::resources::delivery::DEFAULT_BUDGET)
}

/// `engine`, deliveries stored within `budget` bytes.
fn engine_with_budget(memory: &Arc<Memory>, webhooks: &[Webhook], budget: usize) -> Arc<Engine> {
    engine_and_cache(memory, webhooks, budget).0
}

/// `engine_with_budget`, and the writer of its webhook cache (to change a
/// webhook as its watch would).
fn engine_and_cache(
    memory: &Arc<Memory>,
    webhooks: &[Webhook],
    budget: usize,
) -> (Arc<Engine>, reflector::store::Writer<Webhook>) {
    let client = api_server(webhooks.to_vec());
    let (webhook_cache, mut writer) = reflector::store::<Webhook>();
    for w in webhooks {
        writer.apply_watcher_event(&watcher::Event::Apply(w.clone()));
    }
    let mut hub: Hub = serde_yaml::from_str(include_str!("../../examples/hub.yaml")).unwrap();
    hub.metadata.namespace = Some(NS.into());
    let (hubs, mut hub_writer) = reflector::store::<Hub>();
    hub_writer.apply_watcher_event(&watcher::Event::Apply(hub));
    let engine = Engine::new(
        client.clone(),
        webhook_cache,
        hubs,
        SecretCache::new(client),
        Metrics::new(),
        Options {
            global: slots::Slots::new(16),
            leadership: Leadership::unconditional(),
            // The handlers here listen on loopback.
            egress_floor: crate::egress::Floor::with_loopback(&[]),
            egress_proxy: None,
            delivery_budget: budget,
            store: crate::store::Store::Memory(memory.clone()),
        },
    );
    (engine, writer)
}

/// Runs `engine` until the test ends.
fn deliver(engine: &Arc<Engine>) -> CancellationToken {
    let stop = CancellationToken::new();
    let (engine, until) = (engine.clone(), stop.clone());
    tokio::spawn(async move { engine.run(None, Duration::from_secs(60), until.cancelled_owned()).await });
    stop
}

async fn store_event(memory: &Memory, webhook: &Webhook, id: &str) -> String {
    let payload = serde_json::json!({ "id": "c-1" });
    let delivery = crate::fanout::build(webhook, id, EVENT, &payload.to_string(), Timestamp::now());
    let name = delivery.name_any();
    let document = crate::fanout::document(id, EVENT, &payload);
    let row = NewDelivery {
        ordering_key: crate::fanout::ordering_key(webhook, &document),
        delivery,
    };
    memory.insert(NS, Box::new(std::iter::once(row)), false).await.unwrap();
    name
}

async fn status(memory: &Memory, name: &str) -> DeliveryStatus {
    memory
        .get(NS, name)
        .await
        .unwrap()
        .and_then(|d| d.status)
        .unwrap_or_default()
}

/// Polls until `check` holds, for at most 20 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_retries_fails_deactivates_cancels_the_rest_and_notifies() {
    let (handler, base) = Handler::start().await;
    handler.reply("/flaky", 500, &[]);
    let flaky = webhook("flaky", &format!("{base}/flaky"), &[EVENT], one_quick_retry());
    let ops = webhook("ops", &format!("{base}/ops"), &["hookrelay.*"], None);
    let memory = Arc::new(Memory::default());
    let first = store_event(&memory, &flaky, "e-1").await;
    // A sibling due in an hour: cancelled at once when the webhook goes.
    let sibling = store_event(&memory, &flaky, "e-2").await;
    let mut waiting = memory.get(NS, &sibling).await.unwrap().unwrap();
    let retrying = DeliveryStatus {
        phase: Phase::Retrying,
        attempt_count: 1,
        next_attempt_at: Some(MicroTime(Timestamp::now() + jiff::SignedDuration::from_hours(1))),
        ..Default::default()
    };
    waiting.status = Some(retrying.clone());
    memory.record(&waiting, &retrying, "").await.unwrap();
    let engine = engine(&memory, &[flaky, ops]);
    let stop = deliver(&engine);

    until("the first delivery failed for good", async || {
        status(&memory, &first).await.phase == Phase::Failed
    })
    .await;
    let failed = status(&memory, &first).await;
    assert_eq!(failed.attempt_count, 2, "the first attempt and its one retry");
    assert!(failed.message.unwrap().contains("deactivated"));
    until("the sibling is cancelled", async || {
        status(&memory, &sibling).await.phase == Phase::Cancelled
    })
    .await;
    assert_eq!(handler.count("/flaky"), 2, "the cancelled sibling was never sent");
    until("both notices reached the ops webhook", async || {
        handler.count("/ops") == 2
    })
    .await;
    let mut names: Vec<String> = handler
        .bodies("/ops")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["hookrelay.delivery.failed", "hookrelay.webhook.deactivated"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_ends_the_subscription_at_the_first_answer() {
    let (handler, base) = Handler::start().await;
    handler.reply("/gone", 410, &[]);
    let gone = webhook("gone", &format!("{base}/gone"), &[EVENT], None);
    let memory = Arc::new(Memory::default());
    let name = store_event(&memory, &gone, "e-1").await;
    let stop = deliver(&engine(&memory, &[gone]));
    until("failed", async || status(&memory, &name).await.phase == Phase::Failed).await;
    let s = status(&memory, &name).await;
    assert_eq!((s.attempt_count, s.last_status_code), (1, Some(410)));
    assert!(s.message.unwrap().contains("410 Gone"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_within_the_window() {
    let (handler, base) = Handler::start().await;
    handler.reply("/busy", 503, &[("retry-after", "7200")]);
    let busy = webhook(
        "busy",
        &format!("{base}/busy"),
        &[EVENT],
        Some(RetryPolicy {
            max_retries: Some(5),
            window: Some(kube::core::Duration::from(Duration::from_secs(3600))),
        }),
    );
    let memory = Arc::new(Memory::default());
    let name = store_event(&memory, &busy, "e-1").await;
    let stop = deliver(&engine(&memory, &[busy]));
    until("retrying", async || {
        status(&memory, &name).await.phase == Phase::Retrying
    })
    .await;
    let next = status(&memory, &name).await.next_attempt_at.unwrap().0;
    let ahead = next.duration_since(Timestamp::now()).as_secs();
    // Asked for two hours; the window has one: the retry falls at its end.
    assert!((3500..=3600).contains(&ahead), "next attempt {ahead}s ahead");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_starts_a_new_round_under_the_same_id() {
    let (handler, base) = Handler::start().await;
    let shop = webhook("shop", &format!("{base}/shop"), &[EVENT], None);
    let memory = Arc::new(Memory::default());
    let name = store_event(&memory, &shop, "e-1").await;
    let stop = deliver(&engine(&memory, &[shop]));
    until("succeeded", async || {
        status(&memory, &name).await.phase == Phase::Succeeded
    })
    .await;
    memory.redeliver(NS, &name, "2026-12-03T00:00:00Z").await.unwrap();
    until("sent again", async || handler.count("/shop") == 2).await;
    until("recorded", async || status(&memory, &name).await.attempt_count == 2).await;
    let s = status(&memory, &name).await;
    assert_eq!(
        (s.phase, s.round_start, s.redelivered_for.as_deref()),
        (Phase::Succeeded, Some(2), Some("2026-12-03T00:00:00Z"))
    );
    assert_eq!(
        handler.ids("/shop"),
        [name.clone(), name],
        "the same webhook-id both times"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_fails_is_written_again_never_sent_again() {
    let (handler, base) = Handler::start().await;
    let shop = webhook("shop", &format!("{base}/shop"), &[EVENT], None);
    let memory = Arc::new(Memory::default());
    let name = store_event(&memory, &shop, "e-1").await;
    memory.fail_records(3);
    let engine = engine(&memory, &[shop]);
    let stop = deliver(&engine);
    until("succeeded", async || {
        status(&memory, &name).await.phase == Phase::Succeeded
    })
    .await;
    assert_eq!(
        engine.metrics.record_retries.get(),
        3,
        "three writes refused, each written again"
    );
    assert_eq!(handler.count("/shop"), 1, "and one request");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_with_one_ordering_key_go_one_at_a_time() {
    let (handler, base) = Handler::start().await;
    // The first event's first attempt fails; its retry comes about a second later.
    handler.set(
        "/ordered",
        Reply {
            status: 200,
            fail_first: 1,
            ..Reply::default()
        },
    );
    let mut ordered = webhook("ordered", &format!("{base}/ordered"), &[EVENT], one_quick_retry());
    ordered.spec.ordering = Some(crate::resources::webhook::Ordering {
        key: "$.payload.id".into(),
    });
    let memory = Arc::new(Memory::default());
    let first = store_event(&memory, &ordered, "e-1").await;
    let second = store_event(&memory, &ordered, "e-2").await;
    let stop = deliver(&engine(&memory, &[ordered]));
    until("both succeeded", async || {
        status(&memory, &first).await.phase == Phase::Succeeded
            && status(&memory, &second).await.phase == Phase::Succeeded
    })
    .await;
    assert_eq!(
        handler.ids("/ordered"),
        [first.clone(), first, second],
        "the second waited for the first, retry included"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_webhook_keeps_its_deliveries_until_resumed_then_sends_each_once() {
    let (handler, base) = Handler::start().await;
    handler.reply("/held", 200, &[]);
    handler.reply("/other", 200, &[]);
    let mut held = webhook("held", &format!("{base}/held"), &[EVENT], None);
    held.spec.paused = true;
    let other = webhook("other", &format!("{base}/other"), &[EVENT], None);
    let memory = Arc::new(Memory::default());
    let (engine, mut cache) = engine_and_cache(
        &memory,
        &[held.clone(), other.clone()],
        crate::resources::delivery::DEFAULT_BUDGET,
    );
    let stop = deliver(&engine);
    let mut names = vec![];
    for n in 0..10 {
        names.push(store_event(&memory, &held, &format!("e-{n}")).await);
        store_event(&memory, &other, &format!("e-{n}")).await;
    }
    // The other webhook's events, stored alongside, all arrive: the engine
    // has looked at the paused one's just as often.
    until("the other webhook got its 10", async || handler.count("/other") == 10).await;
    assert_eq!(handler.count("/held"), 0, "nothing is sent to a paused webhook");
    for name in &names {
        let status = status(&memory, name).await;
        assert_eq!(
            (status.phase, status.attempt_count),
            (Phase::Pending, 0),
            "{name} is held, no retry used"
        );
    }
    held.spec.paused = false;
    cache.apply_watcher_event(&watcher::Event::Apply(held));
    until("the held 10 arrived", async || handler.count("/held") == 10).await;
    for name in &names {
        until("recorded", async || {
            status(&memory, name).await.phase == Phase::Succeeded
        })
        .await;
    }
    let mut sent = handler.ids("/held");
    sent.sort();
    names.sort();
    assert_eq!(sent, names, "each held delivery is sent once");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_keeps_within_the_delivery_budget() {
    const BUDGET: usize = 16 * 1024;
    let (handler, base) = Handler::start().await;
    handler.set(
        "/chatty",
        Reply {
            status: 500,
            body: "x".repeat(64 * 1024),
            ..Reply::default()
        },
    );
    let chatty = webhook(
        "chatty",
        &format!("{base}/chatty"),
        &[EVENT],
        Some(RetryPolicy {
            max_retries: Some(8),
            window: Some(kube::core::Duration::from(Duration::from_secs(2))),
        }),
    );
    let memory = Arc::new(Memory::default());
    let name = store_event(&memory, &chatty, "e-1").await;
    let stop = deliver(&engine_with_budget(&memory, &[chatty], BUDGET));
    until("failed", async || status(&memory, &name).await.phase == Phase::Failed).await;
    let stored = memory.get(NS, &name).await.unwrap().unwrap();
    let s = stored.status.clone().unwrap();
    assert_eq!(s.attempt_count, 9);
    assert!(
        s.attempts_omitted > 0,
        "older attempts left out: {}",
        s.attempts_omitted
    );
    let size = serde_json::to_vec(&stored).unwrap().len();
    assert!(size <= BUDGET, "{size} bytes stored, budget {BUDGET}");
    stop.cancel();
}
