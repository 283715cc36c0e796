//! Crash safety and leader election: the controller is SIGKILLed while
//! deliveries are pending, and two controllers run side by side.

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use std::time::Duration;
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, Store, WAIT, all_succeeded, deliveries_of, holder_pid, ids_seen, spec};
use support::{ChildProcess, eventually};

const EVENT: &str = "dynamic-content.snapshot.published";

/// With the Postgres store, what the killed controller had claimed is sent
/// once its claim runs out (`--claim-lease`, at least twice the hub's
/// longest request + 15 s) or its heartbeat stops.
async fn sigkilled_controller_loses_no_delivery(store: Store) {
    let options = Options {
        store,
        ..Options::single_controller()
    };
    let mut stack = Stack::start_with("sigkilled_controller_loses_none", options).await;
    let receiver = Receiver::start().await;
    for i in 0..4 {
        let path = format!("/slow{i}");
        receiver.set_default(&path, Reply::status(200).delayed(Duration::from_millis(150)));
        stack
            .webhook(&format!("slow{i}"), spec(receiver.url(&path), &[EVENT]))
            .await;
    }

    // 50 events × 4 webhooks = 200 deliveries, stored while no controller runs.
    stack.kill_controller();
    let mut names = Vec::new();
    for i in 0..50 {
        let (status, answer) = stack
            .post(json!({ "id": format!("evt-{i}"), "name": EVENT, "payload": { "n": i } }))
            .await;
        assert_eq!(status, 202, "{answer}");
        names.extend(deliveries_of(&answer));
    }
    assert_eq!(names.len(), 200);

    // Kill it three times mid-way, each time a few more requests later.
    for (round, threshold) in [30usize, 80, 130].into_iter().enumerate() {
        stack.restart_controller();
        eventually(
            WAIT,
            &format!("{threshold} requests before kill {}", round + 1),
            || async { (receiver.all_received().len() >= threshold).then_some(()) },
        )
        .await;
        stack.kill_controller();
    }
    stack.restart_controller();
    all_succeeded(&stack, 200, Duration::from_secs(120)).await;

    let seen = ids_seen(&receiver.all_received());
    for name in &names {
        assert!(seen.contains_key(name), "{name} never reached the receiver");
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "crash test: 200 deliveries, 3 SIGKILLs, {} requests, {duplicates} duplicates",
        receiver.all_received().len()
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn two_controllers_deliver_once_and_the_follower_takes_over() {
    let args = vec!["--lease-duration".to_string(), "4s".to_string()];
    let mut hub: hookrelay::resources::Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.delivery = Some(hookrelay::resources::hub::DeliverySettings {
        timeout: Some("2s".parse().unwrap()),
        ..Default::default()
    });
    let mut stack = Stack::start_with(
        "two_controllers_deliver_once",
        Options {
            hub,
            controller_args: args.clone(),
            ..Options::default()
        },
    )
    .await;
    let mut second: ChildProcess = {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        stack.env.start_controller_with(&a)
    };
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;

    for i in 0..20 {
        let (status, _) = stack
            .post(json!({ "id": format!("evt-{i}"), "name": EVENT, "payload": {} }))
            .await;
        assert_eq!(status, 202);
    }
    all_succeeded(&stack, 20, WAIT).await;
    let seen = ids_seen(&receiver.all_received());
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|n| *n == 1), "an attempt was made twice: {seen:?}");

    // Kill whichever holds the lease; the other carries on.
    let leases: Api<Lease> = stack.env.api();
    let lease = leases.get("hookrelay-controller").await.unwrap();
    let leader = holder_pid(&lease).expect("a holder");
    let survivor_pid = if leader == stack.controller.pid() {
        stack.kill_controller();
        second.pid()
    } else {
        assert_eq!(leader, second.pid(), "the lease is held by one of the two");
        second.kill();
        stack.controller.pid()
    };
    for i in 20..30 {
        let (status, _) = stack
            .post(json!({ "id": format!("evt-{i}"), "name": EVENT, "payload": {} }))
            .await;
        assert_eq!(status, 202);
    }
    all_succeeded(&stack, 30, WAIT).await;
    let lease = leases.get("hookrelay-controller").await.unwrap();
    assert_eq!(holder_pid(&lease), Some(survivor_pid));
    assert_eq!(ids_seen(&receiver.all_received()).len(), 30);
    stack.cleanup().await;
}

#[tokio::test]
async fn watches_recover_when_the_api_server_goes_away_and_comes_back() {
    // The controller reaches the API server through a proxy; cutting it and
    // opening it again on the same port is, for this process, an API server
    // restart. The same process then delivers new events.
    let admin = &support::cluster().admin_kubeconfig;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubeconfigs");
    let (apiserver, write_kubeconfig) = support::proxy::TcpProxy::kubeconfig_through(admin, &dir);
    let proxy = support::proxy::TcpProxy::start(apiserver).await;
    let kubeconfig = write_kubeconfig(proxy.addr);
    let options = Options {
        controller_kubeconfig: Some(kubeconfig),
        controller_args: vec!["--leader-elect=false".into()],
        ..Options::default()
    };
    let stack = Stack::start_with("watches_recover", options).await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/hook"), &[EVENT])).await;
    let (status, _) = stack
        .post(json!({ "id": "before", "name": EVENT, "payload": {} }))
        .await;
    assert_eq!(status, 202);
    receiver.wait_for("/hook", 1, WAIT).await;

    let port = proxy.addr.port();
    proxy.cut();
    let (status, _) = stack
        .post(json!({ "id": "during", "name": EVENT, "payload": {} }))
        .await;
    assert_eq!(status, 202, "ingest has its own connection");
    let back = support::proxy::TcpProxy::start_on(port, apiserver).await;
    all_succeeded(&stack, 2, Duration::from_secs(120)).await;
    let (status, _) = stack.post(json!({ "id": "after", "name": EVENT, "payload": {} })).await;
    assert_eq!(status, 202);
    all_succeeded(&stack, 3, Duration::from_secs(120)).await;
    assert_eq!(ids_seen(&receiver.all_received()).len(), 3);
    assert!(
        stack
            .controller
            .logs()
            .lines()
            .filter(|l| l.contains("\"controller started\""))
            .count()
            == 1,
        "no restart"
    );
    drop(back);
    stack.cleanup().await;
}

both_stores!(sigkilled_controller_loses_no_delivery);
