//! Test harness: a real Kubernetes API server for integration tests.
//!
//! `TestEnv::new` starts the local control plane once per test run (or
//! reuses a running one), installs the CRDs and gives the test a namespace
//! of its own. With `HOOKRELAY_TEST_KUBECONFIG` set, the tests run against
//! that cluster instead (a kind cluster in `tests/e2e/kind.sh`). When the
//! control plane cannot start, the test fails with the reason: nothing is
//! ever skipped.
#![allow(dead_code)]

pub mod audit;
pub mod browser;
pub mod cpu_cap;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod proxy;
pub mod receiver;
pub mod stack;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The user the restricted identity maps to; it has no RBAC bindings unless a
/// test grants some.
pub const RESTRICTED_USER: &str = "hookrelay-restricted";

/// Where the cluster comes from.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub admin_kubeconfig: PathBuf,
    /// A kubeconfig for the restricted identity (local control plane only;
    /// elsewhere the restricted client impersonates `RESTRICTED_USER`).
    pub restricted_kubeconfig: Option<PathBuf>,
}

impl Cluster {
    /// The restricted identity's kubeconfig, for tests that start a process
    /// as that user (the local control plane writes one).
    pub fn restricted_kubeconfig(&self) -> PathBuf {
        self.restricted_kubeconfig
            .clone()
            .expect("a restricted kubeconfig (the local control plane writes one)")
    }
}

/// The cluster for this test run, started at most once per test binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        if let Ok(path) = std::env::var("HOOKRELAY_TEST_KUBECONFIG") {
            return Cluster {
                admin_kubeconfig: PathBuf::from(path),
                restricted_kubeconfig: None,
            };
        }
        controlplane_up(None)
    })
}

/// Starts (or reuses) the local control plane kept in `dir` (the shared
/// one, `None`).
fn controlplane_up(dir: Option<&Path>) -> Cluster {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/controlplane.sh");
    let mut command = Command::new("bash");
    command.arg(&script).arg("up").stderr(Stdio::inherit());
    if let Some(dir) = dir {
        command.env("HOOKRELAY_CONTROLPLANE_DIR", dir);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the local control plane did not start ({}); its output is above",
        out.status
    );
    let admin = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("controlplane.sh up prints the kubeconfig path")
            .trim(),
    );
    assert!(admin.is_file(), "kubeconfig {} does not exist", admin.display());
    let restricted = admin.with_file_name("restricted.kubeconfig");
    Cluster {
        admin_kubeconfig: admin,
        restricted_kubeconfig: Some(restricted),
    }
}

/// A control plane of one test's own, for a test that loads or caps it
/// (others sharing it would slow down); stopped when dropped.
pub struct DedicatedControlPlane {
    pub cluster: &'static Cluster,
    pub dir: PathBuf,
}

impl DedicatedControlPlane {
    pub fn start(name: &str) -> DedicatedControlPlane {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("controlplane-{name}"));
        // From an empty etcd: what a previous run left is not this run's.
        Self::stop_in(&dir);
        let cluster = Box::leak(Box::new(controlplane_up(Some(&dir))));
        DedicatedControlPlane { cluster, dir }
    }

    /// The pid of one of its processes (`kube-apiserver`, `etcd`).
    pub fn pid(&self, name: &str) -> u32 {
        let file = self.dir.join(format!("{name}.pid"));
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", file.display()))
    }

    fn stop_in(dir: &Path) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/controlplane.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("down")
            .env("HOOKRELAY_CONTROLPLANE_DIR", dir)
            .stderr(Stdio::inherit())
            .status();
    }
}

impl Drop for DedicatedControlPlane {
    fn drop(&mut self) {
        Self::stop_in(&self.dir);
    }
}

async fn client_from(path: &Path, impersonate: Option<&str>) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    if let Some(user) = impersonate {
        config.auth_info.impersonate = Some(user.to_string());
    }
    Client::try_from(config).expect("building a client")
}

/// One test's view of the cluster: an admin client and a namespace of its own.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    pub cluster: &'static Cluster,
}

impl TestEnv {
    /// Connects, installs the CRDs and creates a fresh namespace labelled
    /// with the test's name.
    pub async fn new(test: &str) -> TestEnv {
        Self::in_cluster(cluster(), test).await
    }

