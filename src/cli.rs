//! Command line: one binary, one subcommand per role.

use crate::telemetry::{self, LogFormat};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "hookrelay",
    version = crate::VERSION,
    about = "Signed, retried, recorded webhooks for a CMS, run as a Kubernetes operator",
    after_help = "Installed on PATH as `kubectl-hookrelay` (a link or copy of this binary), it is the kubectl plugin: `kubectl hookrelay --help`."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the reconcilers and the delivery engine.
    #[command(
        after_help = "Examples:\n  hookrelay controller --leader-elect --watch-namespace shop,blog\n  hookrelay controller --store postgres --postgres-url \"$HOOKRELAY_POSTGRES_URL\"\n  hookrelay controller --egress-allow-loopback=true   # local development: handlers on 127.0.0.1"
    )]
    Controller(ControllerArgs),
    /// Run the event ingest server the CMS posts events to.
    #[command(
        after_help = "Examples:\n  hookrelay ingest --listen 0.0.0.0:8080\n  hookrelay ingest --store postgres --postgres-url \"$HOOKRELAY_POSTGRES_URL\""
    )]
    Ingest(IngestArgs),
    /// Serve the web console (the CMS's webhook screens) with the user's own
    /// Kubernetes identity.
    #[command(
        after_help = "Examples:\n  hookrelay console                        # on 127.0.0.1:8001, with your kubeconfig\n  hookrelay console --context staging -n shop\n  hookrelay console --auth token --listen 0.0.0.0:8001   # in a cluster"
    )]
    Console(ConsoleArgs),
    /// Serve delivery history through the Kubernetes API (an aggregated
    /// API, history.hookrelay.dev), from whichever store, with the user's own
    /// identity and RBAC.
    #[command(
        after_help = "Examples:\n  hookrelay api --store postgres --tls-cert-file tls.crt --tls-key-file tls.key\n  hookrelay api --store postgres --register   # a local try: registers the APIService itself"
    )]
    Api(ApiArgs),
    /// Print the CustomResourceDefinitions as YAML.
    #[command(after_help = "Examples:\n  hookrelay crd | kubectl apply --server-side -f -")]
    Crd,
    /// Print the version.
    #[command(after_help = "Examples:\n  hookrelay version")]
    Version,
    /// Print a shell completion script, e.g. `source <(hookrelay completion bash)`.
    #[command(
        after_help = "Examples:\n  source <(hookrelay completion bash)\n  hookrelay completion fish > ~/.config/fish/completions/hookrelay.fish"
    )]
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// GET each URL and exit 0 only if every one answers 2xx within 5 s
    /// (the chart's `helm test` runs this in the hookrelay image).
    #[command(after_help = "Examples:\n  hookrelay probe http://hookrelay-ingest.hookrelay-system.svc/readyz")]
    Probe {
        /// http:// or https:// URLs.
        #[arg(required = true)]
        urls: Vec<String>,
    },
    /// Print a generated reference page of the docs (`make docs`).
    #[command(hide = true)]
    Reference {
        #[arg(value_enum)]
        page: ReferencePage,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ReferencePage {
    /// Every resource field, from the CRDs.
    Resources,
    /// `hookrelay` and its subcommands.
    Cli,
    /// `kubectl hookrelay` and its subcommands.
    Plugin,
}

/// A reference page of the docs (`docs/reference/`), as `make docs` writes it.
pub fn reference_page(name: &str) -> Option<String> {
    use clap::CommandFactory;
    match name {
        "resources" => Some(crate::reference::resources_markdown()),
        "cli" => Some(crate::reference::cli_markdown(
            "Command line: hookrelay",
            Cli::command(),
        )),
        "plugin" => Some(crate::reference::cli_markdown(
            "Command line: kubectl hookrelay",
            crate::plugin::Plugin::command(),
        )),
        _ => None,
    }
}

#[derive(Args, Debug)]
struct Logging {
    /// Log format: text for people, json for log pipelines.
    #[arg(long, env = "HOOKRELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args, Debug)]
struct ControllerArgs {
    /// Watch only these namespaces, comma-separated or repeated (default:
    /// all namespaces). (`--namespace`, its old name, still works.)
    #[arg(
        long = "watch-namespace",
        alias = "namespace",
        env = "HOOKRELAY_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HOOKRELAY_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Requests in flight at once across all webhooks (each webhook also has
    /// its hub's `delivery.concurrencyPerWebhook` limit).
    #[arg(long, env = "HOOKRELAY_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Elect a leader with a Lease so several replicas can run; only the
    /// leader reconciles and delivers.
    #[arg(long, env = "HOOKRELAY_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the first --watch-namespace, else "default").
    #[arg(long, env = "HOOKRELAY_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// How long the lease lasts without renewal. After a crash a follower
    /// takes over within this time plus two retry periods; after a graceful
    /// stop (SIGTERM) within one retry period.
    #[arg(long, env = "HOOKRELAY_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// A leader that could not renew for this long stops sending at once and
    /// cancels requests in flight (default: 2/3 of --lease-duration).
    #[arg(long, env = "HOOKRELAY_RENEW_DEADLINE", value_parser = parse_duration)]
    renew_deadline: Option<std::time::Duration>,
    /// How often the leader renews and followers try to take the lease
    /// (default: 2/15 of --lease-duration).
    #[arg(long, env = "HOOKRELAY_RETRY_PERIOD", value_parser = parse_duration)]
    retry_period: Option<std::time::Duration>,
    /// Networks no delivery may reach whatever a Hub says, added to the
    /// built-in floor (link-local, cloud metadata, 0.0.0.0/8, ::, multicast,
    /// broadcast), comma-separated CIDRs.
    #[arg(long, env = "HOOKRELAY_EGRESS_DENY", value_delimiter = ',')]
    egress_deny: Vec<String>,
    /// Deny private and shared ranges too (10/8, 172.16/12, 192.168/16,
    /// 100.64/10, fc00::/7), when every handler is on the public internet.
    #[arg(long, env = "HOOKRELAY_EGRESS_DENY_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    egress_deny_private: bool,
    /// Let deliveries reach loopback (127.0.0.0/8, ::1), which is denied by
    /// default: the pod's own ports are no handler's. For local development
    /// and tests, where handlers run on this machine.
    #[arg(long, env = "HOOKRELAY_EGRESS_ALLOW_LOOPBACK", default_value_t = false, action = clap::ArgAction::Set)]
    egress_allow_loopback: bool,
    /// Send every request to handlers and OAuth 2.0 token endpoints through
    /// this HTTP CONNECT proxy (for fixed source addresses), as
    /// http://host:port. hookrelay resolves and checks each handler's
    /// address itself and asks the proxy for that address; TLS stays end to
    /// end with the handler.
    #[arg(long, env = "HOOKRELAY_EGRESS_PROXY", hide_env_values = true)]
    egress_proxy: Option<String>,
    /// The proxy's credentials, user:password (best from a Secret through
    /// the environment variable; in place of any in --egress-proxy's URL).
    #[arg(
        long,
        env = "HOOKRELAY_EGRESS_PROXY_CREDENTIALS",
        hide_env_values = true,
        requires = "egress_proxy"
    )]
    egress_proxy_credentials: Option<String>,
    /// How long a replica's claim on a due delivery lasts (Postgres store):
    /// after a crash its claimed deliveries are sent by another replica
    /// after this. Never less than the longest request a hub allows + 15s.
    #[arg(long, env = "HOOKRELAY_CLAIM_LEASE", default_value = "45s", value_parser = parse_duration)]
    claim_lease: std::time::Duration,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    budget: Budget,
    #[command(flatten)]
    logging: Logging,
    #[command(flatten)]
    traces: Traces,
}

