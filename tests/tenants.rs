//! One controller serves every namespace: a hostile tenant (its templates,
//! handlers, events, networks and ingest traffic) must not stop, slow or
//! expose another tenant's deliveries.

mod support;

use hookrelay::resources::delivery::Phase;
use hookrelay::resources::hub::{DeliverySettings, EgressPolicy, IngestSettings, RateLimit};
use hookrelay::resources::{Delivery, Hub, RetryPolicy, Webhook};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, WAIT, deliveries_of, hub_token, ready_webhook, spec};
use support::{Ingest, TestEnv, eventually};

const EVENT: &str = "dynamic-content.snapshot.published";

fn hub(f: impl FnOnce(&mut Hub)) -> Hub {
    let mut hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    f(&mut hub);
    hub
}

/// A second tenant: its own namespace, hub, ingest and token, served by the
/// first stack's controller (which is told to watch this namespace too).
struct Tenant {
    env: TestEnv,
    ingest: Ingest,
    token: String,
}

impl Tenant {
    async fn post(&self, id: &str) -> (u16, serde_json::Value) {
        let response = self
            .ingest
            .http
            .post(self.ingest.events_url(&self.env.ns, "main"))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(json!({ "id": id, "name": EVENT, "payload": { "id": id } }).to_string())
            .send()
            .await
            .expect("ingest answers");
        let status = response.status().as_u16();
        (status, serde_json::from_str(&response.text().await.unwrap()).unwrap())
    }
}

/// The victim tenant's namespace, set up before the shared controller starts.
async fn victim(test: &str) -> TestEnv {
    TestEnv::new(test).await
}

async fn start_victim(env: TestEnv, receiver: &Receiver) -> Tenant {
    env.api::<Hub>()
        .create(&PostParams::default(), &hub(|_| {}))
        .await
        .unwrap();
    let token = hub_token(&env, "main").await;
    ready_webhook(&env, "steady", spec(receiver.url("/steady"), &[EVENT])).await;
    let ingest = env.start_ingest(None).await;
    Tenant { env, ingest, token }
}

