//! Chaos: two controller replicas with a short lease and ingest take a
//! steady stream of events while controllers are SIGKILLed every few
//! seconds, ingest once, and kube-apiserver and etcd are each killed and
//! restarted once (with the Postgres store: Postgres is SIGKILLed and
//! restarted instead, while the other variant's restarts go on). The sender
//! retries anything but 202 with the same event id, as a CMS does. Bounded
//! to a few minutes.

mod support;

use hookrelay::resources::delivery::Phase;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rand::Rng;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::ChildProcess;
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, Store, deliveries_of, holder_pid, spec};

const EVENT: &str = "dynamic-content.content-item.updated";
const EVENTS: usize = 300;
const RATE_INTERVAL: Duration = Duration::from_millis(66);
const WEBHOOKS: [&str; 3] = ["search", "cache", "audit"];
const LEASE: [&str; 2] = ["--lease-duration", "3s"];

/// Restarts one server of the local control plane (same arguments, same data).
fn restart_control_plane(server: &str, down_seconds: u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/controlplane.sh");
    let status = Command::new("bash")
        .arg(script)
        .args(["restart", server, &down_seconds.to_string()])
        .status()
        .expect("running controlplane.sh");
    assert!(status.success(), "restarting {server} failed");
}

/// Held while a variant sets up or cleans up, and by each restart of a
/// control-plane server: the two variants run at once, and the Postgres one
/// must see the Kubernetes one's restarts only while it takes events.
static CONTROL_PLANE_QUIET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Restarts a control-plane server once no variant is setting up or cleaning up.
fn restart_when_quiet(server: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _quiet = CONTROL_PLANE_QUIET.lock().await;
        tokio::task::spawn_blocking(move || restart_control_plane(server, 2))
            .await
            .unwrap();
    })
}

/// What the sender saw: event id → the delivery names of its 202.
type Accepted = Arc<Mutex<HashMap<String, Vec<String>>>>;

