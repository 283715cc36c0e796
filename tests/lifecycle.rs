//! Retries, deactivation, redelivery, rotation overlap, retention and egress
//! safety, end to end with windows of seconds.

mod support;

use hookrelay::delivery::signing;
use hookrelay::resources::delivery::{DeliverySpec, DeliveryStatus, EventRef, Phase};
use hookrelay::resources::hub::{EgressPolicy, RetentionPolicy};
use hookrelay::resources::{Delivery, Hub, RetryPolicy, Webhook};
use hookrelay::secrets;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::time::Duration;
use support::eventually;
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, Store, WAIT, deliveries_of, spec};

const EVENT: &str = "dynamic-content.content-item.updated";

fn retry(max_retries: u32, window: &str) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        max_retries: Some(max_retries),
        window: Some(window.parse().unwrap()),
    })
}

async fn post_one(stack: &Stack, id: &str) -> String {
    let (status, answer) = stack
        .post(json!({ "id": id, "name": EVENT, "payload": { "id": id } }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let names = deliveries_of(&answer);
    assert_eq!(names.len(), 1, "{answer}");
    names[0].clone()
}

async fn webhook_when(stack: &Stack, name: &str, what: &str, check: impl Fn(&Webhook) -> bool) -> Webhook {
    let api: Api<Webhook> = stack.env.api();
    eventually(WAIT, what, || async {
        let w = api.get(name).await.ok()?;
        check(&w).then_some(w)
    })
    .await
}

fn active_condition(w: &Webhook) -> Option<(String, String)> {
    let c = w.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Active")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// A retry due further ahead than the engine holds whole deliveries for
/// (30 s) is held in brief, read again when due and sent then, once.
async fn a_retry_due_far_ahead_is_read_again_and_sent_when_due(store: Store) {
    let stack = Stack::start_in("retry_due_far_ahead", store).await;
    let receiver = Receiver::start().await;
    receiver.script("/hook", [Reply::status(503).header("Retry-After", "33")]);
    let mut s = spec(receiver.url("/hook"), &[EVENT]);
    s.retry = retry(5, "10m");
    stack.webhook("later", s).await;

    let name = post_one(&stack, "evt-far").await;
    let got = receiver.wait_for("/hook", 2, Duration::from_secs(90)).await;
    let done = stack.delivery_done(&name).await.status.unwrap();
    assert_eq!((done.phase, done.attempt_count), (Phase::Succeeded, 2));
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_secs(32),
        "sent when due, not before: {waited:?}"
    );
    assert_eq!(receiver.received("/hook").len(), 2, "sent once when due");
    stack.cleanup().await;
}

async fn failed_attempts_are_retried_under_one_delivery_id(store: Store) {
    let stack = Stack::start_in("failed_attempts_are_retried", store).await;
    let receiver = Receiver::start().await;
    receiver.script("/hook", [Reply::status(500), Reply::status(500)]);
    let mut s = spec(receiver.url("/hook"), &[EVENT]);
    s.retry = retry(18, "10s");
    stack.webhook("flaky", s).await;

    let name = post_one(&stack, "evt-1").await;
    let delivery = stack.delivery_done(&name).await;
    let status = delivery.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded);
    let codes: Vec<Option<u16>> = status
        .attempts
        .iter()
        .map(|a| a.response.as_ref().map(|r| r.status_code))
        .collect();
    assert_eq!(codes, vec![Some(500), Some(500), Some(200)]);
    assert_eq!(
        status.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let got = receiver.received("/hook");
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.header("webhook-id") == Some(name.as_str())),
        "one id across retries"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn running_out_of_retries_deactivates_the_webhook_and_cancels_the_rest() {
    let options = Options::single_controller();
    let mut stack = Stack::start_with("running_out_of_retries", options).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/hook", Reply::status(404));
    let mut s = spec(receiver.url("/hook"), &[EVENT]);
    s.retry = retry(3, "3s");
    stack.webhook("failing", s).await;
    let webhook: Webhook = stack.env.api::<Webhook>().get("failing").await.unwrap();

    // Another delivery of this webhook, due in an hour: created while the
    // controller is down, so it is pending when the first one gives up.
    stack.kill_controller();
    let deliveries: Api<Delivery> = stack.env.api();
    let mut other = Delivery::new(
        "failing-later",
        DeliverySpec {
            webhook: "failing".into(),
            hub: "main".into(),
            event: EventRef {
                id: "evt-later".into(),
                name: EVENT.into(),
                received_at: MicroTime(Timestamp::now()),
                trace: None,
            },
            payload: "{}".into(),
        },
    );
    other.metadata.owner_references = Some(vec![webhook.controller_owner_ref(&()).unwrap()]);
    deliveries.create(&PostParams::default(), &other).await.unwrap();
    let later = DeliveryStatus {
        phase: Phase::Retrying,
        attempt_count: 1,
        next_attempt_at: Some(MicroTime(Timestamp::now() + jiff::SignedDuration::from_hours(1))),
        ..Default::default()
    };
    deliveries
        .patch_status(
            "failing-later",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": later })),
        )
        .await
        .unwrap();
    stack.restart_controller();

    let name = post_one(&stack, "evt-1").await;
    let failed = stack.delivery_done(&name).await.status.unwrap();
    assert_eq!(failed.phase, Phase::Failed);
    assert_eq!(failed.attempt_count, 4, "the first attempt and 3 retries");
    assert_eq!(receiver.received("/hook").len(), 4);

    let w = webhook_when(&stack, "failing", "deactivation", |w| {
        !w.spec.active && active_condition(w).is_some_and(|(_, r)| r == "RetriesExhausted")
    })
    .await;
    let status = w.status.unwrap();
    assert!(status.deactivated_at.is_some());
    assert_eq!(status.deactivation.as_ref().unwrap().delivery, name);
    let events: Api<Event> = stack.env.api();
    let warning = eventually(WAIT, "a RetriesExhausted Warning event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RetriesExhausted"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning.note.unwrap_or_default().contains(&name),
        "the event names the delivery"
    );

    let other = stack.delivery_done("failing-later").await.status.unwrap();
    assert_eq!(other.phase, Phase::Cancelled);
    assert!(other.message.unwrap().contains("RetriesExhausted"));
    assert_eq!(
        receiver.received("/hook").len(),
        4,
        "the cancelled delivery was not sent"
    );

    // While inactive, events do not trigger it.
    let (status, answer) = stack.post(json!({ "id": "evt-2", "name": EVENT, "payload": {} })).await;
    assert_eq!(status, 202);
    for d in deliveries_of(&answer) {
        assert_eq!(stack.delivery_done(&d).await.status.unwrap().phase, Phase::Cancelled);
    }
    assert_eq!(receiver.received("/hook").len(), 4);

    // Reactivated: delivered again.
    receiver.set_default("/hook", Reply::status(200));
    let webhooks: Api<Webhook> = stack.env.api();
    webhooks
        .patch(
            "failing",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "active": true } })),
        )
        .await
        .unwrap();
    let w = webhook_when(&stack, "failing", "reactivation", |w| {
        active_condition(w).is_some_and(|(s, _)| s == "True")
    })
    .await;
    assert!(w.status.unwrap().deactivation.is_none());
    eventually(WAIT, "a Reactivated event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Reactivated"))
    })
    .await;
    let delivered = eventually(WAIT, "an event delivered after reactivation", || async {
        let (status, answer) = stack.post(json!({ "name": EVENT, "payload": {} })).await;
        assert_eq!(status, 202);
        deliveries_of(&answer).into_iter().next()
    })
    .await;
    assert_eq!(
        stack.delivery_done(&delivered).await.status.unwrap().phase,
        Phase::Succeeded
    );
    stack.cleanup().await;
}

