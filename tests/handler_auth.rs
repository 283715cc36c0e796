//! Authenticating to handlers: mutual TLS with a client certificate from a
//! `kubernetes.io/tls` Secret (renewals picked up without a restart), and
//! OAuth 2.0 client credentials (one token for many deliveries, one refresh
//! on a 401, the token never recorded). Handlers and the token endpoint
//! listen on loopback; certificates are made here with rcgen.

mod support;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hookrelay::resources::delivery::Phase;
use hookrelay::resources::hub::EgressPolicy;
use hookrelay::resources::webhook::{CREDENTIAL_CONSENT_LABEL, OAuth2, SecretRef, WebhookSpec, WebhookTls};
use hookrelay::resources::{Delivery, SecretKeyRef, Webhook};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use std::sync::{Arc, Mutex};
use support::eventually;
use support::pki::{Pki, opaque_secret, tls_handler, tls_secret};
use support::stack::{Options, Stack, WAIT, deliveries_of};

// One event per webhook, so each post makes one delivery.
const EVENT: &str = "dynamic-content.content-item.updated";
const OTHER_EVENT: &str = "dynamic-content.content-item.created";
const THIRD_EVENT: &str = "dynamic-content.snapshot.published";

/// Posts `event`; returns the name of the delivery made for `webhook`.
async fn post_for(stack: &Stack, webhook: &str, event: &str, n: usize) -> String {
    let (status, answer) = stack.post(json!({ "name": event, "payload": { "n": n } })).await;
    assert_eq!(status, 202, "{answer}");
    let api: Api<Delivery> = stack.env.api();
    for name in deliveries_of(&answer) {
        if api.get(&name).await.unwrap().spec.webhook == webhook {
            return name;
        }
    }
    panic!("no delivery for {webhook} in {answer}");
}

/// The first attempt's error of a delivery, once it has one.
async fn first_error(stack: &Stack, name: &str) -> String {
    let api: Api<Delivery> = stack.env.api();
    eventually(WAIT, &format!("an attempt of {name}"), || async {
        let d = api.get(name).await.ok()?;
        d.status?.attempts.first()?.error.clone()
    })
    .await
}

async fn ready_reason(stack: &Stack, name: &str) -> (String, String) {
    let api: Api<Webhook> = stack.env.api();
    eventually(WAIT, &format!("webhook {name} reconciled"), || async {
        let w = api.get(name).await.ok()?;
        let c = w.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        Some((c.reason, c.message))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_presents_the_secrets_certificate_and_picks_up_a_renewal() {
    let pki = Pki::new();
    let (addr, seen) = tls_handler(&pki, "127.0.0.1").await;
    let stack = Stack::start_with("handler_mtls", Options::single_controller()).await;
    let secrets: Api<Secret> = stack.env.api();
    let first = pki.issue("shop-a", &[]);
    for secret in [
        tls_secret("client-cert", &first, true),
        tls_secret("unconsented-cert", &first, false),
        opaque_secret("handler-ca", "ca.crt", &pki.ca_pem, false),
    ] {
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let url = format!("https://{addr}/hook");
    let ca = Some(SecretKeyRef {
        name: "handler-ca".into(),
        key: "ca.crt".into(),
    });
    let mut with_cert = WebhookSpec::new("main", "mTLS", &url, &[EVENT]);
    with_cert.tls = Some(WebhookTls {
        client_cert_secret_ref: Some(SecretRef {
            name: "client-cert".into(),
        }),
        ca_secret_ref: ca.clone(),
    });
    stack.webhook("with-cert", with_cert.clone()).await;
    let mut without_cert = WebhookSpec::new("main", "no client cert", &url, &[OTHER_EVENT]);
    without_cert.tls = Some(WebhookTls {
        client_cert_secret_ref: None,
        ca_secret_ref: ca,
    });
    stack.webhook("without-cert", without_cert).await;

    // A Secret whose owner did not consent is refused at reconcile, by field.
    let mut unconsented = with_cert.clone();
    unconsented.events = vec![THIRD_EVENT.into()];
    unconsented.tls.as_mut().unwrap().client_cert_secret_ref = Some(SecretRef {
        name: "unconsented-cert".into(),
    });
    let webhooks: Api<Webhook> = stack.env.api();
    webhooks
        .create(&PostParams::default(), &Webhook::new("unconsented", unconsented))
        .await
        .unwrap();
    let (reason, message) = ready_reason(&stack, "unconsented").await;
    assert_eq!(reason, "CredentialNotUsable", "{message}");
    assert!(
        message.contains("spec.tls.clientCertSecretRef") && message.contains(CREDENTIAL_CONSENT_LABEL),
        "{message}"
    );
    webhooks.delete("unconsented", &Default::default()).await.unwrap();

    let delivered = post_for(&stack, "with-cert", EVENT, 1).await;
    let refused = post_for(&stack, "without-cert", OTHER_EVENT, 1).await;
    let done = stack.delivery_done(&delivered).await;
    assert_eq!(done.status.unwrap().phase, Phase::Succeeded);
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![first.der.clone()],
        "the Secret's certificate was presented"
    );

    let error = first_error(&stack, &refused).await;
    println!("without a client certificate: {error}");
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error says why: {error}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no request got through without a certificate"
    );

    // A renewed certificate is used from the next attempt on, no restart.
    let renewed = pki.issue("shop-a-renewed", &[]);
    secrets
        .replace(
            "client-cert",
            &PostParams::default(),
            &tls_secret("client-cert", &renewed, true),
        )
        .await
        .unwrap();
    let after = post_for(&stack, "with-cert", EVENT, 2).await;
    assert_eq!(
        stack.delivery_done(&after).await.status.unwrap().phase,
        Phase::Succeeded
    );
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&renewed.der),
        "the renewed certificate was presented"
    );

    let logs = stack.logs();
    assert!(!logs.contains("PRIVATE KEY"), "no key material in logs");
    stack.cleanup().await;
}

