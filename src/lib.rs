//! hookrelay: a Kubernetes operator that delivers signed, retried, recorded
//! webhooks for a content management system.
#![forbid(unsafe_code)]

pub mod cli;
pub mod console;
pub mod controller;
pub mod crd;
pub mod delivery;
pub mod egress;
pub mod events;
pub mod filters;
pub mod ingest;
pub mod leader;
pub mod metrics;
pub mod plugin;
pub mod resources;
pub mod secret_cache;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod template;

/// The version of this build, as sent in `User-Agent: hookrelay/<version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
