//! End-to-end benchmark (`make bench`): release builds of `hookrelay
//! controller` and `hookrelay ingest` against a local control plane with
//! etcd fsync on, a fast receiver on 127.0.0.1, and the API server's own
//! request counters. Prints a table and writes `target/bench/report.md`.
//!
//! Every load loop is bounded in count and time; all traffic stays on loopback.
//! `HOOKRELAY_BENCH_PHASES` picks phases (the throughput phase always runs),
//! `HOOKRELAY_BENCH_BACKPRESSURE` sets ingest's `--backpressure-latency`.

// The tests' harness: their polling helper and child processes.
#[path = "../tests/support/mod.rs"]
mod support;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use futures::StreamExt;
use hookrelay::resources::delivery::{DeliverySpec, EventRef};
use hookrelay::resources::hub::{DeliverySettings, HubSpec, RetentionPolicy};
use hookrelay::resources::webhook::WebhookSpec;
use hookrelay::resources::{Delivery, Hub, Webhook};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EVENTS: usize = 5_000;
/// Deliveries pending in the backlog phase.
const BACKLOG: usize = 100_000;
const CONCURRENCY: usize = 32;
/// Events of each store's burst to one webhook: long enough that a backlog
/// growing through it shows in the delivered rate and latency.
const BURST: usize = 10_000;
/// Requests the load driver sends straight to the receiver (its ceiling).
const DIRECT: usize = 20_000;
const PHASE_LIMIT: Duration = Duration::from_secs(600);
const EVENT: &str = "dynamic-content.content-item.updated";

/// Arrival time per `webhook-id`, per path; and delays per path.
#[derive(Default)]
struct Book {
    arrivals: HashMap<String, Instant>,
    delays: HashMap<String, Duration>,
    count: usize,
    /// Paths starting with this answer 503 until then, with a Retry-After
    /// pointing just past it (spread over 30 s): a handler that is down.
    down: Option<(String, Instant)>,
    /// Requests answered 503 while down, and 200 after, on those paths.
    refused: usize,
    recovered: usize,
    last_recovered: Option<Instant>,
}

type Receiver = Arc<Mutex<Book>>;

async fn receive(State(book): State<Receiver>, uri: Uri, headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (delay, retry_after) = {
        let mut b = book.lock().unwrap();
        b.count += 1;
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        b.arrivals.entry(id).or_insert_with(Instant::now);
        let now = Instant::now();
        let mut retry_after = None;
        if let Some((prefix, back_at)) = b.down.clone()
            && uri.path().starts_with(&prefix)
        {
            if now < back_at {
                b.refused += 1;
                retry_after = Some(back_at.duration_since(now).as_secs() + 1 + (b.refused % 30) as u64);
            } else {
                b.recovered += 1;
                b.last_recovered = Some(now);
            }
        }
        (b.delays.get(uri.path()).copied(), retry_after)
    };
    if let Some(seconds) = retry_after {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", seconds.to_string())],
            "down",
        )
            .into_response();
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    "ok".into_response()
}

/// A `hookrelay` process, started (and stopped when dropped) as the tests
/// start theirs.
struct Proc(support::ChildProcess);

impl Proc {
    /// Peak resident set (KiB) and CPU seconds, from /proc.
    fn usage(&self) -> (u64, f64) {
        usage(self.0.pid())
    }
}

/// Peak resident set (KiB) and CPU seconds of any process, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm, ticks / 100.0)
}

/// CPU seconds of a Postgres server: the postmaster with the backends it
/// reaped, plus those still running.
fn postgres_cpu(postmaster: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{postmaster}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let own: f64 = fields.get(11..15).map(|f| f.iter().sum()).unwrap_or(0.0) / 100.0;
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat.rsplit(')').next().unwrap_or("").split_whitespace().nth(1);
            parent == Some(postmaster.to_string().as_str())
        })
        .map(|pid| usage(pid).1)
        .sum();
    own + children
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The benchmark's own kube-apiserver and etcd, for their CPU and memory.
struct ControlPlane {
    dir: PathBuf,
    kubectl: PathBuf,
}

impl ControlPlane {
    fn pid(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU seconds of kube-apiserver so far.
    fn apiserver_cpu(&self) -> f64 {
        usage(self.pid("kube-apiserver")).1
    }

    /// Peak RSS (MiB) of kube-apiserver and etcd, and etcd's database size (MiB).
    fn memory(&self) -> (f64, f64, f64) {
        let db = std::fs::metadata(self.dir.join("etcd/member/snap/db"))
            .map(|m| m.len())
            .unwrap_or(0);
        (
            usage(self.pid("kube-apiserver")).0 as f64 / 1024.0,
            usage(self.pid("etcd")).0 as f64 / 1024.0,
            db as f64 / 1048576.0,
        )
    }

    /// With HOOKRELAY_BENCH_PROFILE set: a CPU profile of kube-apiserver over
    /// the next `seconds`, saved as target/bench/NAME.pprof (read it with
    /// `go tool pprof -top target/bench/NAME.pprof`).
    fn profile(&self, out: &Path, name: &str, seconds: u32) -> Option<std::thread::JoinHandle<()>> {
        std::env::var_os("HOOKRELAY_BENCH_PROFILE")?;
        let (kubectl, file) = (self.kubectl.clone(), out.join(format!("{name}.pprof")));
        let kubeconfig = self.dir.join("admin.kubeconfig");
        Some(std::thread::spawn(move || {
            let output = Command::new(kubectl)
                .env("KUBECONFIG", kubeconfig)
                .args(["get", "--raw", &format!("/debug/pprof/profile?seconds={seconds}")])
                .output();
            if let Ok(o) = output {
                let _ = std::fs::write(&file, o.stdout);
                println!("profile written to {}", file.display());
            }
        }))
    }
}

struct Bench {
    client: Client,
    kubeconfig: PathBuf,
    http: reqwest::Client,
    receiver: Receiver,
    receiver_addr: std::net::SocketAddr,
    report: Vec<(String, String)>,
}

/// Runs `job(0..count)` on `CONCURRENCY` tasks, each taking the next index,
/// within `PHASE_LIMIT`; returns the time it took.
async fn bounded_parallel<F, Fut>(count: usize, job: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, job) = (next.clone(), job.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= count || started.elapsed() > PHASE_LIMIT {
                        break;
                    }
                    job(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl Bench {
    fn note(&mut self, what: &str, value: String) {
        println!("{what:<58} {value}");
        self.report.push((what.to_string(), value));
    }

    fn note_all(&mut self, rows: Vec<(String, String)>) {
        for (what, value) in rows {
            self.note(&what, value);
        }
    }

    async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns).await.expect("namespace");
    }

    /// Starts controller and ingest for `ns`; returns them and ingest's URL and controller metrics URL.
    fn start(&self, ns: &str) -> (Proc, Proc, String, String) {
        self.start_with(ns, &[])
    }

    /// `start` with extra arguments for both (e.g. the store).
    fn start_with(&self, ns: &str, extra: &[String]) -> (Proc, Proc, String, String) {
        // Warnings only: debug lines per delivery would be part of what is measured.
        self.start_logging(ns, extra, "warn")
    }

    /// `start_with`, logging what `log_filter` asks.
    fn start_logging(&self, ns: &str, extra: &[String], log_filter: &str) -> (Proc, Proc, String, String) {
        let (metrics, ingest) = (support::free_port(), support::free_port());
        let spawn = |args: Vec<String>, log: &str| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc(support::ChildProcess::start_logging(
                log,
                &self.kubeconfig,
                &args,
                log_filter,
            ))
        };
        let controller = spawn(
            vec![
                "controller".into(),
                format!("--namespace={ns}"),
                format!("--metrics-listen=127.0.0.1:{metrics}"),
                "--leader-elect=false".into(),
                // A webhook gets at most a quarter of the global limit: 32,
                // as the hub below asks.
                "--concurrency=128".into(),
            ]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect(),
            &format!("bench-controller-{ns}"),
        );
        // HOOKRELAY_BENCH_BACKPRESSURE=0s compares a run without backpressure.
        let backpressure = std::env::var("HOOKRELAY_BENCH_BACKPRESSURE")
            .ok()
            .map(|latency| format!("--backpressure-latency={latency}"));
        let ingest_proc = spawn(
            vec![
                "ingest".into(),
                format!("--namespace={ns}"),
                format!("--listen=127.0.0.1:{ingest}"),
                "--metrics-listen=127.0.0.1:0".into(),
            ]
            .into_iter()
            .chain(backpressure)
            .chain(extra.iter().cloned())
            .collect(),
            &format!("bench-ingest-{ns}"),
        );
        (
            controller,
            ingest_proc,
            format!("http://127.0.0.1:{ingest}"),
            format!("http://127.0.0.1:{metrics}"),
        )
    }