async fn gone_deactivates_at_once_and_redirects_are_failures(store: Store) {
    let stack = Stack::start_in("gone_deactivates_at_once", store).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/gone", Reply::status(410));
    receiver.set_default(
        "/moved",
        Reply::status(301).header("location", &receiver.url("/target")),
    );
    stack.webhook("gone", spec(receiver.url("/gone"), &[EVENT])).await;
    stack.webhook("moved", spec(receiver.url("/moved"), &[EVENT])).await;

    let (status, answer) = stack.post(json!({ "name": EVENT, "payload": {} })).await;
    assert_eq!(status, 202);
    let names = deliveries_of(&answer);
    let gone = names.iter().find(|n| n.starts_with("gone-")).unwrap();
    let gone_status = stack.delivery_done(gone).await.status.unwrap();
    assert_eq!((gone_status.phase, gone_status.attempt_count), (Phase::Failed, 1));
    let w = webhook_when(&stack, "gone", "deactivation by 410", |w| {
        !w.spec.active && active_condition(w).is_some_and(|(_, r)| r == "Gone")
    })
    .await;
    assert!(w.status.unwrap().deactivated_at.is_some());

    let moved = names.iter().find(|n| n.starts_with("moved-")).unwrap();
    let first = eventually(WAIT, "the redirect to be recorded", || async {
        let d = stack.delivery(moved).await?;
        d.status?.attempts.into_iter().next()
    })
    .await;
    assert_eq!(first.response.unwrap().status_code, 301);
    assert!(receiver.received("/target").is_empty(), "the Location was not followed");
    stack.cleanup().await;
}

