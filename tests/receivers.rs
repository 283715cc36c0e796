//! The example receivers (`examples/receivers/`: Node.js, Python, Go, Java,
//! PHP) against real deliveries: each is given the secret values a user
//! reads with `kubectl hookrelay secret` (the secret, and the published
//! `whsec_` value), for a generated secret and for a brought one that is not
//! base64, and must answer hookrelay's requests 200 and refuse a forged
//! signature and a stale timestamp. The runtimes come from Debian (`.ci/run`
//! installs them); a missing one fails the test, naming its package.

mod support;

use hookrelay::delivery::signing;
use hookrelay::resources::delivery::Phase;
use hookrelay::resources::{Delivery, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use support::eventually;
use support::stack::{Stack, WAIT, deliveries_of, spec};

const UPDATED: &str = "dynamic-content.content-item.updated";
/// A secret a user brought: not base64, so `whsec_<secret>` would be wrong.
const BROUGHT: &str = "our own secret, not base64!";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/receivers")
}

/// How each language's receiver is started on `port`.
fn command(language: &str, port: u16) -> Command {
    let dir = examples().join(language);
    let (program, package, args): (&str, &str, Vec<String>) = match language {
        "node" => ("node", "nodejs", vec!["receiver.js".into()]),
        "python" => ("python3", "python3", vec!["receiver.py".into()]),
        "go" => (go_receiver(), "golang", vec![]),
        "java" => ("java", "default-jdk-headless", vec!["Receiver.java".into()]),
        "php" => (
            "php",
            "php-cli",
            vec!["-S".into(), format!("127.0.0.1:{port}"), "receiver.php".into()],
        ),
        other => panic!("no receiver for {other}"),
    };
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{program} is installed (Debian: {package}; .ci/run installs it)");
    let mut c = Command::new(program);
    c.args(args).current_dir(dir).env("PORT", port.to_string());
    c
}

/// The Go receiver, built once.
fn go_receiver() -> &'static str {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-receiver");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(examples().join("go"))
            .status()
            .expect("go is installed");
        assert!(built.success(), "the Go receiver builds");
        out.to_string_lossy().into_owned()
    })
}

/// A receiver process and what it printed.
struct Running {
    child: Child,
    said: Arc<Mutex<String>>,
    url: String,
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hookrelay")
}

