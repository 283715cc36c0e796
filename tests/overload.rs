//! Overload without harm, on any machine: the API server made the scarce
//! resource (its threads capped at a quarter of a core by a cgroup, on a
//! control plane of this test's own), one hub's sender posting 20 events/s
//! for eight webhooks whose handler is down (503, Retry-After an hour), and
//! another hub's webhook must keep its latency. Without backpressure the
//! saturated server's watch fell 20–40 s behind its writes and every
//! tenant's new deliveries waited that long (`HOOKRELAY_BENCH_PHASES=capped
//! cargo bench --bench e2e`); with it, ingest refuses the heavy hub's excess
//! with 429 and the server keeps up.

mod support;

use hookrelay::resources::Hub;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::receiver::{Receiver, Reply};
use support::stack::{WAIT, hub_token, ready_webhook, spec};
use support::{DedicatedControlPlane, Ingest, TestEnv, eventually};

const EVENT: &str = "dynamic-content.snapshot.published";
/// How long the heavy hub's sender keeps sending.
const LOAD: Duration = Duration::from_secs(30);
/// The bound that separates the behaviours. Measured here (debug build, 2
/// cores): p99 1.8 s with backpressure, 26.5 s with `--backpressure-latency=0s`.
const BOUND: Duration = Duration::from_secs(10);

/// Posts `rate` events a second for `LOAD` to `hub` in `ns`, each when due
/// (a sender that does not wait for slow answers, up to `senders` at once);
/// returns the accept time of each delivery and the statuses answered.
async fn send(
    ingest: &Ingest,
    ns: &str,
    token: &str,
    rate: u32,
    senders: usize,
    tag: &str,
) -> (HashMap<String, Instant>, HashMap<u16, usize>) {
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let answers: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let total = (LOAD.as_secs() as u32 * rate) as usize;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (http, url, token) = (ingest.http.clone(), ingest.events_url(ns, "main"), token.to_string());
        let (accepted, answers, next, tag) = (accepted.clone(), answers.clone(), next.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= total {
                    break;
                }
                tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate as f64)).into()).await;
                let body = json!({ "id": format!("{tag}-{i}"), "name": EVENT, "payload": { "id": i } });
                let Ok(response) = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                else {
                    *answers.lock().unwrap().entry(0).or_default() += 1;
                    continue;
                };
                let at = Instant::now();
                let status = response.status().as_u16();
                *answers.lock().unwrap().entry(status).or_default() += 1;
                let text = response.text().await.unwrap_or_default();
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                for name in answer["deliveries"].as_array().into_iter().flatten() {
                    accepted
                        .lock()
                        .unwrap()
                        .insert(name.as_str().unwrap_or_default().to_string(), at);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    (accepted, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_saturating_the_api_server_does_not_hold_up_another_hubs_deliveries() {
    let plane = DedicatedControlPlane::start("overload");
    let heavy = TestEnv::in_cluster(plane.cluster, "overload-heavy").await;
    let calm = TestEnv::in_cluster(plane.cluster, "overload-calm").await;
    let hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    for env in [&heavy, &calm] {
        env.api::<Hub>().create(&PostParams::default(), &hub).await.unwrap();
    }
    let receiver = Receiver::start().await;
    let down: Vec<String> = (0..8).map(|i| format!("/down{i}")).collect();
    for path in &down {
        receiver.set_default(path, Reply::status(503).header("retry-after", "3600"));
    }
    // One controller and one ingest for both namespaces, as installed.
    let both = ["--namespace", &calm.ns, "--leader-elect=false"];
    let controller = heavy.start_controller_with(&both);
    let ingest = heavy.start_ingest_with(None, &both[..2]).await;
    let (heavy_token, calm_token) = (hub_token(&heavy, "main").await, hub_token(&calm, "main").await);
    for (i, path) in down.iter().enumerate() {
        ready_webhook(&heavy, &format!("down{i}"), spec(receiver.url(path), &[EVENT])).await;
    }
    ready_webhook(&calm, "calm", spec(receiver.url("/calm"), &[EVENT])).await;

    let cap = support::cpu_cap::CpuCap::apply("overload-apiserver", plane.pid("kube-apiserver"), 25_000);
    let ((_, heavy_answers), (calm_accepted, calm_answers)) = tokio::join!(
        send(&ingest, &heavy.ns, &heavy_token, 20, 32, "heavy"),
        send(&ingest, &calm.ns, &calm_token, 2, 4, "calm"),
    );
    // Every calm delivery arrives (the deadline is generous: this is not
    // what is measured).
    let arrivals = eventually(Duration::from_secs(180), "every calm delivery arrived", || async {
        let got: HashMap<String, Instant> = receiver
            .received("/calm")
            .into_iter()
            .filter_map(|r| Some((r.header("webhook-id")?.to_string(), r.at)))
            .collect();
        calm_accepted.keys().all(|k| got.contains_key(k)).then_some(got)
    })
    .await;
    drop(cap);

    let mut latencies: Vec<Duration> = calm_accepted
        .iter()
        .map(|(name, at)| arrivals[name].saturating_duration_since(*at))
        .collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() - 1) * 99 / 100];
    println!(
        "calm hub: {} deliveries, accept → arrival p50 {:?}, p99 {p99:?}; answers: heavy {heavy_answers:?}, calm {calm_answers:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(
        calm_answers.get(&202).copied().unwrap_or(0) + calm_answers.get(&200).copied().unwrap_or(0) >= 50,
        "the calm hub sends 2 events/s, far below its share: (nearly) all accepted, got {calm_answers:?}"
    );
    assert!(
        heavy_answers.get(&429).copied().unwrap_or(0) > 0,
        "the heavy hub saturated the API server and met backpressure: {heavy_answers:?}"
    );
    assert!(
        p99 < BOUND,
        "the calm hub's deliveries waited behind the heavy hub's: p99 {p99:?} (bound {BOUND:?})"
    );
    // Said where its owner looks: a Warning Event on the heavy Hub.
    let events: Api<k8s_openapi::api::events::v1::Event> = heavy.api();
    eventually(WAIT, "a Backpressure Event on the heavy hub", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Backpressure"))
    })
    .await;
    drop(controller);
    drop(ingest);
}