    async fn wait_ready(&self, url: &str) {
        support::within(Duration::from_secs(60), || async {
            let r = self.http.get(format!("{url}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
        .expect("ready");
    }

    async fn hub(&self, ns: &str, custom: Vec<String>) -> String {
        self.hub_keeping(ns, custom, 10_000).await
    }

    async fn hub_keeping(&self, ns: &str, custom: Vec<String>, keep: u32) -> String {
        self.hub_with(ns, custom, keep, 32).await
    }

    async fn hub_with(&self, ns: &str, custom: Vec<String>, keep: u32, concurrency: u32) -> String {
        let spec = HubSpec {
            label: "Bench".into(),
            // The load is the point here: no rate limit in the way.
            ingest: Some(hookrelay::resources::hub::IngestSettings {
                token_secret_ref: None,
                verify: vec![],
                rate_limit: Some(hookrelay::resources::hub::RateLimit {
                    events_per_second: Some(10_000),
                    burst: Some(100_000),
                }),
            }),
            custom_events: custom,
            retry: None,
            delivery: Some(DeliverySettings {
                concurrency_per_webhook: Some(concurrency),
                ..Default::default()
            }),
            retention: Some(RetentionPolicy {
                keep_per_webhook: Some(keep),
                max_age: None,
            }),
            signing: None,
            egress: None,
        };
        Api::<Hub>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &Hub::new("main", spec))
            .await
            .unwrap();
        let hubs: Api<Hub> = Api::namespaced(self.client.clone(), ns);
        let secret = support::within(Duration::from_secs(60), || async {
            hubs.get("main").await.ok()?.status?.ingest_token_secret_ref
        })
        .await
        .expect("hub token");
        let s: Secret = Api::namespaced(self.client.clone(), ns)
            .get(&secret.name)
            .await
            .unwrap();
        hookrelay::secrets::value(&s, &secret.key).unwrap().to_string()
    }

    async fn webhooks(&self, ns: &str, names: &[String], events: &[&str]) {
        let api: Api<Webhook> = Api::namespaced(self.client.clone(), ns);
        for name in names {
            let url = format!("http://{}/{name}", self.receiver_addr);
            let spec = WebhookSpec::new("main", name, &url, events);
            api.create(&PostParams::default(), &Webhook::new(name, spec))
                .await
                .unwrap();
        }
        support::within(Duration::from_secs(300), || async {
            let list = api.list(&Default::default()).await.ok()?;
            // These webhooks, not any of the namespace's: a webhook posted
            // to before it is Ready has no signing secret yet.
            let ready = list
                .items
                .iter()
                .filter(|w| names.contains(&w.name_any()))
                .filter(|w| {
                    w.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            (ready == names.len()).then_some(())
        })
        .await
        .expect("webhooks ready");
    }

    /// Requests a second the load driver moves straight to the receiver:
    /// `n` posts of an event's body, `CONCURRENCY` at once, each answered.
    async fn direct_rate(&self, n: usize) -> f64 {
        let url = format!("http://{}/direct", self.receiver_addr);
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let took = bounded_parallel(n, {
            let (http, answered) = (self.http.clone(), answered.clone());
            move |i| {
                let (http, url, answered) = (http.clone(), url.clone(), answered.clone());
                async move {
                    let payload = json!({ "id": "c-1", "label": "x".repeat(512), "version": 3 });
                    let body = json!({ "id": format!("direct-{i}"), "name": EVENT, "payload": payload });
                    let sent = http
                        .post(&url)
                        .header("webhook-id", format!("direct-{i}"))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await;
                    if let Ok(response) = sent
                        && response.status().is_success()
                        && response.bytes().await.is_ok()
                    {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
        let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(answered, n, "every direct request was answered");
        n as f64 / took.as_secs_f64()
    }

    /// Posts `n` events with `workers` workers, at `rate` per second if
    /// given (each event sent when due while a worker is free: with many
    /// workers, a sender that does not wait for slow answers); returns
    /// accept times by delivery name and the wall time. Without a rate (a
    /// bulk sender), an event refused with 429 is sent again after its
    /// Retry-After.
    #[allow(clippy::too_many_arguments)]
    async fn post(
        &self,
        ingest: &str,
        ns: &str,
        token: &str,
        name: &str,
        n: usize,
        rate: Option<u32>,
        workers: usize,
        tag: &str,
    ) -> (HashMap<String, Instant>, Duration) {
        let url = format!("{ingest}/v1/namespaces/{ns}/hubs/main/events");
        let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (http, url, token, accepted, next, retries) = (
                self.http.clone(),
                url.clone(),
                token.to_string(),
                accepted.clone(),
                next.clone(),
                retries.clone(),
            );
            let (name, tag) = (name.to_string(), tag.to_string());
            tasks.push(tokio::spawn(async move {
                let payload = json!({ "id": "c-1", "label": "x".repeat(512), "version": 3 });
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= n || started.elapsed() > PHASE_LIMIT {
                        break;
                    }
                    if let Some(r) = rate {
                        let due = started + Duration::from_secs_f64(i as f64 / r as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let body = json!({ "id": format!("{tag}-{i}"), "name": name, "payload": payload });
                    loop {
                        match send_event(&http, &url, &token, &body).await {
                            Answer::Accepted(names, at) => {
                                accepted.lock().unwrap().extend(names.into_iter().map(|d| (d, at)));
                            }
                            // A bulk sender (no rate) sends a refused event
                            // again when asked to, as a CMS does.
                            Answer::RetryAfter(wait) if rate.is_none() && started.elapsed() + wait < PHASE_LIMIT => {
                                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                            _ => {}
                        }
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let retries = retries.load(std::sync::atomic::Ordering::Relaxed);
        if retries > 0 {
            println!("  {tag}: events sent again after a 429: {retries}");
        }
        let took = started.elapsed();
        (Arc::try_unwrap(accepted).unwrap().into_inner().unwrap(), took)
    }

    /// 1,000 events of `event` at 50/s (one webhook hears it); notes the
    /// latency percentiles as `what`.
    async fn steady_latency(&mut self, ingest: &str, ns: &str, token: &str, event: &str, what: &str) {
        // Event ids unique to this call (a repeated id is not delivered again).
        let ids = format!("{event}-{}", self.report.len());
        let (steady, _) = self.post(ingest, ns, token, event, 1_000, Some(50), 1, &ids).await;
        support::within(Duration::from_secs(60), || async {
            let book = self.receiver.lock().unwrap();
            steady.keys().all(|k| book.arrivals.contains_key(k)).then_some(())
        })
        .await;
        let l = latencies(&steady, &self.receiver);
        // Which event was slowest, and when in the run: an outlier's cause.
        if let Some((id, at, took)) = {
            let book = self.receiver.lock().unwrap();
            let first = steady.values().min().copied();
            steady
                .iter()
                .filter_map(|(id, at)| Some((id, *at, book.arrivals.get(id)?.saturating_duration_since(*at))))
                .max_by_key(|(_, _, took)| *took)
                .map(|(id, at, took)| {
                    (
                        id.clone(),
                        first.map(|f| at.duration_since(f)).unwrap_or_default(),
                        took,
                    )
                })
        } {
            println!("  slowest: delivery {id}, accepted {at:?} into the run, took {took:?}");
        }
        self.note(
            what,
            format!(
                "{} / {} / {} / {}",
                ms(percentile(&l, 0.5)),
                ms(percentile(&l, 0.9)),
                ms(percentile(&l, 0.99)),
                ms(*l.last().unwrap_or(&Duration::ZERO))
            ),
        );
    }

    /// Runs `work` while each of `bystanders` is sent `rate` events a
    /// second (each when due, refused ones not again); returns its output and the
    /// report's rows for `phase`: each bystander's accept → arrival, and
    /// the API server's write latency p99 over the phase.
    async fn beside<T>(
        &self,
        phase: &str,
        bystanders: &[Bystander],
        rate: u32,
        work: impl std::future::Future<Output = T>,
    ) -> (T, Beside) {
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let before = self.write_latencies().await;
        let sent = futures::future::join_all(bystanders.iter().map(|by| {
            let running = running.clone();
            async move {
                let url = format!("{}/v1/namespaces/{}/hubs/main/events", by.ingest, by.ns);
                let (url, http, token) = (&url, &self.http, &by.token);
                let (started, mut accepted) = (Instant::now(), HashMap::new());
                let payload = json!({ "id": "c-1", "label": "x".repeat(512), "version": 3 });
                // Each event sent when due, not after the last answer (a
                // slow answer would lower the rate).
                let mut sending = futures::stream::FuturesUnordered::new();
                for i in 0.. {
                    let due = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(due.into()) => break,
                            Some(answer) = sending.next(), if !sending.is_empty() => {
                                if let Answer::Accepted(names, at) = answer {
                                    accepted.extend(names.into_iter().map(|d: String| (d, at)));
                                }
                            }
                        }
                    }
                    if !running.load(std::sync::atomic::Ordering::SeqCst) || started.elapsed() > PHASE_LIMIT {
                        break;
                    }
                    let body = json!({ "id": format!("{phase}-{}-{i}", by.ns), "name": by.event, "payload": payload });
                    sending.push(async move { send_event(http, url, token, &body).await });
                }
                while let Some(answer) = sending.next().await {
                    if let Answer::Accepted(names, at) = answer {
                        accepted.extend(names.into_iter().map(|d| (d, at)));
                    }
                }
                accepted
            }
        }));
        let work = async {
            let out = work.await;
            running.store(false, std::sync::atomic::Ordering::SeqCst);
            out
        };
        let (out, sent) = tokio::join!(work, sent);
        let after = self.write_latencies().await;
        support::within(Duration::from_secs(120), || async {
            let book = self.receiver.lock().unwrap();
            sent.iter()
                .flat_map(HashMap::keys)
                .all(|k| book.arrivals.contains_key(k))
                .then_some(())
        })
        .await;
        let mut rows = Vec::new();
        for (by, accepted) in bystanders.iter().zip(&sent) {
            let l = latencies(accepted, &self.receiver);
            rows.push((
                format!("{phase}: bystander ({}, {rate}/s) p50/p99", by.what),
                format!(
                    "{} / {} ({} accepted, {} arrived)",
                    ms(percentile(&l, 0.5)),
                    ms(percentile(&l, 0.99)),
                    accepted.len(),
                    l.len()
                ),
            ));
        }
        rows.push((
            format!("{phase}: API server write latency p99"),
            p99_between(&before, &after),
        ));
        let deliveries = sent.iter().map(HashMap::len).sum();
        (out, Beside { rows, deliveries })
    }

    /// A bystander in namespace `other`: a hub and webhook of its own,
    /// served by the same controller and ingest as the phase.
    async fn bystander_elsewhere(&self, ingest: &str, other: &str) -> Bystander {
        let token = self.hub(other, vec!["bench.bystander".into()]).await;
        self.webhooks(other, &["beside-other".into()], &["bench.bystander"])
            .await;
        Bystander::elsewhere(ingest, other, &token)
    }

    /// When every one of `accepted` has arrived at the receiver (the last
    /// arrival), within `limit`.
    async fn arrived(&self, accepted: &HashMap<String, Instant>, limit: Duration) -> Option<Instant> {
        support::within(limit, || async {
            let book = self.receiver.lock().unwrap();
            accepted
                .keys()
                .map(|k| book.arrivals.get(k).copied())
                .collect::<Option<Vec<Instant>>>()
                .map(|times| times.into_iter().max().unwrap_or_else(Instant::now))
        })
        .await
    }

    async fn metric(&self, url: &str, name: &str) -> f64 {
        let Ok(r) = self.http.get(format!("{url}/metrics")).send().await else {
            return 0.0;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the controller counted `target` succeeded deliveries.
    async fn succeeded(&self, metrics: &str, target: f64, limit: Duration) -> Option<Instant> {
        support::within(limit, || async {
            let n = self
                .metric(metrics, "hookrelay_deliveries_total{outcome=\"succeeded\"}")
                .await;
            (n >= target).then(Instant::now)
        })
        .await
    }

    /// The API server's /metrics text.
    async fn apiserver_metrics(&self) -> String {
        self.client
            .request_text(http::Request::get("/metrics").body(vec![]).unwrap())
            .await
            .unwrap_or_default()
    }

    /// The API server's write latency histogram so far (POST, PUT, PATCH of
    /// any resource): cumulative count by bucket bound (`+Inf` as "inf").
    async fn write_latencies(&self) -> HashMap<String, f64> {
        let text = self.apiserver_metrics().await;
        let mut out = HashMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_duration_seconds_bucket{"))
        {
            if !["\"POST\"", "\"PUT\"", "\"PATCH\""]
                .iter()
                .any(|v| line.contains(&format!("verb={v}")))
            {
                continue;
            }
            let Some(start) = line.find("le=\"").map(|i| i + 4) else {
                continue;
            };
            let Some(end) = line[start..].find('"') else { continue };
            let le = line[start..start + end].replace("+Inf", "inf");
            let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *out.entry(le).or_insert(0.0) += v;
        }
        out
    }

    /// API server requests so far: successful writes by resource, others
    /// by verb, code and resource.
    async fn writes(&self) -> HashMap<String, f64> {
        let text = self.apiserver_metrics().await;
        let mut out = HashMap::new();
        for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
            let label = |k: &str| {
                let start = line.find(&format!("{k}=\""))? + k.len() + 2;
                Some(line[start..start + line[start..].find('"')?].to_string())
            };
            let verb = label("verb").unwrap_or_default();
            let write = ["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&verb.as_str());
            let code = label("code").unwrap_or_default();
            // Reads and failed writes are counted apart: "GET deliveries 409".
            let prefix = if write && code.starts_with('2') {
                String::new()
            } else {
                format!("{verb} {code} ")
            };
            let resource = format!(
                "{prefix}{}{}",
                label("resource").unwrap_or_default(),
                label("subresource")
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            );
            let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *out.entry(resource).or_insert(0.0) += v;
        }
        out
    }
}

/// A webhook beside a phase's load, and where its events go.
struct Bystander {
    /// Where it is: "same hub", "another namespace".
    what: &'static str,
    ingest: String,
    ns: String,
    token: String,
    event: &'static str,
}

impl Bystander {
    fn same_hub(ingest: &str, ns: &str, token: &str) -> Bystander {
        Bystander {
            what: "same hub",
            ingest: ingest.into(),
            ns: ns.into(),
            token: token.into(),
            event: "bench.bystander",
        }
    }

    fn elsewhere(ingest: &str, ns: &str, token: &str) -> Bystander {
        Bystander {
            what: "another namespace",
            ..Bystander::same_hub(ingest, ns, token)
        }
    }
}

/// What `Bench::beside` measured: the report's rows, and the bystanders'
/// deliveries (part of the phase's API writes and CPU).
struct Beside {
    rows: Vec<(String, String)>,
    deliveries: usize,
}

/// What ingest answered to one event.
enum Answer {
    /// The deliveries it accepted, and when.
    Accepted(Vec<String>, Instant),
    /// 429: send it again after this.
    RetryAfter(Duration),
    Other,
}

/// Posts one event.
async fn send_event(http: &reqwest::Client, url: &str, token: &str, body: &serde_json::Value) -> Answer {
    let sent = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    let Ok(resp) = sent else { return Answer::Other };
    let at = Instant::now();
    if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let seconds = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(1);
        return Answer::RetryAfter(Duration::from_secs(seconds));
    }
    let answer: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default();
    match answer["deliveries"].as_array() {
        Some(names) => Answer::Accepted(
            names
                .iter()
                .map(|d| d.as_str().unwrap_or_default().to_string())
                .collect(),
            at,
        ),
        None => Answer::Other,
    }
}

/// Successful writes between two readings of `writes()`.
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> (f64, String) {
    delta_of(before, after, |k| !k.contains(' '))
}

/// Reads, watches and failed writes between two readings.
fn delta_other(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> (f64, String) {
    delta_of(before, after, |k| k.contains(' '))
}

fn delta_of(before: &HashMap<String, f64>, after: &HashMap<String, f64>, keep: impl Fn(&str) -> bool) -> (f64, String) {
    let mut parts: Vec<(String, f64)> = after
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = parts.iter().map(|(_, d)| d).sum();
    let text = parts
        .iter()
        .map(|(k, d)| format!("{k} {d:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    (total, text)
}

/// How long after being accepted each of `accepted` reached each stage the
/// controller logs (`hookrelay::stages`), p50 / p99 per stage. `clock` pairs
/// an `Instant` with the wall clock the logs use.
fn stages(logs: &str, accepted: &HashMap<String, Instant>, clock: (Instant, jiff::Timestamp)) -> String {
    let mut by_stage: HashMap<String, Vec<Duration>> = HashMap::new();
    for line in logs.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(stage), Some(name), Some(at)) =
            (v["stage"].as_str(), v["delivery"].as_str(), v["timestamp"].as_str())
        else {
            continue;
        };
        let (Some(accepted), Ok(at)) = (accepted.get(name), at.parse::<jiff::Timestamp>()) else {
            continue;
        };
        let accepted_at =
            clock.1 + jiff::SignedDuration::try_from(accepted.duration_since(clock.0)).unwrap_or_default();
        let after = Duration::try_from(at.duration_since(accepted_at)).unwrap_or_default();
        by_stage.entry(stage.to_string()).or_default().push(after);
    }
    let mut out = Vec::new();
    for stage in ["seen", "handed", "slot"] {
        let mut l = by_stage.remove(stage).unwrap_or_default();
        l.sort();
        out.push(format!(
            "{stage} {} / {}",
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99))
        ));
    }
    out.join(", ")
}

/// The p99 of the API server's write latency (POST, PUT, PATCH of any
/// resource) between two readings of its histogram, as the bucket bound.
fn p99_between(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n - before.get(le).copied().unwrap_or(0.0))))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return "no writes".into();
    };
    buckets
        .iter()
        .find(|(_, n)| *n >= total * 0.99)
        .map(|(le, _)| {
            if le.is_infinite() {
                format!("> 60 s ({total:.0} writes)")
            } else {
                format!("≤ {le} s ({total:.0} writes)")
            }
        })
        .unwrap_or_default()
}

fn latencies(accepted: &HashMap<String, Instant>, receiver: &Receiver) -> Vec<Duration> {
    let book = receiver.lock().unwrap();
    let mut l: Vec<Duration> = accepted
        .iter()
        .filter_map(|(id, at)| book.arrivals.get(id).map(|r| r.saturating_duration_since(*at)))
        .collect();
    l.sort();
    l
}

#[tokio::main]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target/bench");

    // A control plane of its own, with etcd fsync on, as in production.
    let cache = std::env::var("HOOKRELAY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hookrelay"));
    let up = Command::new("bash")
        .arg(root.join("tests/controlplane/controlplane.sh"))
        .arg("up")
        .env("HOOKRELAY_CONTROLPLANE_DIR", cache.join("bench-controlplane"))
        .env("ETCD_UNSAFE_NO_FSYNC", "false")
        .stderr(Stdio::inherit())
        .output()
        .expect("controlplane.sh");
    assert!(up.status.success(), "the control plane did not start");
    let kubeconfig = PathBuf::from(String::from_utf8_lossy(&up.stdout).lines().last().unwrap().trim());
    let bin = Command::new("bash")
        .arg(root.join("tests/controlplane/controlplane.sh"))
        .arg("bin")
        .output()
        .expect("controlplane.sh bin");
    let cp = ControlPlane {
        dir: cache.join("bench-controlplane"),
        kubectl: PathBuf::from(String::from_utf8_lossy(&bin.stdout).trim()).join("kubectl"),
    };
    // HOOKRELAY_BENCH_PHASES=throughput,backlog runs only those phases.
    let phases = std::env::var("HOOKRELAY_BENCH_PHASES").unwrap_or_default();
    let run = |phase: &str| phases.is_empty() || phases.split(',').any(|p| p.trim() == phase);
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in hookrelay::crd::all() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("hookrelay-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    for crd in hookrelay::crd::all() {
        let name = crd.name_any();
        support::within(Duration::from_secs(60), || async {
            let c = crds.get(&name).await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await
        .expect("CRDs established");
    }

    let receiver: Receiver = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(receive).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut b = Bench {
        client,
        kubeconfig,
        http: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        receiver,
        receiver_addr,
        report: vec![],
    };
    let stamp = jiff::Timestamp::now().as_second();
    println!(
        "\nhookrelay end-to-end benchmark ({} cores)\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    // 1. Throughput, 1 webhook and 10 webhooks per event.
    // One controller and ingest for two namespaces, as installed: the
    // bystanders of each phase are a webhook in the phase's hub and one in
    // another namespace.
    let (ns, other) = (format!("bench-{stamp}"), format!("bench-other-{stamp}"));
    b.namespace(&ns).await;
    b.namespace(&other).await;
    let (controller, ingest, ingest_url, metrics_url) = b.start(&format!("{ns},{other}"));
    let token = b
        .hub(
            &ns,
            vec!["bench.isolation".into(), "bench.other".into(), "bench.bystander".into()],
        )
        .await;
    b.wait_ready(&ingest_url).await;
    b.webhooks(&ns, &["w0".into()], &[EVENT]).await;
    b.webhooks(&ns, &["beside".into()], &["bench.bystander"]).await;
    let bystanders = [
        Bystander::same_hub(&ingest_url, &ns, &token),
        b.bystander_elsewhere(&ingest_url, &other).await,
    ];

    let before = b.writes().await;
    let cpu_before = cp.apiserver_cpu();
    // Every process's CPU, as in the Postgres phase.
    let every_cpu = || {
        [
            controller.usage().1,
            ingest.usage().1,
            cp.apiserver_cpu() + usage(cp.pid("etcd")).1,
        ]
    };
    let every_before = every_cpu();
    let profile = cp.profile(&out_dir, "apiserver-deliveries", 10);
    let ((accepted, took, done), beside) = b
        .beside("throughput", &bystanders, 10, async {
            let (accepted, took) = b
                .post(&ingest_url, &ns, &token, EVENT, BURST, None, CONCURRENCY, "t1")
                .await;
            let done = b.arrived(&accepted, PHASE_LIMIT).await;
            (accepted, took, done)
        })
        .await;
    // The bystanders' deliveries are part of the API server's work.
    let all_deliveries = (accepted.len() + beside.deliveries).max(1) as f64;
    let delivery_cpu = (cp.apiserver_cpu() - cpu_before) * 1000.0 / all_deliveries;
    let every_used: Vec<f64> = every_cpu()
        .iter()
        .zip(every_before)
        .map(|(after, before)| (after - before) * 1000.0 / all_deliveries)
        .collect();
    if let Some(p) = profile {
        let _ = p.join();
    }
    tokio::time::sleep(hookrelay::delivery::history::FLUSH_INTERVAL * 3).await;
    let after = b.writes().await;
    let (writes, breakdown) = delta(&before, &after);
    let (others, other_breakdown) = delta_other(&before, &after);
    let ingest_rate = accepted.len() as f64 / took.as_secs_f64();
    let first_accept = accepted.values().min().copied();
    let delivery_rate = match (done, first_accept) {
        (Some(at), Some(first)) => accepted.len() as f64 / at.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    b.note(
        "events accepted/s, 1 webhook (10,000 events, 32 clients)",
        format!("{ingest_rate:.0}"),
    );
    b.note("deliveries completed/s, 1 webhook", format!("{delivery_rate:.0}"));
    b.note(
        "CPU s per 1,000 deliveries (all processes)",
        format!("{:.2}", every_used.iter().sum::<f64>()),
    );
    b.note(
        "  of which controller / ingest / kube-apiserver + etcd",
        every_used
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    let per_delivery = writes / all_deliveries;
    b.note("API writes per delivery", format!("{per_delivery:.2}"));
    b.note("  writes by resource", breakdown);
    b.note(
        "  other API requests (verb, code, resource)",
        format!("{others:.0}: {other_breakdown}"),
    );
    let saturated = latencies(&accepted, &b.receiver);
    b.note(
        "latency accepted → received at saturation p50/p90/p99/max",
        format!(
            "{} / {} / {} / {}",
            ms(percentile(&saturated, 0.5)),
            ms(percentile(&saturated, 0.9)),
            ms(percentile(&saturated, 0.99)),
            ms(*saturated.last().unwrap_or(&Duration::ZERO))
        ),
    );
    b.note_all(beside.rows);

    // Raw creates of a Delivery-sized object, same concurrency, one client,
    // in a namespace no controller watches: the ceiling.
    let raw_ns = format!("bench-raw-{stamp}");
    b.namespace(&raw_ns).await;
    let raw: Api<Delivery> = Api::namespaced(b.client.clone(), &raw_ns);
    let sample = Delivery::new(
        "x",
        DeliverySpec {
            webhook: "w0".into(),
            hub: "main".into(),
            event: EventRef {
                id: "e".into(),
                name: EVENT.into(),
                received_at: MicroTime(jiff::Timestamp::now()),
                trace: None,
            },
            payload: json!({ "id": "c-1", "label": "x".repeat(512), "version": 3 }).to_string(),
        },
    );
    let cpu_before = cp.apiserver_cpu();
    let profile = cp.profile(&out_dir, "apiserver-creates", 5);
    let created = Arc::new(Mutex::new(Vec::with_capacity(EVENTS)));
    let raw_took = bounded_parallel(EVENTS, {
        let (raw, created) = (raw.clone(), created.clone());
        move |i| {
            let (raw, created, mut d) = (raw.clone(), created.clone(), sample.clone());
            async move {
                d.metadata.name = Some(format!("raw-{i}"));
                if let Ok(stored) = raw.create(&PostParams::default(), &d).await {
                    created
                        .lock()
                        .unwrap()
                        .push((stored.name_any(), stored.resource_version()));
                }
            }
        }
    })
    .await;
    assert_eq!(created.lock().unwrap().len(), EVENTS, "every raw create succeeded");
    let raw_rate = EVENTS as f64 / raw_took.as_secs_f64();
    let raw_cpu = (cp.apiserver_cpu() - cpu_before) * 1000.0 / EVENTS as f64;
    if let Some(p) = profile {
        let _ = p.join();
    }
    b.note(
        "raw Delivery creates/s (one client, 32 concurrent)",
        format!("{raw_rate:.0}"),
    );
    b.note(
        "deliveries/s ÷ raw creates/s",
        format!("{:.2}", delivery_rate / raw_rate),
    );
    // The load driver's own ceiling: the same client, concurrency and event
    // body posted straight to the receiver, no hookrelay between them.
    let direct_rate = b.direct_rate(DIRECT).await;
    b.note(
        "load driver straight to the receiver: requests/s (ceiling)",
        format!("{direct_rate:.0}"),
    );
    b.note(
        "deliveries/s ÷ the load driver's ceiling",
        format!("{:.3}", delivery_rate / direct_rate),
    );
    b.note(
        "kube-apiserver CPU s per 1,000 deliveries / per 1,000 raw creates",
        format!("{delivery_cpu:.1} / {raw_cpu:.1}"),
    );

    // Raw status writes: the record of a delivery the controller made in
    // the throughput phase, PUT (as the controller does, conditional on the
    // resourceVersion) onto each raw object. A create plus one such write
    // is what a delivery costs the API server at the least, so
    // updates/(creates+updates) bounds deliveries/s ÷ raw creates/s.
    let delivered: Api<Delivery> = Api::namespaced(b.client.clone(), &ns);
    let record = delivered
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .ok()
        .and_then(|l| l.items.into_iter().next())
        .and_then(|d| d.status)
        .expect("a recorded delivery from the throughput phase");
    let created = std::mem::take(&mut *created.lock().unwrap());
    let cpu_before = cp.apiserver_cpu();
    let profile = cp.profile(&out_dir, "apiserver-status-writes", 5);
    let count = created.len();
    let created = Arc::new(created);
    let update_took = bounded_parallel(count, {
        let (raw, raw_ns, client) = (raw.clone(), raw_ns.clone(), b.client.clone());
        move |i| {
            let (raw, created, record) = (raw.clone(), created.clone(), record.clone());
            let (raw_ns, client) = (raw_ns.clone(), client.clone());
            async move {
                let (name, resource_version) = &created[i];
                let body = serde_json::to_vec(&json!({
                    "apiVersion": <Delivery as kube::Resource>::api_version(&()),
                    "kind": <Delivery as kube::Resource>::kind(&()),
                    "metadata": { "name": name, "namespace": raw_ns, "resourceVersion": resource_version },
                    "status": record,
                }))
                .expect("a status serialises");
                let request = kube::core::Request::new(raw.resource_url())
                    .replace_subresource("status", name, &PostParams::default(), body)
                    .expect("a status request builds");
                if let Err(e) = client.request::<Delivery>(request).await {
                    eprintln!("raw status write {name}: {e}");
                }
            }
        }
    })
    .await;
    let update_rate = count as f64 / update_took.as_secs_f64();
    let update_cpu = (cp.apiserver_cpu() - cpu_before) * 1000.0 / count.max(1) as f64;
    if let Some(p) = profile {
        let _ = p.join();
    }
    b.note(
        "raw status writes/s (the controller's record, same concurrency)",
        format!("{update_rate:.0}"),
    );
    b.note(
        "kube-apiserver CPU s per 1,000 raw status writes",
        format!("{update_cpu:.1}"),
    );
    b.note(
        "ceiling of deliveries/s ÷ raw creates/s (create + status write)",
        format!("{:.2}", update_rate / (raw_rate + update_rate)),
    );

    // 7. The Postgres store: the same burst and steady load with deliveries
    // as rows in a local Postgres (fsync on) instead of Delivery objects.
    // Right after the throughput phase, while the API server holds few
    // Deliveries (later phases leave it ~10 GiB and busy deleting).
    if run("postgres") {
        let pg_dir = "/var/tmp/hookrelay-bench-postgres";
        let up = Command::new("bash")
            .arg(root.join("tests/postgres/postgres.sh"))
            .arg("up")
            .env("HOOKRELAY_POSTGRES_DIR", pg_dir)
            .env("HOOKRELAY_POSTGRES_PORT", "25434")
            // Which statements the store runs, and what each costs.
            .env(
                "HOOKRELAY_POSTGRES_OPTIONS",
                "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track_planning=on",
            )
            .stderr(Stdio::inherit())
            .output()
            .expect("postgres.sh");
        assert!(up.status.success(), "the bench Postgres did not start");
        let url = String::from_utf8_lossy(&up.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string();
        // Each run starts from an empty store.
        let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        pg.batch_execute(&format!("DROP TABLE IF EXISTS {}", hookrelay::store::postgres::TABLES))
            .await
            .unwrap();
        let postmaster: u32 = std::fs::read_to_string(format!("{pg_dir}/data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or(0);
        let (pns, pother) = (format!("bench-pg-{stamp}"), format!("bench-pg-other-{stamp}"));
        b.namespace(&pns).await;
        b.namespace(&pother).await;
        let store = vec!["--store=postgres".to_string(), format!("--postgres-url={url}")];
        let (controller, ingest, ingest_url, _) = b.start_with(&format!("{pns},{pother}"), &store);
        let token = b
            .hub(
                &pns,
                vec!["bench.pg-steady".into(), "bench.hoard".into(), "bench.bystander".into()],
            )
            .await;
        b.wait_ready(&ingest_url).await;
        b.webhooks(&pns, &["p0".into()], &[EVENT]).await;
        b.webhooks(&pns, &["beside".into()], &["bench.bystander"]).await;
        let bystanders = [
            Bystander::same_hub(&ingest_url, &pns, &token),
            b.bystander_elsewhere(&ingest_url, &pother).await,
        ];
        let cpu = || {
            [
                controller.usage().1,
                ingest.usage().1,
                postgres_cpu(postmaster),
                cp.apiserver_cpu() + usage(cp.pid("etcd")).1,
            ]
        };
        // The load driver and receiver (this process): not hookrelay's
        // cost, but what shares the machine with it.
        let own_cpu = || usage(std::process::id()).1;
        // Commits in the database (every process's): the record and insert
        // batches should make them far fewer than deliveries.
        let commits = || async {
            // Backends report their counts within a second of being idle.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let row = pg
                .query_one(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        };
        let commits_before = commits().await;
        // Loaded only if this Postgres was started by this bench's settings.
        let statements = pg
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()")
            .await
            .is_ok();
        // The load driver's ceiling again, right before the burst: it varies
        // with what else the machine is doing (the API server compacting).
        let ceiling = b.direct_rate(DIRECT).await;
        b.note(
            "load driver straight to the receiver, before the burst: requests/s",
            format!("{ceiling:.0}"),
        );
        let (cpu_before, own_before) = (cpu(), own_cpu());
        let ((accepted, took, done), beside) = b
            .beside("postgres store, burst", &bystanders, 10, async {
                let (accepted, took) = b
                    .post(&ingest_url, &pns, &token, EVENT, BURST, None, CONCURRENCY, "pg")
                    .await;
                let done = b.arrived(&accepted, PHASE_LIMIT).await;
                (accepted, took, done)
            })
            .await;
        let own_used = own_cpu() - own_before;
        let all_deliveries = (accepted.len() + beside.deliveries).max(1) as f64;
        let per_process: Vec<f64> = cpu()
            .iter()
            .zip(cpu_before)
            .map(|(after, before)| after - before)
            .collect();
        let cpu_used: f64 = per_process.iter().sum();
        let rate = match (done, accepted.values().min()) {
            (Some(at), Some(first)) => accepted.len() as f64 / at.duration_since(*first).as_secs_f64(),
            _ => 0.0,
        };
        b.note(
            "postgres store: events accepted/s, burst 10,000 events, 32 clients",
            format!("{:.0}", accepted.len() as f64 / took.as_secs_f64()),
        );
        b.note(
            "postgres store: deliveries/s, the same burst",
            format!("{rate:.0}{}", if done.is_none() { " (incomplete)" } else { "" }),
        );
        let burst = latencies(&accepted, &b.receiver);
        b.note(
            "postgres store: latency accepted → received, the burst p50/p99",
            format!("{} / {}", ms(percentile(&burst, 0.5)), ms(percentile(&burst, 0.99))),
        );
        b.note(
            "postgres store: CPU s per 1,000 deliveries (all processes)",
            format!("{:.2}", cpu_used * 1000.0 / all_deliveries),
        );
        b.note(
            "  of which controller / ingest / Postgres / kube-apiserver + etcd",
            per_process
                .iter()
                .map(|s| format!("{:.2}", s * 1000.0 / all_deliveries))
                .collect::<Vec<_>>()
                .join(" / "),
        );
        b.note(
            "  load driver + receiver (the bench, not counted above)",
            format!("{:.2}", own_used * 1000.0 / all_deliveries),
        );
        b.note(
            "postgres store: commits per delivery (all processes, the burst)",
            format!("{:.2}", (commits().await - commits_before) as f64 / all_deliveries),
        );
        if statements {
            // Statements of the database's own (the bench's reads excluded).
            let rows = pg
                .query(
                    "SELECT calls, total_exec_time, total_plan_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 60)
                     FROM pg_stat_statements
                     WHERE query NOT LIKE '%pg_stat%' ORDER BY total_exec_time DESC",
                    &[],
                )
                .await
                .unwrap();
            let calls: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
            b.note(
                "postgres store: statements per delivery (the burst)",
                format!("{:.2}", calls as f64 / all_deliveries),
            );
            for row in rows.iter().take(4) {
                let (calls, ms, planning, query): (i64, f64, f64, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                b.note(
                    &format!("  {query}"),
                    format!(
                        "{calls} calls, {:.2} ms per delivery (planning {:.2})",
                        ms / all_deliveries,
                        planning / all_deliveries
                    ),
                );
            }
        } else {
            b.note(
                "postgres store: statements per delivery (the burst)",
                "n/a (pg_stat_statements not loaded)".to_string(),
            );
        }
        b.note(
            "postgres store: deliveries/s ÷ raw Delivery creates/s",
            format!("{:.2}", rate / raw_rate),
        );
        b.note(
            "postgres store: deliveries/s ÷ the load driver's ceiling",
            format!("{:.3}", rate / ceiling),
        );
        b.webhooks(&pns, &["pg-steady".into()], &["bench.pg-steady"]).await;
        b.steady_latency(
            &ingest_url,
            &pns,
            &token,
            "bench.pg-steady",
            "postgres store: latency accepted → received at 50 events/s p50/p90/p99/max",
        )
        .await;
        // One webhook of the same controller with 100,000 due deliveries,
        // all waiting on the first (one ordering key; its handler is down
        // and asked to be tried again in ten minutes). Each claim reads that
        // webhook's queue only as deep as it may take from it.
        b.receiver.lock().unwrap().down = Some(("/hoard".into(), Instant::now() + Duration::from_secs(600)));
        b.webhooks(&pns, &["hoard".into()], &["bench.hoard"]).await;
        let hoard = hookrelay::store::postgres::Postgres::connect(&url, None).await.unwrap();
        // Bystanders while the rows go in (at 50 events/s, as the steady
        // latency is measured).
        let ((), beside) = b
            .beside("postgres store, backlog written", &bystanders, 50, async {
                let inserted = Instant::now();
                for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(1_000) {
                    let rows = chunk
                        .iter()
                        .map(|i| {
                            let mut delivery = Delivery::new(
                                &format!("hoard-{i}"),
                                DeliverySpec {
                                    webhook: "hoard".into(),
                                    hub: "main".into(),
                                    event: EventRef {
                                        id: format!("hoard-{i}"),
                                        name: "bench.hoard".into(),
                                        received_at: MicroTime(jiff::Timestamp::now()),
                                        trace: None,
                                    },
                                    payload: json!({ "i": i }).to_string(),
                                },
                            );
                            delivery.metadata.namespace = Some(pns.clone());
                            hookrelay::store::NewDelivery {
                                delivery,
                                ordering_key: Some("one key".into()),
                            }
                        })
                        .collect();
                    hoard.insert(rows).await.expect("the backlog is stored");
                }
                println!("  100,000 rows stored in {:?}", inserted.elapsed());
                support::within(Duration::from_secs(60), || async {
                    (b.receiver.lock().unwrap().refused > 0).then_some(())
                })
                .await
                .expect("the first of the backlog attempted and refused");
            })
            .await;
        b.note_all(beside.rows);
        b.steady_latency(
            &ingest_url,
            &pns,
            &token,
            "bench.pg-steady",
            "postgres store: same, beside 100,000 due deliveries behind one ordering key p50/p90/p99/max",
        )
        .await;
        b.receiver.lock().unwrap().down = None;
        drop(controller);
        drop(ingest);
        let _ = Command::new("bash")
            .arg(root.join("tests/postgres/postgres.sh"))
            .arg("down")
            .env("HOOKRELAY_POSTGRES_DIR", pg_dir)
            .env("HOOKRELAY_POSTGRES_PORT", "25434")
            .status();
    }

    if run("fanout") {
        // 10 webhooks per event.
        let more: Vec<String> = (1..10).map(|i| format!("w{i}")).collect();
        b.webhooks(&ns, &more, &[EVENT]).await;
        let succeeded_before = b
            .metric(&metrics_url, "hookrelay_deliveries_total{outcome=\"succeeded\"}")
            .await;
        let (accepted10, took10) = b
            .post(&ingest_url, &ns, &token, EVENT, EVENTS, None, CONCURRENCY, "t10")
            .await;
        let done10 = b
            .succeeded(&metrics_url, succeeded_before + accepted10.len() as f64, PHASE_LIMIT)
            .await;
        let first10 = accepted10.values().min().copied();
        let rate10 = match (done10, first10) {
            (Some(at), Some(first)) => accepted10.len() as f64 / at.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        b.note(
            "events accepted/s, 10 webhooks (5,000 events)",
            format!("{:.0}", EVENTS as f64 / took10.as_secs_f64()),
        );
        b.note(
            "deliveries completed/s, 10 webhooks",
            format!("{rate10:.0}{}", if done10.is_none() { " (incomplete)" } else { "" }),
        );
    }

    if run("latency") {
        // 2. Latency at a steady 50 events/s (1 webhook: a custom event only w-steady hears).
        b.webhooks(&ns, &["steady".into()], &["bench.other"]).await;
        b.steady_latency(
            &ingest_url,
            &ns,
            &token,
            "bench.other",
            "latency accepted → received at 50 events/s p50/p90/p99/max",
        )
        .await;
    }

    if run("isolation") {
        // 5. Isolation: one webhook answering in 5 s, nine fast ones.
        b.receiver
            .lock()
            .unwrap()
            .delays
            .insert("/iso-slow".into(), Duration::from_secs(5));
        let iso: Vec<String> = std::iter::once("iso-slow".to_string())
            .chain((0..9).map(|i| format!("iso-{i}")))
            .collect();
        b.webhooks(&ns, &iso, &["bench.isolation"]).await;
        let (iso_accepted, _) = b
            .post(
                &ingest_url,
                &ns,
                &token,
                "bench.isolation",
                500,
                None,
                CONCURRENCY,
                "iso",
            )
            .await;
        let fast: HashMap<String, Instant> = iso_accepted
            .into_iter()
            .filter(|(k, _)| !k.starts_with("iso-slow"))
            .collect();
        let arrived = support::within(Duration::from_secs(120), || async {
            let book = b.receiver.lock().unwrap();
            let times: Vec<Instant> = fast.keys().filter_map(|k| book.arrivals.get(k).copied()).collect();
            (times.len() == fast.len()).then(|| times.into_iter().max().unwrap())
        })
        .await;
        let first = fast.values().min().copied();
        if let (Some(last), Some(first)) = (arrived, first) {
            b.note(
                "isolation: deliveries/s to 9 fast webhooks beside a 5 s one",
                format!(
                    "{:.0} ({} deliveries in {:.2} s)",
                    fast.len() as f64 / last.duration_since(first).as_secs_f64(),
                    fast.len(),
                    last.duration_since(first).as_secs_f64()
                ),
            );
        }
    }

    let (c_peak, c_cpu) = controller.usage();
    let (i_peak, i_cpu) = ingest.usage();
    b.note(
        "throughput run: controller peak RSS / CPU",
        format!("{:.1} MiB / {c_cpu:.1} s", c_peak as f64 / 1024.0),
    );
    b.note(
        "throughput run: ingest peak RSS / CPU",
        format!("{:.1} MiB / {i_cpu:.1} s", i_peak as f64 / 1024.0),
    );
    drop(controller);
    drop(ingest);

    if run("memory") {
        // 4. Memory with 1,000 webhooks and 10,000 retained Deliveries (fresh processes).
        let mns = format!("bench-mem-{stamp}");
        b.namespace(&mns).await;
        let (controller, ingest, ingest_url, metrics_url) = b.start(&mns);
        let token = b.hub(&mns, vec!["bench.memory".into()]).await;
        b.wait_ready(&ingest_url).await;
        let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        b.webhooks(&mns, &names, &["bench.memory"]).await;
        tokio::time::sleep(Duration::from_secs(3)).await; // let the summaries and reconciles settle
        let rss_before = controller.rss_kib();
        let (mem_accepted, _) = b
            .post(&ingest_url, &mns, &token, "bench.memory", 10, None, 1, "mem")
            .await;
        let _ = b.succeeded(&metrics_url, mem_accepted.len() as f64, PHASE_LIMIT).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_after = controller.rss_kib();
        let (c_peak, c_cpu) = controller.usage();
        let (i_peak, i_cpu) = ingest.usage();
        b.note(
            "1,000 webhooks + 10,000 Deliveries: controller peak RSS / CPU",
            format!("{:.1} MiB / {c_cpu:.1} s", c_peak as f64 / 1024.0),
        );
        b.note(
            "1,000 webhooks + 10,000 Deliveries: ingest peak RSS / CPU",
            format!("{:.1} MiB / {i_cpu:.1} s", i_peak as f64 / 1024.0),
        );
        b.note(
            "controller bytes per retained Delivery",
            format!(
                "{:.0} ({} deliveries)",
                (rss_after.saturating_sub(rss_before) * 1024) as f64 / mem_accepted.len().max(1) as f64,
                mem_accepted.len()
            ),
        );
        drop(controller);
        drop(ingest);
    }

    // 6. A backlog: BACKLOG deliveries pending for a handler that is down
    // (10 webhooks of 10,000 each, all to one handler answering 503 with a
    // Retry-After just past the moment it comes back), a controller
    // restarted over them, then the drain once the handler is back.
    if run("backlog") {
        let (bns, bother) = (format!("bench-backlog-{stamp}"), format!("bench-backlog-other-{stamp}"));
        b.namespace(&bns).await;
        b.namespace(&bother).await;
        let webhooks = 10;
        // Long enough for ingest and the first attempts at the throughput
        // measured above, plus the restart.
        let create_estimate = Duration::from_secs_f64(BACKLOG as f64 / delivery_rate.max(50.0) * 1.3);
        let back_at = Instant::now() + create_estimate + Duration::from_secs(150);
        b.receiver.lock().unwrap().down = Some(("/bl".into(), back_at));
        let (controller, ingest, ingest_url, _) = b.start(&format!("{bns},{bother}"));
        let token = b
            .hub_keeping(&bns, vec!["bench.backlog".into(), "bench.bystander".into()], 10_000)
            .await;
        b.wait_ready(&ingest_url).await;
        let names: Vec<String> = (0..webhooks).map(|i| format!("bl{i}")).collect();
        b.webhooks(&bns, &names, &["bench.backlog"]).await;
        b.webhooks(&bns, &["bystander".into()], &["bench.bystander"]).await;
        let bystanders = [
            Bystander::same_hub(&ingest_url, &bns, &token),
            b.bystander_elsewhere(&ingest_url, &bother).await,
        ];
        let started = Instant::now();
        let ((accepted, took, refused), beside) = b
            .beside("backlog build", &bystanders, 50, async {
                let (accepted, took) = b
                    .post(
                        &ingest_url,
                        &bns,
                        &token,
                        "bench.backlog",
                        BACKLOG / webhooks,
                        None,
                        CONCURRENCY,
                        "bl",
                    )
                    .await;
                // Every delivery has had its first attempt refused.
                let refused = support::within(PHASE_LIMIT, || async {
                    (b.receiver.lock().unwrap().refused >= accepted.len()).then_some(())
                })
                .await;
                (accepted, took, refused)
            })
            .await;
        let pending = accepted.len();
        b.note(
            "backlog: deliveries pending (accepted, first attempt refused)",
            format!(
                "{pending} in {:.0} s{}",
                started.elapsed().as_secs_f64(),
                if refused.is_none() { " (not all attempted)" } else { "" }
            ),
        );
        b.note(
            "backlog: events accepted/s while it builds (10 webhooks)",
            format!("{:.0}", (pending / webhooks) as f64 / took.as_secs_f64()),
        );
        b.note_all(beside.rows);
        // Another webhook's latency while the backlog waits.
        let (bystander, _) = b
            .post(&ingest_url, &bns, &token, "bench.bystander", 500, Some(50), 1, "by")
            .await;
        support::within(Duration::from_secs(60), || async {
            let book = b.receiver.lock().unwrap();
            bystander.keys().all(|k| book.arrivals.contains_key(k)).then_some(())
        })
        .await;
        let l = latencies(&bystander, &b.receiver);
        b.note(
            "backlog: another webhook's latency at 50 events/s p50/p99",
            format!("{} / {}", ms(percentile(&l, 0.5)), ms(percentile(&l, 0.99))),
        );
        let (c_peak, _) = controller.usage();
        let (i_peak, _) = ingest.usage();
        b.note(
            "controller peak RSS with 100,000 deliveries pending",
            format!("{:.0} MiB", c_peak as f64 / 1024.0),
        );
        b.note("backlog: ingest peak RSS", format!("{:.0} MiB", i_peak as f64 / 1024.0));
        drop(controller);

        // A controller started over the backlog: how long until it holds
        // every pending delivery (listed and scheduled).
        let restarted_at = Instant::now();
        let (controller, _unused_ingest, _, metrics_url2) = b.start(&bns);
        drop(_unused_ingest);
        let listed = support::within(PHASE_LIMIT, || async {
            let n = b.metric(&metrics_url2, "hookrelay_deliveries_pending").await;
            (n >= pending as f64).then(Instant::now)
        })
        .await;
        b.note(
            "backlog: a restarted controller has listed and scheduled them in",
            match listed {
                Some(at) => format!("{:.1} s", at.duration_since(restarted_at).as_secs_f64()),
                None => "not within the phase limit".into(),
            },
        );
        let (cp_api, cp_etcd, db) = cp.memory();
        b.note(
            "backlog: kube-apiserver / etcd peak RSS, etcd database",
            format!("{cp_api:.0} MiB / {cp_etcd:.0} MiB / {db:.0} MiB"),
        );

        // The handler comes back: the drain.
        tokio::time::sleep_until(back_at.into()).await;
        let drained = support::within(PHASE_LIMIT, || async {
            let book = b.receiver.lock().unwrap();
            (book.recovered >= pending).then(|| book.last_recovered.unwrap())
        })
        .await;
        let (first, last) = {
            let book = b.receiver.lock().unwrap();
            (back_at, drained.or(book.last_recovered))
        };
        let recovered = b.receiver.lock().unwrap().recovered;
        let rate = last
            .map(|l| recovered as f64 / l.duration_since(first).as_secs_f64().max(0.001))
            .unwrap_or(0.0);
        b.note("drain rate after the backlog, deliveries/s", format!("{rate:.0}"));
        b.note(
            "backlog: drain ÷ throughput (1 webhook)",
            format!(
                "{:.2} ({recovered} delivered{})",
                rate / delivery_rate.max(1.0),
                if drained.is_none() { ", incomplete" } else { "" }
            ),
        );
        let (c_peak, c_cpu) = controller.usage();
        b.note(
            "backlog: restarted controller peak RSS / CPU (list and drain)",
            format!("{:.0} MiB / {c_cpu:.0} s", c_peak as f64 / 1024.0),
        );
        drop(controller);
    }

    // 7. The API server as the scarce resource, on any machine: its
    // threads capped at a quarter of a core, eight webhooks of one hub
    // whose handler is down (503, Retry-After two hours) sent 20 events/s,
    // and a bystander webhook of the same hub at 4 events/s. Its latency,
    // and where the time goes (the controller logs each stage).
    if run("capped") {
        let (cns, ons) = (format!("bench-capped-{stamp}"), format!("bench-capped-other-{stamp}"));
        b.namespace(&cns).await;
        b.namespace(&ons).await;
        b.receiver.lock().unwrap().down = Some(("/down".into(), Instant::now() + Duration::from_secs(7200)));
        // One controller and one ingest for both namespaces, as installed.
        let (controller, ingest, ingest_url, _) =
            b.start_logging(&format!("{cns},{ons}"), &[], "warn,hookrelay::stages=debug");
        let token = b
            .hub_with(&cns, vec!["bench.down".into(), "bench.bystander".into()], 10_000, 4)
            .await;
        let other_token = b.hub_with(&ons, vec!["bench.bystander".into()], 10_000, 4).await;
        b.wait_ready(&ingest_url).await;
        let names: Vec<String> = (0..8).map(|i| format!("down{i}")).collect();
        b.webhooks(&cns, &names, &["bench.down"]).await;
        b.webhooks(&cns, &["bystander".into()], &["bench.bystander"]).await;
        b.webhooks(&ons, &["elsewhere".into()], &["bench.bystander"]).await;
        let cap = support::cpu_cap::CpuCap::apply("bench-apiserver", cp.pid("kube-apiserver"), 25_000);
        let (before, clock) = (b.write_latencies().await, (Instant::now(), jiff::Timestamp::now()));
        let ((down, took), (bystander, _), (elsewhere, _)) = tokio::join!(
            b.post(
                &ingest_url,
                &cns,
                &token,
                "bench.down",
                1_200,
                Some(20),
                CONCURRENCY,
                "dn"
            ),
            b.post(&ingest_url, &cns, &token, "bench.bystander", 240, Some(4), 4, "cb"),
            b.post(
                &ingest_url,
                &ons,
                &other_token,
                "bench.bystander",
                240,
                Some(4),
                4,
                "co"
            ),
        );
        support::within(Duration::from_secs(120), || async {
            let book = b.receiver.lock().unwrap();
            (bystander.keys().chain(elsewhere.keys()))
                .all(|k| book.arrivals.contains_key(k))
                .then_some(())
        })
        .await;
        let after = b.write_latencies().await;
        drop(cap);
        b.note(
            "capped API server: events accepted/s, down webhooks (sent 20/s)",
            format!("{:.1}", down.len() as f64 / 8.0 / took.as_secs_f64()),
        );
        for (what, accepted) in [("same hub", &bystander), ("another namespace", &elsewhere)] {
            let l = latencies(accepted, &b.receiver);
            b.note(
                &format!("capped API server: bystander ({what}) p50/p99/max"),
                format!(
                    "{} / {} / {} ({} accepted, {} arrived)",
                    ms(percentile(&l, 0.5)),
                    ms(percentile(&l, 0.99)),
                    ms(*l.last().unwrap_or(&Duration::ZERO)),
                    accepted.len(),
                    l.len(),
                ),
            );
        }
        b.note("capped API server: write latency p99", p99_between(&before, &after));
        let stages = stages(&controller.0.logs(), &bystander, clock);
        b.note("capped API server: bystander (same hub) stages p50/p99", stages);
        drop(controller);
        drop(ingest);
    }

    // The report.
    let mut md = String::new();
    md.push_str("# hookrelay benchmark\n\n");
    md.push_str(&format!(
        "Machine: {} cores. hookrelay {}; Kubernetes {}; etcd fsync on. Generated by `make bench`.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        hookrelay::VERSION,
        std::fs::read_to_string(root.join("tests/controlplane/VERSION"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("KUBERNETES_VERSION"))
            .unwrap_or("?"),
    ));
    md.push_str(&format!(
        "API writes per delivery: {per_delivery:.2}\n\n| measure | value |\n| --- | --- |\n"
    ));
    for (k, v) in &b.report {
        md.push_str(&format!("| {} | {} |\n", k.trim(), v));
    }
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("report.md"), &md).unwrap();
    println!("\nwritten to target/bench/report.md");
    // Each run starts from an empty etcd: stop this control plane.
    let _ = Command::new("bash")
        .arg(root.join("tests/controlplane/controlplane.sh"))
        .arg("down")
        .env("HOOKRELAY_CONTROLPLANE_DIR", cache.join("bench-controlplane"))
        .status();
}
