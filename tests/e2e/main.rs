//! The end-to-end suite: hookrelay installed with Helm as pods of a real
//! cluster, used the way its users use it. It needs a cluster with a node
//! and hookrelay's image loaded (`tests/e2e/node.sh up` here, or
//! `tests/e2e/kind.sh` with Docker), and runs with `tests/e2e/run.sh`:
//!
//! - `HOOKRELAY_TEST_KUBECONFIG`: the cluster's admin kubeconfig;
//! - `HOOKRELAY_E2E_HOST_ADDRESS`: an address of this machine that pods
//!   reach (the receivers and Postgres listen there);
//! - `HOOKRELAY_E2E_IMAGE` (default `hookrelay:e2e`) and
//!   `HOOKRELAY_E2E_DEBUG_IMAGE` (default `busybox:e2e`), both loaded into
//!   the node (never pulled).
//!
//! Services are reached at their ClusterIPs from this machine (through
//! kube-proxy): node.sh routes the service range to its bridge, kind.sh to
//! the kind node. The tests run one at a time (`--test-threads=1`): each
//! installs and uninstalls its own release.

#[path = "../support/mod.rs"]
mod support;

use hookrelay::delivery::signing;
use hookrelay::resources::{Hub, Webhook};
use hookrelay::secrets;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::browser::{Driver, appears, click, fill, shot, text};
use support::receiver::{Received, Receiver};
use support::{TestEnv, eventually, tool};

const UPDATED: &str = "dynamic-content.content-item.updated";
/// Long enough for pods to start, a rolling update and a lease hand-over on
/// a busy two-core machine; each wait fails naming what it waited for.
const POD_WAIT: Duration = Duration::from_secs(300);
const WAIT: Duration = Duration::from_secs(120);
/// The Postgres the Postgres-store test starts on the host address (.ci/run stops it).
const POSTGRES_PORT: u16 = 25491;

/// Prints a step of the suite with the seconds since the suite started.
fn step(what: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("e2e [{:>5.1}s]: {what}", start.elapsed().as_secs_f64());
}

fn host_address() -> String {
    std::env::var("HOOKRELAY_E2E_HOST_ADDRESS")
        .expect("HOOKRELAY_E2E_HOST_ADDRESS: an address of this machine that pods reach (tests/e2e/run.sh sets it)")
}

/// `--set` arguments for the image loaded into the node.
fn image_values() -> Vec<String> {
    let image = std::env::var("HOOKRELAY_E2E_IMAGE").unwrap_or_else(|_| "hookrelay:e2e".into());
    let (repository, tag) = image.rsplit_once(':').expect("HOOKRELAY_E2E_IMAGE is REPOSITORY:TAG");
    vec![
        format!("--set=image.repository={repository}"),
        format!("--set=image.tag={tag}"),
        "--set=image.pullPolicy=Never".into(),
    ]
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/hookrelay")
}

