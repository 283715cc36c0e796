//! hookrelay: a Kubernetes operator that delivers signed, retried, recorded
//! webhooks for a content management system.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod console;
pub mod controller;
pub mod crd;
pub mod delivery;
pub mod egress;
pub mod events;
pub mod fanout;
pub mod filters;
pub mod ingest;
pub mod kubernetes;
pub mod leader;
pub mod metrics;
pub mod plugin;
pub mod reference;
pub mod resources;
pub mod secret_cache;
pub mod secrets;
pub mod server;
pub mod spans;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod trace_context;

/// The version of this build, as sent in `User-Agent: hookrelay/<version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Who this replica is (leader election, store claims): its Pod's name,
/// else host and pid.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "hookrelay".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}
