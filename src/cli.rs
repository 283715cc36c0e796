//! Command line: one binary, one subcommand per role.

use crate::telemetry::{self, LogFormat};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(name = "hookrelay", version = crate::VERSION, about = "Signed, retried, recorded webhooks for a CMS, run as a Kubernetes operator")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the reconcilers and the delivery engine.
    Controller(ControllerArgs),
    /// Run the event ingest server the CMS posts events to.
    Ingest(IngestArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print the version.
    Version,
}

#[derive(Args, Debug)]
struct Logging {
    /// Log format: text for people, json for log pipelines.
    #[arg(long, env = "HOOKRELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "HOOKRELAY_NAMESPACE")]
    namespace: Option<String>,
    #[command(flatten)]
    logging: Logging,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Address the ingest HTTP server listens on.
    #[arg(long, env = "HOOKRELAY_INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    logging: Logging,
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Controller(args) => {
                telemetry::init(args.logging.log_format);
                tracing::info!(version = crate::VERSION, "starting controller");
                // The cluster comes from KUBECONFIG or the in-cluster service account.
                let client = kube::Client::try_default().await?;
                crate::controller::run(client, args.namespace.as_deref(), shutdown_signal()).await
            }
            Command::Ingest(args) => {
                telemetry::init(args.logging.log_format);
                tracing::info!(version = crate::VERSION, listen = %args.listen, "starting ingest");
                shutdown_signal().await;
                Ok(())
            }
            Command::Crd => {
                print!("{}", crate::crd::yaml()?);
                Ok(())
            }
            Command::Version => {
                println!("hookrelay {}", crate::VERSION);
                Ok(())
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing a Pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