/// Runs kubectl or helm against the cluster; panics with its output on failure.
fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name))
        .args(args)
        .env("KUBECONFIG", &support::cluster().admin_kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn helm(args: &[&str], values: &[String]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(values.iter().map(String::as_str));
    run("helm", &all)
}

/// Removes what an earlier, failed run left of a release and its namespace
/// (the node is reused between runs).
async fn fresh(client: &Client, release: &str, ns: &str) {
    run(
        "helm",
        &[
            "uninstall",
            release,
            "-n",
            ns,
            "--ignore-not-found",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    eventually(POD_WAIT, &format!("namespace {ns} gone"), || async {
        namespaces.get_opt(ns).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// The cluster's admin client. The suite needs a cluster with a node: it
/// never falls back to the local control plane (which has none).
async fn admin() -> Client {
    assert!(
        std::env::var_os("HOOKRELAY_TEST_KUBECONFIG").is_some(),
        "HOOKRELAY_TEST_KUBECONFIG: the kubeconfig of a cluster with a node (tests/e2e/run.sh sets it)"
    );
    host_address();
    let kubeconfig = kube::config::Kubeconfig::read_from(&support::cluster().admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Asks the eviction API to evict a pod, as `kubectl drain` does; the
/// error is kubectl's message. (kube-rs's client retries 429 answers, so
/// it would wait out a refusal instead of reporting it.)
fn evict(ns: &str, pod: &str) -> Result<(), String> {
    let body = json!({ "apiVersion": "policy/v1", "kind": "Eviction", "metadata": { "name": pod, "namespace": ns } });
    let mut child = Command::new(tool("kubectl"))
        .args([
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
            "-f",
            "-",
        ])
        .env("KUBECONFIG", &support::cluster().admin_kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    out.status
        .success()
        .then_some(())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// How many objects of a kind `ns` holds (matching `labels`; "" for all).
async fn count<K>(client: &Client, ns: &str, labels: &str) -> usize
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(labels))
        .await
        .unwrap_or_else(|e| panic!("listing in {ns}: {e}"))
        .items
        .len()
}

/// Marks every node unschedulable (or schedulable again).
async fn cordon(client: &Client, unschedulable: bool) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await.unwrap() {
        let patch = json!({ "spec": { "unschedulable": unschedulable } });
        nodes
            .patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("cordoning {}: {e}", node.name_any()));
    }
}

async fn release_pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the Deployment has `replicas` updated, ready pods and no others.
async fn rolled_out(client: &Client, ns: &str, name: &str, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(
        POD_WAIT,
        &format!("Deployment {ns}/{name} with {replicas} ready pods"),
        || async {
            let d = deployments.get(name).await.ok()?;
            let s = d.status?;
            (d.metadata.generation == s.observed_generation
                && s.updated_replicas == Some(replicas)
                && s.ready_replicas == Some(replicas)
                && s.replicas == Some(replicas))
            .then_some(())
        },
    )
    .await;
}

/// What a container runs as, read from the running process: an ephemeral
/// container in the pod's target container's process namespace reads
/// `/proc/1` (the hookrelay process) and reports its user, no_new_privs and
/// how its root file system is mounted.
async fn inspect_container(client: &Client, ns: &str, pod: &str, target: &str, n: usize) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let image = std::env::var("HOOKRELAY_E2E_DEBUG_IMAGE").unwrap_or_else(|_| "busybox:e2e".into());
    let name = format!("inspect-{target}-{n}");
    let patch = json!({ "spec": { "ephemeralContainers": [{
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "targetContainerName": target,
        "command": ["sh", "-c", "grep -E '^(Uid|Gid|NoNewPrivs):' /proc/1/status; awk '$5 == \"/\" {print \"root\", $6}' /proc/1/mountinfo"],
        "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
    }]}});
    pods.patch_subresource(
        "ephemeralcontainers",
        pod,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("adding an ephemeral container to {pod}: {e}"));
    eventually(
        WAIT,
        &format!("ephemeral container {name} in {pod} to finish"),
        || async {
            let p = pods.get(pod).await.ok()?;
            let statuses = p.status?.ephemeral_container_statuses?;
            let status = statuses.iter().find(|s| s.name == name)?;
            status.state.as_ref()?.terminated.as_ref().map(drop)
        },
    )
    .await;
    pods.logs(
        pod,
        &LogParams {
            container: Some(name),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("logs of the ephemeral container in {pod}: {e}"))
}

/// Posts events with explicit ids to a hub's events URL, retrying an event
/// (same id, so ingest takes it once) while the Service answers nothing or
/// 5xx, as a CMS does. Returns the delivery names ingest accepted.
async fn post_events(url: &str, token: &str, prefix: &str, count: usize, pace: Duration) -> BTreeSet<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut accepted = BTreeSet::new();
    for i in 0..count {
        let body = json!({
            "id": format!("{prefix}-{i}"),
            "name": UPDATED,
            "payload": { "id": format!("{prefix}-{i}"), "n": i },
        });
        let answer = eventually(WAIT, &format!("ingest to accept event {prefix}-{i}"), || async {
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .ok()?;
            (response.status().as_u16() == 202).then_some(())?;
            serde_json::from_str(&response.text().await.ok()?).ok()
        })
        .await;
        accepted.extend(support::stack::deliveries_of(&answer));
        tokio::time::sleep(pace).await;
    }
    accepted
}

/// Every accepted delivery arrived; nothing arrived that was not accepted
/// (a resend after a crash keeps its webhook-id). Returns how many requests
/// were resends.
async fn all_arrived(receiver: &Receiver, path: &str, accepted: &BTreeSet<String>) -> usize {
    let received = eventually(
        POD_WAIT,
        &format!("{} deliveries at {path}", accepted.len()),
        || async {
            let got = receiver.received(path);
            let ids: HashSet<&str> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
            accepted.iter().all(|a| ids.contains(a.as_str())).then_some(got)
        },
    )
    .await;
    let unknown: Vec<&str> = received
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .filter(|id| !accepted.contains(*id))
        .collect();
    assert!(
        unknown.is_empty(),
        "requests with ids ingest never accepted: {unknown:?}"
    );
    received.len() - accepted.len()
}

/// Both signatures, as a handler verifies them: the CMS's body signature
/// and Standard Webhooks' over id, timestamp and body.
fn verify_signatures(request: &Received, secret: &str) {
    let expected = signing::body_signature(secret, &request.body);
    assert_eq!(request.header("x-amplience-webhook-signature"), Some(expected.as_str()));
    let id = request.header("webhook-id").expect("webhook-id");
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .unwrap();
    assert!(
        (jiff::Timestamp::now().as_second() - timestamp).abs() < 300,
        "timestamp {timestamp}"
    );
    let signature = signing::standard_signature(secret, id, timestamp, &request.body);
    let header = request.header("webhook-signature").expect("webhook-signature");
    assert!(
        header.split(' ').any(|s| s == signature),
        "webhook-signature {header} lacks {signature}"
    );
}

async fn service_url(client: &Client, ns: &str, name: &str) -> String {
    let service = Api::<Service>::namespaced(client.clone(), ns).get(name).await.unwrap();
    let spec = service.spec.unwrap();
    let ip = spec.cluster_ip.expect("a ClusterIP");
    format!("http://{ip}:{}", spec.ports.unwrap()[0].port)
}

/// The example hub as it is, and the example webhook pointed at `url`.
async fn apply_examples(env: &TestEnv, url: &str) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    run(
        "kubectl",
        &[
            "apply",
            "-n",
            &env.ns,
            "-f",
            examples.join("hub.yaml").to_str().unwrap(),
        ],
    );
    let mut webhook: Value =
        serde_yaml::from_str(&std::fs::read_to_string(examples.join("webhook.yaml")).unwrap()).unwrap();
    webhook["spec"]["url"] = json!(url);
    let webhook: Webhook = serde_json::from_value(webhook).unwrap();
    env.api::<Webhook>()
        .create(&PostParams::default(), &webhook)
        .await
        .unwrap();
    let hubs: Api<Hub> = env.api();
    let webhooks: Api<Webhook> = env.api();
    let ready = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    };
    eventually(
        WAIT,
        "the example hub Ready (reconciled by the in-cluster operator)",
        || async { ready(&hubs.get("main").await.ok()?.status?.conditions).then_some(()) },
    )
    .await;
    eventually(WAIT, "the example webhook Ready", || async {
        ready(&webhooks.get("example-integration").await.ok()?.status?.conditions).then_some(())
    })
    .await;
}

/// A ServiceAccount of `ns` bound to `role` (`--clusterrole=NAME` or
/// `--role=NAME`) and a token for it, made with kubectl as a user would.
fn console_user(ns: &str, name: &str, role: &str) -> String {
    run("kubectl", &["create", "serviceaccount", name, "-n", ns]);
    let subject = format!("--serviceaccount={ns}:{name}");
    run("kubectl", &["create", "rolebinding", name, "-n", ns, role, &subject]);
    run("kubectl", &["create", "token", name, "-n", ns]).trim().to_string()
}

/// Headless Chromium signed into the console at `url` with `token`.
async fn signed_in(url: &str, token: &str) -> (Driver, fantoccini::Client) {
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&format!("{url}/login")).await.unwrap();
    fill(&browser, "#token", token).await;
    click(&browser, "form button[type=submit]").await;
    // Signed in once the console has sent the browser on from /login: a
    // navigation started before that cancels the form's POST (seen: the
    // next page then showed the login form and never the hubs).
    eventually(
        Duration::from_secs(30),
        "the console to leave /login after signing in",
        || async {
            let url = browser.current_url().await.ok()?;
            (url.path() != "/login").then_some(())
        },
    )
    .await;
    (driver, browser)
}

async fn signing_secret(env: &TestEnv, webhook: &str) -> String {
    let w = env.api::<Webhook>().get(webhook).await.unwrap();
    let r = w.status.unwrap().secret_ref.unwrap();
    let s = env.api::<Secret>().get(&r.name).await.unwrap();
    secrets::value(&s, &r.key).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_runs_as_pods_through_failover_upgrade_eviction_console_and_uninstall() {
    let release = "hookrelay";
    let system = "hookrelay-system";
    let selector = "app.kubernetes.io/instance=hookrelay,app.kubernetes.io/name=hookrelay";
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let client = admin().await;
    let values = image_values();
    fresh(&client, release, system).await;

    step("helm install (default values but the image), two replicas");
    helm(
        &[
            "install",
            release,
            chart,
            "-n",
            system,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
        ],
        &values,
    );
    let pods = release_pods(&client, system, selector).await;
    assert_eq!(pods.len(), 2, "two replicas");
    assert!(pods.iter().all(ready), "every pod Ready after helm install --wait");

    step("helm test: ingest and the controllers answer through their Services");
    let tested = helm(&["test", release, "-n", system, "--timeout", "2m"], &[]);
    assert!(
        tested.contains("Phase:          Succeeded") || tested.contains("Phase: Succeeded"),
        "{tested}"
    );

    step("each container runs as 65532, no privilege escalation, read-only root");
    for (n, pod) in pods.iter().enumerate() {
        for container in ["controller", "ingest"] {
            let report = inspect_container(&client, system, &pod.name_any(), container, n).await;
            let pod = pod.name_any();
            assert!(
                report.contains("Uid:\t65532\t65532\t65532\t65532"),
                "{pod}/{container}: {report}"
            );
            assert!(
                report.contains("Gid:\t65532\t65532\t65532\t65532"),
                "{pod}/{container}: {report}"
            );
            assert!(report.contains("NoNewPrivs:\t1"), "{pod}/{container}: {report}");
            let root = report.lines().find_map(|l| l.strip_prefix("root ")).unwrap_or_default();
            assert!(
                root.split(',').any(|o| o == "ro"),
                "{pod}/{container} root mount {root:?}: {report}"
            );
        }
    }

    step("the examples reconciled; events through the ingest Service arrive signed");
    let env = TestEnv::new("e2e-chart").await;
    let receiver = Receiver::start_on(&host_address()).await;
    apply_examples(&env, &receiver.url("/webhook")).await;
    let token = support::stack::hub_token(&env, "main").await;
    let secret = signing_secret(&env, "example-integration").await;
    let ingest = service_url(&client, system, "hookrelay-ingest").await;
    let events = format!("{ingest}/v1/namespaces/{}/hubs/main/events", env.ns);
    let first = post_events(&events, &token, "first", 3, Duration::ZERO).await;
    all_arrived(&receiver, "/webhook", &first).await;
    for request in receiver.received("/webhook") {
        verify_signatures(&request, &secret);
    }

    step("the leader pod deleted while events flow");
    let leases: Api<Lease> = Api::namespaced(client.clone(), system);
    let leader = eventually(WAIT, "a leader", || async {
        leases.get("hookrelay-controller").await.ok()?.spec?.holder_identity
    })
    .await;
    let flow = tokio::spawn({
        let (events, token) = (events.clone(), token.clone());
        async move { post_events(&events, &token, "failover", 40, Duration::from_millis(100)).await }
    });
    eventually(WAIT, "the first events of the flow", || async {
        (receiver.received("/webhook").len() > first.len() + 5).then_some(())
    })
    .await;
    Api::<Pod>::namespaced(client.clone(), system)
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let accepted = flow.await.unwrap();
    let resent = all_arrived(&receiver, "/webhook", &first.union(&accepted).cloned().collect()).await;
    let successor = eventually(WAIT, "another leader", || async {
        leases
            .get("hookrelay-controller")
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| *h != leader)
    })
    .await;
    step(&format!(
        "leader {leader} -> {successor}; {resent} resends (same webhook-id)"
    ));
    rolled_out(&client, system, release, 2).await;

    step("helm upgrade that changes the pods while events flow");
    let mut upgraded = values.clone();
    upgraded.extend([
        "--set=extraEnv[0].name=E2E_ROLL".to_string(),
        "--set-string=extraEnv[0].value=1".into(),
    ]);
    let flow = tokio::spawn({
        let (events, token) = (events.clone(), token.clone());
        async move { post_events(&events, &token, "upgrade", 40, Duration::from_millis(150)).await }
    });
    helm(
        &["upgrade", release, chart, "-n", system, "--wait", "--timeout", "5m"],
        &upgraded,
    );
    let during_upgrade = flow.await.unwrap();
    let all: BTreeSet<String> = first.iter().chain(&accepted).chain(&during_upgrade).cloned().collect();
    all_arrived(&receiver, "/webhook", &all).await;
    rolled_out(&client, system, release, 2).await;
    let pods = release_pods(&client, system, selector).await;
    // Pods of the old ReplicaSet may still be terminating.
    let current: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(current.len(), 2, "two pods after the upgrade");
    for pod in current {
        let env = &pod.spec.as_ref().unwrap().containers[0].env;
        assert!(
            env.iter().flatten().any(|e| e.name == "E2E_ROLL"),
            "{} runs the upgraded spec",
            pod.name_any()
        );
    }

    step("the PodDisruptionBudget holds one pod through a drain");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), system);
    eventually(POD_WAIT, "the budget to allow one disruption", || async {
        let s = budgets.get(release).await.ok()?.status?;
        (s.current_healthy == 2 && s.disruptions_allowed == 1).then_some(())
    })
    .await;
    // As `kubectl drain` does: cordoned nodes keep the evicted pod's
    // replacement Pending, so the budget stays spent (a replacement that
    // became Ready would rightly allow the next eviction).
    cordon(&client, true).await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), system);
    // Ready pods only: pods of the old ReplicaSet may still be terminating,
    // and evicting a terminating pod succeeds whatever the budget says.
    let names: Vec<String> = release_pods(&client, system, selector)
        .await
        .iter()
        .filter(|p| ready(p))
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names.len(), 2, "two Ready pods: {names:?}");
    evict(system, &names[0]).unwrap_or_else(|e| panic!("evicting {} with two healthy: {e}", names[0]));
    let refused = evict(system, &names[1]).expect_err("evicting the last healthy pod must be refused");
    assert!(
        refused.contains("TooManyRequests") && refused.contains("disruption budget"),
        "{refused}"
    );
    assert!(
        ready(&pod_api.get(&names[1]).await.unwrap()),
        "the refused pod still runs"
    );
    cordon(&client, false).await;
    rolled_out(&client, system, release, 2).await;

    step("the console, signed in with a ServiceAccount token in Chromium");
    let mut with_console = upgraded.clone();
    with_console.push("--set=console.enabled=true".into());
    helm(
        &["upgrade", release, chart, "-n", system, "--wait", "--timeout", "5m"],
        &with_console,
    );
    let token = console_user(&env.ns, "webhook-owner", "--clusterrole=hookrelay-view");
    let console = service_url(&client, system, "hookrelay-console").await;
    let (_driver, browser) = signed_in(&console, &token).await;
    browser.goto(&format!("{console}/ns/{}", env.ns)).await.unwrap();
    appears(&browser, "a[href$='/hubs/main']").await;
    let page = browser.source().await.unwrap();
    assert!(
        page.contains(&format!("system:serviceaccount:{}:webhook-owner", env.ns)),
        "signed in as the token's user"
    );
    shot(&browser, "e2e-in-cluster-hubs").await;
    browser.close().await.unwrap();

    step("helm uninstall leaves nothing of the release");
    helm(&["uninstall", release, "-n", system, "--wait", "--timeout", "5m"], &[]);
    let instance = "app.kubernetes.io/instance=hookrelay";
    eventually(POD_WAIT, "no pod of the release", || async {
        Api::<Pod>::namespaced(client.clone(), system)
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let left = |what: &str, n: usize| assert_eq!(n, 0, "{what} left after helm uninstall");
    left("Services", count::<Service>(&client, system, instance).await);
    left("Roles", count::<Role>(&client, system, "").await);
    left("Leases", count::<Lease>(&client, system, "").await);
    left("Secrets", count::<Secret>(&client, system, instance).await);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    assert!(crds.get("webhooks.hookrelay.dev").await.is_ok(), "Helm keeps the CRDs");

    step("the hub's and webhook's own Secrets go with them");
    let owned: Vec<String> = env
        .api::<Secret>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| {
            s.owner_references()
                .iter()
                .any(|o| o.kind == "Hub" || o.kind == "Webhook")
        })
        .map(|s| s.name_any())
        .collect();
    assert!(
        owned.len() >= 2,
        "the hub's token and the webhook's signing Secret: {owned:?}"
    );
    env.api::<Webhook>()
        .delete("example-integration", &DeleteParams::default())
        .await
        .unwrap();
    env.api::<Hub>().delete("main", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the owned Secrets garbage-collected", || async {
        let names: Vec<String> = env
            .api::<Secret>()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
        owned.iter().all(|o| !names.contains(o)).then_some(())
    })
    .await;
    Api::<Namespace>::all(client.clone())
        .delete(system, &DeleteParams::default())
        .await
        .unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_postgres_store_delivers_from_two_replicas_without_duplicates() {
    let release = "hookrelay-pg";
    let system = "hookrelay-pg";
    let client = admin().await;
    let host = host_address();

    step(&format!("Postgres on {host}, with a password, for the pods"));
    let postgres = support::postgres::Postgres::listening_on("e2e", POSTGRES_PORT, &host);
    let db = postgres.client().await;
    let password = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    for statement in [
        "DROP DATABASE IF EXISTS hookrelay_e2e WITH (FORCE)".to_string(),
        "DROP ROLE IF EXISTS hookrelay_e2e".into(),
        format!("CREATE ROLE hookrelay_e2e LOGIN PASSWORD '{password}'"),
        "CREATE DATABASE hookrelay_e2e OWNER hookrelay_e2e".into(),
    ] {
        db.batch_execute(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let url = format!("postgres://hookrelay_e2e:{password}@{host}:{POSTGRES_PORT}/hookrelay_e2e");

    let env = TestEnv::new("e2e-postgres").await;
    fresh(&client, release, system).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    run("kubectl", &["create", "namespace", system]);
    run(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            "postgres",
            "-n",
            system,
            &format!("--from-literal=url={url}"),
        ],
    );

    step("helm install with store.type=postgres, two replicas");
    let mut values = image_values();
    values.extend([
        "--set=store.type=postgres".to_string(),
        "--set=store.postgres.urlSecretRef.name=postgres".into(),
        // The aggregated ClusterRoles and the CRDs are cluster-wide: one
        // release owns them (the first test's, which keeps the CRDs).
        "--set=rbac.aggregatedRoles=false".into(),
        "--set=crds.install=false".into(),
        "--set=console.enabled=true".into(),
        format!("--set=watchNamespaces={{{}}}", env.ns),
    ]);
    let chart = chart();
    helm(
        &[
            "install",
            release,
            chart.to_str().unwrap(),
            "-n",
            system,
            "--wait",
            "--timeout",
            "5m",
        ],
        &values,
    );
    let pods = release_pods(
        &client,
        system,
        "app.kubernetes.io/instance=hookrelay-pg,app.kubernetes.io/name=hookrelay",
    )
    .await;
    assert_eq!(pods.iter().filter(|p| ready(p)).count(), 2, "two Ready replicas");

    let receiver = Receiver::start_on(&host).await;
    apply_examples(&env, &receiver.url("/webhook")).await;
    let token = support::stack::hub_token(&env, "main").await;
    let secret = signing_secret(&env, "example-integration").await;
    let ingest = service_url(&client, system, "hookrelay-pg-ingest").await;
    let events = format!("{ingest}/v1/namespaces/{}/hubs/main/events", env.ns);
    let accepted = post_events(&events, &token, "pg", 60, Duration::ZERO).await;
    let resent = all_arrived(&receiver, "/webhook", &accepted).await;
    assert_eq!(resent, 0, "each delivery sent once by the two replicas");
    for request in receiver.received("/webhook") {
        verify_signatures(&request, &secret);
    }
    // The rows are in the release's database (the table name is the store's).
    let (store, connection) = tokio_postgres::connect(
        &postgres.url.replace("/postgres", "/hookrelay_e2e"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connecting to the e2e database");
    tokio::spawn(connection);
    let rows: i64 = store
        .query_one("SELECT count(*) FROM hookrelay_deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, accepted.len(), "the deliveries live in Postgres");

    step("kubectl get deliveries reads them through the history API (hookrelay api in the pods)");
    // Until the APIService is available, `deliveries` is the (empty) CRD;
    // kubectl's discovery cache would keep that answer for minutes, so each
    // try discovers afresh (as a user's kubectl does once its cache expires).
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubectl-cache");
    eventually(POD_WAIT, "kubectl get deliveries listing the Postgres rows", || async {
        let out = Command::new(tool("kubectl"))
            .args(["get", "deliveries", "-n", &env.ns, "-o", "name", "--cache-dir"])
            .arg(cache.join(uuid::Uuid::new_v4().simple().to_string()))
            .env("KUBECONFIG", &support::cluster().admin_kubeconfig)
            .output()
            .ok()?;
        let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("delivery.history.hookrelay.dev/"))
            .map(str::to_string)
            .collect();
        (names == accepted).then_some(())
    })
    .await;

    step("the console shows a delivery from the Postgres store");
    run(
        "kubectl",
        &[
            "create",
            "role",
            "history-reader",
            "-n",
            &env.ns,
            "--verb=get,list,watch",
            // With the Postgres store the console reads history through the
            // history API, with the user's rights there.
            "--resource=hubs.hookrelay.dev,webhooks.hookrelay.dev,deliveries.hookrelay.dev,deliveries.history.hookrelay.dev",
        ],
    );
    let token = console_user(&env.ns, "history-reader", "--role=history-reader");
    let console = service_url(&client, system, "hookrelay-pg-console").await;
    let delivery = accepted.first().unwrap();
    let (_driver, browser) = signed_in(&console, &token).await;
    browser
        .goto(&format!("{console}/ns/{}/deliveries/{delivery}", env.ns))
        .await
        .unwrap();
    appears(&browser, "#phase").await;
    assert_eq!(text(&browser, "#phase").await, "Succeeded");
    let page = browser.source().await.unwrap();
    assert!(page.contains(delivery.as_str()), "the page of {delivery}");
    shot(&browser, "e2e-postgres-delivery").await;
    browser.close().await.unwrap();

    helm(&["uninstall", release, "-n", system, "--wait", "--timeout", "5m"], &[]);
    namespaces.delete(system, &DeleteParams::default()).await.unwrap();
    env.cleanup().await;
}
