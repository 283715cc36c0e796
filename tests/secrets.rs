//! The secret reconciler against the real API server, with `hookrelay
//! controller` running as a process scoped to the test's namespace.

mod support;

use hookrelay::resources::webhook::CREDENTIAL_CONSENT_LABEL;
use hookrelay::resources::{Hub, Webhook};
use hookrelay::secrets;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::{TestEnv, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// Applies a YAML file from `examples/` into the test namespace.
async fn apply_example<K>(env: &TestEnv, file: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file);
    let object: K = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    env.api::<K>()
        .patch(
            &object.name_any(),
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {file}: {e}"))
}

async fn secret_value(api: &Api<Secret>, name: &str, key: &str) -> Option<String> {
    let secret = api.get_opt(name).await.unwrap()?;
    secrets::value(&secret, key).map(str::to_string)
}

/// Applies the example Hub and Webhook and waits until the webhook is
/// Ready; returns its name and its signing Secret's name.
async fn example_ready(env: &TestEnv) -> (String, String) {
    let _: Hub = apply_example(env, "hub.yaml").await;
    let webhook: Webhook = apply_example(env, "webhook.yaml").await;
    let name = webhook.name_any();
    let ready = wait_condition(&env.api(), &name, "Ready", "Ready").await;
    (name, ready.status.unwrap().secret_ref.unwrap().name)
}

/// Waits for the webhook's condition `type_` to have `reason`.
async fn wait_condition(api: &Api<Webhook>, name: &str, type_: &str, reason: &str) -> Webhook {
    eventually(WAIT, &format!("webhook {name} {type_} reason {reason}"), || async {
        let w = api.get(name).await.ok()?;
        let found = w
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.reason == reason);
        found.then_some(w)
    })
    .await
}

/// Changes the label (a spec change) and waits until the controller has
/// reconciled that generation: afterwards every effect of a pass is visible.
async fn bump_and_wait_reconciled(api: &Api<Webhook>, name: &str, label: &str) {
    let w = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "label": label } })),
        )
        .await
        .unwrap();
    let generation = w.metadata.generation;
    eventually(WAIT, "the controller to observe the new generation", || async {
        let w = api.get(name).await.ok()?;
        (w.status?.observed_generation == generation).then_some(())
    })
    .await;
}

fn assert_no_secret_in(logs: &str, values: &[&str]) {
    assert!(!logs.is_empty(), "the controller logged nothing");
    for v in values {
        assert!(!logs.contains(v), "a secret value appears in the controller log");
    }
}