impl Running {
    async fn start(language: &str, port: u16, secret: &str, whsec: &str) -> Running {
        let mut child = command(language, port)
            .env("HOOKRELAY_SECRET", secret)
            .env("HOOKRELAY_WHSEC", whsec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {language} receiver: {e}"));
        let said = support::gather_output(&mut child);
        let running = Running {
            child,
            said,
            url: url(port),
        };
        eventually(WAIT, &format!("the {language} receiver listening"), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
        running
    }

    fn said(&self) -> String {
        self.said.lock().unwrap().clone()
    }

    /// Posts `body` signed with `secret` at `timestamp` (the Standard
    /// Webhooks signature made by `standard`): the receiver's status code.
    async fn post_signed(&self, secret: &str, standard: &str, timestamp: i64) -> u16 {
        let body = br#"{"name":"dynamic-content.content-item.updated","payload":{"id":"forged"}}"#;
        reqwest::Client::new()
            .post(&self.url)
            .header("webhook-id", "forged-1")
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signing::standard_signature(standard, "forged-1", timestamp, body),
            )
            .header("X-Amplience-Webhook-Signature", signing::body_signature(secret, body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The values a user reads with the plugin: the secret, and `whsec_…`.
fn published(stack: &Stack, webhook: &str) -> (String, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("receivers-plugin-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-hookrelay");
    if !link.exists() {
        let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hookrelay"), &link);
    }
    let read = |extra: &[&str]| {
        let out = Command::new(&link)
            .args(["--kubeconfig", stack.env.cluster.admin_kubeconfig.to_str().unwrap()])
            .args(["-n", &stack.env.ns, "secret", webhook])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    (read(&[]), read(&["--standard-webhooks"]))
}

async fn receivers_verify(language: &str) {
    let stack = Stack::start(&format!("receiver_{language}")).await;
    // A brought secret that is not base64.
    let own: Secret = serde_json::from_value(json!({
        // (Its owner's consent to its use as a webhook credential.)
        "metadata": { "name": "own-secret", "labels": { "hookrelay.dev/webhook-credential": "true" } },
        "stringData": { "secret": BROUGHT },
    }))
    .unwrap();
    stack
        .env
        .api::<Secret>()
        .create(&Default::default(), &own)
        .await
        .unwrap();

    // Each webhook's receiver starts once its secret can be read: the
    // webhook points at a port picked first and taken right after.
    let mut running = Vec::new();
    for (webhook, brought) in [("generated", false), ("brought", true)] {
        let port = support::free_port();
        let mut webhook_spec = spec(url(port), &[UPDATED]);
        if brought {
            webhook_spec.secret_ref = Some(SecretKeyRef {
                name: "own-secret".into(),
                key: "secret".into(),
            });
        }
        stack.webhook(webhook, webhook_spec).await;
        let (secret, whsec) = published(&stack, webhook);
        if brought {
            assert_eq!(secret, BROUGHT);
            assert_ne!(
                whsec,
                format!("whsec_{BROUGHT}"),
                "the published value, not whsec_<secret>"
            );
        }
        let receiver = Running::start(language, port, &secret, &whsec).await;
        running.push((webhook, secret, whsec, receiver));
    }

    // A real delivery to each: every receiver verifies it and answers 200.
    let body = json!({ "name": UPDATED, "id": "evt-1", "payload": { "id": "c-1", "title": "Grüße" } });
    let (status, answer) = stack.post(body).await;
    assert_eq!(status, 202, "{answer}");
    let names = deliveries_of(&answer);
    assert_eq!(names.len(), 2, "{answer}");
    let deliveries: Api<Delivery> = stack.env.api();
    for name in &names {
        let phase = eventually(WAIT, &format!("delivery {name} attempted"), || async {
            let status = deliveries.get(name).await.ok()?.status?;
            (status.attempt_count > 0).then_some(status.phase)
        })
        .await;
        let said: Vec<String> = running.iter().map(|(_, _, _, r)| r.said()).collect();
        assert_eq!(
            phase,
            Phase::Succeeded,
            "{language}: {name} on the first attempt; receivers said {said:?}"
        );
    }
    for (webhook, secret, whsec, receiver) in &running {
        let said = receiver.said();
        assert!(
            names.iter().any(|n| said.contains(&format!("verified {n}"))),
            "{language} ({webhook}) verified its delivery: {said}"
        );
        // Forged: signed with another secret; stale: signed right, but
        // outside the tolerance. Both refused.
        let now = jiff::Timestamp::now().as_second();
        assert_eq!(
            receiver.post_signed("forged", "Zm9yZ2Vk", now).await,
            401,
            "{language} ({webhook}) refuses a forgery"
        );
        // (What follows whsec_ is the key in base64, as signing takes it.)
        let standard = whsec.trim_start_matches("whsec_");
        assert_eq!(
            receiver.post_signed(secret, standard, now - 3600).await,
            401,
            "{language} ({webhook}) refuses a stale timestamp"
        );
        assert_eq!(
            receiver.post_signed(secret, standard, now).await,
            200,
            "{language} ({webhook}) takes a request signed as hookrelay signs"
        );
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_receiver_verifies_both_signatures() {
    receivers_verify("node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_receiver_verifies_both_signatures() {
    receivers_verify("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_receiver_verifies_both_signatures() {
    receivers_verify("go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_receiver_verifies_both_signatures() {
    receivers_verify("java").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_php_receiver_verifies_both_signatures() {
    receivers_verify("php").await;
}
