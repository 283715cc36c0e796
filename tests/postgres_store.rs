//! The Postgres delivery store (`--store postgres`) against the local
//! control plane and a local Postgres (Debian's, on 127.0.0.1): signed
//! delivery, retries under one id, deactivation, ordering, two replicas
//! sharing the work without duplicates, and a SIGKILLed Postgres losing
//! nothing that ingest accepted.

mod support;

use hookrelay::delivery::signing;

use hookrelay::resources::webhook::Ordering;
use hookrelay::resources::{Delivery, RetryPolicy, Webhook};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::postgres::Postgres;
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, WAIT, deliveries_of, ids_seen, spec};
use support::{ChildProcess, eventually};

const EVENT: &str = "dynamic-content.content-item.updated";

fn store_args(postgres: &Postgres) -> Vec<String> {
    vec![
        "--store".into(),
        "postgres".into(),
        "--postgres-url".into(),
        postgres.url.clone(),
    ]
}

/// A stack whose controller and ingest use `postgres`.
async fn stack(test: &str, postgres: &Postgres) -> Stack {
    let mut controller_args = store_args(postgres);
    controller_args.push("--leader-elect=false".into());
    Stack::start_with(
        test,
        Options {
            controller_args,
            ingest_args: store_args(postgres),
            ..Options::default()
        },
    )
    .await
}

fn retry(max_retries: u32, window: &str) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        max_retries: Some(max_retries),
        window: Some(window.parse().unwrap()),
    })
}

/// The stored deliveries of a namespace: name → (phase, attempt count).
async fn stored(postgres: &Postgres, ns: &str) -> HashMap<String, (String, u32)> {
    let client = postgres.client().await;
    let rows = client
        .query(
            "SELECT name, phase, doc FROM hookrelay_deliveries WHERE namespace = $1",
            &[&ns],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let doc: Delivery = serde_json::from_str(r.get(2)).unwrap();
            let attempts = doc.status.map(|s| s.attempt_count).unwrap_or(0);
            (r.get(0), (r.get(1), attempts))
        })
        .collect()
}

