//! Ingest → Delivery → signed HTTP request, against the real API server with
//! `hookrelay controller` and `hookrelay ingest` running as processes and a
//! receiver on loopback.

mod support;

use base64::Engine as _;
use hookrelay::delivery::signing;
use hookrelay::resources::delivery::Phase;
use hookrelay::resources::webhook::{HeaderValueSource, HttpMethod, WebhookFilter, WebhookHeader};
use hookrelay::resources::{SecretKeyRef, Webhook};
use hookrelay::secrets;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::eventually;
use support::receiver::{Receiver, Reply};
use support::stack::{Stack, Store, WAIT, deliveries_of, spec};

async fn an_event_is_delivered_signed_and_recorded(store: Store) {
    let stack = Stack::start_in("an_event_is_delivered_signed", store).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/hook", Reply::status(200).header("x-handler", "ok").body("thanks"));
    let secret = stack
        .webhook(
            "shop",
            spec(receiver.url("/hook"), &["dynamic-content.content-item.updated"]),
        )
        .await;

    let payload = json!({ "id": "c-1", "label": "Grüße aus Köln 🌍", "version": 7 });
    let (status, answer) = stack
        .post(json!({ "name": "dynamic-content.content-item.updated", "payload": payload }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let names = deliveries_of(&answer);
    assert_eq!(names.len(), 1);

    let got = receiver.wait_for("/hook", 1, WAIT).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.json(),
        json!({ "name": "dynamic-content.content-item.updated", "payload": payload })
    );
    // The CMS signature, recomputed from the Secret over the exact bytes.
    let expected = signing::body_signature(&secret, &request.body);
    assert_eq!(request.header("x-amplience-webhook-signature"), Some(expected.as_str()));
    // Standard Webhooks, verified as a receiver library would.
    assert_eq!(request.header("webhook-id"), Some(names[0].as_str()));
    let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((jiff::Timestamp::now().as_second() - timestamp).abs() < 120);
    let key = base64::engine::general_purpose::STANDARD
        .decode(&secret)
        .expect("secrets are base64-decodable");
    let signed = format!("{}.{}.", names[0], timestamp).into_bytes();
    let mut message = signed.clone();
    message.extend_from_slice(&request.body);
    let mac = {
        use hmac::Mac;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        m.update(&message);
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    };
    assert_eq!(request.header("webhook-signature"), Some(format!("v1,{mac}").as_str()));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(request.header("user-agent").unwrap().starts_with("hookrelay/"));

    // The Delivery records the request and the response ("View details").
    let delivery = stack.delivery_done(&names[0]).await;
    let status = delivery.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.attempt_count, 1);
    assert_eq!(status.last_status_code, Some(200));
    let attempt = &status.attempts[0];
    assert_eq!(attempt.request.url, receiver.url("/hook"));
    assert!(
        attempt
            .request
            .headers
            .iter()
            .any(|h| h.name == "webhook-id" && h.value == names[0])
    );
    let response = attempt.response.as_ref().unwrap();
    assert_eq!(response.body, "thanks");
    assert!(
        response
            .headers
            .iter()
            .any(|h| h.name == "x-handler" && h.value == "ok")
    );
    assert_eq!(delivery.spec.payload_value().unwrap(), payload);

    // The Webhook's history shows it (written coalesced, shortly after).
    let webhooks: Api<Webhook> = stack.env.api();
    let history = eventually(WAIT, "the webhook's recent deliveries", || async {
        let s = webhooks.get("shop").await.ok()?.status?;
        (s.succeeded == Some(1)).then_some(s)
    })
    .await;
    assert_eq!(history.last_delivery.as_ref().unwrap().id, names[0]);
    assert_eq!(history.recent_deliveries[0].status_code, Some(200));
    assert_eq!(history.recent_deliveries[0].outcome, Phase::Succeeded);

    let logs = stack.logs();
    assert!(!logs.contains(&secret), "the signing secret appears in the logs");
    assert!(!logs.contains(&stack.token), "the ingest token appears in the logs");
    stack.cleanup().await;
}