/// Traces of events (OpenTelemetry).
#[derive(Args, Debug)]
struct Traces {
    /// Export spans of each event (ingest's request, its store write, each
    /// attempt) over OTLP/HTTP to this collector, such as
    /// http://otel-collector:4318 (off by default). No payload, header value
    /// or secret is in a span.
    #[arg(long, env = "HOOKRELAY_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

impl Traces {
    /// Starts exporting, if asked; spans are exported while this lives.
    fn export(&self, service: &'static str) -> anyhow::Result<Option<crate::spans::Exporter>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = crate::spans::export(endpoint, service)?;
        tracing::info!(endpoint = %endpoint, "exporting spans over OTLP");
        Ok(Some(exporter))
    }
}

/// Where deliveries are stored.
#[derive(Args, Debug)]
struct StoreArgs {
    /// kubernetes: a Delivery object per delivery (kubectl shows them);
    /// postgres: rows in the database at --postgres-url, for volumes the
    /// API server cannot carry. Controller and ingest must agree.
    #[arg(long, env = "HOOKRELAY_STORE", value_enum, default_value_t = crate::store::Kind::Kubernetes)]
    store: crate::store::Kind,
    /// The Postgres database of --store postgres, as a URL
    /// (postgres://user:password@host:5432/db); the schema is created and
    /// migrated at start.
    #[arg(long, env = "HOOKRELAY_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// PEM bundle of the CA that signs the database's certificate, for a URL
    /// with sslmode=require (default: the public roots). Certificate and
    /// host name are verified.
    #[arg(long, env = "HOOKRELAY_POSTGRES_CA_FILE")]
    postgres_ca_file: Option<std::path::PathBuf>,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<crate::store::Store> {
        crate::store::Store::open(
            self.store,
            self.postgres_url.as_deref(),
            self.postgres_ca_file.as_deref(),
        )
        .await
    }
}

fn parse_trace_url_template(s: &str) -> Result<String, String> {
    let sample = s.replace("{traceId}", "4bf92f3577b34da6a3ce929d0e0e4736");
    match reqwest::Url::parse(&sample) {
        Ok(url) if s.contains("{traceId}") && matches!(url.scheme(), "http" | "https") => Ok(s.to_string()),
        _ => Err(
            "an http(s) URL with {traceId} where the trace id goes, such as https://jaeger.example/trace/{traceId}"
                .into(),
        ),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{e} (use e.g. \"20s\" or \"1m\")"))?;
    if d.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(d.into())
}

#[derive(Args, Debug)]
struct ConsoleArgs {
    /// Address to serve on (loopback by default: other machines cannot reach it).
    #[arg(long, env = "HOOKRELAY_CONSOLE_LISTEN", default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// How users sign in: `kubeconfig` (yours; a one-time login link is
    /// printed) or `token` (a Kubernetes bearer token, in a cluster).
    #[arg(long, env = "HOOKRELAY_CONSOLE_AUTH", value_enum, default_value_t = crate::console::Auth::Kubeconfig)]
    auth: crate::console::Auth,
    /// The ingest URL the CMS posts to, shown with each hub.
    #[arg(long, env = "HOOKRELAY_CONSOLE_INGEST_URL", default_value = "http://127.0.0.1:8080")]
    ingest_url: String,
    /// The namespace shown first (default: the kubeconfig's).
    #[arg(long = "namespace", short = 'n', env = "HOOKRELAY_CONSOLE_NAMESPACE")]
    namespace: Option<String>,
    /// With --auth kubeconfig: the kubeconfig file (default: kubectl's).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// With --auth kubeconfig: the kubeconfig context (default: its current one).
    #[arg(long)]
    context: Option<String>,
    /// Turns trace ids into links to your tracing UI: a URL with
    /// {traceId}, such as https://jaeger.example/trace/{traceId}.
    #[arg(long, env = "HOOKRELAY_CONSOLE_TRACE_URL_TEMPLATE", value_parser = parse_trace_url_template)]
    trace_url_template: Option<String>,
    #[command(flatten)]
    logging: Logging,
}

#[derive(Args, Debug)]
struct ApiArgs {
    /// Address to serve on (TLS; the kube-apiserver connects to it).
    #[arg(long, env = "HOOKRELAY_API_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM file of the serving certificate (default: a self-signed one for
    /// the Service hookrelay-api, for --register).
    #[arg(long, env = "HOOKRELAY_API_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// PEM file of the serving certificate's key.
    #[arg(long, env = "HOOKRELAY_API_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// Make the APIService and an ExternalName Service in this namespace
    /// that reach --listen on this machine, and remove them at stop: for
    /// local use and tests (in a cluster the chart makes them).
    #[arg(long, value_name = "NAMESPACE", num_args = 0..=1, default_missing_value = "default")]
    register: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    logging: Logging,
}

#[derive(Args, Debug)]
struct Budget {
    /// The size a Delivery may reach as stored, in bytes (16384 to 1048576).
    /// Attempts beyond it are left out (the first and newest kept); an
    /// event whose payload exceeds half of it is refused with 413. Give
    /// controller and ingest the same value.
    #[arg(long, env = "HOOKRELAY_DELIVERY_BUDGET", default_value_t = crate::resources::delivery::DEFAULT_BUDGET,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16384..=1048576))]
    delivery_budget: usize,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Address the ingest HTTP server listens on (events, /healthz, /readyz).
    #[arg(long, env = "HOOKRELAY_INGEST_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of /metrics (and /healthz, /readyz), apart from the events port.
    #[arg(long, env = "HOOKRELAY_INGEST_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    metrics_listen: SocketAddr,
    /// A client must send its request headers within this time.
    #[arg(long, env = "HOOKRELAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: std::time::Duration,
    /// The most one request may take, body included (408 past it).
    #[arg(long, env = "HOOKRELAY_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: std::time::Duration,
    /// Connections open at once; more are closed as they arrive.
    #[arg(long, env = "HOOKRELAY_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Store writes slower than this (a round of 16 creates, on average or
    /// three under way) mean the store is saturated: each hub may then have
    /// 16 deliveries being stored at once; its other events wait up to 5s
    /// for room (4 at once), then are answered 429. 0s turns backpressure
    /// off.
    #[arg(long, env = "HOOKRELAY_BACKPRESSURE_LATENCY", default_value = "500ms", value_parser = parse_duration)]
    backpressure_latency: std::time::Duration,
    /// Largest event body accepted, in bytes; larger ones get 413 (default:
    /// half the Delivery size budget).
    #[arg(long, env = "HOOKRELAY_BODY_LIMIT")]
    body_limit: Option<usize>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    budget: Budget,
    /// Serve only hubs of these namespaces, comma-separated or repeated
    /// (default: all namespaces). (`--namespace`, its old name, still works.)
    #[arg(
        long = "watch-namespace",
        alias = "namespace",
        env = "HOOKRELAY_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    #[command(flatten)]
    logging: Logging,
    #[command(flatten)]
    traces: Traces,
}

/// A client for the cluster in KUBECONFIG or the in-cluster service
/// account, introducing itself as `component` (the API server names field
/// managers, audit entries and metrics after it; kube-rs sends none).
async fn client_as(component: &str) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    let agent = format!("{component}/{}", crate::VERSION);
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_str(&agent)?,
    ));
    Ok(kube::Client::try_from(config)?)
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Controller(args) => {
                telemetry::init(args.logging.log_format);
                tracing::info!(version = crate::VERSION, "starting controller");
                let _spans = args.traces.export("hookrelay-controller")?;
                let client = client_as("hookrelay-controller").await?;
                let leader_election = if args.leader_elect {
                    let mut election = crate::leader::Settings::for_lease(
                        args.leader_election_namespace
                            .clone()
                            .or_else(|| std::env::var("POD_NAMESPACE").ok())
                            .or_else(|| args.namespaces.first().cloned())
                            .unwrap_or_else(|| "default".into()),
                        "hookrelay-controller".into(),
                        crate::identity(),
                        args.lease_duration,
                    );
                    election.renew_deadline = args.renew_deadline.unwrap_or(election.renew_deadline);
                    election.retry_period = args.retry_period.unwrap_or(election.retry_period);
                    election.check().map_err(anyhow::Error::msg)?;
                    Some(election)
                } else {
                    None
                };
                let mut floor = crate::egress::parse_networks(args.egress_deny.iter().map(String::as_str))
                    .map_err(|e| anyhow::anyhow!("--egress-deny: {e}"))?;
                if args.egress_deny_private {
                    floor.extend(
                        crate::egress::parse_networks(crate::egress::PRIVATE.iter().copied()).expect("built in"),
                    );
                }
                let egress_proxy = args
                    .egress_proxy
                    .as_deref()
                    .map(|url| {
                        crate::delivery::relay::EgressProxy::parse(url, args.egress_proxy_credentials.as_deref())
                    })
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--egress-proxy: {e}"))?
                    .map(std::sync::Arc::new);
                if let Some(proxy) = &egress_proxy {
                    tracing::info!(%proxy, "requests to handlers go through the egress proxy");
                }
                let settings = crate::controller::Settings {
                    namespaces: args.namespaces,
                    metrics_listen: args.metrics_listen,
                    concurrency: args.concurrency,
                    leader_election,
                    egress_floor: if args.egress_allow_loopback {
                        crate::egress::Floor::with_loopback(&floor)
                    } else {
                        crate::egress::Floor::with(&floor)
                    },
                    egress_proxy,
                    delivery_budget: args.budget.delivery_budget,
                    store: args.store.open().await?,
                    claim_lease: args.claim_lease,
                };
                let shutdown = CancellationToken::new();
                tokio::spawn({
                    let shutdown = shutdown.clone();
                    async move {
                        shutdown_signal().await;
                        shutdown.cancel();
                    }
                });
                crate::controller::run(client, settings, shutdown).await
            }
            Command::Ingest(args) => {
                telemetry::init(args.logging.log_format);
                tracing::info!(version = crate::VERSION, "starting ingest");
                let _spans = args.traces.export("hookrelay-ingest")?;
                let client = client_as("hookrelay-ingest").await?;
                let settings = crate::ingest::Settings {
                    listen: args.listen,
                    metrics_listen: args.metrics_listen,
                    connections: crate::server::ConnectionLimits {
                        header_read_timeout: args.header_read_timeout,
                        max_connections: args.max_connections,
                    },
                    request_timeout: args.request_timeout,
                    body_limit: args
                        .body_limit
                        .unwrap_or(crate::resources::delivery::max_payload(args.budget.delivery_budget)),
                    delivery_budget: args.budget.delivery_budget,
                    namespaces: args.namespaces,
                    store: args.store.open().await?,
                    backpressure_latency: args.backpressure_latency,
                };
                crate::ingest::run(client, settings, shutdown_signal()).await
            }
            Command::Console(args) => {
                telemetry::init(args.logging.log_format);
                let settings = crate::console::Settings {
                    listen: args.listen,
                    auth: args.auth,
                    ingest_url: args.ingest_url,
                    namespace: args.namespace,
                    kubeconfig: args.kubeconfig,
                    context: args.context,
                    trace_url_template: args.trace_url_template,
                };
                crate::console::run(settings, shutdown_signal()).await
            }
            Command::Api(args) => {
                telemetry::init(args.logging.log_format);
                tracing::info!(version = crate::VERSION, "starting api");
                let client = client_as("hookrelay-api").await?;
                let settings = crate::api::Settings {
                    listen: args.listen,
                    store: args.store.open().await?,
                    tls: args.tls_cert_file.zip(args.tls_key_file),
                    register: args.register,
                };
                crate::api::run(client, settings, shutdown_signal()).await
            }
            Command::Crd => {
                print!("{}", crate::crd::yaml()?);
                Ok(())
            }
            Command::Version => {
                println!("hookrelay {}", crate::VERSION);
                Ok(())
            }
            Command::Probe { urls } => probe(&urls).await,
            Command::Reference { page } => {
                let name = format!("{page:?}").to_lowercase();
                print!("{}", reference_page(&name).expect("every page has a name"));
                Ok(())
            }
            Command::Completion { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(shell, &mut Cli::command(), "hookrelay", &mut std::io::stdout());
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

/// `hookrelay probe`: each URL must answer 2xx.
async fn probe(urls: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let mut failed = Vec::new();
    for url in urls {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{url:?}: only http:// and https:// URLs are probed"
        );
        match client.get(url).send().await {
            Ok(answer) if answer.status().is_success() => println!("{url}: {}", answer.status().as_u16()),
            Ok(answer) => failed.push(format!("{url}: {}", answer.status().as_u16())),
            Err(e) => failed.push(format!("{url}: {e}")),
        }
    }
    anyhow::ensure!(failed.is_empty(), "not answering 2xx: {}", failed.join("; "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_watch_list_is_watch_namespace_and_namespace_still_works() {
        for flag in ["--watch-namespace", "--namespace"] {
            let cli = Cli::try_parse_from(["hookrelay", "ingest", flag, "a,b"]).unwrap();
            let Command::Ingest(args) = cli.command else {
                panic!("parsed as {:?}", cli.command)
            };
            assert_eq!(args.namespaces, ["a", "b"], "{flag}");
        }
        let help = Cli::command()
            .find_subcommand("controller")
            .unwrap()
            .clone()
            .render_help()
            .to_string();
        assert!(
            help.contains("--watch-namespace") && !help.contains("--namespace <"),
            "{help}"
        );
    }

    /// Every command of both command lines shows how it is used, and says
    /// what each positional argument is.
    #[test]
    fn every_command_has_examples_and_described_arguments() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.has_subcommands() {
                for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                    check(sub, &path, missing);
                }
            } else if !command
                .get_after_help()
                .is_some_and(|h| h.to_string().starts_with("Examples:\n"))
            {
                missing.push(format!("{path}: no Examples"));
            }
            for arg in command.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}: undescribed", arg.get_id()));
                }
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "", &mut missing);
        check(&crate::plugin::Plugin::command(), "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