async fn post(stack: &Stack, id: &str, payload: Value) -> (u16, Value) {
    stack.post(json!({ "id": id, "name": EVENT, "payload": payload })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_delivers_signed_retries_and_deactivates() {
    let postgres = Postgres::shared();
    let stack = stack("pg_delivers", postgres).await;
    let receiver = Receiver::start().await;
    let ok_secret = stack.webhook("ok", spec(receiver.url("/ok"), &[EVENT])).await;
    receiver.script("/flaky", [Reply::status(500), Reply::status(503)]);
    let mut flaky = spec(receiver.url("/flaky"), &[EVENT]);
    flaky.retry = retry(18, "10s");
    stack.webhook("flaky", flaky).await;
    receiver.set_default("/gone", Reply::status(410));
    stack.webhook("gone", spec(receiver.url("/gone"), &[EVENT])).await;

    let (status, answer) = post(&stack, "evt-1", json!({ "n": 1 })).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(deliveries_of(&answer).len(), 3, "{answer}");

    // Signed as with the Kubernetes store.
    let got = receiver.wait_for("/ok", 1, WAIT).await;
    let expected = signing::body_signature(&ok_secret, &got[0].body);
    assert_eq!(got[0].header("x-amplience-webhook-signature"), Some(expected.as_str()));
    assert_eq!(got[0].json()["payload"], json!({ "n": 1 }));

    // Retried under one id until it succeeds, every attempt recorded.
    let flaky_got = receiver.wait_for("/flaky", 3, WAIT).await;
    let ids: HashSet<_> = flaky_got.iter().map(|r| r.header("webhook-id").unwrap()).collect();
    assert_eq!(ids.len(), 1, "one delivery id across retries");
    let ns = stack.env.ns.clone();
    let rows = eventually(WAIT, "the flaky delivery recorded Succeeded", || async {
        let rows = stored(postgres, &ns).await;
        rows.values()
            .any(|(phase, attempts)| phase == "Succeeded" && *attempts == 3)
            .then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 3, "{rows:?}");

    // 410 Gone deactivates the webhook, written to the Webhook as always.
    let webhooks: Api<Webhook> = stack.env.api();
    let gone = eventually(WAIT, "webhook gone deactivated", || async {
        let w = webhooks.get("gone").await.ok()?;
        (!w.spec.active).then_some(w)
    })
    .await;
    assert!(
        gone.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(hookrelay::resources::webhook::DEACTIVATED_ANNOTATION),
        "the deactivation says why"
    );
    // The summary on the Webhook is kept from this store too.
    eventually(WAIT, "webhook ok's last delivery in its status", || async {
        let w = webhooks.get("ok").await.ok()?;
        w.status?.last_delivery?.status_code.filter(|c| *c == 200)
    })
    .await;

    // Nothing went through the API server as Delivery objects.
    let objects: Api<Delivery> = stack.env.api();
    assert!(objects.list(&ListParams::default()).await.unwrap().items.is_empty());
    let logs = stack.logs();
    assert!(!logs.contains(&postgres.url), "the store URL is not logged");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_with_one_ordering_key_go_one_after_another() {
    let postgres = Postgres::shared();
    let stack = stack("pg_ordering", postgres).await;
    let receiver = Receiver::start().await;
    // The first answer fails: the second event of the same key must wait
    // for its retry rather than overtake it.
    receiver.script("/ordered", [Reply::status(500)]);
    let mut s = spec(receiver.url("/ordered"), &[EVENT]);
    s.retry = retry(18, "10s");
    s.ordering = Some(Ordering {
        key: "$.payload.item".into(),
    });
    stack.webhook("ordered", s).await;
    for (id, version) in [("a1", 1), ("a2", 2), ("a3", 3)] {
        let (status, answer) = post(&stack, id, json!({ "item": "a", "version": version })).await;
        assert_eq!(status, 202, "{answer}");
    }
    let got = receiver.wait_for("/ordered", 4, WAIT).await;
    let versions: Vec<i64> = got
        .iter()
        .map(|r| r.json()["payload"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        versions,
        vec![1, 1, 2, 3],
        "the retry of the first came before the later ones"
    );
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_deliver_together_within_the_webhook_limit_and_without_duplicates() {
    // Within the hub's default ingest burst (100).
    const EVENTS: usize = 100;
    let postgres = Postgres::shared();
    let stack = stack("pg_replicas", postgres).await;
    let mut args: Vec<String> = [
        "controller",
        "--namespace",
        &stack.env.ns,
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    args.extend(store_args(postgres));
    args.push("--leader-elect=false".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A log file of its own, to count its attempts apart.
    let second = ChildProcess::start(
        &format!("controller2-{}", stack.env.ns),
        &stack.env.cluster.admin_kubeconfig,
        &args,
    );
    let receiver = Receiver::start().await;
    // Slow enough that both replicas have requests in flight at once.
    receiver.set_default("/hook", Reply::status(200).delayed(Duration::from_millis(20)));
    stack.webhook("shared", spec(receiver.url("/hook"), &[EVENT])).await;

    let posts = (0..EVENTS).map(|i| {
        let stack = &stack;
        async move { post(stack, &format!("evt-{i}"), json!({ "i": i })).await.0 }
    });
    let statuses: Vec<u16> = futures::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    let got = receiver.wait_for("/hook", EVENTS, WAIT).await;
    // Give a duplicate the time to show up before counting.
    let ns = stack.env.ns.clone();
    eventually(WAIT, "every delivery recorded Succeeded", || async {
        let rows = stored(postgres, &ns).await;
        (rows.len() == EVENTS && rows.values().all(|(p, _)| p == "Succeeded")).then_some(())
    })
    .await;
    let seen = ids_seen(&receiver.received("/hook"));
    assert_eq!(seen.len(), EVENTS, "every delivery arrived");
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "sent twice: {duplicates:?}");
    assert!(got.len() >= EVENTS);
    // Both replicas sent some; together never more than the webhook's
    // limit (4 by default) at once.
    let attempts = |logs: String| logs.matches(r#""message":"attempt""#).count();
    let (first, second) = (attempts(stack.controller.logs()), attempts(second.logs()));
    assert!(first > 0 && second > 0, "attempts per replica: {first} and {second}");
    assert_eq!(first + second, EVENTS, "one attempt per delivery");
    let most = receiver.most_in_flight("/hook");
    assert!(most <= 4, "{most} requests in flight to one webhook; its limit is 4");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_accepted_survive_a_sigkilled_postgres() {
    const EVENTS: usize = 120;
    // Its own instance: the other tests keep theirs running.
    let postgres = Postgres::dedicated("chaos", 55433);
    let stack = stack("pg_sigkill", &postgres).await;
    let receiver = Receiver::start().await;
    stack.webhook("audit", spec(receiver.url("/hook"), &[EVENT])).await;

    let started = Instant::now();
    let mut accepted: HashSet<String> = HashSet::new();
    let mut refused: Vec<String> = vec![];
    for i in 0..EVENTS {
        if i == EVENTS / 3 {
            postgres.kill();
        }
        if i == EVENTS / 2 {
            postgres.start();
        }
        let id = format!("evt-{i}");
        let (status, answer) = post(&stack, &id, json!({ "i": i })).await;
        match status {
            202 => {
                accepted.insert(id);
            }
            503 => refused.push(id),
            _ => panic!("{id}: {status} {answer}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !refused.is_empty(),
        "Postgres was down, so ingest must have refused some events"
    );
    // A CMS retries anything but 202 with the same id (bounded here).
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &refused {
        let i: u64 = id.trim_start_matches("evt-").parse().unwrap();
        loop {
            let (status, answer) = post(&stack, id, json!({ "i": i })).await;
            if status == 202 {
                accepted.insert(id.clone());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not accepted a minute after Postgres came back: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(accepted.len(), EVENTS);
    let received = receiver
        .wait_for("/hook", accepted.len(), Duration::from_secs(120))
        .await;
    let arrived: HashSet<String> = received
        .iter()
        .map(|r| format!("evt-{}", r.json()["payload"]["i"]))
        .collect();
    let lost: Vec<_> = accepted.difference(&arrived).collect();
    assert!(lost.is_empty(), "accepted with 202 but never delivered: {lost:?}");
    println!(
        "{} accepted, {} first refused while Postgres was down, all delivered after {:?}",
        accepted.len(),
        refused.len(),
        started.elapsed()
    );
    stack.cleanup().await;
    postgres.stop();
}
