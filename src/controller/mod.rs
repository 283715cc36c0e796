//! `hookrelay controller`: the reconcilers that keep secrets and statuses of
//! Hubs and Webhooks in line with their specs.

mod generated_secret;
use crate::leader::{self, Leadership};
pub mod hubs;
pub mod webhooks;

use crate::delivery::Engine;
use crate::kubernetes::{namespaced_api as api, watched};
use crate::metrics::Metrics;
use crate::resources::{Hub, Webhook};
use crate::secret_cache::SecretCache;
use crate::server::Readiness;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a reconcile needs, shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Every Hub the controller watches, kept current by a watch.
    pub hubs: Store<Hub>,
    /// Every Webhook the controller watches, kept current by a watch.
    pub webhooks: Store<Webhook>,
    /// Secrets read on demand, cached while unchanged.
    pub secrets: Arc<SecretCache>,
    /// The operator's egress proxy (`host:port`), stated in Hub status.
    pub egress_proxy: Option<String>,
    backoff: Backoff,
}

impl Context {
    pub fn new(client: Client, hubs: Store<Hub>, webhooks: Store<Webhook>, secrets: Arc<SecretCache>) -> Self {
        let reporter = Reporter {
            controller: "hookrelay".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            hubs,
            webhooks,
            secrets,
            egress_proxy: None,
            backoff: Backoff::default(),
        }
    }
}

/// Errors of a reconcile. None carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Self::Kube(_) => "kube",
            Self::MissingMetadata(_) => "missing_metadata",
        }
    }
}

