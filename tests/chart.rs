//! The Helm chart: it lints and renders for default and other values, the
//! API server accepts what it renders, and the RBAC it installs is exactly
//! enough to run hookrelay — the operator runs with the chart's
//! ServiceAccount token through ingest → delivery → deactivation, and is
//! denied outside its namespaces.

mod support;

use hookrelay::resources::delivery::Phase;
use hookrelay::resources::{RetryPolicy, Webhook};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client, Config};
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use support::receiver::{Receiver, Reply};
use support::stack::{Options, Stack, WAIT, deliveries_of, spec};
use support::{TestEnv, eventually, tool};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/hookrelay")
}

/// Runs a tool with the test cluster's admin kubeconfig; panics with its
/// output if it fails. Returns stdout.
fn run(name: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut command = Command::new(tool(name));
    command
        .args(args)
        .env("KUBECONFIG", &support::cluster().admin_kubeconfig)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("running {name}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// Asserts `helm template` with `values` fails and names `field` (the
/// schema's path of the value at fault).
fn refused_render(values: &[&str], field: &str) {
    let chart = chart();
    let out = Command::new(tool("helm"))
        .args(["template", "rel", chart.to_str().unwrap()])
        .args(values)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(field),
        "{values:?} must not render, naming {field}: {stderr}"
    );
}

/// The YAML documents of a render with this `kind`.
fn documents_of_kind(rendered: &str, kind: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect()
}

#[tokio::test]
async fn chart_lints_renders_and_passes_server_side_dry_run() {
    let env = TestEnv::new("chart_lints_renders").await;
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let watched = format!("--set=watchNamespaces={{{}}}", env.ns);
    let others = [
        watched.as_str(),
        "--set=replicaCount=3",
        "--set=controller.concurrency=16",
        "--set=ingest.service.type=NodePort",
        "--set=podDisruptionBudget.minAvailable=2",
    ];
    let lint = run("helm", &["lint", "--strict", chart], None);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let mut with_others = vec!["lint", "--strict", chart, "--set=metrics.serviceMonitor.enabled=true"];
    with_others.extend(others);
    run("helm", &with_others, None);

    let default = run("helm", &["template", "rel", chart, "--namespace", &env.ns], None);
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "ServiceAccount",
        "PodDisruptionBudget",
    ] {
        assert!(
            default.contains(&format!("kind: {kind}\n")),
            "default render lacks {kind}"
        );
    }
    assert!(default.contains("readOnlyRootFilesystem: true") && default.contains("runAsNonRoot: true"));
    // Room for the longest delivery timeout (5m) plus connect timeout (1m)
    // before a stopping leader is killed with requests in flight.
    assert!(default.contains("terminationGracePeriodSeconds: 390"), "{default}");
    assert!(default.contains("--lease-duration=15s"));
    assert!(default.contains("--egress-deny-private=false") && !default.contains("--egress-deny="));
    assert!(!default.contains("--egress-proxy") && !default.contains("HOOKRELAY_EGRESS_PROXY"));
    assert!(!default.contains("HOOKRELAY_OTLP_ENDPOINT") && !default.contains("--trace-url-template"));
    let traced = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=tracing.otlpEndpoint=http://otel-collector.observability:4318",
            "--set=console.enabled=true",
            "--set=console.traceUrlTemplate=https://jaeger.example/trace/{traceId}",
        ],
        None,
    );
    assert_eq!(
        traced
            .matches("name: HOOKRELAY_OTLP_ENDPOINT\n              value: \"http://otel-collector.observability:4318\"")
            .count(),
        2,
        "the controller and ingest export spans: {traced}"
    );
    assert!(traced.contains("- \"--trace-url-template=https://jaeger.example/trace/{traceId}\""));
    let proxied = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=controller.egress.proxy=http://egress.infra:3128",
            "--set=controller.egress.proxyCredentialsSecretRef.name=egress-proxy",
        ],
        None,
    );
    assert!(
        proxied.contains("- \"--egress-proxy=http://egress.infra:3128\"")
            && proxied.contains("name: HOOKRELAY_EGRESS_PROXY_CREDENTIALS")
            && proxied.contains("name: \"egress-proxy\"\n                  key: \"credentials\""),
        "{proxied}"
    );
    let mut template = vec!["template", "rel", chart, "--namespace", &env.ns];
    template.extend(others);
    let namespaced = run("helm", &template, None);
    // The operator's own rights are Roles only; the cluster-wide roles left
    // are the users' aggregated ones.
    assert!(
        !namespaced.contains("kind: ClusterRoleBinding\n"),
        "watchNamespaces binds the operator with Roles only"
    );
    assert_eq!(
        namespaced.matches("kind: ClusterRole\n").count(),
        2,
        "only hookrelay-view and hookrelay-edit are ClusterRoles"
    );
    assert!(namespaced.contains(&format!("--watch-namespace={}", env.ns)));
    let monitor = run(
        "helm",
        &["template", "rel", chart, "--set=metrics.serviceMonitor.enabled=true"],
        None,
    );
    assert!(monitor.contains("kind: ServiceMonitor"));
    let console = run("helm", &["template", "rel", chart, "--set=console.enabled=true"], None);
    assert!(console.contains("name: rel-hookrelay-console") && console.contains("--auth=token"));
    assert!(!default.contains("rel-hookrelay-console"), "the console is opt-in");
    assert!(
        default.contains("aggregate-to-view"),
        "the aggregated roles render by default"
    );

    // The Postgres store: the URL comes from the named Secret, never a value.
    let postgres = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=store.type=postgres",
            "--set=store.postgres.urlSecretRef.name=relay-db",
            "--set=store.postgres.caSecretRef.name=relay-db-ca",
        ],
        None,
    );
    assert!(
        postgres.contains("HOOKRELAY_POSTGRES_URL") && postgres.contains("name: \"relay-db\""),
        "{postgres}"
    );
    // The CA bundle for sslmode=require, mounted from its Secret in every
    // container that reads the store (controller, ingest, api).
    assert!(
        postgres.contains("secretName: \"relay-db-ca\"")
            && postgres.matches("HOOKRELAY_POSTGRES_CA_FILE").count() == 3
            && postgres.matches("mountPath: /etc/hookrelay/postgres-ca").count() == 3,
        "{postgres}"
    );
    // With the Postgres store, history is served through the Kubernetes API.
    assert!(
        postgres.contains("kind: APIService") && postgres.contains("- api\n"),
        "{postgres}"
    );
    // Its serving certificate from cert-manager, when asked: a Certificate
    // (from a self-signed Issuer unless one is named) whose CA the injector
    // puts in the APIService, and no certificate of the chart's own.
    let cert_manager = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=store.type=postgres",
            "--set=store.postgres.urlSecretRef.name=relay-db",
            "--set=historyApi.certManager.enabled=true",
        ],
        None,
    );
    assert!(
        cert_manager.contains("kind: Certificate")
            && cert_manager.contains("selfSigned: {}")
            && cert_manager.contains("cert-manager.io/inject-ca-from: default/rel-hookrelay-api")
            && !cert_manager.contains("caBundle:")
            && !cert_manager.contains("type: kubernetes.io/tls"),
        "{cert_manager}"
    );
    // The console holds no store credentials: users read history through
    // the Kubernetes API (the history API, served beside ingest).
    let console_postgres = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=console.enabled=true",
            "--set=store.type=postgres",
            "--set=store.postgres.urlSecretRef.name=relay-db",
            "--set=store.postgres.caSecretRef.name=relay-db-ca",
        ],
        None,
    );
    let console_deployment = console_postgres
        .split("\n---")
        .find(|doc| doc.contains("kind: Deployment") && doc.contains("name: rel-hookrelay-console"))
        .expect("the console Deployment");
    assert!(
        !console_deployment.contains("HOOKRELAY_POSTGRES")
            && !console_deployment.contains("postgres-ca")
            && console_postgres.contains("kind: APIService"),
        "{console_deployment}"
    );
    refused_render(&["--set=store.type=postgres"], "/store/postgres/urlSecretRef/name");

    // The API server accepts every object (the ClusterRole objects too).
    // Ingest exposed to a CMS outside the cluster: only the events API,
    // with the TLS certificate named; a host is required.
    let exposed = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=ingest.ingress.enabled=true",
            "--set=ingest.ingress.host=hooks.example.com",
            "--set=ingest.ingress.tls.secretName=hooks-tls",
            "--set=ingest.ingress.className=nginx",
            "--set=console.enabled=true",
            "--set=console.ingress.enabled=true",
            "--set=console.ingress.host=console.example.com",
        ],
        None,
    );
    // And the console, under its own host, at /.
    assert_eq!(exposed.matches("kind: Ingress").count(), 2, "{exposed}");
    assert!(exposed.contains("host: \"console.example.com\"") && exposed.contains("name: rel-hookrelay-console\n"));
    assert!(
        exposed.contains("kind: Ingress")
            && exposed.contains("path: /v1/")
            && exposed.contains("secretName: hooks-tls")
            && exposed.contains("ingressClassName: nginx")
            && exposed.contains("name: rel-hookrelay-ingest"),
        "{exposed}"
    );
    assert!(!default.contains("kind: Ingress"), "no Ingress unless asked");
    refused_render(&["--set=ingest.ingress.enabled=true"], "/ingest/ingress/host");

    // Or through a Gateway (Gateway API): an HTTPRoute per Service, attached
    // to the Gateway named; one is required.
    let routed = run(
        "helm",
        &[
            "template",
            "rel",
            chart,
            "--set=ingest.httpRoute.enabled=true",
            "--set=ingest.httpRoute.parentRefs[0].name=public",
            "--set=ingest.httpRoute.parentRefs[0].sectionName=https",
            "--set=ingest.httpRoute.hostnames={hooks.example.com}",
            "--set=console.enabled=true",
            "--set=console.httpRoute.enabled=true",
            "--set=console.httpRoute.parentRefs[0].name=public",
        ],
        None,
    );
    let routes = documents_of_kind(&routed, "HTTPRoute");
    assert_eq!(routes.len(), 2, "{routed}");
    let ingest_route = &routes[0]["spec"];
    assert_eq!(ingest_route["parentRefs"][0]["sectionName"].as_str(), Some("https"));
    assert_eq!(ingest_route["hostnames"][0].as_str(), Some("hooks.example.com"));
    assert_eq!(
        ingest_route["rules"][0]["matches"][0]["path"]["value"].as_str(),
        Some("/v1/")
    );
    assert_eq!(
        ingest_route["rules"][0]["backendRefs"][0]["name"].as_str(),
        Some("rel-hookrelay-ingest")
    );
    assert_eq!(
        routes[1]["spec"]["rules"][0]["backendRefs"][0]["name"].as_str(),
        Some("rel-hookrelay-console")
    );
    assert!(!default.contains("kind: HTTPRoute"), "no HTTPRoute unless asked");
    refused_render(&["--set=ingest.httpRoute.enabled=true"], "/ingest/httpRoute/parentRefs");
    install_gateway_api_crds();

    // The CRDs come with the release (so upgrades upgrade them), exactly the
    // generated ones, kept on uninstall unless asked otherwise, and left out
    // when another release or tool owns them.
    let generated = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/hookrelay.yaml")).unwrap();
    let generated = documents_of_kind(&generated, "CustomResourceDefinition");
    let rendered = documents_of_kind(&default, "CustomResourceDefinition");
    assert_eq!(rendered.len(), 3);
    for (rendered, generated) in rendered.iter().zip(&generated) {
        assert_eq!(
            rendered["spec"], generated["spec"],
            "{:?}",
            generated["metadata"]["name"]
        );
        assert_eq!(
            rendered["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep")
        );
        assert_eq!(
            rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"].as_str(),
            Some("Helm")
        );
    }
    let unkept = run("helm", &["template", "rel", chart, "--set=crds.keep=false"], None);
    let unkept = documents_of_kind(&unkept, "CustomResourceDefinition");
    assert!(
        unkept.len() == 3
            && unkept
                .iter()
                .all(|crd| crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null())
    );
    let without = run("helm", &["template", "rel", chart, "--set=crds.install=false"], None);
    assert!(documents_of_kind(&without, "CustomResourceDefinition").is_empty());

    for rendered in [
        &default,
        &namespaced,
        &console,
        &postgres,
        &console_postgres,
        &exposed,
        &routed,
    ] {
        let out = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(rendered));
        assert!(
            out.contains("deployment.apps/rel-hookrelay created (server dry run)"),
            "{out}"
        );
    }

    // A bad value fails with a message naming it.
    refused_render(&["--set=replicaCount=many"], "replicaCount");
    // A cluster older than the CRDs' validation rules allow.
    refused_render(&["--kube-version=1.27.0"], "kubeVersion: >=1.28.0-0");
    env.cleanup().await;
}