async fn retry_after_is_honoured(store: Store) {
    let stack = Stack::start_in("retry_after_is_honoured", store).await;
    let receiver = Receiver::start().await;
    receiver.script("/hook", [Reply::status(429).header("retry-after", "2")]);
    let mut s = spec(receiver.url("/hook"), &[EVENT]);
    s.retry = retry(5, "60s");
    stack.webhook("limited", s).await;
    let name = post_one(&stack, "evt-1").await;
    assert_eq!(stack.delivery_done(&name).await.status.unwrap().phase, Phase::Succeeded);
    let got = receiver.received("/hook");
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before Retry-After"
    );
    stack.cleanup().await;
}

async fn redelivery_makes_new_attempts_under_the_same_id(store: Store) {
    let stack = Stack::start_in("redelivery_same_id", store).await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;
    let name = post_one(&stack, "evt-1").await;
    assert_eq!(stack.delivery_done(&name).await.status.unwrap().attempt_count, 1);

    stack.redeliver(&name, "please").await;
    let got = receiver.wait_for("/hook", 2, WAIT).await;
    assert_eq!(got[1].header("webhook-id"), Some(name.as_str()));
    let status = eventually(WAIT, "the second round recorded", || async {
        let s = stack.delivery(&name).await?.status?;
        (s.attempt_count == 2 && s.phase == Phase::Succeeded).then_some(s)
    })
    .await;
    assert_eq!(status.round_start, Some(2));
    assert_eq!(status.redelivered_for.as_deref(), Some("please"));
    assert_eq!(status.attempts[1].number, 2, "recorded after the earlier attempt");
    stack.cleanup().await;
}