    /// `new` in another cluster than the shared one.
    pub async fn in_cluster(cluster: &'static Cluster, test: &str) -> TestEnv {
        let client = client_from(&cluster.admin_kubeconfig, None).await;
        install_crds(&client).await;
        let ns = format!("t-{}-{}", sanitize(test), &random_suffix());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(BTreeMap::from([("hookrelay.dev/test".to_string(), sanitize(test))])),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
        TestEnv { client, ns, cluster }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A client for the restricted identity (no RBAC bindings of its own).
    pub async fn restricted_client(&self) -> Client {
        match &self.cluster.restricted_kubeconfig {
            Some(path) => client_from(path, None).await,
            None => client_from(&self.cluster.admin_kubeconfig, Some(RESTRICTED_USER)).await,
        }
    }

    /// Deletes the namespace; call at the end of a passing test (a failing
    /// one leaves its namespace for inspection).
    pub async fn cleanup(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
    }

    /// Starts `hookrelay controller` for this namespace, logging to a file.
    pub fn start_controller(&self) -> ChildProcess {
        self.start_controller_with(&[])
    }

    /// Starts `hookrelay controller` with extra arguments.
    pub fn start_controller_with(&self, extra: &[&str]) -> ChildProcess {
        self.start_controller_as(&self.cluster.admin_kubeconfig, extra)
    }

    /// Starts `hookrelay controller` with another identity's kubeconfig.
    pub fn start_controller_as(&self, kubeconfig: &Path, extra: &[&str]) -> ChildProcess {
        let mut args = vec![
            "controller",
            "--watch-namespace",
            &self.ns,
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        ChildProcess::start(&format!("controller-{}", self.ns), kubeconfig, &args)
    }

    /// `hookrelay console` for this namespace with `kubeconfig` and `extra`
    /// arguments; the URL it prints (the one-time login link, or /login
    /// with `--auth token`).
    pub async fn start_console(&self, kubeconfig: &Path, name: &str, extra: &[&str]) -> (ChildProcess, String) {
        let mut args = vec!["console", "--listen", "127.0.0.1:0", "-n", &self.ns];
        args.extend_from_slice(extra);
        let console = ChildProcess::start(&format!("console-{name}-{}", self.ns), kubeconfig, &args);
        let login = eventually(Duration::from_secs(30), "the console's login line", || async {
            console
                .logs()
                .lines()
                .find_map(|l| l.strip_prefix("console: ").map(str::to_string))
        })
        .await;
        (console, login)
    }

    /// Starts `hookrelay ingest` for this namespace on a free loopback port
    /// and waits until it serves; `kubeconfig` defaults to the admin one.
    pub async fn start_ingest(&self, kubeconfig: Option<&Path>) -> Ingest {
        self.start_ingest_with(kubeconfig, &[]).await
    }

    /// Like `start_ingest`, with extra `hookrelay ingest` arguments.
    pub async fn start_ingest_with(&self, kubeconfig: Option<&Path>, extra: &[&str]) -> Ingest {
        let kubeconfig = kubeconfig.unwrap_or(&self.cluster.admin_kubeconfig);
        let mut args = vec![
            "ingest",
            "--watch-namespace",
            &self.ns,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let process = ChildProcess::start(&format!("ingest-{}", self.ns), kubeconfig, &args);
        let addr: String = eventually(Duration::from_secs(30), "ingest to listen", || async {
            process.log_field("ingest listening", "listen")
        })
        .await;
        let url = format!("http://{addr}");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(30), "ingest /readyz", || async {
            let ok = http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .ok()?
                .status()
                .is_success();
            ok.then_some(())
        })
        .await;
        Ingest { process, url, http }
    }
}

fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-')
        .chars()
        .take(40)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:08x}", h.finish() as u32)
}

/// Applies the CRDs from `crds/` (the committed, generated files) and waits
/// until the API server serves them.
async fn install_crds(client: &Client) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/hookrelay.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).expect("a CRD document");
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("hookrelay-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        eventually(Duration::from_secs(30), &format!("CRD {name} established"), || async {
            let crd = crds.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }
}

/// Polls `check` every 100 ms until it yields a value; panics naming `what`
/// when `timeout` passes first. Conditions, not sleeps.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match within(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 100 ms until it yields a value, or `None` once
/// `timeout` has passed (the benchmarks report that instead of failing).
pub async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `hookrelay ingest`.
pub struct Ingest {
    pub process: ChildProcess,
    pub url: String,
    pub http: reqwest::Client,
}

impl Ingest {
    /// The events URL of a hub.
    pub fn events_url(&self, ns: &str, hub: &str) -> String {
        format!("{}/v1/namespaces/{ns}/hubs/{hub}/events", self.url)
    }
}

/// A free loopback port, for a server started right after.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything `child` prints (stdout and stderr), gathered as it comes by
/// two threads, for a test to poll.
pub fn gather_output(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::Read;
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let outputs: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
    ];
    for mut out in outputs.into_iter().flatten() {
        let into = said.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
    }
    said
}

/// A command-line tool (kubectl, helm): the one built with the local
/// control plane, or the one on PATH when testing another cluster.
pub fn tool(name: &str) -> PathBuf {
    if std::env::var_os("HOOKRELAY_TEST_KUBECONFIG").is_some() {
        return PathBuf::from(name);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/controlplane.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("bin")
        .output()
        .expect("controlplane.sh bin");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name)
}

/// A `hookrelay` process started by a test; killed (by its pid) when dropped.
pub struct ChildProcess {
    child: Child,
    pub log: PathBuf,
    /// Where this process's lines begin in the (shared, appended) log.
    log_start: usize,
}

impl ChildProcess {
    pub fn start(name: &str, kubeconfig: &Path, args: &[&str]) -> ChildProcess {
        Self::start_logging(name, kubeconfig, args, "info,hookrelay=debug,kube=info")
    }

    /// `start` with `RUST_LOG=log_filter` (the benchmarks log warnings only:
    /// debug lines per delivery would be part of what they measure).
    pub fn start_logging(name: &str, kubeconfig: &Path, args: &[&str], log_filter: &str) -> ChildProcess {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{name}.log"));
        // Appending: a restarted process keeps its predecessor's lines.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let log_start = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .args(args)
            .args(["--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", log_filter)
            .env("RUST_BACKTRACE", "0")
            // The tests' handlers listen on loopback, which is denied by default.
            .env("HOOKRELAY_EGRESS_ALLOW_LOOPBACK", "true")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting hookrelay");
        ChildProcess { child, log, log_start }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of `field` in the first JSON log line of this process (not
    /// of a predecessor sharing its log file) whose message is `message`.
    pub fn log_field(&self, message: &str, field: &str) -> Option<String> {
        let logs = self.logs();
        logs.get(self.log_start..)?.lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"] == message)
                .then(|| v[field].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// Sends a signal by name (TERM, STOP, CONT) to this process, by its pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits until the process has exited; its exit status.
    pub async fn exited(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for hookrelay") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hookrelay (pid {}) did not exit within {timeout:?}",
                self.pid()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process has exited by itself.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