/// CRDs of other projects from their Go modules (the files under `dir` of
/// the module at `version`), applied and established, so the API server
/// checks what the chart and the examples make for those projects.
fn install_crds_from_go_module(module: &str, dir: &str, files: &[&str]) {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("go mod download {module}: {e}"));
    let downloaded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "go mod download {module}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let root = downloaded["Dir"]
        .as_str()
        .unwrap_or_else(|| panic!("go mod download {module}: {downloaded}"));
    for file in files {
        let crd = format!("{root}/{dir}/{file}.yaml");
        run(
            "kubectl",
            &["apply", "--server-side", "--force-conflicts", "-f", &crd],
            None,
        );
        let name = file
            .rsplit_once('_')
            .map(|(group, plural)| format!("crd/{plural}.{group}"))
            .unwrap();
        // Polled, and read as JSON: `kubectl wait --for=condition` and a
        // jsonpath filter both fail, instead of waiting, while a CRD just
        // created has no conditions yet.
        let established = || {
            let crd: serde_json::Value =
                serde_json::from_str(&run("kubectl", &["get", &name, "-o", "json"], None)).unwrap();
            crd["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !established() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} not Established within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn install_gateway_api_crds() {
    install_crds_from_go_module(
        "sigs.k8s.io/gateway-api@v1.4.1",
        "config/crd/standard",
        &["gateway.networking.k8s.io_httproutes"],
    );
}

/// Flux 2.7's: the examples under `examples/flux/` use them.
fn install_flux_crds() {
    const BASES: &str = "config/crd/bases";
    install_crds_from_go_module(
        "github.com/fluxcd/source-controller@v1.7.0",
        BASES,
        &[
            "source.toolkit.fluxcd.io_ocirepositories",
            "source.toolkit.fluxcd.io_gitrepositories",
        ],
    );
    install_crds_from_go_module(
        "github.com/fluxcd/helm-controller@v1.4.0",
        BASES,
        &["helm.toolkit.fluxcd.io_helmreleases"],
    );
    install_crds_from_go_module(
        "github.com/fluxcd/kustomize-controller@v1.7.3",
        BASES,
        &["kustomize.toolkit.fluxcd.io_kustomizations"],
    );
}

/// A kubeconfig for a ServiceAccount, with a token from the TokenRequest API.
async fn service_account_kubeconfig(client: &Client, ns: &str, name: &str, dir: &Path) -> PathBuf {
    let token = support::stack::service_account_token(client, ns, name).await;
    let mut config = Kubeconfig::read_from(&support::cluster().admin_kubeconfig).unwrap();
    for auth in &mut config.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            *info = kube::config::AuthInfo {
                token: Some(token.clone().into()),
                ..Default::default()
            };
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{ns}-{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// Every manifest under `examples/` (the docs include them) is one the API
/// server takes.
#[tokio::test]
async fn every_example_manifest_applies() {
    let env = TestEnv::new("examples_apply").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut applied = 0;
    let manifests = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("payloads")).unwrap())
        .chain(std::fs::read_dir(dir.join("tenant")).unwrap());
    for entry in manifests {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = run(
                "kubectl",
                &["apply", "--dry-run=server", "-n", &env.ns, "-f", path.to_str().unwrap()],
                None,
            );
            assert!(out.contains("(server dry run)"), "{}: {out}", path.display());
            applied += 1;
        }
    }
    assert!(applied >= 8, "the examples were found ({applied})");

    // Flux's objects (into the test's namespace: they name namespaces of a
    // real cluster), and the values the HelmRelease passes render the chart.
    install_flux_crds();
    let flux = std::fs::read_dir(dir.join("flux")).unwrap();
    let mut releases = 0;
    for path in flux.map(|entry| entry.unwrap().path()) {
        let text = std::fs::read_to_string(&path).unwrap();
        for mut object in
            serde_yaml::Deserializer::from_str(&text).map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        {
            object["metadata"].as_mapping_mut().unwrap().remove("namespace");
            let manifest = serde_yaml::to_string(&object).unwrap();
            let out = run(
                "kubectl",
                &["apply", "--dry-run=server", "-n", &env.ns, "-f", "-"],
                Some(&manifest),
            );
            assert!(out.contains("(server dry run)"), "{}: {out}", path.display());
            if object["kind"].as_str() == Some("HelmRelease") {
                let values = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-helmrelease-values.yaml", env.ns));
                std::fs::write(&values, serde_yaml::to_string(&object["spec"]["values"]).unwrap()).unwrap();
                let rendered = run(
                    "helm",
                    &[
                        "template",
                        "rel",
                        chart().to_str().unwrap(),
                        "-f",
                        values.to_str().unwrap(),
                    ],
                    None,
                );
                assert!(
                    rendered.contains("kind: Ingress") && rendered.contains("kind: PrometheusRule"),
                    "{rendered}"
                );
                releases += 1;
            }
        }
    }
    assert_eq!(releases, 1, "examples/flux/helmrelease.yaml was checked");
    env.cleanup().await;
}

#[tokio::test]
async fn the_charts_rbac_is_enough_and_no_more() {
    let env = TestEnv::new("charts_rbac_is_enough").await;
    let admin = env.client.clone();
    let release_ns = format!("{}-rel", env.ns);
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(release_ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();

    let chart = chart();
    let watched = format!("--set=watchNamespaces={{{}}}", env.ns);
    run(
        "helm",
        &[
            "install",
            "rel",
            chart.to_str().unwrap(),
            "--namespace",
            &release_ns,
            &watched,
            // Cluster-wide and shared by every release: the console test
            // applies the roles on its own, every test the CRDs.
            "--set=rbac.aggregatedRoles=false",
            "--set=crds.install=false",
        ],
        None,
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &release_ns);
    accounts.get("rel-hookrelay").await.expect("the chart's ServiceAccount");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubeconfigs");
    let kubeconfig = service_account_kubeconfig(&admin, &release_ns, "rel-hookrelay", &dir).await;
    let options = Options {
        controller_kubeconfig: Some(kubeconfig.clone()),
        ingest_kubeconfig: Some(kubeconfig.clone()),
        controller_args: vec![format!("--leader-election-namespace={release_ns}")],
        env: Some(env),
        ..Options::default()
    };
    let stack = Stack::start_with("charts_rbac_is_enough", options).await;

    // Delivered, then deactivated after its retries — as the chart's identity.
    let receiver = Receiver::start().await;
    receiver.set_default("/failing", Reply::status(404));
    let event = "dynamic-content.edition.scheduled";
    stack.webhook("ok", spec(receiver.url("/ok"), &[event])).await;
    let mut failing = spec(receiver.url("/failing"), &[event]);
    failing.retry = Some(RetryPolicy {
        max_retries: Some(1),
        window: Some("2s".parse().unwrap()),
    });
    stack.webhook("failing", failing).await;
    let (status, answer) = stack.post(json!({ "name": event, "payload": {} })).await;
    assert_eq!(status, 202, "{answer}");
    for name in deliveries_of(&answer) {
        let done = stack.delivery_done(&name).await.status.unwrap();
        let expected = if name.starts_with("ok-") {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
        assert_eq!(done.phase, expected, "{name}");
    }
    let webhooks: Api<Webhook> = stack.env.api();
    eventually(WAIT, "the failing webhook deactivated", || async {
        let w = webhooks.get("failing").await.ok()?;
        (!w.spec.active && w.status?.deactivation.is_some()).then_some(())
    })
    .await;
    let logs = stack.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "a request was forbidden:\n{logs}"
    );

    // Outside its namespaces the identity is denied.
    let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig).unwrap(), &Default::default())
        .await
        .unwrap();
    let as_chart = Client::try_from(config).unwrap();
    let elsewhere: Api<Secret> = Api::namespaced(as_chart.clone(), "default");
    match elsewhere.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("listing Secrets outside the watched namespace must be forbidden, got {other:?}"),
    }
    let hubs_elsewhere: Api<hookrelay::resources::Hub> = Api::namespaced(as_chart, &release_ns);
    assert!(matches!(hubs_elsewhere.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403));

    run("helm", &["uninstall", "rel", "--namespace", &release_ns], None);
    let _ = namespaces.delete(&release_ns, &DeleteParams::default()).await;
    stack.cleanup().await;
}