async fn ingest_rejects_bad_requests_clearly_and_is_idempotent(store: Store) {
    let stack = Stack::start_in("ingest_rejects_bad_requests", store).await;
    let receiver = Receiver::start().await;
    stack
        .webhook("all", spec(receiver.url("/all"), &["dynamic-content.*"]))
        .await;
    let event = |name: &str| json!({ "name": name, "payload": {} }).to_string().into_bytes();
    let ok = "dynamic-content.edition.scheduled";

    let (s, body) = stack
        .post_raw("main", Some("wrong"), "application/json", event(ok), &[])
        .await;
    assert_eq!((s, body["error"].as_str()), (401, Some("Unauthorized")));
    let (s, _) = stack.post_raw("main", None, "application/json", event(ok), &[]).await;
    assert_eq!(s, 401);
    let (s, unknown_hub) = stack
        .post_raw("nohub", Some(&stack.token), "application/json", event(ok), &[])
        .await;
    let (_, wrong_token) = stack
        .post_raw("main", Some("wrong"), "application/json", event(ok), &[])
        .await;
    assert_eq!(s, 401);
    assert_eq!(unknown_hub, wrong_token, "an unknown hub looks like a wrong token");
    let metrics = stack
        .ingest
        .http
        .get(format!("{}/metrics", stack.ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 404, "/metrics is not on the events port");
    let (s, body) = stack
        .post_raw(
            "main",
            Some(&stack.token),
            "application/json",
            event("dynamic-content.edition.exploded"),
            &[],
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("UnknownEvent")));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("dynamic-content.edition.exploded"),
        "{body}"
    );
    let big = json!({ "name": ok, "payload": { "blob": "x".repeat(2 * 1024 * 1024) } })
        .to_string()
        .into_bytes();
    // Declared length and chunked (no length): either way the sender reads
    // the 413, though ingest refuses it before the body is all sent.
    for round in 0..20 {
        let (s, body) = stack
            .post_raw("main", Some(&stack.token), "application/json", big.clone(), &[])
            .await;
        assert_eq!((s, body["error"].as_str()), (413, Some("TooLarge")), "round {round}");
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let response = stack
            .ingest
            .http
            .post(stack.ingest.events_url(&stack.env.ns, "main"))
            .bearer_auth(&stack.token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .expect("a chunked oversized event gets an answer");
        assert_eq!(response.status().as_u16(), 413, "chunked, round {round}");
        let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(answer["error"], "TooLarge");
    }
    let (s, body) = stack
        .post_raw(
            "main",
            Some(&stack.token),
            "application/json",
            b"{\"name\": ".to_vec(),
            &[],
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("MalformedJson")));
    let (s, body) = stack
        .post_raw("main", Some(&stack.token), "text/plain", event(ok), &[])
        .await;
    assert_eq!((s, body["error"].as_str()), (415, Some("UnsupportedMediaType")));
    let (s, body) = stack
        .post_raw("main", Some(&stack.token), "application/json", b"{}".to_vec(), &[])
        .await;
    assert_eq!(s, 400);
    assert!(body["message"].as_str().unwrap().contains("name is required"), "{body}");

    // CloudEvents, structured and binary.
    let structured = json!({ "specversion": "1.0", "id": "ce-1", "source": "/cms", "type": ok, "data": { "a": 1 } });
    let (s, body) = stack
        .post_raw(
            "main",
            Some(&stack.token),
            "application/cloudevents+json",
            structured.to_string().into_bytes(),
            &[],
        )
        .await;
    assert_eq!((s, body["id"].as_str()), (202, Some("ce-1")), "{body}");
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "ce-2"),
        ("ce-source", "/cms"),
        ("ce-type", ok),
    ];
    let (s, body) = stack
        .post_raw(
            "main",
            Some(&stack.token),
            "application/json",
            b"{\"b\":2}".to_vec(),
            &binary,
        )
        .await;
    assert_eq!((s, body["id"].as_str()), (202, Some("ce-2")), "{body}");

    // The same event id twice: the same delivery names, one Delivery.
    let with_id = json!({ "id": "evt-42", "name": ok, "payload": {} });
    let (s1, first) = stack.post(with_id.clone()).await;
    let (s2, second) = stack.post(with_id).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(deliveries_of(&first), deliveries_of(&second));
    let list = stack.deliveries().await.unwrap();
    let for_event: Vec<_> = list.iter().filter(|d| d.spec.event.id == "evt-42").collect();
    assert_eq!(for_event.len(), 1);
    // Three events accepted, three requests.
    receiver.wait_for("/all", 3, WAIT).await;
    stack.cleanup().await;
}

