//! hookrelay: a Kubernetes operator that delivers signed, retried, recorded
//! webhooks for a content management system.
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod crd;
pub mod events;
pub mod resources;
pub mod secrets;
pub mod telemetry;

/// The version of this build, as sent in `User-Agent: hookrelay/<version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
