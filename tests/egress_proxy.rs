//! Egress through an HTTP CONNECT proxy (`--egress-proxy`), with a real
//! proxy: Debian's tinyproxy on loopback, with Basic credentials, logging
//! every request line it is sent. Deliveries to named handlers arrive
//! through it (TLS end to end, a client certificate included), the proxy is
//! asked only for checked addresses, never for a name, and a denied address
//! is never asked of it.

mod support;

use hookrelay::resources::delivery::Phase;
use hookrelay::resources::hub::EgressPolicy;
use hookrelay::resources::webhook::{SecretRef, WebhookTls};
use hookrelay::resources::{Hub, SecretKeyRef, WebhookSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use support::eventually;
use support::pki::{Pki, opaque_secret, tls_handler, tls_secret};
use support::receiver::Receiver;
use support::stack::{Options, Stack, Store, WAIT, deliveries_of};

const EVENT: &str = "dynamic-content.content-item.updated";

/// tinyproxy on 127.0.0.1, stopped (by its pid) when dropped.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    async fn start(name: &str, user: &str, password: &str) -> Tinyproxy {
        let program = "tinyproxy";
        let found = Command::new(program).arg("-v").output().is_ok();
        assert!(found, "{program} is installed (Debian: tinyproxy; .ci/run installs it)");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tinyproxy").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("tinyproxy.log");
        let _ = std::fs::remove_file(&log);
        let port = support::free_port();
        // No ConnectPort line: CONNECT to any port (the handlers' are random).
        let config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 50\nAllow 127.0.0.1\nBasicAuth {user} {password}\nDisableViaHeader Yes\n",
            log.display()
        );
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(program)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy starts");
        let proxy = Tinyproxy { child, port, log };
        eventually(WAIT, "tinyproxy to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        proxy
    }

    /// The request lines tinyproxy was sent, in order.
    fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split_once("]: Request (file descriptor "))
            .filter_map(|(_, rest)| rest.split_once("): ").map(|(_, request)| request.to_string()))
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The deliveries `answer` made, by webhook.
async fn delivery_for(stack: &Stack, answer: &serde_json::Value, webhook: &str) -> String {
    for name in deliveries_of(answer) {
        let d = eventually(WAIT, "the delivery to be readable", || stack.delivery(&name)).await;
        if d.spec.webhook == webhook {
            return name;
        }
    }
    panic!("no delivery for {webhook} in {answer}");
}

