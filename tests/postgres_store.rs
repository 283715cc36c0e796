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
async fn a_turn_further_away_than_a_claim_gives_the_delivery_back_unattempted() {
    use hookrelay::resources::hub::DeliveryRateLimit;
    use hookrelay::resources::webhook::WebhookDelivery;
    let postgres = Postgres::shared();
    let stack = stack("pg_rate_later", postgres).await;
    let receiver = Receiver::start().await;
    // One request every 50 s: the second's turn is further away than a
    // claim lasts (45 s at the default timeouts).
    let mut s = spec(receiver.url("/slow-rate"), &[EVENT]);
    s.delivery = Some(WebhookDelivery {
        rate_limit: Some(DeliveryRateLimit {
            requests_per_second: 0.02,
            burst: Some(1),
        }),
        ..Default::default()
    });
    stack.webhook("slow-rate", s).await;
    let mut names = vec![];
    for id in ["r1", "r2"] {
        let (status, answer) = post(&stack, id, json!({ "id": id })).await;
        assert_eq!(status, 202, "{answer}");
        names.extend(deliveries_of(&answer));
    }
    let first = receiver.wait_for("/slow-rate", 1, WAIT).await[0].at;
    let sent_first = first_sent(&receiver.received("/slow-rate"));
    let second = names.iter().find(|n| **n != sent_first).unwrap().clone();
    // Given back to the store, due at its turn: no claim held while it waits.
    let client = postgres.client().await;
    eventually(WAIT, "the second given back, due at its turn", || async {
        let row = client
            .query_one(
                "SELECT claimed_by IS NULL, due_at > now() + interval '20 seconds' FROM hookrelay_deliveries
                 WHERE namespace = $1 AND name = $2",
                &[&stack.env.ns, &second],
            )
            .await
            .ok()?;
        (row.get::<_, bool>(0) && row.get::<_, bool>(1)).then_some(())
    })
    .await;
    let got = receiver.wait_for("/slow-rate", 2, Duration::from_secs(120)).await;
    assert!(
        got[1].at.duration_since(first) >= Duration::from_secs(45),
        "the second went at its turn, not before: {:?}",
        got[1].at.duration_since(first)
    );
    let recorded = eventually(WAIT, "the second recorded", || async {
        let rows = stored(postgres, &stack.env.ns).await;
        rows.get(&second).filter(|(phase, _)| phase == "Succeeded").cloned()
    })
    .await;
    assert_eq!(recorded.1, 1, "waiting was not an attempt");
    stack.cleanup().await;
}

