//! Kubernetes helpers every part uses (controller, ingest, the delivery
//! engine, the stores): watched caches, namespaced APIs and status writes.

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

/// The client a user's kubeconfig (`path`, else the usual one) gives in
/// `context` (else its current one), as kubectl's `--kubeconfig` and
/// `--context` choose; and that context's namespace.
pub async fn user_client(path: Option<&std::path::Path>, context: Option<String>) -> anyhow::Result<(Client, String)> {
    use anyhow::Context as _;
    let kubeconfig = match path {
        Some(path) => {
            kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => kube::config::Kubeconfig::read().context("reading the kubeconfig")?,
    };
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

/// Starts a reflector for `K` and returns its store; the watch runs on a task.
pub fn watched<K>(api: Api<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff())
        .touched_objects()
        .for_each(|_| async {});
    tokio::spawn(stream);
    store
}

/// The API of `K` in `namespace`, or in every namespace (`None`).
pub fn namespaced_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Writes a custom resource's `status` by server-side apply as `manager`:
/// only the fields given are that manager's, others' fields are kept.
pub async fn apply_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    manager: &str,
    status: &impl serde::Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(patch))
        .await
}

/// Publishes a Warning Event about `reference` on a task of its own: the
/// caller (a request, the schedule) never waits for it, and a failure to
/// publish is only logged.
pub fn warn_later(
    recorder: &kube::runtime::events::Recorder,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    action: &str,
    note: String,
) {
    let recorder = recorder.clone();
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, reason = %event.reason, "could not publish an Event");
        }
    });
}
