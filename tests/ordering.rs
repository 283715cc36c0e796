//! Ordered delivery per content item: updates of one item reach the handler
//! in the order ingest accepted them, through retries and a controller
//! restart, while other items never wait for them.

mod support;

use hookrelay::resources::delivery::Phase;
use hookrelay::resources::webhook::Ordering;
use hookrelay::resources::{Delivery, RetryPolicy};
use kube::api::ListParams;
use serde_json::json;
use std::time::Duration;
use support::eventually;
use support::receiver::Receiver;
use support::stack::{Options, Stack, WAIT, deliveries_of, spec};

const UPDATED: &str = "dynamic-content.content-item.updated";

#[tokio::test]
async fn updates_of_one_item_arrive_in_order_and_other_items_do_not_wait() {
    let options = Options::single_controller();
    let mut stack = Stack::start_with("ordered_per_content_item", options).await;
    let receiver = Receiver::start().await;
    // Item A's first update fails twice before it is taken.
    receiver.fail_matching("/index", r#""id":"A","version":1}"#, 2);
    let mut index = spec(receiver.url("/index"), &[UPDATED]);
    index.ordering = Some(Ordering {
        key: "$.payload.id".into(),
    });
    index.retry = Some(RetryPolicy {
        max_retries: Some(5),
        window: Some("20s".parse().unwrap()),
    });
    stack.webhook("index", index).await;

    let mut names = std::collections::HashMap::new();
    for version in 1..=5 {
        for item in ["A", "B"] {
            let (status, answer) = stack
                .post(json!({ "id": format!("{item}{version}"), "name": UPDATED,
                              "payload": { "id": item, "version": version } }))
                .await;
            assert_eq!(status, 202, "{answer}");
            names.insert(format!("{item}{version}"), deliveries_of(&answer).remove(0));
        }
    }
    // While A1 is retrying, A2 says what it waits for.
    let api = stack.env.api::<Delivery>();
    eventually(WAIT, "A2 waiting for A1", || async {
        let a2 = api.get(&names["A2"]).await.ok()?;
        (a2.status?.waiting_for.as_deref() == Some(names["A1"].as_str())).then_some(())
    })
    .await;
    // A restart in the middle: the order is rebuilt from stored state.
    stack.restart_controller();
    eventually(Duration::from_secs(90), "all ten delivered", || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|d| d.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded))
            .count();
        (done == 10).then_some(())
    })
    .await;

    let received = receiver.received("/index");
    let of = |item: &str| -> Vec<(u64, std::time::Instant)> {
        received
            .iter()
            .filter(|r| r.json()["payload"]["id"] == item)
            .map(|r| (r.json()["payload"]["version"].as_u64().unwrap(), r.at))
            .collect()
    };
    let a: Vec<u64> = of("A").iter().map(|(v, _)| *v).collect();
    assert!(a.windows(2).all(|w| w[0] <= w[1]), "A's updates in order: {a:?}");
    assert_eq!(
        a.iter().filter(|v| **v == 1).count(),
        3,
        "A1 failed twice, then went: {a:?}"
    );
    let b: Vec<u64> = of("B").iter().map(|(v, _)| *v).collect();
    assert!(b.windows(2).all(|w| w[0] <= w[1]), "B's updates in order: {b:?}");
    // B never waited for A's retries: all of B arrived before A1 was taken.
    let a1_taken = of("A")
        .iter()
        .filter(|(v, _)| *v == 1)
        .map(|(_, at)| *at)
        .max()
        .unwrap();
    let last_b = of("B").iter().map(|(_, at)| *at).max().unwrap();
    assert!(last_b < a1_taken, "B was held back by A's retries");
    let a2 = api.get(&names["A2"]).await.unwrap();
    assert_eq!(a2.status.unwrap().waiting_for, None, "cleared once sent");
    stack.cleanup().await;
}
