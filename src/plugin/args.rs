//! The command line: flags, subcommands, and the filters deliveries are chosen by.

use super::*;

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
    pub(super) kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub(super) context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub(super) namespace: Option<String>,
    /// Every namespace (status, deliveries, tail).
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    pub(super) all_namespaces: bool,
    /// Output format: table, wide, json, yaml, name (deliveries: `delivery/NAME` per
    /// line) or jsonpath=EXPR (an RFC 9535 path into what -o json prints, kubectl's
    /// `{.path}` form accepted; each match on its own line).
    #[arg(short = 'o', long, global = true, value_name = "FORMAT", value_parser = parse_output, default_value = "table")]
    pub(super) output: Output,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    /// `delivery/NAME` per line (deliveries), for scripts and `kubectl get`.
    Name,
    /// The values an RFC 9535 path selects in what `-o json` prints.
    JsonPath(String),
}

impl Output {
    /// Json, yaml and jsonpath: the command prints its data, not a table.
    pub(super) fn is_structured(&self) -> bool {
        matches!(self, Output::Json | Output::Yaml | Output::JsonPath(_))
    }
}

pub(super) fn parse_output(s: &str) -> Result<Output, String> {
    Ok(match s {
        "table" => Output::Table,
        "wide" => Output::Wide,
        "json" => Output::Json,
        "yaml" => Output::Yaml,
        "name" => Output::Name,
        _ => match s.strip_prefix("jsonpath=") {
            Some(expression) => Output::JsonPath(jsonpath(expression)?),
            None => {
                return Err(format!(
                    "{s:?} is not an output format: use table, wide, json, yaml, name or jsonpath=EXPR"
                ));
            }
        },
    })
}

/// An RFC 9535 path from `-o jsonpath=`: `$.a.b` as it is, or kubectl's
/// `{.a.b}` (one expression; kubectl's templates with range or text between
/// expressions are not taken).
fn jsonpath(expression: &str) -> Result<String, String> {
    let inner = match expression.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
        Some(inner) if !inner.contains(['{', '}']) => inner.trim(),
        Some(_) => {
            return Err(format!(
                "jsonpath={expression}: one expression such as {{.webhook}} or $[*].delivery; templates with range are not taken, use -o json with jq"
            ));
        }
        None => expression.trim(),
    };
    let path = if inner.starts_with('$') {
        inner.to_string()
    } else {
        format!("${inner}")
    };
    serde_json_path::JsonPath::parse(&path).map_err(|e| format!("jsonpath={expression}: {e}"))?;
    Ok(path)
}

