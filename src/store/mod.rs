//! Where Deliveries live: as `Delivery` objects in the Kubernetes API (the
//! default: nothing to install, every delivery visible with kubectl), or in
//! Postgres, for volumes the API server cannot carry.

pub mod postgres;
pub mod retention;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};

/// The delivery store a controller or ingest uses (`--store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `Delivery` objects in the Kubernetes API.
    #[default]
    Kubernetes,
    /// Rows in a Postgres database (`--postgres-url`).
    Postgres,
}

/// Connects to the store `kind` names: `None` for Kubernetes, the Postgres
/// store (schema migrated) for Postgres. A missing URL is an error naming
/// the flag. `ca_file`: the PEM bundle for `sslmode=require`.
pub async fn open(
    kind: Kind,
    postgres_url: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<std::sync::Arc<postgres::Postgres>>> {
    match kind {
        Kind::Kubernetes => Ok(None),
        Kind::Postgres => {
            let url = postgres_url.ok_or_else(|| {
                anyhow::anyhow!("--store postgres needs --postgres-url (or HOOKRELAY_POSTGRES_URL), e.g. postgres://hookrelay@db:5432/hookrelay")
            })?;
            let ca = read_ca(ca_file)?;
            Ok(Some(postgres::Postgres::connect(url, ca.as_deref()).await?))
        }
    }
}

/// The CA bundle named by `--postgres-ca-file`, if any.
pub fn read_ca(ca_file: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    ca_file
        .map(|path| std::fs::read(path).map_err(|e| anyhow::anyhow!("--postgres-ca-file {}: {e}", path.display())))
        .transpose()
}

/// Whether the user may `verb` hookrelay's `resource` (`name`, or any) in
/// `ns`, by a SelfSubjectAccessReview with their identity. Deliveries in
/// the Postgres store are shown only to whom RBAC would show them.
pub async fn allowed(client: &kube::Client, ns: &str, verb: &str, resource: &str, name: Option<&str>) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some(verb.into()),
                group: Some(crate::resources::GROUP.into()),
                resource: Some(resource.into()),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client.clone());
    api.create(&kube::api::PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}
