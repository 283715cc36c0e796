//! One tenant's large fan-out does not take ingest's memory: 500 webhooks
//! and one 127 KiB event keep ingest's peak resident memory well under the
//! chart's 128 Mi limit, with either store (the deliveries are built and
//! stored a few at a time, never all at once). Prints the peaks.

mod support;

use futures::StreamExt;
use hookrelay::resources::Webhook;
use kube::api::PostParams;
use serde_json::json;
use support::receiver::Receiver;
use support::stack::{Options, Stack, Store, WAIT, deliveries_of, spec};

const EVENT: &str = "dynamic-content.content-item.updated";
const WEBHOOKS: usize = 500;
/// The chart's ingest memory limit.
const CHART_LIMIT: u64 = 128 << 20;

/// The process's peak resident memory so far (`VmHWM`), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

async fn a_large_fanout_keeps_ingest_memory_bounded(store: Store) {
    let options = Options {
        store,
        ..Options::default()
    };
    let stack = Stack::start_with("fanout_memory", options).await;
    let receiver = Receiver::start().await;
    let api: kube::Api<Webhook> = stack.env.api();
    let url = receiver.url("/hook");
    futures::stream::iter(0..WEBHOOKS)
        .map(|i| {
            let (api, webhook) = (
                api.clone(),
                Webhook::new(&format!("w{i:03}"), spec(url.clone(), &[EVENT])),
            );
            async move { api.create(&PostParams::default(), &webhook).await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // Once ingest's cache holds them all, a small event reaches all of them.
    support::eventually(WAIT, "ingest to see every webhook", || async {
        let (status, answer) = stack
            .post(json!({ "id": "small", "name": EVENT, "payload": { "n": 1 } }))
            .await;
        (status == 202 && deliveries_of(&answer).len() == WEBHOOKS).then_some(())
    })
    .await;

    let pid = stack.ingest.process.pid();
    let before = peak_memory(pid);
    // 127 KiB of payload text: just under the default budget's half.
    let blob = "x".repeat(127 * 1024);
    let large = json!({ "id": "large", "name": EVENT, "payload": { "blob": blob } });
    let (mut status, mut answer) = stack.post(large.clone()).await;
    // On a starved machine storing 62 MiB may take longer than ingest's
    // request timeout (408): the sender sends it again, as a CMS would,
    // and the retry completes what the first stored.
    for _ in 0..3 {
        if status != 408 {
            break;
        }
        println!("fanout_memory ({store:?}): 408, sent again: {answer}");
        (status, answer) = stack.post(large.clone()).await;
    }
    assert_eq!(status, 202, "{answer}");
    assert_eq!(deliveries_of(&answer).len(), WEBHOOKS);
    let after = peak_memory(pid);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "fanout_memory ({store:?}): {WEBHOOKS} webhooks x 127 KiB ({:.0} MiB of deliveries): ingest peak {:.1} MiB before, {:.1} MiB after (chart limit {:.0} MiB)",
        mib((WEBHOOKS * blob.len()) as u64),
        mib(before),
        mib(after),
        mib(CHART_LIMIT)
    );
    // All of them at once would take the deliveries' size several times over.
    let all_at_once = (WEBHOOKS * blob.len()) as u64;
    assert!(
        after - before < all_at_once / 2,
        "ingest's peak grew by {:.1} MiB storing one event's deliveries: more than half of them at once",
        mib(after - before)
    );
    assert!(
        after < CHART_LIMIT * 3 / 4,
        "ingest peaked at {:.1} MiB, too near the chart's limit",
        mib(after)
    );
    stack.cleanup().await;
}

both_stores!(a_large_fanout_keeps_ingest_memory_bounded);