async fn during_a_rotation_overlap_both_secrets_sign(store: Store) {
    let mut hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.signing.get_or_insert_default().rotation_overlap = Some("4s".parse().unwrap());
    let stack = Stack::start_with(
        "rotation_overlap_both_sign",
        Options {
            hub,
            store,
            ..Options::default()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    let old = stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;
    let secret_name = "shop-signing-secret";
    let secrets_api: Api<Secret> = stack.env.api();

    let webhooks: Api<Webhook> = stack.env.api();
    let rotate = json!({ "metadata": { "annotations": { "hookrelay.dev/rotate-secret": "1" } } });
    webhooks
        .patch("shop", &PatchParams::default(), &Patch::Merge(rotate))
        .await
        .unwrap();
    let new = eventually(WAIT, "the rotation", || async {
        let s = secrets_api.get(secret_name).await.ok()?;
        (secrets::value(&s, "previous") == Some(old.as_str()))
            .then(|| secrets::value(&s, "secret").unwrap().to_string())
    })
    .await;

    let name = post_one(&stack, "evt-during").await;
    let request = receiver.wait_for("/hook", 1, WAIT).await.remove(0);
    let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    let header = request.header("webhook-signature").unwrap().to_string();
    let signatures: Vec<&str> = header.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{header}");
    assert!(signatures.contains(&signing::standard_signature(&new, &name, timestamp, &request.body).as_str()));
    assert!(signatures.contains(&signing::standard_signature(&old, &name, timestamp, &request.body).as_str()));
    assert_eq!(
        request.header("x-amplience-webhook-signature"),
        Some(signing::body_signature(&new, &request.body).as_str()),
        "the CMS signature uses the new secret"
    );

    eventually(WAIT, "the overlap to end", || async {
        let s = secrets_api.get(secret_name).await.ok()?;
        secrets::value(&s, "previous").is_none().then_some(())
    })
    .await;
    let name = post_one(&stack, "evt-after").await;
    let request = receiver.wait_for("/hook", 2, WAIT).await.remove(1);
    let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    assert_eq!(
        request.header("webhook-signature"),
        Some(signing::standard_signature(&new, &name, timestamp, &request.body).as_str())
    );
    stack.cleanup().await;
}

async fn retention_keeps_the_newest_finished_deliveries(store: Store) {
    let mut hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.retention = Some(RetentionPolicy {
        keep_per_webhook: Some(2),
        max_age: None,
    });
    let stack = Stack::start_with(
        "retention_keeps_the_newest",
        Options {
            hub,
            store,
            ..Options::default()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;
    let mut names = Vec::new();
    for i in 0..5 {
        let name = post_one(&stack, &format!("evt-{i}")).await;
        stack.delivery_done(&name).await;
        names.push(name);
    }
    let mut kept = eventually(WAIT, "retention to delete all but 2", || async {
        let list = stack.deliveries().await?;
        let kept: Vec<String> = list.iter().map(|d| d.name_any()).collect();
        (kept.len() == 2).then_some(kept)
    })
    .await;
    kept.sort();
    let mut newest = names[3..].to_vec();
    newest.sort();
    assert_eq!(kept, newest);
    // The webhook's history outlives the Deliveries.
    let w = webhook_when(&stack, "shop", "five recent deliveries", |w| {
        w.status.as_ref().is_some_and(|s| s.recent_deliveries.len() == 5)
    })
    .await;
    assert_eq!(w.status.unwrap().succeeded, Some(5));
    stack.cleanup().await;
}

async fn egress_policy_refuses_denied_addresses_by_literal_and_by_name(store: Store) {
    let mut hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.egress = Some(EgressPolicy {
        denied_networks: vec!["127.0.0.1/32".into(), "::1/128".into()],
        allowed_networks: vec![],
    });
    let stack = Stack::start_with(
        "egress_policy_refuses",
        Options {
            hub,
            store,
            ..Options::default()
        },
    )
    .await;
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let mut literal = spec(format!("http://127.0.0.1:{port}/literal"), &[EVENT]);
    literal.retry = retry(18, "10m");
    let mut by_name = spec(format!("http://localhost:{port}/name"), &[EVENT]);
    by_name.retry = retry(18, "10m");
    stack.webhook("literal", literal).await;
    stack.webhook("by-name", by_name).await;

    let (status, answer) = stack.post(json!({ "name": EVENT, "payload": {} })).await;
    assert_eq!(status, 202);
    let names = deliveries_of(&answer);
    for name in &names {
        let error = eventually(WAIT, "a refused attempt to be recorded", || async {
            let d = stack.delivery(name).await?;
            d.status?.attempts.into_iter().next()?.error
        })
        .await;
        assert!(error.contains("egress denied"), "{name}: {error}");
        assert!(error.contains("127.0.0.1") || error.contains("::1"), "{name}: {error}");
    }
    assert!(receiver.all_received().is_empty(), "nothing reached the denied address");

    // Lifting the denial lets the next attempt through.
    let hubs: Api<Hub> = stack.env.api();
    hubs.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "egress": null } })),
    )
    .await
    .unwrap();
    for name in &names {
        stack.redeliver(name, "lifted").await;
    }
    receiver.wait_for("/literal", 1, WAIT).await;
    receiver.wait_for("/name", 1, WAIT).await;
    for name in &names {
        eventually(WAIT, "success after lifting the denial", || async {
            let s = stack.delivery(name).await?.status?;
            (s.phase == Phase::Succeeded).then_some(())
        })
        .await;
    }
    stack.cleanup().await;
}

both_stores!(
    a_retry_due_far_ahead_is_read_again_and_sent_when_due,
    failed_attempts_are_retried_under_one_delivery_id,
    gone_deactivates_at_once_and_redirects_are_failures,
    retry_after_is_honoured,
    redelivery_makes_new_attempts_under_the_same_id,
    retention_keeps_the_newest_finished_deliveries,
    during_a_rotation_overlap_both_secrets_sign,
    egress_policy_refuses_denied_addresses_by_literal_and_by_name,
);
