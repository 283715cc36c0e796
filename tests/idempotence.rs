//! A reconcile of an unchanged object writes nothing: every request the
//! reconcilers send is counted at the HTTP layer of the client.

mod support;

use hookrelay::controller::{Context, hubs, webhooks};
use hookrelay::resources::{Hub, Webhook};
use kube::api::{Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Config, ResourceExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::TestEnv;

/// A client that counts every request other than GET (writes).
async fn counting_client(writes: Arc<AtomicUsize>) -> Client {
    let path = &support::cluster().admin_kubeconfig;
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        if req.method() != http::Method::GET {
            writes.fetch_add(1, Ordering::SeqCst);
        }
        req
    });
    ClientBuilder::try_from(config).unwrap().with_layer(&count).build()
}

fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

#[tokio::test]
async fn a_second_reconcile_of_an_unchanged_object_writes_nothing() {
    let env = TestEnv::new("second_reconcile_writes_nothing").await;
    let hubs_api: Api<Hub> = env.api();
    let webhooks_api: Api<Webhook> = env.api();
    let hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    let webhook: Webhook = serde_yaml::from_str(include_str!("../examples/webhook.yaml")).unwrap();
    let hub = hubs_api.create(&PostParams::default(), &hub).await.unwrap();
    let webhook = webhooks_api.create(&PostParams::default(), &webhook).await.unwrap();

    let writes = Arc::new(AtomicUsize::new(0));
    let client = counting_client(writes.clone()).await;
    let secrets = hookrelay::secret_cache::SecretCache::new(client.clone());
    let ctx = Arc::new(Context::new(
        client,
        store_of(vec![hub.clone()]),
        store_of(vec![webhook.clone()]),
        secrets,
    ));

    webhooks::reconcile(Arc::new(webhook.clone()), ctx.clone())
        .await
        .unwrap();
    let first = writes.swap(0, Ordering::SeqCst);
    assert!(
        first >= 2,
        "the first pass creates the Secret and writes status ({first} writes)"
    );

    let webhook = webhooks_api.get(&webhook.name_any()).await.unwrap();
    assert!(webhook.status.is_some());
    webhooks::reconcile(Arc::new(webhook.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(writes.swap(0, Ordering::SeqCst), 0, "second webhook pass wrote");

    hubs::reconcile(Arc::new(hub.clone()), ctx.clone()).await.unwrap();
    assert!(
        writes.swap(0, Ordering::SeqCst) >= 2,
        "the first hub pass creates the token and writes status"
    );
    let hub = hubs_api.get(&hub.name_any()).await.unwrap();
    hubs::reconcile(Arc::new(hub), ctx.clone()).await.unwrap();
    assert_eq!(writes.swap(0, Ordering::SeqCst), 0, "second hub pass wrote");

    // A change the reconciler does not act on (a label) writes nothing either.
    let label = serde_json::json!({ "metadata": { "labels": { "team": "content" } } });
    let webhook = webhooks_api
        .patch(&webhook.name_any(), &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
    webhooks::reconcile(Arc::new(webhook), ctx).await.unwrap();
    assert_eq!(writes.load(Ordering::SeqCst), 0);
    env.cleanup().await;
}