async fn deliveries_go_through_the_egress_proxy_to_checked_addresses_only(store: Store) {
    let proxy = Tinyproxy::start(&format!("{store:?}").to_lowercase(), "svc", "pr0xy-s3cret").await;
    let mut hub: Hub = serde_yaml::from_str(include_str!("../examples/hub.yaml")).unwrap();
    hub.spec.egress = Some(EgressPolicy {
        denied_networks: vec!["127.0.0.2/32".into()],
        allowed_networks: vec![],
    });
    let mut options = Options::single_controller();
    options.controller_args.extend([
        "--egress-allow-loopback=true".into(),
        "--egress-proxy".into(),
        format!("http://127.0.0.1:{}", proxy.port),
        "--egress-proxy-credentials".into(),
        "svc:pr0xy-s3cret".into(),
    ]);
    options.hub = hub;
    options.store = store;
    let stack = Stack::start_with("egress_proxy", options).await;
    // The hub states where its requests leave (the console and the plugin
    // show it from there).
    let hubs: Api<Hub> = stack.env.api();
    let stated = format!("127.0.0.1:{}", proxy.port);
    eventually(WAIT, "the hub's status to name the egress proxy", || async {
        let status = hubs.get("main").await.ok()?.status?;
        (status.egress_proxy.as_deref() == Some(stated.as_str())).then_some(())
    })
    .await;

    // An https handler for the name "localhost" that wants a client
    // certificate: TLS is end to end through the proxy, SNI the name.
    let pki = Pki::new();
    let (tls_addr, tls_seen) = tls_handler(&pki, "localhost").await;
    let secrets: Api<Secret> = stack.env.api();
    for secret in [
        tls_secret("client-cert", &pki.issue("shop", &[]), true),
        opaque_secret("handler-ca", "ca.crt", &pki.ca_pem, false),
    ] {
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let tls_url = format!("https://localhost:{}/hook", tls_addr.port());
    let mut tls = WebhookSpec::new("main", "https by name", &tls_url, &[EVENT]);
    tls.tls = Some(WebhookTls {
        client_cert_secret_ref: Some(SecretRef {
            name: "client-cert".into(),
        }),
        ca_secret_ref: Some(SecretKeyRef {
            name: "handler-ca".into(),
            key: "ca.crt".into(),
        }),
    });
    stack.webhook("tls", tls).await;
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let plain_url = format!("http://localhost:{port}/plain");
    stack
        .webhook("plain", WebhookSpec::new("main", "http by name", &plain_url, &[EVENT]))
        .await;
    let denied_url = format!("http://127.0.0.2:{port}/denied");
    stack
        .webhook(
            "denied",
            WebhookSpec::new("main", "a denied address", &denied_url, &[EVENT]),
        )
        .await;

    let (status, answer) = stack.post(json!({ "name": EVENT, "payload": { "n": 1 } })).await;
    assert_eq!(status, 202, "{answer}");
    let plain = receiver.wait_for("/plain", 1, WAIT).await;
    let received = &plain[0];
    assert_eq!(received.headers.get("host").unwrap(), &format!("localhost:{port}"));
    assert!(
        received.headers.keys().all(|h| !h.as_str().starts_with("proxy-")),
        "no proxy header reaches the handler: {:?}",
        received.headers
    );
    eventually(WAIT, "the https handler to see the client certificate", || async {
        (tls_seen.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    let denied = delivery_for(&stack, &answer, "denied").await;
    let error = eventually(WAIT, "the denied attempt to be recorded", || async {
        stack
            .delivery(&denied)
            .await?
            .status?
            .attempts
            .into_iter()
            .next()?
            .error
    })
    .await;
    assert!(error.starts_with("egress denied: 127.0.0.2"), "{error}");
    for webhook in ["tls", "plain"] {
        let name = delivery_for(&stack, &answer, webhook).await;
        eventually(WAIT, "the delivery to succeed", || async {
            let s = stack.delivery(&name).await?.status?;
            (s.phase == Phase::Succeeded).then_some(())
        })
        .await;
    }
    let asked = proxy.requests();
    let mut expected = vec![
        format!("CONNECT 127.0.0.1:{} HTTP/1.1", tls_addr.port()),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1"),
    ];
    expected.sort();
    let mut distinct = asked.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct, expected,
        "the proxy is asked for checked addresses, never a name: {asked:?}"
    );

    // The hub now denies 127.0.0.0/8: "localhost" resolves only to denied
    // addresses, which are never asked of the proxy.
    hubs.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "egress": { "deniedNetworks": ["127.0.0.0/8", "::1/128"] } } })),
    )
    .await
    .unwrap();
    // The controller's cache may hold the old policy for an event or two:
    // post until an attempt is refused, and look at what the proxy was
    // asked since that event.
    let (refused, before) = eventually(WAIT, "an attempt refused by the new policy", || async {
        let before = proxy.requests().len();
        let (status, answer) = stack.post(json!({ "name": EVENT, "payload": { "n": 2 } })).await;
        assert_eq!(status, 202, "{answer}");
        let name = delivery_for(&stack, &answer, "plain").await;
        let attempt = eventually(WAIT, "the attempt to be recorded", || async {
            stack.delivery(&name).await?.status?.attempts.into_iter().next()
        })
        .await;
        let error = attempt.error?;
        error
            .starts_with("egress denied: localhost resolves to 127.0.0.1")
            .then_some((error, before))
    })
    .await;
    assert!(refused.contains("in denied network 127.0.0.0/8"), "{refused}");
    let after = proxy.requests();
    assert!(
        after[before..].iter().all(|r| !r.contains(&format!(":{port} "))),
        "the denied address was never asked of the proxy: {:?}",
        &after[before..]
    );
    let logs = std::fs::read_to_string(&stack.controller.log).unwrap_or_default();
    assert!(!logs.contains("pr0xy-s3cret"), "the proxy's password is in no log");
    stack.cleanup().await;
}

both_stores!(deliveries_go_through_the_egress_proxy_to_checked_addresses_only);