#[tokio::test]
async fn examples_get_generated_owned_secrets_collected_with_their_owner() {
    let env = TestEnv::new("examples_get_generated_secrets").await;
    let controller = env.start_controller();
    let hub: Hub = apply_example(&env, "hub.yaml").await;
    let webhook: Webhook = apply_example(&env, "webhook.yaml").await;
    let webhooks: Api<Webhook> = env.api();
    let hubs: Api<Hub> = env.api();
    let secrets_api: Api<Secret> = env.api();

    let ready = wait_condition(&webhooks, &webhook.name_any(), "Ready", "Ready").await;
    let secret_ref = ready.status.unwrap().secret_ref.expect("status.secretRef");
    let secret = secrets_api.get(&secret_ref.name).await.unwrap();
    let value = secrets::value(&secret, &secret_ref.key)
        .expect("a signing secret")
        .to_string();
    assert_eq!(value.len(), 128);
    assert!(value.bytes().all(|b| b.is_ascii_alphanumeric()));
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Webhook", ready.metadata.uid.as_deref().unwrap())
    );
    assert_eq!(secret.labels()["app.kubernetes.io/managed-by"], "hookrelay");

    // The hub may turn Ready before its count includes the new webhook: the
    // webhook's change reconciles it again.
    let hub = eventually(WAIT, "hub Ready, counting the webhook", || async {
        let h = hubs.get(&hub.name_any()).await.ok()?;
        let status = h.status.as_ref()?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && status.webhooks == Some(1)).then_some(h)
    })
    .await;
    let status = hub.status.unwrap();
    assert_eq!(status.webhooks, Some(1));
    let token_ref = status.ingest_token_secret_ref.expect("status.ingestTokenSecretRef");
    let token = secret_value(&secrets_api, &token_ref.name, &token_ref.key)
        .await
        .expect("a token");
    assert_eq!(token.len(), 128);
    assert_ne!(token, value);

    // Events record the generation, never the value.
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    let recorded = eventually(WAIT, "a SecretGenerated event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let found: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SecretGenerated"))
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert!(!format!("{recorded:?}").contains(&value));

    webhooks
        .delete(&webhook.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    eventually(WAIT, "the signing Secret to be garbage-collected", || async {
        secrets_api
            .get_opt(&secret_ref.name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_no_secret_in(&controller.logs(), &[&value, &token]);
    env.cleanup().await;
}

#[tokio::test]
async fn rotation_annotation_rotates_once_per_new_value() {
    let env = TestEnv::new("rotation_rotates_once").await;
    let controller = env.start_controller();
    let (name, secret_name) = example_ready(&env).await;
    let webhooks: Api<Webhook> = env.api();
    let secrets_api: Api<Secret> = env.api();
    let original = secret_value(&secrets_api, &secret_name, "secret").await.unwrap();

    let annotate = |value: &'static str| {
        let webhooks = webhooks.clone();
        let name = name.clone();
        async move {
            let patch = json!({ "metadata": { "annotations": { "hookrelay.dev/rotate-secret": value } } });
            webhooks
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    let rotated_for = |value: &'static str| {
        let webhooks = webhooks.clone();
        let name = name.clone();
        async move {
            eventually(WAIT, &format!("status.rotatedFor = {value}"), || async {
                let w = webhooks.get(&name).await.ok()?;
                (w.status?.rotated_for.as_deref() == Some(value)).then_some(())
            })
            .await
        }
    };

    annotate("2026-11-22-a").await;
    rotated_for("2026-11-22-a").await;
    let first = secrets_api.get(&secret_name).await.unwrap();
    let after_first = secrets::value(&first, "secret").unwrap().to_string();
    assert_ne!(after_first, original);
    assert_eq!(
        secrets::value(&first, "previous"),
        Some(original.as_str()),
        "previous value kept for the overlap"
    );
    let expires = secrets::previous_expires_at(&first).expect("expiry annotation");
    let overlap = expires.duration_since(jiff::Timestamp::now());
    assert!(
        overlap > jiff::SignedDuration::from_hours(23),
        "hub overlap is 24h, got {overlap:?}"
    );

    // More reconciles with the same annotation value change nothing.
    bump_and_wait_reconciled(&webhooks, &name, "Example integration (edited)").await;
    assert_eq!(
        secret_value(&secrets_api, &secret_name, "secret").await.unwrap(),
        after_first
    );

    // A new value rotates once more.
    annotate("2026-11-22-b").await;
    rotated_for("2026-11-22-b").await;
    let second = secrets_api.get(&secret_name).await.unwrap();
    let after_second = secrets::value(&second, "secret").unwrap().to_string();
    assert_ne!(after_second, after_first);
    assert_eq!(secrets::value(&second, "previous"), Some(after_first.as_str()));
    bump_and_wait_reconciled(&webhooks, &name, "Example integration (again)").await;
    assert_eq!(
        secret_value(&secrets_api, &secret_name, "secret").await.unwrap(),
        after_second
    );

    assert_no_secret_in(&controller.logs(), &[&original, &after_first, &after_second]);
    env.cleanup().await;
}

#[tokio::test]
async fn previous_value_expires_after_the_hub_overlap() {
    let env = TestEnv::new("previous_value_expires").await;
    let _controller = env.start_controller();
    let mut hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.signing.get_or_insert_default().rotation_overlap = Some("2s".parse().unwrap());
    env.api::<Hub>().create(&PostParams::default(), &hub).await.unwrap();
    let webhook: Webhook = apply_example(&env, "webhook.yaml").await;
    let name = webhook.name_any();
    let webhooks: Api<Webhook> = env.api();
    let secrets_api: Api<Secret> = env.api();
    let ready = wait_condition(&webhooks, &name, "Ready", "Ready").await;
    let secret_name = ready.status.unwrap().secret_ref.unwrap().name;

    let patch = json!({ "metadata": { "annotations": { "hookrelay.dev/rotate-secret": "now" } } });
    webhooks
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually(WAIT, "a previous value during the overlap", || async {
        secret_value(&secrets_api, &secret_name, "previous").await.map(drop)
    })
    .await;
    eventually(WAIT, "the previous value to be dropped after 2s", || async {
        let s = secrets_api.get(&secret_name).await.ok()?;
        (secrets::value(&s, "previous").is_none() && secrets::previous_expires_at(&s).is_none()).then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn user_replaced_value_is_kept() {
    let env = TestEnv::new("user_replaced_value_is_kept").await;
    let _controller = env.start_controller();
    let (name, secret_name) = example_ready(&env).await;
    let webhooks: Api<Webhook> = env.api();
    let secrets_api: Api<Secret> = env.api();

    // "Replace the generated secret with your own value".
    let mine = "my-own-secret-value";
    let patch = json!({ "stringData": { "secret": mine } });
    secrets_api
        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    bump_and_wait_reconciled(&webhooks, &name, "Example integration (replaced)").await;
    assert_eq!(
        secret_value(&secrets_api, &secret_name, "secret").await.as_deref(),
        Some(mine)
    );

    // Emptying it is not a value: a new one is generated.
    let patch = json!({ "data": { "secret": "" } });
    secrets_api
        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let refilled = eventually(WAIT, "an emptied secret to be refilled", || async {
        secret_value(&secrets_api, &secret_name, "secret").await
    })
    .await;
    assert_eq!(refilled.len(), 128);
    env.cleanup().await;
}

#[tokio::test]
async fn secret_ref_is_used_as_is_with_its_owners_consent_and_a_missing_one_is_reported() {
    let env = TestEnv::new("secret_ref_is_used_as_is").await;
    let controller = env.start_controller();
    let _: Hub = apply_example(&env, "hub.yaml").await;
    let webhooks: Api<Webhook> = env.api();
    let secrets_api: Api<Secret> = env.api();

    let mut webhook: Webhook = serde_yaml::from_str(include_str!("../examples/webhook.yaml")).unwrap();
    webhook.spec.secret_ref = Some(hookrelay::resources::SecretKeyRef {
        name: "mine".into(),
        key: "hmac".into(),
    });
    webhooks.create(&PostParams::default(), &webhook).await.unwrap();
    let name = webhook.name_any();

    let ready_message = |w: Webhook| {
        w.status
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .message
            .clone()
    };
    let missing = ready_message(wait_condition(&webhooks, &name, "Ready", "SecretNotUsable").await);
    assert!(
        missing.contains("mine") && missing.contains(CREDENTIAL_CONSENT_LABEL),
        "{missing}"
    );

    // Present but without its owner's consent: not used, and the same
    // message as missing (which Secrets exist is not told).
    let mine = Secret {
        metadata: ObjectMeta {
            name: Some("mine".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "hmac".to_string(),
            ByteString(b"user-chosen-secret".to_vec()),
        )])),
        ..Default::default()
    };
    secrets_api.create(&PostParams::default(), &mine).await.unwrap();
    bump_and_wait_reconciled(&webhooks, &name, "Example integration (unlabelled secret)").await;
    let unlabelled = ready_message(wait_condition(&webhooks, &name, "Ready", "SecretNotUsable").await);
    assert_eq!(unlabelled, missing, "an unlabelled Secret reads as a missing one");

    let consent = json!({ "metadata": { "labels": { CREDENTIAL_CONSENT_LABEL: "true" } } });
    let created = secrets_api
        .patch("mine", &PatchParams::default(), &Patch::Merge(consent))
        .await
        .unwrap();
    let ready = wait_condition(&webhooks, &name, "Ready", "Ready").await;
    let secret_ref = ready.status.unwrap().secret_ref.unwrap();
    assert_eq!((secret_ref.name.as_str(), secret_ref.key.as_str()), ("mine", "hmac"));

    bump_and_wait_reconciled(&webhooks, &name, "Example integration (own secret)").await;
    let after = secrets_api.get("mine").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, created.metadata.resource_version,
        "the user's Secret was modified"
    );
    assert!(
        secrets_api
            .get_opt(&format!("{name}-signing-secret"))
            .await
            .unwrap()
            .is_none(),
        "no Secret is generated"
    );
    assert_no_secret_in(&controller.logs(), &["user-chosen-secret"]);
    env.cleanup().await;
}

#[tokio::test]
async fn unknown_hub_and_unknown_events_make_the_webhook_not_ready() {
    let env = TestEnv::new("unknown_hub_and_events").await;
    let _controller = env.start_controller();
    let webhooks: Api<Webhook> = env.api();
    let webhook: Webhook = apply_example(&env, "webhook.yaml").await;
    let name = webhook.name_any();
    wait_condition(&webhooks, &name, "Ready", "HubNotFound").await;

    let _: Hub = apply_example(&env, "hub.yaml").await;
    wait_condition(&webhooks, &name, "Ready", "Ready").await;

    let patch = json!({ "spec": { "events": ["dynamic-content.content-item.created", "shop.order.paid"] } });
    webhooks
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let w = wait_condition(&webhooks, &name, "Ready", "UnknownEvent").await;
    let ready = w
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.message.contains("shop.order.paid"), "{}", ready.message);

    // Declaring it on the hub makes it known.
    let hubs: Api<Hub> = env.api();
    let patch = json!({ "spec": { "customEvents": ["shop.order.paid"] } });
    hubs.patch("main", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_condition(&webhooks, &name, "Ready", "Ready").await;

    let patch = json!({ "spec": { "active": false } });
    webhooks
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_condition(&webhooks, &name, "Active", "Deactivated").await;
    env.cleanup().await;
}