#[tokio::test]
async fn a_hostile_tenant_cannot_hurt_another() {
    let receiver = Receiver::start().await;
    let victim_env = victim("victim_of_a_hostile_tenant").await;
    // The hostile hub lifts the metadata network and loopback; the operator's
    // floor (with 127.0.0.2 put on it here) stays.
    let hostile_hub = hub(|h| {
        h.spec.egress = Some(EgressPolicy {
            denied_networks: vec![],
            allowed_networks: vec!["169.254.0.0/16".into(), "127.0.0.0/8".into()],
        });
        h.spec.delivery = Some(DeliverySettings {
            response_body_limit: Some(65536),
            ..Default::default()
        });
    });
    let options = Options {
        hub: hostile_hub,
        controller_args: vec![
            "--leader-elect=false".into(),
            "--namespace".into(),
            victim_env.ns.clone(),
            "--egress-deny".into(),
            "127.0.0.2/32".into(),
        ],
        ..Options::default()
    };
    let mut hostile = Stack::start_with("a_hostile_tenant", options).await;
    let victim = start_victim(victim_env, &receiver).await;
    let webhooks: Api<Webhook> = hostile.env.api();

    // 1. A template that recursed until the stack overflowed: refused at apply.
    let mut recursive = spec(receiver.url("/recursive"), &[EVENT]);
    recursive.custom_payload = Some(r#"{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}"#.into());
    let refused = webhooks
        .create(&PostParams::default(), &Webhook::new("recursive", recursive))
        .await
        .expect_err("refused by the API server");
    assert!(refused.to_string().contains("customPayload"), "{refused}");

    // 2. A handler answering 500 with ~180 KB of headers and a 64 KiB body of
    //    control characters, under a 19-attempt policy.
    let mut reply = Reply::status(500).body(&"\u{1}".repeat(65536));
    for i in 0..60 {
        reply = reply.header(&format!("x-bloat-{i}"), &"h".repeat(3000));
    }
    receiver.set_default("/bloat", reply);
    let mut bloat = spec(receiver.url("/bloat"), &[EVENT]);
    bloat.retry = Some(RetryPolicy {
        max_retries: Some(18),
        window: Some("20s".parse().unwrap()),
    });
    hostile.webhook("bloat", bloat).await;

    // 3. A webhook aimed at an address on the operator's floor.
    let port = receiver.addr.port();
    hostile
        .webhook("floor", spec(format!("http://127.0.0.2:{port}/floor"), &[EVENT]))
        .await;

    // 4. An event nested past the limit.
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let (status, answer) = hostile.post(json!({ "name": EVENT, "payload": deep })).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("InvalidEvent")),
        "{answer}"
    );
    assert!(answer["message"].as_str().unwrap().contains("at most 32"), "{answer}");

    let (status, answer) = hostile
        .post(json!({ "id": "hostile-1", "name": EVENT, "payload": {} }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let names = deliveries_of(&answer);
    let bloat_name = names.iter().find(|n| n.starts_with("bloat-")).unwrap().clone();
    let floor_name = names.iter().find(|n| n.starts_with("floor-")).unwrap().clone();

    // Meanwhile the other tenant's events all arrive.
    for i in 0..10 {
        let (status, answer) = victim.post(&format!("victim-{i}")).await;
        assert_eq!(status, 202, "{answer}");
    }
    receiver.wait_for("/steady", 10, WAIT).await;

    // The hostile handler: one request per attempt, then deactivated.
    let done = hostile.delivery_done(&bloat_name).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.attempt_count, 19);
    assert_eq!(receiver.received("/bloat").len(), 19, "exactly one request per attempt");
    assert!(
        status.attempts_omitted > 0,
        "attempts were left out to stay within the budget"
    );
    assert_eq!(status.attempts.first().map(|a| a.number), Some(1));
    assert_eq!(status.attempts.last().map(|a| a.number), Some(19));
    let deactivated = eventually(WAIT, "the hostile webhook deactivated", || async {
        let w = webhooks.get("bloat").await.ok()?;
        (!w.spec.active).then_some(w)
    })
    .await;
    assert!(deactivated.annotations().contains_key("hookrelay.dev/deactivated"));

    // Every Delivery stays within the budget (256 KiB by default).
    let all = hostile
        .env
        .api::<Delivery>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let largest = all
        .items
        .iter()
        .map(|d| serde_json::to_vec(d).unwrap().len())
        .max()
        .unwrap();
    assert!(largest <= 256 * 1024, "the largest Delivery is {largest} bytes");

    // The floor held although the hub lifted loopback.
    let floor = eventually(WAIT, "the floor webhook's first attempt", || async {
        let d = hostile.env.api::<Delivery>().get(&floor_name).await.ok()?;
        d.status?.attempts.into_iter().next()
    })
    .await;
    assert!(
        floor
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("egress denied: 127.0.0.2"),
        "{floor:?}"
    );

    // The controller never restarted or panicked.
    assert!(!hostile.controller.has_exited(), "the controller is still running");
    assert!(!hostile.controller.logs().contains("panicked"));
    println!(
        "hostile tenant: largest Delivery {largest} bytes, {} attempts recorded of 19 ({} omitted)",
        status.attempts.len(),
        status.attempts_omitted
    );
    victim.env.cleanup().await;
    hostile.cleanup().await;
}