async fn selection_templates_headers_and_methods(store: Store) {
    let stack = Stack::start_in("selection_templates_headers", store).await;
    let receiver = Receiver::start().await;
    let secrets_api: Api<Secret> = stack.env.api();
    let api_key = "header-secret-value-123";
    let key_secret = Secret {
        metadata: ObjectMeta {
            name: Some("shop-api".into()),
            // Its owner's consent to be sent in a webhook's headers.
            labels: Some(BTreeMap::from([(
                secrets::HEADER_CONSENT_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "key".to_string(),
            ByteString(api_key.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secrets_api.create(&PostParams::default(), &key_secret).await.unwrap();

    let updated = "dynamic-content.content-item.updated";
    let mut inactive = spec(receiver.url("/inactive"), &[updated]);
    inactive.active = false;
    stack
        .env
        .api::<Webhook>()
        .create(&PostParams::default(), &Webhook::new("inactive", inactive))
        .await
        .unwrap();
    stack
        .webhook(
            "wildcard",
            spec(receiver.url("/wildcard"), &["dynamic-content.content-item.*"]),
        )
        .await;
    stack
        .webhook(
            "other-event",
            spec(receiver.url("/other"), &["dynamic-content.edition.published"]),
        )
        .await;
    let mut filtered = spec(receiver.url("/german"), &[updated]);
    filtered.filters = vec![WebhookFilter {
        path: "$.payload.locale".into(),
        equal: None,
        in_: Some(vec!["de-DE".into()]),
    }];
    stack.webhook("german", filtered).await;
    let mut templated = spec(receiver.url("/templated"), &[updated]);
    templated.method = HttpMethod::Put;
    templated.custom_payload = Some(r#"{"item": {{json payload.id}}, "event": "{{name}}"}"#.into());
    templated.headers = vec![
        WebhookHeader {
            name: "X-Api-Key".into(),
            value: None,
            value_from: Some(HeaderValueSource {
                secret_key_ref: SecretKeyRef {
                    name: "shop-api".into(),
                    key: "key".into(),
                },
            }),
        },
        WebhookHeader {
            name: "X-Team".into(),
            value: Some("content".into()),
            value_from: None,
        },
    ];
    stack.webhook("templated", templated).await;
    for (name, method) in [("patch", HttpMethod::Patch), ("delete", HttpMethod::Delete)] {
        let mut s = spec(receiver.url(&format!("/{name}")), &[updated]);
        s.method = method;
        stack.webhook(name, s).await;
    }

    let (status, answer) = stack
        .post(json!({ "name": updated, "payload": { "id": "c-9", "locale": "en-GB" } }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let mut names = deliveries_of(&answer);
    names.sort();
    assert_eq!(names.len(), 4, "wildcard, templated, patch, delete: {names:?}");
    for name in &names {
        assert_eq!(stack.delivery_done(name).await.status.unwrap().phase, Phase::Succeeded);
    }
    assert!(
        receiver.received("/inactive").is_empty(),
        "inactive webhooks are not triggered"
    );
    assert!(receiver.received("/other").is_empty());
    assert!(receiver.received("/german").is_empty(), "the filter excludes en-GB");

    let templated = &receiver.received("/templated")[0];
    assert_eq!(templated.method, "PUT");
    assert_eq!(templated.json(), json!({ "item": "c-9", "event": updated }));
    assert_eq!(templated.header("x-api-key"), Some(api_key));
    assert_eq!(templated.header("x-team"), Some("content"));
    assert_eq!(receiver.received("/patch")[0].method, "PATCH");
    assert_eq!(receiver.received("/delete")[0].method, "DELETE");
    assert_eq!(receiver.received("/wildcard").len(), 1);

    // A German event reaches the filtered webhook.
    let (status, answer) = stack
        .post(json!({ "name": updated, "payload": { "id": "c-10", "locale": "de-DE" } }))
        .await;
    assert_eq!(status, 202);
    assert_eq!(deliveries_of(&answer).len(), 5);
    receiver.wait_for("/german", 1, WAIT).await;

    // The secret header is redacted in the recorded request.
    let templated_delivery = names.iter().find(|n| n.starts_with("templated-")).unwrap();
    let d = stack.delivery_done(templated_delivery).await;
    // The rendered body is recorded byte for byte as the handler got it.
    assert_eq!(
        d.status.as_ref().unwrap().request_body.as_deref().map(str::as_bytes),
        Some(templated.body.as_ref()),
        "the body as sent is on record"
    );
    let recorded = &d.status.unwrap().attempts[0].request.headers;
    assert!(
        recorded
            .iter()
            .any(|h| h.name == "X-Api-Key" && h.value == "<redacted>"),
        "{recorded:?}"
    );
    assert!(recorded.iter().any(|h| h.name == "X-Team" && h.value == "content"));
    let all_deliveries = stack.deliveries().await.unwrap();
    assert!(!serde_json::to_string(&all_deliveries).unwrap().contains(api_key));
    assert!(
        !stack.logs().contains(api_key),
        "a secret header value appears in the logs"
    );
    stack.cleanup().await;
}

async fn a_slow_webhook_does_not_delay_another(store: Store) {
    let stack = Stack::start_in("a_slow_webhook_does_not_delay", store).await;
    let receiver = Receiver::start().await;
    receiver.set_default("/slow", Reply::status(200).delayed(Duration::from_secs(5)));
    let event = "dynamic-content.edition.published";
    stack.webhook("slow", spec(receiver.url("/slow"), &[event])).await;
    stack.webhook("fast", spec(receiver.url("/fast"), &[event])).await;

    // More events than the slow webhook's concurrency (4): its queue backs up.
    let started = Instant::now();
    for i in 0..10 {
        let (status, _) = stack
            .post(json!({ "id": format!("e{i}"), "name": event, "payload": { "n": i } }))
            .await;
        assert_eq!(status, 202);
    }
    let fast = receiver.wait_for("/fast", 10, WAIT).await;
    let last_fast = fast.iter().map(|r| r.at).max().unwrap();
    // All ten reached the fast webhook before the first slow answer could
    // have come back, so none waited behind the slow one.
    assert!(
        last_fast.duration_since(started) < Duration::from_secs(5),
        "fast deliveries took {:?}",
        last_fast.duration_since(started)
    );
    receiver.wait_for("/slow", 10, Duration::from_secs(90)).await;
    // Counted by the receiver itself, so a slow machine cannot blur it.
    let most = receiver.most_in_flight("/slow");
    assert_eq!(most, 4, "the slow webhook gets its concurrency (4) at once, never more");
    stack.cleanup().await;
}

async fn header_secrets_are_sent_only_with_their_owners_consent(store: Store) {
    let stack = Stack::start_in("header_secrets_need_consent", store).await;
    let receiver = Receiver::start().await;
    let secrets_api: Api<Secret> = stack.env.api();
    let unlabelled = Secret {
        metadata: ObjectMeta {
            name: Some("team-database".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(b"hunter2".to_vec()),
        )])),
        ..Default::default()
    };
    secrets_api.create(&PostParams::default(), &unlabelled).await.unwrap();
    let event = "dynamic-content.snapshot.published";
    let webhooks: Api<Webhook> = stack.env.api();
    for (name, secret) in [("nosy", "team-database"), ("guess", "no-such-secret")] {
        let mut s = spec(receiver.url(&format!("/{name}")), &[event]);
        s.headers = vec![WebhookHeader {
            name: "X-Stolen".into(),
            value: None,
            value_from: Some(HeaderValueSource {
                secret_key_ref: SecretKeyRef {
                    name: secret.into(),
                    key: "password".into(),
                },
            }),
        }];
        webhooks
            .create(&PostParams::default(), &Webhook::new(name, s))
            .await
            .unwrap();
    }
    let not_ready = |name: &'static str| {
        let webhooks = webhooks.clone();
        async move {
            eventually(WAIT, &format!("{name} not Ready"), || async {
                let w = webhooks.get(name).await.ok()?;
                let c = w.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
                (c.status == "False").then_some((c.reason, c.message))
            })
            .await
        }
    };
    let (nosy_reason, nosy_message) = not_ready("nosy").await;
    let (guess_reason, guess_message) = not_ready("guess").await;
    assert_eq!(
        (nosy_reason.as_str(), guess_reason.as_str()),
        ("HeaderSecretNotUsable", "HeaderSecretNotUsable")
    );
    assert_eq!(
        nosy_message.replace("team-database", "S"),
        guess_message.replace("no-such-secret", "S"),
        "an existing Secret and a missing one look the same"
    );
    assert!(nosy_message.contains(secrets::HEADER_CONSENT_LABEL), "{nosy_message}");

    let (status, answer) = stack.post(json!({ "name": event, "payload": {} })).await;
    assert_eq!(status, 202, "{answer}");
    let nosy = deliveries_of(&answer)
        .into_iter()
        .find(|n| n.starts_with("nosy-"))
        .unwrap();
    let attempt = eventually(WAIT, "nosy's first attempt", || async {
        stack.delivery(&nosy).await?.status?.attempts.into_iter().next()
    })
    .await;
    assert!(
        attempt
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("not sent: header X-Stolen"),
        "{attempt:?}"
    );
    assert!(receiver.received("/nosy").is_empty() && receiver.received("/guess").is_empty());
    assert!(!stack.logs().contains("hunter2"));
    stack.cleanup().await;
}

/// Whether `signature` (`v1a,<base64>`) is an ed25519 signature of
/// `{id}.{timestamp}.{body}` by `public_key` (`whpk_<base64>`), checked with
/// ed25519-dalek (hookrelay signs with ring).
fn v1a_verifies(public_key: &str, signature: &str, request: &support::receiver::Received) -> bool {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let b64 = &base64::engine::general_purpose::STANDARD;
    let (Some(key), Some(signature)) = (public_key.strip_prefix("whpk_"), signature.strip_prefix("v1a,")) else {
        return false;
    };
    let key: [u8; 32] = b64.decode(key).unwrap().try_into().unwrap();
    let Ok(signature) = <[u8; 64]>::try_from(b64.decode(signature).unwrap()) else {
        return false;
    };
    let message = [
        format!(
            "{}.{}.",
            request.header("webhook-id").unwrap(),
            request.header("webhook-timestamp").unwrap()
        )
        .as_bytes(),
        &request.body,
    ]
    .concat();
    VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify(&message, &Signature::from_bytes(&signature))
        .is_ok()
}

async fn asymmetric_signatures_verify_with_the_published_public_keys(store: Store) {
    use hookrelay::resources::hub::SigningScheme;
    use hookrelay::resources::webhook::WebhookSigning;
    let stack = Stack::start_in("asymmetric_signatures", store).await;
    let receiver = Receiver::start().await;
    let event = "dynamic-content.content-item.updated";
    let mut keyed = spec(receiver.url("/keyed"), &[event]);
    keyed.signing = Some(WebhookSigning {
        scheme: Some(SigningScheme::Both),
    });
    let secret = stack.webhook("keyed", keyed).await;
    let webhooks: Api<Webhook> = stack.env.api();
    let status = eventually(WAIT, "the public key in the status", || async {
        webhooks
            .get("keyed")
            .await
            .ok()?
            .status?
            .signing
            .filter(|s| s.public_key.is_some())
    })
    .await;
    assert_eq!(status.scheme, SigningScheme::Both);
    let first_key = status.public_key.unwrap();
    // Each attempt is a new event; the engine's Secret and Webhook caches
    // catch up with a change a moment after the status shows it.
    let mut n = 0;
    let mut send_until = async |what: &str, check: &dyn Fn(&support::receiver::Received, Vec<&str>) -> bool| {
        eventually(WAIT, what, || {
            n += 1;
            let (stack, receiver) = (&stack, &receiver);
            async move {
                let before = receiver.received("/keyed").len();
                let (status, _) = stack
                    .post(json!({ "id": format!("evt-{n}"), "name": event, "payload": { "n": n } }))
                    .await;
                assert_eq!(status, 202);
                let got = receiver.wait_for("/keyed", before + 1, WAIT).await;
                let request = got.last().unwrap();
                let signatures: Vec<&str> = request.header("webhook-signature").unwrap().split(' ').collect();
                check(request, signatures).then_some(())
            }
        })
        .await
    };
    // Both: the v1 HMAC with the secret, and the v1a the public key verifies.
    send_until("v1 and v1a signatures", &|request, signatures| {
        let v1 = signing::standard_signature(
            &secret,
            request.header("webhook-id").unwrap(),
            request.header("webhook-timestamp").unwrap().parse().unwrap(),
            &request.body,
        );
        signatures.len() == 2 && signatures[0] == v1 && v1a_verifies(&first_key, signatures[1], request)
    })
    .await;
    // A rotation: a new key, and both sign during the overlap.
    let rotate = json!({ "metadata": { "annotations": { "hookrelay.dev/rotate-secret": "r1" } } });
    let params = kube::api::PatchParams::default();
    webhooks
        .patch("keyed", &params, &kube::api::Patch::Merge(&rotate))
        .await
        .unwrap();
    let rotated = eventually(WAIT, "the new public key", || async {
        let s = webhooks.get("keyed").await.ok()?.status?.signing?;
        (s.previous_public_key.as_deref() == Some(first_key.as_str())).then_some(s)
    })
    .await;
    let new_key = rotated.public_key.unwrap();
    assert_ne!(new_key, first_key);
    send_until("v1a by the new key and the previous one", &|request, signatures| {
        let v1a: Vec<&&str> = signatures.iter().filter(|s| s.starts_with("v1a,")).collect();
        v1a.len() == 2 && v1a_verifies(&new_key, v1a[0], request) && v1a_verifies(&first_key, v1a[1], request)
    })
    .await;
    // Asymmetric only: no shared-secret signature in webhook-signature (the
    // CMS's body signature header stays).
    let asymmetric = json!({ "spec": { "signing": { "scheme": "asymmetric" } } });
    webhooks
        .patch("keyed", &params, &kube::api::Patch::Merge(&asymmetric))
        .await
        .unwrap();
    send_until("v1a only", &|request, signatures| {
        signatures.iter().all(|s| s.starts_with("v1a,"))
            && v1a_verifies(&new_key, signatures[0], request)
            && request.header("x-amplience-webhook-signature").is_some()
    })
    .await;
    assert!(!stack.logs().contains("whsk_"), "a private key appears in the logs");
    stack.cleanup().await;
}

async fn a_rate_limit_spaces_the_requests_to_a_handler(store: Store) {
    use hookrelay::resources::hub::DeliveryRateLimit;
    use hookrelay::resources::webhook::WebhookDelivery;
    let stack = Stack::start_in("a_rate_limit_spaces_requests", store).await;
    let receiver = Receiver::start().await;
    let event = "dynamic-content.content-item.updated";
    let mut limited = spec(receiver.url("/limited"), &[event]);
    limited.delivery = Some(WebhookDelivery {
        rate_limit: Some(DeliveryRateLimit {
            requests_per_second: 5.0,
            burst: Some(1),
        }),
        ..Default::default()
    });
    stack.webhook("limited", limited).await;
    let mut names = vec![];
    for i in 0..20 {
        let (status, answer) = stack
            .post(json!({ "id": format!("e{i}"), "name": event, "payload": { "n": i } }))
            .await;
        assert_eq!(status, 202, "{answer}");
        names.extend(deliveries_of(&answer));
    }
    let received = receiver.wait_for("/limited", 20, WAIT).await;
    let mut at: Vec<Instant> = received.iter().map(|r| r.at).collect();
    at.sort();
    // 5/s with a burst of 1: never more than 6 in any second (one
    // interval of slack for the network between sender and receiver).
    for w in at.windows(7) {
        assert!(
            w[6].duration_since(w[0]) >= Duration::from_secs(1),
            "7 requests within {:?}",
            w[6].duration_since(w[0])
        );
    }
    // Spaced, not sent together: 20 at 5/s span at least 3.8 s.
    assert!(at[19].duration_since(at[0]) >= Duration::from_secs(3));
    // Waiting for a turn is not an attempt: each went once, first time.
    let seen = support::stack::ids_seen(&received);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    // The wait shows in the Delivery: the attempt says how long it waited
    // for its turn (all but the burst's first wait, as each request takes
    // far less than the 200 ms between turns).
    let mut waited = 0;
    for name in &names {
        let status = stack.delivery_done(name).await.status.unwrap();
        assert_eq!((status.phase, status.attempt_count), (Phase::Succeeded, 1), "{name}");
        waited += usize::from(status.attempts[0].rate_limit_wait_ms.is_some_and(|ms| ms > 0));
    }
    assert!(
        waited >= 10,
        "{waited} of 20 attempts say they waited for the rate limit"
    );
    stack.cleanup().await;
}

async fn a_paused_webhook_holds_its_deliveries_until_resumed(store: Store) {
    let stack = Stack::start_in("a_paused_webhook_holds", store).await;
    let receiver = Receiver::start().await;
    let event = "dynamic-content.content-item.updated";
    let mut held = spec(receiver.url("/held"), &[event]);
    held.paused = true;
    stack.webhook("held", held).await;
    stack.webhook("other", spec(receiver.url("/other"), &[event])).await;
    let mut names = vec![];
    for i in 0..10 {
        let (status, answer) = stack
            .post(json!({ "id": format!("e{i}"), "name": event, "payload": { "n": i } }))
            .await;
        assert_eq!(status, 202, "{answer}");
        names.extend(deliveries_of(&answer).into_iter().filter(|n| n.starts_with("held-")));
    }
    assert_eq!(names.len(), 10, "events keep triggering a paused webhook: {names:?}");
    // The other webhook's deliveries, stored with them, all arrive: the
    // paused one's were due just as long.
    receiver.wait_for("/other", 10, WAIT).await;
    assert!(
        receiver.received("/held").is_empty(),
        "nothing is sent to a paused webhook"
    );
    for name in &names {
        let status = stack.delivery(name).await.expect("stored").status.unwrap_or_default();
        assert_eq!(
            (status.phase, status.attempt_count),
            (Phase::Pending, 0),
            "{name} held, no attempt"
        );
    }
    let resume = json!({ "spec": { "paused": false } });
    stack
        .env
        .api::<Webhook>()
        .patch(
            "held",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&resume),
        )
        .await
        .unwrap();
    receiver.wait_for("/held", 10, WAIT).await;
    for name in &names {
        assert_eq!(stack.delivery_done(name).await.status.unwrap().phase, Phase::Succeeded);
    }
    let mut sent: Vec<String> = receiver
        .received("/held")
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    sent.sort();
    names.sort();
    assert_eq!(sent, names, "each held delivery is sent once");
    stack.cleanup().await;
}

both_stores!(
    a_rate_limit_spaces_the_requests_to_a_handler,
    asymmetric_signatures_verify_with_the_published_public_keys,
    a_paused_webhook_holds_its_deliveries_until_resumed,
    an_event_is_delivered_signed_and_recorded,
    ingest_rejects_bad_requests_clearly_and_is_idempotent,
    selection_templates_headers_and_methods,
    header_secrets_are_sent_only_with_their_owners_consent,
    a_slow_webhook_does_not_delay_another,
);
