//! `kubectl hookrelay`: history, details, test events, bulk redelivery,
//! secrets, tail and send from the terminal. The same binary acts as the
//! plugin when it is invoked as `kubectl-hookrelay` (a symlink or copy on
//! PATH). It honours kubectl's usual flags and uses the user's kubeconfig:
//! RBAC decides what it may read and change. Deliveries are read through
//! the Kubernetes API in either store (`store::history`): the history API
//! where the cluster serves it, else the Delivery objects.

mod args;
mod deliveries;
mod kubectl_complete;
mod output;
mod pause;
mod redeliver;
mod secret;
mod send;
mod show;
mod status;
mod tail;
mod test_event;

pub use args::*;
use deliveries::*;
pub(crate) use output::age;
use output::*;
use pause::*;
use redeliver::*;
use secret::*;
use send::*;
use show::*;
use status::*;
use tail::*;
use test_event::*;

use crate::delivery::request;
use crate::events::sample_payload;
use crate::resources::delivery::{Delivery, Phase};
use crate::resources::{Hub, ROTATE_SECRET_ANNOTATION, WEBHOOK_LABEL, Webhook};
use crate::secrets;
use crate::store::StoreError;
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Whether this process was started as the kubectl plugin.
pub fn invoked_as_plugin() -> bool {
    invoked_as("kubectl-hookrelay") || invoked_as(COMPLETER)
}

/// The name kubectl (1.26+) runs for `kubectl hookrelay <TAB>`.
const COMPLETER: &str = "kubectl_complete-hookrelay";

fn invoked_as(name: &str) -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| PathBuf::from(a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with(name))
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
    /// Whether they are read through the history API (else as Delivery objects).
    history: bool,
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
    if invoked_as(COMPLETER) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (completions, names) = kubectl_complete::complete(&Plugin::command(), &args);
        if let Some(names) = names {
            print!("{}", kubectl_complete::names_from_cluster(&names).await);
        }
        print!("{completions}");
        return 0;
    }
    let plugin = match Plugin::try_parse() {
        Ok(p) => p,
        Err(e) => {
            // Help and version on stdout (exit 0); an argument error whole,
            // with what was missing or wrong, the usage and the hint (exit 2).
            let _ = e.print();
            return e.exit_code();
        }
    };
    if let Err(problem) = plugin.command.takes(plugin.all_namespaces, &plugin.output) {
        eprintln!("error: {problem}");
        return 2;
    }
    if let Command::Completion { shell } = plugin.command {
        clap_complete::generate(
            shell,
            &mut Plugin::command(),
            "kubectl-hookrelay",
            &mut std::io::stdout(),
        );
        return 0;
    }
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
        let (client, context_namespace) =
            crate::kubernetes::user_client(self.kubeconfig.as_deref(), self.context.clone()).await?;
        let namespace = self.namespace.clone().unwrap_or(context_namespace);
        let history = crate::store::history::served(&client).await;
        let ctx = Ctx {
            deliveries: crate::store::history::reader(&client, history),
            history,
            client,
            namespace,
            all: self.all_namespaces,
            output: self.output,
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        };
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
            Command::Secret {
                webhook,
                rotate,
                set,
                standard_webhooks,
                public_key,
            } => secret(&ctx, &webhook, rotate, set, standard_webhooks, public_key).await,
            Command::Tail { webhook } => tail(&ctx, webhook).await,
            Command::Pause { webhook } => set_paused(&ctx, &webhook, true).await,
            Command::Resume { webhook } => set_paused(&ctx, &webhook, false).await,
            Command::Send {
                hub,
                event,
                payload,
                id,
                ingest_url,
            } => send(&ctx, &hub, &event, payload, id, ingest_url).await,
            Command::Completion { .. } => unreachable!("printed before connecting"),
        }
    }
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
    fn all_namespaces_and_name_output_are_refused_where_they_mean_nothing() {
        let parse = |args: &[&str]| {
            let p = Plugin::try_parse_from([&["kubectl-hookrelay"], args].concat()).unwrap();
            p.command.takes(p.all_namespaces, &p.output)
        };
        assert!(parse(&["-A", "deliveries"]).is_ok());
        assert!(parse(&["-A", "tail"]).is_ok());
        assert!(parse(&["deliveries", "-o", "name"]).is_ok());
        assert!(
            parse(&["-A", "show", "d-1"])
                .unwrap_err()
                .contains("-A/--all-namespaces applies to")
        );
        assert!(parse(&["-A", "redeliver", "d-1"]).is_err());
        assert!(
            parse(&["status", "-o", "name"])
                .unwrap_err()
                .contains("-o name applies to deliveries")
        );
    }

    #[test]
    fn jsonpath_output_takes_rfc_9535_and_kubectls_braces() {
        let parse = |args: &[&str]| Plugin::try_parse_from([&["kubectl-hookrelay"], args].concat());
        let p = parse(&["deliveries", "-o", "jsonpath={[*].delivery}"]).unwrap();
        assert_eq!(p.output, Output::JsonPath("$[*].delivery".into()));
        let p = parse(&["show", "d-1", "-o", "jsonpath=$.status.phase"]).unwrap();
        assert_eq!(p.output, Output::JsonPath("$.status.phase".into()));
        for bad in ["jsonpath={range .items[*]}{.name}{end}", "jsonpath={.a[}", "xml"] {
            let error = parse(&["deliveries", "-o", bad]).unwrap_err().to_string();
            assert!(error.contains("--output") || error.contains("-o"), "{bad}: {error}");
            assert!(
                error.contains("jsonpath") || error.contains("not an output format"),
                "{bad}: {error}"
            );
        }
        let rows = serde_json::json!([
            { "delivery": "shop-1", "attempts": 2, "nextAttemptAt": null },
            { "delivery": "shop-2", "attempts": 1, "nextAttemptAt": null }
        ]);
        assert_eq!(
            output::jsonpath_lines("$[*].delivery", &rows).unwrap(),
            ["shop-1", "shop-2"]
        );
        assert_eq!(
            output::jsonpath_lines("$[0]", &rows).unwrap(),
            [r#"{"attempts":2,"delivery":"shop-1","nextAttemptAt":null}"#]
        );
        assert!(output::jsonpath_lines("$[*].missing", &rows).unwrap().is_empty());
    }

    #[test]
    fn completion_scripts_name_every_command() {
        let p = Plugin::try_parse_from(["kubectl-hookrelay", "completion", "bash"]).unwrap();
        let Command::Completion { shell } = p.command else {
            panic!("completion parsed as {:?}", p.command)
        };
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Plugin::command(), "kubectl-hookrelay", &mut script);
        let script = String::from_utf8(script).unwrap();
        for command in [
            "status",
            "deliveries",
            "show",
            "redeliver",
            "test",
            "secret",
            "tail",
            "send",
        ] {
            assert!(script.contains(command), "{command} in the bash completion");
        }
        assert!(Plugin::try_parse_from(["kubectl-hookrelay", "completion", "tcsh"]).is_err());
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
