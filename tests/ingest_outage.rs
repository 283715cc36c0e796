//! When the API server cannot store an event, ingest answers 503 with
//! Retry-After and accepts nothing: the CMS retries later.

mod support;

use hookrelay::resources::Delivery;
use kube::api::ListParams;
use serde_json::json;
use std::path::Path;
use support::proxy::TcpProxy;
use support::receiver::Receiver;
use support::stack::{Options, Stack, spec};

#[tokio::test]
async fn api_server_unreachable_means_503_never_202() {
    let admin = &support::cluster().admin_kubeconfig;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubeconfigs");
    let (apiserver, write_kubeconfig) = TcpProxy::kubeconfig_through(admin, &dir);
    let proxy = TcpProxy::start(apiserver).await;
    let kubeconfig = write_kubeconfig(proxy.addr);

    let options = Options {
        ingest_kubeconfig: Some(kubeconfig),
        ..Options::default()
    };
    let stack = Stack::start_with("api_server_unreachable_503", options).await;
    let receiver = Receiver::start().await;
    stack
        .webhook(
            "shop",
            spec(receiver.url("/hook"), &["dynamic-content.edition.scheduled"]),
        )
        .await;
    let event = |id: &str| json!({ "id": id, "name": "dynamic-content.edition.scheduled", "payload": {} });

    // Through the proxy, events are accepted...
    let (status, answer) = stack.post(event("evt-up")).await;
    assert_eq!(status, 202, "{answer}");

    // ...and with the API server out of reach they are not.
    proxy.cut();
    let body = event("evt-down").to_string().into_bytes();
    let (status, retry_after, answer) = stack
        .post_full("main", Some(&stack.token), "application/json", body, &[])
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "ApiUnavailable");
    assert!(
        retry_after.is_some_and(|s| s.parse::<u64>().is_ok()),
        "503 carries Retry-After"
    );

    let deliveries = stack.env.api::<Delivery>().list(&ListParams::default()).await.unwrap();
    assert!(deliveries.items.iter().any(|d| d.spec.event.id == "evt-up"));
    assert!(
        !deliveries.items.iter().any(|d| d.spec.event.id == "evt-down"),
        "nothing of the refused event is stored"
    );
    stack.cleanup().await;
}