/// A token endpoint and a handler that accepts only tokens it issued and
/// has not revoked.
#[derive(Default)]
struct Authority {
    issued: Vec<String>,
    revoked: Vec<String>,
    token_requests: Vec<String>,
    /// Authorization header of each handler request, and the answer.
    handled: Vec<(String, u16)>,
}

const CLIENT_ID: &str = "hookrelay-test";
const CLIENT_SECRET: &str = "client-secret-9f8e7d6c5b4a";

async fn token(State(a): State<Arc<Mutex<Authority>>>, headers: HeaderMap, body: String) -> Response {
    let mut a = a.lock().unwrap();
    a.token_requests.push(body);
    // Basic base64("hookrelay-test:client-secret-9f8e7d6c5b4a"), computed with coreutils' base64.
    let expected = "Basic aG9va3JlbGF5LXRlc3Q6Y2xpZW50LXNlY3JldC05ZjhlN2Q2YzViNGE=";
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected) {
        let refusal = json!({ "error": "invalid_client", "error_description": "client authentication failed" });
        return (StatusCode::UNAUTHORIZED, axum::Json(refusal)).into_response();
    }
    let value = format!("tok-{}-{}", a.issued.len() + 1, uuid::Uuid::new_v4().simple());
    a.issued.push(value.clone());
    axum::Json(json!({ "access_token": value, "token_type": "Bearer", "expires_in": 3600 })).into_response()
}