#[tokio::test]
async fn the_chart_works_as_a_subchart_and_its_escape_hatches_render_where_they_belong() {
    let env = TestEnv::new("chart_subchart_escape_hatches").await;
    // An umbrella chart that includes hookrelay: Helm passes `global` to it.
    let umbrella = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("umbrella-{}", env.ns));
    std::fs::create_dir_all(&umbrella).unwrap();
    std::fs::write(
        umbrella.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: hookrelay\n    version: 0.1.0\n    repository: file://{}\n",
            chart().display()
        ),
    )
    .unwrap();
    std::fs::write(
        umbrella.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\nhookrelay:\n  replicaCount: 1\n",
    )
    .unwrap();
    run("helm", &["dependency", "build", umbrella.to_str().unwrap()], None);
    let namespace = format!("--namespace={}", env.ns);
    let rendered = run(
        "helm",
        &["template", "rel", umbrella.to_str().unwrap(), &namespace],
        None,
    );
    assert!(rendered.contains("kind: Deployment"));
    let out = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    assert!(out.contains("(server dry run)"), "{out}");

    // Each escape hatch lands where it belongs.
    let chart = chart();
    let digest = format!("sha256:{}", "a".repeat(64));
    let hatches = run(
        "helm",
        &[
            "template",
            "rel",
            chart.to_str().unwrap(),
            &namespace,
            "--set=networkPolicy.enabled=true",
            "--set=priorityClassName=system-cluster-critical",
            "--set=topologySpreadConstraints[0].maxSkew=1",
            "--set=topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "--set=topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "--set=extraEnv[0].name=HTTPS_PROXY_NOTE",
            "--set=extraEnv[0].value=unused",
            "--set=extraArgs={--log-format=text}",
            "--set=controller.extraArgs={--concurrency=7}",
            "--set=ingest.extraArgs={--request-timeout=9s}",
            &format!("--set=image.digest={digest}"),
            "--set=nameOverride=relay",
            "--set=fullnameOverride=platform-relay",
        ],
        None,
    );
    let deployment = hatches
        .split("\n---")
        .find(|d| d.contains("kind: Deployment") && d.contains("name: platform-relay\n"))
        .expect("the Deployment, renamed");
    assert!(deployment.contains("priorityClassName: system-cluster-critical"));
    assert!(deployment.contains("topologySpreadConstraints:") && deployment.contains("topology.kubernetes.io/zone"));
    assert_eq!(
        deployment.matches("- name: HTTPS_PROXY_NOTE").count(),
        2,
        "extraEnv in both containers"
    );
    assert_eq!(
        deployment.matches("- \"--log-format=text\"").count(),
        2,
        "extraArgs in both containers"
    );
    // Each container's own extra arguments go to it alone.
    let (controller, ingest) = deployment.split_once("- name: ingest").expect("two containers");
    assert!(controller.contains("\"--concurrency=7\"") && !controller.contains("--request-timeout=9s"));
    assert!(ingest.contains("\"--request-timeout=9s\"") && !ingest.contains("--concurrency=7"));
    assert!(deployment.contains(&format!("image: ghcr.io/hookrelay/hookrelay@{digest}")));
    assert!(deployment.contains("app.kubernetes.io/name: relay"));
    assert!(hatches.contains("kind: NetworkPolicy"));
    let out = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&hatches));
    assert!(
        out.contains("networkpolicy.networking.k8s.io/platform-relay created (server dry run)"),
        "{out}"
    );
    // Two replicas by default: spread over nodes unless told otherwise.
    let default = run("helm", &["template", "rel", chart.to_str().unwrap()], None);
    assert!(default.contains("podAntiAffinity:") && default.contains("kubernetes.io/hostname"));
    let single = run(
        "helm",
        &["template", "rel", chart.to_str().unwrap(), "--set=replicaCount=1"],
        None,
    );
    assert!(!single.contains("podAntiAffinity:"));
    env.cleanup().await;
}