/// The delivery id of the first request received.
fn first_sent(received: &[support::receiver::Received]) -> String {
    received[0].header("webhook-id").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_deliver_together_within_the_webhook_limit_and_without_duplicates() {
    // 8 webhooks × 12 events. Each replica may have 4 requests in flight
    // (`--concurrency 4`), so a webhook may have 1 (a quarter): one replica
    // alone cannot keep all 8 webhooks busy, and neither may ever exceed 1
    // request at a time to one webhook, counted across both.
    const WEBHOOKS: usize = 8;
    const EVENTS: usize = 12;
    let postgres = Postgres::shared();
    let mut args = store_args(postgres);
    args.extend(["--leader-elect=false".into(), "--concurrency".into(), "4".into()]);
    let stack = Stack::start_with(
        "pg_replicas",
        Options {
            controller_args: args.clone(),
            ingest_args: store_args(postgres),
            ..Options::default()
        },
    )
    .await;
    let mut second_args: Vec<String> = [
        "controller",
        "--namespace",
        &stack.env.ns,
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    second_args.extend(args);
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    // A log file of its own, to count its attempts apart.
    let second = ChildProcess::start(
        &format!("controller2-{}", stack.env.ns),
        &stack.env.cluster.admin_kubeconfig,
        &second_args,
    );
    eventually(WAIT, "the second replica delivering", || async {
        second.logs().contains("delivering from postgres").then_some(())
    })
    .await;
    let receiver = Receiver::start().await;
    for w in 0..WEBHOOKS {
        let path = format!("/hook-{w}");
        // Slow enough that requests overlap.
        receiver.set_default(&path, Reply::status(200).delayed(Duration::from_millis(30)));
        stack
            .webhook(&format!("shared-{w}"), spec(receiver.url(&path), &[EVENT]))
            .await;
    }

    let posts = (0..EVENTS).map(|i| {
        let stack = &stack;
        async move { post(stack, &format!("evt-{i}"), json!({ "i": i })).await.0 }
    });
    let statuses: Vec<u16> = futures::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");

    let total = WEBHOOKS * EVENTS;
    let ns = stack.env.ns.clone();
    eventually(WAIT, "every delivery recorded Succeeded", || async {
        let rows = stored(postgres, &ns).await;
        (rows.len() == total && rows.values().all(|(p, _)| p == "Succeeded")).then_some(())
    })
    .await;
    let received = receiver.all_received();
    let seen = ids_seen(&received);
    assert_eq!(seen.len(), total, "every delivery arrived");
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "sent twice: {duplicates:?}");
    let attempts = |logs: String| logs.matches(r#""message":"attempt""#).count();
    let (first, second) = (attempts(stack.controller.logs()), attempts(second.logs()));
    assert!(first > 0 && second > 0, "attempts per replica: {first} and {second}");
    assert_eq!(first + second, total, "one attempt per delivery");
    for w in 0..WEBHOOKS {
        let most = receiver.most_in_flight(&format!("/hook-{w}"));
        assert!(
            most <= 1,
            "{most} requests in flight at once to webhook {w}; its limit is 1"
        );
    }
    println!("attempts: {first} by one replica, {second} by the other");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_accepted_survive_a_sigkilled_postgres() {
    const EVENTS: usize = 120;
    // Its own instance: the other tests keep theirs running.
    let postgres = Postgres::dedicated("chaos", 25433);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_delivery_that_does_not_decode_is_set_aside_alone() {
    let postgres = Postgres::shared();
    let stack = stack("pg_undecodable", postgres).await;
    let receiver = Receiver::start().await;
    stack.webhook("audit", spec(receiver.url("/hook"), &[EVENT])).await;
    let ns = stack.env.ns.clone();
    // Due now, ahead of the event below, and not a Delivery at all.
    postgres
        .client()
        .await
        .execute(
            "INSERT INTO hookrelay_deliveries (namespace, name, webhook, hub, doc, due_at)
             VALUES ($1, 'broken', 'audit', 'main', '{\"not\": \"a delivery\"}', now())",
            &[&ns],
        )
        .await
        .unwrap();
    let (status, answer) = post(&stack, "after-broken", json!({ "n": 1 })).await;
    assert_eq!(status, 202, "{answer}");
    receiver.wait_for("/hook", 1, WAIT).await;
    let broken = eventually(WAIT, "the broken row set aside", || async {
        let row = postgres
            .client()
            .await
            .query_one(
                "SELECT phase, due_at IS NULL FROM hookrelay_deliveries WHERE namespace = $1 AND name = 'broken'",
                &[&ns],
            )
            .await
            .unwrap();
        let (phase, finished): (String, bool) = (row.get(0), row.get(1));
        finished.then_some(phase)
    })
    .await;
    assert_eq!(broken, "Failed");
    let logs = stack.controller.logs();
    assert!(logs.contains("does not decode"), "the controller says why");
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_statement_waiting_on_a_lock_is_ended_by_the_server() {
    // Its own instance: the table is locked here.
    let postgres = Postgres::dedicated("locks", 25437);
    let stack = stack("pg_lock_timeout", &postgres).await;
    let mut locker = postgres.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE hookrelay_deliveries IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The controller's claims (every 250 ms) now wait on the lock.
    let watcher = postgres.client().await;
    let waiting = "SELECT pid, query_start FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() ORDER BY query_start LIMIT 1";
    let (pid, since): (i32, std::time::SystemTime) =
        eventually(WAIT, "a store statement waiting on the lock", || async {
            let row = watcher.query_opt(waiting, &[]).await.unwrap()?;
            Some((row.get(0), row.get(1)))
        })
        .await;
    // Its 10 s lock timeout ends it on the server, long before the lock
    // is released (a statement only the client gave up on waits on).
    let ended = eventually(Duration::from_secs(20), "the waiting statement ended", || async {
        let still: bool = watcher
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query_start = $2 AND wait_event_type = 'Lock')",
                &[&pid, &since],
            )
            .await
            .unwrap()
            .get(0);
        (!still).then(std::time::SystemTime::now)
    })
    .await;
    let waited = ended.duration_since(since).unwrap_or_default();
    assert!(waited < Duration::from_secs(15), "waited {waited:?} on the lock");
    lock.rollback().await.unwrap();
    stack.cleanup().await;
    postgres.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_its_sender_was_told_timed_out_is_not_stored() {
    // Its own instance, stalled: the other tests keep theirs running.
    let postgres = Postgres::dedicated("stall", 25436);
    let mut ingest_args = store_args(&postgres);
    ingest_args.extend(["--request-timeout".to_string(), "2s".to_string()]);
    let mut controller_args = store_args(&postgres);
    controller_args.push("--leader-elect=false".into());
    let options = Options {
        controller_args,
        ingest_args,
        ..Options::default()
    };
    let stack = Stack::start_with("pg_stall", options).await;
    let receiver = Receiver::start().await;
    stack.webhook("audit", spec(receiver.url("/hook"), &[EVENT])).await;

    // No id: a second post would be a second event, so a 408 must mean
    // nothing was stored.
    postgres.pause();
    let (status, answer) = stack
        .post(json!({ "name": EVENT, "payload": { "n": "timed out" } }))
        .await;
    postgres.resume();
    assert_eq!(status, 408, "{answer}");
    // An event after it, delivered: by then the first would have been
    // committed, if it were going to be.
    let (status, answer) = post(&stack, "after", json!({ "n": "after" })).await;
    assert_eq!(status, 202, "{answer}");
    receiver.wait_for("/hook", 1, WAIT).await;
    let ns = stack.env.ns.clone();
    let rows = stored(&postgres, &ns).await;
    assert_eq!(rows.len(), 1, "only the event accepted with 202 is stored: {rows:?}");
    assert!(
        receiver
            .received("/hook")
            .iter()
            .all(|r| r.json()["payload"]["n"] == "after"),
        "the timed-out event was delivered"
    );
    stack.cleanup().await;
    postgres.stop();
}

/// The console signed in through its one-time link: an HTTP client with the
/// session cookie.
struct ConsoleSession {
    _process: ChildProcess,
    base: String,
    cookie: String,
    http: reqwest::Client,
}

impl ConsoleSession {
    /// The console reads deliveries through the Kubernetes API (the history
    /// API, registered by the test): it is given no store.
    async fn start(stack: &Stack, kubeconfig: &std::path::Path, name: &str) -> ConsoleSession {
        let (process, login) = stack.env.start_console(kubeconfig, name, &[]).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let answer = http.get(&login).send().await.unwrap();
        let cookie = answer.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let base = login.split("/?").next().unwrap().to_string();
        ConsoleSession {
            _process: process,
            base,
            cookie,
            http,
        }
    }

    async fn send_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.send_get(path).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Everything a server-sent event stream at `path` says, as it comes.
    async fn events(&self, path: &str) -> std::sync::Arc<std::sync::Mutex<String>> {
        let mut response = self.send_get(path).await;
        assert_eq!(response.status(), 200);
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let into = said.clone();
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = response.chunk().await {
                into.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk));
            }
        });
        said
    }

    async fn post(&self, path: &str, form: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_claims_are_taken_over_within_seconds() {
    let postgres = Postgres::shared();
    let mut stack = stack("pg_takeover", postgres).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/hook", Reply::status(200).delayed(Duration::from_secs(3)));
    stack.webhook("slow", spec(receiver.url("/hook"), &[EVENT])).await;
    for i in 0..4 {
        let (status, answer) = post(&stack, &format!("evt-{i}"), json!({ "i": i })).await;
        assert_eq!(status, 202, "{answer}");
    }
    // Four requests in flight (the webhook's limit), all claimed by this
    // replica, which then dies.
    receiver.wait_for("/hook", 4, WAIT).await;
    stack.kill_controller();
    let killed = Instant::now();
    stack.restart_controller();
    let ns = stack.env.ns.clone();
    eventually(WAIT, "the four deliveries recorded by the new replica", || async {
        let rows = stored(postgres, &ns).await;
        (rows.len() == 4 && rows.values().all(|(p, _)| p == "Succeeded")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    // A claim alone lasts at least --claim-lease (45 s by default): taken
    // over well before, the dead replica's heartbeat (6 s) is what counted.
    assert!(took < Duration::from_secs(30), "taken over after {took:?}");
    let seen = ids_seen(&receiver.received("/hook"));
    assert_eq!(seen.len(), 4);
    println!("a dead replica's 4 claims were delivered {took:?} after the kill");
    stack.cleanup().await;
}

/// The claim query alone, on a database of its own: tenants (namespaces)
/// take turns, whatever the age of one tenant's backlog, and the webhook
/// limits and ordering keys hold across claimants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_let_a_quiet_tenant_go_before_another_tenants_older_backlog() {
    use hookrelay::resources::delivery::{DeliverySpec, EventRef};
    use hookrelay::store::NewDelivery;
    use hookrelay::store::postgres::ClaimLimits;
    let shared = Postgres::shared();
    let db = format!("claims_{}", std::process::id());
    let admin = shared.client().await;
    for sql in [format!("DROP DATABASE IF EXISTS {db}"), format!("CREATE DATABASE {db}")] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let url = format!("{}/{db}", shared.url.rsplit_once('/').expect("a URL with a database").0);
    let store = hookrelay::store::postgres::Postgres::connect(&url, None).await.unwrap();
    let row = |ns: &str, webhook: &str, i: usize, key: Option<&str>| {
        let mut delivery = Delivery::new(
            &format!("{webhook}-{i}"),
            DeliverySpec {
                webhook: webhook.into(),
                hub: "main".into(),
                event: EventRef {
                    id: format!("{webhook}-{i}"),
                    name: EVENT.into(),
                    received_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()),
                    trace: None,
                },
                payload: "{}".into(),
            },
        );
        delivery.metadata.namespace = Some(ns.into());
        NewDelivery {
            delivery,
            ordering_key: key.map(str::to_string),
        }
    };
    // The greedy tenant: four webhooks with 100 due deliveries each, and a
    // fifth whose 1,000 share one ordering key.
    let mut greedy: Vec<_> = (0..400)
        .map(|i| row("greedy", &format!("w{}", i % 4), i, None))
        .collect();
    greedy.extend((0..1000).map(|i| row("greedy", "ordered", i, Some("k"))));
    store.insert(greedy).await.unwrap();
    for claimant in ["a", "b"] {
        store.heartbeat(claimant, Duration::from_secs(120)).await.unwrap();
    }
    let lease = Duration::from_secs(120);
    let claim = |claimant: &'static str, most: usize, share: usize| {
        let store = store.clone();
        async move {
            let limits = ClaimLimits {
                webhooks: &[],
                default: 4,
                per_namespace: share,
            };
            let claimed = store.claim(claimant, most, lease, &[], &limits).await.unwrap();
            let mut names: Vec<String> = claimed
                .iter()
                .map(|c| {
                    format!(
                        "{}/{}",
                        c.delivery.metadata.namespace.as_deref().unwrap(),
                        c.delivery.metadata.name.as_deref().unwrap()
                    )
                })
                .collect();
            names.sort();
            names
        }
    };
    // Replica a has room for 8 but one tenant may hold 6 of them.
    let a = claim("a", 8, 6).await;
    assert_eq!(a.len(), 6, "{a:?}");
    assert!(a.iter().all(|n| n.starts_with("greedy/")), "{a:?}");
    // The quiet tenant's event comes after all of those 1,400.
    store.insert(vec![row("quiet", "w", 0, None)]).await.unwrap();
    // Replica b has room for one: the quiet tenant has nothing in flight,
    // the greedy one six, so the newest event goes first.
    assert_eq!(claim("b", 1, 100).await, ["quiet/w-0"]);
    // a has used its share of the greedy tenant.
    assert_eq!(claim("a", 2, 6).await, Vec::<String>::new());
    // b takes what the greedy webhooks' limits leave (4 × 4 - 6), and of
    // the ordered webhook only the first: the rest wait behind it.
    let b = claim("b", 100, 100).await;
    assert_eq!(b.len(), 11, "{b:?}");
    assert!(b.contains(&"greedy/ordered-0".to_string()), "{b:?}");
    assert!(
        !b.iter()
            .any(|n| n.starts_with("greedy/ordered-") && n != "greedy/ordered-0"),
        "{b:?}"
    );
    assert_eq!(
        claim("b", 100, 100).await,
        Vec::<String>::new(),
        "every limit is reached"
    );
    // A webhook whose hub allows 6 at once: two more of it.
    let raised = ClaimLimits {
        webhooks: &[("greedy".into(), "w0".into(), 6)],
        default: 4,
        per_namespace: 100,
    };
    let more = store.claim("b", 100, lease, &[], &raised).await.unwrap();
    let more: Vec<_> = more.iter().map(|c| c.delivery.spec.webhook.as_str()).collect();
    assert_eq!(more, ["w0", "w0"]);

    // The 999 behind the ordered webhook's first wait out of the queue
    // (no claim reads them); finishing the first queues the second only.
    let (db_client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let waiting = || async {
        let row = db_client
            .query_one(
                "SELECT count(*) FILTER (WHERE waiting), count(*) FILTER (WHERE NOT waiting AND due_at IS NOT NULL)
                 FROM hookrelay_deliveries WHERE webhook = 'ordered'",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    assert_eq!(waiting().await, (999, 1));
    let mut first = store.read("greedy", "ordered-0").await.unwrap().unwrap();
    let seen = hookrelay::store::postgres::version_of(&first).unwrap();
    let status = first.status.get_or_insert_with(Default::default);
    status.phase = hookrelay::resources::delivery::Phase::Succeeded;
    status.completed_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        jiff::Timestamp::now(),
    ));
    assert!(store.record(&first, seen, "b").await.unwrap().is_some());
    assert_eq!(waiting().await, (998, 1));
    assert_eq!(claim("b", 100, 100).await, ["greedy/ordered-1"]);
    // The safety net finds nothing to do when every finish queued its next.
    assert_eq!(store.queue_firsts(&[]).await.unwrap(), 0);
    drop(store);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
}

/// A CA (its PEM and issuer) made here with rcgen.
fn test_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_when_the_url_asks_and_verifies_the_server() {
    use hookrelay::store::postgres::Postgres as Store;
    let (ca_pem, ca) = test_ca("hookrelay postgres test CA");
    let (other_ca_pem, _) = test_ca("another CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let postgres = Postgres::with_tls("tls", 25435, &server.pem(), &key.serialize_pem());
    let tls_url = format!("{}?sslmode=require", postgres.url);

    // Verified against the CA given: it connects, and over TLS.
    let store = Store::connect(&tls_url, Some(ca_pem.as_bytes())).await.unwrap();
    store.pending(&[]).await.unwrap();
    let plain = postgres.client().await;
    let encrypted: i64 = plain
        .query_one("SELECT count(*) FROM pg_stat_ssl WHERE ssl", &[])
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "no TLS connection from the store");

    // A server certificate the given CA did not sign is refused, saying why.
    let wrong = Store::open(&tls_url, Some(other_ca_pem.as_bytes())).unwrap();
    let error = wrong.pending(&[]).await.unwrap_err();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    // Nor do the public roots know the test CA.
    let public = Store::open(&tls_url, None).unwrap();
    assert!(public.pending(&[]).await.is_err());
    // A bundle that is not PEM is refused up front, naming the flag.
    let bad = Store::open(&tls_url, Some(b"not a certificate"))
        .err()
        .expect("refused");
    assert!(bad.to_string().contains("--postgres-ca-file"), "{bad}");
    postgres.stop();
}

/// `kubectl` with `kubeconfig`: (success, stdout, stderr). It discovers
/// afresh each time: its discovery cache would keep naming the Delivery CRD
/// for minutes after the APIService appears.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("kubectl-cache")
        .join(uuid::Uuid::new_v4().simple().to_string());
    let out = std::process::Command::new(support::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .output()
        .expect("running kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child whose output is gathered as it comes (`kubectl get -w`,
/// `kubectl hookrelay tail`).
struct Streaming {
    child: std::process::Child,
    said: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Streaming {
    /// `kubectl` with `kubeconfig`, discovering afresh.
    fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Streaming {
        let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("kubectl-cache")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let mut command = std::process::Command::new(support::tool("kubectl"));
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args);
        Streaming::start(command)
    }

    fn start(mut command: std::process::Command) -> Streaming {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let said = support::gather_output(&mut child);
        Streaming { child, said }
    }

    fn said(&self) -> String {
        self.said.lock().unwrap().clone()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl hookrelay` with `kubeconfig` in `ns`: no database URL is given
/// (none is taken).
fn plugin(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> std::process::Output {
    plugin_command(kubeconfig, ns, args).output().unwrap()
}

fn plugin_command(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> std::process::Command {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pg-plugin-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-hookrelay");
    if !link.exists() {
        let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hookrelay"), &link);
    }
    let mut command = std::process::Command::new(link);
    command
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "-n", ns])
        .args(args);
    command
}

/// Grants `RESTRICTED_USER` `verbs` on `resources` of `groups` in `ns`
/// (a Role and RoleBinding called `name`).
async fn grant(env: &support::TestEnv, ns: &str, name: &str, groups: &[&str], resources: &[&str], verbs: &[&str]) {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "rules": [{ "apiGroups": groups, "resources": resources, "verbs": verbs }],
    }))
    .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": support::RESTRICTED_USER }],
    }))
    .unwrap();
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(env.client.clone(), ns);
    roles.create(&Default::default(), &role).await.unwrap();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(env.client.clone(), ns);
    bindings.create(&Default::default(), &binding).await.unwrap();
}

// The only test that registers the history APIService (one per cluster),
// so the console and the plugin, which read through it, are checked here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_through_the_kubernetes_api_with_the_users_own_rbac() {
    use hookrelay::api::{GROUP, VERSION};
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    let postgres = Postgres::shared();
    let stack = stack("pg_history", postgres).await;
    let elsewhere = support::TestEnv::new("pg_history_elsewhere").await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/shop"), &[EVENT])).await;
    let mut names = HashSet::new();
    for i in 0..5 {
        let (status, answer) = post(&stack, &format!("evt-history-{i}"), json!({ "n": i, "sku": "A-1" })).await;
        assert_eq!(status, 202, "{answer}");
        names.extend(deliveries_of(&answer));
    }
    let ns = stack.env.ns.clone();
    eventually(WAIT, "the deliveries recorded", || async {
        let rows = stored(postgres, &ns).await;
        (rows.len() == 5 && rows.values().all(|(phase, _)| phase == "Succeeded")).then_some(())
    })
    .await;

    let admin_kubeconfig = &stack.env.cluster.admin_kubeconfig;
    let mut api = ChildProcess::start(
        &format!("api-{ns}"),
        admin_kubeconfig,
        &[
            "api",
            "--listen",
            "127.0.0.1:0",
            "--register",
            &ns,
            "--store",
            "postgres",
            "--postgres-url",
            &postgres.url,
        ],
    );
    let address = eventually(WAIT, "the api serving", || async {
        api.log_field(&format!("serving {GROUP}/{VERSION}"), "address")
    })
    .await;
    let api_services: Api<APIService> = Api::all(stack.env.client.clone());
    let api_service = format!("{VERSION}.{GROUP}");
    eventually(WAIT, "the APIService available", || async {
        let conditions = api_services.get(&api_service).await.ok()?.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
            .then_some(())
    })
    .await;
    let restricted = stack.env.cluster.restricted_kubeconfig();
    let name = names.iter().next().unwrap().clone();

    // Someone whom RBAC grants Webhooks but not Deliveries sees none: not
    // with kubectl, not with the plugin, not in the console.
    grant(
        &stack.env,
        &ns,
        "webhooks-only",
        &["hookrelay.dev"],
        &["hubs", "webhooks"],
        &["get", "list", "watch"],
    )
    .await;
    let as_restricted: Api<Webhook> = Api::namespaced(stack.env.restricted_client().await, &ns);
    eventually(WAIT, "the restricted user may read the webhook", || async {
        as_restricted.get("shop").await.ok().map(drop)
    })
    .await;
    let (ok, _, err) = kubectl(&restricted, &["get", &format!("deliveries.{GROUP}"), "-n", &ns]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    let refused = plugin(&restricted, &ns, &["show", &name]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("forbidden") && !said.contains("A-1"), "{said}");
    let stranger = ConsoleSession::start(&stack, &restricted, "stranger").await;
    let (code, page) = stranger.get(&format!("/ns/{ns}/deliveries/{name}")).await;
    assert!(code == 403 || code == 404, "{code}: {page}");
    assert!(!page.contains("A-1"), "{page}");
    let (_, list) = stranger.get(&format!("/ns/{ns}/webhooks/shop/deliveries")).await;
    assert!(!list.contains(&name), "{list}");
    // The webhook's health is drawn from what the user may read: nothing.
    let (code, page) = stranger.get(&format!("/ns/{ns}/webhooks/shop?window=hour")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains(r#"<dd id="health-deliveries">0</dd>"#), "{page}");

    // Given deliveries to read (not to change) in this namespace only.
    grant(
        &stack.env,
        &ns,
        "history",
        &["hookrelay.dev", GROUP],
        &["deliveries"],
        &["get", "list", "watch"],
    )
    .await;

    // `kubectl get deliveries` resolves to this API in the Postgres store
    // (its group ranks above the CRD's) and prints the CRD's columns.
    // (Until the APIService is available, `deliveries` is the empty CRD.)
    let listed = eventually(WAIT, "kubectl get deliveries as the restricted user", || async {
        let (ok, out, _) = kubectl(&restricted, &["get", "deliveries", "-n", &ns]);
        (ok && out.lines().count() > names.len()).then_some(out)
    })
    .await;
    let header: Vec<&str> = listed.lines().next().unwrap().split_whitespace().collect();
    let crd = <Delivery as kube::CustomResourceExt>::crd();
    let mut expected = vec!["NAME".to_string()];
    for column in crd.spec.versions[0].additional_printer_columns.iter().flatten() {
        if column.priority.unwrap_or(0) == 0 {
            expected.extend(column.name.to_uppercase().split(' ').map(str::to_string));
        }
    }
    assert_eq!(header, expected, "{listed}");
    let rows: HashSet<String> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(rows, names, "{listed}");
    assert!(listed.lines().skip(1).all(|l| l.contains("Succeeded")), "{listed}");

    // One delivery in full, in this API's group.
    let (ok, out, err) = kubectl(&restricted, &["get", "delivery", &name, "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let one: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(one["apiVersion"], format!("{GROUP}/{VERSION}"));
    assert_eq!(one["spec"]["webhook"], "shop");
    assert_eq!(one["status"]["phase"], "Succeeded");

    // `kubectl explain` reads the schema this API publishes (aggregated
    // OpenAPI v3): the Delivery's own fields.
    let explained = eventually(WAIT, "kubectl explain of the history API's deliveries", || async {
        let version = format!("--api-version={GROUP}/{VERSION}");
        let (ok, out, _) = kubectl(&restricted, &["explain", "deliveries.spec", &version]);
        (ok && out.contains("webhook")).then_some(out)
    })
    .await;
    assert!(
        explained.contains(GROUP) && explained.contains("payload"),
        "{explained}"
    );

    // Another namespace: forbidden, by the API server and by this server alike.
    let (ok, _, err) = kubectl(&restricted, &["get", "deliveries", "-n", &elsewhere.ns]);
    assert!(!ok && err.contains("forbidden"), "{err}");

    // Paging returns every row once.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let path = format!("/apis/{GROUP}/{VERSION}/namespaces/{ns}/deliveries?limit=2&continue={token}");
        let (ok, out, err) = kubectl(&restricted, &["get", "--raw", &path]);
        assert!(ok, "{err}");
        let page: Value = serde_json::from_str(&out).unwrap();
        assert!(page["items"].as_array().unwrap().len() <= 2, "{page}");
        paged.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    assert_eq!(paged.len(), names.len(), "{paged:?}");
    assert_eq!(paged.into_iter().collect::<HashSet<_>>(), names);

    // `kubectl get deliveries -w` shows a delivery made after it started.
    let watching = Streaming::kubectl(&restricted, &["get", "deliveries", "-n", &ns, "-w"]);
    // And the plugin's tail prints its attempt.
    let tail = Streaming::start(plugin_command(&restricted, &ns, &["tail", "shop"]));
    eventually(WAIT, "the tail following", || async {
        tail.said().contains("following attempts").then_some(())
    })
    .await;
    eventually(WAIT, "the watch listing what there is", || async {
        names.iter().all(|n| watching.said().contains(n.as_str())).then_some(())
    })
    .await;
    let (status, answer) = post(&stack, "evt-history-watched", json!({ "n": 5 })).await;
    assert_eq!(status, 202, "{answer}");
    let new = deliveries_of(&answer).remove(0);
    eventually(WAIT, "the watch showing the new delivery", || async {
        watching.said().contains(&new).then_some(())
    })
    .await;
    drop(watching);
    let printed = eventually(WAIT, "the tail printing the new delivery's attempt", || async {
        let said = tail.said();
        said.lines()
            .any(|l| l.contains(&new) && l.contains("#1") && l.contains("200"))
            .then_some(said)
    })
    .await;
    assert!(
        !names.iter().any(|n| printed.contains(n.as_str())),
        "only attempts made while following: {printed}"
    );
    drop(tail);
    receiver.wait_for("/shop", 6, WAIT).await;

    // The plugin reads the same, as the user, with no database URL.
    let listed = plugin(&restricted, &ns, &["deliveries", "shop", "-o", "json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains(&name) && listed.contains("Succeeded"), "{listed}");
    let shown = plugin(&restricted, &ns, &["show", &name]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("A-1"), "{shown:?}");
    // Reading is not redelivering: that needs patch.
    let refused = plugin(&restricted, &ns, &["redeliver", &name, "--yes"]);
    let said = String::from_utf8_lossy(&refused.stdout).to_string() + &String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("may not patch"), "{said}");
    let redelivered = plugin(admin_kubeconfig, &ns, &["redeliver", &name, "--yes"]);
    assert!(redelivered.status.success(), "{redelivered:?}");
    let again = receiver.wait_for("/shop", 7, WAIT).await;
    assert_eq!(
        again[6].header("webhook-id"),
        Some(name.as_str()),
        "the same delivery id"
    );
    eventually(WAIT, "the second round recorded", || async {
        stored(postgres, &ns)
            .await
            .get(&name)
            .filter(|(p, n)| p == "Succeeded" && *n == 2)
            .map(drop)
    })
    .await;
    // A test event through the API, answered by the handler.
    let tested = plugin(admin_kubeconfig, &ns, &["test", "shop"]);
    assert!(tested.status.success(), "{tested:?}");
    assert!(String::from_utf8_lossy(&tested.stdout).contains("200"), "{tested:?}");

    // The console, as the admin: the list (the outcome filter applied),
    // the details, the live list, and redelivery.
    let admin = ConsoleSession::start(&stack, admin_kubeconfig, "admin").await;
    let (code, list) = admin.get(&format!("/ns/{ns}/webhooks/shop/deliveries")).await;
    assert_eq!(code, 200, "{list}");
    assert!(list.contains(&name) && list.contains("Succeeded"), "{list}");
    let (_, succeeded) = admin
        .get(&format!("/ns/{ns}/webhooks/shop/deliveries?outcome=succeeded"))
        .await;
    let (_, failed) = admin
        .get(&format!("/ns/{ns}/webhooks/shop/deliveries?outcome=failed"))
        .await;
    assert!(
        succeeded.contains(&name) && !failed.contains(&name),
        "{succeeded}\n{failed}"
    );
    // The webhook's health, from the Postgres rows through the history API.
    let (code, health) = admin.get(&format!("/ns/{ns}/webhooks/shop?window=hour")).await;
    assert_eq!(code, 200, "{health}");
    let drawn = health
        .split(r#"<dd id="health-deliveries">"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|n| n.parse::<usize>().ok())
        .expect("the health section");
    assert!(drawn >= names.len(), "{drawn} deliveries drawn");
    assert!(
        health.contains(r#"<dd id="health-success-rate">100.0%</dd>"#),
        "{health}"
    );
    assert!(health.contains(r#"id="deliveries-chart""#));
    let (code, page) = admin.get(&format!("/ns/{ns}/deliveries/{name}")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("A-1"), "the body as sent: {page}");
    let live = admin.events(&format!("/ns/{ns}/webhooks/shop/deliveries/live")).await;
    let changed = || live.lock().unwrap().matches("event: changed").count();
    eventually(WAIT, "the live view's first event", || async {
        (changed() >= 1).then_some(())
    })
    .await;
    let before_redelivery = changed();
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token on the page")
        .to_string();
    let (code, answer) = admin
        .post(
            &format!("/ns/{ns}/deliveries/{name}/redeliver"),
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(code, 303, "{answer}");
    receiver.wait_for("/shop", 9, WAIT).await;
    eventually(WAIT, "the third round recorded", || async {
        stored(postgres, &ns)
            .await
            .get(&name)
            .filter(|(p, n)| p == "Succeeded" && *n == 3)
            .map(drop)
    })
    .await;
    eventually(WAIT, "the live view told of the third round", || async {
        (changed() > before_redelivery).then_some(())
    })
    .await;

    // Straight to the server, with forged identity headers and no
    // front-proxy certificate: refused, nothing shown.
    let forged = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!(
            "https://{address}/apis/{GROUP}/{VERSION}/namespaces/{ns}/deliveries"
        ))
        .header("X-Remote-User", "hookrelay-admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let body = forged.text().await.unwrap();
    assert!(!body.contains(&name) && body.contains("front proxy"), "{body}");

    // Stopped, it removes what it registered.
    api.signal("TERM");
    assert!(api.exited(WAIT).await.success());
    assert!(
        api_services.get_opt(&api_service).await.unwrap().is_none(),
        "the APIService is removed"
    );
    assert!(!api.logs().contains(&postgres.url), "the store URL is not logged");
    elsewhere.cleanup().await;
    stack.cleanup().await;
}

/// Rate-limit turns an hour in the past are forgotten by the housekeeping
/// (a deleted webhook's row would stay forever); current ones are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_turns_an_hour_old_are_forgotten_and_current_ones_kept() {
    use hookrelay::store::Turns;
    let postgres = Postgres::shared();
    let store = hookrelay::store::postgres::Postgres::connect(&postgres.url, None)
        .await
        .unwrap();
    let ns = format!("turns-{}", std::process::id());
    let rate = hookrelay::store::turns::Rate::of(&hookrelay::resources::hub::DeliveryRateLimit {
        requests_per_second: 1.0,
        burst: Some(1),
    });
    assert_eq!(store.take_turn(&ns, "current", rate).await.unwrap(), None);
    let client = postgres.client().await;
    client
        .execute(
            "INSERT INTO hookrelay_turns (namespace, webhook, tat) VALUES ($1, 'gone', extract(epoch FROM now())::float8 - 7200)",
            &[&ns],
        )
        .await
        .unwrap();
    store.forget_turns().await.unwrap();
    let rows = client
        .query("SELECT webhook FROM hookrelay_turns WHERE namespace = $1", &[&ns])
        .await
        .unwrap();
    let left: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(left, ["current"]);
}