async fn protected(State(a): State<Arc<Mutex<Authority>>>, headers: HeaderMap) -> StatusCode {
    let mut a = a.lock().unwrap();
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let valid = presented
        .strip_prefix("Bearer ")
        .is_some_and(|t| a.issued.iter().any(|i| i == t) && !a.revoked.iter().any(|r| r == t));
    let status = if valid { 200 } else { 401 };
    a.handled.push((presented, status));
    StatusCode::from_u16(status).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_fetches_one_token_for_many_deliveries_and_refreshes_once_on_401() {
    let authority: Arc<Mutex<Authority>> = Arc::default();
    let app = Router::new()
        .route("/token", post(token))
        .route("/hook", post(protected))
        .with_state(authority.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut options = Options::single_controller();
    // 127.0.0.9 is denied for this hub: a token endpoint there is refused.
    options.hub.spec.egress = Some(EgressPolicy {
        denied_networks: vec!["127.0.0.9/32".into()],
        allowed_networks: vec![],
    });
    let stack = Stack::start_with("handler_oauth2", options).await;
    let secrets: Api<Secret> = stack.env.api();
    secrets
        .create(
            &PostParams::default(),
            &opaque_secret("oauth-client", "secret", CLIENT_SECRET, true),
        )
        .await
        .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &opaque_secret("wrong-client", "secret", "not-the-secret", true),
        )
        .await
        .unwrap();
    let oauth = |token_url: String, secret: &str| OAuth2 {
        token_url,
        client_id: CLIENT_ID.into(),
        client_secret_ref: SecretKeyRef {
            name: secret.into(),
            key: "secret".into(),
        },
        scopes: vec!["hooks:write".into()],
        audience: None,
        client_auth: Default::default(),
    };
    let url = format!("http://{addr}/hook");
    let mut good = WebhookSpec::new("main", "OAuth2", &url, &[EVENT]);
    good.oauth2 = Some(oauth(format!("http://{addr}/token"), "oauth-client"));
    stack.webhook("oauth", good.clone()).await;

    let mut names = vec![];
    for n in 0..5 {
        names.push(post_for(&stack, "oauth", EVENT, n).await);
    }
    for name in &names {
        assert_eq!(stack.delivery_done(name).await.status.unwrap().phase, Phase::Succeeded);
    }
    {
        let a = authority.lock().unwrap();
        assert_eq!(a.token_requests.len(), 1, "one token served five deliveries");
        assert_eq!(
            a.token_requests[0], "grant_type=client_credentials&scope=hooks%3Awrite",
            "the client-credentials grant"
        );
        assert!(
            a.handled
                .iter()
                .all(|(h, s)| *h == format!("Bearer {}", a.issued[0]) && *s == 200)
        );
    }

    // The handler stops accepting the token: one refresh, one more request,
    // and the attempt succeeds.
    let revoked = authority.lock().unwrap().issued[0].clone();
    authority.lock().unwrap().revoked.push(revoked.clone());
    let name = post_for(&stack, "oauth", EVENT, 5).await;
    let done = stack.delivery_done(&name).await.status.unwrap();
    assert_eq!((done.phase, done.attempt_count), (Phase::Succeeded, 1));
    {
        let a = authority.lock().unwrap();
        assert_eq!(a.token_requests.len(), 2, "a 401 triggers exactly one refresh");
        let last: Vec<u16> = a.handled.iter().rev().take(2).map(|(_, s)| *s).collect();
        assert_eq!(last, vec![200, 401]);
    }
    let recorded = &done.attempts[0].request.headers;
    assert!(
        recorded
            .iter()
            .any(|h| h.name == "Authorization" && h.value == "<redacted>")
    );

    // A token endpoint that refuses the client: the attempt fails saying so.
    let mut wrong = good.clone();
    wrong.events = vec![OTHER_EVENT.into()];
    wrong.oauth2 = Some(oauth(format!("http://{addr}/token"), "wrong-client"));
    stack.webhook("oauth-wrong", wrong).await;
    let refused = post_for(&stack, "oauth-wrong", OTHER_EVENT, 6).await;
    let error = first_error(&stack, &refused).await;
    assert!(
        error.contains("oauth2: token endpoint") && error.contains("401: invalid_client"),
        "{error}"
    );
    // A token endpoint the hub's egress policy denies is never asked.
    let mut denied = good.clone();
    denied.events = vec![THIRD_EVENT.into()];
    denied.oauth2 = Some(oauth("http://127.0.0.9:9/token".into(), "oauth-client"));
    stack.webhook("oauth-denied", denied).await;
    let refused = post_for(&stack, "oauth-denied", THIRD_EVENT, 7).await;
    let error = first_error(&stack, &refused).await;
    assert!(error.contains("egress denied"), "{error}");

    // Neither the tokens nor the client secret appear in status, Events or logs.
    let mut exposed = String::new();
    for d in stack.env.api::<Delivery>().list(&ListParams::default()).await.unwrap() {
        exposed.push_str(&serde_json::to_string(&d).unwrap());
    }
    for w in stack.env.api::<Webhook>().list(&ListParams::default()).await.unwrap() {
        exposed.push_str(&serde_json::to_string(&w.status).unwrap());
    }
    for e in stack.env.api::<Event>().list(&ListParams::default()).await.unwrap() {
        exposed.push_str(&serde_json::to_string(&e).unwrap());
    }
    exposed.push_str(&stack.logs());
    let issued = authority.lock().unwrap().issued.clone();
    assert_eq!(issued.len(), 2);
    for secret in issued
        .iter()
        .map(String::as_str)
        .chain([CLIENT_SECRET, "not-the-secret"])
    {
        assert!(!exposed.contains(secret), "{secret} leaked");
    }
    // The handler got no request from the refused webhooks.
    let answered = authority.lock().unwrap().handled.len();
    assert_eq!(answered, 7, "five, a 401 and its retry");
    stack.cleanup().await;
}

/// A slow token endpoint and a slow handler that refuses every token.
#[derive(Default)]
struct Slow {
    tokens: usize,
    requests: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn with_postgres_an_oauth2_exchange_never_outlives_its_claim() {
    // Token requests take 5 s and the handler answers 401 after 5 s, each
    // within the hub's 6 s timeout (7 s with connecting). The claim lasts
    // 2 × 7 s + 15 s = 29 s; after the first 401 (at ~10 s) a new token
    // and a second request could take 14 s more, past the claim's end less
    // its 10 s margin: the 401 is recorded instead, and nothing more is sent.
    let slow: Arc<Mutex<Slow>> = Arc::default();
    let app = Router::new()
        .route(
            "/token",
            post(|State(s): State<Arc<Mutex<Slow>>>| async move {
                s.lock().unwrap().tokens += 1;
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                axum::Json(json!({ "access_token": "tok", "token_type": "Bearer", "expires_in": 3600 }))
            }),
        )
        .route(
            "/hook",
            post(|State(s): State<Arc<Mutex<Slow>>>| async move {
                s.lock().unwrap().requests += 1;
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                StatusCode::UNAUTHORIZED
            }),
        )
        .with_state(slow.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut options = Options::single_controller();
    options.store = support::stack::Store::Postgres;
    options
        .controller_args
        .extend(["--claim-lease".to_string(), "1s".to_string()]);
    options.hub.spec.delivery = Some(hookrelay::resources::hub::DeliverySettings {
        timeout: Some("6s".parse().unwrap()),
        connect_timeout: Some("1s".parse().unwrap()),
        ..Default::default()
    });
    let stack = Stack::start_with("handler_oauth2_claim", options).await;
    stack
        .env
        .api::<Secret>()
        .create(
            &PostParams::default(),
            &opaque_secret("oauth-client", "secret", CLIENT_SECRET, true),
        )
        .await
        .unwrap();
    let mut spec = WebhookSpec::new("main", "OAuth2, slow", &format!("http://{addr}/hook"), &[EVENT]);
    spec.oauth2 = Some(OAuth2 {
        token_url: format!("http://{addr}/token"),
        client_id: CLIENT_ID.into(),
        client_secret_ref: SecretKeyRef {
            name: "oauth-client".into(),
            key: "secret".into(),
        },
        scopes: vec![],
        audience: None,
        client_auth: Default::default(),
    });
    stack.webhook("slow", spec).await;
    let (status, answer) = stack.post(json!({ "name": EVENT, "payload": { "n": 1 } })).await;
    assert_eq!(status, 202, "{answer}");
    let name = deliveries_of(&answer).remove(0);
    let first = eventually(WAIT, "the first attempt recorded", || async {
        let d = stack.delivery(&name).await?;
        let status = d.status?;
        (status.attempt_count >= 1).then_some(status)
    })
    .await;
    let attempt = &first.attempts[0];
    assert_eq!(
        attempt.response.as_ref().map(|r| r.status_code),
        Some(401),
        "the 401 received is what is recorded: {attempt:?}"
    );
    let seen = {
        let s = slow.lock().unwrap();
        (s.tokens, s.requests)
    };
    assert_eq!(
        seen,
        (1, 1),
        "no second token or request once the claim could not outlast them"
    );
    stack.cleanup().await;
}