async fn deliveries_survive_killed_controllers_ingest_apiserver_and_etcd(store: Store) {
    if std::env::var_os("HOOKRELAY_TEST_KUBECONFIG").is_some() {
        panic!("the chaos test restarts the local control plane's servers; run it without HOOKRELAY_TEST_KUBECONFIG");
    }
    let started = Instant::now();
    let mut hub: hookrelay::resources::Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    // Every finished delivery is kept until the end, to be checked.
    hub.spec.retention = Some(hookrelay::resources::hub::RetentionPolicy {
        keep_per_webhook: Some(1000),
        ..Default::default()
    });
    let options = Options {
        hub,
        controller_args: LEASE.iter().map(|s| s.to_string()).collect(),
        store,
        ..Options::default()
    };
    let setting_up = CONTROL_PLANE_QUIET.lock().await;
    let mut stack = Stack::start_with("chaos", options).await;
    // The same arguments as the first (the store's too).
    let replica_args = stack.controller_args().to_vec();
    let replica_args: Vec<&str> = replica_args.iter().map(String::as_str).collect();
    let ingest_args = stack.ingest_args().to_vec();
    let ingest_args: Vec<&str> = ingest_args.iter().map(String::as_str).collect();
    let postgres = (store == Store::Postgres).then(support::postgres::Postgres::shared);
    let mut second: ChildProcess = stack.env.start_controller_with(&replica_args);
    let receiver = Receiver::start().await;
    for name in WEBHOOKS {
        let path = format!("/{name}");
        receiver.set_default(&path, Reply::status(200).delayed(Duration::from_millis(50)));
        stack.webhook(name, spec(receiver.url(&path), &[EVENT])).await;
    }
    drop(setting_up);

    // The sender: one event every 66 ms, each retried until ingest says 202.
    let url = Arc::new(Mutex::new(stack.ingest.events_url(&stack.env.ns, "main")));
    let accepted: Accepted = Arc::default();
    let mut senders = Vec::new();
    for i in 0..EVENTS {
        let (url, accepted, token) = (url.clone(), accepted.clone(), stack.token.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        senders.push(tokio::spawn(async move {
            tokio::time::sleep(RATE_INTERVAL * i as u32).await;
            let id = format!("evt-{i}");
            let body = json!({ "id": id, "name": EVENT, "payload": { "id": id, "version": i } });
            let deadline = Instant::now() + Duration::from_secs(150);
            loop {
                let target = url.lock().unwrap().clone();
                let sent = http
                    .post(target)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                if let Ok(response) = sent
                    && response.status().as_u16() == 202
                    && let Ok(text) = response.text().await
                    && let Ok(answer) = serde_json::from_str::<serde_json::Value>(&text)
                {
                    accepted.lock().unwrap().insert(id, deliveries_of(&answer));
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // The chaos, while the events arrive (about 20 s).
    let leases: Api<Lease> = stack.env.api();
    let (mut controller_kills, mut leader_kills) = (0, 0);
    let (mut ingest_killed, mut apiserver_restart, mut etcd_restart) = (false, None, None);
    let mut postgres_killed = false;
    let mut next_kill = Instant::now() + Duration::from_secs(3);
    let mut rng = rand::rng();
    while senders.iter().any(|s| !s.is_finished()) {
        let t = started.elapsed();
        // Like the kubelet: a controller that exited (it lost its lease) is started again.
        if stack.controller.has_exited() {
            stack.restart_controller();
        }
        if second.has_exited() {
            second = stack.env.start_controller_with(&replica_args);
        }
        if Instant::now() >= next_kill && t < Duration::from_secs(40) {
            let holder = tokio::time::timeout(Duration::from_secs(2), leases.get_opt("hookrelay-controller"))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .and_then(|l| holder_pid(&l));
            let first = rng.random_bool(0.5);
            let victim = if first { stack.controller.pid() } else { second.pid() };
            // Unknown holder (API server away): counted as the leader.
            if holder.is_none_or(|h| h == victim) {
                leader_kills += 1;
            }
            controller_kills += 1;
            if first {
                stack.restart_controller();
            } else {
                second.kill();
                second = stack.env.start_controller_with(&replica_args);
            }
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(2500..4500));
        }
        if !ingest_killed && t > Duration::from_secs(5) {
            stack.ingest.process.kill();
            stack.ingest = stack.env.start_ingest_with(None, &ingest_args).await;
            *url.lock().unwrap() = stack.ingest.events_url(&stack.env.ns, "main");
            ingest_killed = true;
        }
        if let Some(postgres) = postgres
            && !postgres_killed
            && t > Duration::from_secs(13)
        {
            postgres.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            postgres.start();
            postgres_killed = true;
        }
        // Off the test's threads: the receiver and the sender keep running.
        // Once per run of this binary: the Postgres variant lives through
        // the other variant's restarts.
        if store == Store::Kubernetes && apiserver_restart.is_none() && t > Duration::from_secs(9) {
            apiserver_restart = Some(restart_when_quiet("kube-apiserver"));
        }
        if store == Store::Kubernetes && etcd_restart.is_none() && t > Duration::from_secs(17) {
            etcd_restart = Some(restart_when_quiet("etcd"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in senders {
        assert!(s.await.unwrap(), "an event was never accepted within 150 s");
    }
    assert!(ingest_killed, "ingest was killed");
    if store == Store::Kubernetes {
        apiserver_restart.expect("kube-apiserver was restarted").await.unwrap();
        etcd_restart.expect("etcd was restarted").await.unwrap();
    } else {
        assert!(postgres_killed, "Postgres was killed");
    }

    // Every accepted event reaches every subscribed webhook.
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), EVENTS);
    let expected: HashMap<String, String> = accepted
        .iter()
        .flat_map(|(id, names)| names.iter().map(move |n| (n.clone(), id.clone())))
        .collect();
    assert_eq!(
        expected.len(),
        EVENTS * WEBHOOKS.len(),
        "one delivery per event and webhook"
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let finals = loop {
        // Like the kubelet, still: a controller that lost its lease comes back.
        if stack.controller.has_exited() {
            stack.restart_controller();
        }
        if second.has_exited() {
            second = stack.env.start_controller_with(&replica_args);
        }
        if let Some(list) = stack.deliveries().await {
            let done = list
                .iter()
                .filter(|d| d.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded))
                .count();
            if done == expected.len() {
                break list;
            }
            assert!(
                Instant::now() < deadline,
                "after 180 s only {done} of {} deliveries succeeded",
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let received = receiver.all_received();
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for r in &received {
        let id = r.header("webhook-id").unwrap_or_default().to_string();
        // Duplicates carry the same webhook-id, for the same event.
        let event = expected
            .get(&id)
            .unwrap_or_else(|| panic!("a request with unknown webhook-id {id:?}"));
        assert_eq!(r.json()["payload"]["id"].as_str(), Some(event.as_str()), "{id}");
        *per_delivery.entry(id).or_default() += 1;
    }
    let missing: Vec<&String> = expected.keys().filter(|n| !per_delivery.contains_key(*n)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");

    // Every request received is recorded, except those in flight when a
    // leader died or stepped down (with the Postgres store: when any replica
    // died or lost contact with the store): at most one per delivery per
    // such loss.
    let logs = format!("{}\n{}", stack.controller.logs(), second.logs());
    let step_downs = logs.matches("stepping down").count()
        + logs.matches("the lease was taken by another holder").count()
        + logs.matches("lost contact with the postgres store").count();
    let losses = match store {
        Store::Kubernetes => leader_kills + step_downs,
        Store::Postgres => controller_kills + step_downs,
    };
    let recorded: HashMap<String, u32> = finals
        .iter()
        .map(|d| {
            (
                d.metadata.name.clone().unwrap(),
                d.status.as_ref().unwrap().attempt_count,
            )
        })
        .collect();
    let mut unrecorded = 0;
    for (name, n) in &per_delivery {
        let lost = n.saturating_sub(recorded[name] as usize);
        assert!(
            lost <= losses,
            "{name}: {n} requests, {} recorded, more than the {losses} leader losses explain",
            recorded[name]
        );
        unrecorded += lost;
    }
    let duplicates: usize = per_delivery.values().map(|n| n - 1).sum();
    let distinct: HashSet<&String> = per_delivery.keys().collect();
    println!(
        "chaos: {} events accepted, {} deliveries, {} requests ({} distinct), {duplicates} duplicates ({:.1}%), \
         {unrecorded} requests unrecorded; {controller_kills} controller SIGKILLs ({leader_kills} of the leader), \
         {step_downs} step-downs or losses of contact, 1 ingest SIGKILL, {}; {:.0}s",
        accepted.len(),
        expected.len(),
        received.len(),
        distinct.len(),
        100.0 * duplicates as f64 / expected.len() as f64,
        match store {
            Store::Kubernetes => "1 kube-apiserver and 1 etcd restart",
            Store::Postgres => "1 Postgres SIGKILL (and the other variant's restarts)",
        },
        started.elapsed().as_secs_f64(),
    );
    drop(second);
    let _quiet = CONTROL_PLANE_QUIET.lock().await;
    stack.cleanup().await;
}

both_stores!(deliveries_survive_killed_controllers_ingest_apiserver_and_etcd);