impl Command {
    /// Whether `-A`/`--all-namespaces` and `-o name` mean something for this
    /// command: an error naming what does, else.
    pub(super) fn takes(&self, all_namespaces: bool, output: &Output) -> Result<(), String> {
        let lists = matches!(
            self,
            Command::Status { .. } | Command::Deliveries { .. } | Command::Tail { .. }
        );
        if all_namespaces && !lists {
            return Err(
                "-A/--all-namespaces applies to status, deliveries and tail; this command works in one namespace (-n)"
                    .into(),
            );
        }
        if *output == Output::Name && !matches!(self, Command::Deliveries { .. }) {
            return Err("-o name applies to deliveries; use -o json or -o yaml here".into());
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Hubs and their webhooks at a glance.
    #[command(
        after_help = "Examples:\n  kubectl hookrelay status\n  kubectl hookrelay status main -n shop\n  kubectl hookrelay status -A -o json"
    )]
    Status {
        /// Only this hub.
        hub: Option<String>,
    },
    /// Deliveries, newest first (the CMS's "Recent deliveries").
    #[command(
        after_help = "Examples:\n  kubectl hookrelay deliveries shop --outcome failed --since 2h\n  kubectl hookrelay deliveries --content-item c-1 -o wide\n  kubectl hookrelay deliveries shop -o name | xargs kubectl get -o yaml\n  kubectl hookrelay deliveries -o 'jsonpath={[*].delivery}'"
    )]
    Deliveries {
        /// Only this webhook's.
        webhook: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// One delivery's request and response, attempt by attempt ("View details").
    #[command(
        after_help = "Examples:\n  kubectl hookrelay show shop-7895c2e62fa006c9a6cc\n  kubectl hookrelay show shop-7895c2e62fa006c9a6cc -o 'jsonpath={.status.attempts[-1].response.body}'"
    )]
    Show {
        /// The delivery's name (from `deliveries`).
        delivery: String,
    },
    /// Redeliver deliveries: by name, or all that match the filters.
    #[command(
        after_help = "Examples:\n  kubectl hookrelay redeliver shop-7895c2e62fa006c9a6cc\n  kubectl hookrelay redeliver --webhook shop --outcome failed --since 1h --dry-run\n  kubectl hookrelay redeliver --webhook shop --outcome failed --since 1h -y"
    )]
    Redeliver {
        /// Deliveries by name; none: every delivery the filters select.
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
    #[command(
        after_help = "Examples:\n  kubectl hookrelay test shop\n  kubectl hookrelay test shop --event dynamic-content.content-item.updated --payload item.json"
    )]
    Test {
        /// The webhook to send it to.
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
    #[command(
        after_help = "Examples:\n  kubectl hookrelay secret shop --standard-webhooks\n  kubectl hookrelay secret shop --public-key\n  kubectl hookrelay secret shop --rotate\n  openssl rand -base64 32 | kubectl hookrelay secret shop --set -"
    )]
    Secret {
        /// The webhook whose secret it is.
        webhook: String,
        /// Generate a new secret (the previous one signs until the hub's overlap ends).
        #[arg(long, conflicts_with = "set")]
        rotate: bool,
        /// Set the secret to a value read from FILE, or "-" for stdin.
        #[arg(long, value_name = "FILE")]
        set: Option<String>,
        /// Print the `whsec_…` value Standard Webhooks libraries take instead
        /// (for a secret that is not base64 it is not `whsec_<secret>`).
        #[arg(long, conflicts_with_all = ["set", "rotate"])]
        standard_webhooks: bool,
        /// Print the `whpk_…` public key that verifies the `v1a` signatures
        /// (signing.scheme asymmetric or both); needs no access to Secrets.
        #[arg(long, conflicts_with_all = ["set", "rotate", "standard_webhooks"])]
        public_key: bool,
    },
    /// Hold a webhook's deliveries: its events are still stored, nothing is
    /// sent and no retry advances until it is resumed.
    #[command(after_help = "Examples:\n  kubectl hookrelay pause shop -n cms")]
    Pause {
        /// The webhook to pause.
        webhook: String,
    },
    /// Send a paused webhook's held deliveries, oldest first, and go on as before.
    #[command(after_help = "Examples:\n  kubectl hookrelay resume shop -n cms")]
    Resume {
        /// The webhook to resume.
        webhook: String,
    },
    /// Follow attempts as they happen, one line each.
    #[command(after_help = "Examples:\n  kubectl hookrelay tail shop\n  kubectl hookrelay tail -A")]
    Tail {
        /// Only this webhook's.
        webhook: Option<String>,
    },
    /// Post an event to a hub's ingest, as the CMS would.
    #[command(
        after_help = "Examples:\n  kubectl port-forward -n hookrelay-system svc/hookrelay-ingest 8080:80 &\n  kubectl hookrelay send main --event dynamic-content.content-item.updated --ingest-url http://127.0.0.1:8080"
    )]
    Send {
        /// The hub to post to (its ingest token is read from its Secret).
        hub: String,
        /// The event type, such as dynamic-content.content-item.updated.
        #[arg(long)]
        event: String,
        /// A JSON file with the payload (default: a sample of the event type).
        #[arg(long)]
        payload: Option<PathBuf>,
        /// The event id (default: one is generated by ingest).
        #[arg(long)]
        id: Option<String>,
        /// Ingest's URL, e.g. http://127.0.0.1:8080 after
        /// `kubectl port-forward svc/RELEASE-hookrelay-ingest 8080:80` (a release named
        /// hookrelay: svc/hookrelay-ingest).
        #[arg(long, env = "HOOKRELAY_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// Print a shell completion script, e.g. `source <(kubectl hookrelay completion bash)`.
    #[command(
        after_help = "Examples:\n  source <(kubectl hookrelay completion bash)\n  kubectl hookrelay completion zsh > \"${fpath[1]}/_kubectl-hookrelay\""
    )]
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Which deliveries: by outcome, age, event and content item.
#[derive(Args, Debug, Default)]
pub(super) struct Filter {
    /// failed (Failed or Cancelled), succeeded, or retrying (Pending or Retrying).
    #[arg(long, value_enum)]
    pub(super) outcome: Option<Outcome>,
    /// Only events received within this time, such as 30m, 2h or 1h30m.
    #[arg(long, value_parser = parse_since)]
    pub(super) since: Option<Duration>,
    /// Only this event type.
    #[arg(long)]
    pub(super) event: Option<String>,
    /// Only events whose payload's id is this (a content item, edition, ...).
    #[arg(long)]
    pub(super) content_item: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Outcome {
    Failed,
    Succeeded,
    Retrying,
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 5m or 1h30m"))?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d.into())
}

pub(super) fn parse_since(s: &str) -> Result<Duration, String> {
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
    pub(super) fn keeps(&self, d: &Delivery, now: Timestamp) -> bool {
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

    pub(super) fn is_empty(&self) -> bool {
        self.outcome.is_none() && self.since.is_none() && self.event.is_none() && self.content_item.is_none()
    }
}