#[tokio::test]
async fn many_slow_endpoints_of_one_tenant_do_not_delay_another() {
    let receiver = Receiver::start().await;
    let victim_env = victim("victim_of_slow_endpoints").await;
    let options = Options {
        controller_args: vec![
            "--leader-elect=false".into(),
            "--namespace".into(),
            victim_env.ns.clone(),
            "--concurrency".into(),
            "8".into(),
        ],
        ..Options::default()
    };
    let greedy = Stack::start_with("many_slow_endpoints", options).await;
    let victim = start_victim(victim_env, &receiver).await;
    receiver.set_default("/slow", Reply::status(200).delayed(Duration::from_secs(5)));
    for i in 0..6 {
        greedy
            .webhook(&format!("slow{i}"), spec(receiver.url("/slow"), &[EVENT]))
            .await;
    }
    for i in 0..4 {
        let (status, _) = greedy
            .post(json!({ "id": format!("g{i}"), "name": EVENT, "payload": {} }))
            .await;
        assert_eq!(status, 202);
    }
    // The greedy tenant fills what it may of the 8 slots with 5 s requests...
    receiver.wait_for("/slow", 6, WAIT).await;
    let posted = Instant::now();
    let (status, answer) = victim.post("fast-1").await;
    assert_eq!(status, 202, "{answer}");
    // ...and the other tenant's delivery goes at once, not after them.
    let fast = receiver.wait_for("/steady", 1, WAIT).await;
    let waited = fast[0].at.duration_since(posted);
    assert!(
        waited < Duration::from_millis(2500),
        "the fast tenant waited {waited:?} behind the slow one"
    );
    let most = receiver.most_in_flight("/slow");
    assert!(most <= 6, "one tenant holds at most 3/4 of 8 slots, held {most}");
    println!(
        "fair sharing: the other tenant's delivery arrived {waited:?} after its event, while {most} 5 s requests of the greedy tenant were in flight"
    );
    victim.env.cleanup().await;
    greedy.cleanup().await;
}

#[tokio::test]
async fn ingest_cuts_slow_clients_and_limits_each_hub() {
    let limited = hub(|h| {
        h.spec.ingest = Some(IngestSettings {
            token_secret_ref: None,
            verify: vec![],
            rate_limit: Some(RateLimit {
                events_per_second: Some(1),
                burst: Some(3),
            }),
        })
    });
    let options = Options {
        hub: limited,
        controller_args: vec!["--leader-elect=false".into()],
        ..Options::default()
    };
    let stack = Stack::start_with("ingest_limits", options).await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;

    // Above the hub's rate: 429 with Retry-After, nothing of it stored.
    let mut answers = vec![];
    for i in 0..6 {
        let body = json!({ "id": format!("burst-{i}"), "name": EVENT, "payload": {} }).to_string();
        answers.push(
            stack
                .post_full("main", Some(&stack.token), "application/json", body.into_bytes(), &[])
                .await,
        );
    }
    let accepted = answers.iter().filter(|(s, _, _)| *s == 202).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(accepted, 3, "the burst: {answers:?}");
    assert_eq!(limited.len(), 3);
    for (_, retry_after, answer) in &limited {
        assert_eq!(answer["error"], "RateLimited");
        assert!(
            retry_after
                .as_deref()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s >= 1)
        );
    }
    let stored = stack.env.api::<Delivery>().list(&ListParams::default()).await.unwrap();
    let ids: Vec<&str> = stored.items.iter().map(|d| d.spec.event.id.as_str()).collect();
    for i in 3..6 {
        assert!(
            !ids.contains(&format!("burst-{i}").as_str()),
            "burst-{i} was stored: {ids:?}"
        );
    }

    // A payload of null, or none, is an event with a null payload (not a 503).
    eventually(WAIT, "a token to refill", || async {
        let body = json!({ "id": "no-payload", "name": EVENT }).to_string();
        let (status, _, _) = stack
            .post_full("main", Some(&stack.token), "application/json", body.into_bytes(), &[])
            .await;
        (status == 202).then_some(())
    })
    .await;
    let delivered = receiver.wait_for("/hook", 4, WAIT).await;
    assert!(
        delivered
            .iter()
            .any(|r| r.json() == json!({ "name": EVENT, "payload": null }))
    );

    // A client that never finishes its headers is cut off.
    let slow = stack
        .env
        .start_ingest_with(None, &["--header-read-timeout", "1s"])
        .await;
    let addr = slow.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"POST /v1/namespaces/x/hubs/y/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the connection is closed (or answered) instead of held"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        started.elapsed()
    );
    stack.cleanup().await;
}
