//! `kubectl hookrelay`: history, details, test events, bulk redelivery,
//! secrets, tail and send from the terminal. The same binary acts as the
//! plugin when it is invoked as `kubectl-hookrelay` (a symlink or copy on
//! PATH). It honours kubectl's usual flags and uses the user's kubeconfig:
//! RBAC decides what it may read and change.

use crate::delivery::request;
use crate::events::sample_payload;
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::{Hub, ROTATE_SECRET_ANNOTATION, WEBHOOK_LABEL, Webhook};
use crate::secrets;
use crate::store::StoreError;
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Whether this process was started as the kubectl plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| PathBuf::from(a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with("kubectl-hookrelay"))
}

#[derive(Parser, Debug)]
#[command(
    name = "kubectl hookrelay",
    bin_name = "kubectl hookrelay",
    version = crate::VERSION,
    about = "hookrelay webhooks from the terminal: status, delivery history and details, redelivery, test events, secrets, tail"
)]
pub struct Plugin {
    /// Path to the kubeconfig file.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace (status, deliveries, tail).
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Read and redeliver deliveries in the Postgres store (when hookrelay
    /// runs with --store postgres), as a URL: postgres://user:password@host/db.
    /// Shown only for webhooks your Kubernetes identity may read.
    #[arg(long, global = true, env = "HOOKRELAY_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// PEM bundle of the CA that signs the database's certificate
    /// (sslmode=require in --postgres-url).
    #[arg(long, global = true, env = "HOOKRELAY_POSTGRES_CA_FILE")]
    postgres_ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hubs and their webhooks at a glance.
    Status {
        /// Only this hub.
        hub: Option<String>,
    },
    /// Deliveries, newest first (the CMS's "Recent deliveries").
    Deliveries {
        /// Only this webhook's.
        webhook: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// One delivery's request and response, attempt by attempt ("View details").
    Show { delivery: String },
    /// Redeliver deliveries: by name, or all that match the filters.
    Redeliver {
        deliveries: Vec<String>,
        /// Only this webhook's.
        #[arg(long)]
        webhook: Option<String>,
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// List what would be redelivered; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Send a test event to one webhook and print the handler's answer.
    Test {
        webhook: String,
        /// The event type (default: the webhook's first subscribed event).
        #[arg(long)]
        event: Option<String>,
        /// A JSON file with the payload (default: a sample of the event type).
        #[arg(long)]
        payload: Option<PathBuf>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print a webhook's signing secret, rotate it, or set your own.
    Secret {
        webhook: String,
        /// Generate a new secret (the previous one signs until the hub's overlap ends).
        #[arg(long, conflicts_with = "set")]
        rotate: bool,
        /// Set the secret to a value read from FILE, or "-" for stdin.
        #[arg(long, value_name = "FILE")]
        set: Option<String>,
    },
    /// Follow attempts as they happen, one line each.
    Tail {
        /// Only this webhook's.
        webhook: Option<String>,
    },
    /// Post an event to a hub's ingest, as the CMS would.
    Send {
        hub: String,
        #[arg(long)]
        event: String,
        /// A JSON file with the payload (default: a sample of the event type).
        #[arg(long)]
        payload: Option<PathBuf>,
        /// The event id (default: one is generated by ingest).
        #[arg(long)]
        id: Option<String>,
        /// Ingest's URL, e.g. http://127.0.0.1:8080 after
        /// `kubectl port-forward svc/RELEASE-hookrelay-ingest 8080:80`.
        #[arg(long, env = "HOOKRELAY_INGEST_URL")]
        ingest_url: Option<String>,
    },
}

/// Which deliveries: by outcome, age, event and content item.
#[derive(Args, Debug, Default)]
struct Filter {
    /// failed (Failed or Cancelled), succeeded, or retrying (Pending or Retrying).
    #[arg(long, value_enum)]
    outcome: Option<Outcome>,
    /// Only events received within this time, such as 30m, 2h or 1h30m.
    #[arg(long, value_parser = parse_since)]
    since: Option<Duration>,
    /// Only this event type.
    #[arg(long)]
    event: Option<String>,
    /// Only events whose payload's id is this (a content item, edition, ...).
    #[arg(long)]
    content_item: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Outcome {
    Failed,
    Succeeded,
    Retrying,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 5m or 1h30m"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d.into())
}

fn parse_since(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| format!("bad --since: {e}"))
}

impl Outcome {
    fn matches(self, phase: Phase) -> bool {
        match self {
            Self::Failed => matches!(phase, Phase::Failed | Phase::Cancelled),
            Self::Succeeded => phase == Phase::Succeeded,
            Self::Retrying => matches!(phase, Phase::Pending | Phase::Retrying),
        }
    }
}

impl Filter {
    fn keeps(&self, d: &Delivery, now: Timestamp) -> bool {
        let phase = d.status.as_ref().map(|s| s.phase).unwrap_or_default();
        self.outcome.is_none_or(|o| o.matches(phase))
            && self.since.is_none_or(|since| {
                now.duration_since(d.spec.event.received_at.0)
                    <= jiff::SignedDuration::try_from(since).unwrap_or_default()
            })
            && self.event.as_ref().is_none_or(|e| *e == d.spec.event.name)
            && self
                .content_item
                .as_ref()
                .is_none_or(|id| content_item(d).as_deref() == Some(id))
    }

    fn is_empty(&self) -> bool {
        self.outcome.is_none() && self.since.is_none() && self.event.is_none() && self.content_item.is_none()
    }
}

/// The id in a delivery's payload (`$.payload.id`), if any.
fn content_item(d: &Delivery) -> Option<String> {
    match d.spec.payload_value().ok()?.get("id")? {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// What every command needs.
struct Ctx {
    client: Client,
    namespace: String,
    all: bool,
    output: Output,
    color: bool,
    /// The deliveries as this user may see them.
    deliveries: std::sync::Arc<dyn crate::store::Deliveries>,
}

impl Ctx {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        if self.all {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        }
    }

    fn here<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn status_code(&self, code: Option<u16>) -> String {
        match code {
            Some(c @ 200..=299) => self.paint(&c.to_string(), "32"),
            Some(c) => self.paint(&c.to_string(), "31"),
            None => "-".into(),
        }
    }

    async fn webhook(&self, name: &str) -> anyhow::Result<Webhook> {
        self.here::<Webhook>()
            .get_opt(name)
            .await?
            .ok_or_else(|| anyhow!("no such webhook {name:?} in namespace {}", self.namespace))
    }

    async fn delivery(&self, name: &str) -> anyhow::Result<Delivery> {
        let ns = &self.namespace;
        self.deliveries
            .get(ns, name)
            .await?
            .ok_or_else(|| anyhow!("no such delivery {name:?} in namespace {ns}"))
    }
}

/// Runs the plugin; the exit code.
pub async fn main() -> i32 {
    let plugin = match Plugin::try_parse() {
        Ok(p) => p,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // clap's first line names the flag and what is allowed.
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return 2;
        }
    };
    match plugin.run().await {
        Ok(()) => 0,
        Err(e) => {
            // One line naming what is wrong.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            1
        }
    }
}

impl Plugin {
    async fn run(self) -> anyhow::Result<()> {
        let kubeconfig = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?,
            None => Kubeconfig::read().context("reading the kubeconfig")?,
        };
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)?;
        let store = match &self.postgres_url {
            Some(url) => {
                let ca = crate::store::read_ca(self.postgres_ca_file.as_deref())?;
                crate::store::Store::Postgres(crate::store::postgres::Postgres::open(url, ca.as_deref())?)
            }
            None => crate::store::Store::Kubernetes,
        };
        let ctx = Ctx {
            deliveries: store.for_user(&client),
            client,
            namespace,
            all: self.all_namespaces,
            output: self.output,
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        };
        if self.postgres_url.is_some()
            && (self.all_namespaces || matches!(self.command, Command::Tail { .. } | Command::Test { .. }))
        {
            bail!(
                "with --postgres-url: deliveries, show and redeliver work in one namespace; tail, test and --all-namespaces read Delivery objects (use the console's Send test)"
            );
        }
        match self.command {
            Command::Status { hub } => status(&ctx, hub).await,
            Command::Deliveries { webhook, filter } => deliveries(&ctx, webhook, &filter).await,
            Command::Show { delivery } => show(&ctx, &delivery).await,
            Command::Redeliver {
                deliveries,
                webhook,
                filter,
                yes,
                dry_run,
            } => redeliver(&ctx, deliveries, webhook, &filter, yes, dry_run).await,
            Command::Test {
                webhook,
                event,
                payload,
                timeout,
            } => test(&ctx, &webhook, event, payload, timeout).await,
            Command::Secret { webhook, rotate, set } => secret(&ctx, &webhook, rotate, set).await,
            Command::Tail { webhook } => tail(&ctx, webhook).await,
            Command::Send {
                hub,
                event,
                payload,
                id,
                ingest_url,
            } => send(&ctx, &hub, &event, payload, id, ingest_url).await,
        }
    }
}

/// Columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - width(cell) + 3));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// "5m" style ages.
fn age(since: Timestamp, now: Timestamp) -> String {
    let s = now.duration_since(since).as_secs().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn print_structured(output: Output, value: &impl serde::Serialize) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

fn phase_of(d: &Delivery) -> Phase {
    d.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

async fn status(ctx: &Ctx, only: Option<String>) -> anyhow::Result<()> {
    let hubs = ctx.api::<Hub>().list(&ListParams::default()).await?.items;
    if let Some(name) = &only
        && !hubs.iter().any(|h| h.name_any() == *name)
    {
        bail!("no such hub {name:?} in namespace {}", ctx.namespace);
    }
    let webhooks = ctx.api::<Webhook>().list(&ListParams::default()).await?.items;
    let deliveries = ctx.api::<Delivery>().list(&ListParams::default()).await?.items;
    let now = Timestamp::now();
    let hour_ago = now - jiff::SignedDuration::from_hours(1);
    let mut report = vec![];
    for hub in hubs.iter().filter(|h| only.as_ref().is_none_or(|n| h.name_any() == *n)) {
        let ns = hub.namespace().unwrap_or_default();
        let mut rows = vec![];
        for w in webhooks
            .iter()
            .filter(|w| w.spec.hub == hub.name_any() && w.namespace() == hub.namespace())
        {
            let of_webhook: Vec<&Delivery> = deliveries
                .iter()
                .filter(|d| d.spec.webhook == w.name_any() && d.namespace() == w.namespace())
                .collect();
            let failures = of_webhook
                .iter()
                .flat_map(|d| d.status.iter().flat_map(|s| s.attempts.iter()))
                .filter(|a| a.time.0 >= hour_ago)
                .filter(|a| !a.response.as_ref().is_some_and(|r| (200..300).contains(&r.status_code)))
                .count();
            let retrying = of_webhook.iter().filter(|d| phase_of(d) == Phase::Retrying).count();
            let ready = w
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    if c.status == "True" {
                        "True".to_string()
                    } else {
                        c.reason.clone()
                    }
                })
                .unwrap_or_else(|| "Unknown".into());
            // From the Deliveries themselves: the Webhook's summary is
            // written coalesced, a moment later.
            let last_status = of_webhook
                .iter()
                .filter_map(|d| d.status.as_ref())
                .filter_map(|s| Some((s.attempts.last()?.time.0, s.last_status_code)))
                .max_by_key(|(time, _)| *time)
                .and_then(|(_, code)| code)
                .or_else(|| {
                    w.status
                        .as_ref()
                        .and_then(|s| s.last_delivery.as_ref())
                        .and_then(|d| d.status_code)
                });
            rows.push(json!({
                "webhook": w.name_any(), "label": w.spec.label, "active": w.spec.active, "ready": ready,
                "lastStatus": last_status,
                "failuresLastHour": failures, "retrying": retrying,
            }));
        }
        let ready = hub
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        report.push(json!({
            "namespace": ns, "hub": hub.name_any(), "label": hub.spec.label, "ready": ready,
            "ingestPath": format!("/v1/namespaces/{ns}/hubs/{}/events", hub.name_any()),
            "webhooks": rows,
        }));
    }
    if matches!(ctx.output, Output::Json | Output::Yaml) {
        return print_structured(ctx.output, &json!({ "hubs": report }));
    }
    if report.is_empty() {
        println!("No hubs in namespace {}.", ctx.namespace);
    }
    for hub in &report {
        let webhooks = hub["webhooks"].as_array().cloned().unwrap_or_default();
        let active = webhooks.iter().filter(|w| w["active"] == true).count();
        println!(
            "Hub {} ({}) in {}: {}, {active}/{} webhooks active; the CMS posts to {}",
            hub["hub"].as_str().unwrap_or_default(),
            hub["label"].as_str().unwrap_or_default(),
            hub["namespace"].as_str().unwrap_or_default(),
            if hub["ready"] == true {
                ctx.paint("Ready", "32")
            } else {
                ctx.paint("Not ready", "31")
            },
            webhooks.len(),
            hub["ingestPath"].as_str().unwrap_or_default(),
        );
        let rows: Vec<Vec<String>> = webhooks
            .iter()
            .map(|w| {
                vec![
                    w["webhook"].as_str().unwrap_or_default().to_string(),
                    w["label"].as_str().unwrap_or_default().to_string(),
                    if w["active"] == true {
                        "true".into()
                    } else {
                        ctx.paint("false", "31")
                    },
                    w["ready"].as_str().unwrap_or_default().to_string(),
                    ctx.status_code(w["lastStatus"].as_u64().map(|c| c as u16)),
                    w["failuresLastHour"].to_string(),
                    w["retrying"].to_string(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            let headers = [
                "WEBHOOK",
                "LABEL",
                "ACTIVE",
                "READY",
                "LAST STATUS",
                "FAILED (1H)",
                "RETRYING",
            ];
            println!("{}\n", table(&headers, &rows));
        }
    }
    Ok(())
}

/// The deliveries a command is about, newest first.
/// Deliveries read per webhook at most where the store bounds it (the
/// newest; the Kubernetes store lists them all).
const LISTED: usize = 1000;

async fn select(ctx: &Ctx, webhook: Option<&str>, filter: &Filter) -> anyhow::Result<Vec<Delivery>> {
    if let Some(w) = webhook {
        ctx.webhook(w).await?;
    }
    let now = Timestamp::now();
    let namespace = (!ctx.all).then_some(ctx.namespace.as_str());
    let all = ctx.deliveries.list(namespace, webhook, &[], LISTED).await?;
    let mut list: Vec<Delivery> = all.into_iter().filter(|d| filter.keeps(d, now)).collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.spec.event.received_at.0));
    Ok(list)
}

async fn deliveries(ctx: &Ctx, webhook: Option<String>, filter: &Filter) -> anyhow::Result<()> {
    let list = select(ctx, webhook.as_deref(), filter).await?;
    let now = Timestamp::now();
    let rows: Vec<Value> = list
        .iter()
        .map(|d| {
            let s = d.status.clone().unwrap_or_default();
            json!({
                "namespace": d.namespace(), "delivery": d.name_any(), "webhook": d.spec.webhook,
                "event": d.spec.event.name, "eventId": d.spec.event.id, "received": d.spec.event.received_at.0.to_string(),
                "attempts": s.attempt_count, "statusCode": s.last_status_code, "outcome": format!("{:?}", s.phase),
                "contentItem": content_item(d), "nextAttemptAt": s.next_attempt_at.map(|t| t.0.to_string()),
            })
        })
        .collect();
    if matches!(ctx.output, Output::Json | Output::Yaml) {
        return print_structured(ctx.output, &rows);
    }
    if rows.is_empty() {
        println!("No deliveries match.");
        return Ok(());
    }
    let wide = ctx.output == Output::Wide;
    let mut headers = vec!["DELIVERY", "WEBHOOK", "EVENT", "AGE", "ATTEMPTS", "STATUS", "OUTCOME"];
    if wide {
        headers.extend(["CONTENT ITEM", "NEXT ATTEMPT", "NAMESPACE"]);
    }
    let table_rows: Vec<Vec<String>> = list
        .iter()
        .zip(&rows)
        .map(|(d, r)| {
            let outcome = r["outcome"].as_str().unwrap_or_default().to_string();
            let mut row = vec![
                d.name_any(),
                d.spec.webhook.clone(),
                d.spec.event.name.clone(),
                age(d.spec.event.received_at.0, now),
                r["attempts"].to_string(),
                ctx.status_code(r["statusCode"].as_u64().map(|c| c as u16)),
                match outcome.as_str() {
                    "Succeeded" => ctx.paint(&outcome, "32"),
                    "Failed" | "Cancelled" => ctx.paint(&outcome, "31"),
                    _ => ctx.paint(&outcome, "33"),
                },
            ];
            if wide {
                row.push(r["contentItem"].as_str().unwrap_or("-").to_string());
                row.push(r["nextAttemptAt"].as_str().unwrap_or("-").to_string());
                row.push(d.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    println!("{}", table(&headers, &table_rows));
    Ok(())
}

async fn show(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let mut d = ctx.delivery(name).await?;
    d.metadata.managed_fields = None;
    if matches!(ctx.output, Output::Json | Output::Yaml) {
        return print_structured(ctx.output, &d);
    }
    let template = ctx
        .here::<Webhook>()
        .get_opt(&d.spec.webhook)
        .await?
        .and_then(|w| w.spec.custom_payload);
    let s = d.status.clone().unwrap_or_default();
    let bold = |t: &str| ctx.paint(t, "1");
    println!("{} {}", bold("Delivery"), d.name_any());
    println!("  webhook   {}", d.spec.webhook);
    println!("  event     {} ({})", d.spec.event.name, d.spec.event.id);
    println!("  received  {}", d.spec.event.received_at.0);
    println!("  outcome   {:?} after {} attempts", s.phase, s.attempt_count);
    if let Some(m) = &s.message {
        println!("  message   {m}");
    }
    if let Some(next) = &s.next_attempt_at {
        println!("  next      {}", next.0);
    }
    if s.attempts_omitted > 0 {
        println!(
            "  ({} attempts left out to keep the delivery within its size budget)",
            s.attempts_omitted
        );
    }
    let recorded = s.request_body.clone().map(String::into_bytes);
    match recorded
        .map(Ok)
        .unwrap_or_else(|| request::body(&d, template.as_deref()))
    {
        Ok(body) => {
            let body = String::from_utf8_lossy(&body).into_owned();
            let pretty = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            println!("\n{}\n{pretty}", bold("Request body (as sent)"));
        }
        Err(e) => println!("\nRequest body cannot be shown: {e}"),
    }
    for a in &s.attempts {
        println!(
            "\n{} {}  {} ms",
            bold(&format!("Attempt {}", a.number)),
            a.time.0,
            a.duration_ms
        );
        println!("→ {} {}", a.request.method, a.request.url);
        for h in &a.request.headers {
            println!("  {}: {}", ctx.paint(&h.name, "36"), h.value);
        }
        match &a.response {
            Some(r) => {
                println!("← {}", ctx.status_code(Some(r.status_code)));
                for h in &r.headers {
                    println!("  {}: {}", ctx.paint(&h.name, "36"), h.value);
                }
                if !r.body.is_empty() {
                    println!("  {}{}", r.body, if r.body_truncated { " …(cut)" } else { "" });
                }
            }
            None => println!("← {}", ctx.paint(a.error.as_deref().unwrap_or("no response"), "31")),
        }
    }
    Ok(())
}

async fn redeliver(
    ctx: &Ctx,
    names: Vec<String>,
    webhook: Option<String>,
    filter: &Filter,
    yes: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    if names.is_empty() && webhook.is_none() && filter.is_empty() {
        bail!("name deliveries, or select them with --webhook, --outcome, --since, --event or --content-item");
    }
    // Everything is checked before anything changes.
    let mut chosen = vec![];
    for name in &names {
        chosen.push(ctx.delivery(name).await?);
    }
    if webhook.is_some() || !filter.is_empty() {
        let selected = select(ctx, webhook.as_deref(), filter).await?;
        chosen.extend(
            selected
                .into_iter()
                .filter(|d| names.is_empty() || names.contains(&d.name_any())),
        );
    }
    chosen.dedup_by_key(|d| (d.namespace(), d.name_any()));
    if matches!(ctx.output, Output::Json | Output::Yaml) && dry_run {
        let list: Vec<String> = chosen.iter().map(|d| d.name_any()).collect();
        return print_structured(ctx.output, &list);
    }
    println!("{} deliveries to redeliver:", chosen.len());
    for d in &chosen {
        println!(
            "  {}  {}  {}",
            d.name_any(),
            d.spec.event.name,
            content_item(d).unwrap_or_default()
        );
    }
    if dry_run || chosen.is_empty() {
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("add --yes to redeliver without a prompt (stdin is not a terminal)");
        }
        print!("Redeliver {} deliveries? [y/N] ", chosen.len());
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Nothing redelivered.");
            return Ok(());
        }
    }
    let value = Timestamp::now().to_string();
    for d in &chosen {
        let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
        match ctx.deliveries.redeliver(&ns, &name, &value).await {
            Ok(()) => {}
            Err(StoreError::Busy) => {
                bail!("{name} is being attempted right now; redeliver it once that attempt is recorded")
            }
            Err(StoreError::Forbidden(_)) if ctx.namespace == ns => {
                bail!("your Kubernetes identity may not patch deliveries in namespace {ns} (hookrelay-edit grants it)")
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("redelivering {name}"))),
        }
    }
    println!("Redelivered {}.", chosen.len());
    Ok(())
}

fn read_payload(path: Option<PathBuf>, event: &str) -> anyhow::Result<Value> {
    match path {
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_str(&text).map_err(|e| anyhow!("--payload is not JSON: {e}"))
        }
        None => Ok(sample_payload(event)),
    }
}

async fn test(
    ctx: &Ctx,
    name: &str,
    event: Option<String>,
    payload: Option<PathBuf>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let webhook = ctx.webhook(name).await?;
    if !webhook.spec.active {
        bail!("webhook {name} is inactive (spec.active is false): activate it first, nothing would be sent");
    }
    let event = event
        .or_else(|| webhook.spec.events.iter().find(|e| !e.ends_with('*')).cloned())
        .unwrap_or_else(|| crate::events::BUILTIN_EVENTS[0].to_string());
    let payload = read_payload(payload, &event)?;
    let delivery = crate::fanout::test_delivery(&webhook, &event, &payload).map_err(|e| anyhow!("--payload: {e}"))?;
    let api: Api<Delivery> = ctx.here();
    let created = api.create(&PostParams::default(), &delivery).await?;
    let id = created.name_any();
    eprintln!("sent {event} to {name} as delivery {id}; waiting for the answer…");
    let deadline = tokio::time::Instant::now() + timeout;
    let attempt = loop {
        let d = api.get(&id).await?;
        let status = d.status.unwrap_or_default();
        if let Some(a) = status.attempts.into_iter().next() {
            break a;
        }
        if status.phase.is_finished() {
            bail!(
                "delivery {id} ended {:?}: {}",
                status.phase,
                status.message.unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no attempt of delivery {id} within {timeout:?}; is the controller running?");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let code = attempt.response.as_ref().map(|r| r.status_code);
    if matches!(ctx.output, Output::Json | Output::Yaml) {
        print_structured(
            ctx.output,
            &json!({ "delivery": id, "event": event, "attempt": attempt }),
        )?;
    } else {
        println!(
            "delivery {id}: {} in {} ms",
            match code {
                Some(c) => ctx.status_code(Some(c)),
                None => ctx.paint(attempt.error.as_deref().unwrap_or("no response"), "31"),
            },
            attempt.duration_ms
        );
        if let Some(body) = attempt
            .response
            .as_ref()
            .map(|r| r.body.as_str())
            .filter(|b| !b.is_empty())
        {
            println!("{body}");
        }
    }
    match code {
        Some(200..=299) => Ok(()),
        Some(c) => bail!("the handler answered {c}"),
        None => bail!("no answer: {}", attempt.error.unwrap_or_default()),
    }
}

async fn secret(ctx: &Ctx, name: &str, rotate: bool, set: Option<String>) -> anyhow::Result<()> {
    let webhook = ctx.webhook(name).await?;
    let reference = webhook
        .spec
        .secret_ref
        .clone()
        .or_else(|| webhook.status.as_ref().and_then(|s| s.secret_ref.clone()))
        .ok_or_else(|| anyhow!("webhook {name} has no secret yet; is the controller running?"))?;
    let secrets_api: Api<Secret> = ctx.here();
    let read = || async {
        let s = secrets_api.get(&reference.name).await?;
        anyhow::Ok((secrets::value(&s, &reference.key).unwrap_or_default().to_string(), s))
    };
    if let Some(source) = set {
        let mut value = String::new();
        if source == "-" {
            std::io::stdin().read_to_string(&mut value)?;
        } else {
            value = std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?;
        }
        let value = value.trim();
        if value.len() < 16 {
            bail!("--set: a secret needs at least 16 characters");
        }
        let patch = json!({ "stringData": { reference.key.clone(): value } });
        secrets_api
            .patch(&reference.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        println!(
            "Secret {} set; deliveries are signed with it from now on.",
            reference.name
        );
        return Ok(());
    }
    if rotate {
        let (before, _) = read().await?;
        let patch =
            json!({ "metadata": { "annotations": { ROTATE_SECRET_ANNOTATION: Timestamp::now().to_string() } } });
        ctx.here::<Webhook>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (now, secret) = read().await?;
            if now != before && !now.is_empty() {
                let until = secrets::previous_expires_at(&secret)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!("Rotated. The previous secret also signs until {until}.");
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the controller did not rotate the secret within 60s; is it running?");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (value, _) = read().await?;
    if matches!(ctx.output, Output::Json | Output::Yaml) {
        return print_structured(ctx.output, &json!({ "secret": value, "secretRef": reference }));
    }
    println!("{value}");
    Ok(())
}

async fn tail(ctx: &Ctx, webhook: Option<String>) -> anyhow::Result<()> {
    if let Some(w) = &webhook {
        ctx.webhook(w).await?;
    }
    let config = match &webhook {
        Some(w) => watcher::Config::default().labels(&format!("{WEBHOOK_LABEL}={w}")),
        None => watcher::Config::default(),
    };
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    let mut events = watcher(ctx.api::<Delivery>(), config).default_backoff().boxed();
    let mut following = false;
    while let Some(event) = events.next().await {
        let (d, initial) = match event? {
            watcher::Event::InitApply(d) => (d, true),
            watcher::Event::Apply(d) => (d, false),
            watcher::Event::InitDone if !following => {
                // What exists was read: every attempt from now on is printed.
                following = true;
                eprintln!("following attempts (Ctrl-C to stop)…");
                continue;
            }
            _ => continue,
        };
        let key = (d.namespace().unwrap_or_default(), d.name_any());
        let status = d.status.clone().unwrap_or_default();
        let before = seen.insert(key, status.attempt_count).unwrap_or(0);
        if initial {
            continue;
        }
        for a in status.attempts.iter().filter(|a| a.number > before) {
            let outcome = match &a.response {
                Some(r) => ctx.status_code(Some(r.status_code)),
                None => ctx.paint(a.error.as_deref().unwrap_or("no response"), "31"),
            };
            println!(
                "{}  {}  {}  {}  #{}  {}  {} ms",
                a.time.0.strftime("%H:%M:%S"),
                d.name_any(),
                d.spec.webhook,
                d.spec.event.name,
                a.number,
                outcome,
                a.duration_ms
            );
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

async fn send(
    ctx: &Ctx,
    hub_name: &str,
    event: &str,
    payload: Option<PathBuf>,
    id: Option<String>,
    ingest_url: Option<String>,
) -> anyhow::Result<()> {
    let ingest_url = ingest_url.ok_or_else(|| {
        anyhow!(
            "give --ingest-url (or HOOKRELAY_INGEST_URL), e.g. http://127.0.0.1:8080 after `kubectl -n RELEASE_NAMESPACE port-forward svc/RELEASE-hookrelay-ingest 8080:80`"
        )
    })?;
    let hub = ctx
        .here::<Hub>()
        .get_opt(hub_name)
        .await?
        .ok_or_else(|| anyhow!("no such hub {hub_name:?} in namespace {}", ctx.namespace))?;
    let reference = hub
        .spec
        .ingest
        .as_ref()
        .and_then(|i| i.token_secret_ref.clone())
        .or_else(|| hub.status.as_ref().and_then(|s| s.ingest_token_secret_ref.clone()))
        .ok_or_else(|| anyhow!("hub {hub_name} has no ingest token yet; is the controller running?"))?;
    let secret = ctx.here::<Secret>().get(&reference.name).await?;
    let token = secrets::value(&secret, &reference.key)
        .ok_or_else(|| anyhow!("Secret {} has no key {}", reference.name, reference.key))?;
    let mut body = json!({ "name": event, "payload": read_payload(payload, event)? });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let url = format!(
        "{}/v1/namespaces/{}/hubs/{hub_name}/events",
        ingest_url.trim_end_matches('/'),
        ctx.namespace
    );
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = response.status();
    let answer: Value = serde_json::from_str(&response.text().await?).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "ingest answered {status}: {}",
            answer["message"].as_str().unwrap_or_default()
        );
    }
    if matches!(ctx.output, Output::Json | Output::Yaml) {
        return print_structured(ctx.output, &answer);
    }
    let deliveries = answer["deliveries"].as_array().cloned().unwrap_or_default();
    println!(
        "accepted event {} ({event}): {} deliveries",
        answer["id"].as_str().unwrap_or_default(),
        deliveries.len()
    );
    for d in deliveries {
        println!("  {}", d.as_str().unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_visible_width() {
        let rows = vec![
            vec!["shop-1".to_string(), "\x1b[32m200\x1b[0m".to_string(), "x".to_string()],
            vec!["s".to_string(), "-".to_string(), "longer".to_string()],
        ];
        let out = table(&["DELIVERY", "STATUS", "OUTCOME"], &rows);
        let lines: Vec<String> = out.lines().map(strip_ansi).collect();
        assert_eq!(lines[0], "DELIVERY   STATUS   OUTCOME");
        assert_eq!(lines[1], "shop-1     200      x");
        assert_eq!(lines[2], "s          -        longer");
    }

    #[test]
    fn since_and_ages_read_as_people_write_them() {
        assert_eq!(parse_since("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_since("2x").unwrap_err().starts_with("bad --since"));
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(age(t0, t0 + jiff::SignedDuration::from_secs(90)), "90s");
        assert_eq!(age(t0, t0 + jiff::SignedDuration::from_hours(5)), "5h");
    }

    #[test]
    fn plugin_flags_parse_like_kubectls() {
        let p = Plugin::try_parse_from([
            "kubectl-hookrelay",
            "-n",
            "team-a",
            "deliveries",
            "shop",
            "--outcome",
            "failed",
            "--since",
            "2h",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(p.namespace.as_deref(), Some("team-a"));
        assert_eq!(p.output, Output::Json);
        assert!(matches!(p.command, Command::Deliveries { webhook: Some(ref w), .. } if w == "shop"));
        let err = Plugin::try_parse_from(["kubectl-hookrelay", "deliveries", "--since", "2x"]).unwrap_err();
        assert!(err.to_string().contains("bad --since"), "{err}");
    }
}
