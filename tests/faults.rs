//! The delivery engine when the API server, the Lease or the objects
//! misbehave: a failed record is retried as a write (never a resend), a
//! deposed leader stops sending before the follower starts, a SIGTERM hands
//! over without cutting requests, and malformed Deliveries are reported and
//! skipped without stopping the others.

mod support;

use hookrelay::resources::Delivery;
use hookrelay::resources::delivery::{DeliverySpec, EventRef, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use support::audit::Audit;
use support::proxy::TcpProxy;
use support::receiver::{Received, Receiver, Reply};
use support::stack::{Options, Stack, WAIT, all_succeeded, deliveries_of, holder_pid, ids_seen, spec};
use support::{ChildProcess, eventually};

const EVENT: &str = "dynamic-content.snapshot.published";

fn event(id: &str) -> serde_json::Value {
    json!({ "id": id, "name": EVENT, "payload": { "id": id } })
}

/// A kubeconfig that reaches the API server through a proxy the test controls.
async fn proxied_kubeconfig() -> (TcpProxy, std::net::SocketAddr, std::path::PathBuf) {
    let admin = &support::cluster().admin_kubeconfig;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubeconfigs");
    let (apiserver, write_kubeconfig) = TcpProxy::kubeconfig_through(admin, &dir);
    let proxy = TcpProxy::start(apiserver).await;
    let kubeconfig = write_kubeconfig(proxy.addr);
    (proxy, apiserver, kubeconfig)
}

/// Waits until `pid` holds the controller lease.
async fn leads(stack: &Stack, pid: u32) {
    let leases: Api<Lease> = stack.env.api();
    eventually(WAIT, &format!("pid {pid} to lead"), || async {
        let lease = leases.get_opt("hookrelay-controller").await.ok()??;
        (holder_pid(&lease) == Some(pid)).then_some(())
    })
    .await;
}

fn from(received: &[Received], pid: u32) -> Vec<&Received> {
    received.iter().filter(|r| r.sender_pid == Some(pid)).collect()
}

#[tokio::test]
async fn a_failed_record_is_retried_as_a_write_never_by_sending_again() {
    let (proxy, apiserver, kubeconfig) = proxied_kubeconfig().await;
    let options = Options {
        controller_kubeconfig: Some(kubeconfig),
        controller_args: vec!["--leader-elect=false".into()],
        ..Options::default()
    };
    let stack = Stack::start_with("failed_record_retried_as_write", options).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/hook", Reply::status(200).delayed(Duration::from_secs(3)));
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;

    let (status, answer) = stack.post(event("evt-1")).await;
    assert_eq!(status, 202, "{answer}");
    let name = deliveries_of(&answer).remove(0);
    // The request is at the handler: take the API server away before its
    // outcome can be recorded, and keep it away while the writes fail.
    receiver.wait_for("/hook", 1, WAIT).await;
    let port = proxy.addr.port();
    proxy.cut();
    eventually(WAIT, "two failed record writes", || async {
        let failures = stack
            .controller
            .logs()
            .matches("could not record the attempt; retrying the write")
            .count();
        (failures >= 2).then_some(())
    })
    .await;
    let _back = TcpProxy::start_on(port, apiserver).await;

    let done = stack.delivery_done(&name).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(
        (status.attempt_count, status.attempts.len()),
        (1, 1),
        "one attempt, recorded once"
    );
    assert_eq!(status.attempts[0].response.as_ref().map(|r| r.status_code), Some(200));
    assert_eq!(
        receiver.received("/hook").len(),
        1,
        "the handler got exactly one request for the attempt"
    );
    stack.cleanup().await;
}

#[derive(Debug, Clone, Copy)]
enum Freeze {
    /// The leader's path to the API server hangs: nothing forwarded, connections open.
    StalledApiPath,
    /// The leader process is stopped (SIGSTOP), then continued.
    Sigstop,
}

/// Two controllers; the leader is cut off (or frozen) for longer than the
/// lease while requests to a slow handler are in flight.
async fn split_brain(test: &str, freeze: Freeze) {
    let (proxy, _, leader_kubeconfig) = proxied_kubeconfig().await;
    let lease = ["--lease-duration", "4s"];
    let options = Options {
        controller_kubeconfig: Some(leader_kubeconfig),
        controller_args: lease.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    };
    let mut stack = Stack::start_with(test, options).await;
    let leader = stack.controller.pid();
    leads(&stack, leader).await;
    let follower: ChildProcess = stack.env.start_controller_with(&lease);
    let receiver = Receiver::start_identifying().await;
    receiver.set_default("/hook", Reply::status(200).delayed(Duration::from_secs(2)));
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;
    let audit = Audit::start(stack.env.client.clone(), &stack.env.ns);

    let mut names = Vec::new();
    for i in 0..24 {
        let (status, answer) = stack.post(event(&format!("evt-{i}"))).await;
        assert_eq!(status, 202, "{answer}");
        names.extend(deliveries_of(&answer));
    }
    // The leader is delivering, four at a time, two seconds each...
    receiver.wait_for("/hook", 4, WAIT).await;
    let frozen_at = Instant::now();
    match freeze {
        Freeze::StalledApiPath => proxy.stall(),
        Freeze::Sigstop => stack.controller.signal("STOP"),
    }
    // ...and can no longer renew its lease: the follower takes over.
    eventually(Duration::from_secs(60), "the follower to deliver", || async {
        (from(&receiver.all_received(), follower.pid()).len() >= 4).then_some(())
    })
    .await;
    match freeze {
        Freeze::StalledApiPath => proxy.flow(),
        Freeze::Sigstop => stack.controller.signal("CONT"),
    }
    let finals = all_succeeded(&stack, 24, Duration::from_secs(120)).await;
    let exit = stack.controller.exited(Duration::from_secs(120)).await;
    assert!(!exit.success(), "the deposed leader exits with an error ({exit})");
    assert!(stack.controller.logs().contains("stepping down"), "it says why");

    let received = receiver.all_received();
    assert!(
        received.iter().all(|r| r.sender_pid.is_some()),
        "every request's sender was identified"
    );
    let follower_first = from(&received, follower.pid())
        .iter()
        .map(|r| r.at)
        .min()
        .expect("the follower delivered");
    let late: Vec<_> = from(&received, leader)
        .into_iter()
        .filter(|r| r.at >= follower_first)
        .map(|r| r.header("webhook-id").unwrap_or_default().to_string())
        .collect();
    assert!(
        late.is_empty(),
        "the deposed leader started requests after the follower began delivering: {late:?}"
    );
    let problems = audit.problems(&finals);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(audit.versions_seen() >= 24, "the audit saw the deliveries change");
    let seen = ids_seen(&received);
    for name in &names {
        assert!(seen.contains_key(name), "{name} never reached the handler");
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "split brain ({freeze:?}): follower's first request {:.1}s after the leader was cut off; \
         leader sent {}, follower {}; {duplicates} duplicates, all under the same webhook-id",
        (follower_first - frozen_at).as_secs_f64(),
        from(&received, leader).len(),
        from(&received, follower.pid()).len(),
    );
    drop(follower);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_follower_starts() {
    split_brain("split_brain_stalled_api_path", Freeze::StalledApiPath).await;
}

#[tokio::test]
async fn a_frozen_leader_does_not_send_when_it_wakes_up() {
    split_brain("split_brain_sigstop", Freeze::Sigstop).await;
}

#[tokio::test]
async fn sigterm_hands_over_without_cutting_or_repeating_a_request() {
    // The default lease (15 s): the hand-over is by release, not by expiry.
    let mut stack = Stack::start("sigterm_hands_over").await;
    let leader = stack.controller.pid();
    leads(&stack, leader).await;
    let follower = stack.env.start_controller();
    let receiver = Receiver::start_identifying().await;
    receiver.set_default("/hook", Reply::status(200).delayed(Duration::from_secs(3)));
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;
    for i in 0..12 {
        let (status, answer) = stack.post(event(&format!("evt-{i}"))).await;
        assert_eq!(status, 202, "{answer}");
    }
    receiver.wait_for("/hook", 4, WAIT).await;
    let terminated_at = Instant::now();
    stack.controller.signal("TERM");
    let finals = all_succeeded(&stack, 12, WAIT).await;
    let exit = stack.controller.exited(WAIT).await;
    assert!(exit.success(), "a graceful stop exits 0 ({exit})");

    let received = receiver.all_received();
    let seen = ids_seen(&received);
    assert_eq!(seen.len(), 12, "every delivery reached the handler");
    assert!(seen.values().all(|n| *n == 1), "no request repeated: {seen:?}");
    for d in &finals {
        let s = d.status.as_ref().unwrap();
        assert_eq!(
            s.attempt_count,
            1,
            "{}: no request cut (it would be a failed attempt)",
            d.name_any()
        );
    }
    let by_leader = from(&received, leader).len();
    let by_follower = from(&received, follower.pid());
    assert!(
        by_leader >= 4 && !by_follower.is_empty(),
        "leader {by_leader}, follower {}",
        by_follower.len()
    );
    let takeover = by_follower.iter().map(|r| r.at).min().unwrap() - terminated_at;
    assert!(
        takeover < Duration::from_secs(15),
        "the lease was handed over, not left to expire: {takeover:?}"
    );
    println!(
        "graceful hand-over: follower's first request {:.1}s after SIGTERM (in-flight requests of 3 s finished and recorded first)",
        takeover.as_secs_f64()
    );
    drop(follower);
    stack.cleanup().await;
}

/// A Delivery for `webhook` written directly through the API, as anyone
/// with create rights could.
async fn create_delivery(env: &support::TestEnv, name: &str, webhook: &str, payload: &str) -> Delivery {
    let d = Delivery::new(
        name,
        DeliverySpec {
            webhook: webhook.into(),
            hub: "main".into(),
            event: EventRef {
                id: name.into(),
                name: EVENT.into(),
                received_at: MicroTime(jiff::Timestamp::now()),
                trace: None,
            },
            payload: payload.into(),
        },
    );
    env.api::<Delivery>().create(&PostParams::default(), &d).await.unwrap()
}

async fn patch_status(stack: &Stack, name: &str, status: serde_json::Value) -> Result<Delivery, kube::Error> {
    stack
        .env
        .api::<Delivery>()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
}

/// Posts `n` events and waits until each was delivered.
async fn delivers(stack: &Stack, receiver: &Receiver, prefix: &str, n: usize) {
    for i in 0..n {
        let (status, answer) = stack.post(event(&format!("{prefix}-{i}"))).await;
        assert_eq!(status, 202, "{answer}");
        let name = deliveries_of(&answer).remove(0);
        let d = stack.delivery_done(&name).await;
        assert_eq!(d.status.unwrap().phase, Phase::Succeeded, "{name}");
    }
    let ids: Vec<String> = receiver
        .all_received()
        .iter()
        .filter_map(|r| r.json()["payload"]["id"].as_str().map(str::to_string))
        .collect();
    for i in 0..n {
        assert!(
            ids.contains(&format!("{prefix}-{i}")),
            "{prefix}-{i} reached the handler"
        );
    }
}

async fn warning_events(stack: &Stack, name: &str) -> Vec<String> {
    let events: Api<CoreEvent> = stack.env.api();
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some("InvalidDelivery"))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn nonsensical_status_values_are_refused_or_clamped_and_reported() {
    let options = Options::single_controller();
    let mut stack = Stack::start_with("nonsensical_status_values", options).await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;

    // Written by someone with deliveries/status rights while no controller runs.
    stack.kill_controller();
    create_delivery(&stack.env, "far-future", "shop", "{}").await;
    patch_status(
        &stack,
        "far-future",
        json!({ "phase": "Retrying", "attemptCount": 1, "nextAttemptAt": "2999-01-01T00:00:00Z" }),
    )
    .await
    .expect("a far-future time is a valid time");
    create_delivery(&stack.env, "bad-round", "shop", "{}").await;
    for bad in [
        json!({ "attemptCount": 1, "roundStart": 0 }),
        json!({ "attemptCount": 1, "roundStart": 7 }),
        json!({ "roundStart": 2 }),
    ] {
        let err = patch_status(&stack, "bad-round", bad.clone())
            .await
            .expect_err("refused by the schema");
        assert!(err.to_string().contains("roundStart"), "{bad}: {err}");
    }
    stack.restart_controller();

    // The far-future one is clamped and reported, and everything else flows.
    delivers(&stack, &receiver, "after", 3).await;
    let notes = eventually(WAIT, "an InvalidDelivery event", || async {
        let notes = warning_events(&stack, "far-future").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(notes[0].contains("nextAttemptAt"), "{notes:?}");
    let far = stack.env.api::<Delivery>().get("far-future").await.unwrap();
    assert_eq!(far.status.unwrap().phase, Phase::Retrying, "scheduled, not dropped");
    assert!(stack.controller.logs().contains("status makes no sense"));
    stack.cleanup().await;
}

#[tokio::test]
async fn undecodable_deliveries_fail_or_are_skipped_alone_also_after_a_relist() {
    let options = Options::single_controller();
    let mut stack = Stack::start_with("undecodable_deliveries", options).await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;

    // Payloads no handler can be sent: not JSON, or nested past any decoder.
    create_delivery(&stack.env, "not-json", "shop", "{not json").await;
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    create_delivery(&stack.env, "too-deep", "shop", &deep).await;
    // A shape the API server accepts and this client cannot decode (an
    // attempt number above u32): skipped by the watch, reported.
    stack.kill_controller();
    create_delivery(&stack.env, "bad-shape", "shop", "{}").await;
    let stored = patch_status(
        &stack,
        "bad-shape",
        json!({ "phase": "Retrying", "attemptCount": 1, "attempts": [{
            "number": 4_294_967_296u64, "time": "2026-11-24T00:00:00Z", "durationMs": 1,
            "request": { "method": "POST", "url": "http://127.0.0.1:1/", "headers": [] }
        }]}),
    )
    .await;
    // Stored: only this typed client fails to decode the answer.
    assert!(matches!(stored, Err(kube::Error::SerdeError(_))), "{stored:?}");
    stack.restart_controller();

    delivers(&stack, &receiver, "good", 3).await;
    for name in ["not-json", "too-deep"] {
        let d = stack.delivery_done(name).await;
        let s = d.status.unwrap();
        assert_eq!(s.phase, Phase::Failed, "{name}");
        assert!(
            s.message
                .as_deref()
                .unwrap_or_default()
                .starts_with("not sent: spec.payload "),
            "{name}: {:?}",
            s.message
        );
        assert_eq!(s.attempt_count, 0, "{name}: nothing was sent");
    }
    eventually(WAIT, "an InvalidDelivery event for bad-shape", || async {
        (!warning_events(&stack, "bad-shape").await.is_empty()).then_some(())
    })
    .await;
    let webhook = stack
        .env
        .api::<hookrelay::resources::Webhook>()
        .get("shop")
        .await
        .unwrap();
    assert!(webhook.spec.active, "bad Deliveries do not deactivate the webhook");

    // A re-list meets them again: still nothing stops.
    stack.restart_controller();
    delivers(&stack, &receiver, "relisted", 3).await;
    assert!(
        stack
            .controller
            .logs()
            .contains("a Delivery cannot be decoded; skipped")
    );
    stack.cleanup().await;
}

/// A namespace with the example hub and a signing Secret `name` holding
/// `value`, as the engine tests below need; no controller runs.
async fn hub_and_secret(test: &str, name: &str, value: &str) -> support::TestEnv {
    use hookrelay::resources::Hub;
    use hookrelay::resources::webhook::CREDENTIAL_CONSENT_LABEL;
    use k8s_openapi::api::core::v1::Secret;
    let env = support::TestEnv::new(test).await;
    let hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    env.api::<Hub>().create(&PostParams::default(), &hub).await.unwrap();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            // Its owner's consent to sign with it (spec.secretRef).
            labels: Some([(CREDENTIAL_CONSENT_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        string_data: Some([("secret".to_string(), value.to_string())].into()),
        ..Default::default()
    };
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    env
}

/// An engine (no watches) reading webhooks and hubs from these caches.
fn engine_over(
    env: &support::TestEnv,
    webhooks: kube::runtime::reflector::Store<hookrelay::resources::Webhook>,
    hubs: kube::runtime::reflector::Store<hookrelay::resources::Hub>,
) -> std::sync::Arc<hookrelay::delivery::Engine> {
    hookrelay::delivery::Engine::new(
        env.client.clone(),
        webhooks,
        hubs,
        hookrelay::secret_cache::SecretCache::new(env.client.clone()),
        hookrelay::metrics::Metrics::new(),
        hookrelay::delivery::Options {
            global: hookrelay::delivery::slots::Slots::new(4),
            leadership: hookrelay::leader::Leadership::unconditional(),
            // The handlers here listen on loopback.
            egress_floor: hookrelay::egress::Floor::with_loopback(&[]),
            egress_proxy: None,
            delivery_budget: hookrelay::resources::delivery::DEFAULT_BUDGET,
            store: hookrelay::store::Store::Kubernetes,
        },
    )
}

/// The engine's cache holds the webhook as it was before the controller
/// wrote its signing Secret into the status (ingest, whose cache is ahead,
/// already stored a delivery): the attempt reads the webhook again and is
/// sent signed, instead of failing "no signing secret yet" and waiting for
/// its first retry (what `make bench` showed for the first event).
#[tokio::test]
async fn a_signing_secret_the_cache_has_not_seen_yet_is_looked_up() {
    use hookrelay::delivery::attempt;
    use hookrelay::resources::{Hub, SecretKeyRef, Webhook};
    use kube::runtime::{reflector, watcher};

    let env = hub_and_secret("engine_cache_lacks_signing_secret", "shop-generated", &"g".repeat(32)).await;
    let receiver = Receiver::start().await;
    let webhooks: Api<Webhook> = env.api();
    let created = webhooks
        .create(
            &PostParams::default(),
            &Webhook::new("shop", spec(receiver.url("/hook"), &[EVENT])),
        )
        .await
        .unwrap();
    // What the controller writes once it generated the Secret.
    let status =
        json!({ "status": { "secretRef": SecretKeyRef { name: "shop-generated".into(), key: "secret".into() } } });
    webhooks
        .patch_status("shop", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    // The engine's cache: the webhook as created, without that status.
    let (store, mut writer) = reflector::store::<Webhook>();
    writer.apply_watcher_event(&watcher::Event::Apply(created));
    let (hubs, mut hub_writer) = reflector::store::<Hub>();
    hub_writer.apply_watcher_event(&watcher::Event::Apply(env.api::<Hub>().get("main").await.unwrap()));
    let engine = engine_over(&env, store, hubs);

    let delivery = create_delivery(&env, "first-event", "shop", "{}").await;
    match attempt::run(&engine, &delivery, None, Duration::ZERO).await {
        attempt::Outcome::Recorded(d, None) => {
            let s = d.status.unwrap();
            assert_eq!((s.phase, s.attempt_count), (Phase::Succeeded, 1), "{:?}", s.attempts);
        }
        _ => panic!("the delivery was not recorded as made"),
    }
    let got = receiver.received("/hook");
    assert_eq!(got.len(), 1);
    let expected = hookrelay::delivery::signing::body_signature(&"g".repeat(32), &got[0].body);
    assert_eq!(got[0].header("x-amplience-webhook-signature"), Some(expected.as_str()));
    env.cleanup().await;
}

#[tokio::test]
async fn a_webhook_the_engine_has_not_seen_yet_is_looked_up_not_cancelled() {
    use hookrelay::delivery::attempt;
    use hookrelay::resources::{Hub, SecretKeyRef, Webhook};
    use kube::runtime::reflector;

    // No controller: an engine whose caches are empty, as a controller's are
    // in the moment after ingest (whose cache is ahead) stored a Delivery
    // for a webhook created a moment before.
    let env = hub_and_secret("engine_cache_lags_behind_ingest", "shop-signing", &"s".repeat(32)).await;
    let receiver = Receiver::start().await;
    let mut shop = spec(receiver.url("/hook"), &[EVENT]);
    shop.secret_ref = Some(SecretKeyRef {
        name: "shop-signing".into(),
        key: "secret".into(),
    });
    env.api::<Webhook>()
        .create(&PostParams::default(), &Webhook::new("shop", shop))
        .await
        .unwrap();
    let (webhooks, _) = reflector::store::<Webhook>();
    let (hubs, _) = reflector::store::<Hub>();
    let engine = engine_over(&env, webhooks, hubs);

    let for_shop = create_delivery(&env, "for-shop", "shop", "{}").await;
    match attempt::run(&engine, &for_shop, None, Duration::ZERO).await {
        attempt::Outcome::Recorded(d, None) => {
            assert_eq!(d.status.unwrap().phase, Phase::Succeeded, "delivered, not cancelled")
        }
        _ => panic!("the delivery was not recorded as made"),
    }
    assert_eq!(receiver.received("/hook").len(), 1);

    // A webhook the API server does not know either: cancelled, saying why.
    let for_ghost = create_delivery(&env, "for-ghost", "ghost", "{}").await;
    match attempt::run(&engine, &for_ghost, None, Duration::ZERO).await {
        attempt::Outcome::Recorded(d, None) => {
            let s = d.status.unwrap();
            assert_eq!(s.phase, Phase::Cancelled);
            assert_eq!(s.message.as_deref(), Some("not sent: the webhook was deleted"));
        }
        _ => panic!("the delivery was not recorded as cancelled"),
    }
    env.cleanup().await;
}
