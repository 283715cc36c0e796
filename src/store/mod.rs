//! Where Deliveries live: as `Delivery` objects in the Kubernetes API (the
//! default: nothing to install, every delivery visible with kubectl), or in
//! Postgres, for volumes the API server cannot carry.

pub mod postgres;

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
/// the flag.
pub async fn open(
    kind: Kind,
    postgres_url: Option<&str>,
) -> anyhow::Result<Option<std::sync::Arc<postgres::Postgres>>> {
    match kind {
        Kind::Kubernetes => Ok(None),
        Kind::Postgres => {
            let url = postgres_url.ok_or_else(|| {
                anyhow::anyhow!("--store postgres needs --postgres-url (or HOOKRELAY_POSTGRES_URL), e.g. postgres://hookrelay@db:5432/hookrelay")
            })?;
            Ok(Some(postgres::Postgres::connect(url).await?))
        }
    }
}