/// Per-object exponential backoff after failed reconciles: 1s, 2s, 4s … 5m,
/// reset by the next success, so a persistent error never hot-loops.
#[derive(Default)]
struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    fn failed(&self, key: String) -> Duration {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        retry_delay(*n)
    }

    fn succeeded(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Delay before the `failures`-th retry of a failed reconcile.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

fn backoff_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Shared error policy: log the error kind (never a value), back off.
fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(backoff_key(obj.as_ref()));
    tracing::warn!(
        kind = %K::kind(&()),
        name = %obj.name_any(),
        namespace = %obj.namespace().unwrap_or_default(),
        error = %error,
        error_kind = error.kind(),
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The objects in `store` that own `secret` or name it (`reads`), for
/// re-reconciling them when it changes.
pub(crate) fn users_of_secret<K>(
    store: &Store<K>,
    secret: &PartialObjectMeta<Secret>,
    reads: impl Fn(&K, &str) -> bool,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (ns, name) = (secret.namespace(), secret.name_any());
    let owners: Vec<&str> = secret.owner_references().iter().map(|o| o.uid.as_str()).collect();
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == ns)
        .filter(|o| o.uid().is_some_and(|uid| owners.contains(&uid.as_str())) || reads(o, &name))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Settings of `hookrelay controller`.
pub struct Settings {
    /// Watch only these namespaces; empty watches all.
    pub namespaces: Vec<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub metrics_listen: std::net::SocketAddr,
    /// Requests in flight at once, across all webhooks.
    pub concurrency: usize,
    /// Lease-based leader election; `None` runs as the only replica.
    pub leader_election: Option<leader::Settings>,
    /// Networks no delivery may reach, whatever a Hub says.
    pub egress_floor: crate::egress::Floor,
    /// The operator's proxy every request to a handler goes through, if any.
    pub egress_proxy: Option<Arc<crate::delivery::relay::EgressProxy>>,
    /// The size a Delivery may reach as stored.
    pub delivery_budget: usize,
    /// Where deliveries live. With Postgres every replica delivers
    /// (claiming from the store), and only the reconcilers need the lease.
    pub store: crate::store::Store,
    /// How long a replica's claim on a delivery lasts (Postgres store).
    pub claim_lease: Duration,
}

/// Runs the controller (see `reconcile_and_deliver`), and with the Postgres
/// store delivers on this replica whether or not it leads.
pub async fn run(client: Client, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let delivering = settings.store.claims().then(|| {
        let stop = shutdown.child_token();
        let task = tokio::spawn(deliver_on_every_replica(
            client.clone(),
            scopes(&settings),
            delivery_options(&settings, Leadership::unconditional()),
            settings.claim_lease,
            metrics.clone(),
            stop.clone(),
        ));
        (stop, task)
    });
    let result = reconcile_and_deliver(client, settings, metrics, shutdown).await;
    if let Some((stop, task)) = delivering {
        stop.cancel();
        task.await?;
    }
    result
}

/// The namespaces served, `None` for all.
fn scopes(settings: &Settings) -> Vec<Option<String>> {
    if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    }
}

fn delivery_options(settings: &Settings, leadership: Leadership) -> crate::delivery::Options {
    crate::delivery::Options {
        global: crate::delivery::slots::Slots::new(settings.concurrency),
        leadership,
        egress_floor: settings.egress_floor.clone(),
        egress_proxy: settings.egress_proxy.clone(),
        delivery_budget: settings.delivery_budget,
        store: settings.store.clone(),
    }
}

/// Where the store claims: delivers in every served namespace until `stop`,
/// on this replica whether or not it leads: an engine per namespace
/// reading webhooks and hubs from its own caches.
async fn deliver_on_every_replica(
    client: Client,
    scopes: Vec<Option<String>>,
    options: crate::delivery::Options,
    lease: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let store = options.store.name();
    let runs = scopes.into_iter().map(|namespace| {
        let hubs = watched(api::<Hub>(&client, namespace.as_deref()));
        let webhooks = watched(api::<Webhook>(&client, namespace.as_deref()));
        let secrets = SecretCache::new(client.clone());
        tokio::spawn(secrets.clone().watch(namespace.clone()));
        let (client, options, metrics, stop) = (client.clone(), options.clone(), metrics.clone(), stop.clone());
        async move {
            let ready = async { hubs.wait_until_ready().await.is_ok() && webhooks.wait_until_ready().await.is_ok() };
            let ready = tokio::select! {
                r = ready => r,
                _ = stop.cancelled() => false,
            };
            if !ready {
                return;
            }
            let scope = namespace.as_deref().unwrap_or("<all>").to_string();
            tracing::info!(namespace = %scope, "caches synced; delivering from {store}");
            // One engine (one claimant) per stretch of contact with the store.
            loop {
                let options = crate::delivery::Options {
                    // Alive in the store only once its first heartbeat is taken.
                    leadership: Leadership::until(tokio::time::Instant::now()),
                    ..options.clone()
                };
                let engine = Engine::new(
                    client.clone(),
                    webhooks.clone(),
                    hubs.clone(),
                    secrets.clone(),
                    metrics.clone(),
                    options,
                );
                let run = engine.run(namespace.clone(), lease, stop.clone().cancelled_owned());
                if run.await == crate::delivery::Ended::Shutdown || stop.is_cancelled() {
                    return;
                }
                tracing::warn!(namespace = %scope, "lost contact with the {store} store; delivering again as a new claimant once it answers");
            }
        }
    });
    futures::future::join_all(runs).await;
}

/// Serves the operational endpoints, waits to lead (with leader election),
/// then reconciles and delivers until `shutdown` is cancelled. Losing the
/// lease ends the process with an error, so Kubernetes restarts it as a
/// candidate (as client-go's leader election does).
async fn reconcile_and_deliver(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    let listener = tokio::net::TcpListener::bind(settings.metrics_listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz, /readyz, /metrics");
    let ops = tokio::spawn(crate::server::serve(
        listener,
        crate::server::ops_routes(metrics.clone(), readiness.clone()),
        shutdown.clone().cancelled_owned(),
    ));

    let Some(election) = settings.leader_election.clone() else {
        lead(
            client,
            &settings,
            metrics,
            readiness,
            Leadership::unconditional(),
            shutdown,
        )
        .await;
        ops.await??;
        return Ok(());
    };
    // A follower is ready: it is doing what it should, waiting.
    readiness.set_ready();
    let mut elector = leader::Elector::new(client.clone(), election);
    let leadership = tokio::select! {
        l = elector.acquire() => l,
        _ = shutdown.cancelled() => return Ok(()),
    };
    // The work stops on SIGTERM or when leadership is lost. Renewals go on
    // until the work has stopped and recorded what it sent, so nobody else
    // takes over while this process still has requests in flight.
    let work = shutdown.child_token();
    let renewing = CancellationToken::new();
    let holding = tokio::spawn(elector.hold(leadership.clone(), renewing.clone()));
    {
        let (work, leadership) = (work.clone(), leadership.clone());
        tokio::spawn(async move {
            leadership.lost().await;
            work.cancel();
        });
    }
    lead(
        client,
        &settings,
        metrics,
        Readiness::default(),
        leadership.clone(),
        work.clone(),
    )
    .await;
    renewing.cancel();
    let mut elector = holding.await?;
    if leadership.is_lost() {
        anyhow::bail!("lost the leader lease; exiting so a new candidate takes over");
    }
    // Work is stopped and recorded: hand the lease over at once.
    elector.release().await;
    ops.await??;
    Ok(())
}

/// Reconciles and delivers in every watched namespace until `stop` is
/// cancelled. Each namespace has its own watches (so RBAC can be granted
/// per namespace); the global concurrency limit is shared.
async fn lead(
    client: Client,
    settings: &Settings,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    leadership: Leadership,
    stop: CancellationToken,
) {
    let scopes = scopes(settings);
    // One global limit and one leadership for the engines of every namespace.
    let options = delivery_options(settings, leadership);
    let ready: Vec<Readiness> = scopes.iter().map(|_| Readiness::default()).collect();
    {
        let ready = ready.clone();
        tokio::spawn(async move {
            while !ready.iter().all(Readiness::is_ready) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            readiness.set_ready();
        });
    }
    let runs = scopes.iter().zip(ready).map(|(namespace, ready)| {
        lead_namespace(
            client.clone(),
            namespace.as_deref(),
            options.clone(),
            metrics.clone(),
            ready,
            stop.clone(),
        )
    });
    metrics.leader.set(1);
    futures::future::join_all(runs).await;
    metrics.leader.set(0);
}

/// Reconciles and delivers in `namespace` (all when `None`).
async fn lead_namespace(
    client: Client,
    namespace: Option<&str>,
    options: crate::delivery::Options,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let shutdown = stop;
    let hub_controller = Controller::new(api::<Hub>(&client, namespace), watcher::Config::default());
    let webhook_controller = Controller::new(api::<Webhook>(&client, namespace), watcher::Config::default());
    let hubs = hub_controller.store();
    let webhooks = webhook_controller.store();

    // A Hub change can change each of its webhooks' readiness (known events,
    // rotation overlap); a Webhook change changes its hub's counts.
    let webhooks_of_hub = {
        let webhooks = webhooks.clone();
        move |hub: Hub| webhooks::of_hub(&webhooks, &hub)
    };
    let hub_of_webhook = |webhook: Webhook| {
        let ns = webhook.namespace()?;
        Some(ObjectRef::<Hub>::new(&webhook.spec.hub).within(&ns))
    };
    // Secrets are watched by metadata only (values never enter this cache):
    // a change to a generated or referenced Secret re-reconciles its users.
    let secret_metadata = || api::<PartialObjectMeta<Secret>>(&client, namespace);
    let webhooks_of_secret = {
        let webhooks = webhooks.clone();
        move |secret: PartialObjectMeta<Secret>| webhooks::using_secret(&webhooks, &secret)
    };
    let hubs_of_secret = {
        let hubs = hubs.clone();
        move |secret: PartialObjectMeta<Secret>| hubs::using_secret(&hubs, &secret)
    };

    let secrets = SecretCache::new(client.clone());
    tokio::spawn(secrets.clone().watch(namespace.map(str::to_string)));
    let mut ctx = Context::new(client.clone(), hubs.clone(), webhooks.clone(), secrets.clone());
    ctx.egress_proxy = options.egress_proxy.as_ref().map(|proxy| proxy.to_string());
    let ctx = Arc::new(ctx);
    let webhook_run = webhook_controller
        .watches(secret_metadata(), watcher::Config::default(), webhooks_of_secret)
        .watches(
            api::<Hub>(&client, namespace),
            watcher::Config::default(),
            webhooks_of_hub,
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(webhooks::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    // Webhooks are judged against their hub: start them once the hub cache
    // is filled, so a webhook is never reported HubNotFound at start-up.
    let webhook_run = {
        let hubs = hubs.clone();
        async move {
            if hubs.wait_until_ready().await.is_ok() {
                webhook_run.await;
            }
        }
    };
    let hub_run = hub_controller
        .watches(secret_metadata(), watcher::Config::default(), hubs_of_secret)
        .watches(
            api::<Webhook>(&client, namespace),
            watcher::Config::default(),
            hub_of_webhook,
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(hubs::reconcile, error_policy, ctx)
        .for_each(|_| async {});

    // Where the store claims, every replica delivers (`deliver_on_every_replica`).
    let engine = (!options.store.claims()).then(|| {
        Engine::new(
            client.clone(),
            webhooks.clone(),
            hubs.clone(),
            secrets,
            metrics.clone(),
            options,
        )
    });
    let engine_run = {
        let (hubs, webhooks, readiness) = (hubs.clone(), webhooks.clone(), readiness.clone());
        let namespace = namespace.map(str::to_string);
        let shutdown = shutdown.clone();
        async move {
            // Attempts read their webhook and hub from these caches.
            if hubs.wait_until_ready().await.is_err() || webhooks.wait_until_ready().await.is_err() {
                return;
            }
            readiness.set_ready();
            if let Some(engine) = engine {
                tracing::info!("caches synced; delivering");
                // No claims, so no claim lease.
                engine.run(namespace, Duration::ZERO, shutdown.cancelled_owned()).await;
            }
        }
    };

    tracing::info!(namespace = namespace.unwrap_or("<all>"), "controller started");
    tokio::join!(webhook_run, hub_run, engine_run);
    tracing::info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_five_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(9), Duration::from_secs(256));
        assert_eq!(retry_delay(10), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(300));
    }
}
