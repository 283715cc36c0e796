//! Proof that the tests run against a real control plane: the API server
//! stores and watches objects, kube-controller-manager garbage-collects owned
//! objects, and RBAC is enforced.

mod support;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{TestEnv, eventually};

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("greeting".to_string(), value.to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn configmap_create_get_list_watch() {
    let env = TestEnv::new("configmap_create_get_list_watch").await;
    let api: Api<ConfigMap> = env.api();

    // Watch from "now", then create: the watch must report the new object.
    let mut watch = api
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &config_map("hello", "world"))
        .await
        .unwrap();

    let fetched = api.get("hello").await.unwrap();
    assert_eq!(fetched.data.unwrap()["greeting"], "world");
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|cm| cm.name_any() == "hello"));

    let added = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = watch.try_next().await.unwrap() {
            if let WatchEvent::Added(cm) = event
                && cm.name_any() == "hello"
            {
                return cm;
            }
        }
        panic!("watch ended without reporting the ConfigMap");
    })
    .await
    .expect("watch event within 30s");
    assert_eq!(added.data.unwrap()["greeting"], "world");
    env.cleanup().await;
}

#[tokio::test]
async fn owned_secret_is_garbage_collected_with_its_owner() {
    let env = TestEnv::new("owned_secret_is_garbage_collected").await;
    let config_maps: Api<ConfigMap> = env.api();
    let secrets: Api<Secret> = env.api();

    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", "x"))
        .await
        .unwrap();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("owned".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: owner.name_any(),
                uid: owner.uid().unwrap(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    config_maps.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the owned Secret to be garbage-collected",
        || async { secrets.get_opt("owned").await.unwrap().is_none().then_some(()) },
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn restricted_identity_is_denied_listing_secrets() {
    let env = TestEnv::new("restricted_identity_is_denied").await;
    let restricted: Api<Secret> = Api::namespaced(env.restricted_client().await, &env.ns);
    let err = restricted
        .list(&ListParams::default())
        .await
        .expect_err("listing Secrets must be forbidden");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(status.message.contains("hookrelay-restricted"), "{}", status.message);
        }
        other => panic!("expected 403 Forbidden, got {other}"),
    }
    // The admin identity may list them: the denial is RBAC, not a broken client.
    let admin: Api<Secret> = env.api();
    admin.list(&ListParams::default()).await.expect("admin lists Secrets");
    env.cleanup().await;
}

#[tokio::test]
async fn namespaces_are_deleted_and_get_the_root_ca() {
    // Proves the namespace and root-CA controllers run (test namespaces are
    // cleaned up, Pods could mount kube-root-ca.crt).
    let env = TestEnv::new("namespaces_are_deleted").await;
    let config_maps: Api<ConfigMap> = env.api();
    eventually(Duration::from_secs(60), "kube-root-ca.crt in the namespace", || async {
        config_maps.get_opt("kube-root-ca.crt").await.unwrap().map(drop)
    })
    .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let ns = env.ns.clone();
    env.cleanup().await;
    eventually(Duration::from_secs(60), "the namespace to be deleted", || async {
        namespaces.get_opt(&ns).await.unwrap().is_none().then_some(())
    })
    .await;
}
