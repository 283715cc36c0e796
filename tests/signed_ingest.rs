//! Signed ingest: a hub that accepts the CMS's own webhook signature and
//! Standard Webhooks signatures besides its bearer token. Signatures are
//! computed here with hmac/sha2/base64 directly, not with the code under test.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use hookrelay::resources::SecretKeyRef;
use hookrelay::resources::hub::{IngestSettings, Scheme, VerifyScheme};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use serde_json::json;
use sha2::Sha256;
use support::receiver::Receiver;
use support::stack::{Options, Stack, deliveries_of, spec};

const EVENT: &str = "dynamic-content.snapshot.published";
const CMS_SECRET: &str = "cms-shared-secret-0123456789";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn hmac_b64(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    STANDARD.encode(mac.finalize().into_bytes())
}

fn secret_ref(name: &str) -> Option<SecretKeyRef> {
    Some(SecretKeyRef {
        name: name.into(),
        key: "secret".into(),
    })
}

/// A verification scheme with its Secret (key `secret`), if it has one.
fn scheme(scheme: Scheme, secret: Option<&str>) -> VerifyScheme {
    VerifyScheme {
        scheme,
        secret_ref: secret.and_then(secret_ref),
        tolerance: None,
    }
}

#[tokio::test]
async fn a_hub_accepts_the_cms_signature_and_standard_webhooks_and_refuses_forgeries() {
    let mut hub: hookrelay::resources::Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.ingest = Some(IngestSettings {
        token_secret_ref: None,
        rate_limit: None,
        verify: vec![
            scheme(Scheme::Bearer, None),
            scheme(Scheme::Amplience, Some("cms-webhook")),
            scheme(Scheme::StandardWebhooks, Some("standard-webhooks")),
        ],
    });
    let env = support::TestEnv::new("signed_ingest").await;
    for (name, value) in [("cms-webhook", CMS_SECRET), ("standard-webhooks", SW_SECRET)] {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            string_data: Some([("secret".to_string(), value.to_string())].into()),
            ..Default::default()
        };
        env.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let options = Options {
        hub,
        env: Some(env),
        ..Options::single_controller()
    };
    let stack = Stack::start_with("signed_ingest", options).await;
    let receiver = Receiver::start().await;
    stack.webhook("shop", spec(receiver.url("/shop"), &[EVENT])).await;

    let body = json!({ "name": EVENT, "payload": { "id": "s-1" } })
        .to_string()
        .into_bytes();
    let post = |body: Vec<u8>, headers: Vec<(&'static str, String)>| {
        let stack = &stack;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            stack.post_full("main", None, "application/json", body, &headers).await
        }
    };

    // The CMS's signature: HMAC-SHA256 of the exact body, base64.
    let cms = hmac_b64(CMS_SECRET.as_bytes(), &body);
    let (status, _, answer) = post(body.clone(), vec![("X-Amplience-Webhook-Signature", cms.clone())]).await;
    assert_eq!(status, 202, "{answer}");
    // Replayed, the id-less signed body is the same event (its id is the
    // body's SHA-256), not a new one.
    let (status, _, replayed) = post(body.clone(), vec![("X-Amplience-Webhook-Signature", cms.clone())]).await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["id"], answer["id"], "{replayed}");
    assert!(answer["id"].as_str().unwrap().starts_with("sha256-"), "{answer}");
    assert_eq!(
        deliveries_of(&replayed),
        deliveries_of(&answer),
        "a replay is deduplicated"
    );
    let (status, _, answer) = post(
        body.clone(),
        vec![("X-Amplience-Webhook-Signature", hmac_b64(b"wrong", &body))],
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    let mut changed = body.clone();
    *changed.last_mut().unwrap() = b' ';
    changed.push(b'}');
    let (status, _, answer) = post(changed, vec![("X-Amplience-Webhook-Signature", cms.clone())]).await;
    assert_eq!(status, 401, "a body changed by one byte: {answer}");
    // Which hubs exist, and what they verify, is not told: every refusal is
    // the answer an unknown hub gets (the reason is in ingest's debug log).
    let (_, _, unknown_hub) = stack
        .post_full(
            "nohub",
            None,
            "application/json",
            body.clone(),
            &[("X-Amplience-Webhook-Signature", cms.as_str())],
        )
        .await;
    assert_eq!(answer, unknown_hub, "a wrong signature answers as an unknown hub");

    // Standard Webhooks: key = base64-decode of the secret after "whsec_".
    let key = STANDARD.decode(SW_SECRET.trim_start_matches("whsec_")).unwrap();
    let signed = |id: &str, timestamp: i64| {
        let message = [format!("{id}.{timestamp}.").as_bytes(), &body].concat();
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", format!("v1,{}", hmac_b64(&key, &message))),
        ]
    };
    let now = jiff::Timestamp::now().as_second();
    let (status, _, first) = post(body.clone(), signed("msg_2Lh9", now)).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["id"], "msg_2Lh9", "the message id is the event id");
    let (status, _, again) = post(body.clone(), signed("msg_2Lh9", now)).await;
    assert_eq!(status, 202);
    assert_eq!(
        deliveries_of(&again),
        deliveries_of(&first),
        "a sender's retry is idempotent"
    );
    // The signed message id wins over an id in the body.
    let with_id = json!({ "id": "body-id", "name": EVENT, "payload": { "id": "s-2" } })
        .to_string()
        .into_bytes();
    let message = [format!("msg_bound.{now}.").as_bytes(), &with_id].concat();
    let bound = vec![
        ("webhook-id", "msg_bound".to_string()),
        ("webhook-timestamp", now.to_string()),
        ("webhook-signature", format!("v1,{}", hmac_b64(&key, &message))),
    ];
    let (status, _, answer) = post(with_id, bound).await;
    assert_eq!((status, answer["id"].as_str()), (202, Some("msg_bound")), "{answer}");
    // A binary-mode CloudEvent takes its type and id from unsigned headers:
    // refused, even with a valid signature over its data.
    let mut binary = signed("msg_binary", now);
    binary.extend([
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", "any-new-id".to_string()),
        ("ce-source", "/cms".to_string()),
        ("ce-type", EVENT.to_string()),
    ]);
    let (status, _, answer) = post(body.clone(), binary).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("UnsignedAttributes")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("structured CloudEvent"),
        "{answer}"
    );
    let (status, _, stale) = post(body.clone(), signed("msg_old", now - 3600)).await;
    assert_eq!(
        (status, &stale),
        (401, &unknown_hub),
        "a stale timestamp answers as an unknown hub"
    );
    let mut forged = signed("msg_forged", now);
    forged[2].1 = format!("v1,{}", hmac_b64(b"not the key", b"x"));
    let (status, _, _) = post(body.clone(), forged).await;
    assert_eq!(status, 401);

    // The docs' shell sender (bash, openssl, curl) signs as the spec says.
    let body_file = std::env::temp_dir().join(format!("signed-event-{}.json", stack.env.ns));
    std::fs::write(&body_file, &body).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/send-signed-event.sh");
    let out = std::process::Command::new("bash")
        .args([
            script,
            &stack.ingest.events_url(&stack.env.ns, "main"),
            SW_SECRET,
            "msg_from_shell",
        ])
        .arg(&body_file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&body_file);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "send-signed-event.sh: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{answer}");
    assert_eq!(answer["id"], "msg_from_shell", "{answer}");
    assert_eq!(deliveries_of(&answer).len(), 1, "{answer}");

    // The bearer token still works, and nothing unsigned gets in.
    let (status, answer) = stack.post(json!({ "name": EVENT, "payload": {} })).await;
    assert_eq!(status, 202, "{answer}");
    let (status, _, _) = post(body.clone(), vec![]).await;
    assert_eq!(status, 401);
    receiver.wait_for("/shop", 5, support::stack::WAIT).await;

    // A hub whose verification Secret does not exist, then whose token
    // Secret does not either: the same answer again (it was 503
    // HubNotReady naming the Secret).
    let mut broken: hookrelay::resources::Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    broken.metadata.name = Some("broken".into());
    broken.spec.ingest = Some(IngestSettings {
        token_secret_ref: secret_ref("broken-token"),
        rate_limit: None,
        verify: vec![
            scheme(Scheme::Bearer, None),
            scheme(Scheme::Amplience, Some("no-such-secret")),
        ],
    });
    let secrets: kube::Api<Secret> = stack.env.api();
    let token = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("broken-token".into()),
            ..Default::default()
        },
        string_data: Some([("secret".to_string(), "broken-hub-token".to_string())].into()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &token).await.unwrap();
    stack
        .env
        .api::<hookrelay::resources::Hub>()
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();
    let (cms, body) = (cms.as_str(), &body);
    let as_broken = |token: Option<&'static str>| {
        let (stack, body) = (&stack, body.clone());
        async move {
            let signature = [("X-Amplience-Webhook-Signature", cms)];
            let headers: &[(&str, &str)] = if token.is_some() { &[] } else { &signature };
            let (status, _, answer) = stack
                .post_full("broken", token, "application/json", body, headers)
                .await;
            (status, answer)
        }
    };
    support::eventually(support::stack::WAIT, "ingest to know the broken hub", || async {
        (as_broken(Some("broken-hub-token")).await.0 == 202).then_some(())
    })
    .await;
    assert_eq!(
        as_broken(None).await,
        (401, unknown_hub.clone()),
        "a missing verification Secret"
    );
    secrets.delete("broken-token", &Default::default()).await.unwrap();
    let missing_token = support::eventually(support::stack::WAIT, "the token Secret gone", || async {
        let (status, answer) = as_broken(Some("broken-hub-token")).await;
        (status != 202).then_some((status, answer))
    })
    .await;
    assert_eq!(missing_token, (401, unknown_hub), "a missing token Secret");
    stack.cleanup().await;
}
